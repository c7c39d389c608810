"""A pool whose written buffers wait in the native engine (``LocalBufferPool.set_reclaimer``).

The engine's I/O thread writes a partition's buffers to remote readers and puts them on its done
list; a writer whose pool ran dry recycles them on its own thread (``ReceiveEngine.reclaim``)
instead of waiting for the reaper thread to recycle them and complete the pool's availability
future, one wake-up less per refill. These tests check what the wait must keep: a recycle on any
other path (a local consumer, the reaper), a destroyed pool and a timeout still end it, nothing is
recycled twice or lost, and the environment wires the engine to its partitions' pools. (A
backpressured producer with a consumer thread, with and without a reclaimer, is in
``test_pool_concurrency.py``; many producers waiting in one engine while it writes, in
``test_engine_stress.py``.)
"""

from __future__ import annotations

import time

import pytest

from flinknet import BufferRequestTimeoutError, CancelTaskError
from flinknet._core.engine import ReceiveEngine
from flinknet._core.pool import NetworkBufferPool, SegmentReclaimer
from flinknet.consumer import RecordReader
from flinknet.environment import NetworkEnvironment
from flinknet.writer import RecordWriter
from tests.helpers import Worker

SMALL = {"taskmanager.memory.segment-size": "4kb", "taskmanager.memory.network.max": "2mb"}


def wait_until(predicate, timeout: float = 10.0) -> None:
    # a liveness guard, not a speed limit
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


@pytest.fixture
def engine():
    e = ReceiveEngine()       # not started: no I/O thread, an empty done list
    yield e
    e.close()


def _dry_pool(engine, n=2):
    nbp = NetworkBufferPool(8, 4096)
    pool = nbp.create_buffer_pool(n, n, max_overdraft_buffers=0)
    pool.set_reclaimer(engine)
    held = [pool.request_memory_segment() for _ in range(n)]
    assert pool.request_memory_segment() is None
    return nbp, pool, held


def test_a_recycle_on_another_thread_pokes_the_waiting_request(engine):
    """The request waits in the engine (its done list is empty); a recycle elsewhere makes the
    pool available, which pokes the engine: the request gets that segment."""
    nbp, pool, held = _dry_pool(engine)
    w = Worker(pool.request_memory_segment_blocking)
    w.start()
    wait_until(lambda: engine.reclaim_waiters == 1)
    assert engine.reclaim_pokes == 0
    pool.recycle(held.pop())
    w.finish()
    assert w.error is None and w.result is not None
    assert engine.reclaim_pokes == 1 and engine.reclaim_waiters == 0
    assert engine.reclaim_timeouts == 0
    assert engine.buffers_reclaimed == 0      # nothing was written: nothing reclaimed
    pool.recycle(w.result)
    pool.recycle(held.pop())
    pool.lazy_destroy()
    assert nbp.is_whole


def test_destroying_the_pool_ends_the_wait_with_cancel(engine):
    nbp, pool, held = _dry_pool(engine)
    waiting = [Worker(pool.request_memory_segment_blocking),
               Worker(pool.request_buffer_builder_blocking, -1, 30.0)]
    for w in waiting:
        w.start()
    wait_until(lambda: engine.reclaim_waiters == 2)
    pool.lazy_destroy()
    for w in waiting:
        w.finish()
        assert isinstance(w.error, CancelTaskError)
    assert engine.reclaim_waiters == 0
    for seg in held:
        pool.recycle(seg)
    assert nbp.is_whole


def test_a_timeout_still_raises(engine):
    nbp, pool, held = _dry_pool(engine)
    with pytest.raises(BufferRequestTimeoutError):
        pool.request_memory_segment_blocking(0.05)
    with pytest.raises(BufferRequestTimeoutError):
        pool.request_buffer_builder_blocking(timeout=0.0)
    assert engine.reclaim_waiters == 0
    for seg in held:
        pool.recycle(seg)
    pool.lazy_destroy()
    assert nbp.is_whole


def test_only_a_native_reclaimer_is_accepted():
    nbp = NetworkBufferPool(2, 4096)
    pool = nbp.create_buffer_pool(1, 1)

    class PythonReclaimer(SegmentReclaimer):
        pass

    for bad in (SegmentReclaimer(), PythonReclaimer()):
        with pytest.raises(TypeError, match="does not implement a reclaimer"):
            pool.set_reclaimer(bad)
    with pytest.raises(TypeError):
        pool.set_reclaimer(object())   # type: ignore[arg-type]
    assert pool.reclaimer is None
    e = ReceiveEngine()
    pool.set_reclaimer(e)
    assert pool.reclaimer is e
    pool.set_reclaimer(None)
    assert pool.reclaimer is None
    e.close()
    pool.lazy_destroy()
    assert nbp.is_whole


@pytest.mark.parametrize("native_io", [True, False])
def test_the_environment_makes_its_engine_the_reclaimer_of_its_partitions(native_io):
    with NetworkEnvironment({**SMALL, "flinknet.network.native-io": native_io}) as env:
        p = env.create_result_partition(1)
        if native_io:
            assert env.receive_engine is not None
            assert p.buffer_pool.reclaimer is env.receive_engine
        else:
            assert env.receive_engine is None and p.buffer_pool.reclaimer is None
        p.release()
        p.close()


def test_a_remote_writer_recycles_written_buffers_itself():
    """Between two environments (the engine's I/O thread writing), a writer whose small pool runs
    dry takes the written buffers off the engine's done list on its own thread; every record
    arrives in order and both sides' pools end whole."""
    with NetworkEnvironment(SMALL) as prod, NetworkEnvironment(SMALL) as cons:
        engine = prod.receive_engine
        assert engine is not None
        p = prod.create_result_partition(1)
        n = 20000
        gate = cons.create_input_gate([(p.partition_id, 0, prod.address)])
        got: list[bytes] = []

        def produce():
            with RecordWriter(p, timeout=5) as w:
                for i in range(n):
                    w.emit(i.to_bytes(4, "big") * 250, 0)
            p.finish()
            p.close()

        def consume():
            with RecordReader(gate) as r:
                got.extend(r)

        workers = [Worker(produce), Worker(consume)]
        for w in workers:
            w.start()
        for w in workers:
            assert w.finish(60).error is None, w.error
        gate.close()
        assert got == [i.to_bytes(4, "big") * 250 for i in range(n)]
        assert engine.buffers_reclaimed > 0
        assert engine.reclaim_waiters == 0
        wait_until(lambda: prod.network_buffer_pool.is_whole and cons.network_buffer_pool.is_whole)
