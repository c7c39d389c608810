"""The memory core and the byte formats, compiled (Cython): everything records travel in.

A framework rarely needs these directly (a :class:`~flinknet.NetworkEnvironment` owns the
process's memory); they are for code that builds its own exchange or works per buffer:

* memory: :class:`MemorySegment`, the global :class:`NetworkBufferPool` and its
  :class:`LocalBufferPool` s, reference-counted :class:`Buffer` s (:class:`NetworkBuffer`,
  :class:`ReadOnlySlicedNetworkBuffer`), the :class:`BufferBuilder` / :class:`BufferConsumer`
  hand-off, :class:`AvailabilityHelper`;
* records framed across buffers exactly as Flink frames them: :class:`SpanningRecordSerializer`,
  :class:`RecordDeserializer` and the payload serializers;
* stream elements (:class:`StreamElementSerializer`: records, watermarks, latency markers, ...)
  and key groups (:func:`assign_to_key_group`, ...), identical with Flink 2.3.

Events are in :mod:`flinknet.events`. Each class's docstring maps it to its Flink counterpart.
Until 0.1 these names were exported by ``flinknet`` itself; they still resolve there, with a
``DeprecationWarning``.
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
    key_groups_array,
    key_groups_of,
    key_groups_of_slices,
    operator_indexes_array,
    operator_indexes_of,
    operator_indexes_of_slices,
)
from flinknet._core.memory import MemorySegment
from flinknet._core.pool import UNBOUNDED, AvailabilityHelper, LocalBufferPool, NetworkBufferPool
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

__all__ = [
    "AvailabilityHelper",
    "Buffer",
    "BufferBuilder",
    "BufferConsumer",
    "BufferRecycler",
    "BytePrimitiveArraySerializer",
    "BytesSerializer",
    "DataType",
    "DeserializationResult",
    "FREEING_BUFFER_RECYCLER",
    "Float64Serializer",
    "FreeingBufferRecycler",
    "Int32Serializer",
    "Int64Serializer",
    "InternalWatermark",
    "KeyGroupRange",
    "LatencyMarker",
    "LocalBufferPool",
    "MemorySegment",
    "NetworkBuffer",
    "NetworkBufferPool",
    "NumpyRecordSerializer",
    "PayloadSerializer",
    "PickleSerializer",
    "ReadOnlySlicedNetworkBuffer",
    "RecordAttributes",
    "RecordDeserializer",
    "SpanningRecordSerializer",
    "StreamElementSerializer",
    "StreamRecord",
    "StringSerializer",
    "UNBOUNDED",
    "Watermark",
    "WatermarkStatus",
    "assign_key_to_parallel_operator",
    "assign_to_key_group",
    "compute_default_max_parallelism",
    "compute_key_group_range_for_operator_index",
    "compute_operator_index_for_key_group",
    "key_groups_array",
    "key_groups_of",
    "key_groups_of_slices",
    "operator_indexes_array",
    "operator_indexes_of",
    "operator_indexes_of_slices",
]
