"""BroadcastRecordWriter against Flink's ``BroadcastRecordWriterTest`` (its broadcast buffers shared
by every subpartition).

Every record goes to every subpartition from one shared buffer: the bytes are written once, the
counters count them once per subpartition, each subpartition's reader recycles its own slice
without disturbing the others, and switching between random (unicast) and broadcast emits keeps
the order and frees a shared buffer only once every reader is done with it (FLINK-17780).
"""

from __future__ import annotations

import random
import struct
import threading

import numpy as np
import pytest

from flinknet._core.buffer import DataType
from flinknet.partition import create_result_partition
from flinknet.partitioners import (
    BroadcastPartitioner,
    ForwardPartitioner,
    KeyGroupStreamPartitioner,
    RebalancePartitioner,
)
from flinknet.types import ResultPartitionType
from flinknet.writer import BroadcastRecordWriter, RecordWriter, RecordWriterBuilder

SEG = 64


class Listener:
    def notify_data_available(self, view):
        pass

    def notify_priority_event(self, sequence_number):
        pass


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def drain(view) -> list[tuple[DataType, bytes]]:
    out = []
    while (bb := view.get_next_buffer()) is not None:
        try:
            out.append((bb.buffer.data_type, bb.buffer.to_bytes()))
        finally:
            bb.buffer.recycle()
    return out


def data_of(items) -> bytes:
    return b"".join(data for t, data in items if t == DataType.DATA_BUFFER)


def int_record(v: int) -> bytes:
    return struct.pack(">i", v)


@pytest.fixture
def parts(make_pool):
    """``parts(n, num_segments, segment_size, **kwargs)``: a set-up partition on its own global
    pool, released and closed at the end of the test (with every writer made by ``parts.writer``)."""
    created, writers = [], []

    def make(n=3, num_segments=64, segment_size=SEG, **kwargs):
        nbp = make_pool(num_segments, segment_size)
        p = create_result_partition(nbp, n, **kwargs)
        p.setup()
        created.append(p)
        return p

    def writer(p, **kwargs):
        w = BroadcastRecordWriter(p, **{"timeout": -1, **kwargs})
        writers.append(w)
        return w

    make.writer = writer
    yield make
    for w in writers:
        w.close()
    for p in created:
        p.release()
        p.close()


def records_of(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randrange(3 * SEG + 1)) for _ in range(count)]


@pytest.mark.parametrize("how", ["emit", "broadcast_emit", "emit_batch"])
def test_every_subpartition_receives_every_record(parts, how):
    n = 3
    p = parts(n, partition_type=ResultPartitionType.PIPELINED, num_segments=256)
    w = parts.writer(p)
    records = records_of(60, seed=1)
    if how == "emit_batch":
        assert w.emit_batch(records[:25]) == 25
        assert w.emit_batch(iter(records[25:])) == 35  # any iterable
    else:
        for r in records:
            getattr(w, how)(r)
    p.finish()
    expected = b"".join(frame(r) for r in records)
    buffers = []
    for i in range(n):
        items = drain(p.create_subpartition_view(i, Listener()))
        assert items[-1][0] == DataType.END_OF_PARTITION
        assert data_of(items) == expected
        buffers.append([data for t, data in items if t == DataType.DATA_BUFFER])
    assert buffers[0] == buffers[1] == buffers[2]  # the same buffers, not just the same bytes
    assert p.num_records_out == len(records)


def test_bytes_are_written_once_for_all_subpartitions(parts):
    """A broadcast writer needs one buffer per ``segment`` bytes whatever the parallelism; its
    counters are those of ``n`` copies (Flink: ``totalWrittenBytes += len × n``, on finish
    ``numBytesOut += bytes × n``, ``numBuffersOut += n``), the same as a channel-selector writer's
    ``broadcast_emit``, which does copy the record into every subpartition's own buffer."""
    n = 4
    records = records_of(40, seed=2)
    framed = sum(len(frame(r)) for r in records)
    broadcast = parts(n, partition_type=ResultPartitionType.PIPELINED, num_segments=512)
    copying = parts(n, partition_type=ResultPartitionType.PIPELINED, num_segments=512)
    wb = parts.writer(broadcast)
    wc = RecordWriter(copying, timeout=-1)
    for r in records:
        wb.emit(r)
        wc.broadcast_emit(r)
    wc.close()
    buffers_one_copy = -(-framed // SEG)
    assert broadcast.buffer_pool.used_buffers == buffers_one_copy
    assert copying.buffer_pool.used_buffers == n * buffers_one_copy
    for p in (broadcast, copying):
        assert p.total_written_bytes == framed * n
        assert p.num_records_out == len(records)
    full = framed // SEG  # buffers finished so far: the full ones
    assert broadcast.num_bytes_out == copying.num_bytes_out == full * SEG * n
    assert broadcast.num_buffers_out == copying.num_buffers_out == full * n
    broadcast.finish()
    copying.finish()
    assert broadcast.num_bytes_out == copying.num_bytes_out == framed * n
    assert broadcast.num_buffers_out == copying.num_buffers_out == buffers_one_copy * n
    assert broadcast.num_bytes_produced == copying.num_bytes_produced == [framed] * n
    for i in range(n):
        assert data_of(drain(broadcast.create_subpartition_view(i, Listener()))) == \
            data_of(drain(copying.create_subpartition_view(i, Listener())))


def test_broadcast_buffers_are_independent_across_subpartitions(parts):
    """Recycling one subpartition's slices neither frees the shared buffers nor moves the other
    subpartitions' indices; the buffers go back once the last reader recycled them."""
    n = 3
    p = parts(n, num_segments=16)
    w = parts.writer(p)
    records = [bytes([i]) * (SEG - 4) for i in range(4)]  # one full buffer each
    for r in records:
        w.emit(r)
    assert p.buffer_pool.used_buffers == 4
    views = [p.create_subpartition_view(i, Listener()) for i in range(n)]
    held = [views[2].get_next_buffer().buffer for _ in range(4)]  # subpartition 2 reads, keeps
    try:
        assert data_of(drain(views[0])) == b"".join(frame(r) for r in records)
        assert p.buffer_pool.used_buffers == 4  # still queued in 1 and held by 2's reader
        held[0].reader_index = 5
        first = views[1].get_next_buffer().buffer
        try:
            assert first.memory_segment is held[0].memory_segment
            assert first.reader_index == 0
            assert first.to_bytes() == frame(records[0])
        finally:
            first.recycle()
        assert data_of(drain(views[1])) == b"".join(frame(r) for r in records[1:])
        assert p.buffer_pool.used_buffers == 4  # subpartition 2's reader still holds all four
        for i, b in enumerate(held):
            b.recycle()
            assert p.buffer_pool.used_buffers == 3 - i
    finally:
        for b in held:
            if not b.is_recycled:
                b.recycle()


def test_broadcast_mixed_with_unicast_emits(parts):
    """Flink's testBroadcastMixedRandomEmitRecord: each record is emitted to one channel and then
    broadcast; switching modes finishes the other mode's buffer, so every record takes a new
    buffer (2 per record) and each channel queues one buffer per broadcast plus its unicast one."""
    n, count, seg = 8, 8, 32
    p = parts(n, segment_size=seg, num_segments=64)
    w = parts.writer(p)
    records = [int_record(v) for v in random.Random(3).sample(range(1 << 20), count)]
    expected = {i: [] for i in range(n)}
    for index, r in enumerate(records):
        target = index % n
        w.emit(r, target)
        expected[target].append(r)
        w.broadcast_emit(r)
        for i in range(n):
            expected[i].append(r)
    assert p.buffer_pool.used_buffers == 2 * count
    for i in range(n):
        assert p.get_number_of_queued_buffers(i) == count + 1
    for i in range(n):
        items = drain(p.create_subpartition_view(i, Listener()))
        assert len(items) == count + 1
        assert data_of(items) == b"".join(frame(r) for r in expected[i])


def test_random_emit_and_buffer_recycling(parts):
    """FLINK-17780: a shared broadcast buffer goes back to the pool only when every subpartition's
    consumer is done with it, also when unicast emits take buffers in between."""
    record_size, seg = 8, 16
    p = parts(2, segment_size=seg, num_segments=3, max_overdraft_buffers=0)  # 3 buffers
    pool = p.buffer_pool
    w = parts.writer(p)
    assert pool.used_buffers == 0
    w.broadcast_emit(int_record(1))
    w.broadcast_emit(int_record(2))  # fills the first (shared) buffer
    assert pool.used_buffers == 1
    assert p.get_number_of_queued_buffers(0) == 1
    view0 = p.create_subpartition_view(0, Listener())
    bb = view0.get_next_buffer()
    assert bb.buffer.size == 2 * record_size
    bb.buffer.recycle()
    assert pool.used_buffers == 1  # subpartition 1 still holds it
    w.emit(int_record(3), 0)  # a second buffer
    assert pool.used_buffers == 2
    assert p.get_number_of_queued_buffers(1) == 1
    view1 = p.create_subpartition_view(1, Listener())
    bb = view1.get_next_buffer()
    assert bb.buffer.size == 2 * record_size
    assert bb.buffer.to_bytes() == frame(int_record(1)) + frame(int_record(2))
    bb.buffer.recycle()
    assert pool.used_buffers == 1  # the shared one is back; the unicast one is still open
    assert data_of(drain(view0)) == frame(int_record(3))


def test_random_emits_between_broadcasts_with_concurrent_recycling(parts):
    """random_emit and broadcast emits interleaved while a reader drains and recycles: every
    subpartition sees every broadcast and its own random records, in emit order, and the pool
    gets everything back."""
    n = 3
    p = parts(n, num_segments=256, partition_type=ResultPartitionType.PIPELINED)
    w = parts.writer(p)
    rng = random.Random(9)
    emitted = []  # (kind, id)
    views = [p.create_subpartition_view(i, Listener()) for i in range(n)]
    got = [b"" for _ in range(n)]
    for i in range(300):
        size = rng.randrange(2 * SEG)
        payload = struct.pack(">I", i) + bytes(size)
        if rng.random() < 0.5:
            w.random_emit(payload)
            emitted.append(("r", i, size))
        else:
            w.broadcast_emit(payload)
            emitted.append(("b", i, size))
        if i % 17 == 0:
            for j in range(n):
                got[j] += data_of(drain(views[j]))
    p.finish()
    for j in range(n):
        got[j] += data_of(drain(views[j]))
    randoms_seen = []
    for j in range(n):
        data, pos, ids = got[j], 0, []
        while pos < len(data):
            (length,) = struct.unpack_from(">i", data, pos)
            (ident,) = struct.unpack_from(">I", data, pos + 4)
            ids.append(ident)
            pos += 4 + length
        assert pos == len(data)
        assert ids == sorted(ids)
        broadcasts = [i for k, i, _ in emitted if k == "b"]
        assert [i for i in ids if emitted[i][0] == "b"] == broadcasts
        randoms_seen += [i for i in ids if emitted[i][0] == "r"]
        assert all(emitted[i][2] == len(bytes(emitted[i][2])) for i in ids)
    assert sorted(randoms_seen) == [i for k, i, _ in emitted if k == "r"]
    assert p.buffer_pool.used_buffers == 0


ROW = np.dtype([("k", ">i4"), ("v", "<f8"), ("pad", "V3")])


@pytest.mark.parametrize("dtype,serializer", [(">i8", "bytes"), (">i8", np.dtype(">i8")), ("<f4", "bytes"),
                                              (ROW, "bytes"), (ROW, ROW)])
def test_emit_array_broadcasts_every_row(parts, dtype, serializer):
    """Every row's raw bytes to every subpartition, as a unicast ``emit_array`` writes them
    (a big-endian row must not come out in native order)."""
    arr = np.zeros(50, dtype=dtype)
    if arr.dtype.names:
        arr["k"] = np.arange(50) * 100_003
        arr["v"] = np.arange(50) / 7
    else:
        arr[:] = np.arange(50) * 100_003
    p = parts(3, num_segments=64, serializer=serializer)
    ref = parts(1, num_segments=64, serializer=serializer)
    w = parts.writer(p)
    assert w.emit_array(arr) == 50
    RecordWriter(ref, timeout=-1).emit_array(arr, 0)
    p.finish()
    ref.finish()
    expected = data_of(drain(ref.create_subpartition_view(0, Listener())))
    assert expected == b"".join(frame(arr[i:i + 1].tobytes()) for i in range(len(arr)))
    for i in range(3):
        assert data_of(drain(p.create_subpartition_view(i, Listener()))) == expected
    assert p.num_records_out == 50
    with pytest.raises(ValueError):
        w.emit_array(np.zeros((2, 2), dtype=np.int64))


def test_explicit_target_is_unicast(parts):
    p = parts(3)
    w = parts.writer(p)
    w.emit(b"only-1", 1)
    assert w.emit_batch([b"only-2a", b"only-2b"], 2) == 2
    w.emit(b"all")
    p.finish()
    got = [data_of(drain(p.create_subpartition_view(i, Listener()))) for i in range(3)]
    assert got == [frame(b"all"), frame(b"only-1") + frame(b"all"),
                   frame(b"only-2a") + frame(b"only-2b") + frame(b"all")]


# --- RecordWriterBuilder -------------------------------------------------------------------------


def test_builder_with_broadcast_partitioner_builds_a_broadcast_writer(parts):
    p = parts(2)
    selector = BroadcastPartitioner()
    w = RecordWriterBuilder().set_channel_selector(selector).set_timeout(7).set_task_name("src").build(p)
    try:
        assert type(w) is BroadcastRecordWriter
        assert w.channel_selector is selector
        assert selector.number_of_channels == 2
        assert w.timeout == 7
        assert w.task_name == "src"
        assert w.flusher_alive
        assert any(t.name == "OutputFlusher for src" for t in threading.enumerate())
        w.emit(b"x")
        w.flush_all()
        for i in range(2):
            assert data_of(drain(p.create_subpartition_view(i, Listener()))) == frame(b"x")
        assert p.buffer_pool.used_buffers == 1  # one shared buffer, still open
    finally:
        w.close()
    assert not w.flusher_alive


@pytest.mark.parametrize("selector", [None, ForwardPartitioner(), RebalancePartitioner(),
                                      KeyGroupStreamPartitioner(lambda r: r)])
def test_builder_with_other_selectors_builds_a_channel_selector_writer(parts, selector):
    p = parts(2)
    builder = RecordWriterBuilder().set_timeout(-1)
    if selector is not None:
        builder.set_channel_selector(selector)
    w = builder.build(p)
    try:
        assert type(w) is RecordWriter
        assert w.timeout == -1
        assert not w.flusher_alive
        if selector is not None:
            assert w.channel_selector is selector
        assert w.channel_selector.number_of_channels == 2
    finally:
        w.close()


def test_builder_defaults(parts):
    p = parts(2)
    w = RecordWriterBuilder().build(p)
    try:
        assert type(w) is RecordWriter
        assert w.timeout == 100  # Flink's execution.buffer-timeout.interval
        assert w.flusher_alive
        assert w.task_name == ""
        assert any(t.name == "OutputFlusher" for t in threading.enumerate())
    finally:
        w.close()
