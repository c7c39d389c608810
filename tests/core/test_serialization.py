"""Write side of record serialization: ``SpanningRecordSerializer`` and the payload serializers.

The serializer is checked against Flink's own bytes (``tests/vectors/record_framing.json``: the
network buffers Flink 2.3's ``RecordWriter`` → ``BufferWritingResultPartition.emitRecord`` →
``PipelinedSubpartition`` produced, with and without a flush after every record) and against the
pure-Python model in ``framing_model.py`` (reference §5.1-§5.3): a record and its 4-byte length
prefix cut at every position of buffers of 1..12 bytes, zero-length records, records exactly
filling buffers or spanning many, the partial record length and the order of the sink calls,
buffer trimming to the subpartition's desired size, the byte and buffer counters, batch and numpy
emits, the shared broadcast buffer and per-subpartition broadcast emits, mode switches, finishing
and closing, invalid targets, and backpressure (an emit blocks in the pool until another thread
recycles, and wakes with CancelTaskError when the pool is destroyed).

The payload serializers are checked against ``struct`` (Java's big-endian layout), Flink's
``byte[]`` encoding (``tests/vectors/stream_elements.json``) and their own round trips, including
the rejection of payloads of the wrong size.

The sink is a small real class that records every call and keeps the consumers it is given; every
test closes or recycles what it takes, and the ``make_pool`` fixture checks the pools whole.
"""

from __future__ import annotations

import array
import json
import math
import pickle
import queue
import struct
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flinknet import CancelTaskError, IllegalStateError
from flinknet._core.serialization import (
    SERIALIZERS,
    BytePrimitiveArraySerializer,
    BytesSerializer,
    Float64Serializer,
    Int32Serializer,
    Int64Serializer,
    NumpyRecordSerializer,
    PayloadSerializer,
    PickleSerializer,
    SpanningRecordSerializer,
    StringSerializer,
    get_serializer,
)
from flinknet.errors import CorruptRecordError

from .framing_model import BROADCAST, WriterModel, frame, frame_all, parse_stream

VECTORS = Path(__file__).parent.parent / "vectors"

HYPOTHESIS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                        HealthCheck.too_slow])


# --- helpers -------------------------------------------------------------------------------------


class Entry:
    """A consumer the sink was given, with what it held at hand-over and the bytes built so far."""

    def __init__(self, subpartition, consumer, partial, written_at_add):
        self.subpartition = subpartition
        self.consumer = consumer
        self.partial = partial
        self.written_at_add = written_at_add
        self.chunks: list[bytes] = []
        self.segments = []

    def drain(self) -> bytes:
        """Build what was committed since the last build; keep its bytes, recycle the slice."""
        piece = self.consumer.build()
        try:
            data = piece.to_bytes()
            self.segments.append(piece.memory_segment)
        finally:
            piece.recycle()
        if data:
            self.chunks.append(data)
        return data

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


class RecordingSink:
    """The sink protocol, for real: records every call in order and keeps every consumer.

    ``desired`` is what ``add_buffer_consumer`` answers: None, an int, or a function of the
    subpartition.
    """

    def __init__(self, desired=None):
        self.desired = desired
        self.calls: list[tuple] = []
        self.entries: list[Entry] = []

    def add_buffer_consumer(self, subpartition, consumer, partial_record_length):
        self.entries.append(Entry(subpartition, consumer, partial_record_length,
                                  consumer.written_bytes))
        self.calls.append(("add", subpartition, partial_record_length))
        d = self.desired
        return d(subpartition) if callable(d) else d

    def buffer_finished(self, subpartition, num_bytes):
        self.calls.append(("finished", subpartition, num_bytes))

    def of(self, sp):
        return [e for e in self.entries if e.subpartition == sp]

    def buffers(self, sp) -> list[bytes]:
        """Every buffer of ``sp``, whole (drains what was not built yet)."""
        out = []
        for e in self.of(sp):
            e.drain()
            out.append(e.data)
        return out

    def partials(self, sp) -> list[int]:
        return [e.partial for e in self.of(sp)]

    def reset(self):
        """Close every consumer and forget everything."""
        for e in self.entries:
            e.consumer.close()
        self.entries.clear()
        self.calls.clear()


class Writer:
    """A SpanningRecordSerializer over a pool, with a recording sink."""

    def __init__(self, pool, num_subpartitions, serializer="bytes", desired=None):
        self.pool = pool
        self.sink = RecordingSink(desired)
        self.ser = SpanningRecordSerializer(pool, num_subpartitions, serializer, self.sink)

    def close(self):
        self.ser.close()
        self.sink.reset()


@pytest.fixture
def new_pool(make_pool):
    """``new_pool(segment_size, num_subpartitions=1, num_segments=64)``: a LocalBufferPool that
    owns all segments of its own global pool (checked whole at teardown)."""

    def factory(segment_size, num_subpartitions=1, num_segments=64, max_overdraft_buffers=0):
        nbp = make_pool(num_segments, segment_size)
        return nbp.create_buffer_pool(num_segments, num_segments,
                                      num_subpartitions=num_subpartitions,
                                      max_buffers_per_channel=num_segments,
                                      max_overdraft_buffers=max_overdraft_buffers)

    return factory


@pytest.fixture
def writer(new_pool):
    """``writer(segment_size, num_subpartitions=1, serializer="bytes", desired=None, pool=None)``.

    Every writer is closed (builders dropped, consumers closed) at teardown.
    """
    made: list[Writer] = []

    def factory(segment_size, num_subpartitions=1, serializer="bytes", desired=None,
                pool=None, num_segments=64):
        if pool is None:
            pool = new_pool(segment_size, num_subpartitions, num_segments)
        w = Writer(pool, num_subpartitions, serializer, desired)
        made.append(w)
        return w

    yield factory
    for w in made:
        w.close()


@pytest.fixture
def cached_pool(new_pool):
    """``cached_pool(segment_size, num_subpartitions, num_segments)``: one pool per arguments for
    the whole test (hypothesis examples share it; each example must give everything back)."""
    pools = {}

    def get(segment_size, num_subpartitions=1, num_segments=64):
        key = (segment_size, num_subpartitions, num_segments)
        if key not in pools:
            pools[key] = new_pool(segment_size, num_subpartitions, num_segments)
        return pools[key]

    return get


def desired_fn(desired):
    if desired is None:
        return None
    return desired if callable(desired) else (lambda sp: desired)


def assert_matches_model(w: Writer, model: WriterModel):
    """Sink calls, partial lengths, every buffer's bytes and the counters equal the model's."""
    assert w.sink.calls == model.calls
    for sp in range(model.num_subpartitions):
        assert w.sink.partials(sp) == model.subpartition_partials(sp)
        assert w.sink.buffers(sp) == model.subpartition_buffers(sp)
    assert w.ser.total_written_bytes == model.total_written_bytes
    assert w.ser.num_bytes_out == model.num_bytes_out
    assert w.ser.num_buffers_out == model.num_buffers_out
    assert w.ser.num_records_out == model.num_records_out


def stream_of(w: Writer, sp=0) -> bytes:
    return b"".join(w.sink.buffers(sp))


def load_framing_vectors():
    with open(VECTORS / "record_framing.json") as f:
        data = json.load(f)
    records = {r["index"]: bytes.fromhex(r["hex"]) for r in data["records"]}
    for r in data["records"]:
        assert len(records[r["index"]]) == r["len"]
    return records, {c["name"]: c for c in data["cases"]}


FRAMING_RECORDS, FRAMING_CASES = load_framing_vectors()


def data_buffers(subpartition_case) -> list[bytes]:
    return [bytes.fromhex(b["hex"]) for b in subpartition_case["buffers"]
            if b["data_type"] == "DATA_BUFFER"]


def emission_order(case):
    """(record index, subpartition) in emission order: ascending record index."""
    return sorted((i, sp["index"]) for sp in case["subpartitions"] for i in sp["record_indices"])


# --- Flink's bytes -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["seg64_noflush", "seg128_noflush", "seg64_two_subpartitions"])
def test_buffers_equal_flinks_without_flush(writer, name):
    case = FRAMING_CASES[name]
    n = case["num_subpartitions"]
    w = writer(case["segment_size"], n, num_segments=400)
    for i, sp in emission_order(case):
        w.ser.emit(FRAMING_RECORDS[i], sp)
    w.ser.finish_all()
    for sp_case in case["subpartitions"]:
        expected = data_buffers(sp_case)
        got = w.sink.buffers(sp_case["index"])
        assert len(got) == len(expected) == sp_case["num_buffers"] - 1
        assert got == expected
    w.sink.reset()
    assert w.pool.used_buffers == 0


@pytest.mark.parametrize("name", ["seg64_flush_every_record", "seg128_flush_every_record"])
def test_buffers_equal_flinks_with_flush_after_every_record(writer, name):
    """Flink flushed after every record: the consumer read the committed bytes of the unfinished
    buffer each time. Building the subpartition's consumers after every emit gives the same
    sequence of non-empty slices."""
    case = FRAMING_CASES[name]
    (sp_case,) = case["subpartitions"]
    w = writer(case["segment_size"], 1)
    slices: list[bytes] = []
    entries = w.sink.entries
    drained = 0
    for i in sp_case["record_indices"]:
        w.ser.emit(FRAMING_RECORDS[i], 0)
        while drained < len(entries):
            e = entries[drained]
            data = e.drain()
            if data:
                slices.append(data)
            if not e.consumer.is_finished:
                break
            e.consumer.close()
            drained += 1
    w.ser.finish_all()
    for e in entries[drained:]:
        data = e.drain()
        if data:
            slices.append(data)
    assert slices == data_buffers(sp_case)
    w.sink.reset()
    assert w.pool.used_buffers == 0


def test_model_reproduces_flinks_buffers():
    """The oracle itself agrees with Flink on every unflushed case."""
    for name in ["seg64_noflush", "seg128_noflush", "seg64_two_subpartitions"]:
        case = FRAMING_CASES[name]
        model = WriterModel(case["segment_size"], case["num_subpartitions"])
        for i, sp in emission_order(case):
            model.emit(FRAMING_RECORDS[i], sp)
        model.finish_all()
        for sp_case in case["subpartitions"]:
            assert model.subpartition_buffers(sp_case["index"]) == data_buffers(sp_case)


# --- framing against the model -------------------------------------------------------------------


@pytest.mark.parametrize("segment_size", range(1, 13))
def test_record_and_length_split_at_every_position(writer, new_pool, segment_size):
    """A first record of ``a`` bytes puts the second record's start at every offset of a buffer;
    the second record (0..40 bytes) is then cut wherever the buffers end, its length prefix
    included."""
    pool = new_pool(segment_size, num_segments=64)
    for a in range(segment_size):
        for length in range(41):
            first, second = bytes([0xA0 + a]) * a, bytes(range(length))
            w = writer(segment_size, pool=pool)
            model = WriterModel(segment_size)
            for p in (first, second):
                w.ser.emit(p, 0)
                model.emit(p, 0)
            w.ser.finish_all()
            model.finish_all()
            assert_matches_model(w, model)
            assert parse_stream(stream_of(w)) == [first, second]
            w.close()
            assert pool.used_buffers == 0


@settings(max_examples=300, **HYPOTHESIS)
@given(segment_size=st.integers(1, 12),
       ops=st.lists(st.tuples(st.binary(max_size=40), st.integers(0, 2)), max_size=12),
       desired=st.one_of(st.none(), st.integers(0, 16)))
def test_emit_matches_model(writer, cached_pool, segment_size, ops, desired):
    pool = cached_pool(segment_size, 3, 256)
    w = writer(segment_size, 3, desired=desired, pool=pool)
    model = WriterModel(segment_size, 3, desired_fn(desired))
    for payload, target in ops:
        w.ser.emit(payload, target)
        model.emit(payload, target)
    w.ser.finish_all()
    model.finish_all()
    assert_matches_model(w, model)
    for sp in range(3):
        assert parse_stream(stream_of(w, sp)) == [p for p, t in ops if t == sp]
    w.close()
    assert pool.used_buffers == 0


@pytest.mark.parametrize("segment_size, per_buffer", [(4, 1), (8, 2), (12, 3)])
def test_zero_length_records(writer, segment_size, per_buffer):
    w = writer(segment_size)
    for _ in range(2 * per_buffer):
        w.ser.emit(b"", 0)
    # The last record filled its buffer exactly: nothing is left open.
    assert not w.ser.has_open_builder(0)
    assert w.sink.calls == [("add", 0, 0), ("finished", 0, segment_size)] * 2
    assert w.sink.buffers(0) == [b"\0" * segment_size] * 2
    assert w.ser.total_written_bytes == w.ser.num_bytes_out == 8 * per_buffer
    assert w.ser.num_records_out == 2 * per_buffer


def test_zero_length_record_with_payloads_around(writer):
    w = writer(6)
    for p in (b"ab", b"", b"c"):
        w.ser.emit(p, 0)
    w.ser.finish_all()
    assert w.sink.buffers(0) == [b"\0\0\0\x02ab", b"\0\0\0\0\0\0", b"\0\x01c"]
    assert w.sink.partials(0) == [0, 0, 3]


def test_records_exactly_filling_buffers_leave_no_empty_buffer(writer):
    """Flink's testIntRecordsWithAlignedBuffers: 64-byte segments, 8-byte framed int records."""
    w = writer(64, serializer="int32")
    values = list(range(-32, 32))
    for v in values:
        w.ser.emit(v, 0)
        # A buffer that ends exactly full is finished at once.
        assert w.ser.has_open_builder(0) == ((values.index(v) + 1) % 8 != 0)
    assert not w.ser.has_open_builder(0)
    calls_before = list(w.sink.calls)
    w.ser.finish_all()
    assert w.sink.calls == calls_before == [("add", 0, 0), ("finished", 0, 64)] * 8
    bufs = w.sink.buffers(0)
    assert [len(b) for b in bufs] == [64] * 8
    assert b"".join(bufs) == b"".join(struct.pack(">ii", 4, v) for v in values)
    assert w.ser.num_buffers_out == 8 and w.ser.num_bytes_out == 512


def test_record_spanning_many_buffers(writer):
    payload = bytes(i % 251 for i in range(1000))
    w = writer(16, num_segments=80)
    w.ser.emit(payload, 0)
    # 1004 bytes: 62 full buffers, the last 12 bytes in an open one.
    assert w.ser.has_open_builder(0)
    assert w.sink.partials(0) == [0] + [16] * 61 + [12]
    assert [e.written_at_add for e in w.sink.entries] == [0] + [16] * 61 + [12]
    assert w.ser.num_buffers_out == 62 and w.ser.num_bytes_out == 62 * 16
    assert w.ser.total_written_bytes == 1004
    w.ser.finish_all()
    assert w.ser.num_buffers_out == 63 and w.ser.num_bytes_out == 1004
    assert stream_of(w) == frame(payload)


def test_new_record_buffer_is_announced_before_its_bytes(writer):
    """partial_record_length is 0 for a buffer starting with a new record, and its consumer was
    handed over before anything was appended; a continuation buffer is handed over only after its
    bytes were appended and committed (§5.2.4), right after the previous buffer was finished."""
    w = writer(10)
    w.ser.emit(b"x" * 3, 0)   # 7 bytes in buffer 1
    w.ser.emit(b"y" * 20, 0)  # 3 bytes in buffer 1, 10 in buffer 2, 11 → 10 in 3, 1 in 4
    assert w.sink.calls == [
        ("add", 0, 0),
        ("finished", 0, 10), ("add", 0, 10),
        ("finished", 0, 10), ("add", 0, 10),
        ("finished", 0, 10), ("add", 0, 1),
    ]
    assert [e.written_at_add for e in w.sink.entries] == [0, 10, 10, 1]
    # A continuation consumer has data ready when it is handed over.
    entries = w.sink.entries
    assert entries[3].consumer.is_data_available
    assert entries[3].drain() == b"y"
    w.ser.emit(b"z", 0)  # into the open buffer: no new sink call
    assert len(w.sink.calls) == 7
    assert entries[3].drain() == b"\0\0\0\x01z"


def test_counters(writer):
    w = writer(16, 2)
    model = WriterModel(16, 2)
    ops = [(b"a" * 5, 0), (b"b" * 30, 1), (b"", 0), (b"c" * 12, 0), (b"d" * 3, 1)]
    for p, t in ops:
        w.ser.emit(p, t)
        model.emit(p, t)
        assert (w.ser.total_written_bytes, w.ser.num_bytes_out, w.ser.num_buffers_out,
                w.ser.num_records_out) == (model.total_written_bytes, model.num_bytes_out,
                                           model.num_buffers_out, model.num_records_out)
    assert w.ser.total_written_bytes == sum(len(p) + 4 for p, _ in ops)
    # Only finished buffers count as out.
    assert w.ser.num_bytes_out < w.ser.total_written_bytes
    w.ser.finish_all()
    model.finish_all()
    assert w.ser.num_bytes_out == w.ser.total_written_bytes
    assert_matches_model(w, model)


# --- desired buffer size (debloating) -------------------------------------------------------------


def test_desired_size_trims_the_new_buffer(writer):
    w = writer(64, desired=16)
    w.ser.emit(b"a" * 10, 0)  # 14 bytes; buffer trimmed to max(16, 14) = 16
    w.ser.emit(b"b" * 10, 0)  # 2 bytes fit, the continuation takes 12 and is trimmed to 16
    w.ser.emit(b"c", 0)       # 4 of its 5 bytes fit, 1 in the next buffer
    w.ser.finish_all()
    assert w.sink.calls == [
        ("add", 0, 0), ("finished", 0, 16),
        ("add", 0, 12), ("finished", 0, 16),
        ("add", 0, 1), ("finished", 0, 1),
    ]
    assert stream_of(w) == frame_all([b"a" * 10, b"b" * 10, b"c"])


def test_desired_size_never_below_what_the_record_needs(writer):
    w = writer(64, desired=8)
    w.ser.emit(b"r" * 30, 0)  # needs 34: trimmed to max(8, 34) = 34
    w.ser.emit(b"s" * 2, 0)   # 6 more bytes: 0 fit (34/34 was full and finished)
    w.ser.finish_all()
    assert w.sink.calls == [("add", 0, 0), ("finished", 0, 34),
                            ("add", 0, 0), ("finished", 0, 6)]


def test_desired_size_above_segment_or_zero(writer):
    for desired in (0, None, 1000):
        w = writer(16, desired=desired)
        for _ in range(3):
            w.ser.emit(b"q" * 4, 0)  # 8 bytes each: two per 16-byte buffer
        w.ser.finish_all()
        assert [len(b) for b in w.sink.buffers(0)] == [16, 8]
        w.close()


def test_desired_size_of_broadcast_buffer_is_the_smallest(writer):
    w = writer(64, 3, desired=lambda sp: {0: 40, 1: 0, 2: 24}[sp])
    model = WriterModel(64, 3, lambda sp: {0: 40, 1: 0, 2: 24}[sp])
    for p in (b"x" * 10, b"y" * 10):
        w.ser.broadcast_record(p)
        model.broadcast(p)
    w.ser.finish_all()
    model.finish_all()
    assert_matches_model(w, model)
    assert ("finished", BROADCAST, 24) in w.sink.calls


# --- batches and arrays ---------------------------------------------------------------------------


def test_emit_batch_single_target_equals_emits(writer):
    payloads = [bytes([i]) * (i * 3 % 17) for i in range(40)]
    a, b = writer(16), writer(16)
    for p in payloads:
        a.ser.emit(p, 0)
    assert b.ser.emit_batch(iter(payloads), 0) == len(payloads)
    for w in (a, b):
        w.ser.finish_all()
    assert b.sink.calls == a.sink.calls
    assert b.sink.buffers(0) == a.sink.buffers(0)
    assert b.ser.num_records_out == a.ser.num_records_out == 40
    assert b.ser.total_written_bytes == a.ser.total_written_bytes


@pytest.mark.parametrize("as_array", [False, True])
def test_emit_batch_per_record_targets(writer, as_array):
    payloads = [bytes([i]) * (i % 13) for i in range(30)]
    targets = [(i * 7) % 3 for i in range(30)]
    a, b = writer(8, 3), writer(8, 3)
    for p, t in zip(payloads, targets):
        a.ser.emit(p, t)
    b.ser.emit_batch(payloads, np.array(targets, dtype=np.int32) if as_array else targets)
    for w in (a, b):
        w.ser.finish_all()
    assert b.sink.calls == a.sink.calls
    for sp in range(3):
        assert b.sink.buffers(sp) == a.sink.buffers(sp)
        assert parse_stream(stream_of(b, sp)) == [p for p, t in zip(payloads, targets) if t == sp]


@pytest.mark.parametrize("n_records, targets", [(3, [0, 1]), (2, [0, 1, 0]), (0, [1])])
def test_emit_batch_rejects_mismatched_targets(writer, n_records, targets):
    w = writer(16, 2)
    with pytest.raises(ValueError):
        w.ser.emit_batch([b"r"] * n_records, targets)


def test_emit_batch_rejects_bad_targets(writer):
    w = writer(16, 2)
    with pytest.raises(ValueError):
        w.ser.emit_batch([b"a", b"b"], [0, 2])
    with pytest.raises(ValueError):
        w.ser.emit_batch([b"a"], 2)
    with pytest.raises(ValueError):
        w.ser.emit_batch([b"a"], -1)
    with pytest.raises(ValueError):
        w.ser.emit_batch([b"a"], [[0]])


STRUCTURED = np.dtype([("id", ">i4"), ("x", "<f8"), ("tag", "S3")])


def rows(arr) -> list[bytes]:
    """The raw bytes of each element, as stored (a scalar would be converted to native order)."""
    return [arr[i:i + 1].tobytes() for i in range(len(arr))]


def structured_array(n, seed=0):
    rng = np.random.default_rng(seed)
    arr = np.zeros(n, dtype=STRUCTURED)
    arr["id"] = rng.integers(-2**31, 2**31 - 1, n)
    arr["x"] = rng.standard_normal(n)
    arr["tag"] = [bytes([97 + i % 26]) * 3 for i in range(n)]
    return arr


@pytest.mark.parametrize("dtype", [STRUCTURED, np.dtype(">i8"), np.dtype("<f4"), np.dtype("u1")])
@pytest.mark.parametrize("segment_size, prefix, desired", [
    (64, b"", None), (64, b"abc", None), (19, b"", None), (5, b"x" * 7, None),
    (128, b"p", 40), (3, b"", 2)])
def test_emit_array_single_target_equals_emitting_each_record(writer, dtype, segment_size, prefix,
                                                              desired):
    arr = structured_array(50) if dtype == STRUCTURED else \
        (np.arange(50) * 37 - 600).astype(dtype)
    a = writer(segment_size, desired=desired, num_segments=512)
    b = writer(segment_size, desired=desired, num_segments=512)
    model = WriterModel(segment_size, 1, desired_fn(desired))
    for w in (a, b):
        w.ser.emit(prefix, 0)
    model.emit(prefix, 0)
    for raw in rows(arr):
        a.ser.emit(raw, 0)
        model.emit(raw, 0)
    assert b.ser.emit_array(arr, 0) == 50
    assert (b.ser.total_written_bytes, b.ser.num_records_out, b.ser.num_bytes_out,
            b.ser.num_buffers_out) == (a.ser.total_written_bytes, a.ser.num_records_out,
                                       a.ser.num_bytes_out, a.ser.num_buffers_out)
    for w in (a, b):
        w.ser.finish_all()
    model.finish_all()
    assert_matches_model(a, model)
    assert_matches_model(b, model)
    assert parse_stream(stream_of(b))[1:] == rows(arr)


def test_emit_array_large_run_without_the_gil(writer):
    """Runs of at least 256 KiB are copied with the GIL released: same bytes."""
    arr = structured_array(40000, seed=3)  # 15-byte records, 19 framed: 760 000 bytes
    w = writer(512 * 1024, num_segments=4)
    assert w.ser.emit_array(arr, 0) == 40000
    w.ser.finish_all()
    assert stream_of(w) == frame_all(rows(arr))
    assert w.ser.total_written_bytes == 40000 * 19 == w.ser.num_bytes_out


def test_emit_array_per_record_targets(writer):
    arr = structured_array(31)
    targets = np.array([(i * 5) % 3 for i in range(31)])
    a, b = writer(16, 3, num_segments=128), writer(16, 3, num_segments=128)
    for raw, t in zip(rows(arr), targets):
        a.ser.emit(raw, int(t))
    assert b.ser.emit_array(arr, targets) == 31
    for w in (a, b):
        w.ser.finish_all()
    assert b.sink.calls == a.sink.calls
    for sp in range(3):
        assert b.sink.buffers(sp) == a.sink.buffers(sp)
    assert b.ser.num_records_out == 31


def test_emit_array_non_contiguous_and_empty(writer):
    base = structured_array(20)
    strided = base[::3]
    a, b = writer(32), writer(32)
    b.ser.emit_array(strided, 0)
    for raw in rows(strided):
        a.ser.emit(raw, 0)
    assert b.ser.emit_array(np.zeros(0, dtype=STRUCTURED), 0) == 0
    for w in (a, b):
        w.ser.finish_all()
    assert b.sink.buffers(0) == a.sink.buffers(0)


def test_emit_array_rejects(writer):
    w = writer(32, 2)
    with pytest.raises(ValueError):
        w.ser.emit_array(np.zeros((2, 2), dtype=np.int32), 0)
    with pytest.raises(ValueError):
        w.ser.emit_array(np.array([b"a", None], dtype=object), 0)
    with pytest.raises(ValueError):
        w.ser.emit_array(np.zeros(3, dtype=np.int32), [0, 1])
    with pytest.raises(ValueError):
        w.ser.emit_array(np.zeros(3, dtype=np.int32), 2)
    assert w.sink.calls == [] and w.ser.num_records_out == 0
    with pytest.raises(ValueError):
        w.ser.emit_array(np.zeros(2, dtype=np.int32), [0, 5])


def test_emit_array_with_numpy_serializer_reads_back(writer):
    arr = structured_array(12)
    w = writer(16, serializer=STRUCTURED)
    assert isinstance(w.ser.serializer, NumpyRecordSerializer)
    w.ser.emit_array(arr, 0)
    w.ser.emit(arr[0], 0)
    w.ser.finish_all()
    payloads = parse_stream(stream_of(w))
    values = [w.ser.serializer.deserialize(p) for p in payloads]
    assert [v.tobytes() for v in values] == rows(arr) + rows(arr[:1])


# --- broadcast ------------------------------------------------------------------------------------


def test_broadcast_record_shares_one_buffer(writer):
    w = writer(64, 3)
    w.ser.broadcast_record(b"hello")
    assert w.ser.has_open_builder(BROADCAST)
    assert not any(w.ser.has_open_builder(sp) for sp in range(3))
    assert w.sink.calls == [("add", 0, 0), ("add", 1, 0), ("add", 2, 0)]
    consumers = [e.consumer for e in w.sink.entries]
    assert len({id(c) for c in consumers}) == 3
    # Each subpartition reads its copy independently.
    assert w.sink.entries[0].drain() == frame(b"hello")
    assert w.sink.entries[1].consumer.is_data_available
    assert w.sink.entries[1].drain() == frame(b"hello")
    w.ser.broadcast_record(b"!")
    assert w.sink.entries[0].drain() == frame(b"!")
    w.ser.finish_broadcast_builder()
    assert not w.ser.has_open_builder(BROADCAST)
    assert w.sink.calls[-1] == ("finished", BROADCAST, 14)
    for sp in range(3):
        assert w.sink.buffers(sp) == [frame(b"hello") + frame(b"!")]
    # One shared segment.
    segments = {id(s) for e in w.sink.entries for s in e.segments}
    assert len(segments) == 1
    assert w.ser.total_written_bytes == 14 * 3
    assert w.ser.num_bytes_out == 14 * 3
    assert w.ser.num_buffers_out == 3
    assert w.ser.num_records_out == 2


def test_broadcast_record_spanning(writer):
    w = writer(16, 3)
    model = WriterModel(16, 3)
    for p in (b"x" * 40, b"y" * 3):
        w.ser.broadcast_record(p)
        model.broadcast(p)
    w.ser.finish_all()
    model.finish_all()
    assert w.sink.calls[:5] == [("add", 0, 0), ("add", 1, 0), ("add", 2, 0),
                                ("finished", BROADCAST, 16), ("add", 0, 16)]
    assert_matches_model(w, model)
    # 4 buffers, each shared by the 3 subpartitions.
    assert w.pool.used_buffers == 4
    w.sink.reset()
    assert w.pool.used_buffers == 0


def test_broadcast_emit_copies_into_each_subpartition(writer):
    w = writer(64, 3)
    w.ser.emit(b"first", 1)
    w.ser.broadcast_emit(b"wm")
    assert not w.ser.has_open_builder(BROADCAST)
    assert all(w.ser.has_open_builder(sp) for sp in range(3))
    w.ser.finish_all()
    assert w.sink.buffers(0) == [frame(b"wm")]
    assert w.sink.buffers(1) == [frame(b"first") + frame(b"wm")]
    assert w.sink.buffers(2) == [frame(b"wm")]
    segments = [e.segments[0] for e in w.sink.entries]
    assert len({id(s) for s in segments}) == 3
    assert w.ser.total_written_bytes == 9 + 3 * 6
    assert w.ser.num_bytes_out == 9 + 3 * 6
    assert w.ser.num_buffers_out == 3


def test_switching_between_unicast_and_broadcast_finishes_the_other_mode(writer):
    w = writer(64, 2)
    model = WriterModel(64, 2)
    w.ser.emit(b"a" * 10, 0)
    w.ser.emit(b"b" * 10, 1)
    w.ser.broadcast_record(b"c" * 10)
    assert not w.ser.has_open_builder(0) and not w.ser.has_open_builder(1)
    assert w.ser.has_open_builder(BROADCAST)
    w.ser.emit(b"d" * 10, 1)
    assert not w.ser.has_open_builder(BROADCAST)
    w.ser.finish_all()
    assert w.sink.calls == [
        ("add", 0, 0), ("add", 1, 0),
        ("finished", 0, 14), ("finished", 1, 14), ("add", 0, 0), ("add", 1, 0),
        ("finished", BROADCAST, 14), ("add", 1, 0),
        ("finished", 1, 14),
    ]
    for op in [(b"a" * 10, 0), (b"b" * 10, 1), (b"c" * 10, BROADCAST), (b"d" * 10, 1)]:
        model.emit(*op)
    model.finish_all()
    assert_matches_model(w, model)
    assert w.sink.buffers(0) == [frame(b"a" * 10), frame(b"c" * 10)]
    assert w.sink.buffers(1) == [frame(b"b" * 10), frame(b"c" * 10), frame(b"d" * 10)]


@settings(max_examples=150, **HYPOTHESIS)
@given(segment_size=st.integers(1, 24),
       ops=st.lists(st.tuples(st.binary(max_size=30), st.integers(-1, 2)), max_size=10))
def test_mixed_unicast_and_broadcast_match_model(writer, cached_pool, segment_size, ops):
    pool = cached_pool(segment_size, 3, 512)
    w = writer(segment_size, 3, pool=pool)
    model = WriterModel(segment_size, 3)
    for payload, target in ops:
        if target == BROADCAST:
            w.ser.broadcast_record(payload)
        else:
            w.ser.emit(payload, target)
        model.emit(payload, target)
    w.ser.finish_all()
    model.finish_all()
    assert_matches_model(w, model)
    w.close()
    assert pool.used_buffers == 0


# --- finishing, closing, targets -----------------------------------------------------------------


def test_finish_unicast_builder_and_has_open_builder(writer):
    w = writer(64, 2)
    assert not w.ser.has_open_builder(0) and not w.ser.has_open_builder(BROADCAST)
    w.ser.finish_unicast_builder(0)  # nothing open: no call
    assert w.sink.calls == []
    w.ser.emit(b"x", 0)
    w.ser.emit(b"y", 1)
    w.ser.finish_unicast_builder(0)
    assert w.sink.calls[-1] == ("finished", 0, 5)
    assert not w.ser.has_open_builder(0) and w.ser.has_open_builder(1)
    assert w.ser.num_buffers_out == 1
    w.ser.emit(b"z", 0)  # a new buffer
    assert w.sink.calls[-1] == ("add", 0, 0)
    w.ser.finish_all()
    assert w.sink.calls[-2:] == [("finished", 0, 5), ("finished", 1, 5)]
    n = len(w.sink.calls)
    w.ser.finish_all()
    w.ser.finish_broadcast_builder()
    assert len(w.sink.calls) == n
    assert w.sink.buffers(0) == [frame(b"x"), frame(b"z")]
    assert w.sink.buffers(1) == [frame(b"y")]
    for e in w.sink.entries:
        assert e.consumer.is_finished


def test_close_drops_builders_without_finishing(writer):
    w = writer(16, 2)
    w.ser.emit(b"a" * 20, 0)  # one finished buffer, one open
    w.ser.emit(b"b", 1)
    calls = list(w.sink.calls)
    counters = (w.ser.num_bytes_out, w.ser.num_buffers_out)
    w.ser.close()
    assert w.sink.calls == calls  # no buffer_finished
    assert (w.ser.num_bytes_out, w.ser.num_buffers_out) == counters
    for e in w.sink.entries:
        e.drain()
    finished = [e.consumer.is_finished for e in w.sink.entries]
    assert finished == [True, False, False]
    w.ser.close()  # idempotent
    with pytest.raises(IllegalStateError):
        w.ser.emit(b"c", 0)
    with pytest.raises(IllegalStateError):
        w.ser.broadcast_record(b"c")
    with pytest.raises(IllegalStateError):
        w.ser.broadcast_emit(b"c")
    with pytest.raises(IllegalStateError):
        w.ser.emit_batch([b"c"], 0)
    with pytest.raises(IllegalStateError):
        w.ser.emit_array(np.zeros(1, np.int32), 0)
    w.ser.finish_all()
    assert w.sink.calls == calls
    # The builders' references are gone: closing the consumers returns every segment.
    w.sink.reset()
    assert w.pool.used_buffers == 0


@pytest.mark.parametrize("target", [-1, 2, 3, -2, 1 << 20, 1 << 32, (1 << 32) + 1, -(1 << 32),
                                    (1 << 63) - 1])
def test_invalid_targets(writer, target):
    """Every target outside [0, n) is rejected (beyond a C int too: never wrapped around)."""
    w = writer(16, 2)
    with pytest.raises((ValueError, OverflowError)):
        w.ser.emit(b"x", target)
    with pytest.raises((ValueError, OverflowError)):
        w.ser.emit_batch([b"x"], target)
    with pytest.raises((ValueError, OverflowError)):
        w.ser.emit_batch([b"x"], [target])
    with pytest.raises((ValueError, OverflowError)):
        w.ser.emit_array(np.zeros(1, np.int32), target)
    with pytest.raises((ValueError, OverflowError)):
        w.ser.finish_unicast_builder(target)
    if target != BROADCAST:
        with pytest.raises((ValueError, OverflowError)):
            w.ser.has_open_builder(target)
    assert w.sink.calls == []
    assert w.ser.num_records_out == 0 and w.pool.used_buffers == 0


def test_constructor_validation(new_pool):
    pool = new_pool(16, 2)
    sink = RecordingSink()
    with pytest.raises(ValueError):
        SpanningRecordSerializer(pool, 3, "bytes", sink)
    with pytest.raises(ValueError):
        SpanningRecordSerializer(pool, 0, "bytes", sink)
    with pytest.raises(ValueError):
        SpanningRecordSerializer(pool, 2, "no-such-serializer", sink)
    with pytest.raises(AttributeError):
        SpanningRecordSerializer(pool, 2, "bytes", object())
    s = SpanningRecordSerializer(pool, 2, "bytes", sink)
    assert s.num_subpartitions == 2
    s.close()


@pytest.mark.parametrize("spec, cls, record, payload", [
    ("bytes", BytesSerializer, b"\x01\x02", b"\x01\x02"),
    ("byte_array", BytePrimitiveArraySerializer, b"\x01\x02", b"\0\0\0\x02\x01\x02"),
    ("str", StringSerializer, "é", "é".encode()),
    ("int32", Int32Serializer, -2, struct.pack(">i", -2)),
    ("int64", Int64Serializer, 1 << 40, struct.pack(">q", 1 << 40)),
    ("float64", Float64Serializer, 0.1, struct.pack(">d", 0.1)),
    (StringSerializer(), StringSerializer, "x", b"x"),
    (np.dtype("<u2"), NumpyRecordSerializer, np.uint16(258), b"\x02\x01"),
])
def test_serializer_by_name_instance_or_dtype(writer, spec, cls, record, payload):
    w = writer(64, serializer=spec)
    assert type(w.ser.serializer) is cls
    if isinstance(spec, PayloadSerializer):
        assert w.ser.serializer is spec
    w.ser.emit(record, 0)
    w.ser.finish_all()
    assert stream_of(w) == frame(payload)


def test_pickle_only_by_name(writer):
    w = writer(64, serializer="pickle")
    assert type(w.ser.serializer) is PickleSerializer
    w.ser.emit({"k": (1, 2)}, 0)
    w.ser.finish_all()
    (payload,) = parse_stream(stream_of(w))
    assert pickle.loads(payload) == {"k": (1, 2)}


def test_a_failing_payload_writes_nothing(writer):
    w = writer(16, serializer="int32")
    with pytest.raises(OverflowError):
        w.ser.emit(1 << 40, 0)
    with pytest.raises(TypeError):
        w.ser.emit("x", 0)
    assert w.sink.calls == [] and w.pool.used_buffers == 0
    assert w.ser.num_records_out == 0 and w.ser.total_written_bytes == 0


# --- backpressure ---------------------------------------------------------------------------------


class QueueSink:
    """Hands every consumer to another thread through a queue."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self.finished: list[tuple[int, int]] = []

    def add_buffer_consumer(self, subpartition, consumer, partial):
        self.queue.put(consumer)

    def buffer_finished(self, subpartition, num_bytes):
        self.finished.append((subpartition, num_bytes))


def wait_until_blocked(thread: threading.Thread, timeout=30.0):
    """Wait until ``thread`` waits on a threading primitive (a blocking buffer request)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert thread.is_alive(), "the producer ended without blocking"
        frame_ = sys._current_frames().get(thread.ident)
        while frame_ is not None:
            if frame_.f_code.co_name == "wait" and frame_.f_code.co_filename.endswith(
                    "threading.py"):
                return
            frame_ = frame_.f_back
        time.sleep(0.001)
    pytest.fail("the producer never blocked")


def test_emit_blocks_until_another_thread_recycles(make_pool):
    nbp = make_pool(8, 32)
    pool = nbp.create_buffer_pool(2, 2, num_subpartitions=1, max_buffers_per_channel=100,
                                  max_overdraft_buffers=0)
    sink = QueueSink()
    ser = SpanningRecordSerializer(pool, 1, "bytes", sink)
    payloads = [bytes([i]) * (50 + 7 * i) for i in range(12)]  # each spans 2-5 buffers
    errors: list[BaseException] = []
    done = threading.Event()

    def produce():
        try:
            for p in payloads:
                ser.emit(p, 0)
            ser.finish_all()
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
        finally:
            done.set()
            sink.queue.put(None)

    received = bytearray()

    def consume():
        while True:
            consumer = sink.queue.get()
            if consumer is None:
                return
            while True:
                piece = consumer.build()
                received.extend(piece.to_bytes())
                piece.recycle()
                if consumer.is_finished:
                    consumer.close()
                    break
                if done.is_set() and not consumer.is_data_available:
                    consumer.close()  # closed by an error: nothing more will come
                    break
                time.sleep(0.0005)

    producer = threading.Thread(target=produce, name="producer")
    producer.start()
    wait_until_blocked(producer)
    assert not done.is_set()
    consumer_thread = threading.Thread(target=consume, name="consumer")
    consumer_thread.start()
    producer.join(60)
    consumer_thread.join(60)
    assert not producer.is_alive() and not consumer_thread.is_alive()
    assert errors == []
    assert ser.back_pressured_ns > 0
    assert bytes(received) == frame_all(payloads)
    assert ser.total_written_bytes == ser.num_bytes_out == len(received)
    ser.close()
    assert pool.used_buffers == 0


def test_blocked_emit_wakes_with_cancel_when_the_pool_is_destroyed(make_pool):
    nbp = make_pool(8, 32)
    pool = nbp.create_buffer_pool(2, 2, num_subpartitions=1, max_buffers_per_channel=100,
                                  max_overdraft_buffers=0)
    sink = QueueSink()
    ser = SpanningRecordSerializer(pool, 1, "bytes", sink)
    errors: list[BaseException] = []

    def produce():
        try:
            ser.emit(b"z" * 200, 0)  # 7 buffers from a pool of 2, nobody recycles
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    producer = threading.Thread(target=produce, name="producer")
    producer.start()
    wait_until_blocked(producer)
    pool.lazy_destroy()
    producer.join(60)
    assert not producer.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], CancelTaskError)
    assert ser.back_pressured_ns > 0
    ser.close()
    while not sink.queue.empty():
        sink.queue.get().close()
    assert nbp.is_whole


# --- payload serializers -------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    (b"abc", b"abc"),
    (b"", b""),
    (bytearray(b"\x00\xff"), b"\x00\xff"),
    (memoryview(b"0123456789")[2:5], b"234"),
    (np.arange(4, dtype=">i2"), b"\0\0\0\x01\0\x02\0\x03"),
    (np.frombuffer(b"xyz", dtype=np.uint8), b"xyz"),
    (array.array("B", [1, 2, 3]), b"\x01\x02\x03"),
])
def test_bytes_serializer_inputs(writer, value, expected):
    s = BytesSerializer()
    assert s.serialize(value) == expected
    assert s.deserialize(expected) == expected
    assert type(s.deserialize(bytearray(expected))) is bytes
    assert s.fixed_size == -1
    w = writer(4)
    w.ser.emit(value, 0)
    w.ser.finish_all()
    assert stream_of(w) == frame(expected)


def test_bytes_serializer_rejects_non_contiguous():
    with pytest.raises(BufferError):
        BytesSerializer().serialize(memoryview(b"abcdef")[::2])
    with pytest.raises(TypeError):
        BytesSerializer().serialize("text")


def stream_record_values():
    """The byte[] value of every StreamRecord vector, by name."""
    return {
        "StreamRecord(b'hello') without timestamp": b"hello",
        "StreamRecord(b'hello', ts=1700000000123)": b"hello",
        "StreamRecord(b'') without timestamp": b"",
        "StreamRecord(b'', ts=0)": b"",
        "StreamRecord(bytes 0..99, ts=-1)": bytes(range(100)),
        "StreamRecord(b'hello', ts=Long.MIN_VALUE)": b"hello",
    }


def test_byte_array_serializer_matches_flinks_stream_records(writer):
    with open(VECTORS / "stream_elements.json") as f:
        elements = json.load(f)["elements"]
    values = stream_record_values()
    records = [e for e in elements if e["name"].startswith("StreamRecord")]
    assert sorted(e["name"] for e in records) == sorted(values)
    s = BytePrimitiveArraySerializer()
    for e in records:
        element = bytes.fromhex(e["element_hex"])
        tag = element[0]
        body = element[1:] if tag == 1 else element[9:]
        assert tag in (0, 1)
        value = values[e["name"]]
        assert s.serialize(value) == body
        assert s.deserialize(body) == value
        # The whole element framed as RecordWriter frames it.
        w = writer(8)
        w.ser.emit(element, 0)
        w.ser.finish_all()
        assert stream_of(w).hex() == e["framed_hex"]
        w.close()


@pytest.mark.parametrize("payload", [
    b"", b"\0\0\0", b"\0\0\0\x01", b"\0\0\0\x01ab", b"\0\0\0\x03ab", b"\xff\xff\xff\xffab",
    b"\x80\0\0\0",
])
def test_byte_array_serializer_rejects_wrong_sizes(payload):
    with pytest.raises(CorruptRecordError):
        BytePrimitiveArraySerializer().deserialize(payload)


def test_byte_array_serializer_through_the_writer(writer):
    w = writer(5, serializer="byte_array")
    w.ser.emit(b"xyz", 0)
    w.ser.emit(bytearray(b""), 0)
    w.ser.finish_all()
    assert stream_of(w) == frame(b"\0\0\0\x03xyz") + frame(b"\0\0\0\0")


@pytest.mark.parametrize("text", ["", "plain ascii", "Grüße", "€ and ✓", "日本語テキスト",
                                  "non-BMP: 😀𝄞🀄", "a\x00b", "\U0010ffff"])
def test_string_serializer_utf8(text):
    s = StringSerializer()
    assert s.serialize(text) == text.encode("utf-8")
    assert s.deserialize(text.encode("utf-8")) == text


def test_string_serializer_non_bmp_bytes():
    assert StringSerializer().serialize("😀") == b"\xf0\x9f\x98\x80"
    assert StringSerializer().deserialize(b"\xf0\x9f\x98\x80") == "😀"


@pytest.mark.parametrize("payload", [b"\xff", b"\xf0\x9f\x98", b"ok\xc3", b"\xed\xa0\x80"])
def test_string_serializer_rejects_invalid_or_truncated_utf8(payload):
    with pytest.raises(CorruptRecordError):
        StringSerializer().deserialize(payload)


def test_string_serializer_rejects_non_str():
    with pytest.raises(TypeError):
        StringSerializer().serialize(b"bytes")


INT_CASES = [
    (Int32Serializer, ">i", [0, 1, -1, 42, 2**31 - 1, -2**31, 123456789, np.int32(-7)]),
    (Int64Serializer, ">q", [0, 1, -1, 2**63 - 1, -2**63, 1700000000123, np.int64(-7)]),
    (Float64Serializer, ">d", [0.0, -0.0, 1.5, -2.25, math.pi, math.inf, -math.inf, 5e-324,
                               1.7976931348623157e308, 3]),
]


@pytest.mark.parametrize("cls, fmt, values", INT_CASES, ids=["int32", "int64", "float64"])
def test_fixed_size_serializers_are_big_endian_java_layout(cls, fmt, values):
    s = cls()
    size = struct.calcsize(fmt)
    assert s.fixed_size == size
    for v in values:
        data = s.serialize(v)
        assert data == struct.pack(fmt, v)
        back = s.deserialize(data)
        assert back == v and type(back) is (float if cls is Float64Serializer else int)
        if cls is Float64Serializer:
            assert math.copysign(1.0, back) == math.copysign(1.0, v)


@pytest.mark.parametrize("cls, size", [(Int32Serializer, 4), (Int64Serializer, 8),
                                       (Float64Serializer, 8)])
def test_fixed_size_serializers_reject_wrong_sizes(cls, size):
    for n in sorted({0, 1, size - 1, size + 1, 2 * size}):
        with pytest.raises(CorruptRecordError):
            cls().deserialize(b"\x01" * n)


@pytest.mark.parametrize("cls, value", [(Int32Serializer, 2**31), (Int32Serializer, -2**31 - 1),
                                        (Int64Serializer, 2**63), (Int64Serializer, -2**63 - 1)])
def test_integer_serializers_reject_out_of_range(cls, value):
    with pytest.raises(OverflowError):
        cls().serialize(value)


@pytest.mark.parametrize("bits", ["7ff8000000000000", "fff8000000000000", "7ff0000000000001",
                                  "fff0000000000abc", "7fffffffffffffff"])
def test_float64_serializer_writes_nan_as_java_does(bits):
    """Flink's DoubleSerializer calls DataOutputSerializer.writeDouble, which writes
    ``Double.doubleToLongBits(v)``: every NaN becomes the canonical 0x7ff8000000000000."""
    (nan,) = struct.unpack(">d", bytes.fromhex(bits))
    assert math.isnan(nan)
    assert Float64Serializer().serialize(nan).hex() == "7ff8000000000000"
    assert math.isnan(Float64Serializer().deserialize(bytes.fromhex(bits)))


NUMPY_DTYPES = [STRUCTURED, np.dtype(">i4"), np.dtype("<c16"), np.dtype("S5"),
                np.dtype([("a", "u1"), ("b", ">u8", (2,))])]


@pytest.mark.parametrize("dtype", NUMPY_DTYPES, ids=str)
def test_numpy_record_serializer(dtype):
    s = NumpyRecordSerializer(dtype)
    assert s.dtype == dtype and s.fixed_size == dtype.itemsize
    arr = np.frombuffer(bytes((i * 29 + 3) % 256 for i in range(3 * dtype.itemsize)), dtype=dtype)
    r = rows(arr)
    for rec, raw in [(arr[0], r[0]), (arr[1:2], r[1]), (arr[2:3].reshape(()), r[2]), (r[1], r[1])]:
        assert s.serialize(rec) == raw
        back = s.deserialize(raw)
        # A numpy scalar (numeric scalars come back in native byte order).
        assert isinstance(back, np.generic)
        assert np.asarray(back).astype(dtype).tobytes() == raw
    for n in (0, dtype.itemsize - 1, dtype.itemsize + 1):
        with pytest.raises(CorruptRecordError):
            s.deserialize(b"\0" * n)
    with pytest.raises(ValueError):
        s.serialize(b"\0" * (dtype.itemsize + 1))
    with pytest.raises(ValueError):
        s.serialize(arr[:2])


def test_numpy_record_serializer_rejects_object_dtypes():
    with pytest.raises(ValueError):
        NumpyRecordSerializer(np.dtype(object))
    with pytest.raises(ValueError):
        NumpyRecordSerializer(np.dtype([("a", "i4"), ("o", object)]))


@pytest.mark.parametrize("value", [None, 0, "text", b"raw", [1, 2.5, "x"], {"k": {"n": (1,)}},
                                   set(range(50)), 10**40])
def test_pickle_serializer_round_trip(value):
    s = PickleSerializer()
    assert s.deserialize(s.serialize(value)) == value
    assert PickleSerializer(protocol=2).serialize(value) == pickle.dumps(value, protocol=2)


def test_pickle_serializer_rejects_garbage_and_truncation():
    s = PickleSerializer()
    data = s.serialize({"a": list(range(10))})
    with pytest.raises(CorruptRecordError):
        s.deserialize(b"not a pickle")
    with pytest.raises(CorruptRecordError):
        s.deserialize(data[:-3])
    with pytest.raises(CorruptRecordError):
        s.deserialize(b"")


def test_pickle_serializer_rejects_trailing_bytes():
    """A payload longer than the pickle in it is not one value (the serializer must consume
    exactly the record's bytes)."""
    s = PickleSerializer()
    with pytest.raises(CorruptRecordError):
        s.deserialize(s.serialize(12345) + b"trailing")


def test_get_serializer():
    for name, cls in SERIALIZERS.items():
        assert type(get_serializer(name)) is cls
    assert set(SERIALIZERS) >= {"bytes", "byte_array", "str", "int32", "int64", "float64",
                                "pickle"}
    inst = Int64Serializer()
    assert get_serializer(inst) is inst
    s = get_serializer(np.dtype(">f4"))
    assert isinstance(s, NumpyRecordSerializer) and s.dtype == np.dtype(">f4")
    for bad in ("nope", None, 3, "Bytes"):
        with pytest.raises(ValueError):
            get_serializer(bad)


def test_base_payload_serializer_is_abstract():
    with pytest.raises(NotImplementedError):
        PayloadSerializer().serialize(b"x")
    with pytest.raises(NotImplementedError):
        PayloadSerializer().deserialize(b"x")


_PICKLE_CASES = [
    ("bytes", b"\x00payload"),
    ("byte_array", b"\x01\x02"),
    ("str", "grüße"),
    ("int32", -7),
    ("int64", 1 << 40),
    ("float64", 2.5),
    ("pickle", {"a": (1, 2)}),
]


@pytest.mark.parametrize(("name", "value"), _PICKLE_CASES)
def test_serializers_pickle_to_an_equal_serializer(name, value):
    """A job's serializers travel to worker processes and Ray actors by pickle."""
    s = get_serializer(name)
    t = pickle.loads(pickle.dumps(s))
    assert type(t) is type(s) and t is not s
    assert t.serialize(value) == s.serialize(value)
    assert t.deserialize(s.serialize(value)) == value


def test_stateful_serializers_pickle_with_their_state():
    from flinknet.core import StreamElementSerializer, StreamRecord

    dtype = np.dtype([("k", ">i4"), ("v", "<f8")])
    numpy_s = pickle.loads(pickle.dumps(NumpyRecordSerializer(dtype)))
    assert numpy_s.dtype == dtype and numpy_s.fixed_size == dtype.itemsize
    p0 = pickle.loads(pickle.dumps(PickleSerializer(0)))
    assert p0.serialize([1]) == PickleSerializer(0).serialize([1]) != PickleSerializer().serialize([1])
    elements = StreamElementSerializer(NumpyRecordSerializer(dtype))
    record = StreamRecord(np.array((3, 1.5), dtype)[()], 42)
    copy = pickle.loads(pickle.dumps(elements))
    assert type(copy.value_serializer) is NumpyRecordSerializer and copy.value_serializer.dtype == dtype
    assert copy.serialize(record) == elements.serialize(record)
    assert copy.deserialize(elements.serialize(record)).timestamp == 42
