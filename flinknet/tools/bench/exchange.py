"""In-process exchange benchmark: one producer thread → one consumer thread through a local channel.

The producer emits records through a :class:`~flinknet.writer.RecordWriter` into a pipelined
partition (32 KiB buffers, Flink's default pool sizes, buffer timeout 100 ms); the consumer reads
them with a :class:`~flinknet.consumer.RecordReader` over a :class:`~flinknet.consumer.SingleInputGate`
with one :class:`~flinknet.consumer.LocalInputChannel`. Timed from the first emit to the last
record read, so it includes the hand-off, backpressure and GIL contention between the threads.

Three APIs: ``per-record`` (a Python loop calling ``emit`` / iterating the reader), ``batch``
(lists of 1000 records in one ``emit_batch`` call / ``read_batch`` per buffer) and ``numpy``
(fixed-width records as arrays: ``emit_array`` / ``read_array``).

Baselines, measured in the same run: the hand-off a Python user would write, a bounded
``queue.Queue`` between the same two threads (per record, or per list of 1000 records for the
batch rows). Apache Flink 2.3's own in-process figure on this class of machine (one TaskManager,
local channels, 100 B records: 9.18 M and 11.97 M records/s in two runs, see
``bench/flink_reference.md``) is printed beside the 100 B rows as a recorded reference.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from flinknet.consumer import RecordReader, SingleInputGate
from flinknet.core import NetworkBufferPool
from flinknet.partition import PipelinedResultPartition, ResultPartitionManager
from flinknet.tools.bench.report import Row
from flinknet.writer import RecordWriter

if TYPE_CHECKING:
    from flinknet.metrics import MetricRegistry, TaskIOMetrics

SEGMENT_SIZE = 32 * 1024
NETWORK_MEMORY = 64 * 1024 * 1024
BATCH = 1000

#: Flink 2.3, 1 TaskManager x 2 slots, local channels, 100 B records, buffer timeout 100 ms:
#: records/s in two runs on a 2-vCPU machine (bench/flink_reference.md).
FLINK_LOCAL_100B_RECORDS_PER_S = (9.18e6, 11.97e6)


def emit_records(writer: RecordWriter, record: bytes, n: int, api: str) -> None:
    """Emit ``record`` ``n`` times to subpartition 0 through ``api``: "per-record" (a Python loop
    calling ``emit``), "batch" (lists of :data:`BATCH` records) or "numpy" (arrays of them)."""
    if api == "per-record":
        emit = writer.emit
        for _ in range(n):
            emit(record, 0)
    elif api == "batch":
        _emit_blocks(writer.emit_batch, [record] * BATCH, n)
    elif api == "numpy":
        array = np.frombuffer(record * BATCH, dtype=np.dtype((np.void, len(record))))
        _emit_blocks(writer.emit_array, array, n)
    else:
        raise ValueError(f"unknown api {api!r}")


_Block = TypeVar("_Block", list[bytes], np.ndarray)


def _emit_blocks(send: Callable[[_Block, int], int], block: _Block, n: int) -> None:
    """``n`` records to subpartition 0: ``send`` whole blocks of :data:`BATCH`, then the rest."""
    left = n
    while left > 0:
        k = min(BATCH, left)
        send(block if k == BATCH else block[:k], 0)
        left -= k


def _run_flinknet(nbp: NetworkBufferPool, size: int, n: int, api: str, metrics: bool = False) -> float:
    """Seconds for ``n`` records of ``size`` bytes from a producer thread to this thread; with
    ``metrics``, both tasks have their TaskIOMetrics and a registry refreshes them every second
    and takes a snapshot (as a reporter would)."""
    manager = ResultPartitionManager()
    partition = PipelinedResultPartition.create(nbp, 1, partition_manager=manager)
    partition.setup()
    gate = SingleInputGate.create_local(manager, [(partition.partition_id, 0)])
    reader = RecordReader(gate)
    registry: MetricRegistry | None = None
    task_metrics: list[TaskIOMetrics] = []
    if metrics:
        from flinknet.metrics import MetricRegistry, TaskIOMetrics

        registry = MetricRegistry(update_interval=1)
        registry.subscribe(lambda snapshot: None)
        task_metrics = [TaskIOMetrics(registry.task_group("Source", 0)),
                        TaskIOMetrics(registry.task_group("Sink", 0))]
        task_metrics[1].register_reader(reader)
    record = bytes(range(256)) * (size // 256) + bytes(size % 256)
    errors: list[BaseException] = []
    start = threading.Event()

    def produce() -> None:
        try:
            writer = RecordWriter(partition, timeout=100)
            if task_metrics:
                task_metrics[0].register_writer(writer)
            start.wait()
            emit_records(writer, record, n, api)
            partition.finish()
            writer.close()
        except BaseException as err:  # noqa: BLE001
            errors.append(err)
            partition.fail(err)
        finally:
            partition.close()

    t = threading.Thread(target=produce, name="bench-producer")
    t.start()
    count = 0
    t0 = time.perf_counter()
    start.set()
    try:
        if api == "per-record":
            for _ in reader:
                count += 1
        elif api == "batch":
            read = reader.read_batch
            while (batch := read()) is not None:
                count += len(batch)
        else:
            dtype = np.dtype((np.void, size))
            while (arr := reader.read_array(dtype)) is not None:
                count += len(arr)
        elapsed = time.perf_counter() - t0
    finally:
        t.join()
        reader.close()
        gate.close()
        for m in task_metrics:
            m.close()
        if registry is not None:
            registry.close()
    if errors:
        raise errors[0]
    if count != n:
        raise AssertionError(f"read {count} records, expected {n}")
    return elapsed


def _run_queue(size: int, n: int, batched: bool) -> float:
    """ns per record through a bounded queue.Queue between two threads (the same memory in flight)."""
    record = bytes(size)
    per_item = BATCH if batched else 1
    q: queue.Queue = queue.Queue(maxsize=max(2, NETWORK_MEMORY // 16 // max(1, size * per_item)))
    items = n // per_item

    def produce():
        put = q.put
        if batched:
            for _ in range(items):
                put([record] * BATCH)
        else:
            for _ in range(items):
                put(record)
        put(None)

    t = threading.Thread(target=produce)
    t0 = time.perf_counter()
    t.start()
    get = q.get
    count = 0
    if batched:
        while (item := get()) is not None:
            count += len(item)
    else:
        while get() is not None:
            count += 1
    elapsed = time.perf_counter() - t0
    t.join()
    return elapsed / count * 1e9


def bench_local_exchange(quick: bool = False, repeats: int | None = None) -> list[Row]:
    """Rows of the ``local`` group: ns per record, with baselines."""
    repeats = repeats or 3
    scale = 0.25 if quick else 1.0
    rows = []
    nbp = NetworkBufferPool(NETWORK_MEMORY // SEGMENT_SIZE, SEGMENT_SIZE)
    try:
        for size in (8, 100, 1000, 32768):
            base_n = {8: 2_000_000, 100: 1_500_000, 1000: 400_000, 32768: 20_000}[size]
            base_n = int(base_n * scale)
            apis = ["per-record", "batch"] + (["numpy"] if size <= 1000 else [])
            for api in apis:
                n = base_n if api == "per-record" else base_n * 2
                # flinknet and its baseline alternate, so load on a shared machine hits both
                best, q_best = float("inf"), float("inf")
                for _ in range(repeats):
                    if api == "per-record":
                        q_best = min(q_best, _run_queue(size, max(1000, base_n // 10), False))
                    else:
                        q_best = min(q_best, _run_queue(size, base_n - base_n % BATCH, True))
                    best = min(best, _run_flinknet(nbp, size, n, api))
                ns = best / n * 1e9
                baselines = {"py queue.Queue": q_best}
                references = {}
                if size == 100:
                    references["flink-2.3 local (rec.)"] = 1e9 / (sum(FLINK_LOCAL_100B_RECORDS_PER_S) / 2)
                rps = 1e9 / ns
                rows.append(Row(f"local.{size}B.{api}", "ns/rec", ns, baselines,
                                note=f"{rps / 1e6:.2f} M records/s, {rps * size / 1e6:.0f} MB/s payload",
                                references=references))
        if not nbp.is_whole:
            raise AssertionError("the benchmark leaked network buffers")
    finally:
        nbp.destroy()
    return rows


def bench_metrics_overhead(quick: bool = False, repeats: int | None = None) -> list[Row]:
    """Rows of the ``metrics`` group: the local exchange with task metrics on, against the same
    exchange with metrics off measured alternately in the same run (the aim: under 5 %)."""
    repeats = repeats or (3 if quick else 5)
    scale = 0.25 if quick else 1.0
    rows = []
    nbp = NetworkBufferPool(NETWORK_MEMORY // SEGMENT_SIZE, SEGMENT_SIZE)
    try:
        for size, api, n in ((8, "per-record", 1_000_000), (100, "per-record", 1_000_000),
                             (100, "batch", 3_000_000), (1000, "batch", 1_000_000)):
            n = int(n * scale)
            on, off = float("inf"), float("inf")
            for _ in range(repeats):      # alternate, so drift on a shared machine hits both
                off = min(off, _run_flinknet(nbp, size, n, api, metrics=False))
                on = min(on, _run_flinknet(nbp, size, n, api, metrics=True))
            rows.append(Row(f"metrics.{size}B.{api}", "ns/rec", on / n * 1e9,
                            {"metrics off (same run)": off / n * 1e9},
                            note=f"overhead {100 * (on / off - 1):+.1f}% (TaskIOMetrics on both tasks, "
                                 "registry updating every 1 s)"))
        if not nbp.is_whole:
            raise AssertionError("the benchmark leaked network buffers")
    finally:
        nbp.destroy()
    return rows
