"""The state machine of :class:`~flinknet.checkpointing.SingleCheckpointBarrierHandler`
(Flink's ``BarrierHandlerState`` and its implementations), one checkpoint at a time.

Four base states: waiting for the first aligned barrier, collecting aligned barriers, waiting
for the first unaligned barrier, collecting unaligned barriers; the "alternating" ones start
aligned and switch to unaligned when the alignment times out (or an unaligned barrier arrives).
Each transition returns the next state. The handler is the states' ``controller``
(:class:`BarrierHandlerController`).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from flinknet.checkpointing.inputs import CheckpointableInput
from flinknet.consumer.channels import InputChannelInfo
from flinknet.errors import IllegalStateError
from flinknet.events import NO_ALIGNED_CHECKPOINT_TIME_OUT, AlignmentType, CheckpointBarrier

__all__ = [
    "AlternatingCollectingBarriers",
    "AlternatingCollectingBarriersUnaligned",
    "AlternatingWaitingForFirstBarrier",
    "AlternatingWaitingForFirstBarrierUnaligned",
    "BarrierHandlerController",
    "BarrierHandlerState",
    "ChannelState",
    "CollectingBarriers",
    "WaitingForFirstBarrier",
    "as_unaligned",
    "blocks_upstream",
]


def as_unaligned(barrier: CheckpointBarrier) -> CheckpointBarrier:
    """The barrier as an unaligned checkpoint (Flink's ``CheckpointBarrier.asUnaligned``:
    aligned → unaligned with no timeout; already unaligned or savepoints unchanged)."""
    options = barrier.options
    if options.is_unaligned or options.checkpoint_type.is_savepoint:
        return barrier
    if options.alignment == AlignmentType.FORCED_ALIGNED:
        return barrier
    unaligned = dataclasses.replace(options, alignment=AlignmentType.UNALIGNED,
                                    aligned_checkpoint_timeout=NO_ALIGNED_CHECKPOINT_TIME_OUT)
    return dataclasses.replace(barrier, options=unaligned)


def blocks_upstream(barrier: CheckpointBarrier) -> bool:
    """The barrier's buffer blocks its subpartition until ``ResumeConsumption`` (an aligned or
    timeoutable barrier: ``ALIGNED_CHECKPOINT_BARRIER`` / ``TIMEOUTABLE_…``)."""
    return barrier.options.needs_alignment


class BarrierHandlerController(Protocol):
    """What a state may ask of its handler (Flink's ``BarrierHandlerState.Controller``)."""

    @property
    def all_barriers_received(self) -> bool:
        """Every open channel delivered the current checkpoint's barrier (or finished)."""
        ...

    @property
    def pending_checkpoint_barrier(self) -> CheckpointBarrier | None:
        """The first barrier (or announced barrier) of the pending checkpoint."""
        ...

    def trigger_global_checkpoint(self, barrier: CheckpointBarrier) -> None:
        """Trigger the checkpoint at the task."""
        ...

    def init_inputs_checkpoint(self, barrier: CheckpointBarrier) -> None:
        """Start the channel-state write of the checkpoint (unaligned / timeoutable)."""
        ...

    def is_timed_out(self, barrier: CheckpointBarrier) -> bool:
        """The barrier's alignment timeout has passed since its creation."""
        ...


class ChannelState:
    """The channels blocked by an aligned barrier and the barriers announced but not yet
    received, over the handler's inputs (Flink's ``ChannelState``)."""

    def __init__(self, inputs: dict[int, CheckpointableInput]) -> None:
        self.inputs = inputs
        self.blocked: set[InputChannelInfo] = set()
        self.announced: dict[InputChannelInfo, int] = {}

    def block_channel(self, channel_info: InputChannelInfo) -> None:
        """Remember a channel stopped by its aligned barrier."""
        self.inputs[channel_info.gate_idx].block_consumption(channel_info)
        self.blocked.add(channel_info)

    def channel_finished(self, channel_info: InputChannelInfo) -> None:
        """The channel delivered EndOfPartition."""
        self.blocked.discard(channel_info)
        self.announced.pop(channel_info, None)

    def prioritize_all_announcements(self) -> None:
        """Every barrier announced but not yet received jumps ahead of its channel's data."""
        for info, seq in sorted(self.announced.items()):
            self.inputs[info.gate_idx].convert_to_priority_event(info.input_channel_idx, seq)
        self.announced.clear()

    def unblock_all_channels(self) -> None:
        """Resume every blocked channel (in channel order)."""
        blocked = sorted(self.blocked)
        self.blocked.clear()
        for info in blocked:
            self.inputs[info.gate_idx].resume_consumption(info)

    def add_seen_announcement(self, channel_info: InputChannelInfo, sequence_number: int) -> None:
        """An announcement of the pending barrier arrived on ``channel_info``."""
        self.announced[channel_info] = sequence_number

    def remove_seen_announcement(self, channel_info: InputChannelInfo) -> None:
        """The announced barrier itself arrived."""
        self.announced.pop(channel_info, None)

    def empty_state(self) -> ChannelState:
        """This state with no announcements (no channel may be blocked)."""
        if self.blocked:
            raise IllegalStateError(f"We should not reset to an empty state if there are blocked channels: "
                                    f"{sorted(self.blocked)}")
        self.announced.clear()
        return self

    def checkpoint_started(self, barrier: CheckpointBarrier) -> None:
        """Every input starts capturing in-flight data for the (unaligned) checkpoint."""
        for inp in self.inputs.values():
            inp.checkpoint_started(barrier)

    def checkpoint_stopped(self, checkpoint_id: int) -> None:
        """Every input stops capturing for the checkpoint."""
        for inp in self.inputs.values():
            inp.checkpoint_stopped(checkpoint_id)


class BarrierHandlerState:
    """One state of the handler's state machine (Flink's ``BarrierHandlerState``)."""

    def alignment_timeout(self, controller: BarrierHandlerController,
                          barrier: CheckpointBarrier) -> BarrierHandlerState:
        """The alignment of ``barrier``'s checkpoint timed out."""
        raise NotImplementedError

    def announcement_received(self, controller: BarrierHandlerController, channel_info: InputChannelInfo,
                              sequence_number: int) -> BarrierHandlerState:
        """A barrier was announced at ``sequence_number`` on ``channel_info``."""
        raise NotImplementedError

    def barrier_received(self, controller: BarrierHandlerController, channel_info: InputChannelInfo,
                         barrier: CheckpointBarrier, mark_channel_blocked: bool) -> BarrierHandlerState:
        """The current checkpoint's barrier arrived on ``channel_info``."""
        raise NotImplementedError

    def abort(self, cancelled_id: int) -> BarrierHandlerState:
        """The current checkpoint is given up."""
        raise NotImplementedError

    def end_of_partition_received(self, controller: BarrierHandlerController,
                                  channel_info: InputChannelInfo) -> BarrierHandlerState:
        """``channel_info`` finished while a checkpoint is pending."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return type(self).__name__


# -- aligned -------------------------------------------------------------------------------------

class _AbstractAligned(BarrierHandlerState):
    def __init__(self, state: ChannelState) -> None:
        self.state = state

    def alignment_timeout(self, controller: BarrierHandlerController,
                          barrier: CheckpointBarrier) -> BarrierHandlerState:
        raise IllegalStateError("Alignment should not be timed out if we are not alternating.")

    def announcement_received(self, controller: BarrierHandlerController, channel_info: InputChannelInfo,
                              sequence_number: int) -> BarrierHandlerState:
        return self

    def barrier_received(self, controller: BarrierHandlerController, channel_info: InputChannelInfo,
                         barrier: CheckpointBarrier, mark_channel_blocked: bool) -> BarrierHandlerState:
        if barrier.options.is_unaligned:
            raise IllegalStateError(f"an aligned barrier handler received an unaligned barrier {barrier}")
        if mark_channel_blocked and blocks_upstream(barrier):
            self.state.block_channel(channel_info)
        if controller.all_barriers_received:
            return self._trigger_global_checkpoint(controller, barrier)
        return self._after_barrier_received()

    def _trigger_global_checkpoint(self, controller: BarrierHandlerController,
                                   barrier: CheckpointBarrier) -> BarrierHandlerState:
        controller.trigger_global_checkpoint(barrier)
        self.state.unblock_all_channels()
        return WaitingForFirstBarrier(self.state)

    def _after_barrier_received(self) -> BarrierHandlerState:
        raise NotImplementedError

    def abort(self, cancelled_id: int) -> BarrierHandlerState:
        self.state.unblock_all_channels()
        return WaitingForFirstBarrier(self.state)


class WaitingForFirstBarrier(_AbstractAligned):
    """Aligned checkpoints; no barrier seen yet."""

    def _after_barrier_received(self) -> BarrierHandlerState:
        return CollectingBarriers(self.state)

    def end_of_partition_received(self, controller: BarrierHandlerController,
                                  channel_info: InputChannelInfo) -> BarrierHandlerState:
        self.state.channel_finished(channel_info)
        return self


class CollectingBarriers(_AbstractAligned):
    """Aligned checkpoints; at least one barrier seen, the channels that delivered it blocked."""

    def _after_barrier_received(self) -> BarrierHandlerState:
        return self

    def end_of_partition_received(self, controller: BarrierHandlerController,
                                  channel_info: InputChannelInfo) -> BarrierHandlerState:
        self.state.channel_finished(channel_info)
        if controller.all_barriers_received:
            pending = controller.pending_checkpoint_barrier
            if pending is None:
                raise IllegalStateError("At least one barrier received in collecting barrier state.")
            return self._trigger_global_checkpoint(controller, pending)
        return self


# -- aligned with timeout ------------------------------------------------------------------------

class _AbstractAlternatingAligned(BarrierHandlerState):
    def __init__(self, state: ChannelState) -> None:
        self.state = state

    def announcement_received(self, controller: BarrierHandlerController, channel_info: InputChannelInfo,
                              sequence_number: int) -> BarrierHandlerState:
        self.state.add_seen_announcement(channel_info, sequence_number)
        return self

    def barrier_received(self, controller: BarrierHandlerController, channel_info: InputChannelInfo,
                         barrier: CheckpointBarrier, mark_channel_blocked: bool) -> BarrierHandlerState:
        if barrier.options.is_unaligned:
            return self.alignment_timeout(controller, barrier).barrier_received(
                controller, channel_info, barrier, mark_channel_blocked)
        self.state.remove_seen_announcement(channel_info)
        if mark_channel_blocked and blocks_upstream(barrier):
            self.state.block_channel(channel_info)
        if controller.all_barriers_received:
            controller.init_inputs_checkpoint(barrier)
            controller.trigger_global_checkpoint(barrier)
            return self.finish_checkpoint()
        if controller.is_timed_out(barrier):
            return self.alignment_timeout(controller, barrier).barrier_received(
                controller, channel_info, as_unaligned(barrier), mark_channel_blocked)
        return self._after_barrier_received()

    def _after_barrier_received(self) -> BarrierHandlerState:
        raise NotImplementedError

    def abort(self, cancelled_id: int) -> BarrierHandlerState:
        return self.finish_checkpoint()

    def finish_checkpoint(self) -> BarrierHandlerState:
        """Resume the blocked channels; wait for the next checkpoint."""
        self.state.unblock_all_channels()
        return AlternatingWaitingForFirstBarrier(self.state.empty_state())


class AlternatingWaitingForFirstBarrier(_AbstractAlternatingAligned):
    """Aligned checkpoints with a timeout; no barrier seen yet."""

    def alignment_timeout(self, controller: BarrierHandlerController,
                          barrier: CheckpointBarrier) -> BarrierHandlerState:
        self.state.prioritize_all_announcements()
        return AlternatingWaitingForFirstBarrierUnaligned(True, self.state)

    def _after_barrier_received(self) -> BarrierHandlerState:
        return AlternatingCollectingBarriers(self.state)

    def end_of_partition_received(self, controller: BarrierHandlerController,
                                  channel_info: InputChannelInfo) -> BarrierHandlerState:
        self.state.channel_finished(channel_info)
        return self


class AlternatingCollectingBarriers(_AbstractAlternatingAligned):
    """Aligned checkpoints with a timeout; at least one aligned barrier seen."""

    def alignment_timeout(self, controller: BarrierHandlerController,
                          barrier: CheckpointBarrier) -> BarrierHandlerState:
        self.state.prioritize_all_announcements()
        unaligned = as_unaligned(barrier)
        controller.init_inputs_checkpoint(unaligned)
        self.state.checkpoint_started(unaligned)
        controller.trigger_global_checkpoint(unaligned)
        return AlternatingCollectingBarriersUnaligned(True, self.state)

    def _after_barrier_received(self) -> BarrierHandlerState:
        return self

    def end_of_partition_received(self, controller: BarrierHandlerController,
                                  channel_info: InputChannelInfo) -> BarrierHandlerState:
        self.state.channel_finished(channel_info)
        pending = controller.pending_checkpoint_barrier
        if pending is None:
            raise IllegalStateError("At least one barrier received in collecting barrier state.")
        if pending.options.is_unaligned:
            raise IllegalStateError("Pending checkpoint barrier should be aligned in collecting aligned "
                                    "barrier state")
        if controller.all_barriers_received:
            controller.init_inputs_checkpoint(pending)
            controller.trigger_global_checkpoint(pending)
            return self.finish_checkpoint()
        if controller.is_timed_out(pending):
            return self.alignment_timeout(controller, pending).end_of_partition_received(
                controller, channel_info)
        return self


# -- unaligned -----------------------------------------------------------------------------------

class _AbstractUnaligned(BarrierHandlerState):
    def __init__(self, alternating: bool, state: ChannelState) -> None:
        self.alternating = alternating
        self.state = state

    def alignment_timeout(self, controller: BarrierHandlerController,
                          barrier: CheckpointBarrier) -> BarrierHandlerState:
        return self  # already unaligned

    def announcement_received(self, controller: BarrierHandlerController, channel_info: InputChannelInfo,
                              sequence_number: int) -> BarrierHandlerState:
        self.state.inputs[channel_info.gate_idx].convert_to_priority_event(
            channel_info.input_channel_idx, sequence_number)
        return self

    def _book_keep_blocked(self, channel_info: InputChannelInfo, barrier: CheckpointBarrier,
                           mark_channel_blocked: bool) -> None:
        # An out-of-order aligned barrier: the network blocked its channel; resume it at the end.
        if mark_channel_blocked and blocks_upstream(barrier):
            self.state.block_channel(channel_info)

    def _stop(self, checkpoint_id: int | None) -> BarrierHandlerState:
        if checkpoint_id is not None:
            self.state.checkpoint_stopped(checkpoint_id)
        self.state.unblock_all_channels()
        if self.alternating:
            return AlternatingWaitingForFirstBarrier(self.state.empty_state())
        return AlternatingWaitingForFirstBarrierUnaligned(False, self.state.empty_state())


class AlternatingWaitingForFirstBarrierUnaligned(_AbstractUnaligned):
    """Unaligned checkpoints (or a timed-out alignment before any barrier): no barrier seen."""

    def barrier_received(self, controller: BarrierHandlerController, channel_info: InputChannelInfo,
                         barrier: CheckpointBarrier, mark_channel_blocked: bool) -> BarrierHandlerState:
        self._book_keep_blocked(channel_info, barrier, mark_channel_blocked)
        unaligned = as_unaligned(barrier)
        controller.init_inputs_checkpoint(unaligned)
        self.state.checkpoint_started(unaligned)
        controller.trigger_global_checkpoint(unaligned)
        if controller.all_barriers_received:
            return self._stop(unaligned.id)
        return AlternatingCollectingBarriersUnaligned(self.alternating, self.state)

    def abort(self, cancelled_id: int) -> BarrierHandlerState:
        return self._stop(None)

    def end_of_partition_received(self, controller: BarrierHandlerController,
                                  channel_info: InputChannelInfo) -> BarrierHandlerState:
        self.state.channel_finished(channel_info)
        return self


class AlternatingCollectingBarriersUnaligned(_AbstractUnaligned):
    """Unaligned checkpoint triggered; waiting for the remaining barriers while the channels
    still owing theirs are captured."""

    def barrier_received(self, controller: BarrierHandlerController, channel_info: InputChannelInfo,
                         barrier: CheckpointBarrier, mark_channel_blocked: bool) -> BarrierHandlerState:
        self._book_keep_blocked(channel_info, barrier, mark_channel_blocked)
        if controller.all_barriers_received:
            return self._stop(barrier.id)
        return self

    def abort(self, cancelled_id: int) -> BarrierHandlerState:
        return self._stop(cancelled_id)

    def end_of_partition_received(self, controller: BarrierHandlerController,
                                  channel_info: InputChannelInfo) -> BarrierHandlerState:
        self.state.channel_finished(channel_info)
        if controller.all_barriers_received:
            pending = controller.pending_checkpoint_barrier
            if pending is None:
                raise IllegalStateError(
                    "At least one barrier received in unaligned collecting barrier state.")
            return self._stop(pending.id)
        return self
