"""The job graph: vertices (tasks with a parallelism), the data sets they produce and the edges
that connect them, validated as Flink validates a streaming job.

Name map (Flink → flinknet): ``JobGraph`` → :class:`JobGraph`, ``JobVertex`` → :class:`JobVertex`
(``getParallelism`` / ``getMaxParallelism`` → :attr:`~JobVertex.parallelism` /
:attr:`~JobVertex.max_parallelism`), ``IntermediateDataSet`` → :class:`IntermediateDataSet`,
``JobEdge`` → :class:`JobEdge`, ``JobVertex#connectNewDataSetAsInput`` →
:meth:`JobGraph.connect`, ``DistributionPattern`` → :class:`~flinknet.types.DistributionPattern`,
``StreamPartitioner#isPointwise`` → :attr:`Partitioning.is_pointwise`, the stream partitioners
(``ForwardPartitioner``, ``RescalePartitioner``, ``RebalancePartitioner``, ``ShufflePartitioner``,
``BroadcastPartitioner``, ``GlobalPartitioner``, ``KeyGroupStreamPartitioner``,
``CustomPartitionerWrapper``) → :class:`Partitioning` members naming the selectors of
:mod:`flinknet.partitioners`.

A graph is plain data (names, numbers, ids and the key selectors given to :meth:`JobGraph.connect`)
so it can be sent to other processes: for a :class:`~flinknet.graph.ProcessRunner` or a
:class:`~flinknet.graph.RayRunner`, key selectors and custom partitioners must be picklable
(module-level functions, not lambdas).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flinknet._core.keygroups import compute_default_max_parallelism
from flinknet.errors import GraphValidationError
from flinknet.ids import IntermediateDataSetID, JobID, JobVertexID
from flinknet.partitioners import (
    BroadcastPartitioner,
    ChannelSelector,
    CustomPartitionerWrapper,
    ForwardPartitioner,
    GlobalPartitioner,
    KeyGroupStreamPartitioner,
    RebalancePartitioner,
    RescalePartitioner,
    ShufflePartitioner,
)
from flinknet.types import DistributionPattern, ResultPartitionType, SerializerSpec

__all__ = ["GraphValidationError", "IntermediateDataSet", "JobEdge", "JobGraph", "JobVertex",
           "Partitioning", "UPPER_BOUND_MAX_PARALLELISM"]

#: Flink's ``KeyGroupRangeAssignment.UPPER_BOUND_MAX_PARALLELISM``.
UPPER_BOUND_MAX_PARALLELISM = 1 << 15


class Partitioning(enum.Enum):
    """How an edge routes records (Flink's stream partitioners): the member's value is the
    partitioner's name as Flink prints it; pointwise partitionings connect each producer subtask to
    one or a few consumer subtasks, the others all to all."""

    FORWARD = "FORWARD"          # producer i → consumer i (equal parallelism)
    RESCALE = "RESCALE"          # round robin over the consumers of a pointwise group
    REBALANCE = "REBALANCE"      # round robin over all consumers
    SHUFFLE = "SHUFFLE"          # uniformly random consumer
    BROADCAST = "BROADCAST"      # every record to every consumer
    GLOBAL = "GLOBAL"            # every record to consumer 0
    KEY_GROUPS = "HASH"          # keyBy: key → key group → consumer (needs a key selector)
    CUSTOM = "CUSTOM"            # partitioner(key, n) → consumer (needs a partitioner)

    @property
    def is_pointwise(self) -> bool:
        """Flink's ``StreamPartitioner#isPointwise``: forward and rescale."""
        return self in (Partitioning.FORWARD, Partitioning.RESCALE)

    @property
    def distribution_pattern(self) -> DistributionPattern:
        """``POINTWISE`` for pointwise partitionings, else ``ALL_TO_ALL`` (as Flink's
        ``StreamingJobGraphGenerator`` chooses)."""
        return DistributionPattern.POINTWISE if self.is_pointwise else DistributionPattern.ALL_TO_ALL

    @property
    def is_broadcast(self) -> bool:
        """Every record goes to every consumer (Flink's ``isBroadcast``)."""
        return self is Partitioning.BROADCAST

    @classmethod
    def parse(cls, value: Partitioning | str) -> Partitioning:
        """A member from itself, its name or its value, case-insensitively (``"key_groups"``,
        ``"hash"``, ``"keyBy"`` for :attr:`KEY_GROUPS`)."""
        if isinstance(value, Partitioning):
            return value
        if not isinstance(value, str):
            raise TypeError(f"partitioning must be a Partitioning or its name, got {value!r}")
        text = value.strip().upper().replace("-", "_")
        if text in ("KEY_BY", "KEYBY", "KEYED"):
            text = "KEY_GROUPS"
        for member in cls:
            if text in (member.name, member.value):
                return member
        names = ", ".join(m.name.lower() for m in cls)
        raise ValueError(f"unknown partitioning {value!r}; one of {names}")


@dataclass(eq=False)
class JobVertex:
    """A task of the job run as ``parallelism`` subtasks (Flink's ``JobVertex``).

    ``max_parallelism`` bounds the key groups of keyed edges into it (Flink's default:
    ``compute_default_max_parallelism(parallelism)``). Create vertices with
    :meth:`JobGraph.add_vertex`."""

    name: str
    parallelism: int
    max_parallelism: int
    id: JobVertexID
    inputs: list[JobEdge] = field(default_factory=list)
    produced_data_sets: list[IntermediateDataSet] = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"JobVertex({self.name!r}, parallelism={self.parallelism}, "
                f"max_parallelism={self.max_parallelism})")

    def task_name(self, subtask_index: int) -> str:
        """Flink's ``TaskInfo#getTaskNameWithSubtasks``: ``"name (i+1/p)"``."""
        if not 0 <= subtask_index < self.parallelism:
            raise IndexError(f"{self.name} has subtasks 0..{self.parallelism - 1}, not {subtask_index}")
        return f"{self.name} ({subtask_index + 1}/{self.parallelism})"


@dataclass(eq=False)
class IntermediateDataSet:
    """The output of one producing vertex for one edge (Flink's ``IntermediateDataSet``): each
    producer subtask writes one result partition of it."""

    id: IntermediateDataSetID
    producer: JobVertex
    result_type: ResultPartitionType
    consumer: JobEdge | None = None

    def __repr__(self) -> str:
        target = self.consumer.target.name if self.consumer else None
        return f"IntermediateDataSet({self.producer.name!r} → {target!r})"


@dataclass(eq=False)
class JobEdge:
    """An edge from a data set to the vertex that reads it (Flink's ``JobEdge``).

    ``name`` (optional) is how the consuming task finds its reader and the producing task its
    writer (:meth:`flinknet.graph.TaskContext.reader` / :meth:`~flinknet.graph.TaskContext.writer`):
    :attr:`output_name` and :attr:`input_name` default to the other vertex's name.
    ``serializer`` is the records' serializer on both sides."""

    name: str | None
    source: IntermediateDataSet
    target: JobVertex
    partitioning: Partitioning
    serializer: SerializerSpec
    key_selector: Callable[[Any], Any] | slice | None = None
    partitioner: Callable[[Any, int], int] | None = None
    buffer_timeout: float = 100.0

    @property
    def producer(self) -> JobVertex:
        """The vertex that writes this edge."""
        return self.source.producer

    @property
    def output_name(self) -> str:
        """The producer's name for this edge: its name, else the target vertex's name."""
        return self.name if self.name is not None else self.target.name

    @property
    def input_name(self) -> str:
        """The consumer's name for this edge: its name, else the producing vertex's name."""
        return self.name if self.name is not None else self.producer.name

    @property
    def distribution_pattern(self) -> DistributionPattern:
        """How producer subtasks connect to consumer subtasks."""
        return self.partitioning.distribution_pattern

    @property
    def result_partition_type(self) -> ResultPartitionType:
        """The type of the partitions of this edge's data set."""
        return self.source.result_type

    def create_channel_selector(self) -> ChannelSelector:
        """A fresh selector for one producer subtask's writer (Flink's ``StreamPartitioner``,
        copied per subtask)."""
        p = self.partitioning
        if p is Partitioning.FORWARD:
            return ForwardPartitioner()
        if p is Partitioning.RESCALE:
            return RescalePartitioner()
        if p is Partitioning.REBALANCE:
            return RebalancePartitioner()
        if p is Partitioning.SHUFFLE:
            return ShufflePartitioner()
        if p is Partitioning.BROADCAST:
            return BroadcastPartitioner()
        if p is Partitioning.GLOBAL:
            return GlobalPartitioner()
        if p is Partitioning.KEY_GROUPS:
            assert self.key_selector is not None
            return KeyGroupStreamPartitioner(self.key_selector, self.target.max_parallelism)
        assert self.partitioner is not None
        selector = self.key_selector
        if selector is None:
            return CustomPartitionerWrapper(self.partitioner)
        assert not isinstance(selector, slice)     # connect() takes a slice for key groups only
        return CustomPartitionerWrapper(self.partitioner, selector)

    def __repr__(self) -> str:
        named = f", name={self.name!r}" if self.name is not None else ""
        return f"JobEdge({self.producer.name!r} → {self.target.name!r}, {self.partitioning.name}{named})"


def _check_name(what: str, name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, got {type(name).__name__}")
    if not name.strip():
        raise ValueError(f"{what} must not be empty")
    return name


def _check_parallelism(name: str, parallelism: object) -> int:
    if isinstance(parallelism, bool) or not isinstance(parallelism, int):
        raise TypeError(f"parallelism of {name!r} must be an int, got {parallelism!r}")
    if not 0 < parallelism <= UPPER_BOUND_MAX_PARALLELISM:
        raise GraphValidationError(
            f"parallelism of {name!r} must be in [1, {UPPER_BOUND_MAX_PARALLELISM}], got {parallelism}")
    return parallelism


class JobGraph:
    """A job: named vertices connected by edges (Flink's ``JobGraph``).

    ``JobGraph(name="job", job_id=None)``: without a ``job_id`` it is derived from ``name``
    (:meth:`JobID.from_name`), so every process that builds the same graph derives the same ids
    for its vertices, data sets and partitions. Build it with :meth:`add_vertex` and
    :meth:`connect`; :meth:`validate` (also called by :meth:`vertices_in_topological_order`, the
    deployment and every runner) rejects what Flink would reject.

    >>> g = JobGraph("word-count")
    >>> src = g.add_vertex("source", 2)
    >>> agg = g.add_vertex("count", 4)
    >>> g.connect(src, agg, "key_groups", key_selector=bytes)   # doctest: +ELLIPSIS
    JobEdge('source' → 'count', KEY_GROUPS)
    """

    def __init__(self, name: str = "job", job_id: JobID | None = None) -> None:
        self.name = _check_name("job name", name)
        if job_id is not None and not isinstance(job_id, JobID):
            raise TypeError(f"job_id must be a JobID, got {type(job_id).__name__}")
        self.job_id = job_id if job_id is not None else JobID.from_name(name)
        self._vertices: dict[str, JobVertex] = {}

    # -- building --------------------------------------------------------------------------

    def add_vertex(self, name: str, parallelism: int = 1, max_parallelism: int | None = None) -> JobVertex:
        """A new vertex; names are unique within the graph."""
        _check_name("vertex name", name)
        if name in self._vertices:
            raise GraphValidationError(f"the graph already has a vertex named {name!r}")
        _check_parallelism(name, parallelism)
        if max_parallelism is None:
            max_parallelism = compute_default_max_parallelism(parallelism)
        elif isinstance(max_parallelism, bool) or not isinstance(max_parallelism, int):
            raise TypeError(f"max_parallelism of {name!r} must be an int, got {max_parallelism!r}")
        elif not 0 < max_parallelism <= UPPER_BOUND_MAX_PARALLELISM:
            raise GraphValidationError(f"max parallelism of {name!r} must be in "
                                       f"[1, {UPPER_BOUND_MAX_PARALLELISM}], got {max_parallelism}")
        if parallelism > max_parallelism:
            # Flink: "The parallelism must be smaller or equal than the max parallelism."
            raise GraphValidationError(f"the parallelism of {name!r} ({parallelism}) must be smaller "
                                       f"than or equal to its max parallelism ({max_parallelism})")
        vertex = JobVertex(name, parallelism, max_parallelism, JobVertexID.from_name(f"{self.job_id}/{name}"))
        self._vertices[name] = vertex
        return vertex

    def connect(self, source: JobVertex | str, target: JobVertex | str,
                partitioning: Partitioning | str = Partitioning.REBALANCE, *,
                key_selector: Callable[[Any], Any] | slice | None = None,
                partitioner: Callable[[Any, int], int] | None = None,
                result_partition_type: ResultPartitionType = ResultPartitionType.PIPELINED_BOUNDED,
                serializer: SerializerSpec = "pickle", name: str | None = None,
                buffer_timeout: float = 100.0) -> JobEdge:
        """A new edge from ``source`` to ``target`` (Flink's
        ``target.connectNewDataSetAsInput(source, pattern, type)``) routing records by
        ``partitioning`` (a :class:`Partitioning` or its name). ``key_groups`` needs
        ``key_selector`` (a callable, or a ``slice`` of each record: see
        :class:`~flinknet.partitioners.KeyGroupStreamPartitioner`), ``custom`` needs
        ``partitioner(key, n)`` (its key is the record, or ``key_selector(record)`` when given).
        ``name`` names the edge for both tasks (default: the target's name on the producer side,
        the source's on the consumer side; two edges between the same vertices need names).
        ``buffer_timeout`` is the producers' buffer timeout in milliseconds."""
        src, dst = self.vertex(source), self.vertex(target)
        p = Partitioning.parse(partitioning)
        if not isinstance(result_partition_type, ResultPartitionType):
            raise TypeError("result_partition_type must be a ResultPartitionType")
        if p is Partitioning.KEY_GROUPS and not (callable(key_selector) or isinstance(key_selector, slice)):
            raise TypeError(f"the key_groups edge {src.name!r} → {dst.name!r} needs a key_selector "
                            "(a callable or a slice)")
        if p is Partitioning.CUSTOM and key_selector is not None and not callable(key_selector):
            raise TypeError(f"the custom edge {src.name!r} → {dst.name!r} needs a callable key_selector")
        if p is Partitioning.CUSTOM and not callable(partitioner):
            raise TypeError(f"the custom edge {src.name!r} → {dst.name!r} needs a callable partitioner")
        if key_selector is not None and p not in (Partitioning.KEY_GROUPS, Partitioning.CUSTOM):
            raise ValueError(f"a key_selector has no use on a {p.name.lower()} edge")
        if partitioner is not None and p is not Partitioning.CUSTOM:
            raise ValueError(f"a partitioner has no use on a {p.name.lower()} edge")
        if isinstance(buffer_timeout, bool) or not isinstance(buffer_timeout, (int, float)):
            raise TypeError("buffer_timeout must be a number of milliseconds")
        edge_name = _check_name("edge name", name) if name is not None else None
        in_name, out_name = edge_name or src.name, edge_name or dst.name
        for e in dst.inputs:
            if e.input_name == in_name:
                raise GraphValidationError(
                    f"{dst.name!r} already has an input named {in_name!r}: name the edges (name=...)")
        for ds in src.produced_data_sets:
            if ds.consumer is not None and ds.consumer.output_name == out_name:
                raise GraphValidationError(
                    f"{src.name!r} already has an output named {out_name!r}: name the edges (name=...)")
        index = len(src.produced_data_sets)
        data_set = IntermediateDataSet(
            IntermediateDataSetID.from_name(f"{self.job_id}/{src.name}/{index}→{dst.name}"),
            src, result_partition_type)
        edge = JobEdge(edge_name, data_set, dst, p, serializer, key_selector, partitioner,
                       float(buffer_timeout))
        data_set.consumer = edge
        src.produced_data_sets.append(data_set)
        dst.inputs.append(edge)
        return edge

    # -- reading ---------------------------------------------------------------------------

    def vertex(self, vertex: JobVertex | str) -> JobVertex:
        """The vertex of this graph with that name (or that vertex, checked to belong here)."""
        if isinstance(vertex, JobVertex):
            if self._vertices.get(vertex.name) is not vertex:
                raise GraphValidationError(f"vertex {vertex.name!r} is not part of job {self.name!r}")
            return vertex
        if not isinstance(vertex, str):
            raise TypeError(f"expected a JobVertex or a vertex name, got {type(vertex).__name__}")
        try:
            return self._vertices[vertex]
        except KeyError:
            raise KeyError(f"job {self.name!r} has no vertex {vertex!r}; "
                           f"it has {sorted(self._vertices)}") from None

    @property
    def vertices(self) -> list[JobVertex]:
        """The vertices in the order they were added."""
        return list(self._vertices.values())

    @property
    def edges(self) -> list[JobEdge]:
        """Every edge, by target vertex in the order they were added."""
        return [e for v in self._vertices.values() for e in v.inputs]

    @property
    def number_of_subtasks(self) -> int:
        """The sum of the vertices' parallelisms."""
        return sum(v.parallelism for v in self._vertices.values())

    def __iter__(self) -> Iterator[JobVertex]:
        return iter(self.vertices)

    def __len__(self) -> int:
        return len(self._vertices)

    def __repr__(self) -> str:
        return f"JobGraph({self.name!r}, {len(self._vertices)} vertices, {len(self.edges)} edges)"

    # -- validation ------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise :class:`GraphValidationError` for what Flink would not run: an empty graph, a
        forward edge between different parallelisms (Flink's "Forward partitioning does not allow
        change of parallelism"), a keyed edge into a vertex whose parallelism exceeds its max
        parallelism, or a cycle (Flink's job graphs are acyclic: "The job graph is cyclic")."""
        if not self._vertices:
            raise GraphValidationError(f"job {self.name!r} has no vertices")
        for edge in self.edges:
            src, dst = edge.producer, edge.target
            if edge.partitioning is Partitioning.FORWARD and src.parallelism != dst.parallelism:
                raise GraphValidationError(
                    f"Forward partitioning does not allow change of parallelism. Upstream operation: "
                    f"{src.name} parallelism: {src.parallelism}, downstream operation: {dst.name} "
                    f"parallelism: {dst.parallelism}. You must use another partitioning strategy, "
                    "such as broadcast, rebalance, shuffle or global.")
            if edge.partitioning is Partitioning.KEY_GROUPS and dst.parallelism > dst.max_parallelism:
                raise GraphValidationError(
                    f"{dst.name!r} has parallelism {dst.parallelism} above its max parallelism "
                    f"{dst.max_parallelism} (the number of key groups of the edge from {src.name!r})")
        self._topological_order()

    def _topological_order(self) -> list[JobVertex]:
        # Kahn's algorithm (Flink's JobGraph#getVerticesSortedTopologicallyFromSources).
        indegree = {v.name: len(v.inputs) for v in self._vertices.values()}
        ready = [v for v in self._vertices.values() if not v.inputs]
        order: list[JobVertex] = []
        while ready:
            v = ready.pop(0)
            order.append(v)
            for ds in v.produced_data_sets:
                if ds.consumer is None:
                    continue
                t = ds.consumer.target
                indegree[t.name] -= 1
                if indegree[t.name] == 0:
                    ready.append(t)
        if len(order) != len(self._vertices):
            cycle = self._find_cycle({v.name for v in order})
            raise GraphValidationError(f"The job graph is cyclic: {' → '.join(cycle)}")
        return order

    def _find_cycle(self, acyclic: set[str]) -> list[str]:
        # Walk back along inputs from a vertex left over by Kahn's algorithm: every such vertex has
        # an input from another left-over vertex, so the walk must revisit one.
        start = next(v for v in self._vertices.values() if v.name not in acyclic)
        path: list[str] = []
        seen: dict[str, int] = {}
        v = start
        while v.name not in seen:
            seen[v.name] = len(path)
            path.append(v.name)
            v = next(e.producer for e in v.inputs if e.producer.name not in acyclic)
        cycle = path[seen[v.name]:][::-1]
        return [*cycle, cycle[0]]

    def vertices_in_topological_order(self) -> list[JobVertex]:
        """The vertices, every producer before its consumers (validates first)."""
        self.validate()
        return self._topological_order()
