"""Records framed exactly as Flink frames them, spanning network buffers (Flink's
``RecordWriter`` serialization and ``SpillingAdaptiveSpanningRecordDeserializer``).

A record on the wire is ``[length: int32 big-endian][payload: length bytes]`` with no per-buffer
header: the byte stream of framed records is cut at buffer boundaries wherever they fall, inside a
payload or inside the 4-byte length. The write side, :class:`SpanningRecordSerializer`, appends
framed records into the open :class:`~flinknet._core.builder.BufferBuilder` of each subpartition,
requests the next builder from a :class:`~flinknet._core.pool.LocalBufferPool` when one is full
(blocking there is backpressure) and tells a *sink* about every new and every finished buffer.
The read side, :class:`RecordDeserializer`, is Flink's ``SpillingAdaptiveSpanningRecordDeserializer``
with stricter checks of what comes from the network.

Payloads are produced and consumed by :class:`PayloadSerializer` s written in Cython:
:class:`BytesSerializer` (raw bytes, any contiguous buffer written without an intermediate copy),
:class:`BytePrimitiveArraySerializer` (Flink's ``byte[]`` serializer: inner int32 length),
:class:`StringSerializer` (UTF-8), :class:`Int32Serializer`, :class:`Int64Serializer`,
:class:`Float64Serializer`, :class:`NumpyRecordSerializer` (fixed-width numpy records) and
:class:`PickleSerializer` (only when asked for by name: never the default).

Name map (Flink → flinknet):

============================================================  ============================================
``RecordWriter.serializeRecord`` + ``BufferWritingResultPartition.emitRecord``  ``SpanningRecordSerializer.emit(record, target)``
``BufferWritingResultPartition.broadcastRecord`` (BroadcastRecordWriter)  ``SpanningRecordSerializer.broadcast_record(record)``
``ChannelSelectorRecordWriter.broadcastEmit``                 ``SpanningRecordSerializer.broadcast_emit(record)``
``finishUnicastBufferBuilder(s)`` / ``finishBroadcastBufferBuilder``  ``finish_unicast_builder(t)`` / ``finish_all()`` / ``finish_broadcast_builder()``
``getTotalNumberOfBytes`` / ``numBytesOut`` / ``numBuffersOut``  ``total_written_bytes`` / ``num_bytes_out`` / ``num_buffers_out``
``SpillingAdaptiveSpanningRecordDeserializer``               :class:`RecordDeserializer`
``setNextBuffer(buffer)`` / ``getNextRecord(target)``         ``set_next_buffer(buffer)`` / ``get_next_record()`` → ``(result, record)``
``DeserializationResult``                                     :class:`DeserializationResult`
``getUnconsumedBuffer()`` / ``clear()``                       ``get_unconsumed_bytes()`` / ``clear()``
``TypeSerializer`` (BytePrimitiveArray, String, Int, Long, Double)  :class:`PayloadSerializer` subclasses
============================================================  ============================================

The sink given to :class:`SpanningRecordSerializer` is any object with
``add_buffer_consumer(subpartition, consumer, partial_record_length) -> int | None`` (it takes over
the consumer; the return value is the subpartition's desired buffer size, 0/None for no change) and
``buffer_finished(subpartition, num_bytes)`` (``subpartition`` is -1 for the shared broadcast
buffer). Both are called once per buffer, never per record.
"""

cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBuffer_FillInfo, PyBUF_SIMPLE, PyBUF_WRITABLE
from cpython.bytes cimport PyBytes_CheckExact, PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy

from flinknet._core.buffer cimport Buffer, NetworkBuffer
from flinknet._core.builder cimport BufferBuilder, BufferConsumer
from flinknet._core.defs cimport *
from flinknet._core.memory cimport MemorySegment, copy_memory, GIL_RELEASE_THRESHOLD
from flinknet._core.pool cimport LocalBufferPool, UNKNOWN_CHANNEL

import enum
import io
import os
import pickle
import tempfile
import time

import numpy as np

from flinknet.errors import CorruptRecordError, IllegalStateError

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t *size) except NULL


DEFAULT_SPILLING_THRESHOLD = DEFAULT_SPILL_THRESHOLD
MAX_RECORD_LENGTH = DEFAULT_MAX_RECORD_LENGTH


cdef void payload_release(Payload *p) noexcept:
    if p.has_view:
        p.has_view = False
        PyBuffer_Release(&p.view)


cdef inline void _payload_init(Payload *p) noexcept:
    p.header_size = 0
    p.body = NULL
    p.body_size = 0
    p.has_view = False


cdef inline int _payload_buffer(object value, Payload *p) except -1:
    """Point the payload body at any contiguous buffer, without a copy."""
    if PyBytes_CheckExact(value):
        p.body = PyBytes_AS_STRING(value)
        p.body_size = PyBytes_GET_SIZE(value)
        return 0
    PyObject_GetBuffer(value, &p.view, PyBUF_SIMPLE)
    p.has_view = True
    p.body = <const char *>p.view.buf
    p.body_size = p.view.len
    return 0


cdef inline object _wrong_size(str what, Py_ssize_t expected, Py_ssize_t size):
    return CorruptRecordError(
        f"{what} consumes {expected} bytes but the record has {size}")


# --- payload serializers -------------------------------------------------------------------------

cdef class PayloadSerializer:
    """Turns values into record payloads and back (Flink's ``TypeSerializer``), in C.

    Subclass in Cython; every serializer must read back exactly the bytes it wrote and raise
    :class:`~flinknet.errors.CorruptRecordError` for payloads it did not write.
    """

    def __cinit__(self, *args, **kwargs):
        self.fixed_size = -1

    cdef object prepare(self, object value, Payload *p):
        raise NotImplementedError(f"{type(self).__name__} cannot serialize")

    cdef object read(self, const char *data, Py_ssize_t size):
        raise NotImplementedError(f"{type(self).__name__} cannot deserialize")

    def serialize(self, value):
        """The payload bytes of ``value`` (for tests and tools; the data path never calls this)."""
        cdef Payload p
        _payload_init(&p)
        hold = self.prepare(value, &p)
        try:
            return PyBytes_FromStringAndSize(p.header, p.header_size) + \
                PyBytes_FromStringAndSize(p.body, p.body_size)
        finally:
            payload_release(&p)

    def deserialize(self, data):
        """The value of the payload ``data`` (any contiguous buffer)."""
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return self.read(<const char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    def __reduce__(self):
        # Picklable, so that a job's serializers travel to worker processes and Ray actors: made
        # again from the constructor's arguments (none here; a serializer with constructor state
        # returns them).
        return (type(self), ())


@cython.final
cdef class BytesSerializer(PayloadSerializer):
    """Raw bytes: the payload is the value's bytes (any contiguous buffer), read back as ``bytes``."""

    cdef object prepare(self, object value, Payload *p):
        _payload_buffer(value, p)
        return None

    cdef object read(self, const char *data, Py_ssize_t size):
        return PyBytes_FromStringAndSize(data, size)


@cython.final
cdef class BytePrimitiveArraySerializer(PayloadSerializer):
    """Flink's ``BytePrimitiveArraySerializer`` (``byte[]``): ``[int32 BE length][bytes]``."""

    cdef object prepare(self, object value, Payload *p):
        _payload_buffer(value, p)
        if p.body_size > 2147483647:
            payload_release(p)
            raise ValueError("a byte[] payload is limited to 2 GiB")
        fn_store_be_i32(p.header + p.header_size, <int32_t>p.body_size)
        p.header_size += 4
        return None

    cdef object read(self, const char *data, Py_ssize_t size):
        cdef int32_t n
        if size < 4:
            raise _wrong_size("BytePrimitiveArraySerializer", 4, size)
        n = fn_load_be_i32(data)
        if n < 0 or n != size - 4:
            raise CorruptRecordError(
                f"BytePrimitiveArraySerializer: inner length {n} does not match the record's "
                f"{size - 4} payload bytes")
        return PyBytes_FromStringAndSize(data + 4, n)


@cython.final
cdef class StringSerializer(PayloadSerializer):
    """``str`` as UTF-8 bytes (the record length delimits it)."""

    cdef object prepare(self, object value, Payload *p):
        cdef Py_ssize_t n
        if not isinstance(value, str):
            raise TypeError(f"StringSerializer needs str, got {type(value).__name__}")
        # CPython caches the UTF-8 form in the str object: no copy for ASCII/compact strings.
        p.body = PyUnicode_AsUTF8AndSize(value, &n)
        p.body_size = n
        return None

    cdef object read(self, const char *data, Py_ssize_t size):
        try:
            return PyUnicode_DecodeUTF8(data, size, NULL)
        except UnicodeDecodeError as e:
            raise CorruptRecordError(f"StringSerializer: invalid UTF-8 payload ({e.reason})") from e


@cython.final
cdef class Int32Serializer(PayloadSerializer):
    """Flink's ``IntSerializer``: 4 bytes big-endian."""

    def __cinit__(self):
        self.fixed_size = 4

    cdef object prepare(self, object value, Payload *p):
        fn_store_be_i32(p.header + p.header_size, <int32_t>value)
        p.header_size += 4
        return None

    cdef object read(self, const char *data, Py_ssize_t size):
        if size != 4:
            raise _wrong_size("Int32Serializer", 4, size)
        return fn_load_be_i32(data)


@cython.final
cdef class Int64Serializer(PayloadSerializer):
    """Flink's ``LongSerializer``: 8 bytes big-endian."""

    def __cinit__(self):
        self.fixed_size = 8

    cdef object prepare(self, object value, Payload *p):
        fn_store_be_i64(p.header + p.header_size, <int64_t>value)
        p.header_size += 8
        return None

    cdef object read(self, const char *data, Py_ssize_t size):
        if size != 8:
            raise _wrong_size("Int64Serializer", 8, size)
        return fn_load_be_i64(data)


@cython.final
cdef class Float64Serializer(PayloadSerializer):
    """Flink's ``DoubleSerializer``: the IEEE-754 bits, 8 bytes big-endian."""

    def __cinit__(self):
        self.fixed_size = 8

    cdef object prepare(self, object value, Payload *p):
        cdef double d = value
        # Java's writeDouble uses doubleToLongBits: every NaN becomes 0x7ff8000000000000.
        cdef uint64_t bits = 0x7ff8000000000000ULL if d != d else fn_f64_to_bits(d)
        fn_store_be_i64(p.header + p.header_size, <int64_t>bits)
        p.header_size += 8
        return None

    cdef object read(self, const char *data, Py_ssize_t size):
        if size != 8:
            raise _wrong_size("Float64Serializer", 8, size)
        return fn_bits_to_f64(<uint64_t>fn_load_be_i64(data))


@cython.final
cdef class NumpyRecordSerializer(PayloadSerializer):
    """Fixed-width numpy records: the payload is the record's ``dtype.itemsize`` raw bytes.

    ``NumpyRecordSerializer(dtype)`` accepts numpy scalars/0-d arrays of that dtype (or any buffer of
    exactly ``itemsize`` bytes) and reads back numpy scalars; :meth:`SpanningRecordSerializer.emit_array`
    and :meth:`RecordDeserializer.read_array` move whole arrays.
    """

    cdef readonly object dtype

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        if self.dtype.itemsize <= 0 or self.dtype.hasobject:
            raise ValueError(f"{self.dtype} is not a fixed-width dtype without Python objects")
        self.fixed_size = self.dtype.itemsize

    cdef object prepare(self, object value, Payload *p):
        cdef object hold = None
        if isinstance(value, np.generic) or isinstance(value, np.ndarray):
            hold = np.ascontiguousarray(value, dtype=self.dtype)
            if hold.size != 1:
                raise ValueError(f"expected one {self.dtype} record, got shape {hold.shape}")
            value = hold
        _payload_buffer(value, p)
        if p.body_size != self.fixed_size:
            payload_release(p)
            raise ValueError(f"a {self.dtype} record has {self.fixed_size} bytes, got {p.body_size}")
        return hold

    def __reduce__(self):
        return (NumpyRecordSerializer, (self.dtype,))

    cdef object read(self, const char *data, Py_ssize_t size):
        if size != self.fixed_size:
            raise _wrong_size(f"NumpyRecordSerializer({self.dtype})", self.fixed_size, size)
        return np.frombuffer(PyBytes_FromStringAndSize(data, size), dtype=self.dtype)[0]


@cython.final
cdef class PickleSerializer(PayloadSerializer):
    """Any picklable value, as ``pickle`` bytes. Never a default: unpickling runs code chosen by
    whoever wrote the bytes, so use it only between processes that trust each other."""

    cdef int _protocol

    def __init__(self, int protocol=pickle.HIGHEST_PROTOCOL):
        self._protocol = protocol

    def __reduce__(self):
        return (PickleSerializer, (self._protocol,))

    cdef object prepare(self, object value, Payload *p):
        data = pickle.dumps(value, protocol=self._protocol)
        p.body = PyBytes_AS_STRING(data)
        p.body_size = PyBytes_GET_SIZE(data)
        return data

    cdef object read(self, const char *data, Py_ssize_t size):
        stream = io.BytesIO(PyBytes_FromStringAndSize(data, size))
        try:
            value = pickle.Unpickler(stream).load()
        except Exception as e:
            raise CorruptRecordError(f"PickleSerializer: payload is not a pickle ({e})") from e
        if stream.tell() != size:
            raise CorruptRecordError(
                f"PickleSerializer consumed {stream.tell()} of the record's {size} bytes")
        return value


SERIALIZERS = {
    "bytes": BytesSerializer,
    "byte_array": BytePrimitiveArraySerializer,
    "str": StringSerializer,
    "int32": Int32Serializer,
    "int64": Int64Serializer,
    "float64": Float64Serializer,
    "pickle": PickleSerializer,
}


def get_serializer(spec):
    """A :class:`PayloadSerializer` from an instance, a name in ``SERIALIZERS``, or a numpy dtype."""
    if isinstance(spec, PayloadSerializer):
        return spec
    if isinstance(spec, str) and spec in SERIALIZERS:
        return SERIALIZERS[spec]()
    if isinstance(spec, np.dtype):
        return NumpyRecordSerializer(spec)
    raise ValueError(f"unknown payload serializer {spec!r}: use one of {sorted(SERIALIZERS)}, "
                     f"a numpy dtype or a PayloadSerializer instance")


# --- write side ----------------------------------------------------------------------------------

cdef enum:
    BROADCAST = -1
    N_PIECES = 3
    # Records gathered per run of emit_batch, and the run size from which the GIL is released.
    RUN_MAX_RECORDS = 1024
    # Releasing the GIL costs the releasing thread up to a switch interval (5 ms) when another
    # Python thread is busy (the convoy effect), so only copies far larger than a buffer do it.
    RUN_NOGIL_BYTES = 1048576


cdef struct _Pieces:
    # The framed record as three pieces: length prefix, payload header, payload body.
    const char *ptr[N_PIECES]
    Py_ssize_t len[N_PIECES]
    int piece
    Py_ssize_t off


cdef void _copy_run(char *dst, const Payload *run, Py_ssize_t count) noexcept nogil:
    """Frame ``count`` prepared payloads back to back at ``dst`` (room checked by the caller)."""
    cdef Py_ssize_t i, length
    for i in range(count):
        length = run[i].header_size + run[i].body_size
        fn_store_be_i32(dst, <int32_t>length)
        memcpy(dst + LENGTH_BYTES, run[i].header, <size_t>run[i].header_size)
        memcpy(dst + LENGTH_BYTES + run[i].header_size, run[i].body, <size_t>run[i].body_size)
        dst += LENGTH_BYTES + length


cdef void _copy_fixed(char *dst, const char *src, Py_ssize_t item, Py_ssize_t count) noexcept nogil:
    """Frame ``count`` fixed-size records of ``item`` bytes from ``src`` at ``dst``."""
    cdef Py_ssize_t j
    for j in range(count):
        fn_store_be_i32(dst, <int32_t>item)
        memcpy(dst + LENGTH_BYTES, src, <size_t>item)
        dst += LENGTH_BYTES + item
        src += item


cdef Py_ssize_t _append_pieces(BufferBuilder b, _Pieces *r) except -1:
    """Append as much of the rest of the record as fits and commit; returns bytes appended."""
    cdef Py_ssize_t total = 0, remaining, n
    while r.piece < N_PIECES:
        remaining = r.len[r.piece] - r.off
        if remaining > 0:
            n = b.append_raw(r.ptr[r.piece] + r.off, remaining)
            r.off += n
            total += n
            if n < remaining:
                break
        r.piece += 1
        r.off = 0
    b.commit_raw()
    return total


@cython.final
cdef class SpanningRecordSerializer:
    """Frames records into the BufferBuilders of a partition's subpartitions (Flink's
    ``RecordWriter`` / ``BufferWritingResultPartition`` write path).

    ``SpanningRecordSerializer(pool, num_subpartitions, serializer, sink)``: builders come from
    ``pool`` (a :class:`~flinknet._core.pool.LocalBufferPool` with ``num_subpartitions``
    subpartitions, so per-subpartition caps apply); ``serializer`` is a :class:`PayloadSerializer`
    or a name (see :func:`get_serializer`); ``sink`` receives each new buffer's consumer and each
    finished buffer. When a call returns, its records are completely written and committed. A call
    blocks while the pool is exhausted (backpressure) and raises
    :class:`~flinknet.errors.CancelTaskError` if the pool is destroyed meanwhile.
    """

    def __init__(self, LocalBufferPool pool not None, int num_subpartitions, serializer, sink):
        if num_subpartitions <= 0:
            raise ValueError(f"num_subpartitions must be > 0, got {num_subpartitions}")
        if pool._num_subpartitions != num_subpartitions:
            raise ValueError(
                f"the pool has {pool._num_subpartitions} subpartitions, not {num_subpartitions}")
        self._pool = pool
        self._serializer = get_serializer(serializer)
        self._sink_add = sink.add_buffer_consumer
        self._sink_finished = sink.buffer_finished
        self._num_subpartitions = num_subpartitions
        self._builders = [None] * num_subpartitions
        self._broadcast_builder = None
        self.back_pressure_timer = None
        self._closed = False
        self._rejection = None

    def reject_records(self, error_factory):
        """From now on every emit raises ``error_factory()`` (None: accept records again).

        The hook a :class:`~flinknet.partition.ResultPartition` uses when it finishes or is
        released, so that record writers need no per-record check of the partition's state:
        the check costs one pointer comparison here. May be called from any thread."""
        if error_factory is not None and not callable(error_factory):
            raise TypeError("error_factory must be callable or None")
        self._rejection = error_factory

    cdef int _check_accepting(self) except -1:
        if self._rejection is not None:
            raise self._rejection()
        if self._closed:
            raise IllegalStateError("the record serializer is closed")
        return 0

    cdef int _check_target(self, Py_ssize_t target) except -1:
        if self._closed:
            raise IllegalStateError("the record serializer is closed")
        if not 0 <= target < self._num_subpartitions:
            raise ValueError(f"target subpartition {target} out of range [0, {self._num_subpartitions})")
        return 0

    # -- builders ---------------------------------------------------------------------------

    cdef BufferBuilder _new_builder(self, int target, Py_ssize_t partial, Py_ssize_t min_size,
                                    bint add_first):
        cdef MemorySegment seg
        cdef int channel = UNKNOWN_CHANNEL if target == BROADCAST else target
        cdef long long t0
        cdef BufferBuilder b
        # Switching between unicast and broadcast finishes the other mode's builders, in order.
        if target == BROADCAST:
            for i in range(self._num_subpartitions):
                if self._builders[i] is not None:
                    self._finish_builder(i)
        elif self._broadcast_builder is not None:
            self._finish_builder(BROADCAST)
        seg = self._pool.request_segment(channel)
        if seg is None:
            # Hard back-pressure: the only place emitting waits. The timer (a TimerGauge, when
            # metrics are on) is touched only here, never on the per-record path.
            timer = self.back_pressure_timer
            if timer is not None:
                timer.mark_start()
            t0 = time.perf_counter_ns()
            try:
                seg = self._pool._request_segment_blocking(channel, None)
            finally:
                self.back_pressured_ns += time.perf_counter_ns() - t0
                if timer is not None:
                    timer.mark_end()
        b = BufferBuilder.create(seg, self._pool._recycler_for(channel))
        if target == BROADCAST:
            self._broadcast_builder = b
        else:
            self._builders[target] = b
        if add_first:
            self._add_consumers(b, target, partial, min_size)
        return b

    cdef int _add_consumers(self, BufferBuilder builder, int target, Py_ssize_t partial,
                            Py_ssize_t min_size) except -1:
        cdef BufferConsumer consumer = builder.new_consumer(0)
        cdef long long desired = 0, d
        cdef int i
        if target != BROADCAST:
            d = self._sink_add(target, consumer, partial) or 0
            desired = d
        else:
            try:
                for i in range(self._num_subpartitions):
                    d = self._sink_add(i, consumer.copy(), partial) or 0
                    if d > 0 and (desired == 0 or d < desired):
                        desired = d
            finally:
                consumer.close()
        if desired > 0:
            builder.trim(<int>(desired if desired > min_size else min_size))
        return 0

    cdef int _finish_builder(self, int target) except -1:
        cdef BufferBuilder b
        cdef int n
        if target == BROADCAST:
            b = self._broadcast_builder
            self._broadcast_builder = None
        else:
            b = <BufferBuilder>self._builders[target]
            self._builders[target] = None
        if b is None:
            return 0
        n = b.finish_raw()
        if target == BROADCAST:
            self.num_bytes_out += <int64_t>n * self._num_subpartitions
            self.num_buffers_out += self._num_subpartitions
        else:
            self.num_bytes_out += n
            self.num_buffers_out += 1
        b.close()
        self._sink_finished(target, n)
        return 0

    # -- framing ----------------------------------------------------------------------------

    cdef int _write_framed(self, Payload *p, int target) except -1:
        cdef char prefix[4]
        cdef _Pieces r
        cdef Py_ssize_t length = p.header_size + p.body_size
        cdef Py_ssize_t n
        cdef BufferBuilder b
        cdef char *dst
        if length > 2147483647 - LENGTH_BYTES:
            raise ValueError(f"record of {length} bytes: the length would exceed 2 GiB")
        fn_store_be_i32(prefix, <int32_t>length)
        r.ptr[0] = prefix
        r.len[0] = LENGTH_BYTES
        r.ptr[1] = p.header
        r.len[1] = p.header_size
        r.ptr[2] = p.body
        r.len[2] = p.body_size
        r.piece = 0
        r.off = 0
        b = self._broadcast_builder if target == BROADCAST else <BufferBuilder>self._builders[target]
        if (b is not None and b._max_capacity - b._cached > length + LENGTH_BYTES
                and not b._segment._freed):
            # Fast path: the whole framed record fits in the open buffer, with room to spare.
            dst = b._segment._address + b._cached
            memcpy(dst, prefix, LENGTH_BYTES)
            if p.header_size:
                memcpy(dst + LENGTH_BYTES, p.header, <size_t>p.header_size)
            copy_memory(dst + LENGTH_BYTES + p.header_size, p.body, p.body_size)
            b._cached += <int>(length + LENGTH_BYTES)
            b.commit_raw()
            if b._cached == b._max_capacity:
                self._finish_builder(target)
            if target == BROADCAST:
                self.total_written_bytes += (length + LENGTH_BYTES) * self._num_subpartitions
            else:
                self.total_written_bytes += length + LENGTH_BYTES
            self.num_records_out += 1
            return 0
        if b is None:
            # A new record starts a new buffer: enqueue its consumer first (partial length 0).
            b = self._new_builder(target, 0, length + LENGTH_BYTES, True)
        if (b._max_capacity < b._segment._size and length + LENGTH_BYTES >= b._max_capacity - b._cached
                and not self._pool._availability._available):
            # Buffer debloating's hint yields to hard back-pressure (Flink's
            # BufferWritingResultPartition.append): the record does not fit the trimmed buffer
            # and the pool has no buffer to give, so the buffer grows to take the record and one
            # byte more (capped at its segment) instead of asking for the next buffer sooner. The
            # hint applies again to the next buffer.
            b.trim(b._max_capacity + (length + LENGTH_BYTES - (b._max_capacity - b._cached)) + 1)
        _append_pieces(b, &r)
        while r.piece < N_PIECES:
            self._finish_builder(target)
            # Continuation: append first, then enqueue with the continuation's length (Flink's
            # BufferWritingResultPartition.appendUnicastDataForRecordContinuation).
            b = self._new_builder(target, 0, 0, False)
            n = _append_pieces(b, &r)
            self._add_consumers(b, target, n, n)
        if b._cached == b._max_capacity:
            self._finish_builder(target)
        if target == BROADCAST:
            self.total_written_bytes += (length + LENGTH_BYTES) * self._num_subpartitions
        else:
            self.total_written_bytes += length + LENGTH_BYTES
        self.num_records_out += 1
        return 0

    # -- public emits -----------------------------------------------------------------------

    def emit(self, record, Py_ssize_t target):
        """Serialize ``record`` into subpartition ``target`` (Flink ``emitRecord``)."""
        cdef Payload p
        if self._closed or self._rejection is not None or not 0 <= target < self._num_subpartitions:
            self._check_accepting()
            self._check_target(target)
        _payload_init(&p)
        hold = self._serializer.prepare(record, &p)
        try:
            self._write_framed(&p, <int>target)
        finally:
            payload_release(&p)

    cdef int _flush_run(self, Payload *run, Py_ssize_t count, Py_ssize_t run_bytes, int target) except -1:
        """Copy ``count`` prepared records, known to fit, into ``target``'s open builder; the GIL is
        released for the copying when the run is large enough to be worth it."""
        cdef BufferBuilder b
        cdef MemorySegment seg
        cdef char *dst
        if count == 0:
            return 0
        b = <BufferBuilder>self._builders[target]
        seg = b._segment
        seg.check(b._cached, run_bytes)
        dst = seg._address + b._cached
        # Pinned as exported while the GIL is released: free() from elsewhere must not pull it away.
        seg._exports += 1
        try:
            if run_bytes >= RUN_NOGIL_BYTES:
                with nogil:
                    _copy_run(dst, run, count)
            else:
                _copy_run(dst, run, count)
        finally:
            seg._exports -= 1
        b._cached += <int>run_bytes
        b.commit_raw()
        self.total_written_bytes += run_bytes
        self.num_records_out += count
        if b._cached == b._max_capacity:
            self._finish_builder(target)
        return 0

    def emit_batch(self, records, targets):
        """Serialize every record of the iterable ``records``; ``targets`` is one subpartition for
        all, or a sequence (list, numpy array) of one per record.

        With one target, records that fit whole in the open buffer are gathered into runs and
        copied in one go, without the GIL for runs of 4 KiB or more; the others take the spanning
        path.
        """
        cdef Payload p
        cdef Py_ssize_t t
        cdef bint single = isinstance(targets, int)
        cdef Py_ssize_t i = 0, count = 0, run_bytes = 0, framed, j
        cdef Payload *run = NULL
        cdef Payload *cur
        cdef BufferBuilder b
        cdef list holds
        cdef const int64_t[::1] tv
        self._check_accepting()
        if single:
            t = targets
            self._check_target(t)
        else:
            tarr = np.ascontiguousarray(targets, dtype=np.int64)
            if tarr.ndim != 1:
                raise ValueError("targets must be an int or one-dimensional")
            tv = tarr           # typed view: reading a target is a C load, not a numpy scalar
            for record in records:
                if i >= tv.shape[0]:
                    raise ValueError(f"{tv.shape[0]} targets for more records")
                t = tv[i]
                self._check_target(t)
                _payload_init(&p)
                hold = self._serializer.prepare(record, &p)
                try:
                    self._write_framed(&p, <int>t)
                finally:
                    payload_release(&p)
                i += 1
            if i != tv.shape[0]:
                raise ValueError(f"{tv.shape[0]} targets for {i} records")
            return i
        run = <Payload *>PyMem_Malloc(RUN_MAX_RECORDS * sizeof(Payload))
        if run == NULL:
            raise MemoryError()
        holds = []
        try:
            for record in records:
                cur = &run[count]
                _payload_init(cur)
                hold = self._serializer.prepare(record, cur)
                framed = LENGTH_BYTES + cur.header_size + cur.body_size
                b = <BufferBuilder>self._builders[t]
                if (b is not None and count < RUN_MAX_RECORDS - 1
                        and run_bytes + framed <= b._max_capacity - b._cached):
                    # The payload may point into the record (or into what prepare() made): keep
                    # both alive until the run is copied, even if `records` is a generator.
                    holds.append(record)
                    if hold is not None:
                        holds.append(hold)
                    count += 1
                    run_bytes += framed
                    i += 1
                    continue
                # This record does not fit whole: copy the run so far, then the spanning path.
                try:
                    self._flush_run(run, count, run_bytes, <int>t)
                finally:
                    for j in range(count):
                        payload_release(&run[j])
                    count = 0
                    run_bytes = 0
                    holds.clear()
                try:
                    self._write_framed(cur, <int>t)
                finally:
                    payload_release(cur)
                i += 1
            self._flush_run(run, count, run_bytes, <int>t)
        finally:
            for j in range(count):
                payload_release(&run[j])
            PyMem_Free(run)
        return i

    def emit_array(self, array, targets):
        """Serialize each element of a one-dimensional numpy array of fixed-width records (its raw
        ``itemsize`` bytes, as :class:`NumpyRecordSerializer` writes them). With one ``target``
        the records are copied into builders in runs, without the GIL for large runs."""
        cdef Py_ssize_t n, i = 0, k, j, room, item, framed
        cdef const char *src
        cdef char *dst
        cdef Py_ssize_t t
        cdef BufferBuilder b
        cdef Payload p
        cdef const int64_t[::1] tv
        self._check_accepting()
        arr = np.ascontiguousarray(array)
        if arr.ndim != 1 or arr.dtype.hasobject:
            raise ValueError("emit_array needs a one-dimensional array without Python objects")
        n = arr.shape[0]
        item = arr.dtype.itemsize
        framed = item + LENGTH_BYTES
        if not isinstance(targets, int):
            tarr = np.ascontiguousarray(targets, dtype=np.int64)
            if tarr.shape != (n,):
                raise ValueError(f"targets must have shape ({n},), got {tarr.shape}")
            if n == 0:
                return 0
            tv = tarr
            for i in range(n):
                self._check_target(tv[i])
            # `arr` (contiguous, kept alive here) holds the records: payloads point into it.
            src = <const char *><size_t>arr.ctypes.data
            for i in range(n):
                _payload_init(&p)
                p.body = src + i * item
                p.body_size = item
                self._write_framed(&p, <int>tv[i])
            return n
        t = targets
        self._check_target(t)
        src = <const char *><size_t>arr.ctypes.data
        while i < n:
            b = <BufferBuilder>self._builders[t]
            room = (b._max_capacity - b._cached) if b is not None else 0
            k = room // framed
            if k == 0:
                # No whole record fits (or no builder): the general, spanning path for one record.
                _payload_init(&p)
                p.body = src + i * item
                p.body_size = item
                self._write_framed(&p, <int>t)
                i += 1
                continue
            if k > n - i:
                k = n - i
            b._segment.check(b._cached, k * framed)
            dst = b._segment._address + b._cached
            # Pinned as exported while the GIL may be released for the copying.
            b._segment._exports += 1
            try:
                if k * framed >= RUN_NOGIL_BYTES:
                    with nogil:
                        _copy_fixed(dst, src + i * item, item, k)
                else:
                    _copy_fixed(dst, src + i * item, item, k)
            finally:
                b._segment._exports -= 1
            b._cached += <int>(k * framed)
            b.commit_raw()
            self.total_written_bytes += k * framed
            self.num_records_out += k
            i += k
            if b._cached == b._max_capacity:
                self._finish_builder(<int>t)
        return n

    def broadcast_record(self, record):
        """Serialize ``record`` once into a buffer shared by all subpartitions (Flink's
        BroadcastRecordWriter: each subpartition gets a ``copy()`` of the buffer's consumer)."""
        cdef Payload p
        if self._closed or self._rejection is not None:
            self._check_accepting()
        _payload_init(&p)
        hold = self._serializer.prepare(record, &p)
        try:
            self._write_framed(&p, BROADCAST)
        finally:
            payload_release(&p)

    def broadcast_emit(self, record):
        """Serialize ``record`` once and append it to every subpartition's own buffer (Flink's
        ChannelSelectorRecordWriter.broadcastEmit, e.g. watermarks on keyed edges)."""
        cdef Payload p
        cdef int i
        if self._closed or self._rejection is not None:
            self._check_accepting()
        _payload_init(&p)
        hold = self._serializer.prepare(record, &p)
        try:
            for i in range(self._num_subpartitions):
                self._write_framed(&p, i)
            # One record emitted, whatever the number of copies (Flink's numRecordsOut).
            self.num_records_out -= self._num_subpartitions - 1
        finally:
            payload_release(&p)

    # -- finishing --------------------------------------------------------------------------

    def finish_unicast_builder(self, Py_ssize_t target):
        """Finish the open buffer of ``target`` (before an event, on finish)."""
        self._check_target(target)
        self._finish_builder(<int>target)

    def finish_broadcast_builder(self):
        """Finish the open shared broadcast buffer."""
        self._finish_builder(BROADCAST)

    def finish_all(self):
        """Finish every open buffer: the broadcast one and all unicast ones (Flink does this before
        every event, so events never share a buffer with records)."""
        self._finish_builder(BROADCAST)
        for i in range(self._num_subpartitions):
            self._finish_builder(i)

    def has_open_builder(self, Py_ssize_t target):
        """Whether ``target`` has an unfinished buffer (-1: the broadcast buffer)."""
        if target == BROADCAST:
            return self._broadcast_builder is not None
        self._check_target(target)
        return self._builders[target] is not None

    def close(self):
        """Drop open builders without finishing them (release or cancellation). Idempotent."""
        cdef BufferBuilder b
        if self._closed:
            return
        self._closed = True
        if self._broadcast_builder is not None:
            self._broadcast_builder.close()
            self._broadcast_builder = None
        for i in range(self._num_subpartitions):
            b = <BufferBuilder>self._builders[i]
            if b is not None:
                self._builders[i] = None
                b.close()

    @property
    def serializer(self):
        """The payload serializer."""
        return self._serializer

    @property
    def num_subpartitions(self):
        """Number of subpartitions."""
        return self._num_subpartitions


# --- read side -----------------------------------------------------------------------------------

class DeserializationResult(enum.IntEnum):
    """What :meth:`RecordDeserializer.get_next_record` produced (Flink's ``DeserializationResult``)."""

    PARTIAL_RECORD = 0
    INTERMEDIATE_RECORD_FROM_BUFFER = 1
    LAST_RECORD_FROM_BUFFER = 2

    @property
    def is_full_record(self):
        """A whole record was returned."""
        return self is not DeserializationResult.PARTIAL_RECORD

    @property
    def is_buffer_consumed(self):
        """The buffer is used up (and recycled): feed the next one."""
        return self is not DeserializationResult.INTERMEDIATE_RECORD_FROM_BUFFER


cdef object _PARTIAL = DeserializationResult.PARTIAL_RECORD
cdef object _INTERMEDIATE = DeserializationResult.INTERMEDIATE_RECORD_FROM_BUFFER
cdef object _LAST = DeserializationResult.LAST_RECORD_FROM_BUFFER

cdef enum _Status:
    ST_PARTIAL = 0
    ST_INTERMEDIATE = 1
    ST_LAST = 2


@cython.final
@cython.no_gc
cdef class _RecordView:
    """Exports ``size`` read-only bytes at ``ptr`` for a memoryview handed to the user (internal)."""

    # What keeps the memory alive: the network Buffer (whose segment counts the export, so it
    # cannot be recycled while the view lives) or the deserializer owning the spanning array.
    cdef object owner
    cdef MemorySegment segment
    cdef const char *ptr
    cdef Py_ssize_t size
    # Live exports of this object (the memoryview handed out, and anything derived from it).
    cdef Py_ssize_t exports

    def __getbuffer__(self, Py_buffer *view, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("record views are read-only")
        PyBuffer_FillInfo(view, self, <void *>self.ptr, self.size, 1, flags)
        self.exports += 1
        if self.segment is not None:
            self.segment._exports += 1

    def __releasebuffer__(self, Py_buffer *view):
        self.exports -= 1
        if self.segment is not None:
            self.segment._exports -= 1


@cython.final
cdef class RecordDeserializer:
    """Reassembles records from a channel's buffers (Flink's SpillingAdaptiveSpanningRecordDeserializer).

    ``RecordDeserializer(serializer="bytes", spilling_threshold=5 MiB, max_record_length=1 GiB,
    tmp_dirs=None, channel=None)``. Feed a buffer with :meth:`set_next_buffer` (the deserializer
    takes over one reference) and call :meth:`get_next_record` until the result says the buffer is
    consumed; the deserializer recycles each buffer as soon as its bytes are used. Records longer
    than ``spilling_threshold`` are gathered in a temporary file instead of memory. One
    deserializer per input channel; not thread-safe.

    Stricter than Flink: a negative length, a length above ``max_record_length`` or a payload the
    serializer does not consume exactly raises :class:`~flinknet.errors.CorruptRecordError`
    (naming ``channel`` and the stream offset) before anything is allocated for it.
    """

    def __cinit__(self):
        self._span = NULL
        self._span_capacity = 0
        self._record_length = -1
        self._length_bytes_read = 0

    def __init__(self, serializer="bytes", Py_ssize_t spilling_threshold=DEFAULT_SPILL_THRESHOLD,
                 Py_ssize_t max_record_length=DEFAULT_MAX_RECORD_LENGTH, tmp_dirs=None, channel=None):
        if spilling_threshold < MIN_SPILL_THRESHOLD:
            raise ValueError(f"spilling_threshold must be >= {MIN_SPILL_THRESHOLD} bytes")
        if not 0 <= max_record_length <= 2147483647:
            raise ValueError("max_record_length must be in [0, 2**31 - 1]")
        self._serializer = get_serializer(serializer)
        self._direct_bytes = type(self._serializer) is BytesSerializer
        self._span_bytes = None
        self._spill_threshold = spilling_threshold
        self._max_record_length = max_record_length
        self._tmp_dirs = list(tmp_dirs) if tmp_dirs is not None else [tempfile.gettempdir()]
        self._channel = channel
        self._buffer = None
        self._pos = 0
        self._limit = 0
        self._accumulated = 0
        self._spill_file = None
        self._spill_path = None
        self._stream_offset = 0
        self._pending_recycle = None
        self._last_view = None
        self._last_exporter = None
        self._num_records = 0

    def __dealloc__(self):
        if self._span != NULL:
            PyMem_Free(self._span)
            self._span = NULL

    # -- housekeeping -----------------------------------------------------------------------

    cdef int _settle(self) except -1:
        """Invalidate the last view and recycle a buffer whose recycle waited for it.

        Raises BufferError, changing nothing else, while a view derived from the last record view
        (a slice, numpy.frombuffer, ...) is alive: the memory under it is about to be reused.
        """
        cdef _RecordView exporter
        if self._last_view is not None:
            self._last_view.release()
            self._last_view = None
        if self._last_exporter is not None:
            exporter = <_RecordView>self._last_exporter
            if exporter.exports > 0:
                raise BufferError(
                    f"{exporter.exports} view(s) derived from the last record view are still "
                    f"alive; release them before the next call on this deserializer")
            self._last_exporter = None
        if self._pending_recycle is not None:
            self._pending_recycle.release()
            self._pending_recycle = None
        if self._span_capacity > 16 * INITIAL_SPANNING_CAPACITY * 1024 and self._record_length < 0:
            # Give back the memory of a past huge record (Flink shrinks to 1 KiB after each one).
            PyMem_Free(self._span)
            self._span = NULL
            self._span_capacity = 0
        return 0

    cdef int _recycle_current(self) except -1:
        cdef Buffer b = self._buffer
        self._buffer = None
        self._pos = self._limit = 0
        if b is not None:
            b.release()
        return 0

    cdef int _reset_spanning(self) except -1:
        self._record_length = -1
        self._length_bytes_read = 0
        self._accumulated = 0
        self._span_bytes = None
        if self._spill_file is not None:
            f, path = self._spill_file, self._spill_path
            self._spill_file = self._spill_path = None
            try:
                f.close()
            finally:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        return 0

    cdef int _check_length(self, int64_t length, int64_t offset) except -1:
        if length < 0 or length > self._max_record_length:
            raise CorruptRecordError(
                f"corrupt record length {length} at offset {offset} of channel "
                f"{self._channel!r} (allowed: 0..{self._max_record_length})",
                self._channel, offset)
        return 0

    def _open_spill_file(self):
        last_error = None
        for d in self._tmp_dirs:
            for _ in range(10):
                path = os.path.join(d, os.urandom(20).hex() + ".inputchannel")
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    continue
                except OSError as e:
                    last_error = e
                    break
                self._spill_file = os.fdopen(fd, "w+b", buffering=2 * 1024 * 1024)
                self._spill_path = path
                return
        raise OSError(f"Could not find a unique file channel name in {self._tmp_dirs}: {last_error}")

    # -- feeding ----------------------------------------------------------------------------

    def set_next_buffer(self, Buffer buffer not None):
        """Feed the next buffer of the channel; the deserializer owns one reference of it.

        Only after the previous buffer was reported consumed.
        """
        cdef const char *data
        cdef Py_ssize_t start, end
        self._settle()
        if self._buffer is not None:
            raise IllegalStateError("set_next_buffer before the previous buffer was consumed")
        if buffer.root()._ref_count <= 0:
            raise IllegalStateError("cannot deserialize a recycled buffer")
        buffer._segment.check(0, 0)
        self._buffer = buffer
        start = buffer._reader_index
        end = buffer._writer_index
        self._pos = start
        self._limit = end
        if self._record_length >= 0 or self._length_bytes_read > 0:
            data = buffer.data() + start
            try:
                self._append_to_spanning(data, end - start)
            except BaseException:
                self._recycle_current()
                raise

    cdef int _append_to_spanning(self, const char *data, Py_ssize_t n) except -1:
        cdef Py_ssize_t take, needed, new_cap
        cdef char *grown
        cdef Py_ssize_t consumed = 0
        if self._length_bytes_read < LENGTH_BYTES:
            take = LENGTH_BYTES - self._length_bytes_read
            if take > n:
                take = n
            memcpy(self._length_bytes + self._length_bytes_read, data, <size_t>take)
            self._length_bytes_read += <int>take
            consumed += take
            self._stream_offset += take
            if self._length_bytes_read < LENGTH_BYTES:
                self._pos += consumed
                return 0
            self._check_length(fn_load_be_i32(self._length_bytes), self._stream_offset - LENGTH_BYTES)
            self._record_length = fn_load_be_i32(self._length_bytes)
            self._accumulated = 0
        take = <Py_ssize_t>(self._record_length - self._accumulated)
        if take > n - consumed:
            take = n - consumed
        if take > 0:
            if self._record_length > self._spill_threshold:
                if self._spill_file is None:
                    self._open_spill_file()
                self._spill_file.write(PyBytes_FromStringAndSize(data + consumed, take))
            elif self._direct_bytes:
                # the record's own bytes object, filled in place before anyone else sees it
                if self._span_bytes is None:
                    self._span_bytes = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>self._record_length)
                copy_memory(PyBytes_AS_STRING(self._span_bytes) + self._accumulated, data + consumed, take)
            else:
                needed = <Py_ssize_t>self._record_length
                if needed > self._span_capacity:
                    # Grow to the record's length at once: it was checked against the maximum.
                    new_cap = needed if needed > 2 * self._span_capacity else 2 * self._span_capacity
                    if new_cap < INITIAL_SPANNING_CAPACITY:
                        new_cap = INITIAL_SPANNING_CAPACITY
                    grown = <char *>PyMem_Realloc(self._span, <size_t>new_cap)
                    if grown == NULL:
                        raise MemoryError(f"cannot hold a spanning record of {needed} bytes")
                    self._span = grown
                    self._span_capacity = new_cap
                copy_memory(self._span + self._accumulated, data + consumed, take)
            self._accumulated += take
            consumed += take
            self._stream_offset += take
        # Bytes after a completed record stay in the buffer: the non-spanning view continues there.
        self._pos += consumed
        return 0

    # -- reading ----------------------------------------------------------------------------

    cdef int _next(self, bint as_view) except -1:
        cdef const char *base
        cdef Py_ssize_t remaining, take
        cdef int32_t length
        cdef int64_t record_offset
        cdef _RecordView v
        cdef object value
        self._out = None
        if self._buffer is None:
            raise IllegalStateError("get_next_record without a buffer: call set_next_buffer first")
        base = self._buffer.data()
        # 1. A spanning record (or length prefix) is in progress.
        if self._record_length >= 0 or self._length_bytes_read > 0:
            if self._record_length >= 0 and self._accumulated >= self._record_length:
                record_offset = self._stream_offset - self._record_length - LENGTH_BYTES
                if self._spill_file is not None:
                    self._spill_file.flush()
                    self._spill_file.seek(0)
                    data = self._spill_file.read()
                    if as_view:
                        value = memoryview(data)
                    else:
                        try:
                            value = self._serializer.read(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
                        except CorruptRecordError as e:
                            e.channel, e.offset = self._channel, record_offset
                            raise
                elif self._direct_bytes:
                    # gathered in place (a record of 0 bytes never got its object)
                    value = self._span_bytes if self._span_bytes is not None else b""
                    if as_view:
                        value = memoryview(value)
                elif as_view:
                    v = _RecordView.__new__(_RecordView)
                    v.owner = self
                    v.segment = None
                    v.ptr = self._span
                    v.size = <Py_ssize_t>self._record_length
                    value = memoryview(v)
                    self._last_exporter = v
                else:
                    try:
                        value = self._serializer.read(self._span, <Py_ssize_t>self._record_length)
                    except CorruptRecordError as e:
                        e.channel, e.offset = self._channel, record_offset
                        raise
                self._reset_spanning()
                self._out = value
                self._num_records += 1
                if as_view:
                    self._last_view = value
                if self._pos < self._limit:
                    return ST_INTERMEDIATE
                self._finish_buffer(as_view)
                return ST_LAST
            # Still incomplete: everything in the buffer went into the spanning part.
            self._recycle_current()
            return ST_PARTIAL
        remaining = self._limit - self._pos
        # 2. A whole length prefix in this buffer.
        if remaining >= LENGTH_BYTES:
            length = fn_load_be_i32(base + self._pos)
            self._check_length(length, self._stream_offset)
            if length <= remaining - LENGTH_BYTES:
                record_offset = self._stream_offset
                if as_view:
                    v = _RecordView.__new__(_RecordView)
                    v.owner = self._buffer
                    v.segment = self._buffer._segment
                    v.ptr = base + self._pos + LENGTH_BYTES
                    v.size = length
                    value = memoryview(v)
                    self._last_view = value
                    self._last_exporter = v
                else:
                    try:
                        value = self._serializer.read(base + self._pos + LENGTH_BYTES, length)
                    except CorruptRecordError as e:
                        e.channel, e.offset = self._channel, record_offset
                        raise
                self._pos += LENGTH_BYTES + length
                self._stream_offset += LENGTH_BYTES + length
                self._out = value
                self._num_records += 1
                if self._pos < self._limit:
                    return ST_INTERMEDIATE
                self._finish_buffer(as_view)
                return ST_LAST
            # The record continues in later buffers.
            self._length_bytes_read = 0
            self._append_to_spanning(base + self._pos, remaining)
            self._recycle_current()
            return ST_PARTIAL
        # 3. 0-3 bytes: the start of a split length prefix (or nothing).
        if remaining > 0:
            self._append_to_spanning(base + self._pos, remaining)
        self._recycle_current()
        return ST_PARTIAL

    cdef int _finish_buffer(self, bint as_view) except -1:
        if as_view:
            # A view may point into this buffer: recycle it on the next call instead.
            self._pending_recycle = self._buffer
            self._buffer = None
            self._pos = self._limit = 0
        else:
            self._recycle_current()
        return 0

    def get_next_record(self):
        """``(result, record)``: the next record (None for PARTIAL_RECORD), deserialized."""
        cdef object record
        cdef int status
        self._settle()
        status = self._next(False)
        record = self._out
        self._out = None
        return (_PARTIAL, _INTERMEDIATE, _LAST)[status], record

    def get_next_record_view(self):
        """``(result, memoryview)``: the next record's payload bytes without a copy.

        The view is valid until the next call on this deserializer, which releases it (and raises
        BufferError if views derived from it are still alive).
        """
        cdef object record
        cdef int status
        self._settle()
        status = self._next(True)
        record = self._out
        self._out = None
        return (_PARTIAL, _INTERMEDIATE, _LAST)[status], record

    def read_records(self, Buffer buffer=None):
        """Feed ``buffer`` (if given) and return the list of records completed by it, in order.

        The buffer is consumed (and recycled) when this returns; records spanning into later
        buffers come with the call that completes them.
        """
        cdef list out = []
        cdef object record
        cdef int status
        cdef const char *base
        cdef Py_ssize_t pos, limit
        cdef int32_t length
        if buffer is not None:
            self.set_next_buffer(buffer)
        elif self._buffer is None:
            self._settle()
            return out
        while True:
            if (self._direct_bytes and self._record_length < 0 and self._length_bytes_read == 0
                    and self._buffer is not None):
                # The common case, in one tight loop: whole "bytes" records inside the buffer
                # (no state machine per record). What it stops at (a record that spans on, a
                # length to reject, the buffer's end) is _next's, as before.
                base = self._buffer.data()
                pos = self._pos
                limit = self._limit
                while limit - pos >= LENGTH_BYTES:
                    length = fn_load_be_i32(base + pos)
                    if length < 0 or length > self._max_record_length or length > limit - pos - LENGTH_BYTES:
                        break
                    out.append(PyBytes_FromStringAndSize(base + pos + LENGTH_BYTES, length))
                    pos += LENGTH_BYTES + length
                    self._pos = pos
                    self._stream_offset += LENGTH_BYTES + length
                    self._num_records += 1
                if pos == limit:
                    self._finish_buffer(False)
                    return out
            status = self._next(False)
            record = self._out
            self._out = None
            if status != ST_PARTIAL:
                out.append(record)
            if status != ST_INTERMEDIATE:
                return out

    def read_array(self, Buffer buffer, dtype):
        """Like :meth:`read_records` for fixed-width numpy records: one array of ``dtype``.

        Records wholly inside the buffer are copied straight into the array in C; one that spans
        buffers goes through the spanning path. Every record must have exactly ``dtype.itemsize``
        bytes (else CorruptRecordError).
        """
        cdef Py_ssize_t item, count = 0, cap
        cdef char *out_ptr
        cdef const char *base
        cdef int32_t length
        cdef int status
        cdef Py_buffer pb
        dt = np.dtype(dtype)
        item = dt.itemsize
        if item <= 0 or dt.hasobject:
            raise ValueError(f"{dt} is not a fixed-width dtype")
        self.set_next_buffer(buffer)
        # At most: one record completed by this buffer's head, plus every whole record in it.
        cap = (self._limit - self._pos) // (item + LENGTH_BYTES) + 2
        out = np.empty(cap, dtype=dt)
        # The array's memory (a fresh C-contiguous array, alive and never resized while it is
        # filled), through the buffer protocol: ``out.ctypes.data`` cost more than the copies.
        PyObject_GetBuffer(out, &pb, PyBUF_SIMPLE | PyBUF_WRITABLE)
        out_ptr = <char *>pb.buf
        PyBuffer_Release(&pb)
        while True:
            if self._record_length < 0 and self._length_bytes_read == 0:
                base = self._buffer.data()
                while self._limit - self._pos >= LENGTH_BYTES:
                    length = fn_load_be_i32(base + self._pos)
                    if length != item:
                        self._check_length(length, self._stream_offset)
                        if length <= self._limit - self._pos - LENGTH_BYTES or length < item:
                            raise CorruptRecordError(
                                f"a record of {length} bytes at offset {self._stream_offset} in a "
                                f"stream of {dt} records of {item} bytes (channel {self._channel!r})",
                                self._channel, self._stream_offset)
                    if length > self._limit - self._pos - LENGTH_BYTES:
                        break
                    memcpy(out_ptr + count * item, base + self._pos + LENGTH_BYTES, <size_t>item)
                    count += 1
                    self._pos += LENGTH_BYTES + item
                    self._stream_offset += LENGTH_BYTES + item
                    self._num_records += 1
                if self._pos == self._limit:
                    self._recycle_current()
                    break
            status = self._next(True)
            view = self._out
            self._out = None
            if status != ST_PARTIAL:
                if len(view) != item:
                    rec_len = len(view)
                    offset = self._stream_offset - rec_len - LENGTH_BYTES
                    del view
                    self._settle()
                    raise CorruptRecordError(
                        f"a record of {rec_len} bytes at offset {offset} in a stream of {dt} records "
                        f"of {item} bytes (channel {self._channel!r})", self._channel, offset)
                PyObject_GetBuffer(view, &pb, PyBUF_SIMPLE)
                memcpy(out_ptr + count * item, pb.buf, <size_t>item)
                PyBuffer_Release(&pb)
                count += 1
            del view
            if status != ST_INTERMEDIATE:
                break
        self._settle()
        return out[:count]

    def clear(self):
        """Recycle the current buffer and drop any partial record (end of partition, failure).

        Raises BufferError (and keeps the buffer) while a view derived from a record view lives.
        """
        self._settle()
        self._recycle_current()
        self._reset_spanning()

    def get_unconsumed_bytes(self):
        """The bytes received but not yet returned as records, as Flink's getUnconsumedBuffer
        lays them out: a partial length prefix, or ``[len][bytes gathered so far]``, then the
        unread rest of the current buffer."""
        parts = []
        if self._record_length >= 0:
            parts.append(PyBytes_FromStringAndSize(self._length_bytes, LENGTH_BYTES))
            if self._spill_file is not None:
                self._spill_file.flush()
                self._spill_file.seek(0)
                parts.append(self._spill_file.read())
                self._spill_file.seek(0, 2)
            elif self._direct_bytes:
                if self._accumulated:
                    parts.append(PyBytes_FromStringAndSize(PyBytes_AS_STRING(self._span_bytes),
                                                           <Py_ssize_t>self._accumulated))
            else:
                parts.append(PyBytes_FromStringAndSize(self._span, <Py_ssize_t>self._accumulated))
        elif self._length_bytes_read > 0:
            parts.append(PyBytes_FromStringAndSize(self._length_bytes, self._length_bytes_read))
        if self._buffer is not None and self._pos < self._limit:
            parts.append(PyBytes_FromStringAndSize(self._buffer.data() + self._pos, self._limit - self._pos))
        return b"".join(parts)

    @property
    def has_unfinished_data(self):
        """True while a partial record or unread bytes are held."""
        return (self._record_length >= 0 or self._length_bytes_read > 0
                or (self._buffer is not None and self._pos < self._limit))

    @property
    def num_records(self):
        """Records returned so far."""
        return self._num_records

    @property
    def stream_offset(self):
        """Bytes of the channel's stream consumed so far."""
        return self._stream_offset

    @property
    def is_spilling(self):
        """True while a record above the spilling threshold is being gathered on disk."""
        return self._spill_file is not None

    @property
    def serializer(self):
        """The payload serializer."""
        return self._serializer
