"""Runners: deploy a :class:`~flinknet.graph.JobGraph` and run one function per vertex on every
subtask, in threads of this process (:class:`ThreadRunner`), in worker processes on this host
(:class:`ProcessRunner`) or in Ray actors on a cluster (:class:`~flinknet.graph.RayRunner`, the
``flinknet[ray]`` extra). One interface: ``runner.run(graph, functions) → JobResult``.

Every runner does what Flink's scheduler does for a streaming job, in three steps: start the
workers (each owns one :class:`~flinknet.NetworkEnvironment`) and learn their addresses; compute
every subtask's :class:`~flinknet.graph.TaskDeploymentDescriptor` with those addresses and set
up every task (partitions registered, gates created) before any runs; run them all. When a task
fails, the job fails as a whole (Flink's full restart strategy without restarts): every other
task is cancelled, its partitions fail so its consumers stop, and :class:`JobFailedError` names
the task that failed first with a root cause (errors that are only consequences, such as a
consumer seeing its producer fail, are listed but not blamed). Nothing is left running: worker
processes are joined, then terminated and killed by PID if they do not exit.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flinknet.config import NetworkConfig
from flinknet.environment import NetworkEnvironment
from flinknet.errors import (
    CancelTaskError,
    IllegalStateError,
    JobFailedError,
    TransportError,
    WorkerLostError,
)
from flinknet.graph.deployment import TaskDeploymentDescriptor, deploy
from flinknet.graph.jobgraph import JobGraph
from flinknet.graph.task import TaskContext, TaskFunction, TaskResult
from flinknet.metrics import MetricRegistry
from flinknet.types import Address

__all__ = ["JobFailedError", "JobHandle", "JobResult", "ProcessRunner", "ReportCallback", "Runner",
           "TaskFailure", "ThreadRunner", "Worker", "WorkerLostError"]

_log = logging.getLogger("flinknet.graph")

TaskKey = tuple[str, int]

#: Seconds a worker of a finished job waits for its consumers' last releases before it closes.
CONSUMED_GRACE_S = 2.0
#: Seconds a cancelled job waits for its tasks to stop; a task still running then (stuck in code
#: that never touches flinknet) is abandoned and reported as not stopping.
CANCEL_GRACE_S = 10.0
ConfigLike = NetworkConfig | Mapping[str, object] | None


@dataclass
class TaskFailure:
    """Why one subtask failed: the exception's type and message, its formatted traceback, where
    it ran, and the exception itself when it could be brought back (pickled) from its worker."""

    task_name: str
    error_type: str
    message: str
    traceback: str
    worker: str
    exception: BaseException | None = None
    at: float = field(default_factory=time.monotonic)

    @property
    def is_consequence(self) -> bool:
        """An error that only follows another task's failure: a cancellation, a producer that
        failed, a lost connection or consumer."""
        e = self.exception
        if e is not None:
            return isinstance(e, (CancelTaskError, TransportError))
        return self.error_type.rsplit(".", 1)[-1] in (
            "CancelTaskError", "ProducerFailedError", "RemoteTransportError", "LocalTransportError",
            "TransportError", "ConsumerLostError", "WorkerLostError")

    def __str__(self) -> str:
        return f"{self.task_name} ({self.worker}): {self.error_type}: {self.message}"

    @classmethod
    def of(cls, task_name: str, err: BaseException, worker: str) -> TaskFailure:
        """The failure of ``task_name`` raised as ``err`` in ``worker``."""
        kind = type(err)
        name = (kind.__qualname__ if kind.__module__ == "builtins"
                else f"{kind.__module__}.{kind.__qualname__}")
        return cls(task_name, name, str(err), "".join(traceback.format_exception(err)), worker, err)

    def portable(self) -> TaskFailure:
        """This failure with its exception dropped if it cannot be pickled (to cross a process)."""
        if self.exception is None:
            return self
        try:
            pickle.loads(pickle.dumps(self.exception))
        except Exception:  # noqa: BLE001 (any exception type may fail to pickle)
            return TaskFailure(self.task_name, self.error_type, self.message, self.traceback, self.worker,
                               None, self.at)
        return self


@dataclass
class JobResult:
    """A finished job: every subtask's :class:`TaskResult` by ``(vertex name, subtask index)``,
    the time to deploy (workers started, tasks set up) and to run."""

    job_name: str
    tasks: dict[TaskKey, TaskResult]
    deploy_s: float
    run_s: float
    #: workers whose network memory was not whole when they closed (a leak; empty normally).
    leaky_workers: list[str] = field(default_factory=list)

    def results(self, vertex: str) -> list[Any]:
        """The return values of ``vertex``'s subtasks, by subtask index."""
        values = sorted((k[1], r.value) for k, r in self.tasks.items() if k[0] == vertex)
        if not values:
            raise KeyError(f"job {self.job_name!r} has no vertex {vertex!r}")
        return [v for _, v in values]

    def num_records_out(self, vertex: str) -> int:
        """Records ``vertex``'s subtasks wrote, in all."""
        return sum(r.num_records_out for k, r in self.tasks.items() if k[0] == vertex)

    def num_records_in(self, vertex: str) -> int:
        """Records ``vertex``'s subtasks read, in all."""
        return sum(r.num_records_in for k, r in self.tasks.items() if k[0] == vertex)


def check_functions(graph: JobGraph, functions: Mapping[str, TaskFunction]) -> None:
    """Raise if ``functions`` does not give exactly one callable per vertex of ``graph``."""
    if not isinstance(functions, Mapping):
        raise TypeError("functions must map vertex names to callables")
    names = {v.name for v in graph.vertices}
    for name, fn in functions.items():
        if name not in names:
            raise KeyError(f"a function is given for {name!r}, which is not a vertex of job {graph.name!r}")
        if not callable(fn):
            raise TypeError(f"the function of {name!r} must be callable, got {fn!r}")
    missing = sorted(names - set(functions))
    if missing:
        raise KeyError(f"no function for vertex(es) {', '.join(map(repr, missing))} of job {graph.name!r}")


def check_timeout(timeout: float | None) -> float | None:
    """``timeout`` as a float (None stays None); ValueError unless positive."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    return float(timeout)


class Worker:
    """One environment and the subtasks it runs in threads: the unit every runner places (a
    TaskManager with its slots, in Flink's terms). Used in this process by :class:`ThreadRunner`,
    in a child process by :class:`ProcessRunner` and in an actor by the Ray runner."""

    def __init__(self, name: str, config: ConfigLike = None, metrics: bool = True,
                 report: Callable[[TaskKey, Any], None] | None = None) -> None:
        self.name = name
        self._report = report
        self.environment = NetworkEnvironment(config if config is not None else {})
        # Started: rates, busy/idle and back-pressure times are refreshed every second, as a
        # TaskManager's are (the views need the updates; a snapshot of a never-updated registry
        # reads 0 for every rate).
        self.registry = MetricRegistry(update_interval=1.0) if metrics else None
        self._contexts: dict[TaskKey, TaskContext] = {}
        self._functions: dict[TaskKey, TaskFunction] = {}
        self._threads: list[threading.Thread] = []
        self._cancelled = threading.Event()

    @property
    def address(self) -> Address:
        """Where other workers reach this one's partitions."""
        return self.environment.address

    def deploy(self, graph: JobGraph, descriptors: Iterable[TaskDeploymentDescriptor],
               functions: Mapping[str, TaskFunction]) -> None:
        """Set up a task per descriptor: its partitions are registered when this returns."""
        for d in descriptors:
            ctx = TaskContext(graph, d, self.environment, self.registry, tm_id=self.name)
            self._contexts[(d.vertex_name, d.subtask_index)] = ctx
            self._functions[(d.vertex_name, d.subtask_index)] = functions[d.vertex_name]
            if self._report is not None:
                ctx.reporter = functools.partial(self._report, (d.vertex_name, d.subtask_index))
            ctx.setup()

    def deliver(self, key: TaskKey, message: Any) -> bool:
        """Queue a control message for task ``key`` (see :meth:`TaskContext.deliver`)."""
        ctx = self._contexts.get(key)
        if ctx is None:
            raise KeyError(f"{self.name} runs no task {key!r}")
        return ctx.deliver(message)

    def start(self, on_done: Callable[[TaskKey, TaskResult | TaskFailure], None]) -> None:
        """Run every task in its own thread; ``on_done(key, result or failure)`` from that thread."""
        for key, ctx in self._contexts.items():
            fn = self._functions[key]

            def body(key: TaskKey = key, ctx: TaskContext = ctx, fn: TaskFunction = fn) -> None:
                try:
                    outcome: TaskResult | TaskFailure = ctx.run(fn)
                except BaseException as err:  # noqa: BLE001 (reported, the job fails)
                    outcome = TaskFailure.of(ctx.task_name, err, self.name)
                on_done(key, outcome)

            t = threading.Thread(target=body, name=f"flinknet task {ctx.task_name}", daemon=True)
            self._threads.append(t)
            t.start()

    def cancel(self, reason: str) -> None:
        """Cancel every task still running (the job failed elsewhere)."""
        self._cancelled.set()
        for ctx in self._contexts.values():
            ctx.cancel(CancelTaskError(reason))

    def join(self, timeout: float | None = None) -> bool:
        """Wait for every task thread; False if one is still running at ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def close(self) -> bool:
        """Close the environment at once (a runner closes workers only when every task of the
        job has ended, so no consumer will read what is left, or the job failed); True if all its
        network memory came back (logged as an error if not)."""
        for ctx in self._contexts.values():
            ctx.cancel(CancelTaskError(f"{ctx.task_name} never ran"))
        if self.registry is not None:
            self.registry.close()
        env = self.environment
        # After a success every consumer has ended, but its last release (a remote channel's
        # CancelPartitionRequest) may still be on the wire: wait briefly for it, not the full
        # close timeout. After a cancellation nothing is waited for.
        env.close(timeout=0 if self._cancelled.is_set() else CONSUMED_GRACE_S)
        pool = env.network_buffer_pool
        deadline = time.monotonic() + 2.0
        while not pool.is_whole and time.monotonic() < deadline:
            time.sleep(0.01)
        if not pool.is_whole:
            _log.error("%s: %d network buffer(s) not returned after the job", self.name,
                       pool.total_segments - pool.available_segments)
            return False
        return True


ReportCallback = Callable[[TaskKey, Any], None]
"""``on_report(task_key, message)``: receives what tasks send with :meth:`TaskContext.report`,
called from a runner thread (not the caller's), so it must be quick and thread-safe."""


class JobHandle:
    """A job started by :meth:`Runner.start`: talk to its tasks while it runs, wait for its
    result, or cancel it.

    :meth:`send` / :meth:`broadcast` queue control messages that tasks read with
    :meth:`TaskContext.poll_message` / :meth:`~TaskContext.next_message`; :meth:`result` waits
    for the :class:`JobResult` (raising :class:`JobFailedError` or ``TimeoutError`` as
    :meth:`Runner.run` does); :meth:`cancel` fails every task and makes :meth:`result` raise."""

    def __init__(self, graph: JobGraph) -> None:
        self.graph = graph
        self.keys: list[TaskKey] = [(v.name, i) for v in graph.vertices_in_topological_order()
                                    for i in range(v.parallelism)]
        self._future: concurrent.futures.Future[JobResult] = concurrent.futures.Future()
        self._deployed = threading.Event()
        self._router: Callable[[TaskKey, Any], None] | None = None
        self._canceller: Callable[[str], None] | None = None
        self._cancel_reason: str | None = None
        self._lock = threading.Lock()

    # -- runner side ---------------------------------------------------------------------------

    def attach(self, router: Callable[[TaskKey, Any], None], canceller: Callable[[str], None]) -> None:
        """For runners: the job is deployed; ``router(key, message)`` delivers control
        messages, ``canceller(reason)`` cancels every task."""
        with self._lock:
            self._router, self._canceller = router, canceller
            reason = self._cancel_reason
        self._deployed.set()
        if reason is not None:
            canceller(reason)

    def _finish(self, result: JobResult | None, error: BaseException | None) -> None:
        with self._lock:
            self._router = None
        self._deployed.set()
        if error is not None:
            self._future.set_exception(error)
        else:
            assert result is not None
            self._future.set_result(result)

    # -- caller side ---------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """The job ended (finished, failed or cancelled)."""
        return self._future.done()

    def send(self, vertex: str, subtask: int, message: Any) -> None:
        """Queue ``message`` for subtask ``subtask`` of ``vertex``; waits until the job is
        deployed. Raises ``KeyError`` for an unknown task and
        :class:`~flinknet.errors.IllegalStateError` once the job has ended."""
        key = (vertex, subtask)
        if key not in self.keys:
            raise KeyError(f"job {self.graph.name!r} has no subtask {subtask} of {vertex!r}")
        self._deployed.wait()
        with self._lock:
            router = self._router
        if router is None:
            raise IllegalStateError(f"job {self.graph.name!r} has ended")
        router(key, message)

    def broadcast(self, message: Any, vertex: str | None = None) -> None:
        """:meth:`send` ``message`` to every subtask (of ``vertex`` if given)."""
        keys = [k for k in self.keys if vertex is None or k[0] == vertex]
        if not keys:
            raise KeyError(f"job {self.graph.name!r} has no vertex {vertex!r}")
        for vertex_name, subtask in keys:
            self.send(vertex_name, subtask, message)

    def result(self, timeout: float | None = None) -> JobResult:
        """Wait for the job (at most ``timeout`` seconds: ``TimeoutError``, the job goes on)."""
        try:
            return self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            if self._future.done():
                raise
            raise TimeoutError(f"job {self.graph.name!r} still running after {timeout} s") from None

    def cancel(self, reason: str = "cancelled by the caller") -> None:
        """Cancel every task; :meth:`result` then raises :class:`JobFailedError`."""
        with self._lock:
            canceller = self._canceller
            if canceller is None:
                self._cancel_reason = reason
        if canceller is not None:
            canceller(reason)


class Runner(ABC):
    """Runs a job graph: ``run(graph, functions, timeout=None, on_report=None) → JobResult``, or
    ``start(...)`` → :class:`JobHandle` to talk to the tasks while the job runs. ``functions``
    maps every vertex name to the :data:`~flinknet.graph.TaskFunction` its subtasks run.
    Raises :class:`JobFailedError` if a task fails, ``TimeoutError`` (after cancelling
    everything) if the job does not finish within ``timeout`` seconds; a bad graph or missing
    function raises at once, before anything starts."""

    def run(self, graph: JobGraph, functions: Mapping[str, TaskFunction], timeout: float | None = None,
            on_report: ReportCallback | None = None) -> JobResult:
        """Deploy and run ``graph``, wait for it to end; see the class documentation."""
        return self.start(graph, functions, timeout, on_report).result()

    def start(self, graph: JobGraph, functions: Mapping[str, TaskFunction], timeout: float | None = None,
              on_report: ReportCallback | None = None) -> JobHandle:
        """Check the arguments, then deploy and run ``graph`` in a background thread."""
        timeout = check_timeout(timeout)
        check_functions(graph, functions)
        if on_report is not None and not callable(on_report):
            raise TypeError("on_report must be callable")
        handle = JobHandle(graph)          # validates the graph
        fns = dict(functions)

        def body() -> None:
            try:
                result = self._execute(handle, graph, fns, timeout, on_report)
            except BaseException as err:  # noqa: BLE001 (handed to the caller)
                handle._finish(None, err)
            else:
                handle._finish(result, None)

        threading.Thread(target=body, name=f"flinknet job {graph.name}", daemon=True).start()
        return handle

    @abstractmethod
    def _execute(self, handle: JobHandle, graph: JobGraph, functions: dict[str, TaskFunction],
                 timeout: float | None, on_report: ReportCallback | None) -> JobResult:
        """Deploy and run; call ``handle.attach`` once deployed."""


class _Outcomes:
    """Collects task outcomes from any thread; the first failure triggers ``on_failure`` once.
    After a cancellation (:meth:`cancelled`), :meth:`wait` gives up :data:`CANCEL_GRACE_S` later
    and :meth:`abandon` reports the tasks that never stopped."""

    def __init__(self, keys: Sequence[TaskKey], on_failure: Callable[[TaskFailure], None]) -> None:
        self.results: dict[TaskKey, TaskResult] = {}
        self.failures: list[TaskFailure] = []
        self._keys = list(keys)
        self._expected = len(self._keys)
        self._reported: set[TaskKey] = set()
        self._on_failure = on_failure
        self._cond = threading.Condition()
        self.cancelled_at: float | None = None

    def add(self, key: TaskKey, outcome: TaskResult | TaskFailure) -> None:
        first = False
        with self._cond:
            if key in self._reported:
                return                                  # abandoned before it reported
            self._reported.add(key)
            if isinstance(outcome, TaskFailure):
                first = not self.failures
                self.failures.append(outcome)
            else:
                self.results[key] = outcome
            self._cond.notify_all()
        if first:
            self.cancelled()
            self._on_failure(outcome)  # type: ignore[arg-type]

    def cancelled(self) -> None:
        """The job is being cancelled: start the grace period."""
        with self._cond:
            if self.cancelled_at is None:
                self.cancelled_at = time.monotonic()
            self._cond.notify_all()

    @property
    def done(self) -> int:
        return len(self._reported)

    def grace_over(self) -> bool:
        return self.cancelled_at is not None and time.monotonic() - self.cancelled_at >= CANCEL_GRACE_S

    def wait(self, timeout: float | None) -> bool:
        """Until every task reported (True), the grace after a cancellation ended (True: call
        :meth:`abandon`) or ``timeout`` passed (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self.done < self._expected and not self.grace_over():
                step = 0.5 if self.cancelled_at is not None else None
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    step = left if step is None else min(step, left)
                self._cond.wait(step)
            return True

    def abandon(self, graph: JobGraph, where: Callable[[TaskKey], str]) -> None:
        """Report every task that has not reported as one that did not stop when cancelled."""
        for key in self._keys:
            if key not in self._reported:
                task = graph.vertex(key[0]).task_name(key[1])
                err = CancelTaskError(f"{task} did not stop within {CANCEL_GRACE_S:g} s of its cancellation")
                self.add(key, TaskFailure(task, "flinknet.errors.CancelTaskError", str(err), "", where(key),
                                          err))


class ThreadRunner(Runner):
    """Every subtask in a thread of this process, sharing one environment (so every channel is a
    local one): for tests, small jobs and frameworks that are one process.
    ``ThreadRunner(config=None)``: the environment's configuration."""

    def __init__(self, config: ConfigLike = None) -> None:
        self.config = config

    def _execute(self, handle: JobHandle, graph: JobGraph, functions: dict[str, TaskFunction],
                 timeout: float | None, on_report: ReportCallback | None) -> JobResult:
        t0 = time.monotonic()
        report = None if on_report is None else functools.partial(call_report, on_report)
        worker = Worker("this process", self.config, report=report)
        ok = False
        try:
            descriptors = deploy(graph, lambda v, i: worker.address)
            worker.deploy(graph, descriptors.values(), functions)
            t1 = time.monotonic()
            outcomes = _Outcomes(list(descriptors),
                                 lambda f: worker.cancel(f"job {graph.name!r} failed: {f}"))
            worker.start(outcomes.add)

            def cancel(reason: str) -> None:
                outcomes.cancelled()
                worker.cancel(f"job {graph.name!r}: {reason}")

            handle.attach(lambda key, msg: None if worker.deliver(key, msg) else None, cancel)
            if not outcomes.wait(timeout):
                worker.cancel(f"job {graph.name!r} timed out after {timeout} s")
                worker.join(5.0)
                raise TimeoutError(f"job {graph.name!r} did not finish within {timeout} s "
                                   f"({outcomes.done} of {len(descriptors)} tasks done)")
            outcomes.abandon(graph, lambda key: worker.name)
            worker.join(CANCEL_GRACE_S if outcomes.cancelled_at is not None else None)
            run_s = time.monotonic() - t1
            if outcomes.failures:
                raise JobFailedError(graph.name, outcomes.failures) from root_exception(outcomes.failures)
            ok = True
        finally:
            if not ok:
                worker.cancel(f"job {graph.name!r} stopped")
            whole = worker.close()
        return JobResult(graph.name, outcomes.results, t1 - t0, run_s, [] if whole else [worker.name])


def root_exception(failures: Sequence[TaskFailure]) -> BaseException | None:
    """The exception of the root cause among ``failures`` (None if it stayed in its worker)."""
    root = JobFailedError("", failures).root_cause
    return root.exception if root is not None else None


# -- processes -------------------------------------------------------------------------------


def _worker_main(conn: multiprocessing.connection.Connection, name: str, config: ConfigLike) -> None:
    """A ProcessRunner worker: start an environment, report its address, deploy what the parent
    sends, run on its word, report each task's outcome, close when told or when done."""
    name = f"{name} (pid {os.getpid()})"
    # A terminal's Ctrl-C or hang-up reaches the whole process group: the driver decides what
    # happens to the job (cancel it), not each worker on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    send_lock = threading.Lock()

    def send(msg: tuple[Any, ...]) -> None:
        with send_lock:
            try:
                conn.send(msg)
            except (OSError, EOFError):
                pass

    def report(key: TaskKey, message: Any) -> None:
        try:
            data = pickle.dumps(message)
        except Exception as err:  # noqa: BLE001 (any object may fail to pickle)
            raise TypeError(f"a report must be picklable to cross processes: {err}") from err
        send(("report", key, data))

    try:
        worker = Worker(name, config, report=report)
    except BaseException as err:  # noqa: BLE001 (reported to the parent)
        conn.send(("error", TaskFailure.of(name, err, name).portable()))
        return

    try:
        send(("address", worker.address, os.getpid()))
        kind, graph, descriptors, functions = conn.recv()
        assert kind == "deploy"
        try:
            worker.deploy(graph, descriptors, functions)
        except BaseException as err:  # noqa: BLE001
            send(("error", TaskFailure.of(name, err, name).portable()))
            return
        send(("ready",))
        if conn.recv()[0] != "run":
            worker.cancel("job stopped before it ran")
            return

        def done(key: TaskKey, outcome: TaskResult | TaskFailure) -> None:
            if isinstance(outcome, TaskFailure):
                send(("failed", key, outcome.portable()))
            else:
                try:
                    send(("done", key, outcome))
                except Exception as err:  # noqa: BLE001 (a result that does not pickle)
                    send(("failed", key, TaskFailure.of(outcome.task_name, err, name).portable()))

        worker.start(done)
        finished = threading.Thread(target=worker.join, daemon=True)
        finished.start()
        # Wait for the parent's word before closing: the environment must serve this worker's
        # partitions until every consumer of the job has ended (or the job failed).
        while True:
            if finished.is_alive() and not conn.poll(0.05):
                continue
            msg = conn.recv()
            if msg[0] == "control":
                worker.deliver(msg[1], msg[2])
            elif msg[0] == "cancel":
                worker.cancel(msg[1])
            elif msg[0] == "close":
                break
        finished.join(5.0)   # cancelled tasks end quickly; one stuck in user code is abandoned
    except (EOFError, OSError):
        worker.cancel("the runner went away")       # the parent died: stop, do not linger
    finally:
        send(("closed", worker.close()))
        conn.close()


@dataclass
class _Proc:
    name: str
    process: Any
    conn: multiprocessing.connection.Connection
    keys: list[TaskKey]
    address: Address | None = None
    pid: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, msg: tuple[Any, ...]) -> bool:
        """Send from any thread; False if the worker is gone."""
        with self.lock:
            try:
                self.conn.send(msg)
                return True
            except (OSError, EOFError, ValueError):
                return False


class ProcessRunner(Runner):
    """Subtasks in worker processes on this host, connected over TCP on loopback (what
    ``flinknet demo`` runs on).

    ``ProcessRunner(processes=None, config=None, start_method="forkserver", join_timeout=60.0)``:
    ``processes`` is how many workers (default: one per subtask; fewer packs subtasks into
    workers as slots, subtask ``k`` of the job, in topological order, on worker ``k mod
    processes``); ``config`` each worker environment's configuration. Functions, their results
    and the graph (key selectors included) must be picklable: define them at module level.
    Workers are forked from multiprocessing's fork server, which has imported flinknet once
    (a worker then starts in milliseconds, not the ~0.5 s of CPU a fresh interpreter importing
    numpy and flinknet costs: 32 subtasks deploy in 0.3 s instead of 9 s here);
    ``start_method="spawn"`` starts each from a fresh interpreter.
    A worker that dies fails its tasks with :class:`WorkerLostError` naming its PID and exit
    code; every worker is joined, then terminated and killed if it does not exit in
    ``join_timeout`` seconds."""

    def __init__(self, processes: int | None = None, config: ConfigLike = None,
                 start_method: str = "forkserver", join_timeout: float = 60.0) -> None:
        if processes is not None and (isinstance(processes, bool) or not isinstance(processes, int)
                                      or processes <= 0):
            raise ValueError(f"processes must be a positive int or None, got {processes!r}")
        if start_method not in multiprocessing.get_all_start_methods():
            raise ValueError(f"unknown start method {start_method!r}")
        if start_method == "fork":
            raise ValueError("start_method='fork' cannot run flinknet workers safely (threads); use 'spawn' "
                             "or 'forkserver'")
        self.processes = processes
        self.config = config
        self.start_method = start_method
        self.join_timeout = check_timeout(join_timeout) or 60.0
        #: PIDs of the last run's workers (all exited when run() returns).
        self.last_pids: list[int] = []

    def _execute(self, handle: JobHandle, graph: JobGraph, functions: dict[str, TaskFunction],
                 timeout: float | None, on_report: ReportCallback | None) -> JobResult:
        keys = handle.keys
        n = len(keys) if self.processes is None else min(self.processes, len(keys))
        mp: Any = multiprocessing.get_context(self.start_method)
        if self.start_method == "forkserver":
            # Effective when the fork server starts (the first forkserver process of this
            # program): it imports the main module, as spawn would, and flinknet once for all.
            mp.set_forkserver_preload(["__main__", "flinknet.graph.runners"])
        t0 = time.monotonic()
        procs: list[_Proc] = []
        deadline = None if timeout is None else t0 + timeout
        self.last_pids = []
        try:
            for w in range(n):
                parent, child = mp.Pipe()
                name = f"worker {w}"
                p = mp.Process(target=_worker_main, args=(child, name, self.config),
                               name=f"flinknet {graph.name} {name}", daemon=True)
                p.start()
                child.close()
                procs.append(_Proc(name, p, parent, keys[w::n]))
            self.last_pids = [p.process.pid for p in procs]
            for p in procs:
                msg = self._recv(p, deadline, "start", graph)
                if msg[0] == "error":
                    raise JobFailedError(graph.name, [msg[1]])
                p.address, p.pid = msg[1], msg[2]
                p.name = f"worker {procs.index(p)} (pid {p.pid})"
            where = {k: p.address for p in procs for k in p.keys}
            descriptors = deploy(graph, where)
            for p in procs:
                p.send(("deploy", graph, [descriptors[k] for k in p.keys],
                        {k[0]: functions[k[0]] for k in p.keys}))
            for p in procs:
                msg = self._recv(p, deadline, "deploy", graph)
                if msg[0] == "error":
                    raise JobFailedError(graph.name, [msg[1]])
            t1 = time.monotonic()
            for p in procs:
                p.send(("run",))
            owner = {k: p for p in procs for k in p.keys}

            def cancel_all(reason: str) -> None:
                for q in procs:
                    q.send(("cancel", reason))

            def route(key: TaskKey, message: Any) -> None:
                if not owner[key].send(("control", key, message)):
                    raise IllegalStateError(f"{owner[key].name} running {key} is gone")

            outcomes = _Outcomes(keys, lambda f: cancel_all(f"job {graph.name!r} failed: {f}"))

            def cancel(reason: str) -> None:
                outcomes.cancelled()
                cancel_all(f"job {graph.name!r}: {reason}")

            handle.attach(route, cancel)
            if not self._collect(procs, outcomes, deadline, graph, on_report):
                cancel_all(f"job {graph.name!r} timed out after {timeout} s")
                raise TimeoutError(f"job {graph.name!r} did not finish within {timeout} s "
                                   f"({outcomes.done} of {len(keys)} tasks done)")
            run_s = time.monotonic() - t1
            if outcomes.failures:
                cancel_all("job failed")
                raise JobFailedError(graph.name, outcomes.failures) from root_exception(outcomes.failures)
            for p in procs:
                p.send(("close",))
            leaky = self._wait_closed(procs, on_report)
            return JobResult(graph.name, outcomes.results, t1 - t0, run_s, leaky)
        finally:
            self._stop(procs)

    def _recv(self, p: _Proc, deadline: float | None, step: str, graph: JobGraph) -> tuple[Any, ...]:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready = multiprocessing.connection.wait([p.conn, p.process.sentinel], remaining)
        if p.conn in ready:
            try:
                msg: tuple[Any, ...] = p.conn.recv()
                return msg
            except (EOFError, OSError):
                pass
        if not ready:
            raise TimeoutError(f"{p.name} did not answer during {step}")
        p.process.join(1.0)
        err = WorkerLostError(f"{p.name} exited with code {p.process.exitcode} during {step}")
        raise JobFailedError(graph.name, [TaskFailure(p.name, "flinknet.graph.runners.WorkerLostError",
                                                      str(err), "", p.name, err)])

    def _collect(self, procs: list[_Proc], outcomes: _Outcomes, deadline: float | None,
                 graph: JobGraph, on_report: ReportCallback | None) -> bool:
        live: dict[int, _Proc] = {p.conn.fileno(): p for p in procs}
        sentinels: dict[int, _Proc] = {p.process.sentinel: p for p in procs}
        reported: dict[str, set[TaskKey]] = {p.name: set() for p in procs}
        while outcomes.done < outcomes._expected:
            if outcomes.grace_over():
                outcomes.abandon(graph, lambda key: next(p.name for p in procs if key in p.keys))
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            if outcomes.cancelled_at is not None:
                remaining = 0.5 if remaining is None else min(remaining, 0.5)
            ready = multiprocessing.connection.wait(
                [*(q.conn for q in live.values()), *sentinels], remaining)
            for r in ready:
                if isinstance(r, multiprocessing.connection.Connection):
                    p = live[r.fileno()]
                    try:
                        msg = r.recv()
                    except (EOFError, OSError):
                        del live[r.fileno()]
                        continue
                    if msg[0] in ("done", "failed"):
                        reported[p.name].add(msg[1])
                        outcomes.add(msg[1], msg[2])
                    elif msg[0] == "report":
                        _deliver_report(on_report, msg[1], msg[2])
                    continue
                assert isinstance(r, int)
                p = sentinels.pop(r)
                live.pop(p.conn.fileno(), None)
                # Drain what it sent before dying, then fail the tasks it never reported.
                while True:
                    try:
                        if not p.conn.poll(0):
                            break
                        msg = p.conn.recv()
                    except (EOFError, OSError):
                        break
                    if msg[0] in ("done", "failed"):
                        reported[p.name].add(msg[1])
                        outcomes.add(msg[1], msg[2])
                    elif msg[0] == "report":
                        _deliver_report(on_report, msg[1], msg[2])
                p.process.join(1.0)
                code = p.process.exitcode
                how = f"signal {-code}" if code is not None and code < 0 else f"code {code}"
                for key in p.keys:
                    if key not in reported[p.name]:
                        task = graph.vertex(key[0]).task_name(key[1])
                        err = WorkerLostError(f"{p.name} running {task} exited with {how}")
                        outcomes.add(key, TaskFailure(task, "flinknet.graph.runners.WorkerLostError",
                                                      str(err), "", p.name, err))
        return True

    def _wait_closed(self, procs: list[_Proc], on_report: ReportCallback | None) -> list[str]:
        leaky = []
        for p in procs:
            try:
                while p.conn.poll(self.join_timeout):
                    msg = p.conn.recv()
                    if msg[0] == "report":
                        _deliver_report(on_report, msg[1], msg[2])
                    elif msg[0] == "closed":
                        if not msg[1]:
                            leaky.append(p.name)
                        break
            except (EOFError, OSError):
                pass
        return leaky

    def _stop(self, procs: list[_Proc]) -> None:
        for p in procs:
            p.send(("close",))
        deadline = time.monotonic() + self.join_timeout
        for p in procs:
            p.process.join(max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.process.is_alive():
                _log.warning("%s did not exit in %.0f s: terminating it", p.name, self.join_timeout)
                p.process.terminate()
                p.process.join(5.0)
            if p.process.is_alive():
                p.process.kill()
                p.process.join(5.0)
            p.conn.close()


def _deliver_report(on_report: ReportCallback | None, key: TaskKey, data: bytes) -> None:
    if on_report is not None:
        call_report(on_report, key, pickle.loads(data))


def call_report(on_report: ReportCallback, key: TaskKey, message: Any) -> None:
    """Call ``on_report(key, message)``; an exception it raises is logged, never propagated."""
    try:
        on_report(key, message)
    except Exception:  # noqa: BLE001 (the caller's callback must not stop the job)
        _log.exception("on_report raised for a report of %s", key)
