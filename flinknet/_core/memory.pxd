# flinknet._core.memory: MemorySegment, Flink's fixed-size block of native memory.
#
# Threading: every method runs with the GIL held and is atomic with respect to other Python
# threads; only bulk copies of at least GIL_RELEASE_THRESHOLD bytes release the GIL, and then only
# over memory the call holds a reference to (the segment object itself, and the source or target
# buffer export). A free-threaded build needs a lock around free()/exports/_in_pool.

cdef enum:
    # Copies at least this large release the GIL. Smaller copies keep it: re-acquiring the GIL
    # after a release can cost a full switch interval when another thread is busy.
    GIL_RELEASE_THRESHOLD = 256 * 1024


cdef class MemorySegment:
    # Start of the segment's bytes. Owned by `_arena` if that is not None (a pooled segment), else
    # by this object (malloc'ed in __cinit__, freed by free() or __dealloc__). NULL once freed.
    cdef char *_address
    # Size in bytes; fixed for the life of the segment.
    cdef Py_ssize_t _size
    # Upper bound of the fast bounds check: == _size while alive, -1 once freed, so every access
    # after free() fails the fast check and the slow path reports the freed state.
    cdef Py_ssize_t _limit
    # The arena this segment's memory belongs to; the reference keeps the arena alive.
    cdef object _arena
    # True when `_address` was allocated by this object and must be freed by it.
    cdef bint _owns_memory
    cdef bint _freed
    # Number of live buffer exports (memoryviews) over this segment, made by the segment itself or
    # by any Buffer on it. free() and the final recycle of a buffer refuse while it is non-zero.
    cdef Py_ssize_t _exports
    # Flink's getOwner(): whatever the allocator attached; never interpreted by the core.
    cdef object _owner
    # True while the segment sits in a NetworkBufferPool's free list (detects double recycle).
    cdef bint _in_pool

    cdef inline int check(self, Py_ssize_t index, Py_ssize_t width) except -1:
        """Raise unless [index, index + width) lies inside the live segment (width >= 0)."""
        if index < 0 or index > self._limit - width:
            return self._raise_bad_access(index, width)
        return 0

    cdef int _raise_bad_access(self, Py_ssize_t index, Py_ssize_t width) except -1
    cdef int check_not_exported(self, str action) except -1
    cdef int free_memory(self) except -1


# Allocate `num` segments of `size` bytes from one zeroed, page-aligned arena. The arena is freed
# when the last of its segments is garbage-collected. Raises MemoryError.
cdef list allocate_arena_segments(Py_ssize_t num, Py_ssize_t size, object owner)

# Copy n bytes, releasing the GIL for large copies. Both ranges must stay valid for the whole
# call: the caller holds references to the objects that own them.
cdef void copy_memory(char *dst, const char *src, Py_ssize_t n) noexcept
