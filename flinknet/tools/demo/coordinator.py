"""The coordinator of ``flinknet demo``: it runs the job on a :mod:`flinknet.graph` runner and
drives the phases.

The coordinator (the ``flinknet demo`` process) builds the job's
:class:`~flinknet.graph.JobGraph` (:func:`~flinknet.tools.demo.job.build_graph`) and starts it on
the runner ``--runner`` names: ``process`` (:class:`~flinknet.graph.ProcessRunner`, one process
per task, the default), ``ray`` (:class:`~flinknet.graph.RayRunner`, one Ray actor per task on a
local Ray cluster the demo starts and stops) or ``thread`` (:class:`~flinknet.graph.ThreadRunner`,
every task a thread of this process). The runner deploys the tasks (partitions, gates, the
producers' addresses); the coordinator talks to them through the
:class:`~flinknet.graph.JobHandle`: it drives the scripted phases with control messages and
receives each task's status (``ctx.report`` → ``on_report`` → a bounded queue its loop drains; a
status supersedes the previous one, so the oldest are dropped when it is full), which the view
(:mod:`flinknet.tools.demo.view`) shows:

1. **steady** (first 30 % of ``--duration``): everything keeps up, back-pressure OK;
2. **slow** (next 35 %): ``Aggregator[--slow-aggregator]`` processes only ``--slow-factor`` (10 %)
   of its steady rate. Its input buffers fill (inPoolUsage → 1.0), its channels run out of
   credit, the sources block on its subpartitions (back-pressure HIGH) and the whole job slows
   down, while every process's memory stays flat;
3. **recovery** (the rest): the aggregator is fast again, the backlog drains, back-pressure clears;
4. **finish**: the sources stop and send EndOfPartition; the aggregators emit their final results
   and the sink finishes.

At the end every key's count and sum at the sink (the tasks' return values, from the
:class:`~flinknet.graph.JobResult`) is checked against what the sources produced
(:func:`~flinknet.tools.demo.job.check_exactly_once`: nothing lost, nothing duplicated) and a
summary is printed. The exit status is 0 when the check passes and every task succeeded, 1
otherwise (a task failure is the :class:`~flinknet.graph.JobFailedError`'s root cause), 2 for bad
arguments and 128 + the signal number when interrupted (130 for Ctrl-C, 143 for SIGTERM).

The coordinator mirrors every task's metrics into its own
:class:`~flinknet.metrics.MetricRegistry` under the same scopes, which ``--prometheus PORT``
serves on 127.0.0.1 while the job runs.

Nothing the demo starts outlives it (also on Ctrl-C, SIGTERM and errors): the job is cancelled
and its workers are joined by the runner (worker processes that do not exit are terminated, then
killed, by PID), and the Ray cluster is shut down.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import multiprocessing
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing import resource_tracker
from typing import TYPE_CHECKING, Any, cast

from flinknet.config import parse_memory_size
from flinknet.errors import IllegalStateError
from flinknet.graph import JobFailedError, JobHandle, JobResult, ProcessRunner, Runner, ThreadRunner
from flinknet.metrics import Counter, Gauge, Histogram, MeterView, MetricRegistry
from flinknet.tools.demo import view as views
from flinknet.tools.demo.args import float_in, int_in
from flinknet.tools.demo.job import (
    EXIT_FAILED,
    EXIT_GRACE,
    EXIT_OK,
    EXIT_USAGE,
    HOST,
    JOB_NAME,
    MIN_RECORD_SIZE,
    PHASES,
    ROLE_AGGREGATOR,
    ROLE_SINK,
    ROLE_SOURCE,
    ROLES,
    RUNNERS,
    AggregatorResult,
    CheckResult,
    DemoConfig,
    MetricEntry,
    SinkResult,
    SourceResult,
    TaskResult,
    TaskStatus,
    build_graph,
    check_exactly_once,
    rss_bytes,
    task_functions,
    task_name,
)

if TYPE_CHECKING:
    from flinknet.graph import JobGraph
    from flinknet.metrics.prometheus import PrometheusReporter

__all__ = ["DemoCoordinator", "UsageError", "build_parser", "main", "parse_config"]

#: Seconds for every task to start (worker processes or actors started, tasks deployed and set up).
STARTUP_TIMEOUT = 90.0
#: Seconds for the job to drain after the sources stop.
FINISH_TIMEOUT = 120.0
#: Signals that stop the demo cleanly (exit status 128 + the signal number).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Signals a terminal sends to its whole foreground process group (Ctrl-C, hang-up): the worker
#: processes ignore them (blocked) and leave the stopping to the coordinator.
GROUP_SIGNALS = {signal.SIGINT, signal.SIGHUP}
#: Task statuses the coordinator's queue holds (per task) before it drops the oldest.
STATUS_QUEUE_PER_TASK = 16
RUNNER_DESCRIPTIONS = {"process": "one process per task",
                       "ray": "one Ray actor per task on a local Ray cluster",
                       "thread": "one thread per task in this process"}


# ==============================================================================================
# Arguments
# ==============================================================================================

def _buffer_timeout(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"buffer timeout must be an integer number of ms, got {text!r}") from None
    if value < -1:
        raise argparse.ArgumentTypeError(
            f"buffer timeout must be -1 (only full buffers), 0 (flush every record) or > 0 ms, got {value}")
    return value


def _memory_size(text: str) -> str:
    try:
        size = parse_memory_size(text, "--network-memory")
    except (TypeError, ValueError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if size < (1 << 20):
        raise argparse.ArgumentTypeError(f"network memory must be at least 1mb, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The ``flinknet demo`` argument parser."""
    d = DemoConfig()
    p = argparse.ArgumentParser(
        prog="flinknet demo",
        description="A keyed streaming job across real processes (sources -> keyBy -> aggregators "
                    "-> sink) over flinknet's TCP transport, with scripted phases (steady, slow "
                    "aggregator, recovery, finish), live backpressure/credit/latency metrics and an "
                    "exactly-once check at the end.",
        epilog="Exit status: 0 the check passed and every task succeeded, 1 records were lost or "
               "a task failed, 2 bad arguments, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).")
    p.add_argument("--duration", type=float_in("duration", 4.0, 3600.0), default=d.duration, metavar="S",
                   help=f"seconds from start to the sources stopping (default {d.duration:g}); "
                        "phases: steady 30%%, slow 35%%, recovery 35%%, then finish")
    p.add_argument("--sources", type=int_in("sources", 1, 16), default=d.sources, metavar="N",
                   help=f"source parallelism (default {d.sources})")
    p.add_argument("--aggregators", type=int_in("aggregators", 1, 16), default=d.aggregators, metavar="N",
                   help=f"aggregator parallelism (default {d.aggregators})")
    p.add_argument("--keys", type=int_in("keys", 1, 100_000), default=d.keys, metavar="N",
                   help=f"number of distinct keys (default {d.keys})")
    p.add_argument("--record-size", type=int_in("record size", MIN_RECORD_SIZE, 1 << 20),
                   default=d.record_size, metavar="BYTES",
                   help=f"payload bytes per event (default {d.record_size}, minimum {MIN_RECORD_SIZE})")
    p.add_argument("--buffer-timeout", type=_buffer_timeout, default=d.buffer_timeout, metavar="MS",
                   help=f"Flink's buffer timeout: -1 only full buffers, 0 flush every record, > 0 flush "
                        f"every MS ms (default {d.buffer_timeout})")
    p.add_argument("--rate", type=int_in("rate", 0), default=d.rate, metavar="R",
                   help=f"records/s per source, 0 = as fast as possible (default {d.rate})")
    p.add_argument("--latency-interval", type=int_in("latency interval", 0), default=d.latency_interval,
                   metavar="MS", help=f"ms between latency markers of each source, 0 = off "
                                      f"(default {d.latency_interval})")
    p.add_argument("--slow-aggregator", type=int_in("slow aggregator", 0), default=d.slow_aggregator,
                   metavar="I", help="index of the aggregator slowed in the slow phase (default 0)")
    p.add_argument("--slow-factor", type=float_in("slow factor", 0.0, 1.0, lo_open=True),
                   default=d.slow_factor, metavar="F",
                   help="fraction of its steady rate the slow aggregator keeps (default 0.1)")
    p.add_argument("--network-memory", type=_memory_size, default=d.network_memory, metavar="SIZE",
                   help=f"network memory of each task (default {d.network_memory})")
    p.add_argument("--runner", choices=RUNNERS, default=d.runner,
                   help="where the tasks run: process = one process per task (the default), ray = one "
                        "Ray actor per task on a local Ray cluster the demo starts (needs Ray: pip install "
                        "'flinknet[ray]'), thread = one thread per task in this process")
    p.add_argument("--interval", type=float_in("interval", 0.1, 60.0), default=d.interval, metavar="S",
                   help="seconds between two status lines per task with --no-live (default 1)")
    live = p.add_mutually_exclusive_group()
    live.add_argument("--live", dest="live", action="store_true", default=None,
                      help="live terminal view (the default when stdout is a terminal)")
    live.add_argument("--no-live", dest="live", action="store_false",
                      help="plain periodic lines, one per task per interval (for logs and CI)")
    p.add_argument("--prometheus", type=int_in("port", 0, 65535), default=None, metavar="PORT",
                   help="serve the tasks' metrics for Prometheus on 127.0.0.1:PORT while the job runs "
                        "(0 = any free port; needs prometheus_client: pip install 'flinknet[prometheus]')")
    p.add_argument("--seed", type=int_in("seed", 0), default=d.seed, help=argparse.SUPPRESS)
    # Testing: make source 0 count records it never emits (the check must fail) or a task fail.
    p.add_argument("--inject-loss", type=int_in("inject-loss", 0), default=0, help=argparse.SUPPRESS)
    p.add_argument("--inject-failure", choices=[ROLE_AGGREGATOR.lower()], default=None,
                   help=argparse.SUPPRESS)
    return p


class UsageError(Exception):
    """Bad arguments (exit status 2)."""


def parse_config(argv: Sequence[str] | None) -> DemoConfig:
    """A validated :class:`DemoConfig` from command-line arguments (argparse exits with status 2
    on bad ones; checks across arguments raise :class:`UsageError`)."""
    args = build_parser().parse_args(argv)
    if args.slow_aggregator >= args.aggregators:
        raise UsageError(f"--slow-aggregator {args.slow_aggregator} does not exist: there are "
                         f"{args.aggregators} aggregator(s) (0..{args.aggregators - 1})")
    return DemoConfig(
        duration=args.duration, sources=args.sources, aggregators=args.aggregators, keys=args.keys,
        record_size=args.record_size, buffer_timeout=args.buffer_timeout, rate=args.rate,
        latency_interval=args.latency_interval, slow_aggregator=args.slow_aggregator,
        slow_factor=args.slow_factor, network_memory=args.network_memory, interval=args.interval,
        live=args.live, prometheus=args.prometheus, runner=args.runner, seed=args.seed,
        inject_loss=args.inject_loss, inject_failure=args.inject_failure)


# ==============================================================================================
# Coordinator
# ==============================================================================================

class DemoFailedError(Exception):
    """The job failed (a task failed or died, or it did not finish in time)."""


class _Interrupted(BaseException):
    """A stop signal (SIGINT, SIGTERM, SIGHUP) arrived."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclasses.dataclass
class TaskHandle:
    """The coordinator's view of one task (subtask ``index`` of vertex ``role``)."""

    role: str
    index: int
    #: the process it runs in and its environment's address (from its first status)
    pid: int | None = None
    address: tuple[str, int] | None = None
    #: its function's return value (from the job's result)
    result: TaskResult | None = None
    status: TaskStatus | None = None
    peak_rss: int = 0
    #: RSS when the first status of a phase arrived (``phase``) and at its latest (``phase.last``)
    rss_at_phase: dict[str, int] = dataclasses.field(default_factory=dict)
    #: per phase, the highest back-pressure ratio of a one-second window within it
    max_bp: dict[str, float] = dataclasses.field(default_factory=dict)
    #: per phase, the highest input pool usage of a one-second window within it
    max_in_pool: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return task_name(self.role, self.index)

    @property
    def finished(self) -> bool:
        """The task returned its result (its last status says so, or the job's result has it)."""
        return self.result is not None or (self.status is not None and self.status["state"] == "finished")

    def value(self, name: str, default: Any = 0.0) -> Any:
        """A value of the task group from the latest status (``numRecordsInPerSecond``)."""
        if self.status is None:
            return default
        v = self.status["values"].get(name, default)
        return default if v is None else v


class _MetricMirror:
    """The tasks' metrics in the coordinator's registry, under the same scopes: gauges, counters,
    meters and histograms that read the latest values received from each task."""

    def __init__(self, registry: MetricRegistry) -> None:
        self.registry = registry
        self.values: dict[tuple[Any, ...], Any] = {}

    def update(self, handle: TaskHandle, metrics: list[MetricEntry]) -> None:
        for root, steps, name, kind, value in metrics:
            key = (handle.role, handle.index, root, steps, name)
            known = key in self.values
            self.values[key] = value
            if not known:
                try:
                    self._register(handle, key, root, steps, name, kind)
                except (ValueError, TypeError):
                    pass     # a name clash: the metric is left out of the mirror

    def _register(self, handle, key, root, steps, name, kind) -> None:
        tm_id = f"tm-{handle.pid}"
        if root == "task":
            group = self.registry.task_group(handle.role, handle.index, job_name=JOB_NAME, host=HOST,
                                             tm_id=tm_id)
        else:
            group = self.registry.task_manager_group(HOST, tm_id)
        for step in steps:
            group = group.add_group(*step)
        read = functools.partial(self.values.get, key)
        if kind == "counter":
            group.counter(name, _MirroredCounter(read))
        elif kind == "meter":
            group.meter(name, _MirroredMeter(read, self.registry.view_interval))
        elif kind == "histogram":
            group.histogram(name, _MirroredHistogram(read))
        else:
            group.gauge(name, Gauge(read))


class _MirroredCounter(Counter):
    """A counter whose count is the latest one received from a task."""

    __slots__ = ("_read",)

    def __init__(self, read):
        super().__init__(0)
        self._read = read

    @property
    def count(self) -> int:
        return int(self._read() or 0)


class _MirroredMeter(MeterView):
    """A meter whose rate is the latest one received from a task (the task's views update it)."""

    def __init__(self, read, update_interval: int):
        super().__init__(None, update_interval, update_interval=update_interval)
        self._read = read

    def update(self) -> None:
        pass

    @property
    def rate(self) -> float:
        return float(self._read() or 0.0)


class _Statistics:
    """Histogram statistics rebuilt from the task's snapshot (count, min, max, quantiles)."""

    _QUANTILES = {0.5: "p50", 0.75: "p75", 0.95: "p95", 0.98: "p98", 0.99: "p99", 0.999: "p999"}

    def __init__(self, values: dict):
        self._v = values or {}
        self.count = int(self._v.get("count", 0))

    def as_dict(self) -> dict:
        return dict(self._v)

    def get_quantile(self, quantile: float) -> float:
        key = self._QUANTILES.get(quantile)
        return float(self._v.get(key, float("nan"))) if key else float("nan")

    @property
    def size(self) -> int:
        return min(self.count, 128)    # Flink's latency history size

    @property
    def min(self):
        return self._v.get("min", 0)

    @property
    def max(self):
        return self._v.get("max", 0)

    @property
    def mean(self) -> float:
        return float(self._v.get("mean", 0.0))

    @property
    def std_dev(self) -> float:
        return float(self._v.get("stddev", 0.0))

    @property
    def values(self) -> tuple:
        return ()


class _MirroredHistogram(Histogram):
    """A histogram whose statistics are the latest ones received from a task."""

    def __init__(self, read):
        super().__init__()
        self._read = read

    def update(self, value) -> None:
        raise TypeError("a mirrored histogram is read-only")

    @property
    def count(self) -> int:
        return int((self._read() or {}).get("count", 0))

    def get_statistics(self):
        return _Statistics(self._read())


class DemoCoordinator:
    """Runs the job on the runner ``cfg.runner`` names, drives the phases, renders the view and
    checks the result.

    ``DemoCoordinator(cfg, view).run()`` returns the exit status; nothing it started (worker
    processes, Ray actors, the Ray cluster, the metrics server) is left running when it returns
    (or raises).
    """

    def __init__(self, cfg: DemoConfig, view: views.PlainView | views.LiveView, out: Any = None) -> None:
        self.cfg = cfg
        self.view = view
        self.out = out if out is not None else sys.stdout
        counts = {ROLE_SOURCE: cfg.sources, ROLE_AGGREGATOR: cfg.aggregators, ROLE_SINK: 1}
        self.tasks: list[TaskHandle] = [TaskHandle(role, i) for role in ROLES for i in range(counts[role])]
        self._by_key = {(t.role, t.index): t for t in self.tasks}
        self.phase = "startup"
        self.phase_started = time.monotonic()
        self.t_start: float | None = None
        self.t_stop: float | None = None
        self.t_done: float | None = None
        self.registry: MetricRegistry | None = None
        self.reporter: PrometheusReporter | None = None
        self.mirror: _MetricMirror | None = None
        self.failures: list[str] = []
        self.check: CheckResult | None = None
        self.coordinator_peak_rss = 0
        self.interrupted = False
        self.graph: JobGraph | None = None
        self.runner: Runner | None = None
        self.handle: JobHandle | None = None
        self.job_result: JobResult | None = None
        #: the tasks' statuses, from the runner's thread (on_report) to the coordinator's loop
        self.statuses: queue.Queue[tuple[tuple[str, int], TaskStatus]] = queue.Queue(
            STATUS_QUEUE_PER_TASK * len(self.tasks))
        #: statuses dropped because the queue was full (a newer one of the same task followed)
        self.dropped_statuses = 0
        self._by_flink_name: dict[str, TaskHandle] = {}
        self._ray: Any = None            # the ray module, while this demo runs a Ray cluster
        self._shut_down = False

    # -- public ----------------------------------------------------------------------------

    def run(self) -> int:
        """Run the whole demo; returns the exit status."""
        previous = self._install_signal_handlers()
        interrupted: int | None = None
        try:
            try:
                self._start_metrics()
                self._start_job()
                self._wait_until(lambda: all(t.status is not None for t in self.tasks), STARTUP_TIMEOUT,
                                 "every task to start")
                self._run_phases()
                self._finish()
            except _Interrupted as err:
                interrupted = err.signum
                self.view.event(f"interrupted ({err}): stopping every task", self)
            except UsageError as err:
                self._shutdown()
                self.view.close()
                print(f"flinknet demo: error: {err}", file=sys.stderr)
                return EXIT_USAGE
            except DemoFailedError as err:
                self.failures.append(str(err))
                self.view.event(f"FAILED: {err}", self)
            finally:
                self._shutdown()
                self.view.close()
            if interrupted is not None:
                self.interrupted = True
                self.view.summary(self)
                return 128 + interrupted
            if not self.failures:
                self.check = self._check()      # None (and a failure noted) without every result
            self.view.summary(self)
            ok = not self.failures and self.check is not None and self.check.ok
            return EXIT_OK if ok else EXIT_FAILED
        finally:
            self._restore_signal_handlers(previous)

    # -- signals ---------------------------------------------------------------------------

    def _install_signal_handlers(self) -> dict[int, Any] | None:
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum: int, frame: object) -> None:
            raise _Interrupted(signum)

        return {s: signal.signal(s, handler) for s in STOP_SIGNALS}

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any] | None) -> None:
        for s, h in (previous or {}).items():
            signal.signal(s, h)

    # -- metrics ---------------------------------------------------------------------------

    def _start_metrics(self) -> None:
        self.registry = registry = MetricRegistry(update_interval=1)
        self.mirror = _MetricMirror(registry)
        if self.cfg.prometheus is not None:
            from flinknet.metrics.prometheus import PrometheusReporter

            self.reporter = reporter = PrometheusReporter(registry, port=self.cfg.prometheus, host=HOST)
            try:
                reporter.start()
            except ImportError as err:          # prometheus_client too old
                self.reporter = None
                raise UsageError(f"--prometheus: {err}") from None
            except OSError as err:
                self.reporter = None
                raise DemoFailedError(
                    f"cannot serve metrics on {HOST}:{self.cfg.prometheus}: {err}") from None
            self.view.event(f"metrics for Prometheus at http://{HOST}:{reporter.port}/metrics", self)

    # -- the job ---------------------------------------------------------------------------

    def _make_runner(self) -> Runner:
        cfg = self.cfg
        if cfg.runner == "thread":
            # One environment for every task: the network memory of all of them.
            return ThreadRunner(config=cfg.net_options(tasks=len(self.tasks)))
        if cfg.runner == "ray":
            return self._start_ray()
        return ProcessRunner(config=cfg.net_options(), join_timeout=EXIT_GRACE)

    def _start_ray(self) -> Runner:
        import ray

        from flinknet.graph.ray import RayRunner

        config = self.cfg.net_options()
        if not ray.is_initialized():
            self.view.event(f"starting a local Ray cluster ({len(self.tasks)} CPUs for {len(self.tasks)} "
                            "actors)", self)
            # A cluster on this host only: the actors' environments listen on loopback, as the
            # other runners' do (the runner's default is the node's address, which Ray 2.60 takes
            # from the host's outbound interface even with _node_ip_address="127.0.0.1").
            config["taskmanager.network.bind-host"] = HOST
            self._ray = ray
            try:
                ray.init(num_cpus=len(self.tasks), _node_ip_address=HOST, include_dashboard=False,
                         logging_level=logging.WARNING, log_to_driver=False)
            except SystemExit:
                # ray.init installs a SIGTERM handler that exits: the demo stops as on any SIGTERM.
                raise _Interrupted(signal.SIGTERM) from None
            except Exception as err:  # noqa: BLE001 (whatever keeps Ray from starting)
                raise DemoFailedError(f"cannot start a local Ray cluster: {err}") from None
            self._install_signal_handlers()     # the demo's again (ray.init replaced SIGTERM's)
        return RayRunner(config=config, num_cpus=1, join_timeout=EXIT_GRACE)

    def _start_job(self) -> None:
        cfg = self.cfg
        self.runner = runner = self._make_runner()
        self.graph = graph = build_graph(cfg)
        self._by_flink_name = {graph.vertex(t.role).task_name(t.index): t for t in self.tasks}
        self.view.event(f"starting {len(self.tasks)} tasks ({cfg.sources} sources, {cfg.aggregators} "
                        f"aggregators, 1 sink) on the {cfg.runner} runner: {RUNNER_DESCRIPTIONS[cfg.runner]}",
                        self)
        # The runner's own deadline is a backstop: the coordinator's come first.
        backstop = STARTUP_TIMEOUT + cfg.duration + FINISH_TIMEOUT + 4 * EXIT_GRACE
        if isinstance(runner, ProcessRunner):
            # multiprocessing's resource tracker, which spawned processes share, is started by the
            # first spawn, which unblocks SIGINT in the spawning thread when done: start it here,
            # so that the runner's thread keeps the mask its workers inherit (below).
            resource_tracker.ensure_running()
        with _group_signals_blocked():
            self.handle = runner.start(graph, task_functions(cfg), timeout=backstop,
                                       on_report=self._on_report)

    def _on_report(self, key: tuple[str, int], status: TaskStatus) -> None:
        """The runner's ``on_report`` (called from a runner thread): queue the status; when the
        queue is full, drop the oldest (a newer status of the same task follows)."""
        item = (key, status)
        while True:
            try:
                self.statuses.put_nowait(item)
                return
            except queue.Full:
                try:
                    self.statuses.get_nowait()
                    self.dropped_statuses += 1
                except queue.Empty:
                    pass

    def _pump(self, timeout: float) -> None:
        """Handle the statuses that arrive within ``timeout`` seconds; fail if the job failed."""
        try:
            item: tuple[tuple[str, int], TaskStatus] | None = (
                self.statuses.get(timeout=timeout) if timeout > 0 else self.statuses.get_nowait())
        except queue.Empty:
            item = None
        while item is not None:
            key, status = item
            task = self._by_key.get(key)
            if task is not None:
                self._on_status(task, status)
            try:
                item = self.statuses.get_nowait()
            except queue.Empty:
                item = None
        self._check_job()

    def _check_job(self) -> None:
        """Take the job's result once it ended; :class:`DemoFailedError` if it failed."""
        handle = self.handle
        if handle is None or not handle.done or self.job_result is not None:
            return
        try:
            result = handle.result(0)
        except JobFailedError as err:
            raise DemoFailedError(self._describe_failure(err)) from None
        except Exception as err:  # noqa: BLE001 (the runner's backstop timeout, a deployment error)
            raise DemoFailedError(f"the job failed: {err}") from None
        for role in ROLES:
            for index, value in enumerate(result.results(role)):
                self._by_key[(role, index)].result = value
        self.job_result = result

    def _describe_failure(self, err: JobFailedError) -> str:
        """The task that failed first with a root cause, as the demo names it, and its error."""
        root = err.root_cause
        if root is None:
            return str(err).splitlines()[0]
        task = self._by_flink_name.get(root.task_name)
        who = root.task_name if task is None else f"{task.name} (pid {task.pid or '?'})"
        text = f"{who} failed: {root.error_type.rsplit('.', 1)[-1]}: {root.message}"
        if len(err.failures) > 1:
            text += f" (then {len(err.failures) - 1} other task(s) stopped)"
        return text

    def _on_status(self, task: TaskHandle, status: TaskStatus) -> None:
        if task.pid is None:
            host, port = status["address"]
            task.pid, task.address = status["pid"], (host, port)
            self.view.event(f"task={task.name} pid={task.pid} listening={host}:{port}", self)
        task.status = status
        rss = status.get("rss", 0)
        task.peak_rss = max(task.peak_rss, rss)
        task.rss_at_phase.setdefault(status["phase"], rss)
        task.rss_at_phase[status["phase"] + ".last"] = rss
        if self.mirror is not None:
            self.mirror.update(task, status["metrics"])
        # per-phase maxima only from one-second windows that lay entirely in the phase
        phase = status.get("window_phase")
        if phase in PHASES:
            bp = min(float(task.value("backPressuredTimeMsPerSecond")), 1000.0) / 1000.0
            task.max_bp[phase] = max(task.max_bp.get(phase, 0.0), bp)
            in_pool = float(task.value("Shuffle.Netty.Input.Buffers.inPoolUsage"))
            task.max_in_pool[phase] = max(task.max_in_pool.get(phase, 0.0), in_pool)
        self.coordinator_peak_rss = max(self.coordinator_peak_rss, rss_bytes())

    def _wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                raise DemoFailedError(f"timed out after {timeout:.0f} s waiting for {what}")
            self._pump(min(left, 0.25))
            self.view.update(self)

    def _by_role(self, role: str) -> list[TaskHandle]:
        return [t for t in self.tasks if t.role == role]

    def _broadcast(self, message: tuple[Any, ...], vertex: str | None = None) -> None:
        """Send a control message to every task (of ``vertex``)."""
        handle = self.handle
        assert handle is not None
        try:
            handle.broadcast(message, vertex)
        except IllegalStateError as err:
            # The job ended or lost a worker: its failure follows.
            self._wait_until(lambda: handle.done, EXIT_GRACE, "the job to end")
            self._check_job()
            raise DemoFailedError(f"cannot reach the tasks: {err}") from None

    def _phase_params(self) -> dict[str, Any]:
        return {"slow": self.cfg.slow_aggregator, "factor": self.cfg.slow_factor}

    def _enter_phase(self, phase: str) -> None:
        self.phase = phase
        self.phase_started = time.monotonic()
        self.view.phase(self, phase)

    def _run_phases(self) -> None:
        cfg = self.cfg
        schedule = cfg.phase_schedule()
        self.t_start = time.monotonic()
        self._enter_phase(schedule[0][0])
        self._broadcast(("start", schedule[0][0], self._phase_params()))
        for phase, start in schedule[1:] + [("finish", cfg.duration)]:
            while (left := self.t_start + start - time.monotonic()) > 0:
                self._pump(min(left, 0.25))
                self.view.update(self)
            if phase == "finish":
                break
            self._enter_phase(phase)
            self._broadcast(("phase", phase, self._phase_params()))
        self.t_stop = time.monotonic()
        self._enter_phase("finish")
        self._broadcast(("phase", "finish", self._phase_params()))
        self._broadcast(("stop",), ROLE_SOURCE)

    def _finish(self) -> None:
        what = "the job to finish (EndOfPartition through every task)"
        self._wait_until(lambda: self.job_result is not None or all(t.finished for t in self.tasks),
                         FINISH_TIMEOUT, what)
        self.t_done = time.monotonic()
        self._wait_until(lambda: self.job_result is not None, FINISH_TIMEOUT, what)
        self._pump(0)                               # the tasks' last statuses
        self.phase = "done"
        self.view.phase(self, "done")
        assert self.job_result is not None
        for worker in self.job_result.leaky_workers:
            self.failures.append(f"{worker} did not get all its network memory back")

    def _shutdown(self) -> None:
        """Stop the job (cancel it, wait for the runner to join its workers; terminate and kill
        worker processes that do not end), the Ray cluster and the metrics server. Signals are
        ignored meanwhile so that a second Ctrl-C cannot leave orphans."""
        if self._shut_down:
            return
        self._shut_down = True
        in_main = threading.current_thread() is threading.main_thread()
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in STOP_SIGNALS} if in_main else {}
        try:
            self._stop_job()
            if self._ray is not None:
                ray, self._ray = self._ray, None
                try:
                    ray.shutdown()
                except Exception:  # noqa: BLE001 (a cluster that did not start completely)
                    pass
            if self.reporter is not None:
                self.reporter.close()
                self.reporter = None
            if self.registry is not None:
                self.registry.close()
                self.registry = None
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _stop_job(self) -> None:
        handle = self.handle
        if handle is None or handle.done:
            return
        handle.cancel("the demo is stopping")
        # The runner joins its workers; it terminates and kills those that do not exit in EXIT_GRACE.
        if _wait_done(handle, 2 * EXIT_GRACE + 5):
            return
        # A task that ignores the cancellation keeps its worker (and the runner) waiting.
        self._kill_worker_processes()
        if not _wait_done(handle, EXIT_GRACE):
            self.view.event("the job did not stop in time: its threads end with this process", self)

    def _kill_worker_processes(self) -> None:
        """Terminate, then kill, the process runner's workers still running (by PID)."""
        if not isinstance(self.runner, ProcessRunner):
            return                      # Ray actors end with the cluster; threads with this process
        pids = set(self.runner.last_pids)
        workers = [p for p in multiprocessing.active_children() if p.pid in pids]
        for p in workers:
            p.terminate()
        for p in workers:
            p.join(3.0)
        for p in workers:
            if p.is_alive():
                p.kill()
                p.join(5.0)

    # -- the check -------------------------------------------------------------------------

    def _check(self) -> CheckResult | None:
        """The exactly-once check over every task's result; None, with a failure noted, when a
        task has none (the job did not finish: nothing to check)."""
        missing = [t.name for t in self.tasks if t.result is None]
        if missing:
            self.failures.append(f"no result from {', '.join(missing)}: the results were not checked")
            return None
        # Each role's tasks return that role's result (SourceTask.process, AggregatorTask.process,
        # SinkTask.process), brought back by the runner.
        sources = [cast(SourceResult, t.result) for t in self._by_role(ROLE_SOURCE)]
        aggregators = [cast(AggregatorResult, t.result) for t in self._by_role(ROLE_AGGREGATOR)]
        sink = cast(SinkResult, self._by_role(ROLE_SINK)[0].result)
        return check_exactly_once(self.cfg.keys, sources, aggregators, sink)

    # -- numbers for the views -------------------------------------------------------------

    def elapsed(self) -> float:
        return 0.0 if self.t_start is None else time.monotonic() - self.t_start

    def throughput(self) -> float:
        """Records/s the sources emitted between start and stop."""
        if self.t_start is None:
            return 0.0
        end = self.t_stop or time.monotonic()
        emitted = sum(cast(SourceResult, t.result or {}).get("emitted", 0) or t.value("numRecordsOut", 0)
                      for t in self._by_role(ROLE_SOURCE))
        return emitted / max(end - self.t_start, 1e-9)


def _wait_done(handle: JobHandle, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the job to end, however it ends; whether it did."""
    try:
        handle.result(timeout)
    except Exception:  # noqa: BLE001 (a cancelled job fails: that is the point)
        pass
    return handle.done


@contextmanager
def _group_signals_blocked() -> Iterator[None]:
    """Block Ctrl-C and hang-up (:data:`GROUP_SIGNALS`) in the threads started meanwhile, and so
    in the worker processes they start (a signal mask is inherited): a terminal sends them to its
    whole foreground process group, and the coordinator, not every worker, handles them (the
    runner then stops the workers). Ray's own processes block SIGINT the same way."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, GROUP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# ==============================================================================================
# Entry point
# ==============================================================================================

def _check_prometheus_available() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise UsageError("--prometheus needs the optional package prometheus_client "
                         "(pip install 'flinknet[prometheus]')") from None
    try:
        from flinknet.metrics.prometheus import PrometheusReporter  # noqa: F401
    except ImportError as err:
        raise UsageError(f"--prometheus is not available in this build of flinknet: {err}") from None


def _check_ray_available() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError("--runner ray needs the optional package ray "
                         "(pip install 'flinknet[ray]')") from None


def main(argv: Sequence[str] | None = None) -> int:
    """``flinknet demo [options]``; returns the exit status."""
    try:
        cfg = parse_config(argv)
        if cfg.prometheus is not None:
            _check_prometheus_available()
        if cfg.runner == "ray":
            _check_ray_available()
    except UsageError as err:
        print(f"flinknet demo: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exit_:     # argparse: --help (0) or a bad argument (2)
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        return DemoCoordinator(cfg, views.for_config(cfg)).run()
    except _Interrupted as err:     # a second signal while the summary was printed
        return 128 + err.signum
