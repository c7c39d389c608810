"""UnionInputGate over SingleInputGates of local channels (Flink's UnionInputGateTest)."""

from __future__ import annotations

import struct
import threading

import pytest

from flinknet import events as ev
from flinknet.consumer import SingleInputGate, UnionInputGate
from flinknet.errors import CancelTaskError, ConsumerLostError, ProducerFailedError
from flinknet.partition import ResultPartitionManager, create_result_partition
from tests.helpers import Worker

SEGMENT = 128
JOIN = 10.0


class Union:
    """Partitions and gates for one test, torn down even if the test failed half-way."""

    def __init__(self, nbp):
        self.nbp = nbp
        self.manager = ResultPartitionManager()
        self.partitions = []
        self.gates = []

    def partition(self, n):
        p = create_result_partition(self.nbp, n, partition_manager=self.manager)
        p.setup()
        self.partitions.append(p)
        return p

    def gate(self, partition, gate_index):
        g = SingleInputGate.create_local(
            self.manager, [(partition.partition_id, i) for i in range(partition.num_subpartitions)],
            gate_index=gate_index)
        self.gates.append(g)
        return g

    def teardown(self):
        for g in self.gates:
            g.close()
        for p in self.partitions:
            if not p.is_finished and not p.is_released:
                p.release()
            p.close()
        self.manager.shutdown()


@pytest.fixture
def un(make_pool):
    u = Union(make_pool(64, SEGMENT))
    yield u
    u.teardown()


def content(boe):
    if boe.is_buffer:
        data = boe.buffer.to_bytes()
        boe.buffer.recycle()
        out, pos = [], 0
        while pos < len(data):
            (n,) = struct.unpack_from(">i", data, pos)
            out.append(data[pos + 4:pos + 4 + n])
            pos += 4 + n
        return out
    return boe.event


def drain(union):
    out = []
    while (boe := union.poll_next()) is not None:
        out.append((union.channel_index(boe), content(boe)))
    return out


def release_after_losing(p, gate_index):
    """The producer's side of a gate closed before its EndOfPartition: the partition lost the
    consumer of every subpartition (the gate's local channels), so finishing it raises
    ConsumerLostError; the producer releases it instead, as a failed task does."""
    lost = p.lost_consumers
    assert sorted(lost) == list(range(p.num_subpartitions)), lost
    assert all(c.consumer.startswith(f"local gate #{gate_index} ") for c in lost.values()), lost
    with pytest.raises(ConsumerLostError):
        p.finish()
    p.release()
    p.close()


def test_all_buffers_and_events_arrive_with_flat_channel_indices(un):
    """Flink's testBasicGetNextLogic: gate 0 with 3 channels, gate 1 with 5."""
    p0, p1 = un.partition(3), un.partition(5)
    g0, g1 = un.gate(p0, 0), un.gate(p1, 1)
    union = UnionInputGate(g0, g1)
    assert union.number_of_input_channels == 8
    for sp in range(3):
        p0.emit_record(b"g0c%d" % sp, sp)
    for sp in range(5):
        p1.emit_record(b"g1c%d" % sp, sp)
    p0.broadcast_event(ev.CancelCheckpointMarker(4))
    p0.flush_all()
    p1.flush_all()

    got = drain(union)
    by_flat = {}
    for flat, what in got:
        by_flat.setdefault(flat, []).append(what)
    for sp in range(3):
        assert by_flat[sp] == [[b"g0c%d" % sp], ev.CancelCheckpointMarker(4)]
    for sp in range(5):
        assert by_flat[3 + sp] == [[b"g1c%d" % sp]]
    assert union.get_channel(0) is g0.get_channel(0)
    assert union.get_channel(3) is g1.get_channel(0)
    assert union.get_channel(7) is g1.get_channel(4)
    with pytest.raises(IndexError):
        union.get_channel(8)

    p0.finish()
    p1.finish()
    ends = drain(union)
    assert sorted(flat for flat, _ in ends) == list(range(8))
    assert all(e == ev.EndOfPartitionEvent() for _, e in ends)
    assert union.is_finished
    assert union.poll_next() is None
    assert union.get_next() is None
    union.close()
    p0.close()
    p1.close()


def test_finished_only_when_all_gates_finished(un):
    parts = [un.partition(1), un.partition(2), un.partition(1)]
    gates = [un.gate(p, i) for i, p in enumerate(parts)]
    union = UnionInputGate(*gates)
    union.request_partitions()
    for k, p in enumerate(parts):
        p.emit_record(b"last", 0)
        p.finish()
        got = []
        while (boe := union.poll_next()) is not None:
            got.append(content(boe))
        assert got.count(ev.EndOfPartitionEvent()) == p.num_subpartitions
        assert [b"last"] in got
        assert gates[k].is_finished
        assert union.is_finished == (k == len(parts) - 1)
        if k < len(parts) - 1:
            assert not union.is_available
            with pytest.raises(TimeoutError):
                union.get_next(timeout=0.01)
        p.close()
    assert union.get_next() is None
    assert union.get_available_future().done()
    union.close()


def test_poll_next_and_timeouts(un):
    p0, p1 = un.partition(1), un.partition(1)
    union = UnionInputGate([un.gate(p0, 0), un.gate(p1, 1)])  # a list works too
    assert union.poll_next() is None
    with pytest.raises(TimeoutError):
        union.get_next(timeout=0.05)
    f = union.get_available_future()
    assert not f.done()
    p1.emit_record(b"x", 0)
    p1.flush(0)
    assert f.done()
    boe = union.poll_next()
    assert union.channel_index(boe) == 1
    assert content(boe) == [b"x"]
    assert union.poll_next() is None
    assert not union.get_available_future().done()
    for p in (p0, p1):
        p.finish()
        p.close()
    assert len(drain(union)) == 2
    union.close()


def test_blocking_get_next_wakes_on_data_in_any_gate(un):
    p0, p1 = un.partition(1), un.partition(1)
    union = UnionInputGate(un.gate(p0, 0), un.gate(p1, 1))
    union.request_partitions()
    started = threading.Event()

    def read():
        started.set()
        boe = union.get_next(timeout=JOIN)
        return union.channel_index(boe), content(boe)

    reader = Worker(read)
    reader.start()
    assert started.wait(JOIN)
    p1.emit_record(b"wake", 0)
    p1.flush(0)
    reader.finish()
    assert reader.error is None
    assert reader.result == (1, [b"wake"])
    for p in (p0, p1):
        p.finish()
        p.close()
    drain(union)
    union.close()


def test_close_wakes_a_blocked_reader_and_closes_every_gate(un):
    p0, p1 = un.partition(1), un.partition(2)
    g0, g1 = un.gate(p0, 0), un.gate(p1, 1)
    union = UnionInputGate(g0, g1)
    p1.emit_record(b"queued" * 10, 1)
    p1.flush(1)
    union.request_partitions()
    started = threading.Event()

    def read():
        boe = union.get_next(timeout=JOIN)
        content(boe)
        started.set()
        return union.get_next()  # nothing more: only close() ends this

    reader = Worker(read)
    reader.start()
    assert started.wait(JOIN)
    union.close()
    reader.finish()
    assert isinstance(reader.error, CancelTaskError)
    assert g0.is_closed and g1.is_closed
    assert all(ch.is_released for g in (g0, g1) for ch in g.input_channels)
    with pytest.raises(CancelTaskError):
        union.get_next()
    with pytest.raises(CancelTaskError):
        union.poll_next()
    union.close()  # idempotent
    release_after_losing(p0, 0)
    release_after_losing(p1, 1)
    assert un.manager.get_unreleased_partitions() == []


def test_a_finished_gate_does_not_hide_a_closed_one(un):
    p0, p1 = un.partition(1), un.partition(1)
    g0, g1 = un.gate(p0, 0), un.gate(p1, 1)
    union = UnionInputGate(g0, g1)
    p0.finish()
    assert drain(union) == [(0, ev.EndOfPartitionEvent())]
    assert g0.is_finished and not union.is_finished
    g1.close()
    with pytest.raises(CancelTaskError):
        union.get_next(timeout=JOIN)
    union.close()
    p0.close()
    assert p0.lost_consumers == {}   # g0 read its EndOfPartition: a normal end
    release_after_losing(p1, 1)


def test_producer_failure_in_one_gate_surfaces_through_the_union(un):
    p0, p1 = un.partition(1), un.partition(1)
    union = UnionInputGate(un.gate(p0, 0), un.gate(p1, 1))
    union.request_partitions()
    cause = RuntimeError("producer 1 died")
    p1.fail(cause)
    with pytest.raises(ProducerFailedError) as info:
        union.get_next(timeout=JOIN)
    assert info.value.__cause__ is cause
    union.close()
    p1.close()
    assert p1.lost_consumers == {}   # failed by its producer: no loss
    release_after_losing(p0, 0)


def test_end_of_data_across_gates(un):
    p0, p1 = un.partition(1), un.partition(1)
    union = UnionInputGate(un.gate(p0, 0), un.gate(p1, 1))
    p0.notify_end_of_data(ev.StopMode.DRAIN)
    p0.flush_all()
    drain(union)
    assert not union.has_received_end_of_data
    p1.notify_end_of_data(ev.StopMode.NO_DRAIN)
    drain(union)
    assert union.has_received_end_of_data
    assert not union.should_drain_on_end_of_data
    for p in (p0, p1):
        p.finish()
        p.close()
    drain(union)
    assert union.is_finished
    union.close()


def test_resume_consumption_routes_to_the_right_gate(un):
    p0, p1 = un.partition(1), un.partition(1)
    union = UnionInputGate(un.gate(p0, 0), un.gate(p1, 1))
    barrier = ev.CheckpointBarrier(1, 1, ev.CheckpointOptions())  # aligned: blocks the channel
    for p in (p0, p1):
        p.broadcast_event(barrier)
        p.emit_record(b"after", 0)
        p.flush_all()
    got = []
    while (boe := union.poll_next()) is not None:
        got.append((boe.channel_info, content(boe)))
    assert sorted(ci.gate_idx for ci, _ in got) == [0, 1]
    assert all(what == barrier for _, what in got)
    union.resume_consumption(got[0][0])
    first = drain(union)
    assert first == [(got[0][0].gate_idx, [b"after"])]
    union.resume_consumption(got[1][0])
    assert drain(union) == [(got[1][0].gate_idx, [b"after"])]
    for p in (p0, p1):
        p.finish()
        p.close()
    drain(union)
    union.close()


def test_construction_is_checked(un):
    p0, p1 = un.partition(1), un.partition(1)
    g0, g1 = un.gate(p0, 0), un.gate(p1, 0)
    with pytest.raises(ValueError):
        UnionInputGate(g0)
    with pytest.raises(ValueError):
        UnionInputGate(g0, g0)
    with pytest.raises(ValueError):
        UnionInputGate(g0, g1)  # both have gate index 0
    for p in (p0, p1):
        p.finish()
        p.close()


def test_a_failed_gate_keeps_reporting_its_error(un):
    """Like a SingleInputGate with a failed channel, the union reports the failure on every poll
    instead of losing the gate after the first report."""
    p0, p1 = un.partition(1), un.partition(1)
    union = UnionInputGate(un.gate(p0, 0), un.gate(p1, 1))
    union.request_partitions()
    p1.fail(ValueError("x"))
    for _ in range(3):
        with pytest.raises(ProducerFailedError):
            union.poll_next()
    with pytest.raises(ProducerFailedError):
        union.get_next(timeout=JOIN)
    union.close()
    p1.close()
    assert p1.lost_consumers == {}   # failed by its producer: no loss
    release_after_losing(p0, 0)


def test_priority_event_overtakes_other_gates_data(un):
    """The union's ready queue is priority-aware (Flink's UnionInputGate): a gate with a priority
    event moves ahead of gates queued with data."""
    parts = [un.partition(1) for _ in range(3)]
    union = UnionInputGate(*[un.gate(p, i) for i, p in enumerate(parts)])
    union.request_partitions()
    for k in range(3):
        for p in parts:
            p.emit_record(bytes([k]) * (SEGMENT - 4), 0)
    for p in parts:
        p.flush_all()
    first = union.poll_next()
    assert union.channel_index(first) == 0
    content(first)
    barrier = ev.CheckpointBarrier(1, 1, ev.CheckpointOptions(alignment=ev.AlignmentType.UNALIGNED))
    parts[2].broadcast_event(barrier, is_priority=True)  # gate 2 is queued last, behind gate 1
    boe = union.poll_next()
    assert (union.channel_index(boe), boe.event, boe.has_priority) == (2, barrier, True)
    # Then the data, each gate in turn, none lost or duplicated.
    rest = drain(union)
    assert sorted((flat, w[0][0]) for flat, w in rest) == sorted(
        [(0, 1), (0, 2)] + [(g, k) for g in (1, 2) for k in range(3)])
    for p in parts:
        p.finish()
        p.close()
    drain(union)
    assert union.is_finished
    union.close()


def test_priority_event_in_an_idle_gate_goes_first(un):
    p0, p1 = un.partition(1), un.partition(1)
    union = UnionInputGate(un.gate(p0, 0), un.gate(p1, 1))
    union.request_partitions()
    for _ in range(3):
        p0.emit_record(b"x" * (SEGMENT - 4), 0)
    p0.flush_all()
    barrier = ev.CheckpointBarrier(2, 2, ev.CheckpointOptions(alignment=ev.AlignmentType.UNALIGNED))
    p1.broadcast_event(barrier, is_priority=True)
    boe = union.poll_next()
    assert union.channel_index(boe) == 1 and boe.event == barrier
    assert [flat for flat, _ in drain(union)] == [0, 0, 0]
    for p in (p0, p1):
        p.finish()
        p.close()
    drain(union)
    union.close()


def test_a_gate_with_more_priority_events_stays_ahead(un):
    """After one priority event, a gate with another one queued goes back into the union's
    priority section, not behind the other gates' data."""
    pa, pb = un.partition(2), un.partition(1)
    union = UnionInputGate(un.gate(pa, 0), un.gate(pb, 1))
    union.request_partitions()
    for _ in range(2):
        pb.emit_record(b"b" * (SEGMENT - 4), 0)
    pb.flush_all()
    barrier = ev.CheckpointBarrier(3, 3, ev.CheckpointOptions(alignment=ev.AlignmentType.UNALIGNED))
    pa.broadcast_event(barrier, is_priority=True)  # one barrier per channel of gate 0
    first, second = union.poll_next(), union.poll_next()
    assert (first.event, second.event) == (barrier, barrier)
    assert first.more_priority_events and not second.more_priority_events
    assert sorted([union.channel_index(first), union.channel_index(second)]) == [0, 1]
    assert [flat for flat, _ in drain(union)] == [2, 2]
    for p in (pa, pb):
        p.finish()
        p.close()
    drain(union)
    union.close()
