"""The input side of a checkpoint as the barrier handlers see it (Flink's
``CheckpointableInput`` and ``ChannelStatePersister``).

:class:`CheckpointableInput` wraps one :class:`~flinknet.consumer.SingleInputGate` (a
:class:`~flinknet.consumer.UnionInputGate` gives one per member gate, indexed by gate index):
blocking and resuming channels, converting announced barriers to priority events, and starting
and stopping the capture of in-flight data for unaligned checkpoints.

**Blocking.** As in Flink, ``block_consumption`` does nothing: the producer's subpartition
stopped itself when it handed out the upstream-blocking (aligned or timeoutable) barrier, locally
(``PipelinedSubpartition``) or on the server (the engine's queue stops until
``ResumeConsumption``). The handler remembers the channel and calls ``resume_consumption`` once
the alignment ended or was given up.

**Capture.** A :class:`ChannelStatePersister` per channel sees every buffer and barrier as the
task takes it from the gate (the :class:`~flinknet.checkpointing.CheckpointedInputGate` feeds
it): once an unaligned checkpoint started, each data buffer of a channel whose barrier has not
arrived yet is retained and handed to the :class:`~flinknet.checkpointing.ChannelStateWriter`
(and still delivered to the task), until that channel's barrier is taken. This is what Flink's
``LocalInputChannel`` does. A remote channel puts a priority barrier at the head of its queue, as
Flink's ``RemoteInputChannel`` does, ahead of data it received before the barrier; so for it the
capture goes by sequence number (Flink's ``checkpointStarted`` / ``getInflightBuffersUnsafe``):
when the checkpoint starts, the data it holds that belongs to the checkpoint (all of it if its
barrier has not arrived, else what the barrier overtook); then what the task takes from it that
was not captured yet; and when the task takes its barrier, what that barrier overtook and was not
captured yet. Every in-flight buffer is captured once, in channel order.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from flinknet._core.buffer import Buffer
from flinknet.checkpointing.api import SEQUENCE_NUMBER_UNKNOWN, ChannelStateWriter
from flinknet.consumer.channels import InputChannelInfo
from flinknet.consumer.gate import SingleInputGate
from flinknet.consumer.remote import RemoteInputChannel
from flinknet.events import CheckpointBarrier

__all__ = ["ChannelStatePersister", "CheckpointableInput"]


class _Status(enum.Enum):
    COMPLETED = 0
    BARRIER_PENDING = 1
    BARRIER_RECEIVED = 2


class ChannelStatePersister:
    """Captures one channel's in-flight data for unaligned checkpoints (Flink's
    ``ChannelStatePersister``): pending from :meth:`start_persisting` until the channel's
    barrier is seen (:meth:`check_for_barrier`) or :meth:`stop_persisting`."""

    def __init__(self, channel_info: InputChannelInfo, writer: ChannelStateWriter | None,
                 on_persisted: Callable[[int, int], None] | None = None,
                 channel: object | None = None) -> None:
        self.channel_info = channel_info
        self.writer = writer
        #: the remote channel whose overtaken data is captured by sequence number (else None)
        self.remote: RemoteInputChannel | None = channel if isinstance(channel, RemoteInputChannel) else None
        #: called as ``on_persisted(checkpoint_id, nbytes)`` for every buffer captured (metrics).
        self.on_persisted = on_persisted
        self._status = _Status.COMPLETED
        self._last_seen_barrier = -1

    @property
    def is_persisting(self) -> bool:
        """Data buffers taken now are captured."""
        return self._status is _Status.BARRIER_PENDING

    @property
    def last_seen_barrier(self) -> int:
        """The newest checkpoint id this channel started or saw a barrier of (-1: none)."""
        return self._last_seen_barrier

    def start_persisting(self, barrier_id: int) -> None:
        """Checkpoint ``barrier_id`` started unaligned: capture until this channel's barrier."""
        if self._status is _Status.BARRIER_RECEIVED and self._last_seen_barrier > barrier_id:
            return  # a newer barrier was already taken here: nothing of this channel is in flight
        if self._last_seen_barrier < barrier_id:
            self._status = _Status.BARRIER_PENDING
            self._last_seen_barrier = barrier_id
        if self.remote is not None and self.writer is not None:
            # what the remote channel holds for this checkpoint (all of its queue, or what the
            # barrier already received there overtook)
            self._write(barrier_id, self.remote.checkpoint_started(barrier_id))

    def _write(self, checkpoint_id: int, buffers: list[Buffer]) -> None:
        if not buffers:
            return
        assert self.writer is not None
        sizes = [b.readable_bytes for b in buffers]
        self.writer.add_input_data(checkpoint_id, self.channel_info, SEQUENCE_NUMBER_UNKNOWN, buffers)
        if self.on_persisted is not None:
            for size in sizes:
                self.on_persisted(checkpoint_id, size)

    def stop_persisting(self, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` ended (all barriers in, or aborted)."""
        if checkpoint_id >= self._last_seen_barrier:
            self._status = _Status.COMPLETED
            self._last_seen_barrier = checkpoint_id
        if self.remote is not None:
            self.remote.checkpoint_stopped(checkpoint_id)

    def maybe_persist(self, buffer: Buffer) -> int:
        """Capture ``buffer`` (a data buffer the task just took) if a checkpoint waits for this
        channel's barrier: the writer gets one more reference. Returns the bytes captured."""
        if self._status is not _Status.BARRIER_PENDING or self.writer is None:
            return 0
        remote = self.remote
        if remote is not None and remote.already_captured(remote.last_polled_sequence_number):
            return 0
        size = buffer.size
        self.writer.add_input_data(self._last_seen_barrier, self.channel_info, SEQUENCE_NUMBER_UNKNOWN,
                                   [buffer.retain()])
        if self.on_persisted is not None:
            self.on_persisted(self._last_seen_barrier, size)
        return size

    def check_for_barrier(self, barrier: CheckpointBarrier) -> int | None:
        """The task took ``barrier`` from this channel: stop capturing for it. Returns its id,
        or None for a barrier older than the one expected (ignored)."""
        last = self._last_seen_barrier
        expected = last + 1 if self._status is _Status.COMPLETED else last
        if barrier.id >= expected:
            pending = self._status is _Status.BARRIER_PENDING and last == barrier.id
            self._status = _Status.BARRIER_RECEIVED
            self._last_seen_barrier = barrier.id
            if pending and self.remote is not None and self.writer is not None:
                # taken from the head of the queue: the data it overtook there is in flight
                self._write(barrier.id, self.remote.capture_overtaken(barrier.id))
            return barrier.id
        return None

    def __repr__(self) -> str:
        return (f"ChannelStatePersister({tuple(self.channel_info)}, {self._status.name}, "
                f"{self._last_seen_barrier})")


class CheckpointableInput:
    """One gate as the barrier handler drives it (Flink's ``CheckpointableInput``):
    ``CheckpointableInput(gate, channel_state_writer=None)``."""

    def __init__(self, gate: SingleInputGate, channel_state_writer: ChannelStateWriter | None = None,
                 on_persisted: Callable[[int, int], None] | None = None) -> None:
        if not isinstance(gate, SingleInputGate):
            raise TypeError("CheckpointableInput wraps a SingleInputGate")
        self.gate = gate
        self.gate_index = gate.gate_index
        self.channel_state_writer = channel_state_writer
        self.persisters: list[ChannelStatePersister] = [
            ChannelStatePersister(InputChannelInfo(gate.gate_index, i), channel_state_writer, on_persisted,
                                  gate.get_channel(i))
            for i in range(gate.number_of_input_channels)]

    @property
    def channel_infos(self) -> list[InputChannelInfo]:
        """Every channel of the gate."""
        return [p.channel_info for p in self.persisters]

    def set_on_persisted(self, callback: Callable[[int, int], None] | None) -> None:
        """Call ``callback(checkpoint_id, nbytes)`` for every buffer captured (metrics)."""
        for p in self.persisters:
            p.on_persisted = callback

    def block_consumption(self, channel_info: InputChannelInfo) -> None:
        """Nothing to do: the producer stopped the subpartition after the upstream-blocking
        barrier (Flink's ``blockConsumption`` is a no-op for the same reason)."""

    def resume_consumption(self, channel_info: InputChannelInfo) -> None:
        """Resume a channel that delivered an aligned barrier (``ResumeConsumption``)."""
        channel = self.gate.get_channel(channel_info.input_channel_idx)
        if channel.is_released:
            return  # finished or closed meanwhile: nothing to resume
        self.gate.resume_consumption(channel_info)

    def convert_to_priority_event(self, channel_index: int, sequence_number: int) -> None:
        """Move the announced barrier at ``sequence_number`` ahead of the channel's queued data
        (Flink's ``convertToPriorityEvent``). A no-op for channels that cannot (local channels:
        their producer converts a timed-out barrier itself)."""
        channel = self.gate.get_channel(channel_index)
        convert: Callable[[int], None] | None = getattr(channel, "convert_to_priority_event", None)
        if convert is not None:
            convert(sequence_number)

    def checkpoint_started(self, barrier: CheckpointBarrier) -> None:
        """An unaligned checkpoint started: every channel whose barrier is still in flight
        captures what the task takes from it until that barrier."""
        for p in self.persisters:
            p.start_persisting(barrier.id)

    def checkpoint_stopped(self, checkpoint_id: int) -> None:
        """The unaligned checkpoint ended (every barrier arrived, or it was aborted)."""
        for p in self.persisters:
            p.stop_persisting(checkpoint_id)

    def persister(self, channel_index: int) -> ChannelStatePersister:
        """The persister of channel ``channel_index``."""
        return self.persisters[channel_index]

    def __repr__(self) -> str:
        return f"CheckpointableInput({self.gate!r})"
