"""Input channels: backoff (Flink's InputChannelTest) and LocalInputChannel (LocalInputChannelTest).

Local channels read real PipelinedSubpartitions through a ResultPartitionManager; partition
requests that find nothing retry with backoff on the gate's timer.
"""

from __future__ import annotations

import threading

import pytest

from flinknet import events as ev
from flinknet._core.buffer import DataType
from flinknet.consumer import (
    DEFAULT_INITIAL_BACKOFF,
    DEFAULT_MAX_BACKOFF,
    InputChannel,
    SingleInputGate,
)
from flinknet.errors import CancelTaskError, PartitionNotFoundError, ProducerFailedError
from flinknet.ids import ResultPartitionID
from flinknet.interfaces import BufferAndBacklog
from flinknet.partition import ResultPartitionManager, create_result_partition
from tests.helpers import Worker

SEGMENT = 128
JOIN = 10.0


def backoffs(channel):
    """The waits ``increase_backoff`` grants, until it refuses (bounded, in case it never does)."""
    out = []
    for _ in range(100):
        if not channel.increase_backoff():
            return out
        out.append(channel.current_backoff)
    raise AssertionError(f"increase_backoff never gave up: {out[:12]}...")


def channel(initial=DEFAULT_INITIAL_BACKOFF, maximum=DEFAULT_MAX_BACKOFF):
    return InputChannel(SingleInputGate(0), 0, ResultPartitionID(), 0, initial, maximum)


# -- backoff ---------------------------------------------------------------------------------------

def test_backoff_series_with_flink_defaults():
    assert (DEFAULT_INITIAL_BACKOFF, DEFAULT_MAX_BACKOFF) == (100, 10_000)
    ch = channel()
    assert ch.current_backoff == 0
    assert backoffs(ch) == [100, 200, 400, 800, 1600, 3200, 6400, 10000]
    assert not ch.increase_backoff()  # stays exhausted
    assert ch.current_backoff == 10000


def test_backoff_is_capped_at_max():
    assert backoffs(channel(500, 3000)) == [500, 1000, 2000, 3000]
    assert backoffs(channel(1, 4)) == [1, 2, 4]


def test_initial_backoff_zero_disables_retries():
    ch = channel(0, 0)
    assert not ch.increase_backoff()
    assert ch.current_backoff == 0
    assert backoffs(channel(0, 1000)) == []


def test_initial_equal_to_max_gives_one_retry():
    assert backoffs(channel(500, 500)) == [500]


@pytest.mark.parametrize("initial, maximum", [(-1, 10), (10, -1), (20, 10)])
def test_invalid_backoffs_are_rejected(initial, maximum):
    with pytest.raises(ValueError):
        channel(initial, maximum)


def test_channel_arguments_are_checked():
    gate = SingleInputGate(0)
    with pytest.raises(TypeError):
        InputChannel(gate, 0, "not an id", 0)
    with pytest.raises(ValueError):
        InputChannel(gate, -1, ResultPartitionID(), 0)
    with pytest.raises(ValueError):
        InputChannel(gate, 0, ResultPartitionID(), -1)


# -- local channel: partition requests -------------------------------------------------------------

@pytest.fixture
def manager():
    m = ResultPartitionManager()
    yield m
    m.shutdown()


def test_local_channel_retries_until_the_partition_is_registered(make_pool, manager):
    """Flink's testConcurrentReleaseAndRetriggerPartitionRequest's happy half: the producer
    registers its partition after the consumer asked; the retry with backoff finds it."""
    nbp = make_pool(32, SEGMENT)
    pid = ResultPartitionID()
    # max_backoff is generous so that a slow machine cannot exhaust the retries; the test does
    # not wait for it.
    gate = SingleInputGate.create_local(manager, [(pid, 0)], initial_backoff=10, max_backoff=2000)
    p = create_result_partition(nbp, 1, partition_manager=manager, partition_id=pid)
    first_request_failed = threading.Event()

    def produce():
        # Register only after the consumer's first request failed.
        assert first_request_failed.wait(JOIN)
        p.setup()
        p.emit_record(b"late", 0)
        p.finish()

    ch = gate.get_channel(0)
    producer = Worker(produce)
    producer.start()
    gate.request_partitions()
    assert ch.subpartition_view is None
    assert ch.current_backoff >= 10  # the first request failed and a retry is scheduled
    first_request_failed.set()

    got = []
    while (boe := gate.get_next(timeout=JOIN)) is not None:
        if boe.is_buffer:
            got.append(boe.buffer.to_bytes())
            boe.buffer.recycle()
        else:
            got.append(boe.event)
    producer.finish()
    assert producer.error is None
    assert got == [b"\x00\x00\x00\x04late", ev.EndOfPartitionEvent()]
    assert ch.failure_cause is None
    gate.close()
    p.close()


def test_local_channel_registered_later_from_another_thread(make_pool, manager):
    nbp = make_pool(32, SEGMENT)
    pid = ResultPartitionID()
    gate = SingleInputGate.create_local(manager, [(pid, 0)], initial_backoff=10, max_backoff=2000)
    p = create_result_partition(nbp, 1, partition_manager=manager, partition_id=pid)
    timer = threading.Timer(0.15, p.setup)
    timer.start()
    try:
        gate.request_partitions()
        with pytest.raises(TimeoutError):
            gate.get_next(timeout=0)  # nothing yet, and no error: still retrying
        timer.join(JOIN)
        assert manager.contains(pid)
        p.emit_record(b"x", 0)
        p.flush(0)
        boe = gate.get_next(timeout=JOIN)
        assert boe.buffer.to_bytes() == b"\x00\x00\x00\x01x"
        boe.buffer.recycle()
    finally:
        timer.cancel()
        timer.join(JOIN)
    p.finish()
    p.close()
    assert gate.get_next(timeout=JOIN).event == ev.EndOfPartitionEvent()
    gate.close()


def test_partition_never_registered_fails_after_backoff(manager):
    gate = SingleInputGate.create_local(manager, [(ResultPartitionID(), 0)], initial_backoff=1, max_backoff=4)
    with pytest.raises(PartitionNotFoundError) as info:
        gate.get_next(timeout=JOIN)
    ch = gate.get_channel(0)
    assert info.value.partition_id == ch.partition_id
    assert ch.current_backoff == 4  # 1, 2, 4 were waited, then it gave up
    assert isinstance(ch.failure_cause, PartitionNotFoundError)
    with pytest.raises(PartitionNotFoundError):
        gate.poll_next()  # the failed channel keeps reporting it
    gate.close()


def test_partition_not_found_without_backoff_fails_at_once(manager):
    gate = SingleInputGate.create_local(manager, [(ResultPartitionID(), 0)], initial_backoff=0, max_backoff=0)
    with pytest.raises(PartitionNotFoundError):
        gate.poll_next()
    gate.close()


def test_close_cancels_a_pending_retry(make_pool, manager):
    nbp = make_pool(16, SEGMENT)
    pid = ResultPartitionID()
    before = set(threading.enumerate())
    gate = SingleInputGate.create_local(manager, [(pid, 0)], initial_backoff=5000, max_backoff=5000)
    gate.request_partitions()
    assert gate.get_channel(0).current_backoff == 5000
    timers = [t for t in set(threading.enumerate()) - before if isinstance(t, threading.Timer)]
    assert len(timers) == 1  # the scheduled retry
    gate.close()
    timers[0].join(JOIN)
    assert not timers[0].is_alive()  # cancelled, not left waiting 5 s
    p = create_result_partition(nbp, 1, partition_manager=manager, partition_id=pid)
    p.setup()
    # A retry after close would create a view: the closed gate's channel never does.
    p.emit_record(b"x", 0)
    p.finish()
    assert not p.subpartitions[0].has_view
    assert gate.get_channel(0).subpartition_view is None
    p.close()
    manager.release_partition(pid)


# -- local channel: reading ------------------------------------------------------------------------

@pytest.fixture
def local(make_pool, manager):
    nbp = make_pool(64, SEGMENT)
    made = []

    def factory(num_subpartitions=1, **kwargs):
        p = create_result_partition(nbp, num_subpartitions, partition_manager=manager, **kwargs)
        p.setup()
        gate = SingleInputGate.create_local(manager, [(p.partition_id, i) for i in range(num_subpartitions)])
        made.append((p, gate))
        return p, gate

    yield factory
    for p, gate in made:
        gate.close()
        if not p.is_finished and not p.is_released:
            p.release()
        p.close()


def test_aligned_barrier_blocks_the_subpartition_until_resume(local):
    p, gate = local(2)
    barrier = ev.CheckpointBarrier(9, 99, ev.CheckpointOptions(alignment=ev.AlignmentType.ALIGNED))
    assert ev.get_data_type(barrier) == DataType.ALIGNED_CHECKPOINT_BARRIER
    p.emit_record(b"before", 0)
    p.broadcast_event(barrier)
    p.emit_record(b"after0", 0)
    p.emit_record(b"after1", 1)
    p.flush_all()

    got = []
    while (boe := gate.poll_next()) is not None:
        if boe.is_buffer:
            got.append((boe.channel_info.input_channel_idx, boe.buffer.to_bytes()[4:]))
            boe.buffer.recycle()
        else:
            got.append((boe.channel_info.input_channel_idx, boe.event))
    assert [g for g in got if g[0] == 0] == [(0, b"before"), (0, barrier)]
    assert [g for g in got if g[0] == 1] == [(1, barrier)]
    # Both subpartitions are blocked: data is queued behind the barrier but nothing is readable.
    assert all(sp.is_blocked for sp in p.subpartitions)
    p.flush_all()
    assert gate.poll_next() is None

    gate.resume_consumption(gate.get_channel(1).channel_info)
    boe = gate.poll_next()
    assert (boe.channel_info.input_channel_idx, boe.buffer.to_bytes()[4:]) == (1, b"after1")
    boe.buffer.recycle()
    assert gate.poll_next() is None  # channel 0 still blocked
    gate.resume_consumption(gate.get_channel(0).channel_info)
    boe = gate.poll_next()
    assert (boe.channel_info.input_channel_idx, boe.buffer.to_bytes()[4:]) == (0, b"after0")
    boe.buffer.recycle()
    p.finish()
    assert sorted(b.channel_info.input_channel_idx for b in gate) == [0, 1]


def test_unaligned_barrier_does_not_block(local):
    p, gate = local(1)
    barrier = ev.CheckpointBarrier(1, 1, ev.CheckpointOptions(alignment=ev.AlignmentType.UNALIGNED))
    p.broadcast_event(barrier)
    p.emit_record(b"x", 0)
    p.flush_all()
    assert gate.poll_next().event == barrier
    boe = gate.poll_next()
    assert boe.is_buffer
    boe.buffer.recycle()
    p.finish()


def test_resume_consumption_on_an_unrequested_channel_is_an_error(local):
    p, gate = local(1)
    with pytest.raises(CancelTaskError):
        gate.get_channel(0).resume_consumption()
    with pytest.raises(CancelTaskError):
        gate.get_channel(0).acknowledge_all_records_processed()
    p.finish()


def test_empty_buffers_are_skipped_and_counted(local):
    """A receiver without exclusive buffers gets empty finished buffers from the subpartition (to
    release credit); the local channel skips them, recycling them, and counts them as Flink does."""
    p, gate = local(1, receiver_exclusive_buffers_per_channel=0)
    ch = gate.get_channel(0)
    p.emit_record(b"abc", 0)
    p.flush(0)
    boe = gate.get_next(timeout=JOIN)
    assert boe.buffer.to_bytes() == b"\x00\x00\x00\x03abc"
    boe.buffer.recycle()
    assert (ch.num_buffers_in, ch.num_bytes_in) == (1, 7)
    # The open buffer is finished with nothing new in it; the event follows.
    p.broadcast_event(ev.CancelCheckpointMarker(5))
    boe = gate.get_next(timeout=JOIN)
    assert boe.is_event and boe.event == ev.CancelCheckpointMarker(5)
    event_size = len(ev.to_serialized_event(ev.CancelCheckpointMarker(5)))
    assert ch.num_buffers_in == 3  # data, the skipped empty buffer, the event
    assert ch.num_bytes_in == 7 + event_size
    assert (gate.num_buffers_in, gate.num_bytes_in) == (2, 7 + event_size)
    assert p.buffer_pool.used_buffers == 0  # the empty buffer went back
    p.finish()


def test_byte_and_buffer_counters(local):
    p, gate = local(2)
    p.emit_record(b"a" * 10, 0)
    p.emit_record(b"b" * 200, 1)  # spans two buffers
    p.broadcast_event(ev.CancelCheckpointMarker(1))
    p.flush_all()
    sizes = {0: [], 1: []}
    while (boe := gate.poll_next()) is not None:
        sizes[boe.channel_info.input_channel_idx].append(boe.size)
        if boe.is_buffer:
            boe.buffer.recycle()
    c0, c1 = gate.get_channel(0), gate.get_channel(1)
    assert (c0.num_buffers_in, c0.num_bytes_in) == (len(sizes[0]), sum(sizes[0]))
    assert (c1.num_buffers_in, c1.num_bytes_in) == (len(sizes[1]), sum(sizes[1]))
    assert len(sizes[0]) == 2 and len(sizes[1]) == 3
    assert sum(sizes[1]) - sum(sizes[0]) == 190
    assert gate.num_buffers_in == 5
    assert gate.num_bytes_in == sum(sizes[0]) + sum(sizes[1])
    p.finish()


def test_released_view_raises_cancel_task_error(local):
    p, gate = local(1)
    gate.request_partitions()
    ch = gate.get_channel(0)
    p.release()  # released without a cause: the consumer is cancelled, not failed
    with pytest.raises(CancelTaskError) as info:
        gate.get_next(timeout=JOIN)
    assert not isinstance(info.value, ProducerFailedError)
    assert ch.buffers_in_use_count == 0


def test_local_channel_reads_the_producers_buffers_without_copy(local):
    p, gate = local(1)
    p.emit_record(b"z" * 50, 0)
    p.flush(0)
    assert p.buffer_pool.used_buffers == 1
    boe = gate.get_next(timeout=JOIN)
    assert gate.get_channel(0).buffers_in_use_count == 1  # the open builder
    p.finish()
    # Reading EndOfPartition drops the subpartition's hold on the buffer; only the consumer's
    # slice keeps the producer's segment out of its pool now.
    assert gate.get_next(timeout=JOIN).event == ev.EndOfPartitionEvent()
    assert gate.get_channel(0).is_released
    assert p.buffer_pool.used_buffers == 1
    assert boe.buffer.to_bytes() == b"\x00\x00\x002" + b"z" * 50
    boe.buffer.recycle()
    assert p.buffer_pool.used_buffers == 0


def test_buffer_and_backlog_as_a_channel_hands_it_out():
    from flinknet._core.buffer import FREEING_BUFFER_RECYCLER, NetworkBuffer
    from flinknet._core.memory import MemorySegment

    buf = NetworkBuffer(MemorySegment(8), FREEING_BUFFER_RECYCLER, DataType.PRIORITIZED_EVENT_BUFFER, 8)
    try:
        b = BufferAndBacklog(buf, 0, DataType.NONE, 3)
        assert not b.more_available and not b.more_priority_events and b.has_priority
        b = BufferAndBacklog(buf, 0, DataType.PRIORITIZED_EVENT_BUFFER, 3)
        assert b.more_available and b.more_priority_events
        b = BufferAndBacklog(buf, 2, DataType.DATA_BUFFER, 3)
        assert b.more_available and not b.more_priority_events
    finally:
        buf.recycle()


def test_set_error_is_reported_by_the_gate(local):
    p, gate = local(2)
    gate.request_partitions()
    cause = OSError("disk")
    gate.get_channel(1).set_error(cause)
    gate.get_channel(1).set_error(ValueError("second"))  # the first error wins
    from flinknet.errors import FlinknetError

    with pytest.raises(FlinknetError) as info:
        gate.get_next(timeout=JOIN)
    assert info.value.__cause__ is cause
    p.finish()


def test_acknowledge_all_records_processed_reaches_the_producer(local):
    p, gate = local(2)
    done = p.get_all_data_processed_future()
    p.notify_end_of_data(ev.StopMode.DRAIN)
    p.flush_all()
    infos = []
    while (boe := gate.poll_next()) is not None:
        assert boe.event == ev.EndOfData(ev.StopMode.DRAIN)
        infos.append(boe.channel_info)
    assert gate.has_received_end_of_data
    gate.acknowledge_all_records_processed(infos[0])
    assert not done.done()  # one subpartition still unacknowledged
    gate.acknowledge_all_records_processed(infos[1])
    done.result(timeout=JOIN)
    p.finish()
