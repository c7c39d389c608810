# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The native floor of a design with I/O threads: ``floor.py``'s relay, in C without the GIL.

A record goes producer thread → (bounded queue, eventfd wake-up) → I/O thread (epoll, non-blocking
socket, gather writes) → TCP → I/O thread (epoll, ``recv`` into a free slot) → (bounded queue,
condition variable) → consumer thread, each side copying once in user space (the producer into a
slot, the consumer out of it) and holding at most ``window`` slots: the structure of ZeroMQ's
and of flinknet's native engine, with nothing else in it — no framing, no buffers, no credits,
no Python. What it reaches is the most any native engine with that structure can reach on this
machine; ``python -m flinknet.tools.bench.floor`` prints it beside the raw socket and flinknet.

**Credit mode** (``relay_send(..., credits=N)`` with ``relay_receive(..., credits=True)``) adds
Flink's credit loop and nothing else: the sender's I/O thread sends a record only against a
credit (``N`` at the start: the receiver's window), and the consumer thread gives each slot it
frees back as credit, in a 4-byte message it writes itself when its queue is empty (else the
take that empties the queue writes what was freed before it) — flinknet's announcement rule.
It measures what a native engine with Flink's credit window reaches on this machine, so that
the window's share of a gap can be told from the engine's.

**Record mode** (``record=R`` on both sides) moves ``R``-byte records packed into the slots, as
many as fit with a 4-byte length each (Flink's record framing, nothing more), the rest of a slot
padding: the producer copies each record into its slot and the consumer each one out, so the
per-record copies of small records are in the floor too (the slots still cross as ``chunk``
bytes). It is the floor of the 100 B and 1000 B rows.

Ownership: each relay's state is a C struct owned by the calling function for its whole life;
its slots move free → queued → in flight → free under the struct's one mutex; the threads it
starts are joined before it returns. No Python object is touched between ``with nogil`` and the
join.
"""

from libc.errno cimport EAGAIN, ECONNRESET, EINTR, errno
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

import numpy as np


cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_create(pthread_t *thread, const void *attr, void *(*start)(void *) noexcept nogil,
                       void *arg)
    int pthread_join(pthread_t thread, void **retval)
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_cond_init(pthread_cond_t *c, const void *attr)
    int pthread_cond_destroy(pthread_cond_t *c)
    int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
    int pthread_cond_signal(pthread_cond_t *c)


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int CLOCK_MONOTONIC
    int TIMER_ABSTIME
    int clock_gettime(int clk, timespec *ts)
    int clock_nanosleep(int clk, int flags, const timespec *req, timespec *rem)


cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        int fd
        uint64_t u64
    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data
    int EPOLLIN, EPOLLOUT, EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLL_CLOEXEC
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)


cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    int EFD_NONBLOCK, EFD_CLOEXEC


cdef extern from "<sys/uio.h>" nogil:
    cdef struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t writev(int fd, const iovec *iov, int iovcnt)


cdef extern from "<sys/socket.h>" nogil:
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    int MSG_DONTWAIT
    int MSG_NOSIGNAL


cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void *buf, size_t n)
    ssize_t write(int fd, const void *buf, size_t n)
    int close(int fd)


cdef extern from "<fcntl.h>" nogil:
    int fcntl(int fd, int cmd, ...)
    int F_GETFL, F_SETFL, O_NONBLOCK


cdef enum:
    MAX_IOV = 64


cdef inline int64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline void _wake(int efd) noexcept nogil:
    cdef uint64_t one = 1
    write(efd, &one, 8)


cdef inline void _drain(int efd) noexcept nogil:
    cdef uint64_t value
    read(efd, &value, 8)


cdef struct Relay:
    # Shared by the relay's two threads; every field below `lock` is guarded by it.
    int sock
    int efd              # wakes the I/O thread (sender: work queued; receiver: a slot freed)
    int epfd
    Py_ssize_t chunk
    Py_ssize_t window
    Py_ssize_t count     # slots to move (one record each, or `per_slot` in record mode)
    double rate          # records per second (0: as fast as possible)
    Py_ssize_t record    # record mode: bytes per record (0: a record is a whole slot)
    Py_ssize_t per_slot  # records per slot
    Py_ssize_t records   # records to move (record mode: the last slot holds the remainder)
    char *slots          # window * chunk bytes
    pthread_mutex_t lock
    pthread_cond_t cond  # sender: a slot freed; receiver: a record queued or end of stream
    Py_ssize_t *ring     # queued slot indexes (FIFO of `window`)
    Py_ssize_t head
    Py_ssize_t queued
    Py_ssize_t *free_list
    Py_ssize_t num_free
    bint producer_done
    bint io_waits_for_slot
    bint eof
    int error            # errno of a failed system call, 0 if none
    Py_ssize_t moved     # records through the I/O thread
    # Credit mode. Sender: `credit` (records it may still send) and the partial credit message
    # being read are the I/O thread's alone. Receiver: `unannounced` is the consumer thread's.
    bint credit_mode
    Py_ssize_t credit
    char credit_buf[4]
    int credit_got
    Py_ssize_t unannounced
    Py_ssize_t credit_messages


cdef int _relay_init(Relay *r, int sock, Py_ssize_t chunk, Py_ssize_t window, Py_ssize_t count,
                     double rate) noexcept nogil:
    cdef Py_ssize_t i
    cdef epoll_event ev
    memset(r, 0, sizeof(Relay))
    r.sock = sock
    r.chunk = chunk
    r.window = window
    r.count = count
    r.rate = rate
    r.slots = <char *>calloc(window, chunk)
    r.ring = <Py_ssize_t *>calloc(window, sizeof(Py_ssize_t))
    r.free_list = <Py_ssize_t *>calloc(window, sizeof(Py_ssize_t))
    if r.slots == NULL or r.ring == NULL or r.free_list == NULL:
        return -1
    for i in range(window):
        r.free_list[i] = i
    r.num_free = window
    pthread_mutex_init(&r.lock, NULL)
    pthread_cond_init(&r.cond, NULL)
    r.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
    r.epfd = epoll_create1(EPOLL_CLOEXEC)
    if r.efd < 0 or r.epfd < 0:
        return -1
    fcntl(sock, F_SETFL, fcntl(sock, F_GETFL, 0) | O_NONBLOCK)
    ev.events = EPOLLIN
    ev.data.fd = r.efd
    epoll_ctl(r.epfd, EPOLL_CTL_ADD, r.efd, &ev)
    return 0


cdef void _relay_destroy(Relay *r) noexcept nogil:
    if r.efd > 0:
        close(r.efd)
    if r.epfd > 0:
        close(r.epfd)
    pthread_mutex_destroy(&r.lock)
    pthread_cond_destroy(&r.cond)
    free(r.slots)
    free(r.ring)
    free(r.free_list)


cdef int _wait(Relay *r) noexcept nogil:
    # One epoll wait of an I/O thread (socket readiness or the eventfd); drains the eventfd.
    # -1 (with r.error set) when epoll itself failed.
    cdef epoll_event events[4]
    cdef int n = epoll_wait(r.epfd, events, 4, -1), k
    if n < 0:
        if errno == EINTR:
            return 0
        r.error = errno
        return -1
    for k in range(n):
        if events[k].data.fd == r.efd:
            _drain(r.efd)
    return 0


# -- sending side ------------------------------------------------------------------------------

cdef inline Py_ssize_t _records_in(Relay *r, Py_ssize_t slot_number) noexcept nogil:
    """Record mode: the records slot number ``slot_number`` of the stream holds."""
    cdef Py_ssize_t left = r.records - slot_number * r.per_slot
    return r.per_slot if left > r.per_slot else left


cdef void _pack_records(Relay *r, char *slot, const char *source, Py_ssize_t slot_number) noexcept nogil:
    """Record mode, producer: the slot's records, each a 4-byte length and a copy of the record."""
    cdef Py_ssize_t j, n = _records_in(r, slot_number)
    cdef uint32_t length = <uint32_t>r.record
    for j in range(n):
        memcpy(slot, &length, 4)
        memcpy(slot + 4, source, r.record)
        slot += 4 + r.record


cdef int _unpack_records(Relay *r, const char *slot, char *out, Py_ssize_t slot_number) noexcept nogil:
    """Record mode, consumer: copy each record of the slot out (into ``out``, each over the one
    before). -1 if a length is not the record size or the slot is beyond the agreed records (a
    corrupt stream)."""
    cdef Py_ssize_t j, n = _records_in(r, slot_number)
    cdef uint32_t length
    if n <= 0:
        return -1
    for j in range(n):
        memcpy(&length, slot, 4)
        if length != <uint32_t>r.record:
            return -1
        memcpy(out, slot + 4, r.record)
        slot += 4 + r.record
    return <int>n


cdef int _set_records(Relay *r, Py_ssize_t record, Py_ssize_t records) noexcept nogil:
    """Record mode set-up (``record`` > 0): ``records`` records of ``record`` bytes, packed into
    the relay's slots; ``r.count`` becomes the slots to move. -1 if one does not fit a slot."""
    if record <= 0:
        r.per_slot = 1
        r.records = r.count
        return 0
    if record + 4 > r.chunk:
        return -1
    r.record = record
    r.per_slot = r.chunk // (record + 4)
    r.records = records
    r.count = (records + r.per_slot - 1) // r.per_slot
    return 0


cdef void *_producer_main(void *arg) noexcept nogil:
    # The task thread: wait for a free slot, copy the record into it (stamped with its send
    # time), queue it, wake the I/O thread on the empty → non-empty transition.
    cdef Relay *r = <Relay *>arg
    cdef Py_ssize_t i, slot
    cdef bint was_empty
    cdef int64_t due = _now_ns(), t
    cdef int64_t interval = <int64_t>(1e9 / r.rate) if r.rate > 0 else 0
    cdef timespec ts
    cdef char *source = <char *>calloc(1, r.chunk)
    for i in range(r.count):
        if interval:
            due += interval
            ts.tv_sec = due // 1000000000
            ts.tv_nsec = due % 1000000000
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL)
        pthread_mutex_lock(&r.lock)
        while r.num_free == 0 and r.error == 0:
            pthread_cond_wait(&r.cond, &r.lock)
        if r.error:
            pthread_mutex_unlock(&r.lock)
            break
        r.num_free -= 1
        slot = r.free_list[r.num_free]
        pthread_mutex_unlock(&r.lock)
        if r.record:
            _pack_records(r, r.slots + slot * r.chunk, source, i)
        else:
            t = _now_ns()
            memcpy(source, &t, 8)
            memcpy(r.slots + slot * r.chunk, source, r.chunk)
        pthread_mutex_lock(&r.lock)
        r.ring[(r.head + r.queued) % r.window] = slot
        r.queued += 1
        was_empty = r.queued == 1
        pthread_mutex_unlock(&r.lock)
        if was_empty:
            _wake(r.efd)
    pthread_mutex_lock(&r.lock)
    r.producer_done = True
    pthread_mutex_unlock(&r.lock)
    _wake(r.efd)
    free(source)
    return NULL


cdef int _read_credits(Relay *r) noexcept nogil:
    # Credit mode, sender's I/O thread: add every whole 4-byte credit message readable now.
    # -1 (with r.error set) on a failed read or an end of stream before the sending is done.
    cdef char buf[4096]
    cdef ssize_t rc, i
    cdef uint32_t value
    while True:
        rc = recv(r.sock, buf, sizeof(buf), MSG_DONTWAIT)
        if rc < 0:
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                return 0
            r.error = errno
            return -1
        if rc == 0:
            if r.moved >= r.count:
                return 0           # the receiver has everything and closed its side
            r.error = ECONNRESET
            return -1
        for i in range(rc):
            r.credit_buf[r.credit_got] = buf[i]
            r.credit_got += 1
            if r.credit_got == 4:
                memcpy(&value, r.credit_buf, 4)
                r.credit += value
                r.credit_messages += 1
                r.credit_got = 0


cdef void _sender_io(Relay *r) noexcept nogil:
    # The I/O thread: sleep in epoll until woken, then gather-write every queued slot (from where
    # the last partial write stopped), give written slots back, wait for EPOLLOUT when full.
    cdef epoll_event ev
    cdef iovec iov[MAX_IOV]
    cdef Py_ssize_t k, n, slot, offset = 0, left
    cdef ssize_t sent
    cdef bint want_out = False, done, freed_from_empty
    ev.data.fd = r.sock
    ev.events = EPOLLIN if r.credit_mode else 0      # credit messages
    epoll_ctl(r.epfd, EPOLL_CTL_ADD, r.sock, &ev)
    while True:
        if _wait(r) < 0:
            break
        if r.credit_mode and _read_credits(r) < 0:
            break
        while True:
            pthread_mutex_lock(&r.lock)
            n = r.queued if r.queued < MAX_IOV else MAX_IOV
            if r.credit_mode and n > r.credit:
                n = r.credit
            for k in range(n):
                slot = r.ring[(r.head + k) % r.window]
                iov[k].iov_base = r.slots + slot * r.chunk
                iov[k].iov_len = r.chunk
            done = r.producer_done and r.queued == 0
            pthread_mutex_unlock(&r.lock)
            if n == 0:
                break
            iov[0].iov_base = <char *>iov[0].iov_base + offset
            iov[0].iov_len -= offset
            sent = writev(r.sock, iov, <int>n)
            if sent < 0:
                if errno == EAGAIN:
                    break
                if errno == EINTR:
                    continue
                r.error = errno
                break
            left = sent + offset
            k = 0
            pthread_mutex_lock(&r.lock)
            while k < n and left >= r.chunk:
                left -= r.chunk
                r.free_list[r.num_free] = r.ring[r.head]
                r.num_free += 1
                r.head = (r.head + 1) % r.window
                r.queued -= 1
                r.moved += 1
                k += 1
                if r.credit_mode:
                    r.credit -= 1
            freed_from_empty = k > 0 and r.num_free == k
            pthread_mutex_unlock(&r.lock)
            offset = left
            if freed_from_empty:
                pthread_mutex_lock(&r.lock)
                pthread_cond_signal(&r.cond)
                pthread_mutex_unlock(&r.lock)
        if r.error:
            break
        pthread_mutex_lock(&r.lock)
        done = r.producer_done and r.queued == 0
        n = r.queued
        pthread_mutex_unlock(&r.lock)
        if done:
            break
        if r.credit_mode and r.credit == 0:
            n = 0                  # nothing sendable: wait for credit (EPOLLIN), not the socket
        if (n > 0) != want_out:    # something left unsent: wait for the socket, not the producer
            want_out = n > 0
            ev.events = (EPOLLOUT if want_out else 0) | (EPOLLIN if r.credit_mode else 0)
            epoll_ctl(r.epfd, EPOLL_CTL_MOD, r.sock, &ev)
    if r.error:
        pthread_mutex_lock(&r.lock)
        pthread_cond_signal(&r.cond)
        pthread_mutex_unlock(&r.lock)


cdef _check_record(Py_ssize_t chunk, Py_ssize_t record, double rate, bint stamps):
    if record < 0 or (record and record + 4 > chunk):
        raise ValueError(f"record must be 0 (a record per slot) or fit a slot with its 4-byte "
                         f"length (record + 4 <= chunk = {chunk}), got {record}")
    if record and (rate > 0 or stamps):
        raise ValueError("record mode moves records as fast as it can: no rate, no stamps")


def relay_send(int sock, Py_ssize_t count, Py_ssize_t chunk, Py_ssize_t window, double rate=0.0,
               Py_ssize_t credits=0, Py_ssize_t record=0):
    """Send ``count`` records of ``chunk`` bytes through a producer thread and an I/O thread (the
    calling thread, GIL released) on the connected socket ``sock``; each record starts with its
    send time (``CLOCK_MONOTONIC`` ns). ``rate`` > 0 paces the producer. ``credits`` > 0: credit
    mode, starting with that many (the receiver's window; it must run ``relay_receive`` with
    ``credits=True``). ``record`` > 0: record mode (see the module docstring; the receiver
    passes the same ``record``): ``count`` records of ``record`` bytes, packed into ``chunk``-byte
    slots. Returns records sent."""
    cdef Relay r
    cdef pthread_t producer
    cdef int rc
    if chunk < 8 or window < 1 or count < 0 or credits < 0:
        raise ValueError("chunk must be >= 8, window >= 1, count >= 0, credits >= 0")
    _check_record(chunk, record, rate, False)
    if _relay_init(&r, sock, chunk, window, count, rate) != 0:
        _relay_destroy(&r)
        raise MemoryError()
    _set_records(&r, record, count)
    r.credit_mode = credits > 0
    r.credit = credits
    with nogil:
        rc = pthread_create(&producer, NULL, _producer_main, &r)
        if rc == 0:
            _sender_io(&r)
            pthread_join(producer, NULL)
    error, moved = r.error, min(r.moved * r.per_slot, r.records)
    _relay_destroy(&r)
    if rc != 0:
        raise OSError(rc, "pthread_create failed")
    if error:
        raise OSError(error, "relay_send failed")
    return moved


# -- receiving side ----------------------------------------------------------------------------

cdef void *_receiver_io_main(void *arg) noexcept nogil:
    # The I/O thread: take a free slot, recv into it until it holds a whole record, queue it
    # (signalling the consumer on the empty → non-empty transition); with no free slot, sleep
    # until the consumer frees one (eventfd).
    cdef Relay *r = <Relay *>arg
    cdef epoll_event ev
    cdef Py_ssize_t slot = -1, got = 0, n, k
    cdef ssize_t rc
    cdef bint signal, armed = True
    ev.events = EPOLLIN
    ev.data.fd = r.sock
    epoll_ctl(r.epfd, EPOLL_CTL_ADD, r.sock, &ev)
    while True:
        if slot < 0:
            pthread_mutex_lock(&r.lock)
            if r.num_free:
                r.num_free -= 1
                slot = r.free_list[r.num_free]
                r.io_waits_for_slot = False
            else:
                r.io_waits_for_slot = True
            pthread_mutex_unlock(&r.lock)
        if (slot >= 0) != armed:
            # Readable data with no slot to put it in would wake epoll forever: listen to the
            # socket only while holding a slot (the consumer's eventfd wakes us for one).
            armed = slot >= 0
            ev.events = EPOLLIN if armed else 0
            epoll_ctl(r.epfd, EPOLL_CTL_MOD, r.sock, &ev)
        if slot >= 0:
            rc = recv(r.sock, r.slots + slot * r.chunk + got, r.chunk - got, 0)
            if rc > 0:
                got += rc
                if got == r.chunk:
                    pthread_mutex_lock(&r.lock)
                    r.ring[(r.head + r.queued) % r.window] = slot
                    r.queued += 1
                    r.moved += 1
                    signal = r.queued == 1
                    if signal:
                        pthread_cond_signal(&r.cond)
                    pthread_mutex_unlock(&r.lock)
                    slot = -1
                    got = 0
                continue
            if rc == 0:
                break
            if errno == EINTR:
                continue
            if errno != EAGAIN:
                r.error = errno
                break
        if _wait(r) < 0:
            break
    pthread_mutex_lock(&r.lock)
    r.eof = True
    pthread_cond_signal(&r.cond)
    pthread_mutex_unlock(&r.lock)
    return NULL


cdef int _announce(Relay *r) noexcept nogil:
    # Credit mode, consumer thread: write the unannounced credit as one 4-byte message (a full
    # socket buffer, which 4 bytes against a window of records never meet, is retried).
    cdef uint32_t value = <uint32_t>r.unannounced
    cdef ssize_t sent
    cdef int done = 0
    while done < 4:
        sent = send(r.sock, (<char *>&value) + done, 4 - done, MSG_DONTWAIT | MSG_NOSIGNAL)
        if sent < 0:
            if errno == EINTR or errno == EAGAIN:
                continue
            r.error = errno
            return -1
        done += <int>sent
    r.unannounced = 0
    r.credit_messages += 1
    return 0


def relay_receive(int sock, Py_ssize_t count, Py_ssize_t chunk, Py_ssize_t window, bint stamps=False,
                  bint credits=False, Py_ssize_t record=0):
    """Receive records of ``chunk`` bytes from ``sock`` until end of stream through an I/O thread
    and a consumer (the calling thread, GIL released) that copies each record out of its slot.
    Returns ``(records, seconds from the first record to the last, delays)`` where ``delays`` is
    a float64 array of one-way delays in µs (from each record's stamp) when ``stamps``.
    ``credits``: credit mode (the sender runs ``relay_send`` with ``credits=window``): each slot
    the consumer frees goes back to the sender as credit. ``record`` > 0: record mode (the
    sender's ``record`` and ``count``): the consumer copies each ``record``-byte record out of its
    slot, and ``records`` counts them (a corrupt length raises ``ValueError``)."""
    cdef Relay r
    cdef pthread_t io
    cdef int rc
    cdef int unpacked
    cdef bint corrupt = False
    cdef Py_ssize_t slot, received = 0, slots = 0
    cdef int64_t t0 = 0, t1 = 0, stamp
    cdef bint wake, emptied
    cdef double[::1] delays
    cdef char *out
    if chunk < 8 or window < 1 or count < 0:
        raise ValueError("chunk must be >= 8, window >= 1, count >= 0")
    _check_record(chunk, record, 0.0, stamps)
    delay_array = np.zeros(count if stamps else 0, dtype=np.float64)
    delays = delay_array
    out = <char *>calloc(1, chunk)
    if out == NULL:
        raise MemoryError()
    if _relay_init(&r, sock, chunk, window, count, 0.0) != 0:
        _relay_destroy(&r)
        free(out)
        raise MemoryError()
    _set_records(&r, record, count)
    r.credit_mode = credits
    with nogil:
        rc = pthread_create(&io, NULL, _receiver_io_main, &r)
        while rc == 0:
            pthread_mutex_lock(&r.lock)
            while r.queued == 0 and not r.eof:
                pthread_cond_wait(&r.cond, &r.lock)
            if r.queued == 0:
                pthread_mutex_unlock(&r.lock)
                break
            slot = r.ring[r.head]
            r.head = (r.head + 1) % r.window
            r.queued -= 1
            emptied = r.queued == 0
            pthread_mutex_unlock(&r.lock)
            if r.credit_mode and emptied and r.unannounced:
                # the take that empties the queue writes the credit freed before it
                if _announce(&r) < 0:
                    break
            if r.record:
                # the consumer's copies, a record at a time
                unpacked = _unpack_records(&r, r.slots + slot * r.chunk, out, slots)
                if unpacked < 0:
                    corrupt = True
                    unpacked = 0
            else:
                memcpy(out, r.slots + slot * r.chunk, r.chunk)       # the consumer's copy
                unpacked = 1
            t1 = _now_ns()
            if received == 0:
                t0 = t1
            if stamps and received < count:
                memcpy(&stamp, out, 8)
                delays[received] = (t1 - stamp) / 1e3
            received += unpacked
            slots += 1
            pthread_mutex_lock(&r.lock)
            r.free_list[r.num_free] = slot
            r.num_free += 1
            wake = r.io_waits_for_slot
            r.io_waits_for_slot = False
            emptied = r.queued == 0
            pthread_mutex_unlock(&r.lock)
            if wake:
                _wake(r.efd)
            if r.credit_mode:
                # a freed slot is one credit: written now when nothing is queued, else by the
                # take that empties the queue
                r.unannounced += 1
                if emptied and _announce(&r) < 0:
                    break
        if rc == 0:
            pthread_join(io, NULL)
    error = r.error
    _relay_destroy(&r)
    free(out)
    if rc != 0:
        raise OSError(rc, "pthread_create failed")
    if error:
        raise OSError(error, "relay_receive failed")
    if corrupt:
        raise ValueError(f"record mode: the stream did not hold {count} records of {record} "
                         f"bytes each (a corrupt stream)")
    return received, (t1 - t0) / 1e9, delay_array[:min(received, count)] if stamps else delay_array
