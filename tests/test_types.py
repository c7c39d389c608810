"""ResultPartitionType flags, ShipStrategyType and DataExchangeMode selection, as Flink 2.x."""

import pytest

from flinknet.types import (
    DataExchangeMode,
    DistributionPattern,
    ExecutionMode,
)
from flinknet.types import (
    ResultPartitionType as T,
)
from flinknet.types import (
    ShipStrategyType as S,
)

# (reconsumable, bounded, persistent, can be pipelined, must be pipelined, released by scheduler)
FLINK = {
    T.BLOCKING: (True, False, False, False, False, True),
    T.BLOCKING_PERSISTENT: (True, False, True, False, False, True),
    T.PIPELINED: (False, False, False, True, True, False),
    T.PIPELINED_BOUNDED: (False, True, False, True, True, False),
    T.PIPELINED_APPROXIMATE: (False, True, False, True, False, False),
    T.HYBRID_FULL: (True, False, False, True, False, True),
    T.HYBRID_SELECTIVE: (False, False, False, True, False, True),
}


@pytest.mark.parametrize("t", list(T), ids=lambda t: t.name)
def test_result_partition_type_flags(t):
    reconsumable, bounded, persistent, can, must, by_scheduler = FLINK[t]
    assert (t.is_reconsumable, t.is_bounded, t.is_persistent) == (reconsumable, bounded, persistent)
    assert (t.can_be_pipelined_consumed, t.must_be_pipelined_consumed) == (can, must)
    assert t.is_release_by_scheduler is by_scheduler and t.is_release_by_upstream is (not by_scheduler)
    assert t.is_blocking is (not can) and t.is_pipelined is can
    assert t.is_blocking_or_blocking_persistent_result_partition is (t in (T.BLOCKING, T.BLOCKING_PERSISTENT))
    assert t.is_pipelined_or_pipelined_bounded_result_partition is (t in (T.PIPELINED, T.PIPELINED_BOUNDED))
    assert t.is_hybrid_result_partition is (t in (T.HYBRID_FULL, T.HYBRID_SELECTIVE))
    assert t.support_compression is (t.is_blocking or t.is_hybrid_result_partition)
    assert t.has_back_pressure is (t.name.startswith("PIPELINED"))
    assert t.requires_finite_streams is (not t.name.startswith("PIPELINED"))


def test_all_seven_types_exist():
    assert [t.name for t in T] == ["BLOCKING", "BLOCKING_PERSISTENT", "PIPELINED", "PIPELINED_BOUNDED",
                                   "PIPELINED_APPROXIMATE", "HYBRID_FULL", "HYBRID_SELECTIVE"]


def test_ship_strategy_types_in_flinks_order_with_flags():
    assert [(s.name, s.value, s.is_network_strategy, s.requires_comparator) for s in S] == [
        ("NONE", 0, False, False), ("FORWARD", 1, False, False), ("PARTITION_RANDOM", 2, True, False),
        ("PARTITION_HASH", 3, True, True), ("PARTITION_RANGE", 4, True, True),
        ("PARTITION_FORCED_REBALANCE", 5, True, False), ("BROADCAST", 6, True, False),
        ("PARTITION_CUSTOM", 7, True, True)]


P, B = DataExchangeMode.PIPELINED, DataExchangeMode.BATCH


@pytest.mark.parametrize("mode, forward, shuffle, breaking", [
    (ExecutionMode.PIPELINED_FORCED, P, P, P),
    (ExecutionMode.PIPELINED, P, P, B),
    (ExecutionMode.BATCH, P, B, B),
    (ExecutionMode.BATCH_FORCED, B, B, B),
])
def test_data_exchange_mode_selection(mode, forward, shuffle, breaking):
    assert DataExchangeMode.get_for_forward_exchange(mode) is forward
    assert DataExchangeMode.get_for_shuffle_or_broadcast(mode) is shuffle
    assert DataExchangeMode.get_pipeline_breaking_exchange(mode) is breaking
    assert DataExchangeMode.select(mode, S.FORWARD, False) is forward
    for strategy in (S.PARTITION_HASH, S.BROADCAST, S.PARTITION_RANDOM, S.PARTITION_CUSTOM):
        assert DataExchangeMode.select(mode, strategy, False) is shuffle
        assert DataExchangeMode.select(mode, strategy, True) is breaking
    assert DataExchangeMode.select(mode, S.FORWARD, True) is breaking


def test_select_rejects_missing_arguments():
    with pytest.raises(ValueError):
        DataExchangeMode.select(ExecutionMode.BATCH, S.NONE, False)
    with pytest.raises(ValueError):
        DataExchangeMode.select(ExecutionMode.BATCH, None, False)
    with pytest.raises(ValueError):
        DataExchangeMode.select(None, S.FORWARD, False)


def test_distribution_patterns():
    assert {p.name for p in DistributionPattern} == {"ALL_TO_ALL", "POINTWISE"}
