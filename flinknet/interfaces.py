"""The declared seams between flinknet's layers: what each side may call, on which thread.

Every object that crosses from one layer to another does so through one of the interfaces in
this module; no layer reaches into another's private state. They are the seams the native data
plane replaces piece by piece (a native subpartition queue implements
:class:`ResultSubpartitionView`, a native I/O engine implements :class:`PartitionRequestClient`
and drives :class:`CreditBasedInputChannel`), so each one states its threading rules.

A buffer travels with its metadata in one type, :class:`BufferAndBacklog`, from the subpartition's
view through the input channel to the gate; the gate turns it into the
:class:`~flinknet.consumer.BufferOrEvent` a task reads.

Map to Apache Flink:

====================================================  =============================================
Flink                                                  flinknet
====================================================  =============================================
``ResultSubpartition.BufferAndBacklog``,               :class:`BufferAndBacklog`
``InputChannel.BufferAndAvailability``
``ResultSubpartitionView.AvailabilityWithBacklog``     :class:`AvailabilityWithBacklog`
``BufferAvailabilityListener``                         :class:`BufferAvailabilityListener`
``ResultSubpartitionView``                             :class:`ResultSubpartitionView`
``PartitionRequestClient``                             :class:`PartitionRequestClient`
``RemoteInputChannel`` as the ``NetworkClientHandler``  :class:`CreditBasedInputChannel`
sees it (``onBuffer``, ``onSenderBacklog``,
``requestBuffer``, ``getAndResetUnannouncedCredit``)
``TimerGauge.markStart`` / ``markEnd``                  :class:`WaitTimer`
====================================================  =============================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

from flinknet._core.buffer import DataType

if TYPE_CHECKING:
    from flinknet._core.buffer import Buffer
    from flinknet.ids import InputChannelID, ResultPartitionID

__all__ = [
    "AvailabilityWithBacklog",
    "BufferAndBacklog",
    "BufferAvailabilityListener",
    "CreditBasedInputChannel",
    "PartitionRequestClient",
    "ResultSubpartitionView",
    "WaitTimer",
]

_NONE = DataType.NONE
_PRIORITY_TYPES = frozenset(t for t in DataType if t.has_priority)


class BufferAndBacklog(NamedTuple):
    """One buffer with what is known about the queue behind it.

    Handed out by a :class:`ResultSubpartitionView` and by every input channel
    (``get_next_buffer()``), and read by the gate. ``buffers_in_backlog`` counts the finished or
    flushed data buffers still queued at the producer (0 where the receiving side does not know
    it), ``next_data_type`` is the type of the next readable item (``DataType.NONE`` if nothing
    is readable yet) and ``sequence_number`` numbers every item the producer's view handed out,
    from 0. Whoever receives it owns one reference of ``buffer`` and must recycle it.
    """

    buffer: Buffer
    buffers_in_backlog: int
    next_data_type: DataType
    sequence_number: int

    @property
    def is_data_available(self) -> bool:
        """Something more is readable now (Flink's ``isDataAvailable`` / ``moreAvailable``)."""
        return self.next_data_type != _NONE

    @property
    def more_available(self) -> bool:
        """The same as :attr:`is_data_available` (Flink's ``BufferAndAvailability.moreAvailable``)."""
        return self.next_data_type != _NONE

    @property
    def is_event_available(self) -> bool:
        """The next readable item is an event."""
        return self.next_data_type.is_event

    @property
    def more_priority_events(self) -> bool:
        """The next readable item is a priority event."""
        return self.next_data_type in _PRIORITY_TYPES

    @property
    def has_priority(self) -> bool:
        """This buffer is a priority event."""
        return self.buffer.data_type in _PRIORITY_TYPES


class AvailabilityWithBacklog(NamedTuple):
    """Whether a view can hand out its next item now, and its backlog (Flink's
    ``ResultSubpartitionView.AvailabilityWithBacklog``)."""

    is_available: bool
    backlog: int


@runtime_checkable
class BufferAvailabilityListener(Protocol):
    """What a subpartition view reports to: a local input channel or the transport server's
    reader (Flink's ``BufferAvailabilityListener``).

    Threads: both methods run on the producer's thread (or the thread that released the
    partition), after the subpartition's lock is released. Keep them short and never block or
    call back into the view from them: hand the work to the consumer's thread.
    """

    def notify_data_available(self, view: ResultSubpartitionView) -> None:
        """The view went from nothing readable to something readable (once per transition, and
        once more when the subpartition is released so that a waiting reader learns of it)."""
        ...

    def notify_priority_event(self, sequence_number: int) -> None:
        """A priority event became the first readable item; ``sequence_number`` is the one it
        will be handed out with."""
        ...


@runtime_checkable
class ResultSubpartitionView(Protocol):
    """The read side of one subpartition (Flink's ``ResultSubpartitionView``), implemented by
    :class:`~flinknet.partition.PipelinedSubpartitionView` and
    :class:`~flinknet.partition.BoundedBlockingSubpartitionReader` and consumed by
    :class:`~flinknet.consumer.LocalInputChannel` and the transport server.

    Threads: one consumer thread calls :meth:`get_next_buffer`,
    :meth:`get_availability_and_backlog`, :meth:`resume_consumption` and
    :meth:`acknowledge_all_data_processed`; :meth:`release_all_resources`,
    :meth:`notify_new_buffer_size` and the read-only queries may come from any thread. The view
    synchronizes with its producer internally; the consumer never holds a lock of its own while
    calling in.
    """

    def get_next_buffer(self) -> BufferAndBacklog | None:
        """The next buffer (the caller owns one reference), or None if nothing is readable.
        Raises if the producer failed."""
        ...

    def get_availability_and_backlog(self, is_credit_available: bool = True) -> AvailabilityWithBacklog:
        """Whether :meth:`get_next_buffer` would return something now: with credit, any item;
        without, only an event. And the backlog a receiver would be told."""
        ...

    def resume_consumption(self) -> None:
        """Unblock after an upstream-blocking event (an aligned checkpoint barrier) was consumed."""
        ...

    def acknowledge_all_data_processed(self) -> None:
        """The consumer processed every user record (``AckAllUserRecordsProcessed``)."""
        ...

    def release_all_resources(self) -> None:
        """Release the view (idempotent); its subpartition counts as consumed."""
        ...

    def notify_new_buffer_size(self, size: int) -> None:
        """The consumer's desired buffer size (buffer debloating)."""
        ...

    @property
    def is_released(self) -> bool:
        """The view or its partition was released."""
        ...

    @property
    def failure_cause(self) -> BaseException | None:
        """Why the producer failed, if it did."""
        ...

    @property
    def number_of_queued_buffers(self) -> int:
        """Buffers queued in the subpartition, read without locking (for metrics)."""
        ...


@runtime_checkable
class CreditBasedInputChannel(Protocol):
    """What a connection's I/O thread calls on a remote input channel (Flink's
    ``RemoteInputChannel`` as ``CreditBasedPartitionRequestClientHandler`` uses it), implemented
    by :class:`~flinknet.consumer.RemoteInputChannel`.

    Threads: the ``on_*`` methods, :meth:`request_buffer` and :meth:`take_unannounced_credit`
    run on the connection's I/O thread only, in the order the frames arrived; they never block
    (a channel that cannot take a buffer returns None from :meth:`request_buffer`). The
    identifying attributes are immutable; :attr:`is_released` may be read from any thread.
    """

    @property
    def input_channel_id(self) -> InputChannelID:
        """The receiver id this channel's frames carry."""
        ...

    @property
    def partition_id(self) -> ResultPartitionID:
        """The partition this channel reads."""
        ...

    @property
    def consumed_subpartition_index(self) -> int:
        """The subpartition this channel reads."""
        ...

    @property
    def is_released(self) -> bool:
        """The channel was released; frames for it are dropped."""
        ...

    def request_buffer(self, arrival: bool = True) -> Buffer | None:
        """A free credit buffer to receive an arriving data buffer into, or None. ``arrival``
        is False when the connection retries the same arrival (TCP-backpressure mode)."""
        ...

    def on_buffer(self, buffer: Buffer, sequence_number: int, backlog: int,
                  subpartition_id: int = 0) -> None:
        """A buffer arrived (the channel takes over ``buffer``); ``backlog`` < 0 means none."""
        ...

    def on_empty_buffer(self, sequence_number: int, backlog: int) -> None:
        """An empty buffer arrived: only its sequence number and backlog count."""
        ...

    def on_sender_backlog(self, backlog: int) -> None:
        """Ask for floating buffers for the sender's ``backlog`` (a buffer's or an
        announcement's figure)."""
        ...

    def on_backlog_announcement(self, backlog: int) -> None:
        """The sender announced its backlog (``BacklogAnnouncement``): the newest figure from
        now on, then :meth:`on_sender_backlog`."""
        ...

    def on_error(self, error: BaseException) -> None:
        """The connection or the producer failed this channel."""
        ...

    def on_partition_not_found(self) -> None:
        """The producer's environment does not have the partition (yet): retry or fail."""
        ...

    def take_unannounced_credit(self) -> int:
        """Credit gained since the last ``AddCredit``, reset to 0 (Flink's
        ``getAndResetUnannouncedCredit``)."""
        ...


@runtime_checkable
class PartitionRequestClient(Protocol):
    """What a remote input channel calls on its connection (Flink's ``PartitionRequestClient``),
    implemented by :class:`~flinknet.transport.client.ClientConnection`. Only the transport
    encodes wire frames: the channel says what it wants, the connection writes the frame.

    Threads: every method may be called from any thread (task threads, pool recyclers, the
    gate's timer) and never blocks: the work is handed to the connection's I/O thread, which
    writes frames in the order the calls were made.
    """

    def request_subpartition(self, channel: CreditBasedInputChannel, initial_credit: int) -> None:
        """Register ``channel`` and send its ``PartitionRequest``."""
        ...

    def notify_credit_available(self, channel: CreditBasedInputChannel) -> None:
        """The channel's unannounced credit went from 0 to > 0: the connection writes one
        ``AddCredit`` with everything gained by the time it is written."""
        ...

    def resume_consumption(self, channel: CreditBasedInputChannel) -> None:
        """Send ``ResumeConsumption`` for ``channel``."""
        ...

    def acknowledge_all_records_processed(self, channel: CreditBasedInputChannel) -> None:
        """Send ``AckAllUserRecordsProcessed`` for ``channel``."""
        ...

    def notify_new_buffer_size(self, channel: CreditBasedInputChannel, buffer_size: int) -> None:
        """Send ``NewBufferSize`` for ``channel`` (buffer debloating)."""
        ...

    def release_channel(self, channel: CreditBasedInputChannel) -> None:
        """Unregister ``channel`` (``CancelPartitionRequest``); the connection closes with its
        last channel."""
        ...


@runtime_checkable
class WaitTimer(Protocol):
    """A timer the I/O classes mark around the time a task waits (Flink's ``TimerGauge``):
    the metrics layer attaches one through ``set_idle_timer`` (gates),
    ``set_soft_back_pressure_timer`` (record writers) or ``set_hard_back_pressure_timer``
    (result partitions: emits blocked on a buffer). Called only on the task's thread."""

    def mark_start(self) -> None:
        """The task starts waiting."""
        ...

    def mark_end(self) -> None:
        """The task stops waiting."""
        ...
