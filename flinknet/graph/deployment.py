"""Deployment descriptors: what each subtask of a :class:`~flinknet.graph.JobGraph` produces and
reads, computed as Flink computes them for a streaming (non-dynamic) execution graph.

Name map (Flink → flinknet): ``IndexRange`` → :class:`IndexRange`, ``ExecutionVertexInputInfo``
→ :class:`ExecutionVertexInputInfo`, ``VertexInputInfoComputationUtils
.computeVertexInputInfoForPointwise`` / ``…ForAllToAll`` / ``computeConsumedSubpartitionRange`` →
:func:`compute_vertex_input_info_for_pointwise` / :func:`…_for_all_to_all` /
:func:`compute_consumed_subpartition_range`, ``IntermediateResultPartition
#getNumberOfSubpartitions`` → :func:`number_of_subpartitions`, ``TaskDeploymentDescriptor`` →
:class:`TaskDeploymentDescriptor`, ``ResultPartitionDeploymentDescriptor`` →
:class:`ResultPartitionDeploymentDescriptor`, ``InputGateDeploymentDescriptor`` →
:class:`InputGateDeploymentDescriptor`, ``NettyShuffleDescriptor`` (partition id + producer
location) → :class:`ShuffleDescriptor`.

The rules (Flink 2.3, non-dynamic graph; checked against Flink's own classes for every pair of
parallelisms 1..8 in ``tests/test_subpartition_ranges_vectors.py``):

* **all to all**: every producer partition has one subpartition per consumer subtask; consumer
  ``j`` reads subpartition ``j`` of every producer partition.
* **pointwise, P ≥ C producers**: consumer ``j`` reads producers ``⌊jP/C⌋ .. ⌊(j+1)P/C⌋ - 1``, each
  partition has one subpartition.
* **pointwise, P < C**: producer ``p`` is read by consumers ``⌈pC/P⌉ .. ⌈(p+1)C/P⌉ - 1`` (``n`` of
  them), its partition has ``n`` subpartitions and consumer ``i`` reads subpartition ``i mod n`` —
  not always ``i - first``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flinknet.graph.jobgraph import JobEdge, JobGraph, JobVertex
from flinknet.ids import (
    ExecutionAttemptID,
    ExecutionGraphID,
    ExecutionVertexID,
    IntermediateDataSetID,
    IntermediateResultPartitionID,
    JobID,
    JobVertexID,
    ResultPartitionID,
)
from flinknet.types import Address, DistributionPattern, ResultPartitionType

if TYPE_CHECKING:
    from flinknet.environment import InputChannelSpec

__all__ = ["ExecutionVertexInputInfo", "IndexRange", "InputGateDeploymentDescriptor",
           "ResultPartitionDeploymentDescriptor", "ShuffleDescriptor", "TaskDeploymentDescriptor",
           "compute_consumed_subpartition_range", "compute_vertex_input_info_for_all_to_all",
           "compute_vertex_input_info_for_pointwise", "deploy", "number_of_subpartitions"]


@dataclass(frozen=True, slots=True)
class IndexRange:
    """An inclusive range of indexes ``[start, end]`` (Flink's ``IndexRange``)."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"invalid index range [{self.start}, {self.end}]")

    def __len__(self) -> int:
        return self.end - self.start + 1

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(range(self.start, self.end + 1))

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and self.start <= index <= self.end

    def __str__(self) -> str:
        return f"[{self.start}, {self.end}]"


@dataclass(frozen=True, slots=True)
class ExecutionVertexInputInfo:
    """Which producer partitions (by producer subtask) and which of their subpartitions one
    consumer subtask reads (Flink's ``ExecutionVertexInputInfo``)."""

    subtask_index: int
    partition_index_range: IndexRange
    subpartition_index_range: IndexRange


def compute_consumed_subpartition_range(consumer_subtask_index: int, number_of_consumers: int) -> IndexRange:
    """Flink's ``computeConsumedSubpartitionRange`` for a non-dynamic graph: one subpartition,
    ``consumer_subtask_index mod number_of_consumers``."""
    if number_of_consumers <= 0:
        raise ValueError("number_of_consumers must be positive")
    index = consumer_subtask_index % number_of_consumers
    return IndexRange(index, index)


def _check_counts(source_count: int, target_count: int) -> None:
    for what, n in (("source_count", source_count), ("target_count", target_count)):
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"{what} must be a positive int, got {n!r}")


def compute_vertex_input_info_for_pointwise(source_count: int,
                                            target_count: int) -> list[ExecutionVertexInputInfo]:
    """Flink's ``computeVertexInputInfoForPointwise`` (non-dynamic graph), by consumer subtask."""
    _check_counts(source_count, target_count)
    infos: list[ExecutionVertexInputInfo] = []
    if source_count >= target_count:
        for index in range(target_count):
            start = index * source_count // target_count
            end = (index + 1) * source_count // target_count
            infos.append(ExecutionVertexInputInfo(
                index, IndexRange(start, end - 1), compute_consumed_subpartition_range(index, 1)))
    else:
        for partition_num in range(source_count):
            start = (partition_num * target_count + source_count - 1) // source_count
            end = ((partition_num + 1) * target_count + source_count - 1) // source_count
            for i in range(start, end):
                infos.append(ExecutionVertexInputInfo(
                    i, IndexRange(partition_num, partition_num),
                    compute_consumed_subpartition_range(i, end - start)))
    infos.sort(key=lambda info: info.subtask_index)
    return infos


def compute_vertex_input_info_for_all_to_all(source_count: int,
                                             target_count: int) -> list[ExecutionVertexInputInfo]:
    """Flink's ``computeVertexInputInfoForAllToAll`` (non-dynamic graph), by consumer subtask."""
    _check_counts(source_count, target_count)
    return [ExecutionVertexInputInfo(i, IndexRange(0, source_count - 1),
                                     compute_consumed_subpartition_range(i, target_count))
            for i in range(target_count)]


def number_of_subpartitions(pattern: DistributionPattern, source_count: int, target_count: int,
                            partition_index: int) -> int:
    """How many subpartitions producer subtask ``partition_index``'s partition has: as many as
    consumer subtasks read it (Flink's ``IntermediateResultPartition#computeNumberOfSubpartitions``
    for a non-dynamic graph: the size of its consumer vertex group)."""
    _check_counts(source_count, target_count)
    if not 0 <= partition_index < source_count:
        raise IndexError(f"partition index {partition_index} outside [0, {source_count})")
    if pattern is DistributionPattern.ALL_TO_ALL:
        return target_count
    if source_count >= target_count:
        return 1
    start = (partition_index * target_count + source_count - 1) // source_count
    end = ((partition_index + 1) * target_count + source_count - 1) // source_count
    return end - start


def vertex_input_infos(edge: JobEdge) -> list[ExecutionVertexInputInfo]:
    """The input infos of every consumer subtask of ``edge``."""
    p, c = edge.producer.parallelism, edge.target.parallelism
    if edge.distribution_pattern is DistributionPattern.POINTWISE:
        return compute_vertex_input_info_for_pointwise(p, c)
    return compute_vertex_input_info_for_all_to_all(p, c)


# -- descriptors ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShuffleDescriptor:
    """Where one consumed partition lives (Flink's ``NettyShuffleDescriptor``): its id, the
    producer subtask, and the producer's environment address (None: not deployed yet)."""

    partition_id: ResultPartitionID
    producer_subtask_index: int
    producer_location: Address | None


@dataclass(frozen=True, slots=True)
class ResultPartitionDeploymentDescriptor:
    """One partition a subtask produces (Flink's ``ResultPartitionDeploymentDescriptor``): one per
    output edge, with as many subpartitions as consumer subtasks read it."""

    edge_name: str
    consumer_vertex: str
    data_set_id: IntermediateDataSetID
    partition_id: ResultPartitionID
    partition_type: ResultPartitionType
    partition_index: int
    number_of_subpartitions: int


@dataclass(frozen=True, slots=True)
class InputGateDeploymentDescriptor:
    """One gate a subtask reads (Flink's ``InputGateDeploymentDescriptor``): one per input edge,
    with one channel per consumed partition, each reading ``subpartition_index_range``."""

    edge_name: str
    producer_vertex: str
    gate_index: int
    data_set_id: IntermediateDataSetID
    consumed_partition_type: ResultPartitionType
    partition_index_range: IndexRange
    subpartition_index_range: IndexRange
    shuffle_descriptors: tuple[ShuffleDescriptor, ...]

    def channel_specs(self) -> list[InputChannelSpec]:
        """What :meth:`flinknet.NetworkEnvironment.create_input_gate` takes: ``(partition id,
        subpartition index, producer address)`` per channel, partition by partition."""
        specs: list[InputChannelSpec] = []
        for sd in self.shuffle_descriptors:
            if sd.producer_location is None:
                raise ValueError(f"partition {sd.partition_id} of gate {self.edge_name!r} has no "
                                 "producer location: deploy the graph with the producers' addresses")
            for sub in self.subpartition_index_range:
                specs.append((sd.partition_id, sub, sd.producer_location))
        return specs


@dataclass(frozen=True, slots=True)
class TaskDeploymentDescriptor:
    """Everything one subtask needs to run (Flink's ``TaskDeploymentDescriptor``): who it is, the
    partitions it produces (one per output edge) and the gates it reads (one per input edge).
    Plain, picklable data: runners send it to the process or actor that runs the subtask."""

    job_id: JobID
    job_name: str
    vertex_name: str
    vertex_id: JobVertexID
    subtask_index: int
    parallelism: int
    max_parallelism: int
    attempt_number: int
    produced_partitions: tuple[ResultPartitionDeploymentDescriptor, ...]
    input_gates: tuple[InputGateDeploymentDescriptor, ...]

    @property
    def task_name(self) -> str:
        """Flink's task name with subtasks: ``"name (i+1/p)"``."""
        return f"{self.vertex_name} ({self.subtask_index + 1}/{self.parallelism})"

    @property
    def execution_attempt_id(self) -> ExecutionAttemptID:
        """This attempt's id (the producer half of its partitions' ids)."""
        return ExecutionAttemptID(ExecutionGraphID(self.job_id.data),
                                  ExecutionVertexID(self.vertex_id, self.subtask_index), self.attempt_number)


def _partition_id(graph: JobGraph, edge: JobEdge, producer_subtask: int,
                  attempt_number: int) -> ResultPartitionID:
    producer = ExecutionAttemptID(ExecutionGraphID(graph.job_id.data),
                                  ExecutionVertexID(edge.producer.id, producer_subtask), attempt_number)
    return ResultPartitionID(IntermediateResultPartitionID(edge.source.id, producer_subtask), producer)


Locator = Callable[[str, int], "Address | None"]


def deploy(graph: JobGraph, locations: Mapping[tuple[str, int], Address | None] | Locator | None = None,
           attempt_numbers: Mapping[tuple[str, int], int] | None = None,
           ) -> dict[tuple[str, int], TaskDeploymentDescriptor]:
    """One :class:`TaskDeploymentDescriptor` per subtask, keyed by ``(vertex name, subtask
    index)``, in topological order (producers first).

    ``locations`` gives each subtask's environment address (a mapping or a function of ``(vertex
    name, subtask index)``); None leaves producer locations unset (descriptors for planning only:
    :meth:`InputGateDeploymentDescriptor.channel_specs` refuses them). ``attempt_numbers`` (default
    0) gives restarted subtasks new partition ids, as Flink's execution attempts do. Validates the
    graph first."""
    order = graph.vertices_in_topological_order()
    attempts = attempt_numbers or {}

    def locate(vertex: str, subtask: int) -> Address | None:
        if locations is None:
            return None
        if callable(locations):
            return locations(vertex, subtask)
        try:
            return locations[(vertex, subtask)]
        except KeyError:
            raise KeyError(f"no location for subtask {subtask} of {vertex!r}") from None

    def attempt(vertex: JobVertex, subtask: int) -> int:
        n = attempts.get((vertex.name, subtask), 0)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"attempt number of {vertex.name!r} subtask {subtask} must be an int >= 0, "
                             f"got {n!r}")
        return n

    infos = {id(edge): vertex_input_infos(edge) for edge in graph.edges}
    result: dict[tuple[str, int], TaskDeploymentDescriptor] = {}
    for vertex in order:
        for i in range(vertex.parallelism):
            produced = []
            for ds in vertex.produced_data_sets:
                edge = ds.consumer
                assert edge is not None
                produced.append(ResultPartitionDeploymentDescriptor(
                    edge.output_name, edge.target.name, ds.id,
                    _partition_id(graph, edge, i, attempt(vertex, i)),
                    ds.result_type, i, number_of_subpartitions(
                        edge.distribution_pattern, vertex.parallelism, edge.target.parallelism, i)))
            gates = []
            for gate_index, edge in enumerate(vertex.inputs):
                info = infos[id(edge)][i]
                assert info.subtask_index == i
                shuffle = tuple(
                    ShuffleDescriptor(_partition_id(graph, edge, p, attempt(edge.producer, p)), p,
                                      locate(edge.producer.name, p))
                    for p in info.partition_index_range)
                gates.append(InputGateDeploymentDescriptor(
                    edge.input_name, edge.producer.name,
                    gate_index, edge.source.id, edge.result_partition_type, info.partition_index_range,
                    info.subpartition_index_range, shuffle))
            result[(vertex.name, i)] = TaskDeploymentDescriptor(
                graph.job_id, graph.name, vertex.name, vertex.id, i, vertex.parallelism,
                vertex.max_parallelism, attempt(vertex, i), tuple(produced), tuple(gates))
    return result
