# flinknet._core.serialization: records framed as Flink frames them, spanning buffers (RecordWriter's path),
# and the spanning deserializer (SpillingAdaptiveSpanningRecordDeserializer), with pluggable Cython payload serializers.
#
# Threading: a SpanningRecordSerializer belongs to one producer thread and a RecordDeserializer to
# one consumer thread (as in Flink); neither is thread-safe. Both hold the GIL except while copying
# at least GIL_RELEASE_THRESHOLD bytes.

from libc.stdint cimport int32_t, int64_t
from cpython.buffer cimport Py_buffer

from flinknet._core.buffer cimport Buffer
from flinknet._core.builder cimport BufferBuilder, BufferConsumer
from flinknet._core.pool cimport LocalBufferPool

cdef enum:
    LENGTH_BYTES = 4
    # Room for the headers payload serializers put before their body (tag, timestamp, lengths).
    PAYLOAD_HEADER_MAX = 32
    DEFAULT_SPILL_THRESHOLD = 5 * 1024 * 1024
    MIN_SPILL_THRESHOLD = 100 * 1024
    DEFAULT_MAX_RECORD_LENGTH = 1024 * 1024 * 1024
    INITIAL_SPANNING_CAPACITY = 1024


# One serialized payload: `header` bytes followed by `body_size` bytes at `body`. Serializers
# append to `header` at `header_size` (so an outer serializer, e.g. for stream elements, can put
# its own fields first) and set at most one body. `body` points
# into an object kept alive by the caller (the value itself, or the object prepare() returned),
# or into `view` when has_view is set (released by payload_release).
cdef struct Payload:
    char header[PAYLOAD_HEADER_MAX]
    Py_ssize_t header_size
    const char *body
    Py_ssize_t body_size
    bint has_view
    Py_buffer view

cdef void payload_release(Payload *p) noexcept


cdef class PayloadSerializer:
    # Size of every payload in bytes, or -1 when it varies.
    cdef readonly Py_ssize_t fixed_size
    # Fill `p` for `value`; returns an object the caller keeps alive until the bytes are copied.
    cdef object prepare(self, object value, Payload *p)
    # Deserialize exactly `size` bytes at `data`; CorruptRecordError if they are not one value.
    cdef object read(self, const char *data, Py_ssize_t size)


cdef class SpanningRecordSerializer:
    cdef LocalBufferPool _pool
    cdef PayloadSerializer _serializer
    # The sink's bound methods: add_buffer_consumer(sp, consumer, partial) and
    # buffer_finished(sp, bytes), called once per buffer.
    cdef object _sink_add
    cdef object _sink_finished
    cdef int _num_subpartitions
    # The open BufferBuilder of each subpartition, or None (a Python list owned by this object).
    cdef list _builders
    # The shared builder of broadcast records, or None.
    cdef BufferBuilder _broadcast_builder
    cdef readonly int64_t total_written_bytes
    cdef readonly int64_t num_bytes_out
    cdef readonly int64_t num_buffers_out
    cdef readonly int64_t num_records_out
    # Nanoseconds spent blocked waiting for a buffer (hard backpressure).
    cdef readonly int64_t back_pressured_ns
    # Optional TimerGauge marked around every blocking buffer request (hardBackPressuredTime).
    cdef public object back_pressure_timer
    cdef bint _closed
    # reject_records(): when not None, every emit raises _rejection() (the partition finished or
    # was released). Written by any thread, read by the writer's thread under the GIL.
    cdef object _rejection

    cdef BufferBuilder _new_builder(self, int target, Py_ssize_t partial, Py_ssize_t min_size,
                                    bint add_first)
    cdef int _finish_builder(self, int target) except -1
    cdef int _add_consumers(self, BufferBuilder builder, int target, Py_ssize_t partial,
                            Py_ssize_t min_size) except -1
    cdef int _write_framed(self, Payload *p, int target) except -1
    cdef int _check_target(self, Py_ssize_t target) except -1
    cdef int _check_accepting(self) except -1
    cdef int _flush_run(self, Payload *run, Py_ssize_t count, Py_ssize_t run_bytes, int target) except -1


cdef class RecordDeserializer:
    cdef PayloadSerializer _serializer
    cdef object _channel
    cdef Py_ssize_t _spill_threshold
    cdef Py_ssize_t _max_record_length
    cdef object _tmp_dirs
    # The buffer being read (one reference owned by the deserializer), or None.
    cdef Buffer _buffer
    # Non-spanning read position and limit inside _buffer (absolute, from its byte 0).
    cdef Py_ssize_t _pos
    cdef Py_ssize_t _limit
    # Spanning state: the length prefix being assembled, the record length (-1 = unknown), bytes
    # of the record gathered so far, in _span (PyMem, _span_capacity bytes) or in _spill_file.
    cdef char _length_bytes[4]
    cdef int _length_bytes_read
    cdef int64_t _record_length
    cdef int64_t _accumulated
    cdef char *_span
    cdef Py_ssize_t _span_capacity
    # With the plain "bytes" serializer, a spanning record is gathered straight into the bytes
    # object handed out (one copy, not two); None until its first bytes arrive.
    cdef bint _direct_bytes
    cdef object _span_bytes
    cdef object _spill_file
    cdef object _spill_path
    # Bytes of the channel stream consumed so far (for error messages).
    cdef int64_t _stream_offset
    # A buffer already consumed whose recycle waits for the next call (views may point into it).
    cdef Buffer _pending_recycle
    # The memoryview handed out by the last view call (released on the next call) and the
    # _RecordView under it (whose export count tells whether derived views are still alive).
    cdef object _last_view
    cdef object _last_exporter
    cdef int64_t _num_records

    cdef int _settle(self) except -1
    cdef int _recycle_current(self) except -1
    cdef int _append_to_spanning(self, const char *data, Py_ssize_t n) except -1
    cdef int _reset_spanning(self) except -1
    cdef int _check_length(self, int64_t length, int64_t offset) except -1
    # The record produced by the last _next() (handed to the caller and cleared at once).
    cdef object _out
    cdef int _next(self, bint as_view) except -1
    cdef int _finish_buffer(self, bint as_view) except -1
