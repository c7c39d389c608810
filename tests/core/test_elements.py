"""Stream elements: Flink's StreamElementSerializer bytes (StreamElementSerializerTest)."""

import json
import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flinknet._core import elements as el
from flinknet._core.serialization import (
    BytePrimitiveArraySerializer,
    Int64Serializer,
    RecordDeserializer,
    SpanningRecordSerializer,
    StringSerializer,
)
from flinknet.errors import CorruptRecordError

VECTORS = json.loads((pathlib.Path(__file__).parent.parent / "vectors" / "stream_elements.json").read_text())
LONG_MIN, LONG_MAX = -(1 << 63), (1 << 63) - 1

ELEMENTS = {
    "StreamRecord(b'hello') without timestamp": el.StreamRecord(b"hello"),
    "StreamRecord(b'hello', ts=1700000000123)": el.StreamRecord(b"hello", 1700000000123),
    "StreamRecord(b'') without timestamp": el.StreamRecord(b""),
    "StreamRecord(b'', ts=0)": el.StreamRecord(b"", 0),
    "StreamRecord(bytes 0..99, ts=-1)": el.StreamRecord(bytes(range(100)), -1),
    "StreamRecord(b'hello', ts=Long.MIN_VALUE)": el.StreamRecord(b"hello", LONG_MIN),
    "Watermark(1700000000000)": el.Watermark(1700000000000),
    "Watermark.MAX_WATERMARK": el.MAX_WATERMARK,
    "Watermark(Long.MIN_VALUE)": el.Watermark(LONG_MIN),
    "LatencyMarker(markedTime=1700000000123, OperatorID(lower=0x0102030405060708, "
    "upper=0x1112131415161718), subtask=3)": el.LatencyMarker(1700000000123, 0x0102030405060708,
                                                             0x1112131415161718, 3),
    "WatermarkStatus.IDLE": el.IDLE,
    "WatermarkStatus.ACTIVE": el.ACTIVE,
    "RecordAttributes(backlog=true)": el.RecordAttributes(True),
    "RecordAttributes(backlog=false)": el.RecordAttributes(False),
}
SERIALIZER = el.StreamElementSerializer(BytePrimitiveArraySerializer())


def test_every_vector_has_an_element():
    assert {e["name"] for e in VECTORS["elements"]} == set(ELEMENTS)


@pytest.mark.parametrize("case", VECTORS["elements"], ids=lambda e: e["name"])
def test_element_bytes_match_flink_both_ways(case):
    element = ELEMENTS[case["name"]]
    assert SERIALIZER.serialize(element).hex() == case["element_hex"]
    assert SERIALIZER.deserialize(bytes.fromhex(case["element_hex"])) == element


@pytest.mark.parametrize("case", VECTORS["elements"], ids=lambda e: e["name"])
def test_framed_element_matches_flink(case, make_pool):
    """What RecordWriter puts in a network buffer: [len][element]."""
    nbp = make_pool(4, 256)
    pool = nbp.create_buffer_pool(1, 2, num_subpartitions=1)

    class Sink:
        consumers = []

        def add_buffer_consumer(self, sp, consumer, partial):
            self.consumers.append(consumer)

        def buffer_finished(self, sp, n):
            pass

    sink = Sink()
    ser = SpanningRecordSerializer(pool, 1, SERIALIZER, sink)
    ser.emit(ELEMENTS[case["name"]], 0)
    ser.finish_all()
    (consumer,) = sink.consumers
    chunk = consumer.build()
    consumer.close()
    try:
        assert chunk.to_bytes().hex() == case["framed_hex"]
        deser = RecordDeserializer(SERIALIZER)
        assert deser.read_records(chunk.retain()) == [ELEMENTS[case["name"]]]
    finally:
        chunk.recycle()


def test_unknown_tag_is_a_clear_error():
    with pytest.raises(CorruptRecordError, match="Corrupt stream, found tag: 7"):
        SERIALIZER.deserialize(b"\x07\x00")
    with pytest.raises(CorruptRecordError, match="found tag: -1"):
        SERIALIZER.deserialize(b"\xff")
    with pytest.raises(CorruptRecordError):
        SERIALIZER.deserialize(b"")


@pytest.mark.parametrize("data", [
    "02" + "00" * 7, "02" + "00" * 9, "03" + "00" * 27, "03" + "00" * 29, "0400000001", "04000000", "05", "0501ff",
    "06" + "00" * 11, "06" + "00" * 13, "00" + "00" * 7,
])
def test_wrong_sizes_and_values_are_corrupt(data):
    with pytest.raises(CorruptRecordError):
        SERIALIZER.deserialize(bytes.fromhex(data))


def test_invalid_watermark_status_rejected():
    with pytest.raises(ValueError):
        el.WatermarkStatus(1)


def test_internal_watermark_layout():
    data = SERIALIZER.serialize(el.InternalWatermark(99, 3))
    assert data.hex() == "06" + "00000003" + "0000000000000063"
    assert SERIALIZER.deserialize(data) == el.InternalWatermark(99, 3)


def test_bare_values_are_records_without_timestamp():
    assert SERIALIZER.serialize(b"ab") == SERIALIZER.serialize(el.StreamRecord(b"ab"))
    assert el.StreamRecord(1).timestamp is None and el.StreamRecord(1, 5).timestamp == 5


@given(st.one_of(st.none(), st.integers(LONG_MIN, LONG_MAX)), st.integers(LONG_MIN, LONG_MAX))
def test_records_of_longs_round_trip(ts, value):
    s = el.StreamElementSerializer(Int64Serializer())
    record = el.StreamRecord(value, ts)
    data = s.serialize(record)
    assert data[0] == (0 if ts is not None else 1)
    assert s.deserialize(data) == record


@given(st.text(), st.one_of(st.none(), st.integers(LONG_MIN, LONG_MAX)))
def test_records_of_strings_round_trip(text, ts):
    s = el.StreamElementSerializer(StringSerializer())
    assert s.deserialize(s.serialize(el.StreamRecord(text, ts))) == el.StreamRecord(text, ts)


def test_value_serializer_mismatch_is_corrupt():
    s = el.StreamElementSerializer(Int64Serializer())
    with pytest.raises(CorruptRecordError):
        s.deserialize(b"\x01" + b"\x00" * 7)
