"""Garbage collection of network buffers.

A NetworkBuffer dropped while its reference count is above zero must give its segment back to its
recycler itself, warn (ResourceWarning) and be counted by ``leaked_buffer_count()`` (see
``flinknet/_core/buffer.pxd``, "Lifetime"); a recycled one must simply go away without keeping its
segment alive.

These tests leak on purpose, so this module overrides conftest's autouse ``no_buffer_leaks``
fixture: each test asserts the exact change of ``leaked_buffer_count()`` itself, and the override
only checks that no buffer is left holding references.
"""

from __future__ import annotations

import gc
import sys
import warnings

import pytest

from flinknet._core.buffer import leaked_buffer_count, live_buffer_count
from flinknet.core import BufferRecycler, MemorySegment, NetworkBuffer, NetworkBufferPool


class RecordingRecycler(BufferRecycler):
    """A real recycler that remembers every segment it was handed."""

    def __init__(self):
        self.segments = []

    def recycle(self, segment):
        self.segments.append(segment)


@pytest.fixture(autouse=True)
def no_buffer_leaks():
    """Override of conftest's fixture: leaks are expected here and asserted by each test."""
    gc.collect()
    live_before = live_buffer_count()
    yield
    gc.collect()
    assert live_buffer_count() == live_before, "a NetworkBuffer still holds references"


def _drop(namespace, name):
    """Delete the last reference ``namespace[name]`` and collect, recording warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del namespace[name]
        gc.collect()
    return [w for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.mark.parametrize("extra_refs", [0, 2])
def test_dropped_buffer_returns_segment_to_its_pool_and_warns(extra_refs):
    nbp = NetworkBufferPool(2, 128)
    try:
        lbp = nbp.create_buffer_pool(1, 2)
        refs = {"buffer": lbp.request_buffer()}
        for _ in range(extra_refs):
            refs["buffer"].retain()
        assert lbp.used_buffers == 1
        leaked, live = leaked_buffer_count(), live_buffer_count()

        resource_warnings = _drop(refs, "buffer")

        assert leaked_buffer_count() == leaked + 1
        assert live_buffer_count() == live - 1
        assert len(resource_warnings) == 1
        assert "recycle()" in str(resource_warnings[0].message)
        assert lbp.used_buffers == 0
        assert lbp.available_segments == lbp.requested_segments
        lbp.lazy_destroy()
        assert nbp.is_whole
    finally:
        nbp.destroy()


def test_dropped_buffer_hands_segment_to_recycler_exactly_once():
    recycler = RecordingRecycler()
    segment = MemorySegment(32)
    refs = {"buffer": NetworkBuffer(segment, recycler, size=8)}
    leaked = leaked_buffer_count()

    resource_warnings = _drop(refs, "buffer")

    assert leaked_buffer_count() == leaked + 1
    assert len(resource_warnings) == 1
    assert len(recycler.segments) == 1
    assert recycler.segments[0] is segment


def test_recycled_buffer_does_not_keep_its_segment_alive():
    """A recycled NetworkBuffer is freed when dropped (no reference cycle keeps it, and its
    segment, alive forever)."""
    recycler = RecordingRecycler()
    segment = MemorySegment(32)
    baseline = sys.getrefcount(segment)
    buffer = NetworkBuffer(segment, recycler, size=8)
    buffer.recycle()
    recycler.segments.clear()
    leaked = leaked_buffer_count()
    del buffer
    gc.collect()
    assert sys.getrefcount(segment) == baseline
    assert leaked_buffer_count() == leaked


def test_dropped_buffer_with_exported_segment_never_recycles_exported_memory():
    """The exports rule holds in __dealloc__ too: memory a live view still points at is never
    handed to a recycler; the leak is still counted and reported."""
    recycler = RecordingRecycler()
    segment = MemorySegment(32)
    refs = {"buffer": NetworkBuffer(segment, recycler, size=8)}
    view = segment.wrap(0, 8)
    leaked, live = leaked_buffer_count(), live_buffer_count()

    resource_warnings = _drop(refs, "buffer")

    assert leaked_buffer_count() == leaked + 1
    assert live_buffer_count() == live - 1
    assert len(resource_warnings) == 1
    assert recycler.segments == []
    view[0] = 1  # the memory is still valid for the view
    view.release()


def test_slice_keeps_its_parent_alive():
    recycler = RecordingRecycler()
    buffer = NetworkBuffer(MemorySegment(32), recycler, size=8)
    piece = buffer.read_only_slice(2, 4)
    leaked = leaked_buffer_count()
    del buffer
    gc.collect()
    assert leaked_buffer_count() == leaked
    assert not piece.is_recycled
    assert recycler.segments == []
    piece.recycle()
    assert piece.is_recycled
    assert len(recycler.segments) == 1


def test_memoryview_keeps_its_buffer_alive():
    recycler = RecordingRecycler()
    buffer = NetworkBuffer(MemorySegment(32), recycler, size=8)
    view = memoryview(buffer)
    leaked = leaked_buffer_count()
    del buffer
    gc.collect()
    assert leaked_buffer_count() == leaked
    owner = view.obj
    assert not owner.is_recycled
    view.release()
    owner.recycle()
    assert len(recycler.segments) == 1


def _a_buffer_made_here(pool):
    return pool.request_buffer()


def test_debug_builds_remember_where_each_live_buffer_was_created():
    """What the leak check prints: the creating frames, innermost last, formatted on demand
    (a release build keeps nothing)."""
    from flinknet._core.buffer import debug_live_buffer_origins, is_debug_build

    pool = NetworkBufferPool(2, 64)
    local = pool.create_buffer_pool(1, 2)
    try:
        buf = _a_buffer_made_here(local)
        origins = debug_live_buffer_origins()
        if not is_debug_build():
            assert origins == {}
            buf.recycle()
            return
        stack = origins[id(buf)]
        lines = [line for line in stack.splitlines() if line.startswith("  File ")]
        assert __file__ in lines[-1] and "_a_buffer_made_here" in lines[-1]
        assert "test_debug_builds_remember_where_each_live_buffer_was_created" in lines[-2]
        assert "return pool.request_buffer()" in stack              # the source line, read lazily
        buf.recycle()
        assert id(buf) not in debug_live_buffer_origins()
    finally:
        local.lazy_destroy()
        assert pool.is_whole
        pool.destroy()
