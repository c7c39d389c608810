"""RecordWriter against Flink's ``RecordWriterTest`` (emitting, broadcasting, events, flushing and
the buffer timeout of Flink's ``RecordWriter``).

Real partitions from ``make_pool`` global pools, read through their subpartition views: events
between records, event buffers shared but independent across subpartitions, explicit targets,
batch emits equal to per-record emits, random emits, availability, timeout validation, emits after
close / finish / release, and backpressure (a blocked emit, woken by a reader or by ``fail``).

Tests that Flink runs for both writer kinds (``BroadcastRecordWriterTest extends
RecordWriterTest``) are parametrized over ``KINDS``: a writer built without a selector (round
robin) and one built with a :class:`BroadcastPartitioner` (a :class:`BroadcastRecordWriter`).
"""

from __future__ import annotations

import math
import random
import struct
import threading

import numpy as np
import pytest

from flinknet import events as ev
from flinknet._core.buffer import DataType
from flinknet.errors import CancelTaskError, FlinknetError, IllegalStateError
from flinknet.partition import create_result_partition
from flinknet.partitioners import (
    BroadcastPartitioner,
    ChannelSelector,
    KeyGroupStreamPartitioner,
    RebalancePartitioner,
    RoundRobinChannelSelector,
)
from flinknet.types import ResultPartitionType
from flinknet.writer import BroadcastRecordWriter, RecordWriter, RecordWriterBuilder
from tests.helpers import Worker

SEG = 64
JOIN = 10.0
STILL_BLOCKED = 0.2  # how long a thread expected to stay blocked is given to (wrongly) finish
KINDS = ["selector", "broadcast"]


# --- helpers -------------------------------------------------------------------------------------


class Listener:
    """A BufferAvailabilityListener that counts its notifications."""

    def __init__(self):
        self._lock = threading.Lock()
        self.notifications = 0
        self.available = threading.Event()

    def notify_data_available(self, view):
        with self._lock:
            self.notifications += 1
        self.available.set()

    def notify_priority_event(self, sequence_number):
        pass


def frame(payload: bytes) -> bytes:
    """A record as it is framed in the byte stream (a big-endian int32 length, then the bytes)."""
    return struct.pack(">i", len(payload)) + payload


def drain(view) -> list[tuple[DataType, bytes]]:
    """Everything the view hands out now, as (data type, bytes); every buffer is recycled."""
    out = []
    while (bb := view.get_next_buffer()) is not None:
        try:
            out.append((bb.buffer.data_type, bb.buffer.to_bytes()))
        finally:
            bb.buffer.recycle()
    return out


def data_of(items) -> bytes:
    return b"".join(data for t, data in items if t == DataType.DATA_BUFFER)


def build_writer(partition, kind: str, timeout: float = -1) -> RecordWriter:
    builder = RecordWriterBuilder().set_timeout(timeout)
    if kind == "broadcast":
        builder.set_channel_selector(BroadcastPartitioner())
    return builder.build(partition)


class Harness:
    """Creates set-up partitions (each on its own checked global pool) and writers, and closes,
    releases and destroys all of them at the end of the test."""

    def __init__(self, make_pool):
        self._make_pool = make_pool
        self.partitions = []
        self.writers = []

    def partition(self, n: int = 2, num_segments: int = 32, segment_size: int = SEG, **kwargs):
        nbp = self._make_pool(num_segments, segment_size)
        p = create_result_partition(nbp, n, **kwargs)
        p.setup()
        self.partitions.append(p)
        return p

    def add(self, writer):
        self.writers.append(writer)
        return writer

    def close(self):
        for w in self.writers:
            w.close()
        for p in self.partitions:
            p.release()
            p.close()


@pytest.fixture
def h(make_pool):
    harness = Harness(make_pool)
    yield harness
    harness.close()


# --- events between records ----------------------------------------------------------------------


BARRIER = ev.CheckpointBarrier(2**31 - 1 + 919192, 2**31 - 1 + 18828228, ev.CheckpointOptions())


@pytest.mark.parametrize("kind", KINDS)
def test_broadcast_event_without_records_requests_no_buffer(h, kind):
    p = h.partition(4, segment_size=32)
    w = h.add(build_writer(p, kind))
    views = [p.create_subpartition_view(i, Listener()) for i in range(4)]
    w.broadcast_event(BARRIER)
    assert p.buffer_pool.used_buffers == 0
    assert p.num_buffers_out == 0
    for v in views:
        items = drain(v)
        assert [t for t, _ in items] == [DataType.ALIGNED_CHECKPOINT_BARRIER]
        assert ev.from_serialized_event(items[0][1]) == BARRIER


@pytest.mark.parametrize("kind", KINDS)
def test_broadcast_event_after_mixed_records(h, kind):
    """Flink's testBroadcastEventMixedRecords: a record smaller than a buffer, one larger, one that
    exactly fills a buffer, then an event: the records' buffers come first, the event after them in
    its own buffer, and the event requests no buffer from the pool."""
    seg = 32
    p = h.partition(4, segment_size=seg)
    w = h.add(build_writer(p, kind))
    listeners = [Listener() for _ in range(4)]
    views = [p.create_subpartition_view(i, listeners[i]) for i in range(4)]
    rng = random.Random(1)
    small = rng.randbytes(seg // 2)
    large = rng.randbytes(seg + 1)
    exact = rng.randbytes(seg - 4)  # framed: exactly one buffer
    for r in (small, large, exact):
        w.emit(r)
    used_before_event = p.buffer_pool.used_buffers
    w.broadcast_event(BARRIER)
    assert p.buffer_pool.used_buffers == used_before_event  # no buffer requested for the event
    assert all(lst.notifications >= 1 for lst in listeners)  # the event makes everything readable

    event = (DataType.ALIGNED_CHECKPOINT_BARRIER, ev.to_serialized_event(BARRIER))
    items = [drain(v) for v in views]
    for sp_items in items:
        t, data = sp_items[-1]
        assert t == DataType.ALIGNED_CHECKPOINT_BARRIER
        assert ev.from_serialized_event(data) == BARRIER
        sp_items[-1] = event  # compare the rest exactly (the event may carry padding)
    if kind == "selector":
        # Round robin from channel 0: small → 0, large → 1 (two buffers), exact → 2, none → 3.
        assert used_before_event == 4
        assert items[0] == [(DataType.DATA_BUFFER, frame(small)), event]
        assert items[1] == [(DataType.DATA_BUFFER, frame(large)[:seg]),
                            (DataType.DATA_BUFFER, frame(large)[seg:]), event]
        assert items[2] == [(DataType.DATA_BUFFER, frame(exact)), event]
        assert items[3] == [event]
    else:
        # One shared byte stream of 89 bytes: three buffers, the same in every subpartition.
        assert used_before_event == 3
        stream = frame(small) + frame(large) + frame(exact)
        chunks = [(DataType.DATA_BUFFER, stream[i:i + seg]) for i in range(0, len(stream), seg)]
        assert len(chunks) == 3
        for sp_items in items:
            assert sp_items == chunks + [event]
    assert p.buffer_pool.used_buffers == 0  # every data buffer was finished and recycled


@pytest.mark.parametrize("kind", KINDS)
def test_records_after_an_event_start_a_new_buffer(h, kind):
    p = h.partition(2)
    w = h.add(build_writer(p, kind))
    views = [p.create_subpartition_view(i, Listener()) for i in range(2)]
    w.emit(b"before", 0) if kind == "selector" else w.emit(b"before")
    w.broadcast_event(ev.EndOfSuperstepEvent())
    w.emit(b"after", 0) if kind == "selector" else w.emit(b"after")
    w.flush_all()
    items = drain(views[0])
    assert items == [(DataType.DATA_BUFFER, frame(b"before")),
                     (DataType.EVENT_BUFFER, ev.to_serialized_event(ev.EndOfSuperstepEvent())),
                     (DataType.DATA_BUFFER, frame(b"after"))]


class PriorityListener(Listener):
    def __init__(self):
        super().__init__()
        self.priority_sequence_numbers = []

    def notify_priority_event(self, sequence_number):
        self.priority_sequence_numbers.append(sequence_number)


@pytest.mark.parametrize("kind", KINDS)
def test_priority_event_overtakes_queued_records(h, kind):
    """``broadcast_event(event, is_priority=True)`` (an unaligned barrier) goes ahead of the data
    already queued, and each view's listener hears of it."""
    p = h.partition(2)
    w = h.add(build_writer(p, kind))
    listeners = [PriorityListener() for _ in range(2)]
    views = [p.create_subpartition_view(i, listeners[i]) for i in range(2)]
    records = [bytes([i]) * 70 for i in range(3)]  # 74 framed bytes each: they span buffers
    for r in records:
        w.emit(r, 0) if kind == "selector" else w.emit(r)
    barrier = ev.CheckpointBarrier(3, 0, ev.CheckpointOptions(
        target_location=b"\x00\x01\x02", alignment=ev.AlignmentType.UNALIGNED))
    w.broadcast_event(barrier, is_priority=True)
    assert [lst.priority_sequence_numbers for lst in listeners] == [[0], [0]]
    for i, v in enumerate(views):
        items = drain(v)
        assert items[0][0] == DataType.PRIORITIZED_EVENT_BUFFER
        assert ev.from_serialized_event(items[0][1]) == barrier
        expected = b"".join(frame(r) for r in records) if (i == 0 or kind == "broadcast") else b""
        assert data_of(items[1:]) == expected
        assert all(t == DataType.DATA_BUFFER for t, _ in items[1:])


def test_event_buffer_reference_counting(h):
    """Flink's testBroadcastEventBufferReferenceCounting: one serialized event shared by every
    subpartition; its buffer is recycled once every subpartition's reader recycled its slice."""
    p = h.partition(2)
    w = h.add(RecordWriter(p, timeout=-1))
    views = [p.create_subpartition_view(i, Listener()) for i in range(2)]
    w.broadcast_event(ev.EndOfSuperstepEvent())
    b0 = views[0].get_next_buffer().buffer
    b1 = views[1].get_next_buffer().buffer
    assert b0.memory_segment is b1.memory_segment
    assert b0.ref_count == 2
    b0.recycle()
    assert not b1.is_recycled
    assert ev.from_buffer(b1) == ev.EndOfSuperstepEvent()
    b1.recycle()
    assert b0.is_recycled and b1.is_recycled
    assert views[0].get_next_buffer() is None and views[1].get_next_buffer() is None


@pytest.mark.parametrize("what", ["event", "broadcast_emit"])
@pytest.mark.parametrize("kind", KINDS)
def test_broadcast_buffers_have_independent_reader_indices(h, kind, what):
    """Flink's testBroadcastEventBufferIndependence / testBroadcastEmitBufferIndependence: the
    slices read from different subpartitions may share memory but not their indices."""
    p = h.partition(2)
    w = h.add(build_writer(p, kind))
    views = [p.create_subpartition_view(i, Listener()) for i in range(2)]
    if what == "event":
        w.broadcast_event(ev.EndOfSuperstepEvent())
    else:
        w.broadcast_emit(struct.pack(">i", 0))
        w.flush_all()
    b0 = views[0].get_next_buffer().buffer
    b1 = views[1].get_next_buffer().buffer
    try:
        if what == "broadcast_emit":
            # BroadcastRecordWriter writes once into a shared buffer; ChannelSelectorRecordWriter
            # copies the serialized record into each subpartition's own buffer.
            assert (b0.memory_segment is b1.memory_segment) == (kind == "broadcast")
        assert b0.reader_index == 0 and b1.reader_index == 0
        b0.reader_index = 1
        assert b1.reader_index == 0, "buffer 1 shares the reader index of buffer 0"
        assert b0.to_bytes() != b1.to_bytes()
        assert b1.to_bytes() == (frame(struct.pack(">i", 0)) if what == "broadcast_emit"
                                 else ev.to_serialized_event(ev.EndOfSuperstepEvent()))
    finally:
        b0.recycle()
        b1.recycle()


@pytest.mark.parametrize("kind", KINDS)
def test_broadcast_emit_record(h, kind):
    """Flink's testBroadcastEmitRecord: 8 int records of 8 framed bytes into 32-byte buffers on 4
    channels: 2 buffers per channel; a BroadcastRecordWriter needs 2 buffers in all, a
    channel-selector writer 2 per channel. Counters are per record, not per copy."""
    n, seg, num_values = 4, 32, 8
    p = h.partition(n, segment_size=seg)
    w = h.add(build_writer(p, kind))
    records = [struct.pack(">i", v) for v in random.Random(4).sample(range(1 << 20), num_values)]
    for r in records:
        w.broadcast_emit(r)
    required = num_values // (seg // 8)
    assert p.buffer_pool.used_buffers == (required if kind == "broadcast" else required * n)
    assert p.num_records_out == num_values
    assert p.total_written_bytes == num_values * 8 * n
    assert p.num_bytes_out == num_values * 8 * n  # every buffer is full, hence finished
    assert p.num_buffers_out == required * n
    expected = b"".join(frame(r) for r in records)
    for i in range(n):
        items = drain(p.create_subpartition_view(i, Listener()))
        assert len(items) == required
        assert data_of(items) == expected
    assert p.buffer_pool.used_buffers == 0


# --- targets and selectors -----------------------------------------------------------------------


class CountingSelector(ChannelSelector):
    """Always channel 0, counting how often it was asked."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def select_channel(self, record):
        self.calls += 1
        return 0


def test_emit_with_explicit_target_bypasses_the_selector(h):
    p = h.partition(3)
    sel = CountingSelector()
    w = h.add(RecordWriter(p, sel, timeout=-1))
    w.emit(b"two", 2)
    w.emit(b"one", 1)
    w.emit(b"zero")
    w.emit(b"two again", 2)
    assert sel.calls == 1
    records_out = p.num_records_out
    with pytest.raises(ValueError):
        w.emit(b"nowhere", 3)
    with pytest.raises(ValueError):
        w.emit(b"nowhere", -1)
    assert p.num_records_out == records_out
    got = [data_of(drain(p.create_subpartition_view(i, Listener()))) for i in range(3)]
    assert got == [frame(b"zero"), frame(b"one"), frame(b"two") + frame(b"two again")]


def keyed():
    return KeyGroupStreamPartitioner(lambda r: struct.unpack_from(">i", r)[0])


def keyed_by_string():
    return KeyGroupStreamPartitioner(lambda r: r[:4].hex())


def rebalance():
    return RebalancePartitioner(rng=random.Random(7))


SELECTORS = {"keyed": keyed, "keyed-str": keyed_by_string, "rebalance": rebalance,
             "round-robin": RoundRobinChannelSelector}


def spanning_records(count: int, seed: int, seg: int = SEG) -> list[bytes]:
    """Records of 4..3×seg+4 bytes (a key first), so that many span buffers."""
    rng = random.Random(seed)
    return [struct.pack(">i", rng.randrange(-2**31, 2**31)) + rng.randbytes(rng.randrange(3 * seg + 1))
            for _ in range(count)]


def buffers_by_subpartition(p) -> list[list[bytes]]:
    """Every data buffer of every subpartition of a finished partition."""
    return [[data for t, data in drain(p.create_subpartition_view(i, Listener()))
             if t == DataType.DATA_BUFFER] for i in range(p.num_subpartitions)]


def unbounded_partition(h, n: int = 3):
    # PIPELINED pools are unbounded: the whole stream fits without a concurrent reader.
    return h.partition(n, num_segments=512, partition_type=ResultPartitionType.PIPELINED)


@pytest.mark.parametrize("selector", list(SELECTORS))
def test_emit_batch_with_selector_equals_per_record_emits(h, selector):
    records = spanning_records(150, seed=11)
    single, batched = unbounded_partition(h), unbounded_partition(h)
    w1 = h.add(RecordWriter(single, SELECTORS[selector](), timeout=-1))
    w2 = h.add(RecordWriter(batched, SELECTORS[selector](), timeout=-1))
    for r in records:
        w1.emit(r)
    start = 0
    for size in (1, 7, 0, 50, len(records)):  # the selector's state carries over between batches
        chunk = records[start:start + size]
        assert w2.emit_batch(chunk) == len(chunk)
        start += size
    assert start >= len(records)
    single.finish()
    batched.finish()
    assert single.num_records_out == batched.num_records_out == len(records)
    assert single.total_written_bytes == batched.total_written_bytes
    expected = buffers_by_subpartition(single)
    assert buffers_by_subpartition(batched) == expected
    # Every subpartition got something (the data is spread), and nothing was lost.
    assert all(expected)
    assert sum(len(b"".join(bufs)) for bufs in expected) == sum(len(frame(r)) for r in records)


def test_emit_batch_with_explicit_targets_equals_per_record_emits(h):
    records = spanning_records(120, seed=12)
    rng = random.Random(5)
    targets = [rng.randrange(3) for _ in records]
    a, b, c, d = (unbounded_partition(h) for _ in range(4))
    wa, wb, wc, wd = (h.add(RecordWriter(p, timeout=-1)) for p in (a, b, c, d))
    for r, t in zip(records, targets):
        wa.emit(r, t)
    assert wb.emit_batch(records[:40], targets[:40]) == 40
    assert wb.emit_batch(records[40:], np.array(targets[40:], dtype=np.int64)) == 80
    for r in records:
        wc.emit(r, 1)
    assert wd.emit_batch(records, 1) == len(records)
    for p in (a, b, c, d):
        p.finish()
    assert buffers_by_subpartition(b) == buffers_by_subpartition(a)
    assert buffers_by_subpartition(d) == buffers_by_subpartition(c)


def test_emit_array_equals_per_row_emits(h):
    dt = np.dtype([("k", ">i4"), ("v", "<f8"), ("pad", "V13")])  # 25 bytes: rows span buffers
    arr = np.zeros(90, dtype=dt)
    arr["k"] = np.arange(90) * 7919
    arr["v"] = np.arange(90) / 3
    a, b = unbounded_partition(h), unbounded_partition(h)
    wa, wb = h.add(RecordWriter(a, keyed(), timeout=-1)), h.add(RecordWriter(b, keyed(), timeout=-1))
    for row in arr:
        wa.emit(row.tobytes())
    assert wb.emit_array(arr) == len(arr)
    a.finish()
    b.finish()
    assert buffers_by_subpartition(b) == buffers_by_subpartition(a)


def test_random_emit_reaches_every_subpartition(h):
    n, count = 4, 400
    p = unbounded_partition(h, n)
    w = h.add(RecordWriter(p, CountingSelector(), timeout=-1))
    for i in range(count):
        w.random_emit(struct.pack(">I", i))
    assert w.channel_selector.calls == 0
    assert p.num_records_out == count
    p.finish()
    seen = []
    for i in range(n):
        data = data_of(drain(p.create_subpartition_view(i, Listener())))
        ids = [struct.unpack_from(">I", data, off + 4)[0] for off in range(0, len(data), 8)]
        assert ids, f"subpartition {i} got no record out of {count}"
        assert ids == sorted(ids)  # each subpartition keeps the emit order
        seen += ids
    assert sorted(seen) == list(range(count))  # each record exactly once


# --- availability --------------------------------------------------------------------------------


def test_is_available_and_available_future_follow_the_pool(h):
    """Flink's testIsAvailableOrNot: available while the pool has a buffer; the future completes
    once a buffer comes back."""
    p = h.partition(1, num_segments=2, max_overdraft_buffers=0)  # a pool of exactly 2 buffers
    w = h.add(RecordWriter(p, timeout=-1))
    view = p.create_subpartition_view(0, Listener())
    assert w.is_available
    assert w.get_available_future().done()
    full = b"x" * (SEG - 4)
    w.emit(full)
    assert w.is_available
    w.emit(full)
    assert not w.is_available
    future = w.get_available_future()
    assert not future.done()
    bb = view.get_next_buffer()
    assert bb.buffer.to_bytes() == frame(full)
    assert not future.done()  # still held by the reader
    bb.buffer.recycle()
    assert future.done()
    assert w.is_available
    assert w.get_available_future().done()
    drain(view)


# --- validation and lifecycle --------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [-2, -100, -1.5, -0.5, math.nan, math.inf, -math.inf])
def test_invalid_timeout_is_rejected(h, timeout):
    p = h.partition(1)
    with pytest.raises(ValueError):
        RecordWriter(p, timeout=timeout)
    with pytest.raises(ValueError):
        RecordWriterBuilder().set_timeout(timeout).build(p)
    with pytest.raises(ValueError):
        BroadcastRecordWriter(p, timeout=timeout)


@pytest.mark.parametrize("timeout", ["5", None, True, b"1"])
def test_non_numeric_timeout_is_a_type_error(h, timeout):
    with pytest.raises(TypeError):
        RecordWriter(h.partition(1), timeout=timeout)


@pytest.mark.parametrize("timeout", [-1, 0, 0.5, 5, 100])
def test_valid_timeouts(h, timeout):
    p = h.partition(1)
    with RecordWriter(p, timeout=timeout) as w:
        assert w.timeout == timeout
        assert w.flusher_alive == (timeout > 0)
        w.emit(b"ok")
    assert not w.flusher_alive


def test_writer_rejects_what_is_not_a_partition_or_selector(h):
    with pytest.raises(TypeError):
        RecordWriter(object())
    with pytest.raises(TypeError):
        RecordWriter(h.partition(1), channel_selector=lambda r: 0)


def all_emits(w):
    return {
        "emit": lambda: w.emit(b"r"),
        "emit_target": lambda: w.emit(b"r", 0),
        "emit_batch": lambda: w.emit_batch([b"r", b"s"]),
        "emit_batch_target": lambda: w.emit_batch([b"r"], 0),
        "emit_array": lambda: w.emit_array(np.zeros(3, dtype=np.int64), 0),
        "broadcast_emit": lambda: w.broadcast_emit(b"r"),
        "random_emit": lambda: w.random_emit(b"r"),
        "broadcast_event": lambda: w.broadcast_event(ev.EndOfSuperstepEvent()),
    }


@pytest.mark.parametrize("kind", KINDS)
def test_emit_after_close_raises(h, kind):
    p = h.partition(2)
    w = build_writer(p, kind, timeout=5)
    w.emit(b"before close")
    w.close()
    w.close()  # idempotent
    assert not w.flusher_alive
    records, written = p.num_records_out, p.total_written_bytes
    for emit in all_emits(w).values():
        with pytest.raises(FlinknetError, match="closed"):
            emit()
    assert (p.num_records_out, p.total_written_bytes) == (records, written)


@pytest.mark.parametrize("kind", KINDS)
def test_emit_after_partition_finish_raises_illegal_state(h, kind):
    p = h.partition(2)
    w = h.add(build_writer(p, kind))
    w.emit(b"last")
    p.finish()
    for emit in all_emits(w).values():
        with pytest.raises(IllegalStateError, match="finished"):
            emit()
    # What was emitted before finish is still there, then EndOfPartition.
    items = drain(p.create_subpartition_view(0, Listener()))
    assert items[0] == (DataType.DATA_BUFFER, frame(b"last"))
    assert items[-1][0] == DataType.END_OF_PARTITION


@pytest.mark.parametrize("kind", KINDS)
def test_emit_after_partition_release_raises_cancel_task(h, kind):
    p = h.partition(2)
    w = h.add(build_writer(p, kind))
    cause = RuntimeError("released by the test")
    p.release(cause)
    for emit in all_emits(w).values():
        with pytest.raises(CancelTaskError) as info:
            emit()
        assert info.value.__cause__ is cause


# --- backpressure --------------------------------------------------------------------------------


def fill_pool(p, w, kind):
    """Emit full-buffer records into subpartition 0 (all of them, for a broadcast writer) until
    the pool has no buffer left; returns what was emitted."""
    full = []
    i = 0
    while w.is_available:
        r = bytes([i]) * (SEG - 4)
        w.emit(r, 0) if kind == "selector" else w.emit(r)
        full.append(r)
        i += 1
        assert i <= p.buffer_pool.num_buffers, "the pool never became unavailable"
    return full


@pytest.mark.parametrize("kind", KINDS)
def test_emit_blocks_without_buffers_until_the_reader_recycles(h, kind):
    p = h.partition(2, num_segments=3, max_overdraft_buffers=0)  # a pool of 3 buffers
    w = h.add(build_writer(p, kind))
    views = [p.create_subpartition_view(i, Listener()) for i in range(2)]
    emitted = fill_pool(p, w, kind)
    assert len(emitted) == 3
    assert p.back_pressured_ns == 0
    future = w.get_available_future()
    last = b"z" * (SEG - 4)
    blocked = Worker(lambda: w.emit(last, 0) if kind == "selector" else w.emit(last))
    blocked.start()
    try:
        blocked.join(STILL_BLOCKED)
        assert blocked.is_alive(), "emit did not block on an exhausted pool"
        first = views[0].get_next_buffer().buffer
        assert first.to_bytes() == frame(emitted[0])
        if kind == "broadcast":
            # The buffer is shared: it comes back only when subpartition 1's reader recycles too.
            first.recycle()
            blocked.join(STILL_BLOCKED)
            assert blocked.is_alive(), "a broadcast buffer was recycled while still being read"
            views[1].get_next_buffer().buffer.recycle()
        else:
            first.recycle()
        blocked.finish(JOIN)
    finally:
        if blocked.is_alive():
            p.fail(RuntimeError("test cleanup"))
            blocked.join(JOIN)
    assert blocked.error is None
    assert future.done()
    assert p.back_pressured_ns > 0
    p.finish()
    expected = b"".join(frame(r) for r in emitted + [last])
    assert data_of(drain(views[0])) == expected[SEG:]
    if kind == "broadcast":
        assert data_of(drain(views[1])) == expected[SEG:]


@pytest.mark.parametrize("kind", KINDS)
def test_fail_from_another_thread_wakes_a_blocked_emit(h, kind):
    p = h.partition(2, num_segments=3, max_overdraft_buffers=0)
    w = h.add(build_writer(p, kind))
    listener = Listener()
    view = p.create_subpartition_view(0, listener)

    def produce():
        for i in range(100):
            r = bytes([i]) * (SEG - 4)
            w.emit(r, 0) if kind == "selector" else w.emit(r)

    producer = Worker(produce)
    producer.start()
    producer.join(STILL_BLOCKED)
    assert producer.is_alive(), "the producer was not back-pressured"
    cause = RuntimeError("task cancelled")
    p.fail(cause)
    producer.finish(JOIN)
    assert isinstance(producer.error, CancelTaskError), repr(producer.error)
    assert p.is_released
    assert p.failure_cause is cause
    assert view.is_released
    assert view.failure_cause is cause
    assert view.get_next_buffer() is None  # the queued buffers were dropped
    with pytest.raises(CancelTaskError):
        w.emit(b"more", 0)
