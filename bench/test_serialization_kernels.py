"""pytest-benchmark kernels of record serialization, each group with its pure-Python baseline.

Run: ``python -m pytest bench --benchmark-only``. Per group, compare ``flinknet`` rows against the
``python`` row (struct framing of pickled payloads) measured in the same session; ``flinknet bench``
also prints the C framing loop beside them.
"""

import pickle
import struct

import numpy as np
import pytest

from flinknet._core.pool import NetworkBufferPool
from flinknet._core.serialization import RecordDeserializer, SpanningRecordSerializer
from flinknet.tools.bench.kernels import RecyclingSink

SEGMENT = 32 * 1024
RECORDS = 10_000


@pytest.fixture
def serializer():
    nbp = NetworkBufferPool(64, SEGMENT)
    pool = nbp.create_buffer_pool(4, 8, num_subpartitions=1)
    sink = RecyclingSink()
    ser = SpanningRecordSerializer(pool, 1, "bytes", sink)
    yield ser
    ser.close()
    for c in sink.consumers:
        c.close()
    pool.lazy_destroy()
    assert nbp.is_whole
    nbp.destroy()


@pytest.mark.parametrize("size", [8, 100, 1000])
@pytest.mark.parametrize("mode", ["per_record", "batch", "numpy", "batch_targets", "numpy_targets"])
def test_serialize_flinknet(benchmark, serializer, size, mode):
    """``emit`` per record, ``emit_batch`` of a list, ``emit_array`` of a numpy array, to one
    subpartition; ``*_targets``: the same calls given one target per record (what a channel
    selector hands a RecordWriter)."""
    benchmark.group = f"serialize {size} B x {RECORDS}"
    records = [bytes(size)] * RECORDS
    array = np.zeros(RECORDS, dtype=f"V{size}")
    targets = np.zeros(RECORDS, dtype=np.int32)
    if mode == "per_record":
        def run():
            emit = serializer.emit
            for r in records:
                emit(r, 0)
    elif mode == "batch":
        def run():
            serializer.emit_batch(records, 0)
    elif mode == "batch_targets":
        def run():
            serializer.emit_batch(records, targets)
    elif mode == "numpy":
        def run():
            serializer.emit_array(array, 0)
    else:
        def run():
            serializer.emit_array(array, targets)
    benchmark(run)


@pytest.mark.parametrize("size", [8, 100, 1000])
def test_serialize_python(benchmark, size):
    benchmark.group = f"serialize {size} B x {RECORDS}"
    records = [bytes(size)] * RECORDS

    def run():
        buf, pos = bytearray(SEGMENT), 0
        for r in records:
            payload = pickle.dumps(r)
            n = len(payload)
            if pos + 4 + n > SEGMENT:
                buf, pos = bytearray(SEGMENT), 0
            struct.pack_into(">i", buf, pos, n)
            buf[pos + 4:pos + 4 + n] = payload
            pos += 4 + n

    benchmark(run)


def _framed_buffers(size):
    nbp = NetworkBufferPool(RECORDS * (size + 4) // SEGMENT + 16, SEGMENT)
    pool = nbp.create_buffer_pool(4, nbp.total_segments, num_subpartitions=1)

    class Keep:
        consumers = []

        def add_buffer_consumer(self, sp, c, p):
            self.consumers.append(c)

        def buffer_finished(self, sp, n):
            pass

    sink = Keep()
    ser = SpanningRecordSerializer(pool, 1, "bytes", sink)
    ser.emit_batch([bytes(size)] * RECORDS, 0)
    ser.finish_all()
    ser.close()
    buffers = []
    for c in sink.consumers:
        buffers.append(c.build())
        c.close()
    return nbp, pool, buffers


@pytest.mark.parametrize("size", [8, 100, 1000])
@pytest.mark.parametrize("mode", ["per_record", "per_buffer", "numpy"])
def test_deserialize_flinknet(benchmark, size, mode):
    """``get_next_record`` per record, ``read_records`` per buffer (a list), ``read_array`` per
    buffer (a numpy array), over the buffers of RECORDS framed records."""
    from flinknet._core.serialization import DeserializationResult

    benchmark.group = f"deserialize {size} B x {RECORDS}"
    nbp, pool, buffers = _framed_buffers(size)
    deser = RecordDeserializer()
    intermediate = DeserializationResult.INTERMEDIATE_RECORD_FROM_BUFFER

    def run():
        for b in buffers:
            b.retain()
            if mode == "per_buffer":
                deser.read_records(b)
            elif mode == "numpy":
                deser.read_array(b, f"V{size}")
            else:
                deser.set_next_buffer(b)
                get = deser.get_next_record
                while get()[0] is intermediate:
                    pass

    benchmark(run)
    deser.clear()
    for b in buffers:
        b.recycle()
    pool.lazy_destroy()
    assert nbp.is_whole
    nbp.destroy()


@pytest.mark.parametrize("size", [8, 100, 1000])
def test_deserialize_python(benchmark, size):
    benchmark.group = f"deserialize {size} B x {RECORDS}"
    payload = pickle.dumps(bytes(size))
    framed = struct.pack(">i", len(payload)) + payload
    per = SEGMENT // len(framed)
    buffers = [framed * per] * (RECORDS // per + 1)

    def run():
        for buf in buffers:
            pos, end = 0, len(buf)
            while pos < end:
                (n,) = struct.unpack_from(">i", buf, pos)
                pickle.loads(buf[pos + 4:pos + 4 + n])
                pos += 4 + n

    benchmark(run)
