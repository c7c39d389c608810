"""MemorySegment life cycle: free() (Flink ``OperationsOnFreedSegmentTest``), the buffer protocol
and its export accounting, and large copies that release the GIL.

The freed-segment checks discover the operations with ``dir(MemorySegment)``: every public member
must be classified here, and every ``get_*``/``put_*`` accessor is exercised automatically, so an
accessor added later is covered without touching this file.
"""

from __future__ import annotations

import contextlib
import gc
import re
import subprocess
import sys
import textwrap
import threading
import tracemalloc

import numpy as np
import pytest

from flinknet._core.memory import MemorySegment
from flinknet.errors import FlinknetError, IllegalStateError, SegmentFreedError
from tests.helpers import contents, pattern, segment_with

SIZE = 53
FREED_MESSAGE = "segment has been freed"
GIL_RELEASE_THRESHOLD = 256 * 1024  # memory.pxd: copies at least this large release the GIL
MiB = 1 << 20


@contextlib.contextmanager
def traced_growth():
    """Yield a function returning the bytes allocated (tracemalloc) since the block started."""
    started_here = not tracemalloc.is_tracing()
    if started_here:
        tracemalloc.start()
    try:
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        yield lambda: tracemalloc.get_traced_memory()[0] - base
    finally:
        if started_here:
            tracemalloc.stop()


def mentions(message: str, number: int) -> bool:
    return re.search(rf"(?<![\d-]){re.escape(str(number))}(?!\d)", message) is not None


# -- the operations, discovered from the class -----------------------------------------------------

# Members that stay usable once the segment is freed.
USABLE_AFTER_FREE = {"free", "is_freed", "size", "owner", "is_off_heap", "wrap_copy"}

# Operations that are not a single-index get_*/put_*: how to call them at a given index.
SPECIAL_CALLS = {
    "address": lambda seg, i: seg.address,
    "get_bytes": lambda seg, i: seg.get_bytes(i, 1),
    "get_into": lambda seg, i: seg.get_into(i, bytearray(8), 0, 1),
    "put_bytes": lambda seg, i: seg.put_bytes(i, b"x"),
    "copy_to": lambda seg, i: seg.copy_to(i, MemorySegment(SIZE), 0, 1),
    "compare": lambda seg, i: seg.compare(MemorySegment(SIZE), i, 0, 1),
    "equal_to": lambda seg, i: seg.equal_to(MemorySegment(SIZE), i, 0, 1),
    "swap_bytes": lambda seg, i: seg.swap_bytes(MemorySegment(SIZE), i, 0, 1),
    "wrap": lambda seg, i: seg.wrap(i, 1),
}


def _put_value(name: str):
    if "boolean" in name:
        return True
    if "float" in name:
        return 1.0
    return 1


def _accessor_call(name: str):
    if name.startswith("get_"):
        return lambda seg, i: getattr(seg, name)(i)
    value = _put_value(name)
    return lambda seg, i: getattr(seg, name)(i, value)


def public_members() -> list[str]:
    return sorted(n for n in dir(MemorySegment) if not n.startswith("_"))


def freed_operations() -> dict:
    ops = {}
    for name in public_members():
        if name in USABLE_AFTER_FREE:
            continue
        if name in SPECIAL_CALLS:
            ops[name] = SPECIAL_CALLS[name]
        elif name.startswith(("get_", "put_")):
            ops[name] = _accessor_call(name)
    return ops


FREED_OPS = freed_operations()
FREED_INDICES = [0, 1, -1, SIZE - 1, SIZE, -SIZE, 2**31 - 1, -(2**31), sys.maxsize,
                 -sys.maxsize - 1]


def test_every_public_member_is_classified():
    unclassified = [n for n in public_members()
                    if n not in USABLE_AFTER_FREE and n not in FREED_OPS]
    assert not unclassified, (
        f"new MemorySegment members {unclassified}: say how to call them after free() "
        f"(SPECIAL_CALLS) or that they stay usable (USABLE_AFTER_FREE)")


def test_discovery_found_the_whole_api():
    assert len([n for n in FREED_OPS if n.startswith(("get_", "put_"))]) >= 45
    assert set(SPECIAL_CALLS) <= set(FREED_OPS)


# -- freed segments --------------------------------------------------------------------------------

@pytest.fixture(params=["unpooled", "wrap_copy", "empty", "pool-destroyed"])
def freed_segment(request, make_pool):
    """A segment after free(), of every kind that can be freed."""
    if request.param == "unpooled":
        seg = segment_with(pattern(SIZE))
        seg.free()
    elif request.param == "wrap_copy":
        seg = MemorySegment.wrap_copy(pattern(SIZE + 4), 2, SIZE + 2)
        seg.free()
    elif request.param == "empty":
        seg = MemorySegment(0)
        seg.free()
    else:
        # a segment lent out when its pool was destroyed is freed when it comes back
        nbp = make_pool(2, segment_size=SIZE)
        seg = nbp.request_pooled_memory_segment()
        nbp.destroy()
        nbp.recycle_pooled_memory_segment(seg)
    assert seg.is_freed
    return seg


@pytest.mark.parametrize("name", sorted(FREED_OPS))
def test_every_operation_on_a_freed_segment_raises(name, freed_segment):
    call = FREED_OPS[name]
    for index in FREED_INDICES:
        with pytest.raises(SegmentFreedError, match=f"^{FREED_MESSAGE}$"):
            call(freed_segment, index)


@pytest.mark.parametrize("call", [
    lambda s: s.get_bytes(-1, -1),
    lambda s: s.get_bytes(0, sys.maxsize),
    lambda s: s.get_into(0, bytes(4)),          # read-only target
    lambda s: s.get_into(0, bytearray(4), 9),   # target too small
    lambda s: s.put_bytes(0, b"abc", 5),        # source offset beyond the source
    lambda s: s.put_bytes(0, memoryview(b"abcdef")[::2]),
    lambda s: s.copy_to(0, MemorySegment(4), 0, 100),
    lambda s: s.compare(MemorySegment(4), -1, 0, 1, -7),
    lambda s: s.equal_to(MemorySegment(4), 0, 0, -1),
    lambda s: s.swap_bytes(MemorySegment(4), 0, 3, 2),
    lambda s: s.wrap(-5, -5),
], ids=["get_bytes-neg", "get_bytes-huge", "get_into-readonly", "get_into-small",
        "put_bytes-offset", "put_bytes-strided", "copy_to", "compare", "equal_to", "swap_bytes",
        "wrap"])
def test_freed_error_wins_over_bad_arguments(call, freed_segment):
    with pytest.raises(SegmentFreedError, match=f"^{FREED_MESSAGE}$"):
        call(freed_segment)


@pytest.mark.parametrize("op", ["copy_to", "copy_to_reverse", "compare", "compare5", "equal_to",
                                "swap_bytes"])
@pytest.mark.parametrize("alive_side", ["self", "other", "neither"])
def test_two_segment_operations_with_a_freed_segment(op, alive_side):
    """Flink's testCompare / testCopyTo / testSwap: alive with freed, freed with alive, freed
    with freed, all raise; the alive segment is unchanged."""
    data = pattern(SIZE)
    a, b = segment_with(data), segment_with(data)
    if alive_side != "self":
        a.free()
    if alive_side != "other":
        b.free()
    calls = {
        "copy_to": lambda: a.copy_to(0, b, 0, 4),
        "copy_to_reverse": lambda: b.copy_to(0, a, 0, 4),
        "compare": lambda: a.compare(b, 0, 0, 4),
        "compare5": lambda: a.compare(b, 0, 0, 4, 2),
        "equal_to": lambda: a.equal_to(b, 0, 0, 4),
        "swap_bytes": lambda: a.swap_bytes(b, 0, 0, 4),
    }
    with pytest.raises(SegmentFreedError, match=f"^{FREED_MESSAGE}$"):
        calls[op]()
    for seg in (a, b):
        if not seg.is_freed:
            assert contents(seg) == data


def test_freed_segment_with_itself():
    seg = segment_with(pattern(SIZE))
    seg.free()
    for call in (lambda: seg.copy_to(0, seg, 1, 2), lambda: seg.compare(seg, 0, 0, 1),
                 lambda: seg.equal_to(seg, 0, 0, 1), lambda: seg.swap_bytes(seg, 0, 9, 2),
                 lambda: seg.put_bytes(0, seg), lambda: seg.get_into(0, seg)):
        with pytest.raises(SegmentFreedError):
            call()


@pytest.mark.parametrize("use", [
    memoryview,
    bytes,
    bytearray,
    lambda s: np.frombuffer(s, dtype=np.uint8),
    lambda s: MemorySegment.wrap_copy(s),
    lambda s: MemorySegment(SIZE).put_bytes(0, s),
    lambda s: MemorySegment(SIZE).get_into(0, s),
    lambda s: MemorySegment(SIZE).copy_to(0, s, 0, 1),
], ids=["memoryview", "bytes", "bytearray", "numpy", "wrap_copy", "put_bytes-source",
        "get_into-target", "copy_to-target"])
def test_freed_segment_cannot_be_used_as_a_buffer(use, freed_segment):
    with pytest.raises(SegmentFreedError, match=f"^{FREED_MESSAGE}$"):
        use(freed_segment)


def test_freed_error_is_an_illegal_state_error():
    seg = MemorySegment(4)
    seg.free()
    with pytest.raises(SegmentFreedError) as exc:
        seg.get_int8(0)
    assert isinstance(exc.value, IllegalStateError)
    assert isinstance(exc.value, RuntimeError)
    assert isinstance(exc.value, FlinknetError)
    assert not isinstance(exc.value, IndexError)
    assert str(exc.value) == FREED_MESSAGE


def test_free_twice_is_harmless_and_state_is_kept():
    owner = object()
    seg = MemorySegment(SIZE, owner)
    assert seg.is_freed is False
    assert seg.free() is None
    assert seg.is_freed is True
    assert seg.free() is None
    assert seg.is_freed is True
    assert seg.size == SIZE
    assert seg.owner is owner
    assert seg.is_off_heap is True
    assert "freed" in repr(seg)


def test_free_releases_the_memory_at_once():
    with traced_growth() as growth:
        seg = MemorySegment(8 * MiB)
        assert growth() >= 8 * MiB
        seg.free()
        assert growth() < MiB
        del seg


def test_dropping_a_segment_releases_its_memory():
    with traced_growth() as growth:
        seg = MemorySegment(8 * MiB)
        assert growth() >= 8 * MiB
        del seg
        gc.collect()
        assert growth() < MiB


# -- buffer protocol -------------------------------------------------------------------------------

def test_memoryview_describes_the_whole_segment():
    seg = MemorySegment(SIZE)
    with memoryview(seg) as view:
        assert view.obj is seg
        assert view.format == "B" and view.itemsize == 1 and view.ndim == 1
        assert view.shape == (SIZE,) and view.nbytes == SIZE
        assert not view.readonly and view.c_contiguous


def test_memoryview_shares_memory_both_ways():
    data = pattern(SIZE)
    seg = segment_with(data)
    with memoryview(seg) as view:
        assert bytes(view) == data
        view[3] = 0x99
        view[10:14] = b"WXYZ"
        assert seg.get_uint8(3) == 0x99
        assert seg.get_bytes(10, 4) == b"WXYZ"
        seg.put_int32_be(20, -2)
        assert bytes(view[20:24]) == b"\xff\xff\xff\xfe"
        seg.put_bytes(0, b"abc")
        assert bytes(view[:3]) == b"abc"


def test_numpy_array_over_a_segment_shares_memory():
    seg = MemorySegment(16)
    arr = np.frombuffer(seg, dtype=np.uint8)
    assert arr.flags.writeable
    arr[:] = np.arange(16)
    assert seg.get_bytes(0, 16) == bytes(range(16))
    seg.put_uint8(0, 200)
    assert arr[0] == 200
    with pytest.raises(BufferError):
        seg.free()
    del arr
    seg.free()
    assert seg.is_freed


# name -> (how to make the view, offset of its first byte in the segment)
VIEW_MAKERS = {
    "memoryview": (lambda seg: memoryview(seg), 0),
    "wrap": (lambda seg: seg.wrap(4, 8), 4),
    "slice-of-memoryview": (lambda seg: memoryview(seg)[2:9], 2),
    "slice-of-wrap": (lambda seg: seg.wrap(1, 20)[3:5], 4),
    "memoryview-of-memoryview": (lambda seg: memoryview(memoryview(seg)), 0),
    "cast": (lambda seg: memoryview(seg)[8:48].cast("I"), 8),
}


@pytest.mark.parametrize("make", sorted(VIEW_MAKERS))
def test_free_while_a_view_is_alive_raises_buffer_error(make):
    data = pattern(SIZE)
    seg = segment_with(data)
    view = VIEW_MAKERS[make][0](seg)
    with pytest.raises(BufferError, match="memoryview"):
        seg.free()
    # the segment is intact and still usable, through itself and through the view
    assert seg.is_freed is False
    assert contents(seg) == data
    seg.put_uint8(5, 0x11)
    assert seg.get_uint8(5) == 0x11
    assert len(view) > 0
    view.release()
    seg.free()
    assert seg.is_freed


def test_slice_keeps_the_export_after_its_parent_view_is_released():
    seg = MemorySegment(SIZE)
    parent = memoryview(seg)
    child = parent[5:10]
    parent.release()
    with pytest.raises(BufferError):
        seg.free()
    child[0] = 7
    assert seg.get_uint8(5) == 7
    child.release()
    seg.free()
    assert seg.is_freed


def test_with_block_releases_the_view():
    seg = MemorySegment(SIZE)
    with memoryview(seg) as view:
        view[0] = 1
    with seg.wrap(0, 4) as view:
        view[1] = 2
    seg.free()
    assert seg.is_freed


def test_garbage_collected_view_releases_the_export():
    seg = MemorySegment(SIZE)
    view = memoryview(seg)
    view[0] = 1
    del view
    gc.collect()
    seg.free()
    assert seg.is_freed


@pytest.mark.parametrize("count", [2, 3, 5])
@pytest.mark.parametrize("order", ["fifo", "lifo"])
def test_exports_are_counted(count, order):
    seg = MemorySegment(SIZE)
    views = [memoryview(seg) if i % 2 else seg.wrap(i, 3) for i in range(count)]
    if order == "lifo":
        views.reverse()
    for remaining in range(count, 0, -1):
        with pytest.raises(BufferError) as exc:
            seg.free()
        assert mentions(str(exc.value), remaining), str(exc.value)
        views.pop(0).release()
    seg.free()
    assert seg.is_freed


def test_exports_from_views_and_arrays_mix():
    seg = MemorySegment(SIZE)
    view = memoryview(seg)
    arr = np.frombuffer(seg.wrap(0, 8), dtype=np.uint8)
    inner = memoryview(view)
    view.release()
    for holder in ("inner", "arr"):
        with pytest.raises(BufferError):
            seg.free()
        if holder == "inner":
            inner.release()
        else:
            del arr
            gc.collect()
    seg.free()
    assert seg.is_freed


@pytest.mark.parametrize("make", sorted(VIEW_MAKERS))
def test_a_view_keeps_the_segment_alive(make):
    make_view, offset = VIEW_MAKERS[make]
    data = pattern(SIZE)
    seg = segment_with(data)
    view = make_view(seg)
    del seg
    gc.collect()
    with view.cast("B") as raw:
        assert bytes(raw) == data[offset:offset + raw.nbytes]
        raw[0] = data[offset] ^ 0xFF
    gc.collect()
    owner = view.obj
    while isinstance(owner, memoryview):
        owner = owner.obj
    assert isinstance(owner, MemorySegment)
    assert not owner.is_freed
    assert owner.get_uint8(offset) == data[offset] ^ 0xFF
    view.release()
    owner.free()


def test_segment_memory_lives_until_the_last_view_goes():
    with traced_growth() as growth:
        seg = MemorySegment(8 * MiB)
        seg.put_bytes(8 * MiB - 3, b"end")
        view = seg.wrap(8 * MiB - 3, 3)
        del seg
        gc.collect()
        assert growth() >= 8 * MiB
        assert bytes(view) == b"end"
        view.release()
        del view
        gc.collect()
        assert growth() < MiB


def test_bulk_calls_do_not_count_as_exports_afterwards():
    seg, other = segment_with(pattern(SIZE, 1)), segment_with(pattern(SIZE, 2))
    seg.put_bytes(0, other)
    seg.get_into(0, other)
    seg.put_bytes(1, seg, 0, 10)
    MemorySegment.wrap_copy(seg)
    bytes(seg)
    other.free()
    seg.free()
    assert seg.is_freed and other.is_freed


# -- large copies (the GIL-releasing path) ---------------------------------------------------------

LARGE_SIZES = [GIL_RELEASE_THRESHOLD - 1, GIL_RELEASE_THRESHOLD, GIL_RELEASE_THRESHOLD + 1,
               MiB, MiB + 3]


@pytest.mark.parametrize("n", LARGE_SIZES)
@pytest.mark.parametrize("source_kind", ["bytes", "bytearray", "numpy", "segment"])
def test_large_put_bytes(n, source_kind):
    data = pattern(n, seed=n)
    source = {"bytes": lambda: data, "bytearray": lambda: bytearray(data),
              "numpy": lambda: np.frombuffer(data, dtype=np.uint8).copy(),
              "segment": lambda: segment_with(data)}[source_kind]()
    seg = MemorySegment(n + 10)
    assert seg.put_bytes(7, source) == n
    assert seg.get_bytes(0, 7) == bytes(7)
    assert seg.get_bytes(7, n) == data
    assert seg.get_bytes(n + 7, 3) == bytes(3)


@pytest.mark.parametrize("n", LARGE_SIZES)
def test_large_get_into(n):
    data = pattern(n, seed=n)
    seg = segment_with(b"\x01" * 5 + data)
    target = bytearray(n + 8)
    assert seg.get_into(5, target, 4, n) == n
    assert target[:4] == bytes(4) and target[-4:] == bytes(4)
    assert target[4:n + 4] == data
    arr = np.zeros(n, dtype=np.uint8)
    assert seg.get_into(5, arr) == n
    assert arr.tobytes() == data


@pytest.mark.parametrize("n", LARGE_SIZES)
def test_large_copy_to_another_segment(n):
    data = pattern(n, seed=n)
    src, dst = segment_with(data), MemorySegment(n + 2)
    src.copy_to(0, dst, 1, n)
    assert dst.get_bytes(1, n) == data
    assert dst.get_uint8(0) == 0 and dst.get_uint8(n + 1) == 0


@pytest.mark.parametrize("shift", [1, -1, 4096, -4096,
                                   GIL_RELEASE_THRESHOLD, -GIL_RELEASE_THRESHOLD])
def test_large_overlapping_copy_within_one_segment(shift):
    size = MiB + GIL_RELEASE_THRESHOLD + 1
    data = pattern(size, seed=7)
    n = size - abs(shift)
    src, dst = (0, shift) if shift > 0 else (-shift, 0)
    for how in ("copy_to", "put_bytes", "get_into"):
        seg = segment_with(data)
        if how == "copy_to":
            seg.copy_to(src, seg, dst, n)
        elif how == "put_bytes":
            seg.put_bytes(dst, seg, src, n)
        else:
            seg.get_into(src, seg, dst, n)
        model = bytearray(data)
        model[dst:dst + n] = data[src:src + n]
        assert contents(seg) == model, how


def test_large_wrap_copy_and_get_bytes():
    data = pattern(MiB + 5, seed=3)
    seg = MemorySegment.wrap_copy(data, 2, MiB + 2)
    assert seg.size == MiB
    assert seg.get_bytes(0, MiB) == data[2:MiB + 2]


def test_large_swap_bytes():
    a_data, b_data = pattern(MiB, 1), pattern(MiB, 2)
    a, b = segment_with(a_data), segment_with(b_data)
    a.swap_bytes(b, 0, 0, MiB)
    assert contents(a) == b_data and contents(b) == a_data


def test_large_copies_from_several_threads_are_correct():
    rounds, workers = 6, 4
    errors = []

    def work(worker: int):
        try:
            seg, mirror = MemorySegment(MiB), MemorySegment(MiB)
            target = bytearray(MiB)
            for r in range(rounds):
                data = pattern(MiB, seed=worker * 100 + r)
                seg.put_bytes(0, data)
                seg.copy_to(0, mirror, 0, MiB)
                mirror.get_into(0, target)
                if target != data or seg.get_bytes(0, MiB) != data:
                    errors.append(f"worker {worker} round {r}: data differs")
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(f"worker {worker}: {exc!r}")

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# A thread frees a segment while another thread copies into or out of it with the GIL released.
# Holding a reference to the segment object does not keep its memory: free() must refuse
# (BufferError) or the copy must complete first; it must never unmap memory under a running copy.
# Runs in a child process because the failure mode is a crash.
_RACE_SCRIPT = textwrap.dedent("""
    import faulthandler, sys, threading
    faulthandler.enable()
    from flinknet._core.memory import MemorySegment
    from flinknet.errors import SegmentFreedError

    op = sys.argv[1]
    N = 64 << 20
    seg = MemorySegment(N)
    other = MemorySegment(N)
    buf = bytearray(N)
    go = threading.Event()
    outcome = []

    def freer():
        go.wait()
        try:
            seg.free()
            outcome.append("freed")
        except BufferError:
            outcome.append("refused")

    def copy():
        if op == "put_bytes":
            seg.put_bytes(0, buf)
        elif op == "get_into":
            seg.get_into(0, buf)
        elif op == "copy_to_source":
            seg.copy_to(0, other, 0, N)
        elif op == "copy_to_target":
            other.copy_to(0, seg, 0, N)

    t = threading.Thread(target=freer)
    t.start()
    go.set()
    copies = 0
    for _ in range(8):
        try:
            copy()
            copies += 1
        except SegmentFreedError:
            pass
    t.join()
    assert outcome, "free() neither succeeded nor raised BufferError"
    if outcome == ["freed"]:
        assert seg.is_freed
    print(outcome[0], copies)
""")


@pytest.mark.parametrize("op", ["put_bytes", "get_into", "copy_to_source", "copy_to_target"])
def test_free_from_another_thread_during_a_large_copy_is_safe(op):
    proc = subprocess.run([sys.executable, "-c", _RACE_SCRIPT, op], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, (
        f"child exited with {proc.returncode} while one thread freed the segment that another "
        f"was copying with the GIL released:\n{proc.stdout}\n{proc.stderr[-3000:]}")
