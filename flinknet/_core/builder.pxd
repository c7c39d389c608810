# flinknet._core.builder: Flink's BufferBuilder / BufferConsumer hand-off.
#
# One writer (the task thread) appends into a BufferBuilder; one reader at a time (the subpartition
# under its lock, or the I/O thread) builds read-only slices from the BufferConsumer. They share a
# PositionMarker: the writer publishes with commit(), the reader sees nothing beyond it.
#
# Threading: every call runs with the GIL held, so publishing `position` is a plain store that the
# GIL hand-off makes visible to the other thread (Flink needs a volatile field). Large appends
# release the GIL during the copy; the bytes being copied lie beyond the published position, so the
# reader never sees them half-written. A free-threaded build needs an atomic store/load here.

from flinknet._core.buffer cimport Buffer, NetworkBuffer, BufferRecycler
from flinknet._core.memory cimport MemorySegment

cdef enum:
    # Marker value of "finished with 0 bytes" (because -0 == 0), Flink's FINISHED_EMPTY.
    FINISHED_EMPTY = -2147483648


cdef class PositionMarker:
    # >= 0: not finished, that many bytes committed; < 0: finished with -position bytes;
    # FINISHED_EMPTY: finished with 0 bytes. Written by the builder only.
    cdef int position


cdef inline bint marker_is_finished(int position) noexcept:
    return position < 0

cdef inline int marker_bytes(int position) noexcept:
    if position == FINISHED_EMPTY:
        return 0
    return -position if position < 0 else position


cdef class BufferBuilder:
    # The builder's own reference to the buffer (count +1); dropped by close() or __dealloc__.
    cdef NetworkBuffer _buffer
    # The buffer's segment (cached to skip a pointer hop on every append).
    cdef MemorySegment _segment
    # Shared with the consumer; the builder is its only writer.
    cdef PositionMarker _marker
    # Bytes appended so far, committed or not (writer-private).
    cdef int _cached
    # Upper bound of appends; trim() lowers it (never below _cached).
    cdef int _max_capacity
    cdef bint _finished
    cdef bint _consumer_created
    cdef bint _closed

    cdef void _init(self, MemorySegment segment, BufferRecycler recycler)
    @staticmethod
    cdef BufferBuilder create(MemorySegment segment, BufferRecycler recycler)

    # Copy up to n bytes from src (not committed); returns how many fit. For the serializer.
    cdef Py_ssize_t append_raw(self, const char *src, Py_ssize_t n) except -1
    cdef Py_ssize_t _append_object(self, object data, Py_ssize_t offset) except -1
    cdef inline void commit_raw(self) noexcept:
        self._marker.position = self._cached
    cdef int finish_raw(self) except -1
    cdef BufferConsumer new_consumer(self, int reader_position)


cdef class BufferConsumer:
    # This consumer's own reference (count +1); dropped by close() or __dealloc__.
    cdef Buffer _buffer
    # Shared with the builder (None for a consumer of fixed size, e.g. an event).
    cdef PositionMarker _marker
    # Marker value seen at the last refresh (construction, build(), skip()).
    cdef int _cached_position
    cdef int _reader_position
    cdef bint _closed

    @staticmethod
    cdef BufferConsumer create(Buffer buffer, PositionMarker marker, int cached_position,
                               int reader_position)
    cdef inline int refresh(self) noexcept:
        if self._marker is not None:
            self._cached_position = self._marker.position
        return marker_bytes(self._cached_position)
    cdef Buffer build_slice(self)
