"""A gate that handles checkpoint barriers (Flink's ``CheckpointedInputGate``).

:class:`CheckpointedInputGate` wraps a :class:`~flinknet.consumer.SingleInputGate` or
:class:`~flinknet.consumer.UnionInputGate` and hands out what it does — data buffers (the
caller recycles them) and events, barriers included — after feeding the barrier handler:
``CheckpointBarrier`` → ``process_barrier``, ``CancelCheckpointMarker`` →
``process_cancellation_barrier``, ``EventAnnouncement`` of a barrier →
``process_barrier_announcement``, ``EndOfPartition`` → ``process_end_of_partition``,
``EndOfData`` → ``acknowledge_all_records_processed`` on its channel. Data buffers are counted
for the alignment metrics and, while an unaligned checkpoint waits for their channel's barrier,
captured for it (:class:`~flinknet.checkpointing.ChannelStatePersister`).

It is an :class:`~flinknet.consumer.InputGate`: a :class:`~flinknet.consumer.RecordReader`
reads through it (``emit_events=True`` shows the barriers). The alignment timer of the
alternating handler fires on the reading thread: before every read, and a blocking
:meth:`get_next` waits for input no longer than until the next timer is due.

Name map: ``pollNext`` / ``getNext`` → ``poll_next`` / ``get_next``;
``getAllBarriersReceivedFuture`` → ``get_all_barriers_received_future``;
``getAlignmentDurationNanos`` / ``getCheckpointStartDelayNanos`` / ``getLatestCheckpointId`` →
``alignment_duration_nanos`` / ``checkpoint_start_delay_nanos`` / ``latest_checkpoint_id``;
``triggerDebloating`` → ``trigger_debloating`` (passed to the wrapped gate, as buffer debloating
is: a wrapped gate that triggers itself keeps doing so through this one's reads).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from concurrent.futures import Future

from flinknet.checkpointing.api import (
    ChannelStateWriter,
    CheckpointableTask,
    CheckpointFailure,
    Clock,
    TaskThreadTimerService,
)
from flinknet.checkpointing.handlers import (
    CheckpointBarrierHandler,
    CheckpointBarrierTracker,
    SingleCheckpointBarrierHandler,
)
from flinknet.checkpointing.inputs import CheckpointableInput
from flinknet.consumer.channels import InputChannel, InputChannelInfo
from flinknet.consumer.gate import BufferOrEvent, InputGate, SingleInputGate, UnionInputGate
from flinknet.errors import IllegalStateError
from flinknet.events import (
    CancelCheckpointMarker,
    CheckpointBarrier,
    EndOfData,
    EndOfPartitionEvent,
    EventAnnouncement,
)
from flinknet.interfaces import WaitTimer

__all__ = ["CheckpointedInputGate", "CheckpointingMode", "create_checkpointed_input_gate"]


class CheckpointingMode(enum.StrEnum):
    """The handler :func:`create_checkpointed_input_gate` builds (Flink's
    ``InputProcessorUtil.createCheckpointBarrierHandler``); the plain strings work too."""

    #: exactly-once, unaligned checkpoints disabled
    ALIGNED = "aligned"
    #: exactly-once, unaligned checkpoints enabled (aligned-with-timeout barriers switch)
    UNALIGNED = "unaligned"
    #: at-least-once
    AT_LEAST_ONCE = "at-least-once"


def _member_gates(gate: InputGate) -> list[SingleInputGate]:
    if isinstance(gate, SingleInputGate):
        return [gate]
    if isinstance(gate, UnionInputGate):
        return list(gate.gates)
    raise TypeError("CheckpointedInputGate wraps a SingleInputGate or a UnionInputGate")


class CheckpointedInputGate(InputGate):
    """``CheckpointedInputGate(input_gate, barrier_handler)``: reads ``input_gate`` and feeds
    ``barrier_handler`` (see the module). Build both with :func:`create_checkpointed_input_gate`.
    Closing it closes the handler and the wrapped gate."""

    def __init__(self, input_gate: InputGate, barrier_handler: CheckpointBarrierHandler) -> None:
        _member_gates(input_gate)  # checks the type
        self.input_gate = input_gate
        self.barrier_handler = barrier_handler
        timers = getattr(barrier_handler, "timer_service", None)
        self._timers: TaskThreadTimerService | None = (
            timers if isinstance(timers, TaskThreadTimerService) else None)
        self._finished = False

    # -- reading -----------------------------------------------------------------------------------

    def poll_next(self) -> BufferOrEvent | None:
        """The next buffer or event if one is ready now (after handling it), else None."""
        self.fire_due_timers()
        boe = self.input_gate.poll_next()
        if boe is None:
            if self.input_gate.is_finished:
                self._finished = True
            return None
        return self._handle(boe)

    def get_next(self, timeout: float | None = None) -> BufferOrEvent | None:
        """The next buffer or event (after handling it), waiting up to ``timeout`` seconds
        (``TimeoutError``); None once the gate is finished. Alignment timers due meanwhile fire
        on this thread."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.fire_due_timers()
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            timer_wait = self._timers.next_due_in_seconds if self._timers is not None else None
            if timer_wait is not None and (wait is None or timer_wait < wait):
                try:
                    boe = self.input_gate.get_next(timer_wait)
                except TimeoutError:
                    continue  # a timer is due: fire it and wait again
            else:
                boe = self.input_gate.get_next(wait)
            if boe is None:
                self._finished = True
                return None
            return self._handle(boe)

    def process_priority_events(self) -> list[BufferOrEvent]:
        """Take and handle the priority events queued now (Flink's ``processPriorityEvents``,
        which the task runs as a mail as soon as the gate's priority future completes, before
        its normal input): an unaligned barrier is processed at once, ahead of the data queued
        before it. Returns what was taken, in order; an event's buffer is already recycled. If
        a channel announced a priority event that is not first in its queue (flinknet's remote
        channels still queue priority events behind data), the data item taken is returned last
        and the loop stops: the caller owns that buffer. Only a
        :class:`~flinknet.consumer.SingleInputGate` tells about priority events; for a union
        gate this returns an empty list (its reads hand priority gates out first anyway)."""
        gate = self.input_gate
        taken: list[BufferOrEvent] = []
        if not isinstance(gate, SingleInputGate):
            return taken
        more = gate.get_priority_event_available_future().done()
        while more:
            boe = self.poll_next()
            if boe is None:
                break
            taken.append(boe)
            if not boe.has_priority:
                break
            more = boe.more_priority_events
        return taken

    @property
    def next_timer_due_in(self) -> float | None:
        """Seconds until the handler's next timer (the alignment timeout) is due, 0 if one is
        due now, None without one: how long a wait for input may last (the asyncio readers
        bound their waits by it)."""
        timers = self._timers
        return timers.next_due_in_seconds if timers is not None else None

    def fire_due_timers(self) -> int:
        """Run the handler's due timers (the alignment timeout) on this thread; how many ran."""
        timers = self._timers
        return timers.fire_due_timers() if timers is not None else 0

    def _handle(self, boe: BufferOrEvent) -> BufferOrEvent:
        info = boe.channel_info
        handler = self.barrier_handler
        buffer = boe.buffer
        if buffer is not None:
            inp = handler.inputs.get(info.gate_idx)
            if inp is not None:
                inp.persisters[info.input_channel_idx].maybe_persist(buffer)
            handler.add_processed_bytes(buffer.size)
            return boe
        event = boe.event
        kind = type(event)
        if kind is CheckpointBarrier:
            assert isinstance(event, CheckpointBarrier)
            inp = handler.inputs.get(info.gate_idx)
            if inp is not None:
                inp.persisters[info.input_channel_idx].check_for_barrier(event)
            handler.process_barrier(event, info)
        elif kind is CancelCheckpointMarker:
            assert isinstance(event, CancelCheckpointMarker)
            handler.process_cancellation_barrier(event, info)
        elif kind is EndOfData:
            self.input_gate.acknowledge_all_records_processed(info)
        elif kind is EndOfPartitionEvent:
            handler.process_end_of_partition(info)
        elif kind is EventAnnouncement:
            assert isinstance(event, EventAnnouncement)
            announced = event.announced_event
            if not isinstance(announced, CheckpointBarrier):
                raise IllegalStateError("Only CheckpointBarrier announcement are currently supported, "
                                        f"but found [{announced!r}]")
            handler.process_barrier_announcement(announced, event.sequence_number, info)
        return boe

    # -- checkpoint state --------------------------------------------------------------------------

    def get_all_barriers_received_future(self, checkpoint_id: int) -> Future[CheckpointFailure | None]:
        """Done when every barrier of ``checkpoint_id`` arrived (None) or it was aborted (the
        :class:`~flinknet.checkpointing.CheckpointFailure`)."""
        return self.barrier_handler.get_all_barriers_received_future(checkpoint_id)

    @property
    def latest_checkpoint_id(self) -> int:
        """The pending or last completed checkpoint (-1: none yet)."""
        return self.barrier_handler.latest_checkpoint_id

    @property
    def alignment_duration_nanos(self) -> int:
        """``checkpointAlignmentTime``: the running alignment so far, else the latest one's."""
        return self.barrier_handler.alignment_duration_nanos

    @property
    def checkpoint_start_delay_nanos(self) -> int:
        """``checkpointStartDelayNanos`` of the latest checkpoint."""
        return self.barrier_handler.checkpoint_start_delay_nanos

    # -- InputGate ---------------------------------------------------------------------------------

    def request_partitions(self) -> None:
        self.input_gate.request_partitions()

    @property
    def partitions_requested(self) -> bool:
        return self.input_gate.partitions_requested

    def resume_consumption(self, channel_info: InputChannelInfo) -> None:
        self.input_gate.resume_consumption(channel_info)

    def acknowledge_all_records_processed(self, channel_info: InputChannelInfo) -> None:
        self.input_gate.acknowledge_all_records_processed(channel_info)

    def get_available_future(self) -> Future[None]:
        return self.input_gate.get_available_future()

    def set_idle_timer(self, timer: WaitTimer | None) -> None:
        self.input_gate.set_idle_timer(timer)

    def trigger_debloating(self) -> None:
        """Trigger buffer debloating on the wrapped gate (see
        :meth:`SingleInputGate.trigger_debloating <flinknet.consumer.SingleInputGate.trigger_debloating>`);
        a gate that triggers itself needs no call: reads go through it."""
        self.input_gate.trigger_debloating()

    def buffers_in_use_count(self) -> int:
        """The wrapped gate's buffers in use."""
        return self.input_gate.buffers_in_use_count()

    def announce_buffer_size(self, size: int) -> None:
        """Announce ``size`` through the wrapped gate."""
        self.input_gate.announce_buffer_size(size)

    @property
    def idle_timer(self) -> WaitTimer | None:
        return self.input_gate.idle_timer

    @property
    def is_available(self) -> bool:
        return self.input_gate.is_available

    @property
    def is_finished(self) -> bool:
        """The wrapped gate is finished and that was seen by a read."""
        return self._finished or self.input_gate.is_finished

    @property
    def has_received_end_of_data(self) -> bool:
        return self.input_gate.has_received_end_of_data

    @property
    def should_drain_on_end_of_data(self) -> bool:
        return self.input_gate.should_drain_on_end_of_data

    @property
    def number_of_input_channels(self) -> int:
        return self.input_gate.number_of_input_channels

    def get_channel(self, index: int) -> InputChannel:
        return self.input_gate.get_channel(index)

    @property
    def channel_infos(self) -> list[InputChannelInfo]:
        """Every channel, gate by gate."""
        return [ch.channel_info for g in _member_gates(self.input_gate) for ch in g.input_channels]

    def channel_index(self, boe: BufferOrEvent) -> int:
        """The flat channel index of ``boe`` (as the wrapped gate numbers it)."""
        gate = self.input_gate
        if isinstance(gate, UnionInputGate):
            return gate.channel_index(boe)
        return boe.channel_info.input_channel_idx

    def close(self) -> None:
        """Close the handler (timers) and the wrapped gate."""
        self.barrier_handler.close()
        self.input_gate.close()

    def __repr__(self) -> str:
        return f"CheckpointedInputGate({self.input_gate!r}, {self.barrier_handler!r})"


def create_checkpointed_input_gate(input_gate: InputGate, task: CheckpointableTask,
                                   mode: CheckpointingMode | str = CheckpointingMode.ALIGNED, *,
                                   channel_state_writer: ChannelStateWriter | None = None,
                                   task_name: str = "", clock: Clock | None = None,
                                   enable_checkpoint_after_tasks_finished: bool = True,
                                   ) -> CheckpointedInputGate:
    """The gate with the handler ``mode`` asks for (Flink's ``InputProcessorUtil``):
    :attr:`CheckpointingMode.ALIGNED` → :meth:`SingleCheckpointBarrierHandler.aligned`;
    :attr:`~CheckpointingMode.UNALIGNED` → :meth:`~SingleCheckpointBarrierHandler.alternating`
    (needs ``channel_state_writer``; barriers decide: aligned, aligned with timeout, or
    unaligned); :attr:`~CheckpointingMode.AT_LEAST_ONCE` → :class:`CheckpointBarrierTracker`."""
    gates: Sequence[SingleInputGate] = _member_gates(input_gate)
    try:
        mode = CheckpointingMode(mode)
    except ValueError:
        names = [m.value for m in CheckpointingMode]
        raise ValueError(f"mode must be one of {names}, got {mode!r}") from None
    handler: CheckpointBarrierHandler
    if mode == CheckpointingMode.AT_LEAST_ONCE:
        handler = CheckpointBarrierTracker(input_gate.number_of_input_channels, task, clock,
                                           enable_checkpoint_after_tasks_finished)
    elif mode == CheckpointingMode.ALIGNED:
        handler = SingleCheckpointBarrierHandler.aligned(
            task, [CheckpointableInput(g) for g in gates], task_name=task_name, clock=clock,
            enable_checkpoint_after_tasks_finished=enable_checkpoint_after_tasks_finished)
    else:
        if channel_state_writer is None:
            raise ValueError("unaligned checkpoints need a channel_state_writer")
        handler = SingleCheckpointBarrierHandler.alternating(
            task, [CheckpointableInput(g, channel_state_writer) for g in gates], channel_state_writer,
            task_name=task_name, clock=clock,
            enable_checkpoint_after_tasks_finished=enable_checkpoint_after_tasks_finished)
    return CheckpointedInputGate(input_gate, handler)
