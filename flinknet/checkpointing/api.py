"""What a framework implements and receives when checkpoint barriers pass a task's input
(Flink's ``CheckpointableTask``, ``ChannelStateWriter``, ``CheckpointMetaData``,
``CheckpointMetricsBuilder``, ``CheckpointFailureReason`` / ``CheckpointException``, ``Clock``).

The framework implements :class:`CheckpointableTask` (the barrier handler calls
``trigger_checkpoint_on_barrier`` once per checkpoint when the task must snapshot its state, and
``abort_checkpoint_on_barrier`` when a checkpoint is given up at this task) and, for unaligned
checkpoints, a :class:`ChannelStateWriter` that receives the in-flight input buffers captured
for the snapshot. :class:`InMemoryChannelStateWriter` is a ready one that keeps them in memory.

Ownership: every buffer handed to :meth:`ChannelStateWriter.add_input_data` carries one
reference that belongs to the writer, which must ``recycle()`` it when done (after persisting,
or on :meth:`~ChannelStateWriter.abort`). A captured buffer of a local channel is a slice of the
producer's memory and one of a remote channel is one of its credit buffers: a writer should
persist and recycle them promptly (:class:`InMemoryChannelStateWriter` copies them at once).

Everything here runs on the task thread (the thread that reads the
:class:`~flinknet.checkpointing.CheckpointedInputGate`), as in Flink.
"""

from __future__ import annotations

import enum
import heapq
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from flinknet._core.buffer import FREEING_BUFFER_RECYCLER, Buffer, NetworkBuffer
from flinknet._core.memory import MemorySegment
from flinknet.consumer.channels import InputChannelInfo
from flinknet.events import CheckpointOptions
from flinknet.partition.result_partition import SEQUENCE_NUMBER_UNKNOWN
from flinknet.partition.subpartition import ResultSubpartitionInfo

__all__ = [
    "SEQUENCE_NUMBER_RESTORED",
    "SEQUENCE_NUMBER_UNKNOWN",
    "Cancellable",
    "ChannelStateWriteResult",
    "ChannelStateWriter",
    "CheckpointFailure",
    "CheckpointFailureReason",
    "CheckpointMetaData",
    "CheckpointMetrics",
    "CheckpointableTask",
    "Clock",
    "InMemoryChannelStateWriter",
    "ManualClock",
    "SystemClock",
    "TaskThreadTimerService",
    "TimerService",
]

#: Flink's ``ChannelStateWriter.SEQUENCE_NUMBER_RESTORED`` (``SEQUENCE_NUMBER_UNKNOWN``, -1, is
#: defined with the partitions, whose unaligned barriers capture output data).
SEQUENCE_NUMBER_RESTORED = -2


class CheckpointFailureReason(enum.Enum):
    """Why a checkpoint was given up at this task (the subset of Flink's
    ``CheckpointFailureReason`` the input side produces); the value is Flink's message."""

    CHECKPOINT_DECLINED_SUBSUMED = ("Checkpoint was canceled because a barrier from newer checkpoint was "
                                    "received.")
    CHECKPOINT_DECLINED_ON_CANCELLATION_BARRIER = "Task received cancellation from one of its inputs"
    CHECKPOINT_DECLINED_INPUT_END_OF_STREAM = "Checkpoint was declined because one input stream is finished"
    CHECKPOINT_SUBSUMED = "Checkpoint has been subsumed."

    @property
    def message(self) -> str:
        """Flink's message for the reason."""
        return str(self.value)


@dataclass(frozen=True)
class CheckpointFailure:
    """The typed abort notification (Flink's ``CheckpointException`` with its
    ``CheckpointFailureReason``) passed to :meth:`CheckpointableTask.abort_checkpoint_on_barrier`
    and :meth:`ChannelStateWriter.abort`."""

    reason: CheckpointFailureReason
    checkpoint_id: int

    @property
    def message(self) -> str:
        """Flink's message for :attr:`reason`."""
        return self.reason.message

    def __str__(self) -> str:
        return f"checkpoint {self.checkpoint_id}: {self.reason.name}: {self.reason.message}"


@dataclass(frozen=True)
class CheckpointMetaData:
    """Flink's ``CheckpointMetaData``: the checkpoint id, the barrier's creation timestamp (ms
    since the epoch) and when this task triggered it (ms since the epoch)."""

    checkpoint_id: int
    timestamp: int
    received_timestamp: int


@dataclass
class CheckpointMetrics:
    """Flink's ``CheckpointMetricsBuilder`` as this task reports it for one checkpoint.

    For an aligned checkpoint every value is known when the task is triggered. An unaligned one
    is triggered at its first barrier, before the alignment ends: ``alignment_duration_nanos``
    and ``bytes_processed_during_alignment`` stay None until the last barrier (or the abort)
    arrives, and ``bytes_persisted_during_alignment`` keeps growing while in-flight data is
    captured (the handler updates this same object; :meth:`~flinknet.checkpointing.
    CheckpointBarrierHandler.get_all_barriers_received_future` tells when it is final).
    """

    checkpoint_id: int
    checkpoint_start_delay_nanos: int = 0
    alignment_duration_nanos: int | None = None
    bytes_processed_during_alignment: int | None = None
    bytes_persisted_during_alignment: int = 0

    @property
    def is_complete(self) -> bool:
        """The alignment ended (every value is final)."""
        return self.alignment_duration_nanos is not None


@runtime_checkable
class CheckpointableTask(Protocol):
    """What the framework's task implements (Flink's ``CheckpointableTask``).

    ``trigger_checkpoint_on_barrier`` is "the barrier is complete at this task" for an aligned
    checkpoint (every input delivered it; records delivered before were processed, none after)
    and "snapshot now" for an unaligned one (the first barrier arrived; the in-flight input
    data of the cut goes to the :class:`ChannelStateWriter` until every barrier arrived). The
    task snapshots its state and forwards the barrier downstream. ``options`` are the
    barrier's (unaligned when the checkpoint is taken unaligned, also after a timed-out
    alignment). ``abort_checkpoint_on_barrier`` tells that checkpoint ``checkpoint_id`` will
    not complete at this task (the task forwards a ``CancelCheckpointMarker``).
    """

    def trigger_checkpoint_on_barrier(self, metadata: CheckpointMetaData, options: CheckpointOptions,
                                      metrics: CheckpointMetrics) -> None:
        """Snapshot the task's state for ``metadata.checkpoint_id``."""
        ...

    def abort_checkpoint_on_barrier(self, checkpoint_id: int, cause: CheckpointFailure) -> None:
        """Checkpoint ``checkpoint_id`` is given up at this task."""
        ...

    # Optional (called when the task has it; not part of the protocol's isinstance check):
    # ``prepare_input_snapshot(channel_state_writer, checkpoint_id)``, Flink's
    # ``prepareInflightDataSnapshot``: when an unaligned checkpoint starts, before the channels
    # capture their in-flight buffers, the task hands over what its readers hold of records not
    # yet complete (:meth:`flinknet.consumer.RecordReader.prepare_snapshot` does it for a reader).


@runtime_checkable
class ChannelStateWriter(Protocol):
    """Receives the in-flight input data of unaligned checkpoints (Flink's
    ``ChannelStateWriter``, input side).

    Per checkpoint: ``start`` (when the checkpoint is taken unaligned), any number of
    ``add_input_data``, then ``finish_input`` (every barrier arrived: the input state is
    complete) or ``abort``. ``buffers`` are data buffers in channel order, each with one
    reference owned by the writer (recycle it when done). ``sequence_number`` is
    :data:`SEQUENCE_NUMBER_UNKNOWN` for buffers captured as the task reads them.
    """

    def start(self, checkpoint_id: int, options: CheckpointOptions) -> None:
        """An unaligned checkpoint starts: input data for it follows."""
        ...

    def add_input_data(self, checkpoint_id: int, channel_info: InputChannelInfo, sequence_number: int,
                       buffers: Sequence[Buffer]) -> None:
        """In-flight data of ``channel_info`` belonging to checkpoint ``checkpoint_id``."""
        ...

    def finish_input(self, checkpoint_id: int) -> None:
        """No more input data for ``checkpoint_id``."""
        ...

    def abort(self, checkpoint_id: int, cause: CheckpointFailure, cleanup: bool) -> None:
        """Checkpoint ``checkpoint_id`` was aborted; with ``cleanup`` drop (recycle) its data."""
        ...


class ChannelStateWriteResult:
    """The channel state one :class:`InMemoryChannelStateWriter` collected for a checkpoint:
    ``input_data[channel_info]`` is the list of captured input buffers in channel order,
    ``output_data[subpartition_info]`` the in-flight output an unaligned barrier overtook at a
    producer. The holder owns the buffers: :meth:`recycle` gives them back (idempotent)."""

    def __init__(self, checkpoint_id: int, options: CheckpointOptions | None) -> None:
        self.checkpoint_id = checkpoint_id
        self.options = options
        self.input_data: dict[InputChannelInfo, list[Buffer]] = {}
        self.input_finished = False
        self.output_data: dict[ResultSubpartitionInfo, list[Buffer]] = {}
        self.output_finished = False
        self.aborted: CheckpointFailure | None = None

    @property
    def size(self) -> int:
        """Bytes captured over all channels and subpartitions."""
        return (sum(b.readable_bytes for bufs in self.input_data.values() for b in bufs)
                + sum(b.readable_bytes for bufs in self.output_data.values() for b in bufs))

    def channel_bytes(self, channel_info: InputChannelInfo) -> bytes:
        """The captured bytes of one input channel, concatenated (a copy)."""
        return b"".join(b.to_bytes() for b in self.input_data.get(channel_info, ()))

    def subpartition_bytes(self, subpartition_info: ResultSubpartitionInfo) -> bytes:
        """The captured output bytes of one subpartition, concatenated (a copy)."""
        return b"".join(b.to_bytes() for b in self.output_data.get(subpartition_info, ()))

    def recycle(self) -> None:
        """Give every captured buffer back."""
        data, self.input_data = self.input_data, {}
        out, self.output_data = self.output_data, {}
        for bufs in (*data.values(), *out.values()):
            for b in bufs:
                b.recycle()

    def __repr__(self) -> str:
        return (f"ChannelStateWriteResult(checkpoint {self.checkpoint_id}, {len(self.input_data)} channels, "
                f"{self.size} bytes, finished={self.input_finished})")


def _detach(buffers: Sequence[Buffer]) -> list[Buffer]:
    """Copies of ``buffers`` in memory of their own (freed when recycled); the originals are
    recycled at once."""
    out: list[Buffer] = []
    try:
        for b in buffers:
            n = b.readable_bytes
            with memoryview(b) as view:
                segment = MemorySegment.wrap_copy(view) if n else MemorySegment(1)
            out.append(NetworkBuffer(segment, FREEING_BUFFER_RECYCLER, b.data_type, n))
    finally:
        for b in buffers:
            b.recycle()
    return out


class InMemoryChannelStateWriter:
    """A :class:`ChannelStateWriter` (and a partition's
    :class:`~flinknet.partition.OutputChannelStateWriter`) that keeps the captured data in
    memory, one :class:`ChannelStateWriteResult` per checkpoint. It copies each buffer it is
    handed into memory of its own and recycles the network buffer at once, as Flink's writer
    releases a buffer once written: a checkpoint in progress never holds a channel's credit or
    a producer's buffer (a consumer whose captured buffers were its credit would otherwise
    stall until the checkpoint is taken). Take a result with
    :meth:`get_and_remove_write_result` (then it is yours to recycle) for every checkpoint the
    task was triggered for (also aligned-with-timeout ones: they leave an empty, finished
    result); an aborted checkpoint's buffers are recycled at once, as are those of an
    unfinished checkpoint when a newer one starts; :meth:`close` recycles whatever is left."""

    def __init__(self) -> None:
        self._results: dict[int, ChannelStateWriteResult] = {}
        self._lock = threading.Lock()
        #: the latest ``(checkpoint_id, cause)`` given to :meth:`abort` (up to 1000), in order.
        self.aborted: deque[tuple[int, CheckpointFailure]] = deque(maxlen=1000)

    def start(self, checkpoint_id: int, options: CheckpointOptions) -> None:
        """Also drops (recycles) the data of older checkpoints whose input never finished: a
        newer checkpoint started, so they cannot complete (as Flink's channel-state writer)."""
        with self._lock:
            stale = [r for cid, r in self._results.items() if cid < checkpoint_id and not r.input_finished]
            for r in stale:
                del self._results[r.checkpoint_id]
            result = self._results.get(checkpoint_id)
            if result is None:
                self._results[checkpoint_id] = ChannelStateWriteResult(checkpoint_id, options)
            else:
                result.options = options
        for r in stale:
            r.recycle()

    def add_input_data(self, checkpoint_id: int, channel_info: InputChannelInfo, sequence_number: int,
                       buffers: Sequence[Buffer]) -> None:
        with self._lock:
            result = self._results.get(checkpoint_id)
            if result is None:
                result = self._results[checkpoint_id] = ChannelStateWriteResult(checkpoint_id, None)
            result.input_data.setdefault(channel_info, []).extend(_detach(buffers))

    def finish_input(self, checkpoint_id: int) -> None:
        with self._lock:
            result = self._results.get(checkpoint_id)
            if result is not None:
                result.input_finished = True

    def add_output_data(self, checkpoint_id: int, subpartition_info: ResultSubpartitionInfo,
                        sequence_number: int, buffers: Sequence[Buffer]) -> None:
        """In-flight output an unaligned barrier overtook (see
        :meth:`flinknet.partition.ResultPartition.set_channel_state_writer`); kept in order per
        subpartition."""
        with self._lock:
            result = self._results.get(checkpoint_id)
            if result is None:
                result = self._results[checkpoint_id] = ChannelStateWriteResult(checkpoint_id, None)
            result.output_data.setdefault(subpartition_info, []).extend(_detach(buffers))

    def finish_output(self, checkpoint_id: int) -> None:
        """No more output data for ``checkpoint_id`` (the task broadcast its barrier)."""
        with self._lock:
            result = self._results.get(checkpoint_id)
            if result is None:
                result = self._results[checkpoint_id] = ChannelStateWriteResult(checkpoint_id, None)
            result.output_finished = True

    def abort(self, checkpoint_id: int, cause: CheckpointFailure, cleanup: bool) -> None:
        with self._lock:
            self.aborted.append((checkpoint_id, cause))
            result = self._results.pop(checkpoint_id, None) if cleanup else self._results.get(checkpoint_id)
        if result is not None:
            result.aborted = cause
            if cleanup:
                result.recycle()

    def get_and_remove_write_result(self, checkpoint_id: int) -> ChannelStateWriteResult:
        """The checkpoint's result (an empty one if nothing was captured); the caller recycles it."""
        with self._lock:
            result = self._results.pop(checkpoint_id, None)
        return result if result is not None else ChannelStateWriteResult(checkpoint_id, None)

    @property
    def checkpoint_ids(self) -> list[int]:
        """The checkpoints with a result not yet taken."""
        with self._lock:
            return sorted(self._results)

    def close(self) -> None:
        """Recycle every buffer not yet taken."""
        with self._lock:
            results, self._results = self._results, {}
        for r in results.values():
            r.recycle()


# -- time ------------------------------------------------------------------------------------------

class Clock(Protocol):
    """Flink's ``Clock``: wall-clock milliseconds (compared with barrier timestamps) and a
    monotonic nanosecond clock (alignment durations)."""

    def absolute_time_millis(self) -> int:
        """Milliseconds since the epoch."""
        ...

    def relative_time_nanos(self) -> int:
        """A monotonic clock in nanoseconds."""
        ...


class SystemClock:
    """The real clocks: ``time.time`` and ``time.monotonic_ns``."""

    def absolute_time_millis(self) -> int:
        return time.time_ns() // 1_000_000

    def relative_time_nanos(self) -> int:
        return time.monotonic_ns()


class ManualClock:
    """A clock that moves only when told (Flink's ``ManualClock``), for tests and simulations:
    both clocks start at ``start_millis`` and move together by :meth:`advance_millis`."""

    def __init__(self, start_millis: int = 0) -> None:
        self._nanos = start_millis * 1_000_000

    def absolute_time_millis(self) -> int:
        return self._nanos // 1_000_000

    def relative_time_nanos(self) -> int:
        return self._nanos

    def advance_millis(self, millis: float) -> None:
        """Move both clocks forward."""
        if millis < 0:
            raise ValueError("a clock does not go back")
        self._nanos += int(millis * 1_000_000)


class Cancellable(Protocol):
    """A registered timer (Flink's ``Cancellable``)."""

    def cancel(self) -> None:
        """Do not fire (no-op once fired)."""
        ...


class TimerService(Protocol):
    """Registers a callback to run on the task thread after ``delay_millis`` (Flink's
    ``DelayableTimer``, executed by the task's mailbox)."""

    def register_timer(self, callback: Callable[[], None], delay_millis: int) -> Cancellable:
        """Run ``callback`` on the task thread once ``delay_millis`` passed."""
        ...


@dataclass(order=True)
class _Timer:
    due_nanos: int
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class TaskThreadTimerService:
    """A :class:`TimerService` whose timers fire on the task thread: the
    :class:`~flinknet.checkpointing.CheckpointedInputGate` calls :meth:`fire_due_timers` before
    each read and waits for input no longer than :attr:`next_due_in_seconds` (Flink runs the
    alignment timer as a mail of the task's mailbox). Time comes from ``clock``."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._timers: list[_Timer] = []
        self._seq = 0

    def register_timer(self, callback: Callable[[], None], delay_millis: int) -> Cancellable:
        self._seq += 1
        timer = _Timer(self.clock.relative_time_nanos() + max(0, int(delay_millis)) * 1_000_000,
                       self._seq, callback)
        heapq.heappush(self._timers, timer)
        return timer

    def fire_due_timers(self) -> int:
        """Run every timer that is due (in due order); how many ran."""
        fired = 0
        timers = self._timers
        while timers:
            head = timers[0]
            if head.cancelled:
                heapq.heappop(timers)
                continue
            if head.due_nanos > self.clock.relative_time_nanos():
                break
            heapq.heappop(timers)
            head.cancelled = True
            fired += 1
            head.callback()
        return fired

    @property
    def next_due_in_seconds(self) -> float | None:
        """Seconds until the next timer is due (0 if one is due now), None without timers."""
        timers = self._timers
        while timers and timers[0].cancelled:
            heapq.heappop(timers)
        if not timers:
            return None
        return max(0, timers[0].due_nanos - self.clock.relative_time_nanos()) / 1e9

    @property
    def pending(self) -> int:
        """Timers registered and neither fired nor cancelled."""
        return sum(1 for t in self._timers if not t.cancelled)
