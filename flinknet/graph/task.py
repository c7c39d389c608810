"""The task side of a deployed job: :class:`TaskContext` turns a
:class:`~flinknet.graph.TaskDeploymentDescriptor` and a :class:`~flinknet.NetworkEnvironment`
into the writers and readers a user's function works with, runs the function and ends the
subtask as Flink's ``Task`` / ``StreamTask`` do: on success every partition is flushed and
finished (EndOfPartition), on failure every partition fails with the cause (its consumers get
:class:`~flinknet.errors.ProducerFailedError` carrying it) and the error propagates.

Name map (Flink → flinknet): ``Task`` / ``RuntimeContext`` → :class:`TaskContext`
(``getTaskInfo().getTaskNameWithSubtasks()`` → :attr:`~TaskContext.task_name`,
``getIndexOfThisSubtask`` → :attr:`~TaskContext.subtask_index`, ``getNumberOfParallelSubtasks``
→ :attr:`~TaskContext.parallelism`, ``getMaxNumberOfParallelSubtasks`` →
:attr:`~TaskContext.max_parallelism`, ``getAttemptNumber`` → :attr:`~TaskContext.attempt_number`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flinknet.consumer import RecordReader, SingleInputGate, UnionInputGate
from flinknet.environment import NetworkEnvironment
from flinknet.errors import CancelTaskError, IllegalStateError
from flinknet.graph.deployment import TaskDeploymentDescriptor
from flinknet.graph.jobgraph import JobEdge, JobGraph
from flinknet.metrics import MetricRegistry, TaskIOMetrics
from flinknet.metrics.registry import MetricGroup
from flinknet.partition import ResultPartition
from flinknet.partitioners import BroadcastPartitioner
from flinknet.writer import RecordWriter, RecordWriterBuilder

__all__ = ["MAX_QUEUED_MESSAGES", "TaskContext", "TaskFunction", "TaskResult"]

_log = logging.getLogger("flinknet.graph")

_WAKE_UP = object()   # put in the inbox by cancel()

#: Control messages a task's inbox holds before further ones are dropped (and logged).
MAX_QUEUED_MESSAGES = 1024

TaskFunction = Callable[["TaskContext"], Any]
"""A subtask's code: called with its :class:`TaskContext`; its return value is the subtask's
result (it must be picklable for the process and Ray runners)."""


@dataclass
class TaskResult:
    """What one subtask left behind: its function's return value, its record counts, its run time
    and a snapshot of its task metrics (Flink's names, relative to the task scope)."""

    task_name: str
    vertex_name: str
    subtask_index: int
    value: Any = None
    num_records_in: int = 0
    num_records_out: int = 0
    num_bytes_out: int = 0
    duration_s: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)


class TaskContext:
    """One subtask's view of the job, built from its deployment descriptor.

    ``TaskContext(graph, descriptor, environment, registry=None)``: :meth:`setup` creates the
    subtask's partitions (registered in ``environment``, so consumers can request them) and
    gates; the function then takes writers and readers by edge name (:meth:`writer`,
    :meth:`reader`, :meth:`union_reader`; with one edge, no name is needed); :meth:`run` calls
    the function and finishes or fails the partitions. With a ``registry`` the task's I/O
    metrics are registered under Flink's task scope
    (``<host>.taskmanager.<tm_id>.<job>.<vertex>.<subtask>``; host: the environment's address,
    tm_id: the worker's name).

    A user function typically reads, transforms and writes::

        def count(ctx: TaskContext) -> dict[bytes, int]:
            counts: dict[bytes, int] = {}
            for key in ctx.reader():
                counts[key] = counts.get(key, 0) + 1
            return counts
    """

    def __init__(self, graph: JobGraph, descriptor: TaskDeploymentDescriptor,
                 environment: NetworkEnvironment, registry: MetricRegistry | None = None,
                 tm_id: str = "tm-0") -> None:
        if not isinstance(graph, JobGraph):
            raise TypeError(f"graph must be a JobGraph, got {type(graph).__name__}")
        if not isinstance(descriptor, TaskDeploymentDescriptor):
            raise TypeError(f"descriptor must be a TaskDeploymentDescriptor, got {type(descriptor).__name__}")
        if not isinstance(environment, NetworkEnvironment):
            raise TypeError(f"environment must be a NetworkEnvironment, got {type(environment).__name__}")
        if descriptor.job_id != graph.job_id:
            raise ValueError(f"descriptor of {descriptor.task_name} belongs to job {descriptor.job_name!r}, "
                             f"not to {graph.name!r}")
        self.graph = graph
        self.descriptor = descriptor
        self.environment = environment
        self.vertex = graph.vertex(descriptor.vertex_name)
        self._registry = registry
        self._tm_id = tm_id
        self._partitions: dict[str, ResultPartition] = {}
        self._gates: dict[str, SingleInputGate] = {}
        self._writers: dict[str, RecordWriter] = {}
        self._readers: dict[str, RecordReader] = {}
        self._union: RecordReader | None = None
        self._out_edges: dict[str, JobEdge] = {}
        self._in_edges: dict[str, JobEdge] = {}
        for ds in self.vertex.produced_data_sets:
            assert ds.consumer is not None
            self._out_edges[ds.consumer.output_name] = ds.consumer
        for e in self.vertex.inputs:
            self._in_edges[e.input_name] = e
        self.metrics: TaskIOMetrics | None = None
        self._metric_group: MetricGroup | None = None
        self._state = "created"
        self._cancel_cause: BaseException | None = None
        self._cancel_lock = threading.Lock()
        self._inbox: queue.Queue[Any] = queue.Queue(MAX_QUEUED_MESSAGES)
        #: control messages dropped because the inbox was full (the task did not read them).
        self.dropped_messages = 0
        #: where :meth:`report` sends (set by the runner's worker; None: reports are dropped).
        self.reporter: Callable[[Any], None] | None = None

    # -- who ---------------------------------------------------------------------------------

    @property
    def task_name(self) -> str:
        """``"vertex (i+1/p)"``, as Flink names subtasks."""
        return self.descriptor.task_name

    @property
    def vertex_name(self) -> str:
        """The vertex this subtask belongs to."""
        return self.descriptor.vertex_name

    @property
    def subtask_index(self) -> int:
        """This subtask's index, 0-based."""
        return self.descriptor.subtask_index

    @property
    def parallelism(self) -> int:
        """The vertex's parallelism."""
        return self.descriptor.parallelism

    @property
    def max_parallelism(self) -> int:
        """The vertex's max parallelism (its number of key groups)."""
        return self.descriptor.max_parallelism

    @property
    def attempt_number(self) -> int:
        """Which execution attempt of the subtask this is (0 for the first)."""
        return self.descriptor.attempt_number

    @property
    def output_names(self) -> list[str]:
        """The names of the edges this subtask writes."""
        return list(self._out_edges)

    @property
    def input_names(self) -> list[str]:
        """The names of the edges this subtask reads."""
        return list(self._in_edges)

    def __repr__(self) -> str:
        return f"TaskContext({self.task_name!r}, {self._state})"

    # -- set-up --------------------------------------------------------------------------------

    def setup(self) -> None:
        """Create and register the partitions and create the gates (Flink's task set-up before
        ``invoke``); idempotent. On an error everything created so far is released."""
        if self._state != "created":
            return
        env = self.environment
        try:
            for rpd in self.descriptor.produced_partitions:
                edge = self._out_edges[rpd.edge_name]
                self._partitions[rpd.edge_name] = env.create_result_partition(
                    rpd.number_of_subpartitions, rpd.partition_type, partition_id=rpd.partition_id,
                    serializer=edge.serializer, owning_task_name=self.task_name,
                    partition_index=rpd.partition_index)
            for igd in self.descriptor.input_gates:
                self._gates[igd.edge_name] = env.create_input_gate(
                    igd.channel_specs(), gate_index=igd.gate_index, owning_task_name=self.task_name)
            if self._registry is not None:
                self._metric_group = self._registry.task_group(
                    self.vertex_name, self.subtask_index, job_name=self.descriptor.job_name,
                    host=env.address[0], tm_id=self._tm_id)
                self.metrics = TaskIOMetrics(self._metric_group)
        except BaseException as err:
            self._release(err)
            raise
        self._state = "ready"

    def _check_ready(self) -> None:
        if self._state == "created":
            self.setup()
        elif self._state == "cancelled":
            raise CancelTaskError(f"{self.task_name} was cancelled")
        elif self._state not in ("ready", "running"):
            raise IllegalStateError(f"{self.task_name} is {self._state}")

    @staticmethod
    def _pick(kind: str, names: dict[str, JobEdge], name: str | None, task: str) -> str:
        if name is None:
            if len(names) == 1:
                return next(iter(names))
            if not names:
                raise KeyError(f"{task} has no {kind}s")
            raise KeyError(f"{task} has {len(names)} {kind}s ({', '.join(names)}): name one")
        if name not in names:
            raise KeyError(f"{task} has no {kind} named {name!r}; it has {', '.join(names) or 'none'}")
        return name

    # -- writing and reading ---------------------------------------------------------------

    def writer(self, name: str | None = None) -> RecordWriter:
        """The writer of output edge ``name`` (default: the only one), routing records with the
        edge's partitioning; created on first use, closed by :meth:`run`."""
        self._check_ready()
        name = self._pick("output", self._out_edges, name, self.task_name)
        w = self._writers.get(name)
        if w is None:
            edge = self._out_edges[name]
            selector = edge.create_channel_selector()
            builder = RecordWriterBuilder().set_channel_selector(selector).set_timeout(
                edge.buffer_timeout).set_task_name(self.task_name)
            w = self._writers[name] = builder.build(self._partitions[name])
            assert isinstance(selector, BroadcastPartitioner) or w.channel_selector is selector
            if self.metrics is not None:
                self.metrics.register_writer(w)
        return w

    def partition(self, name: str | None = None) -> ResultPartition:
        """The result partition of output edge ``name`` (for code that emits events or arrays
        itself)."""
        self._check_ready()
        return self._partitions[self._pick("output", self._out_edges, name, self.task_name)]

    def reader(self, name: str | None = None) -> RecordReader:
        """The reader of input edge ``name`` (default: the only one), deserializing with the
        edge's serializer; created on first use, closed by :meth:`run`."""
        self._check_ready()
        name = self._pick("input", self._in_edges, name, self.task_name)
        r = self._readers.get(name)
        if r is None:
            if self._union is not None:
                raise IllegalStateError(f"{self.task_name} already reads every input through union_reader()")
            r = self._readers[name] = RecordReader(self._gates[name], self._in_edges[name].serializer)
            if self.metrics is not None:
                self.metrics.register_reader(r)
        return r

    def gate(self, name: str | None = None) -> SingleInputGate:
        """The input gate of input edge ``name`` (for code that reads buffers and events)."""
        self._check_ready()
        return self._gates[self._pick("input", self._in_edges, name, self.task_name)]

    def union_reader(self) -> RecordReader:
        """One reader over every input edge (Flink's ``UnionInputGate``: a union of streams);
        the edges must share a serializer. With one input, that input's reader."""
        self._check_ready()
        if len(self._in_edges) <= 1:
            return self.reader()
        if self._union is None:
            if self._readers:
                raise IllegalStateError(f"{self.task_name} already reads single inputs")
            serializers = {repr(e.serializer) for e in self._in_edges.values()}
            if len(serializers) > 1:
                raise ValueError(f"{self.task_name}'s inputs have different serializers "
                                 f"({sorted(serializers)}): read them with reader(name)")
            union = UnionInputGate([self._gates[n] for n in self._in_edges])
            serializer = next(iter(self._in_edges.values())).serializer
            self._union = RecordReader(union, serializer)
            if self.metrics is not None:
                self.metrics.register_reader(self._union)
        return self._union

    # -- talking to the driver -----------------------------------------------------------------

    def report(self, message: Any) -> None:
        """Send ``message`` to the driver: the ``on_report(task_key, message)`` callback given to
        :meth:`~flinknet.graph.Runner.start` or ``run`` (progress, metrics, ...). It must be
        picklable for the process and Ray runners; it does not block on the driver."""
        reporter = self.reporter
        if reporter is not None:
            reporter(message)

    def poll_message(self) -> Any | None:
        """The next control message the driver sent (:meth:`~flinknet.graph.JobHandle.send`),
        or None if there is none; raises :class:`~flinknet.errors.CancelTaskError` once the
        task is cancelled."""
        self._check_not_cancelled()
        try:
            message = self._inbox.get_nowait()
        except queue.Empty:
            return None
        return self._message(message)

    def next_message(self, timeout: float | None = None) -> Any | None:
        """The next control message, waiting up to ``timeout`` seconds (None: until one comes);
        None at the timeout; :class:`~flinknet.errors.CancelTaskError` if the task is cancelled
        (also while it waits)."""
        self._check_not_cancelled()
        try:
            message = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None
        return self._message(message)

    def _message(self, message: Any) -> Any:
        if message is _WAKE_UP:
            self._check_not_cancelled()
            return None
        return message

    def deliver(self, message: Any) -> bool:
        """Queue a control message for the task (called by the runner); False, logged, if its
        inbox is full (:data:`MAX_QUEUED_MESSAGES` unread)."""
        try:
            self._inbox.put_nowait(message)
            return True
        except queue.Full:
            self.dropped_messages += 1
            if self.dropped_messages in (1, 10, 100) or self.dropped_messages % 1000 == 0:
                _log.error("%s: %d control message(s) dropped: its inbox holds %d unread",
                           self.task_name, self.dropped_messages, MAX_QUEUED_MESSAGES)
            return False

    # -- running -------------------------------------------------------------------------------

    def run(self, function: TaskFunction) -> TaskResult:
        """Run ``function(self)``; then close the writers (flushing them) and finish every
        partition, or, if it raised, fail every partition with the error and re-raise it.
        Readers and gates are closed either way."""
        if not callable(function):
            raise TypeError(f"the function of {self.vertex_name!r} must be callable, got {function!r}")
        self._check_ready()
        with self._cancel_lock:
            if self._state == "running":
                raise IllegalStateError(f"{self.task_name} is already running")
            self._check_not_cancelled()
            self._state = "running"
        start = time.monotonic()
        try:
            value = function(self)
            self._check_not_cancelled()
            for w in self._writers.values():
                w.flush_all()
                w.close()
            for p in self._partitions.values():
                p.finish()
        except BaseException as err:
            cancelled = self._cancel_cause
            self._state = "cancelled" if cancelled is not None else "failed"
            self._release(err if cancelled is None else cancelled)
            if cancelled is not None and not isinstance(err, CancelTaskError):
                # What a cancelled task raises (a closed gate, a failed partition) follows from the
                # cancellation: say so, keeping the error as the cause.
                raise CancelTaskError(f"{self.task_name} was cancelled: {cancelled}") from err
            raise
        result = self._result(value, time.monotonic() - start)
        self._state = "finished"
        self._close_inputs()
        for p in self._partitions.values():
            p.close()
        self._close_metrics()
        return result

    def _check_not_cancelled(self) -> None:
        if self._cancel_cause is not None:
            raise CancelTaskError(f"{self.task_name} was cancelled: {self._cancel_cause}")

    def _result(self, value: Any, duration: float) -> TaskResult:
        records_in = sum(r.num_records_in for r in self._readers.values())
        if self._union is not None:
            records_in += self._union.num_records_in
        metrics: dict[str, Any] = {}
        if self._metric_group is not None:
            prefix = ".".join(self._metric_group.scope) + "."
            metrics = {k[len(prefix):] if k.startswith(prefix) else k: v
                       for k, v in self._metric_group.snapshot().items()}
        return TaskResult(self.task_name, self.vertex_name, self.subtask_index, value, records_in,
                          sum(p.num_records_out for p in self._partitions.values()),
                          sum(p.num_bytes_out for p in self._partitions.values()), duration, metrics)

    def _close_inputs(self) -> None:
        for r in self._readers.values():
            r.close()
        if self._union is not None:
            self._union.close()
        for g in self._gates.values():
            g.close()

    def _close_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None

    def _release(self, cause: BaseException) -> None:
        for w in self._writers.values():
            try:
                w.close()
            except Exception:  # noqa: BLE001 (the task already failed with cause)
                pass
        for p in self._partitions.values():
            p.fail(cause)
            p.close()
        self._close_inputs()
        self._close_metrics()

    def cancel(self, cause: BaseException | None = None) -> None:
        """Cancel the subtask from another thread (a runner stopping a job): its partitions fail
        with ``cause`` (its consumers learn it) and its gates close, which wakes the function if
        it is blocked on them; :meth:`run` then raises :class:`~flinknet.errors.CancelTaskError`.
        Readers and writers are left to the task's own thread (they are not thread-safe)."""
        with self._cancel_lock:
            if self._cancel_cause is not None or self._state in ("finished", "failed"):
                return
            self._cancel_cause = (cause if cause is not None
                                  else CancelTaskError(f"{self.task_name} was cancelled"))
            running = self._state == "running"
            if not running:
                self._state = "cancelled"
        for p in self._partitions.values():
            p.fail(self._cancel_cause)
        for g in self._gates.values():
            g.close()
        try:
            self._inbox.put_nowait(_WAKE_UP)     # wakes next_message(); a full inbox never blocks it
        except queue.Full:
            pass
        if not running:
            self._release(self._cancel_cause)
