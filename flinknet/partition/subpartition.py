"""Pipelined subpartitions and their read views (Flink's ``PipelinedSubpartition`` and
``PipelinedSubpartitionView``).

A subpartition holds the :class:`~flinknet._core.builder.BufferConsumer` s its writer enqueued, in
order, with priority events at the head. Its one read view hands out read-only slices of them
(zero copy: the slices are the producer's own buffers and go back to the producer's pool once the
reader recycles them).

Threads: one producer (the task thread, plus an output flusher that only calls :meth:`flush`) and
one consumer (the reader of the view). All state changes happen under the subpartition's lock;
the view's listener is called after the lock is released, as Flink does, and only when the
subpartition goes from "nothing to read" to "something to read" (never per buffer).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, NamedTuple

from flinknet._core.buffer import Buffer, DataType, ReadOnlySlicedNetworkBuffer
from flinknet._core.builder import BufferConsumer
from flinknet._core.engine import OutputQueue
from flinknet.errors import IllegalStateError
from flinknet.interfaces import AvailabilityWithBacklog, BufferAndBacklog, BufferAvailabilityListener

if TYPE_CHECKING:
    from flinknet.partition.result_partition import ResultPartition

__all__ = [
    "ADD_BUFFER_ERROR_CODE",
    "AvailabilityWithBacklog",
    "BufferAndBacklog",
    "BufferAvailabilityListener",
    "PipelinedSubpartition",
    "PipelinedSubpartitionView",
    "ResultSubpartitionInfo",
]

#: What :meth:`PipelinedSubpartition.add` returns when the subpartition is finished or released.
ADD_BUFFER_ERROR_CODE = -1

_NONE = DataType.NONE
_DATA_BUFFER = DataType.DATA_BUFFER
_PRIORITY_TYPES = frozenset(t for t in DataType if t.has_priority)
_BLOCKING_TYPES = frozenset(t for t in DataType if t.is_blocking_upstream)


class ResultSubpartitionInfo(NamedTuple):
    """Identifies a subpartition within a task (Flink's ``ResultSubpartitionInfo``): the
    partition's index among the task's outputs and the subpartition's index in it."""

    partition_idx: int
    subpartition_idx: int


def _overtaken_data(consumers: list[BufferConsumer]) -> list[Buffer]:
    """Retained slices of what ``consumers`` (data buffers and events) hold unread, data only:
    the in-flight output a priority event overtook (Flink builds them from copies too)."""
    out: list[Buffer] = []
    for c in consumers:
        if c.is_buffer:
            with c.copy() as cp:
                b = cp.build()
            if b.readable_bytes:
                out.append(b)
            else:
                b.recycle()
    return out


class PipelinedSubpartition:
    """A queue of buffers for one consumer subtask (Flink's ``PipelinedSubpartition``).

    Created by a :class:`~flinknet.partition.ResultPartition`; the writer side calls
    :meth:`add`, :meth:`flush` and :meth:`finish`, the reader side gets one
    :class:`PipelinedSubpartitionView` from :meth:`create_read_view`.
    """

    def __init__(self, index: int, parent: ResultPartition, receiver_exclusive_buffers_per_channel: int = 2,
                 starting_buffer_size: int = 0):
        if index < 0:
            raise ValueError(f"subpartition index must be >= 0, got {index}")
        if receiver_exclusive_buffers_per_channel < 0:
            raise ValueError("receiver_exclusive_buffers_per_channel must be >= 0")
        self.index = index
        self.parent = parent
        self._lock = threading.Lock()
        self._buffers: deque[BufferConsumer] = deque()  # priority ones first
        self._num_priority = 0
        self._buffers_in_backlog = 0
        self._is_finished = False
        self._is_released = False
        self._flush_requested = False
        self._is_blocked = False
        self._sequence_number = 0
        self._buffer_size = starting_buffer_size  # desired size for the writer; 0 = segment size
        self._view: PipelinedSubpartitionView | None = None
        self._receiver_exclusive = receiver_exclusive_buffers_per_channel
        self._all_records_processed = False
        # The reader was handed EndOfPartition (polled here; a natively served subpartition
        # knows it by its empty output queue, see _consumed_to_end): a view released after that
        # is the normal end, one released before it a lost consumer.
        self._end_handed_out = False
        self.total_number_of_buffers = 0
        self._polled_bytes = 0
        # Served by the native engine (attach_output): finished buffers go straight into this
        # OutputQueue, which the engine's I/O thread sends without the GIL; only the open tail
        # stays in _buffers.
        self._outq: OutputQueue | None = None

    # -- producer side ---------------------------------------------------------------------

    def add(self, consumer: BufferConsumer, partial_record_length: int = 0, finish: bool = False,
            overtaken: list[Buffer] | None = None) -> int:
        """Enqueue ``consumer`` (taking it over); returns the desired buffer size, or
        :data:`ADD_BUFFER_ERROR_CODE` (and closes the consumer) if finished or released.

        ``overtaken`` (a list; priority events only): receives, atomically with the insertion,
        a retained slice of the unsent bytes of every data buffer the event overtakes, oldest
        first (Flink's ``processPriorityBuffer``: an unaligned barrier's in-flight output
        data). The caller recycles them."""
        notify = False
        priority_seq = -1
        with self._lock:
            if self._is_finished or self._is_released:
                consumer.close()
                return ADD_BUFFER_ERROR_CODE
            data_type = consumer.data_type
            if self._outq is not None:
                self._add_native(consumer, data_type, overtaken)
                self.total_number_of_buffers += 1
                if finish:
                    self._is_finished = True
                return self._buffer_size
            if data_type in _PRIORITY_TYPES:
                # Priority events go behind the priority events already queued, ahead of data.
                self._buffers.insert(self._num_priority, consumer)
                self._num_priority += 1
                if overtaken is not None:
                    overtaken.extend(_overtaken_data(list(self._buffers)[self._num_priority:]))
                if self._num_priority == 1 and not self._is_blocked and self._view is not None:
                    priority_seq = self._sequence_number
            else:
                self._buffers.append(consumer)
                if data_type == _DATA_BUFFER:
                    self._buffers_in_backlog += 1
            self.total_number_of_buffers += 1
            if finish:
                self._is_finished = True
            notify = finish or self._should_notify_data_available()
            view = self._view
            size = self._buffer_size
        if priority_seq != -1 and view is not None:
            view.notify_priority_event(priority_seq)
        if notify and view is not None:
            view.notify_data_available()
        return size

    def _add_native(self, consumer: BufferConsumer, data_type: DataType,
                    overtaken: list[Buffer] | None = None) -> None:
        """add() of a natively served subpartition (under the lock): the open tail is finished
        now (a writer finishes its buffer before it adds the next), so it goes to the queue. A
        priority event overtakes the queue's data and the tail."""
        outq = self._outq
        assert outq is not None
        buffers = self._buffers
        if data_type in _PRIORITY_TYPES and overtaken is not None:
            outq.push(consumer.build(), True, overtaken)    # the queue's data, under its lock
            consumer.close()
            overtaken.extend(_overtaken_data(list(buffers)))
            return
        if data_type not in _PRIORITY_TYPES and buffers:
            tail = buffers[0]
            outq.push(tail.build())     # build() also refreshes is_finished
            if not tail.is_finished:
                consumer.close()
                raise IllegalStateError(
                    "When there are multiple buffers, an unfinished bufferConsumer can not be "
                    "at the head of the buffers queue.")
            buffers.popleft()
            tail.close()
        if consumer.is_finished:
            outq.push(consumer.build())
            consumer.close()
        else:
            buffers.append(consumer)

    def attach_output(self, outq: OutputQueue) -> bool:
        """Serve this subpartition through the native engine's ``outq`` from now on (the server
        calls this for a remote reader): what is queued moves there, and every buffer finished
        (or flushed) later is pushed at once. False if it cannot be (released, already attached,
        or a receiver without exclusive buffers, which needs the empty-buffer protocol)."""
        with self._lock:
            if (self._is_released or self._outq is not None or self._receiver_exclusive == 0
                    or self._is_blocked):
                return False
            buffers = self._buffers
            while buffers:
                consumer = buffers[0]
                outq.push(consumer.build())     # build() also refreshes is_finished
                if not consumer.is_finished:
                    break                        # the open tail (a flush sent its bytes)
                buffers.popleft()
                consumer.close()
            self._num_priority = 0
            self._buffers_in_backlog = 0
            self._flush_requested = False
            self._outq = outq
        return True

    def finish(self) -> None:
        """Append EndOfPartition; nothing can be added afterwards."""
        from flinknet import events  # local: events imports the core only

        self.add(events.to_buffer_consumer(events.EndOfPartitionEvent()), 0, finish=True)

    def flush(self) -> None:
        """Make the committed bytes of the unfinished tail readable (without finishing it)."""
        with self._lock:
            buffers = self._buffers
            if self._outq is not None:
                if buffers and buffers[0].is_data_available:
                    self._outq.push(buffers[0].build())
                return
            if not buffers or self._flush_requested:
                return
            data_in_tail = len(buffers) == 1 and buffers[0].is_data_available
            notify = not self._is_blocked and data_in_tail
            self._flush_requested = len(buffers) > 1 or data_in_tail
            view = self._view
        if notify and view is not None:
            view.notify_data_available()

    def release(self) -> None:
        """Drop every queued buffer (they go back to their pools) and release the view."""
        with self._lock:
            if self._is_released:
                return
            if self._outq is not None:
                # what the engine took stays known after the queue is gone
                self._end_handed_out = self._consumed_to_end()
            for consumer in self._buffers:
                consumer.close()
            self._buffers.clear()
            if self._outq is not None:
                self._outq.release()
            self._num_priority = 0
            self._buffers_in_backlog = 0
            self._is_released = True
            view = self._view
        if view is not None:
            # Flink only releases the view; flinknet also wakes its reader so that a consumer
            # blocked on this channel learns of the release at once instead of waiting.
            view.notify_data_available()
            view.release_all_resources()

    def set_buffer_size(self, size: int) -> None:
        """The desired size of new buffers (buffer debloating); 0 means the segment size."""
        if size < 0:
            raise ValueError(f"buffer size must be >= 0, got {size}")
        with self._lock:
            self._buffer_size = size

    @property
    def buffer_size(self) -> int:
        """The desired size of new buffers (0: the segment size)."""
        return self._buffer_size

    # -- consumer side ---------------------------------------------------------------------

    def create_read_view(self, listener: BufferAvailabilityListener) -> PipelinedSubpartitionView:
        """The one read view of this subpartition (a second one raises IllegalStateError)."""
        with self._lock:
            if self._is_released:
                raise IllegalStateError(f"subpartition {self.index} of {self.parent} is released")
            if self._view is not None:
                raise IllegalStateError(
                    f"subpartition {self.index} of {self.parent} is being (or already has been) "
                    "consumed, but pipelined subpartitions can only be consumed once")
            view = self._view = PipelinedSubpartitionView(self, listener)
            notify = self._is_data_available()
        if notify:
            view.notify_data_available()
        return view

    def poll_buffer(self) -> BufferAndBacklog | None:
        """The next readable buffer (Flink's ``pollBuffer``), or None."""
        with self._lock:
            if self._outq is not None:
                raise IllegalStateError("the subpartition is served by the native engine")
            if self._is_blocked:
                return None
            buffers = self._buffers
            buffer: ReadOnlySlicedNetworkBuffer | None = None
            if not buffers:
                self._flush_requested = False
            while buffers:
                consumer = buffers[0]
                buffer = consumer.build()
                finished = consumer.is_finished
                if not finished and len(buffers) != 1:
                    buffer.recycle()
                    raise IllegalStateError(
                        "When there are multiple buffers, an unfinished bufferConsumer can not be "
                        "at the head of the buffers queue.")
                if len(buffers) == 1:
                    self._flush_requested = False
                if finished:
                    buffers.popleft()
                    if self._num_priority:
                        self._num_priority -= 1
                    consumer.close()
                    if consumer.data_type == _DATA_BUFFER:
                        self._buffers_in_backlog -= 1
                    if not buffers and self._is_finished:
                        self._end_handed_out = True     # the last one is EndOfPartition
                # An empty finished buffer is still handed out to a receiver without exclusive
                # buffers, so it can release the credit it reserved for it.
                if self._receiver_exclusive == 0 and finished:
                    break
                if buffer.readable_bytes > 0:
                    break
                buffer.recycle()
                buffer = None
                if not finished:
                    break
            if buffer is None:
                return None
            data_type = buffer.data_type
            if data_type in _BLOCKING_TYPES:
                self._is_blocked = True
            self._polled_bytes += buffer.size
            seq = self._sequence_number
            self._sequence_number = seq + 1
            return BufferAndBacklog(
                buffer, self._get_buffers_in_backlog(),
                self._next_buffer_type() if self._is_data_available() else _NONE, seq)

    def resume_consumption(self) -> None:
        """Unblock after an upstream-blocking event (an aligned barrier) was consumed."""
        with self._lock:
            if self._outq is not None:
                try:
                    self._outq.resume()
                except RuntimeError as err:
                    raise IllegalStateError(str(err)) from None
                return
            if not self._is_blocked:
                raise IllegalStateError("Should be blocked by checkpoint.")
            self._is_blocked = False

    def acknowledge_all_data_processed(self) -> None:
        """The consumer processed all user records (AckAllUserRecordsProcessed)."""
        self._all_records_processed = True
        self.parent.on_subpartition_all_data_processed(self.index)

    def get_availability_and_backlog(self, is_credit_available: bool = True) -> AvailabilityWithBacklog:
        """Whether the view could hand out its next item now (with credit: anything; without:
        only an event), and the backlog a receiver would be told."""
        with self._lock:
            outq = self._outq
            if outq is not None:
                nxt = outq.next_data_type
                available = not outq.is_blocked and nxt != _NONE and (is_credit_available or nxt.is_event)
                return AvailabilityWithBacklog(available, outq.backlog)
            if is_credit_available:
                available = self._is_data_available()
            else:
                available = not self._is_blocked and self._next_buffer_type().is_event
            return AvailabilityWithBacklog(available, self._get_buffers_in_backlog())

    def _on_view_released(self, consumer: str, reason: str) -> None:
        # A view released before its reader was handed EndOfPartition, while the producer
        # still holds the subpartition, is a consumer that went away: the partition learns
        # who and why (and fails its writers) before it counts the subpartition as consumed,
        # which then drops what is still queued.
        with self._lock:
            ended = self._end_handed_out = self._consumed_to_end()   # kept: the queue goes next
            lost = not self._is_released and not ended
        if lost:
            self.parent.on_subpartition_consumer_lost(self.index, consumer, reason)
        self.parent.on_consumed_subpartition(self.index)

    def _consumed_to_end(self) -> bool:
        """The reader was handed EndOfPartition (under the lock)."""
        if self._end_handed_out or not self._is_finished:
            return self._end_handed_out
        outq = self._outq
        if outq is not None:
            # EndOfPartition is the last entry pushed: an empty, unreleased queue and no open
            # tail mean the engine's I/O thread took everything, EndOfPartition included.
            return not self._buffers and not outq.is_released and outq.queued_buffers == 0
        return False

    # -- state (call under the lock) -------------------------------------------------------

    def _finished_buffers(self) -> int:
        n = len(self._buffers)
        if n == 1 and self._buffers[-1].is_finished:
            return 1
        return n - 1 if n > 1 else 0

    def _should_notify_data_available(self) -> bool:
        return (self._view is not None and not self._flush_requested and not self._is_blocked
                and self._finished_buffers() == 1)

    def _is_data_available(self) -> bool:
        if self._outq is not None:
            return not self._outq.is_blocked and self._outq.queued_buffers > 0
        return not self._is_blocked and (self._flush_requested or self._finished_buffers() > 0)

    def _next_buffer_type(self) -> DataType:
        return self._buffers[0].data_type if self._buffers else _NONE

    def _get_buffers_in_backlog(self) -> int:
        if self._outq is not None:
            return 0 if self._outq.is_blocked else self._outq.backlog
        if self._is_blocked or not self._buffers:
            return 0
        if self._flush_requested or self._is_finished or self._buffers[-1].data_type != _DATA_BUFFER:
            return self._buffers_in_backlog
        return max(self._buffers_in_backlog - 1, 0)

    # -- inspection ------------------------------------------------------------------------

    @property
    def total_number_of_bytes(self) -> int:
        """Bytes handed to the reader so far (polled, or sent by the native engine): Flink's
        ``totalNumberOfBytes``, which the ``outputQueueSize`` metric subtracts from the bytes
        written."""
        outq = self._outq
        return self._polled_bytes + (outq.bytes_sent if outq is not None else 0)

    @property
    def buffers_in_backlog(self) -> int:
        """The backlog as a reader would be told now (finished or flushed data buffers)."""
        with self._lock:
            return self._get_buffers_in_backlog()

    @property
    def is_released(self) -> bool:
        """The subpartition was released (its buffers went back)."""
        return self._is_released

    @property
    def is_finished(self) -> bool:
        """EndOfPartition was added: nothing more can be."""
        return self._is_finished

    @property
    def is_consumed_to_end(self) -> bool:
        """The reader was handed EndOfPartition (polled, or taken by the native engine to send)."""
        with self._lock:
            return self._consumed_to_end()

    @property
    def is_blocked(self) -> bool:
        """An upstream-blocking event (an aligned barrier) was handed out and not yet resumed."""
        outq = self._outq
        return outq.is_blocked if outq is not None else self._is_blocked

    @property
    def has_view(self) -> bool:
        """The read view was created."""
        return self._view is not None

    @property
    def number_of_queued_buffers(self) -> int:
        """Queued consumers (finished or not), read without the lock (for metrics)."""
        outq = self._outq
        return len(self._buffers) + (outq.queued_buffers if outq is not None else 0)

    @property
    def is_data_available(self) -> bool:
        """Whether the view could hand out a buffer now."""
        with self._lock:
            return self._is_data_available()

    @property
    def has_unflushed_data(self) -> bool:
        """Whether a flush could make something readable: buffers are queued and no flush is
        pending. Read without the lock (the output flusher's cheap look, Flink's FLINK-14118);
        a buffer added after the look is flushed by the next flush."""
        return bool(self._buffers) and not self._flush_requested

    def __repr__(self) -> str:
        return (f"PipelinedSubpartition#{self.index} [number of buffers: {self.total_number_of_buffers} "
                f"({self.total_number_of_bytes} bytes), number of buffers in backlog: "
                f"{self._buffers_in_backlog}, finished? {self._is_finished}, read view? "
                f"{self._view is not None}]")


class PipelinedSubpartitionView:
    """The read view of one :class:`PipelinedSubpartition` (Flink's ``PipelinedSubpartitionView``)."""

    __slots__ = ("_parent", "_listener", "_released", "__weakref__")

    def __init__(self, parent: PipelinedSubpartition, listener: BufferAvailabilityListener):
        self._parent = parent
        self._listener = listener
        self._released = False

    def get_next_buffer(self) -> BufferAndBacklog | None:
        """The next buffer with backlog, next data type and sequence number, or None."""
        return self._parent.poll_buffer()

    def attach_output(self, outq: OutputQueue) -> bool:
        """Serve the subpartition through the native engine's output queue (see
        :meth:`PipelinedSubpartition.attach_output`)."""
        return self._parent.attach_output(outq)

    def notify_data_available(self) -> None:
        """Tell the listener that something became readable (the subpartition calls this)."""
        self._listener.notify_data_available(self)

    def notify_priority_event(self, sequence_number: int) -> None:
        """Tell the listener that a priority event is first in line (the subpartition calls this)."""
        self._listener.notify_priority_event(sequence_number)

    def release_all_resources(self) -> None:
        """Release the view (once); the partition counts its subpartition as consumed. Before
        EndOfPartition was read, that is a lost consumer (see :meth:`release_by_consumer`)."""
        self.release_by_consumer(f"the reader {self._listener!r}",
                                 "its view was released before the end of the partition")

    def release_by_consumer(self, consumer: str, reason: str) -> None:
        """Release the view (once) because its consumer let go of it: ``consumer`` says who
        that was (``"local gate ..."``, ``"remote consumer host:port ..."``) and ``reason`` why.
        Released before the reader was handed EndOfPartition, and not by the producer's own
        release, the consumer is lost: the partition records it and raises
        :class:`~flinknet.errors.ConsumerLostError` to its writers (see
        :meth:`~flinknet.partition.ResultPartition.on_subpartition_consumer_lost`)."""
        if not self._released:
            self._released = True
            self._parent._on_view_released(consumer, reason)

    @property
    def is_released(self) -> bool:
        return self._released or self._parent.is_released

    def resume_consumption(self) -> None:
        self._parent.resume_consumption()

    def acknowledge_all_data_processed(self) -> None:
        self._parent.acknowledge_all_data_processed()

    def get_availability_and_backlog(self, is_credit_available: bool = True) -> AvailabilityWithBacklog:
        return self._parent.get_availability_and_backlog(is_credit_available)

    @property
    def failure_cause(self) -> BaseException | None:
        """Why the producer failed, if it did."""
        return self._parent.parent.failure_cause

    def notify_new_buffer_size(self, size: int) -> None:
        self._parent.set_buffer_size(size)

    @property
    def number_of_queued_buffers(self) -> int:
        """Buffers queued in the subpartition, read without the lock (Flink's
        ``unsynchronizedGetNumberOfQueuedBuffers``, for metrics)."""
        return self._parent.number_of_queued_buffers

    @property
    def subpartition(self) -> PipelinedSubpartition:
        return self._parent

    def __repr__(self) -> str:
        return f"PipelinedSubpartitionView(index: {self._parent.index}) of {self._parent.parent}"
