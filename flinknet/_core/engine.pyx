# cython: linetrace=False, profile=False
# The engine is never line-traced, even in FLINKNET_DEBUG builds: tracing a nogil line takes the
# GIL, and the I/O thread holds native locks that GIL holders wait for (a lock-order inversion).
"""The native receive engine: an epoll I/O thread that never holds the GIL per buffer, and the
native queues it shares with the task threads (the design of libzmq's I/O threads and libuv).

Three pieces (their ownership and locking rules are in ``engine.pxd``):

* :class:`GateSignal` — an input gate's doorbell: a FIFO of ready channel indexes, each at most
  once, and a condition variable the task thread waits on with the GIL released. The I/O thread
  rings it once per empty → non-empty transition of a channel's queue.
* :class:`ChannelQueue` — a remote channel's credit slots (its exclusive segments and the
  floating buffers it borrowed) and its queue of received buffers. The I/O thread pops a free
  slot, receives a BufferResponse's payload straight into it (the one copy) and queues it; the
  task thread polls it and gets a :class:`~flinknet._core.buffer.NetworkBuffer` whose recycling
  puts the slot back as one credit. Credit freed while the channel still has received buffers
  queued waits for them; once the queue runs dry it goes out as one AddCredit, written by the
  recycling thread itself when nothing else is queued on the connection (else the I/O thread
  coalesces it with the rest).
* :class:`OutputQueue` — the send side: one receiver's queue of finished buffers (read-only
  slices of the producer's segments) that a pipelined subpartition pushes into; the I/O thread
  sends them as BufferResponses straight from the segments (gather writes, up to 64 frames per
  system call), a data buffer per credit, and puts each written buffer on the engine's done
  list. A writer whose pool ran dry takes that list and recycles it on its own thread (the engine
  is the :class:`~flinknet._core.pool.SegmentReclaimer` of its environment's partition pools: the
  I/O thread wakes the waiting writer, not a reaper that would then wake it); else the reaper
  thread recycles it in batches with the GIL.
* :class:`ReceiveEngine` / :class:`NativeConnection` — one I/O thread per engine, epoll over its
  connections and an eventfd. Per frame it checks the header (length, magic, id, sizes, sequence
  number) before using anything of it; a plain data BufferResponse for a registered channel (a
  client-role connection) and an AddCredit for a registered output queue (a server-role one)
  never leave C. Every other frame (events, errors, backlog announcements, requests, unknown
  receivers) goes whole, with the GIL, to the connection's Python handler, which decodes it with
  :class:`~flinknet._core.protocol.FrameDecoder` exactly as the Python transport does.

Name map: Flink's ``CreditBasedPartitionRequestClientHandler`` + ``NettyMessageClientDecoderDelegate``
(the data path) and ``PartitionRequestQueue`` (the server's write loop) → :class:`NativeConnection`;
``PipelinedSubpartition``'s buffer queue as a ``CreditBasedSequenceNumberingViewReader`` reads it →
:class:`OutputQueue`; ``RemoteInputChannel``'s ``receivedBuffers`` and
``BufferManager``'s available-buffer queue → :class:`ChannelQueue`; ``SingleInputGate``'s
``inputChannelsWithData`` wake-up → :class:`GateSignal`.
"""

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF
from libc.errno cimport EAGAIN, EINTR, ETIMEDOUT, errno
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memmove, memset, strerror
from libc.stdio cimport snprintf

from flinknet._core.buffer cimport (Buffer, BufferRecycler, NetworkBuffer, DT_DATA_BUFFER, DT_NONE,
                                    DT_PRIORITIZED_EVENT_BUFFER,
                                    DTF_BLOCKING_UPSTREAM, DTF_BUFFER, DTF_PRIORITY, data_type_flags)
from flinknet._core.memory cimport MemorySegment
from flinknet._core.pool cimport LocalBufferPool
from flinknet._core.defs cimport fn_load_be_i32, fn_load64, fn_store_be_i32, FLINKNET_DEBUG

import logging
import threading

from flinknet._core.buffer import DataType

log = logging.getLogger("flinknet.transport.native")

cdef tuple _DATA_TYPES = tuple(DataType)


cdef extern from "<pthread.h>" nogil:
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_trylock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_cond_init(pthread_cond_t *c, const void *attr)
    int pthread_cond_destroy(pthread_cond_t *c)
    int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
    int pthread_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *m, const timespec *abstime)
    int pthread_cond_broadcast(pthread_cond_t *c)
    int pthread_cond_signal(pthread_cond_t *c)


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int CLOCK_REALTIME
    int CLOCK_MONOTONIC
    int clock_gettime(int clk, timespec *ts)


cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        int fd
        uint64_t u64
        void *ptr
    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data
    int EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP, EPOLLRDHUP
    int EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLL_CTL_DEL, EPOLL_CLOEXEC
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)


cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    int EFD_NONBLOCK, EFD_CLOEXEC


cdef extern from "<sys/timerfd.h>" nogil:
    cdef struct itimerspec:
        timespec it_interval
        timespec it_value
    int timerfd_create(int clockid, int flags)
    int timerfd_settime(int fd, int flags, const itimerspec *new_value, itimerspec *old_value)
    int TFD_NONBLOCK, TFD_CLOEXEC


cdef extern from "<sys/uio.h>" nogil:
    cdef struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t readv(int fd, const iovec *iov, int iovcnt)


cdef extern from "<sys/socket.h>" nogil:
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    int MSG_NOSIGNAL
    int MSG_DONTWAIT
    int SHUT_RDWR
    int shutdown(int fd, int how)
    cdef struct msghdr:
        void *msg_name
        int msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    ssize_t sendmsg(int fd, const msghdr *msg, int flags)


cdef extern from "Python.h":
    int PyGC_Disable()
    int PyGC_Enable()


cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void *buf, size_t n)
    ssize_t write(int fd, const void *buf, size_t n)
    int close(int fd)


cdef extern from *:
    """
    #include <stdio.h>
    #include <stdlib.h>
    /* The engine's invariants, checked in FLINKNET_DEBUG builds (independent of NDEBUG): a
       broken one aborts with its text, file and line. */
    #define FN_ASSERT(cond) do { if (FLINKNET_DEBUG && !(cond)) { \\
        fprintf(stderr, "flinknet engine invariant failed: %s (%s:%d)\\n", #cond, __FILE__, __LINE__); \\
        abort(); } } while (0)
    """
    void FN_ASSERT(bint cond) nogil


cdef extern from *:
    """
    /* The engine whose epoll events the calling thread is handling (its I/O thread, between
       epoll_wait and taking the writes), else NULL: what that thread asks to flush it flushes
       in the same iteration, so it need not wake itself through the eventfd. */
    static __thread void *fn_io_handling = NULL;
    /* Set by a record reader on its own thread while it reads a buffer it took through the
       gate's lane (defer_credit): a slot that buffer frees is listed on its connection and
       marked in its gate's doorbell instead of announced by an inline send, so the AddCredit
       goes out after the records are handed out (the gate flushes at the lane's next poll and
       before a wait: GateSignal.flush_credit; the credit timer writes it at the latest). */
    static __thread int fn_defer_credit = 0;
    """
    void *fn_io_handling
    int fn_defer_credit


cdef enum:
    _MAGIC = 0xBADC0FFE
    _MAX_EVENTS = 64
    _ADD_CREDIT_LEN = 29
    # AddCredit frames a task thread writes itself at most (more listed: the I/O thread does)
    _INLINE_CREDITS = 32
    # Frames (header and payload) a pushing task thread writes into an idle connection itself
    # (_write_through): the small frames a flush makes; full buffers go through the I/O thread,
    # which keeps their kernel copy off the task's thread
    _WRITE_THROUGH_MAX = 4096
    # GateSignal.wait's GIL hold: a GIL-released wait whose thread took the GIL back more than
    # this many µs after its wake-up met another Python thread holding it (contention); every
    # this many waits that kept the GIL, one gives it away again to measure anew
    _GIL_CONTENDED_US = 1000
    _GIL_REMEASURE = 64
    # The longest an AddCredit listed while the task still had buffers queued waits (the poll
    # that empties the queue usually writes it sooner): a consumer that stops reading with
    # buffers queued still returns the credit of those it recycled, as Flink does
    _CREDIT_DELAY_NS = 5000000
    # Entries a channel queues beyond its slots (events do not take credit); a sender exceeding
    # this is refused (the channel fails) instead of growing the queue without bound.
    _MAX_EXTRA_ENTRIES = 4096
    # Frames (and their bytes) a server-role connection takes from its readers per write round.
    _WIRE_FRAMES = 64
    _WIRE_BYTES = 1048576
    _BR_LEN = 47


# -- the doorbell ------------------------------------------------------------------------------

cdef inline double _monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline void _deadline(timespec *ts, double timeout) noexcept nogil:
    clock_gettime(CLOCK_REALTIME, ts)
    cdef long long ns = <long long>(timeout * 1e9)
    ts.tv_sec += <time_t>(ns // 1000000000)
    ts.tv_nsec += <long>(ns % 1000000000)
    if ts.tv_nsec >= 1000000000:
        ts.tv_sec += 1
        ts.tv_nsec -= 1000000000


cdef bint fn_signal_ready(fn_signal *s, int index) noexcept nogil:
    """Queue channel ``index`` as ready (any thread, no GIL). True if the armed callback must be
    called (the caller then calls it with the GIL)."""
    cdef bint call = False
    pthread_mutex_lock(&s.lock)
    FN_ASSERT(index >= 0 and index < s.capacity)
    if not s.is_ready[index]:
        s.is_ready[index] = 1
        s.ready[(s.head + s.count) % s.capacity] = index
        s.count += 1
        if s.waiters:
            pthread_cond_broadcast(&s.cond)
        if s.armed:
            s.armed = False
            call = True
        if s.fd_armed:
            s.fd_armed = False
            s.fd_rung = True
            _ring_fd(s.wake_fd)
    pthread_mutex_unlock(&s.lock)
    return call


cdef inline void _ring_fd(int fd) noexcept nogil:
    # an eventfd's counter: one write makes it readable (EAGAIN only at 2**64 - 2: ignored)
    cdef uint64_t one = 1
    FN_ASSERT(fd >= 0)
    write(fd, &one, sizeof(one))


cdef inline void _drain_fd(int fd) noexcept nogil:
    cdef uint64_t value
    if fd >= 0:
        read(fd, &value, sizeof(value))


cdef class GateSignal:
    """An input gate's doorbell (see the module docstring).

    ``GateSignal(num_channels, callback=None)``: ``callback()`` is called (with the GIL, on the
    thread that rang) once after :meth:`arm` when a channel next becomes ready.
    """

    def __cinit__(self, int num_channels, callback=None):
        if num_channels <= 0:
            raise ValueError(f"num_channels must be > 0, got {num_channels}")
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable or None")
        self.s.capacity = num_channels
        self.s.ready = <int *>calloc(num_channels, sizeof(int))
        self.s.is_ready = <char *>calloc(num_channels, 1)
        self.s.deferred = <int *>calloc(num_channels, sizeof(int))
        self.s.is_deferred = <char *>calloc(num_channels, 1)
        if (self.s.ready == NULL or self.s.is_ready == NULL or self.s.deferred == NULL
                or self.s.is_deferred == NULL):
            free(self.s.ready)
            free(self.s.is_ready)
            free(self.s.deferred)
            free(self.s.is_deferred)
            self.s.ready = NULL
            self.s.is_ready = NULL
            self.s.deferred = NULL
            self.s.is_deferred = NULL
            raise MemoryError()
        self.s.wake_fd = -1
        pthread_mutex_init(&self.s.lock, NULL)
        pthread_cond_init(&self.s.cond, NULL)
        self.s.owner = <void *>self
        self._callback = callback
        self._init_done = True

    def __dealloc__(self):
        if self._init_done:
            if self.s.wake_fd >= 0:
                close(self.s.wake_fd)
            pthread_mutex_destroy(&self.s.lock)
            pthread_cond_destroy(&self.s.cond)
            free(self.s.ready)
            free(self.s.is_ready)
            free(self.s.deferred)
            free(self.s.is_deferred)

    def flush_credit(self, list queues not None, bint idle_only=False):
        """Announce the credit that reads on the lane deferred (:func:`defer_credit`): each
        channel still listed has its connection's credit list written now (inline when the
        connection is idle, else by its I/O thread). ``queues`` is the gate's list of
        :class:`ChannelQueue` (None for channels without one), by channel index. The gate calls
        it at the lane's next poll and before it waits; cheap when nothing was deferred. With
        ``idle_only`` (the lane's poll) a channel that received more meanwhile is left listed:
        its credit waits for its queue to run dry, as credit freed while a channel has
        buffers queued does (the poll that empties it defers it again; the credit timer at the
        latest), instead of a ``send`` before the reader takes that buffer. GIL."""
        cdef int idx
        cdef object q
        if self.s.num_deferred == 0:     # (a racy peek: only this gate's reader defers)
            return
        while True:
            pthread_mutex_lock(&self.s.lock)
            if self.s.num_deferred == 0:
                pthread_mutex_unlock(&self.s.lock)
                return
            self.s.num_deferred -= 1
            idx = self.s.deferred[self.s.num_deferred]
            self.s.is_deferred[idx] = 0
            pthread_mutex_unlock(&self.s.lock)
            if idx < len(queues):
                q = queues[idx]
                if q is not None:
                    (<ChannelQueue>q)._announce_listed(idle_only)

    @property
    def deferred_credit_count(self):
        """Channels whose deferred credit :meth:`flush_credit` has yet to write."""
        return self.s.num_deferred

    def ready(self, int index):
        """Mark channel ``index`` ready (what the I/O thread does natively)."""
        if index < 0 or index >= self.s.capacity:
            raise IndexError(f"channel index {index} out of range [0, {self.s.capacity})")
        if fn_signal_ready(&self.s, index):
            self._call_back()

    cdef void _call_back_nogil(self) noexcept nogil:
        with gil:
            self._call_back()

    def _call_back(self):
        cb = self._callback
        if cb is not None:
            try:
                cb()
            except BaseException:  # noqa: BLE001 (the ringing thread must go on)
                log.exception("gate availability callback failed")

    def notify(self):
        """Wake every waiter (something Python-side changed: a queued channel, a close): the
        threads in :meth:`wait`, and an event loop armed by :meth:`arm_fd` (its eventfd is
        written). Remembered until the next wait or ``arm_fd`` if nobody waits."""
        pthread_mutex_lock(&self.s.lock)
        if self.s.waiters:
            self.s.pending = True
            pthread_cond_broadcast(&self.s.cond)
        if self.s.fd_armed:
            # delivered: the loop polls when it reads the fd (no pending left to poll once more)
            self.s.fd_armed = False
            self.s.fd_rung = True
            _ring_fd(self.s.wake_fd)
        else:
            self.s.pending = True
        pthread_mutex_unlock(&self.s.lock)

    def clear_pending(self):
        """Forget a :meth:`notify` nobody waited for. The gate calls it before it waits, under
        the lock every notifier holds, having seen its queue empty: such a notify's news (a
        queued channel, the end, a close) was already read, and the wait would otherwise end at
        once with a poll that finds nothing."""
        pthread_mutex_lock(&self.s.lock)
        self.s.pending = False
        pthread_mutex_unlock(&self.s.lock)

    def arm(self):
        """Call the callback at the next ready channel; True if one is ready already (then the
        callback is not armed: the caller drains now)."""
        cdef bint ready
        pthread_mutex_lock(&self.s.lock)
        ready = self.s.count > 0
        self.s.armed = not ready
        pthread_mutex_unlock(&self.s.lock)
        return ready

    def disarm(self):
        """Cancel :meth:`arm` and :meth:`arm_fd`."""
        pthread_mutex_lock(&self.s.lock)
        self.s.armed = False
        self.s.fd_armed = False
        pthread_mutex_unlock(&self.s.lock)

    @property
    def wake_fd(self):
        """The gate's eventfd for event loops (made at the first use, closed with the signal):
        readable after :meth:`arm_fd` once a channel is ready. The loop selects on it; whoever
        marks the channel ready writes it without the GIL (no callback, no thread hand-off)."""
        cdef int fd
        pthread_mutex_lock(&self.s.lock)
        if self.s.wake_fd < 0:
            self.s.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        fd = self.s.wake_fd
        pthread_mutex_unlock(&self.s.lock)
        if fd < 0:
            raise OSError(errno, "eventfd failed")
        return fd

    def arm_fd(self):
        """Write :attr:`wake_fd` at the next ready channel or :meth:`notify`; True if a channel
        is ready or a notify came since the last wait already (then nothing is armed, the notify
        is consumed, and the caller polls now). Clears a wake-up left from before."""
        cdef bint ready
        if self.s.wake_fd < 0:
            self.wake_fd
        pthread_mutex_lock(&self.s.lock)
        if self.s.fd_rung:          # (a wake-up nobody consumed: the fd is read only if written)
            self.s.fd_rung = False
            _drain_fd(self.s.wake_fd)
        ready = self.s.count > 0 or self.s.pending
        self.s.pending = False
        self.s.fd_armed = not ready
        pthread_mutex_unlock(&self.s.lock)
        return ready

    def clear_fd(self):
        """Consume a wake-up written to :attr:`wake_fd` (the loop's reader calls it)."""
        pthread_mutex_lock(&self.s.lock)
        self.s.fd_rung = False
        _drain_fd(self.s.wake_fd)
        pthread_mutex_unlock(&self.s.lock)

    def set_gil_hold(self, double seconds):
        """Let :meth:`wait` keep the GIL for up to ``seconds`` (0 turns it off; at most 0.1 s).

        For a gate whose every channel has a native queue: its data arrives from the I/O
        thread, which needs no GIL to ring. A wait that gives the GIL away while another Python
        thread runs (a CPU-bound neighbour) gets it back only when the interpreter forces a switch
        (``sys.getswitchinterval()``, 5 ms by default), once per credit round; a wait that keeps
        it loses nothing when the next buffer comes within the hold. The hold applies only while
        it pays: after a wait that gave the GIL away and took it back more than a millisecond
        after its wake-up (another thread had it), and while the last wait was shorter than the
        hold; every 64th wait that kept the GIL gives it away again, to measure anew. Python
        threads that need the GIL meanwhile (a notify, a close, the I/O thread's hand-over of
        an event) wait at most the hold, as they would behind a reader running Python."""
        if seconds != seconds or seconds < 0 or seconds > 0.1:
            raise ValueError(f"the GIL hold must be in [0, 0.1] seconds, got {seconds}")
        self._hold = seconds
        if seconds == 0:
            self._contended = False

    @property
    def gil_hold(self):
        """The longest a :meth:`wait` keeps the GIL, in seconds (0: never; :meth:`set_gil_hold`)."""
        return self._hold

    @property
    def held_waits(self):
        """Waits that kept the GIL and were woken within the hold (:meth:`set_gil_hold`)."""
        return self._held

    cdef bint _wait_holding(self, double hold):
        """Wait up to ``hold`` seconds for a ready channel or a notify, keeping the GIL."""
        cdef timespec ts
        cdef int rc = 0
        cdef bint woken
        cdef fn_signal *sig = &self.s
        _deadline(&ts, hold)
        pthread_mutex_lock(&sig.lock)
        sig.waiters += 1
        while sig.count == 0 and not sig.pending and rc == 0:
            rc = pthread_cond_timedwait(&sig.cond, &sig.lock, &ts)
        sig.waiters -= 1
        woken = sig.count > 0 or sig.pending
        if woken:
            sig.pending = False
        pthread_mutex_unlock(&sig.lock)
        return woken

    def wait(self, timeout=None):
        """Wait with the GIL released until a channel is ready or :meth:`notify` was called since
        the last wait; ``timeout`` in seconds (None: no limit). True if woken, False on timeout.
        With :meth:`set_gil_hold`, a wait that is likely short first waits keeping the GIL."""
        cdef double t = -1.0
        cdef double held = 0.0
        cdef double start, woke = 0.0
        cdef timespec ts
        cdef bint woken
        cdef int rc = 0
        if timeout is not None:
            t = timeout
            if t != t or t < 0:
                raise ValueError(f"timeout must be >= 0, got {timeout}")
            if t > 1e8:
                t = 1e8
        cdef fn_signal *sig = &self.s
        start = _monotonic()
        if self._hold > 0 and self._contended and self._last_wait < self._hold:
            held = self._hold if t < 0 or self._hold < t else t
            if self._wait_holding(held):
                self._last_wait = _monotonic() - start
                self._held += 1
                if self._held % _GIL_REMEASURE == 0:
                    self._contended = False     # the next wait gives the GIL away and measures
                return True
            self._last_wait = self._hold        # a miss: the next wait gives the GIL away
            if t >= 0:
                t -= held
                if t <= 0:
                    return False
        with nogil:
            if t >= 0:
                _deadline(&ts, t)
            pthread_mutex_lock(&sig.lock)
            sig.waiters += 1
            while sig.count == 0 and not sig.pending and rc == 0:
                if t < 0:
                    pthread_cond_wait(&sig.cond, &sig.lock)
                else:
                    rc = pthread_cond_timedwait(&sig.cond, &sig.lock, &ts)
            sig.waiters -= 1
            woken = sig.count > 0 or sig.pending
            sig.pending = False
            pthread_mutex_unlock(&sig.lock)
            if woken:
                woke = _monotonic()
        if woken and self._hold > 0:
            self._last_wait = woke - start
            self._contended = (_monotonic() - woke) * 1e6 > _GIL_CONTENDED_US
        return woken

    def drain(self):
        """The ready channel indexes, in the order they became ready (and forget them)."""
        cdef list out
        cdef int i, idx, n
        pthread_mutex_lock(&self.s.lock)
        n = self.s.count
        if n == 0:
            pthread_mutex_unlock(&self.s.lock)
            return []
        out = [0] * n
        for i in range(n):
            idx = self.s.ready[(self.s.head + i) % self.s.capacity]
            self.s.is_ready[idx] = 0
            out[i] = idx
        self.s.head = (self.s.head + n) % self.s.capacity
        self.s.count = 0
        pthread_mutex_unlock(&self.s.lock)
        return out

    def pop(self):
        """The first ready channel's index, taken out of the order (as :meth:`drain` takes all),
        or -1 if none is ready."""
        cdef int idx = -1
        pthread_mutex_lock(&self.s.lock)
        if self.s.count:
            idx = self.s.ready[self.s.head]
            self.s.is_ready[idx] = 0
            self.s.head = (self.s.head + 1) % self.s.capacity
            self.s.count -= 1
        pthread_mutex_unlock(&self.s.lock)
        return idx

    def requeue(self, int index):
        """Put channel ``index`` back at the end of the ready order (the reader took a buffer
        from it and it has more): wakes nobody and calls nothing back (the reader itself is
        the one who reads next). A channel already ready stays where it is."""
        if index < 0 or index >= self.s.capacity:
            raise IndexError(f"channel index {index} out of range [0, {self.s.capacity})")
        pthread_mutex_lock(&self.s.lock)
        if not self.s.is_ready[index]:
            self.s.is_ready[index] = 1
            self.s.ready[(self.s.head + self.s.count) % self.s.capacity] = index
            self.s.count += 1
        pthread_mutex_unlock(&self.s.lock)

    def poll_data(self, list queues not None):
        """The gate's fast lane (:meth:`~flinknet.consumer.SingleInputGate.poll_data_buffer`):
        the next data buffer a ready channel received natively, taken in the doorbell's order
        without draining it. ``queues[i]`` is channel ``i``'s :class:`ChannelQueue` (None for a
        channel without one). Returns ``(buffer, channel_index, sequence_number, backlog,
        more_ready)`` (``backlog`` as :meth:`ChannelQueue.poll` gives it; ``more_ready``: a
        channel is still ready), None when no channel is ready, or False when the first ready
        channel's next entry needs the gate's general path (an event, a priority event, a
        compressed buffer, a released channel, a channel without a native queue); then nothing
        was taken.

        A channel that has more after its buffer goes to the back of the doorbell's order (round
        robin), else it leaves it; both under the channel's lock, so an arrival racing with the
        take either sees the channel still ready or marks it ready again. Task thread (the GIL
        held: no other thread takes from the doorbell meanwhile)."""
        cdef int idx, next_type = DT_NONE
        cdef fn_entry e
        cdef fn_entry *head
        cdef int32_t backlog
        cdef void *conn = NULL
        cdef bint listed = False, more
        cdef object obj
        cdef ChannelQueue q
        while True:
            pthread_mutex_lock(&self.s.lock)
            if self.s.count == 0:
                pthread_mutex_unlock(&self.s.lock)
                return None
            idx = self.s.ready[self.s.head]
            pthread_mutex_unlock(&self.s.lock)
            if idx >= len(queues):
                return False
            obj = queues[idx]
            if type(obj) is not ChannelQueue:
                return False
            q = <ChannelQueue>obj
            if q.c.signal != &self.s:
                return False
            # lock order: the channel's, then the doorbell's (an arrival takes them one after
            # the other, never nested the other way)
            pthread_mutex_lock(&q.c.lock)
            pthread_mutex_lock(&self.s.lock)
            FN_ASSERT(self.s.count > 0 and self.s.ready[self.s.head] == idx)
            if q.c.released:
                pthread_mutex_unlock(&self.s.lock)
                pthread_mutex_unlock(&q.c.lock)
                return False
            if q.c.count == 0:
                # a stale mark (what it named was taken by the general path): forget it
                self.s.head = (self.s.head + 1) % self.s.capacity
                self.s.count -= 1
                self.s.is_ready[idx] = 0
                pthread_mutex_unlock(&self.s.lock)
                pthread_mutex_unlock(&q.c.lock)
                continue
            head = &q.c.ring[q.c.head]
            if (head.data_type != DT_DATA_BUFFER or q.c.num_priority
                    or (head.kind == ENTRY_OBJECT and (<Buffer>head.obj)._compressed)):
                pthread_mutex_unlock(&self.s.lock)
                pthread_mutex_unlock(&q.c.lock)
                return False
            _pop_head(&q.c, &e, &next_type, &backlog, &conn, &listed)
            more = q.c.count > 0
            self.s.head = (self.s.head + 1) % self.s.capacity
            if more:
                # to the back of the order (the count stays)
                self.s.ready[(self.s.head + self.s.count - 1) % self.s.capacity] = idx
            else:
                self.s.count -= 1
                self.s.is_ready[idx] = 0
            more = self.s.count > 0
            if conn != NULL and not self.s.is_deferred[idx]:
                # The queue ran dry with credit waiting for that: the gate's next flush_credit
                # writes it (the lane's next poll, or before the reader waits), after this
                # buffer's records are handed out, not before (an inline send costs the
                # loopback's receive path, 10-20 µs); the credit timer at the latest.
                FN_ASSERT(self.s.num_deferred < self.s.capacity)
                self.s.is_deferred[idx] = 1
                self.s.deferred[self.s.num_deferred] = idx
                self.s.num_deferred += 1
            pthread_mutex_unlock(&self.s.lock)
            pthread_mutex_unlock(&q.c.lock)
            if conn != NULL and not listed:
                _announce_native(&q.c, conn, ANNOUNCE_SOON)     # listed, the timer armed
            buf = q._wrap(&e)
            return (buf, idx, e.seq, backlog, more)

    @property
    def ready_count(self):
        """Channels ready and not drained yet."""
        return self.s.count

    @property
    def num_channels(self):
        return self.s.capacity


# -- a channel's slots and received queue -------------------------------------------------------

cdef inline void _pop_head(fn_channel *c, fn_entry *e, int *next_type, int32_t *backlog,
                           void **conn, bint *listed) noexcept nogil:
    """Under ``c.lock`` with ``c.count > 0``: take the head entry into ``e``. ``next_type``:
    the following entry's data type (left alone if none); ``backlog``: the sender's backlog the
    task acts on; ``conn`` set (and ``listed``: the channel was on its credit list already)
    when the queue ran dry with credit waiting for that: the caller announces it after
    unlocking (``_announce_native``)."""
    e[0] = c.ring[c.head]
    FN_ASSERT(e.kind == ENTRY_SLOT or e.kind == ENTRY_OBJECT)
    FN_ASSERT(c.queued_bytes >= e.size)
    FN_ASSERT(c.num_priority <= c.count)
    c.head = (c.head + 1) % c.ring_capacity
    c.count -= 1
    if c.num_priority > 0:
        c.num_priority -= 1
    c.queued_bytes -= e.size
    # The sender's backlog as the newest arrival reported it, not as this (older) buffer did:
    # Flink acts on each backlog when it arrives, so by the time the task takes a buffer the
    # channel has followed every later buffer and BacklogAnnouncement. Acting on a stale
    # figure would borrow floating buffers for data that already arrived (to sit as credit on
    # a channel with nothing more to send), or forget an announced backlog and refuse the
    # floating buffer it waits for (the producer then waits forever).
    backlog[0] = c.latest_backlog if c.latest_backlog >= 0 else e.backlog
    if c.count:
        next_type[0] = c.ring[c.head].data_type
    elif c.unannounced > 0 and c.conn != NULL and c.requested:
        # the queue ran dry: the credit that waited for it goes out now
        conn[0] = c.conn
        listed[0] = c.in_credit_list
        c.in_credit_list = True


cdef class _SlotRecycler(BufferRecycler):
    """Recycler of an exclusive slot's buffers: the slot goes back as one credit."""
    cdef ChannelQueue _queue
    cdef int _slot

    cpdef recycle(self, MemorySegment segment):
        self._queue._recycle_slot(self._slot)


cdef class _FloatingRecycler(BufferRecycler):
    """Recycler of a floating slot's buffers: the slot stays with the channel as one credit
    while the sender's backlog needs it and no other channel waits for the gate pool; else the
    floating buffer goes back to the pool (which hands it to the channel waiting longest)."""
    cdef ChannelQueue _queue
    cdef int _slot

    cpdef recycle(self, MemorySegment segment):
        self._queue._recycle_floating(self._slot)


cdef void *_regrow_ring(void *ring, int head, int count, int capacity, int new_capacity,
                        size_t item) noexcept nogil:
    """A new array of ``new_capacity`` items holding the ``count`` items of the circular array
    ``ring`` (from ``head``) in order from index 0; the old array is freed. NULL (the old array
    kept) if out of memory. The three rings of the engine (a channel's entries, a queue's
    entries, a connection's ready queues) grow with it."""
    cdef char *out = <char *>malloc(new_capacity * item)
    cdef int first
    if out == NULL:
        return NULL
    if count:
        first = capacity - head if head + count > capacity else count
        memcpy(out, <char *>ring + head * item, first * item)
        memcpy(out + first * item, ring, (count - first) * item)
    free(ring)
    return out


cdef int _grow_ring(fn_channel *c) noexcept nogil:
    """Double the ring (under c.lock). -1 if out of memory."""
    cdef int cap = c.ring_capacity * 2 if c.ring_capacity else 8
    cdef fn_entry *ring = <fn_entry *>_regrow_ring(c.ring, c.head, c.count, c.ring_capacity, cap,
                                                    sizeof(fn_entry))
    if ring == NULL:
        return -1
    c.ring = ring
    c.ring_capacity = cap
    c.head = 0
    return 0


cdef inline int _ring_push(fn_channel *c, fn_entry *e) noexcept nogil:
    """Append under c.lock: 1 if the queue was empty (ring the gate), 0, or -1 (refused)."""
    FN_ASSERT(c.count <= c.ring_capacity)
    FN_ASSERT(e.kind == ENTRY_OBJECT or (e.slot >= 0 and e.slot < c.slot_capacity))
    if c.count == c.ring_capacity:
        if c.count >= c.slot_capacity + _MAX_EXTRA_ENTRIES or _grow_ring(c) < 0:
            return -1
    c.ring[(c.head + c.count) % c.ring_capacity] = e[0]
    c.count += 1
    c.queued_bytes += e.size
    return 1 if c.count == 1 else 0


cdef inline int _ring_push_priority(fn_channel *c, fn_entry *e) noexcept nogil:
    """Insert a priority event under c.lock behind the priority events already queued, ahead of
    everything else (Flink's ``PrioritizedDeque.addPriorityElement``): 1 if the queue was
    empty, 0, or -1 (refused)."""
    cdef int cap, i
    FN_ASSERT(c.num_priority >= 0 and c.num_priority <= c.count)
    if c.count == c.ring_capacity:
        if c.count >= c.slot_capacity + _MAX_EXTRA_ENTRIES or _grow_ring(c) < 0:
            return -1
    cap = c.ring_capacity
    c.head = (c.head + cap - 1) % cap
    for i in range(c.num_priority):
        c.ring[(c.head + i) % cap] = c.ring[(c.head + i + 1) % cap]
    c.ring[(c.head + c.num_priority) % cap] = e[0]
    c.num_priority += 1
    c.count += 1
    c.queued_bytes += e.size
    return 1 if c.count == 1 else 0


cdef enum:
    # fn_channel_put_slot results
    PUT_OK = 0
    PUT_ANNOUNCE = 1      # the channel's unannounced credit went 0 -> > 0 (not handled natively)
    # how _announce_native announces
    ANNOUNCE_SOON = 1     # list the channel; the I/O thread writes it when the credit timer fires
    ANNOUNCE_NOW = 2      # list it and write the list now
    ANNOUNCE_LISTED = 3   # it is listed already: write the list now




cdef int fn_channel_put_slot(fn_channel *c, int slot, bint announce) noexcept nogil:
    """A slot becomes free (under nothing; takes c.lock): one more credit."""
    cdef int result = PUT_OK
    cdef int how = 0
    cdef void *conn = NULL
    cdef bint defer = False
    cdef fn_signal *s
    pthread_mutex_lock(&c.lock)
    FN_ASSERT(c.num_free < c.slot_capacity)
    c.free_slots[c.num_free] = slot
    c.num_free += 1
    c.stall_notified = False
    if announce:
        c.unannounced += 1
        if c.conn != NULL and c.requested:
            if not c.in_credit_list:
                # Listed for the connection's next AddCredit: at once if the task has nothing
                # queued (it waits for data), else by the poll that empties the queue or by the
                # I/O thread when the credit timer fires (_CREDIT_DELAY_NS), whichever is first.
                # A reader reading a lane buffer on this thread (fn_defer_credit) writes it
                # itself before it waits: after the records are handed out.
                c.in_credit_list = True
                if c.count == 0 and not (fn_defer_credit and c.signal != NULL):
                    how = ANNOUNCE_NOW
                else:
                    how = ANNOUNCE_SOON
                    defer = c.count == 0
                conn = c.conn
        elif c.unannounced == 1:
            result = PUT_ANNOUNCE
    pthread_mutex_unlock(&c.lock)
    if defer:
        s = c.signal
        pthread_mutex_lock(&s.lock)
        FN_ASSERT(c.index >= 0 and c.index < s.capacity)
        FN_ASSERT(s.num_deferred < s.capacity or s.is_deferred[c.index])
        if not s.is_deferred[c.index]:
            s.is_deferred[c.index] = 1
            s.deferred[s.num_deferred] = c.index
            s.num_deferred += 1
        pthread_mutex_unlock(&s.lock)
    if how:
        _announce_native(c, conn, how)
    return result


def defer_credit(bint on):
    """On the calling thread: while on, a slot a buffer frees is announced by the gate's
    :meth:`GateSignal.flush_credit` at the lane's next poll or before a wait, instead of by an
    inline AddCredit at the recycle (see ``fn_defer_credit``). A record reader turns it on around
    the reading of a lane buffer, so the AddCredit's ``send`` falls after the records are handed
    out."""
    global fn_defer_credit
    fn_defer_credit = on


cdef class ChannelQueue:
    """A remote channel's credit slots and received-buffer queue (see the module docstring).

    ``ChannelQueue(signal, index, receiver_id, on_exclusive_free)``: ``signal`` is the gate's
    :class:`GateSignal`, ``index`` the channel's index in it, ``receiver_id`` the 16-byte
    InputChannelID, ``on_exclusive_free(segments)`` gives exclusive segments back once the queue
    is released (the global pool's ``recycle_unpooled_memory_segments``).
    """

    def __cinit__(self, GateSignal signal not None, int index, bytes receiver_id not None,
                  on_exclusive_free not None):
        if index < 0 or index >= signal.s.capacity:
            raise IndexError(f"channel index {index} out of range [0, {signal.s.capacity})")
        if len(receiver_id) != 16:
            raise ValueError(f"receiver_id must be 16 bytes, got {len(receiver_id)}")
        if not callable(on_exclusive_free):
            raise TypeError("on_exclusive_free must be callable")
        pthread_mutex_init(&self.c.lock, NULL)
        self._init_done = True
        self._signal = signal
        self.c.signal = &signal.s
        self.c.index = index
        self.c.owner = <void *>self
        memcpy(self.c.receiver_id, PyBytes_AS_STRING(receiver_id), 16)
        self._slot_objects = []
        self._slot_recyclers = []
        self._unused_ids = []
        self._on_exclusive_free = on_exclusive_free
        self.c.expected_seq = 0
        self.c.latest_backlog = -1
        self._required = 2147483647

    def __dealloc__(self):
        cdef int i
        if not self._init_done:
            return
        # Entries still queued hold references (released() was not called: the owner is being
        # collected with the interpreter's help; drop them so nothing leaks).
        for i in range(self.c.count):
            if self.c.ring[(self.c.head + i) % self.c.ring_capacity].kind == ENTRY_OBJECT:
                Py_DECREF(<object>self.c.ring[(self.c.head + i) % self.c.ring_capacity].obj)
        free(self.c.ring)
        free(self.c.slot_addr)
        free(self.c.slot_cap)
        free(self.c.free_slots)
        pthread_mutex_destroy(&self.c.lock)

    # -- slots (GIL) -------------------------------------------------------------------------

    cdef int _new_slot(self, object owner, MemorySegment segment, BufferRecycler recycler) except -1:
        cdef int slot, cap
        cdef char **addr
        cdef int32_t *caps
        cdef int *free_slots
        if self._unused_ids:
            slot = self._unused_ids.pop()
            self._slot_objects[slot] = owner
            self._slot_recyclers[slot] = recycler
        else:
            slot = len(self._slot_objects)
            if slot >= self.c.slot_capacity:
                cap = self.c.slot_capacity * 2 if self.c.slot_capacity else 4
                pthread_mutex_lock(&self.c.lock)
                addr = <char **>realloc(self.c.slot_addr, cap * sizeof(char *))
                if addr != NULL:
                    self.c.slot_addr = addr
                caps = <int32_t *>realloc(self.c.slot_cap, cap * sizeof(int32_t))
                if caps != NULL:
                    self.c.slot_cap = caps
                free_slots = <int *>realloc(self.c.free_slots, cap * sizeof(int))
                if free_slots != NULL:
                    self.c.free_slots = free_slots
                if addr != NULL and caps != NULL and free_slots != NULL:
                    self.c.slot_capacity = cap
                pthread_mutex_unlock(&self.c.lock)
                if self.c.slot_capacity != cap:
                    raise MemoryError()
            self._slot_objects.append(owner)
            self._slot_recyclers.append(recycler)
        pthread_mutex_lock(&self.c.lock)
        self.c.slot_addr[slot] = segment._address
        self.c.slot_cap[slot] = <int32_t>segment._size
        pthread_mutex_unlock(&self.c.lock)
        return slot

    cdef void _forget_slot(self, int slot):
        self._slot_objects[slot] = None
        self._slot_recyclers[slot] = None
        self._unused_ids.append(slot)

    def add_exclusive(self, MemorySegment segment not None, bint announce=True):
        """Add an exclusive segment as a free slot. True if the unannounced credit went from 0
        to > 0 and no native connection announces it (the caller sends AddCredit)."""
        cdef _SlotRecycler r
        cdef int slot
        if self.c.released:
            self._on_exclusive_free([segment])
            return False
        r = _SlotRecycler.__new__(_SlotRecycler)
        r._queue = self
        slot = self._new_slot(segment, segment, r)
        r._slot = slot
        self._num_exclusive += 1
        return fn_channel_put_slot(&self.c, slot, announce) == PUT_ANNOUNCE

    def add_floating(self, NetworkBuffer buffer not None):
        """Add a floating buffer (borrowed from the gate pool) as a free slot; returns as
        :meth:`add_exclusive`. A released queue recycles it at once."""
        cdef int slot
        cdef _FloatingRecycler r
        if self.c.released:
            buffer.recycle()
            return False
        r = _FloatingRecycler.__new__(_FloatingRecycler)
        r._queue = self
        slot = self._new_slot(buffer, buffer._segment, r)
        r._slot = slot
        return fn_channel_put_slot(&self.c, slot, True) == PUT_ANNOUNCE

    cdef int _recycle_floating(self, int slot) except -1:
        """A floating slot's buffer was recycled (GIL): keep the slot as credit if the backlog
        needs it and nobody else waits for the gate pool, else give the buffer back."""
        cdef NetworkBuffer original = <NetworkBuffer>self._slot_objects[slot]
        cdef bint keep = not self.c.released and self.c.num_free < self._required
        if keep and isinstance(original._recycler, LocalBufferPool):
            # another channel waiting for a floating buffer gets this one (the pool's FIFO); the
            # channel owning this queue waiting for more is no reason to give it away
            listeners = (<LocalBufferPool>original._recycler)._listeners
            if listeners is not None and len(listeners):
                owner = getattr(self._backlog_callback, "__self__", None)
                keep = owner is not None and all(listener is owner for listener in listeners)
        if keep:
            if fn_channel_put_slot(&self.c, slot, True) == PUT_ANNOUNCE:
                cb = self._exclusive_owner
                if cb is not None:
                    cb()
            return 0
        self._forget_slot(slot)
        original.recycle()
        return 0

    cdef int _recycle_slot(self, int slot) except -1:
        """An exclusive slot's buffer was recycled (GIL)."""
        cdef object seg = self._slot_objects[slot]
        if self.c.released:
            self._forget_slot(slot)
            self._num_exclusive -= 1
            self._on_exclusive_free([seg])
            return 0
        give_back = None
        if self.c.num_free + 1 > self._required:
            give_back = self.take_free_floating()
        # Swapping a floating slot for the exclusive one leaves the credit unchanged.
        if fn_channel_put_slot(&self.c, slot, give_back is None) == PUT_ANNOUNCE:
            cb = self._exclusive_owner
            if cb is not None:
                cb()
        if give_back is not None:
            give_back.recycle()
        return 0

    def set_backlog_callback(self, callback):
        """``callback(backlog)`` (the I/O thread, with the GIL) when a natively received buffer
        used the last free slot while the sender has a backlog: borrow floating buffers."""
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable or None")
        self._backlog_callback = callback

    def set_floating_blocked(self, bint blocked):
        """The gate pool has no floating buffer (True) or offered one (False): while blocked,
        the I/O thread does not ask for floating buffers."""
        pthread_mutex_lock(&self.c.lock)
        self.c.floating_blocked = blocked
        if not blocked:
            self.c.stall_notified = False
        pthread_mutex_unlock(&self.c.lock)

    def _on_stall(self, int backlog):
        cb = self._backlog_callback
        if cb is not None:
            try:
                cb(backlog)
            except BaseException:  # noqa: BLE001 (the I/O thread must go on)
                log.exception("asking for floating buffers failed")

    def note_backlog(self, int backlog):
        """A backlog that arrived without a buffer (a BacklogAnnouncement, an empty buffer):
        the newest figure from now on (see :meth:`poll`)."""
        if backlog < 0:
            return
        pthread_mutex_lock(&self.c.lock)
        self.c.latest_backlog = backlog
        pthread_mutex_unlock(&self.c.lock)

    @property
    def latest_backlog(self):
        """The sender's backlog as the newest arrival reported it (-1 before the first)."""
        return self.c.latest_backlog

    def set_required(self, int required):
        """Free slots the sender's backlog asks for (backlog + initial credit)."""
        self._required = required

    def set_announce_callback(self, callback):
        """``callback()`` when recycling a buffer makes the unannounced credit go from 0 to > 0
        and no native connection announces it (the Python transport then sends AddCredit)."""
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable or None")
        self._exclusive_owner = callback

    def take_free_floating(self):
        """Remove one free floating buffer and return it (the caller gives it back to the
        pool), or None. The credit it stood for is withdrawn from the unannounced credit if
        that was not announced yet."""
        cdef int i, slot = -1
        pthread_mutex_lock(&self.c.lock)
        for i in range(self.c.num_free - 1, -1, -1):
            if type(self._slot_recyclers[self.c.free_slots[i]]) is _FloatingRecycler:
                slot = self.c.free_slots[i]
                self.c.free_slots[i] = self.c.free_slots[self.c.num_free - 1]
                self.c.num_free -= 1
                break
        pthread_mutex_unlock(&self.c.lock)
        if slot < 0:
            return None
        buf = self._slot_objects[slot]
        self._forget_slot(slot)
        return buf

    def pop_free_buffer(self):
        """A free slot as a buffer to receive into (the Python transport's allocator): the
        floating buffer itself, or a new NetworkBuffer over an exclusive segment; None if no
        slot is free. Floating slots go first."""
        cdef int i, pick = -1, slot
        pthread_mutex_lock(&self.c.lock)
        if self.c.num_free:
            pick = self.c.num_free - 1
            for i in range(self.c.num_free - 1, -1, -1):
                if type(self._slot_recyclers[self.c.free_slots[i]]) is _FloatingRecycler:
                    pick = i
                    break
            slot = self.c.free_slots[pick]
            self.c.free_slots[pick] = self.c.free_slots[self.c.num_free - 1]
            self.c.num_free -= 1
        pthread_mutex_unlock(&self.c.lock)
        if pick < 0:
            return None
        return self._hand_out(slot, DT_DATA_BUFFER, 0)

    cdef object _hand_out(self, int slot, int data_type, int size):
        cdef object owner = self._slot_objects[slot]
        cdef object recycler = self._slot_recyclers[slot]
        if type(recycler) is _FloatingRecycler:
            # a buffer over the floating segment whose recycling comes back here first
            return NetworkBuffer.create((<NetworkBuffer>owner)._segment, <BufferRecycler>recycler,
                                        data_type, size)
        return NetworkBuffer.create(<MemorySegment>owner, <BufferRecycler>recycler, data_type, size)

    # -- received queue (GIL side) -------------------------------------------------------------

    cdef int _push_object(self, object buffer, int seq, int backlog, bint priority=False,
                          bint announcement=False) except -1:
        cdef fn_entry e
        cdef int r
        cdef bint call = False
        e.kind = ENTRY_OBJECT
        e.slot = -1
        e.size = (<Buffer>buffer)._writer_index
        e.data_type = (<Buffer>buffer)._data_type
        e.seq = seq
        e.backlog = backlog
        e.obj = <void *>buffer
        pthread_mutex_lock(&self.c.lock)
        if self.c.released:
            r = -2
        elif announcement:
            # an EventAnnouncement carries the number of the barrier it announces (queued just
            # before it): no number of its own
            Py_INCREF(buffer)
            r = _ring_push_priority(&self.c, &e)
            if r < 0:
                Py_DECREF(buffer)
        elif seq != self.c.expected_seq:
            r = -3
        else:
            Py_INCREF(buffer)
            r = _ring_push_priority(&self.c, &e) if priority else _ring_push(&self.c, &e)
            if r >= 0:
                self.c.expected_seq += 1
                if backlog >= 0:
                    self.c.latest_backlog = backlog
            else:
                Py_DECREF(buffer)
        pthread_mutex_unlock(&self.c.lock)
        if r == 1:
            call = fn_signal_ready(self.c.signal, self.c.index)
            if call:
                self._signal._call_back()
        return r

    def push_announcement(self, Buffer buffer not None, int sequence_number):
        """Queue an ``EventAnnouncement`` of the barrier just queued with ``sequence_number``
        as a priority event (Flink's ``RemoteInputChannel.announce``): it does not advance the
        sequence. ``"ok"``, ``"released"`` or ``"full"`` as :meth:`push_buffer`."""
        cdef int r = self._push_object(buffer, sequence_number, -1, True, True)
        if r >= 0:
            return "ok"
        return "released" if r == -2 else "full"

    def prioritize(self, int sequence_number):
        """Move the queued event with ``sequence_number`` (an announced barrier) into the
        priority section, behind the priority events there, and mark it a priority event
        (Flink's ``convertToPriorityEvent``). False if it is not queued (taken already)."""
        cdef int i, j, cap, pos = -1
        cdef fn_entry e
        pthread_mutex_lock(&self.c.lock)
        cap = self.c.ring_capacity
        for i in range(self.c.num_priority, self.c.count):
            if (self.c.ring[(self.c.head + i) % cap].seq == sequence_number
                    and not (data_type_flags(self.c.ring[(self.c.head + i) % cap].data_type) & DTF_BUFFER)):
                pos = i
                break
        if pos < 0:
            pthread_mutex_unlock(&self.c.lock)
            return False
        e = self.c.ring[(self.c.head + pos) % cap]
        FN_ASSERT(e.kind == ENTRY_OBJECT)
        # shift the entries between the priority section and pos one place back
        j = pos
        while j > self.c.num_priority:
            self.c.ring[(self.c.head + j) % cap] = self.c.ring[(self.c.head + j - 1) % cap]
            j -= 1
        e.data_type = DT_PRIORITIZED_EVENT_BUFFER
        (<Buffer>e.obj)._data_type = DT_PRIORITIZED_EVENT_BUFFER
        self.c.ring[(self.c.head + self.c.num_priority) % cap] = e
        self.c.num_priority += 1
        pthread_mutex_unlock(&self.c.lock)
        return True

    def push_buffer(self, Buffer buffer not None, int sequence_number, int backlog=-1,
                    bint priority=False):
        """Queue a buffer the Python transport received (``priority``: a priority event, which
        goes behind the priority events queued and ahead of everything else, as Flink's
        ``RemoteInputChannel.onBuffer`` queues it). Returns ``"ok"``, ``"released"`` (the
        caller recycles it), ``"reordered"`` (out of sequence; the caller fails the channel) or
        ``"full"`` (too many entries beyond the credit)."""
        cdef int r = self._push_object(buffer, sequence_number, backlog, priority)
        if r >= 0:
            return "ok"
        return {-2: "released", -3: "reordered"}.get(r, "full")

    def advance_sequence(self, int sequence_number):
        """An empty buffer arrived: True if ``sequence_number`` was the expected one (then the
        next is expected)."""
        cdef bint ok
        pthread_mutex_lock(&self.c.lock)
        ok = sequence_number == self.c.expected_seq
        if ok:
            self.c.expected_seq += 1
        pthread_mutex_unlock(&self.c.lock)
        return ok

    cdef object _wrap(self, fn_entry *e):
        if e.kind == ENTRY_OBJECT:
            obj = <object>e.obj
            Py_DECREF(obj)   # the queue's reference, now the caller's (obj holds one more)
            return obj
        return self._hand_out(e.slot, e.data_type, e.size)

    cdef void _announce_listed(self, bint idle_only):
        """Write the connection's credit list now if this channel is still on it (GIL); with
        ``idle_only``, only if nothing is queued on the channel (else it stays listed)."""
        cdef void *conn = NULL
        pthread_mutex_lock(&self.c.lock)
        if (self.c.in_credit_list and self.c.conn != NULL and not self.c.released
                and not (idle_only and self.c.count)):
            conn = self.c.conn
        pthread_mutex_unlock(&self.c.lock)
        if conn != NULL:
            _announce_native(&self.c, conn, ANNOUNCE_LISTED)

    def poll(self):
        """The next received buffer as ``(buffer, next_data_type, sequence_number, backlog)``,
        or None. ``next_data_type`` is the following entry's DataType (NONE if
        there is none); ``backlog`` is the sender's backlog as the newest
        arrival (a buffer or :meth:`note_backlog`) reported it; the caller owns the buffer."""
        cdef fn_entry e
        cdef int next_type = DT_NONE
        cdef int32_t backlog
        cdef void *conn = NULL
        cdef bint listed = False
        pthread_mutex_lock(&self.c.lock)
        if self.c.count == 0:
            pthread_mutex_unlock(&self.c.lock)
            return None
        _pop_head(&self.c, &e, &next_type, &backlog, &conn, &listed)
        pthread_mutex_unlock(&self.c.lock)
        if conn != NULL:
            _announce_native(&self.c, conn, ANNOUNCE_LISTED if listed else ANNOUNCE_NOW)
        buf = self._wrap(&e)
        return (buf, _DATA_TYPES[next_type], e.seq, backlog)

    def release(self):
        """Release (idempotent): every free slot and queued buffer goes back to its owner.
        A slot the I/O thread is receiving into comes back when it is done."""
        cdef fn_entry *e
        cdef list buffers = []
        cdef list free_slots = []
        cdef int i
        pthread_mutex_lock(&self.c.lock)
        if self.c.released:
            pthread_mutex_unlock(&self.c.lock)
            return
        self.c.released = True
        for i in range(self.c.count):
            e = &self.c.ring[(self.c.head + i) % self.c.ring_capacity]
            if e.kind == ENTRY_OBJECT:
                obj = <object>e.obj
                Py_DECREF(obj)
                buffers.append(obj)
            else:
                free_slots.append(e.slot)
        self.c.count = 0
        self.c.head = 0
        self.c.num_priority = 0
        self.c.queued_bytes = 0
        for i in range(self.c.num_free):
            free_slots.append(self.c.free_slots[i])
        self.c.num_free = 0
        self.c.unannounced = 0
        pthread_mutex_unlock(&self.c.lock)
        self._give_back(buffers, free_slots)

    cdef _give_back(self, list buffers, list free_slots):
        cdef list segments = []
        for slot in free_slots:
            owner = self._slot_objects[slot]
            if type(self._slot_recyclers[slot]) is _FloatingRecycler:
                buffers.append(owner)
            else:
                segments.append(owner)
                self._num_exclusive -= 1
            self._forget_slot(slot)
        err = None
        for b in buffers:
            try:
                b.recycle()
            except BaseException as exc:  # noqa: BLE001 (give back the rest first)
                err = exc
        if segments:
            self._on_exclusive_free(segments)
        if err is not None:
            raise err

    def _return_received_slot(self, int slot):
        """The I/O thread finished receiving into ``slot`` of a released queue (GIL)."""
        self._give_back([], [slot])

    # -- state (approximate reads for metrics) ---------------------------------------------------

    @property
    def is_released(self):
        return self.c.released

    @property
    def queued_buffers(self):
        """Received buffers waiting for the task."""
        return self.c.count

    @property
    def queued_bytes(self):
        """Bytes of the received buffers waiting for the task."""
        return self.c.queued_bytes

    @property
    def free_slots(self):
        """Free slots (the credit the sender has been or is about to be given)."""
        return self.c.num_free

    @property
    def free_exclusive(self):
        """Free exclusive slots."""
        cdef int i, n = 0
        pthread_mutex_lock(&self.c.lock)
        for i in range(self.c.num_free):
            if type(self._slot_recyclers[self.c.free_slots[i]]) is _SlotRecycler:
                n += 1
        pthread_mutex_unlock(&self.c.lock)
        return n

    @property
    def free_floating(self):
        """Free floating slots."""
        return self.c.num_free - self.free_exclusive

    @property
    def num_exclusive(self):
        """Exclusive segments this queue holds (free, queued or handed out)."""
        return self._num_exclusive

    @property
    def unannounced_credit(self):
        return self.c.unannounced

    def take_unannounced_credit(self):
        """The credit gained since the last AddCredit, reset to 0."""
        cdef int credit
        pthread_mutex_lock(&self.c.lock)
        credit = self.c.unannounced
        self.c.unannounced = 0
        pthread_mutex_unlock(&self.c.lock)
        return credit

    def reset_unannounced_credit(self):
        """Forget the unannounced credit (a ResumeConsumption re-announces it all)."""
        self.take_unannounced_credit()

    def inflight_buffers(self, int after_seq, before_seq=None):
        """``(buffers, last_seq)``: retained read-only slices of the queued data buffers behind the
        priority events whose sequence number comes after ``after_seq`` and before ``before_seq``
        (without it: before the oldest priority event queued, if any), stopping at the first one
        that does not, oldest first, and the sequence number of the last one taken (``after_seq``
        if none): the in-flight data an unaligned
        barrier overtook in this channel (Flink's ``RemoteInputChannel.getInflightBuffersUnsafe``).
        Comparisons are modulo 2**32, as the wire's sequence numbers wrap. Zero copy: a received
        slot becomes a buffer object in the queue, which the task still reads; the caller
        recycles the slices. Called on the task thread, the only one that takes from the queue."""
        cdef list out = []
        cdef fn_entry *e
        cdef int i, bound = 0
        cdef bint bounded = before_seq is not None
        cdef int gc_was
        cdef int32_t last = after_seq
        cdef Buffer obj
        if bounded:
            bound = before_seq
        # Nothing here may run a finalizer that recycles into this channel (its lock is held
        # while the slot's buffer object is made): the cyclic GC is off meanwhile, and nothing
        # is released.
        gc_was = PyGC_Disable()
        pthread_mutex_lock(&self.c.lock)
        try:
            if not bounded and self.c.num_priority > 0:
                # a priority event queued (a barrier that overtook data): what came after it on
                # the wire is not in flight
                bounded = True
                bound = self.c.ring[self.c.head].seq
            for i in range(self.c.num_priority, self.c.count):
                e = &self.c.ring[(self.c.head + i) % self.c.ring_capacity]
                if not (data_type_flags(e.data_type) & DTF_BUFFER):
                    continue
                if <int32_t>(<uint32_t>e.seq - <uint32_t>after_seq) <= 0:
                    continue                    # captured before
                if bounded and <int32_t>(<uint32_t>e.seq - <uint32_t>bound) >= 0:
                    break
                if e.kind == ENTRY_SLOT:
                    buf = self._hand_out(e.slot, e.data_type, e.size)
                    Py_INCREF(buf)              # the queue's reference, as for a pushed buffer
                    e.obj = <void *>buf
                    e.kind = ENTRY_OBJECT
                    e.slot = -1
                obj = <Buffer>e.obj
                out.append(obj.read_only_slice().retain())
                last = e.seq
        finally:
            pthread_mutex_unlock(&self.c.lock)
            if gc_was:
                PyGC_Enable()
        return out, last

    @property
    def expected_sequence_number(self):
        return self.c.expected_seq

    @property
    def buffers_received(self):
        """Buffers the I/O thread received natively."""
        return self.c.buffers_received

    @property
    def is_attached(self):
        """Registered with a native connection (which announces the credit)."""
        return self.c.conn != NULL

    def check_whole(self):
        """Debug check: every slot id is free, queued, handed out or unused exactly once
        (raises AssertionError). Returns the number of handed-out slots."""
        cdef int i
        cdef set seen = set()
        pthread_mutex_lock(&self.c.lock)
        try:
            for i in range(self.c.num_free):
                s = self.c.free_slots[i]
                assert s not in seen, f"slot {s} free twice"
                seen.add(s)
            for i in range(self.c.count):
                e = self.c.ring[(self.c.head + i) % self.c.ring_capacity]
                if e.kind == ENTRY_SLOT:
                    assert e.slot not in seen, f"slot {e.slot} queued and free"
                    seen.add(e.slot)
        finally:
            pthread_mutex_unlock(&self.c.lock)
        for s in self._unused_ids:
            assert s not in seen, f"unused slot {s} in use"
            assert self._slot_objects[s] is None
            seen.add(s)
        return len(self._slot_objects) - len(seen) - self.c.receiving


# -- the connection and the engine ----------------------------------------------------------------

cdef inline void _wake(int efd) noexcept nogil:
    cdef uint64_t one = 1
    if efd >= 0:
        write(efd, &one, 8)


cdef int _conn_set_add(fn_conn ***items, int *num, int *cap, fn_conn *conn) noexcept nogil:
    """Add ``conn`` to an array of connections unless it is in it (under the engine's lock):
    1 if added, 0 if it was there, -1 out of memory."""
    cdef fn_conn **w
    cdef int i
    for i in range(num[0]):
        if items[0][i] == conn:
            return 0
    if num[0] == cap[0]:
        w = <fn_conn **>realloc(items[0], (cap[0] * 2 + 4) * sizeof(fn_conn *))
        if w == NULL:
            return -1
        items[0] = w
        cap[0] = cap[0] * 2 + 4
    items[0][num[0]] = conn
    num[0] += 1
    return 1


cdef void _conn_set_remove(fn_conn **items, int *num, fn_conn *conn) noexcept nogil:
    """Drop ``conn`` from an array of connections, keeping the others' order."""
    cdef int i, j = 0
    for i in range(num[0]):
        if items[i] != conn:
            items[j] = items[i]
            j += 1
    num[0] = j


cdef int _push_write(fn_conn *conn) noexcept nogil:
    """Ask the I/O thread to flush ``conn`` (any thread)."""
    cdef fn_engine *eng = <fn_engine *>conn.engine
    cdef int r = 0
    pthread_mutex_lock(&eng.lock)
    if not conn.removed:
        r = _conn_set_add(&eng.writes, &eng.num_writes, &eng.cap_writes, conn)
    pthread_mutex_unlock(&eng.lock)
    if r == 1 and fn_io_handling != <void *>eng:
        _wake(eng.efd)
    return -1 if r < 0 else 0


cdef void _take_deferred(fn_engine *eng) noexcept nogil:
    """The credit timer fired (I/O thread): the deferred connections join the writes."""
    cdef int i
    pthread_mutex_lock(&eng.lock)
    eng.timer_armed = False
    for i in range(eng.num_deferred):
        if _conn_set_add(&eng.writes, &eng.num_writes, &eng.cap_writes, eng.deferred[i]) < 0:
            # out of memory: the rest wait for the timer's next round
            memmove(eng.deferred, eng.deferred + i, (eng.num_deferred - i) * sizeof(fn_conn *))
            eng.num_deferred -= i
            _arm_credit_timer(eng)
            pthread_mutex_unlock(&eng.lock)
            return
    eng.num_deferred = 0
    pthread_mutex_unlock(&eng.lock)


cdef void _arm_credit_timer(fn_engine *eng) noexcept nogil:
    """Set the credit timer unless it is set (under the engine's lock)."""
    cdef itimerspec ts
    if not eng.timer_armed and eng.tfd >= 0:
        eng.timer_armed = True
        memset(&ts, 0, sizeof(ts))
        ts.it_value.tv_nsec = _CREDIT_DELAY_NS
        timerfd_settime(eng.tfd, 0, &ts, NULL)


cdef int _defer_write(fn_conn *conn) noexcept nogil:
    """Have the I/O thread flush ``conn`` when the engine's credit timer fires
    (_CREDIT_DELAY_NS; armed here if it is not), without waking it now: by then the task has
    usually emptied the channel's queue, and its poll wrote the credit (with what was freed
    since) in one AddCredit."""
    cdef fn_engine *eng = <fn_engine *>conn.engine
    cdef int r = 0
    pthread_mutex_lock(&eng.lock)
    if not conn.removed:
        r = _conn_set_add(&eng.deferred, &eng.num_deferred, &eng.cap_deferred, conn)
        if r >= 0:
            _arm_credit_timer(eng)
    pthread_mutex_unlock(&eng.lock)
    return -1 if r < 0 else 0


cdef inline void _credit_frame(char *frame, int credit, const char *receiver_id) noexcept nogil:
    """An AddCredit frame (Flink's NettyMessage.AddCredit, id 6) into ``frame``."""
    fn_store_be_i32(frame, _ADD_CREDIT_LEN)
    fn_store_be_i32(frame + 4, <int32_t>_MAGIC)
    frame[8] = 6
    fn_store_be_i32(frame + 9, credit)
    memcpy(frame + 13, receiver_id, 16)


cdef inline int _take_credit(fn_channel *ch) noexcept nogil:
    """A listed channel's unannounced credit, taken off it (0 if none, or released); it is no
    longer listed. Under its connection's out_lock."""
    cdef int credit
    pthread_mutex_lock(&ch.lock)
    credit = 0 if ch.released else ch.unannounced
    ch.unannounced = 0
    ch.in_credit_list = False
    pthread_mutex_unlock(&ch.lock)
    return credit


cdef int _take_credit_frames(fn_conn *conn, char *out, int cap) noexcept nogil:
    """Under ``out_lock``: the AddCredit frames of every listed channel with credit into
    ``out`` (``cap`` frames at most: the caller checked that the list fits), the list emptied.
    Returns the bytes written."""
    cdef fn_channel *ch
    cdef int i, credit, n = 0
    for i in range(conn.credit_len):
        ch = conn.credit[i]
        credit = _take_credit(ch)
        if credit > 0 and n < cap:
            _credit_frame(out + n * _ADD_CREDIT_LEN, credit, ch.receiver_id)
            n += 1
    conn.credit_len = 0
    return n * _ADD_CREDIT_LEN


cdef int _write_credit_now(fn_channel *c, fn_conn *conn) noexcept nogil:
    """Under ``out_lock``, nothing else queued on the connection: write the listed credit
    (``c``'s among it) on the calling thread, one non-blocking ``send``. 1 if written (or
    nothing was due), 2 if (some of) it was left in ``out`` for the I/O thread.

    The caller holds the GIL. The ``send`` happens only while ``c`` is registered with
    ``conn`` and under the connection's ``send_lock`` (taken with a trylock: busy, the I/O
    thread writes it all): the socket closes only after the engine removed the connection,
    which unregisters every channel first and then takes ``send_lock`` (_drop_wire), so the
    descriptor is this connection's for the whole call. ``c``'s own lock is held only for the
    check: the I/O thread, delivering the next buffer into ``c``, does not wait for the
    syscall. An error or a short write leaves the rest in ``out`` for the I/O thread, which
    meets the error on its own send and fails the connection there."""
    cdef char frames[_INLINE_CREDITS * _ADD_CREDIT_LEN]
    cdef ssize_t sent = -1
    cdef bint registered
    cdef int n = _take_credit_frames(conn, frames, _INLINE_CREDITS)
    if n == 0:
        return 1
    if pthread_mutex_trylock(&conn.send_lock) == 0:
        pthread_mutex_lock(&c.lock)
        registered = c.conn == <void *>conn
        pthread_mutex_unlock(&c.lock)
        if registered:
            while True:
                sent = send(conn.fd, frames, n, MSG_NOSIGNAL | MSG_DONTWAIT)
                if sent < 0 and errno == EINTR:
                    continue
                break
        pthread_mutex_unlock(&conn.send_lock)
    if sent == n:
        conn.bytes_out += n
        return 1
    if sent < 0:
        sent = 0
    conn.bytes_out += sent
    if _append_out(conn, frames + sent, n - sent) < 0:
        # out of memory with part of a frame on the wire: end the connection (the I/O thread
        # reads the shutdown and fails it, naming the peer) rather than corrupt the stream
        shutdown(conn.fd, SHUT_RDWR)
    return 2


cdef int _announce_native(fn_channel *c, void *connp, int how) noexcept nogil:
    """``c`` has unannounced credit and its caller (a GIL holder that freed a slot or emptied
    the queue) marked it listed. ``ANNOUNCE_SOON``: it joins the connection's credit list,
    written by the I/O thread when the credit timer fires (not woken for it now), unless the
    poll that empties the channel's queue writes it first.
    ``ANNOUNCE_NOW`` / ``ANNOUNCE_LISTED``: the list goes out now, written by the calling
    thread itself when nothing else is queued on the connection (no hop through the I/O
    thread: the credit reaches the sender a wake-up sooner), else by the woken I/O thread."""
    cdef fn_conn *conn = <fn_conn *>connp
    cdef fn_channel **cl
    cdef int r
    if conn == NULL:
        return 0
    pthread_mutex_lock(&conn.out_lock)
    if how != ANNOUNCE_LISTED:
        # Still registered? The I/O thread unregisters a channel (its conn cleared under its
        # lock) before it drops it from the credit list (under out_lock, held here): a channel
        # unregistered since the caller looked must not be listed after that drop.
        pthread_mutex_lock(&c.lock)
        if c.conn != <void *>conn:
            c.in_credit_list = False
            pthread_mutex_unlock(&c.lock)
            pthread_mutex_unlock(&conn.out_lock)
            return 0
        pthread_mutex_unlock(&c.lock)
        if conn.credit_len == conn.credit_cap:
            cl = <fn_channel **>realloc(conn.credit, (conn.credit_cap * 2 + 8) * sizeof(fn_channel *))
            if cl == NULL:
                pthread_mutex_unlock(&conn.out_lock)
                return -1
            conn.credit = cl
            conn.credit_cap = conn.credit_cap * 2 + 8
        conn.credit[conn.credit_len] = c
        conn.credit_len += 1
    if how == ANNOUNCE_SOON:
        pthread_mutex_unlock(&conn.out_lock)
        return _defer_write(conn)
    if conn.out_len == 0 and conn.credit_len <= _INLINE_CREDITS and not conn.failed:
        r = _write_credit_now(c, conn)
        pthread_mutex_unlock(&conn.out_lock)
        return _push_write(conn) if r == 2 else 0
    pthread_mutex_unlock(&conn.out_lock)
    return _push_write(conn)


cdef int _append_out(fn_conn *conn, const char *data, int64_t n) noexcept nogil:
    """Append to the write buffer (under out_lock). -1 if over the bound or out of memory."""
    cdef int64_t cap
    cdef char *out
    if conn.out_len + n > conn.out_cap:
        if conn.out_len + n > conn.max_out:
            return -1
        cap = conn.out_cap * 2 if conn.out_cap else 4096
        while cap < conn.out_len + n:
            cap *= 2
        out = <char *>realloc(conn.out, cap)
        if out == NULL:
            return -1
        conn.out = out
        conn.out_cap = cap
    memcpy(conn.out + conn.out_len, data, n)
    conn.out_len += n
    return 0


# -- receiver map (I/O thread) --

cdef inline uint64_t _slot_of(fn_conn *conn, uint64_t k0) noexcept nogil:
    return (k0 * <uint64_t>0x9E3779B97F4A7C15) >> 7


cdef fn_map_entry *_map_find(fn_conn *conn, const char *rid) noexcept nogil:
    cdef uint64_t k0 = fn_load64(rid), k1 = fn_load64(rid + 8)
    cdef int mask = conn.map_capacity - 1
    cdef int i
    if conn.map_capacity == 0:
        return NULL
    i = <int>(_slot_of(conn, k0) & mask)
    while conn.map[i].ch != NULL:
        if conn.map[i].k0 == k0 and conn.map[i].k1 == k1:
            return &conn.map[i]
        i = (i + 1) & mask
    return NULL


cdef int _map_insert(fn_conn *conn, fn_channel *ch, void *obj) noexcept nogil:
    return _map_insert_rid(conn, ch.receiver_id, ch, obj)


cdef int _map_insert_rid(fn_conn *conn, const char *rid, fn_channel *ch, void *obj) noexcept nogil:
    """Insert ``ch`` (a server-role connection: an fn_outq*, cast) under receiver id ``rid``."""
    cdef fn_map_entry *old
    cdef fn_map_entry *m
    cdef int oldcap, i, j, mask
    cdef uint64_t k0 = fn_load64(rid), k1 = fn_load64(rid + 8)
    if (conn.map_count + 1) * 2 > conn.map_capacity:
        oldcap = conn.map_capacity
        old = conn.map
        m = <fn_map_entry *>calloc(oldcap * 2 if oldcap else 16, sizeof(fn_map_entry))
        if m == NULL:
            return -1
        conn.map = m
        conn.map_capacity = oldcap * 2 if oldcap else 16
        mask = conn.map_capacity - 1
        for j in range(oldcap):
            if old[j].ch != NULL:
                i = <int>(_slot_of(conn, old[j].k0) & mask)
                while conn.map[i].ch != NULL:
                    i = (i + 1) & mask
                conn.map[i] = old[j]
        free(old)
    mask = conn.map_capacity - 1
    i = <int>(_slot_of(conn, k0) & mask)
    while conn.map[i].ch != NULL:
        i = (i + 1) & mask
    conn.map[i].k0 = k0
    conn.map[i].k1 = k1
    conn.map[i].ch = ch
    conn.map[i].obj = obj
    conn.map_count += 1
    return 0


cdef void _map_delete(fn_conn *conn, fn_map_entry *e) noexcept nogil:
    """Backward-shift deletion (no tombstones)."""
    cdef int mask = conn.map_capacity - 1
    cdef int i = <int>(e - conn.map)
    cdef int j = i, k
    while True:
        j = (j + 1) & mask
        if conn.map[j].ch == NULL:
            break
        k = <int>(_slot_of(conn, conn.map[j].k0) & mask)
        # move j to i if k is cyclically outside (i, j]
        if (i <= j and (k <= i or k > j)) or (i > j and (k <= i and k > j)):
            conn.map[i] = conn.map[j]
            i = j
    conn.map[i].ch = NULL
    conn.map[i].obj = NULL
    conn.map_count -= 1


# -- the send side: a reader's output queue ------------------------------------------------------

cdef inline bint _outq_can_pop(fn_outq *q) noexcept nogil:
    """The head entry can go now (under q.lock): not blocked, and credit for a data buffer (an
    event needs none, as in Flink)."""
    if q.released or q.blocked or q.count == 0:
        return False
    return q.credit > 0 or not (q.ring[q.head].flags & DTF_BUFFER)


cdef inline bint _outq_sendable(fn_outq *q) noexcept nogil:
    """The I/O thread could send the head entry now (under q.lock)."""
    return q.conn != NULL and _outq_can_pop(q)


cdef bint _outq_pop(fn_outq *q, fn_oentry *e, int32_t *seq, int32_t *backlog) noexcept nogil:
    """Take the head entry if it can be sent (under q.lock): a data buffer costs one credit, an
    upstream-blocking event blocks the queue; ``seq`` and the ``backlog`` behind it come back."""
    if not _outq_can_pop(q):
        return False
    e[0] = q.ring[q.head]
    q.head = (q.head + 1) % q.ring_capacity
    q.count -= 1
    if q.num_priority > 0:
        q.num_priority -= 1
    if e.flags & DTF_BUFFER:
        q.credit -= 1
        q.backlog -= 1
    if e.flags & DTF_BLOCKING_UPSTREAM:
        q.blocked = True
    FN_ASSERT(q.credit >= 0 and q.backlog >= 0 and q.count >= 0 and q.num_priority <= q.count)
    seq[0] = q.seq
    q.seq += 1
    backlog[0] = q.backlog
    q.buffers_sent += 1
    q.bytes_sent += e.size
    return True


cdef int _ready_push(fn_conn *conn, fn_outq *q) noexcept nogil:
    """Append ``q`` to the connection's ready ring (under out_lock; the ring holds every
    registered queue, see _reserve_ready, so this never grows it)."""
    FN_ASSERT(conn.ready_len < conn.ready_cap)
    if conn.ready_len >= conn.ready_cap:
        return -1
    conn.ready[(conn.ready_head + conn.ready_len) % conn.ready_cap] = q
    conn.ready_len += 1
    return 0


cdef int _reserve_ready(fn_conn *conn, int n) noexcept nogil:
    """Make room for ``n`` queues in the ready ring (I/O thread, takes out_lock)."""
    cdef fn_outq **r
    cdef int cap
    pthread_mutex_lock(&conn.out_lock)
    if n > conn.ready_cap:
        cap = conn.ready_cap * 2 if conn.ready_cap else 16
        while cap < n:
            cap *= 2
        r = <fn_outq **>_regrow_ring(conn.ready, conn.ready_head, conn.ready_len, conn.ready_cap,
                                     cap, sizeof(fn_outq *))
        if r == NULL:
            pthread_mutex_unlock(&conn.out_lock)
            return -1
        conn.ready = r
        conn.ready_cap = cap
        conn.ready_head = 0
    pthread_mutex_unlock(&conn.out_lock)
    return 0


cdef void _outq_enqueue(fn_outq *q, fn_conn *conn) noexcept nogil:
    """``q`` became sendable (its in_ready was set under its lock): put it on the connection's
    ready ring and make sure the I/O thread flushes the connection. Called with q.lock released,
    by the I/O thread or by a GIL holder (the GIL keeps ``conn`` alive: it is freed only with
    the GIL, after the queue was unregistered)."""
    cdef bint schedule, registered
    pthread_mutex_lock(&conn.out_lock)
    # Still served by ``conn``? The I/O thread takes an unregistered queue off the ready ring
    # (under out_lock, held here) before it clears ``q.conn``: a queue unregistered since the
    # caller looked must not join the ring after that (it may be freed once off the map).
    pthread_mutex_lock(&q.lock)
    registered = q.conn == <void *>conn
    pthread_mutex_unlock(&q.lock)
    if not registered:
        pthread_mutex_unlock(&conn.out_lock)
        return
    _ready_push(conn, q)
    schedule = not conn.write_scheduled
    conn.write_scheduled = True
    pthread_mutex_unlock(&conn.out_lock)
    if schedule:
        _push_write(conn)


cdef bint _write_through(fn_outq *q, fn_conn *conn) noexcept nogil:
    """A GIL holder just made ``q`` sendable with a small frame at its head (``q.in_ready`` set,
    not on the ready ring yet). If the connection is idle -- nobody writing (``send_lock`` free),
    nothing on the wire, no control frame, no other queue waiting -- send the head frame from
    this thread, one non-blocking ``sendmsg``: a flushed record reaches the receiver without a
    wake-up of the I/O thread on the way (the latency path). True if handled here (sent, or
    left on the wire for the I/O thread to finish); False: the caller enqueues ``q`` as usual.

    ``send_lock`` is held across the send, so the I/O thread's writes and its removal of the
    connection (``_drop_wire`` takes it) wait; the socket closes only after that removal, so the
    descriptor is this connection's for the whole call. The caller holds the GIL (the written
    buffer is recycled here)."""
    cdef fn_oentry e
    cdef fn_wentry *w
    cdef int32_t seq, backlog
    cdef bint idle, got, again = False
    cdef iovec iov[2]
    cdef msghdr msg
    cdef ssize_t n
    cdef int total
    if pthread_mutex_trylock(&conn.send_lock) != 0:
        return False
    if conn.wire_len or conn.failed or conn.removed:
        pthread_mutex_unlock(&conn.send_lock)
        return False
    if conn.wire == NULL:
        conn.wire = <fn_wentry *>malloc(_WIRE_FRAMES * sizeof(fn_wentry))
        if conn.wire == NULL:
            pthread_mutex_unlock(&conn.send_lock)
            return False
        conn.wire_cap = _WIRE_FRAMES
    pthread_mutex_lock(&conn.out_lock)
    idle = conn.out_len == 0 and conn.ready_len == 0
    pthread_mutex_unlock(&conn.out_lock)
    if not idle:
        pthread_mutex_unlock(&conn.send_lock)
        return False
    pthread_mutex_lock(&q.lock)
    FN_ASSERT(q.in_ready)
    got = q.conn == <void *>conn and _outq_pop(q, &e, &seq, &backlog)
    if got:
        again = _outq_sendable(q)
    if not again:
        q.in_ready = False
    pthread_mutex_unlock(&q.lock)
    if not got:
        pthread_mutex_unlock(&conn.send_lock)
        return True
    conn.wire_head = 0
    w = &conn.wire[0]
    _wire_entry(w, q, &e, seq, backlog)
    total = _BR_LEN + e.size
    iov[0].iov_base = w.hdr
    iov[0].iov_len = _BR_LEN
    iov[1].iov_base = e.data
    iov[1].iov_len = e.size
    memset(&msg, 0, sizeof(msg))
    msg.msg_iov = iov
    msg.msg_iovlen = 2
    while True:
        n = sendmsg(conn.fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT)
        if n < 0 and errno == EINTR:
            continue
        break
    if n == total:
        conn.bytes_out += n
        conn.frames_sent += 1
        pthread_mutex_unlock(&conn.send_lock)
        _recycle_objects(&e.obj, 1)
    else:
        # the rest (all of it after an error: the I/O thread meets the error itself) is the
        # wire's first frame, for the I/O thread
        if n > 0:
            conn.bytes_out += n
            w.off = <int32_t>n
        conn.wire_len = 1
        conn.wire_bytes = total
        pthread_mutex_unlock(&conn.send_lock)
        _push_write(conn)
    if again:
        _outq_enqueue(q, conn)
    return True


cdef void _outq_add_credit(fn_outq *q, int credit) noexcept nogil:
    cdef fn_conn *conn = NULL
    pthread_mutex_lock(&q.lock)
    q.credit += credit
    if not q.in_ready and _outq_sendable(q):
        q.in_ready = True
        conn = <fn_conn *>q.conn
    pthread_mutex_unlock(&q.lock)
    if conn != NULL:
        _outq_enqueue(q, conn)


cdef class OutputQueue:
    """What one receiver is sent over a native server-role connection: the finished buffers of a
    pipelined subpartition (Flink's ``PipelinedSubpartition`` queue as its
    ``CreditBasedSequenceNumberingViewReader`` sees it), sent by the native I/O thread without the
    GIL.

    ``OutputQueue(receiver_id, subpartition, credit)``. The task thread :meth:`push` es read-only
    buffers (taking them over); once the queue is registered with a connection
    (:meth:`NativeConnection.register_output`), the I/O thread sends them in order as
    BufferResponses (priority events first), a data buffer per credit, events without credit,
    each with its sequence number and the backlog behind it; it stops after an upstream-blocking
    event until :meth:`resume`. A buffer written to the socket is recycled by the engine's reaper
    thread (or :meth:`ReceiveEngine.reap`). :meth:`release` recycles what is still queued.
    """

    def __cinit__(self, bytes receiver_id not None, int subpartition, int credit):
        if len(receiver_id) != 16:
            raise ValueError(f"receiver_id must be 16 bytes, got {len(receiver_id)}")
        if subpartition < 0:
            raise ValueError(f"subpartition must be >= 0, got {subpartition}")
        if credit < 0:
            raise ValueError(f"credit must be >= 0, got {credit}")
        pthread_mutex_init(&self.q.lock, NULL)
        memcpy(self.q.receiver_id, PyBytes_AS_STRING(receiver_id), 16)
        self.q.subpartition = subpartition
        self.q.credit = credit
        self.q.owner = <void *>self
        self._init_done = True

    def __dealloc__(self):
        cdef int i
        if not self._init_done:
            return
        # not released: the buffers' own finalizers give their segments back (and count a leak)
        for i in range(self.q.count):
            Py_DECREF(<object>self.q.ring[(self.q.head + i) % self.q.ring_capacity].obj)
        free(self.q.ring)
        pthread_mutex_destroy(&self.q.lock)

    def push(self, Buffer buffer not None, bint priority=False, list overtaken=None):
        """Queue ``buffer`` to be sent (taking over the caller's reference: do not recycle it);
        a priority event goes behind the priority events already queued, ahead of the rest. A
        slice continuing the last queued one (the same buffer's next bytes: a flush of the open
        buffer while its previous flush still waits) extends it: one frame, one credit.
        False (and the buffer recycled) if it is empty or the queue was released.

        ``overtaken`` (a list; priority events only): receives a retained read-only slice of
        every data buffer the event overtakes, taken under the queue's lock together with the
        insertion, so that nothing is sent in between (Flink's
        ``PipelinedSubpartition.processPriorityBuffer``: the in-flight output data of an
        unaligned checkpoint). The caller recycles them."""
        cdef int size = buffer._writer_index - buffer._reader_index
        cdef int dt = buffer._data_type
        cdef int flags = data_type_flags(dt)
        cdef fn_oentry *ring
        cdef fn_oentry *last
        cdef fn_oentry e
        cdef NetworkBuffer root
        cdef int cap, i, pos
        cdef fn_conn *conn = NULL
        cdef void **cap_roots = NULL
        cdef int *cap_off = NULL
        cdef int *cap_len = NULL
        cdef int n_cap = 0, n_taken = 0
        if size <= 0:
            buffer.recycle()
            return False
        if flags & DTF_PRIORITY:
            priority = True
        e.obj = <void *>buffer
        e.data = buffer.data() + buffer._reader_index
        e.size = size
        e.data_type = dt
        e.flags = flags
        root = buffer.root()      # alive as long as the buffer is (a slice holds its parent)
        e.root = <void *>root
        pthread_mutex_lock(&self.q.lock)
        if self.q.released:
            pthread_mutex_unlock(&self.q.lock)
            buffer.recycle()
            return False
        if not priority and self.q.count > self.q.num_priority:
            last = &self.q.ring[(self.q.head + self.q.count - 1) % self.q.ring_capacity]
            if last.root == e.root and last.data_type == dt and last.data + last.size == e.data:
                # the next bytes of the buffer the last entry slices (a flush of the open
                # buffer while its previous flush still waits): one frame, as Flink's poll
                # builds one slice of everything flushed by then; this slice's reference goes
                last.size += size
                pthread_mutex_unlock(&self.q.lock)
                buffer.recycle()
                return True
        if self.q.count == self.q.ring_capacity:
            cap = self.q.ring_capacity * 2 if self.q.ring_capacity else 16
            ring = <fn_oentry *>_regrow_ring(self.q.ring, self.q.head, self.q.count,
                                             self.q.ring_capacity, cap, sizeof(fn_oentry))
            if ring == NULL:
                pthread_mutex_unlock(&self.q.lock)
                raise MemoryError()
            self.q.ring = ring
            self.q.ring_capacity = cap
            self.q.head = 0
        cap = self.q.ring_capacity
        Py_INCREF(buffer)
        if priority:
            # behind the queued priority events: shift them one place towards the front
            self.q.head = (self.q.head + cap - 1) % cap
            for i in range(self.q.num_priority):
                self.q.ring[(self.q.head + i) % cap] = self.q.ring[(self.q.head + i + 1) % cap]
            pos = (self.q.head + self.q.num_priority) % cap
            self.q.num_priority += 1
        else:
            pos = (self.q.head + self.q.count) % cap
        self.q.ring[pos] = e
        self.q.count += 1
        if flags & DTF_BUFFER:
            self.q.backlog += 1
        if priority and overtaken is not None and self.q.count > self.q.num_priority:
            n_cap = self.q.count - self.q.num_priority
            cap_roots = <void **>malloc(n_cap * sizeof(void *))
            cap_off = <int *>malloc(n_cap * sizeof(int))
            cap_len = <int *>malloc(n_cap * sizeof(int))
            if cap_roots == NULL or cap_off == NULL or cap_len == NULL:
                pthread_mutex_unlock(&self.q.lock)
                free(cap_roots)
                free(cap_off)
                free(cap_len)
                raise MemoryError()
            for i in range(self.q.num_priority, self.q.count):
                last = &self.q.ring[(self.q.head + i) % cap]
                if not (last.flags & DTF_BUFFER):
                    continue
                root = <NetworkBuffer>last.root
                # one reference for the caller, taken before anything can send and recycle it
                # (only GIL holders change reference counts; this thread holds the GIL)
                FN_ASSERT(root._ref_count > 0)
                root._ref_count += 1
                Py_INCREF(root)
                cap_roots[n_taken] = last.root
                cap_off[n_taken] = <int>(last.data - root.data())
                cap_len[n_taken] = last.size
                n_taken += 1
        if not self.q.in_ready and _outq_sendable(&self.q):
            self.q.in_ready = True
            conn = <fn_conn *>self.q.conn
        pthread_mutex_unlock(&self.q.lock)
        if conn != NULL and not (size <= _WRITE_THROUGH_MAX and _write_through(&self.q, conn)):
            _outq_enqueue(&self.q, conn)
        if cap_roots != NULL:
            for i in range(n_taken):
                root = <NetworkBuffer>cap_roots[i]
                overtaken.append(root.slice(cap_off[i], cap_len[i]))
                Py_DECREF(root)       # the slice holds its parent
            free(cap_roots)
            free(cap_off)
            free(cap_len)
        return True

    def poll(self):
        """Take the next entry as the I/O thread would (for a queue that is not registered: tests
        and in-process readers): ``(buffer, sequence_number, backlog, next_data_type)``, the
        buffer now the caller's to recycle, or None if nothing can be sent now."""
        cdef fn_oentry e
        cdef int32_t seq = 0, backlog = 0
        cdef bint got
        cdef int nxt = DT_NONE
        if self.q.conn != NULL:
            raise RuntimeError("the queue is served by a connection")
        pthread_mutex_lock(&self.q.lock)
        got = _outq_pop(&self.q, &e, &seq, &backlog)
        if got and self.q.count:
            nxt = self.q.ring[self.q.head].data_type
        pthread_mutex_unlock(&self.q.lock)
        if not got:
            return None
        buffer = <object>e.obj
        Py_DECREF(buffer)                # the queue's reference is now `buffer`'s
        return buffer, seq, backlog, _DATA_TYPES[nxt]

    def add_credit(self, int credit):
        """``credit`` more data buffers may be sent (an AddCredit the Python side received)."""
        if credit <= 0:
            raise ValueError(f"credit must be > 0, got {credit}")
        _outq_add_credit(&self.q, credit)

    def resume(self):
        """ResumeConsumption: sending goes on after an upstream-blocking event."""
        cdef fn_conn *conn = NULL
        pthread_mutex_lock(&self.q.lock)
        if not self.q.blocked:
            pthread_mutex_unlock(&self.q.lock)
            raise RuntimeError("Should be blocked by checkpoint.")
        self.q.blocked = False
        if not self.q.in_ready and _outq_sendable(&self.q):
            self.q.in_ready = True
            conn = <fn_conn *>self.q.conn
        pthread_mutex_unlock(&self.q.lock)
        if conn != NULL:
            _outq_enqueue(&self.q, conn)

    def set_credit(self, int credit):
        """Reset the credit (ResumeConsumption of a receiver without exclusive buffers)."""
        if credit < 0:
            raise ValueError(f"credit must be >= 0, got {credit}")
        pthread_mutex_lock(&self.q.lock)
        self.q.credit = credit
        pthread_mutex_unlock(&self.q.lock)

    def release(self):
        """Nothing more is sent; the queued buffers are recycled (their count is returned)."""
        cdef list objs = []
        cdef int i
        pthread_mutex_lock(&self.q.lock)
        self.q.released = True
        for i in range(self.q.count):
            objs.append(<object>self.q.ring[(self.q.head + i) % self.q.ring_capacity].obj)
            Py_DECREF(<object>self.q.ring[(self.q.head + i) % self.q.ring_capacity].obj)
        self.q.count = 0
        self.q.head = 0
        self.q.backlog = 0
        self.q.num_priority = 0
        pthread_mutex_unlock(&self.q.lock)
        for b in objs:
            try:
                b.recycle()
            except BaseException:  # noqa: BLE001 (every buffer goes back)
                log.exception("recycling a released output buffer failed")
        return len(objs)

    @property
    def receiver_id(self):
        return PyBytes_FromStringAndSize(self.q.receiver_id, 16)

    @property
    def subpartition(self):
        return self.q.subpartition

    @property
    def credit(self):
        return self.q.credit

    @property
    def backlog(self):
        """Data buffers queued (Flink's backlog of a subpartition, its open buffer excluded)."""
        return self.q.backlog

    @property
    def queued_buffers(self):
        """Buffers and events queued, not yet taken by the I/O thread."""
        return self.q.count

    @property
    def next_data_type(self):
        """The DataType of the head entry (NONE if empty)."""
        pthread_mutex_lock(&self.q.lock)
        dt = self.q.ring[self.q.head].data_type if self.q.count else DT_NONE
        pthread_mutex_unlock(&self.q.lock)
        return _DATA_TYPES[dt]

    @property
    def sequence_number(self):
        """The sequence number of the next buffer sent."""
        return self.q.seq

    @property
    def is_blocked(self):
        return self.q.blocked

    @property
    def is_released(self):
        return self.q.released

    @property
    def is_registered(self):
        return self.q.conn != NULL

    @property
    def buffers_sent(self):
        return self.q.buffers_sent

    @property
    def bytes_sent(self):
        """Payload bytes handed to the socket (headers excluded)."""
        return self.q.bytes_sent


cdef class NativeConnection:
    """The native side of one client connection (plain TCP, credit-based).

    ``NativeConnection(engine, sock, handler, max_frame_length, max_buffer_size)``: ``sock`` is a
    connected, non-blocking socket whose fd the engine reads and writes (the caller keeps the
    socket object and closes it after ``handler.on_removed()``); ``handler`` is the Python
    connection: ``handler.on_frame(frame_bytes)`` for every frame that is not a plain data
    BufferResponse of a registered channel, ``handler.on_failure(message, is_local)`` when the
    connection fails, ``handler.on_channel_error(channel_queue, expected, got)`` for a buffer out
    of sequence, ``handler.on_removed()`` after :meth:`remove`, all on the I/O thread with the
    GIL.
    """

    def __cinit__(self, ReceiveEngine engine not None, sock not None, handler not None,
                  Py_ssize_t max_frame_length, Py_ssize_t max_buffer_size,
                  Py_ssize_t max_unwritten_bytes=64 * 1024 * 1024, bint server=False):
        if max_frame_length < _HDR + _BR_HDR or max_frame_length > 2147483647:
            raise ValueError(f"max_frame_length must be in [{_HDR + _BR_HDR}, 2**31), got {max_frame_length}")
        if max_buffer_size < 0:
            raise ValueError("max_buffer_size must be >= 0")
        if max_unwritten_bytes < 4096:
            raise ValueError("max_unwritten_bytes must be >= 4096")
        fd = sock.fileno()
        if fd < 0:
            raise ValueError("the socket is closed")
        self.c = <fn_conn *>calloc(1, sizeof(fn_conn))
        if self.c == NULL:
            raise MemoryError()
        pthread_mutex_init(&self.c.out_lock, NULL)
        pthread_mutex_init(&self.c.send_lock, NULL)
        self.c.fd = fd
        self.c.owner = <void *>self
        self.c.max_frame_length = max_frame_length
        self.c.max_buffer_size = max_buffer_size
        self.c.max_out = max_unwritten_bytes
        self.c.engine = &engine.e
        self.c.slot = -1
        self.c.server = server
        self._engine = engine
        self._sock = sock
        self.handler = handler

    def __dealloc__(self):
        if self.c != NULL:
            if not self._added or self.c.removed:
                free(self.c.frame)
                free(self.c.map)
                free(self.c.out)
                free(self.c.credit)
                free(self.c.ready)
                free(self.c.wire)
                pthread_mutex_destroy(&self.c.out_lock)
                pthread_mutex_destroy(&self.c.send_lock)
                free(self.c)
            # else: still owned by a live I/O thread (cannot happen: the engine holds a
            # reference while registered)
            self.c = NULL

    def start(self):
        """Hand the connection to the I/O thread (once)."""
        if self._added:
            raise RuntimeError("the connection was already started")
        self._added = True
        Py_INCREF(self)          # the engine's reference, dropped after removal
        if self._engine._command(CMD_ADD_CONN, self.c, NULL, NULL) < 0:
            self._added = False
            Py_DECREF(self)
            raise RuntimeError("the receive engine is closed")

    def send(self, bytes frame not None):
        """Queue ``frame`` for writing (any thread). False if the connection is gone; raises
        if more than ``max_unwritten_bytes`` wait (the peer does not read)."""
        cdef int r
        cdef const char *p = PyBytes_AS_STRING(frame)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(frame)
        if self.c.removed or self.c.failed:
            return False
        cdef fn_conn *conn = self.c
        with nogil:
            pthread_mutex_lock(&conn.out_lock)
            r = _append_out(conn, p, n)
            pthread_mutex_unlock(&conn.out_lock)
            if r == 0:
                r = _push_write(conn)
        if r < 0:
            raise BufferError(f"more than {self.c.max_out} bytes wait to be written to the peer")
        return True

    def register_output(self, OutputQueue queue not None):
        """Serve ``queue`` on this (server-role) connection: the I/O thread sends its buffers as
        its credit allows and adds the credit of AddCredit frames for its receiver id."""
        if not self.c.server:
            raise RuntimeError("output queues are served by server-role connections only")
        pthread_mutex_lock(&queue.q.lock)
        if queue.q.conn != NULL or queue.q.released:
            pthread_mutex_unlock(&queue.q.lock)
            raise RuntimeError("the output queue is released or already registered")
        pthread_mutex_unlock(&queue.q.lock)
        Py_INCREF(queue)         # the map's reference, dropped after unregistration
        if self._engine._command(CMD_REGISTER_OUT, self.c, <fn_channel *>&queue.q, <void *>queue) < 0:
            Py_DECREF(queue)
            raise RuntimeError("the receive engine is closed")

    def unregister_output(self, OutputQueue queue not None):
        """Stop serving ``queue`` (frames the I/O thread already took are still written)."""
        self._engine._command(CMD_UNREGISTER_OUT, self.c, <fn_channel *>&queue.q, NULL)

    @property
    def frames_sent(self):
        """BufferResponses the I/O thread wrote from output queues."""
        return self.c.frames_sent

    @property
    def bytes_sent(self):
        """Bytes written to the socket (all frames)."""
        return self.c.bytes_out

    @property
    def is_server(self):
        return self.c.server

    def register(self, ChannelQueue queue not None):
        """Route the channel's BufferResponses natively (before its PartitionRequest goes out).
        Its credit is announced by this connection from then on."""
        if self.c.server:
            raise RuntimeError("channels are registered with client-role connections only")
        if queue.c.conn != NULL:
            raise RuntimeError("the channel queue is already registered with a connection")
        Py_INCREF(queue)         # the map's reference, dropped after unregistration
        pthread_mutex_lock(&queue.c.lock)
        queue.c.conn = self.c
        queue.c.requested = True
        pthread_mutex_unlock(&queue.c.lock)
        if self._engine._command(CMD_REGISTER, self.c, &queue.c, <void *>queue) < 0:
            pthread_mutex_lock(&queue.c.lock)
            queue.c.conn = NULL
            pthread_mutex_unlock(&queue.c.lock)
            Py_DECREF(queue)
            raise RuntimeError("the receive engine is closed")

    def unregister(self, ChannelQueue queue not None):
        """Stop routing to the channel (the I/O thread drops it; a payload it was receiving for
        it is discarded and its slot goes back)."""
        if queue.c.conn != self.c:
            return
        self._engine._command(CMD_UNREGISTER, self.c, &queue.c, NULL)

    def remove(self):
        """Stop serving this connection; ``handler.on_removed()`` follows on the I/O thread
        (idempotent)."""
        if self._added and not self.c.removed:
            self._engine._command(CMD_REMOVE_CONN, self.c, NULL, NULL)

    @property
    def frames_native(self):
        """Frames received without leaving C."""
        return self.c.frames_native

    @property
    def frames_python(self):
        """Frames handed to the Python handler."""
        return self.c.frames_python

    @property
    def bytes_received(self):
        return self.c.bytes_in

    @property
    def num_channels(self):
        """Channels the I/O thread routes to natively (approximate)."""
        return self.c.map_count

    @property
    def unwritten_bytes(self):
        return self.c.out_len

    @property
    def is_removed(self):
        return self.c.removed


# -- the I/O thread's work on one connection --

cdef void _call_frame(fn_conn *conn, char *frame, int32_t n) noexcept nogil:
    with gil:
        try:
            data = PyBytes_FromStringAndSize(frame, n)
            (<NativeConnection>conn.owner).handler.on_frame(data)
        except BaseException:  # noqa: BLE001
            log.exception("the connection's frame handler failed")


cdef void _fail_conn(fn_conn *conn, const char *message, bint local) noexcept nogil:
    cdef fn_engine *eng = <fn_engine *>conn.engine
    cdef epoll_event ev
    if conn.failed:
        return
    conn.failed = True
    conn.state = RS_FAILED
    epoll_ctl(eng.epfd, EPOLL_CTL_DEL, conn.fd, &ev)
    _abort_receive(conn)
    with gil:
        try:
            (<NativeConnection>conn.owner).handler.on_failure(message.decode("utf-8", "replace"), local)
        except BaseException:  # noqa: BLE001
            log.exception("the connection's failure handler failed")


cdef void _fail_fmt(fn_conn *conn, bint local, const char *fmt, long long a=0,
                   long long b=0) noexcept nogil:
    cdef char message[256]
    snprintf(message, sizeof(message), fmt, a, b)
    _fail_conn(conn, message, local)


cdef void _fail_errno(fn_conn *conn, int err) noexcept nogil:
    cdef char message[256]
    snprintf(message, sizeof(message), "Lost connection to task manager: %s", strerror(err))
    _fail_conn(conn, message, False)


cdef void _abort_receive(fn_conn *conn) noexcept nogil:
    """Give back the slot a payload was being received into (I/O thread)."""
    cdef fn_channel *ch = conn.target
    cdef int slot = conn.slot
    conn.target = NULL
    conn.slot = -1
    if ch == NULL or slot < 0:
        return
    _slot_done(conn, ch, slot, NULL)


cdef void _slot_done(fn_conn *conn, fn_channel *ch, int slot, fn_entry *e) noexcept nogil:
    """The I/O thread is done with ``slot``: queue ``e`` if given, else free the slot again."""
    cdef int r = -9
    cdef bint call = False
    cdef bint give_back = False
    cdef bint stalled = False
    cdef int32_t expected = 0
    pthread_mutex_lock(&ch.lock)
    FN_ASSERT(ch.receiving == 1)
    ch.receiving -= 1
    if ch.released:
        give_back = True
    elif e != NULL:
        if e.seq != ch.expected_seq:
            expected = ch.expected_seq
            r = -3
        else:
            r = _ring_push(ch, e)
            if r >= 0:
                ch.expected_seq += 1
                ch.buffers_received += 1
                ch.bytes_received += e.size
                if e.backlog >= 0:
                    ch.latest_backlog = e.backlog
                if (ch.num_free == 0 and e.backlog > 0 and not ch.stall_notified
                        and not ch.floating_blocked):
                    ch.stall_notified = True
                    stalled = True
    if r < 0 and not give_back:
        ch.free_slots[ch.num_free] = slot
        ch.num_free += 1
    pthread_mutex_unlock(&ch.lock)
    if r == 1:
        call = fn_signal_ready(ch.signal, ch.index)
        if call:
            (<GateSignal>ch.signal.owner)._call_back_nogil()
    if stalled:
        with gil:
            (<ChannelQueue>ch.owner)._on_stall(e.backlog)
    if r >= 0 or (e == NULL and not give_back):
        pass
    elif give_back:
        with gil:
            try:
                (<ChannelQueue>ch.owner)._return_received_slot(slot)
            except BaseException:  # noqa: BLE001
                log.exception("giving back a slot of a released channel failed")
    elif e != NULL and r == -3:
        with gil:
            try:
                (<NativeConnection>conn.owner).handler.on_channel_error(
                    <ChannelQueue>ch.owner, expected, e.seq)
            except BaseException:  # noqa: BLE001
                log.exception("the connection's channel error handler failed")
    elif e != NULL and r == -1:
        with gil:
            try:
                (<NativeConnection>conn.owner).handler.on_channel_error(
                    <ChannelQueue>ch.owner, -1, e.seq)
            except BaseException:  # noqa: BLE001
                log.exception("the connection's channel error handler failed")


cdef int _start_frame(fn_conn *conn) noexcept nogil:
    """The 9-byte header is in conn.hdr: check it and choose the next state. -1 on failure."""
    cdef int32_t length = fn_load_be_i32(conn.hdr)
    cdef uint32_t magic = <uint32_t>fn_load_be_i32(conn.hdr + 4)
    cdef int msg_id = <unsigned char>conn.hdr[8]
    if length < _HDR:
        _fail_fmt(conn, True, "frame length %lld is smaller than the frame header", length)
        return -1
    if length > conn.max_frame_length:
        _fail_fmt(conn, True, "frame length %lld exceeds the maximum of %lld", length, conn.max_frame_length)
        return -1
    if magic != _MAGIC:
        _fail_fmt(conn, True, "Network stream corrupted: received incorrect magic number.")
        return -1
    if msg_id > 11:
        _fail_fmt(conn, True, "Received unknown message from producer: id %lld", msg_id)
        return -1
    conn.frame_length = length
    if conn.server:
        if msg_id in (0, 1, 9):
            _fail_fmt(conn, True, "message id %lld is not sent by a client", msg_id)
            return -1
        if msg_id == 6 and length == _ADD_CREDIT_LEN:
            conn.hdr_need = _ADD_CREDIT_LEN
            conn.state = RS_BR_HEADER
            return 0
        return _begin_python_frame(conn, _HDR)
    if msg_id not in (0, 1, 9):
        _fail_fmt(conn, True, "message id %lld is not sent by a server", msg_id)
        return -1
    if msg_id == 0:
        if length - _HDR < _BR_HDR:
            _fail_fmt(conn, True, "BufferResponse frame of %lld bytes is shorter than its header", length)
            return -1
        conn.hdr_need = _HDR + _BR_HDR
        conn.state = RS_BR_HEADER
        return 0
    return _begin_python_frame(conn, _HDR)


cdef int _on_add_credit(fn_conn *conn) noexcept nogil:
    """An AddCredit (29 bytes in conn.hdr) on a server-role connection: its registered
    queue's credit grows natively; one for an unknown receiver goes to Python."""
    cdef int32_t credit = fn_load_be_i32(conn.hdr + _HDR)
    cdef fn_map_entry *m = _map_find(conn, conn.hdr + _HDR + 4)
    if m == NULL:
        return _begin_python_frame(conn, _ADD_CREDIT_LEN)
    if credit <= 0:
        _fail_fmt(conn, True, "AddCredit with credit %lld (must be > 0)", credit)
        return -1
    conn.state = RS_HEADER
    conn.frames_native += 1
    _outq_add_credit(<fn_outq *>m.ch, credit)
    return 0


cdef int _begin_python_frame(fn_conn *conn, int have) noexcept nogil:
    """Collect the whole frame (its first ``have`` bytes are in conn.hdr) for Python."""
    free(conn.frame)
    conn.frame = <char *>malloc(conn.frame_length)
    if conn.frame == NULL:
        _fail_fmt(conn, True, "out of memory for a frame")
        return -1
    memcpy(conn.frame, conn.hdr, have)
    conn.have = have
    conn.state = RS_FRAME
    if conn.have == conn.frame_length:
        return _end_python_frame(conn)
    return 0


cdef int _end_python_frame(fn_conn *conn) noexcept nogil:
    cdef char *frame = conn.frame
    conn.frame = NULL
    conn.state = RS_HEADER
    conn.frames_python += 1
    _call_frame(conn, frame, conn.frame_length)
    free(frame)
    return -1 if conn.failed or conn.removed else 0


cdef int _start_buffer_response(fn_conn *conn) noexcept nogil:
    """The BufferResponse header is in conn.hdr: check it; receive natively or hand to Python."""
    cdef const char *p = conn.hdr + _HDR
    cdef int32_t sp = fn_load_be_i32(p + 16)
    cdef int32_t parts = fn_load_be_i32(p + 20)
    cdef int32_t seq = fn_load_be_i32(p + 24)
    cdef int32_t backlog = fn_load_be_i32(p + 28)
    cdef int dt = <unsigned char>p[32]
    cdef int comp = <unsigned char>p[33]
    cdef int32_t size = fn_load_be_i32(p + 34)
    cdef fn_map_entry *m
    cdef fn_channel *ch
    cdef int slot = -1
    if parts < 0 or parts > 4096:
        _fail_fmt(conn, True, "BufferResponse with %lld partial buffers", parts)
        return -1
    if parts == 0:
        if sp < 0:
            _fail_fmt(conn, True, "BufferResponse with negative subpartition %lld", sp)
            return -1
        if backlog < -1:
            _fail_fmt(conn, True, "BufferResponse with invalid backlog %lld", backlog)
            return -1
        if dt < 1 or dt > 13:
            _fail_fmt(conn, True, "BufferResponse with invalid data type %lld", dt)
            return -1
        if comp > 1:
            _fail_fmt(conn, True, "BufferResponse with invalid compression flag %lld", comp)
            return -1
        if size < 0 or size > conn.max_buffer_size:
            _fail_fmt(conn, True, "BufferResponse of %lld bytes (maximum %lld)", size, conn.max_buffer_size)
            return -1
        if <int64_t>_HDR + _BR_HDR + size != conn.frame_length:
            _fail_fmt(conn, True, "BufferResponse size %lld does not match its frame length %lld", size, conn.frame_length)
            return -1
        if dt == DT_DATA_BUFFER and comp == 0 and size > 0:
            m = _map_find(conn, p)
            if m != NULL:
                ch = m.ch
                pthread_mutex_lock(&ch.lock)
                FN_ASSERT(conn.target == NULL and conn.slot < 0)
                FN_ASSERT(ch.num_free >= 0 and ch.num_free <= ch.slot_capacity)
                if not ch.released and ch.num_free > 0:
                    ch.num_free -= 1
                    slot = ch.free_slots[ch.num_free]
                    if ch.slot_cap[slot] < size:
                        ch.free_slots[ch.num_free] = slot
                        ch.num_free += 1
                        slot = -1
                    else:
                        ch.receiving += 1
                        conn.target = ch
                        conn.slot = slot
                        conn.dst = ch.slot_addr[slot]
                        conn.br_size = size
                        conn.br_seq = seq
                        conn.br_backlog = backlog
                        conn.br_type = dt
                        conn.have = 0
                pthread_mutex_unlock(&ch.lock)
                if slot >= 0:
                    conn.state = RS_SLOT
                    return 0
    # Everything else goes to Python whole (its decoder checks the rest).
    return _begin_python_frame(conn, _HDR + _BR_HDR)


cdef int _end_slot(fn_conn *conn) noexcept nogil:
    cdef fn_entry e
    cdef fn_channel *ch = conn.target
    FN_ASSERT(ch != NULL and conn.slot >= 0 and conn.have == conn.br_size)
    e.kind = ENTRY_SLOT
    e.slot = conn.slot
    e.size = conn.br_size
    e.data_type = conn.br_type
    e.seq = conn.br_seq
    e.backlog = conn.br_backlog
    e.obj = NULL
    conn.target = NULL
    conn.slot = -1
    conn.state = RS_HEADER
    conn.frames_native += 1
    _slot_done(conn, ch, e.slot, &e)
    return -1 if conn.failed or conn.removed else 0


cdef int _consume(fn_conn *conn) noexcept nogil:
    """Process the staging bytes. -1 if the connection failed or went away meanwhile."""
    cdef int take, avail, need
    cdef char *dst
    while conn.s_start < conn.s_end:
        avail = conn.s_end - conn.s_start
        if conn.state == RS_HEADER or conn.state == RS_BR_HEADER:
            need = (_HDR if conn.state == RS_HEADER else conn.hdr_need) - conn.hdr_have
            take = avail if avail < need else need
            memcpy(conn.hdr + conn.hdr_have, conn.staging + conn.s_start, take)
            conn.hdr_have += take
            conn.s_start += take
            if take == need:
                if conn.state == RS_HEADER:
                    if _start_frame(conn) < 0:
                        return -1
                    if conn.state != RS_BR_HEADER:
                        conn.hdr_have = 0
                else:
                    conn.hdr_have = 0
                    if conn.server:
                        if _on_add_credit(conn) < 0:
                            return -1
                    elif _start_buffer_response(conn) < 0:
                        return -1
        elif conn.state == RS_SLOT:
            need = conn.br_size - conn.have
            take = avail if avail < need else need
            dst = conn.dst + conn.have
            memcpy(dst, conn.staging + conn.s_start, take)
            conn.have += take
            conn.s_start += take
            if conn.have == conn.br_size:
                if _end_slot(conn) < 0:
                    return -1
        elif conn.state == RS_FRAME:
            need = conn.frame_length - conn.have
            take = avail if avail < need else need
            memcpy(conn.frame + conn.have, conn.staging + conn.s_start, take)
            conn.have += take
            conn.s_start += take
            if conn.have == conn.frame_length:
                if _end_python_frame(conn) < 0:
                    return -1
        else:
            return -1
    conn.s_start = 0
    conn.s_end = 0
    return 0


cdef void _on_readable(fn_conn *conn) noexcept nogil:
    cdef iovec iov[2]
    cdef ssize_t n
    cdef int rounds = 0
    cdef int err
    cdef int32_t rest
    while not conn.failed and not conn.removed and rounds < 16:
        rounds += 1
        if conn.state == RS_SLOT:
            # the payload straight into the slot, and what follows into the staging area: after
            # a large payload only the next frame's header (a BufferResponse's), so that the
            # next payload too is read straight into its slot rather than copied out of staging
            # (the same one system call a buffer); after a small one a whole staging area, which
            # takes many small frames in one call
            rest = conn.br_size - conn.have
            iov[0].iov_base = conn.dst + conn.have
            iov[0].iov_len = rest
            iov[1].iov_base = conn.staging
            iov[1].iov_len = _BR_LEN if conn.br_size >= _STAGING else _STAGING
            n = readv(conn.fd, iov, 2)
            if n > 0:
                conn.bytes_in += n
                if n >= rest:
                    conn.have = conn.br_size
                    conn.s_start = 0
                    conn.s_end = <int>(n - rest)
                    if _end_slot(conn) < 0:
                        return
                    if _consume(conn) < 0:
                        return
                else:
                    conn.have += <int32_t>n
                if n < <ssize_t>rest + <ssize_t>iov[1].iov_len:
                    # a short read drained the socket: back to epoll (level-triggered, it
                    # reports what arrives later) without a read that only says EAGAIN
                    return
                continue
        else:
            n = recv(conn.fd, conn.staging, _STAGING, 0)
            if n > 0:
                conn.bytes_in += n
                conn.s_start = 0
                conn.s_end = <int>n
                if _consume(conn) < 0:
                    return
                if n < _STAGING:
                    return          # drained (as above)
                continue
        if n == 0:
            _fail_fmt(conn, False, "Connection unexpectedly closed by remote task manager. This "
                      "might indicate that the remote task manager was lost.")
            return
        err = errno
        if err == EAGAIN or err == EINTR:
            return
        _fail_errno(conn, err)
        return


cdef int _send_out(fn_conn *conn) noexcept nogil:
    """Write the queued bytes of ``out`` (under out_lock) until done or the kernel is full:
    0, or the errno of a failed send."""
    cdef ssize_t n
    while conn.out_len > 0:
        n = send(conn.fd, conn.out, conn.out_len, MSG_NOSIGNAL)
        if n > 0:
            conn.bytes_out += n
            if n < conn.out_len:
                memmove(conn.out, conn.out + n, conn.out_len - n)
            conn.out_len -= n
            continue
        if n < 0 and errno == EINTR:
            continue
        if n < 0 and errno != EAGAIN:
            return errno
        break
    return 0


cdef void _flush(fn_conn *conn) noexcept nogil:
    """Write the credit announcements and queued frames (I/O thread)."""
    cdef fn_engine *eng = <fn_engine *>conn.engine
    cdef char frame[_ADD_CREDIT_LEN]
    cdef fn_channel *ch
    cdef int i, credit
    cdef bint want
    cdef epoll_event ev
    cdef bint overflow = False
    cdef int err = 0
    if conn.failed or conn.removed:
        return
    if conn.server:
        _flush_server(conn)
        return
    pthread_mutex_lock(&conn.out_lock)
    for i in range(conn.credit_len):
        ch = conn.credit[i]
        credit = _take_credit(ch)
        if credit > 0:
            _credit_frame(frame, credit, ch.receiver_id)
            if _append_out(conn, frame, _ADD_CREDIT_LEN) < 0:
                overflow = True
    conn.credit_len = 0
    err = _send_out(conn)
    want = conn.out_len > 0
    pthread_mutex_unlock(&conn.out_lock)
    if err:
        _fail_errno(conn, err)
        return
    if overflow:
        _fail_fmt(conn, True, "the peer does not read: the credit announcements exceed the write bound")
        return
    if want != conn.want_write:
        conn.want_write = want
        ev.events = EPOLLIN | (EPOLLOUT if want else 0)
        ev.data.ptr = conn
        epoll_ctl(eng.epfd, EPOLL_CTL_MOD, conn.fd, &ev)


# -- the send side of a server-role connection (I/O thread) --

cdef inline void _wire_entry(fn_wentry *w, fn_outq *q, fn_oentry *e, int32_t seq,
                             int32_t backlog) noexcept nogil:
    """``e`` as a BufferResponse on the wire: its 47-byte header (Flink's layout; the queue's
    receiver id and subpartition never change, so no lock is needed for them) and its payload."""
    fn_store_be_i32(w.hdr, <int32_t>(_BR_LEN + e.size))
    fn_store_be_i32(w.hdr + 4, <int32_t>_MAGIC)
    w.hdr[8] = 0
    memcpy(w.hdr + 9, q.receiver_id, 16)
    fn_store_be_i32(w.hdr + 25, q.subpartition)
    fn_store_be_i32(w.hdr + 29, 0)           # numOfPartialBuffers
    fn_store_be_i32(w.hdr + 33, seq)
    fn_store_be_i32(w.hdr + 37, backlog)
    w.hdr[41] = <char>e.data_type
    w.hdr[42] = 0                             # not compressed
    fn_store_be_i32(w.hdr + 43, e.size)
    w.size = e.size
    w.off = 0
    w.data = e.data
    w.obj = e.obj


cdef int _fill_wire(fn_conn *conn) noexcept nogil:
    """Take one entry from each ready queue in turn (round-robin, Flink's PartitionRequestQueue)
    onto the wire queue, up to _WIRE_FRAMES frames or _WIRE_BYTES bytes. Returns the number
    taken, -1 out of memory."""
    cdef fn_outq *q
    cdef fn_oentry e
    cdef fn_wentry *w
    cdef int taken = 0
    cdef int32_t seq, backlog
    cdef bint again
    if conn.wire == NULL:
        conn.wire = <fn_wentry *>malloc(_WIRE_FRAMES * sizeof(fn_wentry))
        if conn.wire == NULL:
            return -1
        conn.wire_cap = _WIRE_FRAMES
    if conn.wire_len == 0:
        conn.wire_head = 0
    elif conn.wire_head + conn.wire_len >= conn.wire_cap:
        memmove(conn.wire, conn.wire + conn.wire_head, conn.wire_len * sizeof(fn_wentry))
        conn.wire_head = 0
    while conn.wire_head + conn.wire_len < conn.wire_cap and conn.wire_bytes < _WIRE_BYTES:
        pthread_mutex_lock(&conn.out_lock)
        if conn.ready_len == 0:
            pthread_mutex_unlock(&conn.out_lock)
            break
        q = conn.ready[conn.ready_head]
        conn.ready_head = (conn.ready_head + 1) % conn.ready_cap
        conn.ready_len -= 1
        pthread_mutex_unlock(&conn.out_lock)
        pthread_mutex_lock(&q.lock)
        FN_ASSERT(q.in_ready)
        if not _outq_pop(q, &e, &seq, &backlog):
            q.in_ready = False
            pthread_mutex_unlock(&q.lock)
            continue
        again = _outq_sendable(q)
        if not again:
            q.in_ready = False
        pthread_mutex_unlock(&q.lock)
        w = &conn.wire[conn.wire_head + conn.wire_len]
        _wire_entry(w, q, &e, seq, backlog)
        conn.wire_len += 1
        conn.wire_bytes += _BR_LEN + e.size
        taken += 1
        if again:
            pthread_mutex_lock(&conn.out_lock)
            _ready_push(conn, q)
            pthread_mutex_unlock(&conn.out_lock)
    return taken


cdef int _write_wire(fn_conn *conn) noexcept nogil:
    """Gather-write the wire queue. 1: all written; 0: the kernel is full; -errno on error.
    Buffers fully written go to the engine's done list."""
    cdef iovec iov[2 * _WIRE_FRAMES]
    cdef msghdr msg
    cdef void *done[_WIRE_FRAMES]
    cdef int n_done = 0
    cdef int i, k
    cdef fn_wentry *w
    cdef ssize_t n
    cdef int64_t left
    while conn.wire_len:
        k = 0
        for i in range(conn.wire_len):
            w = &conn.wire[conn.wire_head + i]
            if w.off < _BR_LEN:
                iov[k].iov_base = w.hdr + w.off
                iov[k].iov_len = _BR_LEN - w.off
                k += 1
                iov[k].iov_base = w.data
                iov[k].iov_len = w.size
                k += 1
            else:
                iov[k].iov_base = w.data + (w.off - _BR_LEN)
                iov[k].iov_len = w.size - (w.off - _BR_LEN)
                k += 1
        memset(&msg, 0, sizeof(msg))
        msg.msg_iov = iov
        msg.msg_iovlen = k
        n = sendmsg(conn.fd, &msg, MSG_NOSIGNAL)
        if n < 0:
            if errno == EINTR:
                continue
            if n_done:
                _hand_done(<fn_engine *>conn.engine, done, n_done)
            return 0 if errno == EAGAIN else -errno
        conn.bytes_out += n
        while n > 0:
            w = &conn.wire[conn.wire_head]
            left = _BR_LEN + w.size - w.off
            if n >= left:
                n -= left
                done[n_done] = w.obj
                n_done += 1
                conn.wire_bytes -= _BR_LEN + w.size
                conn.wire_head += 1
                conn.wire_len -= 1
                conn.frames_sent += 1
            else:
                w.off += <int32_t>n
                n = 0
    if n_done:
        _hand_done(<fn_engine *>conn.engine, done, n_done)
    conn.wire_head = 0
    return 1


cdef void _drop_wire(fn_conn *conn) noexcept nogil:
    """The connection is gone: its unwritten frames' buffers go to the done list."""
    cdef void *done[_WIRE_FRAMES]
    cdef int i
    pthread_mutex_lock(&conn.send_lock)
    for i in range(conn.wire_len):
        done[i] = conn.wire[conn.wire_head + i].obj
    if conn.wire_len:
        _hand_done(<fn_engine *>conn.engine, done, conn.wire_len)
    conn.wire_len = 0
    conn.wire_head = 0
    conn.wire_bytes = 0
    pthread_mutex_unlock(&conn.send_lock)


cdef void _flush_server(fn_conn *conn) noexcept nogil:
    """Write a server-role connection: the frames on the wire queue, then the control frames
    Python queued (errors), then more from the ready queues, until the kernel is full or nothing
    is left (holding ``send_lock``: a write-through waits, see _write_through)."""
    pthread_mutex_lock(&conn.send_lock)
    _flush_server_locked(conn)
    pthread_mutex_unlock(&conn.send_lock)


cdef void _flush_server_locked(fn_conn *conn) noexcept nogil:
    cdef fn_engine *eng = <fn_engine *>conn.engine
    cdef int r, err = 0
    cdef bint want
    cdef epoll_event ev
    pthread_mutex_lock(&conn.out_lock)
    conn.write_scheduled = False
    pthread_mutex_unlock(&conn.out_lock)
    while True:
        if conn.wire_len:
            r = _write_wire(conn)
            if r < 0:
                err = -r
                break
            if r == 0:
                break
        pthread_mutex_lock(&conn.out_lock)
        err = _send_out(conn)
        want = conn.out_len > 0
        pthread_mutex_unlock(&conn.out_lock)
        if err or want:
            break
        r = _fill_wire(conn)
        if r < 0:
            _fail_fmt(conn, True, "out of memory for the write queue")
            return
        if r == 0:
            break
    if err:
        _fail_errno(conn, err)
        return
    want = conn.wire_len > 0 or conn.out_len > 0
    if want != conn.want_write:
        conn.want_write = want
        ev.events = EPOLLIN | (EPOLLOUT if want else 0)
        ev.data.ptr = conn
        epoll_ctl(eng.epfd, EPOLL_CTL_MOD, conn.fd, &ev)


cdef void _hand_done(fn_engine *eng, void **objs, int n) noexcept nogil:
    """Buffers the I/O thread wrote (owned references) go to the reaper."""
    cdef void **d
    cdef int cap, i
    cdef bint wake
    pthread_mutex_lock(&eng.done_lock)
    if eng.num_done + n > eng.cap_done:
        cap = eng.cap_done * 2 if eng.cap_done else 256
        while cap < eng.num_done + n:
            cap *= 2
        d = <void **>realloc(eng.done, cap * sizeof(void *))
        if d == NULL:
            pthread_mutex_unlock(&eng.done_lock)
            _recycle_objects(objs, n)     # out of memory: recycle here (takes the GIL)
            return
        eng.done = d
        eng.cap_done = cap
    for i in range(n):
        eng.done[eng.num_done + i] = objs[i]
    wake = eng.num_done == 0
    eng.num_done += n
    FN_ASSERT(eng.hungry >= 0)
    if eng.hungry > 0:
        # a task thread waits for its pool: it recycles them itself (no reaper hop)
        pthread_cond_broadcast(&eng.hungry_cond)
    elif wake:
        pthread_cond_signal(&eng.done_cond)
    pthread_mutex_unlock(&eng.done_lock)


cdef void _recycle_objects(void **objs, int n) noexcept nogil:
    cdef int i
    with gil:
        for i in range(n):
            obj = <object>objs[i]
            Py_DECREF(obj)       # the queue's reference; `obj` holds one until recycled
            try:
                obj.recycle()
            except BaseException:  # noqa: BLE001 (every buffer goes back)
                log.exception("recycling a sent buffer failed")
            obj = None


cdef inline int _take_done_locked(fn_engine *eng, void ***objs) noexcept nogil:
    """Under done_lock: take the whole done list (the caller frees ``objs[0]``)."""
    cdef int n = eng.num_done
    objs[0] = eng.done
    eng.done = NULL
    eng.num_done = 0
    eng.cap_done = 0
    return n


cdef inline int _take_reclaimed(fn_engine *eng, void ***objs) noexcept nogil:
    """ReceiveEngine.reclaim, under done_lock: take the whole done list, count it as reclaimed on
    a task thread, and release done_lock."""
    cdef int n = _take_done_locked(eng, objs)
    eng.reclaimed += n
    pthread_mutex_unlock(&eng.done_lock)
    return n


cdef int _take_done(fn_engine *eng, void ***objs, bint wait) noexcept nogil:
    """Take the done list (waiting for one if ``wait``, until the reaper is stopped)."""
    cdef int n
    pthread_mutex_lock(&eng.done_lock)
    while wait and eng.num_done == 0 and not eng.reaper_stop:
        pthread_cond_wait(&eng.done_cond, &eng.done_lock)
    n = _take_done_locked(eng, objs)
    pthread_mutex_unlock(&eng.done_lock)
    return n


cdef void _unregister_out(fn_conn *conn, fn_outq *q) noexcept nogil:
    """Stop serving ``q`` (I/O thread): out of the map and the ready ring, reference dropped."""
    cdef fn_map_entry *m = _map_find(conn, q.receiver_id)
    cdef void *obj
    cdef int i, j = 0, n
    if m == NULL or <fn_outq *>m.ch != q:
        return
    obj = m.obj
    pthread_mutex_lock(&conn.out_lock)
    n = conn.ready_len
    for i in range(n):
        if conn.ready[(conn.ready_head + i) % conn.ready_cap] != q:
            conn.ready[(conn.ready_head + j) % conn.ready_cap] = conn.ready[(conn.ready_head + i) % conn.ready_cap]
            j += 1
    conn.ready_len = j
    pthread_mutex_unlock(&conn.out_lock)
    pthread_mutex_lock(&q.lock)
    q.conn = NULL
    q.in_ready = False
    pthread_mutex_unlock(&q.lock)
    _map_delete(conn, m)
    with gil:
        Py_DECREF(<object>obj)


cdef void _register_out(fn_conn *conn, fn_outq *q, void *obj) noexcept nogil:
    cdef bint ok = not conn.removed and _map_find(conn, q.receiver_id) == NULL
    if ok:
        ok = _reserve_ready(conn, conn.map_count + 1) == 0
    if ok:
        ok = _map_insert_rid(conn, q.receiver_id, <fn_channel *>q, obj) == 0
    if not ok:
        with gil:
            Py_DECREF(<object>obj)
        return
    pthread_mutex_lock(&q.lock)
    q.conn = conn
    if not q.in_ready and _outq_sendable(q):
        q.in_ready = True
    else:
        conn = NULL
    pthread_mutex_unlock(&q.lock)
    if conn != NULL:
        _outq_enqueue(q, conn)


cdef void _unregister(fn_conn *conn, fn_channel *ch) noexcept nogil:
    cdef fn_map_entry *m = _map_find(conn, ch.receiver_id)
    cdef void *obj
    if m == NULL or m.ch != ch:
        return
    obj = m.obj
    if conn.target == ch:
        # discard the rest of the payload: switch to collecting it as a frame nobody reads
        _abort_receive(conn)
        _discard_rest(conn)
    pthread_mutex_lock(&ch.lock)
    ch.conn = NULL
    pthread_mutex_unlock(&ch.lock)
    _drop_credit(conn, ch)
    _map_delete(conn, m)
    with gil:
        Py_DECREF(<object>obj)


cdef void _drop_credit(fn_conn *conn, fn_channel *ch) noexcept nogil:
    cdef int i, j = 0
    pthread_mutex_lock(&conn.out_lock)
    for i in range(conn.credit_len):
        if conn.credit[i] != ch:
            conn.credit[j] = conn.credit[i]
            j += 1
    conn.credit_len = j
    pthread_mutex_unlock(&conn.out_lock)


cdef void _discard_rest(fn_conn *conn) noexcept nogil:
    """The frame being received into a slot is dropped: read its remaining bytes into a
    throw-away frame (handed to nobody)."""
    cdef int32_t got = _HDR + _BR_HDR + conn.have
    free(conn.frame)
    conn.frame = <char *>malloc(conn.frame_length)
    if conn.frame == NULL:
        _fail_fmt(conn, True, "out of memory for a frame")
        return
    memset(conn.frame, 0, conn.frame_length)
    memcpy(conn.frame, conn.hdr, _HDR + _BR_HDR)
    conn.have = got
    conn.state = RS_FRAME
    # the payload bytes already received are zeroed: the Python handler sees a BufferResponse
    # for an unregistered receiver and drops it (sending CancelPartitionRequest)


cdef void _remove_conn(fn_engine *eng, fn_conn *conn) noexcept nogil:
    cdef epoll_event ev
    cdef int i, j = 0
    cdef fn_map_entry *m
    if conn.removed:
        return
    if not conn.failed:
        _flush(conn)        # what was queued before the removal (a CloseRequest) goes out
    if not conn.failed:
        epoll_ctl(eng.epfd, EPOLL_CTL_DEL, conn.fd, &ev)
    _abort_receive(conn)
    conn.failed = True
    # every channel (or output queue) still registered is dropped
    for i in range(conn.map_capacity):
        while conn.map[i].ch != NULL:
            if conn.server:
                _unregister_out(conn, <fn_outq *>conn.map[i].ch)
            else:
                _unregister(conn, conn.map[i].ch)
    _drop_wire(conn)
    for i in range(eng.num_conns):
        if eng.conns[i] != conn:
            eng.conns[j] = eng.conns[i]
            j += 1
    eng.num_conns = j
    pthread_mutex_lock(&eng.lock)
    conn.removed = True
    _conn_set_remove(eng.writes, &eng.num_writes, conn)
    _conn_set_remove(eng.deferred, &eng.num_deferred, conn)
    pthread_mutex_unlock(&eng.lock)
    with gil:
        owner = <NativeConnection>conn.owner
        try:
            owner.handler.on_removed()
        except BaseException:  # noqa: BLE001
            log.exception("the connection's removal handler failed")
        finally:
            Py_DECREF(owner)


cdef int _run_commands(fn_engine *eng) noexcept nogil:
    cdef fn_cmd *cmds
    cdef int n, i
    cdef fn_cmd c
    cdef epoll_event ev
    cdef fn_conn **conns
    pthread_mutex_lock(&eng.lock)
    cmds = eng.cmds
    n = eng.num_cmds
    eng.cmds = NULL
    eng.num_cmds = 0
    eng.cap_cmds = 0
    pthread_mutex_unlock(&eng.lock)
    for i in range(n):
        c = cmds[i]
        if c.op == CMD_ADD_CONN:
            if eng.num_conns == eng.cap_conns:
                conns = <fn_conn **>realloc(eng.conns, (eng.cap_conns * 2 + 4) * sizeof(fn_conn *))
                if conns == NULL:
                    _fail_conn(c.conn, "out of memory", True)
                    continue
                eng.conns = conns
                eng.cap_conns = eng.cap_conns * 2 + 4
            eng.conns[eng.num_conns] = c.conn
            eng.num_conns += 1
            ev.events = EPOLLIN
            ev.data.ptr = c.conn
            if epoll_ctl(eng.epfd, EPOLL_CTL_ADD, c.conn.fd, &ev) < 0:
                c.conn.failed = True   # nothing to delete from epoll
                c.conn.failed = False
                _fail_fmt(c.conn, True, "cannot watch the socket")
        elif c.op == CMD_REMOVE_CONN:
            _remove_conn(eng, c.conn)
        elif c.op == CMD_REGISTER:
            if c.conn.removed or _map_find(c.conn, c.ch.receiver_id) != NULL \
                    or _map_insert(c.conn, c.ch, c.obj) < 0:
                pthread_mutex_lock(&c.ch.lock)
                c.ch.conn = NULL
                pthread_mutex_unlock(&c.ch.lock)
                with gil:
                    Py_DECREF(<object>c.obj)
        elif c.op == CMD_UNREGISTER:
            if not c.conn.removed:
                _unregister(c.conn, c.ch)
        elif c.op == CMD_REGISTER_OUT:
            _register_out(c.conn, <fn_outq *>c.ch, c.obj)
        elif c.op == CMD_UNREGISTER_OUT:
            if not c.conn.removed:
                _unregister_out(c.conn, <fn_outq *>c.ch)
    if n:
        _drop_command_owners(cmds, n)
    free(cmds)
    return 0


cdef void _drop_command_owners(fn_cmd *cmds, int n) noexcept nogil:
    """Drop the references the ``n`` commands held on their connections (takes the GIL).

    Its own function: a Python local in :func:`_run_commands` would make Cython take the GIL
    at that function's every exit, that is once per turn of the I/O loop."""
    cdef int i
    with gil:
        # hold each owner once more while dropping the commands' references, so a
        # connection named by several commands is freed only after the last one
        owners = [<object>cmds[i].conn.owner for i in range(n)]
        for i in range(n):
            Py_DECREF(<object>owners[i])
        owners = None


cdef void _loop(fn_engine *eng) noexcept nogil:
    global fn_io_handling
    cdef epoll_event events[_MAX_EVENTS]
    cdef int n, i, k
    cdef fn_conn *conn
    cdef uint64_t value
    cdef fn_conn **writes
    cdef int num_writes
    cdef bint stop
    while True:
        n = epoll_wait(eng.epfd, events, _MAX_EVENTS, -1)
        if n < 0:
            if errno == EINTR:
                continue
            break
        # writes asked for while handling these events are flushed below, in this iteration
        fn_io_handling = <void *>eng
        for i in range(n):
            if events[i].data.ptr == NULL:
                read(eng.efd, &value, 8)
                continue
            if events[i].data.ptr == <void *>&eng.tfd:
                # the credit timer: the deferred connections are flushed with the writes below
                read(eng.tfd, &value, 8)
                _take_deferred(eng)
                continue
            conn = <fn_conn *>events[i].data.ptr
            if conn.failed or conn.removed:
                continue
            if events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP):
                _on_readable(conn)
            if events[i].events & EPOLLOUT and not conn.failed and not conn.removed:
                _flush(conn)
        # commands first (a channel is registered before its PartitionRequest is written); a
        # removal flushes its connection's writes itself (CloseRequest)
        _run_commands(eng)
        pthread_mutex_lock(&eng.lock)
        # from here on a write asked for (by a flush below) needs the next iteration: a wake-up
        fn_io_handling = NULL
        writes = eng.writes
        num_writes = eng.num_writes
        eng.writes = NULL
        eng.num_writes = 0
        eng.cap_writes = 0
        stop = eng.stop
        pthread_mutex_unlock(&eng.lock)
        for k in range(num_writes):
            _flush(writes[k])
        free(writes)
        if stop:
            break
    # stopping: every connection is removed (its channels dropped, its handler told)
    _run_commands(eng)
    while eng.num_conns:
        _remove_conn(eng, eng.conns[0])


cdef class ReceiveEngine(SegmentReclaimer):
    """One native I/O thread (``flinknet-native-io``) serving any number of
    :class:`NativeConnection` s; start it with :meth:`start`, stop it with :meth:`close`."""

    def __cinit__(self):
        cdef epoll_event ev
        self.e.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.e.epfd < 0:
            raise OSError(errno, "epoll_create1 failed")
        self.e.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.e.efd < 0:
            close(self.e.epfd)
            raise OSError(errno, "eventfd failed")
        ev.events = EPOLLIN
        ev.data.ptr = NULL
        epoll_ctl(self.e.epfd, EPOLL_CTL_ADD, self.e.efd, &ev)
        self.e.tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        if self.e.tfd < 0:
            close(self.e.epfd)
            close(self.e.efd)
            raise OSError(errno, "timerfd_create failed")
        ev.events = EPOLLIN
        ev.data.ptr = <void *>&self.e.tfd
        epoll_ctl(self.e.epfd, EPOLL_CTL_ADD, self.e.tfd, &ev)
        pthread_mutex_init(&self.e.lock, NULL)
        pthread_mutex_init(&self.e.done_lock, NULL)
        pthread_cond_init(&self.e.done_cond, NULL)
        pthread_cond_init(&self.e.hungry_cond, NULL)
        self._init_done = True

    def __dealloc__(self):
        if self._init_done:
            if self.e.epfd >= 0:
                close(self.e.epfd)
                close(self.e.efd)
                close(self.e.tfd)
            free(self.e.cmds)
            free(self.e.writes)
            free(self.e.deferred)
            free(self.e.conns)
            if self.e.num_done:
                _recycle_objects(self.e.done, self.e.num_done)
            free(self.e.done)
            pthread_mutex_destroy(&self.e.lock)
            pthread_mutex_destroy(&self.e.done_lock)
            pthread_cond_destroy(&self.e.done_cond)
            pthread_cond_destroy(&self.e.hungry_cond)

    cdef int _command(self, int op, fn_conn *conn, fn_channel *ch, void *obj) except? -1:
        cdef fn_cmd *cmds
        pthread_mutex_lock(&self.e.lock)
        if self.e.stop:
            pthread_mutex_unlock(&self.e.lock)
            # a stopping engine removes every connection and channel itself
            return 0 if op == CMD_REMOVE_CONN or op == CMD_UNREGISTER else -1
        if self.e.num_cmds == self.e.cap_cmds:
            cmds = <fn_cmd *>realloc(self.e.cmds, (self.e.cap_cmds * 2 + 8) * sizeof(fn_cmd))
            if cmds == NULL:
                pthread_mutex_unlock(&self.e.lock)
                raise MemoryError()
            self.e.cmds = cmds
            self.e.cap_cmds = self.e.cap_cmds * 2 + 8
        Py_INCREF(<object>conn.owner)   # dropped after the command ran
        self.e.cmds[self.e.num_cmds].op = op
        self.e.cmds[self.e.num_cmds].conn = conn
        self.e.cmds[self.e.num_cmds].ch = ch
        self.e.cmds[self.e.num_cmds].obj = obj
        self.e.num_cmds += 1
        pthread_mutex_unlock(&self.e.lock)
        _wake(self.e.efd)
        return 0

    def start(self):
        """Start the I/O thread (once)."""
        if self._thread is not None:
            raise RuntimeError("the engine was already started")
        if self._closed:
            raise RuntimeError("the engine is closed")
        self._thread = threading.Thread(target=self._run, name="flinknet-native-io", daemon=True)
        self._reaper = threading.Thread(target=self._reap_run, name="flinknet-native-reaper", daemon=True)
        self._reaper.start()
        self._thread.start()

    def _run(self):
        cdef fn_engine *eng = &self.e
        with nogil:
            _loop(eng)
            # every connection is gone: the reaper recycles what is left and stops
            pthread_mutex_lock(&eng.done_lock)
            eng.reaper_stop = True
            pthread_cond_signal(&eng.done_cond)
            pthread_cond_broadcast(&eng.hungry_cond)
            pthread_mutex_unlock(&eng.done_lock)

    def _reap_run(self):
        cdef fn_engine *eng = &self.e
        cdef void **objs
        cdef int n
        while True:
            with nogil:
                n = _take_done(eng, &objs, True)
            if n:
                _recycle_objects(objs, n)
            free(objs)
            if n == 0 and eng.reaper_stop:
                break

    def reap(self):
        """Recycle the buffers the I/O thread has written (on the calling thread; the reaper
        thread does it otherwise). Returns how many."""
        cdef void **objs
        cdef int n
        n = _take_done(&self.e, &objs, False)
        if n:
            _recycle_objects(objs, n)
        free(objs)
        return n

    cdef int reclaim(self, double timeout) except -1:
        """A pool of this engine's environment ran dry (a blocking request, with the GIL):
        recycle the written buffers waiting in the done list on this thread; if there are none,
        wait for some (the I/O thread wakes this thread instead of the reaper) or for a poke, at
        most ``timeout`` seconds, with the GIL released."""
        cdef fn_engine *eng = &self.e
        cdef void **objs = NULL
        cdef int n
        cdef int rc = 0
        cdef uint64_t seq
        cdef timespec ts
        if not self._init_done:
            return 0
        # done_lock is taken with the GIL held (no holder of it ever waits for the GIL), and this
        # thread counts as hungry before it releases the GIL: a recycle that makes the pool
        # available needs the GIL, so it comes after that and its poke sees this waiter. It is
        # released before the GIL is taken back (a poke holds the GIL and waits for done_lock).
        pthread_mutex_lock(&eng.done_lock)
        if eng.num_done == 0:
            seq = eng.poke_seq
            eng.hungry += 1
            with nogil:
                _deadline(&ts, timeout)
                while eng.num_done == 0 and eng.poke_seq == seq and rc == 0:
                    rc = pthread_cond_timedwait(&eng.hungry_cond, &eng.done_lock, &ts)
                if rc != 0:
                    eng.reclaim_timeouts += 1
                eng.hungry -= 1
                FN_ASSERT(eng.hungry >= 0)
                # (the list is taken in the section that ends the wait: what was added while
                # this thread counted as hungry, and so woke no reaper, is this thread's)
                n = _take_reclaimed(eng, &objs)
        else:
            n = _take_reclaimed(eng, &objs)
        if n:
            _recycle_objects(objs, n)
        free(objs)
        return n

    cdef bint implemented(self) noexcept:
        return True

    cdef void poke(self) noexcept:
        """A pool turned available or was destroyed (with the GIL): the threads waiting in
        :meth:`reclaim` look again."""
        if not self._init_done:
            return
        pthread_mutex_lock(&self.e.done_lock)
        if self.e.hungry > 0:
            self.e.poke_seq += 1
            pthread_cond_broadcast(&self.e.hungry_cond)
        pthread_mutex_unlock(&self.e.done_lock)

    @property
    def reclaim_waiters(self):
        """Task threads waiting in the engine for written buffers to recycle (their pool ran
        dry; see :meth:`~flinknet._core.pool.LocalBufferPool.set_reclaimer`)."""
        return self.e.hungry

    @property
    def reclaim_pokes(self):
        """How often a pool turning available (or destroyed) woke the threads waiting in the
        engine for written buffers."""
        return self.e.poke_seq

    @property
    def reclaim_timeouts(self):
        """Waits in the engine for written buffers that ended by their timeout (the pool's
        safety round) rather than by buffers written or a poke."""
        return self.e.reclaim_timeouts

    @property
    def buffers_reclaimed(self):
        """Written buffers recycled by task threads whose pool ran dry (see
        :meth:`~flinknet._core.pool.LocalBufferPool.set_reclaimer`), not by the reaper."""
        return self.e.reclaimed

    @property
    def buffers_to_recycle(self):
        """Written buffers waiting for the reaper (approximate)."""
        return self.e.num_done

    def close(self, timeout=10.0):
        """Stop the I/O thread: every connection is removed first (idempotent). Called from the
        I/O thread itself (a handler), it only asks."""
        cdef fn_engine *eng
        pthread_mutex_lock(&self.e.lock)
        self.e.stop = True
        pthread_mutex_unlock(&self.e.lock)
        _wake(self.e.efd)
        self._closed = True
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
            if t.is_alive():
                raise RuntimeError("the native I/O thread did not stop")
            r = self._reaper
            if r is not None and r is not threading.current_thread():
                r.join(timeout)
        if (t is None or not t.is_alive()) and self.e.epfd >= 0:
            # the thread is gone (or never ran): give the descriptors back now
            if t is None:
                eng = &self.e
                with nogil:
                    _loop(eng)     # never started: run the stopping pass here
            self.reap()
            close(self.e.epfd)
            close(self.e.efd)
            pthread_mutex_lock(&self.e.lock)
            close(self.e.tfd)
            self.e.tfd = -1
            pthread_mutex_unlock(&self.e.lock)
            self.e.epfd = -1
            self.e.efd = -1

    @property
    def is_alive(self):
        t = self._thread
        return t is not None and t.is_alive()

    @property
    def num_connections(self):
        """Connections the I/O thread serves (approximate)."""
        return self.e.num_conns
