"""Blocking partitions written to files (Flink's ``BoundedBlockingSubpartition*Test``,
``BoundedBlockingSubpartitionWriteReadTest`` and ``BufferReaderWriterUtilTest``).

No view before the producer finished; afterwards any number of readers per subpartition read the
same records; the file is a sequence of ``[type i16 | compressed i16 | length i32][bytes]`` entries
in native byte order ending with EndOfPartition; the pool needs about one buffer per
subpartition however much is written; release removes the files; each reader works with two
buffers of its own and continues when they come back; corrupt files are reported.
"""

from __future__ import annotations

import os
import struct
import sys
import threading

import pytest

from flinknet import IllegalStateError
from flinknet import events as ev
from flinknet.core import DataType, RecordDeserializer
from flinknet.errors import PartitionNotFoundError
from flinknet.partition import (
    BoundedBlockingResultPartition,
    CorruptPartitionFileError,
    ResultPartitionManager,
    create_result_partition,
)
from flinknet.types import ResultPartitionType
from tests.helpers import Worker, pattern

SEGMENT_SIZE = 128
HEADER = struct.Struct("=hhi")
BLOCKING = ResultPartitionType.BLOCKING


class Listener:
    def __init__(self):
        self.num_notifications = 0
        self.available = threading.Event()

    def notify_data_available(self, view):
        self.num_notifications += 1
        self.available.set()

    def notify_priority_event(self, sequence_number):
        pass


def records_for(subpartition: int, count: int) -> list[bytes]:
    return [pattern(1 + (i * 37) % 300, subpartition * 10_000 + i) for i in range(count)]


def read_everything(reader):
    """Records and events of one reader, recycling each buffer before asking for the next."""
    deserializer = RecordDeserializer("bytes")
    out = []
    while (bab := reader.get_next_buffer()) is not None:
        buffer = bab.buffer
        if buffer.is_buffer:
            out.extend(deserializer.read_records(buffer))
        else:
            try:
                out.append(ev.from_buffer(buffer))
            finally:
                buffer.recycle()
    assert not deserializer.has_unfinished_data
    return out


def parse_file(path):
    """The file's entries as (type, compressed, payload)."""
    with open(path, "rb") as f:
        data = f.read()
    entries = []
    pos = 0
    while pos < len(data):
        kind, compressed, length = HEADER.unpack_from(data, pos)
        pos += HEADER.size
        entries.append((kind, compressed, data[pos:pos + length]))
        pos += length
    assert pos == len(data), "the last entry runs past the end of the file"
    return entries


def framed(records):
    return b"".join(len(r).to_bytes(4, "big") + r for r in records)


class Blocking:
    """A finished (or not) blocking partition with known content; releases itself at the end."""

    def __init__(self, nbp, n=2, count=60, finish=True, **kwargs):
        self.partition = create_result_partition(nbp, n, BLOCKING, **kwargs)
        assert isinstance(self.partition, BoundedBlockingResultPartition)
        self.partition.setup()
        self.records = [records_for(i, count) for i in range(n)]
        for i in range(count):
            for sp in range(n):
                self.partition.emit_record(self.records[sp][i], sp)
        self.readers = []
        if finish:
            self.partition.finish()

    def reader(self, index, listener=None):
        r = self.partition.create_subpartition_view(index, listener or Listener())
        self.readers.append(r)
        return r

    def close(self):
        for r in self.readers:
            r.release_all_resources()
        self.partition.close()
        self.partition.release()
        assert not os.path.exists(self.partition.directory)


@pytest.fixture
def nbp(make_pool):
    return make_pool(16, SEGMENT_SIZE)


@pytest.fixture
def blocking(nbp, tmp_path):
    b = Blocking(nbp, tmp_dir=str(tmp_path))
    yield b
    b.close()


# --- consuming only after finish -------------------------------------------------------------------


def test_no_view_before_finish(nbp, tmp_path):
    manager = ResultPartitionManager()
    b = Blocking(nbp, count=5, finish=False, tmp_dir=str(tmp_path), partition_manager=manager)
    try:
        with pytest.raises(PartitionNotFoundError) as info:
            b.partition.create_subpartition_view(0, Listener())
        assert info.value.partition_id == b.partition.partition_id
        with pytest.raises(PartitionNotFoundError):
            manager.create_subpartition_view(b.partition.partition_id, 1, Listener())
        b.partition.finish()
        assert read_everything(b.reader(0)) == b.records[0] + [ev.EndOfPartitionEvent()]
    finally:
        b.close()
        manager.shutdown()


@pytest.mark.parametrize("num_readers", [1, 3])
def test_several_readers_per_subpartition_read_the_same_records(blocking, num_readers):
    for sp in range(2):
        readers = [blocking.reader(sp) for _ in range(num_readers)]
        for r in readers:
            assert read_everything(r) == blocking.records[sp] + [ev.EndOfPartitionEvent()]
    # The partition is reconsumable: a reader opened later reads it all again.
    assert read_everything(blocking.reader(1)) == blocking.records[1] + [ev.EndOfPartitionEvent()]


def test_interleaved_readers(blocking):
    first, second = blocking.reader(0), blocking.reader(0)
    d1, d2 = RecordDeserializer("bytes"), RecordDeserializer("bytes")
    out1, out2 = [], []
    while True:
        progressed = False
        for reader, d, out in ((first, d1, out1), (second, d2, out2)):
            bab = reader.get_next_buffer()
            if bab is None:
                continue
            progressed = True
            if bab.buffer.is_buffer:
                out.extend(d.read_records(bab.buffer))
            else:
                bab.buffer.recycle()
        if not progressed:
            break
    assert out1 == out2 == blocking.records[0]


def test_concurrent_readers(nbp, tmp_path):
    b = Blocking(nbp, n=2, count=200, tmp_dir=str(tmp_path))
    try:
        readers = [b.reader(i % 2) for i in range(6)]
        workers = [Worker(read_everything, r) for r in readers]
        for w in workers:
            w.start()
        for i, w in enumerate(workers):
            w.finish(20)
            assert w.error is None, w.error
            assert w.result == b.records[i % 2] + [ev.EndOfPartitionEvent()]
    finally:
        b.close()


def test_reader_reports_backlog_and_sequence_numbers(blocking):
    sp = blocking.partition.subpartitions[0]
    reader = blocking.reader(0)
    backlog = sp.num_data_buffers_written
    assert reader.get_availability_and_backlog(True) == (True, backlog)
    assert reader.get_availability_and_backlog(False).is_available is False  # data needs credit
    seen = []
    last = None
    while (bab := reader.get_next_buffer()) is not None:
        if bab.buffer.is_buffer:
            backlog -= 1
        assert bab.buffers_in_backlog == backlog
        seen.append(bab.sequence_number)
        last = bab
        bab.buffer.recycle()
    assert seen == list(range(sp.num_buffers_and_events_written))
    assert last.buffer.data_type == DataType.END_OF_PARTITION
    assert last.next_data_type == DataType.NONE
    assert reader.get_availability_and_backlog(True) == (False, 0)
    with pytest.raises(IllegalStateError):
        reader.resume_consumption()


# --- the file --------------------------------------------------------------------------------------


def test_file_layout(blocking):
    partition = blocking.partition
    for index, sp in enumerate(partition.subpartitions):
        assert os.path.dirname(sp.path) == partition.directory
        entries = parse_file(sp.path)
        assert os.path.getsize(sp.path) == sp.file_size == sum(8 + len(p) for _, _, p in entries)
        assert len(entries) == sp.num_buffers_and_events_written
        data = [p for kind, _, p in entries if kind == 0]
        assert len(data) == sp.num_data_buffers_written
        assert all(compressed == 0 for _, compressed, _ in entries)
        assert {kind for kind, _, _ in entries} == {0, 1}
        # Full buffers, then the last partial one; their bytes are the framed records.
        assert all(len(p) == SEGMENT_SIZE for p in data[:-1])
        assert 0 < len(data[-1]) <= SEGMENT_SIZE
        assert b"".join(data) == framed(blocking.records[index])
        kind, _, payload = entries[-1]
        assert kind == 1
        assert ev.from_serialized_event(payload) == ev.EndOfPartitionEvent()
        assert [k for k, _, _ in entries].count(1) == 1


def test_file_header_in_native_byte_order(nbp, tmp_path):
    b = Blocking(nbp, n=1, count=1, tmp_dir=str(tmp_path))
    try:
        with open(b.partition.subpartitions[0].path, "rb") as f:
            head = f.read(8)
        length = 4 + len(b.records[0][0])
        assert head[:4] == b"\x00\x00\x00\x00"  # data buffer, not compressed
        assert int.from_bytes(head[4:], sys.byteorder, signed=True) == length
        assert head == struct.pack("=hhi", 0, 0, length)
    finally:
        b.close()


def test_events_and_flush_in_the_file(nbp, tmp_path):
    partition = create_result_partition(nbp, 2, BLOCKING, tmp_dir=str(tmp_path))
    try:
        partition.emit_record(b"a" * 10, 0)
        partition.flush_all()  # a blocking flush finishes the buffer and writes it
        sp = partition.subpartitions[0]
        assert sp.num_data_buffers_written == 1
        assert parse_file(sp.path) == [(0, 0, framed([b"a" * 10]))]
        partition.emit_record(b"b" * 5, 0)
        partition.broadcast_record(b"c")
        partition.broadcast_event(ev.CancelCheckpointMarker(9))
        partition.emit_record(b"d", 1)
        partition.flush(1)
        partition.finish()
        cancel = ev.to_serialized_event(ev.CancelCheckpointMarker(9))
        eop = ev.to_serialized_event(ev.EndOfPartitionEvent())
        assert parse_file(sp.path) == [
            (0, 0, framed([b"a" * 10])), (0, 0, framed([b"b" * 5])), (0, 0, framed([b"c"])),
            (1, 0, cancel), (1, 0, eop)]
        assert parse_file(partition.subpartitions[1].path) == [
            (0, 0, framed([b"c"])), (1, 0, cancel), (0, 0, framed([b"d"])), (1, 0, eop)]
        reader = partition.create_subpartition_view(1, Listener())
        assert read_everything(reader) == [b"c", ev.CancelCheckpointMarker(9), b"d",
                                           ev.EndOfPartitionEvent()]
        reader.release_all_resources()
    finally:
        partition.close()
        partition.release()


# --- memory ----------------------------------------------------------------------------------------


def test_pool_needs_about_one_buffer_per_subpartition(make_pool, tmp_path):
    n = 3
    nbp = make_pool(n + 1, SEGMENT_SIZE)  # exactly the pool's minimum: it can never grow
    partition = create_result_partition(nbp, n, BLOCKING, tmp_dir=str(tmp_path))
    pool = partition.buffer_pool
    assert pool.min_buffers == n + 1 and pool.num_buffers == n + 1
    records = [pattern(200 + i % 50, i) for i in range(600)]  # ~ 900 buffers of data

    def produce():
        for i, r in enumerate(records):
            partition.emit_record(r, i % n)
        partition.broadcast_record(b"all")
        partition.finish()

    worker = Worker(produce)
    worker.start()
    try:
        worker.finish(20)
    finally:
        if worker.is_alive():  # blocked on the pool: wake it up so the test can fail cleanly
            partition.fail(RuntimeError("producer blocked"))
            worker.join(10)
    assert worker.error is None, worker.error
    assert pool.used_buffers == 0
    written = sum(sp.num_data_buffers_written for sp in partition.subpartitions)
    assert written > 10 * pool.num_buffers
    for index in range(n):
        reader = partition.create_subpartition_view(index, Listener())
        expected = records[index::n] + [b"all", ev.EndOfPartitionEvent()]
        assert read_everything(reader) == expected
        reader.release_all_resources()
    assert pool.used_buffers == 0  # readers use their own memory
    partition.close()
    partition.release()


def test_reader_holds_at_most_two_buffers_and_continues_after_recycle(blocking):
    listener = Listener()
    reader = blocking.reader(0, listener)
    assert listener.num_notifications == 1  # data is there from the start
    first = reader.get_next_buffer()
    second = reader.get_next_buffer()
    assert first is not None and second is not None
    # Both segments are out: the reader cannot read ahead any further.
    assert second.next_data_type == DataType.NONE
    assert reader.get_next_buffer() is None
    assert not reader.get_availability_and_backlog(True).is_available
    assert first.buffer.recycler is reader and second.buffer.recycler is reader
    assert first.buffer.memory_segment is not second.buffer.memory_segment

    deserializer = RecordDeserializer("bytes")
    records = deserializer.read_records(first.buffer)  # recycled: back to the reader
    assert listener.num_notifications == 2  # which read ahead and says so
    assert reader.get_availability_and_backlog(True).is_available
    third = reader.get_next_buffer()
    assert third is not None
    assert third.buffer.memory_segment is first.buffer.memory_segment  # reused
    assert third.sequence_number == 2
    records += deserializer.read_records(second.buffer)
    records += deserializer.read_records(third.buffer)
    records += [r for r in read_everything_with(reader, deserializer)]
    assert records == blocking.records[0] + [ev.EndOfPartitionEvent()]


def read_everything_with(reader, deserializer):
    while (bab := reader.get_next_buffer()) is not None:
        if bab.buffer.is_buffer:
            yield from deserializer.read_records(bab.buffer)
        else:
            yield ev.from_buffer(bab.buffer)
            bab.buffer.recycle()


def test_buffers_recycled_after_reader_release_free_their_memory(blocking):
    reader = blocking.reader(1)
    bab = reader.get_next_buffer()
    sp = blocking.partition.subpartitions[1]
    assert sp.num_readers == 1
    reader.release_all_resources()
    assert reader.is_released
    assert sp.num_readers == 0
    assert reader.get_next_buffer() is None
    segment = bab.buffer.memory_segment
    bab.buffer.recycle()  # goes back to a released reader: the memory is freed
    assert segment.is_freed


# --- release ---------------------------------------------------------------------------------------


def test_release_removes_the_directory(nbp, tmp_path):
    b = Blocking(nbp, tmp_dir=str(tmp_path))
    directory = b.partition.directory
    paths = [sp.path for sp in b.partition.subpartitions]
    assert os.path.dirname(directory) == str(tmp_path)
    assert all(os.path.exists(p) for p in paths)
    b.partition.release()
    assert not os.path.exists(directory)
    assert b.partition.subpartitions[0].is_released
    with pytest.raises(IllegalStateError):
        b.partition.create_subpartition_view(0, Listener())
    b.close()


def test_open_reader_reads_to_the_end_after_release(blocking):
    reader = blocking.reader(0)
    blocking.partition.release()
    assert not os.path.exists(blocking.partition.directory)
    assert read_everything(reader) == blocking.records[0] + [ev.EndOfPartitionEvent()]


def test_close_without_finish_releases(nbp, tmp_path):
    b = Blocking(nbp, count=10, finish=False, tmp_dir=str(tmp_path))
    b.partition.close()
    assert b.partition.is_released
    assert not os.path.exists(b.partition.directory)
    b.close()


def test_finished_partition_stays_after_close(blocking):
    blocking.partition.close()
    assert not blocking.partition.is_released  # released by the scheduler, not on consumption
    assert os.path.exists(blocking.partition.directory)
    reader = blocking.reader(1)
    reader.release_all_resources()
    assert not blocking.partition.is_released


def test_producing_after_finish_fails(blocking):
    with pytest.raises(IllegalStateError, match="Partition already finished"):
        blocking.partition.emit_record(b"x", 0)
    blocking.partition.flush_all()  # a no-op once finished


def test_blocking_type_required(nbp, tmp_path):
    with pytest.raises(ValueError):
        BoundedBlockingResultPartition.create(nbp, 2, partition_type=ResultPartitionType.PIPELINED,
                                              tmp_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []
    assert nbp.number_of_registered_buffer_pools == 0


# --- corrupt files ---------------------------------------------------------------------------------


def _corrupt(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize("header", [HEADER.pack(7, 0, 10), HEADER.pack(0, 2, 10),
                                    HEADER.pack(0, 0, SEGMENT_SIZE + 1), HEADER.pack(0, 0, -1),
                                    HEADER.pack(0, 0, 1 << 30)],
                         ids=["bad_type", "bad_compressed_flag", "longer_than_buffer", "negative",
                              "past_end"])
def test_corrupt_header(blocking, header):
    sp = blocking.partition.subpartitions[0]
    _corrupt(sp.path, 0, header)
    with pytest.raises(CorruptPartitionFileError):
        blocking.partition.create_subpartition_view(0, Listener())
    assert sp.num_readers == 0  # the failed reader was cleaned up
    # The other subpartition is untouched.
    assert read_everything(blocking.reader(1)) == blocking.records[1] + [ev.EndOfPartitionEvent()]


def test_corrupt_header_in_the_middle(blocking):
    sp = blocking.partition.subpartitions[0]
    entries = parse_file(sp.path)
    offset = sum(8 + len(p) for _, _, p in entries[:3])
    _corrupt(sp.path, offset, HEADER.pack(5, 0, 4))
    reader = blocking.reader(0)
    with pytest.raises(CorruptPartitionFileError):
        while (bab := reader.get_next_buffer()) is not None:
            bab.buffer.recycle()


def test_truncated_file(blocking):
    sp = blocking.partition.subpartitions[1]
    os.truncate(sp.path, sp.file_size - 2)
    reader = blocking.reader(1)
    with pytest.raises(CorruptPartitionFileError):
        while (bab := reader.get_next_buffer()) is not None:
            bab.buffer.recycle()
