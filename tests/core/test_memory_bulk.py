"""MemorySegment bulk operations: get_bytes, get_into, put_bytes, copy_to, compare, equal_to,
swap_bytes and wrap (Flink ``MemorySegmentTestBase``: bulk byte-array and ByteBuffer transfers,
their out-of-bounds cases, ``copyTo``, ``compare`` with different lengths, ``swapBytes``).

Every range argument is checked on both sides of its bound, and every failed call is checked to
leave the segment (and the foreign buffer) untouched.
"""

from __future__ import annotations

import array
import random
import re
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flinknet._core.memory import MemorySegment
from tests.helpers import contents, pattern, segment_with

SIZE = 97


def mentions(message: str, number: int) -> bool:
    return re.search(rf"(?<![\d-]){re.escape(str(number))}(?!\d)", message) is not None


def sign(x: int) -> int:
    return (x > 0) - (x < 0)


# Ranges [offset, offset + length) that do not fit in a segment of `size` bytes.
def bad_ranges(size: int) -> list[tuple[int, int]]:
    return [
        (-1, 1), (-1, 0), (0, -1), (1, -1), (size, 1), (size - 3, 4), (0, size + 1), (1, size),
        (size + 1, 0), (-size, size), (2**31 - 1, 1), (1, 2**31 - 1),
        (sys.maxsize, 1), (1, sys.maxsize), (sys.maxsize, sys.maxsize),
        (-sys.maxsize - 1, 1), (0, -sys.maxsize - 1),
    ]


BAD_RANGES = bad_ranges(SIZE)


@pytest.fixture(params=["unpooled", "wrap_copy", "pooled"])
def new_segment(request, make_pool):
    """Factory of segments of one kind filled with `data`; pooled ones are recycled at teardown."""
    pooled = []

    def factory(data: bytes) -> MemorySegment:
        if request.param == "unpooled":
            return segment_with(data)
        if request.param == "wrap_copy":
            return MemorySegment.wrap_copy(b"<<" + data + b">>", 2, 2 + len(data))
        nbp = make_pool(2, segment_size=len(data))
        seg = nbp.request_pooled_memory_segment()
        seg.put_bytes(0, data)
        pooled.append((nbp, seg))
        return seg

    yield factory
    for nbp, seg in pooled:
        nbp.recycle_pooled_memory_segment(seg)


# -- get_bytes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("index, length", [(0, 0), (0, SIZE), (5, 10), (SIZE - 1, 1), (SIZE, 0),
                                           (13, SIZE - 13)])
def test_get_bytes(new_segment, index, length):
    data = pattern(SIZE)
    seg = new_segment(data)
    got = seg.get_bytes(index, length)
    assert type(got) is bytes
    assert got == data[index:index + length]


@pytest.mark.parametrize("index, length", BAD_RANGES)
def test_get_bytes_out_of_range(index, length):
    seg = segment_with(pattern(SIZE))
    with pytest.raises(IndexError) as exc:
        seg.get_bytes(index, length)
    assert mentions(str(exc.value), index)
    assert mentions(str(exc.value), SIZE)


def test_get_bytes_returns_a_copy():
    seg = segment_with(b"abcd")
    got = seg.get_bytes(0, 4)
    seg.put_uint8(0, ord("z"))
    assert got == b"abcd"


def test_range_error_message_does_not_wrap_around():
    """The message must describe the requested range: computing offset + length in C overflows
    for huge offsets (signed overflow, undefined behaviour) and prints a negative range end."""
    seg = MemorySegment(SIZE)
    wrong = []
    for offset, length in [(sys.maxsize, 1), (sys.maxsize - 3, 8), (2**62, 2**62)]:
        calls = {
            "get_bytes": lambda: seg.get_bytes(offset, length),
            "put_bytes": lambda: seg.put_bytes(offset, b"x" * 8, 0, min(length, 8)),
            "copy_to": lambda: seg.copy_to(offset, MemorySegment(SIZE), 0, length),
            "wrap": lambda: seg.wrap(offset, length),
        }
        for op, call in calls.items():
            with pytest.raises(IndexError) as exc:
                call()
            message = str(exc.value)
            assert mentions(message, offset), message
            if any(n.startswith("-") for n in re.findall(r"-?\d+", message)):
                wrong.append(f"{op}({offset}, {length}): {message}")
    assert not wrong, "negative numbers in messages of non-negative ranges:\n" + "\n".join(wrong)


# -- get_into --------------------------------------------------------------------------------------

TARGETS = {
    "bytearray": lambda n: bytearray(n),
    "memoryview": lambda n: memoryview(bytearray(n)),
    "numpy-uint8": lambda n: np.zeros(n, dtype=np.uint8),
    "array": lambda n: array.array("B", bytes(n)),
    "segment": lambda n: MemorySegment(n),
}


def target_bytes(target) -> bytes:
    if isinstance(target, MemorySegment):
        return contents(target)
    return bytes(memoryview(target).cast("B"))


@pytest.mark.parametrize("kind", sorted(TARGETS))
def test_get_into_writable_targets(kind):
    data = pattern(SIZE)
    seg = segment_with(data)
    target = TARGETS[kind](40)
    assert seg.get_into(7, target, 5, 30) == 30
    assert target_bytes(target) == bytes(5) + data[7:37] + bytes(5)


def test_get_into_default_length_fills_the_rest_of_the_target():
    data = pattern(SIZE)
    seg = segment_with(data)
    target = bytearray(b"-" * 20)
    assert seg.get_into(10, target) == 20
    assert target == data[10:30]
    assert seg.get_into(50, target, 15) == 5
    assert target == data[10:25] + data[50:55]
    assert seg.get_into(0, target, 20) == 0


def test_get_into_explicit_none_length_is_the_default():
    seg = segment_with(pattern(SIZE))
    target = bytearray(8)
    assert seg.get_into(1, target, 2, None) == 6
    assert target == bytes(2) + pattern(SIZE)[1:7]


def test_get_into_chunks_reassemble_the_segment(new_segment):
    """Flink's testByteBufferGet: transfer the segment in random chunks into a larger target."""
    data = pattern(SIZE, seed=3)
    seg = new_segment(data)
    target = bytearray(3 * SIZE)
    rng = random.Random(5)
    pos = 0
    while pos < SIZE:
        n = min(rng.randrange(SIZE // 10), SIZE - pos)
        assert seg.get_into(pos, target, 2 * SIZE + pos, n) == n
        pos += n
    assert target == bytes(2 * SIZE) + data


def test_get_into_a_numpy_array_of_wider_items_uses_its_bytes():
    seg = segment_with(bytes(range(16)))
    target = np.zeros(4, dtype="<u4")
    assert seg.get_into(0, target) == 16
    assert target.tolist() == [0x03020100, 0x07060504, 0x0B0A0908, 0x0F0E0D0C]


def _readonly_numpy():
    a = np.zeros(16, dtype=np.uint8)
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("target", [
    lambda: bytes(16),
    lambda: memoryview(bytes(16)),
    lambda: memoryview(bytearray(16)).toreadonly(),
    _readonly_numpy,
], ids=["bytes", "memoryview-of-bytes", "readonly-memoryview", "readonly-numpy"])
def test_get_into_read_only_target_is_rejected(target):
    seg = segment_with(pattern(SIZE))
    with pytest.raises((BufferError, ValueError)):
        seg.get_into(0, target(), 0, 4)


@pytest.mark.parametrize("target", [
    lambda: memoryview(bytearray(32))[::2],
    lambda: np.zeros(32, dtype=np.uint8)[::2],
], ids=["memoryview", "numpy"])
def test_get_into_non_contiguous_target_is_rejected(target):
    seg = segment_with(pattern(SIZE))
    with pytest.raises((BufferError, ValueError)):
        seg.get_into(0, target(), 0, 4)


@pytest.mark.parametrize("target", [None, 5, "text", [0, 0, 0]])
def test_get_into_non_buffer_target_is_rejected(target):
    with pytest.raises(TypeError):
        segment_with(pattern(SIZE)).get_into(0, target)


@pytest.mark.parametrize("target_offset, length", [
    (0, 17), (1, 16), (16, 1), (17, 0), (-1, 4), (0, -1), (5, -5), (sys.maxsize, 1),
    (1, sys.maxsize), (-sys.maxsize - 1, 1), (17, None), (sys.maxsize, None),
])
def test_get_into_target_too_small_or_negative(target_offset, length):
    seg = segment_with(pattern(SIZE))
    target = bytearray(b"=" * 16)
    with pytest.raises(IndexError) as exc:
        seg.get_into(0, target, target_offset, length)
    assert mentions(str(exc.value), target_offset)
    assert mentions(str(exc.value), 16)
    assert target == bytearray(b"=" * 16)
    target.extend(b"!")  # the failed call released its export of the target


@pytest.mark.parametrize("index, length", BAD_RANGES)
def test_get_into_segment_range_out_of_bounds(index, length):
    seg = segment_with(pattern(SIZE))
    target = bytearray(b"=" * (2 * SIZE))
    if 0 <= length <= len(target):
        with pytest.raises(IndexError) as exc:
            seg.get_into(index, target, 0, length)
        assert mentions(str(exc.value), index)
        assert mentions(str(exc.value), SIZE)
    else:
        with pytest.raises(IndexError):
            seg.get_into(index, target, 0, length)
    assert target == bytearray(b"=" * (2 * SIZE))


# -- put_bytes -------------------------------------------------------------------------------------

SOURCES = {
    "bytes": bytes,
    "bytearray": bytearray,
    "memoryview": lambda b: memoryview(bytearray(b)),
    "readonly-memoryview": lambda b: memoryview(b),
    "memoryview-slice": lambda b: memoryview(b"##" + b + b"##")[2:-2],
    "numpy-uint8": lambda b: np.frombuffer(b, dtype=np.uint8).copy(),
    "readonly-numpy": lambda b: np.frombuffer(b, dtype=np.uint8),
    "array": lambda b: array.array("B", b),
    "segment": segment_with,
}


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_put_bytes_sources(kind):
    data = pattern(40, seed=9)
    seg = MemorySegment(SIZE)
    assert seg.put_bytes(3, SOURCES[kind](data)) == 40
    assert seg.put_bytes(50, SOURCES[kind](data), 10, 20) == 20
    assert seg.put_bytes(80, SOURCES[kind](data), 25) == 15
    assert contents(seg) == (bytes(3) + data + bytes(7) + data[10:30] + bytes(10) + data[25:40]
                             + bytes(2))


def test_put_bytes_from_numpy_arrays_of_any_shape_and_dtype():
    seg = MemorySegment(SIZE)
    wide = np.arange(4, dtype=">u4")
    assert seg.put_bytes(0, wide) == 16
    assert seg.get_bytes(0, 16) == wide.tobytes()
    matrix = np.arange(12, dtype=np.int16).reshape(3, 4)
    assert seg.put_bytes(16, matrix, 4, 8) == 8
    assert seg.get_bytes(16, 8) == matrix.tobytes()[4:12]
    fortran = np.asfortranarray(np.arange(6, dtype=np.uint8).reshape(2, 3))
    with pytest.raises((BufferError, ValueError)):
        seg.put_bytes(0, fortran)


def test_put_bytes_in_chunks_then_read_back(new_segment):
    """Flink's testBulkBytePut: 200 puts of random lengths at random positions vs a model."""
    rng = random.Random(11)
    seg = new_segment(bytes(SIZE))
    model = bytearray(SIZE)
    for _ in range(200):
        n = rng.randrange(1, SIZE - 9)
        pos = rng.randrange(SIZE - n + 1)
        data = rng.randbytes((rng.randrange(3) + 1) * n)
        start = rng.randrange(len(data) - n + 1)
        assert seg.put_bytes(pos, data, start, n) == n
        model[pos:pos + n] = data[start:start + n]
    assert contents(seg) == model


@pytest.mark.parametrize("source", [
    lambda: memoryview(bytes(32))[::2],
    lambda: memoryview(np.zeros((8, 8), dtype=np.uint8)[:, ::2]),
    lambda: np.zeros(32, dtype=np.uint8)[::2],
], ids=["strided-memoryview", "2d-strided-memoryview", "strided-numpy"])
def test_put_bytes_non_contiguous_source_is_rejected(source):
    seg = MemorySegment(SIZE)
    seg.put_bytes(0, b"\x11" * SIZE)
    with pytest.raises((BufferError, ValueError)):
        seg.put_bytes(0, source())
    assert contents(seg) == b"\x11" * SIZE


@pytest.mark.parametrize("source", ["text", None, 3, [1, 2, 3], 3.5])
def test_put_bytes_non_buffer_source_is_rejected(source):
    with pytest.raises(TypeError):
        MemorySegment(SIZE).put_bytes(0, source)


@pytest.mark.parametrize("source_offset, length", [
    (0, 17), (1, 16), (16, 1), (17, 0), (17, None), (-1, 4), (-1, None), (0, -1), (5, -5),
    (sys.maxsize, 1), (1, sys.maxsize), (sys.maxsize, None), (-sys.maxsize - 1, 1),
])
def test_put_bytes_source_range_out_of_bounds(source_offset, length):
    seg = MemorySegment(SIZE)
    seg.put_bytes(0, b"\x11" * SIZE)
    source = bytearray(pattern(16))
    with pytest.raises(IndexError) as exc:
        seg.put_bytes(0, source, source_offset, length)
    assert mentions(str(exc.value), source_offset)
    assert mentions(str(exc.value), 16)
    assert contents(seg) == b"\x11" * SIZE
    source.extend(b"!")  # the failed call released its export of the source


@pytest.mark.parametrize("index, length", BAD_RANGES)
def test_put_bytes_segment_range_out_of_bounds(index, length):
    seg = MemorySegment(SIZE)
    seg.put_bytes(0, b"\x11" * SIZE)
    source = pattern(2 * SIZE)
    with pytest.raises(IndexError):
        seg.put_bytes(index, source, 0, length)
    assert contents(seg) == b"\x11" * SIZE


@pytest.mark.parametrize("index", [-1, SIZE - 15, SIZE + 1, sys.maxsize, -sys.maxsize - 1])
def test_put_bytes_default_length_must_fit(index):
    seg = MemorySegment(SIZE)
    with pytest.raises(IndexError) as exc:
        seg.put_bytes(index, pattern(16))
    assert mentions(str(exc.value), index)
    assert mentions(str(exc.value), SIZE)
    assert contents(seg) == bytes(SIZE)


@pytest.mark.parametrize("src, dst, n", [(0, 5, 20), (5, 0, 20), (0, 1, SIZE - 1),
                                         (1, 0, SIZE - 1), (10, 10, 30)])
def test_put_bytes_from_itself_behaves_like_memmove(src, dst, n):
    data = pattern(SIZE)
    seg = segment_with(data)
    assert seg.put_bytes(dst, seg, src, n) == n
    model = bytearray(data)
    model[dst:dst + n] = model[src:src + n]
    assert contents(seg) == model


def test_get_into_itself_behaves_like_memmove():
    data = pattern(SIZE)
    seg = segment_with(data)
    assert seg.get_into(0, seg, 3, 40) == 40
    model = bytearray(data)
    model[3:43] = model[0:40]
    assert contents(seg) == model


# -- copy_to ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("offset, target_offset, n", [(0, 0, SIZE), (3, 50, 40), (90, 0, 7),
                                                      (0, SIZE, 0), (SIZE, 0, 0), (40, 3, 1)])
def test_copy_to_another_segment(new_segment, offset, target_offset, n):
    data, other_data = pattern(SIZE, 1), pattern(SIZE, 2)
    seg, target = new_segment(data), segment_with(other_data)
    assert seg.copy_to(offset, target, target_offset, n) is None
    model = bytearray(other_data)
    model[target_offset:target_offset + n] = data[offset:offset + n]
    assert contents(target) == model
    assert contents(seg) == data


@pytest.mark.parametrize("offset, target_offset, n", [
    (0, 1, SIZE - 1), (1, 0, SIZE - 1), (10, 30, 50), (30, 10, 50), (0, 8, 80), (8, 0, 80),
    (20, 20, 50),
])
def test_copy_to_same_segment_overlapping(offset, target_offset, n):
    data = pattern(SIZE)
    seg = segment_with(data)
    seg.copy_to(offset, seg, target_offset, n)
    model = bytearray(data)
    model[target_offset:target_offset + n] = data[offset:offset + n]
    assert contents(seg) == model


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_copy_to_same_segment_matches_memmove_model(data):
    size = data.draw(st.integers(1, 300), label="size")
    n = data.draw(st.integers(0, size), label="n")
    src = data.draw(st.integers(0, size - n), label="src")
    dst = data.draw(st.integers(0, size - n), label="dst")
    initial = pattern(size, seed=size)
    seg = segment_with(initial)
    seg.copy_to(src, seg, dst, n)
    model = bytearray(initial)
    model[dst:dst + n] = model[src:src + n]
    assert contents(seg) == model


@pytest.mark.parametrize("offset, n", BAD_RANGES)
def test_copy_to_source_range_out_of_bounds(offset, n):
    seg, target = segment_with(pattern(SIZE, 1)), segment_with(pattern(2 * SIZE, 2))
    with pytest.raises(IndexError):
        seg.copy_to(offset, target, 0, n)
    assert contents(target) == pattern(2 * SIZE, 2)


@pytest.mark.parametrize("target_offset, n", BAD_RANGES)
def test_copy_to_target_range_out_of_bounds(target_offset, n):
    seg, target = segment_with(pattern(2 * SIZE, 1)), segment_with(pattern(SIZE, 2))
    with pytest.raises(IndexError) as exc:
        seg.copy_to(0, target, target_offset, n)
    if 0 <= n <= 2 * SIZE:
        assert mentions(str(exc.value), target_offset)
        assert mentions(str(exc.value), SIZE)
    assert contents(target) == pattern(SIZE, 2)


@pytest.mark.parametrize("target", [None, bytearray(SIZE), memoryview(bytearray(SIZE))])
def test_copy_to_needs_a_segment(target):
    with pytest.raises(TypeError):
        MemorySegment(SIZE).copy_to(0, target, 0, 1)


# -- compare / equal_to ----------------------------------------------------------------------------

def test_compare_is_unsigned():
    a, b = segment_with(b"\x80"), segment_with(b"\x7f")
    assert a.compare(b, 0, 0, 1) > 0
    assert b.compare(a, 0, 0, 1) < 0
    high, low = segment_with(b"\x00\xff\x00"), segment_with(b"\x00\x01\xff")
    assert high.compare(low, 0, 0, 3) > 0
    assert low.compare(high, 0, 0, 3) < 0


def test_compare_equal_ranges_is_zero():
    a = segment_with(b"xxhello")
    b = segment_with(b"hello")
    assert a.compare(b, 2, 0, 5) == 0
    assert a.compare(a, 0, 0, 7) == 0
    assert a.compare(b, 0, 0, 0) == 0
    assert a.compare(b, 2, 0, 5, 5) == 0


def test_compare_first_difference_decides_not_later_bytes():
    a = segment_with(b"\x01\x00\x00\x00\x00\x00\x00\x00\xff")
    b = segment_with(b"\x02\x00\x00\x00\x00\x00\x00\x00\x00")
    assert a.compare(b, 0, 0, 9) < 0
    # a difference after 8 equal bytes (Flink compares 8-byte words first)
    c = segment_with(bytes(8) + b"\x01" + bytes(8))
    d = segment_with(bytes(8) + b"\x00" + b"\xff" * 8)
    assert c.compare(d, 0, 0, 17) > 0
    assert d.compare(c, 0, 0, 17) < 0


def test_compare_with_different_lengths_shorter_prefix_is_smaller():
    a = segment_with(b"abcdef")
    b = segment_with(b"abc")
    assert a.compare(b, 0, 0, 3, 3) == 0
    assert a.compare(b, 0, 0, 4, 3) > 0
    assert b.compare(a, 0, 0, 3, 4) < 0
    assert a.compare(b, 0, 0, 0, 1) < 0
    assert a.compare(b, 0, 0, 1, 0) > 0
    assert a.compare(b, 0, 0, 0, 0) == 0
    # a difference inside the common part wins over the lengths
    assert segment_with(b"b").compare(b, 0, 0, 1, 3) > 0
    assert b.compare(segment_with(b"b"), 0, 0, 3, 1) < 0


@settings(max_examples=300, deadline=None)
@given(left=st.binary(max_size=40), right=st.binary(max_size=40),
       pad_left=st.integers(0, 5), pad_right=st.integers(0, 5),
       same_length=st.booleans())
def test_compare_agrees_with_bytes_ordering(left, right, pad_left, pad_right, same_length):
    if same_length:
        n = min(len(left), len(right))
        left, right = left[:n], right[:n]
    a = segment_with(b"\xee" * pad_left + left + b"\x00")
    b = segment_with(b"\x11" * pad_right + right + b"\xff")
    want = sign((left > right) - (left < right))
    got = a.compare(b, pad_left, pad_right, len(left), len(right))
    assert sign(got) == want
    assert sign(b.compare(a, pad_right, pad_left, len(right), len(left))) == -want
    if same_length:
        assert sign(a.compare(b, pad_left, pad_right, len(left))) == want
        assert a.equal_to(b, pad_left, pad_right, len(left)) is (left == right)


def test_compare_returns_an_int():
    a, b = segment_with(b"a"), segment_with(b"b")
    for result in (a.compare(b, 0, 0, 1), a.compare(a, 0, 0, 1), b.compare(a, 0, 0, 1)):
        assert type(result) is int


@pytest.mark.parametrize("offset, length", BAD_RANGES)
def test_compare_out_of_range_on_this_side(offset, length):
    a, b = segment_with(pattern(SIZE)), segment_with(pattern(2 * SIZE))
    with pytest.raises(IndexError):
        a.compare(b, offset, 0, length)
    with pytest.raises(IndexError):
        a.compare(b, offset, 0, length, 0)
    with pytest.raises(IndexError):
        a.equal_to(b, offset, 0, length)


@pytest.mark.parametrize("other_offset, other_length", BAD_RANGES)
def test_compare_out_of_range_on_the_other_side(other_offset, other_length):
    a, b = segment_with(pattern(2 * SIZE)), segment_with(pattern(SIZE))
    with pytest.raises(IndexError):
        a.compare(b, 0, other_offset, 0, other_length)
    if 0 <= other_length <= 2 * SIZE:
        with pytest.raises(IndexError):
            a.compare(b, 0, other_offset, other_length)
        with pytest.raises(IndexError):
            a.equal_to(b, 0, other_offset, other_length)


def test_equal_to():
    a = segment_with(b"..hello..")
    b = segment_with(b"hello")
    assert a.equal_to(b, 2, 0, 5) is True
    assert a.equal_to(b, 2, 0, 4) is True
    assert a.equal_to(b, 1, 0, 5) is False
    assert a.equal_to(b, 0, 0, 0) is True
    assert a.equal_to(b, 9, 5, 0) is True
    assert a.equal_to(a, 0, 0, 9) is True
    assert segment_with(b"\x80").equal_to(segment_with(b"\x7f"), 0, 0, 1) is False


@pytest.mark.parametrize("op", ["compare", "equal_to", "swap_bytes"])
@pytest.mark.parametrize("other", [None, b"abc", bytearray(3)])
def test_two_segment_operations_need_a_segment(op, other):
    with pytest.raises(TypeError):
        getattr(segment_with(b"abc"), op)(other, 0, 0, 1)


# -- swap_bytes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [0, 1, 2, 7, 255, 511, 512, 513, 1000, 1023, 1024, 1025, 1537,
                                    4099])
def test_swap_bytes_exchanges_ranges(length):
    size = length + 20
    a_data, b_data = pattern(size, 1), pattern(size, 2)
    a, b = segment_with(a_data), segment_with(b_data)
    assert a.swap_bytes(b, 3, 17, length) is None
    a_model, b_model = bytearray(a_data), bytearray(b_data)
    a_model[3:3 + length], b_model[17:17 + length] = b_data[17:17 + length], a_data[3:3 + length]
    assert contents(a) == a_model
    assert contents(b) == b_model


def test_swap_bytes_on_segment_kinds(new_segment):
    a_data, b_data = pattern(SIZE, 1), pattern(SIZE, 2)
    a, b = new_segment(a_data), new_segment(b_data)
    a.swap_bytes(b, 0, 0, SIZE)
    assert contents(a) == b_data and contents(b) == a_data


@pytest.mark.parametrize("length", [1, 300, 512, 513, 700])
def test_swap_bytes_within_one_segment_disjoint_ranges(length):
    size = 2 * length + 9
    data = pattern(size)
    seg = segment_with(data)
    seg.swap_bytes(seg, 2, length + 5, length)
    model = bytearray(data)
    model[2:2 + length], model[length + 5:2 * length + 5] = (data[length + 5:2 * length + 5],
                                                             data[2:2 + length])
    assert contents(seg) == model


def test_swap_bytes_twice_restores_both():
    a_data, b_data = pattern(2000, 1), pattern(2000, 2)
    a, b = segment_with(a_data), segment_with(b_data)
    a.swap_bytes(b, 11, 900, 1033)
    a.swap_bytes(b, 11, 900, 1033)
    assert contents(a) == a_data and contents(b) == b_data


@pytest.mark.parametrize("offset, length", BAD_RANGES)
def test_swap_bytes_out_of_range_changes_nothing(offset, length):
    a, b = segment_with(pattern(SIZE, 1)), segment_with(pattern(2 * SIZE, 2))
    with pytest.raises(IndexError):
        a.swap_bytes(b, offset, 0, length)
    with pytest.raises(IndexError):
        b.swap_bytes(a, 0, offset, length)
    assert contents(a) == pattern(SIZE, 1)
    assert contents(b) == pattern(2 * SIZE, 2)


# -- wrap ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("offset, length", [(0, SIZE), (5, 10), (SIZE, 0), (0, 0), (SIZE - 1, 1)])
def test_wrap_is_a_writable_view_sharing_memory(new_segment, offset, length):
    data = pattern(SIZE)
    seg = new_segment(data)
    view = seg.wrap(offset, length)
    try:
        assert isinstance(view, memoryview)
        assert not view.readonly
        assert view.nbytes == length and view.format == "B" and view.contiguous
        assert bytes(view) == data[offset:offset + length]
        if length:
            view[0] = 0xEE
            assert seg.get_uint8(offset) == 0xEE
            seg.put_uint8(offset + length - 1, 0x42)
            assert view[-1] == 0x42
    finally:
        view.release()


@pytest.mark.parametrize("offset, length", BAD_RANGES)
def test_wrap_out_of_range(offset, length):
    seg = MemorySegment(SIZE)
    with pytest.raises(IndexError) as exc:
        seg.wrap(offset, length)
    assert mentions(str(exc.value), offset)
    assert mentions(str(exc.value), SIZE)
    seg.free()  # a failed wrap leaves no export behind


def test_wrap_view_can_be_used_by_numpy_and_struct():
    import struct

    seg = MemorySegment(SIZE)
    with seg.wrap(8, 16) as view:
        struct.pack_into(">iq", view, 2, -7, 2**40)
        arr = np.frombuffer(view, dtype=np.uint8)
        assert arr.flags.writeable
        arr[0] = 9
        del arr
    assert seg.get_uint8(8) == 9
    assert seg.get_int32_be(10) == -7
    assert seg.get_int64_be(14) == 2**40


# -- failed bulk calls leave no export behind ------------------------------------------------------

def test_failed_bulk_calls_with_segment_buffers_release_their_exports():
    seg, other = segment_with(pattern(SIZE)), segment_with(pattern(SIZE))
    with pytest.raises(IndexError):
        seg.put_bytes(0, other, 0, SIZE + 1)
    with pytest.raises(IndexError):
        seg.get_into(0, other, 1, SIZE)
    with pytest.raises(IndexError):
        seg.put_bytes(0, seg, 5, SIZE)
    with pytest.raises(IndexError):
        seg.get_into(-1, seg)
    with pytest.raises(TypeError):
        seg.put_bytes(0, other, "0")
    seg.free()
    other.free()
    assert seg.is_freed and other.is_freed
