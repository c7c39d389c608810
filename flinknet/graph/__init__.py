"""Deploying jobs: a job graph, deployment descriptors, the task side and runners.

* :class:`JobGraph` / :class:`JobVertex` / :class:`IntermediateDataSet` / :class:`JobEdge`
  (:mod:`flinknet.graph.jobgraph`): what a framework's job is, validated as Flink validates it.
* :func:`deploy` and the descriptors (:mod:`flinknet.graph.deployment`): one
  :class:`TaskDeploymentDescriptor` per subtask with Flink's partition and subpartition ranges.
* :class:`TaskContext` (:mod:`flinknet.graph.task`): a subtask's writers and readers by edge name.
* Runners (:mod:`flinknet.graph.runners`): :class:`ThreadRunner`, :class:`ProcessRunner` and,
  with the ``ray`` extra, :class:`RayRunner`, all ``run(graph, functions) → JobResult``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flinknet.graph.deployment import (
    ExecutionVertexInputInfo,
    IndexRange,
    InputGateDeploymentDescriptor,
    ResultPartitionDeploymentDescriptor,
    ShuffleDescriptor,
    TaskDeploymentDescriptor,
    compute_consumed_subpartition_range,
    compute_vertex_input_info_for_all_to_all,
    compute_vertex_input_info_for_pointwise,
    deploy,
    number_of_subpartitions,
)
from flinknet.graph.jobgraph import (
    GraphValidationError,
    IntermediateDataSet,
    JobEdge,
    JobGraph,
    JobVertex,
    Partitioning,
)
from flinknet.graph.runners import (
    JobFailedError,
    JobHandle,
    JobResult,
    ProcessRunner,
    ReportCallback,
    Runner,
    TaskFailure,
    ThreadRunner,
    Worker,
    WorkerLostError,
)
from flinknet.graph.task import TaskContext, TaskFunction, TaskResult

if TYPE_CHECKING:
    from flinknet.graph.ray import RayRunner

__all__ = [
    "ExecutionVertexInputInfo", "GraphValidationError", "IndexRange", "InputGateDeploymentDescriptor",
    "IntermediateDataSet", "JobEdge", "JobFailedError", "JobGraph", "JobHandle", "JobResult", "JobVertex",
    "Partitioning", "ProcessRunner", "RayRunner", "ReportCallback", "ResultPartitionDeploymentDescriptor",
    "Runner",
    "ShuffleDescriptor", "TaskContext", "TaskDeploymentDescriptor", "TaskFailure", "TaskFunction",
    "TaskResult", "ThreadRunner", "Worker", "WorkerLostError", "compute_consumed_subpartition_range",
    "compute_vertex_input_info_for_all_to_all", "compute_vertex_input_info_for_pointwise", "deploy",
    "number_of_subpartitions",
]


def __getattr__(name: str) -> Any:
    # RayRunner imports ray only when asked for: ray is an optional extra.
    if name == "RayRunner":
        from flinknet.graph.ray import RayRunner

        return RayRunner
    raise AttributeError(f"module 'flinknet.graph' has no attribute {name!r}")
