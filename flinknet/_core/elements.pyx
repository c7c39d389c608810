"""Stream elements and Flink's ``StreamElementSerializer``, byte-identical with Flink 2.3.

A stream element is one tag byte, then its fields (big-endian), then, for records, the value as
the value serializer writes it:

===  ==========================  =================================================
tag  element                     body
===  ==========================  =================================================
0    StreamRecord with timestamp timestamp i64, value
1    StreamRecord                value
2    Watermark                   timestamp i64
3    LatencyMarker               markedTime i64, operatorId lower i64, upper i64, subtask i32
4    WatermarkStatus             status i32 (-1 IDLE, 0 ACTIVE)
5    RecordAttributes            isBacklog (1 byte)
6    InternalWatermark           subpartitionIndex i32, timestamp i64
===  ==========================  =================================================

:class:`StreamElementSerializer` is a :class:`~flinknet._core.serialization.PayloadSerializer`,
so stream elements go through the record serializer and deserializer like any payload. For Flink's
``DataStream<byte[]>`` use ``StreamElementSerializer(BytePrimitiveArraySerializer())``. Values that
are not stream elements are written as records without timestamp.
"""

cimport cython
from libc.stdint cimport int32_t, int64_t, uint64_t

from flinknet._core.defs cimport *
from flinknet._core.serialization cimport PayloadSerializer, Payload

from flinknet.errors import CorruptRecordError

from flinknet._core.serialization import get_serializer


@cython.final
@cython.freelist(64)
cdef class StreamRecord:
    """A record with an optional event-time timestamp (Flink ``StreamRecord``)."""

    def __init__(self, value, timestamp=None):
        self.value = value
        if timestamp is None:
            self.has_timestamp = False
            self._timestamp = 0
        else:
            self.has_timestamp = True
            self._timestamp = timestamp

    @property
    def timestamp(self):
        """The timestamp, or None."""
        return self._timestamp if self.has_timestamp else None

    def __eq__(self, other):
        if not isinstance(other, StreamRecord):
            return NotImplemented
        o = <StreamRecord>other
        return (self.has_timestamp == o.has_timestamp and self._timestamp == o._timestamp
                and self.value == o.value)

    def __hash__(self):
        return hash((self.value, self.timestamp))

    def __repr__(self):
        ts = f", timestamp={self._timestamp}" if self.has_timestamp else ""
        return f"StreamRecord({self.value!r}{ts})"


@cython.final
cdef class Watermark:
    """Event time has reached ``timestamp`` (Flink ``Watermark``)."""

    def __init__(self, int64_t timestamp):
        self.timestamp = timestamp

    def __eq__(self, other):
        return type(other) is Watermark and (<Watermark>other).timestamp == self.timestamp

    def __hash__(self):
        return hash(("Watermark", self.timestamp))

    def __repr__(self):
        return f"Watermark({self.timestamp})"


@cython.final
cdef class InternalWatermark:
    """A watermark for one subpartition (Flink ``InternalWatermark``, tag 6)."""

    def __init__(self, int64_t timestamp, int32_t subpartition_index):
        self.timestamp = timestamp
        self.subpartition_index = subpartition_index

    def __eq__(self, other):
        return (type(other) is InternalWatermark
                and (<InternalWatermark>other).timestamp == self.timestamp
                and (<InternalWatermark>other).subpartition_index == self.subpartition_index)

    def __hash__(self):
        return hash(("InternalWatermark", self.timestamp, self.subpartition_index))

    def __repr__(self):
        return f"InternalWatermark({self.timestamp}, subpartition={self.subpartition_index})"


@cython.final
cdef class LatencyMarker:
    """Emitted by sources to measure latency (Flink ``LatencyMarker``)."""

    def __init__(self, int64_t marked_time, int64_t operator_id_lower, int64_t operator_id_upper,
                 int32_t subtask_index):
        self.marked_time = marked_time
        self.operator_id_lower = operator_id_lower
        self.operator_id_upper = operator_id_upper
        self.subtask_index = subtask_index

    def __eq__(self, other):
        if type(other) is not LatencyMarker:
            return False
        o = <LatencyMarker>other
        return (o.marked_time == self.marked_time and o.operator_id_lower == self.operator_id_lower
                and o.operator_id_upper == self.operator_id_upper and o.subtask_index == self.subtask_index)

    def __hash__(self):
        return hash(("LatencyMarker", self.marked_time, self.operator_id_lower,
                     self.operator_id_upper, self.subtask_index))

    def __repr__(self):
        return (f"LatencyMarker(marked_time={self.marked_time}, operator_id=({self.operator_id_lower:#x}, "
                f"{self.operator_id_upper:#x}), subtask_index={self.subtask_index})")


@cython.final
cdef class WatermarkStatus:
    """IDLE (-1) or ACTIVE (0) (Flink ``WatermarkStatus``)."""

    def __init__(self, int32_t status):
        if status != -1 and status != 0:
            raise ValueError(f"Invalid status value for WatermarkStatus; found {status}, expected -1 or 0")
        self.status = status

    @property
    def is_idle(self):
        return self.status == -1

    @property
    def is_active(self):
        return self.status == 0

    def __eq__(self, other):
        return type(other) is WatermarkStatus and (<WatermarkStatus>other).status == self.status

    def __hash__(self):
        return hash(("WatermarkStatus", self.status))

    def __repr__(self):
        return "WatermarkStatus(IDLE)" if self.status == -1 else "WatermarkStatus(ACTIVE)"


@cython.final
cdef class RecordAttributes:
    """Attributes of the records that follow (Flink ``RecordAttributes``): backlog or not."""

    def __init__(self, bint is_backlog):
        self.is_backlog = is_backlog

    def __eq__(self, other):
        return type(other) is RecordAttributes and (<RecordAttributes>other).is_backlog == self.is_backlog

    def __hash__(self):
        return hash(("RecordAttributes", self.is_backlog))

    def __repr__(self):
        return f"RecordAttributes(is_backlog={bool(self.is_backlog)})"


MAX_WATERMARK = Watermark(9223372036854775807)
UNINITIALIZED = Watermark(-9223372036854775807 - 1)
IDLE = WatermarkStatus(-1)
ACTIVE = WatermarkStatus(0)


cdef inline object _corrupt(str message):
    return CorruptRecordError(message)


@cython.final
cdef class StreamElementSerializer(PayloadSerializer):
    """Flink's ``StreamElementSerializer`` over a value serializer (a PayloadSerializer or a name)."""

    def __init__(self, value_serializer="byte_array"):
        self.value_serializer = get_serializer(value_serializer)

    def __reduce__(self):
        # the value serializer travels with it; the latency-marker counters start again at 0
        return (StreamElementSerializer, (self.value_serializer,))

    cdef object prepare(self, object value, Payload *p):
        cdef char *h = p.header + p.header_size
        cdef StreamRecord r
        cdef LatencyMarker m
        cdef InternalWatermark iw
        t = type(value)
        if t is StreamRecord:
            r = <StreamRecord>value
            if r.has_timestamp:
                h[0] = TAG_REC_WITH_TIMESTAMP
                fn_store_be_i64(h + 1, r._timestamp)
                p.header_size += 9
            else:
                h[0] = TAG_REC_WITHOUT_TIMESTAMP
                p.header_size += 1
            return self.value_serializer.prepare(r.value, p)
        if t is Watermark:
            h[0] = TAG_WATERMARK
            fn_store_be_i64(h + 1, (<Watermark>value).timestamp)
            p.header_size += 9
        elif t is LatencyMarker:
            m = <LatencyMarker>value
            self.latency_markers_written += 1
            h[0] = TAG_LATENCY_MARKER
            fn_store_be_i64(h + 1, m.marked_time)
            fn_store_be_i64(h + 9, m.operator_id_lower)
            fn_store_be_i64(h + 17, m.operator_id_upper)
            fn_store_be_i32(h + 25, m.subtask_index)
            p.header_size += 29
        elif t is WatermarkStatus:
            h[0] = TAG_STREAM_STATUS
            fn_store_be_i32(h + 1, (<WatermarkStatus>value).status)
            p.header_size += 5
        elif t is RecordAttributes:
            h[0] = TAG_RECORD_ATTRIBUTES
            h[1] = 1 if (<RecordAttributes>value).is_backlog else 0
            p.header_size += 2
        elif t is InternalWatermark:
            iw = <InternalWatermark>value
            h[0] = TAG_INTERNAL_WATERMARK
            fn_store_be_i32(h + 1, iw.subpartition_index)
            fn_store_be_i64(h + 5, iw.timestamp)
            p.header_size += 13
        else:
            # A bare value is a record without timestamp.
            h[0] = TAG_REC_WITHOUT_TIMESTAMP
            p.header_size += 1
            return self.value_serializer.prepare(value, p)
        return None

    cdef object read(self, const char *data, Py_ssize_t size):
        cdef signed char tag
        cdef StreamRecord r
        cdef int32_t status
        if size < 1:
            raise _corrupt("Corrupt stream: empty stream element")
        tag = <signed char>data[0]
        if tag == TAG_REC_WITHOUT_TIMESTAMP:
            r = StreamRecord.__new__(StreamRecord)
            r.value = self.value_serializer.read(data + 1, size - 1)
            r.has_timestamp = False
            r._timestamp = 0
            return r
        if tag == TAG_REC_WITH_TIMESTAMP:
            if size < 9:
                raise _corrupt(f"Corrupt stream: record with timestamp of {size} bytes")
            r = StreamRecord.__new__(StreamRecord)
            r._timestamp = fn_load_be_i64(data + 1)
            r.has_timestamp = True
            r.value = self.value_serializer.read(data + 9, size - 9)
            return r
        if tag == TAG_WATERMARK:
            self._expect(size, 9, "Watermark")
            return Watermark(fn_load_be_i64(data + 1))
        if tag == TAG_LATENCY_MARKER:
            self._expect(size, 29, "LatencyMarker")
            self.latency_markers_read += 1
            return LatencyMarker(fn_load_be_i64(data + 1), fn_load_be_i64(data + 9),
                                 fn_load_be_i64(data + 17), fn_load_be_i32(data + 25))
        if tag == TAG_STREAM_STATUS:
            self._expect(size, 5, "WatermarkStatus")
            status = fn_load_be_i32(data + 1)
            if status != -1 and status != 0:
                raise _corrupt(f"Corrupt stream: invalid WatermarkStatus {status}")
            return IDLE if status == -1 else ACTIVE
        if tag == TAG_RECORD_ATTRIBUTES:
            self._expect(size, 2, "RecordAttributes")
            return RecordAttributes(data[1] != 0)
        if tag == TAG_INTERNAL_WATERMARK:
            self._expect(size, 13, "InternalWatermark")
            return InternalWatermark(fn_load_be_i64(data + 5), fn_load_be_i32(data + 1))
        raise _corrupt(f"Corrupt stream, found tag: {tag}")

    cdef int _expect(self, Py_ssize_t size, Py_ssize_t expected, str what) except -1:
        if size != expected:
            raise _corrupt(f"Corrupt stream: a {what} has {expected} bytes, found {size}")
        return 0
