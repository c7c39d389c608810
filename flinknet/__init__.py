"""flinknet: Apache Flink's network stack (its data plane between tasks) for Python.

The compiled core (``flinknet._core``) holds the memory every record travels in: memory segments,
the global :class:`NetworkBufferPool` and its :class:`LocalBufferPool` s, reference-counted
buffers and the :class:`BufferBuilder` / :class:`BufferConsumer` hand-off.
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
from flinknet._core.memory import MemorySegment
from flinknet._core.pool import UNBOUNDED, LocalBufferPool, NetworkBufferPool
from flinknet.errors import (
    BufferRequestTimeoutError,
    CancelTaskError,
    FlinknetError,
    IllegalReferenceCountError,
    IllegalStateError,
    InsufficientNetworkBuffersError,
    SegmentFreedError,
)

__version__ = "0.1.0.dev0"

__all__ = [
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
