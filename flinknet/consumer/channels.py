"""Input channels: one per producer subpartition a gate reads (Flink's ``InputChannel`` and
``LocalInputChannel``).

:class:`LocalInputChannel` reads a subpartition of a partition in the same process straight from
its view: no copy, no credit; the producer's buffers go back to the producer's pool when the
consumer recycles them. Remote channels (over TCP) are the transport's.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, NamedTuple

from flinknet.errors import CancelTaskError, FlinknetError, PartitionNotFoundError, ProducerFailedError
from flinknet.ids import ResultPartitionID
from flinknet.interfaces import BufferAndBacklog, ResultSubpartitionView

if TYPE_CHECKING:
    from flinknet.consumer.gate import SingleInputGate
    from flinknet.partition.manager import ResultPartitionManager

__all__ = [
    "DEFAULT_INITIAL_BACKOFF",
    "DEFAULT_MAX_BACKOFF",
    "InputChannel",
    "InputChannelInfo",
    "LocalInputChannel",
]

#: Flink's ``taskmanager.network.request-backoff.initial`` / ``.max`` defaults (milliseconds).
DEFAULT_INITIAL_BACKOFF = 100
DEFAULT_MAX_BACKOFF = 10_000


class InputChannelInfo(NamedTuple):
    """Identifies a channel within a task: the gate's index and the channel's index in it."""

    gate_idx: int
    input_channel_idx: int


class InputChannel:
    """Base of the channels a :class:`~flinknet.consumer.SingleInputGate` reads.

    ``initial_backoff`` / ``max_backoff`` (milliseconds) drive partition-request retries: the
    waits are initial, doubled each time up to max, and a request that fails after a wait equal
    to max fails the channel (defaults 100 ms → 10 s: 100, 200, … 6400, 10000, then
    :class:`~flinknet.errors.PartitionNotFoundError`). ``initial_backoff=0`` disables retries.
    """

    #: whether buffers arrive over the network (numBytesInRemote) or from this process (…Local).
    is_remote = False

    def __init__(self, input_gate: SingleInputGate, channel_index: int, partition_id: ResultPartitionID,
                 subpartition_index: int = 0, initial_backoff: int = DEFAULT_INITIAL_BACKOFF,
                 max_backoff: int = DEFAULT_MAX_BACKOFF):
        if not isinstance(partition_id, ResultPartitionID):
            raise TypeError("partition_id must be a ResultPartitionID")
        if channel_index < 0:
            raise ValueError(f"channel_index must be >= 0, got {channel_index}")
        if subpartition_index < 0:
            raise ValueError(f"subpartition_index must be >= 0, got {subpartition_index}")
        if initial_backoff < 0 or max_backoff < 0 or max_backoff < initial_backoff:
            raise ValueError("backoffs must satisfy 0 <= initial_backoff <= max_backoff")
        self.input_gate = input_gate
        self.channel_index = channel_index
        self.channel_info = InputChannelInfo(input_gate.gate_index, channel_index)
        self.partition_id = partition_id
        self.consumed_subpartition_index = subpartition_index
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.current_backoff = 0
        self._cause: BaseException | None = None
        self._cause_lock = threading.Lock()
        self.num_bytes_in = 0
        self.num_buffers_in = 0

    # -- backoff ---------------------------------------------------------------------------

    def increase_backoff(self) -> bool:
        """Advance the backoff; False when retries are disabled or exhausted (Flink's logic)."""
        if self.initial_backoff == 0:
            return False
        if self.current_backoff == 0:
            self.current_backoff = self.initial_backoff
            return True
        if self.current_backoff < self.max_backoff:
            self.current_backoff = min(self.current_backoff * 2, self.max_backoff)
            return True
        return False

    # -- errors ----------------------------------------------------------------------------

    def set_error(self, cause: BaseException) -> None:
        """Fail the channel; the gate's reader sees ``cause`` on its next poll of it."""
        with self._cause_lock:
            if self._cause is not None:
                return
            self._cause = cause
        self.notify_channel_non_empty()

    def check_error(self) -> None:
        """Raise the channel's failure, if it failed (a FlinknetError, or one wrapping it)."""
        cause = self._cause
        if cause is not None:
            if isinstance(cause, FlinknetError):
                raise cause
            raise FlinknetError(f"channel {self.channel_info} failed: {cause!r}") from cause

    @property
    def failure_cause(self) -> BaseException | None:
        """Why the channel failed, if it did."""
        return self._cause

    def notify_channel_non_empty(self) -> None:
        """Tell the gate that this channel has something to read (any thread)."""
        self.input_gate.notify_channel_non_empty(self)

    def notify_priority_event(self, sequence_number: int) -> None:
        """Tell the gate that a priority event is first in line (any thread)."""
        self.input_gate.notify_priority_event(self, sequence_number)

    # -- subclass API ----------------------------------------------------------------------

    def request_subpartitions(self) -> None:
        """Ask the producer for the subpartition (once; failures are stored on the channel)."""
        raise NotImplementedError

    def retrigger_subpartition_request(self) -> None:
        """Request the subpartition again after a backoff (the gate's timer calls this)."""
        raise NotImplementedError

    def get_next_buffer(self) -> BufferAndBacklog | None:
        """The next buffer with its metadata (the caller owns one reference), or None."""
        raise NotImplementedError

    def resume_consumption(self) -> None:
        """Unblock after an upstream-blocking event (an aligned barrier) was consumed."""
        raise NotImplementedError

    def acknowledge_all_records_processed(self) -> None:
        """Tell the producer that every user record was processed."""
        raise NotImplementedError

    def release_all_resources(self) -> None:
        """Release the channel (idempotent); its buffers go back."""
        raise NotImplementedError

    @property
    def buffers_in_use_count(self) -> int:
        """Buffers this channel holds or has queued (Flink's ``getBuffersInUseCount``), for
        buffer debloating."""
        raise NotImplementedError

    def announce_buffer_size(self, size: int) -> None:
        """Ask the producer to fill new buffers up to ``size`` bytes (buffer debloating; Flink's
        ``announceBufferSize``)."""
        raise NotImplementedError

    @property
    def is_released(self) -> bool:
        """The channel was released."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__} #{self.channel_index} [{self.partition_id}, "
                f"subpartition {self.consumed_subpartition_index}]")


class LocalInputChannel(InputChannel):
    """Reads a subpartition of a partition in the same process (Flink's ``LocalInputChannel``).

    ``LocalInputChannel(gate, channel_index, partition_id, subpartition_index, partition_manager)``.
    Requesting the subpartition before the producer registered the partition retries with
    backoff on the gate's timer.
    """

    def __init__(self, input_gate: SingleInputGate, channel_index: int, partition_id: ResultPartitionID,
                 subpartition_index: int, partition_manager: ResultPartitionManager,
                 initial_backoff: int = DEFAULT_INITIAL_BACKOFF, max_backoff: int = DEFAULT_MAX_BACKOFF):
        super().__init__(input_gate, channel_index, partition_id, subpartition_index,
                         initial_backoff, max_backoff)
        self.partition_manager = partition_manager
        self._view: ResultSubpartitionView | None = None
        self._lock = threading.Lock()
        self._released = False

    # -- metrics ---------------------------------------------------------------------------

    @property
    def number_of_queued_buffers(self) -> int:
        """Buffers queued in the producer's subpartition (Flink: local channels report the
        producer side's queue for ``inputQueueLength``)."""
        view = self._view
        return view.number_of_queued_buffers if view is not None else 0

    @property
    def size_of_queued_buffers(self) -> int:
        """Local channels report 0 bytes, as Flink."""
        return 0

    # -- BufferAvailabilityListener --------------------------------------------------------
    def notify_data_available(self, view: ResultSubpartitionView) -> None:
        """The view has something to read (producer thread): queue this channel at the gate."""
        self.notify_channel_non_empty()

    # notify_priority_event(seq) is inherited: forwards to the gate.

    # -- requests --------------------------------------------------------------------------

    def request_subpartitions(self) -> None:
        """Ask the partition manager for the view; retry with backoff while it is not there."""
        retrigger = False
        with self._lock:
            if self._released or self._view is not None:
                return
            try:
                self._view = self.partition_manager.create_subpartition_view(
                    self.partition_id, self.consumed_subpartition_index, self)
            except PartitionNotFoundError as err:
                if self.increase_backoff():
                    retrigger = True
                else:
                    self._fail(err)
                    return
            except BaseException as err:  # noqa: BLE001 (the channel fails, not the caller)
                self._fail(err)
                return
        if retrigger:
            self.input_gate.retrigger_partition_request(self, self.current_backoff)
        elif self._released:
            self._release_view()

    def _fail(self, err: BaseException) -> None:
        # Under self._lock; set_error notifies the gate, which takes only the gate's lock.
        with self._cause_lock:
            if self._cause is None:
                self._cause = err
        self.input_gate.notify_channel_non_empty(self)

    def retrigger_subpartition_request(self) -> None:
        """Request the view again (after a backoff)."""
        self.request_subpartitions()

    # -- reading ---------------------------------------------------------------------------

    def get_next_buffer(self) -> BufferAndBacklog | None:
        self.check_error()
        view = self._view
        if view is None:
            if self._released:
                return None
            return None  # not yet requested / retrying: the gate is notified when it arrives
        next_ = view.get_next_buffer()
        while next_ is not None and next_.buffer.readable_bytes == 0:
            next_.buffer.recycle()
            self.num_buffers_in += 1
            next_ = view.get_next_buffer()
        if next_ is None:
            if view.is_released:
                cause = view.failure_cause
                if cause is not None:
                    raise ProducerFailedError(cause)
                raise CancelTaskError(f"Consumed partition {view} has been released.")
            return None
        self.num_bytes_in += next_.buffer.size
        self.num_buffers_in += 1
        return next_

    def resume_consumption(self) -> None:
        """Unblock the subpartition after an upstream-blocking event (aligned barrier)."""
        view = self._view
        if view is None:
            raise CancelTaskError(f"{self} has no subpartition view")
        view.resume_consumption()
        if view.get_availability_and_backlog(True).is_available:
            self.notify_channel_non_empty()

    def acknowledge_all_records_processed(self) -> None:
        """Tell the producer's subpartition that every user record was processed."""
        view = self._view
        if view is None:
            raise CancelTaskError(f"{self} has no subpartition view")
        view.acknowledge_all_data_processed()

    def release_all_resources(self) -> None:
        """Release the channel and its view (idempotent)."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._release_view()

    def _release_view(self) -> None:
        view, self._view = self._view, None
        if view is None:
            return
        # A pipelined view is told who let go of it: released before its EndOfPartition was
        # read, that is a lost consumer, and the producer's error names this gate.
        release = getattr(view, "release_by_consumer", None)
        if release is None:
            view.release_all_resources()
            return
        gate = self.input_gate
        name = gate.owning_task_name
        who = f"local gate {name!r}" if name else f"local gate #{gate.gate_index}"
        release(f"{who} (channel {self.channel_index})",
                "its local input channel was released (the gate closed) before the end of the partition")

    @property
    def is_released(self) -> bool:
        """The channel was released."""
        return self._released

    @property
    def subpartition_view(self) -> ResultSubpartitionView | None:
        """The view read, once requested."""
        return self._view

    @property
    def buffers_in_use_count(self) -> int:
        """The producer's queue length (Flink's ``LocalInputChannel.getBuffersInUseCount``)."""
        view = self._view
        return 0 if view is None else view.number_of_queued_buffers

    def announce_buffer_size(self, size: int) -> None:
        """Tell the subpartition view directly (Flink's ``LocalInputChannel.announceBufferSize``);
        nothing before the view is there (the next announcement reaches it) or once released."""
        view = self._view
        if self._released:
            return
        if view is not None:
            view.notify_new_buffer_size(size)
