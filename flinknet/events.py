"""Flink's network events and ``EventSerializer``, byte-identical with Flink 2.3.

Events travel alone in a buffer, never split and never sharing a buffer with records. They are
sent once per buffer, not per record, so this module is plain Python (``struct``), not Cython.

Name map (Flink → flinknet): the event classes keep Flink's names; ``EventSerializer`` methods:

==========================================  ===========================================
``toSerializedEvent(event)``                 :func:`to_serialized_event` → ``bytes``
``fromSerializedEvent(buffer, classLoader)``  :func:`from_serialized_event` (zero padding tolerated)
``toBuffer(event, hasPriority)``             :func:`to_buffer` → :class:`~flinknet.NetworkBuffer`
``toBufferConsumer(event, hasPriority)``     :func:`to_buffer_consumer` (Flink's padded backing array)
``fromBuffer(buffer, classLoader)``          :func:`from_buffer`
``Buffer.DataType.getDataType(event, p)``    :func:`get_data_type`
==========================================  ===========================================

Generic task events (Flink's tag 3, ``AbstractEvent`` subclasses identified by their Java class
name) are :class:`TaskEvent` subclasses registered with :func:`register_task_event`; an
unregistered class name decodes to :class:`UnknownTaskEvent` holding the raw bytes.

:data:`Event` is the union of every event class (what :func:`from_buffer` returns and every
function here takes).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Self, TypeAlias, TypeVar

from flinknet._core.buffer import FREEING_BUFFER_RECYCLER, Buffer, DataType, NetworkBuffer
from flinknet._core.builder import BufferConsumer
from flinknet._core.memory import MemorySegment
from flinknet.errors import CorruptEventError

if TYPE_CHECKING:
    from typing_extensions import Buffer as _BufferLike

__all__ = [
    "AlignmentType", "BoolWatermark", "CancelCheckpointMarker", "CheckpointBarrier",
    "CheckpointOptions", "CheckpointType", "EndOfData", "EndOfInputChannelStateEvent", "Event",
    "EndOfOutputChannelStateEvent", "EndOfPartitionEvent", "EndOfSegmentEvent",
    "EndOfSuperstepEvent", "EventAnnouncement", "LongWatermark", "RecoveryMetadata",
    "SavepointFormatType", "StopMode", "SubtaskConnectionDescriptor", "TaskEvent",
    "TerminationEvent", "UnknownTaskEvent", "WatermarkEvent", "from_buffer",
    "from_serialized_event", "get_data_type", "register_task_event", "to_buffer",
    "to_buffer_consumer", "to_serialized_event", "CorruptEventError",
]

LONG_MAX = (1 << 63) - 1
NO_ALIGNED_CHECKPOINT_TIME_OUT = LONG_MAX

# Event tags (the int32 that starts every serialized event).
END_OF_PARTITION_EVENT = 0
CHECKPOINT_BARRIER_EVENT = 1
END_OF_SUPERSTEP_EVENT = 2
OTHER_EVENT = 3
CANCEL_CHECKPOINT_MARKER_EVENT = 4
END_OF_CHANNEL_STATE_EVENT = 5
ANNOUNCEMENT_EVENT = 6
VIRTUAL_CHANNEL_SELECTOR_EVENT = 7
END_OF_USER_RECORDS_EVENT = 8
END_OF_SEGMENT = 9
RECOVERY_METADATA = 10
WATERMARK_EVENT = 11
END_OF_INPUT_CHANNEL_STATE_EVENT = 12


# --- events --------------------------------------------------------------------------------------

class StopMode(enum.IntEnum):
    """How a source stops (EndOfData's mode)."""

    DRAIN = 0
    NO_DRAIN = 1


class CheckpointType(enum.IntEnum):
    """Flink's snapshot types as they go on the wire."""

    CHECKPOINT = 0
    SAVEPOINT = 1
    SAVEPOINT_SUSPEND = 2
    SAVEPOINT_TERMINATE = 3
    FULL_CHECKPOINT = 4

    @property
    def is_savepoint(self) -> bool:
        return self in (CheckpointType.SAVEPOINT, CheckpointType.SAVEPOINT_SUSPEND,
                        CheckpointType.SAVEPOINT_TERMINATE)


class SavepointFormatType(enum.IntEnum):
    CANONICAL = 0
    NATIVE = 1


class AlignmentType(enum.IntEnum):
    AT_LEAST_ONCE = 0
    ALIGNED = 1
    UNALIGNED = 2
    FORCED_ALIGNED = 3


@dataclass(frozen=True)
class CheckpointOptions:
    """Flink's CheckpointOptions: type, target location (None = default), alignment, timeout."""

    checkpoint_type: CheckpointType = CheckpointType.CHECKPOINT
    target_location: bytes | None = None
    alignment: AlignmentType = AlignmentType.ALIGNED
    aligned_checkpoint_timeout: int = NO_ALIGNED_CHECKPOINT_TIME_OUT
    savepoint_format: SavepointFormatType = SavepointFormatType.CANONICAL

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoint_type", CheckpointType(self.checkpoint_type))
        object.__setattr__(self, "alignment", AlignmentType(self.alignment))
        object.__setattr__(self, "savepoint_format", SavepointFormatType(self.savepoint_format))
        if self.checkpoint_type.is_savepoint and self.alignment == AlignmentType.UNALIGNED:
            raise ValueError("Savepoints can not be unaligned")
        if self.target_location is not None:
            object.__setattr__(self, "target_location", bytes(self.target_location))
        if not -(1 << 63) <= self.aligned_checkpoint_timeout <= LONG_MAX:
            raise ValueError("aligned_checkpoint_timeout must fit in a Java long")

    @property
    def is_exactly_once_mode(self) -> bool:
        return self.alignment != AlignmentType.AT_LEAST_ONCE

    @property
    def is_unaligned(self) -> bool:
        return self.alignment == AlignmentType.UNALIGNED

    @property
    def needs_alignment(self) -> bool:
        return self.is_exactly_once_mode and (
            self.checkpoint_type.is_savepoint or not self.is_unaligned)

    @property
    def is_timeoutable(self) -> bool:
        return (self.alignment == AlignmentType.ALIGNED
                and 0 < self.aligned_checkpoint_timeout < NO_ALIGNED_CHECKPOINT_TIME_OUT)


class _Singleton:
    """Events without fields: every instance is equal."""

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return type(self).__name__ + "()"


class EndOfPartitionEvent(_Singleton):
    """The producer finished this subpartition: nothing follows."""


class EndOfSuperstepEvent(_Singleton):
    """End of an iteration superstep (batch iterations)."""


class EndOfOutputChannelStateEvent(_Singleton):
    """Recovered output channel state fully emitted (Flink's EndOfChannelStateEvent)."""


class EndOfInputChannelStateEvent(_Singleton):
    """Recovered input channel state fully consumed."""


class EndOfSegmentEvent(_Singleton):
    """End of a tiered/hybrid shuffle segment."""


@dataclass(frozen=True)
class EndOfData:
    """The source produced its last record; ``mode`` says whether to drain."""

    mode: StopMode = StopMode.DRAIN

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", StopMode(self.mode))


@dataclass(frozen=True)
class CheckpointBarrier:
    """Flink's CheckpointBarrier."""

    id: int
    timestamp: int
    options: CheckpointOptions = field(default_factory=CheckpointOptions)


@dataclass(frozen=True)
class CancelCheckpointMarker:
    """Cancels checkpoint ``checkpoint_id`` downstream."""

    checkpoint_id: int


@dataclass(frozen=True)
class EventAnnouncement:
    """Announces ``announced_event`` (a priority event) at ``sequence_number``."""

    announced_event: Event
    sequence_number: int


@dataclass(frozen=True)
class SubtaskConnectionDescriptor:
    """Virtual channel selector used when rescaling recovered state."""

    input_subtask_index: int
    output_subtask_index: int


@dataclass(frozen=True)
class RecoveryMetadata:
    """Tells the consumer the final buffer's subpartition after recovery."""

    final_buffer_subpartition_id: int


@dataclass(frozen=True)
class LongWatermark:
    """A generalized watermark with a long value (Flink 2.x)."""

    value: int
    identifier: str


@dataclass(frozen=True)
class BoolWatermark:
    """A generalized watermark with a boolean value (Flink 2.x)."""

    value: bool
    identifier: str


@dataclass(frozen=True)
class WatermarkEvent:
    """Flink 2.x generalized watermark event."""

    watermark: LongWatermark | BoolWatermark
    is_aligned: bool


class TaskEvent:
    """A generic event (Flink's tag 3): a Java class name plus the bytes the class writes.

    Subclass it, set ``class_name`` (the Java class name peers expect), implement
    :meth:`write` and :meth:`read`, and :func:`register_task_event` it.
    """

    class_name: ClassVar[str] = ""

    def write(self) -> bytes:
        """The event's own bytes after the class name."""
        return b""

    @classmethod
    def read(cls, data: memoryview) -> Self:
        """Build the event from its bytes (which may carry trailing zero padding)."""
        return cls()

    def __eq__(self, other: object) -> bool:
        return (type(other) is type(self) and isinstance(other, TaskEvent)
                and other.write() == self.write())

    def __hash__(self) -> int:
        return hash((type(self), self.write()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class TerminationEvent(TaskEvent):
    """Flink's iteration TerminationEvent (no body)."""

    class_name = "org.apache.flink.runtime.iterative.event.TerminationEvent"


@dataclass(frozen=True, eq=True)
class UnknownTaskEvent:
    """A generic event whose class name is not registered: its raw bytes (with any padding)."""

    class_name: str
    data: bytes


Event: TypeAlias = (EndOfPartitionEvent | CheckpointBarrier | EndOfSuperstepEvent | CancelCheckpointMarker
                    | EndOfOutputChannelStateEvent | EndOfInputChannelStateEvent | EventAnnouncement
                    | SubtaskConnectionDescriptor | EndOfData | EndOfSegmentEvent | RecoveryMetadata
                    | WatermarkEvent | TaskEvent | UnknownTaskEvent)
"""Every network event (Flink's ``AbstractEvent`` subclasses that ``EventSerializer`` knows)."""

_TASK_EVENTS: dict[str, type[TaskEvent]] = {}
_TE = TypeVar("_TE", bound=TaskEvent)


def register_task_event(cls: type[_TE]) -> type[_TE]:
    """Register a :class:`TaskEvent` subclass by its ``class_name`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, TaskEvent)) or not cls.class_name:
        raise TypeError("register_task_event needs a TaskEvent subclass with a class_name")
    _TASK_EVENTS[cls.class_name] = cls
    return cls


register_task_event(TerminationEvent)


# --- Java modified UTF-8 (DataOutput.writeUTF) ---------------------------------------------------

def _write_utf(text: str) -> bytes:
    out = bytearray()
    # Java's modified UTF-8 encodes UTF-16 code units: NUL as two bytes, surrogates separately.
    for unit in _utf16_units(text):
        if 0 < unit < 0x80:
            out.append(unit)
        elif unit < 0x800:
            out += bytes((0xC0 | (unit >> 6), 0x80 | (unit & 0x3F)))
        else:
            out += bytes((0xE0 | (unit >> 12), 0x80 | ((unit >> 6) & 0x3F), 0x80 | (unit & 0x3F)))
    if len(out) > 65535:
        raise ValueError(f"encoded string too long: {len(out)} bytes (writeUTF limit 65535)")
    return struct.pack(">H", len(out)) + bytes(out)


def _utf16_units(text: str) -> tuple[int, ...]:
    data = text.encode("utf-16-be", "surrogatepass")
    return struct.unpack(f">{len(data) // 2}H", data)


def _read_utf(data: memoryview, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from(">H", data, pos)
    pos += 2
    raw = bytes(data[pos:pos + n])
    if len(raw) != n:
        raise CorruptEventError("truncated UTF string")
    units: list[int] = []
    i = 0
    while i < n:
        b = raw[i]
        if b < 0x80:
            units.append(b)
            i += 1
        elif b >> 5 == 0b110 and i + 1 < n:
            units.append(((b & 0x1F) << 6) | (raw[i + 1] & 0x3F))
            i += 2
        elif b >> 4 == 0b1110 and i + 2 < n:
            units.append(((b & 0x0F) << 12) | ((raw[i + 1] & 0x3F) << 6) | (raw[i + 2] & 0x3F))
            i += 3
        else:
            raise CorruptEventError("malformed modified UTF-8 string")
    text = struct.pack(f">{len(units)}H", *units).decode("utf-16-be", "surrogatepass")
    return text, pos + n


# --- serialization -------------------------------------------------------------------------------

def _barrier_body(barrier: CheckpointBarrier) -> bytes:
    o = barrier.options
    parts = [struct.pack(">qqb", barrier.id, barrier.timestamp, o.checkpoint_type)]
    if o.checkpoint_type.is_savepoint:
        parts.append(struct.pack(">b", o.savepoint_format))
    if o.target_location is None:
        parts.append(struct.pack(">i", -1))
    else:
        parts.append(struct.pack(">i", len(o.target_location)) + o.target_location)
    parts.append(struct.pack(">bq", o.alignment, o.aligned_checkpoint_timeout))
    return b"".join(parts)


def _serialize(event: Event) -> tuple[bytes, int]:
    """(serialized bytes, length of Flink's backing array for to_buffer_consumer)."""
    if type(event) is EndOfPartitionEvent:
        data = struct.pack(">i", END_OF_PARTITION_EVENT)
    elif type(event) is CheckpointBarrier:
        body = _barrier_body(event)
        data = struct.pack(">i", CHECKPOINT_BARRIER_EVENT) + body
        location = event.options.target_location
        return data, 38 + (len(location) if location is not None else 0)
    elif type(event) is EndOfSuperstepEvent:
        data = struct.pack(">i", END_OF_SUPERSTEP_EVENT)
    elif type(event) is CancelCheckpointMarker:
        data = struct.pack(">iq", CANCEL_CHECKPOINT_MARKER_EVENT, event.checkpoint_id)
    elif type(event) is EndOfOutputChannelStateEvent:
        data = struct.pack(">i", END_OF_CHANNEL_STATE_EVENT)
    elif type(event) is EndOfInputChannelStateEvent:
        data = struct.pack(">i", END_OF_INPUT_CHANNEL_STATE_EVENT)
    elif type(event) is EventAnnouncement:
        inner, inner_array = _serialize(event.announced_event)
        data = struct.pack(">ii", ANNOUNCEMENT_EVENT, event.sequence_number) + inner
        return data, 8 + inner_array
    elif type(event) is SubtaskConnectionDescriptor:
        data = struct.pack(">iii", VIRTUAL_CHANNEL_SELECTOR_EVENT, event.input_subtask_index,
                           event.output_subtask_index)
    elif type(event) is EndOfData:
        data = struct.pack(">ib", END_OF_USER_RECORDS_EVENT, event.mode)
    elif type(event) is EndOfSegmentEvent:
        data = struct.pack(">i", END_OF_SEGMENT)
    elif type(event) is RecoveryMetadata:
        data = struct.pack(">ii", RECOVERY_METADATA, event.final_buffer_subpartition_id)
    elif type(event) is WatermarkEvent:
        wm = event.watermark
        head = struct.pack(">i", WATERMARK_EVENT) + _write_utf(wm.identifier) + \
            struct.pack(">?", event.is_aligned)
        if isinstance(wm, LongWatermark):
            data = head + struct.pack(">iq", 0, wm.value)
        elif isinstance(wm, BoolWatermark):
            data = head + struct.pack(">i?", 1, wm.value)
        else:
            raise TypeError(f"unsupported watermark {wm!r}")
        return data, _serializer_array_length(len(data))
    elif isinstance(event, TaskEvent):
        data = struct.pack(">i", OTHER_EVENT) + _write_utf(event.class_name) + event.write()
        return data, _serializer_array_length(len(data))
    elif type(event) is UnknownTaskEvent:
        data = struct.pack(">i", OTHER_EVENT) + _write_utf(event.class_name) + event.data
        return data, _serializer_array_length(len(data))
    else:
        raise TypeError(f"not a network event: {event!r}")
    return data, len(data)


def _serializer_array_length(length: int) -> int:
    # DataOutputSerializer starts at 128 bytes and grows to max(2 x capacity, needed).
    capacity = 128
    while capacity < length:
        capacity = max(2 * capacity, length)
    return capacity


def to_serialized_event(event: Event) -> bytes:
    """Flink's ``EventSerializer.toSerializedEvent``: the event's exact bytes."""
    return _serialize(event)[0]


def _check(data: memoryview, pos: int, n: int) -> None:
    if pos + n > len(data):
        raise CorruptEventError("Incomplete event")


def from_serialized_event(data: _BufferLike) -> Event:
    """Decode an event from ``data`` (any buffer); zero padding after the event is ignored,
    any other byte after it is corrupt (Flink's serializer pads with zeros only).

    The event is decoded from a copy, so no view of ``data`` outlives the call, not even in a
    :class:`CorruptEventError`'s traceback: a network buffer can always be recycled after it."""
    with memoryview(data) as view:
        raw = view.tobytes()
    mv = memoryview(raw)
    if len(mv) < 4:
        raise CorruptEventError("Incomplete event")
    (tag,) = struct.unpack_from(">i", mv, 0)
    try:
        event, end = _deserialize(tag, mv)
    except struct.error as e:
        raise CorruptEventError(f"Incomplete event: {e}") from e
    if raw.count(0, end) != len(raw) - end:
        raise CorruptEventError(f"Corrupt byte stream for event: the {type(event).__name__} ends at "
                                f"byte {end} of {len(raw)}, and the rest is not zero padding")
    return event


def _deserialize(tag: int, mv: memoryview) -> tuple[Event, int]:
    """The event of ``tag`` in ``mv`` and the offset where its bytes end."""
    if tag == END_OF_PARTITION_EVENT:
        return EndOfPartitionEvent(), 4
    if tag == CHECKPOINT_BARRIER_EVENT:
        cid, ts, ctype = struct.unpack_from(">qqb", mv, 4)
        pos = 21
        try:
            checkpoint_type = CheckpointType(ctype)
        except ValueError:
            raise CorruptEventError(f"Unknown checkpoint type: {ctype}") from None
        fmt = SavepointFormatType.CANONICAL
        if checkpoint_type.is_savepoint:
            (f,) = struct.unpack_from(">b", mv, pos)
            pos += 1
            try:
                fmt = SavepointFormatType(f)
            except ValueError:
                raise CorruptEventError(f"Unknown savepoint format type: {f}") from None
        (loc_len,) = struct.unpack_from(">i", mv, pos)
        pos += 4
        if loc_len < -1:
            raise CorruptEventError(f"invalid location length {loc_len}")
        location: bytes | None = None
        if loc_len >= 0:
            _check(mv, pos, loc_len)
            location = bytes(mv[pos:pos + loc_len])
            pos += loc_len
        alignment, timeout = struct.unpack_from(">bq", mv, pos)
        try:
            alignment = AlignmentType(alignment)
        except ValueError:
            raise CorruptEventError(f"Unknown alignment type: {alignment}") from None
        try:
            options = CheckpointOptions(checkpoint_type, location, alignment, timeout, fmt)
        except ValueError as e:
            raise CorruptEventError(str(e)) from e
        return CheckpointBarrier(cid, ts, options), pos + 9
    if tag == END_OF_SUPERSTEP_EVENT:
        return EndOfSuperstepEvent(), 4
    if tag == CANCEL_CHECKPOINT_MARKER_EVENT:
        return CancelCheckpointMarker(struct.unpack_from(">q", mv, 4)[0]), 12
    if tag == END_OF_CHANNEL_STATE_EVENT:
        return EndOfOutputChannelStateEvent(), 4
    if tag == END_OF_INPUT_CHANNEL_STATE_EVENT:
        return EndOfInputChannelStateEvent(), 4
    if tag == ANNOUNCEMENT_EVENT:
        (seq,) = struct.unpack_from(">i", mv, 4)
        inner = mv[8:]
        if len(inner) < 4:
            raise CorruptEventError("Incomplete event")
        (inner_tag,) = struct.unpack_from(">i", inner, 0)
        announced, end = _deserialize(inner_tag, inner)
        return EventAnnouncement(announced, seq), 8 + end
    if tag == VIRTUAL_CHANNEL_SELECTOR_EVENT:
        return SubtaskConnectionDescriptor(*struct.unpack_from(">ii", mv, 4)), 12
    if tag == END_OF_USER_RECORDS_EVENT:
        (mode,) = struct.unpack_from(">b", mv, 4)
        try:
            return EndOfData(StopMode(mode)), 5
        except ValueError:
            raise CorruptEventError(f"Unknown end of data mode: {mode}") from None
    if tag == END_OF_SEGMENT:
        return EndOfSegmentEvent(), 4
    if tag == RECOVERY_METADATA:
        return RecoveryMetadata(struct.unpack_from(">i", mv, 4)[0]), 8
    if tag == WATERMARK_EVENT:
        identifier, pos = _read_utf(mv, 4)
        aligned, kind = struct.unpack_from(">?i", mv, pos)
        pos += 5
        wm: LongWatermark | BoolWatermark
        if kind == 0:
            wm = LongWatermark(struct.unpack_from(">q", mv, pos)[0], identifier)
            pos += 8
        elif kind == 1:
            wm = BoolWatermark(struct.unpack_from(">?", mv, pos)[0], identifier)
            pos += 1
        else:
            raise CorruptEventError(f"Unknown watermark type: {kind}")
        return WatermarkEvent(wm, aligned), pos
    if tag == OTHER_EVENT:
        # The class's own bytes run to the end (padding included): nothing is left to check.
        class_name, pos = _read_utf(mv, 4)
        cls = _TASK_EVENTS.get(class_name)
        if cls is None:
            return UnknownTaskEvent(class_name, bytes(mv[pos:])), len(mv)
        return cls.read(mv[pos:]), len(mv)
    raise CorruptEventError(f"Corrupt byte stream for event: unknown tag {tag}")


def get_data_type(event: Event, has_priority: bool = False) -> DataType:
    """The ``DataType`` Flink gives ``event``'s buffer (``Buffer.DataType.getDataType``)."""
    if has_priority:
        return DataType.PRIORITIZED_EVENT_BUFFER
    if type(event) is EndOfOutputChannelStateEvent:
        return DataType.RECOVERY_COMPLETION
    if type(event) is EndOfData:
        return DataType.END_OF_DATA
    if type(event) is EndOfPartitionEvent:
        return DataType.END_OF_PARTITION
    if type(event) is WatermarkEvent:
        return DataType.ALIGNED_WATERMARK_EVENT if event.is_aligned else DataType.UNALIGNED_WATERMARK_EVENT
    if type(event) is CheckpointBarrier and event.options.needs_alignment:
        if event.options.is_timeoutable:
            return DataType.TIMEOUTABLE_ALIGNED_CHECKPOINT_BARRIER
        return DataType.ALIGNED_CHECKPOINT_BARRIER
    return DataType.EVENT_BUFFER


def to_buffer(event: Event, has_priority: bool = False) -> NetworkBuffer:
    """The event in an exactly sized buffer that frees its memory when recycled."""
    data = to_serialized_event(event)
    segment = MemorySegment.wrap_copy(data)
    return NetworkBuffer(segment, FREEING_BUFFER_RECYCLER, get_data_type(event, has_priority), len(data))


def to_buffer_consumer(event: Event, has_priority: bool = False) -> BufferConsumer:
    """A finished consumer of the event as Flink enqueues it: the serializer's whole backing
    array, so barriers and generic events carry trailing zero padding (readers ignore it)."""
    data, array_length = _serialize(event)
    segment = MemorySegment(array_length)
    segment.put_bytes(0, data)
    buffer = NetworkBuffer(segment, FREEING_BUFFER_RECYCLER, get_data_type(event, has_priority), array_length)
    return BufferConsumer(buffer, array_length)


def from_buffer(buffer: Buffer) -> Event:
    """Decode the event in ``buffer``'s readable bytes (the buffer is not recycled)."""
    with memoryview(buffer) as view:
        return from_serialized_event(view)
