"""``flinknet demo --checkpointing MODE``: the keyed job with periodic checkpoints, a killed
aggregator process, and a restore that loses nothing.

The job runs in real processes, one per task, connected by flinknet's TCP transport::

    Source[0..S-1] --key groups (max parallelism 128)--> Aggregator[0..A-1] --> this coordinator

* The **coordinator** (this process) triggers a checkpoint at every source every
  ``--checkpoint-interval`` ms (one at a time, as Flink's default of one concurrent checkpoint).
  A checkpoint is complete when every task acknowledged it; the coordinator keeps the last
  complete one.
* A **source** (:func:`_source_main`) generates its records in numbered blocks, each from a
  seeded generator, so its state is one number: the next block. On a trigger it broadcasts the
  barrier — for ``unaligned`` as a priority event that overtakes its queued output, which its
  partition hands to the channel state writer (the source's output channel state) — and acks
  its offset and that output state.
* An **aggregator** (:func:`_aggregator_main`) reads through a
  :class:`~flinknet.checkpointing.CheckpointedInputGate` and keeps count and sum per key. When
  the gate triggers it (``trigger_checkpoint_on_barrier``: aligned, at the last barrier;
  unaligned, at the first) it copies its counts; once every barrier arrived it acks the copy,
  the input channel state the handler captured (unaligned: what its channels held before their
  barriers, spanning records whole) and the alignment metrics.
* The **failure**: in the slow phase (one aggregator slowed to a trickle, so buffers queue up
  and barriers wait behind them) the coordinator kills that aggregator's process (SIGKILL) once a
  checkpoint completed, cancels the job (Flink restarts the whole failover region, which for an
  all-to-all edge is the whole job), and restores every task from the last complete checkpoint:
  aggregators take their counts and first replay, per input channel, the data that was in
  flight on it at the cut (their captured input, then the source's captured output for that
  channel: :func:`restore_plan`), and sources continue from their checkpointed block.
* The **check**: every key's count and sum over the aggregators equals what the sources'
  generators produce, regenerated here from the seed — nothing lost, nothing counted twice.

The coordinator keeps a :class:`JobProgress` (per task: its process, progress, back-pressure and
the last checkpoint it acked with that checkpoint's start delay, alignment time and in-flight
bytes) that a :class:`CheckpointView` shows: :class:`LineView` prints lines,
:class:`~flinknet.tools.demo.checkpoint_view.CheckpointLiveView` draws it live.

``--debloat compare`` runs the slow phase twice more, buffer debloating off and on, and prints
the checkpoints' alignment time and in-flight bytes side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import multiprocessing
import multiprocessing.connection
import os
import signal
import struct
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from flinknet.tools.demo.args import int_in

__all__ = ["CheckpointDemoConfig", "CheckpointDemoResult", "CheckpointStats", "CheckpointSummary",
           "CheckpointView", "JobProgress", "LineView", "TaskProgress", "build_parser",
           "compare_debloating", "describe_checkpoint", "expected_totals", "format_bytes",
           "format_checkpoint_comparison", "format_debloat_comparison", "generate_block", "parse_args",
           "parse_config", "restore_plan", "run_checkpoint_demo", "split_records"]

MAX_PARALLELISM = 128
#: records per generated block (a source's offset counts blocks)
BLOCK = 256
RECORD = struct.Struct(">iq")          # key, value: 12 bytes
MODES = ("aligned", "unaligned")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: seconds a process gets to start (spawn and import) or to end when told to
START_TIMEOUT = 60.0
#: seconds between two progress reports of a task
STATUS_INTERVAL = 0.25


@dataclasses.dataclass(frozen=True)
class CheckpointDemoConfig:
    """A run of the checkpointed job (validated by :func:`parse_config`)."""

    mode: str = "aligned"
    #: aligned-checkpoint timeout in ms (``timeout:MS``): aligned barriers that turn unaligned
    aligned_timeout_ms: int | None = None
    sources: int = 2
    aggregators: int = 2
    keys: int = 1000
    #: records each source generates in all (rounded up to whole blocks)
    records: int = 400_000
    #: records/s per source
    rate: int = 50_000
    checkpoint_interval_ms: int = 500
    slow_aggregator: int = 0
    #: records/s the slowed aggregator keeps in the slow phase
    slow_rate: int = 20_000
    #: kill the slowed aggregator in the slow phase and restore the job
    kill: bool = True
    #: off | on | compare (compare: two more runs of the slow phase, debloating off and on)
    debloat: str = "off"
    segment_size: str = "32kb"
    network_memory: str = "16mb"
    buffer_timeout_ms: int = 10
    seed: int = 0

    @property
    def blocks(self) -> int:
        """Blocks each source generates."""
        return -(-self.records // BLOCK)

    @property
    def label(self) -> str:
        return f"timeout:{self.aligned_timeout_ms}" if self.aligned_timeout_ms is not None else self.mode

    def net_options(self, debloat: bool) -> dict[str, Any]:
        return {"taskmanager.memory.segment-size": self.segment_size,
                "taskmanager.memory.network.max": self.network_memory,
                "taskmanager.memory.network.min": self.network_memory,
                "taskmanager.network.memory.buffer-debloat.enabled": debloat,
                "taskmanager.network.memory.buffer-debloat.target": "200 ms",
                "taskmanager.network.memory.buffer-debloat.period": "100 ms"}


# ==============================================================================================
# Records
# ==============================================================================================

def generate_block(seed: int, source: int, block: int, keys: int) -> tuple[np.ndarray, np.ndarray]:
    """The keys and values of one block of one source (deterministic: a restore regenerates it)."""
    rng = np.random.default_rng([seed, source, block])
    return rng.integers(0, keys, BLOCK, dtype=np.int64), rng.integers(1, 1000, BLOCK, dtype=np.int64)


def expected_totals(cfg: CheckpointDemoConfig) -> tuple[np.ndarray, np.ndarray]:
    """Count and sum per key of everything the sources generate."""
    counts, sums = _expected_totals(cfg.seed, cfg.sources, cfg.blocks, cfg.keys)
    return counts.copy(), sums.copy()


@functools.lru_cache(maxsize=4)
def _expected_totals(seed: int, sources: int, blocks: int, keys: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.zeros(keys, np.int64)
    sums = np.zeros(keys, np.int64)
    for s in range(sources):
        for b in range(blocks):
            k, v = generate_block(seed, s, b, keys)
            counts += np.bincount(k, minlength=keys)
            sums += np.bincount(k, weights=v, minlength=keys).astype(np.int64)
    return counts, sums


def _encode(keys: np.ndarray, values: np.ndarray) -> list[bytes]:
    arr = np.empty(len(keys), RECORD_DTYPE)
    arr["k"] = keys
    arr["v"] = values
    raw = arr.tobytes()
    return [raw[o:o + RECORD.size] for o in range(0, len(raw), RECORD.size)]


def split_records(data: bytes) -> list[bytes]:
    """The records of captured channel state: length-prefixed (4 bytes, big-endian), whole."""
    out, pos, n = [], 0, len(data)
    while pos < n:
        if pos + 4 > n:
            raise ValueError(f"channel state ends inside a length field at byte {pos} of {n}")
        (size,) = struct.unpack_from(">i", data, pos)
        if size < 0 or pos + 4 + size > n:
            raise ValueError(f"channel state holds a record of {size} bytes at byte {pos} of {n}")
        out.append(data[pos + 4:pos + 4 + size])
        pos += 4 + size
    return out


RECORD_DTYPE = np.dtype([("k", ">i4"), ("v", ">i8")])


def _add_records(records: Sequence[bytes], counts: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """Count and sum ``records`` per key; returns their keys."""
    if not records:
        return np.empty(0, np.int32)
    arr = np.frombuffer(b"".join(records), RECORD_DTYPE)
    keys = arr["k"].astype(np.int32)
    np.add.at(counts, keys, 1)
    np.add.at(sums, keys, arr["v"].astype(np.int64))
    return keys


def _options(cfg: CheckpointDemoConfig) -> Any:
    from flinknet.events import AlignmentType, CheckpointOptions

    if cfg.mode == "unaligned":
        return CheckpointOptions(alignment=AlignmentType.UNALIGNED)
    if cfg.aligned_timeout_ms is not None:
        return CheckpointOptions(alignment=AlignmentType.ALIGNED,
                                 aligned_checkpoint_timeout=cfg.aligned_timeout_ms)
    return CheckpointOptions()


class _StatusClock:
    """When a task reports its progress to the coordinator (every ``STATUS_INTERVAL`` s)."""

    def __init__(self) -> None:
        self.next = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now < self.next:
            return False
        self.next = now + STATUS_INTERVAL
        return True


# ==============================================================================================
# The source process
# ==============================================================================================

def _source_main(conn: multiprocessing.connection.Connection, cfg: CheckpointDemoConfig, index: int,
                 restore: dict[str, Any] | None, debloat: bool) -> None:
    """One source: generate blocks from ``restore['offset']`` on (its captured output state is
    restored through the aggregators' channels, :func:`restore_plan`); barriers on the
    coordinator's triggers."""
    from flinknet import NetworkEnvironment
    from flinknet.checkpointing import InMemoryChannelStateWriter
    from flinknet.core import operator_indexes_array
    from flinknet.errors import ConsumerLostError
    from flinknet.events import CheckpointBarrier

    options = _options(cfg)
    priority = options.alignment.name == "UNALIGNED"
    with NetworkEnvironment(cfg.net_options(debloat)) as env:
        p = env.create_result_partition(cfg.aggregators, partition_index=index)
        writer = InMemoryChannelStateWriter()
        p.set_channel_state_writer(writer)
        conn.send(("ready", env.address, p.partition_id))
        if conn.recv()[0] != "go":
            return
        block = 0 if restore is None else restore["offset"]
        period = BLOCK / cfg.rate
        due = time.monotonic()
        last_flush = due
        status = _StatusClock()
        backpressured = 0.0         # seconds this source waited for a buffer
        try:
            while block < cfg.blocks:
                if status.due():
                    conn.send(("status", "source", index, block * BLOCK, backpressured))
                while conn.poll(0):
                    message = conn.recv()
                    if message[0] == "trigger":
                        cid = message[1]
                        barrier = CheckpointBarrier(cid, int(time.time() * 1000), options)
                        p.broadcast_event(barrier, is_priority=priority)
                        writer.finish_output(cid)
                        result = writer.get_and_remove_write_result(cid)
                        try:
                            out_state = {info.subpartition_idx: result.subpartition_bytes(info)
                                         for info in result.output_data}
                            size = result.size
                        finally:
                            result.recycle()
                        conn.send(("ack", "source", index, cid, {"offset": block, "out_state": out_state,
                                                                 "out_bytes": size}))
                    elif message[0] == "exit":
                        return
                if not p.is_available:
                    # back-pressured: wait for a buffer, but answer a trigger meanwhile (a source's
                    # mailbox takes the checkpoint between records, not inside a blocked write)
                    waited = time.monotonic()
                    try:
                        p.get_available_future().result(timeout=0.01)
                    except TimeoutError:
                        pass
                    backpressured += time.monotonic() - waited
                    continue
                keys, values = generate_block(cfg.seed, index, block, cfg.keys)
                targets = operator_indexes_array(keys.astype(np.int32), MAX_PARALLELISM, cfg.aggregators)
                p.emit_records(_encode(keys, values), targets)     # may still block (hard back-pressure)
                block += 1
                now = time.monotonic()
                if now - last_flush >= cfg.buffer_timeout_ms / 1000:
                    p.flush_all()
                    last_flush = now
                due = max(due + period, now - 0.05)
                if due > now:
                    time.sleep(due - now)
            p.finish()
        except ConsumerLostError as e:
            # a consumer went away (an aggregator was killed): the source fails, as Flink's task
            # does; the coordinator cancels and restores the job
            _send_failed(conn, "source", index, e)
            return
        conn.send(("status", "source", index, block * BLOCK, backpressured))
        conn.send(("finished", "source", index))
        # serve what is queued until the coordinator says the job is over
        while True:
            message = conn.recv()
            if message[0] == "exit":
                break
            if message[0] == "trigger":     # finished: it cannot take part (the checkpoint is declined)
                conn.send(("decline", "source", index, message[1]))
        p.close()


# ==============================================================================================
# The aggregator process
# ==============================================================================================

class _AggregatorState:
    """The aggregator as a :class:`~flinknet.checkpointing.CheckpointableTask`."""

    def __init__(self, keys: int, restore: dict[str, Any] | None) -> None:
        self.counts = np.zeros(keys, np.int64)
        self.sums = np.zeros(keys, np.int64)
        self.replayed = 0
        if restore is not None:
            self.counts += restore["counts"]
            self.sums += restore["sums"]
            for data in restore["channels"].values():          # the in-flight data first
                self.replayed += len(_add_records(split_records(data), self.counts, self.sums))
        self.pending: dict[int, tuple[np.ndarray, np.ndarray, Any]] = {}
        self.aborted: list[int] = []
        self.reader: Any = None

    def trigger_checkpoint_on_barrier(self, metadata: Any, options: Any, metrics: Any) -> None:
        self.pending[metadata.checkpoint_id] = (self.counts.copy(), self.sums.copy(), metrics)

    def abort_checkpoint_on_barrier(self, checkpoint_id: int, cause: Any) -> None:
        self.pending.pop(checkpoint_id, None)
        self.aborted.append(checkpoint_id)

    def prepare_input_snapshot(self, writer: Any, checkpoint_id: int) -> None:
        if self.reader is not None:
            self.reader.prepare_snapshot(writer, checkpoint_id)


def _aggregator_main(conn: multiprocessing.connection.Connection, cfg: CheckpointDemoConfig, index: int,
                     inputs: list[tuple[Any, tuple[str, int]]], restore: dict[str, Any] | None,
                     debloat: bool) -> None:
    """One aggregator: count and sum per key behind a checkpointed gate; ack each checkpoint
    once all its barriers arrived."""
    from flinknet import NetworkEnvironment
    from flinknet.checkpointing import InMemoryChannelStateWriter, SystemClock, create_checkpointed_input_gate
    from flinknet.consumer import RecordReader
    from flinknet.core import operator_indexes_array
    from flinknet.errors import CancelTaskError, PartitionNotFoundError, TransportError

    state = _AggregatorState(cfg.keys, restore)
    with NetworkEnvironment(cfg.net_options(debloat)) as env:
        gate = env.create_input_gate([(pid, index, addr) for pid, addr in inputs])
        writer = InMemoryChannelStateWriter()
        mode = "aligned" if cfg.mode == "aligned" and cfg.aligned_timeout_ms is None else "unaligned"
        cgate = create_checkpointed_input_gate(gate, state, mode, channel_state_writer=writer,
                                               task_name=f"Aggregator[{index}]", clock=SystemClock())
        reader = state.reader = RecordReader(cgate)
        conn.send(("ready",))
        if conn.recv()[0] != "go":
            return
        cgate.request_partitions()
        slow_rate: float | None = None
        slow_due = 0.0
        records_in = 0
        owners_ok = True
        status = _StatusClock()
        try:
            while True:
                if status.due():
                    conn.send(("status", "aggregator", index, int(state.counts.sum()), 0.0))
                while conn.poll(0):
                    message = conn.recv()
                    if message[0] == "slow":
                        slow_rate = message[1]
                        slow_due = time.monotonic()
                    elif message[0] == "fast":
                        slow_rate = None
                    elif message[0] == "exit":
                        return
                try:
                    batch = reader.read_batch(timeout=0.05)
                except TimeoutError:
                    batch = []
                except (TransportError, CancelTaskError, PartitionNotFoundError) as e:
                    # an upstream task failed (a source whose consumer was killed fails, as
                    # Flink's task does, and its connections close): this task fails too,
                    # quietly; the coordinator cancels and restores the job
                    _send_failed(conn, "aggregator", index, e)
                    return
                if batch is None:
                    break
                if batch:
                    keys = _add_records(batch, state.counts, state.sums)
                    n = len(keys)
                    records_in += n
                    # every record of this aggregator's key groups (one vectorised call per buffer)
                    owners_ok &= bool(np.all(operator_indexes_array(keys, MAX_PARALLELISM, cfg.aggregators)
                                             == index))
                    if slow_rate is not None:
                        slow_due = max(slow_due, time.monotonic() - 0.05) + n / slow_rate
                        delay = slow_due - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                _ack_complete(conn, index, state, writer)
            _ack_complete(conn, index, state, writer)
            conn.send(("status", "aggregator", index, int(state.counts.sum()), 0.0))
            conn.send(("result", index, {"counts": state.counts, "sums": state.sums, "records_in": records_in,
                                         "replayed": state.replayed, "owners_ok": owners_ok,
                                         "aborted": state.aborted}))
            while conn.recv()[0] != "exit":
                pass
        finally:
            cgate.close()
            writer.close()


def _send_failed(conn: multiprocessing.connection.Connection, role: str, index: int,
                 error: BaseException) -> None:
    """Tell the coordinator this task failed (it may have closed the pipe already: it cancels
    the job when the first task fails)."""
    try:
        conn.send(("failed", role, index, str(error)))
    except OSError:
        pass


def _ack_complete(conn: multiprocessing.connection.Connection, index: int, state: _AggregatorState,
                  writer: Any) -> None:
    """Ack every pending checkpoint whose barriers all arrived (its metrics are final)."""
    for cid in sorted(state.pending):
        counts, sums, metrics = state.pending[cid]
        if not metrics.is_complete:
            continue
        del state.pending[cid]
        result = writer.get_and_remove_write_result(cid)
        try:
            in_state = {info.input_channel_idx: result.channel_bytes(info) for info in result.input_data}
            in_bytes = result.size
        finally:
            result.recycle()
        conn.send(("ack", "aggregator", index, cid, {
            "counts": counts, "sums": sums, "in_state": in_state, "in_bytes": in_bytes,
            "alignment_ms": metrics.alignment_duration_nanos / 1e6,
            "start_delay_ms": metrics.checkpoint_start_delay_nanos / 1e6,
            "processed_during_alignment": metrics.bytes_processed_during_alignment or 0,
            "persisted_during_alignment": metrics.bytes_persisted_during_alignment}))


# ==============================================================================================
# The coordinator
# ==============================================================================================

@dataclasses.dataclass
class CheckpointStats:
    """One completed checkpoint as the coordinator saw it."""

    checkpoint_id: int
    attempt: int
    duration_ms: float
    #: per aggregator: alignment time (ms), bytes processed and persisted during alignment
    alignment_ms: list[float]
    start_delay_ms: list[float]
    processed_bytes: list[int]
    persisted_bytes: list[int]
    #: bytes of captured in-flight data: sources' output state, aggregators' input state
    output_state_bytes: int
    input_state_bytes: int
    slow: bool

    @property
    def in_flight_bytes(self) -> int:
        """What was in flight at the cut: persisted (unaligned) or processed while aligning."""
        return self.output_state_bytes + self.input_state_bytes + sum(self.processed_bytes)


@dataclasses.dataclass
class CheckpointDemoResult:
    """What :func:`run_checkpoint_demo` found."""

    ok: bool
    counts_ok: bool
    restored_from: int | None
    killed_pid: int | None
    checkpoints: list[CheckpointStats]
    records: int
    replayed_records: int
    mismatched_keys: int
    declined: int
    elapsed: float
    #: seconds from the last attempt's start to its end (the job's run, without spawning)
    run_seconds: float = 0.0


@dataclasses.dataclass
class TaskProgress:
    """One task as the coordinator last heard of it: what the views show per task."""

    name: str
    role: str
    pid: int | None = None
    #: starting | running | finished | killed | cancelled
    state: str = "starting"
    #: a source's position (records generated, restored offset included); an aggregator's
    #: records counted (restored counts included)
    records: int = 0
    #: records/s over the last report interval
    rate: float = 0.0
    #: fraction of the last report interval a source waited for a buffer (back-pressure)
    backpressured: float = 0.0
    #: the last checkpoint this task acknowledged, and what it measured for it
    checkpoint_id: int | None = None
    alignment_ms: float | None = None
    start_delay_ms: float | None = None
    #: in-flight bytes at the cut: a source's captured output; an aggregator's captured input
    #: plus what it processed while aligning
    in_flight_bytes: int | None = None
    last_report: tuple[float, int, float] | None = None

    def report(self, records: int, backpressured_s: float, now: float) -> None:
        """A task's progress report: cumulative records and seconds back-pressured."""
        if self.last_report is not None:
            t, n, bp = self.last_report
            dt = now - t
            if dt > 0:
                self.rate = max(records - n, 0) / dt
                self.backpressured = min(max(backpressured_s - bp, 0.0) / dt, 1.0)
        self.last_report = (now, records, backpressured_s)
        self.records = records


@dataclasses.dataclass
class JobProgress:
    """The checkpointed job as the coordinator sees it (what the views show)."""

    cfg: CheckpointDemoConfig
    debloat: bool
    started: float
    tasks: list[TaskProgress]
    #: starting | steady | slow | recovery | restored | finishing | done
    phase: str = "starting"
    attempt: int = 0
    restored_from: int | None = None
    #: the checkpoint triggered and not yet complete
    pending_id: int | None = None
    checkpoints: list[CheckpointStats] = dataclasses.field(default_factory=list)

    @classmethod
    def for_config(cls, cfg: CheckpointDemoConfig, debloat: bool) -> JobProgress:
        tasks = ([TaskProgress(f"Source[{i}]", "source") for i in range(cfg.sources)]
                 + [TaskProgress(f"Aggregator[{i}]", "aggregator") for i in range(cfg.aggregators)])
        return cls(cfg=cfg, debloat=debloat, started=time.monotonic(), tasks=tasks)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def running(self, pids: Sequence[int | None]) -> None:
        """A new attempt's processes started."""
        for task, pid in zip(self.tasks, pids, strict=True):
            task.pid, task.state, task.last_report = pid, "running", None
            task.rate = task.backpressured = 0.0

    def cancelled(self) -> None:
        for task in self.tasks:
            if task.state != "killed":
                task.state = "cancelled"
        self.pending_id = None

    def status(self, role: str, index: int, records: int, backpressured_s: float) -> None:
        self.tasks[self._index(role, index)].report(records, backpressured_s, time.monotonic())

    def acked(self, role: str, index: int, checkpoint_id: int, data: dict[str, Any]) -> None:
        task = self.tasks[self._index(role, index)]
        task.checkpoint_id = checkpoint_id
        if role == "source":
            task.in_flight_bytes = data["out_bytes"]
        else:
            task.alignment_ms = data["alignment_ms"]
            task.start_delay_ms = data["start_delay_ms"]
            task.in_flight_bytes = (data["in_bytes"] + data["processed_during_alignment"])

    def _index(self, role: str, index: int) -> int:
        return index if role == "source" else self.cfg.sources + index


class CheckpointView:
    """What :func:`run_checkpoint_demo` tells as the job runs (the default does nothing)."""

    def event(self, job: JobProgress, text: str) -> None:
        """Something happened: a phase began, a task was killed, the job restored."""

    def checkpoint(self, job: JobProgress, stats: CheckpointStats) -> None:
        """A checkpoint completed."""

    def update(self, job: JobProgress) -> None:
        """Called every loop of the coordinator (a view redraws at its own pace)."""

    def close(self) -> None:
        """The run is over."""


class LineView(CheckpointView):
    """A line per event and per completed checkpoint, to ``out`` (``--no-live``, logs, tests)."""

    def __init__(self, out: Any = None) -> None:
        self.out = sys.stdout if out is None else out

    def event(self, job: JobProgress, text: str) -> None:
        print(f"[{job.elapsed:6.2f}s] {text}", file=self.out)

    def checkpoint(self, job: JobProgress, stats: CheckpointStats) -> None:
        print(f"[{job.elapsed:6.2f}s] {describe_checkpoint(stats)}", file=self.out)


def describe_checkpoint(s: CheckpointStats) -> str:
    """One completed checkpoint in a sentence (what the line view prints)."""
    per_task = ", ".join(f"Aggregator[{i}] delay {s.start_delay_ms[i]:.0f} ms, align {ms:.0f} ms, in-flight "
                         f"{format_bytes(s.processed_bytes[i] + s.persisted_bytes[i])}"
                         for i, ms in enumerate(s.alignment_ms))
    return (f"checkpoint {s.checkpoint_id} complete in {s.duration_ms:.0f} ms"
            f"{' (slow phase)' if s.slow else ''}: {per_task}; channel state "
            f"{format_bytes(s.input_state_bytes)} in + {format_bytes(s.output_state_bytes)} out")


def restore_plan(cfg: CheckpointDemoConfig, completed: dict[str, Any],
                 drop_channel_state: bool = False) -> dict[str, list[dict[str, Any]]]:
    """What each task restarts from, given a complete checkpoint's acks. A source: its offset.
    An aggregator: its counts and, per input channel, the bytes in flight on that channel at the
    cut — the consumer's captured input, then the producer's captured output for it — which
    become whole records only together (a record may start in the first and end in the second:
    the barrier overtook the buffer holding its end), as Flink restores a channel's state on both
    ends before new data flows."""
    sources = [{"offset": completed["sources"][i]["offset"]} for i in range(cfg.sources)]
    aggregators = []
    for a in range(cfg.aggregators):
        ack = completed["aggregators"][a]
        channels = {}
        for s in range(cfg.sources):
            data = ack["in_state"].get(s, b"") + completed["sources"][s]["out_state"].get(a, b"")
            if data and not drop_channel_state:
                channels[s] = data
        aggregators.append({"counts": ack["counts"], "sums": ack["sums"], "channels": channels})
    return {"sources": sources, "aggregators": aggregators}


class _Job:
    """One attempt: the processes of every task, started from ``restore`` (or from scratch)."""

    def __init__(self, cfg: CheckpointDemoConfig, restore: dict[str, Any] | None, debloat: bool) -> None:
        self.cfg = cfg
        ctx = multiprocessing.get_context("spawn")
        self.procs: list[Any] = []
        self.sources: list[multiprocessing.connection.Connection] = []
        self.aggregators: list[multiprocessing.connection.Connection] = []
        def spawn(target: Any, name: str, *args: Any) -> multiprocessing.connection.Connection:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=target, args=(child, cfg, *args), name=name, daemon=True)
            proc.start()
            child.close()
            self.procs.append(proc)
            return parent

        def restored(role: str, i: int) -> dict[str, Any] | None:
            return None if restore is None else restore[role][i]

        try:
            self.sources = [spawn(_source_main, f"Source[{i}]", i, restored("sources", i), debloat)
                            for i in range(cfg.sources)]
            inputs = []
            for conn in self.sources:
                kind, address, pid = _recv(conn, START_TIMEOUT, "a source to start")
                inputs.append((pid, address))
            self.aggregators = [spawn(_aggregator_main, f"Aggregator[{i}]", i, inputs,
                                      restored("aggregators", i), debloat)
                                for i in range(cfg.aggregators)]
            for conn in self.aggregators:
                _recv(conn, START_TIMEOUT, "an aggregator to start")
            for conn in self.sources + self.aggregators:
                conn.send(("go",))
        except BaseException:
            self.kill()
            raise

    def pids(self) -> list[int | None]:
        return [proc.pid for proc in self.procs]

    def aggregator_process(self, index: int) -> Any:
        return self.procs[self.cfg.sources + index]

    def kill(self) -> None:
        """Cancel: every process is killed (the job restarts from a checkpoint, not from them)."""
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
        for proc in self.procs:
            proc.join(10)
        for conn in self.sources + self.aggregators:
            conn.close()

    def stop(self) -> None:
        """The job ended: tell every task, then reap them (killing a straggler)."""
        for conn in self.sources + self.aggregators:
            try:
                conn.send(("exit",))
            except OSError:
                pass
        for proc in self.procs:
            proc.join(10)
        self.kill()


def _recv(conn: multiprocessing.connection.Connection, timeout: float, what: str) -> Any:
    if not conn.poll(timeout):
        raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
    try:
        return conn.recv()
    except EOFError:
        raise RuntimeError(f"waiting for {what}: the process ended first (its error is above)") from None


def format_bytes(n: float) -> str:
    """``n`` bytes for people: B, KiB or MiB."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} MiB"


def run_checkpoint_demo(cfg: CheckpointDemoConfig, out: Any = None, debloat: bool | None = None,
                        kill: bool | None = None, slow_from: float = 0.25, slow_until: float = 0.75,
                        timeout: float = 600.0, drop_channel_state: bool = False,
                        view: CheckpointView | None = None) -> CheckpointDemoResult:
    """Run the checkpointed job once (kill and restore when ``kill``). ``view`` sees the job's
    progress (default: a :class:`LineView` printing a line per event and completed checkpoint to
    ``out``). ``slow_from``/``slow_until``: the slow phase, as fractions of the sources' nominal
    run time (records / rate). ``drop_channel_state`` (for tests: the check must then fail
    whenever in-flight data was captured) restores without the captured data. A
    ``checkpoint_interval_ms`` of 0 takes no checkpoint (the baseline of the cost benchmark)."""
    view = LineView(out) if view is None else view
    debloat = cfg.debloat == "on" if debloat is None else debloat
    kill = cfg.kill if kill is None else kill
    nominal = cfg.blocks * BLOCK / cfg.rate
    board = JobProgress.for_config(cfg, debloat)
    t0 = board.started
    deadline = t0 + timeout
    completed: dict[str, Any] | None = None
    completed_id: int | None = None
    killed_pid: int | None = None
    next_id = 1
    declined = 0
    replayed = 0
    run_seconds = 0.0
    results: dict[int, dict[str, Any]] = {}
    while True:
        board.phase = "starting"
        view.update(board)
        job = _Job(cfg, None if completed is None else restore_plan(cfg, completed, drop_channel_state),
                   debloat)
        started = time.monotonic()
        board.running(job.pids())
        board.phase = "steady" if board.attempt == 0 else "restored"
        pending: dict[int, dict[str, Any]] = {}
        interval = cfg.checkpoint_interval_ms / 1000
        next_trigger = started + interval if interval else float("inf")
        slow_state = "before"
        kill_after = float("inf")
        sources_done: set[int] = set()
        results = {}
        killed = False
        try:
            while len(results) < cfg.aggregators:
                now = time.monotonic()
                if now > deadline:
                    raise RuntimeError(f"the job did not finish within {timeout:g} s")
                phase_t = (now - started) / nominal if board.attempt == 0 else 1.0
                if slow_state == "before" and slow_from <= phase_t < slow_until:
                    slow_state = board.phase = "slow"
                    # the kill waits for a checkpoint taken once the slow phase has had time to
                    # fill the buffers (a third of it in)
                    kill_after = now + (slow_until - slow_from) * nominal / 3
                    job.aggregators[cfg.slow_aggregator].send(("slow", cfg.slow_rate))
                    view.event(board, f"slow phase: Aggregator[{cfg.slow_aggregator}] slowed to "
                                      f"{cfg.slow_rate} records/s")
                elif slow_state == "slow" and phase_t >= slow_until:
                    slow_state = "after"
                    board.phase = "recovery"
                    job.aggregators[cfg.slow_aggregator].send(("fast",))
                    view.event(board, "slow phase over")
                # the kill: in the slow phase, once a checkpoint taken in it completed (or, if
                # none did by the slow phase's middle, from the last one before it)
                if (kill and board.attempt == 0 and slow_state == "slow" and completed is not None
                        and (completed["t"] >= kill_after or phase_t >= (slow_from + slow_until) / 2)):
                    proc = job.aggregator_process(cfg.slow_aggregator)
                    killed_pid = proc.pid
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.join(10)
                    board.tasks[cfg.sources + cfg.slow_aggregator].state = "killed"
                    view.event(board, f"killed Aggregator[{cfg.slow_aggregator}] (pid {killed_pid}, "
                                      f"SIGKILL); cancelling the job")
                    killed = True
                    break
                if not pending and now >= next_trigger and not sources_done:
                    cid, next_id = next_id, next_id + 1
                    pending[cid] = {"t": now, "sources": {}, "aggregators": {}, "slow": slow_state == "slow"}
                    board.pending_id = cid
                    for conn in job.sources:
                        conn.send(("trigger", cid))
                    next_trigger = now + interval
                conns = job.sources + job.aggregators
                ready = multiprocessing.connection.wait(conns + [p.sentinel for p in job.procs], timeout=0.05)
                for item in ready:
                    if not isinstance(item, multiprocessing.connection.Connection):
                        dead = next(p for p in job.procs if p.sentinel == item)
                        if dead.exitcode not in (0, None):
                            raise RuntimeError(f"{dead.name} (pid {dead.pid}) died with exit code "
                                               f"{dead.exitcode}")
                        continue
                    try:
                        message = item.recv()
                    except EOFError:
                        continue
                    kind = message[0]
                    if kind == "status":
                        board.status(*message[1:])
                    elif kind == "ack":
                        _, role, index, cid, data = message
                        if cid in pending:
                            board.acked(role, index, cid, data)
                            pending[cid]["sources" if role == "source" else "aggregators"][index] = data
                            entry = pending[cid]
                            if (len(entry["sources"]) == cfg.sources
                                    and len(entry["aggregators"]) == cfg.aggregators):
                                del pending[cid]
                                completed = entry
                                completed_id = cid
                                s = _stats(cid, board.attempt, entry, time.monotonic())
                                board.checkpoints.append(s)
                                board.pending_id = None
                                view.checkpoint(board, s)
                    elif kind == "decline":
                        cid = message[3]
                        if pending.pop(cid, None) is not None:
                            declined += 1
                            board.pending_id = None
                    elif kind == "failed":
                        role = "Source" if message[1] == "source" else "Aggregator"
                        raise RuntimeError(f"{role}[{message[2]}] failed: {message[3]}")
                    elif kind == "finished":
                        sources_done.add(message[2])
                        board.tasks[message[2]].state = "finished"
                        if len(sources_done) == cfg.sources:
                            board.phase = "finishing"
                    elif kind == "result":
                        results[message[1]] = message[2]
                        board.tasks[cfg.sources + message[1]].state = "finished"
                view.update(board)
        except BaseException:
            job.kill()
            raise
        if killed:
            job.kill()
            board.cancelled()
            assert completed is not None and completed_id is not None
            board.attempt += 1
            board.restored_from = completed_id
            out_bytes = sum(len(b) for v in completed["sources"].values() for b in v["out_state"].values())
            in_bytes = sum(len(b) for v in completed["aggregators"].values() for b in v["in_state"].values())
            offsets = [completed["sources"][i]["offset"] * BLOCK for i in range(cfg.sources)]
            view.event(board, f"restoring every task from checkpoint {completed_id}: sources rewound to "
                              f"records {offsets}, aggregators' counts restored, their channels replay "
                              f"{format_bytes(in_bytes)} of captured input and {format_bytes(out_bytes)} of "
                              f"captured output" + (" (dropped: testing)" if drop_channel_state else ""))
            continue
        run_seconds = time.monotonic() - started
        job.stop()
        board.phase = "done"
        view.update(board)
        break
    counts = np.zeros(cfg.keys, np.int64)
    sums = np.zeros(cfg.keys, np.int64)
    owners_ok = True
    for r in results.values():
        counts += r["counts"]
        sums += r["sums"]
        replayed += r["replayed"]
        owners_ok = owners_ok and r["owners_ok"]
    want_counts, want_sums = expected_totals(cfg)
    bad = int(np.count_nonzero((counts != want_counts) | (sums != want_sums)))
    counts_ok = bad == 0 and owners_ok
    ok = counts_ok and (not kill or board.restored_from is not None)
    return CheckpointDemoResult(ok=ok, counts_ok=counts_ok, restored_from=board.restored_from,
                                killed_pid=killed_pid, checkpoints=board.checkpoints,
                                records=int(want_counts.sum()), replayed_records=replayed,
                                mismatched_keys=bad, declined=declined, elapsed=time.monotonic() - t0,
                                run_seconds=run_seconds)


def _stats(cid: int, attempt: int, entry: dict[str, Any], now: float) -> CheckpointStats:
    aggs = [entry["aggregators"][i] for i in sorted(entry["aggregators"])]
    return CheckpointStats(
        checkpoint_id=cid, attempt=attempt, duration_ms=(now - entry["t"]) * 1000,
        alignment_ms=[a["alignment_ms"] for a in aggs],
        start_delay_ms=[a["start_delay_ms"] for a in aggs],
        processed_bytes=[a["processed_during_alignment"] for a in aggs],
        persisted_bytes=[a["persisted_during_alignment"] for a in aggs],
        output_state_bytes=sum(s["out_bytes"] for s in entry["sources"].values()),
        input_state_bytes=sum(a["in_bytes"] for a in aggs), slow=entry["slow"])


def compare_debloating(cfg: CheckpointDemoConfig, out: Any = None,
                       view: CheckpointView | None = None) -> dict[bool, list[CheckpointStats]]:
    """The slow phase twice, debloating off then on (no kill): the checkpoints taken while an
    aggregator is slowed, side by side (``view`` sees both runs; the table goes to ``out``)."""
    out = sys.stdout if out is None else out
    found: dict[bool, list[CheckpointStats]] = {}
    for debloat in (False, True):
        if view is None:
            print(f"-- slow phase with buffer debloating {'on' if debloat else 'off'}", file=out)
        result = run_checkpoint_demo(cfg, out, debloat=debloat, kill=False, slow_from=0.0, slow_until=2.0,
                                     view=view)
        if not result.counts_ok:
            raise RuntimeError(f"the debloat={debloat} run lost or duplicated records")
        found[debloat] = [s for s in result.checkpoints if s.slow]
    if view is not None:
        view.close()
    print(format_debloat_comparison(found), file=out)
    return found


@dataclasses.dataclass(frozen=True)
class CheckpointSummary:
    """Medians over some checkpoints (those taken in a slow phase): how long a checkpoint took,
    how long its barrier travelled behind the queued data to the slowest aggregator
    (``checkpointStartDelayNanos``, the largest over the aggregators), its alignment time (the
    largest) and the in-flight bytes at the cut (:attr:`CheckpointStats.in_flight_bytes`). None
    where no checkpoint was taken."""

    checkpoints: int
    duration_ms: float | None
    start_delay_ms: float | None
    alignment_ms: float | None
    in_flight_bytes: float | None

    @classmethod
    def of(cls, stats: Sequence[CheckpointStats]) -> CheckpointSummary:
        def median(values: list[float]) -> float | None:
            return float(np.median(values)) if values else None

        return cls(len(stats), median([s.duration_ms for s in stats]),
                   median([max(s.start_delay_ms) for s in stats]),
                   median([max(s.alignment_ms) for s in stats]),
                   median([s.in_flight_bytes for s in stats]))


def format_checkpoint_comparison(found: Mapping[str, Sequence[CheckpointStats]], label: str = "run") -> str:
    """Runs side by side, one line per run (``found``: its name -> its checkpoints), with the
    medians of :class:`CheckpointSummary`."""
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    width = max([len(label), *map(len, found)]) + 2
    lines = [f"{label:<{width}}{'checkpoints':>12}{'duration ms':>13}{'start delay ms':>16}"
             f"{'alignment ms':>14}{'in-flight':>12}"]
    for name, stats in found.items():
        m = CheckpointSummary.of(stats)
        lines.append(f"{name:<{width}}{m.checkpoints:>12}{ms(m.duration_ms):>13}{ms(m.start_delay_ms):>16}"
                     f"{ms(m.alignment_ms):>14}"
                     f"{'-' if m.in_flight_bytes is None else format_bytes(m.in_flight_bytes):>12}")
    return "\n".join(lines)


def format_debloat_comparison(found: dict[bool, list[CheckpointStats]]) -> str:
    """The slow-phase checkpoints of the two runs of :func:`compare_debloating` side by side."""
    return format_checkpoint_comparison({"off": found.get(False, []), "on": found.get(True, [])},
                                        label="debloating")


# ==============================================================================================
# Command line
# ==============================================================================================

def _mode(text: str) -> tuple[str, int | None]:
    if text in MODES:
        return text, None
    if text.startswith("timeout:"):
        try:
            ms = int(text[len("timeout:"):])
        except ValueError:
            ms = -1
        if ms >= 0:
            return "aligned", ms
    raise argparse.ArgumentTypeError(
        f"--checkpointing must be aligned, unaligned or timeout:MS (MS >= 0), got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """The options of ``flinknet demo --checkpointing MODE``."""
    d = CheckpointDemoConfig()
    p = argparse.ArgumentParser(
        prog="flinknet demo --checkpointing MODE",
        description="The keyed job with periodic checkpoints across processes: an aggregator is "
                    "slowed, then killed; every task restarts from the last complete checkpoint "
                    "(state, captured in-flight data, sources rewound) and every key's count and "
                    "sum is checked.")
    p.add_argument("--checkpointing", type=_mode, required=True, metavar="MODE",
                   help="aligned | unaligned | timeout:MS (aligned barriers that turn unaligned "
                        "after MS ms of alignment)")
    p.add_argument("--sources", type=int_in("sources", 1), default=d.sources, metavar="N")
    p.add_argument("--aggregators", type=int_in("aggregators", 1), default=d.aggregators, metavar="N")
    p.add_argument("--keys", type=int_in("keys", 1), default=d.keys, metavar="N")
    p.add_argument("--records", type=int_in("records", 1), default=d.records, metavar="N",
                   help=f"records per source (default {d.records})")
    p.add_argument("--rate", type=int_in("rate", 1), default=d.rate, metavar="R",
                   help=f"records/s per source (default {d.rate})")
    p.add_argument("--checkpoint-interval", type=int_in("checkpoint interval", 10),
                   default=d.checkpoint_interval_ms, metavar="MS")
    p.add_argument("--slow-rate", type=int_in("slow rate", 1), default=d.slow_rate, metavar="R",
                   help=f"records/s the slowed aggregator keeps (default {d.slow_rate})")
    p.add_argument("--no-kill", dest="kill", action="store_false",
                   help="do not kill and restore an aggregator")
    p.add_argument("--debloat", choices=("off", "on", "compare"), default=d.debloat,
                   help="buffer debloating; compare: two more runs of the slow phase, off and on")
    p.add_argument("--network-memory", default=d.network_memory, metavar="SIZE")
    live = p.add_mutually_exclusive_group()
    live.add_argument("--live", dest="live", action="store_true", default=None,
                      help="live terminal view: per task its checkpoint, alignment time and in-flight "
                           "bytes (the default when stdout is a terminal)")
    live.add_argument("--no-live", dest="live", action="store_false",
                      help="a line per event and completed checkpoint instead")
    p.add_argument("--seed", type=int_in("seed", 0), default=d.seed, help=argparse.SUPPRESS)
    return p


def parse_config(argv: Sequence[str] | None) -> CheckpointDemoConfig:
    """A validated :class:`CheckpointDemoConfig` (argparse exits with status 2 on bad arguments)."""
    return parse_args(argv)[0]


def parse_args(argv: Sequence[str] | None) -> tuple[CheckpointDemoConfig, bool | None]:
    """The run's configuration and ``--live`` (True), ``--no-live`` (False) or neither (None)."""
    args = build_parser().parse_args(argv)
    mode, timeout_ms = args.checkpointing
    return CheckpointDemoConfig(
        mode=mode, aligned_timeout_ms=timeout_ms, sources=args.sources, aggregators=args.aggregators,
        keys=args.keys, records=args.records, rate=args.rate, checkpoint_interval_ms=args.checkpoint_interval,
        slow_rate=args.slow_rate, kill=args.kill, debloat=args.debloat, network_memory=args.network_memory,
        seed=args.seed), args.live
