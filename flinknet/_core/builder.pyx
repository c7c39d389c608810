"""Single-writer/single-reader buffer hand-off: ``BufferBuilder`` and ``BufferConsumer`` (Flink's ``BufferBuilder`` / ``BufferConsumer``).

Name map (Flink → flinknet):

=====================================  ==============================================
``new BufferBuilder(segment, recycler)``  :class:`BufferBuilder` ``(segment, recycler)``
``append(ByteBuffer)``                 ``append(data, offset=0)`` → bytes copied
``appendAndCommit(ByteBuffer)``        ``append_and_commit(data, offset=0)`` → bytes copied
``commit()`` / ``finish()``            ``commit()`` / ``finish()`` → total bytes
``isFinished()`` / ``isFull()``        ``is_finished`` / ``is_full``
``getWritableBytes()`` / ``getCommittedBytes()``  ``writable_bytes`` / ``committed_bytes``
``getMaxCapacity()`` / ``trim(n)``     ``max_capacity`` / ``trim(n)``
``createBufferConsumer()``             ``create_buffer_consumer()``
``createBufferConsumerFromBeginning()``  ``create_buffer_consumer_from_beginning()``
``getDataType``/``setDataType``        ``data_type``
``close()``                            ``close()`` (also on garbage collection, and ``with``)
``new BufferConsumer(buffer, size)``   :class:`BufferConsumer` ``(buffer, size)`` (finished, e.g. events)
``build()`` / ``skip(n)``              ``build()`` / ``skip(n)``
``isFinished()`` / ``isDataAvailable()``  ``is_finished`` / ``is_data_available``
``copy()`` / ``copyWithReaderPosition(p)``  ``copy()`` / ``copy_with_reader_position(p)``
``getWrittenBytes()`` / ``getCurrentReaderPosition()``  ``written_bytes`` / ``current_reader_position``
``isBuffer()`` / ``getDataType()`` / ``isRecycled()``  ``is_buffer`` / ``data_type`` / ``is_recycled``
=====================================  ==============================================
"""

cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_CheckExact, PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memcpy

from flinknet._core.buffer cimport (
    Buffer, NetworkBuffer, BufferRecycler, DT_DATA_BUFFER, DTF_BUFFER, data_type_flags,
    check_data_type, to_int,
)
from flinknet._core.memory cimport MemorySegment, copy_memory, GIL_RELEASE_THRESHOLD

from flinknet.errors import IllegalStateError

from flinknet._core.buffer import DataType


@cython.final
@cython.no_gc
@cython.freelist(256)
cdef class PositionMarker:
    """Shared writer position (internal)."""

    def __init__(self):
        raise TypeError("PositionMarker is internal")


cdef inline PositionMarker _new_marker():
    cdef PositionMarker m = PositionMarker.__new__(PositionMarker)
    m.position = 0
    return m


@cython.final
@cython.no_gc
@cython.freelist(256)
cdef class BufferBuilder:
    """Appends bytes into one network buffer for a :class:`BufferConsumer` to read (Flink ``BufferBuilder``).

    Not thread-safe: one writer thread. Appended bytes become visible to the consumer only on
    :meth:`commit`. ``BufferBuilder(segment, recycler)`` takes over one hand-out of ``segment``;
    pools hand builders out ready-made (``LocalBufferPool.request_buffer_builder``).
    """

    def __init__(self, MemorySegment segment not None, BufferRecycler recycler not None):
        if self._buffer is not None:
            raise IllegalStateError("BufferBuilder already initialized")
        segment.check(0, 0)
        self._init(segment, recycler)

    cdef void _init(self, MemorySegment segment, BufferRecycler recycler):
        self._buffer = NetworkBuffer.create(segment, recycler, DT_DATA_BUFFER, 0)
        self._segment = segment
        self._marker = _new_marker()
        self._cached = 0
        self._max_capacity = <int>segment._size
        self._finished = False
        self._consumer_created = False
        self._closed = False

    @staticmethod
    cdef BufferBuilder create(MemorySegment segment, BufferRecycler recycler):
        cdef BufferBuilder b = BufferBuilder.__new__(BufferBuilder)
        b._init(segment, recycler)
        return b

    def __dealloc__(self):
        # A builder dropped without close() still gives its reference back.
        if not self._closed and self._buffer is not None and self._buffer._ref_count > 0:
            self._closed = True
            try:
                self._buffer.release()
            except BaseException:
                pass

    # -- writing ----------------------------------------------------------------------------

    cdef Py_ssize_t append_raw(self, const char *src, Py_ssize_t n) except -1:
        cdef Py_ssize_t room
        if self._finished or self._closed:
            raise IllegalStateError(
                "BufferBuilder is already finished" if self._finished else "BufferBuilder is closed")
        room = self._max_capacity - self._cached
        if n > room:
            n = room
        if n <= 0:
            return 0
        # Also catches a segment freed under the builder.
        self._segment.check(self._cached, n)
        if n >= GIL_RELEASE_THRESHOLD:
            # The GIL is released for this copy: pin the segment so free() cannot pull it away.
            self._segment._exports += 1
            try:
                copy_memory(self._segment._address + self._cached, src, n)
            finally:
                self._segment._exports -= 1
        else:
            memcpy(self._segment._address + self._cached, src, <size_t>n)
        self._cached += <int>n
        return n

    cdef Py_ssize_t _append_object(self, object data, Py_ssize_t offset) except -1:
        cdef Py_buffer view
        cdef Py_ssize_t n
        if PyBytes_CheckExact(data):
            n = PyBytes_GET_SIZE(data)
            if offset < 0 or offset > n:
                raise IndexError(f"offset {offset} out of bounds for {n} bytes")
            return self.append_raw(PyBytes_AS_STRING(data) + offset, n - offset)
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if offset < 0 or offset > view.len:
                raise IndexError(f"offset {offset} out of bounds for {view.len} bytes")
            return self.append_raw(<const char *>view.buf + offset, view.len - offset)
        finally:
            PyBuffer_Release(&view)

    def append(self, data, Py_ssize_t offset=0):
        """Copy as much of ``data[offset:]`` as fits (any contiguous buffer); not yet visible.

        Returns the number of bytes copied; continue with ``offset + copied`` into the next
        builder when it is less than what was left. Raises if the builder is finished or closed.
        """
        return self._append_object(data, offset)

    def append_and_commit(self, data, Py_ssize_t offset=0):
        """:meth:`append` then :meth:`commit`; returns the number of bytes copied."""
        cdef Py_ssize_t n = self._append_object(data, offset)
        self._marker.position = self._cached
        return n

    def commit(self):
        """Make every appended byte visible to the consumer."""
        if not self._finished:
            self._marker.position = self._cached

    cdef int finish_raw(self) except -1:
        if not self._finished:
            self._finished = True
            self._marker.position = -self._cached if self._cached > 0 else FINISHED_EMPTY
        return self._cached

    def finish(self):
        """Mark the buffer complete (and commit); returns its size in bytes. Idempotent."""
        return self.finish_raw()

    def trim(self, Py_ssize_t new_size):
        """Lower the capacity for later appends: ``min(max(new_size, written), segment size)``."""
        cdef Py_ssize_t cap = new_size if new_size > self._cached else self._cached
        self._max_capacity = <int>(cap if cap < self._segment._size else self._segment._size)

    # -- consumers --------------------------------------------------------------------------

    cdef BufferConsumer new_consumer(self, int reader_position):
        if self._consumer_created:
            raise IllegalStateError("Two BufferConsumer shouldn't exist for one BufferBuilder")
        if self._closed:
            raise IllegalStateError("BufferBuilder is closed")
        self._consumer_created = True
        self._buffer.retain_ref()
        return BufferConsumer.create(self._buffer, self._marker, self._marker.position, reader_position)

    def create_buffer_consumer(self):
        """The consumer of this builder, reading from the current position. Allowed once."""
        return self.new_consumer(self._cached)

    def create_buffer_consumer_from_beginning(self):
        """The consumer of this builder, reading from byte 0. Allowed once."""
        return self.new_consumer(0)

    def close(self):
        """Drop the builder's reference to the buffer (idempotent)."""
        if not self._closed:
            self._closed = True
            self._buffer.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- state ------------------------------------------------------------------------------

    @property
    def is_finished(self):
        """True after :meth:`finish`."""
        return self._finished

    @property
    def is_full(self):
        """True when the appended bytes reached the capacity."""
        return self._cached == self._max_capacity

    @property
    def writable_bytes(self):
        """Bytes that can still be appended."""
        return self._max_capacity - self._cached

    @property
    def committed_bytes(self):
        """Bytes appended so far (Flink ``getCommittedBytes`` returns the writer's cached position)."""
        return self._cached

    @property
    def max_capacity(self):
        """Current capacity (segment size unless trimmed)."""
        return self._max_capacity

    @property
    def data_type(self):
        """The DataType the built buffers carry (default ``DATA_BUFFER``)."""
        return self._buffer.data_type

    @data_type.setter
    def data_type(self, value):
        self._buffer._data_type = check_data_type(value)

    @property
    def is_closed(self):
        """True after :meth:`close`."""
        return self._closed

    def __repr__(self):
        return (f"<BufferBuilder {self._cached}/{self._max_capacity} bytes"
                f"{' finished' if self._finished else ''}{' closed' if self._closed else ''}>")


@cython.final
@cython.no_gc
@cython.freelist(256)
cdef class BufferConsumer:
    """Reads what a :class:`BufferBuilder` committed, as read-only slices (Flink ``BufferConsumer``).

    ``BufferConsumer(buffer, size)`` wraps a complete buffer (e.g. an event) and takes over one of
    its references: it is finished from birth with ``size`` bytes. Consumers of builders come from
    ``BufferBuilder.create_buffer_consumer()``.
    """

    def __init__(self, Buffer buffer not None, Py_ssize_t size):
        if self._buffer is not None:
            raise IllegalStateError("BufferConsumer already initialized")
        if size < 0 or size > buffer._max_capacity:
            raise ValueError(f"size {size} out of bounds [0, {buffer._max_capacity}]")
        if buffer.root()._ref_count <= 0:
            raise IllegalStateError("cannot consume a recycled buffer")
        self._buffer = buffer
        self._marker = None
        self._cached_position = -<int>size if size > 0 else FINISHED_EMPTY
        self._reader_position = 0
        self._closed = False

    @staticmethod
    cdef BufferConsumer create(Buffer buffer, PositionMarker marker, int cached_position,
                               int reader_position):
        cdef BufferConsumer c = BufferConsumer.__new__(BufferConsumer)
        c._buffer = buffer
        c._marker = marker
        c._cached_position = cached_position
        c._reader_position = reader_position
        c._closed = False
        return c

    def __dealloc__(self):
        if not self._closed and self._buffer is not None and self._buffer.root()._ref_count > 0:
            self._closed = True
            try:
                self._buffer.release()
            except BaseException:
                pass

    cdef Buffer build_slice(self):
        cdef int writer = self.refresh()
        cdef Buffer s
        if self._closed:
            raise IllegalStateError("BufferConsumer is closed")
        s = self._buffer.slice(self._reader_position, writer - self._reader_position)
        self._reader_position = writer
        s.retain_ref()
        return s

    def build(self):
        """A read-only slice of the bytes committed since the last build, with its own reference.

        May be empty. The caller recycles it when done.
        """
        return self.build_slice()

    def skip(self, Py_ssize_t bytes_to_skip):
        """Advance the reader by ``bytes_to_skip`` committed bytes without building them."""
        cdef int writer = self.refresh()
        if bytes_to_skip < 0 or bytes_to_skip > writer - self._reader_position:
            raise ValueError(
                f"cannot skip {bytes_to_skip} bytes: {writer - self._reader_position} readable")
        self._reader_position += <int>bytes_to_skip

    @property
    def is_finished(self):
        """Finished as last seen (construction, build, skip): True only once everything up to the
        finish point was read, as in Flink."""
        return self._cached_position < 0

    @property
    def is_data_available(self):
        """True when committed bytes are waiting to be built."""
        cdef int p = self._marker.position if self._marker is not None else self._cached_position
        return self._reader_position < marker_bytes(p)

    def copy(self):
        """Another consumer over the same buffer and builder, at the same reader position (+1 ref).

        For broadcast: each subpartition advances its copy independently.
        """
        return self.copy_with_reader_position(self._reader_position)

    def copy_with_reader_position(self, Py_ssize_t reader_position):
        """Like :meth:`copy`, reading from ``reader_position``."""
        cdef int position = to_int(reader_position, "reader_position")
        if self._closed:
            raise IllegalStateError("BufferConsumer is closed")
        self._buffer.retain_ref()
        cdef int cached = self._marker.position if self._marker is not None else self._cached_position
        return BufferConsumer.create(self._buffer, self._marker, cached, position)

    def close(self):
        """Drop this consumer's reference (idempotent)."""
        if not self._closed:
            self._closed = True
            self._buffer.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def written_bytes(self):
        """Bytes committed as last seen."""
        return marker_bytes(self._cached_position)

    @property
    def current_reader_position(self):
        """Bytes already built or skipped."""
        return self._reader_position

    @property
    def is_buffer(self):
        """True for data, False for events."""
        return (data_type_flags(self._buffer._data_type) & DTF_BUFFER) != 0

    @property
    def data_type(self):
        """The buffer's DataType."""
        return self._buffer.data_type

    @property
    def is_recycled(self):
        """True once the underlying buffer's count reached zero."""
        return self._buffer.root()._ref_count == 0

    @property
    def is_closed(self):
        """True after :meth:`close`."""
        return self._closed

    def __repr__(self):
        return (f"<BufferConsumer read={self._reader_position} "
                f"written={marker_bytes(self._cached_position)}"
                f"{' finished' if self._cached_position < 0 else ''}>")
