"""``network.*``: Apache Flink's network benchmarks (flink-benchmarks) rebuilt on flinknet.

What flink-benchmarks runs (``StreamNetwork*BenchmarkExecutor`` in apache/flink-benchmarks, on
top of ``StreamNetworkThroughputBenchmark`` & friends in flink-streaming-java's tests):

* **throughput** (``StreamNetworkThroughputBenchmarkExecutor.networkThroughput``): ``writers``
  record-writer threads, each emitting into its *own* ``PIPELINED_BOUNDED`` partition with
  ``channels`` subpartitions, round robin (``RecordWriterBuilder``'s default
  ``RoundRobinChannelSelector``), buffer timeout ``flushTimeout`` (the output flusher). Records
  are ``LongValue`` (8 bytes, framed with a 4-byte length): each writer emits ``records /
  writers - 1`` zeros, then ``broadcastEmit`` s the value ``records`` and ``flushAll`` s. One
  receiver thread reads every channel of every partition (one gate per writer, unioned),
  deserializing each record, until it has seen the last value ``writers * channels`` times. The
  two ``NettyShuffleEnvironment`` s (sender, receiver) live in one JVM and talk over real Netty
  on loopback; each gets ``max(2048, writers * channels * 4)`` 32 KiB buffers. 5 000 000 records
  per invocation; parameters: writers 1 and 4 (4 in their CI), channels 1/100/1000, timeout
  1 ms / 100 ms, with SSL for some.
* **data skew** (``DataSkewStreamNetworkThroughputBenchmarkExecutor``): 10 writers x 1000
  channels, 1 ms; the selector sends the first ``channels`` records of a writer to channels
  ``0 .. channels-1``, one each, and every later record to channel 0.
* **broadcast** (``StreamNetworkBroadcastThroughputBenchmarkExecutor``): 4 writers x 100
  channels, 100 ms, ``BroadcastPartitioner`` (every record to every channel, serialized once),
  500 000 records per invocation.
* **latency** (``StreamNetworkLatencyBenchmarkExecutor.networkLatency1to1`` on
  ``StreamNetworkPointToPointBenchmark``): one writer, one channel, 100 records per invocation,
  timed until the receiver has the last one; reported as time per record.

flinknet runs the same arrangement, with two differences said up front. **Processes**: the sender
environment and its writer threads run in a producer *process* (``multiprocessing`` spawn), the
receiver environment and reader in this process; the two talk over loopback TCP through
flinknet's transport (remote input channels, one shared connection). Flink keeps both
environments in one JVM because its threads run in parallel; in one Python process every
writer thread, both I/O threads, the output flushers and the reader would take turns on one
GIL, and the benchmark would measure that contention instead of the network stack (two
environments in one process ran 1.5-2x slower here: w1.c1.t100ms 51 against 26-37 ns per record,
w4.c100.t1ms 126 against 70-85). Two processes give each side its own interpreter, as two
TaskManagers have. **APIs**: a ``LongValue`` is an ``int64``: writers emit ``int64`` numpy
blocks with ``RecordWriter.emit_array`` and the reader uses ``read_array(int64)``, so the numbers
are about the network stack, not a Python loop per record (``remote.*`` rows time the
per-record API). The writer's channel selector picks every record's channel (round robin, or
the skew selector), and each channel's records of a block go out in one ``emit_array(records,
channel)`` call: the same records reach the same channels in the same per-channel order, while
one call per record-and-channel would time the serializer's per-record-target path instead
(``serialize.*.per_record_targets`` in the kernels group: about 10x slower today). The
broadcast writer emits lists (``BroadcastRecordWriter.emit_batch``): a broadcast record is
serialized once for all channels.

Flow control and security variants: ``.credit`` (credit-based, Flink since 1.5) and ``.tcp``
(``flinknet.network.flow-control: tcp``: no credits, the receiver stops reading the shared
connection when a channel has no buffer); ``.tls`` adds ``security.ssl.internal.*`` with a
throw-away self-signed certificate made with the ``openssl`` command for the run (without the
command those rows are skipped, with a note on stderr).

Rows are named ``network.[skew.|broadcast.|latency.]w<writers>.c<channels>.t<timeout>ms.<credit|tcp>[.tls]``.
The full run has throughput for writers {1, 4} x channels {1, 100, 1000} x timeout {1, 100} ms in
both flow-control modes, TLS for 1x1, 4x100 and 4x1000 at 100 ms, skew and broadcast in both
modes, and latency credit / tcp / tls (:func:`full_cases`); ``--quick`` a subset of seven
without the skew row (:func:`quick_cases`). Records per invocation are Flink's (5 000 000;
broadcast 500 000; latency 100) and so are the buffer counts, ``max(2048, writers * channels *
4)`` per environment: the skew row (10 x 1000) allocates 40 000 x 32 KiB per process.

Each row is set up once (environments, partitions, gates, every partition request answered by a
warm-up invocation), then timed over several invocations; the value is the best invocation (the
least disturbed by other load on a shared machine), in ns per record. Latency rows time 10
warm-up and then 100 (quick) or 300 invocations of 100 records with buffer timeout 0 (every record
flushed), from the first emit (its send time rides in the first record, ``CLOCK_MONOTONIC``) to
the last record read, and report the median in µs per record.
Baselines, measured in the same run just before and just after each row (the better of the
two), between the same two processes:

* ``raw socket 32KiB (bytes)``: a raw Python socket streaming 32 KiB ``sendall`` calls into
  ``recv_into``, charged for the bytes the row moves per record (12 framed bytes, times
  ``channels`` for broadcast); over TLS (Python's ``ssl``, same certificates) for ``.tls`` rows;
* ``zmq PUSH/PULL (8 B msgs)``: ZeroMQ (pyzmq, when installed) PUSH -> PULL over
  ``tcp://127.0.0.1``, one 8-byte message per record (``channels`` per broadcast record): what
  a Python program moving the same records with a messaging library pays. Not for ``.tls``;
* latency rows: the same 100 records as 100 separate 12-byte ``sendall`` calls
  (``TCP_NODELAY``) and as 100 ZeroMQ messages, timed the same way.

Every row ends by checking both environments' buffer pools are whole; the producer process and
every thread are stopped when the group ends.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import queue
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self, TypeVar

import numpy as np

from flinknet.partitioners import ChannelSelector
from flinknet.tools.bench.report import Row
from flinknet.transport.handshake import ssl_context

if TYPE_CHECKING:
    from flinknet.environment import NetworkEnvironment
    from flinknet.partition import ResultPartition
    from flinknet.writer import RecordWriter

#: (keystore, truststore) PEM files of the run's throw-away certificate (:func:`make_tls_files`)
TlsFiles = tuple[str, str]
_R = TypeVar("_R")

SEGMENT_SIZE = 32 * 1024
CHUNK = 32 * 1024
#: bytes a record occupies in a buffer: a 4-byte length and the 8-byte long
FRAMED = 12
BATCH = 1000
#: records per channel per run of one emit_array call (a block is max(BATCH, RUN * channels))
RUN = 32
#: Flink's records per invocation
FLINK_RECORDS = 5_000_000
FLINK_BROADCAST_RECORDS = 500_000
FLINK_LATENCY_RECORDS = 100
_Q = struct.Struct("<q")
_LEN = struct.Struct(">i")
#: seconds any single wait on the other process may take before the row fails
_WAIT = 120.0


# -- cases ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One row: ``kind`` is throughput, skew, broadcast or latency."""

    kind: str
    writers: int
    channels: int
    timeout_ms: int
    flow: str = "credit"
    tls: bool = False

    @property
    def name(self) -> str:
        prefix = "" if self.kind == "throughput" else f"{self.kind}."
        return (f"network.{prefix}w{self.writers}.c{self.channels}.t{self.timeout_ms}ms.{self.flow}"
                f"{'.tls' if self.tls else ''}")

    @property
    def num_buffers(self) -> int:
        """Buffers per environment, as Flink's StreamNetworkBenchmarkEnvironment sizes them."""
        return max(2048, self.writers * self.channels * 4)

    def config(self, tls_files: TlsFiles | None) -> dict[str, Any]:
        """The environment options of both sides (``tls_files`` only for a ``.tls`` case)."""
        cfg: dict[str, Any] = {"taskmanager.memory.network.max": self.num_buffers * SEGMENT_SIZE,
               "taskmanager.memory.segment-size": SEGMENT_SIZE,
               "flinknet.network.flow-control": self.flow}
        if self.tls:
            if tls_files is None:
                raise ValueError(f"{self.name} needs TLS files (make_tls_files)")
            keystore, truststore = tls_files
            cfg.update({"security.ssl.internal.enabled": True,
                        "security.ssl.internal.keystore": keystore,
                        "security.ssl.internal.truststore": truststore})
        return cfg

    def wire_bytes_per_record(self) -> int:
        return FRAMED * (self.channels if self.kind == "broadcast" else 1)


def full_cases() -> list[Case]:
    cases = []
    for flow in ("credit", "tcp"):
        for writers in (1, 4):
            for channels in (1, 100, 1000):
                for timeout in (1, 100):
                    cases.append(Case("throughput", writers, channels, timeout, flow))
    # flink-benchmarks' SSL parameters ("100,100ms,SSL", "1000,100ms,SSL", 4 writers), and 1x1
    cases += [Case("throughput", 1, 1, 100, "credit", True),
              Case("throughput", 4, 100, 100, "credit", True),
              Case("throughput", 4, 1000, 100, "credit", True)]
    cases += [Case("skew", 10, 1000, 1, "credit"), Case("skew", 10, 1000, 1, "tcp")]
    cases += [Case("broadcast", 4, 100, 100, "credit"), Case("broadcast", 4, 100, 100, "tcp")]
    cases += [Case("latency", 1, 1, 0, "credit"), Case("latency", 1, 1, 0, "tcp"),
              Case("latency", 1, 1, 0, "credit", True)]
    return cases


def quick_cases() -> list[Case]:
    return [Case("throughput", 1, 1, 100, "credit"),
            Case("throughput", 4, 100, 1, "credit"),
            Case("throughput", 4, 1000, 100, "credit"),
            Case("throughput", 4, 100, 1, "tcp"),
            Case("throughput", 4, 100, 100, "credit", True),
            # (no skew row: ten writers' 1 ms flushers over 1000 channels took 1-3 minutes on a
            # loaded 2-core machine and varied 6x between runs; the full run and
            # `python -m flinknet.tools.bench.scale --only skew` measure it)
            Case("broadcast", 4, 100, 100, "credit"),
            Case("latency", 1, 1, 0, "credit")]


class DataSkewChannelSelector(ChannelSelector):
    """flink-benchmarks' data skew selector: the first ``number_of_channels`` records go to
    channels 0, 1, ... once each, every later record to channel 0."""

    name = "DATA_SKEW"

    def __init__(self) -> None:
        super().__init__()
        self.spread = 0           # records sent so far to channels 0, 1, ... (one each)

    def _channels(self) -> int:
        if self.number_of_channels <= 0:
            raise RuntimeError(f"{type(self).__name__}.setup() was not called")
        return self.number_of_channels

    def select_channel(self, record: Any) -> int:
        n = self._channels()
        if self.spread >= n:
            return 0
        self.spread += 1
        return self.spread - 1

    def select_channels(self, records: Any) -> np.ndarray:
        n = self._channels()
        out = np.zeros(len(records), dtype=np.int32)
        k = min(len(records), n - self.spread)
        if k > 0:
            out[:k] = np.arange(self.spread, self.spread + k, dtype=np.int32)
            self.spread += k
        return out

    def copy(self) -> DataSkewChannelSelector:
        return DataSkewChannelSelector()


# -- TLS material ---------------------------------------------------------------------------------

def make_tls_files(directory: str) -> TlsFiles | None:
    """(keystore, truststore) PEM files of a throw-away self-signed certificate (``openssl``),
    or None when the ``openssl`` command is missing or fails."""
    exe = shutil.which("openssl")
    if exe is None:
        return None
    key, cert = os.path.join(directory, "node.key"), os.path.join(directory, "node.crt")
    try:
        subprocess.run([exe, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "2",
                        "-subj", "/CN=flinknet bench (throw-away)"],
                       check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    keystore = os.path.join(directory, "node.pem")
    with open(keystore, "w") as out:
        for path in (cert, key):
            with open(path) as f:
                out.write(f.read())
    return keystore, cert


# -- the producer process -------------------------------------------------------------------------

def _writer_loop(writer: RecordWriter, partition: ResultPartition, case: Case, jobs: queue.Queue,
                 q_out: Any) -> None:
    """A writer thread: runs invocations from ``jobs`` until it gets None."""
    channels = case.channels
    block = max(BATCH, RUN * channels)
    zeros = np.zeros(block, dtype=np.int64)
    zero_list = [bytes(8)] * BATCH
    # called with numpy arrays of records, which the selectors take (typed: sequences of records)
    select: Callable[[Any], np.ndarray] = writer.channel_selector.select_channels
    try:
        while (job := jobs.get()) is not None:
            what, n = job
            if what == "latency":
                emit = writer.emit
                emit(_Q.pack(time.monotonic_ns()))
                one = _Q.pack(1)
                for _ in range(n - 1):
                    emit(one)
                continue
            left = n - 1
            if case.kind == "broadcast":
                send_list = writer.emit_batch     # each record serialized once, for all channels
                while left > 0:
                    k = min(BATCH, left)
                    send_list(zero_list if k == BATCH else zero_list[:k])
                    left -= k
            else:
                # The selector picks every record's channel; each channel's records of the block
                # go out in one run (same records, same channels, same order per channel).
                send_array = writer.emit_array
                while left > 0:
                    k = min(block, left)
                    counts = np.bincount(select(zeros[:k]), minlength=channels)
                    for target in np.flatnonzero(counts).tolist():
                        send_array(zeros[:counts[target]], target)
                    left -= k
            writer.broadcast_emit(_Q.pack(n))     # the last record, on every channel
            writer.flush_all()
    except BaseException as err:  # noqa: BLE001 (reported to the parent)
        q_out.put(("error", f"writer: {err!r}"))
        try:
            partition.fail(err)
        except Exception:  # noqa: BLE001
            pass


class _Producer:
    """The sender side of one row, inside the producer process."""

    def __init__(self, case: Case, cfg: dict[str, Any], q_out: Any) -> None:
        from flinknet.environment import NetworkEnvironment
        from flinknet.partitioners import BroadcastPartitioner, RoundRobinChannelSelector
        from flinknet.writer import RecordWriter, RecordWriterBuilder

        self.env = NetworkEnvironment(cfg)
        self.partitions: list[ResultPartition] = []
        self.writers: list[RecordWriter] = []
        self.jobs: list[queue.Queue] = []
        self.threads: list[threading.Thread] = []
        try:
            for i in range(case.writers):
                p = self.env.create_result_partition(case.channels)
                self.partitions.append(p)
                selector: ChannelSelector
                if case.kind == "broadcast":
                    selector = BroadcastPartitioner()
                elif case.kind == "skew":
                    selector = DataSkewChannelSelector()
                else:
                    selector = RoundRobinChannelSelector()
                w = RecordWriterBuilder().set_channel_selector(selector).set_timeout(case.timeout_ms) \
                    .set_task_name(f"writer-{i}").build(p)
                assert isinstance(w, RecordWriter)
                self.writers.append(w)
                jobs: queue.Queue = queue.Queue()
                self.jobs.append(jobs)
                t = threading.Thread(target=_writer_loop, args=(w, p, case, jobs, q_out),
                                     name=f"bench-writer-{i}", daemon=True)
                t.start()
                self.threads.append(t)
        except BaseException:
            self.finish()
            self.close()
            raise

    def run(self, what: str, n: int) -> None:
        for jobs in self.jobs:
            jobs.put((what, n))

    def finish(self) -> None:
        """Stop the writer threads and finish the partitions (EndOfPartition on every channel)."""
        for jobs in self.jobs:
            jobs.put(None)
        for t in self.threads:
            t.join(_WAIT)
        for w in self.writers:
            w.close()
        for p in self.partitions:
            try:
                p.finish()
            finally:
                p.close()

    def close(self) -> bool:
        self.env.close()
        return self.env.network_buffer_pool.is_whole


def _require(producer: _Producer | None, op: str) -> _Producer:
    """The producer ``op`` works on; a command before ``setup`` succeeded (or after ``close``)
    is the benchmark process's mistake, reported to it like any other error."""
    if producer is None:
        raise RuntimeError(f"{op!r} without a producer ('setup' not sent, failed, or 'close' came first)")
    return producer


def _worker_main(q_cmd: Any, q_out: Any) -> None:
    """The producer process: a loop over commands from the benchmark process."""
    producer: _Producer | None = None
    raw: dict[str, socket.socket] = {}
    zmq_state: dict[str, Any] = {}
    pad = bytes(CHUNK)
    while True:
        cmd = q_cmd.get()
        op, args = cmd[0], cmd[1:]
        try:
            if op == "quit":
                break
            if op == "setup":
                case, cfg = args
                producer = _Producer(case, cfg, q_out)
                q_out.put(("ready", [p.partition_id.to_bytes() for p in producer.partitions],
                           producer.env.address))
            elif op == "run":
                _require(producer, op).run(*args)
            elif op == "finish":
                _require(producer, op).finish()
                q_out.put(("finished",))
            elif op == "close":
                whole = _require(producer, op).close()
                producer = None
                q_out.put(("closed", whole))
            elif op == "raw_open":
                (tls_files,) = args
                lst = socket.create_server(("127.0.0.1", 0))
                q_out.put(("raw_addr", lst.getsockname()))
                lst.settimeout(_WAIT)
                conn, _ = lst.accept()
                lst.close()
                conn.settimeout(None)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if tls_files is not None:
                    ctx = _ssl_context(ssl.PROTOCOL_TLS_SERVER, tls_files)
                    conn = ctx.wrap_socket(conn, server_side=True)
                raw["conn"] = conn
            elif op == "raw_send":
                (total,) = args
                conn, data, sent = raw["conn"], memoryview(pad), 0
                while sent < total:
                    k = min(CHUNK, total - sent)
                    conn.sendall(data[:k])
                    sent += k
            elif op == "raw_lat":
                (n,) = args
                conn = raw["conn"]
                conn.sendall(_LEN.pack(8) + _Q.pack(time.monotonic_ns()))
                msg = _LEN.pack(8) + _Q.pack(1)
                for _ in range(n - 1):
                    conn.sendall(msg)
            elif op == "raw_close":
                conn = raw.pop("conn")
                try:
                    conn.recv(1)        # the receiver closes first
                finally:
                    conn.close()
                q_out.put(("raw_closed",))
            elif op == "zmq_open":
                import zmq  # type: ignore[import-not-found,unused-ignore]  # optional: flinknet[bench]

                zmq_ctx = zmq.Context()
                push = zmq_ctx.socket(zmq.PUSH)
                push.setsockopt(zmq.LINGER, 0)
                port = push.bind_to_random_port("tcp://127.0.0.1")
                zmq_state.update(ctx=zmq_ctx, push=push)
                q_out.put(("zmq_addr", f"tcp://127.0.0.1:{port}"))
            elif op == "zmq_send":
                (n,) = args
                send, msg = zmq_state["push"].send, bytes(8)
                for _ in range(n):
                    send(msg)
            elif op == "zmq_lat":
                (n,) = args
                send = zmq_state["push"].send
                send(_Q.pack(time.monotonic_ns()))
                msg = _Q.pack(1)
                for _ in range(n - 1):
                    send(msg)
            elif op == "zmq_close":
                zmq_state.pop("push").close(0)
                zmq_state.pop("ctx").term()
                q_out.put(("zmq_closed",))
            else:
                raise ValueError(f"unknown command {op!r}")
        except BaseException as err:  # noqa: BLE001 (reported to the parent)
            q_out.put(("error", f"{op}: {err!r}"))
    if producer is not None:
        try:
            producer.finish()
        finally:
            producer.close()


def _ssl_context(purpose: ssl._SSLMethod, tls_files: TlsFiles) -> ssl.SSLContext:
    """The transport's TLS context (its ``security.ssl.internal.*`` settings) for the raw baseline."""
    return ssl_context(purpose, *tls_files)


class Worker:
    """The producer process, driven by commands; a context manager that always stops it."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self.q_cmd: Any = ctx.Queue()
        self.q_out: Any = ctx.Queue()
        self.proc = ctx.Process(target=_worker_main, args=(self.q_cmd, self.q_out),
                                name="flinknet-bench-producer", daemon=True)

    def __enter__(self) -> Self:
        self.proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def send(self, *cmd: Any) -> None:
        self.q_cmd.put(cmd)

    def expect(self, tag: str, timeout: float = _WAIT) -> tuple[Any, ...]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.q_out.get(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
                break
            except queue.Empty:
                if not self.proc.is_alive():
                    raise RuntimeError(f"the producer process died (exit code {self.proc.exitcode})") \
                        from None
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"the producer process did not answer ({tag})") from None
        if msg[0] == "error":
            raise RuntimeError(f"producer process: {msg[1]}")
        if msg[0] != tag:
            raise RuntimeError(f"producer process: expected {tag}, got {msg!r}")
        return msg[1:]

    def check_errors(self) -> None:
        """Raise an error the producer reported meanwhile (called when a wait times out)."""
        try:
            msg = self.q_out.get_nowait()
        except queue.Empty:
            if not self.proc.is_alive():
                raise RuntimeError(f"the producer process died (exit code {self.proc.exitcode})") from None
            return
        raise RuntimeError(f"producer process: {msg[1] if msg[0] == 'error' else msg!r}")

    def stop(self) -> None:
        if self.proc.is_alive():
            self.q_cmd.put(("quit",))
            self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)
        for q in (self.q_cmd, self.q_out):
            q.close()
            q.join_thread()


# -- the receiver side (this process) -------------------------------------------------------------

class _Receiver:
    """The receiving side of one row: one gate per writer's partition (unioned), one reader."""

    def __init__(self, env: NetworkEnvironment, case: Case, pids: list[bytes],
                 address: tuple[str, int]) -> None:
        from flinknet.consumer import RecordReader, UnionInputGate
        from flinknet.ids import ResultPartitionID

        self.env = env
        try:
            gates = []
            for g, pid in enumerate(pids):
                rpid = ResultPartitionID.from_bytes(pid)
                gates.append(self.env.create_input_gate(
                    [(rpid, i, address) for i in range(case.channels)], gate_index=g))
            for gate in gates:
                gate.request_partitions()
            self.gates = gates
            self.reader = RecordReader(UnionInputGate(*gates) if len(gates) > 1 else gates[0])
        except BaseException:
            self.env.close()
            raise

    def _read(self, worker: Worker) -> np.ndarray:
        """The next array of longs; a timeout reports the producer's error if it has one."""
        try:
            arr = self.reader.read_array(np.int64, timeout=_WAIT)
        except TimeoutError:
            worker.check_errors()
            raise
        if arr is None:
            raise RuntimeError("the input ended in the middle of an invocation")
        return arr

    def read_until(self, worker: Worker, markers: int) -> int:
        """Read records until ``markers`` nonzero ones arrived; returns the records read."""
        count, seen, count_nonzero = 0, 0, np.count_nonzero
        while seen < markers:
            arr = self._read(worker)
            count += len(arr)
            seen += int(count_nonzero(arr))
        return count

    def read_latency(self, worker: Worker, n: int) -> int:
        """Read ``n`` records; ns from the first one's send time to the last one's arrival."""
        if n < 1:
            raise ValueError(f"read_latency times at least one record, got n={n}")
        arr = self._read(worker)
        while not len(arr):
            arr = self._read(worker)
        t0, count = int(arr[0]), len(arr)
        while count < n:
            count += len(self._read(worker))
        return time.monotonic_ns() - t0

    def drain_and_close(self) -> bool:
        """Read to the end (EndOfPartition on every channel), close; whether the pool is whole."""
        extra = 0
        while (arr := self.reader.read_array(np.int64, timeout=_WAIT)) is not None:
            extra += len(arr)
        self.reader.close()
        self.env.close()
        if extra:
            raise AssertionError(f"{extra} records arrived after the last invocation")
        return self.env.network_buffer_pool.is_whole


def _run_case(worker: Worker, case: Case, tls_files: TlsFiles | None,
              measure: Callable[[_Receiver], _R]) -> _R:
    """Set ``case`` up on both sides, answer ``measure(receiver)`` after tearing it down again
    (every channel drained to its EndOfPartition, both pools checked whole)."""
    from flinknet.environment import NetworkEnvironment

    cfg = case.config(tls_files)
    worker.send("setup", case, cfg)
    receiver = None
    env = NetworkEnvironment(cfg)      # allocates while the producer process sets up its side
    try:
        pids, address = worker.expect("ready")
        receiver = _Receiver(env, case, pids, address)
        result = measure(receiver)
        worker.send("finish")
        worker.expect("finished")
        whole_here = receiver.drain_and_close()
        receiver = None
        worker.send("close")
        (whole_there,) = worker.expect("closed")
        if not (whole_here and whole_there):
            raise AssertionError(f"{case.name}: the benchmark leaked network buffers "
                                 f"(receiver whole: {whole_here}, producer whole: {whole_there})")
        return result
    except BaseException:
        if receiver is not None:
            receiver.reader.close()
        env.close()
        raise


def _latency_invocations(receiver: _Receiver, *, worker: Worker, records: int, repeats: int) -> list[int]:
    """ns of each of ``repeats`` invocations of ``records`` records (after 10 that warm up)."""
    out = []
    for i in range(repeats + 10):         # the first 10 warm up
        worker.send("run", "latency", records)
        dt = receiver.read_latency(worker, records)
        if i >= 10:
            out.append(dt)
    return out


def _best_invocation(receiver: _Receiver, *, worker: Worker, case: Case, records: int,
                     repeats: int) -> tuple[float, int]:
    """(best seconds of ``repeats`` invocations, records emitted per invocation); an invocation
    before them answers every partition request."""
    per_writer = records // case.writers
    markers = case.writers * case.channels
    expected = case.writers * ((per_writer - 1) * (case.channels if case.kind == "broadcast" else 1)
                               + case.channels)
    best = float("inf")
    for i in range(repeats + 1):          # the first answers every partition request
        t0 = time.perf_counter()
        worker.send("run", "records", per_writer)
        got = receiver.read_until(worker, markers)
        dt = time.perf_counter() - t0
        if got != expected:
            raise AssertionError(f"{case.name}: read {got} records, expected {expected}")
        if i:
            best = min(best, dt)
    return best, per_writer * case.writers


# -- baselines ------------------------------------------------------------------------------------

def _raw_connect(worker: Worker, tls_files: TlsFiles | None) -> socket.socket:
    worker.send("raw_open", tls_files)
    (addr,) = worker.expect("raw_addr")
    s = socket.create_connection(addr, timeout=_WAIT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls_files is not None:
        s = _ssl_context(ssl.PROTOCOL_TLS_CLIENT, tls_files).wrap_socket(s)
    return s


def raw_ns_per_byte(worker: Worker, total: int, repeats: int, tls_files: TlsFiles | None = None) -> float:
    """ns per byte streamed from the producer process with 32 KiB ``sendall`` calls."""
    s = _raw_connect(worker, tls_files)
    try:
        buf = memoryview(bytearray(CHUNK))
        best = float("inf")
        for _ in range(repeats):
            got = 0
            t0 = time.perf_counter_ns()
            worker.send("raw_send", total)
            while got < total:
                k = s.recv_into(buf)
                if not k:
                    raise RuntimeError("the raw socket closed early")
                got += k
            best = min(best, (time.perf_counter_ns() - t0) / total)
        return best
    finally:
        s.close()
        worker.send("raw_close")
        worker.expect("raw_closed")


def raw_latency_ns(worker: Worker, n: int, invocations: int, tls_files: TlsFiles | None = None) -> list[int]:
    """ns from the first of ``n`` 12-byte ``sendall`` calls to the arrival of the last."""
    s = _raw_connect(worker, tls_files)
    try:
        size = n * FRAMED
        buf = bytearray(size)
        view = memoryview(buf)
        out = []
        for i in range(invocations + 10):
            worker.send("raw_lat", n)
            got = 0
            while got < size:
                k = s.recv_into(view[got:])
                if not k:
                    raise RuntimeError("the raw socket closed early")
                got += k
            dt = time.monotonic_ns() - _Q.unpack_from(buf, 4)[0]
            if i >= 10:
                out.append(dt)
        return out
    finally:
        s.close()
        worker.send("raw_close")
        worker.expect("raw_closed")


def zmq_available() -> bool:
    try:
        import zmq  # noqa: F401
    except ImportError:
        return False
    return True


def _zmq_pull(worker: Worker) -> tuple[Any, Any]:
    """(context, PULL socket) connected to the producer process's PUSH socket."""
    import zmq  # type: ignore[import-not-found,unused-ignore]  # optional: flinknet[bench]

    worker.send("zmq_open")
    (endpoint,) = worker.expect("zmq_addr")
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.setsockopt(zmq.RCVTIMEO, int(_WAIT * 1000))
    pull.connect(endpoint)
    return ctx, pull


def _zmq_close(worker: Worker, ctx: Any, pull: Any) -> None:
    pull.close(0)
    ctx.term()
    worker.send("zmq_close")
    worker.expect("zmq_closed")


def zmq_ns_per_message(worker: Worker, n: int, repeats: int) -> float:
    """ns per 8-byte message, PUSH (producer process) -> PULL (this process) over loopback."""
    ctx, pull = _zmq_pull(worker)
    try:
        recv = pull.recv
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            worker.send("zmq_send", n)
            for _ in range(n):
                recv()
            best = min(best, (time.perf_counter_ns() - t0) / n)
        return best
    finally:
        _zmq_close(worker, ctx, pull)


def zmq_latency_ns(worker: Worker, n: int, invocations: int) -> list[int]:
    ctx, pull = _zmq_pull(worker)
    try:
        recv = pull.recv
        out = []
        for i in range(invocations + 10):
            worker.send("zmq_lat", n)
            t0 = _Q.unpack(recv())[0]
            for _ in range(n - 1):
                recv()
            if i >= 10:
                out.append(time.monotonic_ns() - t0)
        return out
    finally:
        _zmq_close(worker, ctx, pull)


# -- the rows -------------------------------------------------------------------------------------

def _baselines(worker: Worker, case: Case, quick: bool, tls_files: TlsFiles | None,
               use_zmq: bool) -> dict[str, float]:
    """Baseline name -> ns per record (µs per record for latency rows)."""
    out: dict[str, float] = {}
    reps = 2 if quick else 3
    tls = tls_files if case.tls else None
    raw_name = "raw TLS socket 32KiB (bytes)" if case.tls else "raw socket 32KiB (bytes)"
    if case.kind == "latency":
        inv = 100 if quick else 300
        med = np.median(raw_latency_ns(worker, FLINK_LATENCY_RECORDS, inv, tls))
        out["raw TLS socket (12 B sends)" if case.tls else "raw socket (12 B sends)"] = \
            med / FLINK_LATENCY_RECORDS / 1e3
        if use_zmq and not case.tls:
            med = np.median(zmq_latency_ns(worker, FLINK_LATENCY_RECORDS, inv))
            out["zmq PUSH/PULL (8 B msgs)"] = med / FLINK_LATENCY_RECORDS / 1e3
        return out
    total = (64 << 20) if quick else (256 << 20)
    if case.tls:
        total //= 4
    out[raw_name] = raw_ns_per_byte(worker, total, reps, tls) * case.wire_bytes_per_record()
    if use_zmq and not case.tls:
        n = 100_000 if quick else 200_000
        per_msg = zmq_ns_per_message(worker, n, reps)
        out["zmq PUSH/PULL (8 B msgs)"] = per_msg * (case.channels if case.kind == "broadcast" else 1)
    return out


def _records(case: Case) -> int:
    """Records per invocation: Flink's (quick runs fewer rows and invocations, not fewer records:
    shorter invocations made the ratios too noisy to gate)."""
    if case.kind == "latency":
        return FLINK_LATENCY_RECORDS
    if case.kind == "broadcast":
        return FLINK_BROADCAST_RECORDS
    return FLINK_RECORDS


def bench_network(quick: bool = False, cases: list[Case] | None = None,
                  repeats: int | None = None) -> list[Row]:
    """Rows of the ``network`` group (ns per record; µs per record for latency)."""
    cases = list(cases if cases is not None else (quick_cases() if quick else full_cases()))
    repeats = repeats or (3 if quick else 4)
    use_zmq = zmq_available()
    rows = []
    threads_before = set(threading.enumerate())
    with tempfile.TemporaryDirectory(prefix="flinknet-bench-") as tmp:
        tls_files = make_tls_files(tmp) if any(c.tls for c in cases) else None
        with Worker() as worker:
            for case in cases:
                if case.tls and tls_files is None:
                    print(f"{case.name}: skipped (no openssl command to make a throw-away certificate)",
                          file=sys.stderr)
                    continue
                before = _baselines(worker, case, quick, tls_files, use_zmq)
                n = _records(case)
                if case.kind == "latency":
                    inv = 100 if quick else 300
                    delays = _run_case(worker, case, tls_files, functools.partial(
                        _latency_invocations, worker=worker, records=n, repeats=inv))
                    per_rec = np.asarray(delays) / n / 1e3
                    value = float(np.median(per_rec))
                    unit = "us/rec"
                    note = (f"{n} records per invocation, buffer timeout 0: median {value * n:.0f} us, "
                            f"p90 {np.percentile(per_rec, 90) * n:.0f} us per invocation "
                            f"(first emit -> last record read), {len(delays)} invocations")
                else:
                    best, emitted = _run_case(worker, case, tls_files, functools.partial(
                        _best_invocation, worker=worker, case=case, records=n, repeats=repeats))
                    value = best / emitted * 1e9
                    unit = "ns/rec"
                    rps = 1e9 / value
                    wire = rps * case.wire_bytes_per_record() * 8 / FRAMED
                    note = (f"{rps / 1e6:.2f} M records/s ({wire / 1e6:.0f} MB/s of longs delivered), "
                            f"{emitted:,} records per invocation, best of {repeats}")
                after = _baselines(worker, case, quick, tls_files, use_zmq)
                baselines = {k: min(v, after.get(k, v)) for k, v in before.items()}
                if not use_zmq:
                    note += "; zmq baseline: pyzmq not installed (pip install 'flinknet[bench]')"
                rows.append(Row(case.name, unit, value, baselines, note=note))
    _check_threads(threads_before)
    return rows


def _check_threads(before: set[threading.Thread]) -> None:
    deadline = time.monotonic() + 10
    while True:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"threads left running: {[t.name for t in left]}")
        time.sleep(0.05)
