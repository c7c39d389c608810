"""Flink's record_framing vectors replayed end to end: RecordWriter → partition → view.

Every case of ``vectors/record_framing.json`` is re-run the way Flink's oracle ran it (emit,
drain every subpartition view while it says data is available, resume after a blocking barrier)
and every buffer must match Flink's: sequence number, data type, size, backlog and bytes.
Then the same buffers go through a gate and a RecordReader and must give back the records.
"""

from __future__ import annotations

import json
import pathlib

import pytest

from flinknet import events as ev
from flinknet._core.buffer import DataType
from flinknet._core.serialization import RecordDeserializer
from flinknet.consumer import RecordReader, SingleInputGate
from flinknet.partition import PipelinedResultPartition, ResultPartitionManager
from flinknet.writer import RecordWriter

VECTORS = json.loads((pathlib.Path(__file__).parent / "vectors" / "record_framing.json").read_text())
RECORDS = [bytes.fromhex(r["hex"]) for r in VECTORS["records"]]
CASES = VECTORS["cases"]


class _NoOpListener:
    def notify_data_available(self, view):
        pass

    def notify_priority_event(self, seq):
        pass


def _pool_size(case) -> int:
    max_rec = max(len(r) for r in RECORDS)
    return case["num_subpartitions"] * ((max_rec + 4) // case["segment_size"] + 4) + 16


def _partition(make_pool, case, manager=None):
    n = case["num_subpartitions"]
    size = _pool_size(case)
    nbp = make_pool(size, case["segment_size"])
    # As the oracle: a fixed pool, no per-subpartition cap, no overdraft.
    pool = nbp.create_buffer_pool(size, size, n, (1 << 31) - 1, 0)
    p = PipelinedResultPartition(n, pool, partition_manager=manager)
    p.setup()
    return p


def _script(case, writer, partition, drain):
    """The oracle's script for ``case`` (VectorGen.recordFraming)."""
    name = case["name"]
    n = case["num_subpartitions"]
    if name == "seg64_with_events":
        half = len(RECORDS) // 2
        for r in RECORDS[:half]:
            writer.emit(r)
            drain()
        barrier = ev.CheckpointBarrier(7, 1700000000007, ev.CheckpointOptions())
        writer.broadcast_event(barrier)
        drain()
        for r in RECORDS[half:]:
            writer.emit(r)
            drain()
        partition.notify_end_of_data(ev.StopMode.DRAIN)
        drain()
    else:
        for i, r in enumerate(RECORDS):
            if n > 1:
                writer.emit(r, i % n)
            else:
                writer.emit(r)
            drain()
    partition.finish()
    drain()


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_buffers_match_flink(make_pool, case):
    partition = _partition(make_pool, case)
    n = case["num_subpartitions"]
    views = [partition.create_subpartition_view(i, _NoOpListener()) for i in range(n)]
    got = [[] for _ in range(n)]

    def drain():
        for i, view in enumerate(views):
            while view.get_availability_and_backlog(True).is_available:
                bb = view.get_next_buffer()
                if bb is None:
                    break
                b = bb.buffer
                got[i].append({"seq": bb.sequence_number, "data_type": b.data_type.name,
                               "data_type_ordinal": int(b.data_type), "size": b.readable_bytes,
                               "backlog_after": bb.buffers_in_backlog, "hex": b.to_bytes().hex()})
                dt = b.data_type
                b.recycle()
                if dt.is_blocking_upstream:
                    view.resume_consumption()

    writer = RecordWriter(partition, timeout=case["record_writer_timeout_ms"])
    try:
        _script(case, writer, partition, drain)
    finally:
        writer.close()
    for i, sp in enumerate(case["subpartitions"]):
        expected = [{k: b[k] for k in ("seq", "data_type", "data_type_ordinal", "size", "backlog_after", "hex")}
                    for b in sp["buffers"]]
        assert len(got[i]) == sp["num_buffers"]
        for e, g in zip(expected, got[i]):
            assert g == e, f"subpartition {i}, buffer {e['seq']}"
    for view in views:
        view.release_all_resources()
    partition.close()
    assert partition.is_released  # released on consumption: producer closed, every view released


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_records_through_gate_and_reader(make_pool, case):
    manager = ResultPartitionManager()
    partition = _partition(make_pool, case, manager)
    n = case["num_subpartitions"]
    gates = [SingleInputGate.create_local(manager, [(partition.partition_id, i)], gate_index=0)
             for i in range(n)]
    readers = [RecordReader(g, emit_events=True) for g in gates]
    got = [[] for _ in range(n)]
    seen_events = [[] for _ in range(n)]

    def drain():
        for i, reader in enumerate(readers):
            while True:
                batch = reader.read_batch(blocking=False)
                if batch is None:
                    break
                for item in batch:
                    if isinstance(item, bytes):
                        got[i].append(item)
                    else:
                        seen_events[i].append(type(item.event).__name__)
                        if isinstance(item.event, ev.CheckpointBarrier):
                            gates[i].resume_consumption(item.channel_info)

    writer = RecordWriter(partition, timeout=case["record_writer_timeout_ms"])
    try:
        _script(case, writer, partition, drain)
    finally:
        writer.close()
    partition.close()
    for i, sp in enumerate(case["subpartitions"]):
        assert got[i] == [RECORDS[r] for r in sp["record_indices"]]
        assert seen_events[i] == sp["deserializer_check"]["events"]
        assert gates[i].is_finished
        readers[i].close()
        gates[i].close()
    assert partition.is_released
    assert not manager.get_unreleased_partitions()


def test_vector_buffers_decode_with_the_deserializer():
    """The committed bytes alone (no flinknet writer) decode to the records."""
    from flinknet.core import FREEING_BUFFER_RECYCLER, MemorySegment, NetworkBuffer

    for case in CASES:
        for sp in case["subpartitions"]:
            d = RecordDeserializer("bytes")
            out = []
            for b in sp["buffers"]:
                if b["data_type"] != "DATA_BUFFER":
                    continue
                data = bytes.fromhex(b["hex"])
                seg = MemorySegment.wrap_copy(data) if data else MemorySegment(1)
                out += d.read_records(NetworkBuffer(seg, FREEING_BUFFER_RECYCLER, DataType.DATA_BUFFER, len(data)))
            assert out == [RECORDS[r] for r in sp["record_indices"]]
            d.clear()
