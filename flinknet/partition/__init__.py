"""The producer side of the exchange: result partitions, subpartitions and their views (§8).

Name map (Flink → flinknet):

=====================================================  =================================================
``BufferWritingResultPartition`` / ``ResultPartition``  :class:`ResultPartition`
``PipelinedResultPartition``                            :class:`PipelinedResultPartition`
``BoundedBlockingResultPartition``                      :class:`BoundedBlockingResultPartition`
``PipelinedSubpartition`` / ``PipelinedSubpartitionView``  :class:`PipelinedSubpartition` / :class:`PipelinedSubpartitionView`
``BoundedBlockingSubpartition`` (+ ``Reader``)           :class:`BoundedBlockingSubpartition` / :class:`BoundedBlockingSubpartitionReader`
``ResultPartitionManager``                              :class:`ResultPartitionManager`
``ResultSubpartition.BufferAndBacklog``                 :class:`BufferAndBacklog`
``BufferAvailabilityListener``                          :class:`BufferAvailabilityListener`
``emitRecord`` / ``broadcastRecord``                    ``emit_record`` / ``broadcast_record``
``broadcastEvent(event, isPriority)``                   ``broadcast_event(event, is_priority)``
``flush(i)`` / ``flushAll()``                           ``flush(i)`` / ``flush_all()``
``createSubpartitionView(index, listener)``             ``create_subpartition_view(index, listener)``
``getNextBuffer()`` / ``resumeConsumption()``           ``get_next_buffer()`` / ``resume_consumption()``
``getAvailabilityAndBacklog(hasCredit)``                ``get_availability_and_backlog(has_credit)``
``finish()`` / ``close()`` / ``release(cause)`` / ``fail(t)``  same names
=====================================================  =================================================
"""

from flinknet.partition.blocking import (
    BoundedBlockingResultPartition,
    BoundedBlockingSubpartition,
    BoundedBlockingSubpartitionReader,
    CorruptPartitionFileError,
)
from flinknet.partition.manager import ResultPartitionManager
from flinknet.partition.result_partition import (
    PipelinedResultPartition,
    ResultPartition,
    get_min_max_network_buffers_per_result_partition,
)
from flinknet.partition.subpartition import (
    ADD_BUFFER_ERROR_CODE,
    AvailabilityWithBacklog,
    BufferAndBacklog,
    BufferAvailabilityListener,
    PipelinedSubpartition,
    PipelinedSubpartitionView,
)

__all__ = [
    "ADD_BUFFER_ERROR_CODE",
    "AvailabilityWithBacklog",
    "BoundedBlockingResultPartition",
    "BoundedBlockingSubpartition",
    "BoundedBlockingSubpartitionReader",
    "BufferAndBacklog",
    "BufferAvailabilityListener",
    "CorruptPartitionFileError",
    "PipelinedResultPartition",
    "PipelinedSubpartition",
    "PipelinedSubpartitionView",
    "ResultPartition",
    "ResultPartitionManager",
    "create_result_partition",
    "get_min_max_network_buffers_per_result_partition",
]


def create_result_partition(network_buffer_pool, num_subpartitions, partition_type=None, **kwargs):
    """A partition of the right kind for ``partition_type`` (Flink's ResultPartitionFactory):
    blocking types get a :class:`BoundedBlockingResultPartition`, all others a
    :class:`PipelinedResultPartition`; the pool is sized as Flink sizes it."""
    from flinknet.types import ResultPartitionType

    partition_type = ResultPartitionType.PIPELINED_BOUNDED if partition_type is None else partition_type
    cls = BoundedBlockingResultPartition if partition_type.is_blocking else PipelinedResultPartition
    return cls.create(network_buffer_pool, num_subpartitions, partition_type=partition_type, **kwargs)
