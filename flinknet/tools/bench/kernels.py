"""The ``kernels`` group of ``flinknet bench``: the core's kernels, each beside baselines measured
in the same run.

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

``route.*``: a keyed edge's routing of a batch of 16-byte ``bytes`` keys to subtasks (Java's
``Arrays.hashCode``, murmur, key group, operator index), given the keys
(``KeyGroupStreamPartitioner.select_channels_for_keys``) and from the records through a key selector
(``select_channels``), against one C-level pass over the same list (``list(map(len, keys))``) and
the per-key scalar function (``assign_key_to_parallel_operator`` in a comprehension);
``route.bytes16B.slice`` routes 100-byte ``bytes`` records whose key is their first 16 bytes,
given as ``slice(0, 16)`` (the key bytes hashed in place), against the same partitioner with
``lambda r: r[:16]``.

``serialize.*.per_record_targets`` rows time the serializer given one target per record (a
channel selector's choice), the path a ``RecordWriter`` routing records one by one takes.

The C baselines come from the compiled :mod:`flinknet.tools.bench._benchkit`. Each measurement is
the best of several repeats (the least disturbed by other load), every benchmark checks its
buffer pools are whole at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar, cast

from flinknet.core import (
    Buffer,
    BufferBuilder,
    BufferConsumer,
    DeserializationResult,
    LocalBufferPool,
    NetworkBufferPool,
    RecordDeserializer,
    SpanningRecordSerializer,
)
from flinknet.tools.bench import _benchkit
from flinknet.tools.bench.report import Row

__all__ = ["SEGMENT_SIZE", "RecyclingSink", "bench_append", "bench_bulk_copy", "bench_kernels", "bench_pool",
           "bench_routing", "bench_serialization"]

SEGMENT_SIZE = 32 * 1024


def _once_ns(fn: Callable[[], int]) -> float:
    """ns per operation of one run of ``fn`` (which returns how many operations it did)."""
    t0 = time.perf_counter_ns()
    ops = fn()
    return (time.perf_counter_ns() - t0) / ops


def _interleaved(measures: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Best ns per operation of each measurement (a callable returning ns/op for one run), taken
    in rounds: an untimed warm-up round, then ``repeats`` rounds running each once in turn, so
    flinknet and its baselines see the same load on a shared machine and their ratio holds."""
    for measure in measures.values():
        measure()
    best = {name: float("inf") for name in measures}
    for _ in range(repeats):
        for name, measure in measures.items():
            best[name] = min(best[name], measure())
    return best


def _check_whole(nbp: NetworkBufferPool) -> None:
    """Every benchmark ends with its global pool whole: no buffer leaked."""
    if not nbp.is_whole:
        raise AssertionError("the benchmark leaked network buffers")


_T = TypeVar("_T")


def _in_timed_loop(request: Callable[[], _T | None]) -> Callable[[], _T]:
    """A pool's non-blocking ``request`` as the timed loops use it: each loop gives its buffer
    (segment, builder) back before asking for the next, from a pool holding several, so the
    request never answers None there; a check per request would be timed with the kernel."""
    return cast(Callable[[], _T], request)


def _builder(lbp: LocalBufferPool) -> BufferBuilder:
    """A builder from ``lbp`` outside a timed loop (the benchmark sized the pool to have one)."""
    builder = lbp.request_buffer_builder()
    if builder is None:
        raise AssertionError("the benchmark's buffer pool has no buffer for a builder")
    return builder


# --- pure-Python baselines ---------------------------------------------------------------------

class _PyBuffer:
    __slots__ = ("segment", "pool", "ref_count")

    def __init__(self, segment: bytearray, pool: _PyPool) -> None:
        self.segment = segment
        self.pool = pool
        self.ref_count = 1

    def recycle(self) -> None:
        self.ref_count -= 1
        if self.ref_count == 0:
            self.pool.recycle(self.segment)


class _PyPool:
    """The hand-out a Python user would write: a free list and a buffer wrapper."""

    def __init__(self, n: int, size: int) -> None:
        self.free = [bytearray(size) for _ in range(n)]

    def request_buffer(self) -> _PyBuffer | None:
        if self.free:
            return _PyBuffer(self.free.pop(), self)
        return None

    def recycle(self, segment: bytearray) -> None:
        self.free.append(segment)


# --- benchmarks --------------------------------------------------------------------------------

def bench_pool(iterations: int, repeats: int) -> list[Row]:
    nbp = NetworkBufferPool(64, SEGMENT_SIZE)
    try:
        lbp = nbp.create_buffer_pool(8, 8)

        def flinknet_loop():
            request = _in_timed_loop(lbp.request_buffer)
            for _ in range(iterations):
                request().recycle()
            return iterations

        def builder_loop():
            request = _in_timed_loop(lbp.request_buffer_builder)
            for _ in range(iterations):
                request().close()
            return iterations

        def global_loop():
            request = _in_timed_loop(nbp.request_pooled_memory_segment)
            recycle = nbp.recycle_pooled_memory_segment
            for _ in range(iterations):
                recycle(request())
            return iterations

        py = _PyPool(8, SEGMENT_SIZE)

        def python_loop():
            request = _in_timed_loop(py.request_buffer)
            for _ in range(iterations):
                request().recycle()
            return iterations

        t = _interleaved({"python": lambda: _once_ns(python_loop), "buffer": lambda: _once_ns(flinknet_loop),
                          "builder": lambda: _once_ns(builder_loop), "global": lambda: _once_ns(global_loop)},
                         repeats)
        base = t["python"]
        rows = [
            Row("pool.request_buffer+recycle", "ns/op", t["buffer"], {"pure-Python pool": base}),
            Row("pool.request_buffer_builder+close", "ns/op", t["builder"], {"pure-Python pool": base}),
            Row("pool.global_segment_request+recycle", "ns/op", t["global"], {"pure-Python pool": base}),
        ]
        lbp.lazy_destroy()
        _check_whole(nbp)
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
            request = _in_timed_loop(lbp.request_buffer_builder)
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

        builder = _builder(lbp)
        t = _interleaved({
            "flinknet": lambda: _once_ns(flinknet_loop),
            "python": lambda: _once_ns(python_loop),
            "c": lambda: _benchkit.builder_append_ns_per_chunk(builder, data, iterations),
            "memcpy": lambda: _benchkit.memcpy_ns_per_chunk(chunk, SEGMENT_SIZE, iterations),
        }, repeats)
        builder.close()
        value, python, c_loop, memcpy = t["flinknet"], t["python"], t["c"], t["memcpy"]
        view.release()
        lbp.lazy_destroy()
        _check_whole(nbp)
        return Row(f"append.{chunk}B", "ns/op", value,
                   {"pure-Python memoryview": python, "same kernel from C": c_loop, "memcpy": memcpy})
    finally:
        nbp.destroy()


def bench_bulk_copy(iterations: int, repeats: int) -> Row:
    nbp = NetworkBufferPool(8, SEGMENT_SIZE)
    try:
        lbp = nbp.create_buffer_pool(2, 2)
        data = bytes(SEGMENT_SIZE)
        def flinknet_loop():
            request = _in_timed_loop(lbp.request_buffer_builder)
            for _ in range(iterations):
                b = request()
                b.append_and_commit(data)
                b.close()
            return iterations

        def c_loop_once():
            builder = _builder(lbp)
            try:
                return _benchkit.builder_append_ns_per_chunk(builder, data, iterations)
            finally:
                builder.close()

        t = _interleaved({
            "flinknet": lambda: _once_ns(flinknet_loop),
            "c": c_loop_once,
            "memcpy": lambda: _benchkit.memcpy_ns_per_chunk(SEGMENT_SIZE, SEGMENT_SIZE, iterations),
        }, repeats)
        value, c_loop, memcpy = t["flinknet"], t["c"], t["memcpy"]
        lbp.lazy_destroy()
        _check_whole(nbp)
        return Row("copy.32KiB(request+append+close)", "ns/op", value,
                   {"memcpy": memcpy, "append from C": c_loop})
    finally:
        nbp.destroy()


class RecyclingSink:
    """Takes each buffer as the partition layer would and recycles it when finished."""

    def __init__(self) -> None:
        self.consumers: list[BufferConsumer] = []

    def add_buffer_consumer(self, subpartition: int, consumer: BufferConsumer,
                            partial_record_length: int) -> None:
        self.consumers.append(consumer)

    def buffer_finished(self, subpartition: int, num_bytes: int) -> None:
        consumer = self.consumers.pop(0)
        consumer.build().recycle()
        consumer.close()

    def close(self) -> None:
        for consumer in self.consumers:
            consumer.close()
        self.consumers.clear()


class _KeepingSink(RecyclingSink):
    def buffer_finished(self, subpartition: int, num_bytes: int) -> None:
        pass

    def take_buffers(self) -> list[Buffer]:
        buffers: list[Buffer] = []
        for consumer in self.consumers:
            buffers.append(consumer.build())
            consumer.close()
        self.consumers.clear()
        return buffers


def _python_framing(records: list[bytes], segment_size: int) -> int:
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


def _python_framed_buffers(payload_size: int, records: int) -> list[bytes]:
    """Buffers of ``records`` framed pickles of ``payload_size``-byte payloads."""
    import pickle
    import struct

    pickled = pickle.dumps(bytes(payload_size))
    frame = struct.pack(">i", len(pickled)) + pickled
    per_buffer = max(1, SEGMENT_SIZE // len(frame))
    full, rest = divmod(records, per_buffer)
    return [frame * per_buffer] * full + ([frame * rest] if rest else [])


def _python_deframing(buffers: list[bytes]) -> int:
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
            sink = RecyclingSink()
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

        py_pickled = [bytes(record)] * min(records, 100_000)
        # The same calls with a target per record (what a channel selector hands over): the path
        # a RecordWriter's emit_batch / emit_array takes when it routes records one by one.
        targets = np.zeros(records, dtype=np.int32)
        measures = {
            "c": lambda: _benchkit.c_framing_ns_per_record(payload, SEGMENT_SIZE, records),
            "python": lambda: _once_ns(
                lambda: (_python_framing(py_pickled, SEGMENT_SIZE), len(py_pickled))[1]),
            "per_record": lambda: _once_ns(lambda: timed(per_record)),
            "batch_list": lambda: _once_ns(lambda: timed(lambda s: s.emit_batch(batch, 0))),
            "batch_list.per_record_targets":
                lambda: _once_ns(lambda: timed(lambda s: s.emit_batch(batch, targets))),
        }
        if array is not None:
            measures["numpy_array"] = lambda: _once_ns(lambda: timed(lambda s: s.emit_array(array, 0)))
            measures["numpy_array.per_record_targets"] = \
                lambda: _once_ns(lambda: timed(lambda s: s.emit_array(array, targets)))
        t = _interleaved(measures, repeats)
        base = {"C framing loop": t.pop("c"), "struct.pack_into+pickle": t.pop("python")}
        for kind in ("per_record", "batch_list", "numpy_array", "batch_list.per_record_targets",
                     "numpy_array.per_record_targets"):
            if kind in t:
                rows.append(Row(f"serialize.{payload}B.{kind}", "ns/rec", t[kind], dict(base)))

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
                        result, _record = get()
                        if result is intermediate:
                            count += 1
                            continue
                        if result is last:
                            count += 1
                        break
            deser.clear()
            return count

        intermediate = DeserializationResult.INTERMEDIATE_RECORD_FROM_BUFFER
        last = DeserializationResult.LAST_RECORD_FROM_BUFFER
        # The pure-Python side reads the same number of buffers, framed the same way, of pickles.
        py_buffers = _python_framed_buffers(payload, min(records, 100_000))
        measures = {
            "c": lambda: _benchkit.c_deframing_ns_per_record(payload, SEGMENT_SIZE, records),
            "python": lambda: _once_ns(lambda: _python_deframing(py_buffers)),
            "per_record": lambda: _once_ns(lambda: deserialize("record")),
            "per_buffer_list": lambda: _once_ns(lambda: deserialize("batch")),
        }
        if payload:
            measures["numpy_array"] = lambda: _once_ns(lambda: deserialize("array"))
        t = _interleaved(measures, repeats)
        base = {"C deframing loop": t.pop("c"), "struct.unpack_from+pickle": t.pop("python")}
        for kind, ns in t.items():
            rows.append(Row(f"deserialize.{payload}B.{kind}", "ns/rec", ns, dict(base)))
        for b in buffers:
            b.recycle()
        big.lazy_destroy()
        pool.lazy_destroy()
        _check_whole(nbp)
        return rows
    finally:
        nbp.destroy()


def bench_routing(n: int, repeats: int) -> list[Row]:
    """``route.*`` rows: ns per key of routing ``n`` 16-byte keys over 4 subtasks (128 key groups)."""
    import operator
    import random

    from flinknet.core import assign_key_to_parallel_operator
    from flinknet.partitioners import KeyGroupStreamPartitioner

    rng = random.Random(7)
    keys = [rng.randbytes(16) for _ in range(n)]
    records = [(k, 0) for k in keys]
    byte_records = [k + bytes(84) for k in keys]
    selector = KeyGroupStreamPartitioner(operator.itemgetter(0), 128)
    by_slice = KeyGroupStreamPartitioner(slice(0, 16), 128)
    by_lambda = KeyGroupStreamPartitioner(lambda r: r[:16], 128)
    for s in (selector, by_slice, by_lambda):
        s.setup(4)
    expected = [assign_key_to_parallel_operator(k, 128, 4) for k in keys]
    if selector.select_channels_for_keys(keys).tolist() != expected or \
            selector.select_channels(records).tolist() != expected or \
            by_slice.select_channels(byte_records).tolist() != expected or \
            by_lambda.select_channels(byte_records).tolist() != expected:
        raise AssertionError("batch routing differs from the scalar function")

    def keyed() -> int:
        selector.select_channels_for_keys(keys)
        return n

    def from_records() -> int:
        selector.select_channels(records)
        return n

    def sliced() -> int:
        by_slice.select_channels(byte_records)
        return n

    def lambda_sliced() -> int:
        by_lambda.select_channels(byte_records)
        return n

    def c_pass() -> int:
        list(map(len, keys))
        return n

    def scalar() -> int:
        [assign_key_to_parallel_operator(k, 128, 4) for k in keys]
        return n

    def measure(fn: Callable[[], int]) -> Callable[[], float]:
        return lambda: _once_ns(fn)

    t = _interleaved({"keys": measure(keyed), "records": measure(from_records), "c": measure(c_pass),
                      "scalar": measure(scalar), "slice": measure(sliced),
                      "lambda": measure(lambda_sliced)}, repeats)
    base = {"list(map(len, keys))": t["c"], "scalar function per key": t["scalar"]}
    return [Row("route.bytes16B.keys", "ns/key", t["keys"], dict(base),
                note=f"{t['keys']:.1f} ns per bytes key (select_channels_for_keys)"),
            Row("route.bytes16B.records", "ns/rec", t["records"], dict(base),
                note=f"{t['records']:.1f} ns per record (select_channels with itemgetter(0))"),
            Row("route.bytes16B.slice", "ns/rec", t["slice"],
                {**base, "lambda r: r[:16] (same partitioner)": t["lambda"]},
                note=f"{t['slice']:.1f} ns per 100-byte record keyed by slice(0, 16), "
                     f"{t['lambda']:.1f} with lambda r: r[:16]")]


def bench_kernels(quick: bool = False) -> list[Row]:
    """The rows of the ``kernels`` group (``quick``: fewer iterations and repeats)."""
    scale = 0.3 if quick else 1.0
    repeats = 5 if quick else 7
    n = int(200_000 * scale)
    rows = bench_pool(n, repeats)
    for chunk in (16, 100, 1000):
        rows.append(bench_append(chunk, n, repeats))
    rows.append(bench_bulk_copy(int(20_000 * scale), repeats))
    rows += bench_routing(int(100_000 * scale), repeats)
    for payload in (8, 100, 1000):
        rows += bench_serialization(payload, int((300_000 if payload < 1000 else 100_000) * scale), repeats)
    return rows
