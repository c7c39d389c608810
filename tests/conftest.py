"""Shared fixtures: every test ends with every pool whole and no buffer alive or leaked."""

from __future__ import annotations

import gc
import os

import pytest
from hypothesis import settings

# The debug build (-O0, every check on) runs the same properties with fewer examples so that CI's
# two passes stay well inside its time budget; the release pass keeps hypothesis' defaults.
settings.register_profile("debug-build", max_examples=25, deadline=None)
settings.register_profile("default", deadline=None)
settings.load_profile(os.environ.get("FLINKNET_HYPOTHESIS_PROFILE", "default"))

from flinknet._core import buffer as _buffer  # noqa: E402 (after the hypothesis profiles)
from flinknet._core.pool import NetworkBufferPool  # noqa: E402


def _origins() -> str:
    origins = _buffer.debug_live_buffer_origins()
    if not origins:
        return "(build with FLINKNET_DEBUG=1 to see where the live buffers were created)"
    return "\n---\n".join(list(origins.values())[:5])


@pytest.fixture(autouse=True)
def no_buffer_leaks():
    """Fail a test that leaves a NetworkBuffer with references, or drops one un-recycled."""
    live_before = _buffer.live_buffer_count()
    leaked_before = _buffer.leaked_buffer_count()
    yield
    # NetworkBuffers are freed by reference counting; only garbage cycles holding one need the
    # collector, so it runs (it costs tens of ms) only when the counters are not back yet.
    if _buffer.live_buffer_count() != live_before:
        gc.collect()
    live_after = _buffer.live_buffer_count()
    leaked_after = _buffer.leaked_buffer_count()
    assert leaked_after == leaked_before, (
        f"{leaked_after - leaked_before} NetworkBuffer(s) were garbage-collected without recycle()")
    assert live_after == live_before, (
        f"{live_after - live_before} NetworkBuffer(s) still hold references after the test:\n"
        + _origins())


@pytest.fixture
def make_pool():
    """Factory of NetworkBufferPools that are checked whole at teardown.

    ``make_pool(num_segments, segment_size=..., request_timeout=...)``. At teardown the fixture
    destroys the local pools the test left registered (their free segments go back), then asserts
    that every segment is back in the global pool and nothing is still counted as required.
    Pools the test destroyed itself are only checked for leaks by ``no_buffer_leaks``.
    """
    pools: list[NetworkBufferPool] = []

    def factory(num_segments: int = 16, segment_size: int = 128, **kwargs) -> NetworkBufferPool:
        nbp = NetworkBufferPool(num_segments, segment_size, **kwargs)
        pools.append(nbp)
        return nbp

    yield factory

    problems = []
    for nbp in pools:
        if nbp.is_destroyed:
            continue
        for lbp in nbp.registered_buffer_pools():
            lbp.lazy_destroy()
        if not nbp.is_whole or nbp.num_total_required_buffers != 0:
            problems.append(
                f"{nbp!r}: {nbp.total_segments - nbp.available_segments} segment(s) not returned, "
                f"{nbp.num_total_required_buffers} still required")
        nbp.destroy()
    assert not problems, "pools not whole after the test:\n" + "\n".join(problems)
