"""RecordReader over gates fed by real partitions (Flink's RecordReader / AbstractRecordReader).

Records of random sizes span buffers; they must come out exactly once and in order per channel,
however producers and the consumer interleave. Producers run in their own threads, under
backpressure from small pools.
"""

from __future__ import annotations

import os
import random
import struct
from collections import deque

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flinknet import events as ev
from flinknet._core.buffer import DataType
from flinknet.consumer import (
    InputChannel,
    RecordOrEvent,
    RecordReader,
    SingleInputGate,
    UnionInputGate,
)
from flinknet.errors import ConsumerLostError, IllegalStateError
from flinknet.ids import ResultPartitionID
from flinknet.interfaces import BufferAndBacklog
from flinknet.partition import ResultPartitionManager, create_result_partition
from flinknet.types import ResultPartitionType
from flinknet.writer import RecordWriter
from tests.helpers import Worker

JOIN = 10.0
HEADER = struct.Struct(">HI")  # channel, sequence number


@ev.register_task_event
class Marker(ev.TaskEvent):
    """A user event (Flink's generic task event path) carrying one int."""

    class_name = "org.example.flinknet.tests.Marker"

    def __init__(self, n: int = 0):
        self.n = n

    def write(self) -> bytes:
        return struct.pack(">i", self.n)

    @classmethod
    def read(cls, data):
        return cls(struct.unpack_from(">i", data, 0)[0])


def record(channel: int, seq: int, size: int) -> bytes:
    return HEADER.pack(channel, seq) + random.Random(channel * 1_000_003 + seq).randbytes(size)


@pytest.fixture
def manager():
    m = ResultPartitionManager()
    yield m
    m.shutdown()


def read_all(reader):
    out = []
    while True:
        try:
            out.append(reader.next_record(timeout=JOIN))
        except StopIteration:
            return out


# -- exactly once, in order, across buffers ------------------------------------------------------

@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sizes=st.lists(st.lists(st.integers(0, 700), max_size=30), min_size=1, max_size=4),
       buffer_timeout=st.sampled_from([-1, 0, 2]),
       segment=st.sampled_from([32, 64, 256]),
       union=st.booleans())
def test_records_spanning_buffers_arrive_exactly_once_in_order(make_pool, manager, sizes,
                                                               buffer_timeout, segment, union):
    n = len(sizes)
    nbp = make_pool(12 * n + 4, segment)
    parts = [create_result_partition(nbp, 1, partition_manager=manager) for _ in range(n)]
    for p in parts:
        p.setup()
    expected = [[record(c, s, size) for s, size in enumerate(sizes[c])] for c in range(n)]

    def produce(p, records):
        with RecordWriter(p, timeout=buffer_timeout) as writer:
            for r in records:
                writer.emit(r, 0)
        p.finish()
        p.close()

    producers = [Worker(produce, p, expected[c]) for c, p in enumerate(parts)]
    if union and n >= 2:
        half = n // 2
        gate = UnionInputGate(
            SingleInputGate.create_local(manager, [(p.partition_id, 0) for p in parts[:half]], 0),
            SingleInputGate.create_local(manager, [(p.partition_id, 0) for p in parts[half:]], 1))
    else:
        gate = SingleInputGate.create_local(manager, [(p.partition_id, 0) for p in parts])
    reader = RecordReader(gate)
    try:
        for w in producers:
            w.start()
        got = read_all(reader)
    finally:
        reader.close()
        gate.close()  # wakes producers blocked on a consumer that failed
        for w in producers:
            w.finish()
    for w in producers:
        assert w.error is None, w.error
    by_channel = [[] for _ in range(n)]
    for r in got:
        c, _ = HEADER.unpack_from(r)
        by_channel[c].append(r)
    assert by_channel == expected
    assert reader.num_records_in == sum(map(len, expected))
    assert gate.is_finished
    assert reader.is_finished
    assert nbp.is_whole


# -- events ----------------------------------------------------------------------------------------

def two_channel_partition(make_pool, manager, segment=64, **kwargs):
    p = create_result_partition(make_pool(32, segment), 2, partition_manager=manager, **kwargs)
    p.setup()
    gate = SingleInputGate.create_local(manager, [(p.partition_id, 0), (p.partition_id, 1)])
    return p, gate


def test_emit_events_yields_record_or_event(make_pool, manager):
    p, gate = two_channel_partition(make_pool, manager)
    p.emit_record(b"a0", 0)
    p.emit_record(b"b0" * 50, 1)
    p.broadcast_event(Marker(5))
    p.emit_record(b"a1", 0)
    p.finish()
    p.close()
    with RecordReader(gate, emit_events=True) as reader:
        items = list(reader)
    chans = {0: [], 1: []}
    for item in items:
        if isinstance(item, RecordOrEvent):
            chans[item.channel_info.input_channel_idx].append(item.event)
        else:
            chans[0 if item.startswith(b"a") else 1].append(item)
    assert chans[0] == [b"a0", Marker(5), b"a1", ev.EndOfPartitionEvent()]
    assert chans[1] == [b"b0" * 50, Marker(5), ev.EndOfPartitionEvent()]
    assert all(isinstance(i, RecordOrEvent) == (not isinstance(i, bytes)) for i in items)
    gate.close()


def test_events_are_skipped_without_emit_events(make_pool, manager):
    p, gate = two_channel_partition(make_pool, manager)
    p.emit_record(b"x", 0)
    p.broadcast_event(Marker(1))
    p.broadcast_event(ev.CancelCheckpointMarker(3))
    p.emit_record(b"y", 1)
    p.finish()
    p.close()
    reader = RecordReader(gate)
    assert sorted(reader) == [b"x", b"y"]
    assert reader.num_records_in == 2
    reader.close()
    gate.close()


def test_read_batch_returns_what_each_buffer_completes(make_pool, manager):
    nbp = make_pool(16, 64)
    p = create_result_partition(nbp, 1, partition_manager=manager, serializer="str")
    p.setup()
    gate = SingleInputGate.create_local(manager, [(p.partition_id, 0)])
    reader = RecordReader(gate, serializer="str")
    assert reader.read_batch(blocking=False) is None  # nothing ready
    with pytest.raises(TimeoutError):
        reader.read_batch(timeout=0.01)
    big = "é" * 60  # 120 bytes of UTF-8 (plus framing): spans three 64-byte buffers
    p.emit_record("a", 0)
    p.emit_record("b", 0)
    p.emit_record(big, 0)
    p.emit_record("c", 0)
    p.finish()
    p.close()
    batches = []
    while (batch := reader.read_batch(timeout=JOIN)) is not None:
        batches.append(batch)
    # Buffer 1: a, b and the start of big; buffer 2: middle of big; buffer 3: its end, then c;
    # then EndOfPartition (an event: an empty batch).
    assert batches[-1] == []
    records = [r for b in batches for r in b]
    assert records == ["a", "b", big, "c"]
    assert batches[0] == ["a", "b"]
    assert [] in batches[1:-1]  # a buffer that only continued the spanning record
    assert reader.read_batch() is None
    assert reader.read_batch(blocking=False) is None
    reader.close()
    gate.close()


def test_next_record_and_iteration_stop_at_the_end(make_pool, manager):
    p, gate = two_channel_partition(make_pool, manager, serializer="int64")
    for i in range(10):
        p.emit_record(i, i % 2)
    p.finish()
    p.close()
    reader = RecordReader(gate, serializer="int64")
    first = reader.next_record(timeout=JOIN)
    rest = list(reader)
    assert sorted([first] + rest) == list(range(10))
    assert [r for r in [first] + rest if r % 2 == 0] == [0, 2, 4, 6, 8]
    with pytest.raises(StopIteration):
        reader.next_record(timeout=JOIN)
    assert reader.is_finished
    reader.close()
    gate.close()


# -- numpy records ---------------------------------------------------------------------------------

DT = np.dtype([("ch", "u1"), ("seq", "<u4"), ("val", "<f8"), ("pad", "V7")])  # 20 bytes


def test_read_array_of_numpy_records(make_pool, manager):
    """Fixed-width records (24 bytes framed in 64-byte buffers, so some span two buffers) through
    RecordWriter.emit_array and RecordReader.read_array."""
    p, gate = two_channel_partition(make_pool, manager, serializer=DT)
    n = 101
    arr = np.zeros(n, dtype=DT)
    targets = (np.arange(n) * 7 % 3 % 2).astype(np.int64)
    arr["ch"] = targets
    arr["val"] = np.arange(n) * 0.25
    for c in (0, 1):
        mask = targets == c
        arr["seq"][mask] = np.arange(mask.sum())

    def produce():
        with RecordWriter(p, timeout=-1) as writer:
            assert writer.emit_array(arr[:50], targets[:50]) == 50
            writer.broadcast_event(Marker(2))  # events are skipped by read_array
            assert writer.emit_array(arr[50:], targets[50:]) == n - 50
        p.finish()
        p.close()

    producer = Worker(produce)
    producer.start()
    reader = RecordReader(gate, serializer=DT)
    chunks = []
    try:
        while (a := reader.read_array(DT, timeout=JOIN)) is not None:
            assert a.dtype == DT
            chunks.append(a)
    finally:
        reader.close()
        gate.close()
        producer.finish()
    assert producer.error is None
    got = np.concatenate(chunks)
    assert len(got) == n == reader.num_records_in
    for c in (0, 1):
        mine = got[got["ch"] == c]
        assert list(mine["seq"]) == list(range(len(mine)))  # in order per channel
        np.testing.assert_array_equal(mine, arr[targets == c])


# -- end of partition inside a record --------------------------------------------------------------

class ScriptedChannel(InputChannel):
    """A real InputChannel that hands out a fixed sequence of buffers (what a misbehaving producer
    would send): the producer-side API cannot end a partition inside a record."""

    def __init__(self, gate, index, buffers):
        super().__init__(gate, index, ResultPartitionID(), 0)
        self._buffers = deque(buffers)
        self._released = False
        self._seq = 0

    def request_subpartitions(self):
        if self._buffers:
            self.notify_channel_non_empty()

    def get_next_buffer(self):
        self.check_error()
        if not self._buffers:
            return None
        buf = self._buffers.popleft()
        nxt = self._buffers[0].data_type if self._buffers else DataType.NONE
        self._seq += 1
        return BufferAndBacklog(buf, 0, nxt, self._seq - 1)

    def resume_consumption(self):
        pass

    def acknowledge_all_records_processed(self):
        pass

    def release_all_resources(self):
        self._released = True
        while self._buffers:
            self._buffers.popleft().recycle()

    @property
    def is_released(self):
        return self._released


def data_buffer(pool, data: bytes):
    buf = pool.request_buffer()
    buf.memory_segment.put_bytes(0, data)
    buf.size = len(data)
    return buf


def test_end_of_partition_inside_a_record_is_an_error(make_pool):
    nbp = make_pool(8, 64)
    pool = nbp.create_buffer_pool(2, 2)
    try:
        gate = SingleInputGate(0, "consumer")
        whole = struct.pack(">i", 3) + b"abc"
        partial = struct.pack(">i", 100) + b"only ten b"  # promises 100 bytes, delivers 10
        gate.set_input_channels([
            ScriptedChannel(gate, 0, [data_buffer(pool, whole + partial),
                                      ev.to_buffer(ev.EndOfPartitionEvent())]),
        ])
        reader = RecordReader(gate)
        assert reader.read_batch(timeout=JOIN) == [b"abc"]
        with pytest.raises(IllegalStateError, match="inside a record"):
            reader.read_batch(timeout=JOIN)
        assert gate.is_finished
        assert pool.used_buffers == 0  # the deserializer gave everything back
        reader.close()
        gate.close()
    finally:
        pool.lazy_destroy()


def test_end_of_partition_after_whole_records_is_fine(make_pool):
    nbp = make_pool(8, 64)
    pool = nbp.create_buffer_pool(2, 2)
    try:
        gate = SingleInputGate(0)
        gate.set_input_channels([
            ScriptedChannel(gate, 0, [data_buffer(pool, struct.pack(">i", 2) + b"ok"),
                                      ev.to_buffer(ev.EndOfPartitionEvent())]),
        ])
        reader = RecordReader(gate)
        assert list(reader) == [b"ok"]
        reader.close()
        gate.close()
    finally:
        pool.lazy_destroy()


# -- close -----------------------------------------------------------------------------------------

def test_close_drops_a_partial_record_and_its_spill_file(make_pool, manager, tmp_path):
    """A record above the spilling threshold is gathered in a file while it arrives; closing the
    reader mid-record removes the file, and closing the gate returns the producer's buffers."""
    segment = 4096
    nbp = make_pool(64, segment)
    p = create_result_partition(nbp, 1, ResultPartitionType.PIPELINED, partition_manager=manager,
                                max_buffers_per_channel=1000)
    p.setup()
    big = random.Random(3).randbytes(150 * 1024)  # > the 100 KiB threshold, ~38 buffers
    p.emit_record(big, 0)
    p.flush(0)
    gate = SingleInputGate.create_local(manager, [(p.partition_id, 0)])
    reader = RecordReader(gate, spilling_threshold=100 * 1024, tmp_dirs=[str(tmp_path)])
    for _ in range(5):
        assert reader.read_batch(timeout=JOIN) == []
    spill_files = os.listdir(tmp_path)
    assert len(spill_files) == 1 and spill_files[0].endswith(".inputchannel")
    assert p.buffer_pool.used_buffers > 0  # the rest of the record is still queued
    reader.close()
    assert os.listdir(tmp_path) == []
    with pytest.raises(IllegalStateError):
        reader.read_batch()
    with pytest.raises(IllegalStateError):
        reader.read_array(np.uint8)
    reader.close()  # idempotent
    gate.close()
    assert p.buffer_pool.used_buffers == 1  # only the producer's open buffer is left
    # The gate closed mid-record: the producer lost its consumer and releases the partition.
    assert list(p.lost_consumers) == [0]
    with pytest.raises(ConsumerLostError):
        p.finish()
    p.release()
    p.close()


def test_a_record_above_the_spilling_threshold_is_read_whole(make_pool, manager, tmp_path):
    segment = 4096
    nbp = make_pool(16, segment)
    p = create_result_partition(nbp, 1, partition_manager=manager)
    p.setup()
    big = random.Random(4).randbytes(300 * 1024)
    producer = Worker(lambda: (p.emit_record(b"small", 0), p.emit_record(big, 0),
                               p.emit_record(b"after", 0), p.finish(), p.close()))
    gate = SingleInputGate.create_local(manager, [(p.partition_id, 0)])
    reader = RecordReader(gate, spilling_threshold=100 * 1024, tmp_dirs=[str(tmp_path)])
    producer.start()
    try:
        got = read_all(reader)
    finally:
        reader.close()
        gate.close()
        producer.finish()
    assert producer.error is None
    assert got == [b"small", big, b"after"]
    assert os.listdir(tmp_path) == []


def test_reader_checks_its_gate():
    with pytest.raises(TypeError):
        RecordReader(object())


def test_channel_index_through_a_union(make_pool, manager):
    nbp = make_pool(32, 64)
    parts = [create_result_partition(nbp, n, partition_manager=manager) for n in (2, 3)]
    for p in parts:
        p.setup()
    gates = [SingleInputGate.create_local(manager, [(p.partition_id, i) for i in range(p.num_subpartitions)], k)
             for k, p in enumerate(parts)]
    union = UnionInputGate(*gates)
    with RecordReader(union, emit_events=True) as reader:
        for p in parts:
            p.finish()
            p.close()
        flat = sorted(reader.channel_index(item.channel_info) for item in reader)
        assert flat == [0, 1, 2, 3, 4]
    plain = RecordReader(gates[0])
    assert plain.channel_index(gates[0].get_channel(1).channel_info) == 1
    plain.close()
    union.close()
