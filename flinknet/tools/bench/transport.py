"""Cross-process benchmark: a producer process → a consumer process over loopback TCP.

Each ``remote.*`` row runs a producer in its own process (``multiprocessing`` spawn) with its own
:class:`~flinknet.environment.NetworkEnvironment` (Flink's defaults: 32 KiB segments, 64 MiB network
memory, 2 exclusive + 8 floating buffers, credit-based flow control, buffer timeout 100 ms) and a
consumer in this process reading the partition through a remote input channel. Timed from the
consumer's "go" to the last record read. APIs: ``per-record`` (a Python loop calling ``emit`` and
iterating the reader), ``batch`` (lists of 1000 records per ``emit_batch`` / one ``read_batch`` per
buffer), ``numpy`` (fixed-width records as arrays).

Baselines measured in the same run, between two processes on loopback:

* ``raw socket 32KiB``: a raw Python socket streaming 32 KiB ``sendall`` calls into ``recv_into``
  of 32 KiB (what a hand-written Python transport gets), charged for the record's bytes
  (payload + 4-byte length) so every size compares with moving the same bytes;
* ``socket ceiling``: the same with 4 MiB calls (the per-call Python cost vanishes: the kernel's
  loopback copy speed, a C program's ceiling);
* the peers a Python user would pick to move the same records, each with its producer in its own
  process (:mod:`flinknet.tools.bench.peers`), measured just before the rows of each record size
  (best of the same repeats), per record. They move fewer records than flinknet's rows
  (:data:`PEER_RECORDS`: about a second per transfer; time per record is compared):

  - ``hand-written loop`` (``per-record`` and ``batch`` rows): a hand-written Python TCP framing
    loop, records behind a 4-byte length packed (``struct.pack_into``) into 32 KiB chunks, a
    record larger than the space left split across chunks, ``sendall``; the consumer
    ``recv_into``\\ s a 128 KiB buffer and deframes every record into a ``bytes`` object;
  - ``pyzmq framed`` (``per-record`` and ``batch``): the same 32 KiB chunks as pyzmq PUSH/PULL
    messages, deframed the same way (absent, and said in the note, without pyzmq);
  - ``flight to_pylist`` (``per-record`` and ``batch``): Apache Arrow Flight ``DoGet`` of record
    batches of one binary column, about 1 MiB of payload (at most 64 Ki rows) per batch, built
    from Python lists of ``bytes`` by the server, each batch's column turned back into ``bytes``
    by the consumer (``column(0).to_pylist()``);
  - ``flight columnar`` (``numpy`` rows): the same stream of prebuilt batches, the consumer only
    counting rows (no Python object per record). The Flight baselines are absent, and the note
    says so, without pyarrow (``pyarrow.flight``);

* the ``remote.32768B.*`` rows' note: the CPU seconds per GB of payload each of flinknet's
  processes spent on the transfer (``time.process_time``, all threads, inside each process);
* Apache Flink 2.3's figures with two TaskManagers over loopback on this class of machine, recorded
  by the oracle harness (``bench/flink_reference.md``), printed as references.

Latency (``latency.100B.*``): 10 000 records/s of 100 bytes with buffer timeout 0 (every record
flushed), each carrying its send time (``CLOCK_MONOTONIC``, shared by the processes); p50 and p99
of the one-way delay against half the round trip of a 64-byte ping-pong between two processes
over a raw socket (the physical floor) and Flink's recorded p50/p99.

A wider credit window (``remote.*.floating32``, :func:`bench_credit_window`, full runs only): the
batch and numpy exchanges with 32 floating buffers on the consumer's gate instead of Flink's 8,
against the same exchange with Flink's window (alternated in the same run) and the peers.

asyncio (``remote.100B.asyncio.*``, :func:`bench_asyncio_reading`): the same exchange read on an
asyncio event loop (:mod:`flinknet.aio`) against the threaded reader, runs alternated in the same
run: ``per-record`` is ``async for record in reader`` against ``for record in reader`` (the
producer emitting per record), ``batch`` is ``await reader.read_batch_async()`` against
``reader.read_batch()`` (the producer emitting lists). The ratio is asyncio / threaded, the
median of the ratios of five alternated pairs (three in quick runs); full runs add the batch row
at 1000 B. ``wait`` paces the producer so that every read waits
and compares the reading thread's CPU per record, against the threaded reader and against the
threaded reader plus what a bare wake-up costs the event loop more than a thread
(:func:`bare_wake_us`, same run): the floor an event loop sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from flinknet.tools.bench import peers
from flinknet.tools.bench.exchange import BATCH, emit_records
from flinknet.tools.bench.report import Row

CHUNK = 32 * 1024
BIG = 4 * 1024 * 1024

#: Flink 2.3, two TaskManagers over loopback, buffer timeout 100 ms, records/s (two runs).
FLINK_REMOTE_RECORDS_PER_S = {8: (12.80e6, 9.12e6), 100: (5.71e6, 6.11e6), 1000: (1.19e6, 1.40e6),
                              32768: (41.7e3, 37.3e3)}
#: Flink 2.3 latency at 10 000 records/s, 100 B, buffer timeout 0 (two runs), microseconds.
FLINK_LATENCY_P50_US = (53.6, 61.4)
FLINK_LATENCY_P99_US = (1429.0, 1386.0)

#: records each peer moves per transfer (times 0.5 in quick mode, 2 otherwise): fewer than
#: flinknet's rows move (time per record is compared), about a second per transfer; the
#: columnar Flight peer moves as many as flinknet's numpy row
PEER_RECORDS = {8: 2_000_000, 100: 1_000_000, 1000: 250_000, 32768: 20_000}
HAND_WRITTEN = "hand-written loop"
PYZMQ_FRAMED = "pyzmq framed"
FLIGHT_TO_PYLIST = "flight to_pylist"
FLIGHT_COLUMNAR = "flight columnar"

_TS = struct.Struct("<q")

#: the consumer APIs that read on an asyncio loop -> the producer's emit API for them
ASYNC_APIS = {"asyncio": "per-record", "asyncio-batch": "batch",
              "uvloop": "per-record", "uvloop-batch": "batch"}
THREADED_READER = "threaded reader (same run)"
#: The configuration key of a gate's floating buffers (Flink's, default 8).
FLOATING_KEY = "taskmanager.network.memory.floating-buffers-per-gate"
#: Floating buffers per gate of the ``*.floating32`` rows (:func:`bench_credit_window`).
WIDE_FLOATING = 32
FLINK_WINDOW = "Flink's window, 2 + 8 buffers (same run)"
#: The baseline of the busy-neighbour row: the same transfer without the spinning thread.
NO_BUSY_THREAD = "same transfer, no busy thread (same run)"
#: The busy-neighbour row's records per transfer (flinknet, pyzmq and Flight; the hand-written
#: loop, which loses the GIL at every ``recv_into``, moves a fifth as many), full and quick.
BUSY_RECORDS = {False: 200_000, True: 50_000}


def _ctx():
    return mp.get_context("spawn")


# -- processes (module level: spawn imports them) ----------------------------------------------

def _producer(q_out, q_in, size: int, n: int, api: str, timeout_ms: float, rate: float,
              options: dict[str, Any] | None = None, busy: int = 0) -> None:
    from flinknet.environment import NetworkEnvironment
    from flinknet.writer import RecordWriter

    try:
        with NetworkEnvironment(options or {}) as env:
            p = env.create_result_partition(1)
            q_out.put((p.partition_id.to_bytes(), env.address))
            record = bytes(range(256)) * (size // 256) + bytes(size % 256)
            with RecordWriter(p, timeout=timeout_ms) as writer:
                q_in.get(timeout=120)   # go
                cpu0 = time.process_time()   # every thread of this process (the I/O thread too)
                if not rate:
                    with peers.busy_python_threads(busy):
                        emit_records(writer, record, n, ASYNC_APIS.get(api, api))
                else:  # paced, each record carries its send time (read by api="latency")
                    pad = bytes(size - _TS.size)
                    interval = 1.0 / rate
                    now = time.perf_counter
                    clock = time.monotonic_ns
                    due = now()
                    sleep = time.sleep
                    for _ in range(n):
                        due += interval
                        left = due - now()
                        if left > 0:
                            # sleep, never spin: a spinning thread keeps the GIL from the I/O
                            # thread for a whole switch interval (5 ms)
                            sleep(left)
                        writer.emit(_TS.pack(clock()) + pad, 0)
            p.finish()
            p.close()
            q_in.get(timeout=300)   # the consumer is done
            cpu = time.process_time() - cpu0
        # the producer's side of the check the consumer makes: every buffer back in the pool; and
        # the CPU time this process spent from "go" to the consumer's last record
        q_out.put(("closed", env.network_buffer_pool.is_whole, cpu))
    except BaseException as err:  # noqa: BLE001 (reported to the parent)
        q_out.put(("error", repr(err)))


def _raw_sender(q_out, q_in, total: int, chunk: int) -> None:
    lst = socket.create_server(("127.0.0.1", 0))
    q_out.put(lst.getsockname())
    conn, _ = lst.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = memoryview(bytes(chunk))
    sent = 0
    with conn:
        while sent < total:
            conn.sendall(data)
            sent += chunk
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)
    lst.close()


def _raw_ponger(q_out) -> None:
    lst = socket.create_server(("127.0.0.1", 0))
    q_out.put(lst.getsockname())
    conn, _ = lst.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with conn:
        while True:
            msg = conn.recv(64)
            if not msg:
                break
            conn.sendall(msg)
    lst.close()


# -- measurements -------------------------------------------------------------------------------

def raw_socket_ns_per_byte(total: int, chunk: int) -> float:
    """Nanoseconds per byte streamed between two processes with ``chunk``-byte socket calls."""
    ctx = _ctx()
    q_out, q_in = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_raw_sender, args=(q_out, q_in, total, chunk), daemon=True)
    proc.start()
    try:
        addr = q_out.get(timeout=60)
        with socket.create_connection(addr) as s:
            buf = bytearray(chunk)
            view = memoryview(buf)
            got = 0
            t0 = time.perf_counter_ns()
            while True:
                k = s.recv_into(view)
                if not k:
                    break
                got += k
            dt = time.perf_counter_ns() - t0
            s.sendall(b"x")
        if got != total:
            raise AssertionError(f"raw socket: {got} of {total} bytes")
        return dt / total
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()


def raw_round_trip_us(count: int) -> list[float]:
    """Round-trip times (µs) of 64-byte ping-pongs between this process and another."""
    ctx = _ctx()
    q_out = ctx.Queue()
    proc = ctx.Process(target=_raw_ponger, args=(q_out,), daemon=True)
    proc.start()
    try:
        addr = q_out.get(timeout=60)
        out = []
        msg = bytes(64)
        with socket.create_connection(addr) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(count + 100):
                t0 = time.perf_counter_ns()
                s.sendall(msg)
                got = 0
                while got < 64:
                    got += len(s.recv(64 - got))
                if i >= 100:   # warm-up
                    out.append((time.perf_counter_ns() - t0) / 1e3)
        return out
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()


def _loop_factory(api: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop for the ``uvloop*`` consumer APIs, asyncio's default for the others."""
    if not api.startswith("uvloop"):
        return None
    import uvloop

    return uvloop.new_event_loop


async def _count_async(reader) -> int:
    count = 0
    async for _ in reader:
        count += 1
    return count


async def _count_batches_async(reader) -> int:
    count = 0
    read = reader.read_batch_async
    while (batch := await read()) is not None:
        count += len(batch)
    return count


def run_remote(size: int, n: int, api: str, timeout_ms: float = 100, rate: float = 0.0,
               stats: dict[str, float] | None = None, options: dict[str, Any] | None = None,
               producer_options: dict[str, Any] | None = None,
               consumer_options: dict[str, Any] | None = None, busy: int = 0,
               producer_busy: int = 0):
    """Seconds to move ``n`` records (or, for api="latency", the list of one-way delays in µs).
    ``api``: ``"per-record"``, ``"batch"``, ``"numpy"``, ``"latency"``, or read on an asyncio
    loop: ``"asyncio"`` (``async for``) and ``"asyncio-batch"`` (``read_batch_async``).
    ``stats``, when given, receives the CPU seconds each process spent on the transfer:
    ``"consumer_cpu_s"`` (this process, from "go" to the last record read) and
    ``"producer_cpu_s"`` (the producer process, from "go" to the consumer being done), both all
    threads (``time.process_time``), ``"consumer_task_cpu_s"`` (the reading thread alone, the
    event loop's for the asyncio APIs), and ``"consumer_gate_max_floating"``, the most floating
    buffers the consumer's gate pool may hold. ``rate`` > 0 paces the producer at that many
    records per second, each carrying its send time (``"latency"`` needs it; with the other APIs
    a reader that keeps up waits for every flushed buffer). ``options`` configure both environments
    (:class:`~flinknet.config.NetworkConfig` keys); ``producer_options`` and
    ``consumer_options`` add to them (and override them) for one side only. ``busy`` pure-Python
    threads spin in the consumer's process while it reads (:func:`peers.busy_python_threads`),
    ``producer_busy`` in the producer's while it writes (unpaced APIs)."""
    from flinknet.consumer import RecordReader
    from flinknet.environment import NetworkEnvironment
    from flinknet.ids import ResultPartitionID

    if api == "latency" and not rate > 0:
        raise ValueError("api='latency' needs a rate > 0 (records per second)")
    ctx = _ctx()
    q_out, q_in = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_producer, args=(q_out, q_in, size, n, api, timeout_ms, rate,
                                               {**(options or {}), **(producer_options or {})},
                                               producer_busy),
                       daemon=True)
    proc.start()
    try:
        first = q_out.get(timeout=120)
        if first[0] == "error":
            raise RuntimeError(f"producer failed: {first[1]}")
        pid, addr = first
        with NetworkEnvironment({**(options or {}), **(consumer_options or {})}) as env:
            gate = env.create_input_gate([(ResultPartitionID.from_bytes(pid), 0, addr)])
            gate.request_partitions()
            gate_pool = gate.buffer_pool
            max_floating = gate_pool.max_buffers if gate_pool is not None else 0
            count = 0
            delays = []
            # the asyncio APIs' loop is made before the clock starts
            loop_runner = (asyncio.Runner(loop_factory=_loop_factory(api)) if api in ASYNC_APIS
                           else contextlib.nullcontext())
            with RecordReader(gate) as reader, loop_runner as runner, peers.busy_python_threads(busy):
                if runner is not None:
                    runner.get_loop()
                cpu0 = time.process_time()
                task_cpu0 = time.thread_time()
                t0 = time.perf_counter()
                q_in.put("go")
                if api in ("asyncio", "uvloop"):
                    assert runner is not None
                    count = runner.run(_count_async(reader))
                elif api in ("asyncio-batch", "uvloop-batch"):
                    assert runner is not None
                    count = runner.run(_count_batches_async(reader))
                elif api == "per-record":
                    for _ in reader:
                        count += 1
                elif api == "batch":
                    read = reader.read_batch
                    while (batch := read()) is not None:
                        count += len(batch)
                elif api == "numpy":
                    dtype = np.dtype((np.void, size))
                    while (arr := reader.read_array(dtype)) is not None:
                        count += len(arr)
                else:
                    clock = time.monotonic_ns
                    unpack = _TS.unpack_from
                    for rec in reader:
                        delays.append((clock() - unpack(rec)[0]) / 1e3)
                    count = len(delays)
                elapsed = time.perf_counter() - t0
                consumer_cpu = time.process_time() - cpu0
                task_cpu = time.thread_time() - task_cpu0
            gate.close()
            if not env.network_buffer_pool.is_whole:
                raise AssertionError("the benchmark leaked network buffers")
        q_in.put("done")
        last = q_out.get(timeout=120)
        if last[0] == "error":
            raise RuntimeError(f"producer failed: {last[1]}")
        if last[:2] != ("closed", True):
            raise AssertionError("the benchmark leaked network buffers in the producer process")
        if count != n:
            raise AssertionError(f"read {count} records, expected {n}")
        if stats is not None:
            stats.update(consumer_cpu_s=consumer_cpu, producer_cpu_s=last[2],
                         consumer_task_cpu_s=task_cpu, consumer_gate_max_floating=max_floating)
        return delays if api == "latency" else elapsed
    finally:
        proc.join(60)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _peer_baselines(size: int, n: int, n_columnar: int, repeats: int, busy: int = 0,
                    n_loop: int | None = None):
    """The peers' ns per record for ``size``-byte records, measured now (best of ``repeats``):
    ``(objects, columnar, missing)``: the peers that hand out Python ``bytes`` (``n`` records
    each; the hand-written loop ``n_loop``, default ``n``), the columnar one (``n_columnar``
    records; none when 0) and why a peer is absent (peer -> the note's words). ``busy``
    pure-Python threads spin beside each consumer (:func:`peers.busy_python_threads`)."""
    absent = peers.missing()
    n_loop = n if n_loop is None else n_loop
    objects = {HAND_WRITTEN: peers.hand_written_loop(size, n_loop, repeats, busy=busy) / n_loop * 1e9}
    columnar = {}
    if PYZMQ_FRAMED not in absent:
        objects[PYZMQ_FRAMED] = peers.pyzmq_framed(size, n, repeats, busy=busy) / n * 1e9
    if "flight" not in absent:
        objects[FLIGHT_TO_PYLIST] = peers.flight_do_get(size, n, "to_pylist", repeats, busy=busy) / n * 1e9
        if n_columnar:
            columnar[FLIGHT_COLUMNAR] = (peers.flight_do_get(size, n_columnar, "columnar", repeats)
                                         / n_columnar * 1e9)
    missing = {}
    if PYZMQ_FRAMED in absent:
        missing[PYZMQ_FRAMED] = f"{absent[PYZMQ_FRAMED]} (no {PYZMQ_FRAMED} baseline)"
    if "flight" in absent:
        missing["flight"] = f"{absent['flight']} (no Flight baselines)"
    return objects, columnar, missing


def percentile(values, p: float) -> float:
    """The ``p``-th percentile (0-100) of ``values``."""
    return float(np.percentile(np.asarray(values), p))


def drop_warmup(delays: list[float]) -> list[float]:
    """A latency run's delays without its first 10 % (the warm-up), as the latency rows and
    their native floor count them."""
    return delays[len(delays) // 10:]


def bench_remote_exchange(quick: bool = False, repeats: int | None = None):
    """Rows of the ``remote`` group (ns per record, µs for latency), with baselines."""
    repeats = repeats or 2
    scale = 0.5 if quick else 2.0
    rows = []
    peer_baselines: dict[int, tuple[dict[str, float], dict[str, float]]] = {}
    plain_1000_ns: float | None = None
    volume = (1 << 30) if not quick else (512 << 20)
    raw = min(raw_socket_ns_per_byte(volume, CHUNK) for _ in range(repeats + 1))
    ceiling = min(raw_socket_ns_per_byte(volume, BIG) for _ in range(repeats + 1))
    rows.append(Row("remote.raw_socket.32KiB", "ns/KiB", raw * 1024,
                    {"socket ceiling (4 MiB calls)": ceiling * 1024},
                    note=f"raw Python socket {1 / raw:.2f} GB/s, ceiling {1 / ceiling:.2f} GB/s "
                         f"(32 KiB / 4 MiB calls, process to process)"))
    for size in (8, 100, 1000, 32768):
        base_n = {8: 8_000_000, 100: 4_000_000, 1000: 1_000_000, 32768: 40_000}[size]
        apis = ["per-record", "batch"] + (["numpy"] if size <= 1000 else [])
        objects, columnar, missing = _peer_baselines(size, int(PEER_RECORDS[size] * scale),
                                                     int(base_n * scale) if "numpy" in apis else 0, repeats)
        peer_baselines[size] = (objects, columnar)
        for api in apis:
            n = int(base_n * scale / (3 if api == "per-record" else 1))
            n -= n % BATCH
            runs = []
            for _ in range(repeats):
                stats: dict[str, float] = {}
                runs.append((run_remote(size, n, api, stats=stats), stats))
            best, stats = min(runs, key=lambda run: run[0])
            ns = best / n * 1e9
            flink = FLINK_REMOTE_RECORDS_PER_S[size]
            baselines = {"raw socket 32KiB (bytes)": raw * (size + 4),
                         "socket ceiling (bytes)": ceiling * (size + 4)}
            baselines.update(columnar if api == "numpy" else objects)
            rps = 1e9 / ns
            note = (f"{rps / 1e6:.2f} M records/s, {rps * size / 1e6:.0f} MB/s payload; "
                    f"Flink {min(flink) / 1e6:.2f}-{max(flink) / 1e6:.2f} M/s")
            if size == 32768:
                gb = n * size / 1e9
                note += (f"; CPU per GB moved: producer {stats['producer_cpu_s'] / gb:.2f} s, "
                         f"consumer {stats['consumer_cpu_s'] / gb:.2f} s")
            absent = [why for peer, why in missing.items() if api != "numpy" or peer == "flight"]
            if absent:
                note += "; " + ", ".join(absent)
            rows.append(Row(f"remote.{size}B.{api}", "ns/rec", ns, baselines, note=note,
                            references={"flink-2.3 2 TMs (rec.)": 1e9 / (sum(flink) / 2)}))
            if size == 1000 and api == "batch":
                plain_1000_ns = ns
    rows.append(bench_busy_neighbour(quick, repeats, plain_1000_ns))
    # latency: 10 000 records/s, buffer timeout 0
    n_lat = 10_000 if quick else 30_000
    delays = run_remote(100, n_lat, "latency", timeout_ms=0, rate=10_000)
    delays = drop_warmup(delays)
    rtt = raw_round_trip_us(n_lat // 3)
    one_way_p50 = percentile(rtt, 50) / 2
    rows.append(Row("latency.100B.timeout0.p50", "us", percentile(delays, 50),
                    {"raw socket one-way p50": one_way_p50},
                    note=f"p50 {percentile(delays, 50):.0f} us, p99 {percentile(delays, 99):.0f} us, max "
                         f"{max(delays):.0f} us over {len(delays)} records at 10 000/s",
                    references={"flink-2.3 p50 (rec.)": sum(FLINK_LATENCY_P50_US) / 2}))
    rows.append(Row("latency.100B.timeout0.p99", "us", percentile(delays, 99),
                    {"raw socket one-way p99": percentile(rtt, 99) / 2},
                    references={"flink-2.3 p99 (rec.)": sum(FLINK_LATENCY_P99_US) / 2}))
    if not quick:
        rows += bench_credit_window(repeats=max(3, repeats), peer_baselines=peer_baselines)
    return rows + bench_asyncio_reading(quick=quick)


def bench_busy_neighbour(quick: bool = False, repeats: int = 2, plain_ns: float | None = None) -> Row:
    """Row ``remote.1000B.batch.busy_python_thread``: the 1000 B batch transfer while one
    pure-Python thread spins in the consumer's process (:func:`peers.busy_python_threads`),
    against the same transfer without it (``plain_ns``: ns per record measured in this run, else
    now) and the peers read under the same neighbour. The native I/O thread keeps receiving
    without the GIL; a reader that gave the GIL away to wait gets it back only at the
    interpreter's forced switch (5 ms), which the reader's GIL hold
    (``flinknet.network.reader-gil-hold``) spares it while the next credit round comes soon."""
    size = 1000
    n = BUSY_RECORDS[quick]
    n -= n % BATCH
    busy_ns = min(run_remote(size, n, "batch", busy=1) for _ in range(repeats)) / n * 1e9
    if plain_ns is None:
        plain_ns = min(run_remote(size, n, "batch") for _ in range(repeats)) / n * 1e9
    baselines = {NO_BUSY_THREAD: plain_ns}
    # the hand-written loop loses the GIL at every recv_into: a fifth as many records
    objects, _, missing = _peer_baselines(size, n, 0, repeats, busy=1, n_loop=n // 5)
    baselines.update({f"{peer}, busy thread": ns for peer, ns in objects.items()})
    note = (f"{1e3 / busy_ns:.3f} M records/s with one pure-Python thread spinning in the "
            f"consumer's process ({1e3 / plain_ns:.2f} M/s without)")
    if missing:
        note += "; " + ", ".join(missing.values())
    return Row(f"remote.{size}B.batch.busy_python_thread", "ns/rec", busy_ns, baselines, note=note)


def bench_credit_window(repeats: int = 3, floating: int = WIDE_FLOATING,
                        peer_baselines: dict[int, tuple[dict[str, float], dict[str, float]]] | None = None,
                        records: int | None = None):
    """Rows ``remote.{size}B.{api}.floating{floating}``: the batch (and, at 100 B, numpy)
    exchange with the consumer's gate given ``floating`` floating buffers instead of Flink's 8
    (``taskmanager.network.memory.floating-buffers-per-gate``; 2 exclusive buffers per channel
    either way, credit-based flow control unchanged), against the same exchange with Flink's
    window, alternated in this run (``repeats`` pairs, medians), and against the peers measured
    for the default rows (``peer_baselines``: size -> (objects, columnar) ns per record). On two
    cores the ten buffers of Flink's window bound a single channel's transfer (bench/RESULTS.md
    §1h); this shows what a wider window buys. ``records`` overrides the records per transfer."""
    counts = {100: 4_000_000, 1000: 1_000_000, 32768: 40_000}
    rows = []
    for size, apis in ((100, ("batch", "numpy")), (1000, ("batch",)), (32768, ("batch",))):
        for api in apis:
            n = counts[size] if records is None else records
            n = max(BATCH, n - n % BATCH)
            wide, flinks = [], []
            wide_cpu = []
            for _ in range(repeats):     # alternated, so load on a shared machine hits both
                flinks.append(run_remote(size, n, api))
                stats: dict[str, float] = {}
                wide.append(run_remote(size, n, api, stats=stats,
                                       consumer_options={FLOATING_KEY: floating}))
                wide_cpu.append(stats["consumer_cpu_s"])
            ns = statistics.median(wide) / n * 1e9
            base = statistics.median(flinks) / n * 1e9
            baselines = {FLINK_WINDOW: base}
            objects, columnar = (peer_baselines or {}).get(size, ({}, {}))
            baselines.update(columnar if api == "numpy" else objects)
            gb = n * size / 1e9
            note = (f"{1e3 / ns:.2f} M records/s with 2 + {floating} buffers, {1e3 / base:.2f} M/s "
                    f"with Flink's 2 + 8 ({base / ns:.2f}x); consumer CPU per GB "
                    f"{statistics.median(wide_cpu) / gb:.2f} s")
            rows.append(Row(f"remote.{size}B.{api}.floating{floating}", "ns/rec", ns, baselines,
                            note=note))
    return rows


def bench_asyncio_reading(quick: bool = False, repeats: int | None = None, size: int = 100,
                          records: int | None = None, sizes: tuple[int, ...] | None = None):
    """Rows ``remote.{size}B.{asyncio,uvloop}.{per-record,batch}``: the remote exchange read on
    asyncio's default event loop and on uvloop's against the threaded reader, in ``repeats``
    alternated pairs (5 by default, 3 in quick runs; the side that runs first alternates too).
    The ratio is the **median of the pairs' ratios** (event loop / threaded, ns per record): a
    pair shares its minute of the shared machine's load, so the load cancels in its ratio,
    where a ratio of two medians of three swung 0.9-1.2x between runs of the same code. And
    ``remote.{size}B.{loop}.wait`` (:func:`_wait_row`): the reading thread's CPU per record when
    every read waits, the cost of a wake-up on the loop. ``records`` overrides the records per
    transfer (per-record rows move half as many as batch rows, wait rows exactly that many).
    ``sizes`` adds ``remote.{s}B.{loop}.batch`` rows for more record sizes (full runs: 1000 B,
    where Flink's credit window makes the exchange run in lock-step rounds and the reader waits
    once per round, so the loop's wake-up is on every round's critical path)."""
    repeats = (3 if quick else 5) if repeats is None else repeats
    rows = []
    loops: tuple[str, ...] = ("asyncio", "uvloop")
    try:
        import uvloop  # noqa: F401
    except ImportError:
        loops = ("asyncio",)
        for kind in ("per-record", "batch", "wait"):
            rows.append(Row(f"remote.{size}B.uvloop.{kind}", "us/rec" if kind == "wait" else "ns/rec",
                            float("nan"), {},
                            note="uvloop is not installed (pip install uvloop): row skipped"))
    extra = tuple(sizes if sizes is not None else (() if quick else (1000,)))
    for loop_name in loops:
        for api, threaded_api, n in ((loop_name, "per-record", 1_000_000),
                                     (f"{loop_name}-batch", "batch", 2_000_000)):
            n = int(n * (0.5 if quick else 1.0)) if records is None else records * (n // 1_000_000)
            rows.append(_async_pair_row(loop_name, api, threaded_api, size, n, repeats))
        rows.append(_wait_row(loop_name, size, repeats,
                              records if records is not None else WAIT_RECORDS // (2 if quick else 1)))
        for other in extra:
            n = records if records is not None else max(BATCH, 32_000_000 // other)
            rows.append(_async_pair_row(loop_name, f"{loop_name}-batch", "batch", other, n, repeats))
    return rows


def _async_pair_row(loop_name: str, api: str, threaded_api: str, size: int, n: int,
                    repeats: int) -> Row:
    """One ``remote.{size}B.{loop}.{per-record,batch}`` row: ``repeats`` alternated pairs of
    ``run_remote`` on the event loop and on a thread; the row's ns per record is the threaded
    median times the median of the pairs' ratios, so that its ratio is that median."""
    n = max(BATCH, n - n % BATCH)
    times_async, times_threaded, ratios = [], [], []
    for i in range(repeats):
        order = (threaded_api, api) if i % 2 == 0 else (api, threaded_api)
        times = {a: run_remote(size, n, a) for a in order}
        times_async.append(times[api])
        times_threaded.append(times[threaded_api])
        ratios.append(times[api] / times[threaded_api])
    base = statistics.median(times_threaded) / n * 1e9
    ratio = statistics.median(ratios)
    ns = base * ratio
    kind = "per-record" if threaded_api == "per-record" else "batch"
    how = ("async for record in reader / for record in reader" if kind == "per-record"
           else "await read_batch_async() / read_batch()")
    speed = n / statistics.median(times_async) / 1e6
    return Row(f"remote.{size}B.{loop_name}.{kind}", "ns/rec", ns, {THREADED_READER: base},
               note=f"{loop_name} {speed:.2f} M records/s, threaded {1e3 / base:.2f} M/s ({how}; "
                    f"{loop_name} / threaded: median of {repeats} alternated pairs {ratio:.2f}x, "
                    f"pairs {min(ratios):.2f}-{max(ratios):.2f}x)")


#: records per second and records per transfer of the ``remote.*.{asyncio,uvloop}.wait`` rows
WAIT_RATE = 5_000
WAIT_RECORDS = 5_000


def _wait_row(loop_name: str, size: int, repeats: int, n: int) -> Row:
    """``remote.{size}B.{loop}.wait``: what a wake-up costs the reading thread. The producer is
    paced (:data:`WAIT_RATE` records/s, buffer timeout 0: a buffer per record), so a reader that
    keeps up waits before every buffer; the row is the reading thread's CPU per record
    (``time.thread_time``: the event loop's thread, or the threaded reader's), ``await
    read_batch_async()`` against ``read_batch()``, alternated in this run, medians."""
    cpu_async: list[float] = []
    cpu_threaded: list[float] = []
    for _ in range(repeats):
        for api, out in (("batch", cpu_threaded), (f"{loop_name}-batch", cpu_async)):
            stats: dict[str, float] = {}
            run_remote(size, n, api, timeout_ms=0, rate=WAIT_RATE, stats=stats)
            out.append(stats["consumer_task_cpu_s"] / n * 1e6)
    us, base = statistics.median(cpu_async), statistics.median(cpu_threaded)
    loop_wake = statistics.median(bare_wake_us(loop_name, n) for _ in range(repeats))
    thread_wake = statistics.median(bare_wake_us(None, n) for _ in range(repeats))
    floor = base + loop_wake - thread_wake
    return Row(f"remote.{size}B.{loop_name}.wait", "us/rec", us,
               {THREADED_READER: base, LOOP_WAKE_FLOOR: floor},
               note=f"reading thread's CPU per record when every read waits ({WAIT_RATE} records/s, "
                    f"timeout 0): {loop_name} {us:.1f} µs, threaded {base:.1f} µs; a bare wake-up "
                    f"costs {loop_wake:.1f} µs on {loop_name}'s loop, {thread_wake:.1f} µs to a "
                    f"thread (same run)")


#: the wait rows' second baseline: the threaded reader plus what a bare wake-up costs the loop
#: more than a thread (:func:`bare_wake_us`), both measured in the same run
LOOP_WAKE_FLOOR = "threaded reader + the loop's bare wake-up (same run)"


def bare_wake_us(loop_name: str | None, n: int, period: float = 1.0 / WAIT_RATE) -> float:
    """CPU µs a waiting thread spends per wake-up with nothing else to do: another thread writes
    an eventfd every ``period`` seconds and the waiter (``loop_name`` None) blocks in ``read``
    on it, or an event loop (``"asyncio"``, ``"uvloop"``) waits for it as :mod:`flinknet.aio`
    does (the fd registered once; per wake-up a future awaited by a task, completed by the fd's
    reader callback). ``time.thread_time`` of the waiting thread over ``n`` wake-ups."""
    fd = os.eventfd(0, os.EFD_NONBLOCK if loop_name else 0)
    stop = threading.Event()

    def ring() -> None:
        while not stop.is_set():
            os.eventfd_write(fd, 1)
            time.sleep(period)

    ringer = threading.Thread(target=ring, daemon=True)
    try:
        if loop_name is None:
            ringer.start()
            c0 = time.thread_time()
            for _ in range(n):
                os.eventfd_read(fd)
            return (time.thread_time() - c0) / n * 1e6

        async def wait_n() -> float:
            loop = asyncio.get_running_loop()
            current: list[asyncio.Future[None] | None] = [None]

            def on_fd() -> None:
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    return
                waiter = current[0]
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

            loop.add_reader(fd, on_fd)
            try:
                ringer.start()
                c0 = time.thread_time()
                for _ in range(n):
                    waiter = current[0] = loop.create_future()
                    await waiter
                return (time.thread_time() - c0) / n * 1e6
            finally:
                loop.remove_reader(fd)

        with asyncio.Runner(loop_factory=_loop_factory(loop_name)) as runner:
            return runner.run(wait_n())
    finally:
        stop.set()
        if ringer.is_alive():
            ringer.join()
        os.close(fd)
