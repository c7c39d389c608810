"""MemorySegment: construction and the primitive accessors (Flink ``MemorySegmentTestBase``,
``EndiannessAccessChecks``).

Every primitive accessor is checked for round trips with random values at aligned and unaligned
offsets, for its byte layout against :mod:`struct` (native ``=``, big-endian ``>``, little-endian
``<``), for its exact bounds (width-aware, overflow-safe) and for the range of values it accepts.
A Hypothesis state machine then drives random sequences of writes against a ``bytearray`` model.
Bulk operations are in ``test_memory_bulk.py``; free(), the buffer protocol and large copies in
``test_memory_lifecycle.py``.
"""

from __future__ import annotations

import ctypes
import math
import re
import struct
import sys
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from flinknet._core.memory import MemorySegment

SIZE = 61  # odd and not a multiple of 8, so the last valid index of every width is unaligned
SENTINEL = 0xA5

# -- the accessor table ---------------------------------------------------------------------------

# kind -> (struct code, width)
KINDS = {
    "int8": ("b", 1),
    "uint8": ("B", 1),
    "boolean": ("?", 1),
    "int16": ("h", 2),
    "uint16": ("H", 2),
    "int32": ("i", 4),
    "int64": ("q", 8),
    "float32": ("f", 4),
    "float64": ("d", 8),
}
INT_RANGES = {
    "int8": (-(2**7), 2**7 - 1),
    "uint8": (0, 2**8 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
}
ORDER_PREFIX = {"": "=", "_be": ">", "_le": "<"}
BULK_GET_PUT = {"get_bytes", "get_into", "put_bytes"}


@dataclass(frozen=True)
class Prim:
    kind: str
    order: str  # "" (native), "_be" or "_le"

    @property
    def code(self) -> str:
        return KINDS[self.kind][0]

    @property
    def width(self) -> int:
        return KINDS[self.kind][1]

    @property
    def fmt(self) -> str:
        return ORDER_PREFIX[self.order] + self.code

    @property
    def get(self) -> str:
        return f"get_{self.kind}{self.order}"

    @property
    def put(self) -> str:
        return f"put_{self.kind}{self.order}"

    def __str__(self) -> str:
        return f"{self.kind}{self.order or '_native'}"


PRIMS = [Prim(kind, order)
         for kind, (_, width) in KINDS.items()
         for order in (("",) if width == 1 else ("", "_be", "_le"))]
MULTI_BYTE = [p for p in PRIMS if p.width > 1]
INTEGERS = [p for p in PRIMS if p.kind in INT_RANGES]
FLOATS = [p for p in PRIMS if p.kind.startswith("float")]


def values(kind: str, *, allow_nan: bool = True):
    """All values the accessor of `kind` must store exactly."""
    if kind == "boolean":
        return st.booleans()
    if kind == "float32":
        return st.floats(width=32, allow_nan=allow_nan)
    if kind == "float64":
        return st.floats(allow_nan=allow_nan)
    lo, hi = INT_RANGES[kind]
    return st.integers(lo, hi)


def same_value(a, b) -> bool:
    """Equality that also tells -0.0 from 0.0 and treats NaN as equal to NaN."""
    if isinstance(a, float) or isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return a == b and type(a) is type(b)


def filled(size: int = SIZE, byte: int = SENTINEL) -> MemorySegment:
    seg = MemorySegment(size)
    seg.put_bytes(0, bytes([byte]) * size)
    return seg


def mentions(message: str, number: int) -> bool:
    return re.search(rf"(?<![\d-]){re.escape(str(number))}(?!\d)", message) is not None


def bad_indices(width: int, size: int = SIZE) -> list[int]:
    return sorted({
        -1, -width, -size, size - width + 1, size, size + 1, size + 100,
        2**31 - 1, 2**31 - width, 2**31, 2**62,
        # index + width overflows a signed 64-bit integer: a naive `index + width > size` passes
        sys.maxsize, sys.maxsize - width + 1,
        -sys.maxsize - 1, -(2**31),
    })


# -- segment kinds (Flink runs its test base over heap, direct and unsafe segments) ----------------

@pytest.fixture(params=["unpooled", "wrap_copy", "pooled"])
def new_segment(request, make_pool):
    """Factory of zeroed segments of one kind; pooled ones go back to their pool at teardown."""
    pooled = []

    def factory(size: int) -> MemorySegment:
        if request.param == "unpooled":
            return MemorySegment(size)
        if request.param == "wrap_copy":
            return MemorySegment.wrap_copy(bytes(size + 6), 3, size + 3)
        nbp = make_pool(2, segment_size=size)
        seg = nbp.request_pooled_memory_segment()
        pooled.append((nbp, seg))
        return seg

    yield factory
    for nbp, seg in pooled:
        nbp.recycle_pooled_memory_segment(seg)


# -- the table is the class's real surface -------------------------------------------------------

def test_accessor_table_matches_the_class():
    found = {name for name in dir(MemorySegment)
             if name.startswith(("get_", "put_")) and name not in BULK_GET_PUT}
    expected = {p.get for p in PRIMS} | {p.put for p in PRIMS}
    assert found == expected, (
        f"accessors not covered by these tests: {sorted(found - expected)}; "
        f"accessors missing from the class: {sorted(expected - found)}")


# -- construction ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 7, 8, 4096, 32 * 1024 + 3])
def test_new_segment_is_zeroed_and_sized(size):
    seg = MemorySegment(size)
    assert seg.size == size
    assert seg.get_bytes(0, size) == bytes(size)
    assert not seg.is_freed


def test_pooled_segment_is_zeroed_and_owned_by_its_pool(make_pool):
    nbp = make_pool(3, segment_size=SIZE)
    seg = nbp.request_pooled_memory_segment()
    try:
        assert seg.size == SIZE
        assert seg.owner is nbp
        assert seg.get_bytes(0, SIZE) == bytes(SIZE)
        assert seg.is_off_heap
    finally:
        nbp.recycle_pooled_memory_segment(seg)


def test_default_size_is_zero():
    assert MemorySegment().size == 0


@pytest.mark.parametrize("size", [-1, -2, -(2**31), -sys.maxsize - 1])
def test_negative_size_is_rejected(size):
    with pytest.raises(ValueError, match=re.escape(str(size))):
        MemorySegment(size)


def test_owner_is_whatever_the_allocator_attached():
    owner = object()
    assert MemorySegment(4).owner is None
    assert MemorySegment(4, owner=owner).owner is owner
    assert MemorySegment(4, owner).owner is owner
    assert MemorySegment.wrap_copy(b"abc").owner is None


def test_is_off_heap():
    assert MemorySegment(4).is_off_heap is True
    assert MemorySegment.wrap_copy(b"xy").is_off_heap is True


def test_address_points_at_the_segment_bytes():
    seg = MemorySegment(64)
    seg.put_bytes(0, bytes(range(64)))
    assert isinstance(seg.address, int) and seg.address != 0
    assert ctypes.string_at(seg.address, 64) == bytes(range(64))
    ctypes.memmove(seg.address + 10, b"\xff\xfe", 2)
    assert seg.get_bytes(9, 4) == b"\x09\xff\xfe\x0c"


def test_addresses_of_live_segments_do_not_overlap():
    segs = [MemorySegment(32) for _ in range(8)]
    spans = sorted((s.address, s.address + s.size) for s in segs)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start


def test_pooled_segments_are_consecutive_slices_of_one_arena(make_pool):
    nbp = make_pool(3, segment_size=96)
    segs = [nbp.request_pooled_memory_segment() for _ in range(3)]
    try:
        addresses = sorted(s.address for s in segs)
        assert addresses[0] % 4096 == 0
        assert [b - a for a, b in zip(addresses, addresses[1:])] == [96, 96]
    finally:
        for s in segs:
            nbp.recycle_pooled_memory_segment(s)


# -- wrap_copy -------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [bytes, bytearray, memoryview,
                                  lambda b: np.frombuffer(b, dtype=np.uint8).copy(),
                                  MemorySegment.wrap_copy])
@pytest.mark.parametrize("start, end", [(0, None), (0, 10), (3, 10), (3, None), (10, 10), (0, 0),
                                        (4, 5)])
def test_wrap_copy_copies_the_range(make, start, end):
    raw = bytes(range(100, 110))
    seg = MemorySegment.wrap_copy(make(raw), start, end)
    want = raw[start:end]
    assert seg.size == len(want)
    assert seg.get_bytes(0, seg.size) == want


def test_wrap_copy_default_arguments_copy_everything():
    assert MemorySegment.wrap_copy(b"hello").get_bytes(0, 5) == b"hello"
    assert MemorySegment.wrap_copy(b"hello", 2).get_bytes(0, 3) == b"llo"
    assert MemorySegment.wrap_copy(b"").size == 0


def test_wrap_copy_is_a_copy_not_a_view():
    source = bytearray(b"abcdef")
    seg = MemorySegment.wrap_copy(source, 1, 5)
    source[2] = ord("X")
    assert seg.get_bytes(0, 4) == b"bcde"
    seg.put_uint8(0, ord("Z"))
    assert source == bytearray(b"abXdef")
    source.extend(b"more")  # no export of `source` survives the call


@pytest.mark.parametrize("start, end", [(-1, None), (-1, 3), (7, None), (0, 7), (4, 3), (6, 5),
                                        (2, -1), (sys.maxsize, None), (0, sys.maxsize),
                                        (-sys.maxsize - 1, 2)])
def test_wrap_copy_out_of_range(start, end):
    with pytest.raises(IndexError) as exc:
        MemorySegment.wrap_copy(b"abcdef", start, end)
    assert mentions(str(exc.value), start)
    assert mentions(str(exc.value), 6)


def test_wrap_copy_rejects_non_buffers():
    with pytest.raises(TypeError):
        MemorySegment.wrap_copy("text")
    with pytest.raises(TypeError):
        MemorySegment.wrap_copy(None)


# -- size 0 ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("prim", PRIMS, ids=str)
def test_zero_size_segment_has_no_valid_index(prim):
    seg = MemorySegment(0)
    for index in (0, 1, -1):
        with pytest.raises(IndexError):
            getattr(seg, prim.get)(index)
        with pytest.raises(IndexError):
            getattr(seg, prim.put)(index, 0)


def test_zero_size_segment_bulk_operations():
    seg, other = MemorySegment(0), MemorySegment(0)
    assert seg.get_bytes(0, 0) == b""
    assert seg.put_bytes(0, b"") == 0
    assert seg.get_into(0, bytearray()) == 0
    seg.copy_to(0, other, 0, 0)
    seg.swap_bytes(other, 0, 0, 0)
    assert seg.compare(other, 0, 0, 0) == 0
    assert seg.equal_to(other, 0, 0, 0) is True
    with memoryview(seg) as view:
        assert view.nbytes == 0
    with seg.wrap(0, 0) as view:
        assert view.nbytes == 0
    with pytest.raises(IndexError):
        seg.get_bytes(0, 1)
    with pytest.raises(IndexError):
        seg.put_bytes(0, b"x")
    seg.free()
    assert seg.is_freed


# -- primitive accessors: round trips --------------------------------------------------------------

@pytest.mark.parametrize("prim", PRIMS, ids=str)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_round_trip_leaves_neighbours_untouched(prim, data):
    value = data.draw(values(prim.kind), label="value")
    index = data.draw(st.integers(0, SIZE - prim.width), label="index")
    seg = filled()
    getattr(seg, prim.put)(index, value)
    got = getattr(seg, prim.get)(index)
    assert same_value(got, value), (got, value)
    untouched = bytes([SENTINEL])
    assert seg.get_bytes(0, index) == untouched * index
    tail = SIZE - index - prim.width
    assert seg.get_bytes(index + prim.width, tail) == untouched * tail


@pytest.mark.parametrize("prim", PRIMS, ids=str)
def test_sequential_and_scattered_writes_read_back(prim):
    """Flink's "sequential access" and "random access" passes, with a fixed seed."""
    rng = np.random.default_rng(20240904 + PRIMS.index(prim))
    seg = MemorySegment(1031)
    positions = list(range(0, seg.size - prim.width + 1, prim.width))
    if prim.kind == "boolean":
        written = [bool(v) for v in rng.integers(0, 2, len(positions))]
    elif prim.kind.startswith("float"):
        raw = rng.standard_normal(len(positions)) * 1e6
        written = [struct.unpack(prim.fmt, struct.pack(prim.fmt, float(v)))[0] for v in raw]
    else:
        lo, hi = INT_RANGES[prim.kind]
        written = [int(v) for v in rng.integers(lo, hi, len(positions), endpoint=True)]
    for pos, value in zip(positions, written):
        getattr(seg, prim.put)(pos, value)
    assert [getattr(seg, prim.get)(pos) for pos in positions] == written

    # non-overlapping writes at unaligned, shuffled positions
    taken = bytearray(seg.size)
    scattered = {}
    for pos in rng.integers(0, seg.size - prim.width + 1, 400):
        pos = int(pos)
        if any(taken[pos:pos + prim.width]):
            continue
        taken[pos:pos + prim.width] = b"\x01" * prim.width
        scattered[pos] = written[len(scattered) % len(written)]
        getattr(seg, prim.put)(pos, scattered[pos])
    assert {pos: getattr(seg, prim.get)(pos) for pos in scattered} == scattered


@pytest.mark.parametrize("prim", INTEGERS, ids=str)
def test_integer_getters_return_plain_ints(prim):
    seg = filled()
    value = getattr(seg, prim.get)(0)
    assert type(value) is int


@pytest.mark.parametrize("prim", FLOATS, ids=str)
def test_float_getters_return_floats(prim):
    seg = MemorySegment(SIZE)
    getattr(seg, prim.put)(3, 1.5)
    value = getattr(seg, prim.get)(3)
    assert type(value) is float and value == 1.5


@pytest.mark.parametrize("prim", FLOATS, ids=str)
@pytest.mark.parametrize("special", [math.inf, -math.inf, -0.0, 0.0, math.nan])
def test_float_special_values(prim, special):
    seg = MemorySegment(SIZE)
    getattr(seg, prim.put)(5, special)
    assert same_value(getattr(seg, prim.get)(5), special)


@pytest.mark.parametrize("prim", [p for p in FLOATS if p.kind == "float32"], ids=str)
@settings(max_examples=80, deadline=None)
@given(value=st.floats(min_value=-3.4e38, max_value=3.4e38))
def test_float32_rounds_like_a_c_float(prim, value):
    seg = MemorySegment(8)
    getattr(seg, prim.put)(1, value)
    assert same_value(getattr(seg, prim.get)(1), struct.unpack("f", struct.pack("f", value))[0])


# -- primitive accessors: byte layout --------------------------------------------------------------

@pytest.mark.parametrize("prim", PRIMS, ids=str)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_put_writes_the_struct_layout(prim, data):
    value = data.draw(values(prim.kind, allow_nan=False), label="value")
    index = data.draw(st.integers(0, SIZE - prim.width), label="index")
    seg = filled()
    getattr(seg, prim.put)(index, value)
    assert seg.get_bytes(index, prim.width) == struct.pack(prim.fmt, value)


@pytest.mark.parametrize("prim", [p for p in PRIMS if p.kind != "boolean"], ids=str)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_get_reads_the_struct_layout(prim, data):
    raw = data.draw(st.binary(min_size=prim.width, max_size=prim.width), label="raw")
    index = data.draw(st.integers(0, SIZE - prim.width), label="index")
    seg = filled()
    seg.put_bytes(index, raw)
    assert same_value(getattr(seg, prim.get)(index), struct.unpack(prim.fmt, raw)[0])


@pytest.mark.parametrize("prim", FLOATS, ids=str)
def test_nan_layout_is_a_nan(prim):
    seg = MemorySegment(SIZE)
    getattr(seg, prim.put)(0, math.nan)
    raw = seg.get_bytes(0, prim.width)
    assert math.isnan(struct.unpack(prim.fmt, raw)[0])


# Known byte patterns, independent of struct (Flink's network code only uses big-endian).
@pytest.mark.parametrize("kind, value, big_endian", [
    ("int16", 0x0102, b"\x01\x02"),
    ("int16", -2, b"\xff\xfe"),
    ("uint16", 0xFEDC, b"\xfe\xdc"),
    ("int32", 0x01020304, b"\x01\x02\x03\x04"),
    ("int32", -(2**31), b"\x80\x00\x00\x00"),
    ("int64", 0x0102030405060708, b"\x01\x02\x03\x04\x05\x06\x07\x08"),
    ("int64", -1, b"\xff" * 8),
    ("float32", 1.0, b"\x3f\x80\x00\x00"),
    ("float32", -2.5, b"\xc0\x20\x00\x00"),
    ("float64", 1.0, b"\x3f\xf0\x00\x00\x00\x00\x00\x00"),
    ("float64", -0.0, b"\x80" + b"\x00" * 7),
])
def test_known_big_and_little_endian_bytes(kind, value, big_endian):
    seg = MemorySegment(16)
    getattr(seg, f"put_{kind}_be")(3, value)
    assert seg.get_bytes(3, len(big_endian)) == big_endian
    getattr(seg, f"put_{kind}_le")(3, value)
    assert seg.get_bytes(3, len(big_endian)) == big_endian[::-1]
    getattr(seg, f"put_{kind}")(3, value)
    native = big_endian if sys.byteorder == "big" else big_endian[::-1]
    assert seg.get_bytes(3, len(big_endian)) == native


@pytest.mark.parametrize("prim", [p for p in MULTI_BYTE if p.order == ""], ids=str)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_native_order_is_the_platform_order(prim, data):
    value = data.draw(values(prim.kind, allow_nan=False))
    seg = MemorySegment(2 * prim.width)
    getattr(seg, prim.put)(0, value)
    platform = "_le" if sys.byteorder == "little" else "_be"
    getattr(seg, f"put_{prim.kind}{platform}")(prim.width, value)
    assert seg.get_bytes(0, prim.width) == seg.get_bytes(prim.width, prim.width)


@pytest.mark.parametrize("prim", [p for p in MULTI_BYTE if p.order == "_le"], ids=str)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_little_endian_read_as_big_endian_is_byte_reversed(prim, data):
    """EndiannessAccessChecks: putXLittleEndian then getXBigEndian gives the reversed value."""
    value = data.draw(values(prim.kind, allow_nan=False), label="value")
    index = data.draw(st.integers(0, SIZE - prim.width), label="index")
    seg = MemorySegment(SIZE)
    put_le, get_be = getattr(seg, prim.put), getattr(seg, f"get_{prim.kind}_be")
    put_be, get_le = getattr(seg, f"put_{prim.kind}_be"), getattr(seg, prim.get)
    reversed_value = struct.unpack(">" + prim.code, struct.pack("<" + prim.code, value))[0]

    put_le(index, value)
    assert same_value(get_be(index), reversed_value)
    put_be(index, value)
    assert same_value(get_le(index), reversed_value)


def test_int8_and_uint8_alias_the_same_byte():
    seg = MemorySegment(4)
    seg.put_uint8(1, 0xFF)
    assert seg.get_int8(1) == -1
    seg.put_int8(2, -128)
    assert seg.get_uint8(2) == 0x80
    seg.put_int16_be(0, -1)
    assert seg.get_uint16_be(0) == 0xFFFF


# -- booleans --------------------------------------------------------------------------------------

def test_boolean_read_of_any_non_zero_byte_is_true():
    seg = MemorySegment(256)
    seg.put_bytes(0, bytes(range(256)))
    got = [seg.get_boolean(i) for i in range(256)]
    assert all(type(b) is bool for b in got)
    assert got == [False] + [True] * 255


@pytest.mark.parametrize("value, byte", [(True, 1), (False, 0), (7, 1), (0, 0), ("x", 1), ("", 0),
                                         ([0], 1), ([], 0), (None, 0), (0.5, 1)])
def test_boolean_write_is_one_or_zero(value, byte):
    seg = filled(3)
    seg.put_boolean(1, value)
    assert seg.get_bytes(0, 3) == bytes([SENTINEL, byte, SENTINEL])


# -- bounds ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("prim", PRIMS, ids=str)
def test_first_and_last_valid_index(prim, new_segment):
    seg = new_segment(SIZE)
    first, last = 0, SIZE - prim.width
    one = True if prim.kind == "boolean" else 1
    for index in (first, last):
        getattr(seg, prim.put)(index, one)
        assert getattr(seg, prim.get)(index) == one
    assert seg.get_bytes(0, prim.width) == struct.pack(prim.fmt, one)
    assert seg.get_bytes(last, prim.width) == struct.pack(prim.fmt, one)


@pytest.mark.parametrize("prim", PRIMS, ids=str)
@pytest.mark.parametrize("op", ["get", "put"])
def test_out_of_bounds_index_raises_index_error_naming_index_and_size(prim, op):
    seg = filled()
    method = getattr(seg, getattr(prim, op))
    args = () if op == "get" else (0,)
    for index in bad_indices(prim.width):
        with pytest.raises(IndexError) as exc:
            method(index, *args)
        message = str(exc.value)
        assert mentions(message, index), message
        assert mentions(message, SIZE), message
    assert seg.get_bytes(0, SIZE) == bytes([SENTINEL]) * SIZE


@pytest.mark.parametrize("prim", PRIMS, ids=str)
def test_out_of_bounds_on_every_segment_kind(prim, new_segment):
    seg = new_segment(SIZE)
    for index in (-1, SIZE - prim.width + 1, SIZE):
        with pytest.raises(IndexError):
            getattr(seg, prim.get)(index)
        with pytest.raises(IndexError):
            getattr(seg, prim.put)(index, 0)


@pytest.mark.parametrize("prim", [PRIMS[0], Prim("int64", "_be")], ids=str)
@pytest.mark.parametrize("index", [2**63, 2**64, -(2**63) - 1, 10**30])
def test_index_beyond_ssize_t_is_rejected(prim, index):
    seg = MemorySegment(SIZE)
    with pytest.raises((IndexError, OverflowError)):
        getattr(seg, prim.get)(index)
    with pytest.raises((IndexError, OverflowError)):
        getattr(seg, prim.put)(index, 0)


@pytest.mark.parametrize("index", [1.0, "1", None, 1 + 0j])
def test_index_must_be_an_integer(index):
    seg = MemorySegment(SIZE)
    with pytest.raises(TypeError):
        seg.get_int32_be(index)
    with pytest.raises(TypeError):
        seg.put_int32_be(index, 0)


def test_index_accepts_objects_with_index():
    seg = MemorySegment(SIZE)
    seg.put_int32_be(np.int64(4), 77)
    assert seg.get_int32_be(np.uint8(4)) == 77


# -- value ranges ----------------------------------------------------------------------------------

@pytest.mark.parametrize("prim", INTEGERS, ids=str)
def test_extreme_integer_values_are_stored(prim):
    seg = MemorySegment(SIZE)
    for value in INT_RANGES[prim.kind]:
        getattr(seg, prim.put)(2, value)
        assert getattr(seg, prim.get)(2) == value
        assert seg.get_bytes(2, prim.width) == struct.pack(prim.fmt, value)


@pytest.mark.parametrize("prim", INTEGERS, ids=str)
def test_out_of_range_integer_value_raises_overflow_error(prim):
    lo, hi = INT_RANGES[prim.kind]
    seg = filled()
    for value in (lo - 1, hi + 1, lo - 2**70, hi + 2**70):
        with pytest.raises(OverflowError):
            getattr(seg, prim.put)(0, value)
    assert seg.get_bytes(0, SIZE) == bytes([SENTINEL]) * SIZE


@pytest.mark.parametrize("prim", INTEGERS, ids=str)
def test_integer_put_rejects_non_numbers(prim):
    seg = filled()
    for value in ("1", None, b"\x01", [1]):
        with pytest.raises(TypeError):
            getattr(seg, prim.put)(0, value)
    assert seg.get_bytes(0, SIZE) == bytes([SENTINEL]) * SIZE


def test_integer_put_rejects_floats_instead_of_truncating_them():
    """A float is not an integer: ``struct.pack('>i', 3.9)`` and ``bytearray([3.9])`` refuse it,
    Flink's ``putInt(int, int)`` cannot even be called with one. Silently storing 3 for 3.9 loses
    data, so every integer ``put_*`` must raise TypeError (checked for all of them at once)."""
    truncating = []
    for prim in INTEGERS:
        seg = filled()
        for value in (3.9, 1.0):
            try:
                getattr(seg, prim.put)(0, value)
            except TypeError:
                continue
            truncating.append(
                f"{prim.put}(0, {value!r}) stored {getattr(seg, prim.get)(0)!r}")
    assert not truncating, "integer puts accepted floats:\n" + "\n".join(truncating)


@pytest.mark.parametrize("prim", FLOATS, ids=str)
def test_float_put_accepts_ints_and_rejects_non_numbers(prim):
    seg = MemorySegment(SIZE)
    getattr(seg, prim.put)(0, 3)
    assert getattr(seg, prim.get)(0) == 3.0
    for value in ("1.0", None, [1.0]):
        with pytest.raises(TypeError):
            getattr(seg, prim.put)(0, value)
    with pytest.raises(OverflowError):
        getattr(seg, prim.put)(0, 2**1100)


# -- model-based: random writes compared with a bytearray ------------------------------------------

class SegmentMachine(RuleBasedStateMachine):
    """Random puts of every kind at random (often unaligned) offsets, checked against a model."""

    def __init__(self):
        super().__init__()
        self.seg = MemorySegment(SIZE)
        self.other = MemorySegment(SIZE)
        self.model = bytearray(SIZE)
        self.other_model = bytearray(SIZE)

    @rule(data=st.data(), prim=st.sampled_from(PRIMS))
    def put_primitive(self, data, prim):
        value = data.draw(values(prim.kind, allow_nan=False), label="value")
        index = data.draw(st.integers(0, SIZE - prim.width), label="index")
        getattr(self.seg, prim.put)(index, value)
        struct.pack_into(prim.fmt, self.model, index, value)

    @rule(data=st.data(), prim=st.sampled_from(PRIMS))
    def get_primitive(self, data, prim):
        index = data.draw(st.integers(0, SIZE - prim.width), label="index")
        want = struct.unpack_from(prim.fmt, self.model, index)[0]
        if prim.kind == "boolean":
            want = self.model[index] != 0
        assert same_value(getattr(self.seg, prim.get)(index), want)

    @rule(data=st.data(), payload=st.binary(max_size=SIZE))
    def put_bytes(self, data, payload):
        src_off = data.draw(st.integers(0, len(payload)), label="source_offset")
        n = data.draw(st.integers(0, min(len(payload) - src_off, SIZE)), label="length")
        index = data.draw(st.integers(0, SIZE - n), label="index")
        assert self.seg.put_bytes(index, payload, src_off, n) == n
        self.model[index:index + n] = payload[src_off:src_off + n]

    @rule(data=st.data())
    def copy_within(self, data):
        n = data.draw(st.integers(0, SIZE), label="n")
        src = data.draw(st.integers(0, SIZE - n), label="src")
        dst = data.draw(st.integers(0, SIZE - n), label="dst")
        self.seg.copy_to(src, self.seg, dst, n)
        self.model[dst:dst + n] = self.model[src:src + n]

    @rule(data=st.data())
    def swap_with_other(self, data):
        n = data.draw(st.integers(0, SIZE), label="n")
        a = data.draw(st.integers(0, SIZE - n), label="offset")
        b = data.draw(st.integers(0, SIZE - n), label="other_offset")
        self.seg.swap_bytes(self.other, a, b, n)
        mine, theirs = self.model[a:a + n], self.other_model[b:b + n]
        self.model[a:a + n], self.other_model[b:b + n] = theirs, mine

    @rule(data=st.data())
    def write_through_wrap(self, data):
        n = data.draw(st.integers(0, SIZE), label="n")
        index = data.draw(st.integers(0, SIZE - n), label="index")
        payload = data.draw(st.binary(min_size=n, max_size=n), label="payload")
        with self.seg.wrap(index, n) as view:
            view[:] = payload
        self.model[index:index + n] = payload

    @invariant()
    def contents_match(self):
        assert self.seg.get_bytes(0, SIZE) == bytes(self.model)
        assert self.other.get_bytes(0, SIZE) == bytes(self.other_model)


def test_random_operation_sequences_match_a_bytearray_model():
    run_state_machine_as_test(
        SegmentMachine, settings=settings(max_examples=150, stateful_step_count=40, deadline=None))
