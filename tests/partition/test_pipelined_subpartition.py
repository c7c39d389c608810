"""PipelinedSubpartition and its read view against Flink's rules (Flink's ``PipelinedSubpartition``
and ``PipelinedSubpartitionView``).

Ports the behaviours of Flink's ``PipelinedSubpartitionWithReadViewTest`` (availability, backlog,
notifications, barriers overtaking data, blocking by an aligned barrier and resuming) and
``PipelinedSubpartitionTest`` (concurrent producer/consumer, release, queued buffers, buffer size,
add after release, one view only), and checks random add/flush/poll/resume sequences against a
small pure-Python model of Flink's PipelinedSubpartition.

Buffers come from a fixed-size LocalBufferPool of a ``make_pool`` global pool, built like Flink's
``BufferBuilderTestUtils``: a "finished" consumer is created before its builder is filled and
finished, so (as in Flink) it reports itself finished only once it has been built.
"""

from __future__ import annotations

import random
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flinknet import IllegalStateError
from flinknet import events as ev
from flinknet.core import FREEING_BUFFER_RECYCLER, BufferConsumer, DataType, MemorySegment, NetworkBuffer
from flinknet.partition import (
    ADD_BUFFER_ERROR_CODE,
    PipelinedResultPartition,
    PipelinedSubpartition,
)
from flinknet.types import ResultPartitionType
from tests.helpers import Worker, pattern

SEGMENT_SIZE = 256
BUFFER_SIZE = 200  # what Flink's tests call BUFFER_SIZE, scaled down

ALIGNED_BARRIER = ev.CheckpointBarrier(1, 0, ev.CheckpointOptions())
UNALIGNED_OPTIONS = ev.CheckpointOptions(target_location=b"\x00\x01\x02",
                                         alignment=ev.AlignmentType.UNALIGNED)


# --- helpers -------------------------------------------------------------------------------------


class RecordingListener:
    """A BufferAvailabilityListener that counts its calls (Flink's AwaitableBufferAvailablityListener)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.num_notifications = 0
        self.priority_sequence_numbers: list[int] = []
        self.available = threading.Event()

    def notify_data_available(self, view):
        with self._lock:
            self.num_notifications += 1
        self.available.set()

    def notify_priority_event(self, sequence_number):
        with self._lock:
            self.priority_sequence_numbers.append(sequence_number)

    @property
    def num_priority_events(self):
        return len(self.priority_sequence_numbers)


class Env:
    """One PIPELINED partition of one subpartition with a read view, and a pool to fill buffers from."""

    def __init__(self, nbp, receiver_exclusive: int = 2, with_view: bool = True, pool_size: int = 24):
        self.nbp = nbp
        self.partition = PipelinedResultPartition.create(
            nbp, 1, partition_type=ResultPartitionType.PIPELINED,
            receiver_exclusive_buffers_per_channel=receiver_exclusive)
        self.pool = nbp.create_buffer_pool(pool_size, pool_size)
        self.sp: PipelinedSubpartition = self.partition.subpartitions[0]
        self.listener = RecordingListener()
        self.view = self.sp.create_read_view(self.listener) if with_view else None
        self.builders = []

    # Flink's BufferBuilderTestUtils -----------------------------------------------------------

    def builder(self):
        b = self.pool.request_buffer_builder()
        assert b is not None, "test pool exhausted"
        self.builders.append(b)
        return b

    def unfinished(self, size: int, data: bytes | None = None) -> BufferConsumer:
        """createFilledUnfinishedBufferConsumer: ``size`` committed bytes, builder still open."""
        b = self.builder()
        consumer = b.create_buffer_consumer()
        if size:
            b.append_and_commit(pattern(size, size) if data is None else data)
        return consumer

    def finished(self, size: int, data: bytes | None = None) -> BufferConsumer:
        """createFilledFinishedBufferConsumer: consumer created first, then filled and finished."""
        b = self.builder()
        consumer = b.create_buffer_consumer()
        if size:
            b.append_and_commit(pattern(size, size) if data is None else data)
        b.finish()
        b.close()
        return consumer

    @staticmethod
    def event(size: int, data_type: DataType) -> BufferConsumer:
        """createEventBufferConsumer: a finished consumer of ``size`` bytes typed ``data_type``."""
        segment = MemorySegment(size)
        return BufferConsumer(NetworkBuffer(segment, FREEING_BUFFER_RECYCLER, data_type, size), size)

    def close(self):
        if self.view is not None:
            self.view.release_all_resources()
        self.sp.release()
        for b in self.builders:
            b.close()
        self.partition.close()
        if self.view is None:
            self.partition.release()  # never consumed: nothing releases it on consumption
        assert self.partition.is_released
        self.pool.lazy_destroy()


@pytest.fixture
def env(make_pool):
    e = Env(make_pool(48, SEGMENT_SIZE))
    yield e
    e.close()


@pytest.fixture
def env0(make_pool):
    """A subpartition whose receiver has no exclusive buffers."""
    e = Env(make_pool(48, SEGMENT_SIZE), receiver_exclusive=0)
    yield e
    e.close()


def available(view, credit=True) -> bool:
    return view.get_availability_and_backlog(credit).is_available


def assert_next(view, size, data_available, backlog, event_available, recycled_after_recycle=True,
                *, is_buffer=True, event=None, data=None):
    """Flink's assertNextBufferOrEvent: checks one polled buffer, then recycles it."""
    bab = view.get_next_buffer()
    assert bab is not None, "expected a buffer"
    buffer = bab.buffer
    try:
        assert buffer.readable_bytes == size, "buffer size"
        assert buffer.is_buffer == is_buffer, "buffer or event"
        if event is not None:
            assert ev.from_buffer(buffer) == event
        if data is not None:
            assert buffer.to_bytes() == data
        assert bab.is_data_available == data_available, "data available"
        assert available(view, True) == data_available, "data available (view)"
        assert bab.buffers_in_backlog == backlog, "backlog"
        assert bab.is_event_available == event_available, "event available"
        assert available(view, False) == event_available, "event available (view)"
        assert not buffer.is_recycled, "not recycled"
    finally:
        buffer.recycle()
    assert buffer.is_recycled == recycled_after_recycle, "recycled after recycle"
    return bab


def assert_no_next(view):
    assert view.get_next_buffer() is None


# --- PipelinedSubpartitionWithReadViewTest ---------------------------------------------------------


def test_add_two_unfinished_buffers(env):
    env.sp.add(env.unfinished(0))
    assert env.listener.num_notifications == 0
    env.sp.add(env.unfinished(0))
    # Two queued consumers count as one finished buffer, so the reader is woken once...
    assert env.listener.num_notifications == 1
    assert available(env.view)
    # ...and the open tail does not count in the backlog.
    assert env.sp.buffers_in_backlog == 1
    # An unfinished consumer may only be at the head if it is the only one.
    with pytest.raises(IllegalStateError, match="unfinished bufferConsumer"):
        env.view.get_next_buffer()


def test_add_empty_unfinished_buffer(env):
    assert env.listener.num_notifications == 0
    builder = env.builder()
    env.sp.add(builder.create_buffer_consumer())
    assert env.listener.num_notifications == 0
    assert_no_next(env.view)

    builder.finish()
    builder = env.builder()
    env.sp.add(builder.create_buffer_consumer())
    assert env.sp.buffers_in_backlog == 1
    assert env.listener.num_notifications == 1  # from finishing the previous buffer
    assert_no_next(env.view)  # both empty: nothing handed out
    assert env.sp.buffers_in_backlog == 0


def test_add_non_empty_unfinished_buffer(env):
    assert env.listener.num_notifications == 0
    env.sp.add(env.unfinished(100))
    # The builder still holds a reference: not counted, not recycled by the reader.
    assert env.sp.buffers_in_backlog == 0
    assert env.listener.num_notifications == 0
    assert_next(env.view, 100, False, 0, False, False)


def test_unfinished_buffer_behind_finished(env):
    env.sp.add(env.finished(125))
    env.sp.add(env.unfinished(100))
    assert env.sp.buffers_in_backlog == 1
    assert env.listener.num_notifications == 1
    assert_next(env.view, 125, False, 0, False, True)
    # Not announced, but the unfinished buffer can still be read.
    assert_next(env.view, 100, False, 0, False, False)
    assert_no_next(env.view)


def test_flush_with_unfinished_buffer_behind_finished(env):
    env.sp.add(env.finished(125))
    env.sp.add(env.unfinished(100))
    old = env.listener.num_notifications
    assert env.sp.buffers_in_backlog == 1

    env.sp.flush()
    # More than one buffer queued: the reader was already woken, no second notification.
    assert old == 1
    assert env.listener.num_notifications == old
    assert env.sp.buffers_in_backlog == 2
    assert_next(env.view, 125, True, 1, False, True)
    assert_next(env.view, 100, False, 0, False, False)
    assert_no_next(env.view)


def test_flush_with_unfinished_buffer_behind_finished_2(env):
    env.sp.flush()  # empty: no effect
    assert env.listener.num_notifications == 0

    env.sp.add(env.finished(125))
    env.sp.add(env.unfinished(100))
    assert env.sp.buffers_in_backlog == 1
    assert_next(env.view, 125, False, 0, False, True)

    old = env.listener.num_notifications
    env.sp.flush()  # one buffer with data left: the flush must wake the reader
    assert env.listener.num_notifications == old + 1
    env.sp.flush()  # already flushed: nothing more
    assert env.listener.num_notifications == old + 1

    assert env.sp.buffers_in_backlog == 1
    assert_next(env.view, 100, False, 0, False, False)
    assert_no_next(env.view)


def test_flush_after_finished_buffers(env):
    for size in (10, 20, 30):
        env.sp.add(env.finished(size))
    assert env.listener.num_notifications == 1
    assert env.sp.buffers_in_backlog == 2  # the tail still looks open until built
    env.sp.flush()  # > 1 buffer: the reader already knows
    assert env.listener.num_notifications == 1
    assert env.sp.buffers_in_backlog == 3
    assert_next(env.view, 10, True, 2, False)
    assert_next(env.view, 20, True, 1, False)
    assert_next(env.view, 30, False, 0, False)
    assert_no_next(env.view)
    # The flush request ended with the queue: a new buffer alone is not readable.
    env.sp.add(env.finished(40))
    assert not available(env.view)
    assert env.sp.buffers_in_backlog == 0


def test_multiple_empty_buffers(env):
    assert env.listener.num_notifications == 0
    env.sp.add(env.finished(0))
    assert env.listener.num_notifications == 0
    env.sp.add(env.finished(0))
    assert env.listener.num_notifications == 1
    env.sp.add(env.finished(0))
    assert env.listener.num_notifications == 1
    assert env.sp.buffers_in_backlog == 2
    env.sp.add(env.finished(100))
    assert env.listener.num_notifications == 1
    # The empty buffers are skipped: the reader gets the 100 bytes at once.
    assert_next(env.view, 100, False, 0, False, True)
    assert env.pool.used_buffers == 0  # every buffer went back to the pool


def test_empty_finished_buffers_handed_out_without_exclusive_buffers(env0):
    env = env0
    env.sp.add(env.finished(0))
    env.sp.add(env.finished(0))
    env.sp.add(env.finished(100))
    # A receiver without exclusive buffers reserved a credit for each: it gets the empty ones.
    assert_next(env.view, 0, True, 1, False)
    assert_next(env.view, 0, False, 0, False)
    assert_next(env.view, 100, False, 0, False)
    assert_no_next(env.view)


def test_empty_flush(env):
    env.sp.flush()
    assert env.listener.num_notifications == 0


def test_basic_pipelined_produce_consume_logic(env):
    view = env.view
    assert not available(view, False)
    assert_no_next(view)
    assert not available(view, False)
    assert env.listener.num_notifications == 0

    env.sp.add(env.finished(BUFFER_SIZE))
    assert not available(view, False)
    assert env.sp.total_number_of_buffers == 1
    assert env.sp.buffers_in_backlog == 0
    assert env.sp.total_number_of_bytes == 0  # counted when polled
    assert env.listener.num_notifications == 0

    assert_next(view, BUFFER_SIZE, False, 0, False, True)
    assert env.sp.total_number_of_bytes == BUFFER_SIZE
    assert env.sp.buffers_in_backlog == 0
    assert_no_next(view)

    env.sp.add(env.finished(BUFFER_SIZE))
    assert not available(view, False)
    assert env.sp.total_number_of_buffers == 2
    assert env.sp.buffers_in_backlog == 0
    assert env.listener.num_notifications == 0
    assert_next(view, BUFFER_SIZE, False, 0, False, True)
    assert env.sp.total_number_of_bytes == 2 * BUFFER_SIZE
    assert_no_next(view)

    # buffer, event, buffer
    env.sp.add(env.finished(BUFFER_SIZE))
    assert not available(view, False)
    env.sp.add(env.event(BUFFER_SIZE, DataType.EVENT_BUFFER))
    assert not available(view, False)
    env.sp.add(env.finished(BUFFER_SIZE))
    assert not available(view, False)
    assert env.sp.total_number_of_buffers == 5
    assert env.sp.buffers_in_backlog == 1  # events do not count, nor does the open-looking tail
    assert env.sp.total_number_of_bytes == 2 * BUFFER_SIZE
    assert env.listener.num_notifications == 1

    assert_next(view, BUFFER_SIZE, True, 0, True, True)
    assert env.sp.total_number_of_bytes == 3 * BUFFER_SIZE
    assert_next(view, BUFFER_SIZE, False, 0, False, True, is_buffer=False)
    assert env.sp.total_number_of_bytes == 4 * BUFFER_SIZE
    assert_next(view, BUFFER_SIZE, False, 0, False, True)
    assert env.sp.total_number_of_bytes == 5 * BUFFER_SIZE
    assert_no_next(view)
    assert env.sp.buffers_in_backlog == 0
    assert env.sp.total_number_of_buffers == 5
    assert env.listener.num_notifications == 1


def test_barrier_overtaking(env):
    listener = env.listener
    env.sp.add(env.finished(1))
    assert (listener.num_notifications, listener.num_priority_events) == (0, 0)
    env.sp.add(env.finished(2))
    assert (listener.num_notifications, listener.num_priority_events) == (1, 0)
    superstep = ev.to_buffer_consumer(ev.EndOfSuperstepEvent())
    superstep_size = superstep.written_bytes
    env.sp.add(superstep)
    assert (listener.num_notifications, listener.num_priority_events) == (1, 0)
    env.sp.add(env.finished(4))
    assert (listener.num_notifications, listener.num_priority_events) == (1, 0)

    barrier = ev.CheckpointBarrier(0, 0, UNALIGNED_OPTIONS)
    barrier_consumer = ev.to_buffer_consumer(barrier, True)
    barrier_size = barrier_consumer.written_bytes
    env.sp.add(barrier_consumer)
    assert (listener.num_notifications, listener.num_priority_events) == (1, 1)
    assert listener.priority_sequence_numbers == [0]  # nothing handed out yet

    # The priority barrier overtakes every queued buffer.
    bab = assert_next(env.view, barrier_size, True, 2, False, True, is_buffer=False, event=barrier)
    assert bab.buffer.data_type == DataType.PRIORITIZED_EVENT_BUFFER
    assert_next(env.view, 1, True, 1, False, True)
    assert_next(env.view, 2, True, 0, True, True)
    assert_next(env.view, superstep_size, False, 0, False, True, is_buffer=False,
                event=ev.EndOfSuperstepEvent())
    assert_next(env.view, 4, False, 0, False, True)
    assert_no_next(env.view)


def test_priority_events_keep_their_order_and_report_the_sequence_number(env):
    env.sp.add(env.finished(10))
    env.sp.add(env.finished(20))
    assert_next(env.view, 10, False, 0, False)
    first = ev.CheckpointBarrier(1, 0, UNALIGNED_OPTIONS)
    second = ev.CancelCheckpointMarker(1)
    env.sp.add(ev.to_buffer_consumer(first, True))
    env.sp.add(ev.to_buffer_consumer(second, True))
    # Only the first priority event is announced, with the next sequence number.
    assert env.listener.priority_sequence_numbers == [1]
    first_size = ev.to_buffer_consumer(first, True).written_bytes
    assert_next(env.view, first_size, True, 0, True, is_buffer=False, event=first)
    assert_next(env.view, 12, False, 0, False, is_buffer=False, event=second)
    assert_next(env.view, 20, False, 0, False)
    assert_no_next(env.view)


def test_availability_after_priority(env):
    barrier = ev.CheckpointBarrier(0, 0, UNALIGNED_OPTIONS)
    consumer = ev.to_buffer_consumer(barrier, True)
    size = consumer.written_bytes
    env.sp.add(consumer)
    assert (env.listener.num_notifications, env.listener.num_priority_events) == (1, 1)
    env.sp.add(env.finished(1))
    assert (env.listener.num_notifications, env.listener.num_priority_events) == (2, 1)
    env.sp.add(env.finished(2))
    assert (env.listener.num_notifications, env.listener.num_priority_events) == (2, 1)

    assert_next(env.view, size, True, 1, False, True, is_buffer=False, event=barrier)
    assert_next(env.view, 1, False, 0, False, True)
    assert_next(env.view, 2, False, 0, False, True)
    assert_no_next(env.view)


@pytest.mark.parametrize(("flushed", "finished", "expected"),
                         [(False, False, 4), (True, False, 5), (False, True, 5)],
                         ids=["plain", "flushed", "finished"])
def test_backlog_consistent_with_number_of_consumable_buffers(env, flushed, finished, expected):
    for i in range(1, 6):
        if i < 5 or finished:
            env.sp.add(env.finished(100))
        else:
            env.sp.add(env.unfinished(100))
    if flushed:
        env.sp.flush()
    if finished:
        env.sp.finish()

    backlog = env.sp.buffers_in_backlog
    consumable = 0
    polled = []
    try:
        while available(env.view):
            bab = env.view.get_next_buffer()
            assert bab is not None
            polled.append(bab.buffer)
            consumable += bab.buffer.is_buffer
    finally:
        for b in polled:
            b.recycle()
    assert backlog == consumable == expected


def block_by_checkpoint(env, num_notifications):
    """Flink's blockSubpartitionByCheckpoint: an aligned barrier is read and blocks the view."""
    consumer = ev.to_buffer_consumer(ALIGNED_BARRIER)
    assert consumer.data_type == DataType.ALIGNED_CHECKPOINT_BARRIER
    size = consumer.written_bytes
    env.sp.add(consumer)
    assert env.listener.num_notifications == num_notifications
    assert_next(env.view, size, False, 0, False, True, is_buffer=False, event=ALIGNED_BARRIER)
    assert env.sp.is_blocked


def check_blocked(env, num_notifications):
    """No notification while blocked; nothing available, nothing readable."""
    assert env.listener.num_notifications == num_notifications
    assert not available(env.view, True)
    assert not available(env.view, False)
    assert env.view.get_availability_and_backlog(True).backlog == 0
    assert_no_next(env.view)


def resume_and_check(env, credit, data_available):
    env.view.resume_consumption()
    assert not env.sp.is_blocked
    assert available(env.view, credit) == data_available


def test_resume_blocked_subpartition_with_events(env):
    block_by_checkpoint(env, 1)
    env.sp.add(env.event(BUFFER_SIZE, DataType.EVENT_BUFFER))
    check_blocked(env, 1)
    resume_and_check(env, False, True)  # an event needs no credit
    assert_next(env.view, BUFFER_SIZE, False, 0, False, True, is_buffer=False)


def test_resume_blocked_subpartition_with_unfinished_buffer_flushed(env):
    block_by_checkpoint(env, 1)
    env.sp.add(env.finished(BUFFER_SIZE))
    env.sp.flush()  # no notification while blocked
    check_blocked(env, 1)
    resume_and_check(env, True, True)
    assert_next(env.view, BUFFER_SIZE, False, 0, False, True)


def test_resume_blocked_subpartition_with_unfinished_buffer_not_flushed(env):
    block_by_checkpoint(env, 1)
    env.sp.add(env.finished(BUFFER_SIZE))
    check_blocked(env, 1)
    # The buffer was never flushed (and looks open): resuming does not make it available.
    resume_and_check(env, True, False)
    assert env.listener.num_notifications == 1


def test_resume_blocked_subpartition_with_finished_buffers(env):
    block_by_checkpoint(env, 1)
    env.sp.add(env.finished(BUFFER_SIZE))
    env.sp.add(env.finished(BUFFER_SIZE))
    check_blocked(env, 1)
    resume_and_check(env, True, True)
    assert env.sp.buffers_in_backlog == 1
    assert_next(env.view, BUFFER_SIZE, False, 0, False, True)
    assert_next(env.view, BUFFER_SIZE, False, 0, False, True)
    assert_no_next(env.view)


def test_resume_blocked_empty_subpartition(env):
    block_by_checkpoint(env, 1)
    resume_and_check(env, True, False)
    assert_no_next(env.view)


def test_blocked_by_checkpoint_and_resume_consumption_repeatedly(env):
    """Flink's older combined test: block, resume, block again with different tails."""
    block_by_checkpoint(env, 1)
    env.sp.add(env.event(BUFFER_SIZE, DataType.EVENT_BUFFER))
    check_blocked(env, 1)
    resume_and_check(env, False, True)
    assert_next(env.view, BUFFER_SIZE, False, 0, False, True, is_buffer=False)

    block_by_checkpoint(env, 2)
    env.sp.add(env.finished(BUFFER_SIZE))
    env.sp.flush()
    check_blocked(env, 2)
    resume_and_check(env, True, True)
    assert_next(env.view, BUFFER_SIZE, False, 0, False, True)

    block_by_checkpoint(env, 3)
    env.sp.add(env.finished(BUFFER_SIZE))
    env.sp.add(env.finished(BUFFER_SIZE))
    check_blocked(env, 3)
    resume_and_check(env, True, True)
    assert_next(env.view, BUFFER_SIZE, False, 0, False, True)
    assert_next(env.view, BUFFER_SIZE, False, 0, False, True)


def test_resume_when_not_blocked_is_rejected(env):
    with pytest.raises(IllegalStateError, match="blocked"):
        env.view.resume_consumption()


def test_priority_event_not_announced_while_blocked(env):
    block_by_checkpoint(env, 1)
    env.sp.add(ev.to_buffer_consumer(ev.CheckpointBarrier(2, 0, UNALIGNED_OPTIONS), True))
    assert env.listener.num_priority_events == 0
    check_blocked(env, 1)
    resume_and_check(env, False, True)


def test_sequence_numbers_increase_by_one_per_buffer(env):
    expected = []
    env.sp.add(env.finished(10))
    env.sp.add(env.finished(0))  # skipped: empty buffers get no number
    env.sp.add(ev.to_buffer_consumer(ev.EndOfSuperstepEvent()))
    env.sp.add(env.finished(30))
    env.sp.add(ev.to_buffer_consumer(ev.CheckpointBarrier(1, 0, UNALIGNED_OPTIONS), True))
    env.sp.flush()
    seen = []
    while (bab := env.view.get_next_buffer()) is not None:
        seen.append(bab.sequence_number)
        bab.buffer.recycle()
    expected = list(range(4))
    assert seen == expected
    env.sp.add(env.finished(5))
    env.sp.add(ev.to_buffer_consumer(ev.CheckpointBarrier(2, 0, UNALIGNED_OPTIONS), True))
    # A priority event is announced with the sequence number it will be handed out with.
    assert env.listener.priority_sequence_numbers == [0, 4]
    bab = env.view.get_next_buffer()
    bab.buffer.recycle()
    assert bab.sequence_number == 4


def test_next_data_type(env):
    env.sp.add(env.finished(10))
    env.sp.add(ev.to_buffer_consumer(ev.EndOfSuperstepEvent()))
    env.sp.add(env.finished(10))
    env.sp.add(ev.to_buffer_consumer(ALIGNED_BARRIER))
    env.sp.add(env.finished(10))
    env.sp.finish()
    types = []
    while True:
        bab = env.view.get_next_buffer()
        if bab is None and env.sp.is_blocked:
            env.view.resume_consumption()
            bab = env.view.get_next_buffer()
        if bab is None:
            break
        types.append((bab.buffer.data_type, bab.next_data_type))
        bab.buffer.recycle()
    assert types == [
        (DataType.DATA_BUFFER, DataType.EVENT_BUFFER),
        (DataType.EVENT_BUFFER, DataType.DATA_BUFFER),
        (DataType.DATA_BUFFER, DataType.ALIGNED_CHECKPOINT_BARRIER),
        (DataType.ALIGNED_CHECKPOINT_BARRIER, DataType.NONE),  # blocked: nothing readable
        (DataType.DATA_BUFFER, DataType.END_OF_PARTITION),
        (DataType.END_OF_PARTITION, DataType.NONE),
    ]


def test_finish_always_notifies(env):
    env.sp.add(env.finished(10))
    env.sp.add(env.finished(10))
    assert env.listener.num_notifications == 1
    env.sp.finish()  # although the reader already knows of data
    assert env.listener.num_notifications == 2
    assert env.sp.is_finished
    assert env.sp.buffers_in_backlog == 2


# --- PipelinedSubpartitionTest --------------------------------------------------------------------


def test_illegal_second_read_view(env):
    with pytest.raises(IllegalStateError, match="consumed once"):
        env.sp.create_read_view(RecordingListener())


def test_read_view_of_released_subpartition_is_rejected(make_pool):
    env = Env(make_pool(48, SEGMENT_SIZE), with_view=False)
    try:
        env.sp.release()
        with pytest.raises(IllegalStateError, match="released"):
            env.sp.create_read_view(RecordingListener())
    finally:
        env.close()


def test_view_is_released_checks_parent(env):
    assert not env.view.is_released
    env.sp.release()
    assert env.view.is_released


def test_view_created_on_readable_data_notifies(make_pool):
    env = Env(make_pool(48, SEGMENT_SIZE), with_view=False)
    try:
        env.sp.add(env.finished(10))
        env.sp.add(env.finished(10))
        listener = RecordingListener()
        env.view = env.sp.create_read_view(listener)
        assert listener.num_notifications == 1
    finally:
        env.close()


def _produce_consume(make_pool, slow_producer, slow_consumer):
    num_buffers = 128
    ints_per_buffer = SEGMENT_SIZE // 4
    nbp = make_pool(16, SEGMENT_SIZE)
    env = Env(nbp, pool_size=8)
    rng_p, rng_c = random.Random(1), random.Random(2)

    def produce():
        for i in range(num_buffers):
            builder = env.pool.request_buffer_builder_blocking(timeout=10)
            consumer = builder.create_buffer_consumer()
            first = i * ints_per_buffer
            builder.append_and_commit(struct.pack(f">{ints_per_buffer}i",
                                                  *range(first, first + ints_per_buffer)))
            builder.finish()
            builder.close()
            assert env.sp.add(consumer) != ADD_BUFFER_ERROR_CODE
            if slow_producer and rng_p.random() < 0.3:
                time.sleep(0.0005)
        env.sp.finish()

    def consume():
        expected = 0
        while True:
            env.listener.available.clear()
            while (bab := env.view.get_next_buffer()) is not None:
                buf = bab.buffer
                try:
                    if buf.data_type == DataType.END_OF_PARTITION:
                        assert env.view.get_next_buffer() is None
                        return expected
                    assert buf.is_buffer
                    values = struct.unpack(f">{buf.size // 4}i", buf.to_bytes())
                    assert values == tuple(range(expected, expected + len(values)))
                    expected += len(values)
                finally:
                    buf.recycle()
                if slow_consumer and rng_c.random() < 0.3:
                    time.sleep(0.0005)
            assert env.listener.available.wait(10), "consumer never woken"

    try:
        producer, consumer = Worker(produce), Worker(consume)
        consumer.start()
        producer.start()
        producer.finish(20)
        consumer.finish(20)
        assert producer.error is None, producer.error
        assert consumer.error is None, consumer.error
        assert consumer.result == num_buffers * ints_per_buffer
        assert env.pool.used_buffers == 0
    finally:
        env.close()


@pytest.mark.parametrize("slow_producer", [False, True], ids=["fast_producer", "slow_producer"])
@pytest.mark.parametrize("slow_consumer", [False, True], ids=["fast_consumer", "slow_consumer"])
def test_concurrent_produce_consume(make_pool, slow_producer, slow_consumer):
    _produce_consume(make_pool, slow_producer, slow_consumer)


def test_release_with_view_returns_buffers_and_wakes_reader(env):
    env.sp.add(env.finished(10))
    env.sp.add(env.finished(20))
    env.sp.add(env.unfinished(30))
    assert env.pool.used_buffers == 3
    notified = env.listener.num_notifications
    env.sp.release()
    assert env.sp.is_released
    # Only the still-open builder holds a buffer now.
    assert env.pool.used_buffers == 1
    assert env.sp.number_of_queued_buffers == 0
    assert env.listener.num_notifications == notified + 1
    assert env.view.is_released
    assert_no_next(env.view)
    env.sp.release()  # idempotent


def test_release_without_view_returns_buffers(make_pool):
    env = Env(make_pool(48, SEGMENT_SIZE), with_view=False)
    try:
        for size in (10, 20, 30):
            env.sp.add(env.finished(size))
        assert env.pool.used_buffers == 3
        env.sp.release()
        assert env.pool.used_buffers == 0
        assert env.sp.buffers_in_backlog == 0
    finally:
        env.close()


def test_number_of_queued_buffers(env):
    assert env.sp.number_of_queued_buffers == 0
    env.sp.add(env.finished(10))
    env.sp.add(ev.to_buffer_consumer(ev.EndOfSuperstepEvent()))
    env.sp.add(env.unfinished(10))
    assert env.sp.number_of_queued_buffers == 3
    assert env.view.number_of_queued_buffers == 3
    assert env.view.number_of_queued_buffers == 3
    assert_next(env.view, 10, True, 0, True)
    assert env.sp.number_of_queued_buffers == 2
    assert_next(env.view, 4, False, 0, False, is_buffer=False)
    assert_next(env.view, 10, False, 0, False, False)
    # The open tail stays queued after being read: its builder may still append.
    assert env.sp.number_of_queued_buffers == 1


def test_new_buffer_size(env):
    assert env.sp.add(env.finished(10)) == 0  # 0: the writer uses the whole segment
    env.sp.set_buffer_size(64)
    assert env.sp.buffer_size == 64
    assert env.sp.add(env.finished(10)) == 64
    env.view.notify_new_buffer_size(32)
    assert env.sp.add(env.finished(10)) == 32
    with pytest.raises(ValueError):
        env.sp.set_buffer_size(-1)
    assert env.sp.buffer_size == 32


@pytest.mark.parametrize("how", ["released", "finished"])
def test_add_after_release_or_finish_fails_and_closes_consumer(env, how):
    if how == "released":
        env.sp.release()
    else:
        env.sp.finish()
    consumer = env.finished(10)
    assert env.sp.add(consumer) == ADD_BUFFER_ERROR_CODE
    assert consumer.is_closed
    assert consumer.is_recycled  # its buffer went straight back to the pool
    assert env.pool.used_buffers == 0
    event = ev.to_buffer_consumer(ev.EndOfSuperstepEvent())
    assert env.sp.add(event) == ADD_BUFFER_ERROR_CODE
    assert event.is_closed


def test_finish_after_release_is_ignored(env):
    env.sp.release()
    env.sp.finish()
    assert not env.sp.is_finished


# --- random operation sequences against a model of Flink's PipelinedSubpartition ------------------


class _Item:
    """The model's view of one queued consumer."""

    def __init__(self, data_type, committed=0, event=None):
        self.data_type = data_type
        self.event = event
        self.content = bytearray()
        self.committed = committed
        self.read = 0
        is_event = event is not None
        self.builder_finished = is_event
        self.cached_finished = is_event  # what the consumer last saw (refreshed when built)


class SubpartitionModel:
    """Flink's PipelinedSubpartition: its add / flush / pollBuffer / backlog / availability /
    notification rules."""

    def __init__(self, receiver_exclusive):
        self.q: list[_Item] = []
        self.receiver_exclusive = receiver_exclusive
        self.num_priority = 0
        self.data_buffers = 0
        self.finished = False
        self.flush_requested = False
        self.blocked = False
        self.seq = 0
        self.notifications = 0
        self.priority_seqs: list[int] = []

    def finished_buffers(self):
        n = len(self.q)
        if n == 1 and self.q[-1].cached_finished:
            return 1
        return max(n - 1, 0)

    def data_available(self):
        return not self.blocked and (self.flush_requested or self.finished_buffers() > 0)

    def event_available(self):
        return not self.blocked and bool(self.q) and self.q[0].data_type.is_event

    def backlog(self):
        if self.blocked or not self.q:
            return 0
        if self.flush_requested or self.finished or self.q[-1].data_type != DataType.DATA_BUFFER:
            return self.data_buffers
        return max(self.data_buffers - 1, 0)

    def add(self, item, finish=False):
        if self.finished:
            return ADD_BUFFER_ERROR_CODE
        if item.data_type.has_priority:
            self.q.insert(self.num_priority, item)
            self.num_priority += 1
            if self.num_priority == 1 and not self.blocked:
                self.priority_seqs.append(self.seq)
        else:
            self.q.append(item)
            if item.data_type == DataType.DATA_BUFFER:
                self.data_buffers += 1
        if finish:
            self.finished = True
        if finish or (not self.flush_requested and not self.blocked and self.finished_buffers() == 1):
            self.notifications += 1
        return 0

    def flush(self):
        if not self.q or self.flush_requested:
            return
        data_in_tail = len(self.q) == 1 and self.q[0].read < self.q[0].committed
        if not self.blocked and data_in_tail:
            self.notifications += 1
        self.flush_requested = len(self.q) > 1 or data_in_tail

    def poll(self):
        if self.blocked:
            return None
        q = self.q
        if not q:
            self.flush_requested = False
        got = None
        while q:
            head = q[0]
            start, end = head.read, head.committed
            head.read = end
            head.cached_finished = head.builder_finished
            finished = head.cached_finished
            assert finished or len(q) == 1, "model: unfinished consumer ahead of others"
            if len(q) == 1:
                self.flush_requested = False
            if finished:
                q.pop(0)
                if self.num_priority:
                    self.num_priority -= 1
                if head.data_type == DataType.DATA_BUFFER:
                    self.data_buffers -= 1
            if (self.receiver_exclusive == 0 and finished) or end > start:
                got = (head, start, end)
                break
            if not finished:
                break
        if got is None:
            return None
        if got[0].data_type.is_blocking_upstream:
            self.blocked = True
        seq = self.seq
        self.seq += 1
        next_type = q[0].data_type if q and self.data_available() else DataType.NONE
        return (*got, self.backlog(), next_type, seq)


OPS = ["new", "write", "write", "finish_tail", "event", "barrier", "priority", "flush", "flush",
       "poll", "poll", "poll", "resume", "finish"]


class ModelRun:
    """Runs one operation sequence against a real subpartition and the model in lockstep."""

    def __init__(self, env, receiver_exclusive):
        self.env = env
        self.model = SubpartitionModel(receiver_exclusive)
        self.open = None  # (builder, item) of the data buffer still being written
        self.stream = 0  # running byte value, so every written byte is distinguishable

    def finish_open(self):
        if self.open is not None:
            builder, item = self.open
            builder.finish()
            builder.close()
            item.builder_finished = True
            self.open = None

    def add(self, consumer, item, finish=False):
        expected = self.model.add(item, finish)
        if finish:
            self.env.sp.finish()
            got = 0 if expected == 0 else ADD_BUFFER_ERROR_CODE
        else:
            got = self.env.sp.add(consumer)
        assert got == expected
        if expected == ADD_BUFFER_ERROR_CODE and consumer is not None:
            assert consumer.is_closed
        return expected

    def add_event(self, event, priority=False):
        consumer = ev.to_buffer_consumer(event, priority)
        item = _Item(consumer.data_type, consumer.written_bytes, event)
        self.add(consumer, item)

    def step(self, op, n):
        env, model = self.env, self.model
        if op == "new":
            self.finish_open()
            builder = env.builder()
            consumer = builder.create_buffer_consumer()
            item = _Item(DataType.DATA_BUFFER)
            if self.add(consumer, item) == ADD_BUFFER_ERROR_CODE:
                builder.close()
            else:
                self.open = (builder, item)
        elif op == "write":
            if self.open is not None:
                builder, item = self.open
                data = bytes((self.stream + i) % 251 for i in range(min(n, builder.writable_bytes)))
                self.stream += len(data)
                builder.append_and_commit(data)
                item.content += data
                item.committed += len(data)
        elif op == "finish_tail":
            self.finish_open()
        elif op == "event":
            self.finish_open()
            self.add_event(ev.EndOfSuperstepEvent())
        elif op == "barrier":
            self.finish_open()
            self.add_event(ev.CheckpointBarrier(n, 0, ev.CheckpointOptions()))
        elif op == "priority":
            self.add_event(ev.CheckpointBarrier(n, 0, UNALIGNED_OPTIONS), priority=True)
        elif op == "flush":
            model.flush()
            env.sp.flush()
        elif op == "poll":
            self.poll()
        elif op == "resume":
            if model.blocked:
                model.blocked = False
                env.view.resume_consumption()
            else:
                with pytest.raises(IllegalStateError):
                    env.view.resume_consumption()
        elif op == "finish":
            self.finish_open()
            eop = ev.to_buffer_consumer(ev.EndOfPartitionEvent())
            self.add(None, _Item(DataType.END_OF_PARTITION, eop.written_bytes, ev.EndOfPartitionEvent()),
                     finish=True)
            eop.close()
        self.check()

    def poll(self):
        expected = self.model.poll()
        bab = self.env.view.get_next_buffer()
        if expected is None:
            assert bab is None
            return False
        assert bab is not None
        item, start, end, backlog, next_type, seq = expected
        buffer = bab.buffer
        try:
            assert buffer.data_type == item.data_type
            if item.event is None:
                assert buffer.to_bytes() == bytes(item.content[start:end])
            else:
                assert buffer.readable_bytes == end - start
                assert ev.from_buffer(buffer) == item.event
            assert (bab.buffers_in_backlog, bab.next_data_type, bab.sequence_number) == (
                backlog, next_type, seq)
        finally:
            buffer.recycle()
        return True

    def check(self):
        env, model = self.env, self.model
        assert env.listener.num_notifications == model.notifications
        assert env.listener.priority_sequence_numbers == model.priority_seqs
        assert available(env.view, True) == model.data_available()
        assert available(env.view, False) == model.event_available()
        assert env.sp.buffers_in_backlog == model.backlog()
        assert env.view.get_availability_and_backlog(True).backlog == model.backlog()
        assert env.sp.number_of_queued_buffers == len(model.q)
        assert env.sp.is_blocked == model.blocked
        assert env.sp.is_finished == model.finished

    def drain(self):
        while True:
            if not self.poll():
                if not self.model.blocked:
                    break
                self.step("resume", 0)
            self.check()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 100)), max_size=40),
       receiver_exclusive=st.sampled_from([0, 2]))
def test_random_operations_follow_the_model(make_pool, ops, receiver_exclusive):
    nbp = make_pool(56, 128)
    env = Env(nbp, receiver_exclusive=receiver_exclusive, pool_size=48)
    run = ModelRun(env, receiver_exclusive)
    try:
        run.check()
        for op, n in ops:
            run.step(op, n)
        run.drain()
        # Whatever was written came out, in order.
        if run.open is None and env.sp.number_of_queued_buffers == 0:
            assert env.pool.used_buffers == 0
    finally:
        env.close()
    assert nbp.is_whole
