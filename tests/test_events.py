"""Events: every event of Flink's vectors round-trips to Flink's bytes (EventSerializerTest)."""

import json
import pathlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flinknet import events as ev
from flinknet._core.buffer import DataType

VECTORS = json.loads((pathlib.Path(__file__).parent / "vectors" / "events.json").read_text())
TS = 1700000000123
O, CT, A, F = ev.CheckpointOptions, ev.CheckpointType, ev.AlignmentType, ev.SavepointFormatType  # noqa: E741
LOC = bytes.fromhex("0102030405")

EVENTS = {
    "EndOfPartitionEvent": ev.EndOfPartitionEvent(),
    "EndOfData(DRAIN)": ev.EndOfData(ev.StopMode.DRAIN),
    "EndOfData(NO_DRAIN)": ev.EndOfData(ev.StopMode.NO_DRAIN),
    "EndOfSuperstepEvent": ev.EndOfSuperstepEvent(),
    "CheckpointBarrier(CHECKPOINT, aligned, default location)": ev.CheckpointBarrier(42, TS, O()),
    "CheckpointBarrier(CHECKPOINT, unaligned, default location)":
        ev.CheckpointBarrier(42, TS, O(alignment=A.UNALIGNED)),
    "CheckpointBarrier(CHECKPOINT, aligned with timeout 10000ms)":
        ev.CheckpointBarrier(42, TS, O(aligned_checkpoint_timeout=10000)),
    "CheckpointBarrier(CHECKPOINT, at-least-once)": ev.CheckpointBarrier(42, TS, O(alignment=A.AT_LEAST_ONCE)),
    "CheckpointBarrier(CHECKPOINT, forced aligned)": ev.CheckpointBarrier(42, TS, O(alignment=A.FORCED_ALIGNED)),
    "CheckpointBarrier(CHECKPOINT, aligned, location=0102030405)":
        ev.CheckpointBarrier(42, TS, O(target_location=LOC)),
    "CheckpointBarrier(FULL_CHECKPOINT, aligned)": ev.CheckpointBarrier(42, TS, O(CT.FULL_CHECKPOINT)),
    "CheckpointBarrier(SAVEPOINT canonical, aligned)": ev.CheckpointBarrier(42, TS, O(CT.SAVEPOINT)),
    "CheckpointBarrier(SAVEPOINT native, aligned)":
        ev.CheckpointBarrier(42, TS, O(CT.SAVEPOINT, savepoint_format=F.NATIVE)),
    "CheckpointBarrier(SAVEPOINT_SUSPEND canonical, aligned)": ev.CheckpointBarrier(42, TS, O(CT.SAVEPOINT_SUSPEND)),
    "CheckpointBarrier(SAVEPOINT_TERMINATE native, aligned, location=0102030405)":
        ev.CheckpointBarrier(42, TS, O(CT.SAVEPOINT_TERMINATE, LOC, savepoint_format=F.NATIVE)),
    "CancelCheckpointMarker(42)": ev.CancelCheckpointMarker(42),
    "EndOfOutputChannelStateEvent": ev.EndOfOutputChannelStateEvent(),
    "EndOfInputChannelStateEvent": ev.EndOfInputChannelStateEvent(),
    "EventAnnouncement(CheckpointBarrier aligned id=42, seq=7)":
        ev.EventAnnouncement(ev.CheckpointBarrier(42, TS, O()), 7),
    "SubtaskConnectionDescriptor(3,5)": ev.SubtaskConnectionDescriptor(3, 5),
    "EndOfSegmentEvent": ev.EndOfSegmentEvent(),
    "RecoveryMetadata(2)": ev.RecoveryMetadata(2),
    "WatermarkEvent(LongWatermark(123,'wm'), aligned)": ev.WatermarkEvent(ev.LongWatermark(123, "wm"), True),
    "WatermarkEvent(BoolWatermark(true,'b'), unaligned)": ev.WatermarkEvent(ev.BoolWatermark(True, "b"), False),
    "TerminationEvent (generic OTHER_EVENT path)": ev.TerminationEvent(),
}
CASES = [e for e in VECTORS["events"] if "error" not in e]


def test_every_vector_has_an_event():
    assert {e["name"] for e in CASES} == set(EVENTS)


@pytest.mark.parametrize("case", CASES, ids=lambda e: e["name"])
def test_serialized_bytes_match_flink(case):
    assert ev.to_serialized_event(EVENTS[case["name"]]).hex() == case["hex"]


@pytest.mark.parametrize("case", CASES, ids=lambda e: e["name"])
def test_decodes_flink_bytes_with_and_without_padding(case):
    event = EVENTS[case["name"]]
    assert ev.from_serialized_event(bytes.fromhex(case["hex"])) == event
    assert ev.from_serialized_event(bytes.fromhex(case["wire_hex_via_buffer_consumer"])) == event


@pytest.mark.parametrize("case", CASES, ids=lambda e: e["name"])
def test_data_types_match_flink(case):
    event = EVENTS[case["name"]]
    assert ev.get_data_type(event).name == case["to_buffer_data_type"]
    assert ev.get_data_type(event).value == case["to_buffer_data_type_ordinal"]
    assert ev.get_data_type(event, True).name == case["to_buffer_priority_data_type"]


@pytest.mark.parametrize("case", CASES, ids=lambda e: e["name"])
def test_buffer_consumer_puts_flinks_wire_bytes(case):
    event = EVENTS[case["name"]]
    consumer = ev.to_buffer_consumer(event)
    assert consumer.is_finished and not consumer.is_buffer
    chunk = consumer.build()
    try:
        assert chunk.to_bytes().hex() == case["wire_hex_via_buffer_consumer"]
        assert chunk.size == case["wire_size_via_buffer_consumer"]
        assert chunk.data_type.name == case["to_buffer_data_type"]
        assert ev.from_buffer(chunk) == event
    finally:
        chunk.recycle()
        consumer.close()


@pytest.mark.parametrize("case", CASES, ids=lambda e: e["name"])
def test_to_buffer_is_exact_and_frees_its_memory(case):
    event = EVENTS[case["name"]]
    buf = ev.to_buffer(event, has_priority=True)
    segment = buf.memory_segment
    assert buf.to_bytes().hex() == case["hex"]
    assert buf.data_type is DataType.PRIORITIZED_EVENT_BUFFER
    buf.recycle()
    assert segment.is_freed


def test_unaligned_savepoint_is_rejected_like_flink():
    rejected = [e for e in VECTORS["events"] if "error" in e]
    assert rejected and "Savepoints can not be unaligned" in rejected[0]["error"]
    with pytest.raises(ValueError, match="Savepoints can not be unaligned"):
        O(CT.SAVEPOINT, alignment=A.UNALIGNED)


@pytest.mark.parametrize("data, message", [
    (b"", "Incomplete"), (b"\x00\x00\x00", "Incomplete"), (struct.pack(">i", 99), "unknown tag 99"),
    (struct.pack(">i", -1), "unknown tag -1"), (struct.pack(">i", 4) + b"\x00" * 7, "Incomplete"),
    (struct.pack(">ib", 8, 5), "end of data mode"),
    (bytes.fromhex("00000001000000000000002a0000018bcfe5687b09ffffffff017fffffffffffffff"), "checkpoint type"),
    (bytes.fromhex("00000001000000000000002a0000018bcfe5687b00ffffffff097fffffffffffffff"), "alignment"),
    (bytes.fromhex("00000001000000000000002a0000018bcfe5687b00fffffffe017fffffffffffffff"), "location length"),
    (bytes.fromhex("00000001000000000000002a0000018bcfe5687b00000000ff01"), "Incomplete"),
])
def test_corrupt_events_are_clear_errors(data, message):
    with pytest.raises(ev.CorruptEventError, match=message):
        ev.from_serialized_event(data)


def test_unregistered_task_event_keeps_its_bytes_and_round_trips():
    raw = struct.pack(">i", 3) + struct.pack(">H", 9) + b"com.x.Foo" + b"\x01\x02"
    event = ev.from_serialized_event(raw)
    assert event == ev.UnknownTaskEvent("com.x.Foo", b"\x01\x02")
    assert ev.to_serialized_event(event) == raw


def test_registered_task_event_uses_its_own_reader():
    @ev.register_task_event
    class Counter(ev.TaskEvent):
        class_name = "org.example.Counter"

        def __init__(self, n=0):
            self.n = n

        def write(self):
            return struct.pack(">q", self.n)

        @classmethod
        def read(cls, data):
            return cls(struct.unpack_from(">q", data, 0)[0])

    wire = ev.to_buffer_consumer(Counter(7))
    chunk = wire.build()
    try:
        assert chunk.size == 128  # Flink's serializer array, zero padded
        assert ev.from_buffer(chunk).n == 7
    finally:
        chunk.recycle()
        wire.close()
    with pytest.raises(TypeError):
        ev.register_task_event(int)


@given(st.text(max_size=40))
def test_modified_utf8_round_trips_any_text(text):
    event = ev.WatermarkEvent(ev.LongWatermark(1, text), True)
    assert ev.from_serialized_event(ev.to_serialized_event(event)) == event


def test_modified_utf8_matches_java_for_nul_and_supplementary_characters():
    event = ev.WatermarkEvent(ev.BoolWatermark(False, "a\x00\U0001F600"), False)
    data = ev.to_serialized_event(event)
    # Java writes NUL as C0 80 and each surrogate of U+1F600 as three bytes.
    assert data[4:6] == struct.pack(">H", 9)
    assert data[6:15] == bytes.fromhex("61c080eda0bdedb880")


@given(st.integers(-(1 << 63), (1 << 63) - 1), st.integers(-(1 << 63), (1 << 63) - 1),
       st.sampled_from(list(CT)), st.sampled_from([A.ALIGNED, A.AT_LEAST_ONCE, A.FORCED_ALIGNED]),
       st.one_of(st.none(), st.binary(max_size=20)), st.integers(-(1 << 63), (1 << 63) - 1))
def test_barriers_round_trip(cid, ts, ctype, alignment, location, timeout):
    barrier = ev.CheckpointBarrier(cid, ts, O(ctype, location, alignment, timeout))
    assert ev.from_serialized_event(ev.to_serialized_event(barrier)) == barrier
    consumer = ev.to_buffer_consumer(barrier)
    chunk = consumer.build()
    try:
        assert chunk.size == 38 + (len(location) if location is not None else 0)
        assert ev.from_buffer(chunk) == barrier
    finally:
        chunk.recycle()
        consumer.close()
