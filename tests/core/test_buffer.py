"""Tests of flinknet's network buffers (Flink ``io.network.buffer``: Buffer, NetworkBuffer,
ReadOnlySlicedNetworkBuffer, Buffer.DataType, BufferRecycler).

Ports the behaviours of Flink's ``NetworkBufferTest`` and ``ReadOnlySlicedBufferTest`` (reference
counting, slice forwarding and offsets, reader/writer indices, NIO views, data-type tagging) and
adds flinknet's own rule between reference counts and memoryview exports: the last ``recycle()`` is
refused with ``BufferError`` while a view over the segment is alive.

Garbage collection of un-recycled buffers is tested in ``test_buffer_gc.py`` (it needs its own
leak fixture).
"""

from __future__ import annotations

import io
import json
import pathlib

import numpy as np
import pytest

from flinknet import IllegalReferenceCountError, IllegalStateError, SegmentFreedError
from flinknet.core import (
    FREEING_BUFFER_RECYCLER,
    Buffer,
    BufferRecycler,
    DataType,
    FreeingBufferRecycler,
    MemorySegment,
    NetworkBuffer,
    ReadOnlySlicedNetworkBuffer,
)
from tests.helpers import RecordingRecycler

SEGMENT_SIZE = 64
DATA_SIZE = 10

# --- helpers -------------------------------------------------------------------------------------


def filled_segment(size=SEGMENT_SIZE):
    """A segment whose byte i is i (mod 256)."""
    return MemorySegment.wrap_copy(bytes(i % 256 for i in range(size)))


def new_buffer(size=DATA_SIZE, recycler=None, segment=None, **kwargs):
    """A NetworkBuffer of ``size`` bytes over a fresh pattern-filled segment."""
    segment = filled_segment() if segment is None else segment
    recycler = RecordingRecycler() if recycler is None else recycler
    return NetworkBuffer(segment, recycler, size=size, **kwargs)


def pattern(start, stop):
    return bytes(i % 256 for i in range(start, stop))


@pytest.fixture
def recycler():
    return RecordingRecycler()


@pytest.fixture
def buf(recycler):
    """A data buffer with DATA_SIZE bytes 0..9 written (Flink's ReadOnlySlicedBufferTest setUp).

    Recycled at teardown if the test left references.
    """
    b = new_buffer(recycler=recycler)
    yield b
    while not b.is_recycled:
        b.recycle()


# --- construction --------------------------------------------------------------------------------


def test_construction_defaults(recycler):
    segment = filled_segment()
    b = NetworkBuffer(segment, recycler)
    assert b.memory_segment is segment
    assert b.recycler is recycler
    assert b.data_type is DataType.DATA_BUFFER
    assert b.is_buffer
    assert b.size == 0
    assert b.reader_index == 0
    assert b.readable_bytes == 0
    assert b.max_capacity == SEGMENT_SIZE
    assert b.memory_segment_offset == 0
    assert not b.is_compressed
    assert b.ref_count == 1
    assert not b.is_recycled
    assert isinstance(b, Buffer)
    b.recycle()


@pytest.mark.parametrize("data_type", [DataType.EVENT_BUFFER, 2, DataType.END_OF_PARTITION, 13])
@pytest.mark.parametrize("size", [0, 1, SEGMENT_SIZE])
@pytest.mark.parametrize("compressed", [False, True])
def test_construction_arguments(recycler, data_type, size, compressed):
    b = NetworkBuffer(filled_segment(), recycler, data_type, size, compressed)
    assert b.data_type is DataType(data_type)
    assert b.size == size
    assert b.readable_bytes == size
    assert b.is_compressed is compressed
    b.recycle()


def test_construction_keyword_arguments(recycler):
    b = NetworkBuffer(segment=filled_segment(), recycler=recycler,
                      data_type=DataType.EVENT_BUFFER, size=3, is_compressed=True)
    assert (b.data_type, b.size, b.is_compressed) == (DataType.EVENT_BUFFER, 3, True)
    b.recycle()


@pytest.mark.parametrize("size", [-1, SEGMENT_SIZE + 1, 2**31 - 1])
def test_construction_rejects_size_out_of_bounds(recycler, size):
    with pytest.raises(ValueError):
        NetworkBuffer(filled_segment(), recycler, size=size)


@pytest.mark.parametrize("data_type", [-1, 14, 255])
def test_construction_rejects_unknown_data_type(recycler, data_type):
    with pytest.raises(ValueError):
        NetworkBuffer(filled_segment(), recycler, data_type=data_type)


def test_construction_rejects_none(recycler):
    with pytest.raises(TypeError):
        NetworkBuffer(None, recycler)
    with pytest.raises(TypeError):
        NetworkBuffer(filled_segment(), None)


def test_construction_rejects_freed_segment(recycler):
    segment = filled_segment()
    segment.free()
    with pytest.raises(SegmentFreedError):
        NetworkBuffer(segment, recycler)


def test_failed_construction_does_not_count_a_live_buffer(recycler):
    from flinknet._core.buffer import live_buffer_count

    before = live_buffer_count()
    for bad in ({"size": -1}, {"data_type": 99}):
        with pytest.raises(ValueError):
            NetworkBuffer(filled_segment(), recycler, **bad)
    assert live_buffer_count() == before
    assert recycler.calls == 0


def test_init_twice_is_refused(buf, recycler):
    with pytest.raises(IllegalStateError):
        buf.__init__(filled_segment(), recycler)
    assert buf.ref_count == 1


@pytest.mark.parametrize("cls", [Buffer, ReadOnlySlicedNetworkBuffer])
def test_abstract_and_slice_classes_cannot_be_constructed(cls):
    with pytest.raises(TypeError):
        cls()


# --- reference counting --------------------------------------------------------------------------


def test_retain_returns_self_and_increments(buf):
    assert buf.retain() is buf
    assert buf.ref_count == 2
    assert not buf.is_recycled
    assert buf.retain().retain() is buf
    assert buf.ref_count == 4
    for expected in (3, 2, 1):
        buf.recycle()
        assert buf.ref_count == expected


def test_recycle_at_one_hands_segment_to_recycler_once(buf, recycler):
    segment = buf.memory_segment
    buf.recycle()
    assert buf.is_recycled
    assert buf.ref_count == 0
    assert recycler.calls == 1
    assert recycler.segments[0] is segment
    assert buf.recycler is None


def test_recycler_called_only_when_last_reference_goes(buf, recycler):
    buf.retain()
    buf.retain()
    buf.recycle()
    buf.recycle()
    assert recycler.calls == 0
    buf.recycle()
    assert recycler.calls == 1


@pytest.mark.parametrize("op", ["retain", "recycle"])
def test_retain_and_recycle_at_zero_raise(buf, recycler, op):
    buf.recycle()
    with pytest.raises(IllegalReferenceCountError):
        getattr(buf, op)()
    assert buf.ref_count == 0
    assert recycler.calls == 1
    assert issubclass(IllegalReferenceCountError, IllegalStateError)


def test_recycler_sees_the_buffer_already_recycled(recycler):
    seen = []

    class Inspecting(BufferRecycler):
        def recycle(self, segment):
            seen.append((b.is_recycled, b.ref_count))

    b = new_buffer(recycler=Inspecting())
    b.recycle()
    assert seen == [(True, 0)]


def test_base_recycler_is_abstract():
    with pytest.raises(NotImplementedError):
        BufferRecycler().recycle(MemorySegment(1))


def test_freeing_recycler_frees_the_segment():
    segment = filled_segment()
    b = NetworkBuffer(segment, FREEING_BUFFER_RECYCLER, size=4)
    assert isinstance(FREEING_BUFFER_RECYCLER, FreeingBufferRecycler)
    assert b.recycler is FREEING_BUFFER_RECYCLER
    b.recycle()
    assert segment.is_freed
    with pytest.raises(SegmentFreedError):
        segment.get_uint8(0)


def test_freeing_recycler_instance_also_frees():
    segment = filled_segment()
    NetworkBuffer(segment, FreeingBufferRecycler()).recycle()
    assert segment.is_freed


# --- indices -------------------------------------------------------------------------------------


def test_set_get_size(recycler):
    b = NetworkBuffer(filled_segment(), recycler)
    assert b.size == 0
    b.size = 10
    assert b.size == 10
    assert b.reader_index == 0
    b.size = SEGMENT_SIZE
    assert b.size == SEGMENT_SIZE
    b.size = 0
    assert b.size == 0
    b.recycle()


def test_set_get_reader_index(buf):
    assert buf.reader_index == 0
    buf.reader_index = 1
    assert buf.reader_index == 1
    buf.reader_index = DATA_SIZE
    assert buf.reader_index == DATA_SIZE
    buf.reader_index = 0
    assert buf.reader_index == 0


@pytest.mark.parametrize("value", [-1, DATA_SIZE + 1, SEGMENT_SIZE])
def test_reader_index_out_of_bounds(buf, value):
    with pytest.raises(IndexError):
        buf.reader_index = value
    assert buf.reader_index == 0


@pytest.mark.parametrize("value", [-1, 2, SEGMENT_SIZE + 1])
def test_size_out_of_bounds(buf, value):
    buf.reader_index = 3
    with pytest.raises(IndexError):
        buf.size = value
    assert buf.size == DATA_SIZE


def test_size_may_equal_reader_index(buf):
    buf.reader_index = 3
    buf.size = 3
    assert buf.readable_bytes == 0


def test_readable_bytes(recycler):
    b = NetworkBuffer(filled_segment(), recycler)
    assert b.readable_bytes == 0
    b.size = 10
    assert b.readable_bytes == 10
    b.reader_index = 2
    assert b.readable_bytes == 8
    b.reader_index = 10
    assert b.readable_bytes == 0
    b.recycle()


@pytest.mark.parametrize("segment_size", [1, 100, 1024])
def test_max_capacity_is_segment_size(recycler, segment_size):
    b = NetworkBuffer(MemorySegment(segment_size), recycler, size=1)
    assert b.max_capacity == segment_size == b.memory_segment.size
    b.size = 0
    assert b.max_capacity == segment_size
    b.recycle()


# --- data type -----------------------------------------------------------------------------------


def test_data_type_setter_accepts_enum_and_int(buf):
    buf.data_type = DataType.EVENT_BUFFER
    assert buf.data_type is DataType.EVENT_BUFFER
    assert not buf.is_buffer
    buf.data_type = 1
    assert buf.data_type is DataType.DATA_BUFFER
    assert isinstance(buf.data_type, DataType)
    assert buf.is_buffer
    buf.data_type = 13
    assert buf.data_type is DataType.UNALIGNED_WATERMARK_EVENT


@pytest.mark.parametrize("ordinal", [-1, 14, 128, 2**31 - 1])
def test_data_type_setter_rejects_unknown_ordinals(buf, ordinal):
    buf.data_type = DataType.EVENT_BUFFER
    with pytest.raises(ValueError):
        buf.data_type = ordinal
    assert buf.data_type is DataType.EVENT_BUFFER


@pytest.mark.parametrize("value", ["EVENT_BUFFER", None, 2.9])
def test_data_type_setter_rejects_non_integers(buf, value):
    # An ordinal is an integer: a float must not be truncated into some other type.
    with pytest.raises(TypeError):
        buf.data_type = value
    assert buf.data_type is DataType.DATA_BUFFER


FLOAT_ARGUMENT_CALLS = {
    "size_setter": lambda b: setattr(b, "size", 2.5),
    "reader_index_setter": lambda b: setattr(b, "reader_index", 0.5),
    "constructor_size": lambda b: NetworkBuffer(filled_segment(), b.recycler, size=2.5),
    "get_nio_buffer": lambda b: b.get_nio_buffer(0.5, 1),
    "read_only_slice": lambda b: b.read_only_slice(0.5, 1),
}


@pytest.mark.parametrize("call", FLOAT_ARGUMENT_CALLS.values(), ids=FLOAT_ARGUMENT_CALLS.keys())
def test_integer_arguments_reject_floats(buf, call):
    """Indices and sizes are integers (operator.index), as for the data type: no truncation."""
    with pytest.raises(TypeError):
        result = call(buf)
        if isinstance(result, NetworkBuffer):
            result.recycle()
        elif isinstance(result, memoryview):
            result.release()
    assert (buf.reader_index, buf.size, buf.ref_count) == (0, DATA_SIZE, 1)


@pytest.mark.parametrize("data_type", list(DataType), ids=lambda t: t.name)
def test_is_buffer_per_type(recycler, data_type):
    expected = data_type in (DataType.DATA_BUFFER, DataType.DATA_BUFFER_WITH_CLEAR_END)
    b = new_buffer(recycler=recycler, data_type=data_type)
    assert b.is_buffer is expected
    assert b.data_type.is_buffer is expected
    assert b.read_only_slice().is_buffer is expected
    assert b.read_only_slice(1, 2).is_buffer is expected
    b.data_type = DataType.EVENT_BUFFER  # Flink's tagAsEvent
    assert not b.is_buffer
    b.recycle()


def test_is_compressed_setter(buf):
    buf.is_compressed = True
    assert buf.is_compressed
    buf.is_compressed = False
    assert not buf.is_compressed


# --- views ---------------------------------------------------------------------------------------


def test_memoryview_covers_readable_bytes(buf):
    buf.reader_index = 2
    with memoryview(buf) as view:
        assert len(view) == DATA_SIZE - 2
        assert view.nbytes == DATA_SIZE - 2
        assert bytes(view) == pattern(2, DATA_SIZE)
        assert not view.readonly
        assert view.format == "B"
        assert view.obj is buf


def test_memoryview_of_empty_buffer(recycler):
    b = NetworkBuffer(filled_segment(), recycler)
    with memoryview(b) as view:
        assert len(view) == 0
    b.recycle()


def test_memoryview_is_a_snapshot_of_indices(recycler):
    # Flink testGetNioBufferReadable: a view does not follow later index changes.
    b = NetworkBuffer(filled_segment(), recycler)
    with memoryview(b) as before:
        b.size = 10
        assert len(before) == 0
        with b.get_nio_buffer_readable() as after:
            assert len(after) == 10
            assert not after.readonly
    assert b.reader_index == 0 and b.size == 10
    b.recycle()


def test_memoryview_shares_memory(buf):
    segment = buf.memory_segment
    buf.reader_index = 1
    with memoryview(buf) as view:
        view[0] = 0xAB
        assert segment.get_uint8(1) == 0xAB
        segment.put_uint8(2, 0xCD)
        assert view[1] == 0xCD
    assert buf.to_bytes()[:2] == b"\xab\xcd"


def test_repeated_views_are_distinct_objects(buf):
    # Flink testGetNioBufferReadableThreadSafe / testGetNioBufferThreadSafe.
    with memoryview(buf) as a, memoryview(buf) as b:
        assert a is not b
        assert a == b
    with buf.get_nio_buffer(0, DATA_SIZE) as a, buf.get_nio_buffer(0, DATA_SIZE) as b:
        assert a is not b


def test_numpy_view_shares_memory(buf):
    arr = np.frombuffer(buf, dtype=np.uint8)
    assert arr.tolist() == list(range(DATA_SIZE))
    assert arr.flags.writeable
    arr[3] = 99
    assert buf.memory_segment.get_uint8(3) == 99
    del arr


def test_to_bytes_copies_readable_bytes(buf):
    buf.reader_index = 4
    data = buf.to_bytes()
    assert isinstance(data, bytes)
    assert data == pattern(4, DATA_SIZE)
    buf.memory_segment.put_uint8(5, 0)
    assert data == pattern(4, DATA_SIZE)
    buf.reader_index = DATA_SIZE
    assert buf.to_bytes() == b""


def test_get_nio_buffer(recycler):
    # Flink testGetNioBuffer: ranges are within the capacity, not the size.
    b = NetworkBuffer(filled_segment(), recycler)
    with b.get_nio_buffer(1, 1) as view:
        assert len(view) == 1
        assert not view.readonly
        assert bytes(view) == b"\x01"
        b.size = 10
        assert len(view) == 1
    with b.get_nio_buffer(1, 2) as view:
        assert bytes(view) == b"\x01\x02"
        view[0] = 0xEE
    assert b.memory_segment.get_uint8(1) == 0xEE
    with b.get_nio_buffer(0, SEGMENT_SIZE) as view:
        assert len(view) == SEGMENT_SIZE
    with b.get_nio_buffer(SEGMENT_SIZE, 0) as view:
        assert len(view) == 0
    assert b.reader_index == 0 and b.size == 10
    b.recycle()


@pytest.mark.parametrize("index, length", [
    (-1, 1), (0, -1), (0, SEGMENT_SIZE + 1), (SEGMENT_SIZE, 1), (1, SEGMENT_SIZE), (2**31 - 1, 1),
])
def test_get_nio_buffer_bounds(buf, index, length):
    with pytest.raises(IndexError):
        buf.get_nio_buffer(index, length)
    buf.recycle()  # nothing was left exported by the failed calls


def test_repr_names_type_and_count(buf):
    text = repr(buf)
    assert "NetworkBuffer" in text and "DATA_BUFFER" in text and "refCnt=1" in text


# --- exports vs. recycle -------------------------------------------------------------------------

VIEW_FACTORIES = {
    "memoryview": lambda b: memoryview(b),
    "nio_readable": lambda b: b.get_nio_buffer_readable(),
    "nio_range": lambda b: b.get_nio_buffer(0, 4),
    "slice_memoryview": lambda b: memoryview(b.read_only_slice(1, 3)),
    "slice_nio": lambda b: b.read_only_slice().get_nio_buffer(0, 2),
    "slice_of_slice": lambda b: memoryview(b.read_only_slice(1, 5).read_only_slice(1, 2)),
    "segment": lambda b: memoryview(b.memory_segment),
    "segment_wrap": lambda b: b.memory_segment.wrap(0, 4),
    "numpy": lambda b: np.frombuffer(b, dtype=np.uint8),
    "derived_memoryview": lambda b: memoryview(b)[1:3],
}


def _release(view):
    if isinstance(view, memoryview):
        view.release()


@pytest.mark.parametrize("make_view", VIEW_FACTORIES.values(), ids=VIEW_FACTORIES.keys())
def test_last_recycle_refused_while_exported(buf, recycler, make_view):
    view = make_view(buf)
    with pytest.raises(BufferError):
        buf.recycle()
    assert buf.ref_count == 1
    assert not buf.is_recycled
    assert recycler.calls == 0
    # still usable
    assert buf.to_bytes() == pattern(0, DATA_SIZE)
    _release(view)
    del view
    buf.recycle()
    assert recycler.calls == 1
    assert buf.is_recycled


@pytest.mark.parametrize("make_view", VIEW_FACTORIES.values(), ids=VIEW_FACTORIES.keys())
def test_recycle_through_slice_refused_while_exported(buf, recycler, make_view):
    s = buf.read_only_slice()
    view = make_view(buf)
    with pytest.raises(BufferError):
        s.recycle()
    assert s.ref_count == buf.ref_count == 1
    _release(view)
    del view
    s.recycle()
    assert buf.is_recycled and recycler.calls == 1


def test_non_last_recycle_allowed_while_exported(buf, recycler):
    buf.retain()
    with memoryview(buf):
        buf.recycle()
        assert buf.ref_count == 1
        with pytest.raises(BufferError):
            buf.recycle()
        assert buf.ref_count == 1
    buf.recycle()
    assert recycler.calls == 1


def test_recycle_refused_until_every_view_is_released(buf, recycler):
    first = memoryview(buf)
    second = buf.get_nio_buffer(0, 2)
    first.release()
    with pytest.raises(BufferError):
        buf.recycle()
    second.release()
    buf.recycle()
    assert recycler.calls == 1


def test_views_of_a_recycled_buffer_are_refused(recycler):
    b = new_buffer(recycler=recycler)
    s = b.read_only_slice(1, 3)
    b.recycle()
    for target in (b, s):
        with pytest.raises(IllegalReferenceCountError):
            memoryview(target)
        with pytest.raises(IllegalReferenceCountError):
            target.get_nio_buffer_readable()
        with pytest.raises(IllegalReferenceCountError):
            target.get_nio_buffer(0, 1)
        with pytest.raises(IllegalReferenceCountError):
            target.to_bytes()
        with pytest.raises(IllegalReferenceCountError):
            target.read_only_slice()
        with pytest.raises(IllegalReferenceCountError):
            target.read_only_slice(0, 1)
    assert recycler.calls == 1


# --- slices --------------------------------------------------------------------------------------


def test_default_slice_is_readable_bytes(buf):
    buf.reader_index = 2
    s = buf.read_only_slice()
    assert isinstance(s, ReadOnlySlicedNetworkBuffer)
    assert isinstance(s, Buffer)
    assert s.memory_segment is buf.memory_segment
    assert s.memory_segment_offset == 2
    assert s.reader_index == 0
    assert s.size == DATA_SIZE - 2
    assert s.max_capacity == DATA_SIZE - 2
    assert s.readable_bytes == DATA_SIZE - 2
    assert s.to_bytes() == pattern(2, DATA_SIZE)
    assert s.recycler is buf.recycler


def test_slice_does_not_add_a_reference(buf):
    buf.read_only_slice()
    buf.read_only_slice(1, 2)
    assert buf.ref_count == 1


@pytest.mark.parametrize("index, length", [(0, 0), (1, 2), (0, DATA_SIZE), (5, 5), (DATA_SIZE, 0)])
def test_slice_with_index_and_length(buf, index, length):
    s = buf.read_only_slice(index, length)
    assert s.memory_segment_offset == index
    assert s.size == s.max_capacity == s.readable_bytes == length
    assert s.to_bytes() == pattern(index, index + length)
    assert bytes(memoryview(s)) == pattern(index, index + length)


def test_slice_length_defaults_to_rest_of_size(buf):
    s = buf.read_only_slice(3)
    assert (s.memory_segment_offset, s.size) == (3, DATA_SIZE - 3)


def test_slice_may_exceed_size_within_capacity(recycler):
    # Flink testCreateSlice2: slicing [1, 11) of a buffer of size 2.
    b = new_buffer(size=2, recycler=recycler)
    s = b.read_only_slice(1, 10)
    assert s.reader_index == 0 and s.size == 10
    assert s.to_bytes() == pattern(1, 11)
    b.recycle()


def test_slice_indices_are_independent(buf):
    # Flink testCreateSlice1 / testGetSetReaderIndex / testGetSetSize.
    s = buf.read_only_slice()
    s2 = buf.read_only_slice(1, 2)
    buf.size = 8
    buf.reader_index = 2
    assert (s.reader_index, s.size) == (0, DATA_SIZE)
    assert (s2.reader_index, s2.size) == (0, 2)
    buf.size = DATA_SIZE + 1
    assert s.size == DATA_SIZE
    s.reader_index = 1
    s2.reader_index = 1
    assert buf.reader_index == 2
    assert s.to_bytes() == pattern(1, DATA_SIZE)
    s.size = 5
    assert buf.size == DATA_SIZE + 1
    assert s.to_bytes() == pattern(1, 5)


def test_slice_size_bounded_by_its_length(buf):
    s = buf.read_only_slice(1, 4)
    with pytest.raises(IndexError):
        s.size = 5
    with pytest.raises(IndexError):
        s.reader_index = 5
    s.size = 2
    with pytest.raises(IndexError):
        s.reader_index = 3


@pytest.mark.parametrize("first, second, offset, content", [
    # Flink testCreateSlice1..4 (parent reader index 1 for the default slices).
    (None, None, 1, pattern(1, DATA_SIZE)),
    (None, (1, 2), 2, pattern(2, 4)),
    ((1, 2), None, 1, pattern(1, 3)),
    ((1, 5), (1, 2), 2, pattern(2, 4)),
    ((2, 6), (3, 3), 5, pattern(5, 8)),
])
def test_slice_of_slice_offsets_accumulate(buf, first, second, offset, content):
    buf.reader_index = 1
    slice1 = buf.read_only_slice(*(first or ()))
    buf.reader_index = 2  # must not influence the second slice
    slice2 = slice1.read_only_slice(*(second or ()))
    assert slice2.memory_segment is slice1.memory_segment is buf.memory_segment
    assert slice1.memory_segment_offset == (first[0] if first else 1)
    assert slice2.memory_segment_offset == offset
    assert slice2.to_bytes() == content
    assert isinstance(slice2, ReadOnlySlicedNetworkBuffer)


def test_default_slice_of_slice_uses_slice_reader_index(buf):
    s = buf.read_only_slice(2, 6)
    s.reader_index = 3
    s2 = s.read_only_slice()
    assert s2.memory_segment_offset == 5
    assert s2.to_bytes() == pattern(5, 8)


def test_slice_max_capacity(buf):
    # Flink testGetMaxCapacity.
    assert buf.read_only_slice().max_capacity == DATA_SIZE
    assert buf.read_only_slice(1, 2).max_capacity == 2


@pytest.mark.parametrize("make_slice", [
    lambda b: b.read_only_slice(),
    lambda b: b.read_only_slice(1, 2),
    lambda b: b.read_only_slice(1, 5).read_only_slice(1, 2),
], ids=["default", "range", "nested"])
class TestSliceReferenceForwarding:
    """Flink testForwardsRecycleBuffer / testForwardsRetainBuffer, for nested slices too."""

    def test_recycle_slice_recycles_parent(self, buf, recycler, make_slice):
        s = make_slice(buf)
        assert not s.is_recycled
        s.recycle()
        assert s.is_recycled and buf.is_recycled
        assert recycler.calls == 1
        assert s.recycler is None
        with pytest.raises(IllegalReferenceCountError):
            s.recycle()
        with pytest.raises(IllegalReferenceCountError):
            buf.recycle()

    def test_retain_slice_visible_on_parent(self, buf, make_slice):
        s = make_slice(buf)
        assert s.ref_count == buf.ref_count == 1
        assert s.retain() is s
        assert s.ref_count == buf.ref_count == 2
        buf.retain()
        assert s.ref_count == 3
        buf.recycle()
        s.recycle()
        assert s.ref_count == buf.ref_count == 1

    def test_parent_recycle_recycles_slice(self, buf, recycler, make_slice):
        s = make_slice(buf)
        s.retain()
        buf.recycle()
        assert not s.is_recycled
        buf.recycle()
        assert s.is_recycled
        assert recycler.calls == 1
        with pytest.raises(IllegalReferenceCountError):
            s.retain()

    def test_forwards_segment_and_recycler(self, buf, recycler, make_slice):
        s = make_slice(buf)
        assert s.memory_segment is buf.memory_segment
        assert s.recycler is recycler


def test_slice_memoryview_is_read_only(buf):
    s = buf.read_only_slice(1, 3)
    with memoryview(s) as view:
        assert view.readonly
        assert bytes(view) == pattern(1, 4)
        with pytest.raises(TypeError):
            view[0] = 1
    arr = np.frombuffer(s, dtype=np.uint8)
    assert not arr.flags.writeable
    with pytest.raises(ValueError):
        arr[0] = 1
    del arr
    assert buf.to_bytes() == pattern(0, DATA_SIZE)


def test_slice_refuses_writable_export(buf):
    s = buf.read_only_slice(1, 3)
    with pytest.raises((BufferError, TypeError)):
        io.BytesIO(b"xyz").readinto(s)
    assert s.to_bytes() == pattern(1, 4)
    # the refused request left nothing exported
    buf.recycle()
    assert buf.is_recycled


def test_parent_accepts_writable_export(buf):
    assert io.BytesIO(b"xyz").readinto(buf) == 3
    assert buf.to_bytes()[:3] == b"xyz"


def test_slice_nio_buffers_are_read_only(buf):
    # Flink testGetNioBufferReadable / testGetNioBuffer on slices.
    s = buf.read_only_slice(1, 2)
    with s.get_nio_buffer_readable() as view:
        assert view.readonly and len(view) == 2
    with s.get_nio_buffer(1, 1) as view:
        assert view.readonly and bytes(view) == pattern(2, 3)
        with pytest.raises(TypeError):
            view[0] = 0
    assert (s.reader_index, s.size) == (0, 2)
    assert (buf.reader_index, buf.size) == (0, DATA_SIZE)


@pytest.mark.parametrize("index, length", [(-1, 1), (0, 3), (2, 1), (0, -1)])
def test_slice_nio_buffer_bounds(buf, index, length):
    s = buf.read_only_slice(1, 2)
    with pytest.raises(IndexError):
        s.get_nio_buffer(index, length)


def test_slice_data_type_copied_at_creation(buf):
    buf.data_type = DataType.EVENT_BUFFER
    s = buf.read_only_slice()
    buf.data_type = DataType.DATA_BUFFER
    assert s.data_type is DataType.EVENT_BUFFER
    assert not s.is_buffer
    assert buf.read_only_slice().data_type is DataType.DATA_BUFFER
    assert s.read_only_slice().data_type is DataType.EVENT_BUFFER


@pytest.mark.parametrize("index, length", [
    (-1, 1), (0, -1), (0, SEGMENT_SIZE + 1), (SEGMENT_SIZE, 1), (1, SEGMENT_SIZE), (2**31 - 1, 2),
])
def test_slice_bounds(buf, index, length):
    with pytest.raises(IndexError):
        buf.read_only_slice(index, length)
    assert buf.ref_count == 1


@pytest.mark.parametrize("index, length", [(0, 6), (3, 3), (6, 0), (-1, 1), (5, 1)])
def test_slice_of_slice_bounds(buf, index, length):
    s = buf.read_only_slice(2, 5)
    with pytest.raises(IndexError):
        s.read_only_slice(index, length)


def test_slice_reaching_capacity(buf):
    s = buf.read_only_slice(SEGMENT_SIZE - 4, 4)
    assert s.memory_segment_offset == SEGMENT_SIZE - 4
    assert s.to_bytes() == pattern(SEGMENT_SIZE - 4, SEGMENT_SIZE)


class TestCompressedSlices:
    """Compressed buffers may only be sliced whole."""

    def test_whole_slice(self, buf):
        buf.is_compressed = True
        for s in (buf.read_only_slice(), buf.read_only_slice(0, DATA_SIZE)):
            assert s.is_compressed
            assert s.to_bytes() == pattern(0, DATA_SIZE)

    @pytest.mark.parametrize("index, length",
                             [(0, 1), (0, DATA_SIZE - 1), (1, 2), (0, DATA_SIZE + 1)])
    def test_partial_slice_refused(self, buf, index, length):
        buf.is_compressed = True
        with pytest.raises(IllegalStateError):
            buf.read_only_slice(index, length)
        assert buf.ref_count == 1

    def test_partial_slice_of_whole_slice_refused(self, buf):
        buf.is_compressed = True
        s = buf.read_only_slice()
        with pytest.raises(IllegalStateError):
            s.read_only_slice(0, 2)
        assert s.read_only_slice().to_bytes() == pattern(0, DATA_SIZE)

    def test_uncompressed_slice_of_buffer_compressed_later(self, buf):
        s = buf.read_only_slice(1, 2)
        buf.is_compressed = True
        assert not s.is_compressed


# --- DataType (Flink 2.3) ------------------------------------------------------------------------

# Buffer.DataType as produced by Flink 2.3 itself (vectors/record_framing.json,
# "buffer_data_types"): name, ordinal, is_buffer, is_event, has_priority, is_blocking_upstream.
FLINK_DATA_TYPES = [
    ("NONE", 0, False, False, False, False),
    ("DATA_BUFFER", 1, True, False, False, False),
    ("EVENT_BUFFER", 2, False, True, False, False),
    ("PRIORITIZED_EVENT_BUFFER", 3, False, True, True, False),
    ("ALIGNED_CHECKPOINT_BARRIER", 4, False, True, False, True),
    ("TIMEOUTABLE_ALIGNED_CHECKPOINT_BARRIER", 5, False, True, False, True),
    ("RECOVERY_COMPLETION", 6, False, True, False, True),
    ("END_OF_SEGMENT", 7, False, True, False, False),
    ("DATA_BUFFER_WITH_CLEAR_END", 8, True, False, False, False),
    ("END_OF_DATA", 9, False, True, False, False),
    ("END_OF_PARTITION", 10, False, True, False, False),
    ("RECOVERY_METADATA", 11, False, True, False, False),
    ("ALIGNED_WATERMARK_EVENT", 12, False, True, False, True),
    ("UNALIGNED_WATERMARK_EVENT", 13, False, True, False, False),
]
_FLAGS = ("is_buffer", "is_event", "has_priority", "is_blocking_upstream")

# Flink's own vectors, committed unmodified in tests/vectors.
_VECTOR_PATH = pathlib.Path(__file__).resolve().parents[1] / "vectors" / "record_framing.json"


def _data_type_sources():
    """The literal table and Flink's own vectors."""
    literal = [dict(zip(("name", "ordinal") + _FLAGS, row)) for row in FLINK_DATA_TYPES]
    entries = json.loads(_VECTOR_PATH.read_text())["buffer_data_types"]
    return [pytest.param(literal, id="literal"), pytest.param(entries, id="vectors")]


@pytest.mark.parametrize("entries", _data_type_sources())
def test_data_type_matches_flink(entries):
    assert len(entries) == len(DataType) == 14
    assert {e["name"] for e in entries} == {t.name for t in DataType}
    for entry in entries:
        t = DataType[entry["name"]]
        assert t.value == int(t) == entry["ordinal"], t
        assert DataType(entry["ordinal"]) is t
        for flag in _FLAGS:
            assert getattr(t, flag) is entry[flag], (t, flag)


def test_literal_table_matches_vectors():
    """The literal copy above must not drift from Flink's vectors."""
    literal = [dict(zip(("name", "ordinal") + _FLAGS, row)) for row in FLINK_DATA_TYPES]
    for source in _data_type_sources():
        entries = source.values[0]
        by_name = {e["name"]: {k: e[k] for k in ("name", "ordinal") + _FLAGS} for e in entries}
        assert by_name == {e["name"]: e for e in literal}


def test_data_type_ordinals_are_contiguous():
    assert [t.value for t in DataType] == list(range(14))
    assert all(isinstance(t, int) for t in DataType)


@pytest.mark.parametrize("data_type", list(DataType), ids=lambda t: t.name)
def test_requires_announcement_only_for_timeoutable_barrier(data_type):
    assert data_type.requires_announcement is (
        data_type is DataType.TIMEOUTABLE_ALIGNED_CHECKPOINT_BARRIER)
    assert not (data_type.has_priority and data_type.requires_announcement)


@pytest.mark.parametrize("data_type", list(DataType), ids=lambda t: t.name)
def test_partial_record_allowed_only_for_data_buffer(data_type):
    assert data_type.is_partial_record_allowed is (data_type is DataType.DATA_BUFFER)


@pytest.mark.parametrize("data_type", list(DataType), ids=lambda t: t.name)
def test_buffer_and_event_are_exclusive(data_type):
    if data_type is DataType.NONE:
        assert not data_type.is_buffer and not data_type.is_event
    else:
        assert data_type.is_buffer != data_type.is_event
    if data_type.has_priority or data_type.is_blocking_upstream:
        assert data_type.is_event
