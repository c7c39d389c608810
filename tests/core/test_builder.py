"""Tests of the BufferBuilder / BufferConsumer hand-off (Flink ``BufferBuilderAndConsumerTest``).

Covers commit visibility, appends over capacity and with offsets, every kind of source buffer,
consumer creation and copies, finish detection (a consumer notices "finished" only once it has
read up to the finish point), trimming, reference counting back to the pool, static-size
consumers, a writer thread against a reader thread, and a Hypothesis model of
append/commit/build/finish sequences.
"""

from __future__ import annotations

import array
import queue
import random
import struct
import sys
import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flinknet import IllegalStateError, SegmentFreedError
from flinknet.core import (
    FREEING_BUFFER_RECYCLER,
    BufferBuilder,
    BufferConsumer,
    DataType,
    MemorySegment,
    NetworkBuffer,
    ReadOnlySlicedNetworkBuffer,
)
from tests.helpers import RecordingRecycler

BUFFER_INT_SIZE = 10
BUFFER_SIZE = BUFFER_INT_SIZE * 4


# --- helpers -------------------------------------------------------------------------------------


def ints(*values):
    """Big-endian int32s, as Flink's ``toByteBuffer(int...)``."""
    return struct.pack(f">{len(values)}i", *values)


def build_bytes(consumer):
    """Build one slice, check it, return its bytes and recycle it."""
    piece = consumer.build()
    assert isinstance(piece, ReadOnlySlicedNetworkBuffer)
    assert not piece.is_recycled
    data = piece.to_bytes()
    assert piece.size == piece.readable_bytes == len(data)
    piece.recycle()
    return data


def assert_content(consumer, expected, recycler=None):
    """Flink's ``assertContent(consumer, ints...)``: not finished, next slice holds ``expected``."""
    assert not consumer.is_finished
    piece = consumer.build()
    assert not piece.is_recycled
    assert piece.to_bytes() == expected
    assert piece.size == len(expected)
    if recycler is not None:
        assert piece.recycler is recycler
    piece.recycle()


@pytest.fixture
def recycler():
    return RecordingRecycler()


@pytest.fixture
def builders(recycler):
    """Factory of builders over fresh segments; closes every builder at teardown."""
    made = []

    def make(size=BUFFER_SIZE):
        builder = BufferBuilder(MemorySegment(size), recycler)
        made.append(builder)
        return builder

    yield make
    for builder in made:
        builder.close()


@pytest.fixture
def consumers():
    """Registry of consumers closed at teardown (the test may close them earlier)."""
    made = []
    yield made.append
    for consumer in made:
        consumer.close()


def new_pair(builders, consumers, size=BUFFER_SIZE):
    builder = builders(size)
    consumer = builder.create_buffer_consumer()
    consumers(consumer)
    return builder, consumer


# --- construction --------------------------------------------------------------------------------


def test_new_builder_state(recycler):
    segment = MemorySegment(BUFFER_SIZE)
    with BufferBuilder(segment, recycler) as builder:
        assert builder.max_capacity == BUFFER_SIZE
        assert builder.writable_bytes == BUFFER_SIZE
        assert builder.committed_bytes == 0
        assert not builder.is_full
        assert not builder.is_finished
        assert not builder.is_closed
        assert builder.data_type is DataType.DATA_BUFFER
    assert builder.is_closed
    assert recycler.segments == [segment]


def test_builder_rejects_bad_arguments(recycler):
    with pytest.raises(TypeError):
        BufferBuilder(None, recycler)
    with pytest.raises(TypeError):
        BufferBuilder(MemorySegment(8), None)
    segment = MemorySegment(8)
    segment.free()
    with pytest.raises(SegmentFreedError):
        BufferBuilder(segment, recycler)
    assert recycler.calls == 0


def test_builder_init_twice_is_refused(builders):
    builder = builders()
    with pytest.raises(IllegalStateError):
        builder.__init__(MemorySegment(8), FREEING_BUFFER_RECYCLER)


# --- reference counting --------------------------------------------------------------------------


def test_reference_counting(builders, recycler):
    builder = builders()
    consumer = builder.create_buffer_consumer()
    assert builder.append_and_commit(ints(1, 2, 3)) == 12
    builder.close()

    piece = consumer.build()
    assert not piece.is_recycled
    assert piece.ref_count == 2  # consumer + slice
    piece.recycle()
    assert not piece.is_recycled
    consumer.close()
    assert piece.is_recycled
    assert consumer.is_recycled
    assert recycler.calls == 1


def test_recycle_without_consumer(recycler):
    builder = BufferBuilder(MemorySegment(BUFFER_SIZE), recycler)
    builder.close()
    assert recycler.calls == 1
    builder.close()  # idempotent
    assert recycler.calls == 1


def test_recycle_consumer_and_builder(recycler):
    builder = BufferBuilder(MemorySegment(BUFFER_SIZE), recycler)
    consumer = builder.create_buffer_consumer()
    builder.close()
    assert recycler.calls == 0
    consumer.close()
    assert recycler.calls == 1
    consumer.close()  # idempotent
    assert recycler.calls == 1


@pytest.mark.parametrize("order", [
    ("builder", "consumer", "slice"),
    ("slice", "consumer", "builder"),
    ("consumer", "slice", "builder"),
])
def test_recycling_returns_segment_to_pool_exactly_once(make_pool, order):
    nbp = make_pool(4, 64)
    lbp = nbp.create_buffer_pool(1, 4)
    builder = lbp.request_buffer_builder()
    assert builder is not None
    held = lbp.requested_segments
    assert lbp.used_buffers == 1
    consumer = builder.create_buffer_consumer()
    builder.append_and_commit(b"abc")
    builder.finish()
    piece = consumer.build()
    assert piece.ref_count == 3
    owners = {"builder": builder.close, "consumer": consumer.close, "slice": piece.recycle}
    for i, name in enumerate(order):
        assert lbp.used_buffers == 1
        owners[name]()
        assert piece.ref_count == 2 - i
    assert piece.is_recycled
    assert lbp.used_buffers == 0
    assert lbp.available_segments == lbp.requested_segments == held
    # nothing more comes back on repeated closes
    builder.close()
    consumer.close()
    assert lbp.available_segments == held
    lbp.lazy_destroy()
    assert nbp.is_whole


def test_builder_dropped_without_close_returns_its_reference(make_pool):
    nbp = make_pool(4, 64)
    lbp = nbp.create_buffer_pool(1, 4)
    builder = lbp.request_buffer_builder()
    consumer = builder.create_buffer_consumer()
    builder.append_and_commit(b"xyz")
    del builder
    assert lbp.used_buffers == 1
    assert build_bytes(consumer) == b"xyz"
    consumer.close()
    assert lbp.used_buffers == 0

    builder = lbp.request_buffer_builder()
    assert lbp.used_buffers == 1
    del builder
    assert lbp.used_buffers == 0


def test_consumer_dropped_without_close_returns_its_reference(make_pool):
    nbp = make_pool(4, 64)
    lbp = nbp.create_buffer_pool(1, 4)
    builder = lbp.request_buffer_builder()
    consumer = builder.create_buffer_consumer()
    copy = consumer.copy()
    del consumer, copy
    assert lbp.used_buffers == 1
    builder.close()
    assert lbp.used_buffers == 0


# --- appending -----------------------------------------------------------------------------------


def test_append(builders, consumers, recycler):
    builder, consumer = new_pair(builders, consumers)
    data = ints(0, 1, 2, 3, 42)
    assert builder.append_and_commit(data) == len(data)
    assert not builder.is_full
    assert builder.committed_bytes == len(data)
    assert_content(consumer, data, recycler)


def test_multiple_appends(builders, consumers):
    builder, consumer = new_pair(builders, consumers)
    builder.append_and_commit(ints(0, 1))
    builder.append_and_commit(ints(2))
    builder.append_and_commit(ints(3, 42))
    assert_content(consumer, ints(0, 1, 2, 3, 42))


def test_append_without_commit_is_invisible(builders, consumers):
    builder, consumer = new_pair(builders, consumers)
    assert builder.append(ints(7)) == 4
    assert builder.committed_bytes == 4  # Flink's getCommittedBytes is the writer's position
    assert not consumer.is_data_available
    assert_content(consumer, b"")
    builder.commit()
    assert consumer.is_data_available
    assert_content(consumer, ints(7))
    assert not consumer.is_data_available


def test_multiple_not_committed_appends(builders, consumers):
    builder, consumer = new_pair(builders, consumers)
    builder.append(ints(0, 1))
    builder.append(ints(2))
    builder.append(ints(3, 42))
    assert_content(consumer, b"")
    builder.commit()
    assert_content(consumer, ints(0, 1, 2, 3, 42))


def test_commit_publishes_only_what_was_appended_before(builders, consumers):
    builder, consumer = new_pair(builders, consumers)
    builder.append(b"ab")
    builder.commit()
    builder.append(b"cd")
    assert_content(consumer, b"ab")
    builder.commit()
    assert_content(consumer, b"cd")


def test_append_over_size(builders, consumers):
    data = ints(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 42)
    builder, consumer = new_pair(builders, consumers)
    assert builder.append_and_commit(data) == BUFFER_SIZE
    assert builder.is_full
    assert builder.writable_bytes == 0
    assert_content(consumer, ints(0, 1, 2, 3, 4, 5, 6, 7, 8, 9))
    assert builder.append(b"more") == 0
    assert builder.append_and_commit(data) == 0

    # continue with the rest in the next builder, as the record writer does
    builder2, consumer2 = new_pair(builders, consumers)
    assert builder2.append_and_commit(data, BUFFER_SIZE) == 4
    assert not builder2.is_full
    assert_content(consumer2, ints(42))


@pytest.mark.parametrize("offset, expected", [(0, b"hello"), (2, b"llo"), (5, b"")])
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_append_with_offset(builders, consumers, kind, offset, expected):
    builder, consumer = new_pair(builders, consumers)
    assert builder.append_and_commit(kind(b"hello"), offset) == len(expected)
    assert_content(consumer, expected)


@pytest.mark.parametrize("offset", [-1, 6, 2**40])
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_append_offset_out_of_bounds(builders, consumers, kind, offset):
    builder, consumer = new_pair(builders, consumers)
    with pytest.raises(IndexError):
        builder.append(kind(b"hello"), offset)
    assert builder.committed_bytes == 0


def _numpy_source():
    return np.arange(3, dtype=">i4")


SOURCES = {
    "bytes": lambda: (b"\x01\x02\x03", b"\x01\x02\x03"),
    "bytes_subclass": lambda: (type("B", (bytes,), {})(b"\x04\x05"), b"\x04\x05"),
    "bytearray": lambda: (bytearray(b"\x06\x07"), b"\x06\x07"),
    "memoryview": lambda: (memoryview(b"abcdef")[1:4], b"bcd"),
    "numpy": lambda: (_numpy_source(), ints(0, 1, 2)),
    "numpy_2d": lambda: (np.arange(6, dtype=np.uint8).reshape(2, 3), bytes(range(6))),
    "array": lambda: (array.array("B", [9, 8, 7]), b"\x09\x08\x07"),
    "empty": lambda: (b"", b""),
    "segment": lambda: (MemorySegment.wrap_copy(b"seg"), b"seg"),
}


@pytest.mark.parametrize("make_source", SOURCES.values(), ids=SOURCES.keys())
def test_append_sources(builders, consumers, make_source):
    source, expected = make_source()
    builder, consumer = new_pair(builders, consumers)
    assert builder.append_and_commit(source) == len(expected)
    assert_content(consumer, expected)


def test_append_from_a_buffer_and_a_slice(builders, consumers, recycler):
    buffer = NetworkBuffer(MemorySegment.wrap_copy(b"0123456789"), recycler, size=10)
    buffer.reader_index = 2
    builder, consumer = new_pair(builders, consumers)
    builder.append(buffer)
    builder.append(buffer.read_only_slice(5, 3))
    builder.commit()
    assert_content(consumer, b"23456789" + b"567")
    buffer.recycle()


def test_append_rejects_non_buffers_and_non_contiguous(builders, consumers):
    builder, consumer = new_pair(builders, consumers)
    with pytest.raises(TypeError):
        builder.append("text")
    with pytest.raises(TypeError):
        builder.append(None)
    with pytest.raises((ValueError, BufferError)):
        builder.append(np.arange(8, dtype=np.uint8)[::2])
    assert builder.committed_bytes == 0


def test_append_large_source_releasing_the_gil(builders, consumers):
    size = 600 * 1024  # above the 256 KiB threshold at which the copy releases the GIL
    data = random.Random(7).randbytes(size + 1000)
    builder, consumer = new_pair(builders, consumers, size=size)
    assert builder.append_and_commit(data) == size
    assert builder.is_full
    assert_content(consumer, data[:size])


def test_appended_bytes_land_in_the_segment(recycler):
    segment = MemorySegment(16)
    with BufferBuilder(segment, recycler) as builder:
        builder.append(b"abc")
        builder.append(b"de")
        assert segment.get_bytes(0, 5) == b"abcde"


# --- consumers -----------------------------------------------------------------------------------


def test_creating_buffer_consumer_twice(builders, consumers):
    builder, _ = new_pair(builders, consumers)
    with pytest.raises(IllegalStateError):
        builder.create_buffer_consumer()
    with pytest.raises(IllegalStateError):
        builder.create_buffer_consumer_from_beginning()


def test_creating_consumer_from_beginning_twice(builders, consumers):
    builder = builders()
    consumers(builder.create_buffer_consumer_from_beginning())
    with pytest.raises(IllegalStateError):
        builder.create_buffer_consumer()


def test_refused_second_consumer_takes_no_reference(builders, consumers, recycler):
    builder, consumer = new_pair(builders, consumers)
    with pytest.raises(IllegalStateError):
        builder.create_buffer_consumer()
    builder.close()
    consumer.close()
    assert recycler.calls == 1


def test_consumer_of_closed_builder_is_refused(builders, recycler):
    builder = builders()
    builder.close()
    with pytest.raises(IllegalStateError):
        builder.create_buffer_consumer()
    assert recycler.calls == 1


def test_consumer_starts_at_current_position(builders, consumers):
    builder = builders()
    builder.append_and_commit(ints(0, 1))
    builder.append(ints(2))  # appended, not committed: still before the consumer's start
    consumer = builder.create_buffer_consumer()
    consumers(consumer)
    assert consumer.current_reader_position == 12
    builder.append_and_commit(ints(3))
    assert_content(consumer, ints(3))


def test_consumer_from_beginning(builders, consumers):
    builder = builders()
    builder.append_and_commit(ints(0, 1))
    builder.append(ints(2))
    consumer = builder.create_buffer_consumer_from_beginning()
    consumers(consumer)
    assert consumer.current_reader_position == 0
    assert_content(consumer, ints(0, 1))
    builder.commit()
    assert_content(consumer, ints(2))


def test_copy(builders, consumers):
    builder, consumer1 = new_pair(builders, consumers)
    builder.append_and_commit(ints(0, 1))
    consumer2 = consumer1.copy()
    consumers(consumer2)
    builder.append_and_commit(ints(2))

    assert_content(consumer1, ints(0, 1, 2))
    assert_content(consumer2, ints(0, 1, 2))

    consumer3 = consumer1.copy()
    consumers(consumer3)
    builder.append_and_commit(ints(3, 42))
    consumer4 = consumer1.copy()
    consumers(consumer4)

    for c in (consumer1, consumer2, consumer3, consumer4):
        assert_content(c, ints(3, 42))


def test_copies_advance_independently(builders, consumers, recycler):
    builder, consumer = new_pair(builders, consumers)
    builder.append_and_commit(b"abc")
    copy = consumer.copy()
    consumers(copy)
    assert copy.current_reader_position == consumer.current_reader_position == 0
    assert build_bytes(consumer) == b"abc"
    assert copy.current_reader_position == 0
    assert copy.is_data_available and not consumer.is_data_available
    builder.append_and_commit(b"de")
    assert build_bytes(copy) == b"abcde"
    assert build_bytes(consumer) == b"de"
    builder.close()
    consumer.close()
    assert recycler.calls == 0
    copy.close()
    assert recycler.calls == 1


def test_copy_with_reader_position(builders, consumers):
    builder, consumer = new_pair(builders, consumers)
    builder.append_and_commit(b"abcdef")
    assert build_bytes(consumer) == b"abcdef"
    copy = consumer.copy_with_reader_position(2)
    consumers(copy)
    assert copy.current_reader_position == 2
    assert build_bytes(copy) == b"cdef"
    assert build_bytes(consumer) == b""


def test_copy_adds_a_reference(builders, consumers):
    builder, consumer = new_pair(builders, consumers)
    piece = consumer.build()
    assert piece.ref_count == 3
    copy = consumer.copy()
    assert piece.ref_count == 4
    copy.close()
    assert piece.ref_count == 3
    piece.recycle()


def test_copy_of_closed_consumer_is_refused(builders, consumers):
    builder, consumer = new_pair(builders, consumers)
    consumer.close()
    with pytest.raises(IllegalStateError):
        consumer.copy()
    with pytest.raises(IllegalStateError):
        consumer.copy_with_reader_position(0)


def test_build_after_close_is_refused(builders, consumers):
    builder, consumer = new_pair(builders, consumers)
    builder.append_and_commit(b"a")
    consumer.close()
    assert consumer.is_closed
    with pytest.raises(IllegalStateError):
        consumer.build()


def test_build_empty_buffer(builders, recycler):
    # Flink buildEmptyBuffer / BufferBuilderTestUtils.buildSingleBuffer.
    builder = builders()
    with builder.create_buffer_consumer() as consumer:
        piece = consumer.build()
    assert consumer.is_closed
    assert piece.size == 0
    assert piece.to_bytes() == b""
    assert piece.recycler is recycler
    assert piece.data_type is DataType.DATA_BUFFER
    piece.recycle()


def test_building_buffer_multiple_times(builders):
    with builders() as builder:
        with builder.create_buffer_consumer() as consumer:
            builder.append_and_commit(ints(0, 1))
            builder.append_and_commit(ints(2))
            assert_content(consumer, ints(0, 1, 2))

            builder.append_and_commit(ints(3, 42))
            builder.append_and_commit(ints(44))
            assert_content(consumer, ints(3, 42, 44))

            values = []
            while not builder.is_full:
                builder.append_and_commit(ints(1337))
                values.append(1337)
            assert_content(consumer, ints(*values))
    assert builder.is_closed


def test_built_slices_offsets_and_sharing(builders, consumers):
    builder, consumer = new_pair(builders, consumers)
    builder.append_and_commit(b"abc")
    first = consumer.build()
    builder.append_and_commit(b"defg")
    second = consumer.build()
    assert first.memory_segment is second.memory_segment
    assert (first.memory_segment_offset, first.size) == (0, 3)
    assert (second.memory_segment_offset, second.size) == (3, 4)
    with memoryview(second) as view:
        assert view.readonly
        assert bytes(view) == b"defg"
    first.recycle()
    second.recycle()


# --- finishing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("writes", [0, BUFFER_INT_SIZE // 2, BUFFER_INT_SIZE],
                         ids=["empty", "partial", "full"])
def test_is_finished(builders, consumers, writes):
    builder, consumer = new_pair(builders, consumers)
    for _ in range(writes):
        assert builder.append_and_commit(ints(42)) == 4
    expected = writes * 4

    assert not builder.is_finished
    assert not consumer.is_finished
    assert consumer.written_bytes == 0

    build_bytes(consumer)
    assert not builder.is_finished
    assert not consumer.is_finished
    assert consumer.written_bytes == expected

    assert builder.finish() == expected
    assert builder.is_finished
    assert not consumer.is_finished  # not seen until the next refresh
    assert consumer.written_bytes == expected

    assert builder.finish() == expected
    assert builder.is_finished
    assert not consumer.is_finished
    assert consumer.written_bytes == expected

    assert build_bytes(consumer) == b""
    assert consumer.is_finished
    assert consumer.written_bytes == expected


def test_finish_commits_pending_appends(builders, consumers):
    builder, consumer = new_pair(builders, consumers)
    builder.append(b"abc")
    assert builder.finish() == 3
    assert consumer.is_data_available
    assert build_bytes(consumer) == b"abc"
    assert consumer.is_finished
    assert not consumer.is_data_available


def test_consumer_sees_finished_with_the_last_bytes(builders, consumers):
    builder, consumer = new_pair(builders, consumers)
    builder.append_and_commit(b"ab")
    builder.append(b"cd")
    builder.finish()
    assert build_bytes(consumer) == b"abcd"
    assert consumer.is_finished


def test_empty_finished_builder_is_finished(builders, consumers):
    # FINISHED_EMPTY: finished with zero bytes must not read as "0 bytes committed".
    builder, consumer = new_pair(builders, consumers)
    assert builder.finish() == 0
    assert not consumer.is_data_available
    assert build_bytes(consumer) == b""
    assert consumer.is_finished
    assert consumer.written_bytes == 0


@pytest.mark.parametrize("method", ["append", "append_and_commit"])
def test_append_after_finish_raises(builders, consumers, method):
    builder, consumer = new_pair(builders, consumers)
    builder.append_and_commit(b"a")
    builder.finish()
    with pytest.raises(IllegalStateError):
        getattr(builder, method)(b"b")
    with pytest.raises(IllegalStateError):
        getattr(builder, method)(b"")
    assert builder.committed_bytes == 1
    assert build_bytes(consumer) == b"a"


@pytest.mark.parametrize("method", ["append", "append_and_commit"])
def test_append_after_close_raises(builders, method):
    builder = builders()
    builder.close()
    with pytest.raises(IllegalStateError):
        getattr(builder, method)(b"b")


def test_commit_after_finish_changes_nothing(builders, consumers):
    builder, consumer = new_pair(builders, consumers)
    builder.append_and_commit(b"abc")
    builder.finish()
    builder.commit()
    assert build_bytes(consumer) == b"abc"
    assert consumer.is_finished


def test_finish_after_close_still_reports_size(builders, consumers):
    builder, consumer = new_pair(builders, consumers)
    builder.append_and_commit(b"abc")
    builder.close()
    assert builder.finish() == 3
    assert build_bytes(consumer) == b"abc"
    assert consumer.is_finished


# --- capacity ------------------------------------------------------------------------------------


def test_writable_bytes(builders):
    builder = builders()
    assert builder.writable_bytes == builder.max_capacity == BUFFER_SIZE
    data = ints(1, 2, 3)
    builder.append(data)
    assert builder.writable_bytes == BUFFER_SIZE - len(data)
    builder.commit()
    assert builder.writable_bytes == BUFFER_SIZE - len(data)


def test_writable_bytes_when_full(builders):
    builder = builders()
    builder.append(bytes(BUFFER_SIZE * 2))
    assert builder.writable_bytes == 0
    assert builder.is_full


@pytest.mark.parametrize("written, new_size, expected", [
    (0, 10, 10),  # within bounds
    (8, 4, 8),  # below what is written: clamps to written
    (8, 8, 8),
    (0, BUFFER_SIZE * 2, BUFFER_SIZE),  # above the segment: clamps to the segment size
    (8, -5, 8),  # negative: clamps to written
    (0, -1, 0),
    (0, 0, 0),
    (BUFFER_SIZE, 1, BUFFER_SIZE),
])
def test_trim(builders, consumers, written, new_size, expected):
    builder, consumer = new_pair(builders, consumers)
    builder.append_and_commit(bytes(range(written)))
    builder.trim(new_size)
    assert builder.max_capacity == expected
    assert builder.writable_bytes == expected - written
    assert builder.is_full == (expected == written)
    assert builder.append_and_commit(bytes(BUFFER_SIZE)) == expected - written
    assert builder.is_full
    assert len(build_bytes(consumer)) == expected


def test_trim_can_raise_capacity_again(builders):
    builder = builders()
    builder.trim(4)
    assert builder.max_capacity == 4
    builder.trim(20)
    assert builder.max_capacity == 20
    builder.trim(BUFFER_SIZE + 1)
    assert builder.max_capacity == BUFFER_SIZE


# --- static-size consumers -----------------------------------------------------------------------


def test_static_consumer(recycler):
    buffer = NetworkBuffer(MemorySegment.wrap_copy(b"event!!!"), recycler,
                           data_type=DataType.EVENT_BUFFER, size=8)
    consumer = BufferConsumer(buffer, 8)
    assert consumer.is_finished
    assert consumer.is_data_available
    assert consumer.written_bytes == 8
    assert not consumer.is_buffer
    assert consumer.data_type is DataType.EVENT_BUFFER
    piece = consumer.build()
    assert piece.to_bytes() == b"event!!!"
    assert piece.data_type is DataType.EVENT_BUFFER
    assert consumer.is_finished
    assert not consumer.is_data_available
    assert build_bytes(consumer) == b""
    piece.recycle()
    assert not buffer.is_recycled
    consumer.close()  # the consumer took over the caller's reference
    assert buffer.is_recycled
    assert recycler.calls == 1


def test_static_consumer_of_zero_bytes(recycler):
    buffer = NetworkBuffer(MemorySegment(8), recycler)
    with BufferConsumer(buffer, 0) as consumer:
        assert consumer.is_finished
        assert not consumer.is_data_available
        assert consumer.written_bytes == 0
        assert build_bytes(consumer) == b""
        assert consumer.is_finished
    assert recycler.calls == 1


def test_static_consumer_size_smaller_than_buffer(recycler):
    buffer = NetworkBuffer(MemorySegment.wrap_copy(b"abcdef"), recycler, size=6)
    with BufferConsumer(buffer, 4) as consumer:
        assert build_bytes(consumer) == b"abcd"
    assert recycler.calls == 1


@pytest.mark.parametrize("size", [-1, 9])
def test_static_consumer_size_bounds(recycler, size):
    buffer = NetworkBuffer(MemorySegment(8), recycler)
    with pytest.raises(ValueError):
        BufferConsumer(buffer, size)
    assert buffer.ref_count == 1
    buffer.recycle()


def test_static_consumer_of_recycled_buffer_is_refused(recycler):
    buffer = NetworkBuffer(MemorySegment(8), recycler)
    buffer.recycle()
    with pytest.raises(IllegalStateError):
        BufferConsumer(buffer, 0)


def test_static_consumer_copy(recycler):
    buffer = NetworkBuffer(MemorySegment.wrap_copy(b"abcd"), recycler, size=4)
    consumer = BufferConsumer(buffer, 4)
    copy = consumer.copy()
    assert copy.is_finished
    assert build_bytes(consumer) == b"abcd"
    assert build_bytes(copy) == b"abcd"
    consumer.close()
    assert recycler.calls == 0
    copy.close()
    assert recycler.calls == 1


# --- skip, data type, availability ---------------------------------------------------------------


def test_skip(builders, consumers):
    builder, consumer = new_pair(builders, consumers)
    builder.append_and_commit(b"abcdef")
    consumer.skip(2)
    assert consumer.current_reader_position == 2
    assert build_bytes(consumer) == b"cdef"
    builder.append_and_commit(b"gh")
    consumer.skip(0)
    consumer.skip(2)
    assert build_bytes(consumer) == b""


@pytest.mark.parametrize("n", [-1, 4])
def test_skip_bounds(builders, consumers, n):
    builder, consumer = new_pair(builders, consumers)
    builder.append_and_commit(b"abc")
    builder.append(b"uncommitted")
    with pytest.raises(ValueError):
        consumer.skip(n)
    assert consumer.current_reader_position == 0
    assert build_bytes(consumer) == b"abc"


def test_skip_refreshes_finished(builders, consumers):
    builder, consumer = new_pair(builders, consumers)
    builder.append(b"abc")
    builder.finish()
    consumer.skip(3)
    assert consumer.is_finished
    assert not consumer.is_data_available


def test_data_type_propagates_to_slices(builders, consumers):
    builder, consumer = new_pair(builders, consumers)
    assert consumer.data_type is DataType.DATA_BUFFER and consumer.is_buffer
    builder.append_and_commit(b"a")
    before = consumer.build()
    builder.data_type = DataType.EVENT_BUFFER
    assert builder.data_type is DataType.EVENT_BUFFER
    assert consumer.data_type is DataType.EVENT_BUFFER
    assert not consumer.is_buffer
    builder.append_and_commit(b"b")
    after = consumer.build()
    assert after.data_type is DataType.EVENT_BUFFER and not after.is_buffer
    assert before.data_type is DataType.DATA_BUFFER  # copied when built
    builder.data_type = 8
    assert builder.data_type is DataType.DATA_BUFFER_WITH_CLEAR_END
    before.recycle()
    after.recycle()


@pytest.mark.parametrize("value", [-1, 14, 2.5])
def test_builder_data_type_rejects_unknown_ordinals(builders, value):
    builder = builders()
    with pytest.raises((ValueError, TypeError)):
        builder.data_type = value
    assert builder.data_type is DataType.DATA_BUFFER


FLOAT_ARGUMENT_CALLS = {
    "trim": lambda builder, consumer: builder.trim(5.5),
    "append_offset": lambda builder, consumer: builder.append(b"ab", 0.5),
    "skip": lambda builder, consumer: consumer.skip(1.5),
    "copy_with_reader_position": lambda builder, consumer: consumer.copy_with_reader_position(1.5),
    "static_consumer_size": lambda builder, consumer: _static_consumer_with_size(2.5),
}


def _static_consumer_with_size(size):
    # A failed constructor does not take over the buffer's reference: give it back here.
    buffer = NetworkBuffer(MemorySegment(8), FREEING_BUFFER_RECYCLER)
    try:
        return BufferConsumer(buffer, size)
    except BaseException:
        buffer.recycle()
        raise


@pytest.mark.parametrize("call", FLOAT_ARGUMENT_CALLS.values(), ids=FLOAT_ARGUMENT_CALLS.keys())
def test_integer_arguments_reject_floats(builders, consumers, call):
    """Positions and sizes are integers (operator.index): no silent truncation."""
    builder, consumer = new_pair(builders, consumers)
    builder.append_and_commit(b"abc")
    with pytest.raises(TypeError):
        result = call(builder, consumer)
        if isinstance(result, BufferConsumer):
            result.close()
    assert builder.max_capacity == BUFFER_SIZE
    assert builder.committed_bytes == 3
    assert consumer.current_reader_position == 0


def test_is_data_available_tracks_the_live_marker(builders, consumers):
    builder, consumer = new_pair(builders, consumers)
    assert not consumer.is_data_available
    builder.append(b"a")
    assert not consumer.is_data_available
    builder.commit()
    assert consumer.is_data_available  # without a build in between
    assert consumer.written_bytes == 0  # written_bytes is as last seen
    build_bytes(consumer)
    assert not consumer.is_data_available
    assert consumer.written_bytes == 1


def test_context_managers(recycler):
    with BufferBuilder(MemorySegment(16), recycler) as builder:
        assert not builder.is_closed
        with builder.create_buffer_consumer() as consumer:
            builder.append_and_commit(b"x")
            assert build_bytes(consumer) == b"x"
        assert consumer.is_closed
        assert recycler.calls == 0
    assert builder.is_closed
    assert recycler.calls == 1


def test_context_manager_closes_on_error(recycler):
    with pytest.raises(KeyError):
        with BufferBuilder(MemorySegment(16), recycler) as builder:
            raise KeyError
    assert builder.is_closed and recycler.calls == 1


def test_pool_builder_uses_pool_segments(make_pool):
    nbp = make_pool(2, 32)
    lbp = nbp.create_buffer_pool(1, 2)
    with lbp.request_buffer_builder() as builder:
        assert builder.max_capacity == 32
        with builder.create_buffer_consumer() as consumer:
            builder.append_and_commit(b"pool")
            piece = consumer.build()
            assert piece.recycler is lbp
            assert piece.to_bytes() == b"pool"
            piece.recycle()
    assert lbp.used_buffers == 0


# --- writer thread vs. reader thread -------------------------------------------------------------


# Generous bounds (not assertions): the healthy run takes a fraction of a second. A requester that
# misses its wake-up sleeps until REQUEST_TIMEOUT, longer than JOIN_TIMEOUT (one deadline for both
# threads), so such a stall fails the test instead of merely slowing it down.
REQUEST_TIMEOUT = 10.0
JOIN_TIMEOUT = 8.0


def test_writer_and_reader_threads(make_pool):
    """One thread appends random chunks over many pooled builders; another reassembles them.

    The writer commits at random points and sometimes finishes a builder early; the reader builds
    whatever is committed while the writer goes on. A short switch interval makes the two threads
    interleave often. No timing is asserted: the threads must finish, and the reassembled stream
    must equal the written one with every segment back in the pool.
    """
    rng = random.Random(20240601)
    data = rng.randbytes(8 * 1024 * 1024)
    source = memoryview(data)
    nbp = make_pool(6, 512)
    lbp = nbp.create_buffer_pool(4, 4, max_overdraft_buffers=0)
    handoff = queue.Queue()
    stop = threading.Event()
    received = bytearray()
    errors = []
    stats = {"builders": 0, "slices": 0}

    def writer():
        try:
            wrng = random.Random(1)
            pos = 0
            while pos < len(data) and not stop.is_set():
                builder = lbp.request_buffer_builder_blocking(timeout=REQUEST_TIMEOUT)
                try:
                    stats["builders"] += 1
                    handoff.put(builder.create_buffer_consumer())
                    while pos < len(data) and not stop.is_set():
                        chunk = wrng.randint(1, 400)
                        pos += builder.append(source[:pos + chunk], pos)
                        if wrng.random() < 0.3:
                            builder.commit()
                        if wrng.random() < 0.05:
                            time.sleep(0)  # let the reader build while this builder is open
                        if builder.is_full or wrng.random() < 0.01:
                            break
                finally:
                    builder.finish()
                    builder.close()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            handoff.put(None)

    def reader():
        try:
            while True:
                consumer = handoff.get(timeout=REQUEST_TIMEOUT + JOIN_TIMEOUT)
                if consumer is None:
                    return
                with consumer:
                    while not stop.is_set():
                        piece = consumer.build()
                        stats["slices"] += 1
                        with memoryview(piece) as view:
                            received.extend(view)
                        piece.recycle()
                        if consumer.is_finished:
                            break
                        if not consumer.is_data_available:
                            time.sleep(0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, name="writer", daemon=True),
               threading.Thread(target=reader, name="reader", daemon=True)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        deadline = time.monotonic() + JOIN_TIMEOUT
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        finished = not any(t.is_alive() for t in threads)
        if not finished:
            # Stop both threads so that they release everything before the fixtures check.
            stop.set()
            for t in threads:
                t.join(timeout=REQUEST_TIMEOUT + JOIN_TIMEOUT)
    finally:
        sys.setswitchinterval(interval)
    source.release()
    assert finished, (
        f"writer/reader did not finish within {JOIN_TIMEOUT} s (stuck in "
        f"request_buffer_builder_blocking while the pool was available?): {stats}, {lbp!r}")
    assert not errors, errors
    assert len(received) == len(data)
    assert bytes(received) == data
    assert stats["builders"] >= len(data) // 512
    assert stats["slices"] > stats["builders"]  # the reader did build from open builders
    assert lbp.used_buffers == 0
    assert lbp.available_segments == lbp.requested_segments
    lbp.lazy_destroy()
    assert nbp.is_whole


def test_available_future_not_lost_when_recycle_races_its_creation(make_pool):
    """Deterministic form of the writer/reader race above.

    A writer finds the pool empty and asks for its availability future; while that future is
    being created (Python code, so another thread may run), the reader recycles a buffer. The pool
    is then available, so the future the writer waits on must complete (Flink: an available
    AvailabilityHelper hands out a completed future); otherwise the writer sleeps forever
    (``request_buffer_builder_blocking()`` without timeout) although a buffer is free.
    """
    nbp = make_pool(2, 64)
    lbp = nbp.create_buffer_pool(1, 1, max_overdraft_buffers=0)
    held = lbp.request_buffer_builder()
    assert lbp.request_buffer_builder() is None
    assert not lbp.is_available
    fired = []

    def recycle_during_future_creation(frame, event, arg):
        if event == "call" and frame.f_code is Future.__init__.__code__ and not fired:
            fired.append(True)
            held.close()  # what the reader thread does at that moment

    sys.setprofile(recycle_during_future_creation)
    try:
        future = lbp.get_available_future()
    finally:
        sys.setprofile(None)
    if not fired:
        # The pool runs no Python code here any more, so the race cannot be staged this way:
        # check the plain hand-off instead.
        assert not future.done()
        held.close()
    assert lbp.is_available
    assert future.done(), "pool is available but the future handed out will never complete"


# --- model-based ---------------------------------------------------------------------------------

_OPS = st.one_of(
    st.tuples(st.just("append"), st.binary(max_size=24)),
    st.tuples(st.just("append_and_commit"), st.binary(max_size=24)),
    st.tuples(st.just("commit")),
    st.tuples(st.just("finish")),
    st.tuples(st.just("build"), st.integers(0, 3)),
    st.tuples(st.just("skip"), st.integers(0, 3), st.integers(0, 8)),
    st.tuples(st.just("copy"), st.integers(0, 3)),
    st.tuples(st.just("trim"), st.integers(-4, 80)),
    st.tuples(st.just("data_type"), st.sampled_from(list(DataType))),
)


@settings(max_examples=300, deadline=None)
@given(segment_size=st.integers(0, 64), from_beginning=st.booleans(),
       ops=st.lists(_OPS, max_size=40))
def test_builder_consumer_model(segment_size, from_beginning, ops):
    """Random operation sequences against a model of written / committed / read bytes."""
    recycler = RecordingRecycler()
    segment = MemorySegment(segment_size)
    builder = BufferBuilder(segment, recycler)
    first = (builder.create_buffer_consumer_from_beginning() if from_beginning
             else builder.create_buffer_consumer())
    # model
    written = bytearray()
    committed = 0
    finished = False
    capacity = segment_size
    data_type = DataType.DATA_BUFFER
    readers = [[first, 0, False]]  # consumer, reader position, finished as last seen

    try:
        for op in ops:
            kind = op[0]
            if kind in ("append", "append_and_commit"):
                payload = op[1]
                if finished:
                    with pytest.raises(IllegalStateError):
                        getattr(builder, kind)(payload)
                    continue
                n = getattr(builder, kind)(payload)
                fit = min(len(payload), capacity - len(written))
                assert n == fit
                written += payload[:fit]
                if kind == "append_and_commit":
                    committed = len(written)
            elif kind == "commit":
                builder.commit()
                if not finished:
                    committed = len(written)
            elif kind == "finish":
                assert builder.finish() == len(written)
                finished = True
                committed = len(written)
            elif kind == "build":
                entry = readers[op[1] % len(readers)]
                piece = entry[0].build()
                assert piece.to_bytes() == bytes(written[entry[1]:committed])
                assert piece.memory_segment_offset == entry[1]
                assert piece.data_type is data_type
                piece.recycle()
                entry[1] = committed
                entry[2] = finished
            elif kind == "skip":
                entry = readers[op[1] % len(readers)]
                n = op[2]
                if n > committed - entry[1]:
                    with pytest.raises(ValueError):
                        entry[0].skip(n)
                else:
                    entry[0].skip(n)
                    entry[1] += n
                entry[2] = finished  # skip refreshes the marker either way
            elif kind == "copy":
                entry = readers[op[1] % len(readers)]
                copy = entry[0].copy()
                readers.append([copy, entry[1], finished])
            elif kind == "trim":
                builder.trim(op[1])
                capacity = min(max(op[1], len(written)), segment_size)
            elif kind == "data_type":
                builder.data_type = op[1]
                data_type = op[1]

            # invariants after every operation
            assert builder.committed_bytes == len(written)
            assert builder.max_capacity == capacity
            assert builder.writable_bytes == capacity - len(written)
            assert builder.is_full == (len(written) == capacity)
            assert builder.is_finished == finished
            assert bytes(segment.get_bytes(0, len(written))) == bytes(written)
            for consumer, position, seen_finished in readers:
                assert consumer.current_reader_position == position
                assert consumer.is_data_available == (position < committed)
                assert consumer.is_finished == seen_finished
                assert consumer.data_type is data_type
    finally:
        builder.close()
        for consumer, _, _ in readers:
            consumer.close()
    assert recycler.segments == [segment]
