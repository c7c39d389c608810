"""flinknet's exception hierarchy.

Every error flinknet raises on purpose derives from :class:`FlinknetError`, and also from the
builtin exception a Python user would expect, so ``except ValueError`` or ``except TimeoutError``
keeps working. Misuse of exported memory raises the builtin :class:`BufferError` (as ``bytearray``
and ``memoryview`` do).

Map to Apache Flink:

==============================================  ==============================================
Flink                                           flinknet
==============================================  ==============================================
IllegalStateException                           :class:`IllegalStateError`
IllegalStateException("segment has been freed") :class:`SegmentFreedError`
IllegalReferenceCountException (Netty)          :class:`IllegalReferenceCountError`
IOException("Insufficient number of network     :class:`InsufficientNetworkBuffersError`
buffers ...")
IOException("Timeout triggered when requesting  :class:`BufferRequestTimeoutError`
exclusive buffers ...")
CancelTaskException                             :class:`CancelTaskError`
IOException("Serializer consumed more bytes    :class:`CorruptRecordError` (also for negative
than the record had")                           or oversized lengths, which Flink does not check)
IOException("Corrupt byte stream for event")    :class:`flinknet.events.CorruptEventError`
PartitionNotFoundException                      :class:`PartitionNotFoundError`
ProducerFailedException                         :class:`ProducerFailedError`
IllegalArgumentException                        :class:`ValueError`
IndexOutOfBoundsException                       :class:`IndexError`
==============================================  ==============================================
"""

from __future__ import annotations

__all__ = [
    "FlinknetError",
    "IllegalStateError",
    "SegmentFreedError",
    "IllegalReferenceCountError",
    "InsufficientNetworkBuffersError",
    "BufferRequestTimeoutError",
    "CancelTaskError",
    "CorruptRecordError",
    "PartitionNotFoundError",
    "ProducerFailedError",
]


class FlinknetError(Exception):
    """Base class of every error flinknet raises on purpose."""


class IllegalStateError(FlinknetError, RuntimeError):
    """An object was used in a state that does not allow the call (Flink's IllegalStateException)."""


class SegmentFreedError(IllegalStateError):
    """A memory segment was accessed after ``free()``."""


class IllegalReferenceCountError(IllegalStateError):
    """A buffer was retained or recycled after its reference count had reached zero."""


class InsufficientNetworkBuffersError(FlinknetError, OSError):
    """The global pool cannot guarantee the buffers a pool or channel requires.

    The message is Flink's: "Insufficient number of network buffers: required X, but only Y
    available. The total number of network buffers is currently set to ...".
    """


class BufferRequestTimeoutError(FlinknetError, TimeoutError):
    """A blocking buffer request did not get its buffers before its deadline."""


class CancelTaskError(FlinknetError):
    """The pool or partition a task works with was destroyed under it (Flink's CancelTaskException).

    Raised to requesters blocked on a buffer pool when the pool is destroyed, so that the task
    stops instead of waiting forever.
    """


class CorruptRecordError(FlinknetError, ValueError):
    """A record in a channel's byte stream cannot be valid: a negative length, a length beyond the
    configured maximum, or a payload serializer that does not consume exactly the record's bytes.

    ``channel`` names the input channel (whatever the deserializer was given) and ``offset`` is the
    byte offset of the record's length prefix in that channel's stream. Nothing is allocated for an
    impossible length. The stream cannot be resynchronised afterwards: ``clear()`` the
    deserializer (its buffer goes back to its pool) and fail the channel.
    """

    def __init__(self, message: str, channel: object = None, offset: int | None = None):
        super().__init__(message)
        self.channel = channel
        self.offset = offset


class PartitionNotFoundError(FlinknetError, OSError):
    """A consumer asked for a result partition that is not registered (Flink's
    PartitionNotFoundException), after its retries with backoff ran out.

    ``partition_id`` is the :class:`~flinknet.ids.ResultPartitionID` asked for.
    """

    def __init__(self, partition_id: object):
        super().__init__(f"Partition {partition_id} not found.")
        self.partition_id = partition_id


class ProducerFailedError(CancelTaskError):
    """The producer of a partition failed; raised to its consumers (Flink's ProducerFailedException).

    ``__cause__`` is the producer's exception.
    """

    def __init__(self, cause: BaseException | None):
        super().__init__(f"The producer of the consumed partition failed: {cause!r}")
        self.__cause__ = cause
