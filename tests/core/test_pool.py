"""NetworkBufferPool and LocalBufferPool against Flink's semantics (reference §2).

Ports the behaviours of Flink's ``NetworkBufferPoolTest``, ``LocalBufferPoolTest``,
``LocalBufferPoolDestroyTest`` and ``BufferPoolFactoryTest``, and checks the redistribution of
excess buffers (§2.2) against a pure-Python reference model of Flink's algorithm, with hand-written
cases and random scenarios (hypothesis). Every global pool comes from the ``make_pool`` fixture,
which asserts at teardown that every segment is back and nothing is still counted as required.
"""

from __future__ import annotations

import asyncio
import math
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flinknet import (
    BufferRequestTimeoutError,
    CancelTaskError,
    FlinknetError,
    IllegalStateError,
    InsufficientNetworkBuffersError,
)
from flinknet.core import UNBOUNDED, BufferBuilder, LocalBufferPool, MemorySegment, NetworkBuffer
from tests.helpers import Worker

# --- helpers -------------------------------------------------------------------------------------

DESTROYED = "^" + re.escape("Buffer pool has already been destroyed.") + "$"


def insufficient(required: int, available: int, total: int, segment_size: int) -> str:
    """The full message of Flink's "Insufficient number of network buffers" error, as a regex."""
    return "^" + re.escape(
        f"Insufficient number of network buffers: required {required}, but only {available} "
        f"available. The total number of network buffers is currently set to {total} of "
        f"{segment_size} bytes each. You can increase this number by setting the configuration "
        f"keys 'taskmanager.memory.network.fraction', 'taskmanager.memory.network.min', and "
        f"'taskmanager.memory.network.max'.") + "$"


def reference_sizes(total: int, required: int, pools: list[tuple[int, int]]) -> list[int]:
    """Flink's ``NetworkBufferPool.redistributeBuffers`` (§2.2) as a pure function.

    ``pools`` are the registered pools' ``(min, max)`` in creation order (flinknet's deterministic
    order); ``required`` is Σ minimums + unpooled segments handed out. Returns every pool's size.
    """
    sizes = [mn for mn, _ in pools]
    resizable = [i for i, (mn, mx) in enumerate(pools) if mn < mx]
    if not resizable:
        return sizes
    excess = total - required
    if excess == 0:
        return sizes  # every resizable pool back to its minimum
    caps = {i: min(excess, pools[i][1] - pools[i][0]) for i in resizable}
    total_capacity = sum(caps.values())
    if total_capacity == 0:
        return sizes
    to_distribute = min(excess, total_capacity)
    parts_used = 0
    distributed = 0
    for i in resizable:
        if caps[i] == 0:
            continue
        parts_used += caps[i]
        share = to_distribute * parts_used // total_capacity - distributed
        distributed += share
        sizes[i] = pools[i][0] + share
    assert distributed == to_distribute
    return sizes


def start(fn, *args) -> Worker:
    w = Worker(fn, *args)
    w.start()
    return w


def wait_until(predicate, timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds (the deadline only turns a hang into a failure)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


def recycle_all(buffers) -> None:
    for b in buffers:
        b.recycle()


def request_n(pool: LocalBufferPool, n: int) -> list[NetworkBuffer]:
    buffers = [pool.request_buffer() for _ in range(n)]
    assert all(b is not None for b in buffers)
    return buffers


def assert_availability_consistent(pool: LocalBufferPool) -> None:
    """§2.3: available ⇔ a free segment held locally AND no subpartition at its cap."""
    capped = any(pool.subpartition_buffer_count(ch) >= pool.max_buffers_per_channel
                 for ch in range(pool.num_subpartitions))
    expected = pool.available_segments > 0 and not capped
    assert pool.is_available == expected
    assert pool.get_available_future().done() == expected


class RecordingListener:
    """A BufferListener: records what it was given, then keeps, declines, recycles or raises."""

    def __init__(self, keep: bool = True, recycle_inside: bool = False,
                 error: BaseException | None = None, on_notify=None):
        self.keep = keep
        self.recycle_inside = recycle_inside
        self.error = error
        self.on_notify = on_notify
        self.buffers: list[NetworkBuffer] = []
        self.destroyed = 0

    def notify_buffer_available(self, buffer) -> bool:
        self.buffers.append(buffer)
        if self.on_notify is not None:
            self.on_notify(buffer)
        if self.error is not None:
            raise self.error
        if self.recycle_inside:
            buffer.recycle()
        return self.keep

    def notify_buffer_destroyed(self) -> None:
        self.destroyed += 1


# =============================================================================================
# NetworkBufferPool
# =============================================================================================

# --- construction --------------------------------------------------------------------------------

@pytest.mark.parametrize("num_segments, segment_size", [
    (0, 128), (-1, 128), (16, 0), (16, -128), (2**31, 1), (1, 2**31),
])
def test_constructor_rejects_bad_sizes(make_pool, num_segments, segment_size):
    with pytest.raises(ValueError):
        make_pool(num_segments, segment_size)


@pytest.mark.parametrize("timeout", [-1.0, -0.001, math.nan])
def test_constructor_rejects_bad_request_timeout(make_pool, timeout):
    with pytest.raises(ValueError, match="request_timeout"):
        make_pool(4, 64, request_timeout=timeout)


@pytest.mark.parametrize("kwargs, expected", [
    ({}, 30.0), ({"request_timeout": None}, 30.0), ({"request_timeout": 0.25}, 0.25),
    ({"request_timeout": 0}, 0.0),
])
def test_request_timeout_default_and_explicit(make_pool, kwargs, expected):
    assert make_pool(4, 64, **kwargs).request_timeout == expected


def test_local_buffer_pool_cannot_be_constructed_directly(make_pool):
    nbp = make_pool(4)
    with pytest.raises(TypeError):
        LocalBufferPool(nbp, 1, 1, 0, 10, 5)
    assert nbp.number_of_registered_buffer_pools == 0


# --- figures -------------------------------------------------------------------------------------

def test_figures_of_a_fresh_pool(make_pool):
    nbp = make_pool(10, 128)
    assert nbp.total_segments == 10
    assert nbp.available_segments == 10
    assert nbp.used_segments == 0
    assert nbp.segment_size == 128
    assert nbp.total_memory == 1280
    assert nbp.available_memory == 1280
    assert nbp.used_memory == 0
    assert nbp.estimated_requested_segments == 0
    assert nbp.estimated_requested_segments_usage == 0
    assert nbp.number_of_registered_buffer_pools == 0
    assert nbp.num_total_required_buffers == 0
    assert nbp.registered_buffer_pools() == []
    assert nbp.is_available
    assert nbp.is_whole
    assert not nbp.is_destroyed


@pytest.mark.parametrize("taken", [1, 3, 10])
def test_figures_after_pooled_requests(make_pool, taken):
    nbp = make_pool(10, 128)
    segments = [nbp.request_pooled_memory_segment() for _ in range(taken)]
    assert nbp.total_segments == 10
    assert nbp.available_segments == 10 - taken
    assert nbp.used_segments == taken
    assert nbp.total_memory == 1280
    assert nbp.available_memory == (10 - taken) * 128
    assert nbp.used_memory == taken * 128
    assert nbp.total_memory == nbp.available_memory + nbp.used_memory
    assert nbp.num_total_required_buffers == 0  # pooled segments are not "required"
    assert not nbp.is_whole
    for s in segments:
        nbp.recycle_pooled_memory_segment(s)
    assert nbp.available_segments == 10 and nbp.used_segments == 0


def test_estimated_requested_segments_and_usage(make_pool):
    """Flink's testSegmentsUsage: Σ (bounded ? max : 2 × min), usage = 100 × that / total."""
    nbp = make_pool(50, 128)
    pool1 = nbp.create_buffer_pool(10, 20)
    assert (nbp.estimated_requested_segments, nbp.estimated_requested_segments_usage) == (20, 40)
    nbp.create_buffer_pool(5, UNBOUNDED)
    assert (nbp.estimated_requested_segments, nbp.estimated_requested_segments_usage) == (30, 60)
    nbp.create_buffer_pool(10, 30)
    assert (nbp.estimated_requested_segments, nbp.estimated_requested_segments_usage) == (60, 120)
    pool2 = nbp.create_buffer_pool(10, 20)
    assert (nbp.estimated_requested_segments, nbp.estimated_requested_segments_usage) == (80, 160)
    pool2.lazy_destroy()
    pool1.lazy_destroy()
    assert (nbp.estimated_requested_segments, nbp.estimated_requested_segments_usage) == (40, 80)


def test_estimated_usage_rounds_down(make_pool):
    nbp = make_pool(3, 64)
    nbp.create_buffer_pool(1, 1)
    assert nbp.estimated_requested_segments == 1
    assert nbp.estimated_requested_segments_usage == 33


def test_registered_pools_and_required_buffers(make_pool):
    nbp = make_pool(20, 64)
    a = nbp.create_buffer_pool(2, 2)
    b = nbp.create_buffer_pool(3, UNBOUNDED)
    c = nbp.create_buffer_pool(1, 5)
    assert nbp.number_of_registered_buffer_pools == 3
    assert nbp.registered_buffer_pools() == [a, b, c]
    assert nbp.num_total_required_buffers == 6
    segments = nbp.request_unpooled_memory_segments(4)
    assert nbp.num_total_required_buffers == 10
    b.lazy_destroy()
    assert nbp.registered_buffer_pools() == [a, c]
    assert nbp.number_of_registered_buffer_pools == 2
    assert nbp.num_total_required_buffers == 7
    nbp.recycle_unpooled_memory_segments(segments)
    assert nbp.num_total_required_buffers == 3
    nbp.destroy_buffer_pool(a)  # unregisters only; idempotent
    nbp.destroy_buffer_pool(a)
    assert nbp.registered_buffer_pools() == [c]
    assert nbp.num_total_required_buffers == 1
    a.lazy_destroy()  # gives its free segment back; must not subtract its minimum again
    assert nbp.num_total_required_buffers == 1


# --- pooled segments -----------------------------------------------------------------------------

def test_pooled_request_until_empty_then_none(make_pool):
    nbp = make_pool(8, 64)
    segments = [nbp.request_pooled_memory_segment() for _ in range(8)]
    assert all(isinstance(s, MemorySegment) and s.size == 64 for s in segments)
    assert len({id(s) for s in segments}) == 8
    assert nbp.request_pooled_memory_segment() is None
    for s in segments:
        nbp.recycle_pooled_memory_segment(s)
    assert nbp.is_whole


def test_pooled_segment_is_usable_memory(make_pool):
    nbp = make_pool(2, 64)
    seg = nbp.request_pooled_memory_segment()
    seg.put_int64_be(56, -2)
    assert seg.get_int64_be(56) == -2
    nbp.recycle_pooled_memory_segment(seg)


def test_double_recycle_of_a_segment_raises(make_pool):
    nbp = make_pool(4, 64)
    seg = nbp.request_pooled_memory_segment()
    nbp.recycle_pooled_memory_segment(seg)
    with pytest.raises(IllegalStateError):
        nbp.recycle_pooled_memory_segment(seg)
    assert nbp.available_segments == 4
    # the pool still hands every segment out exactly once
    segments = [nbp.request_pooled_memory_segment() for _ in range(4)]
    assert len({id(s) for s in segments}) == 4
    assert nbp.request_pooled_memory_segment() is None
    for s in segments:
        nbp.recycle_pooled_memory_segment(s)


@pytest.mark.parametrize("foreign", ["unpooled", "other_pool"])
def test_recycling_a_foreign_segment_raises_value_error(make_pool, foreign):
    nbp = make_pool(4, 64)
    other = make_pool(4, 64)
    seg = MemorySegment(64) if foreign == "unpooled" else other.request_pooled_memory_segment()
    with pytest.raises(ValueError):
        nbp.recycle_pooled_memory_segment(seg)
    with pytest.raises(ValueError):
        nbp.recycle_unpooled_memory_segments([seg])
    assert nbp.available_segments == 4
    assert nbp.num_total_required_buffers == 0
    if foreign == "other_pool":
        other.recycle_pooled_memory_segment(seg)


def test_recycle_pooled_none_raises_type_error(make_pool):
    nbp = make_pool(2, 64)
    with pytest.raises(TypeError):
        nbp.recycle_pooled_memory_segment(None)


@pytest.mark.parametrize("make_view", [
    lambda seg: memoryview(seg),
    lambda seg: seg.wrap(8, 16),
])
def test_recycling_an_exported_segment_raises_buffer_error_and_changes_nothing(make_pool,
                                                                              make_view):
    nbp = make_pool(1, 64)
    seg = nbp.request_pooled_memory_segment()
    assert not nbp.is_available
    view = make_view(seg)
    with pytest.raises(BufferError):
        nbp.recycle_pooled_memory_segment(seg)
    assert nbp.available_segments == 0
    assert nbp.used_segments == 1
    assert not nbp.is_available
    assert nbp.request_pooled_memory_segment() is None
    view.release()
    nbp.recycle_pooled_memory_segment(seg)
    assert nbp.is_whole and nbp.is_available


# --- unpooled (exclusive) segments ---------------------------------------------------------------

def test_unpooled_request_and_recycle(make_pool):
    """Flink's testRequestMemorySegmentsLessThanTotalBuffers."""
    nbp = make_pool(10, 128)
    segments = nbp.request_unpooled_memory_segments(5)
    assert len(segments) == 5 and len({id(s) for s in segments}) == 5
    assert nbp.num_total_required_buffers == 5
    assert nbp.available_segments == 5
    nbp.recycle_unpooled_memory_segments(segments)
    assert nbp.num_total_required_buffers == 0
    assert nbp.available_segments == 10


def test_unpooled_request_of_zero_segments(make_pool):
    nbp = make_pool(4, 64)
    assert nbp.request_unpooled_memory_segments(0) == []
    assert nbp.num_total_required_buffers == 0
    nbp.recycle_unpooled_memory_segments([])
    assert nbp.num_total_required_buffers == 0


def test_unpooled_request_rejects_negative_count(make_pool):
    nbp = make_pool(4, 64)
    with pytest.raises(ValueError):
        nbp.request_unpooled_memory_segments(-1)
    assert nbp.num_total_required_buffers == 0


def test_unpooled_request_more_than_total_fails_with_flinks_message(make_pool):
    """Flink's testRequestMemorySegmentsMoreThanTotalBuffers, with the exact message."""
    nbp = make_pool(10, 128)
    with pytest.raises(InsufficientNetworkBuffersError, match=insufficient(11, 10, 10, 128)):
        nbp.request_unpooled_memory_segments(11)
    assert nbp.available_segments == 10
    assert nbp.num_total_required_buffers == 0


def test_unpooled_request_counts_against_pool_minimums(make_pool):
    nbp = make_pool(10, 256)
    nbp.create_buffer_pool(4, 4)
    with pytest.raises(InsufficientNetworkBuffersError, match=insufficient(7, 6, 10, 256)) as info:
        nbp.request_unpooled_memory_segments(7)
    assert isinstance(info.value, OSError) and isinstance(info.value, FlinknetError)
    assert nbp.num_total_required_buffers == 4
    segments = nbp.request_unpooled_memory_segments(6)
    assert nbp.num_total_required_buffers == 10
    with pytest.raises(InsufficientNetworkBuffersError, match=insufficient(1, 0, 10, 256)):
        nbp.request_unpooled_memory_segments(1)
    nbp.recycle_unpooled_memory_segments(segments)


def test_create_buffer_pool_fails_with_insufficient_buffers(make_pool):
    nbp = make_pool(10, 128)
    segments = nbp.request_unpooled_memory_segments(8)
    with pytest.raises(InsufficientNetworkBuffersError, match=insufficient(3, 2, 10, 128)):
        nbp.create_buffer_pool(3, 3)
    assert nbp.number_of_registered_buffer_pools == 0
    assert nbp.num_total_required_buffers == 8
    nbp.create_buffer_pool(2, UNBOUNDED)
    nbp.recycle_unpooled_memory_segments(segments)


def test_require_more_than_possible_single_pool(make_pool):
    """BufferPoolFactoryTest.testRequireMoreThanPossible1."""
    nbp = make_pool(64, 128)
    with pytest.raises(InsufficientNetworkBuffersError, match=insufficient(65, 64, 64, 128)):
        nbp.create_buffer_pool(65, UNBOUNDED)


def test_require_more_than_possible_two_pools(make_pool):
    """BufferPoolFactoryTest.testRequireMoreThanPossible2."""
    nbp = make_pool(64, 128)
    nbp.create_buffer_pool(33, 64)
    with pytest.raises(InsufficientNetworkBuffersError, match=insufficient(33, 31, 64, 128)):
        nbp.create_buffer_pool(33, 64)
    assert nbp.number_of_registered_buffer_pools == 1
    assert nbp.num_total_required_buffers == 33


def test_recycle_unpooled_validates_all_segments_first(make_pool):
    nbp = make_pool(6, 64)
    segments = nbp.request_unpooled_memory_segments(3)
    with pytest.raises(IllegalStateError):
        nbp.recycle_unpooled_memory_segments([segments[0], segments[1], segments[0]])
    with pytest.raises(TypeError):
        nbp.recycle_unpooled_memory_segments([segments[0], b"not a segment"])
    with pytest.raises(ValueError):
        nbp.recycle_unpooled_memory_segments([segments[0], MemorySegment(64)])
    view = memoryview(segments[2])
    with pytest.raises(BufferError):
        nbp.recycle_unpooled_memory_segments(segments)
    view.release()
    # nothing was taken back by the failed calls
    assert nbp.available_segments == 3
    assert nbp.num_total_required_buffers == 3
    nbp.recycle_unpooled_memory_segments(segments)
    assert nbp.num_total_required_buffers == 0
    with pytest.raises(IllegalStateError):
        nbp.recycle_unpooled_memory_segments(segments[:1])


def test_unpooled_request_shrinks_pools_and_takes_their_free_segments(make_pool):
    """Redistribution makes a pool give back its surplus free segments at once: no waiting."""
    nbp = make_pool(10, 64)
    lbp = nbp.create_buffer_pool(1, UNBOUNDED)
    recycle_all(request_n(lbp, 10))
    assert lbp.available_segments == 10 and nbp.available_segments == 0
    segments = nbp.request_unpooled_memory_segments(4, timeout=0)
    assert len(segments) == 4
    assert lbp.num_buffers == 6
    assert lbp.requested_segments == 6 and lbp.available_segments == 6
    nbp.recycle_unpooled_memory_segments(segments)
    assert lbp.num_buffers == 10


def test_unpooled_request_waits_for_a_local_pools_handed_out_buffers(make_pool):
    """Flink's testRequestMemorySegmentsWithBuffersTaken."""
    nbp = make_pool(10, 128)
    lbp = nbp.create_buffer_pool(5, 10, max_overdraft_buffers=0)
    buffers = request_n(lbp, 10)
    assert nbp.available_segments == 0
    seen_sizes = []

    def recycle_once_requested():
        # The request has registered itself: the pool was shrunk, and nothing is free globally,
        # so the request cannot finish before these buffers come back.
        wait_until(lambda: nbp.num_total_required_buffers == 10)
        seen_sizes.append(lbp.num_buffers)
        recycle_all(buffers)

    worker = start(recycle_once_requested)
    segments = nbp.request_unpooled_memory_segments(5, timeout=10)
    worker.finish()
    assert worker.error is None
    assert seen_sizes == [5]
    assert len(segments) == 5 and len({id(s) for s in segments}) == 5
    assert lbp.num_buffers == 5 and lbp.requested_segments == 5
    nbp.recycle_unpooled_memory_segments(segments)
    assert lbp.num_buffers == 10
    assert nbp.num_total_required_buffers == 5


@pytest.mark.parametrize("explicit_timeout", [False, True])
def test_unpooled_request_timeout_gives_everything_back(make_pool, explicit_timeout):
    """Flink's testRequestMemorySegmentsTimeout: a partial acquisition is returned on failure."""
    if explicit_timeout:
        nbp = make_pool(10, 128)  # default timeout is 30 s: the explicit one must be used
        kwargs = {"timeout": 0.05}
    else:
        nbp = make_pool(10, 128, request_timeout=0.05)
        kwargs = {}
    lbp = nbp.create_buffer_pool(2, 10, max_overdraft_buffers=0)
    buffers = request_n(lbp, 10)
    buffers.pop().recycle()  # one free segment in the local pool, none globally
    assert lbp.available_segments == 1 and nbp.available_segments == 0
    # The request shrinks the local pool to 7, which gives its free segment to the global pool:
    # one of the three segments is obtained, the other two never come.
    with pytest.raises(BufferRequestTimeoutError,
                       match="^Timeout triggered when requesting") as info:
        nbp.request_unpooled_memory_segments(3, **kwargs)
    assert isinstance(info.value, TimeoutError)
    assert nbp.num_total_required_buffers == 2
    assert lbp.num_buffers == 10
    # every segment is accounted for: held by the local pool or free in the global pool
    assert nbp.available_segments + lbp.requested_segments == 10
    recycle_all(buffers)
    assert lbp.requested_segments + nbp.available_segments == 10


def test_unpooled_request_timeout_zero_fails_at_once(make_pool):
    nbp = make_pool(4, 64)
    held = nbp.request_pooled_memory_segment()
    with pytest.raises(BufferRequestTimeoutError):
        nbp.request_unpooled_memory_segments(4, timeout=0)
    assert nbp.available_segments == 3
    assert nbp.num_total_required_buffers == 0
    nbp.recycle_pooled_memory_segment(held)


@pytest.mark.parametrize("timeout", [-1, math.nan])
def test_unpooled_request_rejects_bad_timeout(make_pool, timeout):
    nbp = make_pool(4, 64)
    with pytest.raises(ValueError):
        nbp.request_unpooled_memory_segments(1, timeout=timeout)
    assert nbp.num_total_required_buffers == 0


# --- request_pooled_memory_segments_blocking -----------------------------------------------------

def test_pooled_blocking_request_when_segments_are_free(make_pool):
    nbp = make_pool(8, 64)
    segments = nbp.request_pooled_memory_segments_blocking(5)
    assert len(segments) == 5 and len({id(s) for s in segments}) == 5
    assert nbp.available_segments == 3
    assert nbp.num_total_required_buffers == 0
    assert nbp.request_pooled_memory_segments_blocking(0) == []
    for s in segments:
        nbp.recycle_pooled_memory_segment(s)


@pytest.mark.parametrize("n", [-1, 9])
def test_pooled_blocking_request_rejects_bad_count(make_pool, n):
    nbp = make_pool(8, 64)
    with pytest.raises(ValueError):
        nbp.request_pooled_memory_segments_blocking(n)
    assert nbp.is_whole


@pytest.mark.parametrize("explicit_timeout", [False, True])
def test_pooled_blocking_request_times_out_and_gives_back(make_pool, explicit_timeout):
    nbp = make_pool(4, 64) if explicit_timeout else make_pool(4, 64, request_timeout=0.05)
    held = [nbp.request_pooled_memory_segment() for _ in range(2)]
    with pytest.raises(BufferRequestTimeoutError):
        if explicit_timeout:
            nbp.request_pooled_memory_segments_blocking(3, timeout=0.05)
        else:
            nbp.request_pooled_memory_segments_blocking(3)
    assert nbp.available_segments == 2
    assert nbp.is_available
    for s in held:
        nbp.recycle_pooled_memory_segment(s)


def test_pooled_blocking_request_waits_for_recycle(make_pool):
    nbp = make_pool(4, 64)
    held = [nbp.request_pooled_memory_segment() for _ in range(3)]

    def recycle_when_drained():
        wait_until(lambda: nbp.available_segments == 0)  # the requester took the free one
        for s in held:
            nbp.recycle_pooled_memory_segment(s)

    worker = start(recycle_when_drained)
    segments = nbp.request_pooled_memory_segments_blocking(3, timeout=10)
    worker.finish()
    assert worker.error is None
    assert len(segments) == 3
    assert nbp.available_segments == 1
    for s in segments:
        nbp.recycle_pooled_memory_segment(s)


# --- availability --------------------------------------------------------------------------------

def test_availability_after_single_segment_request_and_recycle(make_pool):
    """Flink's testIsAvailableOrNotAfterRequestAndRecycleSingleSegment."""
    nbp = make_pool(2, 128)
    assert nbp.get_available_future().done() and nbp.is_available
    seg1 = nbp.request_pooled_memory_segment()
    assert nbp.get_available_future().done() and nbp.is_available
    seg2 = nbp.request_pooled_memory_segment()
    assert not nbp.is_available
    future = nbp.get_available_future()
    assert not future.done()
    assert nbp.get_available_future() is future  # one future per unavailable period
    nbp.recycle_pooled_memory_segment(seg1)
    assert future.done() and future.result() is None
    assert nbp.is_available and nbp.get_available_future().done()
    nbp.recycle_pooled_memory_segment(seg2)
    assert nbp.is_available and nbp.get_available_future().done()


def test_availability_after_multi_segment_request_and_recycle(make_pool):
    """Flink's testIsAvailableOrNotAfterRequestAndRecycleMultiSegments."""
    nbp = make_pool(10, 128)
    segments1 = nbp.request_unpooled_memory_segments(5)
    assert nbp.get_available_future().done()
    segments2 = nbp.request_unpooled_memory_segments(5)
    assert not nbp.get_available_future().done()
    future = nbp.get_available_future()
    nbp.recycle_unpooled_memory_segments(segments1)
    assert future.done()
    segments3 = nbp.request_unpooled_memory_segments(5)
    assert len(segments3) == 5
    assert not nbp.get_available_future().done()
    nbp.recycle_unpooled_memory_segments(segments2)
    assert nbp.get_available_future().done()
    nbp.recycle_unpooled_memory_segments(segments3)
    assert nbp.get_available_future().done()


def test_availability_future_completes_when_recycled_from_another_thread(make_pool):
    nbp = make_pool(1, 64)
    seg = nbp.request_pooled_memory_segment()
    future = nbp.get_available_future()
    assert not future.done()
    worker = start(nbp.recycle_pooled_memory_segment, seg)
    assert future.result(timeout=10) is None
    worker.finish()
    assert worker.error is None
    assert nbp.is_available


@pytest.mark.parametrize("which", ["global", "local"])
def test_cancelled_availability_future_does_not_break_later_waiters(make_pool, which):
    """One waiter giving up (an asyncio wait_for on ``asyncio.wrap_future``, as the module
    docstring suggests, cancels the wrapped future) must not leave the pool handing out a dead
    future: a later ``get_available_future()`` still returns one that completes when the pool
    turns available."""
    nbp = make_pool(1, 64)
    if which == "global":
        pool = nbp
        seg = nbp.request_pooled_memory_segment()

        def give_back():
            nbp.recycle_pooled_memory_segment(seg)
    else:
        pool = nbp.create_buffer_pool(1, 1, max_overdraft_buffers=0)
        buf = pool.request_buffer()
        give_back = buf.recycle
    assert not pool.is_available

    async def impatient_waiter():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.wrap_future(pool.get_available_future()), 0.01)

    asyncio.run(impatient_waiter())
    later = pool.get_available_future()
    try:
        assert not later.cancelled(), "get_available_future() returned a cancelled future"
    finally:
        give_back()
    assert pool.is_available
    assert later.done() and not later.cancelled()


# --- destroy -------------------------------------------------------------------------------------

def test_destroy_frees_free_segments_and_later_recycles(make_pool):
    nbp = make_pool(4, 64)
    segments = [nbp.request_pooled_memory_segment() for _ in range(4)]
    for s in segments[:3]:
        nbp.recycle_pooled_memory_segment(s)
    nbp.destroy()
    assert nbp.is_destroyed
    assert all(s.is_freed for s in segments[:3])
    assert not segments[3].is_freed  # lent out: freed when it comes back
    assert nbp.available_segments == 0
    assert nbp.used_segments == 0
    assert nbp.available_memory == 0 and nbp.used_memory == 0
    assert not nbp.is_available
    assert not nbp.is_whole
    nbp.recycle_pooled_memory_segment(segments[3])
    assert segments[3].is_freed
    with pytest.raises(IllegalStateError):
        nbp.recycle_pooled_memory_segment(segments[3])
    nbp.destroy()  # idempotent
    assert nbp.is_destroyed


@pytest.mark.parametrize("min_buffers, max_buffers", [(2, 2), (2, 10), (2, UNBOUNDED)])
def test_create_buffer_pool_after_destroy_raises(make_pool, min_buffers, max_buffers):
    """Flink's testCreatePoolAfterDestroy."""
    nbp = make_pool(10, 128)
    assert nbp.number_of_registered_buffer_pools == 0
    nbp.destroy()
    with pytest.raises(IllegalStateError):
        nbp.create_buffer_pool(min_buffers, max_buffers)
    with pytest.raises(IllegalStateError):
        nbp.request_unpooled_memory_segments(1)
    assert nbp.number_of_registered_buffer_pools == 0


@pytest.mark.parametrize("request_kind", ["unpooled", "pooled"])
def test_destroy_wakes_a_blocked_requester_which_fails(make_pool, request_kind):
    """Flink's testRequestMemorySegmentsInterruptable."""
    nbp = make_pool(10, 128)
    held = nbp.request_pooled_memory_segment()
    if request_kind == "unpooled":
        worker = start(nbp.request_unpooled_memory_segments, 10, 30.0)
    else:
        worker = start(nbp.request_pooled_memory_segments_blocking, 10, 30.0)
    wait_until(lambda: nbp.available_segments == 0)  # took the 9 free ones, waits for the last
    nbp.destroy()
    # Woken by destroy(), not by the periodic re-check of the destroyed flag (every 2 s): the
    # deadline is a liveness bound well below one re-check round, not a speed measurement.
    worker.finish(timeout=1.5)
    assert isinstance(worker.error, IllegalStateError)
    assert "destroyed" in str(worker.error)
    assert nbp.num_total_required_buffers == 0
    nbp.recycle_pooled_memory_segment(held)
    assert held.is_freed


def test_destroy_with_local_pools_recycles_free_the_segments(make_pool):
    """Flink's testDestroyAll, then the global pool destroyed under lent-out buffers."""
    nbp = make_pool(10, 128)
    fixed = nbp.create_buffer_pool(2, 2, max_overdraft_buffers=0)
    bounded = nbp.create_buffer_pool(1, 1, max_overdraft_buffers=0)
    flexible = nbp.create_buffer_pool(5, UNBOUNDED, max_overdraft_buffers=0)
    pools = [fixed, bounded, flexible]
    buffers = []
    for _ in range(10):
        for p in pools:
            b = p.request_buffer()
            if b is not None:
                buffers.append(b)
                break
    assert len(buffers) == 10
    assert all(p.request_buffer() is None for p in pools)
    for p in pools:
        p.lazy_destroy()
    assert all(p.is_destroyed for p in pools)
    assert nbp.number_of_registered_buffer_pools == 0
    assert nbp.available_segments == 0  # not yet recycled
    recycle_all(buffers)
    assert nbp.is_whole
    for p in pools:
        with pytest.raises(CancelTaskError, match=DESTROYED):
            p.request_buffer()
    # the minimums were released: a pool needing every segment can be created
    big = nbp.create_buffer_pool(10, UNBOUNDED)
    buffer = big.request_buffer()
    segment = buffer.memory_segment
    nbp.destroy()
    buffer.recycle()  # into the local pool, which outlives the global one
    assert not segment.is_freed
    big.lazy_destroy()  # its free segments go back to the destroyed global pool: freed
    assert segment.is_freed


# =============================================================================================
# Redistribution (§2.2)
# =============================================================================================

def test_reference_model_sanity():
    assert reference_sizes(13, 3, [(1, UNBOUNDED)] * 3) == [4, 4, 5]
    assert reference_sizes(10, 10, [(5, 10), (5, 10)]) == [5, 5]
    assert reference_sizes(10, 6, [(5, 5), (1, 3)]) == [5, 3]


def test_three_pools_share_the_excess_exactly(make_pool):
    nbp = make_pool(13, 64)
    pools = [nbp.create_buffer_pool(1, UNBOUNDED) for _ in range(3)]
    sizes = [p.num_buffers for p in pools]
    # excess 10, caps 10 each: cumulative rounding 10·10//30=3, 10·20//30-3=3, 10-6=4
    assert sizes == [4, 4, 5]
    assert sum(sizes) - 3 == 10


@pytest.mark.parametrize("pools, total, unpooled", [
    ([(1, 10), (1, 10), (1, 10)], 10, 0),
    ([(1, UNBOUNDED), (2, 7), (3, 3), (1, 2)], 100, 0),
    ([(1, UNBOUNDED), (2, 7), (3, 3), (1, 2)], 12, 0),
    ([(4, 9), (1, UNBOUNDED), (2, 3)], 17, 3),
    ([(1, 5), (1, 5)], 3, 1),  # excess 0: everybody at the minimum
    ([(2, 2), (3, 3)], 10, 0),  # nobody resizable
    ([(1, 2)] * 7, 10, 0),
    ([(1, 1000), (1, 3), (1, 1000)], 1000, 10),
])
def test_redistribution_matches_model_hand_written(make_pool, pools, total, unpooled):
    nbp = make_pool(total, 64)
    created = [nbp.create_buffer_pool(mn, mx) for mn, mx in pools]
    segments = nbp.request_unpooled_memory_segments(unpooled) if unpooled else []
    required = sum(mn for mn, _ in pools) + unpooled
    assert [p.num_buffers for p in created] == reference_sizes(total, required, pools)
    nbp.recycle_unpooled_memory_segments(segments)
    assert [p.num_buffers for p in created] == reference_sizes(total, required - unpooled, pools)


def test_pool_with_min_equal_max_is_not_resized(make_pool):
    nbp = make_pool(20, 64)
    fixed = nbp.create_buffer_pool(5, 5)
    assert fixed.num_buffers == 5
    flexible = nbp.create_buffer_pool(1, UNBOUNDED)
    assert (fixed.num_buffers, flexible.num_buffers) == (5, 15)
    segments = nbp.request_unpooled_memory_segments(5)
    assert (fixed.num_buffers, flexible.num_buffers) == (5, 10)
    nbp.recycle_unpooled_memory_segments(segments)
    flexible.lazy_destroy()
    assert fixed.num_buffers == 5


def test_bounded_pools(make_pool):
    """BufferPoolFactoryTest.testBoundedPools."""
    nbp = make_pool(64, 128)
    assert nbp.create_buffer_pool(1, 1).num_buffers == 1
    assert nbp.create_buffer_pool(1, 2).num_buffers == 2


def test_single_unbounded_pool_gets_everything(make_pool):
    nbp = make_pool(64, 128)
    assert nbp.create_buffer_pool(1, UNBOUNDED).num_buffers == 64


def test_single_unbounded_pool_gets_all_except_fixed_ones(make_pool):
    nbp = make_pool(64, 128)
    fixed = nbp.create_buffer_pool(24, 24)
    flexible = nbp.create_buffer_pool(1, UNBOUNDED)
    assert fixed.num_buffers == 24
    assert flexible.num_buffers == 64 - 24


@pytest.mark.parametrize("min_buffers, max_buffers", [
    (1, UNBOUNDED), (32, UNBOUNDED), (1, 64),
])
def test_uniform_distribution(make_pool, min_buffers, max_buffers):
    """testUniformDistribution, ...AllBuffers, ...Bounded1, and testCreateDestroy."""
    nbp = make_pool(64, 128)
    first = nbp.create_buffer_pool(min_buffers, max_buffers)
    assert first.num_buffers == 64
    second = nbp.create_buffer_pool(min_buffers, max_buffers)
    assert (first.num_buffers, second.num_buffers) == (32, 32)
    first.lazy_destroy()
    assert second.num_buffers == 64


def test_uniform_distribution_bounded_below_total(make_pool):
    """BufferPoolFactoryTest.testUniformDistributionBounded2."""
    nbp = make_pool(64, 128)
    first = nbp.create_buffer_pool(1, 10)
    second = nbp.create_buffer_pool(1, 10)
    assert (first.num_buffers, second.num_buffers) == (10, 10)


def test_uniform_distribution_bounded_scarce(make_pool):
    """BufferPoolFactoryTest.testUniformDistributionBounded3 (flinknet's order is fixed)."""
    nbp = make_pool(3, 128)
    first = nbp.create_buffer_pool(1, 10)
    assert first.num_buffers == 3
    second = nbp.create_buffer_pool(1, 10)
    assert (first.num_buffers, second.num_buffers) == (1, 2)
    third = nbp.create_buffer_pool(1, 10)
    assert (first.num_buffers, second.num_buffers, third.num_buffers) == (1, 1, 1)
    assert nbp.available_segments == 0  # each pool grabbed its one segment


def test_uniform_distribution_with_unpooled_requests(make_pool):
    """BufferPoolFactoryTest.testUniformDistributionBounded4."""
    nbp = make_pool(10, 128)
    first = nbp.create_buffer_pool(1, 10)
    assert first.num_buffers == 10
    list1 = nbp.request_unpooled_memory_segments(2)
    assert first.num_buffers == 8
    second = nbp.create_buffer_pool(1, 10)
    assert (first.num_buffers, second.num_buffers) == (4, 4)
    list2 = nbp.request_unpooled_memory_segments(2)
    assert (first.num_buffers, second.num_buffers) == (3, 3)
    list3 = nbp.request_unpooled_memory_segments(2)
    assert (first.num_buffers, second.num_buffers) == (2, 2)
    assert nbp.available_segments == 2
    nbp.recycle_unpooled_memory_segments(list1)
    assert nbp.available_segments == 4
    assert (first.num_buffers, second.num_buffers) == (3, 3)
    nbp.recycle_unpooled_memory_segments(list2)
    assert nbp.available_segments == 6
    assert (first.num_buffers, second.num_buffers) == (4, 4)
    nbp.recycle_unpooled_memory_segments(list3)
    assert nbp.available_segments == 8
    assert (first.num_buffers, second.num_buffers) == (5, 5)
    first.lazy_destroy()
    assert nbp.available_segments == 9
    assert second.num_buffers == 10


def test_redistribution_mixed_bounded_and_unbounded(make_pool):
    """BufferPoolFactoryTest.testBufferRedistributionMixed1, compared exactly with the model."""
    nbp = make_pool(1024, 128)
    first = nbp.create_buffer_pool(1, 10)
    second = nbp.create_buffer_pool(1, 10)
    assert (first.num_buffers, second.num_buffers) == (10, 10)
    third = nbp.create_buffer_pool(1, UNBOUNDED)
    specs = [(1, 10), (1, 10), (1, UNBOUNDED)]
    pools = [first, second, third]
    assert [p.num_buffers for p in pools] == reference_sizes(1024, 3, specs) == [9, 10, 1005]
    fourth = nbp.create_buffer_pool(1, UNBOUNDED)
    pools.append(fourth)
    specs.append((1, UNBOUNDED))
    assert [p.num_buffers for p in pools] == reference_sizes(1024, 4, specs)
    # Flink's own bounds (size or size + 1 for any order)
    avail = 1024 - 4
    for p in pools:
        size = avail * min(avail, p.max_buffers - 1) // (2 * avail + 20 - 2) + 1
        assert p.num_buffers in (size, size + 1)


def test_overprovisioned(make_pool):
    """BufferPoolFactoryTest.testOverprovisioned: excess handed out above a pool's new size comes
    back on recycle and is grabbed eagerly by the other pool."""
    total = 64
    nbp = make_pool(total, 128)
    take1 = total // 2 + 1  # also the second pool's minimum
    take2 = total - take1  # also the first pool's minimum
    buffers = []
    pool1 = nbp.create_buffer_pool(take2, total, max_overdraft_buffers=0)
    buffers += request_n(pool1, take1)
    assert pool1.used_buffers == take1
    assert pool1.num_buffers == total
    pool2 = nbp.create_buffer_pool(take1, total, max_overdraft_buffers=0)
    assert pool2.num_buffers == pool2.min_buffers
    assert pool1.num_buffers == pool1.min_buffers
    assert pool1.request_buffer() is None
    buffers += request_n(pool2, take2)
    assert pool2.used_buffers == take2
    assert pool2.request_buffer() is None
    buffers.pop(0).recycle()  # pool1's excess goes back and is fetched by pool2 at once
    assert nbp.available_segments == 0
    assert pool1.used_buffers + pool1.available_segments == take1 - 1
    assert pool2.used_buffers + pool2.available_segments == take2 + 1
    recycle_all(buffers)


def test_all_buffers_distributed_randomly(make_pool):
    """BufferPoolFactoryTest.testAllDistributed: Σ sizes == min(total, Σ max) at each creation."""
    import random

    rng = random.Random(20240611)
    for _ in range(20):
        nbp = make_pool(1024, 64)
        pools = []
        max_total = 0
        for _ in range(1024 // 32):
            mn = rng.randint(1, 7)
            mx = UNBOUNDED if rng.random() < 0.5 else max(1, rng.randint(0, 9) + mn)
            pools.append(nbp.create_buffer_pool(mn, mx))
            max_total = min(1024, max_total + mx)
            assert sum(p.num_buffers for p in pools) == max_total
        for p in pools:
            p.lazy_destroy()
        assert nbp.is_whole


_OPS = st.lists(st.one_of(
    st.tuples(st.just("create"), st.integers(1, 6),
              st.one_of(st.none(), st.integers(0, 12)), st.integers(0, 2)),
    st.tuples(st.just("destroy"), st.integers(0, 1000)),
    st.tuples(st.just("unpooled"), st.integers(1, 8)),
    st.tuples(st.just("recycle_unpooled"), st.integers(0, 1000)),
    st.tuples(st.just("request"), st.integers(0, 1000)),
    st.tuples(st.just("recycle"), st.integers(0, 1000)),
), max_size=40)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(total=st.integers(1, 48), ops=_OPS)
def test_redistribution_matches_model_random(make_pool, total, ops):
    """Random create/destroy of pools and unpooled request/recycle, with buffers held out:
    every pool's size equals the reference model's after every step."""
    nbp = make_pool(total, 64)
    live: list[tuple[LocalBufferPool, int, int]] = []
    every_pool: list[LocalBufferPool] = []
    unpooled: list[list[MemorySegment]] = []
    held: list[NetworkBuffer] = []
    required = 0
    try:
        for op in ops:
            kind = op[0]
            if kind == "create":
                mn, extra, overdraft = op[1:]
                mx = UNBOUNDED if extra is None else mn + extra
                if required + mn > total:
                    with pytest.raises(InsufficientNetworkBuffersError):
                        nbp.create_buffer_pool(mn, mx, max_overdraft_buffers=overdraft)
                else:
                    p = nbp.create_buffer_pool(mn, mx, max_overdraft_buffers=overdraft)
                    live.append((p, mn, mx))
                    every_pool.append(p)
                    required += mn
            elif kind == "destroy" and live:
                p, mn, _ = live.pop(op[1] % len(live))
                p.lazy_destroy()
                required -= mn
            elif kind == "unpooled":
                n = op[1]
                if required + n > total:
                    with pytest.raises(InsufficientNetworkBuffersError):
                        nbp.request_unpooled_memory_segments(n, timeout=0)
                else:
                    try:
                        segments = nbp.request_unpooled_memory_segments(n, timeout=0)
                    except BufferRequestTimeoutError:
                        pass  # held-out buffers: nothing may change
                    else:
                        assert len(segments) == n
                        unpooled.append(segments)
                        required += n
            elif kind == "recycle_unpooled" and unpooled:
                segments = unpooled.pop(op[1] % len(unpooled))
                nbp.recycle_unpooled_memory_segments(segments)
                required -= len(segments)
            elif kind == "request" and live:
                b = live[op[1] % len(live)][0].request_buffer()
                if b is not None:
                    held.append(b)
            elif kind == "recycle" and held:
                held.pop(op[1] % len(held)).recycle()

            specs = [(mn, mx) for _, mn, mx in live]
            sizes = [p.num_buffers for p, _, _ in live]
            assert sizes == reference_sizes(total, required, specs), (op, specs)
            assert sum(sizes) == min(total - sum(len(s) for s in unpooled),
                                     sum(mx for _, mx in specs))
            assert nbp.num_total_required_buffers == required
            assert nbp.registered_buffer_pools() == [p for p, _, _ in live]
            assert (nbp.available_segments + sum(p.requested_segments for p in every_pool)
                    + sum(len(s) for s in unpooled)) == total
    finally:
        recycle_all(held)
        for segments in unpooled:
            nbp.recycle_unpooled_memory_segments(segments)
        for p, _, _ in live:
            p.lazy_destroy()
    assert nbp.is_whole
    assert nbp.num_total_required_buffers == 0


# =============================================================================================
# LocalBufferPool
# =============================================================================================

@pytest.mark.parametrize("kwargs", [
    {"min_buffers": 0, "max_buffers": 1},
    {"min_buffers": -1, "max_buffers": 1},
    {"min_buffers": 3, "max_buffers": 2},
    {"min_buffers": 1, "max_buffers": 1, "num_subpartitions": -1},
    {"min_buffers": 1, "max_buffers": 1, "num_subpartitions": 2, "max_buffers_per_channel": 0},
    {"min_buffers": 1, "max_buffers": 1, "max_overdraft_buffers": -1},
])
def test_create_buffer_pool_validates_arguments(make_pool, kwargs):
    nbp = make_pool(8, 64)
    with pytest.raises(ValueError):
        nbp.create_buffer_pool(**kwargs)
    assert nbp.number_of_registered_buffer_pools == 0
    assert nbp.num_total_required_buffers == 0
    assert nbp.is_whole


def test_figures_of_a_new_local_pool(make_pool):
    nbp = make_pool(16, 64)
    lbp = nbp.create_buffer_pool(2, 6, num_subpartitions=3, max_buffers_per_channel=4,
                                 max_overdraft_buffers=1)
    assert lbp.min_buffers == 2
    assert lbp.max_buffers == 6
    assert lbp.num_buffers == 6
    assert lbp.num_subpartitions == 3
    assert lbp.max_buffers_per_channel == 4
    assert lbp.max_overdraft_buffers_per_gate == 1
    assert lbp.requested_segments == 1
    assert lbp.available_segments == 1
    assert lbp.used_buffers == 0
    assert lbp.usage == 0.0
    assert lbp.num_listeners == 0
    assert not lbp.is_destroyed
    assert [lbp.subpartition_buffer_count(ch) for ch in range(3)] == [0, 0, 0]
    assert nbp.create_buffer_pool(1, UNBOUNDED).max_buffers == UNBOUNDED == 2**31 - 1


def test_figures_follow_requests_and_recycles(make_pool):
    nbp = make_pool(16, 64)
    lbp = nbp.create_buffer_pool(1, 4, num_subpartitions=2, max_overdraft_buffers=0)
    b0 = lbp.request_buffer_builder(0)
    b1 = lbp.request_buffer_builder(1)
    b2 = lbp.request_buffer_builder(1)
    buf = lbp.request_buffer()
    assert lbp.used_buffers == 4
    assert lbp.requested_segments == 4
    assert lbp.available_segments == 0
    assert lbp.usage == 1.0
    assert [lbp.subpartition_buffer_count(ch) for ch in range(2)] == [1, 2]
    b1.close()
    assert lbp.subpartition_buffer_count(1) == 1
    assert lbp.used_buffers == 3 and lbp.usage == 0.75
    for b in (b0, b2):
        b.close()
    buf.recycle()
    assert lbp.used_buffers == 0
    assert [lbp.subpartition_buffer_count(ch) for ch in range(2)] == [0, 0]
    assert lbp.requested_segments == lbp.available_segments == 4


@pytest.mark.parametrize("channel", [-2, 3, 100])
def test_channel_range_is_validated(make_pool, channel):
    nbp = make_pool(8, 64)
    lbp = nbp.create_buffer_pool(1, 4, num_subpartitions=3)
    with pytest.raises(ValueError, match="out of range"):
        lbp.request_buffer_builder(channel)
    with pytest.raises(ValueError, match="out of range"):
        lbp.request_buffer_builder_blocking(channel, timeout=0)
    with pytest.raises(ValueError):
        lbp.subpartition_buffer_count(channel)
    assert lbp.used_buffers == 0


def test_pool_without_subpartitions_accepts_only_unknown_channel(make_pool):
    nbp = make_pool(8, 64)
    lbp = nbp.create_buffer_pool(1, 4)
    with pytest.raises(ValueError):
        lbp.request_buffer_builder(0)
    builder = lbp.request_buffer_builder(-1)
    assert isinstance(builder, BufferBuilder)
    builder.close()
    builder = lbp.request_buffer_builder()
    builder.close()
    assert lbp.used_buffers == 0


def test_request_memory_segment_and_recycle(make_pool):
    nbp = make_pool(4, 64)
    lbp = nbp.create_buffer_pool(2, 2, max_overdraft_buffers=0)
    s1 = lbp.request_memory_segment()
    s2 = lbp.request_memory_segment_blocking(timeout=0)
    assert isinstance(s1, MemorySegment) and s1 is not s2
    assert lbp.request_memory_segment() is None
    assert lbp.used_buffers == 2
    with pytest.raises(TypeError):
        lbp.recycle(None)
    view = memoryview(s1)
    with pytest.raises(BufferError):
        lbp.recycle(s1)
    assert lbp.used_buffers == 2 and lbp.available_segments == 0
    view.release()
    lbp.recycle(s1)
    lbp.recycle(s2)
    assert lbp.available_segments == 2


def test_recycling_a_buffer_with_a_live_view_changes_nothing(make_pool):
    nbp = make_pool(4, 64)
    lbp = nbp.create_buffer_pool(1, 1, max_overdraft_buffers=0)
    buf = lbp.request_buffer()
    buf.size = 8
    view = memoryview(buf)
    with pytest.raises(BufferError):
        buf.recycle()
    assert buf.ref_count == 1
    assert lbp.used_buffers == 1 and not lbp.is_available
    view.release()
    buf.recycle()
    assert lbp.is_available


def test_buffers_from_the_pool_recycle_into_it(make_pool):
    nbp = make_pool(4, 64)
    lbp = nbp.create_buffer_pool(1, 4)
    buf = lbp.request_buffer()
    assert isinstance(buf, NetworkBuffer)
    assert buf.recycler is lbp
    assert buf.ref_count == 1 and buf.size == 0 and buf.max_capacity == 64
    buf.recycle()
    assert buf.is_recycled


# --- a new pool and availability -----------------------------------------------------------------

def test_new_pool_grabs_one_segment_when_the_global_pool_has_one(make_pool):
    nbp = make_pool(16, 64)
    lbp = nbp.create_buffer_pool(1, UNBOUNDED)
    assert lbp.requested_segments == 1 and lbp.available_segments == 1
    assert nbp.available_segments == 15
    assert lbp.is_available and lbp.get_available_future().done()


def test_new_pool_is_unavailable_until_the_global_pool_has_a_segment(make_pool):
    nbp = make_pool(3, 64)
    held = [nbp.request_pooled_memory_segment() for _ in range(3)]
    first = nbp.create_buffer_pool(1, 2)
    second = nbp.create_buffer_pool(1, 2)
    for p in (first, second):
        assert p.requested_segments == 0
        assert not p.is_available
    f1, f2 = first.get_available_future(), second.get_available_future()
    assert not f1.done() and not f2.done()
    assert first.request_buffer() is None  # nothing free here, pool not exhausted: no overdraft
    nbp.recycle_pooled_memory_segment(held.pop())
    # the first waiting pool grabs the segment; the second stays registered
    assert f1.done() and first.is_available and first.requested_segments == 1
    assert not f2.done() and second.requested_segments == 0
    assert nbp.available_segments == 0
    nbp.recycle_pooled_memory_segment(held.pop())
    assert f2.done() and second.is_available and second.requested_segments == 1
    nbp.recycle_pooled_memory_segment(held.pop())
    assert nbp.available_segments == 1  # nobody was waiting any more


def test_is_available_or_not_resizable(make_pool):
    """Flink's LocalBufferPoolTest.testIsAvailableOrNot on a pool allowed to grow."""
    nbp = make_pool(64, 128)
    lbp = nbp.create_buffer_pool(1, 64, max_overdraft_buffers=0)
    lbp.set_num_buffers(1)
    assert lbp.is_available
    builder = lbp.request_buffer_builder_blocking()
    future = lbp.get_available_future()
    assert not future.done()
    lbp.set_num_buffers(5)
    assert future.done() and lbp.is_available
    buffers = []
    for _ in range(4):
        assert lbp.is_available
        buffers.append(lbp.request_buffer())
    assert not lbp.is_available
    buffers.pop(0).recycle()
    assert lbp.is_available
    recycle_all(buffers)
    assert lbp.is_available
    lbp.set_num_buffers(2)  # first buffer still out, one segment still here
    assert lbp.is_available
    buffer2 = lbp.request_buffer()
    assert not lbp.is_available
    buffer2.recycle()
    assert lbp.is_available
    lbp.set_num_buffers(1)
    assert not lbp.get_available_future().done()
    builder.close()
    assert lbp.is_available and lbp.get_available_future().done()


def test_consistent_availability_when_the_global_pool_was_empty(make_pool):
    """FLINK-20547: a failed prefetch must not leave the availability inconsistent."""
    nbp = make_pool(2, 64)
    outside = nbp.request_pooled_memory_segment()
    lbp = nbp.create_buffer_pool(1, UNBOUNDED)
    assert lbp.num_buffers == 2
    segment = lbp.request_memory_segment_blocking(timeout=0)
    assert_availability_consistent(lbp)  # prefetch failed: unavailable, registered globally
    assert not lbp.is_available
    lbp.set_num_buffers(2)
    lbp.recycle(segment)
    assert_availability_consistent(lbp)
    nbp.recycle_pooled_memory_segment(outside)
    assert_availability_consistent(lbp)
    lbp.lazy_destroy()
    assert nbp.is_whole


# --- request up to the pool size -----------------------------------------------------------------

@pytest.mark.parametrize("pool_size", [1, 10, 64])
def test_request_more_than_available(make_pool, pool_size):
    """Flink's testRequestMoreThanAvailable: the pool prefetches one segment ahead."""
    nbp = make_pool(64, 128)
    lbp = nbp.create_buffer_pool(1, UNBOUNDED, max_overdraft_buffers=0)
    lbp.set_num_buffers(pool_size)
    buffers = []
    for i in range(1, pool_size + 1):
        buffers.append(lbp.request_buffer())
        assert buffers[-1] is not None
        assert nbp.used_segments == min(i + 1, pool_size)
    assert lbp.request_buffer() is None
    assert lbp.request_buffer_builder() is None
    assert lbp.request_memory_segment() is None
    assert nbp.used_segments == pool_size
    recycle_all(buffers)


# --- reserve_segments ----------------------------------------------------------------------------

def test_reserve_segments(make_pool):
    """Flink's testReserveSegments."""
    nbp = make_pool(2, 128, request_timeout=0.05)
    pool1 = nbp.create_buffer_pool(1, 2)
    with pytest.raises(ValueError, match="Can not reserve more segments than"):
        pool1.reserve_segments(2)
    buffers = request_n(pool1, 2)
    pool2 = nbp.create_buffer_pool(1, 10)
    with pytest.raises(BufferRequestTimeoutError):
        pool2.reserve_segments(1)
    assert not pool2.is_available
    assert pool2.requested_segments == 0
    recycle_all(buffers)
    pool1.lazy_destroy()
    pool2.lazy_destroy()
    pool3 = nbp.create_buffer_pool(2, 10)
    assert pool3.available_segments == 1
    pool3.reserve_segments(2)
    assert pool3.available_segments == 2 and pool3.requested_segments == 2
    pool3.reserve_segments(1)  # already held: no-op
    assert pool3.requested_segments == 2
    pool3.lazy_destroy()
    with pytest.raises(CancelTaskError, match=DESTROYED):
        pool3.reserve_segments(1)


def test_reserve_segments_with_explicit_timeout(make_pool):
    nbp = make_pool(2, 64)  # 30 s default: the explicit timeout must be used
    outside = [nbp.request_pooled_memory_segment() for _ in range(2)]
    lbp = nbp.create_buffer_pool(2, 2)
    with pytest.raises(BufferRequestTimeoutError):
        lbp.reserve_segments(2, timeout=0.05)
    assert lbp.requested_segments == 0
    assert nbp.available_segments == 0
    for s in outside:
        nbp.recycle_pooled_memory_segment(s)
    assert lbp.requested_segments == 1  # was waiting globally, grabbed one
    lbp.reserve_segments(2, timeout=0)
    assert lbp.requested_segments == 2 and lbp.available_segments == 2


# --- set_num_buffers -----------------------------------------------------------------------------

def test_decrease_returns_free_excess_at_once(make_pool):
    """Flink's testRecycleExcessBuffersAfterChangingNumBuffers."""
    nbp = make_pool(64, 128)
    lbp = nbp.create_buffer_pool(1, UNBOUNDED, max_overdraft_buffers=0)
    recycle_all(request_n(lbp, 64))
    assert lbp.available_segments == 64
    lbp.set_num_buffers(32)
    assert lbp.num_buffers == 32
    assert lbp.available_segments == 32 and lbp.requested_segments == 32
    assert nbp.available_segments == 32


def test_decrease_returns_handed_out_excess_on_recycle(make_pool):
    """Flink's testRecycleExcessBuffersAfterRecycling."""
    nbp = make_pool(64, 128)
    lbp = nbp.create_buffer_pool(1, UNBOUNDED, max_overdraft_buffers=0)
    buffers = request_n(lbp, 64)
    assert nbp.used_segments == 64
    lbp.set_num_buffers(32)
    assert nbp.used_segments == 64  # handed out: must wait for the recycles
    for i in range(1, 33):
        buffers.pop(0).recycle()
        assert nbp.used_segments == 64 - i
        assert lbp.requested_segments == 64 - i
        assert lbp.available_segments == 0
    buffers.pop(0).recycle()
    assert lbp.available_segments == 1 and nbp.used_segments == 32
    recycle_all(buffers)
    assert lbp.requested_segments == 32 and lbp.available_segments == 32


def test_set_num_buffers_below_minimum_is_rejected(make_pool):
    nbp = make_pool(8, 64)
    lbp = nbp.create_buffer_pool(2, 8)
    lbp.set_num_buffers(2)
    with pytest.raises(ValueError):
        lbp.set_num_buffers(1)
    with pytest.raises(ValueError):
        lbp.set_num_buffers(0)
    assert lbp.num_buffers == 2


def test_bounded_pool(make_pool):
    """Flink's testBoundedBuffer: set_num_buffers is capped at max_buffers."""
    nbp = make_pool(64, 128)
    lbp = nbp.create_buffer_pool(1, 2, max_overdraft_buffers=0)
    assert lbp.available_segments == 1
    assert lbp.max_buffers == 2

    def cycle(size, expected_free_after_set):
        lbp.set_num_buffers(size)
        assert lbp.num_buffers == min(size, 2)
        assert lbp.available_segments == expected_free_after_set
        got = []
        while (b := lbp.request_buffer()) is not None:
            got.append(b)
            assert lbp.available_segments == (1 if len(got) < lbp.num_buffers else 0)
        assert len(got) == lbp.num_buffers
        assert lbp.available_segments == 0
        for i, b in enumerate(got, 1):
            b.recycle()
            assert lbp.available_segments == i

    cycle(1, 1)
    cycle(2, 1)
    cycle(3, 2)  # too large: capped at 2
    cycle(1, 1)


@pytest.mark.parametrize(
    "large, small, overdraft, n_requests, exp_overdraft, exp_ordinary, exp_free", [
        (7, 5, 2, 5, 0, 5, 0),  # requested == small size
        (6, 4, 2, 2, 0, 3, 1),  # requested < small size
        (7, 5, 2, 7, 2, 5, 0),  # excess == max overdraft
        (9, 5, 3, 9, 4, 5, 0),  # excess > max overdraft
        (7, 5, 4, 7, 2, 5, 0),  # excess < max overdraft
        (7, 5, 6, 9, 4, 5, 0),  # decrease while in overdraft
    ])
def test_decrease_pool_size(make_pool, large, small, overdraft, n_requests,
                            exp_overdraft, exp_ordinary, exp_free):
    """Flink's testDecreasePoolSize (min 4, max 10)."""
    nbp = make_pool(64, 128)
    lbp = nbp.create_buffer_pool(4, 10, max_overdraft_buffers=overdraft)
    lbp.set_num_buffers(large)
    assert lbp.num_buffers == large
    segments = [lbp.request_memory_segment_blocking(timeout=0) for _ in range(n_requests)]
    lbp.set_num_buffers(small)
    assert lbp.num_buffers == small
    assert max(lbp.requested_segments - lbp.num_buffers, 0) == exp_overdraft
    assert min(lbp.num_buffers, lbp.requested_segments) == exp_ordinary
    assert lbp.available_segments == exp_free
    assert lbp.is_available == (exp_free > 0)
    for s in segments:
        lbp.recycle(s)
    assert lbp.requested_segments == lbp.available_segments <= small


@pytest.mark.parametrize(
    "max_buffers, min_buffers, small, large, exp_overdraft, exp_free, exp_available", [
        (100, 5, 5, 6, 1, 0, False),  # grows, still in overdraft
        (100, 5, 5, 7, 0, 0, False),  # grows to exactly what is held
        (100, 5, 5, 8, 0, 1, True),  # grows beyond: fetches a segment
        (10, 8, 8, 10, 0, 0, False),  # grows to max
    ])
def test_increase_pool_size(make_pool, max_buffers, min_buffers, small, large,
                            exp_overdraft, exp_free, exp_available):
    """Flink's testIncreasePoolSize (2 overdraft buffers): overdraft becomes ordinary buffers."""
    nbp = make_pool(64, 128)
    lbp = nbp.create_buffer_pool(min_buffers, max_buffers, max_overdraft_buffers=2)
    lbp.set_num_buffers(small)
    segments = [lbp.request_memory_segment_blocking(timeout=0) for _ in range(small)]
    assert not lbp.is_available
    segments += [lbp.request_memory_segment_blocking(timeout=0) for _ in range(2)]
    assert lbp.request_memory_segment() is None
    assert lbp.requested_segments - lbp.num_buffers == 2
    assert not lbp.is_available
    lbp.set_num_buffers(large)
    assert lbp.num_buffers == large
    assert lbp.available_segments == exp_free
    assert max(lbp.requested_segments - lbp.num_buffers, 0) == exp_overdraft
    assert lbp.is_available == exp_available
    for s in segments:
        lbp.recycle(s)


def test_set_num_buffers_after_destroy_does_not_fetch_segments(make_pool):
    """Flink's testSetNumAfterDestroyDoesNotProactivelyFetchSegments."""
    nbp = make_pool(64, 128)
    lbp = nbp.create_buffer_pool(1, UNBOUNDED)
    lbp.set_num_buffers(2)
    assert lbp.num_buffers == 2 and lbp.available_segments == 1
    lbp.lazy_destroy()
    lbp.set_num_buffers(3)
    assert lbp.num_buffers == 3
    assert lbp.available_segments == 0 and lbp.requested_segments == 0
    assert nbp.is_whole


# --- max buffers per channel ---------------------------------------------------------------------

def test_max_buffers_per_channel_and_availability(make_pool):
    """Flink's testMaxBuffersPerChannelAndAvailability (FLINK-27522): reaching a channel's cap
    makes the pool unavailable without failing requests; it turns available again only when the
    last capped channel drops below its cap."""
    nbp = make_pool(64, 128)
    lbp = nbp.create_buffer_pool(1, UNBOUNDED, num_subpartitions=3, max_buffers_per_channel=2,
                                 max_overdraft_buffers=0)
    lbp.set_num_buffers(10)
    assert lbp.get_available_future().done()
    b01 = lbp.request_buffer_builder_blocking(0)
    b11 = lbp.request_buffer_builder_blocking(1)
    assert lbp.get_available_future().done()
    b02 = lbp.request_buffer_builder_blocking(0)  # channel 0 at its cap
    assert not lbp.get_available_future().done()
    assert not lbp.is_available
    # the cap does not fail requests while segments are free
    b03 = lbp.request_buffer_builder(0)
    assert b03 is not None
    b21 = lbp.request_buffer_builder_blocking(2)
    b22 = lbp.request_buffer_builder_blocking(2)  # channel 2 at its cap too
    assert lbp.subpartition_buffer_count(0) == 3 and lbp.subpartition_buffer_count(2) == 2
    assert not lbp.get_available_future().done()
    b11.close()
    assert not lbp.get_available_future().done()
    b21.close()  # channel 2 below its cap; channel 0 still at 3
    assert not lbp.get_available_future().done()
    b02.close()  # channel 0 from 3 to 2: still at its cap
    assert not lbp.get_available_future().done()
    future = lbp.get_available_future()
    b01.close()  # the last capped channel drops below its cap
    assert future.done() and lbp.is_available
    b03.close()
    assert lbp.get_available_future().done()
    b22.close()
    assert lbp.get_available_future().done()
    assert [lbp.subpartition_buffer_count(ch) for ch in range(3)] == [0, 0, 0]


@pytest.mark.parametrize("pool_size, cap, channels, used_channels", [
    (4, 3, 2, 1), (4, 3, 2, 2), (4, 3, 3, 2),
    (8, 5, 2, 1), (8, 5, 2, 2), (8, 5, 3, 2),
    (12, 10, 2, 1), (12, 10, 2, 2), (12, 10, 3, 2),
])
@pytest.mark.parametrize("overdraft", [0, 1, 2])
def test_overdraft_buffers_and_availability(make_pool, pool_size, cap, channels, used_channels,
                                            overdraft):
    """Flink's testOverdraftBufferAndAvailability: after the pool is exhausted, up to
    ``max_overdraft_buffers`` more come from the global pool; the pool stays unavailable while in
    overdraft; then requests return None."""
    nbp = make_pool(64, 128)
    lbp = nbp.create_buffer_pool(1, UNBOUNDED, num_subpartitions=channels,
                                 max_buffers_per_channel=cap, max_overdraft_buffers=overdraft)
    lbp.set_num_buffers(pool_size)
    counts = [0] * channels
    per_channel: dict[int, list] = {}

    def check(overdrafted, used, available):
        assert max(lbp.requested_segments - lbp.num_buffers, 0) == overdrafted
        assert lbp.used_buffers == used
        assert lbp.get_available_future().done() == available
        assert lbp.is_available == available

    for i in range(pool_size):
        ch = i % used_channels
        builder = lbp.request_buffer_builder(ch)
        assert builder is not None
        per_channel.setdefault(ch, []).append(builder)
        counts[ch] += 1
        check(0, i + 1, i + 1 < pool_size and max(counts) < cap)

    overdrafts = []
    for i in range(overdraft):
        ch = i % used_channels
        builder = lbp.request_buffer_builder(ch)
        assert builder is not None
        overdrafts.append(builder)
        check(i + 1, pool_size + i + 1, False)
        assert lbp.usage > 1.0
    for ch in range(channels):
        assert lbp.request_buffer_builder(ch) is None
        check(overdraft, pool_size + overdraft, False)
    assert nbp.available_segments == 64 - pool_size - overdraft

    for builder in overdrafts:
        builder.close()  # overdraft segments go straight back to the global pool
    check(0, pool_size, False)
    assert nbp.available_segments == 64 - pool_size
    used = pool_size
    for builders in per_channel.values():
        used -= len(builders)
        for builder in builders:
            builder.close()
        check(0, used, True)


def test_overdraft_comes_from_the_global_pool(make_pool):
    nbp = make_pool(4, 64)
    lbp = nbp.create_buffer_pool(1, 2, max_overdraft_buffers=5)
    buffers = request_n(lbp, 2)
    assert nbp.available_segments == 2
    buffers += request_n(lbp, 2)  # overdraft
    assert nbp.available_segments == 0
    assert lbp.request_buffer() is None  # within the overdraft limit, but the global pool is empty
    assert lbp.requested_segments == 4 and not lbp.is_available
    buffers.pop().recycle()  # an overdraft segment goes back globally at once
    assert nbp.available_segments == 1 and lbp.available_segments == 0
    recycle_all(buffers)
    assert lbp.requested_segments == 2 and lbp.available_segments == 2


def test_overdraft_zero_and_setter(make_pool):
    nbp = make_pool(8, 64)
    lbp = nbp.create_buffer_pool(2, 2, max_overdraft_buffers=0)
    buffers = request_n(lbp, 2)
    assert lbp.request_buffer() is None
    lbp.max_overdraft_buffers_per_gate = 1
    assert lbp.max_overdraft_buffers_per_gate == 1
    buffers.append(lbp.request_buffer())
    assert buffers[-1] is not None
    assert lbp.request_buffer() is None
    with pytest.raises(ValueError):
        lbp.max_overdraft_buffers_per_gate = -1
    assert lbp.max_overdraft_buffers_per_gate == 1
    lbp.max_overdraft_buffers_per_gate = 0
    buffers.pop().recycle()
    assert lbp.request_buffer() is None
    recycle_all(buffers)


def test_overdraft_only_when_the_pool_is_exhausted(make_pool):
    """Free segments held locally are used before any overdraft (§2.3 step 2)."""
    nbp = make_pool(8, 64)
    lbp = nbp.create_buffer_pool(3, 3, max_overdraft_buffers=2)
    buffers = request_n(lbp, 3)
    assert lbp.requested_segments == 3
    buffers += request_n(lbp, 2)
    assert lbp.requested_segments == 5
    buffers.pop(0).recycle()  # in overdraft: goes to the global pool, not to the free list
    assert lbp.available_segments == 0 and lbp.requested_segments == 4
    recycle_all(buffers)


# --- buffer listeners ----------------------------------------------------------------------------

def test_add_buffer_listener_only_when_no_buffer_is_free(make_pool):
    nbp = make_pool(8, 64)
    lbp = nbp.create_buffer_pool(1, 1, max_overdraft_buffers=0)
    listener = RecordingListener()
    assert not lbp.add_buffer_listener(listener)  # a buffer is free
    assert lbp.num_listeners == 0
    buf = lbp.request_buffer()
    assert lbp.add_buffer_listener(listener)
    assert lbp.num_listeners == 1
    buf.recycle()
    assert lbp.num_listeners == 0
    assert len(listener.buffers) == 1
    listener.buffers[0].recycle()
    lbp.lazy_destroy()
    assert not lbp.add_buffer_listener(RecordingListener())


def test_listener_gets_the_recycled_buffer_and_keeps_it(make_pool):
    nbp = make_pool(8, 64)
    lbp = nbp.create_buffer_pool(1, 1, max_overdraft_buffers=0)
    buf = lbp.request_buffer()
    segment = buf.memory_segment
    listener = RecordingListener(keep=True)
    assert lbp.add_buffer_listener(listener)
    buf.recycle()
    assert len(listener.buffers) == 1
    got = listener.buffers[0]
    assert got.memory_segment is segment
    assert got.ref_count == 1 and got.recycler is lbp
    assert lbp.available_segments == 0 and lbp.used_buffers == 1
    assert not lbp.is_available
    got.recycle()  # one-shot: the listener is not notified again
    assert len(listener.buffers) == 1
    assert lbp.available_segments == 1 and lbp.is_available


def test_listeners_recycling_inside_the_notification(make_pool):
    """Flink's testPendingRequestWithListenersAfterRecycle (CountBufferListener)."""
    nbp = make_pool(8, 64)
    lbp = nbp.create_buffer_pool(1, 1, max_overdraft_buffers=0)
    available = lbp.request_buffer()
    assert lbp.request_buffer() is None
    listener1 = RecordingListener(keep=True, recycle_inside=True)
    listener2 = RecordingListener(keep=True, recycle_inside=True)
    assert lbp.add_buffer_listener(listener1)
    assert lbp.add_buffer_listener(listener2)
    available.recycle()
    assert len(listener1.buffers) == 1 and len(listener2.buffers) == 1
    assert not lbp.add_buffer_listener(listener1)
    assert not lbp.add_buffer_listener(listener2)
    assert lbp.available_segments == 1


def test_declining_listener_passes_the_segment_on(make_pool):
    nbp = make_pool(8, 64)
    lbp = nbp.create_buffer_pool(1, 1, max_overdraft_buffers=0)
    buf = lbp.request_buffer()
    order = []
    decliner = RecordingListener(keep=False, on_notify=lambda b: order.append("decliner"))
    keeper = RecordingListener(keep=True, on_notify=lambda b: order.append("keeper"))
    assert lbp.add_buffer_listener(decliner)
    assert lbp.add_buffer_listener(keeper)
    buf.recycle()
    assert order == ["decliner", "keeper"]  # FIFO
    assert decliner.buffers[0].is_recycled  # the declined wrapper holds nothing
    assert keeper.buffers[0].ref_count == 1
    assert keeper.buffers[0].memory_segment is decliner.buffers[0].memory_segment
    assert lbp.available_segments == 0
    keeper.buffers[0].recycle()
    assert lbp.available_segments == 1


def test_declined_segment_goes_back_to_the_pool(make_pool):
    nbp = make_pool(8, 64)
    lbp = nbp.create_buffer_pool(1, 1, max_overdraft_buffers=0)
    buf = lbp.request_buffer()
    decliners = [RecordingListener(keep=False) for _ in range(3)]
    for d in decliners:
        assert lbp.add_buffer_listener(d)
    future = lbp.get_available_future()
    assert not future.done()
    buf.recycle()
    assert all(len(d.buffers) == 1 for d in decliners)
    assert lbp.num_listeners == 0
    assert lbp.available_segments == 1
    assert future.done() and lbp.is_available


def test_raising_listener_does_not_lose_the_segment(make_pool):
    nbp = make_pool(8, 64)
    lbp = nbp.create_buffer_pool(1, 1, max_overdraft_buffers=0)
    buf = lbp.request_buffer()
    raiser = RecordingListener(error=RuntimeError("listener failed"))
    keeper = RecordingListener(keep=True)
    assert lbp.add_buffer_listener(raiser)
    assert lbp.add_buffer_listener(keeper)
    with pytest.raises(RuntimeError, match="listener failed"):
        buf.recycle()
    assert buf.is_recycled
    assert raiser.buffers[0].is_recycled
    assert len(keeper.buffers) == 1  # the segment went on to the next listener
    keeper.buffers[0].recycle()
    assert lbp.available_segments == 1

    # alone, a raising listener lets the segment fall back to the pool
    buf = lbp.request_buffer()
    assert lbp.add_buffer_listener(RecordingListener(error=ValueError("again")))
    with pytest.raises(ValueError, match="again"):
        buf.recycle()
    assert lbp.available_segments == 1 and lbp.is_available


def test_listener_may_call_back_into_the_pool(make_pool):
    """FLINK-9676: listeners are called outside any state change and may re-enter the pool."""
    nbp = make_pool(8, 64)
    lbp = nbp.create_buffer_pool(1, 1, max_overdraft_buffers=0)
    buf = lbp.request_buffer()
    seen = []
    listener = RecordingListener(
        keep=True, on_notify=lambda b: seen.append((lbp.request_buffer(), lbp.used_buffers)))
    assert lbp.add_buffer_listener(listener)
    buf.recycle()
    assert seen == [(None, 1)]
    listener.buffers[0].recycle()


def test_listener_gets_segments_of_subpartition_buffers(make_pool):
    nbp = make_pool(8, 64)
    lbp = nbp.create_buffer_pool(1, 1, num_subpartitions=2, max_buffers_per_channel=1,
                                 max_overdraft_buffers=0)
    builder = lbp.request_buffer_builder(1)
    assert lbp.subpartition_buffer_count(1) == 1
    listener = RecordingListener(keep=True)
    assert lbp.add_buffer_listener(listener)
    builder.close()
    assert lbp.subpartition_buffer_count(1) == 0
    assert len(listener.buffers) == 1
    listener.buffers[0].recycle()
    assert lbp.is_available


def test_excess_segment_goes_global_before_listeners(make_pool):
    nbp = make_pool(8, 64)
    lbp = nbp.create_buffer_pool(1, 2, max_overdraft_buffers=0)
    buffers = request_n(lbp, 2)
    listener = RecordingListener(keep=True)
    assert lbp.add_buffer_listener(listener)
    lbp.set_num_buffers(1)
    free_before = nbp.available_segments
    buffers.pop().recycle()  # surplus: back to the global pool, the listener waits on
    assert listener.buffers == []
    assert nbp.available_segments == free_before + 1
    buffers.pop().recycle()
    assert len(listener.buffers) == 1
    listener.buffers[0].recycle()


def test_listeners_told_on_destroy(make_pool):
    """Flink's testCancelPendingRequestsAfterDestroy."""
    nbp = make_pool(8, 64)
    lbp = nbp.create_buffer_pool(1, 1, max_overdraft_buffers=0)
    available = lbp.request_buffer()
    assert lbp.request_buffer() is None
    listeners = [RecordingListener(), RecordingListener()]
    for listener in listeners:
        assert lbp.add_buffer_listener(listener)
    lbp.lazy_destroy()
    assert [listener.destroyed for listener in listeners] == [1, 1]
    assert lbp.num_listeners == 0
    available.recycle()
    assert all(listener.buffers == [] for listener in listeners)
    assert nbp.is_whole
    lbp.lazy_destroy()
    assert [listener.destroyed for listener in listeners] == [1, 1]


# --- lazy_destroy --------------------------------------------------------------------------------

def test_lazy_destroy_returns_free_segments_and_unregisters(make_pool):
    nbp = make_pool(16, 64)
    other = nbp.create_buffer_pool(1, UNBOUNDED)
    lbp = nbp.create_buffer_pool(3, UNBOUNDED, max_overdraft_buffers=0)
    assert other.num_buffers + lbp.num_buffers == 16
    buffers = request_n(lbp, 4)
    buffers.pop().recycle()
    buffers.pop().recycle()
    assert lbp.available_segments >= 2
    held = lbp.requested_segments - lbp.available_segments
    lbp.lazy_destroy()
    assert lbp.is_destroyed
    assert lbp.available_segments == 0
    assert lbp.requested_segments == held == 2
    assert nbp.registered_buffer_pools() == [other]
    assert nbp.num_total_required_buffers == 1
    assert other.num_buffers == 16  # redistributed
    recycle_all(buffers)
    assert lbp.requested_segments == 0
    assert nbp.available_segments + other.requested_segments == 16


@pytest.mark.parametrize("do_request", [
    lambda p: p.request_buffer(),
    lambda p: p.request_buffer_builder(),
    lambda p: p.request_buffer_builder(0),
    lambda p: p.request_memory_segment(),
    lambda p: p.request_memory_segment_blocking(),
    lambda p: p.request_buffer_builder_blocking(),
    lambda p: p.request_buffer_builder_blocking(1, timeout=1.0),
])
def test_requests_after_destroy_raise_cancel_task_error(make_pool, do_request):
    """LocalBufferPoolDestroyTest.testRequestAfterDestroy."""
    nbp = make_pool(1, 4096)
    lbp = nbp.create_buffer_pool(1, 1, num_subpartitions=2)
    lbp.lazy_destroy()
    with pytest.raises(CancelTaskError, match=DESTROYED):
        do_request(lbp)
    assert nbp.is_whole


def test_recycle_after_destroy_goes_to_the_global_pool(make_pool):
    """Flink's testRecycleAfterDestroy."""
    nbp = make_pool(64, 128)
    lbp = nbp.create_buffer_pool(1, UNBOUNDED, num_subpartitions=2, max_overdraft_buffers=0)
    buffers = request_n(lbp, 62)
    builders = [lbp.request_buffer_builder(0), lbp.request_buffer_builder(1)]
    lbp.lazy_destroy()
    assert nbp.used_segments == 64  # handed out: not yet back
    for i, b in enumerate(buffers, 1):
        b.recycle()
        assert nbp.available_segments == i
        assert lbp.available_segments == 0
    for b in builders:
        b.close()
    assert lbp.requested_segments == 0
    assert [lbp.subpartition_buffer_count(ch) for ch in range(2)] == [0, 0]
    assert nbp.is_whole


def test_lazy_destroy_is_idempotent(make_pool):
    nbp = make_pool(8, 64)
    keep = nbp.create_buffer_pool(2, 2)
    lbp = nbp.create_buffer_pool(3, 3)
    lbp.lazy_destroy()
    lbp.lazy_destroy()
    assert nbp.num_total_required_buffers == 2
    assert nbp.registered_buffer_pools() == [keep]
    assert lbp.get_available_future().done()  # waiters were woken


def test_destroy_wakes_a_blocked_request_with_cancel_task_error(make_pool):
    """LocalBufferPoolDestroyTest.testDestroyWhileBlockingRequest."""
    nbp = make_pool(1, 4096)
    lbp = nbp.create_buffer_pool(1, 1)
    buf = lbp.request_buffer()
    assert buf is not None and lbp.request_buffer() is None
    future = lbp.get_available_future()
    worker = start(lbp.request_buffer_builder_blocking)
    time.sleep(0.05)  # most likely inside the wait; either way the request must fail
    lbp.lazy_destroy()
    worker.finish()
    assert isinstance(worker.error, CancelTaskError)
    assert future.done()
    buf.recycle()
    assert nbp.is_whole


@pytest.mark.parametrize("do_request", [
    lambda p, t: p.request_buffer_builder_blocking(timeout=t),
    lambda p, t: p.request_buffer_builder_blocking(0, timeout=t),
    lambda p, t: p.request_memory_segment_blocking(timeout=t),
])
@pytest.mark.parametrize("timeout", [0, 0.05])
def test_blocking_request_timeout(make_pool, do_request, timeout):
    nbp = make_pool(4, 64)
    lbp = nbp.create_buffer_pool(1, 1, num_subpartitions=1, max_overdraft_buffers=0)
    buf = lbp.request_buffer()
    with pytest.raises(BufferRequestTimeoutError) as info:
        do_request(lbp, timeout)
    assert isinstance(info.value, TimeoutError)
    assert lbp.used_buffers == 1 and lbp.subpartition_buffer_count(0) == 0
    buf.recycle()
    builder = lbp.request_buffer_builder_blocking(0, timeout=timeout)  # free again: no waiting
    builder.close()


@pytest.mark.parametrize("timeout", [-1, math.nan])
def test_blocking_request_rejects_bad_timeout(make_pool, timeout):
    nbp = make_pool(4, 64)
    lbp = nbp.create_buffer_pool(1, 1)
    with pytest.raises(ValueError):
        lbp.request_buffer_builder_blocking(timeout=timeout)
    with pytest.raises(ValueError):
        lbp.reserve_segments(1, timeout=timeout)


def test_blocking_request_waits_for_a_recycle(make_pool):
    nbp = make_pool(2, 64)
    lbp = nbp.create_buffer_pool(1, 1, max_overdraft_buffers=0)
    buf = lbp.request_buffer()
    worker = start(lbp.request_buffer_builder_blocking, -1, 10.0)
    time.sleep(0.02)
    buf.recycle()
    worker.finish()
    assert worker.error is None
    assert isinstance(worker.result, BufferBuilder)
    worker.result.close()


# --- the §2.3 state machine under random operations ----------------------------------------------

_LBP_OPS = st.lists(st.one_of(
    st.tuples(st.just("request"), st.integers(-1, 3), st.booleans()),
    st.tuples(st.just("recycle"), st.integers(0, 1000)),
    st.tuples(st.just("resize"), st.integers(0, 12)),
    st.tuples(st.just("take_global"), st.integers(0, 1000)),
    st.tuples(st.just("return_global"), st.integers(0, 1000)),
    st.tuples(st.just("overdraft"), st.integers(0, 3)),
), max_size=60)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(total=st.integers(1, 16), min_buffers=st.integers(1, 4), extra=st.integers(0, 6),
       subpartitions=st.integers(0, 3), cap=st.integers(1, 4), overdraft=st.integers(0, 3),
       ops=_LBP_OPS)
def test_local_pool_state_machine_random(make_pool, total, min_buffers, extra, subpartitions, cap,
                                         overdraft, ops):
    """Random requests (with and without channels), recycles, resizes and global scarcity: the
    availability rule, the request outcome rule (§2.3 step 2) and the figures hold at each step."""
    min_buffers = min(min_buffers, total)
    nbp = make_pool(total, 32)
    lbp = nbp.create_buffer_pool(min_buffers, min_buffers + extra, num_subpartitions=subpartitions,
                                 max_buffers_per_channel=cap, max_overdraft_buffers=overdraft)
    out: list[tuple[object, int]] = []  # (builder or buffer, channel)
    outside: list[MemorySegment] = []

    def check():
        counts = [sum(1 for _, c in out if c == ch) for ch in range(subpartitions)]
        assert [lbp.subpartition_buffer_count(ch) for ch in range(subpartitions)] == counts
        expected_available = lbp.available_segments > 0 and all(c < cap for c in counts)
        assert lbp.is_available == expected_available
        assert lbp.get_available_future().done() == expected_available
        assert lbp.used_buffers == len(out)
        assert lbp.requested_segments == lbp.available_segments + len(out)
        assert nbp.available_segments + lbp.requested_segments + len(outside) == total
        # surplus free segments are never kept; a short pool never leaves a global segment unused
        assert lbp.available_segments == 0 or lbp.requested_segments <= lbp.num_buffers
        assert not (lbp.available_segments == 0 and lbp.requested_segments < lbp.num_buffers
                    and nbp.available_segments > 0)

    try:
        check()
        for op in ops:
            kind = op[0]
            if kind == "request":
                ch = op[1] if op[1] < subpartitions else -1
                free, requested, size = (lbp.available_segments, lbp.requested_segments,
                                         lbp.num_buffers)
                expect = free > 0 or (requested >= size
                                      and requested - size < lbp.max_overdraft_buffers_per_gate
                                      and nbp.available_segments > 0)
                if ch == -1 and op[2]:
                    got = lbp.request_buffer()
                else:
                    got = lbp.request_buffer_builder(ch)
                assert (got is not None) == expect
                if got is not None:
                    out.append((got, ch))
            elif kind == "recycle" and out:
                got, _ = out.pop(op[1] % len(out))
                if isinstance(got, BufferBuilder):
                    got.close()
                else:
                    got.recycle()
            elif kind == "resize":
                n = op[1]
                if n < min_buffers:
                    with pytest.raises(ValueError):
                        lbp.set_num_buffers(n)
                else:
                    lbp.set_num_buffers(n)
                    assert lbp.num_buffers == min(n, min_buffers + extra)
            elif kind == "take_global":
                seg = nbp.request_pooled_memory_segment()
                if seg is not None:
                    outside.append(seg)
            elif kind == "return_global" and outside:
                nbp.recycle_pooled_memory_segment(outside.pop(op[1] % len(outside)))
            elif kind == "overdraft":
                lbp.max_overdraft_buffers_per_gate = op[1]
            check()
    finally:
        for got, _ in out:
            if isinstance(got, BufferBuilder):
                got.close()
            else:
                got.recycle()
        for seg in outside:
            nbp.recycle_pooled_memory_segment(seg)
    assert lbp.used_buffers == 0
    lbp.lazy_destroy()
    assert nbp.is_whole
