"""Read side of record serialization: ``RecordDeserializer`` (Flink's
``SpillingAdaptiveSpanningRecordDeserializer``, reference §6).

Flink's own network buffers (``tests/vectors/record_framing.json``) must give back the original
records. The results (PARTIAL_RECORD / INTERMEDIATE_RECORD_FROM_BUFFER / LAST_RECORD_FROM_BUFFER)
and the unconsumed bytes are compared with the pure-Python model in ``framing_model.py`` for
streams cut at every position, into 1-byte buffers and at random (hypothesis), and every buffer
must be recycled exactly when a result says it is consumed. Also covered: length prefixes split
across buffers, zero-length records, records above the spilling threshold (gathered in a file
that is removed afterwards), mixed huge and tiny records, zero-copy record views, batch reads
into lists and numpy arrays, ``get_unconsumed_bytes`` layouts (ports of Flink's
``SpanningRecordSerializationTest.testUnconsumedBuffer`` and ``SpanningWrapperTest``),
``clear()``, misuse, and the strict checks of corrupt input (negative or oversized lengths,
payload size mismatches) with the channel and stream offset they report. Round trips go through
``SpanningRecordSerializer`` into small buffers and back, for several payload serializers.
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flinknet import IllegalStateError
from flinknet._core.serialization import (
    BytesSerializer,
    DeserializationResult,
    Int32Serializer,
    RecordDeserializer,
    SpanningRecordSerializer,
)
from flinknet.errors import CorruptRecordError

from .framing_model import (
    PARTIAL,
    ReaderModel,
    chunk,
    frame,
    frame_all,
    model_results,
)

VECTORS = Path(__file__).parent.parent / "vectors"

HYPOTHESIS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                        HealthCheck.too_slow])

R = DeserializationResult
KIB = 1024
SPILL = 100 * KIB


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def buffer_pool(make_pool):
    """``buffer_pool(segment_size=1024, num_segments=32)``: a LocalBufferPool owning every
    segment of its own global pool (checked whole at teardown)."""

    def factory(segment_size=1024, num_segments=32):
        nbp = make_pool(num_segments, segment_size)
        return nbp.create_buffer_pool(num_segments, num_segments)

    return factory


@pytest.fixture
def pool(buffer_pool):
    return buffer_pool()


def make_buffer(pool, data: bytes, offset: int = 0, kind: str = "slice"):
    """A buffer of ``pool`` holding ``data``.

    ``kind="slice"``: a read-only slice built from a BufferConsumer, starting ``offset`` bytes into
    its segment (as Flink's test starts its buffers at a random offset); ``kind="network"``: a
    whole NetworkBuffer. The caller owns its one reference.
    """
    if kind == "network":
        buf = pool.request_buffer()
        assert buf is not None, "pool exhausted"
        buf.size = len(data)
        with memoryview(buf) as m:
            m[:] = data
        return buf
    builder = pool.request_buffer_builder()
    assert builder is not None, "pool exhausted"
    consumer = builder.create_buffer_consumer()
    try:
        if offset:
            builder.append_and_commit(b"\xee" * offset)
            consumer.build().recycle()
        assert builder.append_and_commit(data) == len(data)
        piece = consumer.build()
    finally:
        builder.close()
        consumer.close()
    assert piece.memory_segment_offset == offset and piece.reader_index == 0
    return piece


def feed(d: RecordDeserializer, pool, data: bytes, offset: int = 0, kind: str = "slice"):
    """``set_next_buffer`` then ``get_next_record`` until the buffer is consumed.

    Checks that the buffer is recycled, and its segment back in the pool, exactly when a result
    says it is consumed. Returns the list of ``(result, record)``.
    """
    buf = make_buffer(pool, data, offset, kind)
    d.set_next_buffer(buf)
    held = pool.used_buffers
    out = []
    while True:
        res, rec = d.get_next_record()
        assert isinstance(res, DeserializationResult)
        assert buf.is_recycled == res.is_buffer_consumed, (res, len(out))
        assert pool.used_buffers == held - res.is_buffer_consumed
        assert (rec is not None) == res.is_full_record
        out.append((res, rec))
        if res.is_buffer_consumed:
            return out


def records_of(results) -> list:
    return [rec for res, rec in results if res.is_full_record]


def as_model(results):
    return [(int(res), rec) for res, rec in results]


def load_framing_vectors():
    with open(VECTORS / "record_framing.json") as f:
        data = json.load(f)
    records = {r["index"]: bytes.fromhex(r["hex"]) for r in data["records"]}
    return records, {c["name"]: c for c in data["cases"]}


FRAMING_RECORDS, FRAMING_CASES = load_framing_vectors()


class ConsumerSink:
    """Keeps the consumers a SpanningRecordSerializer hands over, in order."""

    def __init__(self):
        self.consumers = []
        self.next = 0

    def add_buffer_consumer(self, subpartition, consumer, partial):
        self.consumers.append(consumer)

    def buffer_finished(self, subpartition, num_bytes):
        pass

    def pump(self, d: RecordDeserializer, seen_spilling: list | None = None) -> list:
        """Build every consumer's committed bytes into ``d`` (as a flushed subpartition would);
        close the consumers that are done. Returns the records completed."""
        out = []
        while self.next < len(self.consumers):
            c = self.consumers[self.next]
            piece = c.build()
            if piece.size:
                out.extend(d.read_records(piece))
                if seen_spilling is not None:
                    seen_spilling.append(d.is_spilling)
            else:
                piece.recycle()
            if not c.is_finished:
                break
            c.close()
            self.next += 1
        return out

    def close(self):
        for c in self.consumers:
            c.close()


# --- Flink's buffers -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["seg64_noflush", "seg128_noflush", "seg64_flush_every_record",
                                  "seg128_flush_every_record", "seg64_two_subpartitions"])
def test_flinks_buffers_give_back_the_records(pool, name):
    case = FRAMING_CASES[name]
    for sp in case["subpartitions"]:
        chunks = [bytes.fromhex(b["hex"]) for b in sp["buffers"] if b["data_type"] == "DATA_BUFFER"]
        d = RecordDeserializer(channel=(name, sp["index"]))
        results = [feed(d, pool, c) for c in chunks]
        expected = [FRAMING_RECORDS[i] for i in sp["record_indices"]]
        assert [r for rs in results for r in records_of(rs)] == expected
        assert [as_model(rs) for rs in results] == model_results(chunks)
        assert d.num_records == sp["deserializer_check"]["records_decoded"] == len(expected)
        assert d.stream_offset == sum(len(c) for c in chunks)
        assert not d.has_unfinished_data
        assert pool.used_buffers == 0


# --- results -------------------------------------------------------------------------------------


def test_deserialization_result_flags():
    assert [r.name for r in R] == ["PARTIAL_RECORD", "INTERMEDIATE_RECORD_FROM_BUFFER",
                                   "LAST_RECORD_FROM_BUFFER"]
    assert [(r.is_full_record, r.is_buffer_consumed) for r in R] == [
        (False, True), (True, False), (True, True)]


@pytest.mark.parametrize("kind", ["slice", "network"])
def test_records_of_one_buffer(pool, kind):
    d = RecordDeserializer()
    out = feed(d, pool, frame_all([b"one", b"", b"three"]), kind=kind)
    assert out == [(R.INTERMEDIATE_RECORD_FROM_BUFFER, b"one"),
                   (R.INTERMEDIATE_RECORD_FROM_BUFFER, b""),
                   (R.LAST_RECORD_FROM_BUFFER, b"three")]
    assert pool.used_buffers == 0


def test_record_spanning_three_buffers(pool):
    d = RecordDeserializer()
    stream = frame(bytes(range(30)))
    assert feed(d, pool, stream[:10]) == [(R.PARTIAL_RECORD, None)]
    assert d.has_unfinished_data
    assert feed(d, pool, stream[10:20]) == [(R.PARTIAL_RECORD, None)]
    assert pool.used_buffers == 0  # a consumed buffer goes back at once
    assert feed(d, pool, stream[20:]) == [(R.LAST_RECORD_FROM_BUFFER, bytes(range(30)))]
    assert not d.has_unfinished_data


@pytest.mark.parametrize("split", [1, 2, 3])
def test_length_prefix_split_across_buffers(pool, split):
    d = RecordDeserializer()
    stream = frame(b"payload") + frame(b"next")
    assert feed(d, pool, stream[:split]) == [(R.PARTIAL_RECORD, None)]
    assert d.get_unconsumed_bytes() == stream[:split]
    assert feed(d, pool, stream[split:]) == [(R.INTERMEDIATE_RECORD_FROM_BUFFER, b"payload"),
                                             (R.LAST_RECORD_FROM_BUFFER, b"next")]


def test_length_prefix_in_four_one_byte_buffers(pool):
    d = RecordDeserializer()
    stream = frame(b"xy")
    for i in range(4):
        assert feed(d, pool, stream[i:i + 1]) == [(R.PARTIAL_RECORD, None)]
    assert feed(d, pool, stream[4:]) == [(R.LAST_RECORD_FROM_BUFFER, b"xy")]


def test_zero_length_records(pool):
    d = RecordDeserializer()
    assert records_of(feed(d, pool, b"\0" * 12)) == [b"", b"", b""]
    # Complete as soon as its (split) prefix is.
    assert feed(d, pool, b"\0\0") == [(R.PARTIAL_RECORD, None)]
    assert feed(d, pool, b"\0\0") == [(R.LAST_RECORD_FROM_BUFFER, b"")]
    assert feed(d, pool, b"\0\0\0") == [(R.PARTIAL_RECORD, None)]
    assert feed(d, pool, b"\0" + frame(b"z")) == [(R.INTERMEDIATE_RECORD_FROM_BUFFER, b""),
                                                  (R.LAST_RECORD_FROM_BUFFER, b"z")]
    # Right after a spanning record, in the buffer that completes it.
    stream = frame(b"s" * 20) + frame(b"")
    assert feed(d, pool, stream[:8]) == [(R.PARTIAL_RECORD, None)]
    assert feed(d, pool, stream[8:]) == [(R.INTERMEDIATE_RECORD_FROM_BUFFER, b"s" * 20),
                                         (R.LAST_RECORD_FROM_BUFFER, b"")]
    assert d.num_records == 8


def test_empty_buffers(pool):
    d = RecordDeserializer()
    assert feed(d, pool, b"") == [(R.PARTIAL_RECORD, None)]
    assert feed(d, pool, b"\0\0\0") == [(R.PARTIAL_RECORD, None)]
    assert feed(d, pool, b"") == [(R.PARTIAL_RECORD, None)]
    assert feed(d, pool, b"\x02") == [(R.PARTIAL_RECORD, None)]
    assert feed(d, pool, b"") == [(R.PARTIAL_RECORD, None)]
    assert feed(d, pool, b"ab") == [(R.LAST_RECORD_FROM_BUFFER, b"ab")]


STREAM = frame_all([b"", b"a", b"bc", b"def", b"0123456789", b"", b"x" * 33, b"tail"])


@pytest.mark.parametrize("cut", range(len(STREAM) + 1))
def test_stream_cut_in_two_at_every_position(pool, cut):
    d = RecordDeserializer()
    chunks = [STREAM[:cut], STREAM[cut:]]
    results = [feed(d, pool, c, offset=cut % 7) for c in chunks]
    assert [as_model(rs) for rs in results] == model_results(chunks)
    assert [r for rs in results for r in records_of(rs)] == [
        b"", b"a", b"bc", b"def", b"0123456789", b"", b"x" * 33, b"tail"]
    assert not d.has_unfinished_data and pool.used_buffers == 0


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 31])
def test_stream_in_buffers_of_fixed_size(pool, size):
    """Flink's testIntRecordsSpanningMultipleSegments (1-byte segments), UnalignedBuffers (31)."""
    d = RecordDeserializer()
    chunks = [STREAM[i:i + size] for i in range(0, len(STREAM), size)]
    model = ReaderModel()
    for c in chunks:
        assert as_model(feed(d, pool, c)) == model.feed(c)
    assert d.num_records == 8 and d.stream_offset == len(STREAM)


@settings(max_examples=300, **HYPOTHESIS)
@given(payloads=st.lists(st.binary(max_size=40), max_size=12),
       cut_fractions=st.lists(st.floats(0, 1), max_size=20),
       offset=st.integers(0, 100))
def test_random_chunking_matches_model(pool, payloads, cut_fractions, offset):
    stream = frame_all(payloads)
    chunks = chunk(stream, [int(f * len(stream)) for f in cut_fractions])
    d = RecordDeserializer()
    model = ReaderModel()
    got = []
    for i, c in enumerate(chunks):
        expected_unconsumed = model.unconsumed_after_feed(c)
        expected = model.feed(c)
        buf = make_buffer(pool, c, offset=(offset + i) % 101)
        d.set_next_buffer(buf)
        assert d.get_unconsumed_bytes() == expected_unconsumed
        results = []
        while True:
            res, rec = d.get_next_record()
            results.append((int(res), rec))
            assert buf.is_recycled == res.is_buffer_consumed
            if res.is_buffer_consumed:
                break
        assert results == expected
        assert d.has_unfinished_data == model.has_unfinished_data
        got += [rec for res, rec in results if res != PARTIAL]
    assert got == payloads
    assert d.num_records == len(payloads) and d.stream_offset == len(stream)
    assert pool.used_buffers == 0



# --- spilling ------------------------------------------------------------------------------------


def spill_files(path: Path) -> list[str]:
    return sorted(os.listdir(path))


def test_record_above_threshold_is_spilled_and_the_file_removed(buffer_pool, tmp_path):
    pool = buffer_pool(32 * KIB, 8)
    big = random.Random(1).randbytes(300 * KIB)
    stream = frame(big) + frame(b"tiny")
    chunks = [stream[i:i + 32 * KIB] for i in range(0, len(stream), 32 * KIB)]
    d = RecordDeserializer(spilling_threshold=SPILL, tmp_dirs=[tmp_path], channel="c")
    assert not d.is_spilling
    for c in chunks[:-1]:
        assert feed(d, pool, c) == [(R.PARTIAL_RECORD, None)]
        assert d.is_spilling
        (name,) = spill_files(tmp_path)
        assert name.endswith(".inputchannel") and len(name) == 40 + len(".inputchannel")
    assert feed(d, pool, chunks[-1]) == [(R.INTERMEDIATE_RECORD_FROM_BUFFER, big),
                                         (R.LAST_RECORD_FROM_BUFFER, b"tiny")]
    assert not d.is_spilling
    assert spill_files(tmp_path) == []
    assert pool.used_buffers == 0


@pytest.mark.parametrize("length, spilled", [(SPILL, False), (SPILL + 1, True)])
def test_spilling_threshold_is_strict(buffer_pool, tmp_path, length, spilled):
    pool = buffer_pool(32 * KIB, 8)
    payload = bytes(i % 253 for i in range(length))
    stream = frame(payload)
    d = RecordDeserializer(spilling_threshold=SPILL, tmp_dirs=[tmp_path])
    seen = set()
    records = []
    for i in range(0, len(stream), 32 * KIB):
        records += records_of(feed(d, pool, stream[i:i + 32 * KIB]))
        seen.add(d.is_spilling)
        seen.add(bool(spill_files(tmp_path)))
    assert records == [payload]
    assert (True in seen) == spilled
    assert spill_files(tmp_path) == []


def test_spilled_record_view_and_unconsumed_bytes(buffer_pool, tmp_path):
    pool = buffer_pool(64 * KIB, 8)
    big = random.Random(2).randbytes(250 * KIB)
    stream = frame(big) + frame(b"after")
    d = RecordDeserializer(spilling_threshold=SPILL, tmp_dirs=[tmp_path])
    cut1, cut2 = 64 * KIB, 128 * KIB
    d.set_next_buffer(make_buffer(pool, stream[:cut1]))
    assert d.get_next_record_view() == (R.PARTIAL_RECORD, None)
    assert d.is_spilling
    assert d.get_unconsumed_bytes() == stream[:cut1]
    d.set_next_buffer(make_buffer(pool, stream[cut1:cut2]))
    assert d.get_unconsumed_bytes() == stream[:cut2]
    assert d.get_next_record_view() == (R.PARTIAL_RECORD, None)
    rest = stream[cut2:]
    d.set_next_buffer(make_buffer(pool, rest[:64 * KIB]))
    d.get_next_record_view()
    d.set_next_buffer(make_buffer(pool, rest[64 * KIB:]))
    assert d.get_unconsumed_bytes() == stream
    res, view = d.get_next_record_view()
    assert res == R.INTERMEDIATE_RECORD_FROM_BUFFER
    assert isinstance(view, memoryview) and view.readonly and bytes(view) == big
    assert spill_files(tmp_path) == []
    assert d.get_unconsumed_bytes() == frame(b"after")
    res, view2 = d.get_next_record_view()
    assert (res, bytes(view2)) == (R.LAST_RECORD_FROM_BUFFER, b"after")
    with pytest.raises(ValueError):
        bytes(view)  # released by the call after it
    assert d.read_records() == []
    d.clear()
    assert pool.used_buffers == 0


def test_spill_skips_a_directory_that_fails(buffer_pool, tmp_path):
    pool = buffer_pool(64 * KIB, 8)
    good = tmp_path / "good"
    good.mkdir()
    d = RecordDeserializer(spilling_threshold=SPILL,
                           tmp_dirs=[tmp_path / "missing" / "deeper", good])
    payload = b"q" * (SPILL + 10)
    stream = frame(payload)
    assert feed(d, pool, stream[:64 * KIB]) == [(R.PARTIAL_RECORD, None)]
    assert len(spill_files(good)) == 1
    assert records_of(feed(d, pool, stream[64 * KIB:])) == [payload]
    assert spill_files(good) == [] and spill_files(tmp_path) == ["good"]


def test_spill_fails_when_no_directory_works(buffer_pool, tmp_path):
    pool = buffer_pool(64 * KIB, 8)
    d = RecordDeserializer(spilling_threshold=SPILL, tmp_dirs=[tmp_path / "missing"])
    with pytest.raises(OSError, match="Could not find a unique file channel name"):
        feed(d, pool, frame(b"q" * (SPILL + 10))[:64 * KIB])
    d.clear()
    assert pool.used_buffers == 0 and spill_files(tmp_path) == []


def test_mixed_huge_and_tiny_records(make_pool, tmp_path):
    """Flink's testHandleMixedLargeRecords: 99 records alternating a 4-byte int and a large
    random record (some below, most above the spilling threshold), 32 KiB segments, written by
    SpanningRecordSerializer and read back while it writes."""
    rng = random.Random(99)
    records = []
    for i in range(99):
        if i % 2 == 0:
            records.append(struct.pack(">i", 42))
        else:
            records.append(rng.randbytes(rng.randrange(50 * KIB, 400 * KIB)))
    assert any(len(r) > SPILL for r in records) and any(KIB < len(r) <= SPILL for r in records)
    nbp = make_pool(16, 32 * KIB)
    pool = nbp.create_buffer_pool(16, 16, num_subpartitions=1, max_buffers_per_channel=16)
    sink = ConsumerSink()
    ser = SpanningRecordSerializer(pool, 1, "bytes", sink)
    d = RecordDeserializer(spilling_threshold=SPILL, tmp_dirs=[tmp_path], channel="mixed")
    got, spilling = [], []
    try:
        for r in records:
            ser.emit(r, 0)
            got += sink.pump(d, spilling)
        ser.finish_all()
        got += sink.pump(d, spilling)
    finally:
        ser.close()
        sink.close()
    assert got == records
    assert True in spilling and spill_files(tmp_path) == []
    assert not d.has_unfinished_data and pool.used_buffers == 0


# --- record views --------------------------------------------------------------------------------


def test_record_views(pool):
    d = RecordDeserializer()
    b1 = make_buffer(pool, frame(b"first") + frame(b"second"))
    d.set_next_buffer(b1)
    res, v1 = d.get_next_record_view()
    assert res == R.INTERMEDIATE_RECORD_FROM_BUFFER
    assert isinstance(v1, memoryview) and v1.readonly and bytes(v1) == b"first"
    with pytest.raises(TypeError):
        v1[0] = 0
    res, v2 = d.get_next_record_view()
    assert (res, bytes(v2)) == (R.LAST_RECORD_FROM_BUFFER, b"second")
    with pytest.raises(ValueError):
        bytes(v1)  # released by the next call
    # The LAST view keeps its buffer until the next call.
    assert not b1.is_recycled and pool.used_buffers == 1
    b2 = make_buffer(pool, frame(b"third"))
    d.set_next_buffer(b2)
    assert b1.is_recycled
    with pytest.raises(ValueError):
        bytes(v2)
    res, v3 = d.get_next_record_view()
    assert (res, bytes(v3)) == (R.LAST_RECORD_FROM_BUFFER, b"third")
    assert not b2.is_recycled
    assert d.read_records() == []  # a call: releases the view and recycles
    assert b2.is_recycled and pool.used_buffers == 0


def test_record_view_points_into_the_buffer(pool):
    """Zero copy: the view shows the buffer's memory."""
    d = RecordDeserializer()
    buf = pool.request_buffer()
    data = frame(b"abcd") + frame(b"efgh")
    buf.size = len(data)
    with memoryview(buf) as m:
        m[:] = data
    d.set_next_buffer(buf.retain())  # keep one reference to write through
    res, view = d.get_next_record_view()
    assert bytes(view) == b"abcd"
    with memoryview(buf) as m:
        m[4:6] = b"XY"
    assert bytes(view) == b"XYcd"
    assert d.get_next_record_view()[0] == R.LAST_RECORD_FROM_BUFFER
    d.clear()
    buf.recycle()
    assert pool.used_buffers == 0


def test_view_of_a_spanning_record(pool):
    d = RecordDeserializer()
    payload = bytes(range(200))
    stream = frame(payload) + frame(b"z")
    d.set_next_buffer(make_buffer(pool, stream[:50]))
    assert d.get_next_record_view() == (R.PARTIAL_RECORD, None)
    d.set_next_buffer(make_buffer(pool, stream[50:150]))
    assert d.get_next_record_view() == (R.PARTIAL_RECORD, None)
    d.set_next_buffer(make_buffer(pool, stream[150:]))
    res, view = d.get_next_record_view()
    assert res == R.INTERMEDIATE_RECORD_FROM_BUFFER and bytes(view) == payload
    res, view2 = d.get_next_record_view()
    assert (res, bytes(view2)) == (R.LAST_RECORD_FROM_BUFFER, b"z")
    with pytest.raises(ValueError):
        view.tobytes()
    assert d.read_records() == []
    d.clear()
    assert pool.used_buffers == 0


@pytest.mark.parametrize("serializer", ["bytes", "byte_array"])
def test_a_spanning_record_in_pieces_and_an_empty_one_behind_a_split_prefix(pool, serializer):
    """With the "bytes" serializer a spanning record is gathered straight into the bytes object
    handed out; with any other into the deserializer's own memory. Either way: the record whole,
    the unconsumed bytes mid-record as Flink lays them out, and an empty record whose length
    prefix is split across buffers."""
    d = RecordDeserializer(serializer)
    wrap = (lambda b: b) if serializer == "bytes" else (lambda b: struct.pack(">i", len(b)) + b)
    big = bytes(range(256)) * 12
    stream = frame(wrap(big)) + frame(wrap(b""))
    cuts = [0, 7, 900, 1800, 2700, len(stream) - 2, len(stream)]   # pieces of at most 1 KiB
    got = []
    for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
        got += d.read_records(make_buffer(pool, stream[a:b]))
        if i == 1:   # mid-record: [len][bytes gathered so far]
            assert d.get_unconsumed_bytes() == stream[:b]
    assert got == [big, b""]
    assert not d.has_unfinished_data and pool.used_buffers == 0


@pytest.mark.parametrize("derive", ["slice", "numpy"])
def test_a_derived_view_still_alive_makes_the_next_call_fail(pool, derive):
    """The next call releases the view and raises BufferError while views derived from it are
    alive; once they are gone, reading goes on and every buffer comes back."""
    d = RecordDeserializer()
    d.set_next_buffer(make_buffer(pool, frame(b"abc") + frame(b"def")))
    res, view = d.get_next_record_view()
    derived = view[1:] if derive == "slice" else np.frombuffer(view, dtype=np.uint8)[1:]
    try:
        with pytest.raises(BufferError):
            d.get_next_record_view()
        assert bytes(derived) == b"bc"
        derived = None
        view.release()
        res, view = d.get_next_record_view()
        assert (res, bytes(view)) == (R.LAST_RECORD_FROM_BUFFER, b"def")
    finally:
        derived = None
        view.release()
        d.clear()
    assert pool.used_buffers == 0


@pytest.mark.parametrize("which", ["intermediate", "last"])
def test_clear_releases_an_outstanding_view(pool, which):
    """The view is valid until the next call on the deserializer, which releases it: clear() is
    such a call, and must recycle the buffer even though the caller still holds the view."""
    d = RecordDeserializer()
    buf = make_buffer(pool, frame(b"abc") + frame(b"def"))
    d.set_next_buffer(buf)
    res, view = d.get_next_record_view()
    if which == "last":
        res, view = d.get_next_record_view()
        assert res == R.LAST_RECORD_FROM_BUFFER
    try:
        d.clear()
        assert buf.is_recycled and pool.used_buffers == 0
        with pytest.raises(ValueError):
            bytes(view)
    finally:
        # Leave nothing behind even when clear() failed.
        view.release()
        if not buf.is_recycled:
            buf.recycle()


# --- batch reads ---------------------------------------------------------------------------------


def test_read_records(pool):
    d = RecordDeserializer("int32")
    assert d.read_records() == []
    values = [5, -1, 2**31 - 1, 0, 77]
    stream = b"".join(frame(struct.pack(">i", v)) for v in values)
    assert d.read_records(make_buffer(pool, stream[:10])) == [5]
    assert d.read_records(make_buffer(pool, stream[10:11])) == []
    assert d.read_records(make_buffer(pool, stream[11:30])) == [-1, 2**31 - 1]
    assert d.read_records(make_buffer(pool, stream[30:])) == [0, 77]
    assert d.read_records() == []
    assert pool.used_buffers == 0 and d.num_records == 5


@pytest.mark.parametrize("dtype", [np.dtype(">i4"), np.dtype([("k", "<i8"), ("v", ">f4")]),
                                   np.dtype("S3")])
def test_read_array(pool, dtype):
    rng = np.random.default_rng(5)
    arr = np.frombuffer(rng.bytes(40 * dtype.itemsize), dtype=dtype)
    stream = frame_all(arr[i:i + 1].tobytes() for i in range(len(arr)))
    d = RecordDeserializer(channel="arr")
    parts = []
    for c in chunk(stream, [3, 4, 50, 51, 52, 200, 333]):
        out = d.read_array(make_buffer(pool, c), dtype)
        assert isinstance(out, np.ndarray) and out.dtype == dtype and out.ndim == 1
        parts.append(out)
    assert parts[0].size == 0  # 3 bytes: only part of a length prefix
    assert b"".join(p.tobytes() for p in parts) == arr.tobytes()
    assert pool.used_buffers == 0 and not d.has_unfinished_data


def test_read_array_rejects_a_record_of_another_size(pool):
    d = RecordDeserializer(channel="arr")
    stream = frame(b"abcd") + frame(b"efg") + frame(b"hijk")
    try:
        with pytest.raises(CorruptRecordError) as info:
            d.read_array(make_buffer(pool, stream), np.dtype(">i4"))
    finally:
        d.clear()
    assert info.value.channel == "arr"
    assert info.value.offset == 8  # the length prefix of the 3-byte record
    assert pool.used_buffers == 0


def test_read_array_rejects_a_spanning_record_of_another_size(pool):
    d = RecordDeserializer(channel="arr")
    stream = frame(b"abcd") + frame(b"efghij") + frame(b"klmn")
    assert d.read_array(make_buffer(pool, stream[:12]), np.dtype(">i4")).tobytes() == b"abcd"
    try:
        with pytest.raises(CorruptRecordError) as info:
            d.read_array(make_buffer(pool, stream[12:]), np.dtype(">i4"))
    finally:
        d.clear()
    assert (info.value.channel, info.value.offset) == ("arr", 8)
    assert pool.used_buffers == 0


def test_read_array_rejects_a_negative_length(pool):
    d = RecordDeserializer(channel="arr")
    stream = frame(b"abcd") + struct.pack(">i", -4) + b"efgh"
    try:
        with pytest.raises(CorruptRecordError) as info:
            d.read_array(make_buffer(pool, stream), np.dtype(">i4"))
    finally:
        d.clear()
    assert (info.value.channel, info.value.offset) == ("arr", 8)
    assert pool.used_buffers == 0


def test_read_array_rejects_object_dtypes(pool):
    d = RecordDeserializer()
    buf = make_buffer(pool, frame(b"abcd"))
    with pytest.raises(ValueError):
        d.read_array(buf, object)
    d.clear()
    if not buf.is_recycled:
        buf.recycle()
    assert pool.used_buffers == 0


# --- unconsumed bytes ----------------------------------------------------------------------------


def test_unconsumed_bytes_layouts(pool):
    d = RecordDeserializer()
    assert d.get_unconsumed_bytes() == b""
    stream = frame(b"one") + frame(b"two") + frame(b"s" * 30)
    d.set_next_buffer(make_buffer(pool, stream[:20]))
    assert d.get_unconsumed_bytes() == stream[:20]  # the whole non-spanning rest
    d.get_next_record()
    assert d.get_unconsumed_bytes() == stream[7:20]
    d.get_next_record()
    assert d.get_unconsumed_bytes() == stream[14:20]
    assert d.get_next_record() == (R.PARTIAL_RECORD, None)
    # Spanning in memory: [len][bytes gathered so far].
    assert d.get_unconsumed_bytes() == stream[14:20]
    d.set_next_buffer(make_buffer(pool, stream[20:30]))
    assert d.get_unconsumed_bytes() == stream[14:30]
    assert d.get_next_record() == (R.PARTIAL_RECORD, None)
    # The buffer completing it: the record, then the rest of the buffer.
    d.set_next_buffer(make_buffer(pool, stream[30:] + b"\0\0"))
    assert d.get_unconsumed_bytes() == stream[14:] + b"\0\0"
    assert d.get_next_record() == (R.INTERMEDIATE_RECORD_FROM_BUFFER, b"s" * 30)
    assert d.get_unconsumed_bytes() == b"\0\0"
    assert d.get_next_record() == (R.PARTIAL_RECORD, None)
    # A partial length prefix.
    assert d.get_unconsumed_bytes() == b"\0\0"
    d.clear()
    assert d.get_unconsumed_bytes() == b""


@pytest.mark.parametrize("payload, segment_size", [
    (struct.pack(">i", 1234), 1024),     # testSmallRecordUnconsumedBuffer
    (struct.pack(">i", -99), 1),         # testSpanningRecordUnconsumedBuffer
    (bytes(range(256)) * 9, 1),          # testLargeSpanningRecordUnconsumedBuffer
])
def test_unconsumed_bytes_while_a_record_arrives(pool, payload, segment_size):
    """Port of Flink's testUnconsumedBuffer: after each buffer, every byte fed so far is
    unconsumed until the record is returned."""
    d = RecordDeserializer()
    stream = frame(payload)
    fed = b""
    for i in range(0, len(stream), segment_size):
        c = stream[i:i + segment_size]
        d.set_next_buffer(make_buffer(pool, c))
        fed += c
        assert d.get_unconsumed_bytes() == fed
        res, rec = d.get_next_record()
    assert (res, rec) == (R.LAST_RECORD_FROM_BUFFER, payload)
    assert d.get_unconsumed_bytes() == b"" and pool.used_buffers == 0


def test_unconsumed_bytes_of_spanning_record_with_leftover(pool):
    """Port of Flink's testLargeSpanningRecordUnconsumedBufferWithLeftOverBytes: byte-by-byte
    buffers, the last one followed by 3 leftover bytes; twice, with clear() between."""
    d = RecordDeserializer()
    for round_ in range(2):
        payload = bytes((round_ * 7 + i) % 256 for i in range(600))
        stream = frame(payload)
        fed = b""
        for i in range(len(stream)):
            c = stream[i:i + 1] + (b"\x2a\x2b\x2c" if i == len(stream) - 1 else b"")
            d.set_next_buffer(make_buffer(pool, c))
            fed += c
            assert d.get_unconsumed_bytes() == fed
            res, rec = d.get_next_record()
        assert (res, rec) == (R.INTERMEDIATE_RECORD_FROM_BUFFER, payload)
        assert d.get_unconsumed_bytes() == b"\x2a\x2b\x2c"
        assert d.get_next_record() == (R.PARTIAL_RECORD, None)
        assert d.get_unconsumed_bytes() == b"\x2a\x2b\x2c"
        d.clear()
        assert d.get_unconsumed_bytes() == b"" and pool.used_buffers == 0


def test_unconsumed_bytes_of_a_spilled_record_with_leftover(buffer_pool, tmp_path):
    """Port of Flink's SpanningWrapperTest.testLargeUnconsumedSegment: a spilled record, the
    buffer completing it also holds a whole second record; the first spill directory fails."""
    pool = buffer_pool(512 * KIB, 4)
    record_len = 200 * KIB
    first_chunk = int(record_len * 0.9)
    rng = random.Random(7)
    payload1, payload2 = rng.randbytes(record_len), rng.randbytes(2 * record_len)
    record1, record2 = frame(payload1), frame(payload2)
    d = RecordDeserializer(spilling_threshold=SPILL,
                           tmp_dirs=[tmp_path / "does-not-exist" / "x", tmp_path])
    assert feed(d, pool, record1[:first_chunk]) == [(R.PARTIAL_RECORD, None)]
    assert d.is_spilling and len(spill_files(tmp_path)) == 1
    d.set_next_buffer(make_buffer(pool, record1[first_chunk:] + record2))
    assert d.get_unconsumed_bytes() == record1 + record2
    assert d.get_next_record() == (R.INTERMEDIATE_RECORD_FROM_BUFFER, payload1)
    assert spill_files(tmp_path) == []
    assert d.get_unconsumed_bytes() == record2
    assert d.get_next_record() == (R.LAST_RECORD_FROM_BUFFER, payload2)
    assert pool.used_buffers == 0


# --- clear and misuse ----------------------------------------------------------------------------


def test_clear_recycles_and_resets(pool):
    d = RecordDeserializer()
    stream = frame(b"a") + frame(b"b" * 40)
    d.set_next_buffer(make_buffer(pool, stream[:5]))
    d.get_next_record()
    assert feed(d, pool, stream[5:10]) == [(R.PARTIAL_RECORD, None)]  # a spanning record
    d.set_next_buffer(make_buffer(pool, frame(b"x") + frame(b"y")))
    assert d.has_unfinished_data and pool.used_buffers == 1
    d.clear()
    assert pool.used_buffers == 0
    assert not d.has_unfinished_data and d.get_unconsumed_bytes() == b""
    d.clear()  # idempotent
    # A fresh stream starts at a record boundary.
    assert records_of(feed(d, pool, frame(b"fresh") + frame(b""))) == [b"fresh", b""]


def test_clear_drops_a_spilled_partial_record(buffer_pool, tmp_path):
    pool = buffer_pool(64 * KIB, 4)
    d = RecordDeserializer(spilling_threshold=SPILL, tmp_dirs=[tmp_path])
    feed(d, pool, frame(b"s" * (2 * SPILL))[:64 * KIB])
    assert d.is_spilling and len(spill_files(tmp_path)) == 1
    d.clear()
    assert not d.is_spilling and spill_files(tmp_path) == []
    assert records_of(feed(d, pool, frame(b"ok"))) == [b"ok"]
    assert pool.used_buffers == 0


def test_clear_recycles_the_buffer_of_a_dropped_last_view(pool):
    d = RecordDeserializer()
    buf = make_buffer(pool, frame(b"v"))
    d.set_next_buffer(buf)
    assert d.get_next_record_view()[0] == R.LAST_RECORD_FROM_BUFFER  # view dropped at once
    assert not buf.is_recycled
    d.clear()
    assert buf.is_recycled and pool.used_buffers == 0


def test_set_next_buffer_before_the_previous_was_consumed(pool):
    d = RecordDeserializer()
    d.set_next_buffer(make_buffer(pool, frame(b"a") + frame(b"b")))
    assert d.get_next_record() == (R.INTERMEDIATE_RECORD_FROM_BUFFER, b"a")
    other = make_buffer(pool, frame(b"c"))
    with pytest.raises(IllegalStateError):
        d.set_next_buffer(other)
    assert not other.is_recycled  # not taken over
    assert d.get_next_record() == (R.LAST_RECORD_FROM_BUFFER, b"b")
    d.set_next_buffer(other)
    assert d.get_next_record() == (R.LAST_RECORD_FROM_BUFFER, b"c")
    assert pool.used_buffers == 0


def test_misuse(pool):
    d = RecordDeserializer()
    with pytest.raises(IllegalStateError):
        d.get_next_record()
    with pytest.raises(IllegalStateError):
        d.get_next_record_view()
    recycled = make_buffer(pool, frame(b"x"))
    recycled.recycle()
    with pytest.raises(IllegalStateError):
        d.set_next_buffer(recycled)
    with pytest.raises(TypeError):
        d.set_next_buffer(None)
    feed(d, pool, frame(b"x"))
    with pytest.raises(IllegalStateError):
        d.get_next_record()  # the buffer was consumed
    assert pool.used_buffers == 0


@pytest.mark.parametrize("kwargs", [
    dict(spilling_threshold=SPILL - 1), dict(spilling_threshold=0),
    dict(max_record_length=-1), dict(max_record_length=2**31), dict(serializer="nope"),
])
def test_constructor_rejects(kwargs):
    with pytest.raises(ValueError):
        RecordDeserializer(**kwargs)


def test_constructor_defaults():
    d = RecordDeserializer()
    assert isinstance(d.serializer, BytesSerializer)
    assert not d.is_spilling and not d.has_unfinished_data
    assert d.num_records == 0 and d.stream_offset == 0
    s = Int32Serializer()
    assert RecordDeserializer(s, spilling_threshold=SPILL, max_record_length=0).serializer is s


# --- corrupt input -------------------------------------------------------------------------------


def corrupt(d, pool, chunks):
    """Feed ``chunks`` until CorruptRecordError; returns it (fails if none is raised)."""
    try:
        with pytest.raises(CorruptRecordError) as info:
            for c in chunks:
                feed(d, pool, c)
    finally:
        d.clear()
    assert pool.used_buffers == 0
    return info.value


@pytest.mark.parametrize("length", [-1, -2**31, -5])
def test_negative_length(pool, length):
    d = RecordDeserializer(channel="ch-1")
    err = corrupt(d, pool, [frame(b"hello") + struct.pack(">i", length) + b"xxxxxx"])
    assert (err.channel, err.offset) == ("ch-1", 9)
    assert str(length) in str(err)


@pytest.mark.parametrize("split", [1, 2, 3])
def test_negative_length_split_across_buffers(pool, split):
    """The offset is that of the record's length prefix, wherever the buffers cut it."""
    d = RecordDeserializer(channel=("gate", 3))
    prefix = struct.pack(">i", -7)
    stream = frame(b"hello") + prefix + b"zz"
    err = corrupt(d, pool, [stream[:9 + split], stream[9 + split:]])
    assert (err.channel, err.offset) == (("gate", 3), 9)


@pytest.mark.parametrize("cut", [None, 2, 6])
def test_length_above_maximum(pool, cut):
    d = RecordDeserializer(channel="m", max_record_length=100)
    assert records_of(feed(d, pool, frame(b"m" * 100))) == [b"m" * 100]  # the maximum is allowed
    stream = frame(b"k") + struct.pack(">i", 101) + b"m" * 101
    chunks = [stream] if cut is None else [stream[:5 + cut], stream[5 + cut:]]
    err = corrupt(d, pool, chunks)
    assert (err.channel, err.offset) == ("m", 104 + 5)


@pytest.mark.parametrize("chunks", [[b"\x7f\xff\xff\xff" + b"x" * 100], [b"\x7f\xff\xff\xff"],
                                    [b"\x7f\xff", b"\xff\xff" + b"x" * 10]],
                         ids=["in-buffer", "prefix-only", "split-prefix"])
def test_huge_length_allocates_nothing(pool, chunks):
    d = RecordDeserializer(channel="huge")  # default maximum: 1 GiB
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with pytest.raises(CorruptRecordError) as info:
            for c in chunks:
                feed(d, pool, c)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1024 * KIB
    assert (info.value.channel, info.value.offset) == ("huge", 0)
    assert "2147483647" in str(info.value)
    d.clear()
    assert pool.used_buffers == 0


def test_payload_size_mismatch_in_one_buffer(pool):
    d = RecordDeserializer("int32", channel="p")
    err = corrupt(d, pool, [frame(struct.pack(">i", 1)) + frame(b"abc") + frame(b"abcd")])
    assert (err.channel, err.offset) == ("p", 8)


def test_payload_size_mismatch_of_a_spanning_record(pool):
    d = RecordDeserializer("int64", channel="p")
    stream = frame(struct.pack(">q", 1)) + frame(b"123456789")
    err = corrupt(d, pool, [stream[:15], stream[15:]])
    assert (err.channel, err.offset) == ("p", 12)


def test_payload_size_mismatch_of_a_spilled_record(buffer_pool, tmp_path):
    pool = buffer_pool(64 * KIB, 8)
    d = RecordDeserializer("int32", spilling_threshold=SPILL, tmp_dirs=[tmp_path], channel="s")
    stream = frame(struct.pack(">i", 5)) + frame(b"\0" * (3 * SPILL))
    chunks = [stream[i:i + 64 * KIB] for i in range(0, len(stream), 64 * KIB)]
    err = corrupt(d, pool, chunks)
    assert (err.channel, err.offset) == ("s", 8)
    assert spill_files(tmp_path) == []


@pytest.mark.parametrize("serializer, payload", [
    ("str", b"\xff\xfe"), ("byte_array", b"\0\0\0\x05abc"), ("float64", b"1234567"),
    ("pickle", b"not a pickle"), (np.dtype("<i2"), b"abc")])
def test_serializer_rejections_carry_channel_and_offset(pool, serializer, payload):
    d = RecordDeserializer(serializer, channel=7)
    err = corrupt(d, pool, [frame(payload)])
    assert (err.channel, err.offset) == (7, 0)


# --- round trips ---------------------------------------------------------------------------------


ROUND_TRIP = {
    "bytes": st.binary(max_size=60),
    "byte_array": st.binary(max_size=60),
    "str": st.text(max_size=30),
    "int32": st.integers(-2**31, 2**31 - 1),
    "int64": st.integers(-2**63, 2**63 - 1),
    "float64": st.floats(allow_nan=False),
    "pickle": st.recursive(st.none() | st.integers() | st.text(max_size=5),
                           lambda c: st.lists(c, max_size=3) | st.tuples(c, c), max_leaves=6),
}


@pytest.fixture
def writer_pool(make_pool):
    pools = {}

    def get(segment_size):
        if segment_size not in pools:
            nbp = make_pool(1024, segment_size)
            pools[segment_size] = nbp.create_buffer_pool(1024, 1024, num_subpartitions=1,
                                                         max_buffers_per_channel=1024)
        return pools[segment_size]

    return get


def round_trip(pool, serializer, values, flush_every):
    sink = ConsumerSink()
    ser = SpanningRecordSerializer(pool, 1, serializer, sink)
    d = RecordDeserializer(serializer)
    got = []
    try:
        for i, v in enumerate(values):
            ser.emit(v, 0)
            if flush_every and i % flush_every == 0:
                got += sink.pump(d)
            if len(sink.consumers) - sink.next > 40:
                got += sink.pump(d)
        ser.finish_all()
        got += sink.pump(d)
    finally:
        ser.close()
        sink.close()
    assert not d.has_unfinished_data
    assert pool.used_buffers == 0
    return got


@pytest.mark.parametrize("serializer", sorted(ROUND_TRIP))
@settings(max_examples=60, **HYPOTHESIS)
@given(data=st.data(), segment_size=st.integers(1, 40), flush_every=st.integers(0, 3))
def test_round_trip(writer_pool, serializer, data, segment_size, flush_every):
    values = data.draw(st.lists(ROUND_TRIP[serializer], max_size=25))
    got = round_trip(writer_pool(segment_size), serializer, values, flush_every)
    assert got == values
    if serializer == "float64":
        assert [math.copysign(1, v) for v in got] == [math.copysign(1, v) for v in values]


@settings(max_examples=60, **HYPOTHESIS)
@given(raw=st.lists(st.binary(min_size=15, max_size=15), max_size=30),
       segment_size=st.integers(1, 40))
def test_round_trip_numpy_records(writer_pool, raw, segment_size):
    dtype = np.dtype([("id", ">i4"), ("x", "<f8"), ("tag", "S3")])
    got = round_trip(writer_pool(segment_size), dtype, raw, 1)
    assert [g.tobytes() for g in got] == raw


def test_round_trip_flinks_record_sizes(writer_pool):
    """Flink's testRandomRecords at a 127-byte segment size: Flink's 237 vector records, in
    order, round trip byte for byte."""
    values = [FRAMING_RECORDS[i] for i in sorted(FRAMING_RECORDS)]
    assert round_trip(writer_pool(127), "bytes", values, 0) == values
