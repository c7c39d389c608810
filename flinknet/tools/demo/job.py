"""The job of ``flinknet demo``: a keyed streaming job, deployed by a :mod:`flinknet.graph` runner.

The job is Flink's classic keyed aggregation as a :class:`~flinknet.graph.JobGraph`
(:func:`build_graph`), each subtask with its own :class:`~flinknet.environment.NetworkEnvironment`
(with the process and Ray runners: one process each, connected by flinknet's TCP transport with
credit-based flow control)::

    Source[0..S-1] --key_groups (KeyGroupStreamPartitioner, max parallelism 128)--> Aggregator[0..A-1]
        --rebalance--> Sink[0]

* **Sources** generate ``(key, value)`` events (``--keys`` keys, values 1..999, ``--record-size``
  bytes each, as Flink ``StreamRecord``\\ s with a timestamp) at ``--rate`` records/s, wait
  (soft back-pressure) while their output is unavailable, and emit a ``LatencyMarker`` every
  ``--latency-interval`` ms (in-band, so markers queue behind records exactly as records do).
* **Aggregators** keep count and sum per key, forward latency markers to a random output channel
  (as Flink does) and send their changed running totals to the sink every 200 ms; at the end of
  their input (EndOfPartition from every source) they send their final totals.
* The **sink** keeps the latest totals per key and measures latency from the markers.

The task functions (:func:`run_source`, :func:`run_aggregator`, :func:`run_sink`; bound to the
:class:`DemoConfig` by :func:`task_functions`) take their writer and reader from the
:class:`~flinknet.graph.TaskContext`, report a :class:`TaskStatus` every
:data:`STATUS_INTERVAL` seconds (``ctx.report``), wait for the coordinator's ``("start", phase,
params)`` message, follow its ``("phase", phase, params)`` and ``("stop",)`` messages
(``ctx.next_message``) and return their result (:class:`SourceResult`, :class:`AggregatorResult`,
:class:`SinkResult`), which the runner brings back to the coordinator
(:mod:`flinknet.tools.demo.coordinator`). :func:`check_exactly_once` is the end-of-job check:
every key's count and sum at the sink against what the sources produced (nothing lost, nothing
duplicated).

Metrics are flinknet's (Flink's names): each task registers
:class:`~flinknet.metrics.task.TaskIOMetrics` over one-second windows for its writer and reader
in its own :class:`~flinknet.metrics.MetricRegistry` (updated every second); the sink reports
latency markers to :class:`~flinknet.metrics.latency.LatencyStats`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, NotRequired, TypedDict

import numpy as np

from flinknet.config import parse_memory_size
from flinknet.consumer import RecordReader, SingleInputGate
from flinknet.consumer.remote import RemoteInputChannel
from flinknet.core import LatencyMarker, StreamElementSerializer, StreamRecord, operator_indexes_array
from flinknet.environment import NetworkEnvironment
from flinknet.errors import CancelTaskError
from flinknet.graph import JobGraph, TaskContext, TaskFunction
from flinknet.ids import OperatorID
from flinknet.metrics import (
    Counter,
    Histogram,
    MeterView,
    MetricGroup,
    MetricRegistry,
    register_network_buffer_pool_metrics,
)
from flinknet.metrics.latency import LatencyMarkerEmitter, LatencyStats, forward_latency_marker
from flinknet.metrics.registry import value_of
from flinknet.metrics.task import TaskIOMetrics
from flinknet.writer import RecordWriter

__all__ = ["AggregatorResult", "AggregatorTask", "ChannelStatus", "CheckResult", "DemoConfig", "RUNNERS",
           "SinkResult", "SinkTask", "SourceResult", "SourceTask", "TaskResult", "TaskStatus", "build_graph",
           "check_exactly_once", "latency_of", "record_dtype", "run_aggregator", "run_sink", "run_source",
           "task_functions"]

#: Flink's max parallelism for the keyed edge (the number of key groups).
MAX_PARALLELISM = 128
#: The host in every metric scope (the tasks run on loopback).
HOST = "127.0.0.1"
JOB_NAME = "demo"
PHASES = ("steady", "slow", "recovery")
#: Fractions of ``--duration`` at which the scripted phases start.
PHASE_STARTS = {"steady": 0.0, "slow": 0.30, "recovery": 0.65}
#: Seconds between two status messages of a task.
STATUS_INTERVAL = 0.5
#: Seconds a task's control thread waits for a message before it checks whether the task ended.
CONTROL_POLL = 0.25
#: Milliseconds between two batches of running totals from an aggregator to the sink.
EMIT_INTERVAL_MS = 200
#: Seconds the job gets to end after it was cancelled before its workers are terminated, then killed.
EXIT_GRACE = 10.0
MIN_RECORD_SIZE = 12          # key (int32) + value (int64)
UPDATE = np.dtype([("k", ">i4"), ("c", ">i8"), ("s", ">i8"), ("f", "u1")])   # aggregator → sink
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: Where the tasks run (``--runner``): flinknet.graph's ProcessRunner, RayRunner, ThreadRunner.
RUNNERS = ("process", "ray", "thread")

ROLE_SOURCE, ROLE_AGGREGATOR, ROLE_SINK = "Source", "Aggregator", "Sink"
ROLES = (ROLE_SOURCE, ROLE_AGGREGATOR, ROLE_SINK)
#: Operator ids (Flink's 128-bit OperatorID as two longs) of the three operators.
OPERATOR_IDS = {ROLE_SOURCE: (0x5EED, 0x50C0), ROLE_AGGREGATOR: (0xA66, 0xA66), ROLE_SINK: (0x5111, 0x5111)}


# ==============================================================================================
# Configuration
# ==============================================================================================

@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Everything a run of the demo depends on (validated by
    :func:`flinknet.tools.demo.coordinator.parse_config`)."""

    duration: float = 28.0
    sources: int = 2
    aggregators: int = 2
    keys: int = 1000
    record_size: int = 100
    buffer_timeout: int = 100
    rate: int = 100_000
    latency_interval: int = 200
    slow_aggregator: int = 0
    slow_factor: float = 0.1
    network_memory: str = "16mb"
    interval: float = 1.0
    live: bool | None = None
    prometheus: int | None = None
    runner: str = "process"
    seed: int = 0
    inject_loss: int = 0
    inject_failure: str | None = None

    @property
    def num_tasks(self) -> int:
        """Subtasks of the job: the sources, the aggregators and the sink."""
        return self.sources + self.aggregators + 1

    def phase_schedule(self) -> list[tuple[str, float]]:
        """``(phase, start second)`` of the scripted phases, in order."""
        return [(p, PHASE_STARTS[p] * self.duration) for p in PHASES]

    def net_options(self, tasks: int = 1) -> dict[str, Any]:
        """The NetworkEnvironment options of a worker running ``tasks`` subtasks
        (``--network-memory`` per subtask)."""
        size: int | str = self.network_memory if tasks == 1 else \
            parse_memory_size(self.network_memory, "--network-memory") * tasks
        return {"taskmanager.memory.network.max": size, "taskmanager.memory.network.min": size}


# ==============================================================================================
# What the tasks report (pickled by the runners: plain dicts at run time)
# ==============================================================================================

#: Credit and backlog of one remote input channel in a status (``from``: the producer task).
ChannelStatus = TypedDict("ChannelStatus", {
    "from": str, "credit": int, "backlog": int, "queued": int, "exclusive_used": int, "exclusive": int,
    "floating": int})

#: One metric of a status: ``(root, steps, name, kind, value)`` (see :meth:`_TaskMetrics.describe`).
MetricEntry = tuple[str, tuple[tuple[Any, ...], ...], str, str, Any]


class TaskStatus(TypedDict):
    """What a task reports every :data:`STATUS_INTERVAL` seconds (:meth:`_Task.status`), from the
    moment it is set up (state ``ready``) to its end (state ``finished``)."""

    t: float
    #: the process the task runs in and where its environment serves its partitions
    pid: int
    address: tuple[str, int]
    phase: str
    #: the phase the metrics' last one-second window lay in entirely (None: it spanned a change)
    window_phase: str | None
    views_updated: bool
    state: str
    rss: int
    metrics: list[MetricEntry]
    #: the task group's metric values by relative name (``Shuffle.Netty.Input.Buffers.inPoolUsage``)
    values: dict[str, Any]
    channels: list[ChannelStatus]
    #: aggregators: the records/s the slow phase slows this one to (None: it is not slowed)
    slowed_to: NotRequired[float | None]


class _ExtraStatus(TypedDict, total=False):
    slowed_to: float | None


class TaskResult(TypedDict, total=False):
    """What every task's result carries besides its own: its TaskIOMetrics record counters at the
    end (Flink's metric names)."""

    numRecordsIn: int
    numRecordsOut: int


class SourceResult(TaskResult):
    """A source's result: records generated and emitted, count and sum per key of the generated."""

    generated: int
    emitted: int
    counts: np.ndarray
    sums: np.ndarray


class AggregatorResult(TaskResult):
    """An aggregator's result: records in, those of keys it does not own, its steady/slowed rate."""

    records_in: int
    misrouted: int
    steady_rate: float | None
    slow_rate: float | None


class SinkResult(TaskResult):
    """The sink's result: the latest count and sum per key, whether final, latencies by phase (ms)."""

    counts: np.ndarray
    sums: np.ndarray
    final: np.ndarray
    updates_in: int
    latency_by_phase: dict[str, list[int]]


# ==============================================================================================
# Helpers
# ==============================================================================================

def operator_id(role: str) -> OperatorID:
    """The fixed :class:`~flinknet.ids.OperatorID` of the demo's operator ``role``."""
    return OperatorID.from_parts(*OPERATOR_IDS[role])


def task_name(role: str, index: int) -> str:
    """How the demo names a subtask: ``Source[0]``."""
    return f"{role}[{index}]"


def rss_bytes() -> int:
    """This process's resident set size (psutil if importable, else ``/proc/self/statm``)."""
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]  # optional: flinknet[test]
    except ImportError:
        psutil = None
    if psutil is not None:
        return psutil.Process().memory_info().rss
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def record_dtype(record_size: int) -> np.dtype:
    """A source event as numpy sees it: key (int32 BE), value (int64 BE), padding."""
    fields = [("k", ">i4"), ("v", ">i8")]
    if record_size > MIN_RECORD_SIZE:
        fields.append(("p", f"V{record_size - MIN_RECORD_SIZE}"))
    return np.dtype(fields)


_KEY = struct.Struct(">i").unpack_from


def record_key(record: StreamRecord) -> int:
    """The key of a source event (a ``StreamRecord`` whose value starts with the key): the key
    selector of the keyed edge (module level, so the runners can pickle the graph)."""
    return _KEY(record.value)[0]


def build_graph(cfg: DemoConfig) -> JobGraph:
    """The demo's job: ``Source`` (``--sources``) → key groups (max parallelism 128) →
    ``Aggregator`` (``--aggregators``) → rebalance → ``Sink`` (1), every edge carrying Flink
    stream elements (records with timestamps and latency markers) with ``--buffer-timeout``."""
    g = JobGraph(JOB_NAME)
    sources = g.add_vertex(ROLE_SOURCE, cfg.sources)
    aggregators = g.add_vertex(ROLE_AGGREGATOR, cfg.aggregators, max_parallelism=MAX_PARALLELISM)
    sink = g.add_vertex(ROLE_SINK, 1)
    g.connect(sources, aggregators, "key_groups", key_selector=record_key,
              serializer=StreamElementSerializer("bytes"), buffer_timeout=cfg.buffer_timeout)
    g.connect(aggregators, sink, "rebalance", serializer=StreamElementSerializer("bytes"),
              buffer_timeout=cfg.buffer_timeout)
    return g


def task_functions(cfg: DemoConfig) -> dict[str, TaskFunction]:
    """The task function of every vertex of :func:`build_graph`, bound to ``cfg`` (picklable)."""
    return {ROLE_SOURCE: functools.partial(run_source, cfg),
            ROLE_AGGREGATOR: functools.partial(run_aggregator, cfg),
            ROLE_SINK: functools.partial(run_sink, cfg)}


def run_source(cfg: DemoConfig, ctx: TaskContext) -> SourceResult:
    """The task function of the sources."""
    return SourceTask(ctx, cfg).run()


def run_aggregator(cfg: DemoConfig, ctx: TaskContext) -> AggregatorResult:
    """The task function of the aggregators."""
    return AggregatorTask(ctx, cfg).run()


def run_sink(cfg: DemoConfig, ctx: TaskContext) -> SinkResult:
    """The task function of the sink."""
    return SinkTask(ctx, cfg).run()


# ==============================================================================================
# Tasks
# ==============================================================================================

class _TaskMetrics:
    """A task's metrics: its registry (updated every second), its task group with
    :class:`~flinknet.metrics.task.TaskIOMetrics` over one-second windows and its environment's
    network pool gauges.

    The task context's own ``ctx.metrics`` live in the worker's registry, which no thread updates
    (their rates and timers stay at 0) and which averages over 60 s: the demo registers the
    context's writer and reader here as well, which hooks their back-pressure and idle timers to
    these metrics (a writer, partition or gate has one timer of each kind; the last registration
    wins)."""

    def __init__(self, role: str, index: int, env: NetworkEnvironment) -> None:
        tm_id = f"tm-{os.getpid()}"
        self.registry = MetricRegistry(update_interval=1)
        self.group = self.registry.task_group(role, index, job_name=JOB_NAME, host=HOST, tm_id=tm_id)
        self.tm_group = self.registry.task_manager_group(HOST, tm_id)
        register_network_buffer_pool_metrics(self.tm_group, env.network_buffer_pool)
        # Meters and timers over one second: the live view reacts within a second.
        self.io = TaskIOMetrics(self.group, time_span_seconds=1)

    def describe(self) -> tuple[list[MetricEntry], dict[str, Any]]:
        """Every metric as ``(root, steps, name, kind, value)`` (for the coordinator's mirror)
        and the task group's values by relative name (``Shuffle.Netty.Input.Buffers.inPoolUsage``)."""
        out: list[MetricEntry] = []
        values: dict[str, Any] = {}
        roots = (("task", self.group), ("tm", self.tm_group))
        for group, name, metric in self.registry.collect():
            found = next(((root_name, root) for root_name, root in roots
                          if group.scope[:len(root.scope)] == root.scope), None)
            if found is None:
                continue
            root_name, root = found
            if isinstance(metric, Histogram):
                kind = "histogram"
            elif isinstance(metric, MeterView):
                kind = "meter"
            elif isinstance(metric, Counter):
                kind = "counter"
            else:
                kind = "gauge"
            try:
                value = value_of(metric)
            except Exception:  # noqa: BLE001 (a gauge over released resources)
                continue
            out.append((root_name, _steps(root, group), name, kind, value))
            if root_name == "task":
                values[".".join(group.scope[len(root.scope):] + (name,))] = value
        return out, values

    def close(self) -> None:
        try:
            self.io.close()
        finally:
            self.registry.close()


def _steps(root: MetricGroup, group: MetricGroup) -> tuple[tuple[Any, ...], ...]:
    """The ``add_group`` calls leading from ``root`` to ``group``: ``(name,)`` or, for Flink's
    key-value groups, ``(key, value)``."""
    rel_scope = group.scope[len(root.scope):]
    rel_logical = group.logical_scope[len(root.logical_scope):]
    key_values = len(rel_scope) - len(rel_logical)
    steps: list[tuple[Any, ...]] = []
    i = j = 0
    while i < len(rel_scope):
        name = rel_scope[i]
        value = group.variables.get(name)
        if (key_values > 0 and i + 1 < len(rel_scope) and j < len(rel_logical) and rel_logical[j] == name
                and value is not None and name not in root.variables
                and str(value).replace(".", "_") == rel_scope[i + 1]):     # the value as a scope component
            steps.append((name, value))
            i += 2
            key_values -= 1
        else:
            steps.append((name,))
            i += 1
        j += 1
    return tuple(steps)


class _Task:
    """What every task does: set up its writer and reader, report, wait for the start, run its
    loop (:meth:`process`), return its result.

    Three threads: the task thread (:meth:`run`, called by the runner), the control thread
    (the coordinator's messages, :meth:`control_loop`) and the status thread
    (:meth:`status_loop`). A cancelled job fails the task's partitions and closes its gates (the
    runner does): the task thread wakes wherever it waits on them, the control thread stops the
    loop."""

    role = ""

    def __init__(self, ctx: TaskContext, cfg: DemoConfig):
        self.ctx = ctx
        self.index = ctx.subtask_index
        self.cfg = cfg
        self.name = task_name(self.role, self.index)
        self.phase = "startup"
        self.phase_params: dict[str, Any] = {}
        self.state = "starting"
        self.metrics: _TaskMetrics | None = None
        self.gate: SingleInputGate | None = None
        #: the producer task of each input channel, in the gate's channel order
        self.channel_sources: list[str] = []
        self.stop = threading.Event()
        #: set when the task thread leaves :meth:`run`: the control and status threads end
        self.ended = threading.Event()
        self.cancelled = threading.Event()
        self.phase_since = time.monotonic()
        #: the phase the metrics' last one-second window lay in entirely (None: it spanned a change)
        self.window_phase: str | None = None
        self._last_update: float | None = None
        self._updates = 0

    # -- commands (control thread) ---------------------------------------------------------

    def control_loop(self) -> None:
        while not self.ended.is_set():
            try:
                message = self.ctx.next_message(timeout=CONTROL_POLL)
            except CancelTaskError:
                self.cancel()
                return
            if message is not None:
                self.on_message(message)

    def on_message(self, message: Any) -> None:
        kind = message[0]
        if kind in ("start", "phase"):
            self.set_phase(message[1], message[2])
        elif kind == "stop":
            self.stop.set()

    def set_phase(self, phase: str, params: dict[str, Any]) -> None:
        self.phase_params = params
        self.phase = phase
        self.phase_since = time.monotonic()

    def on_metrics_update(self, snapshot: dict[str, Any]) -> None:
        """After each registry update (views refreshed): note whether the one-second window the
        rates and timers now describe lay entirely in one phase (registry thread)."""
        now = time.monotonic()
        start, self._last_update = self._last_update, now
        self.window_phase = self.phase if start is not None and self.phase_since <= start else None
        self._updates += 1

    def cancel(self) -> None:
        """The job was cancelled: end the task's loop (its partitions and gates are already
        failed and closed by the runner, which wakes the task thread if it waits on them)."""
        self.cancelled.set()
        self.stop.set()

    def wait_for_start(self) -> None:
        """Wait for the coordinator's ``start`` message (raises
        :class:`~flinknet.errors.CancelTaskError` if the job is cancelled meanwhile)."""
        while True:
            message = self.ctx.next_message(timeout=1.0)
            if message is None:
                continue
            self.on_message(message)
            if message[0] == "start":
                return

    # -- status (status thread) ------------------------------------------------------------

    def status_loop(self) -> None:
        while True:
            self.send_status()
            if self.ended.wait(STATUS_INTERVAL):
                return

    def send_status(self) -> None:
        try:
            self.ctx.report(self.status())
        except Exception:  # noqa: BLE001 (a status must never kill the task)
            pass

    def status(self) -> TaskStatus:
        updates, window_phase = self._updates, self.window_phase
        metrics, values = self.metrics.describe() if self.metrics is not None else ([], {})
        if updates != self._updates:        # the views moved on while being read
            window_phase = None
        host, port = self.ctx.environment.address
        return {"t": time.monotonic(), "pid": os.getpid(), "address": (host, port), "phase": self.phase,
                "window_phase": window_phase, "views_updated": updates > 0, "state": self.state,
                "rss": rss_bytes(), "metrics": metrics, "values": values, "channels": self.channel_status(),
                **self.extra_status()}

    def extra_status(self) -> _ExtraStatus:
        return {}

    def channel_status(self) -> list[ChannelStatus]:
        """Credit and backlog of every remote input channel (the thread runner has only local ones)."""
        gate, sources = self.gate, self.channel_sources
        if gate is None:
            return []
        out: list[ChannelStatus] = []
        for i, ch in enumerate(list(gate.input_channels)):
            if not isinstance(ch, RemoteInputChannel):
                continue
            out.append({"from": sources[i] if i < len(sources) else str(i), "credit": ch.credit,
                        "backlog": ch.sender_backlog, "queued": ch.number_of_queued_buffers,
                        "exclusive_used": ch.exclusive_buffers_used, "exclusive": ch.initial_credit,
                        "floating": ch.floating_buffers_available})
        return out

    # -- lifecycle (task thread) -----------------------------------------------------------

    def run(self) -> Any:
        """The task function's body: its result, or an exception (the runner fails the job)."""
        self.setup()
        self.metrics = metrics = _TaskMetrics(self.role, self.index, self.ctx.environment)
        status_thread: threading.Thread | None = None
        try:
            self.register_metrics(metrics)
            metrics.registry.subscribe(self.on_metrics_update)
            self.state = "ready"
            status_thread = threading.Thread(target=self.status_loop, name=f"demo status {self.name}",
                                             daemon=True)
            status_thread.start()
            self.wait_for_start()
            self.state = "running"
            threading.Thread(target=self.control_loop, name=f"demo control {self.name}", daemon=True).start()
            result = self.process()
            if self.cancelled.is_set():
                raise CancelTaskError(f"{self.name} was cancelled")
            counters = metrics.io.counters
            result["numRecordsIn"] = counters["numRecordsIn"].count
            result["numRecordsOut"] = counters["numRecordsOut"].count
            self.state = "finished"
            return result
        finally:
            self.ended.set()
            if status_thread is not None:
                status_thread.join(5.0)
                if self.state == "finished":
                    self.send_status()          # the last word: finished, with the final counts
            self.metrics = None
            metrics.close()

    def setup(self) -> None:
        """Take the writer and reader from the task context."""

    def set_input(self) -> None:
        """Read the only input: its reader, its gate and which producer each channel reads."""
        ctx = self.ctx
        self.reader: RecordReader = ctx.reader()
        self.gate = ctx.gate()
        self.channel_sources = [task_name(igd.producer_vertex, sd.producer_subtask_index)
                                for igd in ctx.descriptor.input_gates for sd in igd.shuffle_descriptors
                                for _ in igd.subpartition_index_range]

    def register_metrics(self, metrics: _TaskMetrics) -> None:
        """Register writers and readers."""

    def process(self) -> Any:
        """Run the task; return its result for the coordinator."""
        raise NotImplementedError

    @staticmethod
    def rate_before(samples: deque[tuple[float, int]], when: float, window: float = 5.0) -> float:
        """Records/s over the ``window`` seconds before ``when``, from ``(time, count)`` samples."""
        before = [(t, n) for t, n in list(samples) if t <= when]
        if len(before) < 2:
            return 0.0
        t1, n1 = before[-1]
        t0, n0 = next(((t, n) for t, n in before if t >= t1 - window), before[0])
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


class _Pacer:
    """Keeps a source at ``rate`` records/s; time spent waiting is the task's idle time.
    After a stall (back-pressure) it does not burst to catch up by more than 50 ms of records.

    Timer gauges count whole milliseconds (as Flink's): if the batches came every whole number
    of milliseconds, every wait would start and end at the same sub-millisecond offset and the
    rounding would not average out, so the source picks a batch size that avoids that cadence.
    """

    MAX_LAG = 0.05

    def __init__(self, rate: int, idle_timer: Any = None) -> None:
        self.rate = rate
        self.idle_timer = idle_timer
        self.due = time.monotonic()

    def pace(self, n: int) -> None:
        self.due += n / self.rate
        now = time.monotonic()
        if self.due > now:
            timer = self.idle_timer
            if timer is not None:
                timer.mark_start()
            try:
                time.sleep(self.due - now)
            finally:
                if timer is not None:
                    timer.mark_end()
        elif now - self.due > self.MAX_LAG:
            self.due = now - self.MAX_LAG


class SourceTask(_Task):
    """Generates keyed events into the key-group edge (a partition with one subpartition per
    aggregator)."""

    role = ROLE_SOURCE

    def setup(self) -> None:
        self.writer: RecordWriter = self.ctx.writer()
        self.emitter: LatencyMarkerEmitter | None = None
        if self.cfg.latency_interval > 0:
            self.emitter = LatencyMarkerEmitter(self.writer, self.cfg.latency_interval,
                                                operator_id(ROLE_SOURCE), self.index)

    def register_metrics(self, metrics: _TaskMetrics) -> None:
        metrics.io.register_writer(self.writer)

    def batch_size(self) -> int:
        """Records per batch: about 200 batches per second, at most 512 records or 256 KiB."""
        rate = self.cfg.rate
        per_batch = 512 if rate == 0 else rate // 200
        max_records = max(1, (256 << 10) // self.cfg.record_size)
        n = max(1, min(per_batch, 512, max_records))
        if rate and (n * 1000) % rate == 0 and n < min(512, max_records):
            n += 1      # keep the pacing cadence off whole milliseconds (see _Pacer)
        return n

    def process(self) -> SourceResult:
        cfg = self.cfg
        size, num_keys = cfg.record_size, cfg.keys
        rng = np.random.default_rng([cfg.seed, self.index])
        n = self.batch_size()
        batch = np.zeros(n, dtype=record_dtype(size))
        counts = np.zeros(num_keys, np.int64)
        sums = np.zeros(num_keys, np.int64)
        writer, emitter, stop = self.writer, self.emitter, self.stop
        metrics = self.metrics
        pacer = _Pacer(cfg.rate, metrics.io.idle_time if metrics is not None else None) if cfg.rate else None
        to_lose = cfg.inject_loss if self.index == 0 else 0
        self.generated = self.emitted = 0
        clock = time.time_ns
        stream_record = StreamRecord
        while not stop.is_set():
            if not writer.is_available:
                writer.wait_available(timeout=0.1)      # soft back-pressure (timed)
                continue
            if emitter is not None:
                emitter.maybe_emit()
            keys = rng.integers(0, num_keys, n)
            values = rng.integers(1, 1000, n)
            batch["k"] = keys
            batch["v"] = values
            raw = batch.tobytes()
            ts = clock() // 1_000_000
            records = [stream_record(raw[o:o + size], ts) for o in range(0, len(raw), size)]
            np.add.at(counts, keys, 1)
            np.add.at(sums, keys, values)
            self.generated += n
            if to_lose:
                lost = min(to_lose, n)
                to_lose -= lost
                records = records[:n - lost]
            writer.emit_batch(records)                  # blocks while no buffer: hard back-pressure
            self.emitted += len(records)
            if pacer is not None:
                pacer.pace(n)
        self.state = "finishing"      # the task context flushes and finishes: EndOfPartition downstream
        return {"generated": self.generated, "emitted": self.emitted, "counts": counts, "sums": sums}


class AggregatorTask(_Task):
    """Counts and sums per key; forwards latency markers; sends running and final totals."""

    role = ROLE_AGGREGATOR

    def __init__(self, ctx: TaskContext, cfg: DemoConfig) -> None:
        super().__init__(ctx, cfg)
        self.records_in = 0
        self.misrouted = 0
        self.slow_rate: float | None = None      # records/s while slowed
        self.steady_rate: float | None = None
        self.slow_due = 0.0
        self._samples: deque[tuple[float, int]] = deque(maxlen=64)   # (time, records in), one per status

    def setup(self) -> None:
        self.set_input()
        self.writer: RecordWriter = self.ctx.writer()

    def register_metrics(self, metrics: _TaskMetrics) -> None:
        metrics.io.register_writer(self.writer)
        metrics.io.register_reader(self.reader)

    def set_phase(self, phase: str, params: dict[str, Any]) -> None:
        if phase == "slow" and params.get("slow") == self.index and self.phase != "slow":
            now = time.monotonic()
            steady = self.rate_before(self._samples, now)
            # 10% of what it did in the steady phase (at least a trickle, never a stop).
            self.slow_rate = max(50.0, params["factor"] * steady)
            self.steady_rate = steady
            self.slow_due = now
        super().set_phase(phase, params)

    def status(self) -> TaskStatus:
        self._samples.append((time.monotonic(), self.records_in))
        return super().status()

    def extra_status(self) -> _ExtraStatus:
        slow = self.phase == "slow" and self.phase_params.get("slow") == self.index
        return {"slowed_to": self.slow_rate if slow else None}

    def process(self) -> AggregatorResult:
        cfg = self.cfg
        num_keys, n_agg, me = cfg.keys, cfg.aggregators, self.index
        dtype = record_dtype(cfg.record_size)
        counts = np.zeros(num_keys, np.int64)
        sums = np.zeros(num_keys, np.int64)
        dirty = np.zeros(num_keys, bool)
        reader, writer = self.reader, self.writer
        stream_record, latency_marker = StreamRecord, LatencyMarker
        emit_every = EMIT_INTERVAL_MS / 1000
        next_emit = time.monotonic() + emit_every
        fail_in = cfg.inject_failure == "aggregator" and me == cfg.slow_aggregator
        assert self.gate is not None
        self.gate.request_partitions()
        while True:
            try:
                batch = reader.read_batch(timeout=emit_every)
            except TimeoutError:
                batch = []
            if batch is None:                           # EndOfPartition from every source
                break
            values: list[bytes] = []
            append = values.append
            for element in batch:
                t = type(element)
                if t is stream_record:
                    append(element.value)
                elif t is latency_marker:
                    forward_latency_marker(writer, element)            # Flink: to a random output channel
            if values:
                records = np.frombuffer(b"".join(values), dtype=dtype)
                keys = records["k"].astype(np.intp)
                np.add.at(counts, keys, 1)
                np.add.at(sums, keys, records["v"].astype(np.int64))
                dirty[keys] = True
                owner = operator_indexes_array(records["k"].astype(np.int32), MAX_PARALLELISM, n_agg)
                self.misrouted += int(np.count_nonzero(owner != me))
                self.records_in += len(values)
                slow_rate = self.slow_rate
                if slow_rate is not None and self.phase == "slow":
                    self._throttle(len(values), slow_rate)
            if fail_in and self.phase in ("recovery", "finish"):
                self._fail()
            now = time.monotonic()
            if now >= next_emit:
                next_emit = now + emit_every
                self._emit(dirty, counts, sums, final=False)
        if fail_in:
            self._fail()            # the slow phase lasted to the end of the input (a loaded machine)
        self.state = "finishing"
        dirty[:] = counts > 0
        self._emit(dirty, counts, sums, final=True)
        return {"records_in": self.records_in, "misrouted": self.misrouted,
                "steady_rate": self.steady_rate, "slow_rate": self.slow_rate}

    @staticmethod
    def _fail() -> None:
        raise RuntimeError("injected failure (--inject-failure aggregator)")

    def _throttle(self, n: int, slow_rate: float) -> None:
        """Processing ``n`` records takes ``n / slow_rate`` seconds in the slow phase."""
        self.slow_due = max(self.slow_due, time.monotonic() - 0.05) + n / slow_rate
        delay = self.slow_due - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _emit(self, dirty: np.ndarray, counts: np.ndarray, sums: np.ndarray, final: bool) -> None:
        keys = np.flatnonzero(dirty)
        if not len(keys):
            return
        dirty[keys] = False
        out = np.empty(len(keys), UPDATE)
        out["k"] = keys
        out["c"] = counts[keys]
        out["s"] = sums[keys]
        out["f"] = 1 if final else 0
        raw, size = out.tobytes(), UPDATE.itemsize
        self.writer.emit_batch([raw[o:o + size] for o in range(0, len(raw), size)], 0)



class SinkTask(_Task):
    """Keeps the latest totals per key and measures latency from the markers."""

    role = ROLE_SINK

    def __init__(self, ctx: TaskContext, cfg: DemoConfig) -> None:
        super().__init__(ctx, cfg)
        self.updates_in = 0
        self.latency_by_phase: dict[str, deque[int]] = {}

    def setup(self) -> None:
        self.set_input()

    def register_metrics(self, metrics: _TaskMetrics) -> None:
        metrics.io.register_reader(self.reader)
        self.latency = LatencyStats(metrics.group, granularity="operator", operator_id=operator_id(ROLE_SINK))

    def process(self) -> SinkResult:
        num_keys = self.cfg.keys
        counts = np.zeros(num_keys, np.int64)
        sums = np.zeros(num_keys, np.int64)
        final = np.zeros(num_keys, bool)
        reader, report = self.reader, self.latency.report_latency
        stream_record, latency_marker = StreamRecord, LatencyMarker
        assert self.gate is not None
        self.gate.request_partitions()
        while (batch := reader.read_batch()) is not None:
            values: list[bytes] = []
            for element in batch:
                t = type(element)
                if t is stream_record:
                    values.append(element.value)
                elif t is latency_marker:
                    latency = report(element)
                    samples = self.latency_by_phase.get(self.phase)
                    if samples is None:
                        samples = self.latency_by_phase[self.phase] = deque(maxlen=20_000)
                    samples.append(latency)
            if values:
                updates = np.frombuffer(b"".join(values), dtype=UPDATE)[::-1]   # newest first
                keys, newest = np.unique(updates["k"], return_index=True)
                counts[keys] = updates["c"][newest]
                sums[keys] = updates["s"][newest]
                final[updates["k"][updates["f"] == 1]] = True
                self.updates_in += len(values)
        self.state = "finishing"
        return {"counts": counts, "sums": sums, "final": final, "updates_in": self.updates_in,
                "latency_by_phase": {p: list(v) for p, v in self.latency_by_phase.items()}}


# ==============================================================================================
# The check
# ==============================================================================================

def check_exactly_once(keys: int, sources: Sequence[SourceResult], aggregators: Sequence[AggregatorResult],
                       sink: SinkResult) -> CheckResult:
    """Every key's count and sum at the sink against what the sources produced, from the tasks'
    results (:meth:`SourceTask.process`, :meth:`AggregatorTask.process`, :meth:`SinkTask.process`)."""
    produced_counts = np.zeros(keys, np.int64)
    produced_sums = np.zeros(keys, np.int64)
    emitted = 0
    for result in sources:
        produced_counts += result["counts"]
        produced_sums += result["sums"]
        emitted += result["emitted"]
    aggregated_in = sum(result["records_in"] for result in aggregators)
    misrouted = sum(result["misrouted"] for result in aggregators)
    bad = np.flatnonzero((sink["counts"] != produced_counts) | (sink["sums"] != produced_sums))
    not_final = np.flatnonzero((produced_counts > 0) & ~sink["final"])
    produced = int(produced_counts.sum())
    at_sink = int(sink["counts"].sum())
    examples = [(int(k), int(produced_counts[k]), int(sink["counts"][k]), int(produced_sums[k]),
                 int(sink["sums"][k])) for k in bad[:5]]
    return CheckResult(keys=keys, produced=produced, emitted=emitted, aggregated=aggregated_in,
                       at_sink=at_sink, lost=max(0, produced - at_sink),
                       duplicated=max(0, at_sink - produced),
                       mismatched_keys=len(bad), not_final_keys=len(not_final), misrouted=misrouted,
                       examples=examples)


@dataclasses.dataclass
class CheckResult:
    """The end-of-job check: every key's count and sum at the sink equals what the sources made."""

    keys: int
    produced: int
    emitted: int
    aggregated: int
    at_sink: int
    lost: int
    duplicated: int
    mismatched_keys: int
    not_final_keys: int
    misrouted: int
    #: up to five keys that differ: (key, count produced, count at the sink, sum produced, sum at the sink)
    examples: list[tuple[int, int, int, int, int]]

    @property
    def ok(self) -> bool:
        return (self.mismatched_keys == 0 and self.not_final_keys == 0 and self.misrouted == 0
                and self.lost == 0 and self.duplicated == 0 and self.aggregated == self.produced)


def latency_of(status: TaskStatus) -> dict[str, Any] | None:
    """The sink's latency histogram (p50/p95/p99/max, ms) from a status, if any."""
    found = None
    for name, value in status.get("values", {}).items():
        if isinstance(value, dict) and name.rsplit(".", 1)[-1] == "latency" and value.get("count"):
            if found is None or value.get("count", 0) > found.get("count", 0):
                found = value
    return found
