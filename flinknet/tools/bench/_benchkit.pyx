"""Baselines measured in C for ``flinknet bench``: memcpy and raw builder loops.

These give each benchmark its physical limit in the same run (the memcpy speed of this machine
right now) and separate the cost of the Python call from the cost of the work.
"""

cimport cython
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from time import perf_counter_ns

from flinknet._core.builder cimport BufferBuilder


cdef extern from *:
    """
    /* Keep the compiler from eliding copies whose result is never read. */
    static inline void fn_clobber(void *p) { __asm__ __volatile__("" : : "g"(p) : "memory"); }
    """
    void fn_clobber(void *p) nogil
    unsigned int __builtin_bswap32(unsigned int x) nogil


def memcpy_ns_per_chunk(Py_ssize_t chunk, Py_ssize_t region=32768, Py_ssize_t iterations=1000000):
    """Nanoseconds per ``memcpy`` of ``chunk`` bytes, filling a ``region``-byte target cyclically."""
    cdef char *src = <char *>malloc(chunk if chunk > 0 else 1)
    cdef char *dst = <char *>malloc(region if region > chunk else chunk)
    cdef Py_ssize_t i, pos = 0
    cdef long long t0, t1
    if src == NULL or dst == NULL:
        free(src)
        free(dst)
        raise MemoryError()
    memset(src, 7, chunk)
    memset(dst, 0, region if region > chunk else chunk)
    t0 = perf_counter_ns()
    with nogil:
        for i in range(iterations):
            if pos + chunk > region:
                pos = 0
            memcpy(dst + pos, src, <size_t>chunk)
            fn_clobber(dst)
            pos += chunk
    t1 = perf_counter_ns()
    free(src)
    free(dst)
    return (t1 - t0) / <double>iterations


def builder_append_ns_per_chunk(BufferBuilder builder not None, bytes chunk, Py_ssize_t iterations):
    """Nanoseconds per append+commit of ``chunk`` into ``builder`` from C (no Python call per
    chunk); the builder is rewound when full. Shows the kernel cost without interpreter overhead."""
    cdef const char *src = chunk
    cdef Py_ssize_t n = len(chunk), i
    cdef long long t0, t1
    if builder._consumer_created:
        raise ValueError("needs a builder without consumer (it is rewound)")
    t0 = perf_counter_ns()
    for i in range(iterations):
        if builder._max_capacity - builder._cached < n:
            builder._cached = 0
        builder.append_raw(src, n)
        builder.commit_raw()
    t1 = perf_counter_ns()
    builder._cached = 0
    builder.commit_raw()
    return (t1 - t0) / <double>iterations


def c_framing_ns_per_record(Py_ssize_t payload, Py_ssize_t segment=32768, Py_ssize_t records=1000000):
    """Nanoseconds per record to frame ``[len BE][payload]`` records into ``segment``-byte buffers
    in a plain C loop (no buffer management, no Python): the floor for record framing."""
    cdef char *src = <char *>malloc(payload if payload > 0 else 1)
    cdef char *dst = <char *>malloc(segment)
    cdef Py_ssize_t i, pos = 0, framed = payload + 4
    cdef long long t0, t1
    cdef unsigned int be
    if src == NULL or dst == NULL:
        free(src)
        free(dst)
        raise MemoryError()
    memset(src, 7, payload)
    t0 = perf_counter_ns()
    with nogil:
        for i in range(records):
            if pos + framed > segment:
                fn_clobber(dst)
                pos = 0
            be = __builtin_bswap32(<unsigned int>payload)
            memcpy(dst + pos, &be, 4)
            memcpy(dst + pos + 4, src, <size_t>payload)
            pos += framed
        fn_clobber(dst)
    t1 = perf_counter_ns()
    free(src)
    free(dst)
    return (t1 - t0) / <double>records


def c_deframing_ns_per_record(Py_ssize_t payload, Py_ssize_t segment=32768, Py_ssize_t records=1000000):
    """Nanoseconds per record to walk framed records in a buffer and copy each payload out, in C."""
    cdef Py_ssize_t framed = payload + 4
    cdef Py_ssize_t per = segment // framed if segment >= framed else 1
    cdef char *buf = <char *>malloc(per * framed)
    cdef char *out = <char *>malloc(payload if payload > 0 else 1)
    cdef Py_ssize_t i, j, done = 0
    cdef unsigned int be
    cdef unsigned int n
    cdef long long t0, t1
    if buf == NULL or out == NULL:
        free(buf)
        free(out)
        raise MemoryError()
    be = __builtin_bswap32(<unsigned int>payload)
    for j in range(per):
        memcpy(buf + j * framed, &be, 4)
        memset(buf + j * framed + 4, 7, payload)
    t0 = perf_counter_ns()
    with nogil:
        while done < records:
            j = 0
            while j < per * framed and done < records:
                memcpy(&n, buf + j, 4)
                n = __builtin_bswap32(n)
                memcpy(out, buf + j + 4, n)
                fn_clobber(out)
                j += 4 + n
                done += 1
    t1 = perf_counter_ns()
    free(buf)
    free(out)
    return (t1 - t0) / <double>records
