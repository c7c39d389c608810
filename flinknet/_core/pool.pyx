"""Network buffer pools: ``NetworkBufferPool`` (global) and ``LocalBufferPool`` (per partition/gate).

Name map (Flink → flinknet):

=======================================================  ==============================================
``new NetworkBufferPool(numSegments, segmentSize[, timeout])``  :class:`NetworkBufferPool` ``(num_segments, segment_size, request_timeout=30.0)``
``requestPooledMemorySegment()`` / ``recyclePooledMemorySegment(s)``  ``request_pooled_memory_segment()`` / ``recycle_pooled_memory_segment(s)``
``requestPooledMemorySegmentsBlocking(n)``                ``request_pooled_memory_segments_blocking(n, timeout=None)``
``requestUnpooledMemorySegments(n)`` / ``recycleUnpooledMemorySegments(segs)``  ``request_unpooled_memory_segments(n)`` / ``recycle_unpooled_memory_segments(segs)``
``createBufferPool(min, max[, n, perChannel, overdraft])``  ``create_buffer_pool(min_buffers, max_buffers, num_subpartitions=0, max_buffers_per_channel=10, max_overdraft_buffers=5)``
``destroyBufferPool(pool)`` / ``destroy()`` / ``isDestroyed()``  ``destroy_buffer_pool(pool)`` / ``destroy()`` / ``is_destroyed``
``getTotalNumberOfMemorySegments()`` / ``getNumberOfAvailableMemorySegments()``  ``total_segments`` / ``available_segments``
``getNumberOfUsedMemorySegments()``, ``get{Total,Available,Used}Memory()``  ``used_segments``, ``total_memory``, ``available_memory``, ``used_memory``
``getEstimatedNumberOfRequestedMemorySegments()`` / ``getEstimatedRequestedSegmentsUsage()``  ``estimated_requested_segments`` / ``estimated_requested_segments_usage``
``getNumberOfRegisteredBufferPools()``                    ``number_of_registered_buffer_pools``
``getAvailableFuture()`` / ``isAvailable()``              ``get_available_future()`` / ``is_available()``
``LocalBufferPool.requestBuffer()``                       ``request_buffer()``
``requestBufferBuilder([ch])`` / ``requestBufferBuilderBlocking([ch])``  ``request_buffer_builder(target_channel=-1)`` / ``request_buffer_builder_blocking(target_channel=-1, timeout=None)``
``requestMemorySegment()`` / ``requestMemorySegmentBlocking()``  ``request_memory_segment()`` / ``request_memory_segment_blocking(timeout=None)``
``recycle(segment)``                                      ``recycle(segment)``
``addBufferListener(l)``                                  ``add_buffer_listener(listener)``
``setNumBuffers(n)`` / ``reserveSegments(k)`` / ``lazyDestroy()``  ``set_num_buffers(n)`` / ``reserve_segments(k)`` / ``lazy_destroy()``
``getNumBuffers()`` / ``getMin/MaxNumberOfMemorySegments()``  ``num_buffers`` / ``min_buffers`` / ``max_buffers``
``getNumberOfRequestedMemorySegments()`` / ``getNumberOfAvailableMemorySegments()``  ``requested_segments`` / ``available_segments``
``bestEffortGetNumOfUsedBuffers()``                       ``used_buffers`` (and ``usage`` = used / num_buffers)
``setMaxOverdraftBuffersPerGate(n)``                      ``max_overdraft_buffers_per_gate`` (settable)
=======================================================  ==============================================

Availability futures are :class:`concurrent.futures.Future` objects (``asyncio.wrap_future`` makes
them awaitable); an available pool returns an already completed one.

``set_reclaimer(reclaimer)`` / :class:`SegmentReclaimer` have no Flink counterpart: Netty recycles
a written buffer on its event-loop thread, which holds no interpreter lock. flinknet's native I/O
thread cannot run the (Python-visible) recycle without the GIL, so written buffers wait on the
engine's done list; a blocking request of a pool whose reclaimer is the engine recycles them on
the requesting thread instead of waiting for the engine's reaper thread to do it.
"""

cimport cython
from cpython.mem cimport PyMem_Calloc, PyMem_Free

from flinknet._core.buffer cimport BufferRecycler, NetworkBuffer, DT_DATA_BUFFER, to_int
from flinknet._core.builder cimport BufferBuilder
from flinknet._core.defs cimport FLINKNET_DEBUG
from flinknet._core.memory cimport MemorySegment, allocate_arena_segments

import collections
from concurrent.futures import CancelledError, Future, InvalidStateError
from time import monotonic

from flinknet.errors import (
    BufferRequestTimeoutError,
    CancelTaskError,
    IllegalStateError,
    InsufficientNetworkBuffersError,
)

DEFAULT_REQUEST_TIMEOUT = 30.0
UNBOUNDED = UNBOUNDED_POOL_SIZE
# Flink waits at most this long per round of a blocking multi-segment request before re-checking
# its deadline and the destroyed flag.
cdef double _WAIT_ROUND = 2.0
# The longest a blocking request waits in its reclaimer before looking at the pool again (a
# safety net: a recycle pokes the reclaimer).
cdef double _RECLAIM_ROUND = 0.05

cdef object _AVAILABLE = Future()
_AVAILABLE.set_result(None)


cdef inline void _complete(object future):
    if future is not None:
        try:
            future.set_result(None)
        except InvalidStateError:
            # Somebody cancelled it: nothing to wake.
            pass


def complete_future(future):
    """Complete ``future`` (from :meth:`AvailabilityHelper.get_unavailable_to_reset_available`)
    if it is not None; a future its waiter cancelled is left alone."""
    _complete(future)


cdef inline void _complete_all(list futures):
    for f in futures:
        _complete(f)


@cython.final
cdef class AvailabilityHelper:
    """Flink's AvailabilityHelper: an available flag plus a lazily made future.

    ``AvailabilityHelper(available=False)``. :meth:`get_future` returns a completed future while
    available, else the pending future of the current unavailable period (made only when somebody
    asks). :meth:`get_unavailable_to_reset_available` marks it available and hands back the
    pending future (or None) for the caller to complete with :func:`complete_future` — outside
    any lock it holds, since completing runs the future's callbacks. Not thread-safe by itself:
    the pools call it under the GIL with no Python code in between, the input gates under their
    lock.
    """

    def __init__(self, bint available=False):
        self._available = available
        self._future = None

    @property
    def is_available(self):
        """Whether it is marked available."""
        return self._available

    cpdef object get_unavailable_to_reset_available(self):
        """Mark available; the pending future to complete (or None if nobody waited). It stays
        the one :meth:`get_future` hands out until the next unavailable period."""
        if self._available:
            return None
        self._available = True
        return self._future

    cpdef void reset_unavailable(self) noexcept:
        """Mark unavailable (a later :meth:`get_future` makes a pending future); a no-op while
        unavailable, so the pending future of this period stays."""
        if self._available:
            self._available = False
            self._future = None

    cpdef object get_future(self):
        """A done future while available, else the pending one of this unavailable period."""
        cdef object current, fresh
        # Future() and cancelled() run Python code, during which another thread may run and make
        # the pool available (completing and dropping the pending future). So: make the future
        # first, then re-check and install it with no Python code in between.
        while True:
            if self._available:
                # The future completed on the transition (by its completer, maybe a moment
                # later), so a waiter that asks twice gets the same one.
                current = self._future
                return _AVAILABLE if current is None or current.cancelled() else current
            current = self._future
            if current is not None and not current.cancelled():
                return current
            fresh = Future()
            if self._available:
                return _AVAILABLE
            if self._future is current:
                self._future = fresh
                return fresh


cdef inline AvailabilityHelper _new_availability(bint available):
    cdef AvailabilityHelper h = AvailabilityHelper.__new__(AvailabilityHelper)
    h._available = available
    h._future = None
    return h


cdef inline double _check_timeout(object timeout, str what) except? -2.0:
    cdef double t
    if timeout is None:
        return -1.0
    t = timeout
    if not t >= 0.0:
        raise ValueError(f"{what} must be >= 0 seconds or None, got {timeout!r}")
    return t


# --- global pool -------------------------------------------------------------------------------

@cython.final
cdef class NetworkBufferPool:
    """The global pool of network buffers: all segments, allocated once from one arena.

    ``NetworkBufferPool(num_segments, segment_size, request_timeout=30.0)``. Hands segments to
    :class:`LocalBufferPool` s (``create_buffer_pool``) and, unpooled, to remote input channels as
    exclusive buffers; guarantees every pool its minimum and shares the rest among resizable pools
    in proportion to their headroom. Thread-safe.
    """

    def __cinit__(self, Py_ssize_t num_segments, Py_ssize_t segment_size,
                  request_timeout=DEFAULT_REQUEST_TIMEOUT):
        if num_segments <= 0:
            raise ValueError(f"num_segments must be > 0, got {num_segments}")
        if segment_size <= 0:
            raise ValueError(f"segment_size must be > 0, got {segment_size}")
        if num_segments > 2147483647 or segment_size > 2147483647:
            raise ValueError("num_segments and segment_size must fit in a Java int")
        self._request_timeout = _check_timeout(request_timeout, "request_timeout")
        if request_timeout is None:
            self._request_timeout = DEFAULT_REQUEST_TIMEOUT
        self._segment_size = segment_size
        self._total = num_segments
        self._all_segments = allocate_arena_segments(num_segments, segment_size, self)
        self._arena = (<MemorySegment>self._all_segments[0])._arena
        self._free = list(reversed(self._all_segments))
        for seg in self._free:
            (<MemorySegment>seg)._in_pool = True
        self._destroyed = False
        self._num_total_required = 0
        self._pools = []
        self._waiting_pools = []
        self._availability = _new_availability(True)

    # -- pooled segments (used by local pools) ----------------------------------------------

    cdef int check_own(self, MemorySegment segment) except -1:
        if segment._arena is not self._arena:
            raise ValueError(f"{segment!r} does not belong to this NetworkBufferPool")
        if segment._in_pool:
            raise IllegalStateError(
                "memory segment recycled twice: it is already in the NetworkBufferPool")
        return 0

    cdef MemorySegment request_pooled(self):
        cdef MemorySegment seg
        if not self._free:
            return None
        seg = <MemorySegment>self._free.pop()
        seg._in_pool = False
        if not self._free:
            self._availability.reset_unavailable()
        if FLINKNET_DEBUG:
            assert not seg._freed, "handed out a freed segment"
        return seg

    cdef int recycle_pooled(self, MemorySegment segment) except -1:
        cdef list waiting
        cdef list to_notify
        self.check_own(segment)
        segment.check_not_exported("recycle the memory segment")
        if self._destroyed:
            # Lent out at destroy(): freed on return, as destroy() freed the free ones.
            segment._in_pool = True
            segment.free_memory()
            return 0
        segment._in_pool = True
        self._free.append(segment)
        if len(self._free) == 1:
            to_notify = [self._availability.get_unavailable_to_reset_available()]
            if self._waiting_pools:
                waiting = self._waiting_pools
                self._waiting_pools = []
                for p in waiting:
                    to_notify.append((<LocalBufferPool>p).on_global_pool_available())
            _complete_all(to_notify)
        return 0

    def request_pooled_memory_segment(self):
        """Take one free segment, or None if there is none (non-blocking)."""
        return self.request_pooled()

    def recycle_pooled_memory_segment(self, MemorySegment segment not None):
        """Give back a segment taken with :meth:`request_pooled_memory_segment`."""
        self.recycle_pooled(segment)

    cdef list request_segments_blocking(self, Py_ssize_t n, double timeout):
        cdef list segments = []
        cdef MemorySegment seg
        cdef double deadline = monotonic() + timeout
        cdef double remaining
        try:
            while len(segments) < n:
                if self._destroyed:
                    raise IllegalStateError("Buffer pool is destroyed.")
                seg = self.request_pooled()
                if seg is not None:
                    segments.append(seg)
                    continue
                remaining = deadline - monotonic()
                if remaining <= 0:
                    raise BufferRequestTimeoutError(
                        f"Timeout triggered when requesting {n} network buffers "
                        f"({len(segments)} obtained, {len(self._free)} free of {self._total}); "
                        f"you may increase the timeout, which is {timeout * 1000:.0f} ms, with the key "
                        f"'taskmanager.network.memory.buffers-request-timeout'.")
                try:
                    self._availability.get_future().result(
                        _WAIT_ROUND if remaining > _WAIT_ROUND else remaining)
                except (TimeoutError, CancelledError):
                    # Cancelled by another holder of the future: just look again.
                    pass
        except BaseException:
            # Nothing is lost on failure: give back what was already taken.
            for s in segments:
                self.recycle_pooled(<MemorySegment>s)
            raise
        return segments

    def request_pooled_memory_segments_blocking(self, Py_ssize_t num_segments, timeout=None):
        """Take ``num_segments`` segments, waiting until they are free or the deadline passes.

        ``timeout`` defaults to the pool's ``request_timeout``; on expiry raises
        :class:`~flinknet.errors.BufferRequestTimeoutError` and gives back what it had taken.
        """
        cdef double t = _check_timeout(timeout, "timeout")
        if num_segments < 0:
            raise ValueError(f"num_segments must be >= 0, got {num_segments}")
        if num_segments > self._total:
            raise ValueError(
                f"cannot request {num_segments} segments from a pool of {self._total}")
        return self.request_segments_blocking(num_segments, self._request_timeout if t < 0 else t)

    # -- unpooled (exclusive) segments --------------------------------------------------------

    cdef int _reserve_required(self, Py_ssize_t n) except -1:
        if self._num_total_required + n > self._total:
            raise InsufficientNetworkBuffersError(
                f"Insufficient number of network buffers: required {n}, but only "
                f"{self._total - self._num_total_required} available. {self._config_description()}.")
        self._num_total_required += n
        return 0

    cdef str _config_description(self):
        return (f"The total number of network buffers is currently set to {self._total} of "
                f"{self._segment_size} bytes each. You can increase this number by setting the "
                f"configuration keys 'taskmanager.memory.network.fraction', "
                f"'taskmanager.memory.network.min', and 'taskmanager.memory.network.max'")

    def request_unpooled_memory_segments(self, Py_ssize_t num_segments, timeout=None):
        """Take ``num_segments`` segments outside any local pool (a remote channel's exclusive buffers).

        They count as required: fails at once with Flink's "Insufficient number of network
        buffers" error if the pools' minimums leave too few, then shrinks resizable pools and
        waits (up to ``timeout``, default ``request_timeout``) until the segments are free.
        """
        cdef double t = _check_timeout(timeout, "timeout")
        cdef list segments
        if num_segments < 0:
            raise ValueError(f"num_segments must be >= 0, got {num_segments}")
        if num_segments == 0:
            return []
        if self._destroyed:
            raise IllegalStateError("Network buffer pool has already been destroyed.")
        self._reserve_required(num_segments)
        _complete_all(self.redistribute())
        try:
            segments = self.request_segments_blocking(num_segments, self._request_timeout if t < 0 else t)
        except BaseException:
            self._num_total_required -= num_segments
            _complete_all(self.redistribute())
            raise
        return segments

    def recycle_unpooled_memory_segments(self, segments):
        """Give back segments from :meth:`request_unpooled_memory_segments` (all of them valid first)."""
        cdef list segs = list(segments)
        cdef set seen = set()
        for s in segs:
            if not isinstance(s, MemorySegment):
                raise TypeError(f"expected MemorySegment, got {type(s).__name__}")
            self.check_own(<MemorySegment>s)
            (<MemorySegment>s).check_not_exported("recycle the memory segment")
            if id(s) in seen:
                raise IllegalStateError("the same memory segment appears twice")
            seen.add(id(s))
        for s in segs:
            self.recycle_pooled(<MemorySegment>s)
        self._num_total_required -= len(segs)
        if self._num_total_required < 0:
            self._num_total_required = 0
        _complete_all(self.redistribute())

    # -- local pools --------------------------------------------------------------------------

    def create_buffer_pool(self, Py_ssize_t min_buffers, Py_ssize_t max_buffers,
                           Py_ssize_t num_subpartitions=0, Py_ssize_t max_buffers_per_channel=10,
                           Py_ssize_t max_overdraft_buffers=5):
        """Create and register a :class:`LocalBufferPool` guaranteed ``min_buffers`` segments.

        ``max_buffers`` bounds it (``UNBOUNDED`` for none); with ``num_subpartitions > 0`` a
        subpartition holding ``max_buffers_per_channel`` outstanding buffers makes the pool
        unavailable, and up to ``max_overdraft_buffers`` segments beyond the pool size may be taken
        when it is exhausted.
        """
        cdef LocalBufferPool pool
        if self._destroyed:
            raise IllegalStateError("Network buffer pool has already been destroyed.")
        if min_buffers <= 0:
            raise ValueError(f"min_buffers must be > 0, got {min_buffers}")
        if max_buffers < min_buffers:
            raise ValueError(
                f"max_buffers ({max_buffers}) must be >= min_buffers ({min_buffers})")
        if num_subpartitions < 0:
            raise ValueError(f"num_subpartitions must be >= 0, got {num_subpartitions}")
        if num_subpartitions > 0 and max_buffers_per_channel <= 0:
            raise ValueError(f"max_buffers_per_channel must be > 0, got {max_buffers_per_channel}")
        if max_overdraft_buffers < 0:
            raise ValueError(f"max_overdraft_buffers must be >= 0, got {max_overdraft_buffers}")
        to_int(max_buffers, "max_buffers")
        to_int(num_subpartitions, "num_subpartitions")
        to_int(max_buffers_per_channel, "max_buffers_per_channel")
        to_int(max_overdraft_buffers, "max_overdraft_buffers")
        if self._num_total_required + min_buffers > self._total:
            raise InsufficientNetworkBuffersError(
                f"Insufficient number of network buffers: required {min_buffers}, but only "
                f"{self._total - self._num_total_required} available. {self._config_description()}.")
        self._num_total_required += min_buffers
        pool = LocalBufferPool.__new__(
            LocalBufferPool, self, min_buffers, max_buffers, num_subpartitions,
            max_buffers_per_channel, max_overdraft_buffers)
        self._pools.append(pool)
        to_notify = self.redistribute()
        # A new pool grabs a segment right away if it can (Flink does so in the constructor).
        to_notify.append(pool.check_and_update_availability())
        _complete_all(to_notify)
        return pool

    def destroy_buffer_pool(self, LocalBufferPool pool not None):
        """Unregister ``pool`` (called by ``pool.lazy_destroy()``); idempotent."""
        cdef Py_ssize_t i
        for i in range(len(self._pools)):
            if self._pools[i] is pool:
                del self._pools[i]
                self._num_total_required -= pool._min
                _complete_all(self.redistribute())
                return

    cdef list redistribute(self):
        """Flink's ``NetworkBufferPool.redistributeBuffers``: returns the availability futures to complete."""
        cdef list to_notify = []
        cdef list resizable = [p for p in self._pools if (<LocalBufferPool>p)._min < (<LocalBufferPool>p)._max]
        cdef long long excess, total_capacity, to_distribute, parts_used, distributed, cap, share
        cdef LocalBufferPool pool
        if not resizable:
            return to_notify
        excess = self._total - self._num_total_required
        if excess <= 0:
            for p in resizable:
                pool = <LocalBufferPool>p
                to_notify.append(pool.set_num_buffers_internal(pool._min))
            return to_notify
        total_capacity = 0
        for p in resizable:
            pool = <LocalBufferPool>p
            cap = pool._max - pool._min
            total_capacity += cap if cap < excess else excess
        if total_capacity == 0:
            return to_notify
        to_distribute = excess if excess < total_capacity else total_capacity
        parts_used = 0
        distributed = 0
        for p in resizable:
            pool = <LocalBufferPool>p
            cap = pool._max - pool._min
            if cap > excess:
                cap = excess
            if cap == 0:
                continue
            parts_used += cap
            share = to_distribute * parts_used // total_capacity - distributed
            distributed += share
            to_notify.append(pool.set_num_buffers_internal(<int>(pool._min + share)))
        if FLINKNET_DEBUG:
            assert parts_used == total_capacity and distributed == to_distribute
        return to_notify

    # -- lifecycle and figures ----------------------------------------------------------------

    def destroy(self):
        """Free every segment in the pool; segments still lent out are freed when they come back."""
        cdef MemorySegment seg
        if self._destroyed:
            return
        self._destroyed = True
        for s in self._free:
            seg = <MemorySegment>s
            if seg._exports == 0:
                seg.free_memory()
        self._free = []
        fut = self._availability._future
        self._availability._future = None
        self._availability.reset_unavailable()
        waiting = self._waiting_pools
        self._waiting_pools = []
        # Wake blocked requesters: they see the destroyed flag and fail.
        _complete(fut)

    @property
    def is_destroyed(self):
        """True after :meth:`destroy`."""
        return self._destroyed

    @property
    def is_available(self):
        """True while at least one segment is free."""
        return self._availability._available

    def get_available_future(self):
        """A future completed when a segment is free (already completed if one is now)."""
        return self._availability.get_future()

    @property
    def total_segments(self):
        """Number of segments the pool was created with."""
        return self._total

    @property
    def available_segments(self):
        """Number of free segments."""
        return len(self._free)

    @property
    def used_segments(self):
        """Segments handed out (to local pools, as exclusive buffers, or directly)."""
        return 0 if self._destroyed else self._total - len(self._free)

    @property
    def segment_size(self):
        """Bytes per segment."""
        return self._segment_size

    @property
    def total_memory(self):
        """``total_segments * segment_size`` bytes."""
        return self._total * self._segment_size

    @property
    def available_memory(self):
        """Bytes in free segments."""
        return len(self._free) * self._segment_size

    @property
    def used_memory(self):
        """Bytes in segments handed out."""
        return self.used_segments * self._segment_size

    @property
    def request_timeout(self):
        """Default deadline, in seconds, of blocking multi-segment requests."""
        return self._request_timeout

    @property
    def num_total_required_buffers(self):
        """Σ of local pools' minimums plus unpooled segments handed out."""
        return self._num_total_required

    @property
    def number_of_registered_buffer_pools(self):
        """Local pools created and not destroyed."""
        return len(self._pools)

    @property
    def estimated_requested_segments(self):
        """Σ over pools of (max if bounded, else 2 × min), Flink's usage estimate."""
        cdef long long total = 0
        cdef LocalBufferPool pool
        for p in self._pools:
            pool = <LocalBufferPool>p
            total += pool._max if pool._max < UNBOUNDED_POOL_SIZE else 2 * pool._min
        return total

    @property
    def estimated_requested_segments_usage(self):
        """``100 * estimated_requested_segments // total_segments`` (percent)."""
        return 100 * self.estimated_requested_segments // self._total

    def registered_buffer_pools(self):
        """The local pools created and not yet destroyed, in creation order."""
        return list(self._pools)

    @property
    def is_whole(self):
        """True when every segment is back and free (no pool or channel holds one)."""
        return not self._destroyed and len(self._free) == self._total

    def __repr__(self):
        return (f"<NetworkBufferPool {len(self._free)}/{self._total} free x {self._segment_size} B, "
                f"{len(self._pools)} pools, required={self._num_total_required}"
                f"{' destroyed' if self._destroyed else ''}>")


# --- local pools -------------------------------------------------------------------------------

@cython.final
cdef class _SubpartitionBufferRecycler(BufferRecycler):
    """Recycles into a local pool and keeps the subpartition's outstanding count right."""

    # The pool keeps its recyclers and a recycler its pool: a cycle, left to the garbage collector
    # once no buffer and no owner refers to either.
    cdef LocalBufferPool _pool
    cdef int _channel

    def __init__(self):
        raise TypeError("internal class")

    cpdef recycle(self, MemorySegment segment):
        self._pool.recycle_segment(segment, self._channel)


cdef class SegmentReclaimer:
    """The base of what holds a pool's used segments and gives them back in batches (see
    :meth:`LocalBufferPool.set_reclaimer`): the native engine's done list. This base holds
    nothing."""

    cdef int reclaim(self, double timeout) except -1:
        return 0

    cdef void poke(self) noexcept:
        pass

    cdef bint implemented(self) noexcept:
        return False


@cython.final
cdef class LocalBufferPool(BufferRecycler):
    """A pool of buffers for one result partition or input gate (Flink ``LocalBufferPool``).

    Made by :meth:`NetworkBufferPool.create_buffer_pool`; takes segments from the global pool up
    to its current size (``num_buffers``, between ``min_buffers`` and ``max_buffers``, set by the
    global pool's redistribution). Available (``is_available()``) when it holds a free segment
    locally and no subpartition is at its cap. Thread-safe.
    """

    def __cinit__(self, NetworkBufferPool nbp, int min_buffers, int max_buffers, int num_subpartitions,
                  int max_buffers_per_channel, int max_overdraft):
        cdef _SubpartitionBufferRecycler r
        cdef int i
        self._nbp = nbp
        self._min = min_buffers
        self._max = max_buffers
        self._pool_size = min_buffers
        self._requested = 0
        self._free = []
        self._listeners = collections.deque()
        self._num_subpartitions = num_subpartitions
        self._max_buffers_per_channel = max_buffers_per_channel
        self._unavailable_subpartitions = 0
        self._max_overdraft = max_overdraft
        self._destroyed = False
        self._requesting_global_notification = False
        self._availability = _new_availability(False)
        self._subpartition_recyclers = []
        self._subpartition_counts = NULL
        if num_subpartitions > 0:
            self._subpartition_counts = <int *>PyMem_Calloc(<size_t>num_subpartitions, sizeof(int))
            if self._subpartition_counts == NULL:
                raise MemoryError()
            for i in range(num_subpartitions):
                r = _SubpartitionBufferRecycler.__new__(_SubpartitionBufferRecycler)
                r._pool = self
                r._channel = i
                self._subpartition_recyclers.append(r)

    def __init__(self, *args, **kwargs):
        raise TypeError("use NetworkBufferPool.create_buffer_pool() to make a LocalBufferPool")

    def __dealloc__(self):
        if self._subpartition_counts != NULL:
            PyMem_Free(self._subpartition_counts)
            self._subpartition_counts = NULL

    # -- availability (Flink's checkAndUpdateAvailability) ------------------------------------

    cdef bint _should_be_available(self) noexcept:
        return len(self._free) > 0 and self._unavailable_subpartitions == 0

    cdef bint _request_from_global(self) except -1:
        cdef MemorySegment seg
        if self._requested >= self._pool_size:
            return False
        seg = self._nbp.request_pooled()
        if seg is None:
            return False
        self._requested += 1
        self._free.append(seg)
        return True

    cdef object check_and_update_availability(self):
        cdef bint available
        cdef bint was_available = self._availability._available
        cdef bint need_notification = False
        cdef object to_notify = None
        if self._free:
            available = self._should_be_available()
        elif self._requested >= self._pool_size:
            available = False
        else:
            if not self._request_from_global():
                need_notification = not self._requesting_global_notification
            available = self._should_be_available()
        if available:
            to_notify = self._availability.get_unavailable_to_reset_available()
            if not was_available and self._reclaimer is not None:
                self._reclaimer.poke()
        else:
            self._availability.reset_unavailable()
        if need_notification:
            self._requesting_global_notification = True
            self._nbp._waiting_pools.append(self)
        if FLINKNET_DEBUG:
            assert self._availability._available == self._should_be_available(), \
                "Inconsistent availability"
        return to_notify

    cdef object on_global_pool_available(self):
        self._requesting_global_notification = False
        if self._destroyed or self._availability._available:
            return None
        return self.check_and_update_availability()

    @property
    def is_available(self):
        """True when a free segment is held here and no subpartition is at its cap (Flink's rule)."""
        return self._availability._available

    def get_available_future(self):
        """A future completed when the pool turns available (already completed if it is)."""
        return self._availability.get_future()

    # -- requests -----------------------------------------------------------------------------

    cdef int check_channel(self, Py_ssize_t channel) except -1:
        if channel != UNKNOWN_CHANNEL and not 0 <= channel < self._num_subpartitions:
            raise ValueError(
                f"target channel {channel} out of range: this pool has {self._num_subpartitions} "
                f"subpartitions (use -1 for none)")
        return 0

    cdef MemorySegment request_segment(self, int channel):
        cdef MemorySegment seg = None
        if self._destroyed:
            raise CancelTaskError("Buffer pool has already been destroyed.")
        if self._free:
            seg = <MemorySegment>self._free.pop()
        elif self._requested >= self._pool_size:
            # Overdraft: only once the pool is exhausted, and at most max_overdraft beyond its size.
            if self._requested - self._pool_size < self._max_overdraft:
                seg = self._nbp.request_pooled()
                if seg is not None:
                    self._requested += 1
        if seg is None:
            return None
        if channel != UNKNOWN_CHANNEL:
            self._subpartition_counts[channel] += 1
            if self._subpartition_counts[channel] == self._max_buffers_per_channel:
                self._unavailable_subpartitions += 1
        _complete(self.check_and_update_availability())
        return seg

    cdef MemorySegment _request_segment_blocking(self, int channel, object timeout):
        cdef double t = _check_timeout(timeout, "timeout")
        cdef double deadline = monotonic() + t
        cdef double remaining
        cdef MemorySegment seg
        while True:
            seg = self.request_segment(channel)
            if seg is not None:
                return seg
            if self._reclaimer is not None:
                # The segments are most likely written and waiting in the reclaimer (the native
                # engine's done list): recycle them on this thread, or wait there (poked when
                # this pool turns available on any other path). No hop through a reaper thread.
                if t < 0:
                    self._reclaimer.reclaim(_RECLAIM_ROUND)
                    continue
                remaining = deadline - monotonic()
                if remaining > 0:
                    self._reclaimer.reclaim(_RECLAIM_ROUND if remaining > _RECLAIM_ROUND else remaining)
                    continue
            fut = self._availability.get_future()
            if t < 0:
                try:
                    fut.result()
                except CancelledError:
                    pass
                continue
            remaining = deadline - monotonic()
            if remaining <= 0:
                raise BufferRequestTimeoutError(
                    f"no buffer became available in {t:.3f} s "
                    f"(pool size {self._pool_size}, {self._requested} requested, "
                    f"{self._unavailable_subpartitions} subpartition(s) at their cap)")
            try:
                fut.result(remaining)
            except (TimeoutError, CancelledError):
                pass

    cdef BufferRecycler _recycler_for(self, int channel):
        if channel == UNKNOWN_CHANNEL:
            return self
        return <BufferRecycler>self._subpartition_recyclers[channel]

    def request_memory_segment(self):
        """A free segment or None (non-blocking); give it back with :meth:`recycle`."""
        return self.request_segment(UNKNOWN_CHANNEL)

    def request_memory_segment_blocking(self, timeout=None):
        """A segment, waiting while the pool is exhausted (up to ``timeout`` seconds if given)."""
        return self._request_segment_blocking(UNKNOWN_CHANNEL, timeout)

    def request_buffer(self):
        """A :class:`~flinknet._core.buffer.NetworkBuffer` recycled into this pool, or None."""
        cdef MemorySegment seg = self.request_segment(UNKNOWN_CHANNEL)
        if seg is None:
            return None
        return NetworkBuffer.create(seg, self, DT_DATA_BUFFER, 0)

    def request_buffer_builder(self, Py_ssize_t target_channel=UNKNOWN_CHANNEL):
        """A :class:`~flinknet._core.builder.BufferBuilder` for ``target_channel``, or None.

        With a channel, the buffer counts against that subpartition's cap until recycled.
        """
        cdef MemorySegment seg
        self.check_channel(target_channel)
        seg = self.request_segment(<int>target_channel)
        if seg is None:
            return None
        return BufferBuilder.create(seg, self._recycler_for(<int>target_channel))

    def request_buffer_builder_blocking(self, Py_ssize_t target_channel=UNKNOWN_CHANNEL, timeout=None):
        """Like :meth:`request_buffer_builder` but waits while the pool is exhausted.

        This wait is backpressure. ``timeout`` (seconds) bounds it with
        :class:`~flinknet.errors.BufferRequestTimeoutError`; destroying the pool wakes it with
        :class:`~flinknet.errors.CancelTaskError`.
        """
        cdef MemorySegment seg
        self.check_channel(target_channel)
        seg = self._request_segment_blocking(<int>target_channel, timeout)
        return BufferBuilder.create(seg, self._recycler_for(<int>target_channel))

    # -- recycling ----------------------------------------------------------------------------

    cpdef recycle(self, MemorySegment segment):
        """Take back a segment handed out by this pool (not counted against any subpartition)."""
        self.recycle_segment(segment, UNKNOWN_CHANNEL)

    cdef int recycle_segment(self, MemorySegment segment, int channel) except -1:
        cdef object listener
        cdef object to_notify = None
        cdef NetworkBuffer buf
        cdef object error = None
        if segment is None:
            raise TypeError("cannot recycle None")
        segment.check_not_exported("recycle the memory segment")
        if channel != UNKNOWN_CHANNEL:
            if self._subpartition_counts[channel] == self._max_buffers_per_channel:
                self._unavailable_subpartitions -= 1
            self._subpartition_counts[channel] -= 1
        while True:
            if self._destroyed or self._requested > self._pool_size:
                self._requested -= 1
                self._nbp.recycle_pooled(segment)
                break
            if not self._listeners:
                if FLINKNET_DEBUG:
                    for s in self._free:
                        assert s is not segment, "segment recycled twice into a LocalBufferPool"
                self._free.append(segment)
                if not self._availability._available and self._should_be_available():
                    to_notify = self._availability.get_unavailable_to_reset_available()
                    if self._reclaimer is not None:
                        self._reclaimer.poke()
                break
            listener = self._listeners.popleft()
            # Outside any state change, as Flink (FLINK-9676): the listener may call back in.
            buf = NetworkBuffer.create(segment, self, DT_DATA_BUFFER, 0)
            try:
                if listener.notify_buffer_available(buf):
                    break
            except BaseException as e:
                if error is None:
                    error = e
            if buf._ref_count == 1:
                # Declined (or failed) and not retained: offer the segment to the next listener.
                buf.disown()
            else:
                break
        _complete(to_notify)
        if error is not None:
            raise error
        return 0

    def set_reclaimer(self, SegmentReclaimer reclaimer):
        """Where this pool's used segments wait to be recycled in batches (the network
        environment's native engine, whose I/O thread writes the pool's buffers), or None. A
        blocking request that finds the pool exhausted then recycles what the reclaimer holds on
        its own thread, or waits in it, instead of waiting for a reaper thread to recycle them and
        complete the availability future: one wake-up less per refill."""
        if reclaimer is not None and not reclaimer.implemented():
            raise TypeError(f"{type(reclaimer).__name__} does not implement a reclaimer "
                            "(only a native one, such as the engine of a NetworkEnvironment, does)")
        self._reclaimer = reclaimer

    @property
    def reclaimer(self):
        """The pool's :class:`SegmentReclaimer`, or None (see :meth:`set_reclaimer`)."""
        return self._reclaimer

    def add_buffer_listener(self, listener):
        """Register a one-shot listener for the next recycled buffer; False if buffers are free now.

        ``listener.notify_buffer_available(buffer)`` returns True to keep the buffer (then it
        owns one reference) or False to pass it on; ``listener.notify_buffer_destroyed()`` is
        called if the pool is destroyed first.
        """
        if self._free or self._destroyed:
            return False
        self._listeners.append(listener)
        return True

    # -- sizing and lifecycle -----------------------------------------------------------------

    cdef int _return_excess(self) except -1:
        while self._requested > self._pool_size and self._free:
            self._requested -= 1
            self._nbp.recycle_pooled(<MemorySegment>self._free.pop())
        return 0

    cdef object set_num_buffers_internal(self, int num_buffers):
        if num_buffers < self._min:
            raise ValueError(
                f"Buffer pool needs at least {self._min} buffers, but tried to set to {num_buffers}")
        self._pool_size = num_buffers if num_buffers < self._max else self._max
        self._return_excess()
        if self._destroyed:
            return None
        return self.check_and_update_availability()

    def set_num_buffers(self, Py_ssize_t num_buffers):
        """Set the pool size (capped at ``max_buffers``); surplus free segments go back now,
        surplus handed-out ones when they are recycled."""
        _complete(self.set_num_buffers_internal(to_int(num_buffers, "num_buffers")))

    def reserve_segments(self, Py_ssize_t num_segments, timeout=None):
        """Make sure ``num_segments`` (≤ ``min_buffers``) segments are held, waiting for them."""
        cdef double t = _check_timeout(timeout, "timeout")
        cdef list segments
        if num_segments > self._min:
            raise ValueError("Can not reserve more segments than number of minimum segments.")
        if self._destroyed:
            raise CancelTaskError("Buffer pool has already been destroyed.")
        if self._requested >= num_segments:
            return
        segments = self._nbp.request_segments_blocking(
            num_segments - self._requested, self._nbp._request_timeout if t < 0 else t)
        if self._destroyed:
            for s in segments:
                self._nbp.recycle_pooled(<MemorySegment>s)
            raise CancelTaskError("Buffer pool has already been destroyed.")
        self._requested += len(segments)
        self._free.extend(segments)
        self._return_excess()
        _complete(self.check_and_update_availability())

    def lazy_destroy(self):
        """Destroy: free segments go back now, handed-out ones on recycle; blocked requesters and
        listeners are told. Idempotent."""
        cdef list listeners
        cdef object to_notify = None
        if self._destroyed:
            return
        while self._free:
            self._requested -= 1
            self._nbp.recycle_pooled(<MemorySegment>self._free.pop())
        listeners = list(self._listeners)
        self._listeners.clear()
        to_notify = self._availability.get_unavailable_to_reset_available()
        self._destroyed = True
        self._nbp.destroy_buffer_pool(self)
        if self._reclaimer is not None:
            self._reclaimer.poke()          # a blocked request sees the pool destroyed
        _complete(to_notify)
        for listener in listeners:
            listener.notify_buffer_destroyed()

    # -- figures ------------------------------------------------------------------------------

    @property
    def is_destroyed(self):
        """True after :meth:`lazy_destroy`."""
        return self._destroyed

    @property
    def num_buffers(self):
        """Current pool size (set by redistribution, between min and max)."""
        return self._pool_size

    @property
    def min_buffers(self):
        """Guaranteed number of segments."""
        return self._min

    @property
    def max_buffers(self):
        """Upper bound of the pool size (``UNBOUNDED`` for none)."""
        return self._max

    @property
    def requested_segments(self):
        """Segments taken from the global pool and not returned (free here or handed out)."""
        return self._requested

    @property
    def available_segments(self):
        """Free segments held here."""
        return len(self._free)

    @property
    def used_buffers(self):
        """Buffers handed out and not recycled (Flink ``bestEffortGetNumOfUsedBuffers``)."""
        cdef int used = self._requested - len(self._free)
        return used if used > 0 else 0

    @property
    def usage(self):
        """``used_buffers / num_buffers`` (above 1.0 in overdraft): Flink's out/inPoolUsage."""
        return self.used_buffers / self._pool_size

    @property
    def segment_size(self):
        """The size of every segment of this pool (its global pool's segment size)."""
        return self._nbp._segment_size

    @property
    def num_subpartitions(self):
        """Subpartitions whose outstanding buffers are capped (0: none)."""
        return self._num_subpartitions

    @property
    def max_buffers_per_channel(self):
        """The per-subpartition cap."""
        return self._max_buffers_per_channel

    @property
    def max_overdraft_buffers_per_gate(self):
        """Segments that may be taken beyond the pool size when it is exhausted."""
        return self._max_overdraft

    @max_overdraft_buffers_per_gate.setter
    def max_overdraft_buffers_per_gate(self, Py_ssize_t value):
        if value < 0:
            raise ValueError(f"max_overdraft_buffers_per_gate must be >= 0, got {value}")
        self._max_overdraft = to_int(value, "max_overdraft_buffers_per_gate")

    @property
    def num_listeners(self):
        """Registered buffer listeners waiting for a recycled buffer."""
        return len(self._listeners)

    def subpartition_buffer_count(self, Py_ssize_t channel):
        """Outstanding buffers of subpartition ``channel``."""
        if not 0 <= channel < self._num_subpartitions:
            raise ValueError(f"channel {channel} out of range [0, {self._num_subpartitions})")
        return self._subpartition_counts[channel]

    def __repr__(self):
        return (f"<LocalBufferPool size={self._pool_size} [{self._min}, {self._max}] "
                f"requested={self._requested} free={len(self._free)} "
                f"{'available' if self._availability._available else 'unavailable'}"
                f"{' destroyed' if self._destroyed else ''}>")
