"""Reference-counted network buffers: flinknet's ``Buffer`` family (Flink ``io.network.buffer``).

Name map (Flink → flinknet):

======================================  ================================================
``Buffer`` (interface)                  :class:`Buffer` (base of the two classes below)
``NetworkBuffer(seg, recycler, type, size)``  :class:`NetworkBuffer` ``(segment, recycler, data_type, size)``
``ReadOnlySlicedNetworkBuffer``         :class:`ReadOnlySlicedNetworkBuffer`
``Buffer.DataType``                     :class:`DataType` (same ordinals, Flink 2.3)
``retainBuffer()`` / ``recycleBuffer()``  ``retain()`` / ``recycle()``
``isRecycled()`` / ``refCnt()``         ``is_recycled`` / ``ref_count``
``readOnlySlice()`` / ``readOnlySlice(i, n)``  ``read_only_slice()`` / ``read_only_slice(i, n)``
``getReaderIndex``/``setReaderIndex``   ``reader_index`` (property, settable)
``getSize``/``setSize``                 ``size`` (property, settable)
``readableBytes()`` / ``getMaxCapacity()``  ``readable_bytes`` / ``max_capacity``
``getNioBufferReadable()``              ``memoryview(buffer)`` or ``get_nio_buffer_readable()``
``getNioBuffer(i, n)``                  ``get_nio_buffer(i, n)``
``getMemorySegment()`` / ``getMemorySegmentOffset()``  ``memory_segment`` / ``memory_segment_offset``
``getRecycler()``                       ``recycler``
``getDataType``/``setDataType``         ``data_type`` (property, settable)
``isBuffer()``                          ``is_buffer``
``isCompressed``/``setCompressed``      ``is_compressed`` (property, settable)
``BufferRecycler.recycle(seg)``         :meth:`BufferRecycler.recycle`
``FreeingBufferRecycler.INSTANCE``      :data:`FREEING_BUFFER_RECYCLER`
======================================  ================================================
"""

cimport cython
from cpython.buffer cimport PyBuffer_FillInfo, PyBUF_WRITABLE
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.number cimport PyNumber_Index

from flinknet._core.defs cimport FLINKNET_DEBUG
from flinknet._core.memory cimport MemorySegment

import enum
import sys
import warnings

from flinknet.errors import IllegalReferenceCountError, IllegalStateError


# --- DataType ----------------------------------------------------------------------------------

cdef int[DT_COUNT] _DT_FLAGS
_DT_FLAGS[DT_NONE] = 0
_DT_FLAGS[DT_DATA_BUFFER] = DTF_BUFFER | DTF_PARTIAL_RECORD
_DT_FLAGS[DT_EVENT_BUFFER] = DTF_EVENT
_DT_FLAGS[DT_PRIORITIZED_EVENT_BUFFER] = DTF_EVENT | DTF_PRIORITY
_DT_FLAGS[DT_ALIGNED_CHECKPOINT_BARRIER] = DTF_EVENT | DTF_BLOCKING_UPSTREAM
_DT_FLAGS[DT_TIMEOUTABLE_ALIGNED_CHECKPOINT_BARRIER] = DTF_EVENT | DTF_BLOCKING_UPSTREAM | DTF_REQUIRES_ANNOUNCEMENT
_DT_FLAGS[DT_RECOVERY_COMPLETION] = DTF_EVENT | DTF_BLOCKING_UPSTREAM
_DT_FLAGS[DT_END_OF_SEGMENT] = DTF_EVENT
_DT_FLAGS[DT_DATA_BUFFER_WITH_CLEAR_END] = DTF_BUFFER
_DT_FLAGS[DT_END_OF_DATA] = DTF_EVENT
_DT_FLAGS[DT_END_OF_PARTITION] = DTF_EVENT
_DT_FLAGS[DT_RECOVERY_METADATA] = DTF_EVENT
_DT_FLAGS[DT_ALIGNED_WATERMARK_EVENT] = DTF_EVENT | DTF_BLOCKING_UPSTREAM
_DT_FLAGS[DT_UNALIGNED_WATERMARK_EVENT] = DTF_EVENT


cdef int data_type_flags(int data_type) noexcept:
    return _DT_FLAGS[data_type] if 0 <= data_type < DT_COUNT else 0


cdef int check_data_type(object data_type) except -1:
    # operator.index: an ordinal is an integer, a float must not be truncated into another type.
    cdef Py_ssize_t ordinal = PyNumber_Index(data_type)
    if not 0 <= ordinal < DT_COUNT:
        raise ValueError(f"unknown Buffer.DataType ordinal {ordinal} (valid: 0..{DT_COUNT - 1})")
    return ordinal


class DataType(enum.IntEnum):
    """Flink 2.3's ``Buffer.DataType``: what a buffer carries. The value is the wire ordinal."""

    NONE = DT_NONE
    DATA_BUFFER = DT_DATA_BUFFER
    EVENT_BUFFER = DT_EVENT_BUFFER
    PRIORITIZED_EVENT_BUFFER = DT_PRIORITIZED_EVENT_BUFFER
    ALIGNED_CHECKPOINT_BARRIER = DT_ALIGNED_CHECKPOINT_BARRIER
    TIMEOUTABLE_ALIGNED_CHECKPOINT_BARRIER = DT_TIMEOUTABLE_ALIGNED_CHECKPOINT_BARRIER
    RECOVERY_COMPLETION = DT_RECOVERY_COMPLETION
    END_OF_SEGMENT = DT_END_OF_SEGMENT
    DATA_BUFFER_WITH_CLEAR_END = DT_DATA_BUFFER_WITH_CLEAR_END
    END_OF_DATA = DT_END_OF_DATA
    END_OF_PARTITION = DT_END_OF_PARTITION
    RECOVERY_METADATA = DT_RECOVERY_METADATA
    ALIGNED_WATERMARK_EVENT = DT_ALIGNED_WATERMARK_EVENT
    UNALIGNED_WATERMARK_EVENT = DT_UNALIGNED_WATERMARK_EVENT

    @property
    def is_buffer(self):
        """Carries serialized records (Flink ``isBuffer``)."""
        return bool(data_type_flags(self.value) & DTF_BUFFER)

    @property
    def is_event(self):
        """Carries one serialized event (Flink ``isEvent``)."""
        return bool(data_type_flags(self.value) & DTF_EVENT)

    @property
    def is_blocking_upstream(self):
        """Blocks its subpartition until the consumer resumes it (aligned barriers)."""
        return bool(data_type_flags(self.value) & DTF_BLOCKING_UPSTREAM)

    @property
    def has_priority(self):
        """Overtakes queued data (Flink ``hasPriority``)."""
        return bool(data_type_flags(self.value) & DTF_PRIORITY)

    @property
    def requires_announcement(self):
        """Announced ahead of the data before it (timeoutable aligned barriers)."""
        return bool(data_type_flags(self.value) & DTF_REQUIRES_ANNOUNCEMENT)

    @property
    def is_partial_record_allowed(self):
        """May end in the middle of a record (plain data buffers)."""
        return bool(data_type_flags(self.value) & DTF_PARTIAL_RECORD)


cdef tuple _DATA_TYPES = tuple(DataType)


# --- accounting --------------------------------------------------------------------------------

# NetworkBuffers whose count is above zero.
cdef Py_ssize_t _live_buffers = 0
# NetworkBuffers garbage-collected with a count above zero (memory given back by __dealloc__).
cdef Py_ssize_t _leaked_buffers = 0
# Debug builds only: id(buffer) -> where it was created, for live buffers.
cdef dict _debug_origins = {}


def is_debug_build():
    """True when the core was compiled with FLINKNET_DEBUG=1."""
    return bool(FLINKNET_DEBUG)


def live_buffer_count():
    """Number of NetworkBuffers alive with a reference count above zero (all threads)."""
    return _live_buffers


def leaked_buffer_count():
    """Number of NetworkBuffers garbage-collected before their last recycle() since start."""
    return _leaked_buffers


def debug_live_buffer_origins():
    """Debug builds: ``{id: stack}`` of every live NetworkBuffer (where it was created, innermost
    frame last, as ``traceback.format_stack`` prints it); empty in release builds."""
    import traceback
    return {key: "".join(traceback.format_list(
                [traceback.FrameSummary(code.co_filename, line, code.co_name) for code, line in reversed(stack)]))
            for key, stack in list(_debug_origins.items())}


cdef int _ORIGIN_DEPTH = 10


cdef tuple _capture_origin():
    """The calling Python frames, innermost first, as (code, line) pairs: cheap enough to take
    for every buffer of a debug build (formatting waits until a leak is reported)."""
    frames = []
    frame = sys._getframe(0)
    while frame is not None and len(frames) < _ORIGIN_DEPTH:
        frames.append((frame.f_code, frame.f_lineno))
        frame = frame.f_back
    return tuple(frames)


cdef inline void _on_created(NetworkBuffer buf):
    global _live_buffers
    _live_buffers += 1
    if FLINKNET_DEBUG:
        _debug_origins[id(buf)] = _capture_origin()


cdef inline void _on_released(NetworkBuffer buf):
    global _live_buffers
    _live_buffers -= 1
    if FLINKNET_DEBUG:
        _debug_origins.pop(id(buf), None)


# --- recyclers ---------------------------------------------------------------------------------

cdef class BufferRecycler:
    """Receives a buffer's segment when the buffer's last reference is recycled.

    Subclass it (in Python or Cython) and override :meth:`recycle`. Local buffer pools, the
    per-subpartition recyclers and :data:`FREEING_BUFFER_RECYCLER` are recyclers.
    """

    cpdef recycle(self, MemorySegment segment):
        """Take ``segment`` back; called once per hand-out."""
        raise NotImplementedError(f"{type(self).__name__}.recycle")


@cython.final
cdef class FreeingBufferRecycler(BufferRecycler):
    """Frees the segment (Flink's ``FreeingBufferRecycler``): for event buffers and unpooled copies."""

    cpdef recycle(self, MemorySegment segment):
        segment.free_memory()


FREEING_BUFFER_RECYCLER = FreeingBufferRecycler()


# --- buffers -----------------------------------------------------------------------------------

@cython.no_gc
cdef class Buffer:
    """A window on a memory segment with reader and writer indices and a reference count.

    Not constructed directly: use :class:`NetworkBuffer`, a pool's ``request_buffer()`` or
    :meth:`read_only_slice`. ``memoryview(buffer)`` exposes the readable bytes
    ``[reader_index, size)`` without a copy (read-only for slices); such a view keeps the buffer
    object alive, and the buffer's last ``recycle()`` raises :class:`BufferError` until every view
    over its memory is released.
    """

    def __init__(self, *args, **kwargs):
        raise TypeError("Buffer is abstract; use NetworkBuffer or a pool's request_buffer()")

    # -- reference count (shared with the root NetworkBuffer) --------------------------------

    cdef int retain_ref(self) except -1:
        cdef NetworkBuffer root = self.root()
        if root._ref_count <= 0:
            raise IllegalReferenceCountError("refCnt: 0, increment: 1 (buffer already recycled)")
        root._ref_count += 1
        return 0

    cdef int release(self) except -1:
        cdef NetworkBuffer root = self.root()
        cdef BufferRecycler recycler
        if root._ref_count <= 0:
            raise IllegalReferenceCountError("refCnt: 0, decrement: 1 (buffer already recycled)")
        if root._ref_count > 1:
            root._ref_count -= 1
            return 0
        root._segment.check_not_exported("recycle the buffer")
        # Record the release before calling out: the recycler may run arbitrary Python code.
        root._ref_count = 0
        _on_released(root)
        recycler = root._recycler
        root._recycler = None
        recycler.recycle(root._segment)
        return 0

    def retain(self):
        """Add a reference (Flink ``retainBuffer``); returns this buffer."""
        self.retain_ref()
        return self

    def recycle(self):
        """Drop a reference (Flink ``recycleBuffer``); at zero the segment goes to the recycler.

        Raises :class:`~flinknet.errors.IllegalReferenceCountError` if the count is already zero,
        and :class:`BufferError` (count unchanged) if this would recycle memory that a live
        memoryview still exports.
        """
        self.release()

    @property
    def is_recycled(self):
        """True once the shared reference count reached zero."""
        return self.root()._ref_count == 0

    @property
    def ref_count(self):
        """The shared reference count (Flink ``refCnt``)."""
        return self.root()._ref_count

    @property
    def recycler(self):
        """The recycler that gets the segment back (None once recycled)."""
        return self.root()._recycler

    # -- indices ----------------------------------------------------------------------------

    @property
    def reader_index(self):
        """Index of the next byte to read."""
        return self._reader_index

    @reader_index.setter
    def reader_index(self, Py_ssize_t value):
        if value < 0 or value > self._writer_index:
            raise IndexError(f"reader index {value} out of bounds [0, {self._writer_index}]")
        self._reader_index = value

    @property
    def size(self):
        """The writer index: number of bytes written (Flink ``getSize``)."""
        return self._writer_index

    @size.setter
    def size(self, Py_ssize_t value):
        if value < self._reader_index or value > self._max_capacity:
            raise IndexError(
                f"size {value} out of bounds [{self._reader_index}, {self._max_capacity}]")
        self._writer_index = value

    @property
    def readable_bytes(self):
        """``size - reader_index``."""
        return self._writer_index - self._reader_index

    @property
    def max_capacity(self):
        """Largest possible size: the segment size, or a slice's length."""
        return self._max_capacity

    @property
    def memory_segment(self):
        """The segment holding this buffer's bytes."""
        return self._segment

    @property
    def memory_segment_offset(self):
        """Offset of this buffer's byte 0 inside :attr:`memory_segment`."""
        return self._offset

    # -- type flags -------------------------------------------------------------------------

    @property
    def data_type(self):
        """The :class:`DataType` this buffer carries."""
        return _DATA_TYPES[self._data_type]

    @data_type.setter
    def data_type(self, value):
        self._data_type = check_data_type(value)

    @property
    def is_buffer(self):
        """True for data buffers, False for events."""
        return (data_type_flags(self._data_type) & DTF_BUFFER) != 0

    @property
    def is_compressed(self):
        """Whether the bytes are a compressed block."""
        return self._compressed

    @is_compressed.setter
    def is_compressed(self, bint value):
        self._compressed = value

    # -- slices and views -------------------------------------------------------------------

    cdef ReadOnlySlicedNetworkBuffer slice(self, int index, int length):
        cdef ReadOnlySlicedNetworkBuffer s
        if index < 0 or length < 0 or index > self._max_capacity - length:
            raise IndexError(
                f"slice [{index}, {index + length}) out of bounds for capacity {self._max_capacity}")
        if self._compressed and index + length != self._writer_index:
            raise IllegalStateError("a compressed buffer can only be sliced as a whole")
        s = ReadOnlySlicedNetworkBuffer.__new__(ReadOnlySlicedNetworkBuffer)
        s._segment = self._segment
        s._offset = self._offset + index
        s._reader_index = 0
        s._writer_index = length
        s._max_capacity = length
        s._data_type = self._data_type
        s._compressed = self._compressed
        s._read_only = True
        s._parent = self.root()
        return s

    def read_only_slice(self, index=None, length=None):
        """A read-only view of ``[index, index + length)`` sharing this buffer's reference count.

        Without arguments: the readable bytes ``[reader_index, size)`` (Flink ``readOnlySlice()``);
        ``length`` defaults to ``size - index``. The slice does not add a reference: call
        ``retain()`` on it to keep the data beyond the owner's ``recycle()``.
        """
        cdef int i = self._reader_index if index is None else to_int(index, "index")
        cdef int n = self._writer_index - i if length is None else to_int(length, "length")
        if self.root()._ref_count <= 0:
            raise IllegalReferenceCountError("cannot slice a recycled buffer")
        return self.slice(i, n)

    def __getbuffer__(self, Py_buffer *view, int flags):
        if self.root()._ref_count <= 0:
            raise IllegalReferenceCountError("cannot export a recycled buffer")
        if self._read_only and (flags & PyBUF_WRITABLE):
            raise BufferError("read-only sliced buffer")
        self._segment.check(0, 0)
        PyBuffer_FillInfo(view, self, self.data() + self._reader_index,
                          self._writer_index - self._reader_index, self._read_only, flags)
        self._segment._exports += 1

    def __releasebuffer__(self, Py_buffer *view):
        self._segment._exports -= 1

    def get_nio_buffer_readable(self):
        """A memoryview of the readable bytes (same as ``memoryview(buffer)``)."""
        return memoryview(self)

    def get_nio_buffer(self, Py_ssize_t index, Py_ssize_t length):
        """A memoryview of ``[index, index + length)`` of this buffer's capacity (no copy)."""
        if self.root()._ref_count <= 0:
            raise IllegalReferenceCountError("cannot export a recycled buffer")
        if index < 0 or length < 0 or index > self._max_capacity - length:
            raise IndexError(
                f"range [{index}, {index + length}) out of bounds for capacity {self._max_capacity}")
        view = self._segment.wrap(self._offset + index, length)
        return view.toreadonly() if self._read_only else view

    def to_bytes(self):
        """A copy of the readable bytes."""
        if self.root()._ref_count <= 0:
            raise IllegalReferenceCountError("cannot read a recycled buffer")
        self._segment.check(0, 0)
        return PyBytes_FromStringAndSize(self.data() + self._reader_index,
                                         self._writer_index - self._reader_index)

    def __repr__(self):
        return (f"<{type(self).__name__} {_DATA_TYPES[self._data_type].name} "
                f"size={self._writer_index} reader={self._reader_index} "
                f"cap={self._max_capacity} refCnt={self.root()._ref_count}"
                f"{' compressed' if self._compressed else ''}>")


@cython.final
@cython.no_gc
cdef class NetworkBuffer(Buffer):
    """A buffer over a whole memory segment, owning the reference count (Flink ``NetworkBuffer``).

    ``NetworkBuffer(segment, recycler, data_type=DataType.DATA_BUFFER, size=0, is_compressed=False)``
    takes over one hand-out of ``segment``: the count starts at 1 and ``segment`` goes to
    ``recycler`` when it reaches 0.
    """

    def __init__(self, MemorySegment segment not None, BufferRecycler recycler not None,
                 data_type=DT_DATA_BUFFER, Py_ssize_t size=0, bint is_compressed=False):
        if self._segment is not None:
            raise IllegalStateError("NetworkBuffer already initialized")
        segment.check(0, 0)
        if size < 0 or size > segment._size:
            raise ValueError(f"size {size} out of bounds [0, {segment._size}]")
        self._init(segment, recycler, check_data_type(data_type), <int>size)
        self._compressed = is_compressed

    cdef void _init(self, MemorySegment segment, BufferRecycler recycler, int data_type, int size) noexcept:
        self._segment = segment
        self._offset = 0
        self._reader_index = 0
        self._writer_index = size
        self._max_capacity = <int>segment._size
        self._data_type = data_type
        self._compressed = False
        self._read_only = False
        self._parent = None
        self._ref_count = 1
        self._recycler = recycler
        _on_created(self)

    @staticmethod
    cdef NetworkBuffer create(MemorySegment segment, BufferRecycler recycler, int data_type, int size):
        cdef NetworkBuffer buf = NetworkBuffer.__new__(NetworkBuffer)
        buf._init(segment, recycler, data_type, size)
        return buf

    cdef void disown(self) noexcept:
        if self._ref_count > 0:
            self._ref_count = 0
            self._recycler = None
            _on_released(self)

    def __dealloc__(self):
        global _leaked_buffers
        if self._ref_count <= 0 or self._recycler is None:
            return
        # Dropped without its final recycle(): give the memory back so no pool is left short.
        _leaked_buffers += 1
        self._ref_count = 0
        _on_released(self)
        try:
            if self._segment._exports == 0:
                self._recycler.recycle(self._segment)
            warnings.warn(
                f"NetworkBuffer of {self._segment._size} bytes was garbage-collected without "
                f"recycle(); its segment was returned to its recycler",
                ResourceWarning, source=None)
        except BaseException:
            pass


@cython.final
@cython.no_gc
cdef class ReadOnlySlicedNetworkBuffer(Buffer):
    """A read-only window on part of a :class:`NetworkBuffer`, sharing its reference count.

    Made by :meth:`Buffer.read_only_slice` and by ``BufferConsumer.build()``; ``retain()``,
    ``recycle()`` and ``is_recycled`` act on the parent's count. Its memoryview is read-only.
    """
    pass
