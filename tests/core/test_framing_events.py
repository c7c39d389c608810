"""Records and events in one subpartition, as Flink's RecordWriter/ResultPartition lays them out.

Replays ``seg64_with_events`` of Flink's framing vectors at the serializer level: records, then a
barrier (which finishes the open buffer and travels alone), more records, EndOfData and
EndOfPartition.
"""

import json
import pathlib

from flinknet import events as ev
from flinknet._core.serialization import RecordDeserializer, SpanningRecordSerializer

VECTORS = json.loads((pathlib.Path(__file__).parent.parent / "vectors" / "record_framing.json").read_text())
RECORDS = [bytes.fromhex(r["hex"]) for r in VECTORS["records"]]
CASE = next(c for c in VECTORS["cases"] if c["name"] == "seg64_with_events")


class Subpartition:
    def __init__(self):
        self.consumers = []

    def add_buffer_consumer(self, sp, consumer, partial):
        self.consumers.append(consumer)

    def buffer_finished(self, sp, n):
        pass

    def broadcast_event(self, event):
        self.consumers.append(ev.to_buffer_consumer(event))

    def drain(self):
        out = []
        for consumer in self.consumers:
            chunk = consumer.build()
            consumer.close()
            out.append(chunk)
        self.consumers.clear()
        return out


def test_records_and_events_match_flink(make_pool):
    (sp,) = CASE["subpartitions"]
    indices = sp["record_indices"]
    half = len(indices) // 2
    nbp = make_pool(512, CASE["segment_size"])
    pool = nbp.create_buffer_pool(2, 500, num_subpartitions=1, max_buffers_per_channel=1000)
    sub = Subpartition()
    ser = SpanningRecordSerializer(pool, 1, "bytes", sub)
    for i in indices[:half]:
        ser.emit(RECORDS[i], 0)
    ser.finish_all()
    sub.broadcast_event(ev.CheckpointBarrier(7, 1700000000007, ev.CheckpointOptions()))
    for i in indices[half:]:
        ser.emit(RECORDS[i], 0)
    ser.finish_all()
    sub.broadcast_event(ev.EndOfData(ev.StopMode.DRAIN))
    sub.broadcast_event(ev.EndOfPartitionEvent())
    ser.close()
    chunks = sub.drain()
    try:
        got = [(c.data_type.name, c.to_bytes().hex()) for c in chunks]
        expected = [(b["data_type"], b["hex"]) for b in sp["buffers"]]
        assert got == expected
        # And back: records through the deserializer, events through the event serializer.
        deser = RecordDeserializer()
        records, events = [], []
        for chunk in chunks:
            if chunk.is_buffer:
                records += deser.read_records(chunk.retain())
            else:
                events.append(ev.from_buffer(chunk))
        assert records == [RECORDS[i] for i in indices]
        assert [type(e) for e in events] == [ev.CheckpointBarrier, ev.EndOfData, ev.EndOfPartitionEvent]
    finally:
        for chunk in chunks:
            chunk.recycle()
