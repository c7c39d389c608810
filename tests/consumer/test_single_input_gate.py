"""SingleInputGate over local channels fed by real result partitions (Flink's SingleInputGateTest).

Every test drives a :class:`~flinknet.partition.PipelinedResultPartition` registered with a
:class:`~flinknet.partition.ResultPartitionManager` and reads it through
``SingleInputGate.create_local``. Data buffers taken from the gate are recycled by the test; events
are recycled by the gate. Threads are joined with generous deadlines; nothing asserts on timing.
"""

from __future__ import annotations

import select
import struct
import threading

import pytest

from flinknet import events as ev
from flinknet.consumer import BufferOrEvent, InputChannelInfo, LocalInputChannel, SingleInputGate
from flinknet.errors import CancelTaskError, ConsumerLostError, IllegalStateError, ProducerFailedError
from flinknet.ids import ResultPartitionID
from flinknet.partition import ResultPartitionManager, create_result_partition
from tests.helpers import Worker

SEGMENT = 128
FULL_RECORD = SEGMENT - 4  # a record of this size fills one buffer exactly (4-byte length prefix)
JOIN = 10.0

UNALIGNED = ev.CheckpointOptions(alignment=ev.AlignmentType.UNALIGNED)


# -- harness ---------------------------------------------------------------------------------------

class Exchange:
    """A global pool, a partition manager, and the partitions/gates a test made (closed at teardown
    if the test did not get that far)."""

    def __init__(self, nbp):
        self.nbp = nbp
        self.manager = ResultPartitionManager()
        self.partitions = []
        self.gates = []

    def partition(self, num_subpartitions=1, setup=True, **kwargs):
        p = create_result_partition(self.nbp, num_subpartitions, partition_manager=self.manager, **kwargs)
        self.partitions.append(p)
        if setup:
            p.setup()
        return p

    def gate(self, channels, **kwargs):
        g = SingleInputGate.create_local(self.manager, channels, **kwargs)
        self.gates.append(g)
        return g

    def gate_of(self, partition, **kwargs):
        return self.gate([(partition.partition_id, i) for i in range(partition.num_subpartitions)],
                         **kwargs)

    def teardown(self):
        for g in self.gates:
            g.close()
        for p in self.partitions:
            if not p.is_finished and not p.is_released:
                p.release()
            p.close()
        self.manager.shutdown()


@pytest.fixture
def ex(make_pool):
    e = Exchange(make_pool(64, SEGMENT))
    yield e
    e.teardown()


def records_of(data: bytes) -> list[bytes]:
    """The whole length-prefixed records in one buffer's bytes."""
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from(">i", data, pos)
        out.append(data[pos + 4:pos + 4 + n])
        pos += 4 + n
    assert pos == len(data)
    return out


def take(boe: BufferOrEvent):
    """What a BufferOrEvent carries, as a comparable value; recycles a data buffer."""
    if boe.is_buffer:
        try:
            return records_of(boe.buffer.to_bytes())
        finally:
            boe.buffer.recycle()
    return boe.event


def drain(gate) -> list[tuple[int, object]]:
    """``(channel index, content)`` of everything ready now (poll_next until None)."""
    out = []
    while (boe := gate.poll_next()) is not None:
        out.append((boe.channel_info.input_channel_idx, take(boe)))
    return out


def per_channel(items, n):
    chans = [[] for _ in range(n)]
    for idx, what in items:
        chans[idx].append(what)
    return chans


def release_after_losing(p, gate, subpartitions):
    """The producer's side of a gate closed before its EndOfPartition: the partition lost the
    consumer of each of ``subpartitions`` (named after the gate), so finishing it raises
    ConsumerLostError; the producer releases it instead, as a failed task does."""
    lost = p.lost_consumers
    assert sorted(lost) == sorted(subpartitions), lost
    for i in subpartitions:
        assert lost[i].consumer.startswith(f"local gate #{gate.gate_index} (channel "), lost[i]
    with pytest.raises(ConsumerLostError):
        p.finish()
    p.release()
    p.close()


# -- basic sequences -------------------------------------------------------------------------------

def test_buffers_and_events_arrive_in_order_per_channel(ex):
    p = ex.partition(2)
    gate = ex.gate_of(p)
    p.emit_record(b"a0", 0)
    p.emit_record(b"b0", 1)
    p.broadcast_event(ev.CancelCheckpointMarker(7))
    p.emit_record(b"a1", 0)
    p.emit_record(b"a2", 0)
    p.emit_event(ev.EndOfSuperstepEvent(), 1)
    p.flush_all()

    got = per_channel(drain(gate), 2)
    assert got[0] == [[b"a0"], ev.CancelCheckpointMarker(7), [b"a1", b"a2"]]
    assert got[1] == [[b"b0"], ev.CancelCheckpointMarker(7), ev.EndOfSuperstepEvent()]
    assert gate.poll_next() is None
    assert not gate.is_finished

    p.finish()
    p.close()
    assert per_channel(drain(gate), 2) == [[ev.EndOfPartitionEvent()], [ev.EndOfPartitionEvent()]]
    assert gate.is_finished
    gate.close()


def test_buffer_or_event_fields(ex):
    p = ex.partition(1)
    gate = ex.gate_of(p)
    p.emit_record(b"xyz", 0)
    p.broadcast_event(ev.CancelCheckpointMarker(1))
    p.flush_all()

    boe = gate.get_next(timeout=JOIN)
    assert boe.is_buffer and not boe.is_event
    assert boe.channel_info == InputChannelInfo(0, 0)
    assert boe.size == 7 == boe.buffer.size
    assert boe.more_available  # the event is queued behind it
    assert not boe.has_priority
    boe.buffer.recycle()

    boe = gate.get_next(timeout=JOIN)
    assert boe.is_event and boe.buffer is None
    assert boe.event == ev.CancelCheckpointMarker(1)
    assert boe.size == len(ev.to_serialized_event(ev.CancelCheckpointMarker(1)))
    assert not boe.more_available
    p.finish()
    p.close()


def test_iterating_the_gate_yields_everything_then_stops(ex):
    p = ex.partition(3)
    gate = ex.gate_of(p)
    for i in range(9):
        p.emit_record(b"r%d" % i, i % 3)
    p.finish()
    p.close()
    got = [(boe.channel_info.input_channel_idx, take(boe)) for boe in gate]
    chans = per_channel(got, 3)
    for c in range(3):
        assert chans[c] == [[b"r%d" % c, b"r%d" % (c + 3), b"r%d" % (c + 6)], ev.EndOfPartitionEvent()]
    assert gate.get_next() is None


# -- end of partition / end of data ----------------------------------------------------------------

def test_end_of_partition_per_channel_then_finished(ex):
    """Each channel's EndOfPartition is returned; the gate is finished only after the last one,
    each channel is released after its own, and afterwards get_next/poll_next return None."""
    parts = [ex.partition(1) for _ in range(3)]
    gate = ex.gate([(p.partition_id, 0) for p in parts])
    gate.request_partitions()
    for k, p in enumerate(parts):
        p.finish()
        boe = gate.get_next(timeout=JOIN)
        assert boe.is_event and boe.event == ev.EndOfPartitionEvent()
        assert boe.channel_info.input_channel_idx == k
        assert gate.get_channel(k).is_released
        assert gate.is_finished == (k == 2)
        if k < 2:
            assert not gate.get_channel(k + 1).is_released
            with pytest.raises(TimeoutError):
                gate.get_next(timeout=0.01)
        p.close()
    assert gate.get_next() is None
    assert gate.get_next(timeout=0.01) is None
    assert gate.poll_next() is None
    assert gate.is_available
    assert gate.get_available_future().done()
    # Released views consumed the pipelined partitions: the manager forgot them.
    assert ex.manager.get_unreleased_partitions() == []
    gate.close()
    assert gate.get_next() is None  # finished wins over closed, as in Flink


def test_end_of_partition_is_returned_before_finishing_with_data_queued_elsewhere(ex):
    p = ex.partition(2)
    gate = ex.gate_of(p)
    p.emit_record(b"late", 1)
    p.flush_all()
    p.subpartitions[0].finish()  # only subpartition 0 ends
    got = drain(gate)
    assert sorted(got, key=lambda t: t[0]) == [(0, ev.EndOfPartitionEvent()), (1, [b"late"])]
    assert not gate.is_finished
    p.finish()
    assert drain(gate) == [(1, ev.EndOfPartitionEvent())]
    assert gate.is_finished
    p.close()


@pytest.mark.parametrize("modes, drain_expected", [
    ((ev.StopMode.DRAIN, ev.StopMode.DRAIN), True),
    ((ev.StopMode.DRAIN, ev.StopMode.NO_DRAIN), False),
    ((ev.StopMode.NO_DRAIN, ev.StopMode.NO_DRAIN), False),
])
def test_end_of_data_on_all_channels(ex, modes, drain_expected):
    parts = [ex.partition(1) for _ in modes]
    gate = ex.gate([(p.partition_id, 0) for p in parts])
    gate.request_partitions()
    for k, (p, mode) in enumerate(zip(parts, modes)):
        assert not gate.has_received_end_of_data
        p.notify_end_of_data(mode)
        p.notify_end_of_data(mode)  # sent once only
        boe = gate.get_next(timeout=JOIN)
        assert boe.event == ev.EndOfData(mode)
        assert boe.channel_info.input_channel_idx == k
        assert gate.poll_next() is None
    assert gate.has_received_end_of_data
    assert gate.should_drain_on_end_of_data is drain_expected
    assert not gate.is_finished  # EndOfData is not EndOfPartition
    for p in parts:
        p.finish()
        p.close()
    assert [e for _, e in drain(gate)] == [ev.EndOfPartitionEvent()] * len(parts)
    assert gate.is_finished


def test_end_of_data_twice_on_a_channel_is_an_error(ex):
    p = ex.partition(1)
    gate = ex.gate_of(p)
    p.broadcast_event(ev.EndOfData(ev.StopMode.DRAIN))
    p.broadcast_event(ev.EndOfData(ev.StopMode.DRAIN))  # bypasses notify_end_of_data's guard
    assert gate.get_next(timeout=JOIN).event == ev.EndOfData(ev.StopMode.DRAIN)
    with pytest.raises(IllegalStateError, match="EndOfData twice"):
        gate.get_next(timeout=JOIN)
    p.finish()
    p.close()


# -- non-blocking and timed reads ------------------------------------------------------------------

def test_poll_next_returns_none_when_nothing_is_ready(ex):
    p = ex.partition(2)
    gate = ex.gate_of(p)
    assert gate.poll_next() is None
    p.emit_record(b"x", 0)  # not flushed: not readable yet
    assert gate.poll_next() is None
    p.flush(0)
    assert take(gate.poll_next()) == [b"x"]
    assert gate.poll_next() is None
    assert not gate.is_finished
    p.finish()
    p.close()


def test_get_next_with_timeout_raises_timeout_error(ex):
    p = ex.partition(1)
    gate = ex.gate_of(p)
    with pytest.raises(TimeoutError):
        gate.get_next(timeout=0.05)
    with pytest.raises(TimeoutError):
        gate.get_next(timeout=0)
    # The gate is still usable afterwards.
    p.emit_record(b"x", 0)
    p.flush(0)
    assert take(gate.get_next(timeout=JOIN)) == [b"x"]
    p.finish()
    p.close()


def test_blocking_get_next_wakes_on_data_from_a_producer_thread(ex):
    p = ex.partition(1)
    gate = ex.gate_of(p)
    gate.request_partitions()
    waiting = threading.Event()

    def read():
        waiting.set()
        return take(gate.get_next(timeout=JOIN))

    reader = Worker(read)
    reader.start()
    assert waiting.wait(JOIN)
    p.emit_record(b"hello", 0)
    p.flush(0)
    reader.finish()
    assert reader.error is None
    assert reader.result == [b"hello"]
    p.finish()
    p.close()


def test_what_the_reader_queues_itself_leaves_no_wake_up_behind(ex):
    """Reading a channel that has more buffers re-queues it, and draining the doorbell queues
    the channels it names: the reader's own doing. Neither may leave a wake-up for its next wait,
    which would answer it at once with a poll that finds nothing; data made ready by another
    thread still wakes it."""
    p = ex.partition(2)
    gate = ex.gate_of(p)
    for i in range(3):                       # three buffers on channel 0: it is re-queued twice
        p.emit_record(bytes([i]) * FULL_RECORD, 0)
    p.emit_record(b"y", 1)
    p.flush_all()
    got = drain(gate)
    assert sorted(idx for idx, _ in got) == [0, 0, 0, 1]
    signal = gate.signal
    # nothing ready: an event loop waits (the producer's notifies before the reads are stale)
    assert not gate.arm_wake_fd()
    assert select.select([signal.wake_fd], [], [], 0)[0] == []
    p.emit_record(b"z", 1)
    p.flush(1)                               # ready from the producer's side: the eventfd is rung
    assert select.select([signal.wake_fd], [], [], JOIN)[0] == [signal.wake_fd]
    signal.clear_fd()
    signal.disarm()
    assert gate.arm_wake_fd()                # ready now: poll, nothing armed
    assert drain(gate) == [(1, [b"z"])]
    with pytest.raises(TimeoutError):        # and a thread's wait ends only at its timeout
        gate.get_next(timeout=0.01)
    p.finish()
    p.close()


# -- close -----------------------------------------------------------------------------------------

def test_close_wakes_a_blocked_reader_with_cancel_task_error(ex):
    p = ex.partition(1)
    gate = ex.gate_of(p)
    gate.request_partitions()
    started = threading.Event()

    def read():
        started.set()
        return gate.get_next()  # no timeout: only close() can end this

    reader = Worker(read)
    reader.start()
    assert started.wait(JOIN)
    # Close from this thread; the reader may or may not be inside wait() yet: both must end in
    # CancelTaskError.
    gate.close()
    reader.finish()
    assert isinstance(reader.error, CancelTaskError)
    assert "closed" in str(reader.error)
    assert gate.is_closed
    assert gate.get_channel(0).is_released
    assert gate.get_available_future().done()  # a waiting framework wakes up and sees the close
    release_after_losing(p, gate, [0])


@pytest.mark.parametrize("policy", ["fail", "discard"])
def test_close_releases_channels_and_returns_producer_buffers(ex, policy):
    p = ex.partition(2, on_consumer_lost=policy)
    gate = ex.gate_of(p)
    for i in range(3):
        p.emit_record(bytes([i]) * FULL_RECORD, 0)
        p.emit_record(bytes([i]) * FULL_RECORD, 1)
    p.flush_all()
    # Read one buffer so the views exist and hold the rest.
    assert take(gate.get_next(timeout=JOIN)) == [bytes([0]) * FULL_RECORD]
    assert p.buffer_pool.used_buffers == 5
    gate.close()
    assert all(ch.is_released for ch in gate.input_channels)
    assert all(ch.subpartition_view is None for ch in gate.input_channels)
    assert gate.number_of_queued_channels == 0
    assert p.buffer_pool.used_buffers == 0  # the queued buffers went back to the producer's pool
    gate.close()  # idempotent
    assert sorted(p.lost_consumers) == [0, 1]
    if policy == "discard":
        # The producer keeps going; what it writes for the gone consumer is discarded.
        p.emit_record(b"dropped", 0)
        p.finish()
        p.close()
    else:
        # The producer learns that its consumer is gone.
        with pytest.raises(ConsumerLostError) as info:
            p.emit_record(b"rejected", 0)
        assert info.value.subpartition in (0, 1) and "local gate #0" in str(info.value)
        assert p.buffer_pool.used_buffers == 0
        release_after_losing(p, gate, [0, 1])
    assert ex.manager.get_unreleased_partitions() == []


def test_a_closed_gate_queues_nothing_and_stays_available(ex):
    """Releasing the views on close notifies the channels once more (their subpartitions are
    released); the closed gate must not queue them again, and its availability future must stay
    done so that a framework waiting on it wakes up and sees the close."""
    p = ex.partition(2)
    gate = ex.gate_of(p)
    p.emit_record(b"read", 0)
    p.flush(0)
    assert take(gate.get_next(timeout=JOIN)) == [b"read"]
    p.emit_record(b"unflushed", 1)  # queued in the producer, not readable
    assert gate.number_of_queued_channels == 0
    assert not gate.get_available_future().done()
    gate.close()
    assert gate.number_of_queued_channels == 0
    assert gate.get_available_future().done()
    with pytest.raises(CancelTaskError):
        gate.poll_next()
    assert gate.get_available_future().done()
    release_after_losing(p, gate, [0, 1])


def test_get_next_and_poll_next_after_close_raise_cancel_task_error(ex):
    p = ex.partition(1)
    gate = ex.gate_of(p)
    p.emit_record(b"x", 0)
    p.flush(0)
    gate.close()
    with pytest.raises(CancelTaskError):
        gate.get_next()
    with pytest.raises(CancelTaskError):
        gate.get_next(timeout=0.01)
    with pytest.raises(CancelTaskError):
        gate.poll_next()
    with pytest.raises(CancelTaskError):
        gate.request_partitions()
    with pytest.raises(CancelTaskError):
        gate.resume_consumption(InputChannelInfo(0, 0))
    p.finish()
    p.close()


def test_close_as_context_manager(ex):
    p = ex.partition(1)
    with ex.gate_of(p) as gate:
        p.emit_record(b"x", 0)
        p.flush(0)
        assert take(gate.get_next(timeout=JOIN)) == [b"x"]
    assert gate.is_closed
    release_after_losing(p, gate, [0])


# -- availability ----------------------------------------------------------------------------------

def test_available_future_completes_on_data_from_producer_thread_and_resets(ex):
    p = ex.partition(2)
    gate = ex.gate_of(p)
    gate.request_partitions()
    f1 = gate.get_available_future()
    assert not f1.done()
    assert not gate.is_available

    producer = Worker(lambda: (p.emit_record(b"data", 1), p.flush(1)))
    producer.start()
    f1.result(timeout=JOIN)  # completed by the producer's thread
    producer.finish()
    assert producer.error is None
    assert gate.is_available
    assert gate.get_available_future() is f1  # still available: the same, completed future

    assert take(gate.poll_next()) == [b"data"]
    f2 = gate.get_available_future()
    assert f2 is not f1 and not f2.done()  # reset once the gate ran empty
    assert gate.poll_next() is None
    assert gate.get_available_future() is f2

    p.emit_record(b"more", 0)
    p.flush(0)
    assert f2.done()
    assert take(gate.poll_next()) == [b"more"]
    assert not gate.get_available_future().done()

    p.finish()
    p.close()
    drain(gate)
    assert gate.is_finished
    assert gate.get_available_future().done()  # a finished gate stays available


def test_available_future_is_done_when_data_is_already_there(ex):
    p = ex.partition(1)
    p.emit_record(b"x", 0)
    p.flush(0)
    gate = ex.gate_of(p)
    gate.request_partitions()
    assert gate.get_available_future().done()
    assert take(gate.poll_next()) == [b"x"]
    p.finish()
    p.close()


# -- priority events -------------------------------------------------------------------------------

def test_priority_events_overtake_queued_data(ex):
    p = ex.partition(2)
    gate = ex.gate_of(p)
    for i in range(3):
        p.emit_record(bytes([i]) * FULL_RECORD, 0)
        p.emit_record(bytes([i]) * FULL_RECORD, 1)
    p.flush_all()
    gate.request_partitions()
    assert not gate.get_priority_event_available_future().done()
    barrier = ev.CheckpointBarrier(1, 123, UNALIGNED)
    p.broadcast_event(barrier, is_priority=True)
    assert gate.get_priority_event_available_future().done()

    first = gate.poll_next()
    assert first.event == barrier and first.has_priority
    assert first.more_priority_events  # the other channel's barrier is still queued
    second = gate.poll_next()
    assert second.event == barrier and second.has_priority
    assert not second.more_priority_events
    assert {first.channel_info.input_channel_idx, second.channel_info.input_channel_idx} == {0, 1}
    assert not gate.get_priority_event_available_future().done()

    rest = per_channel(drain(gate), 2)
    assert rest == [[[bytes([i]) * FULL_RECORD] for i in range(3)]] * 2
    p.finish()
    p.close()


def test_priority_event_on_a_channel_behind_another_channels_data(ex):
    """A channel that becomes ready with a priority event jumps ahead of channels queued with data,
    and the priority future completes even though the gate already had data queued."""
    p = ex.partition(2)
    gate = ex.gate_of(p)
    gate.request_partitions()
    p.emit_record(b"data", 0)
    p.flush(0)
    assert gate.get_available_future().done()
    prio = gate.get_priority_event_available_future()
    assert not prio.done()
    barrier = ev.CheckpointBarrier(2, 5, UNALIGNED)
    p.emit_event(barrier, 1, is_priority=True)
    assert prio.done()
    boe = gate.poll_next()
    assert boe.channel_info.input_channel_idx == 1 and boe.event == barrier and boe.has_priority
    assert take(gate.poll_next()) == [b"data"]
    p.finish()
    p.close()


def test_priority_event_upgrades_a_channel_already_queued_with_data(ex):
    p = ex.partition(3)
    gate = ex.gate_of(p)
    gate.request_partitions()
    for sp in range(3):
        p.emit_record(b"d%d" % sp, sp)
        p.flush(sp)
    barrier = ev.CheckpointBarrier(3, 5, UNALIGNED)
    p.emit_event(barrier, 2, is_priority=True)  # channel 2 is queued last, with data
    assert gate.number_of_queued_channels == 3  # moved, not duplicated
    boe = gate.poll_next()
    assert (boe.channel_info.input_channel_idx, boe.event) == (2, barrier)
    got = drain(gate)
    assert sorted(got) == [(0, [b"d0"]), (1, [b"d1"]), (2, [b"d2"])]
    p.finish()
    p.close()


# -- failures --------------------------------------------------------------------------------------

def test_producer_failure_surfaces_as_producer_failed_error(ex):
    p = ex.partition(1)
    gate = ex.gate_of(p)
    p.emit_record(b"before", 0)
    p.flush(0)
    assert take(gate.get_next(timeout=JOIN)) == [b"before"]

    waiting = threading.Event()

    def read():
        waiting.set()
        return gate.get_next(timeout=JOIN)

    reader = Worker(read)
    reader.start()
    assert waiting.wait(JOIN)
    cause = ValueError("x")
    p.fail(cause)
    reader.finish()
    err = reader.error
    assert isinstance(err, ProducerFailedError)
    assert isinstance(err, CancelTaskError)
    assert err.__cause__ is cause
    # Every later poll reports it again.
    with pytest.raises(ProducerFailedError) as again:
        gate.poll_next()
    assert again.value.__cause__ is cause
    gate.close()
    p.close()
    assert ex.manager.get_unreleased_partitions() == []


def test_producer_failure_with_unread_data_drops_it(ex):
    p = ex.partition(1)
    gate = ex.gate_of(p)
    gate.request_partitions()
    for i in range(3):
        p.emit_record(bytes([i]) * FULL_RECORD, 0)
    p.flush(0)
    p.fail(ValueError("boom"))
    assert p.buffer_pool.used_buffers == 0
    with pytest.raises(ProducerFailedError) as info:
        gate.get_next(timeout=JOIN)
    assert str(info.value.__cause__) == "boom"
    gate.close()
    p.close()


# -- partition requests ----------------------------------------------------------------------------

def test_request_partitions_is_lazy_on_first_poll(ex):
    p = ex.partition(2)
    gate = ex.gate_of(p)
    assert not any(sp.has_view for sp in p.subpartitions)
    assert all(ch.subpartition_view is None for ch in gate.input_channels)
    assert gate.poll_next() is None
    assert all(sp.has_view for sp in p.subpartitions)
    p.finish()
    p.close()
    assert [e for _, e in drain(gate)] == [ev.EndOfPartitionEvent()] * 2


def test_request_partitions_is_idempotent(ex):
    p = ex.partition(1)
    gate = ex.gate_of(p)
    gate.request_partitions()
    view = gate.get_channel(0).subpartition_view
    assert view is not None
    gate.request_partitions()
    gate.get_channel(0).request_subpartitions()
    assert gate.get_channel(0).subpartition_view is view
    assert gate.get_channel(0).failure_cause is None  # no second view was asked for
    p.emit_record(b"once", 0)
    p.finish()
    p.close()
    got = drain(gate)
    assert got == [(0, [b"once"]), (0, ev.EndOfPartitionEvent())]


def test_gate_reads_a_partition_registered_before_or_after_gate_creation(ex):
    early = ex.partition(1)
    late = ex.partition(1, setup=False)
    gate = ex.gate([(early.partition_id, 0), (late.partition_id, 0)], initial_backoff=1, max_backoff=1000)
    gate.request_partitions()
    late.setup()
    for p in (early, late):
        p.emit_record(b"x", 0)
        p.finish()
        p.close()
    got = []
    while (boe := gate.get_next(timeout=JOIN)) is not None:
        got.append((boe.channel_info.input_channel_idx, take(boe)))
    assert per_channel(got, 2) == [[[b"x"], ev.EndOfPartitionEvent()]] * 2


# -- construction checks ---------------------------------------------------------------------------

def test_construction_is_checked(ex):
    with pytest.raises(ValueError):
        SingleInputGate(-1)
    gate = SingleInputGate(3, "task")
    pid = ResultPartitionID()
    with pytest.raises(ValueError):
        gate.set_input_channels([])
    with pytest.raises(TypeError):
        gate.set_input_channels([object()])
    other = SingleInputGate(4)
    with pytest.raises(ValueError):
        gate.set_input_channels([LocalInputChannel(other, 0, pid, 0, ex.manager)])
    with pytest.raises(ValueError):
        gate.set_input_channels([LocalInputChannel(gate, 1, pid, 0, ex.manager)])
    ch = LocalInputChannel(gate, 0, pid, 0, ex.manager)
    gate.set_input_channels([ch])
    assert ch.channel_info == InputChannelInfo(3, 0)
    assert gate.number_of_input_channels == 1
    with pytest.raises(IllegalStateError):
        gate.set_input_channels([ch])
    gate.close()
    no_channels = SingleInputGate(5)
    with pytest.raises(IllegalStateError):
        no_channels.request_partitions()
    no_channels.close()
