"""Round-robin fairness of input gates (Flink's InputGateFairnessTest, local channels).

A gate takes one buffer from the channel at the head of its ready queue and puts that channel back
at the tail if it has more, so a busy channel cannot starve the others: with every channel
pre-filled, the channel indices come out as 0, 1, …, n−1, 0, 1, … and, as Flink checks, the
numbers of buffers left in the subpartitions never differ by more than one.
"""

from __future__ import annotations

import random

import pytest

from flinknet import events as ev
from flinknet.consumer import SingleInputGate, UnionInputGate
from flinknet.partition import ResultPartitionManager, create_result_partition
from flinknet.types import ResultPartitionType

SEGMENT = 64
FULL_RECORD = SEGMENT - 4  # fills one buffer exactly


@pytest.fixture
def manager():
    m = ResultPartitionManager()
    yield m
    m.shutdown()


def unbounded_partition(nbp, manager, n):
    """A partition whose pool may hold every buffer a test pre-fills (no backpressure)."""
    p = create_result_partition(nbp, n, ResultPartitionType.PIPELINED, partition_manager=manager,
                                max_buffers_per_channel=1000)
    p.setup()
    return p


def fill(p, sp, count, tag=0):
    for k in range(count):
        p.emit_record(bytes([tag, k % 256]) + bytes(FULL_RECORD - 2), sp)


def spread(p):
    sizes = [p.get_number_of_queued_buffers(i) for i in range(p.num_subpartitions)]
    return max(sizes) - min(sizes)


@pytest.mark.parametrize("num_channels, buffers_per_channel", [(2, 5), (7, 9), (13, 4)])
def test_fair_consumption_pre_filled(make_pool, manager, num_channels, buffers_per_channel):
    nbp = make_pool(num_channels * buffers_per_channel + 16, SEGMENT)
    p = unbounded_partition(nbp, manager, num_channels)
    for sp in range(num_channels):
        fill(p, sp, buffers_per_channel, tag=sp)
    p.finish()
    gate = SingleInputGate.create_local(manager, [(p.partition_id, i) for i in range(num_channels)])

    seq = []
    for _ in range(num_channels * (buffers_per_channel + 1)):
        boe = gate.poll_next()
        assert boe is not None
        idx = boe.channel_info.input_channel_idx
        seq.append(idx)
        if boe.is_buffer:
            assert boe.buffer.to_bytes()[4] == idx  # the channel's own data
            boe.buffer.recycle()
        else:
            assert boe.event == ev.EndOfPartitionEvent()
        assert gate.number_of_queued_channels <= num_channels
        assert spread(p) <= 1
    assert gate.poll_next() is None
    assert gate.is_finished
    # Channels were requested (and became ready) in index order: strict round robin.
    assert seq == list(range(num_channels)) * (buffers_per_channel + 1)
    gate.close()
    p.close()


def test_fair_consumption_with_channels_filled_in_random_order(make_pool, manager):
    """Flink's non-pre-filled variant: one seed buffer, then every 2·n reads three more buffers
    per channel in random order. Each channel gets exactly one turn per round."""
    num_channels, rounds = 9, 6
    rng = random.Random(7)
    nbp = make_pool(num_channels * 8 + 16, SEGMENT)
    p = unbounded_partition(nbp, manager, num_channels)
    gate = SingleInputGate.create_local(manager, [(p.partition_id, i) for i in range(num_channels)])
    gate.request_partitions()
    fill(p, 4, 1)
    p.flush_all()

    def fill_random():
        order = [c for c in range(num_channels) for _ in range(3)]
        rng.shuffle(order)
        for c in order:
            fill(p, c, 1, tag=c)
        p.flush_all()

    total = 1 + 3 * num_channels * rounds
    seq = []
    for i in range(total):
        boe = gate.poll_next()
        assert boe is not None, f"nothing ready at read {i}"
        seq.append(boe.channel_info.input_channel_idx)
        boe.buffer.recycle()
        if i > 0:
            assert spread(p) <= 1
        if i % (2 * num_channels) == 0 and i // (2 * num_channels) < rounds:
            fill_random()
    assert gate.poll_next() is None
    # After the seed, every window of n consecutive reads visits every channel once.
    body = seq[1:]
    for start in range(0, len(body) - num_channels + 1, num_channels):
        window = body[start:start + num_channels]
        assert sorted(window) == list(range(num_channels)), (start, window)
    p.finish()
    p.close()
    while (boe := gate.poll_next()) is not None:
        assert boe.is_event
    gate.close()


def test_a_busy_channel_does_not_starve_a_late_one(make_pool, manager):
    nbp = make_pool(64, SEGMENT)
    p = unbounded_partition(nbp, manager, 2)
    gate = SingleInputGate.create_local(manager, [(p.partition_id, 0), (p.partition_id, 1)])
    fill(p, 0, 20)
    p.flush_all()
    for _ in range(3):
        boe = gate.poll_next()
        assert boe.channel_info.input_channel_idx == 0
        boe.buffer.recycle()
    fill(p, 1, 1, tag=1)
    p.flush(1)
    # Channel 1 is served within one turn, not after channel 0's remaining 17 buffers.
    nxt = []
    for _ in range(2):
        boe = gate.poll_next()
        nxt.append(boe.channel_info.input_channel_idx)
        boe.buffer.recycle()
    assert 1 in nxt
    p.finish()
    p.close()
    for boe in gate:
        if boe.is_buffer:
            boe.buffer.recycle()
    gate.close()


def test_union_gate_takes_turns_between_gates(make_pool, manager):
    """UnionInputGate: ready gates take turns, one buffer each; within a gate its channels rotate."""
    nbp = make_pool(96, SEGMENT)
    pa = unbounded_partition(nbp, manager, 2)
    pb = unbounded_partition(nbp, manager, 1)
    for sp in range(2):
        fill(pa, sp, 6, tag=sp)
    fill(pb, 0, 12, tag=9)
    pa.finish()
    pb.finish()
    ga = SingleInputGate.create_local(manager, [(pa.partition_id, 0), (pa.partition_id, 1)], gate_index=0)
    gb = SingleInputGate.create_local(manager, [(pb.partition_id, 0)], gate_index=1)
    union = UnionInputGate(ga, gb)
    flat = []
    for _ in range(24):
        boe = union.poll_next()
        flat.append(union.channel_index(boe))
        boe.buffer.recycle()
    gates_seq = [0 if f < 2 else 1 for f in flat]
    assert gates_seq == [gates_seq[0], 1 - gates_seq[0]] * 12  # strictly alternating gates
    assert [f for f in flat if f < 2] == [0, 1] * 6
    assert [f for f in flat if f >= 2] == [2] * 12
    rest = [union.channel_index(b) for b in union]  # the three EndOfPartitions
    assert sorted(rest) == [0, 1, 2]
    assert union.is_finished
    union.close()
    pa.close()
    pb.close()
