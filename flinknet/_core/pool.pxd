# flinknet._core.pool: Flink's NetworkBufferPool and LocalBufferPool.
#
# Threading model. Every method runs with the GIL held and makes its state change without
# releasing it, so each call is atomic with respect to other Python threads: this replaces Flink's
# two locks (factory lock, deque monitor) and the LocalBufferPool lock. The GIL is released only
# while a blocking request waits for a future. Code that may run arbitrary Python (availability
# futures and their callbacks, buffer listeners) runs after the state change, never in the middle
# of one, exactly where Flink calls out after leaving its locks. A free-threaded build needs a
# lock per pool around the state below.

from flinknet._core.buffer cimport BufferRecycler
from flinknet._core.memory cimport MemorySegment

cdef enum:
    UNKNOWN_CHANNEL = -1
    # Flink's Integer.MAX_VALUE: an unbounded pool.
    UNBOUNDED_POOL_SIZE = 2147483647


cdef class SegmentReclaimer:
    # Something that holds a pool's used segments for a while and gives them back in batches
    # (the native engine: buffers its I/O thread wrote wait in its done list for a thread with
    # the GIL to recycle them). A LocalBufferPool with a reclaimer (set_reclaimer) has a blocking
    # request that finds the pool exhausted call reclaim() instead of waiting for the
    # availability future: it recycles what the reclaimer holds on the requesting thread, or
    # waits (the GIL released) until the reclaimer has some or poke() is called, at most
    # `timeout` seconds. The pool calls poke() (with the GIL) whenever it turns available or is
    # destroyed, so that a waiter woken by a recycle on any other path (a local consumer, the
    # reaper) is not left waiting for the timeout. Both run with the GIL held.
    cdef int reclaim(self, double timeout) except -1
    cdef void poke(self) noexcept
    # True in a class that implements the two above (a Cython subclass: Python code cannot
    # override them); set_reclaimer refuses any other.
    cdef bint implemented(self) noexcept


cdef class AvailabilityHelper:
    # Flink's AvailabilityHelper, shared by the pools (here) and the input gates (Python). No lock
    # of its own: the pools rely on the GIL (no Python code runs between reading and writing its
    # fields); Python users (the gates) call it under their own lock. The future it hands out to
    # complete is completed by the caller after releasing its lock.
    cdef bint _available
    # Pending future of the current unavailable period; created only when somebody asks for it.
    cdef object _future

    cpdef object get_unavailable_to_reset_available(self)
    cpdef void reset_unavailable(self) noexcept
    cpdef object get_future(self)


cdef class NetworkBufferPool:
    # Every segment, owned by the pool for its whole life; all point into one arena.
    cdef list _all_segments
    # Free segments (a stack: the most recently recycled segment is handed out first, still warm
    # in cache). Each has _in_pool set while it is here.
    cdef list _free
    cdef Py_ssize_t _total
    cdef Py_ssize_t _segment_size
    cdef double _request_timeout
    cdef bint _destroyed
    # Σ minimum sizes of registered local pools + unpooled (exclusive) segments handed out.
    cdef Py_ssize_t _num_total_required
    # Registered local pools, in creation order (the redistribution order).
    cdef list _pools
    # Local pools waiting for this pool to become available (one-shot; each at most once).
    cdef list _waiting_pools
    cdef AvailabilityHelper _availability
    # The arena all segments point into (identity check on recycle).
    cdef object _arena

    cdef MemorySegment request_pooled(self)
    cdef int recycle_pooled(self, MemorySegment segment) except -1
    cdef list request_segments_blocking(self, Py_ssize_t n, double timeout)
    cdef list redistribute(self)
    cdef int check_own(self, MemorySegment segment) except -1
    cdef int _reserve_required(self, Py_ssize_t n) except -1
    cdef str _config_description(self)


cdef class LocalBufferPool(BufferRecycler):
    # The global pool this pool takes segments from and returns them to.
    cdef NetworkBufferPool _nbp
    cdef int _min
    cdef int _max
    cdef int _pool_size
    # Segments taken from the global pool and not returned: free here or handed out.
    cdef int _requested
    # Segments held here, free (a stack).
    cdef list _free
    # One-shot BufferListeners waiting for a recycled buffer (FIFO, collections.deque).
    cdef object _listeners
    cdef int _num_subpartitions
    cdef int _max_buffers_per_channel
    # Outstanding buffers per subpartition; PyMem-allocated, _num_subpartitions entries.
    cdef int *_subpartition_counts
    # Number of subpartitions at their cap.
    cdef int _unavailable_subpartitions
    cdef int _max_overdraft
    cdef bint _destroyed
    cdef bint _requesting_global_notification
    cdef AvailabilityHelper _availability
    # One recycler per subpartition (keeps _subpartition_counts right).
    cdef list _subpartition_recyclers
    # Where this pool's written segments wait to be recycled (None: nowhere; the blocking request
    # waits for the availability future).
    cdef SegmentReclaimer _reclaimer

    cdef MemorySegment request_segment(self, int channel)
    cdef int recycle_segment(self, MemorySegment segment, int channel) except -1
    cdef object check_and_update_availability(self)
    cdef object set_num_buffers_internal(self, int num_buffers)
    cdef object on_global_pool_available(self)
    cdef int check_channel(self, Py_ssize_t channel) except -1
    cdef bint _should_be_available(self) noexcept
    cdef bint _request_from_global(self) except -1
    cdef MemorySegment _request_segment_blocking(self, int channel, object timeout)
    cdef BufferRecycler _recycler_for(self, int channel)
    cdef int _return_excess(self) except -1
