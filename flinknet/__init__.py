"""flinknet: Apache Flink's network stack (its data plane between tasks) for Python.

A framework moves records between its tasks with these names:

* **Set-up**: one :class:`NetworkEnvironment` per process (Flink's ``NettyShuffleEnvironment``)
  configured by a :class:`NetworkConfig` (Flink's option keys and defaults); it creates result
  partitions and input gates and runs the TCP transport; its :attr:`~NetworkEnvironment.address`
  (an :data:`Address`, ``(host, port)``) names it to the environments that read its partitions.
* **Producing**: a :class:`RecordWriter` (or :class:`BroadcastRecordWriter`, built by
  :class:`RecordWriterBuilder`) emits records through a channel selector
  (:class:`KeyGroupStreamPartitioner`, :class:`RebalancePartitioner`, ...) into a
  :class:`ResultPartition` of a :class:`ResultPartitionType`, identified by a
  :class:`ResultPartitionID`.
* **Consuming**: a :class:`RecordReader` iterates the records of a :class:`SingleInputGate` (one
  channel per producer subtask) or a :class:`UnionInputGate`; gates hand out
  :class:`BufferOrEvent` s.
* **Observing**: :class:`MetricRegistry`, :class:`TaskIOMetrics` and :func:`backpressure_level`
  (:mod:`flinknet.metrics` has the rest, including the Prometheus reporter).
* **Errors**: every error is a :class:`FlinknetError` (:mod:`flinknet.errors` has the tree).

Below this API: :mod:`flinknet.core` (the compiled memory core and byte formats),
:mod:`flinknet.events` (Flink's network events), :mod:`flinknet.partition`,
:mod:`flinknet.consumer`, :mod:`flinknet.transport` and :mod:`flinknet.interfaces` (the declared
seams between them). The command-line tools (``flinknet demo``, ``flinknet bench``) live in
:mod:`flinknet.tools`, which the library never imports.
"""

from __future__ import annotations

import warnings as _warnings
from typing import TYPE_CHECKING, Any

from flinknet.config import NetworkConfig
from flinknet.consumer import (
    BufferOrEvent,
    InputChannelInfo,
    InputGate,
    RecordOrEvent,
    RecordReader,
    SingleInputGate,
    UnionInputGate,
)
from flinknet.environment import NetworkEnvironment
from flinknet.errors import (
    BufferReorderingError,
    BufferRequestTimeoutError,
    CancelTaskError,
    ConfigurationError,
    ConsumerLostError,
    CorruptEventError,
    CorruptFrameError,
    CorruptPartitionFileError,
    CorruptRecordError,
    FlinknetError,
    HandshakeError,
    IllegalReferenceCountError,
    IllegalStateError,
    InsufficientNetworkBuffersError,
    LocalTransportError,
    OutputFlusherError,
    PartitionNotFoundError,
    PeerLimitError,
    ProducerFailedError,
    RemoteTransportError,
    SegmentFreedError,
    TransportError,
    UnknownConfigurationKeyError,
    UnsupportedCompressionError,
)
from flinknet.ids import (
    ExecutionAttemptID,
    IntermediateDataSetID,
    IntermediateResultPartitionID,
    JobVertexID,
    OperatorID,
    ResultPartitionID,
)
from flinknet.metrics import MetricRegistry, TaskIOMetrics, backpressure_level
from flinknet.partition import (
    BoundedBlockingResultPartition,
    PipelinedResultPartition,
    ResultPartition,
    ResultPartitionManager,
    create_result_partition,
)
from flinknet.partitioners import (
    BroadcastPartitioner,
    ChannelSelector,
    CustomPartitionerWrapper,
    ForwardPartitioner,
    GlobalPartitioner,
    KeyGroupStreamPartitioner,
    RebalancePartitioner,
    RescalePartitioner,
    RoundRobinChannelSelector,
    ShufflePartitioner,
)
from flinknet.types import Address, DistributionPattern, ResultPartitionType
from flinknet.writer import BroadcastRecordWriter, RecordWriter, RecordWriterBuilder

__version__ = "0.1.0.dev0"

__all__ = [
    # set-up
    "Address",
    "NetworkConfig",
    "NetworkEnvironment",
    # producing
    "BroadcastRecordWriter",
    "RecordWriter",
    "RecordWriterBuilder",
    "BoundedBlockingResultPartition",
    "PipelinedResultPartition",
    "ResultPartition",
    "ResultPartitionManager",
    "ResultPartitionType",
    "DistributionPattern",
    "create_result_partition",
    # channel selectors
    "BroadcastPartitioner",
    "ChannelSelector",
    "CustomPartitionerWrapper",
    "ForwardPartitioner",
    "GlobalPartitioner",
    "KeyGroupStreamPartitioner",
    "RebalancePartitioner",
    "RescalePartitioner",
    "RoundRobinChannelSelector",
    "ShufflePartitioner",
    # consuming
    "BufferOrEvent",
    "InputChannelInfo",
    "InputGate",
    "RecordOrEvent",
    "RecordReader",
    "SingleInputGate",
    "UnionInputGate",
    # identifiers
    "ExecutionAttemptID",
    "IntermediateDataSetID",
    "IntermediateResultPartitionID",
    "JobVertexID",
    "OperatorID",
    "ResultPartitionID",
    # metrics
    "MetricRegistry",
    "TaskIOMetrics",
    "backpressure_level",
    # errors
    "BufferReorderingError",
    "BufferRequestTimeoutError",
    "CancelTaskError",
    "ConfigurationError",
    "ConsumerLostError",
    "CorruptEventError",
    "CorruptFrameError",
    "CorruptPartitionFileError",
    "CorruptRecordError",
    "FlinknetError",
    "HandshakeError",
    "PeerLimitError",
    "IllegalReferenceCountError",
    "IllegalStateError",
    "InsufficientNetworkBuffersError",
    "LocalTransportError",
    "OutputFlusherError",
    "PartitionNotFoundError",
    "ProducerFailedError",
    "RemoteTransportError",
    "SegmentFreedError",
    "TransportError",
    "UnknownConfigurationKeyError",
    "UnsupportedCompressionError",
    "__version__",
]


if not TYPE_CHECKING:  # type checkers see only the names above: the moved ones are errors there
    def __getattr__(name: str) -> Any:
        # Until 0.1 the package exported the memory core (NetworkBufferPool, Buffer, ...); those
        # names moved to flinknet.core (issue 13) and still resolve here, with a warning.
        import flinknet.core as _core_api

        if name in _core_api.__all__:
            _warnings.warn(f"flinknet.{name} moved to flinknet.core.{name}", DeprecationWarning,
                           stacklevel=2)
            return getattr(_core_api, name)
        raise AttributeError(f"module 'flinknet' has no attribute {name!r}")
