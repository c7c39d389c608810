"""Run a job graph on a Ray cluster: :class:`RayRunner` (``pip install 'flinknet[ray]'``).

Each worker is a Ray actor holding one :class:`~flinknet.graph.runners.Worker` (a
:class:`~flinknet.NetworkEnvironment` bound to its node's address, and the subtasks placed on
it, each in a thread); Ray places the actors on any node. The driver exchanges the actors'
addresses through Ray, deploys every subtask, then lets the data flow directly between the
actors over flinknet's TCP transport — Ray carries only the control messages (addresses,
descriptors, results). An actor that dies fails its tasks with
:class:`~flinknet.graph.WorkerLostError` naming it and its node, its peers' channels fail with
:class:`~flinknet.errors.RemoteTransportError`, the job fails with a
:class:`~flinknet.graph.JobFailedError`, and every actor of the job is killed before ``run``
returns.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from flinknet.errors import CancelTaskError
from flinknet.graph.deployment import TaskDeploymentDescriptor, deploy
from flinknet.graph.jobgraph import JobGraph
from flinknet.graph.runners import (
    CANCEL_GRACE_S,
    ConfigLike,
    JobFailedError,
    JobHandle,
    JobResult,
    ReportCallback,
    Runner,
    TaskFailure,
    TaskKey,
    Worker,
    WorkerLostError,
    call_report,
    check_functions,
    check_timeout,
    root_exception,
)
from flinknet.graph.task import TaskFunction, TaskResult
from flinknet.types import Address

try:
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayError
except ImportError as _err:  # pragma: no cover (exercised only without the extra)
    raise ImportError("RayRunner needs Ray: pip install 'flinknet[ray]'") from _err

__all__ = ["MAX_QUEUED_REPORTS", "RayRunner"]

_log = logging.getLogger("flinknet.graph")

#: Reports an actor holds for the driver (polled every 0.1 s) before it drops further ones.
MAX_QUEUED_REPORTS = 10_000


class _WorkerActor:
    """The actor behind one worker (instantiated by Ray, in the actor's process).

    Single-threaded (Ray runs its method calls one at a time, in the order the driver made
    them, so control messages keep their order): :meth:`run` starts the tasks in threads and
    returns at once; the driver then calls :meth:`poll` every 0.1 s for the outcomes and reports
    gathered since the last poll (a dead actor shows as an error of that call)."""

    def __init__(self, name: str, config: Mapping[str, object] | None) -> None:
        self.node_ip: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        settings = dict(config or {})
        # Bind to the node's address (so other nodes can connect) unless told otherwise.
        settings.setdefault("taskmanager.network.bind-host", self.node_ip)
        self.name = f"{name} (pid {os.getpid()} on {self.node_ip})"
        self._lock = threading.Lock()
        self._reports: list[tuple[TaskKey, Any]] = []
        self._dropped_reports = 0
        self._outcomes: list[tuple[TaskKey, TaskResult | TaskFailure]] = []
        self._failed = False
        self.worker = Worker(self.name, settings, report=self._report)

    def _report(self, key: TaskKey, message: Any) -> None:
        # Bounded: the driver drains every 0.1 s; a flood beyond MAX_QUEUED_REPORTS is dropped.
        with self._lock:
            if len(self._reports) >= MAX_QUEUED_REPORTS:
                self._dropped_reports += 1
                return
            self._reports.append((key, message))

    def _done(self, key: TaskKey, outcome: TaskResult | TaskFailure) -> None:
        first_failure = False
        with self._lock:
            if isinstance(outcome, TaskFailure):
                first_failure, self._failed = not self._failed, True
                outcome = outcome.portable()
            self._outcomes.append((key, outcome))
        if first_failure:
            # Fail this actor's other tasks at once; the driver cancels the other actors.
            self.worker.cancel(f"a task failed on {self.name}: {outcome}")

    def start(self) -> tuple[Address, int, str]:
        return self.worker.address, os.getpid(), self.name

    def deploy(self, graph: JobGraph, descriptors: list[TaskDeploymentDescriptor],
               functions: Mapping[str, TaskFunction]) -> None:
        self.worker.deploy(graph, descriptors, functions)

    def run(self) -> None:
        self.worker.start(self._done)

    def poll(self) -> tuple[list[tuple[TaskKey, TaskResult | TaskFailure]], list[tuple[TaskKey, Any]], int]:
        with self._lock:
            outcomes, self._outcomes = self._outcomes, []
            reports, self._reports = self._reports, []
            dropped, self._dropped_reports = self._dropped_reports, 0
        return outcomes, reports, dropped

    def deliver(self, key: TaskKey, message: Any) -> bool:
        return self.worker.deliver(key, message)

    def cancel(self, reason: str) -> None:
        self.worker.cancel(reason)

    def close(self) -> bool:
        self.worker.join(5.0)
        return self.worker.close()


class RayRunner(Runner):
    """Subtasks in Ray actors, placed by Ray on any node of the cluster.

    ``RayRunner(actors=None, config=None, num_cpus=0.5, address=None, init_kwargs=None,
    join_timeout=30.0)``: ``actors`` is how many workers (default: one per subtask; fewer packs
    subtasks into actors as slots, subtask ``k`` in topological order on actor ``k mod
    actors``); ``config`` each environment's configuration (a mapping; the bind host defaults to
    the actor's node address); ``num_cpus`` what each actor reserves. If Ray is not initialized,
    ``run`` calls ``ray.init(address, **init_kwargs)`` and shuts Ray down afterwards. Functions
    may be lambdas (Ray pickles them with cloudpickle); their results travel back through Ray.
    """

    def __init__(self, actors: int | None = None, config: ConfigLike = None, num_cpus: float = 0.5,
                 address: str | None = None, init_kwargs: Mapping[str, Any] | None = None,
                 join_timeout: float = 30.0) -> None:
        if actors is not None and (isinstance(actors, bool) or not isinstance(actors, int) or actors <= 0):
            raise ValueError(f"actors must be a positive int or None, got {actors!r}")
        if config is not None and not isinstance(config, Mapping):
            raise TypeError("RayRunner takes its configuration as a mapping of option keys")
        if isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float)) or num_cpus < 0:
            raise ValueError(f"num_cpus must be a number >= 0, got {num_cpus!r}")
        self.actors = actors
        self.config = dict(config) if config is not None else None
        self.num_cpus = float(num_cpus)
        self.address = address
        self.init_kwargs = dict(init_kwargs or {})
        self.join_timeout = check_timeout(join_timeout) or 30.0
        #: the PIDs of the last run's actor processes (all gone when run() returns).
        self.last_pids: list[int] = []

    def run(self, graph: JobGraph, functions: Mapping[str, TaskFunction], timeout: float | None = None,
            on_report: ReportCallback | None = None) -> JobResult:
        """Deploy and run ``graph`` on the Ray cluster; if this call initialized Ray, it shuts
        Ray down before it returns."""
        started_ray = not ray.is_initialized()
        try:
            return self.start(graph, functions, timeout, on_report).result()
        finally:
            if started_ray and ray.is_initialized():
                ray.shutdown()

    def start(self, graph: JobGraph, functions: Mapping[str, TaskFunction], timeout: float | None = None,
              on_report: ReportCallback | None = None) -> JobHandle:
        """Initialize Ray if needed (``ray.init(address, **init_kwargs)``, left running), then
        start the job (see :meth:`Runner.start`)."""
        check_functions(graph, functions)
        graph.validate()
        if not ray.is_initialized():
            ray.init(address=self.address, **self.init_kwargs)
        return super().start(graph, functions, timeout, on_report)

    def _execute(self, handle: JobHandle, graph: JobGraph, functions: dict[str, TaskFunction],
                 timeout: float | None, on_report: ReportCallback | None) -> JobResult:
        keys = handle.keys
        n = len(keys) if self.actors is None else min(self.actors, len(keys))
        t0 = time.monotonic()
        deadline = None if timeout is None else t0 + timeout
        actor_cls: Any = ray.remote(_WorkerActor)
        placed = [keys[w::n] for w in range(n)]
        options = actor_cls.options(num_cpus=self.num_cpus, max_restarts=0)
        actors: list[Any] = [options.remote(f"{graph.name} worker {w}", self.config) for w in range(n)]
        names = [f"{graph.name} worker {w}" for w in range(n)]
        self.last_pids = []
        try:
            try:
                starts = ray.get([a.start.remote() for a in actors], timeout=self._left(deadline))
            except (RayError, GetTimeoutError) as err:
                raise JobFailedError(graph.name, [TaskFailure.of("deployment", err, "ray")]) from err
            self.last_pids = [pid for _, pid, _ in starts]
            names = [name for _, _, name in starts]
            where = {k: starts[w][0] for w in range(n) for k in placed[w]}
            descriptors = deploy(graph, where)
            try:
                ray.get([a.deploy.remote(graph, [descriptors[k] for k in placed[w]],
                                         {k[0]: functions[k[0]] for k in placed[w]})
                         for w, a in enumerate(actors)], timeout=self._left(deadline))
                ray.get([a.run.remote() for a in actors], timeout=self._left(deadline))
            except (RayError, GetTimeoutError) as err:
                raise JobFailedError(graph.name, [TaskFailure.of("deployment", err, "ray")]) from err
            t1 = time.monotonic()
            owner = {k: actors[w] for w in range(n) for k in placed[w]}
            cancelled_at: list[float] = []

            def route(key: TaskKey, message: Any) -> None:
                owner[key].deliver.remote(key, message)

            def cancel_all(reason: str) -> None:
                if not cancelled_at:
                    cancelled_at.append(time.monotonic())
                for a in actors:
                    a.cancel.remote(f"job {graph.name!r}: {reason}")

            handle.attach(route, cancel_all)
            results: dict[TaskKey, TaskResult] = {}
            failures: list[TaskFailure] = []
            live = set(range(n))
            reported: set[TaskKey] = set()
            while live and len(reported) < len(keys):
                if deadline is not None and time.monotonic() >= deadline:
                    cancel_all(f"timed out after {timeout} s")
                    raise TimeoutError(f"job {graph.name!r} did not finish within {timeout} s "
                                       f"({len(reported)} of {len(keys)} tasks done)")
                if cancelled_at and time.monotonic() - cancelled_at[0] > CANCEL_GRACE_S:
                    for key in keys:
                        if key not in reported:
                            reported.add(key)
                            task = graph.vertex(key[0]).task_name(key[1])
                            failures.append(TaskFailure(
                                task, "flinknet.errors.CancelTaskError",
                                f"{task} did not stop within {CANCEL_GRACE_S:g} s of its cancellation",
                                "", names[keys.index(key) % n], CancelTaskError(f"{task} did not stop")))
                    break
                time.sleep(0.1)
                polls = {w: actors[w].poll.remote() for w in live}
                for w, ref in polls.items():
                    try:
                        outcomes, reports, dropped = ray.get(ref, timeout=60)
                    except (RayActorError, GetTimeoutError) as err:
                        live.discard(w)
                        why = str(err).splitlines()[0] if str(err) else type(err).__name__
                        for key in placed[w]:
                            if key in reported:
                                continue
                            reported.add(key)
                            task = graph.vertex(key[0]).task_name(key[1])
                            lost = WorkerLostError(f"Ray actor {names[w]} running {task} died: {why}")
                            failures.append(TaskFailure(task, "flinknet.graph.runners.WorkerLostError",
                                                        str(lost), "", names[w], lost))
                        continue
                    if dropped:
                        _log.error("%d report(s) dropped: %s held %d undelivered", dropped, names[w],
                                   MAX_QUEUED_REPORTS)
                    if on_report is not None:
                        for key, message in reports:
                            call_report(on_report, key, message)
                    for key, outcome in outcomes:
                        reported.add(key)
                        if isinstance(outcome, TaskFailure):
                            failures.append(outcome)
                        else:
                            results[key] = outcome
                if failures and not cancelled_at:
                    cancel_all(f"failed: {failures[0]}")
            run_s = time.monotonic() - t1
            if failures:
                raise JobFailedError(graph.name, failures) from root_exception(failures)
            leaky = []
            for w, whole in enumerate(ray.get([a.close.remote() for a in actors], timeout=self.join_timeout)):
                if not whole:
                    leaky.append(names[w])
            return JobResult(graph.name, results, t1 - t0, run_s, leaky)
        finally:
            self._stop(actors)

    @staticmethod
    def _left(deadline: float | None) -> float | None:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def _stop(self, actors: list[Any]) -> None:
        # Close what still answers (its environment releases its partitions), then kill every
        # actor: nothing of the job outlives run().
        closing = [a.close.remote() for a in actors]
        try:
            ray.wait(closing, num_returns=len(closing), timeout=self.join_timeout)
        except RayError:
            pass
        for a in actors:
            try:
                ray.kill(a, no_restart=True)
            except (RayError, ValueError):
                pass
