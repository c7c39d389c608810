"""``flinknet bench``: microbenchmarks of the core, each beside a baseline measured in the same run.

Every row reports flinknet's cost and one or more baselines timed moments before on the same
machine, and the ratio between them, so the numbers mean something on a shared, noisy host:

* ``pool.*``: a buffer request plus its recycle, against the same hand-out written in plain Python
  (a list of free segments and a small buffer object).
* ``append.*``: ``BufferBuilder.append_and_commit`` of small chunks into 32 KiB builders, against
  the pure-Python way (slice assignment into a ``bytearray`` through a ``memoryview``), against the
  same kernel called from C (the cost of the work without the Python call) and against ``memcpy``.
* ``copy.32KiB``: appending a whole 32 KiB chunk, against ``memcpy`` of 32 KiB (the bulk path).
* ``serialize.*`` / ``deserialize.*``: records framed into 32 KiB buffers (per record, a list in one
  call, a numpy array in one call) and read back (per record, per buffer, into a numpy array),
  against a C loop that frames/deframes in one flat buffer (the floor) and the pure-Python way
  (``struct.pack_into`` / ``struct.unpack_from`` framing of ``pickle`` payloads).
* ``local.*``: records from a producer thread to a consumer thread through a pipelined partition
  and a local input channel (per record, batch, numpy), against a bounded ``queue.Queue`` between
  the same threads and beside Flink 2.3's recorded in-process figure (see
  :mod:`flinknet.bench_exchange`).
* ``remote.*`` / ``latency.*``: a producer process → a consumer process over loopback TCP (credit-based
  transport), against a raw Python socket and the socket ceiling measured in the same run and
  beside Flink 2.3's recorded two-TaskManager figures (see :mod:`flinknet.bench_transport`).

Each measurement is the best of several repeats (the least disturbed by other load).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from flinknet._core import _benchkit
from flinknet._core.buffer import is_debug_build
from flinknet._core.pool import NetworkBufferPool
from flinknet._core.serialization import RecordDeserializer, SpanningRecordSerializer

SEGMENT_SIZE = 32 * 1024


@dataclass
class Row:
    name: str
    unit: str
    value: float
    baselines: dict[str, float] = field(default_factory=dict)
    note: str = ""

    def ratio(self, baseline: str) -> float:
        return self.value / self.baselines[baseline]


def _best_ns(fn: Callable[[], int], repeats: int) -> float:
    """Best ns per operation over ``repeats`` runs; ``fn`` returns how many operations it did."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        ops = fn()
        dt = time.perf_counter_ns() - t0
        best = min(best, dt / ops)
    return best


# --- pure-Python baselines ---------------------------------------------------------------------

class _PyBuffer:
    __slots__ = ("segment", "pool", "ref_count")

    def __init__(self, segment, pool):
        self.segment = segment
        self.pool = pool
        self.ref_count = 1

    def recycle(self):
        self.ref_count -= 1
        if self.ref_count == 0:
            self.pool.recycle(self.segment)


class _PyPool:
    """The hand-out a Python user would write: a free list and a buffer wrapper."""

    def __init__(self, n, size):
        self.free = [bytearray(size) for _ in range(n)]

    def request_buffer(self):
        if self.free:
            return _PyBuffer(self.free.pop(), self)
        return None

    def recycle(self, segment):
        self.free.append(segment)


# --- benchmarks --------------------------------------------------------------------------------

def bench_pool(iterations: int, repeats: int) -> list[Row]:
    nbp = NetworkBufferPool(64, SEGMENT_SIZE)
    try:
        lbp = nbp.create_buffer_pool(8, 8)

        def flinknet_loop():
            request = lbp.request_buffer
            for _ in range(iterations):
                request().recycle()
            return iterations

        def builder_loop():
            request = lbp.request_buffer_builder
            for _ in range(iterations):
                request().close()
            return iterations

        def global_loop():
            request = nbp.request_pooled_memory_segment
            recycle = nbp.recycle_pooled_memory_segment
            for _ in range(iterations):
                recycle(request())
            return iterations

        py = _PyPool(8, SEGMENT_SIZE)

        def python_loop():
            request = py.request_buffer
            for _ in range(iterations):
                request().recycle()
            return iterations

        base = _best_ns(python_loop, repeats)
        rows = [
            Row("pool.request_buffer+recycle", "ns/op", _best_ns(flinknet_loop, repeats),
                {"pure-Python pool": base}),
            Row("pool.request_buffer_builder+close", "ns/op", _best_ns(builder_loop, repeats),
                {"pure-Python pool": base}),
            Row("pool.global_segment_request+recycle", "ns/op", _best_ns(global_loop, repeats),
                {"pure-Python pool": base}),
        ]
        lbp.lazy_destroy()
        return rows
    finally:
        nbp.destroy()


def bench_append(chunk: int, iterations: int, repeats: int) -> Row:
    nbp = NetworkBufferPool(8, SEGMENT_SIZE)
    try:
        lbp = nbp.create_buffer_pool(2, 2)
        data = bytes(range(256)) * (chunk // 256) + bytes(chunk % 256)
        per_builder = SEGMENT_SIZE // chunk

        def flinknet_loop():
            done = 0
            request = lbp.request_buffer_builder
            while done < iterations:
                builder = request()
                append = builder.append_and_commit
                for _ in range(per_builder):
                    append(data)
                builder.close()
                done += per_builder
            return done

        target = bytearray(SEGMENT_SIZE)
        view = memoryview(target)

        def python_loop():
            done = 0
            while done < iterations:
                pos = 0
                for _ in range(per_builder):
                    end = pos + chunk
                    view[pos:end] = data
                    pos = end
                done += per_builder
            return done

        value = _best_ns(flinknet_loop, repeats)
        python = _best_ns(python_loop, repeats)
        builder = lbp.request_buffer_builder()
        c_loop = min(_benchkit.builder_append_ns_per_chunk(builder, data, iterations) for _ in range(repeats))
        builder.close()
        memcpy = min(_benchkit.memcpy_ns_per_chunk(chunk, SEGMENT_SIZE, iterations) for _ in range(repeats))
        view.release()
        lbp.lazy_destroy()
        return Row(f"append.{chunk}B", "ns/op", value,
                   {"pure-Python memoryview": python, "same kernel from C": c_loop, "memcpy": memcpy})
    finally:
        nbp.destroy()


def bench_bulk_copy(iterations: int, repeats: int) -> Row:
    nbp = NetworkBufferPool(8, SEGMENT_SIZE)
    try:
        lbp = nbp.create_buffer_pool(2, 2)
        data = bytes(SEGMENT_SIZE)
        builder = lbp.request_buffer_builder()
        c_loop = min(_benchkit.builder_append_ns_per_chunk(builder, data, iterations) for _ in range(repeats))
        builder.close()

        def flinknet_loop():
            request = lbp.request_buffer_builder
            for _ in range(iterations):
                b = request()
                b.append_and_commit(data)
                b.close()
            return iterations

        value = _best_ns(flinknet_loop, repeats)
        memcpy = min(_benchkit.memcpy_ns_per_chunk(SEGMENT_SIZE, SEGMENT_SIZE, iterations) for _ in range(repeats))
        lbp.lazy_destroy()
        return Row("copy.32KiB(request+append+close)", "ns/op", value,
                   {"memcpy": memcpy, "append from C": c_loop})
    finally:
        nbp.destroy()


class _RecyclingSink:
    """Takes each buffer as the partition layer would and recycles it when finished."""

    def __init__(self):
        self.consumers = []

    def add_buffer_consumer(self, subpartition, consumer, partial_record_length):
        self.consumers.append(consumer)

    def buffer_finished(self, subpartition, num_bytes):
        consumer = self.consumers.pop(0)
        consumer.build().recycle()
        consumer.close()

    def close(self):
        for consumer in self.consumers:
            consumer.close()
        self.consumers.clear()


class _KeepingSink(_RecyclingSink):
    def buffer_finished(self, subpartition, num_bytes):
        pass

    def take_buffers(self):
        buffers = []
        for consumer in self.consumers:
            buffers.append(consumer.build())
            consumer.close()
        self.consumers.clear()
        return buffers


def _python_framing(records, segment_size):
    """Pure-Python framing: pickle each record, struct.pack_into length + payload, new bytearray
    when full."""
    import pickle
    import struct

    buf = bytearray(segment_size)
    pos = 0
    out = 0
    for record in records:
        payload = pickle.dumps(record)
        n = len(payload)
        if pos + 4 + n > segment_size:
            out += 1
            buf = bytearray(segment_size)
            pos = 0
        struct.pack_into(">i", buf, pos, n)
        buf[pos + 4:pos + 4 + n] = payload
        pos += 4 + n
    return out


def _python_framed_buffers(payload_size, records):
    """Buffers of ``records`` framed pickles of ``payload_size``-byte payloads."""
    import pickle
    import struct

    pickled = pickle.dumps(bytes(payload_size))
    frame = struct.pack(">i", len(pickled)) + pickled
    per_buffer = max(1, SEGMENT_SIZE // len(frame))
    full, rest = divmod(records, per_buffer)
    return [frame * per_buffer] * full + ([frame * rest] if rest else [])


def _python_deframing(buffers):
    import pickle
    import struct

    count = 0
    for buf in buffers:
        pos, end = 0, len(buf)
        while pos < end:
            (n,) = struct.unpack_from(">i", buf, pos)
            pickle.loads(buf[pos + 4:pos + 4 + n])
            pos += 4 + n
            count += 1
    return count


def bench_serialization(payload: int, records: int, repeats: int) -> list[Row]:
    import numpy as np

    nbp = NetworkBufferPool(max(64, records * (payload + 4) // SEGMENT_SIZE + 16), SEGMENT_SIZE)
    rows = []
    try:
        pool = nbp.create_buffer_pool(4, 4, num_subpartitions=1)
        record = bytes(range(256)) * (payload // 256) + bytes(payload % 256)
        batch = [record] * records
        array = np.frombuffer(record * records, dtype=f"V{payload}") if payload else None

        def timed(action):
            sink = _RecyclingSink()
            ser = SpanningRecordSerializer(pool, 1, "bytes", sink)
            try:
                return action(ser)
            finally:
                ser.close()
                sink.close()

        def per_record(ser):
            emit = ser.emit
            for r in batch:
                emit(r, 0)
            return records

        c_loop = min(_benchkit.c_framing_ns_per_record(payload, SEGMENT_SIZE, records) for _ in range(repeats))
        py_pickled = [bytes(record)] * min(records, 100_000)
        python = _best_ns(lambda: (_python_framing(py_pickled, SEGMENT_SIZE), len(py_pickled))[1], repeats)
        base = {"C framing loop": c_loop, "struct.pack_into+pickle": python}
        rows.append(Row(f"serialize.{payload}B.per_record", "ns/rec",
                        _best_ns(lambda: timed(per_record), repeats), dict(base)))
        rows.append(Row(f"serialize.{payload}B.batch_list", "ns/rec",
                        _best_ns(lambda: timed(lambda s: s.emit_batch(batch, 0)), repeats), dict(base)))
        if array is not None:
            rows.append(Row(f"serialize.{payload}B.numpy_array", "ns/rec",
                            _best_ns(lambda: timed(lambda s: s.emit_array(array, 0)), repeats), dict(base)))

        # Read back: frame once, keep the buffers, then time the deserializer on copies of them.
        big = nbp.create_buffer_pool(8, nbp.total_segments - 8, num_subpartitions=1)
        sink = _KeepingSink()
        ser = SpanningRecordSerializer(big, 1, "bytes", sink)
        ser.emit_batch(batch, 0)
        ser.finish_all()
        ser.close()
        buffers = sink.take_buffers()

        def deserialize(mode):
            deser = RecordDeserializer()
            count = 0
            for b in buffers:
                b.retain()
                if mode == "batch":
                    count += len(deser.read_records(b))
                elif mode == "array":
                    count += len(deser.read_array(b, f"V{payload}"))
                else:
                    deser.set_next_buffer(b)
                    get = deser.get_next_record
                    while True:
                        result, rec = get()
                        if result is INTERMEDIATE:
                            count += 1
                            continue
                        if result is LAST:
                            count += 1
                        break
            deser.clear()
            return count

        from flinknet._core.serialization import DeserializationResult
        INTERMEDIATE = DeserializationResult.INTERMEDIATE_RECORD_FROM_BUFFER
        LAST = DeserializationResult.LAST_RECORD_FROM_BUFFER
        c_de = min(_benchkit.c_deframing_ns_per_record(payload, SEGMENT_SIZE, records) for _ in range(repeats))
        # The pure-Python side reads the same number of buffers, framed the same way, of pickles.
        py_buffers = _python_framed_buffers(payload, min(records, 100_000))
        py_de = _best_ns(lambda: _python_deframing(py_buffers), repeats)
        base = {"C deframing loop": c_de, "struct.unpack_from+pickle": py_de}
        rows.append(Row(f"deserialize.{payload}B.per_record", "ns/rec",
                        _best_ns(lambda: deserialize("record"), repeats), dict(base)))
        rows.append(Row(f"deserialize.{payload}B.per_buffer_list", "ns/rec",
                        _best_ns(lambda: deserialize("batch"), repeats), dict(base)))
        if payload:
            rows.append(Row(f"deserialize.{payload}B.numpy_array", "ns/rec",
                            _best_ns(lambda: deserialize("array"), repeats), dict(base)))
        for b in buffers:
            b.recycle()
        big.lazy_destroy()
        pool.lazy_destroy()
        return rows
    finally:
        nbp.destroy()


GROUPS = ("kernels", "local", "remote", "metrics")


def run(quick: bool = False, groups=GROUPS) -> list[Row]:
    scale = 0.2 if quick else 1.0
    repeats = 3 if quick else 7
    n = int(200_000 * scale)
    rows = []
    if "kernels" in groups:
        rows += bench_pool(n, repeats)
        for chunk in (16, 100, 1000):
            rows.append(bench_append(chunk, n, repeats))
        rows.append(bench_bulk_copy(int(20_000 * scale), repeats))
        for payload in (8, 100, 1000):
            rows += bench_serialization(payload, int((300_000 if payload < 1000 else 100_000) * scale),
                                        repeats)
    if "local" in groups:
        from flinknet.bench_exchange import bench_local_exchange

        rows += bench_local_exchange(quick=quick)
    if "remote" in groups:
        from flinknet.bench_transport import bench_remote_exchange

        rows += bench_remote_exchange(quick=quick)
    if "metrics" in groups:
        from flinknet.bench_exchange import bench_metrics_overhead

        rows += bench_metrics_overhead(quick=quick)
    return rows


def format_table(rows: list[Row]) -> str:
    lines = [f"{'benchmark':<40} {'flinknet':>12}  {'baseline':<24} {'baseline':>10} {'ratio':>7}"]
    lines.append("-" * len(lines[0]))
    for row in rows:
        first = True
        for base_name, base_value in row.baselines.items():
            name = row.name if first else ""
            value = f"{row.value:.1f} {row.unit}" if first else ""
            lines.append(f"{name:<40} {value:>12}  {base_name:<24} {base_value:>10.1f} "
                         f"{row.value / base_value:>6.2f}x")
            first = False
        if row.note:
            lines.append(f"{'':<40} {'':>12}  {row.note}")
    lines.append("")
    lines.append("ratio = flinknet / baseline (time per operation or byte; below 1.00x flinknet is faster).")
    lines.append("records/s = 1e9 / (ns/rec).")
    return "\n".join(lines)


def environment() -> dict:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "debug_build": is_debug_build(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flinknet bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a few seconds)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument("--only", metavar="GROUP", action="append", choices=GROUPS,
                        help=f"run only these groups (repeatable; default all: {', '.join(GROUPS)})")
    args = parser.parse_args(argv)
    env = environment()
    if env["debug_build"]:
        print("warning: this is a FLINKNET_DEBUG build; numbers are not representative", file=sys.stderr)
    t0 = time.perf_counter()
    rows = run(quick=args.quick, groups=tuple(args.only or GROUPS))
    print(f"flinknet bench  (Python {env['python']}, {env['platform']})")
    print(format_table(rows))
    print(f"({time.perf_counter() - t0:.1f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "results": [asdict(r) for r in rows]}, f, indent=2)
    return 0
