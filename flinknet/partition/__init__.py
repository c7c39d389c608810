"""The producer side of the exchange: result partitions, subpartitions and their views.

Name map (Flink → flinknet):

==============================================================  ============================================
``BufferWritingResultPartition`` / ``ResultPartition``          :class:`ResultPartition`
``PipelinedResultPartition``                                    :class:`PipelinedResultPartition`
``BoundedBlockingResultPartition``                              :class:`BoundedBlockingResultPartition`
``ResultSubpartition``                                          :class:`ResultSubpartition` (a Protocol)
``PipelinedSubpartition``                                       :class:`PipelinedSubpartition`
``PipelinedSubpartitionView``                                   :class:`PipelinedSubpartitionView`
``BoundedBlockingSubpartition``                                 :class:`BoundedBlockingSubpartition`
``BoundedBlockingSubpartitionReader``                           :class:`BoundedBlockingSubpartitionReader`
``ResultPartitionManager``                                      :class:`ResultPartitionManager`
``ResultSubpartition.BufferAndBacklog``                         :class:`BufferAndBacklog`
``BufferAvailabilityListener``                                  :class:`BufferAvailabilityListener`
``emitRecord`` / ``broadcastRecord``                            ``emit_record`` / ``broadcast_record``
``broadcastEvent(event, isPriority)``                           ``broadcast_event(event, is_priority)``
``flush(i)`` / ``flushAll()``                                   ``flush(i)`` / ``flush_all()``
``createSubpartitionView(i, listener)``                          ``create_subpartition_view(i, listener)``
``getNextBuffer()``                                             ``get_next_buffer()``
``resumeConsumption()``                                         ``resume_consumption()``
``getAvailabilityAndBacklog(hasCredit)``                        ``get_availability_and_backlog(has_credit)``
``finish()`` / ``close()`` / ``release(cause)`` / ``fail(t)``   same names
(a lost consumer: Flink's region failover)                      ``ConsumerLostError`` (``lost_consumers``)
==============================================================  ============================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flinknet._core.pool import NetworkBufferPool
from flinknet.partition.blocking import (
    BoundedBlockingResultPartition,
    BoundedBlockingSubpartition,
    BoundedBlockingSubpartitionReader,
    CorruptPartitionFileError,
)
from flinknet.partition.manager import ResultPartitionManager
from flinknet.partition.result_partition import (
    ConsumerLostPolicy,
    LostConsumer,
    OutputChannelStateWriter,
    PipelinedResultPartition,
    ResultPartition,
    ResultSubpartition,
    get_min_max_network_buffers_per_result_partition,
)
from flinknet.partition.subpartition import (
    ADD_BUFFER_ERROR_CODE,
    AvailabilityWithBacklog,
    BufferAndBacklog,
    BufferAvailabilityListener,
    PipelinedSubpartition,
    PipelinedSubpartitionView,
    ResultSubpartitionInfo,
)

if TYPE_CHECKING:
    from flinknet.types import ResultPartitionType

__all__ = [
    "ADD_BUFFER_ERROR_CODE",
    "AvailabilityWithBacklog",
    "BoundedBlockingResultPartition",
    "BoundedBlockingSubpartition",
    "BoundedBlockingSubpartitionReader",
    "BufferAndBacklog",
    "BufferAvailabilityListener",
    "ConsumerLostPolicy",
    "CorruptPartitionFileError",
    "LostConsumer",
    "OutputChannelStateWriter",
    "PipelinedResultPartition",
    "PipelinedSubpartition",
    "PipelinedSubpartitionView",
    "ResultPartition",
    "ResultSubpartitionInfo",
    "ResultPartitionManager",
    "ResultSubpartition",
    "create_result_partition",
    "get_min_max_network_buffers_per_result_partition",
]


def create_result_partition(network_buffer_pool: NetworkBufferPool, num_subpartitions: int,
                            partition_type: ResultPartitionType | None = None,
                            **kwargs: Any) -> ResultPartition:
    """A partition of the right kind for ``partition_type`` (Flink's ResultPartitionFactory):
    blocking types get a :class:`BoundedBlockingResultPartition`, all others a
    :class:`PipelinedResultPartition`; the pool is sized as Flink sizes it. ``kwargs`` go to
    :meth:`ResultPartition.create` and the partition's constructor."""
    from flinknet.types import ResultPartitionType

    partition_type = ResultPartitionType.PIPELINED_BOUNDED if partition_type is None else partition_type
    cls: type[ResultPartition] = (BoundedBlockingResultPartition if partition_type.is_blocking
                                  else PipelinedResultPartition)
    return cls.create(network_buffer_pool, num_subpartitions, partition_type=partition_type, **kwargs)
