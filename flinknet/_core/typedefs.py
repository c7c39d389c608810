"""Types the compiled core's functions take but that are not classes of the core itself.

The stubs (``flinknet/_core/*.pyi``) describe callbacks the core calls and string options it
accepts with the names below. They live here, in plain Python, so that they exist at run time:
``from flinknet._core.typedefs import BufferListener`` works in annotations and in code alike, and
``mypy.stubtest`` checks every name a stub declares against the compiled module (a name declared
only in a stub would be a name the module does not have).

==================  ===========================================================================
name                used by
==================  ===========================================================================
``BufferListener``  :meth:`flinknet._core.pool.LocalBufferPool.add_buffer_listener`
``BufferSink``      :class:`flinknet._core.serialization.SpanningRecordSerializer` (``sink``)
``KeyType``         the ``key_type`` argument of :mod:`flinknet._core.keygroups`
==================  ===========================================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

if TYPE_CHECKING:
    from flinknet._core.buffer import NetworkBuffer
    from flinknet._core.builder import BufferConsumer

__all__ = ["BufferListener", "BufferSink", "KeyType"]

KeyType: TypeAlias = Literal["int", "long", "string", "boolean", "bytes"]
"""How :func:`~flinknet._core.keygroups.java_hash_code` hashes a key (Java's Integer, Long,
String, Boolean or ``byte[]``); the same strings as ``flinknet._core.keygroups.KEY_TYPES``."""


class BufferListener(Protocol):
    """What :meth:`LocalBufferPool.add_buffer_listener` expects (Flink's ``BufferListener``).

    ``notify_buffer_available(buffer)`` returns True to keep ``buffer`` (the listener then owns
    one reference) or False to pass it on; ``notify_buffer_destroyed()`` is called instead if the
    pool is destroyed first.
    """

    def notify_buffer_available(self, buffer: NetworkBuffer) -> bool: ...
    def notify_buffer_destroyed(self) -> None: ...


class BufferSink(Protocol):
    """What :class:`SpanningRecordSerializer` reports buffers to (the partition layer).

    ``add_buffer_consumer`` receives the consumer of each new buffer of ``subpartition`` (a
    broadcast buffer's consumer is copied to every subpartition) and may answer the desired
    buffer size (None or 0: no preference); ``buffer_finished`` is told how many bytes a finished
    buffer of ``subpartition`` holds (-1: the broadcast buffer).
    """

    def add_buffer_consumer(self, subpartition: int, consumer: BufferConsumer,
                            partial_record_length: int) -> int | None: ...
    def buffer_finished(self, subpartition: int, num_bytes: int) -> None: ...
