"""Records beyond the default spilling threshold (5 MiB): 5 MiB + 1 byte and 64 MiB.

They stream through 32 KiB buffers from a small pool: each buffer goes to the deserializer as
soon as it is finished and is recycled as soon as it is consumed, so memory stays bounded by the
pool, not by the record.
"""

import os

import pytest

from flinknet._core.serialization import (
    DEFAULT_SPILLING_THRESHOLD,
    RecordDeserializer,
    SpanningRecordSerializer,
)

SEGMENT = 32 * 1024


class Pipe:
    """Sink that hands every finished buffer straight to a deserializer."""

    def __init__(self, deser):
        self.deser = deser
        self.consumers = []
        self.records = []
        self.spilled = False

    def add_buffer_consumer(self, sp, consumer, partial):
        self.consumers.append(consumer)

    def buffer_finished(self, sp, n):
        consumer = self.consumers.pop(0)
        chunk = consumer.build()
        consumer.close()
        self.records += self.deser.read_records(chunk)
        self.spilled |= self.deser.is_spilling

    def flush(self):
        while self.consumers:
            self.buffer_finished(0, 0)


@pytest.mark.parametrize("size", [DEFAULT_SPILLING_THRESHOLD + 1, 64 * 1024 * 1024])
def test_huge_records_spill_and_come_back_whole(size, make_pool, tmp_path):
    nbp = make_pool(16, SEGMENT)
    pool = nbp.create_buffer_pool(4, 8, num_subpartitions=1)
    deser = RecordDeserializer(tmp_dirs=[str(tmp_path)])
    pipe = Pipe(deser)
    ser = SpanningRecordSerializer(pool, 1, "bytes", pipe)
    big = os.urandom(1024) * (size // 1024) + os.urandom(size % 1024)
    ser.emit(b"tiny", 0)
    ser.emit(big, 0)
    ser.emit(b"", 0)
    ser.emit(b"after", 0)
    ser.finish_all()
    pipe.flush()
    ser.close()
    assert pipe.spilled
    assert [len(r) for r in pipe.records] == [4, size, 0, 5]
    assert pipe.records[1] == big
    assert pipe.records[3] == b"after"
    assert not deser.is_spilling and os.listdir(tmp_path) == []
    # The pool never held more than its size: memory bounded by buffers, not by the record.
    assert pool.requested_segments <= pool.max_buffers


def test_record_at_threshold_stays_in_memory(make_pool, tmp_path):
    nbp = make_pool(16, SEGMENT)
    pool = nbp.create_buffer_pool(4, 8, num_subpartitions=1)
    deser = RecordDeserializer(tmp_dirs=[str(tmp_path)])
    pipe = Pipe(deser)
    ser = SpanningRecordSerializer(pool, 1, "bytes", pipe)
    ser.emit(bytes(DEFAULT_SPILLING_THRESHOLD), 0)
    ser.finish_all()
    pipe.flush()
    ser.close()
    assert not pipe.spilled and len(pipe.records[0]) == DEFAULT_SPILLING_THRESHOLD
