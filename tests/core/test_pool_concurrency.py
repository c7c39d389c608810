"""NetworkBufferPool and LocalBufferPool used from several threads at once.

Ports Flink's ``testConcurrentRequestRecycle``, ``testBlockingRequestFromMultiLocalBufferPool``,
``testRequestBuffersOnRecycle`` and ``testReserveSegmentsAndCancel``, and checks that blocked
producers wake when consumers recycle and that availability futures complete across threads.
The GIL switch interval is shortened so that threads interleave often. Every thread is joined with
a deadline and must have finished; nothing asserts on timing.
"""

from __future__ import annotations

import queue
import sys
import threading
import time

import pytest

from flinknet import BufferRequestTimeoutError, CancelTaskError
from flinknet._core.buffer import is_debug_build
from flinknet._core.engine import ReceiveEngine
from flinknet.core import UNBOUNDED
from tests.helpers import Worker


@pytest.fixture(autouse=True)
def frequent_thread_switches():
    old = sys.getswitchinterval()
    sys.setswitchinterval(5e-5)
    yield
    sys.setswitchinterval(old)


def start_all(fns_and_args) -> list[Worker]:
    workers = [Worker(fn, *args) for fn, *args in fns_and_args]
    for w in workers:
        w.start()
    return workers


# A liveness guard, not a speed limit: generous, so that a slow (debug, shared) machine never
# trips it, while a real deadlock still fails the test instead of hanging CI.
def finish_all(workers, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))
    assert not any(w.is_alive() for w in workers), "a thread did not finish (deadlock?)"
    errors = [w.error for w in workers if w.error is not None]
    if errors:
        raise errors[0]


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


# --- one local pool, many threads ----------------------------------------------------------------

def _loop_request_buffer(pool, n, _channel):
    for _ in range(n):
        buf = pool.request_buffer()
        assert buf is not None
        buf.recycle()


def _loop_builder(pool, n, channel):
    payload = channel.to_bytes(4, "big") * 4
    for _ in range(n):
        builder = pool.request_buffer_builder(channel)
        assert builder is not None
        consumer = builder.create_buffer_consumer()
        builder.append_and_commit(payload)
        builder.finish()
        builder.close()
        data = consumer.build()
        assert data.to_bytes() == payload
        data.recycle()
        consumer.close()


def _loop_segment(pool, n, _channel):
    for _ in range(n):
        seg = pool.request_memory_segment()
        assert seg is not None
        seg.put_int32_be(0, 7)
        pool.recycle(seg)


@pytest.mark.parametrize("loop", [_loop_request_buffer, _loop_builder, _loop_segment])
def test_concurrent_request_recycle_one_pool(make_pool, loop):
    """Flink's testConcurrentRequestRecycle: the pool is as large as the number of threads, each
    holding at most one buffer, so no non-blocking request may ever come back empty."""
    threads = 8
    nbp = make_pool(64, 128)
    lbp = nbp.create_buffer_pool(1, UNBOUNDED, num_subpartitions=threads,
                                 max_buffers_per_channel=2, max_overdraft_buffers=0)
    lbp.set_num_buffers(threads)
    # The -O0 debug build checks every invariant on every call: fewer rounds keep CI's second
    # pass short, and still interleave the threads thousands of times.
    rounds = 10_000 if is_debug_build() else 50_000
    workers = start_all((loop, lbp, rounds, ch) for ch in range(threads))
    finish_all(workers)
    assert lbp.used_buffers == 0
    assert [lbp.subpartition_buffer_count(ch) for ch in range(threads)] == [0] * threads
    assert lbp.requested_segments == lbp.available_segments <= threads
    assert lbp.is_available
    lbp.lazy_destroy()
    assert nbp.is_whole


def test_concurrent_blocking_requests_on_a_small_pool(make_pool):
    """More threads than buffers: blocked requesters must be woken by other threads' recycles."""
    threads = 8
    nbp = make_pool(16, 64)
    lbp = nbp.create_buffer_pool(3, 3, num_subpartitions=4, max_buffers_per_channel=1,
                                 max_overdraft_buffers=0)
    served = [0] * threads

    def producer(i):
        for _ in range(3000):
            builder = lbp.request_buffer_builder_blocking(i % 4, timeout=10)
            builder.append_and_commit(b"x" * 8)
            served[i] += 1
            time.sleep(0)  # hold the buffer across a thread switch: the others must wait
            builder.close()

    finish_all(start_all((producer, i) for i in range(threads)))
    assert served == [3000] * threads
    assert lbp.used_buffers == 0
    assert [lbp.subpartition_buffer_count(ch) for ch in range(4)] == [0] * 4
    assert lbp.is_available
    lbp.lazy_destroy()
    assert nbp.is_whole


def test_concurrent_request_recycle_several_pools_while_redistributing(make_pool):
    """Several local pools of one global pool served concurrently while other threads create and
    destroy pools and take and return exclusive segments (each triggers a redistribution)."""
    nbp = make_pool(32, 64)
    pools = [nbp.create_buffer_pool(2, UNBOUNDED, max_overdraft_buffers=0) for _ in range(4)]
    stop = threading.Event()
    counts = {"requests": 0, "unpooled": 0, "pools": 0}

    def user(pool):
        for _ in range(3000):
            builder = pool.request_buffer_builder_blocking(timeout=10)
            builder.append(b"abc")
            time.sleep(0)
            builder.close()
            counts["requests"] += 1

    def exclusive_channel():
        while not stop.is_set():
            segments = nbp.request_unpooled_memory_segments(3, timeout=10)
            counts["unpooled"] += 1
            nbp.recycle_unpooled_memory_segments(segments)

    def pool_churn():
        while not stop.is_set():
            transient = nbp.create_buffer_pool(1, 6)
            buf = transient.request_buffer()
            if buf is not None:
                buf.recycle()
            transient.lazy_destroy()
            counts["pools"] += 1

    users = start_all((user, p) for p in pools for _ in range(2))
    background = start_all([(exclusive_channel,), (pool_churn,)])
    try:
        finish_all(users)
    finally:
        stop.set()
        finish_all(background)
    assert counts["requests"] == 8 * 3000
    assert counts["unpooled"] > 0 and counts["pools"] > 0
    assert nbp.registered_buffer_pools() == pools
    assert nbp.num_total_required_buffers == 8
    for p in pools:
        assert p.used_buffers == 0
        assert p.num_buffers == 8
    for p in pools:
        p.lazy_destroy()
    assert nbp.is_whole


# --- blocking requests across pools --------------------------------------------------------------

def test_blocking_request_from_several_local_pools(make_pool):
    """Flink's testBlockingRequestFromMultiLocalBufferPool: requests blocked on two local pools
    are fulfilled by segments recycled to the global pool."""
    pool_min, pool_max, n_pools, n_outside = 5, 10, 2, 10
    total = n_pools * pool_max
    nbp = make_pool(total, 128)
    pools = [nbp.create_buffer_pool(pool_min, pool_max, max_overdraft_buffers=0)
             for _ in range(n_pools)]
    assert all(p.get_available_future().done() for p in pools)
    segments = [nbp.request_pooled_memory_segment() for _ in range(n_outside - 1)]
    exclusive = nbp.request_unpooled_memory_segments(nbp.available_segments - 1)
    assert nbp.get_available_future().done()
    assert all(p.get_available_future().done() for p in pools)

    requested = queue.Queue()

    def request_all(pool):
        for _ in range(pool_max):
            requested.put(pool.request_buffer_builder_blocking(timeout=20))

    workers = start_all((request_all, p) for p in pools)
    try:
        wait_until(lambda: requested.qsize() + len(segments) + len(exclusive) == total)
        assert all(w.error is None for w in workers)
        global_future = nbp.get_available_future()
        assert not global_future.done()
        local_futures = [p.get_available_future() for p in pools]
        assert not any(f.done() for f in local_futures)
        for s in segments:
            nbp.recycle_pooled_memory_segment(s)
        nbp.recycle_unpooled_memory_segments(exclusive)
        assert global_future.done()
        assert all(f.done() for f in local_futures)
        finish_all(workers)
        assert nbp.available_segments == 0
        assert not nbp.get_available_future().done()
        for p in pools:
            assert not p.get_available_future().done()
            assert p.used_buffers == pool_max
    finally:
        finish_all(workers)
        while not requested.empty():
            requested.get().close()
    for p in pools:
        assert p.used_buffers == 0


@pytest.mark.parametrize("overdraft", [0, 5])
def test_request_buffers_on_recycle(make_pool, overdraft):
    """Flink's testRequestBufferOnRecycle{With,Without}Overdraft: a second pool created while the
    first holds nearly everything gets its segments as the first recycles and is destroyed."""
    nbp = make_pool(1024, 32)
    pool1 = nbp.create_buffer_pool(512, 2048, max_overdraft_buffers=overdraft)
    segments1 = [pool1.request_memory_segment_blocking(timeout=10) for _ in range(1023)]
    pool2 = nbp.create_buffer_pool(512, 512, max_overdraft_buffers=overdraft)
    segments2 = []

    def request_512():
        for _ in range(512):
            segments2.append(pool2.request_memory_segment_blocking(timeout=20))

    worker = Worker(request_512)
    worker.start()
    for s in segments1:
        pool1.recycle(s)
    pool1.lazy_destroy()
    finish_all([worker])
    assert len(segments2) == 512 and len({id(s) for s in segments2}) == 512
    for s in segments2:
        pool2.recycle(s)
    pool2.lazy_destroy()
    assert nbp.is_whole


# --- producers and consumers ---------------------------------------------------------------------

@pytest.mark.parametrize("reclaimer", [False, True], ids=["future", "engine-reclaimer"])
def test_blocked_producer_wakes_when_a_consumer_recycles(make_pool, reclaimer):
    """A producer backpressured in ``request_buffer_builder_blocking`` continues as soon as the
    consumer thread recycles what it read; every record arrives, in order. With the native
    engine as the pool's reclaimer the producer waits in the engine, and the consumer's recycle
    pokes it there."""
    nbp = make_pool(8, 64)
    lbp = nbp.create_buffer_pool(2, 2, num_subpartitions=1, max_buffers_per_channel=2,
                                 max_overdraft_buffers=0)
    engine = ReceiveEngine() if reclaimer else None
    if engine is not None:
        lbp.set_reclaimer(engine)
    records = 20000 if reclaimer else 50000
    handoff: queue.Queue = queue.Queue()
    received = []

    def producer():
        for i in range(records):
            builder = lbp.request_buffer_builder_blocking(0, timeout=20)
            consumer = builder.create_buffer_consumer()
            builder.append_and_commit(i.to_bytes(8, "big"))
            builder.finish()
            builder.close()
            handoff.put(consumer)
        handoff.put(None)

    def consumer_thread():
        while (consumer := handoff.get(timeout=20)) is not None:
            data = consumer.build()
            received.append(int.from_bytes(data.to_bytes(), "big"))
            data.recycle()
            consumer.close()

    finish_all(start_all([(producer,), (consumer_thread,)]))
    assert received == list(range(records))
    if engine is not None:
        assert engine.reclaim_waiters == 0
        # Every wait was ended by the consumer's recycle (a poke), not by the pool's 50 ms
        # safety round: a wake-up lost between the request and the wait (the GIL released
        # before the waiter counted itself) ended hundreds of the 20,000 waits so. A few may
        # time out on a machine that stalls the consumer thread that long.
        assert engine.reclaim_pokes > 0
        assert engine.reclaim_timeouts < 20, engine.reclaim_timeouts
        engine.close()
    assert lbp.used_buffers == 0 and lbp.subpartition_buffer_count(0) == 0
    lbp.lazy_destroy()
    assert nbp.is_whole


def test_local_availability_future_from_another_thread(make_pool):
    nbp = make_pool(4, 64)
    lbp = nbp.create_buffer_pool(1, 1, max_overdraft_buffers=0)
    buf = lbp.request_buffer()
    future = lbp.get_available_future()
    assert not future.done()

    def wait_then_request():
        future.result(timeout=10)
        got = lbp.request_buffer()
        assert got is not None
        got.recycle()

    waiter = Worker(wait_then_request)
    waiter.start()
    recycler = Worker(buf.recycle)
    recycler.start()
    finish_all([recycler, waiter])
    assert lbp.is_available


def test_global_availability_future_wakes_waiting_local_pools_in_threads(make_pool):
    nbp = make_pool(2, 64)
    outside = [nbp.request_pooled_memory_segment() for _ in range(2)]
    pools = [nbp.create_buffer_pool(1, 1, max_overdraft_buffers=0) for _ in range(2)]
    assert not any(p.is_available for p in pools)

    def take_one(pool):
        builder = pool.request_buffer_builder_blocking(timeout=10)
        builder.close()

    workers = start_all((take_one, p) for p in pools)
    returners = start_all((nbp.recycle_pooled_memory_segment, s) for s in outside)
    finish_all(returners + workers)
    assert all(p.requested_segments == 1 and p.is_available for p in pools)


def test_destroy_wakes_every_blocked_requester(make_pool):
    nbp = make_pool(2, 64)
    lbp = nbp.create_buffer_pool(1, 1, num_subpartitions=2, max_overdraft_buffers=0)
    buf = lbp.request_buffer()
    blocked = start_all([(lbp.request_buffer_builder_blocking,),
                         (lbp.request_buffer_builder_blocking, 0),
                         (lbp.request_buffer_builder_blocking, 1, 30.0),
                         (lbp.request_memory_segment_blocking,)])
    time.sleep(0.05)  # let them block; each must fail whether or not it got there
    lbp.lazy_destroy()
    for w in blocked:
        w.join(10)
    assert not any(w.is_alive() for w in blocked)
    assert all(isinstance(w.error, CancelTaskError) for w in blocked)
    buf.recycle()
    assert nbp.is_whole


def test_reserve_segments_and_cancel(make_pool):
    """Flink's testReserveSegmentsAndCancel: destroying pools while another thread is blocked in
    reserve_segments does not deadlock; the reservation ends once segments come back."""
    nbp = make_pool(4, 64)
    pool1 = nbp.create_buffer_pool(2, 4)
    segments = [pool1.request_memory_segment_blocking(timeout=10) for _ in range(4)]
    pool2 = nbp.create_buffer_pool(2, 4)
    reserver = Worker(pool2.reserve_segments, 2, 20.0)
    reserver.start()
    time.sleep(0.05)

    def cancel():
        pool1.lazy_destroy()
        pool2.lazy_destroy()

    canceller = Worker(cancel)
    canceller.start()
    finish_all([canceller])
    assert reserver.is_alive() or reserver.error is not None  # nothing to reserve yet
    for s in segments:
        pool1.recycle(s)
    reserver.join(10)
    assert not reserver.is_alive()
    assert isinstance(reserver.error, CancelTaskError)
    assert nbp.is_whole


def test_blocked_producer_survives_a_cancelled_availability_future(make_pool):
    """Another party giving up on the pool's availability future (for instance an asyncio
    ``wait_for`` on ``asyncio.wrap_future(pool.get_available_future())`` timing out, which cancels
    the shared future) must not make a blocked producer fail: it still gets the next buffer."""
    nbp = make_pool(2, 64)
    lbp = nbp.create_buffer_pool(1, 1, max_overdraft_buffers=0)
    buf = lbp.request_buffer()
    producer = Worker(lbp.request_buffer_builder_blocking, -1, 10.0)
    producer.start()
    time.sleep(0.02)
    lbp.get_available_future().cancel()
    buf.recycle()
    producer.join(10)
    assert not producer.is_alive()
    try:
        assert producer.error is None, f"blocked producer failed: {producer.error!r}"
    finally:
        if producer.result is not None:
            producer.result.close()


def test_timeouts_under_contention_leave_nothing_behind(make_pool):
    """Blocking requests that time out while others keep the pool busy change nothing."""
    nbp = make_pool(4, 64)
    lbp = nbp.create_buffer_pool(2, 2, max_overdraft_buffers=0)
    timeouts = [0]
    stop = threading.Event()

    def hog():
        while not stop.is_set():
            builders = [lbp.request_buffer_builder_blocking(timeout=10) for _ in range(2)]
            time.sleep(0.001)
            for b in builders:
                b.close()

    def impatient():
        for _ in range(200):
            try:
                builder = lbp.request_buffer_builder_blocking(timeout=0.0005)
            except BufferRequestTimeoutError:
                timeouts[0] += 1
            else:
                builder.close()

    hogs = start_all([(hog,)])
    try:
        finish_all(start_all([(impatient,), (impatient,)]))
    finally:
        stop.set()
        finish_all(hogs)
    assert lbp.used_buffers == 0
    assert lbp.requested_segments == 2
    lbp.lazy_destroy()
    assert nbp.is_whole
