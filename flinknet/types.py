"""Partition and exchange types with Flink's flags and selection rules.

Name map (Flink → flinknet): ``ResultPartitionType`` → :class:`ResultPartitionType` (Flink 2.x
members and flags: ``isReconsumable`` → ``is_reconsumable``, ``isBounded`` → ``is_bounded``,
``isPersistent`` → ``is_persistent``, ``mustBePipelinedConsumed`` / ``canBePipelinedConsumed``,
``isReleaseByScheduler`` / ``isReleaseByUpstream``, ``isBlockingOrBlockingPersistentResultPartition``,
``isPipelinedOrPipelinedBoundedResultPartition``, ``isHybridResultPartition``,
``supportCompression``); ``DataExchangeMode`` with ``select``, ``getForForwardExchange``,
``getForShuffleOrBroadcast``, ``getPipelineBreakingExchange``; ``DistributionPattern``;
``ShipStrategyType`` (``isNetworkStrategy``, ``requiresComparator``); ``ExecutionMode``.

:data:`Address` is how flinknet names a network environment's endpoint: ``(host, port)``.
"""

from __future__ import annotations

import enum
from typing import Any, TypeAlias

import numpy as np

from flinknet._core.serialization import PayloadSerializer

__all__ = ["Address", "DataExchangeMode", "DistributionPattern", "ExecutionMode",
           "ResultPartitionType", "SerializerSpec", "ShipStrategyType"]

Address: TypeAlias = tuple[str, int]
"""Where a network environment's server listens, ``(host, port)``: what
:attr:`flinknet.NetworkEnvironment.address` answers and what
:meth:`flinknet.NetworkEnvironment.create_input_gate` takes for a remote partition."""

SerializerSpec: TypeAlias = PayloadSerializer | str | np.dtype[Any]
"""What partitions and readers take as ``serializer``: a payload serializer, a name (``"bytes"``,
``"str"``, ``"int64"``, ``"pickle"``, ...) or a numpy dtype (see
:func:`flinknet._core.serialization.get_serializer`)."""


class _Consuming(enum.Enum):
    BLOCKING = "blocking"
    CAN_BE_PIPELINED = "can be pipelined"
    MUST_BE_PIPELINED = "must be pipelined"


class ResultPartitionType(enum.Enum):
    """How a result partition is produced, consumed and released (Flink 2.x's
    ``ResultPartitionType``)."""

    #: (reconsumable, bounded, persistent, consuming constraint, released by the scheduler)
    _value_: tuple[bool, bool, bool, _Consuming, bool]

    BLOCKING = (True, False, False, _Consuming.BLOCKING, True)
    BLOCKING_PERSISTENT = (True, False, True, _Consuming.BLOCKING, True)
    PIPELINED = (False, False, False, _Consuming.MUST_BE_PIPELINED, False)
    PIPELINED_BOUNDED = (False, True, False, _Consuming.MUST_BE_PIPELINED, False)
    PIPELINED_APPROXIMATE = (False, True, False, _Consuming.CAN_BE_PIPELINED, False)
    HYBRID_FULL = (True, False, False, _Consuming.CAN_BE_PIPELINED, True)
    HYBRID_SELECTIVE = (False, False, False, _Consuming.CAN_BE_PIPELINED, True)

    @property
    def is_reconsumable(self) -> bool:
        """Can be consumed several times, by several consumers."""
        return self.value[0]

    @property
    def is_bounded(self) -> bool:
        """Uses a limited number of network buffers."""
        return self.value[1]

    @property
    def is_persistent(self) -> bool:
        """Not released after consumption."""
        return self.value[2]

    @property
    def must_be_pipelined_consumed(self) -> bool:
        """Producer and consumer must be scheduled together."""
        return self.value[3] is _Consuming.MUST_BE_PIPELINED

    @property
    def can_be_pipelined_consumed(self) -> bool:
        """Consumers may read while the producer still writes."""
        return self.value[3] is not _Consuming.BLOCKING

    @property
    def is_release_by_scheduler(self) -> bool:
        """Released by the scheduler once consumed (blocking and hybrid types)."""
        return self.value[4]

    @property
    def is_release_by_upstream(self) -> bool:
        """Released by the producer once consumed (pipelined types)."""
        return not self.value[4]

    @property
    def is_blocking(self) -> bool:
        """Consumed only after the producer finished (BLOCKING, BLOCKING_PERSISTENT)."""
        return self.value[3] is _Consuming.BLOCKING

    @property
    def is_pipelined(self) -> bool:
        """Consumed while produced (pipelined, approximate and hybrid types)."""
        return self.can_be_pipelined_consumed

    @property
    def is_blocking_or_blocking_persistent_result_partition(self) -> bool:
        return self in (ResultPartitionType.BLOCKING, ResultPartitionType.BLOCKING_PERSISTENT)

    @property
    def is_pipelined_or_pipelined_bounded_result_partition(self) -> bool:
        return self in (ResultPartitionType.PIPELINED, ResultPartitionType.PIPELINED_BOUNDED)

    @property
    def is_hybrid_result_partition(self) -> bool:
        return self in (ResultPartitionType.HYBRID_FULL, ResultPartitionType.HYBRID_SELECTIVE)

    @property
    def support_compression(self) -> bool:
        """Buffers may be compressed (blocking and hybrid types, never streaming ones)."""
        return self.is_blocking_or_blocking_persistent_result_partition or self.is_hybrid_result_partition

    @property
    def has_back_pressure(self) -> bool:
        """A slow consumer slows the producer down: the pipelined types, which the upstream
        releases. Blocking and hybrid partitions absorb the difference (on disk) instead."""
        return self.is_release_by_upstream

    @property
    def requires_finite_streams(self) -> bool:
        """Usable only for bounded inputs (batch): the types the scheduler releases after the
        producer finished (blocking and hybrid). Streaming edges use the pipelined types."""
        return self.is_release_by_scheduler


class ExecutionMode(enum.Enum):
    """Flink's ExecutionMode (how exchanges are chosen for batch programs)."""

    PIPELINED = 0
    PIPELINED_FORCED = 1
    BATCH = 2
    BATCH_FORCED = 3


class ShipStrategyType(enum.Enum):
    """Flink's ShipStrategyType: (is a network strategy, requires a comparator)."""

    NONE = (False, False)
    FORWARD = (False, False)
    PARTITION_RANDOM = (True, False)
    PARTITION_HASH = (True, True)
    PARTITION_RANGE = (True, True)
    PARTITION_FORCED_REBALANCE = (True, False)
    BROADCAST = (True, False)
    PARTITION_CUSTOM = (True, True)

    is_network_strategy: bool
    requires_comparator: bool

    def __new__(cls, network: bool, comparator: bool) -> ShipStrategyType:
        member = object.__new__(cls)
        member._value_ = len(cls.__members__)
        member.is_network_strategy = network
        member.requires_comparator = comparator
        return member


class DistributionPattern(enum.Enum):
    """How producer subtasks connect to consumer subtasks."""

    #: Each producer subtask is connected to each consumer subtask.
    ALL_TO_ALL = "all_to_all"
    #: Each producer subtask is connected to one or a few consumer subtasks.
    POINTWISE = "pointwise"


class DataExchangeMode(enum.Enum):
    """Flink's DataExchangeMode and its selection from an ExecutionMode."""

    PIPELINED = "pipelined"
    BATCH = "batch"
    PIPELINE_WITH_BATCH_FALLBACK = "pipeline_with_batch_fallback"

    @staticmethod
    def get_for_forward_exchange(mode: ExecutionMode) -> DataExchangeMode:
        return _FORWARD[ExecutionMode(mode)]

    @staticmethod
    def get_for_shuffle_or_broadcast(mode: ExecutionMode) -> DataExchangeMode:
        return _SHUFFLE[ExecutionMode(mode)]

    @staticmethod
    def get_pipeline_breaking_exchange(mode: ExecutionMode) -> DataExchangeMode:
        return _BREAKING[ExecutionMode(mode)]

    @staticmethod
    def select(execution_mode: ExecutionMode, ship_strategy: ShipStrategyType,
               break_pipeline: bool) -> DataExchangeMode:
        """The exchange mode for an edge (Flink's ``DataExchangeMode.select``)."""
        if ship_strategy is None or ship_strategy is ShipStrategyType.NONE:
            raise ValueError("ship_strategy may not be None or NONE")
        if execution_mode is None:
            raise ValueError("execution_mode may not be None")
        if break_pipeline:
            return DataExchangeMode.get_pipeline_breaking_exchange(execution_mode)
        if ship_strategy is ShipStrategyType.FORWARD:
            return DataExchangeMode.get_for_forward_exchange(execution_mode)
        return DataExchangeMode.get_for_shuffle_or_broadcast(execution_mode)


_P, _B = DataExchangeMode.PIPELINED, DataExchangeMode.BATCH
_FORWARD = {ExecutionMode.PIPELINED_FORCED: _P, ExecutionMode.PIPELINED: _P,
            ExecutionMode.BATCH: _P, ExecutionMode.BATCH_FORCED: _B}
_SHUFFLE = {ExecutionMode.PIPELINED_FORCED: _P, ExecutionMode.PIPELINED: _P,
            ExecutionMode.BATCH: _B, ExecutionMode.BATCH_FORCED: _B}
_BREAKING = {ExecutionMode.PIPELINED_FORCED: _P, ExecutionMode.PIPELINED: _B,
             ExecutionMode.BATCH: _B, ExecutionMode.BATCH_FORCED: _B}
