"""Request/recycle loops and pool churn must not grow memory.

Each workload runs a warm-up first (free lists, interned objects and allocator arenas settle),
then 10**5 more iterations; the growth in between must stay below a small bound, measured twice:
with ``tracemalloc`` (every Python-allocator allocation, which includes the core's objects) and
with the process RSS (``psutil``), which also sees native memory such as pool arenas. A leak of
one small object per iteration is ~10**5 × 50+ bytes, far above either bound.
"""

from __future__ import annotations

import gc
import tracemalloc

import psutil
import pytest

from flinknet.core import UNBOUNDED, LocalBufferPool, NetworkBufferPool

ITERATIONS = 10**5
WARMUP = 2 * 10**4
TRACED_BOUND = 64 * 1024
RSS_BOUND = 2 * 1024 * 1024


# --- workloads: each takes (nbp, n) and runs n request/recycle round trips -----------------------

def _buffer_round_trips(nbp, n):
    lbp = nbp.registered_buffer_pools()[0]
    for _ in range(n):
        lbp.request_buffer().recycle()


def _builder_round_trips(nbp, n):
    lbp = nbp.registered_buffer_pools()[0]
    payload = b"0123456789abcdef"
    for i in range(n):
        builder = lbp.request_buffer_builder(i & 3)
        consumer = builder.create_buffer_consumer()
        builder.append_and_commit(payload)
        builder.finish()
        builder.close()
        data = consumer.build()
        data.recycle()
        consumer.close()


def _segment_round_trips(nbp, n):
    lbp = nbp.registered_buffer_pools()[0]
    for _ in range(n):
        lbp.recycle(lbp.request_memory_segment())


def _global_round_trips(nbp, n):
    for _ in range(n):
        nbp.recycle_pooled_memory_segment(nbp.request_pooled_memory_segment())


def _unpooled_round_trips(nbp, n):
    # each request and recycle redistributes over the registered pool
    for _ in range(n // 10):
        nbp.recycle_unpooled_memory_segments(nbp.request_unpooled_memory_segments(2))


def _availability_round_trips(nbp, n):
    # a one-buffer pool: every request makes it unavailable, every recycle completes a future
    lbp = nbp.registered_buffer_pools()[1]
    for _ in range(n):
        segment = lbp.request_memory_segment()
        lbp.get_available_future()
        lbp.recycle(segment)


def _blocking_round_trips(nbp, n):
    lbp = nbp.registered_buffer_pools()[0]
    for i in range(n):
        lbp.request_buffer_builder_blocking(i & 3, timeout=1.0).close()


class _KeepingListener:
    def __init__(self):
        self.buffer = None

    def notify_buffer_available(self, buffer):
        self.buffer = buffer
        return True

    def notify_buffer_destroyed(self):
        pass


def _listener_round_trips(nbp, n):
    lbp = nbp.registered_buffer_pools()[1]
    for _ in range(n // 10):
        held = lbp.request_buffer()
        listener = _KeepingListener()
        lbp.add_buffer_listener(listener)
        held.recycle()
        listener.buffer.recycle()


WORKLOADS = [
    _buffer_round_trips,
    _builder_round_trips,
    _segment_round_trips,
    _global_round_trips,
    _unpooled_round_trips,
    _availability_round_trips,
    _blocking_round_trips,
    _listener_round_trips,
]


def _pools(make_pool):
    nbp = make_pool(64, 256)
    nbp.create_buffer_pool(8, UNBOUNDED, num_subpartitions=4, max_overdraft_buffers=0)
    nbp.create_buffer_pool(1, 1, max_overdraft_buffers=0)
    return nbp


def _traced_growth(run) -> tuple[int, str]:
    """Net growth of traced memory across ``run()``, outside tracemalloc's own bookkeeping."""
    filters = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        tracemalloc.Filter(False, "<unknown>"),
    ]
    gc.collect()
    before = tracemalloc.take_snapshot().filter_traces(filters)
    run()
    gc.collect()
    after = tracemalloc.take_snapshot().filter_traces(filters)
    stats = after.compare_to(before, "lineno")
    growth = sum(s.size_diff for s in stats)
    top = "\n".join(str(s) for s in stats[:5])
    return growth, top


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def _check_whole(nbp):
    for lbp in nbp.registered_buffer_pools():
        assert lbp.used_buffers == 0
    assert nbp.num_total_required_buffers == 9


@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w.__name__.strip("_"))
def test_round_trips_do_not_grow_traced_memory(make_pool, workload):
    nbp = _pools(make_pool)
    workload(nbp, WARMUP)
    tracemalloc.start()
    try:
        workload(nbp, WARMUP)  # warm up again under tracing
        growth, top = _traced_growth(lambda: workload(nbp, ITERATIONS))
    finally:
        tracemalloc.stop()
    _check_whole(nbp)
    assert growth < TRACED_BOUND, (
        f"{workload.__name__}: traced memory grew by {growth} bytes over {ITERATIONS} "
        f"iterations ({growth / ITERATIONS:.1f} B/iteration); largest growth:\n{top}")


@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w.__name__.strip("_"))
def test_round_trips_do_not_grow_rss(make_pool, workload):
    nbp = _pools(make_pool)
    workload(nbp, WARMUP)
    workload(nbp, WARMUP)
    before = _rss()
    workload(nbp, ITERATIONS)
    growth = _rss() - before
    _check_whole(nbp)
    assert growth < RSS_BOUND, (
        f"{workload.__name__}: RSS grew by {growth / 1024:.0f} KiB over {ITERATIONS} iterations")


def test_buffer_objects_are_freed_after_recycle(make_pool):
    """A recycled, unreferenced NetworkBuffer is deallocated: it no longer holds its segment."""
    import sys

    nbp = make_pool(4, 64)
    lbp = nbp.create_buffer_pool(1, 1, max_overdraft_buffers=0)
    segment = lbp.request_memory_segment()
    lbp.recycle(segment)
    baseline = sys.getrefcount(segment)
    for _ in range(10):
        buffer = lbp.request_buffer()
        assert buffer.memory_segment is segment  # the only segment of the pool
        buffer.recycle()
        del buffer
    gc.collect()
    assert sys.getrefcount(segment) == baseline, (
        f"{sys.getrefcount(segment) - baseline} dropped NetworkBuffer(s) still reference "
        f"the segment")


# --- pool churn ----------------------------------------------------------------------------------

def _local_pool_churn(nbp, n, subpartitions, use):
    for i in range(n):
        lbp = nbp.create_buffer_pool(1, 4 + (i & 3), num_subpartitions=subpartitions,
                                     max_buffers_per_channel=2)
        if use:
            builder = lbp.request_buffer_builder(0 if subpartitions else -1)
            segment = lbp.request_memory_segment()
            buffer = lbp.request_buffer()
            builder.close()
            lbp.recycle(segment)
            buffer.recycle()
        lbp.lazy_destroy()


def _live_local_pools() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is LocalBufferPool)


@pytest.mark.parametrize("subpartitions, use", [(0, False), (8, False), (0, True), (4, True)],
                         ids=["idle", "subpartitions", "used", "used-subpartitions"])
def test_creating_and_destroying_local_pools_does_not_grow_memory(make_pool, subpartitions, use):
    nbp = make_pool(64, 256)
    keep = nbp.create_buffer_pool(2, UNBOUNDED)  # resized by every creation and destruction
    _local_pool_churn(nbp, 200, subpartitions, use)
    pools_before = _live_local_pools()
    tracemalloc.start()
    try:
        _local_pool_churn(nbp, 200, subpartitions, use)
        growth, top = _traced_growth(lambda: _local_pool_churn(nbp, 1000, subpartitions, use))
    finally:
        tracemalloc.stop()
    assert _live_local_pools() <= pools_before, "destroyed LocalBufferPools were not freed"
    assert nbp.registered_buffer_pools() == [keep]
    assert nbp.num_total_required_buffers == 2
    assert keep.num_buffers == 64
    assert growth < TRACED_BOUND, (
        f"traced memory grew by {growth} bytes over 1000 pools; largest growth:\n{top}")
    before = _rss()
    _local_pool_churn(nbp, 1000, subpartitions, use)
    assert _rss() - before < RSS_BOUND


@pytest.mark.parametrize("use", [False, True], ids=["idle", "used"])
def test_destroyed_global_pools_release_their_memory(use):
    """A destroyed, unreferenced NetworkBufferPool gives its arena back.

    Built directly, not with ``make_pool``: that fixture keeps every pool alive until teardown,
    which is exactly what this test must not do. Each pool is checked whole before destroy.
    """
    arena = 1024 * 1024

    def churn(n):
        for _ in range(n):
            nbp = NetworkBufferPool(256, arena // 256)
            if use:
                lbp = nbp.create_buffer_pool(1, UNBOUNDED, num_subpartitions=2)
                lbp.request_buffer().recycle()
                lbp.request_buffer_builder(1).close()
                lbp.lazy_destroy()
            assert nbp.is_whole and nbp.num_total_required_buffers == 0
            nbp.destroy()
            del nbp
            gc.collect()

    churn(5)
    pools_before = sum(1 for o in gc.get_objects() if type(o) is NetworkBufferPool)
    before = _rss()
    churn(40)
    growth = _rss() - before
    # (pools of earlier tests may be collected meanwhile: the count must not grow)
    assert sum(1 for o in gc.get_objects() if type(o) is NetworkBufferPool) <= pools_before, (
        "destroyed NetworkBufferPools are still alive")
    assert growth < 8 * arena, f"RSS grew by {growth / arena:.1f} arenas over 40 pools"
