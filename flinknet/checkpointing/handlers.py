"""Barrier handlers: what a task does with the checkpoint barriers, cancellation markers and
EndOfPartitions of its inputs (Flink's ``CheckpointBarrierHandler``,
``SingleCheckpointBarrierHandler`` and ``CheckpointBarrierTracker``).

* :meth:`SingleCheckpointBarrierHandler.aligned` — exactly-once, aligned: a channel that
  delivered the barrier stays blocked until every open channel did; then the task is triggered
  and the channels resume.
* :meth:`SingleCheckpointBarrierHandler.unaligned` — exactly-once, unaligned: the first barrier
  triggers the checkpoint at once; channels still owing their barrier are captured (their data
  goes to the :class:`~flinknet.checkpointing.ChannelStateWriter` as well as to the task) until
  it arrives.
* :meth:`SingleCheckpointBarrierHandler.alternating` — aligned barriers whose alignment may time
  out (``execution.checkpointing.aligned-checkpoint-timeout``, measured from the checkpoint's
  creation, the barrier's timestamp): then the checkpoint switches to unaligned; unaligned
  barriers are taken unaligned.
* :class:`CheckpointBarrierTracker` — at-least-once: counts barriers, blocks nothing.

Flink's rules: a barrier of a newer checkpoint aborts a pending older one
(``CHECKPOINT_DECLINED_SUBSUMED``); a barrier of an older or finished checkpoint only resumes its
channel; a cancellation marker newer than the current checkpoint, or equal to it while barriers
are being collected, aborts it (``CHECKPOINT_DECLINED_ON_CANCELLATION_BARRIER``); EndOfPartition
counts its channel as aligned when checkpoints after tasks finish are enabled (the default),
otherwise it aborts the pending checkpoint (``CHECKPOINT_DECLINED_INPUT_END_OF_STREAM``).
One addition: when a cancellation marker of a newer checkpoint aborts it while an older one,
already triggered unaligned, still collects barriers, the older one is aborted too (writer and
task are told; Flink fails it through its all-barriers-received future only).

Not thread-safe: everything, timers included, runs on the task thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from flinknet.checkpointing.api import (
    Cancellable,
    ChannelStateWriter,
    CheckpointableTask,
    CheckpointFailure,
    CheckpointFailureReason,
    CheckpointMetaData,
    CheckpointMetrics,
    Clock,
    SystemClock,
    TaskThreadTimerService,
    TimerService,
)
from flinknet.checkpointing.inputs import CheckpointableInput
from flinknet.checkpointing.states import (
    AlternatingWaitingForFirstBarrier,
    AlternatingWaitingForFirstBarrierUnaligned,
    BarrierHandlerState,
    ChannelState,
    WaitingForFirstBarrier,
    blocks_upstream,
)
from flinknet.consumer.channels import InputChannelInfo
from flinknet.errors import IllegalStateError
from flinknet.events import CancelCheckpointMarker, CheckpointBarrier

__all__ = ["CheckpointBarrierHandler", "CheckpointBarrierTracker", "SingleCheckpointBarrierHandler"]

#: Flink's ``CheckpointBarrierTracker.MAX_CHECKPOINTS_TO_TRACK``.
MAX_CHECKPOINTS_TO_TRACK = 50


def _done_future(value: CheckpointFailure | None = None) -> Future[CheckpointFailure | None]:
    f: Future[CheckpointFailure | None] = Future()
    f.set_result(value)
    return f


class CheckpointBarrierHandler:
    """What every barrier handler does (Flink's ``CheckpointBarrierHandler``): process
    barriers, announcements, cancellation markers and EndOfPartitions; notify the task; keep
    the alignment metrics (§13): :attr:`alignment_duration_nanos` (``checkpointAlignmentTime``),
    :attr:`checkpoint_start_delay_nanos` (``checkpointStartDelayNanos``), bytes processed and
    persisted during the alignment."""

    def __init__(self, task: CheckpointableTask, clock: Clock | None = None,
                 enable_checkpoint_after_tasks_finished: bool = True) -> None:
        self.task = task
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.enable_checkpoint_after_tasks_finished = enable_checkpoint_after_tasks_finished
        #: the inputs by gate index (empty for the tracker: it captures nothing).
        self.inputs: dict[int, CheckpointableInput] = {}
        self._alignment_start: int | None = None      # relative nanos; None outside an alignment
        self._alignment_checkpoint_id = -1
        self._bytes_processed = 0
        self._metrics: CheckpointMetrics | None = None  # of the latest alignment
        self._latest_duration: int | None = None
        self._latest_bytes_processed: int | None = None
        self._latest_start_delay = 0

    # -- events (the CheckpointedInputGate calls these) ------------------------------------------

    def process_barrier(self, barrier: CheckpointBarrier, channel_info: InputChannelInfo) -> None:
        """A barrier was taken from ``channel_info``."""
        raise NotImplementedError

    def process_barrier_announcement(self, barrier: CheckpointBarrier, sequence_number: int,
                                     channel_info: InputChannelInfo) -> None:
        """An ``EventAnnouncement`` of ``barrier`` at ``sequence_number`` was taken."""
        raise NotImplementedError

    def process_cancellation_barrier(self, marker: CancelCheckpointMarker,
                                     channel_info: InputChannelInfo) -> None:
        """A ``CancelCheckpointMarker`` was taken from ``channel_info``."""
        raise NotImplementedError

    def process_end_of_partition(self, channel_info: InputChannelInfo) -> None:
        """``channel_info`` delivered EndOfPartition."""
        raise NotImplementedError

    @property
    def latest_checkpoint_id(self) -> int:
        """The pending or last completed checkpoint (-1: none yet)."""
        raise NotImplementedError

    @property
    def is_checkpoint_pending(self) -> bool:
        """A checkpoint started here and neither completed nor was aborted."""
        raise NotImplementedError

    def get_all_barriers_received_future(self, checkpoint_id: int) -> Future[CheckpointFailure | None]:
        """Done when every barrier of ``checkpoint_id`` arrived (result None) or it was aborted
        (result: the :class:`CheckpointFailure`)."""
        return _done_future()

    def close(self) -> None:
        """Cancel timers; nothing more is processed."""

    # -- metrics -----------------------------------------------------------------------------------

    @property
    def alignment_duration_nanos(self) -> int:
        """``checkpointAlignmentTime``: the running alignment so far, else the latest one's."""
        if self._alignment_start is not None:
            return self.clock.relative_time_nanos() - self._alignment_start
        return self._latest_duration or 0

    @property
    def checkpoint_start_delay_nanos(self) -> int:
        """``checkpointStartDelayNanos``: from the latest checkpoint's creation (its barrier's
        timestamp) to its first barrier here."""
        return self._latest_start_delay

    @property
    def bytes_processed_during_alignment(self) -> int:
        """Bytes of data buffers taken during the running alignment so far, else the latest's."""
        if self._alignment_start is not None:
            return self._bytes_processed
        return self._latest_bytes_processed or 0

    @property
    def bytes_persisted_during_alignment(self) -> int:
        """In-flight bytes captured for the latest checkpoint (unaligned)."""
        return self._metrics.bytes_persisted_during_alignment if self._metrics is not None else 0

    @property
    def is_during_alignment(self) -> bool:
        """An alignment is running."""
        return self._alignment_start is not None

    def add_processed_bytes(self, nbytes: int) -> None:
        """A data buffer of ``nbytes`` was taken (counted while aligning)."""
        if self._alignment_start is not None:
            self._bytes_processed += nbytes

    def add_persisted_bytes(self, checkpoint_id: int, nbytes: int) -> None:
        """``nbytes`` of in-flight data were captured for ``checkpoint_id``."""
        metrics = self._metrics
        if metrics is not None and metrics.checkpoint_id == checkpoint_id:
            metrics.bytes_persisted_during_alignment += nbytes

    def mark_alignment_start(self, checkpoint_id: int, checkpoint_timestamp: int) -> None:
        """The first barrier of ``checkpoint_id`` arrived."""
        delay = 1_000_000 * max(0, self.clock.absolute_time_millis() - checkpoint_timestamp)
        self._latest_start_delay = delay
        self.reset_alignment()
        self._alignment_start = self.clock.relative_time_nanos()
        self._alignment_checkpoint_id = checkpoint_id
        self._metrics = CheckpointMetrics(checkpoint_id, checkpoint_start_delay_nanos=delay)

    def mark_alignment_start_and_end(self, checkpoint_id: int, checkpoint_timestamp: int) -> None:
        """A single channel: the alignment starts and ends at once."""
        self.mark_alignment_start(checkpoint_id, checkpoint_timestamp)
        self.mark_alignment_end(0)

    def mark_alignment_end(self, duration_nanos: int | None = None) -> None:
        """The last barrier arrived (or the alignment is reset with ``duration_nanos=0``)."""
        if duration_nanos is None:
            start = self._alignment_start
            duration_nanos = 0 if start is None else self.clock.relative_time_nanos() - start
        if duration_nanos < 0:
            raise IllegalStateError(
                f"Alignment time is less than zero({duration_nanos}). Is the time monotonic?")
        metrics = self._metrics
        if metrics is not None and metrics.alignment_duration_nanos is None:
            metrics.alignment_duration_nanos = duration_nanos
            metrics.bytes_processed_during_alignment = self._bytes_processed
        self._latest_duration = duration_nanos
        self._latest_bytes_processed = self._bytes_processed
        self._alignment_start = None
        self._bytes_processed = 0

    def reset_alignment(self) -> None:
        """Forget the running alignment (Flink's ``resetAlignment``)."""
        self.mark_alignment_end(0)
        self._latest_duration = None
        self._latest_bytes_processed = None

    # -- notifications -------------------------------------------------------------------------

    def notify_checkpoint(self, barrier: CheckpointBarrier) -> None:
        """Trigger the checkpoint at the task."""
        metadata = CheckpointMetaData(barrier.id, barrier.timestamp, self.clock.absolute_time_millis())
        metrics = self._metrics
        if metrics is None or barrier.id != self._alignment_checkpoint_id:
            metrics = CheckpointMetrics(barrier.id, 0, 0, 0, 0)
        self.task.trigger_checkpoint_on_barrier(metadata, barrier.options, metrics)

    def notify_abort(self, checkpoint_id: int, cause: CheckpointFailure) -> None:
        """Tell the task that ``checkpoint_id`` is given up here."""
        self.task.abort_checkpoint_on_barrier(checkpoint_id, cause)


class SingleCheckpointBarrierHandler(CheckpointBarrierHandler):
    """Exactly-once barrier handling, one checkpoint at a time (Flink's
    ``SingleCheckpointBarrierHandler``); build it with :meth:`aligned`, :meth:`unaligned` or
    :meth:`alternating`. The current state (:attr:`state`) is one of
    :mod:`flinknet.checkpointing.states`."""

    def __init__(self, task: CheckpointableTask, inputs: Sequence[CheckpointableInput],
                 initial_state: Callable[[ChannelState], BarrierHandlerState], alternating: bool, *,
                 task_name: str = "", channel_state_writer: ChannelStateWriter | None = None,
                 clock: Clock | None = None, timer_service: TimerService | None = None,
                 enable_checkpoint_after_tasks_finished: bool = True) -> None:
        super().__init__(task, clock, enable_checkpoint_after_tasks_finished)
        self.task_name = task_name
        self.inputs = {inp.gate_index: inp for inp in inputs}
        if len(self.inputs) != len(inputs):
            raise ValueError("two inputs have the same gate index")
        self.channel_state_writer = channel_state_writer
        self.timer_service: TimerService = (timer_service if timer_service is not None
                                            else TaskThreadTimerService(self.clock))
        self.is_alternating = alternating
        self._num_open_channels = sum(len(inp.channel_infos) for inp in inputs)
        self._current_checkpoint_id = -1
        self._pending_barrier: CheckpointBarrier | None = None
        self._aligned: set[InputChannelInfo] = set()
        self._target_channel_count = 0
        self._last_cancelled_or_completed = -1
        self._all_barriers_future: Future[CheckpointFailure | None] = Future()
        self._alignment_timer: Cancellable | None = None
        self._channel_state_started = -1   # the checkpoint whose channel-state write was started
        self._closed = False
        self.state: BarrierHandlerState = initial_state(ChannelState(self.inputs))
        for inp in inputs:
            inp.set_on_persisted(self.add_persisted_bytes)

    # -- factories ---------------------------------------------------------------------------------

    @classmethod
    def aligned(cls, task: CheckpointableTask, inputs: Sequence[CheckpointableInput], *, task_name: str = "",
                clock: Clock | None = None,
                enable_checkpoint_after_tasks_finished: bool = True) -> SingleCheckpointBarrierHandler:
        """Aligned checkpoints only (unaligned checkpoints disabled)."""
        return cls(task, inputs, WaitingForFirstBarrier, False, task_name=task_name, clock=clock,
                   enable_checkpoint_after_tasks_finished=enable_checkpoint_after_tasks_finished)

    @classmethod
    def unaligned(cls, task: CheckpointableTask, inputs: Sequence[CheckpointableInput],
                  channel_state_writer: ChannelStateWriter, *, task_name: str = "",
                  clock: Clock | None = None,
                  enable_checkpoint_after_tasks_finished: bool = True) -> SingleCheckpointBarrierHandler:
        """Every checkpoint unaligned (an aligned barrier is taken as unaligned)."""
        return cls(task, inputs, lambda s: AlternatingWaitingForFirstBarrierUnaligned(False, s), False,
                   task_name=task_name, channel_state_writer=channel_state_writer, clock=clock,
                   enable_checkpoint_after_tasks_finished=enable_checkpoint_after_tasks_finished)

    @classmethod
    def alternating(cls, task: CheckpointableTask, inputs: Sequence[CheckpointableInput],
                    channel_state_writer: ChannelStateWriter, *, task_name: str = "",
                  clock: Clock | None = None,
                    timer_service: TimerService | None = None,
                    enable_checkpoint_after_tasks_finished: bool = True) -> SingleCheckpointBarrierHandler:
        """Unaligned checkpoints enabled: aligned barriers align (switching to unaligned when a
        timeoutable one's alignment times out), unaligned barriers are taken unaligned."""
        return cls(task, inputs, AlternatingWaitingForFirstBarrier, True, task_name=task_name,
                   channel_state_writer=channel_state_writer, clock=clock, timer_service=timer_service,
                   enable_checkpoint_after_tasks_finished=enable_checkpoint_after_tasks_finished)

    # -- controller (what the states ask) ---------------------------------------------------------

    @property
    def all_barriers_received(self) -> bool:
        """Every open channel delivered the current checkpoint's barrier (or finished)."""
        return len(self._aligned) == self._target_channel_count

    @property
    def pending_checkpoint_barrier(self) -> CheckpointBarrier | None:
        """The first barrier of the pending checkpoint."""
        return self._pending_barrier

    def trigger_global_checkpoint(self, barrier: CheckpointBarrier) -> None:
        """Trigger the checkpoint at the task."""
        self.notify_checkpoint(barrier)

    def init_inputs_checkpoint(self, barrier: CheckpointBarrier) -> None:
        """Start the channel-state write (Flink's ``SubtaskCheckpointCoordinator.
        initInputsCheckpoint``): unaligned → ``start``; timeoutable aligned (completed aligned)
        → ``start`` and ``finish_input`` (its output may still need a snapshot)."""
        writer = self.channel_state_writer
        if writer is None:
            return
        options = barrier.options
        if options.is_unaligned:
            writer.start(barrier.id, options)
            self._channel_state_started = barrier.id
            # the task's partial records first (Flink's prepareInflightDataSnapshot): they come
            # before the in-flight buffers the channels capture next
            prepare = getattr(self.task, "prepare_input_snapshot", None)
            if prepare is not None:
                prepare(writer, barrier.id)
        elif options.is_timeoutable:
            writer.start(barrier.id, options)
            writer.finish_input(barrier.id)

    def is_timed_out(self, barrier: CheckpointBarrier) -> bool:
        """``barrier`` is timeoutable and its timeout passed since the checkpoint's creation."""
        options = barrier.options
        passed = self.clock.absolute_time_millis() - barrier.timestamp
        return (options.is_timeoutable and barrier.id <= self._current_checkpoint_id
                and options.aligned_checkpoint_timeout < passed)

    # -- events ------------------------------------------------------------------------------------

    def process_barrier(self, barrier: CheckpointBarrier, channel_info: InputChannelInfo) -> None:
        barrier_id = barrier.id
        if self._current_checkpoint_id > barrier_id or (
                self._current_checkpoint_id == barrier_id and not self.is_checkpoint_pending):
            # obsolete: only give the channel back if the barrier stopped it
            if blocks_upstream(barrier):
                self.inputs[channel_info.gate_idx].resume_consumption(channel_info)
            return
        self._check_new_checkpoint(barrier)
        self._mark_aligned_and_transform(
            channel_info, barrier, lambda s: s.barrier_received(self, channel_info, barrier, True))

    def process_barrier_announcement(self, barrier: CheckpointBarrier, sequence_number: int,
                                     channel_info: InputChannelInfo) -> None:
        self._check_new_checkpoint(barrier)
        if self._current_checkpoint_id > barrier.id or (
                self._current_checkpoint_id == barrier.id and not self.is_checkpoint_pending):
            return  # obsolete announcement
        self.state = self.state.announcement_received(self, channel_info, sequence_number)

    def process_cancellation_barrier(self, marker: CancelCheckpointMarker,
                                     channel_info: InputChannelInfo) -> None:
        cancelled = marker.checkpoint_id
        if cancelled > self._current_checkpoint_id or (
                cancelled == self._current_checkpoint_id and self._aligned):
            self._abort(cancelled, CheckpointFailureReason.CHECKPOINT_DECLINED_ON_CANCELLATION_BARRIER)

    def process_end_of_partition(self, channel_info: InputChannelInfo) -> None:
        self._num_open_channels -= 1
        if not self.enable_checkpoint_after_tasks_finished:
            if self.is_checkpoint_pending:
                self._abort(self._current_checkpoint_id,
                            CheckpointFailureReason.CHECKPOINT_DECLINED_INPUT_END_OF_STREAM)
            return
        if not self.is_checkpoint_pending:
            return
        pending = self._pending_barrier
        if pending is None:
            raise IllegalStateError(
                "pending checkpoint barrier should not be null when there is pending checkpoint.")
        self._mark_aligned_and_transform(
            channel_info, pending, lambda s: s.end_of_partition_received(self, channel_info))

    # -- internals ---------------------------------------------------------------------------------

    def _mark_aligned_and_transform(self, channel_info: InputChannelInfo, barrier: CheckpointBarrier,
                                    transform: Callable[[BarrierHandlerState], BarrierHandlerState]) -> None:
        aligned = self._aligned
        aligned.add(channel_info)
        if len(aligned) == 1:
            if self._target_channel_count == 1:
                self.mark_alignment_start_and_end(barrier.id, barrier.timestamp)
            else:
                self.mark_alignment_start(barrier.id, barrier.timestamp)
        # the alignment ends before the state may trigger the checkpoint with the metrics
        if len(aligned) == self._target_channel_count and self._target_channel_count > 1:
            self.mark_alignment_end()
        checkpoint_id = self._current_checkpoint_id
        self.state = transform(self.state)
        if checkpoint_id == self._current_checkpoint_id and self.is_checkpoint_pending \
                and len(aligned) == self._target_channel_count:
            aligned.clear()
            self._last_cancelled_or_completed = checkpoint_id
            self._reset_alignment_timer()
            if self._channel_state_started == checkpoint_id and self.channel_state_writer is not None:
                self.channel_state_writer.finish_input(checkpoint_id)
            if not self._all_barriers_future.done():
                self._all_barriers_future.set_result(None)

    def _check_new_checkpoint(self, barrier: CheckpointBarrier) -> None:
        barrier_id = barrier.id
        if self._current_checkpoint_id >= barrier_id:
            return  # not the first barrier of this checkpoint
        if self.is_checkpoint_pending:
            self._abort(self._current_checkpoint_id, CheckpointFailureReason.CHECKPOINT_DECLINED_SUBSUMED)
        self._current_checkpoint_id = barrier_id
        self._pending_barrier = barrier
        self._aligned.clear()
        self._target_channel_count = self._num_open_channels
        self._all_barriers_future = Future()
        if self.is_alternating and barrier.options.is_timeoutable:
            self._register_alignment_timer(barrier)

    def _register_alignment_timer(self, barrier: CheckpointBarrier) -> None:
        passed = self.clock.absolute_time_millis() - barrier.timestamp
        delay = max(barrier.options.aligned_checkpoint_timeout - passed, 0)

        def on_timeout() -> None:
            self._alignment_timer = None
            if self._closed:
                return
            if self._current_checkpoint_id == barrier.id and not self._all_barriers_future.done():
                self.state = self.state.alignment_timeout(self, barrier)

        self._alignment_timer = self.timer_service.register_timer(on_timeout, delay)

    def _reset_alignment_timer(self) -> None:
        timer, self._alignment_timer = self._alignment_timer, None
        if timer is not None:
            timer.cancel()

    def _abort(self, cancelled_id: int, reason: CheckpointFailureReason) -> None:
        # A pending checkpoint older than the cancelled one that was already triggered unaligned
        # cannot complete either: Flink fails it through its all-barriers-received future; here
        # its writer and the task are told too, so its captured data goes back.
        pending = self._current_checkpoint_id
        older = (pending if self.is_checkpoint_pending and pending < cancelled_id
                 and self._channel_state_started == pending else None)
        self._current_checkpoint_id = max(cancelled_id, self._current_checkpoint_id)
        self._last_cancelled_or_completed = max(self._last_cancelled_or_completed, cancelled_id)
        self._pending_barrier = None
        self._aligned.clear()
        self._target_channel_count = 0
        self._reset_alignment_timer()
        self.state = self.state.abort(cancelled_id)
        if cancelled_id == self._current_checkpoint_id:
            self.reset_alignment()
        if older is not None:
            older_failure = CheckpointFailure(reason, older)
            if self.channel_state_writer is not None:
                self.channel_state_writer.abort(older, older_failure, True)
            self.notify_abort(older, older_failure)
        failure = CheckpointFailure(reason, cancelled_id)
        if self.channel_state_writer is not None:
            self.channel_state_writer.abort(cancelled_id, failure, True)
        self.notify_abort(cancelled_id, failure)
        if not self._all_barriers_future.done():
            self._all_barriers_future.set_result(failure)

    # -- state -------------------------------------------------------------------------------------

    @property
    def latest_checkpoint_id(self) -> int:
        return self._current_checkpoint_id

    @property
    def is_checkpoint_pending(self) -> bool:
        return (self._current_checkpoint_id != self._last_cancelled_or_completed
                and self._current_checkpoint_id >= 0)

    @property
    def num_open_channels(self) -> int:
        """Channels that did not deliver EndOfPartition."""
        return self._num_open_channels

    @property
    def blocked_channels(self) -> list[InputChannelInfo]:
        """Channels blocked by their aligned barrier, waiting for the alignment to end."""
        return sorted(self._channel_state().blocked)

    def _channel_state(self) -> ChannelState:
        state: ChannelState = self.state.state  # type: ignore[attr-defined] # every state has one
        return state

    def get_all_barriers_received_future(self, checkpoint_id: int) -> Future[CheckpointFailure | None]:
        if checkpoint_id < self._current_checkpoint_id or self._num_open_channels == 0:
            return _done_future()
        if checkpoint_id > self._current_checkpoint_id:
            raise IllegalStateError(f"Checkpoint {checkpoint_id} has not been started at all")
        return self._all_barriers_future

    def close(self) -> None:
        self._closed = True
        self._reset_alignment_timer()
        self._all_barriers_future.cancel()

    def __repr__(self) -> str:
        return (f"{self.task_name}: current checkpoint: {self._current_checkpoint_id}, "
                f"current aligned channels: {len(self._aligned)}, "
                f"target channel count: {self._target_channel_count}, state: {self.state!r}")


class _BarrierCount:
    """A checkpoint id with the channels that delivered its barrier (Flink's
    ``CheckpointBarrierCount``)."""

    def __init__(self, checkpoint_id: int, barrier: CheckpointBarrier | None, channel_info: InputChannelInfo,
                 target: int) -> None:
        self.checkpoint_id = checkpoint_id
        self.barrier = barrier
        self.aligned = {channel_info}
        self.target = target
        self.aborted = False

    def mark_channel_aligned(self, channel_info: InputChannelInfo) -> int:
        self.aligned.add(channel_info)
        return len(self.aligned)

    def mark_aborted(self) -> bool:
        first = not self.aborted
        self.aborted = True
        return first


class CheckpointBarrierTracker(CheckpointBarrierHandler):
    """At-least-once (Flink's ``CheckpointBarrierTracker``): nothing is blocked; the task is
    triggered when a checkpoint's barrier arrived on every open channel (a single channel: at
    once). Up to 50 checkpoints are tracked; completing one drops older incomplete ones
    silently; a cancellation marker aborts older pending ones and its own."""

    def __init__(self, total_number_of_input_channels: int, task: CheckpointableTask,
                 clock: Clock | None = None, enable_checkpoint_after_tasks_finished: bool = True) -> None:
        super().__init__(task, clock, enable_checkpoint_after_tasks_finished)
        self._num_open_channels = total_number_of_input_channels
        self._pending: deque[_BarrierCount] = deque()
        self._latest_pending_id = -1

    def process_barrier(self, barrier: CheckpointBarrier, channel_info: InputChannelInfo) -> None:
        barrier_id = barrier.id
        if barrier_id > self._latest_pending_id and self._num_open_channels == 1:
            self.mark_alignment_start_and_end(barrier_id, barrier.timestamp)
            self.notify_checkpoint(barrier)
            return
        found: _BarrierCount | None = None
        pos = 0
        for count in self._pending:
            if count.checkpoint_id == barrier_id:
                found = count
                break
            pos += 1
        if found is not None:
            if found.mark_channel_aligned(channel_info) == found.target:
                for _ in range(pos + 1):
                    self._pending.popleft()
                if not found.aborted:
                    self._trigger_on_aligned(found)
        elif barrier_id > self._latest_pending_id:
            self.mark_alignment_start(barrier_id, barrier.timestamp)
            self._latest_pending_id = barrier_id
            self._pending.append(_BarrierCount(barrier_id, barrier, channel_info, self._num_open_channels))
            if len(self._pending) > MAX_CHECKPOINTS_TO_TRACK:
                self._pending.popleft()

    def process_barrier_announcement(self, barrier: CheckpointBarrier, sequence_number: int,
                                     channel_info: InputChannelInfo) -> None:
        pass  # ignored, as in Flink

    def process_cancellation_barrier(self, marker: CancelCheckpointMarker,
                                     channel_info: InputChannelInfo) -> None:
        checkpoint_id = marker.checkpoint_id
        if checkpoint_id > self._latest_pending_id and self._num_open_channels == 1:
            self.reset_alignment()
            self._notify_cancelled(checkpoint_id)
            return
        count: _BarrierCount | None = None
        while self._pending and self._pending[0].checkpoint_id < checkpoint_id:
            count = self._pending.popleft()
            if count.mark_aborted():
                self._notify_cancelled(count.checkpoint_id)
        count = self._pending[0] if self._pending else None
        if count is not None and count.checkpoint_id == checkpoint_id:
            if count.mark_aborted():
                self._notify_cancelled(checkpoint_id)
            if count.mark_channel_aligned(channel_info) == count.target:
                self._pending.popleft()
        elif checkpoint_id > self._latest_pending_id:
            self._notify_cancelled(checkpoint_id)
            self._latest_pending_id = checkpoint_id
            marker_count = _BarrierCount(checkpoint_id, None, channel_info, self._num_open_channels)
            marker_count.mark_aborted()
            self._pending.appendleft(marker_count)

    def process_end_of_partition(self, channel_info: InputChannelInfo) -> None:
        self._num_open_channels -= 1
        if not self.enable_checkpoint_after_tasks_finished:
            while self._pending:
                count = self._pending.popleft()
                if count.mark_aborted():
                    self.notify_abort(count.checkpoint_id, CheckpointFailure(
                        CheckpointFailureReason.CHECKPOINT_DECLINED_INPUT_END_OF_STREAM, count.checkpoint_id))
            self.reset_alignment()
            return
        # the latest pending checkpoint that waited only for this channel completes
        found: _BarrierCount | None = None
        pos = len(self._pending)
        for count in reversed(self._pending):
            pos -= 1
            if count.mark_channel_aligned(channel_info) == count.target:
                found = count
                break
        if found is not None:
            for _ in range(pos + 1):
                self._pending.popleft()
            if not found.aborted:
                self._trigger_on_aligned(found)

    def _trigger_on_aligned(self, count: _BarrierCount) -> None:
        if count.checkpoint_id == self._latest_pending_id:
            self.mark_alignment_end()
        if count.barrier is None:
            raise IllegalStateError("Pending checkpoint barrier must exists for non-aborted checkpoints.")
        self.notify_checkpoint(count.barrier)

    def _notify_cancelled(self, checkpoint_id: int) -> None:
        self.notify_abort(checkpoint_id, CheckpointFailure(
            CheckpointFailureReason.CHECKPOINT_DECLINED_ON_CANCELLATION_BARRIER, checkpoint_id))

    @property
    def latest_checkpoint_id(self) -> int:
        return self._pending[-1].checkpoint_id if self._pending else -1

    @property
    def is_checkpoint_pending(self) -> bool:
        return bool(self._pending)

    @property
    def num_open_channels(self) -> int:
        """Channels that did not deliver EndOfPartition."""
        return self._num_open_channels

    @property
    def pending_checkpoint_ids(self) -> list[int]:
        """The checkpoints tracked, oldest first."""
        return [c.checkpoint_id for c in self._pending]

    def __repr__(self) -> str:
        return (f"CheckpointBarrierTracker(open channels: {self._num_open_channels}, "
                f"pending: {self.pending_checkpoint_ids})")
