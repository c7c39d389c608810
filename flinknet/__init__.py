"""flinknet: Apache Flink's network stack (its data plane between tasks) for Python.

The compiled core (``flinknet._core``) holds the memory every record travels in (memory segments,
the global :class:`NetworkBufferPool` and its :class:`LocalBufferPool` s, reference-counted
buffers and the :class:`BufferBuilder` / :class:`BufferConsumer` hand-off) and the byte formats
it carries, identical with Flink 2.3: records framed across buffers
(:class:`SpanningRecordSerializer`, :class:`RecordDeserializer`), stream elements, key groups;
events are in :mod:`flinknet.events`.
"""

from flinknet._core.buffer import (
    FREEING_BUFFER_RECYCLER,
    Buffer,
    BufferRecycler,
    DataType,
    FreeingBufferRecycler,
    NetworkBuffer,
    ReadOnlySlicedNetworkBuffer,
)
from flinknet._core.builder import BufferBuilder, BufferConsumer
from flinknet._core.elements import (
    InternalWatermark,
    LatencyMarker,
    RecordAttributes,
    StreamElementSerializer,
    StreamRecord,
    Watermark,
    WatermarkStatus,
)
from flinknet._core.keygroups import (
    KeyGroupRange,
    assign_key_to_parallel_operator,
    assign_to_key_group,
    compute_default_max_parallelism,
    compute_key_group_range_for_operator_index,
    compute_operator_index_for_key_group,
)
from flinknet._core.memory import MemorySegment
from flinknet._core.pool import UNBOUNDED, LocalBufferPool, NetworkBufferPool
from flinknet._core.serialization import (
    BytePrimitiveArraySerializer,
    BytesSerializer,
    DeserializationResult,
    Float64Serializer,
    Int32Serializer,
    Int64Serializer,
    NumpyRecordSerializer,
    PayloadSerializer,
    PickleSerializer,
    RecordDeserializer,
    SpanningRecordSerializer,
    StringSerializer,
)
from flinknet.errors import (
    BufferRequestTimeoutError,
    CancelTaskError,
    CorruptRecordError,
    FlinknetError,
    IllegalReferenceCountError,
    IllegalStateError,
    InsufficientNetworkBuffersError,
    SegmentFreedError,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "BytePrimitiveArraySerializer",
    "BytesSerializer",
    "CorruptRecordError",
    "DeserializationResult",
    "Float64Serializer",
    "Int32Serializer",
    "Int64Serializer",
    "InternalWatermark",
    "KeyGroupRange",
    "LatencyMarker",
    "NumpyRecordSerializer",
    "PayloadSerializer",
    "PickleSerializer",
    "RecordAttributes",
    "RecordDeserializer",
    "SpanningRecordSerializer",
    "StreamElementSerializer",
    "StreamRecord",
    "StringSerializer",
    "Watermark",
    "WatermarkStatus",
    "assign_key_to_parallel_operator",
    "assign_to_key_group",
    "compute_default_max_parallelism",
    "compute_key_group_range_for_operator_index",
    "compute_operator_index_for_key_group",
    "Buffer",
    "BufferBuilder",
    "BufferConsumer",
    "BufferRecycler",
    "BufferRequestTimeoutError",
    "CancelTaskError",
    "DataType",
    "FREEING_BUFFER_RECYCLER",
    "FlinknetError",
    "FreeingBufferRecycler",
    "IllegalReferenceCountError",
    "IllegalStateError",
    "InsufficientNetworkBuffersError",
    "LocalBufferPool",
    "MemorySegment",
    "NetworkBuffer",
    "NetworkBufferPool",
    "ReadOnlySlicedNetworkBuffer",
    "SegmentFreedError",
    "UNBOUNDED",
    "__version__",
]
