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
* ``metrics.*``: the local exchange with task metrics on, against metrics off in the same run.
* ``network.*``: flink-benchmarks' network suite (throughput for writers x channels x buffer
  timeout, data skew, broadcast, latency; credit-based and TCP flow control, with and without
  TLS) between a producer process and this one, against a raw socket and ZeroMQ PUSH/PULL (when
  pyzmq is installed) measured around each row (see :mod:`flinknet.bench_network`).
* ``scale``: only with ``--only scale`` (see :func:`_scale_rows`).

``serialize.*.per_record_targets`` rows time the serializer given one target per record (a
channel selector's choice), the path a ``RecordWriter`` routing records one by one takes.

Groups: ``kernels``, ``local``, ``remote``, ``metrics`` and ``network`` run by default; ``--only``
picks some; ``--quick`` runs a reduced set (all default groups in under two minutes);
``--json FILE`` writes every row (value, unit, baselines, ratios, recorded references, note) and
the environment, which ``ci/bench_gate.py`` compares with its committed reference ratios.
Recorded figures (Flink's) are kept apart from baselines (``Row.references``): they are printed,
never gated. Every group checks its buffer pools are whole at the end and stops the processes
and threads it started.

Each measurement is the best of several repeats (the least disturbed by other load).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from flinknet._core import _benchkit
from flinknet._core.buffer import is_debug_build
from flinknet._core.pool import NetworkBufferPool
from flinknet._core.serialization import RecordDeserializer, SpanningRecordSerializer

SEGMENT_SIZE = 32 * 1024


@dataclass
class Row:
    """One benchmark: flinknet's ``value`` (time per operation, in ``unit``), the baselines measured
    in the same run (``baselines``: name -> time in the same unit) and recorded figures printed
    beside them (``references``, e.g. Flink 2.3's, never re-measured: not gated)."""

    name: str
    unit: str
    value: float
    baselines: dict[str, float] = field(default_factory=dict)
    note: str = ""
    references: dict[str, float] = field(default_factory=dict)
    group: str = ""

    def ratio(self, baseline: str) -> float:
        """flinknet / baseline, time per operation: above 1 flinknet is slower."""
        return self.value / self.baselines[baseline]

    def ratios(self) -> dict[str, float | None]:
        """flinknet / baseline for every baseline (None where it is undefined: a zero or
        non-finite time on either side)."""
        return {name: _ratio(self.value, base) for name, base in self.baselines.items()}

    def to_json(self) -> dict:
        return {"name": self.name, "group": self.group, "unit": self.unit, "value": _finite(self.value),
                "baselines": {k: _finite(v) for k, v in self.baselines.items()}, "ratios": self.ratios(),
                "references": {k: _finite(v) for k, v in self.references.items()},
                "reference_ratios": {k: _ratio(self.value, v) for k, v in self.references.items()},
                "note": self.note}


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _ratio(value: float, base: float) -> float | None:
    if not (math.isfinite(value) and math.isfinite(base)) or base == 0:
        return None
    return value / base


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
    if not nbp.is_whole():
        raise AssertionError("the benchmark leaked network buffers")


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

        builder = lbp.request_buffer_builder()
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
            request = lbp.request_buffer_builder
            for _ in range(iterations):
                b = request()
                b.append_and_commit(data)
                b.close()
            return iterations

        def c_loop_once():
            builder = lbp.request_buffer_builder()
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

        py_pickled = [bytes(record)] * min(records, 100_000)
        # The same calls with a target per record (what a channel selector hands over): the path
        # a RecordWriter's emit_batch / emit_array takes when it routes records one by one.
        targets = np.zeros(records, dtype=np.int32)
        measures = {
            "c": lambda: _benchkit.c_framing_ns_per_record(payload, SEGMENT_SIZE, records),
            "python": lambda: _once_ns(lambda: (_python_framing(py_pickled, SEGMENT_SIZE), len(py_pickled))[1]),
            "per_record": lambda: _once_ns(lambda: timed(per_record)),
            "batch_list": lambda: _once_ns(lambda: timed(lambda s: s.emit_batch(batch, 0))),
            "batch_list.per_record_targets": lambda: _once_ns(lambda: timed(lambda s: s.emit_batch(batch, targets))),
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


#: the groups a plain ``flinknet bench`` (and ``--quick``) runs, in order
GROUPS = ("kernels", "local", "remote", "metrics", "network")
#: groups that run only when named with ``--only``
EXTRA_GROUPS = ("scale",)


def _kernel_rows(quick: bool) -> list[Row]:
    scale = 0.3 if quick else 1.0
    repeats = 5 if quick else 7
    n = int(200_000 * scale)
    rows = bench_pool(n, repeats)
    for chunk in (16, 100, 1000):
        rows.append(bench_append(chunk, n, repeats))
    rows.append(bench_bulk_copy(int(20_000 * scale), repeats))
    for payload in (8, 100, 1000):
        rows += bench_serialization(payload, int((300_000 if payload < 1000 else 100_000) * scale), repeats)
    return rows


def _scale_rows(quick: bool) -> list[Row]:
    """The ``scale`` group: :func:`flinknet.bench_scale.bench_scale` (channels 1 -> 1000 with
    their set-up cost and memory, a hot key against the per-channel cap, hosts behind a delayed
    link in network namespaces), rows like every group's. Minutes long and partly root-only, so
    neither a plain run nor ``--quick`` includes it: ``flinknet bench --only scale``."""
    try:
        from flinknet import bench_scale
    except ImportError:
        print("scale: flinknet/bench_scale.py is not there yet; nothing to run", file=sys.stderr)
        return []
    return list(bench_scale.bench_scale(quick=quick))


def _group_rows(group: str, quick: bool) -> list[Row]:
    if group == "kernels":
        return _kernel_rows(quick)
    if group == "local":
        from flinknet.bench_exchange import bench_local_exchange

        return bench_local_exchange(quick=quick)
    if group == "remote":
        from flinknet.bench_transport import bench_remote_exchange

        return bench_remote_exchange(quick=quick)
    if group == "metrics":
        from flinknet.bench_exchange import bench_metrics_overhead

        return bench_metrics_overhead(quick=quick)
    if group == "network":
        from flinknet.bench_network import bench_network

        return bench_network(quick=quick)
    if group == "scale":
        return _scale_rows(quick)
    raise ValueError(f"unknown benchmark group {group!r} (groups: {', '.join(GROUPS + EXTRA_GROUPS)})")


def run(quick: bool = False, groups=GROUPS) -> list[Row]:
    """The rows of ``groups``, in the order of :data:`GROUPS` then :data:`EXTRA_GROUPS`."""
    rows = []
    for group in GROUPS + EXTRA_GROUPS:
        if group in groups:
            for row in _group_rows(group, quick):
                row.group = group
                rows.append(row)
    unknown = set(groups) - set(GROUPS + EXTRA_GROUPS)
    if unknown:
        raise ValueError(f"unknown benchmark group(s): {', '.join(sorted(unknown))}")
    return rows


def _fmt(v: float) -> str:
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"


def format_table(rows: list[Row]) -> str:
    """The table: one line per baseline (measured in this run) and per recorded reference."""
    name_w = max([40] + [len(r.name) for r in rows])
    base_w = max([24] + [len(b) for r in rows for b in (*r.baselines, *r.references)])
    head = f"{'benchmark':<{name_w}} {'flinknet':>14}  {'baseline':<{base_w}} {'baseline':>10} {'ratio':>8}"
    lines = [head, "-" * len(head)]
    for row in rows:
        first = True
        for base_name, base_value in [*row.baselines.items(), *row.references.items()]:
            name = row.name if first else ""
            value = f"{_fmt(row.value)} {row.unit}" if first else ""
            r = _ratio(row.value, base_value)
            lines.append(f"{name:<{name_w}} {value:>14}  {base_name:<{base_w}} {_fmt(base_value):>10} "
                         + (f"{r:>7.2f}x" if r is not None else f"{'-':>8}"))
            first = False
        if first:
            lines.append(f"{row.name:<{name_w}} {_fmt(row.value) + ' ' + row.unit:>14}")
        if row.note:
            lines.append(f"{'':<{name_w}} {'':>14}  {row.note}")
    lines.append("")
    lines.append("ratio = flinknet / baseline (time per operation, record or byte; below 1.00x flinknet is faster).")
    lines.append("Baselines are measured in this run; '(rec.)' marks a recorded figure (bench/flink_reference.md), "
                 "printed for comparison only.")
    lines.append("records/s = 1e9 / (ns/rec).")
    return "\n".join(lines)


def environment() -> dict:
    import os

    import numpy

    from flinknet import __version__

    try:
        import zmq

        pyzmq = zmq.__version__
    except ImportError:
        pyzmq = None
    return {
        "flinknet": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "numpy": numpy.__version__,
        "pyzmq": pyzmq,
        "debug_build": is_debug_build(),
    }


#: version of the ``--json`` layout (``ci/bench_gate.py`` checks it)
JSON_SCHEMA = 1


def to_json(rows: list[Row], env: dict, quick: bool, groups, wall_s: float) -> dict:
    """The ``--json`` document: every row with its value, unit, baselines, ratios and the run's
    environment. ``ratios`` are flinknet / baseline for the baselines measured in this run."""
    return {"schema": JSON_SCHEMA, "environment": env, "quick": quick, "groups": list(groups),
            "wall_s": round(wall_s, 1), "results": [r.to_json() for r in rows]}


def main(argv: list[str] | None = None) -> int:
    all_groups = GROUPS + EXTRA_GROUPS
    parser = argparse.ArgumentParser(prog="flinknet bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a reduced set with fewer iterations (all default groups in under two minutes)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument("--only", metavar="GROUP", action="append", choices=all_groups,
                        help=f"run only these groups (repeatable; default: {', '.join(GROUPS)}; "
                             f"only when named: {', '.join(EXTRA_GROUPS)})")
    args = parser.parse_args(argv)
    env = environment()
    if env["debug_build"]:
        print("warning: this is a FLINKNET_DEBUG build; numbers are not representative", file=sys.stderr)
    groups = tuple(g for g in all_groups if g in (args.only or GROUPS))
    t0 = time.perf_counter()
    rows = []
    for group in groups:
        t1 = time.perf_counter()
        print(f"[flinknet bench] {group} ...", file=sys.stderr, flush=True)
        rows += run(quick=args.quick, groups=(group,))
        print(f"[flinknet bench] {group}: {time.perf_counter() - t1:.1f} s", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    print(f"flinknet bench{' --quick' if args.quick else ''}  (Python {env['python']}, {env['platform']})")
    print(format_table(rows))
    print(f"({wall:.1f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(to_json(rows, env, args.quick, groups, wall), f, indent=2)
            f.write("\n")
    return 0
