# flinknet._core.elements: Flink's StreamElement family and StreamElementSerializer.
from libc.stdint cimport int32_t, int64_t

from flinknet._core.serialization cimport PayloadSerializer

cdef enum:
    TAG_REC_WITH_TIMESTAMP = 0
    TAG_REC_WITHOUT_TIMESTAMP = 1
    TAG_WATERMARK = 2
    TAG_LATENCY_MARKER = 3
    TAG_STREAM_STATUS = 4
    TAG_RECORD_ATTRIBUTES = 5
    TAG_INTERNAL_WATERMARK = 6


cdef class StreamRecord:
    cdef readonly object value
    cdef int64_t _timestamp
    cdef readonly bint has_timestamp

cdef class Watermark:
    cdef readonly int64_t timestamp

cdef class InternalWatermark:
    cdef readonly int64_t timestamp
    cdef readonly int32_t subpartition_index

cdef class LatencyMarker:
    cdef readonly int64_t marked_time
    cdef readonly int64_t operator_id_lower
    cdef readonly int64_t operator_id_upper
    cdef readonly int32_t subtask_index

cdef class WatermarkStatus:
    cdef readonly int32_t status

cdef class RecordAttributes:
    cdef readonly bint is_backlog

cdef class StreamElementSerializer(PayloadSerializer):
    # Serializes the value of every StreamRecord.
    cdef readonly PayloadSerializer value_serializer
    # LatencyMarkers framed / read through this instance: not records, so the task metrics
    # take them out of numRecordsOut / numRecordsIn (Flink counts records only).
    cdef readonly int64_t latency_markers_written
    cdef readonly int64_t latency_markers_read
    cdef int _expect(self, Py_ssize_t size, Py_ssize_t expected, str what) except -1
