# flinknet._core.buffer: Flink's Buffer, NetworkBuffer, ReadOnlySlicedNetworkBuffer, DataType and
# BufferRecycler.
#
# Reference count vs. exports. A NetworkBuffer's reference count (retain/recycle, shared by all
# its read-only slices) says who still needs the *data*; the segment's export count says how many
# memoryviews still point at the *memory*. They are independent, with one rule, enforced in
# NetworkBuffer.release (the lowest place that gives memory back): the count may only reach zero,
# handing the segment to its recycler, while no memoryview over the segment is alive. Otherwise
# recycle() raises BufferError and leaves the count unchanged, so the caller can release its views
# and recycle again: nothing is lost and no view ever sees memory that went back to a pool.
#
# Threading: methods run with the GIL held and are atomic with respect to other Python threads;
# recyclers may run Python code (a pool's listeners), so a count reaching zero is recorded before
# the recycler is called. A free-threaded build needs an atomic _ref_count.
#
# Lifetime: a NetworkBuffer that is garbage-collected while its count is above zero gives its
# segment back to its recycler itself, warns (ResourceWarning) and is counted by
# leaked_buffer_count(), so a forgotten recycle() neither loses memory nor goes unnoticed.

from flinknet._core.memory cimport MemorySegment

cdef enum:
    # Buffer.DataType ordinals of Flink 2.3 (sent as one byte on the wire).
    DT_NONE = 0
    DT_DATA_BUFFER = 1
    DT_EVENT_BUFFER = 2
    DT_PRIORITIZED_EVENT_BUFFER = 3
    DT_ALIGNED_CHECKPOINT_BARRIER = 4
    DT_TIMEOUTABLE_ALIGNED_CHECKPOINT_BARRIER = 5
    DT_RECOVERY_COMPLETION = 6
    DT_END_OF_SEGMENT = 7
    DT_DATA_BUFFER_WITH_CLEAR_END = 8
    DT_END_OF_DATA = 9
    DT_END_OF_PARTITION = 10
    DT_RECOVERY_METADATA = 11
    DT_ALIGNED_WATERMARK_EVENT = 12
    DT_UNALIGNED_WATERMARK_EVENT = 13
    DT_COUNT = 14

cdef enum:
    # DataType flag bits (Flink's constructor arguments of Buffer.DataType).
    DTF_BUFFER = 1
    DTF_EVENT = 2
    DTF_BLOCKING_UPSTREAM = 4
    DTF_PRIORITY = 8
    DTF_REQUIRES_ANNOUNCEMENT = 16
    DTF_PARTIAL_RECORD = 32

# Public methods take Py_ssize_t (which refuses floats, unlike C int) and narrow with this.
cdef inline int to_int(Py_ssize_t value, str what) except? -1:
    if value < -2147483648 or value > 2147483647:
        raise OverflowError(f"{what} {value} does not fit in a 32-bit int")
    return <int>value

cdef int data_type_flags(int data_type) noexcept
cdef int check_data_type(object data_type) except -1


cdef class BufferRecycler:
    # Gives a segment back where it came from. Called exactly once per segment hand-out, when the
    # last reference of the NetworkBuffer over it is recycled. May run Python code.
    cpdef recycle(self, MemorySegment segment)


cdef class FreeingBufferRecycler(BufferRecycler):
    pass


cdef class Buffer:
    # The memory. Kept alive by this reference; never freed by a Buffer.
    cdef MemorySegment _segment
    # Offset of this buffer's byte 0 inside the segment (non-zero only for slices).
    cdef Py_ssize_t _offset
    cdef int _reader_index
    # Flink's writer index (getSize()).
    cdef int _writer_index
    # Capacity; for a slice its length.
    cdef int _max_capacity
    cdef int _data_type
    cdef bint _compressed
    cdef bint _read_only
    # A slice's parent, which owns the shared reference count; None for a NetworkBuffer itself
    # (storing self would be a reference cycle, never collected: these types are not GC-tracked).
    cdef NetworkBuffer _parent

    cdef inline NetworkBuffer root(self):
        """The NetworkBuffer owning the shared reference count."""
        return self._parent if self._parent is not None else <NetworkBuffer>self

    cdef inline char *data(self) noexcept:
        """Address of this buffer's byte 0 (valid while the segment is not freed)."""
        return self._segment._address + self._offset

    cdef ReadOnlySlicedNetworkBuffer slice(self, int index, int length)
    cdef int retain_ref(self) except -1
    cdef int release(self) except -1


cdef class NetworkBuffer(Buffer):
    # Shared by all slices of this buffer. Starts at 1; the segment goes to _recycler at 0.
    cdef int _ref_count
    # Where the segment goes at count 0; None only for a disowned buffer.
    cdef BufferRecycler _recycler

    cdef void _init(self, MemorySegment segment, BufferRecycler recycler, int data_type, int size) noexcept
    @staticmethod
    cdef NetworkBuffer create(MemorySegment segment, BufferRecycler recycler, int data_type, int size)
    # Forget the segment without recycling it (count -> 0): for a buffer object that was offered to
    # a listener and declined, whose segment the caller still owns.
    cdef void disown(self) noexcept


cdef class ReadOnlySlicedNetworkBuffer(Buffer):
    pass
