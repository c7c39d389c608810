"""Channel selectors with Flink's behaviour (ports of the StreamPartitioner tests)."""

import json
import pathlib
import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flinknet.partitioners import (
    BroadcastPartitioner,
    CustomPartitionerWrapper,
    ForwardPartitioner,
    GlobalPartitioner,
    KeyGroupStreamPartitioner,
    RebalancePartitioner,
    RescalePartitioner,
    RoundRobinChannelSelector,
    ShufflePartitioner,
)

VECTORS = json.loads((pathlib.Path(__file__).parent / "vectors" / "key_groups.json").read_text())


def test_forward_and_global_always_select_zero():
    for selector in (ForwardPartitioner(), GlobalPartitioner()):
        selector.setup(3)
        assert [selector.select_channel(x) for x in range(5)] == [0] * 5
        assert selector.select_channels(list(range(4))).tolist() == [0] * 4
    assert ForwardPartitioner.is_pointwise and not GlobalPartitioner.is_pointwise
    assert (str(ForwardPartitioner()), str(GlobalPartitioner())) == ("FORWARD", "GLOBAL")


@pytest.mark.parametrize("seed", range(5))
def test_rebalance_starts_after_a_random_channel_then_round_robins(seed):
    start = random.Random(seed).randrange(4)
    selector = RebalancePartitioner(random.Random(seed))
    selector.setup(4)
    got = [selector.select_channel(None) for _ in range(9)]
    assert got == [(start + 1 + i) % 4 for i in range(9)]
    # The batch path continues the same sequence.
    assert selector.select_channels([None] * 5).tolist() == [(start + 10 + i) % 4 for i in range(5)]


def test_rebalance_start_is_random_across_instances():
    firsts = set()
    for _ in range(200):
        selector = RebalancePartitioner()
        selector.setup(4)
        firsts.add(selector.select_channel(None))
    assert firsts == {0, 1, 2, 3}


@pytest.mark.parametrize("cls, name", [(RescalePartitioner, "RESCALE"), (RoundRobinChannelSelector, "ROUND_ROBIN")])
def test_rescale_and_round_robin_start_at_zero(cls, name):
    selector = cls()
    selector.setup(3)
    assert [selector.select_channel(None) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert selector.select_channels([None] * 4).tolist() == [1, 2, 0, 1]
    assert str(selector) == name


def test_shuffle_stays_in_range_and_reaches_every_channel():
    selector = ShufflePartitioner(seed=7)
    selector.setup(5)
    singles = [selector.select_channel(None) for _ in range(500)]
    batch = selector.select_channels([None] * 2000)
    assert set(singles) == set(range(5)) and set(batch.tolist()) == set(range(5))
    assert batch.dtype == np.int32


def test_broadcast_cannot_select():
    selector = BroadcastPartitioner()
    selector.setup(3)
    assert selector.is_broadcast
    with pytest.raises(TypeError, match="does not support select channels"):
        selector.select_channel(1)
    with pytest.raises(TypeError):
        selector.select_channels([1])


@pytest.mark.parametrize("key_type", ["int", "long", "string"])
@pytest.mark.parametrize("parallelism", range(1, 9))
def test_key_group_partitioner_matches_flinks_vectors(key_type, parallelism):
    entries = [e for e in VECTORS["keys"] if e["type"] == key_type]
    keys = [e["key"] if key_type == "string" else int(e["key"]) for e in entries]
    selector = KeyGroupStreamPartitioner(lambda record: record, 128, key_type=key_type)
    selector.setup(parallelism)
    expected = [e["operator_index_maxp128_p1_to_p8"][parallelism - 1] for e in entries]
    assert [selector.select_channel(k) for k in keys] == expected
    assert selector.select_channels(keys).tolist() == expected


def test_key_group_partitioner_default_max_parallelism_and_key_selector():
    selector = KeyGroupStreamPartitioner(lambda record: record["user"])
    selector.setup(4)
    assert selector.max_parallelism == 128
    records = [{"user": u} for u in ("alice", "bob", 7, 2**40)]
    assert selector.select_channels(records).tolist() == [selector.select_channel(r) for r in records]
    with pytest.raises(ValueError, match="null"):
        selector.select_channel({"user": None})


@given(st.lists(st.integers(-2**63, 2**63 - 1), max_size=50), st.integers(1, 16))
def test_key_group_batch_equals_single_selection(keys, parallelism):
    selector = KeyGroupStreamPartitioner(lambda record: record, 256)
    selector.setup(parallelism)
    assert selector.select_channels(keys).tolist() == [selector.select_channel(k) for k in keys]


@given(st.lists(st.one_of(st.binary(max_size=24), st.text(max_size=8), st.integers(-2**63, 2**63 - 1)),
                max_size=50), st.integers(1, 16))
def test_keys_routed_in_one_call_equal_single_selection(keys, parallelism):
    selector = KeyGroupStreamPartitioner(lambda record: record[0], 256)
    selector.setup(parallelism)
    records = [(k, "payload") for k in keys]
    expected = [selector.select_channel(r) for r in records]
    assert selector.select_channels(records).tolist() == expected
    assert selector.select_channels_for_keys(keys).tolist() == expected
    assert selector.select_channels_for_keys(tuple(keys)).tolist() == expected


@given(st.lists(st.one_of(st.binary(max_size=40), st.binary(max_size=40).map(bytearray),
                         st.text(max_size=12)), max_size=50),
       st.one_of(st.none(), st.integers(-20, 20)), st.one_of(st.none(), st.integers(-20, 20)),
       st.integers(1, 16))
def test_a_slice_key_routes_as_the_callable_that_slices(records, start, stop, parallelism):
    # Flink's positional key: KeyGroupStreamPartitioner(slice(a, b)) is lambda r: r[a:b], with the
    # batch routed natively (bytes and bytearray keys hashed in place)
    by_slice = KeyGroupStreamPartitioner(slice(start, stop), 256)
    by_callable = KeyGroupStreamPartitioner(lambda record: record[start:stop], 256)
    for selector in (by_slice, by_callable):
        selector.setup(parallelism)
    expected = by_callable.select_channels(records).tolist()
    assert by_slice.select_channels(records).tolist() == expected
    assert [by_slice.select_channel(r) for r in records] == expected
    copied = by_slice.copy()
    copied.setup(parallelism)
    assert copied.select_channels(records).tolist() == expected


def test_a_slice_key_needs_step_1_and_int_bounds_and_setup():
    for bad in (slice(0, 8, 2), slice(8, 0, -1)):
        with pytest.raises(ValueError, match="step of 1"):
            KeyGroupStreamPartitioner(bad)
    with pytest.raises(TypeError, match="bounds"):
        KeyGroupStreamPartitioner(slice(0, 8.5))
    with pytest.raises(TypeError, match="callable or a slice"):
        KeyGroupStreamPartitioner(8)            # type: ignore[arg-type]
    selector = KeyGroupStreamPartitioner(slice(0, 8), 128)
    with pytest.raises(RuntimeError):
        selector.select_channels([b"12345678"])
    selector.setup(4)
    with pytest.raises(TypeError):
        selector.select_channels([b"12345678", 17])   # an int record has no byte range


def test_select_channels_for_keys_of_an_int_array_uses_the_array_rule():
    selector = KeyGroupStreamPartitioner(lambda record: record, 128)
    selector.setup(3)
    keys32 = np.arange(-50, 50, dtype=np.int32)
    assert selector.select_channels_for_keys(keys32).tolist() == [
        selector.select_channel(int(k)) for k in keys32]
    long_selector = KeyGroupStreamPartitioner(lambda record: record, 128, key_type="long")
    long_selector.setup(3)
    keys64 = np.arange(-50, 50, dtype=np.int64)
    assert selector.select_channels_for_keys(keys64).tolist() == [
        long_selector.select_channel(int(k)) for k in keys64]
    with pytest.raises(TypeError, match="integer array"):
        string_selector = KeyGroupStreamPartitioner(lambda record: record, 128, key_type="string")
        string_selector.setup(3)
        string_selector.select_channels_for_keys(keys32)


def test_select_channels_for_keys_needs_setup_and_rejects_none():
    selector = KeyGroupStreamPartitioner(lambda record: record, 128)
    with pytest.raises(RuntimeError):
        selector.select_channels_for_keys([b"a"])
    selector.setup(2)
    with pytest.raises(ValueError, match="null"):
        selector.select_channels([b"a", None])


def test_key_groups_spread_keys_over_all_channels():
    selector = KeyGroupStreamPartitioner(lambda record: record, 128)
    selector.setup(4)
    counts = Counter(selector.select_channels(list(range(10_000))).tolist())
    assert set(counts) == {0, 1, 2, 3}


def test_custom_partitioner_result_is_validated():
    selector = CustomPartitionerWrapper(lambda key, n: key % n, key_selector=lambda r: r[0])
    selector.setup(3)
    assert selector.select_channels([(5, "x"), (6, "y")]).tolist() == [2, 0]
    bad = CustomPartitionerWrapper(lambda key, n: n)
    bad.setup(3)
    with pytest.raises(ValueError, match="channel 3 for key 'k'"):
        bad.select_channel("k")
    not_int = CustomPartitionerWrapper(lambda key, n: "0")
    not_int.setup(3)
    with pytest.raises(TypeError):
        not_int.select_channel(1)


@pytest.mark.parametrize("selector", [ForwardPartitioner(), RebalancePartitioner(), RescalePartitioner(),
                                      ShufflePartitioner(), KeyGroupStreamPartitioner(lambda r: r)])
def test_setup_is_required_and_validated(selector):
    with pytest.raises(RuntimeError, match="setup"):
        selector.select_channel(1)
    for bad in (0, -1):
        with pytest.raises(ValueError):
            selector.setup(bad)
    with pytest.raises(TypeError):
        selector.setup(2.0)


def test_key_group_partitioner_rejects_more_channels_than_key_groups():
    selector = KeyGroupStreamPartitioner(lambda r: r, 4)
    with pytest.raises(ValueError, match="exceed max_parallelism"):
        selector.setup(5)


def test_copies_are_independent():
    a = RescalePartitioner()
    a.setup(2)
    a.select_channel(None)
    b = a.copy()
    b.setup(2)
    assert b.select_channel(None) == 0 and a.select_channel(None) == 1
