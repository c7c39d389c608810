"""flinknet's exception hierarchy: every exception class flinknet defines lives in this module.

Every error flinknet raises on purpose derives from :class:`FlinknetError`, and also from the
builtin exception a Python user would expect, so ``except ValueError``, ``except OSError`` or
``except TimeoutError`` keeps working. Misuse of exported memory raises the builtin
:class:`BufferError` (as ``bytearray`` and ``memoryview`` do); a bad argument raises the builtin
:class:`ValueError` / :class:`TypeError` and an index out of range :class:`IndexError`.

The tree (builtin bases in parentheses, Flink's counterpart after the dash)::

    FlinknetError (Exception)
    ├── IllegalStateError (RuntimeError) - IllegalStateException
    │   ├── SegmentFreedError - IllegalStateException("segment has been freed")
    │   ├── IllegalReferenceCountError - Netty's IllegalReferenceCountException
    │   └── CorruptPartitionFileError - IOException of BufferReaderWriterUtil (truncated file)
    ├── InsufficientNetworkBuffersError (OSError) - IOException("Insufficient number of network
    │                                               buffers ...")
    ├── BufferRequestTimeoutError (TimeoutError) - IOException("Timeout triggered when requesting
    │                                              exclusive buffers ...")
    ├── CancelTaskError - CancelTaskException
    │   ├── ProducerFailedError - ProducerFailedException
    │   └── ConsumerLostError - none: Flink's JobManager cancels the producer's region when
    │                           its consumer fails (the producer then sees CancelTaskException)
    ├── PartitionNotFoundError (OSError) - PartitionNotFoundException
    ├── CorruptRecordError (ValueError) - IOException("Serializer consumed more bytes than the
    │                                     record had")
    ├── CorruptEventError (ValueError) - IOException("Corrupt byte stream for event")
    ├── UnsupportedCompressionError (ValueError) - none: Flink decompresses (without a
    │                                             decompressor: NullPointerException "Buffer
    │                                             decompressor not set.")
    ├── CorruptFrameError (ValueError) - the Netty decoders' IllegalStateException("Network stream
    │                                    corrupted ...") / ProtocolException
    ├── BufferReorderingError (OSError) - RemoteInputChannel's BufferReorderingException
    ├── OutputFlusherError (OSError) - IOException("An exception happened while flushing the
    │                                  outputs")
    ├── TransportError (OSError) - TransportException
    │   ├── RemoteTransportError - RemoteTransportException
    │   ├── LocalTransportError - LocalTransportException
    │   └── PeerLimitError - none: a peer exceeded one of the bounds Flink does not have
    │                        (connections, pending requests, unsent bytes, idle time)
    ├── HandshakeError (ConnectionError) - none: flinknet's own handshake (with TLS, Flink's
    │                                      Netty pipeline fails with SSLHandshakeException)
    ├── GraphValidationError (ValueError) - the job graph checks' exceptions
    │                                       (UnsupportedOperationException "Forward
    │                                       partitioning does not allow change of
    │                                       parallelism ...", InvalidProgramException)
    ├── WorkerLostError - none: a TaskManager lost (Flink's heartbeat timeout)
    ├── JobFailedError - JobExecutionException (with the root cause)
    └── ConfigurationError (ValueError) - IllegalConfigurationException
        └── UnknownConfigurationKeyError (KeyError) - none: Flink ignores unknown keys

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
IOException("Corrupt byte stream for event")    :class:`CorruptEventError`
(BufferDecompressor; flinknet has no codec)     :class:`UnsupportedCompressionError`
IllegalStateException("Network stream           :class:`CorruptFrameError` (also for bad
corrupted ..."), ProtocolException              lengths, fields and sizes)
IOException of BufferReaderWriterUtil           :class:`CorruptPartitionFileError`
PartitionNotFoundException                      :class:`PartitionNotFoundError`
ProducerFailedException                         :class:`ProducerFailedError`
(the region failover that cancels a producer    :class:`ConsumerLostError`
whose consumer failed)
BufferReorderingException                       :class:`BufferReorderingError`
IOException("An exception happened while        :class:`OutputFlusherError`
flushing the outputs")
TransportException                              :class:`TransportError`
RemoteTransportException                        :class:`RemoteTransportError`
LocalTransportException                         :class:`LocalTransportError`
(no per-peer bounds)                            :class:`PeerLimitError`
SSLHandshakeException (TLS only)                :class:`HandshakeError`
UnsupportedOperationException / Invalid-        :class:`GraphValidationError`
ProgramException of the job graph checks
a TaskManager lost (heartbeat timeout)          :class:`WorkerLostError`
JobExecutionException                           :class:`JobFailedError`
IllegalConfigurationException                   :class:`ConfigurationError`
(unknown keys are ignored)                      :class:`UnknownConfigurationKeyError`
IllegalArgumentException                        :class:`ValueError`
IndexOutOfBoundsException                       :class:`IndexError`
==============================================  ==============================================

The modules that raise these errors re-export them under their old names
(``flinknet.events.CorruptEventError``, ``flinknet.transport.RemoteTransportError``,
``flinknet._core.protocol.CorruptFrameError``, ...): those are the same class objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flinknet.graph.runners import TaskFailure
    from flinknet.types import Address

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
    "ConsumerLostError",
    "CorruptEventError",
    "UnsupportedCompressionError",
    "CorruptFrameError",
    "CorruptPartitionFileError",
    "BufferReorderingError",
    "OutputFlusherError",
    "TransportError",
    "RemoteTransportError",
    "LocalTransportError",
    "PeerLimitError",
    "GraphValidationError",
    "WorkerLostError",
    "JobFailedError",
    "HandshakeError",
    "ConfigurationError",
    "UnknownConfigurationKeyError",
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


# A CancelTaskError, not a TransportError: the loss is not a connection failure of this side (a
# local consumer has no connection at all, and a remote one may leave with a clean
# CancelPartitionRequest), it is the end of the producer's task. In Flink the JobManager fails
# the pipelined region of a failed consumer, and its producer task is cancelled (it sees
# CancelTaskException), just as a consumer is cancelled by its producer's failure
# (ProducerFailedError, the sibling). Code that already stops a task on CancelTaskError (a
# destroyed pool, a released partition) stops it on this one too.
class ConsumerLostError(CancelTaskError):
    """The consumer of a pipelined subpartition went away before it read the subpartition to its
    end; raised to the producer.

    A consumer is lost when its read view is released before it was handed the subpartition's
    EndOfPartition: a local gate closed early, a remote consumer's connection closed or reset
    (its process died), or its CancelPartitionRequest. A view released after EndOfPartition (the
    normal end) or because the producer itself released or failed the partition is no loss. A
    pipelined subpartition is consumed once (a second request is refused), so the loss is final.

    Flink fails the whole producer task in that case (the JobManager restarts the pipelined
    region), and so does flinknet by default: from the loss on, every ``emit`` /
    ``emit_batch`` / ``emit_array`` / ``broadcast_emit`` / ``random_emit`` / ``broadcast_event``
    / ``flush_all`` of a :class:`~flinknet.writer.RecordWriter` on the partition and its
    ``finish()`` raise this error, whichever subpartition they target, and an emit blocked on
    backpressure wakes up with it. Records it rejects are not counted in ``numRecordsOut``. The
    partition is not released by the loss: the producer fails it (``partition.fail(err)``, its
    other consumers then see :class:`ProducerFailedError`) or releases it, as with any task
    error. A partition created with ``on_consumer_lost="discard"`` only records the loss
    (``partition.lost_consumers``) and drops what is written for that subpartition.

    ``partition_id`` is the :class:`~flinknet.ids.ResultPartitionID`, ``subpartition`` the
    index, ``consumer`` who read it (``"remote consumer host:port (receiver ...)"`` or
    ``"local gate <task name> ..."``) and ``reason`` why it is gone; the message names all four.
    """

    def __init__(self, partition_id: object, subpartition: int, consumer: str, reason: str):
        super().__init__(
            f"the consumer of subpartition {subpartition} of partition {partition_id} is lost: "
            f"{consumer} went away: {reason}. A pipelined subpartition is consumed once, so the "
            "producer fails (its record writers reject every record)")
        self.partition_id = partition_id
        self.subpartition = subpartition
        self.consumer = consumer
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.partition_id, self.subpartition, self.consumer, self.reason), self.__dict__


class CorruptEventError(FlinknetError, ValueError):
    """Bytes that are not a serialized event: an unknown tag, a truncated or oversized body, a bad
    field (Flink's IOException "Corrupt byte stream for event"). Raised by :mod:`flinknet.events`.
    """


class UnsupportedCompressionError(FlinknetError, ValueError):
    """A buffer is flagged compressed (a BufferResponse's ``isCompressed``), and flinknet has no
    codec: the gate fails the buffer's channel instead of reading compressed bytes as records.

    A Flink producer compresses the buffers of blocking and hybrid partitions when
    ``taskmanager.network.batch-shuffle.compression.enabled`` is set; it must be off for a
    flinknet consumer.
    """


class CorruptFrameError(FlinknetError, ValueError):
    """A frame from the network is malformed (bad length, magic, id, field or size).

    Raised by :class:`flinknet._core.protocol.FrameDecoder`, which is poisoned afterwards: the
    connection must close. Flink's decoders fail with IllegalStateException ("Network stream
    corrupted: received incorrect magic number.") or ProtocolException (unknown message id).
    """


class CorruptPartitionFileError(IllegalStateError):
    """A blocking partition's file does not hold what its writer wrote (truncated or bad header).

    Flink's ``BufferReaderWriterUtil`` raises an IOException there.
    """


class BufferReorderingError(FlinknetError, OSError):
    """A buffer arrived out of sequence on a remote input channel (Flink's
    ``RemoteInputChannel.BufferReorderingException``)."""


class OutputFlusherError(FlinknetError, OSError):
    """The output flusher thread failed; raised by the next emit ("An exception happened while
    flushing the outputs", Flink's IOException from ``RecordWriter.checkErroneous``), with the
    flusher's exception as ``__cause__``."""


class TransportError(FlinknetError, OSError):
    """A connection-level failure (Flink's TransportException); ``address`` is the remote address."""

    def __init__(self, message: str, address: Address | None = None):
        super().__init__(message)
        self.address = address


class RemoteTransportError(TransportError):
    """The remote side failed, closed or reset the connection, or reported an error (Flink's
    RemoteTransportException)."""


class LocalTransportError(TransportError):
    """This side could not use the connection: connect failed, bad frame received (Flink's
    LocalTransportException)."""


class PeerLimitError(TransportError):
    """A peer exceeded one of the per-peer bounds (``flinknet.network.max-*`` and
    ``idle-timeout``): the connection is closed, and the message names the bound, its key and the
    peer. The server sends it to the peer as a fatal ErrorResponse, so the peer's channels fail
    with a :class:`RemoteTransportError` carrying the same message.

    Flink has no such bounds (its TaskManagers trust each other).
    """

    def __init__(self, message: str, address: Address | None = None, key: str = ""):
        super().__init__(message, address)
        self.key = key


class HandshakeError(FlinknetError, ConnectionError):
    """The peer failed flinknet's handshake or TLS (wrong version, secret or certificate).

    Flink has no handshake of its own; with TLS its Netty pipeline fails with
    SSLHandshakeException.
    """


class ConfigurationError(FlinknetError, ValueError):
    """A configuration value is invalid, or options contradict each other (Flink's
    IllegalConfigurationException).

    ``key`` is the option at fault (None if the error is not about one key); the message names it.
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class UnknownConfigurationKeyError(ConfigurationError, KeyError):
    """Configuration keys that flinknet does not know (usually a typo). Flink ignores unknown keys;
    flinknet rejects them, so that a typo never falls back to a default silently.

    ``keys`` are the unknown keys, ``key`` the first of them, and ``suggestions`` maps each unknown
    key to the closest known key, or None if none is close. The message names the suggestions:
    "unknown configuration key 'taskmanager.network.memory.buffers-per-chanel'; did you mean
    'taskmanager.network.memory.buffers-per-channel'?". Also a :class:`KeyError` (for
    ``except KeyError``) whose ``str()`` is the plain message, not its repr.
    """

    def __init__(self, keys: str | Iterable[str],
                 suggestions: Mapping[str, str | None] | None = None):
        keys = (keys,) if isinstance(keys, str) else tuple(keys)
        given = dict(suggestions or {})
        self.keys: tuple[str, ...] = keys
        self.suggestions: dict[str, str | None] = {k: given.get(k) for k in keys}
        if len(keys) == 1:
            hint = self.suggestions[keys[0]]
            message = f"unknown configuration key {keys[0]!r}" + (f"; did you mean {hint!r}?" if hint else "")
        else:
            message = "unknown configuration keys: " + ", ".join(
                f"{k!r}" + (f" (did you mean {self.suggestions[k]!r}?)" if self.suggestions[k] else "")
                for k in keys)
        super().__init__(message, keys[0] if keys else None)

    @classmethod
    def for_keys(cls, keys: str | Iterable[str], known_keys: Iterable[str]) -> UnknownConfigurationKeyError:
        """The error for ``keys``, each with the closest of ``known_keys`` as its suggestion."""
        import difflib

        keys = (keys,) if isinstance(keys, str) else tuple(keys)
        known = list(known_keys)
        return cls(keys, {k: next(iter(difflib.get_close_matches(k, known, n=1)), None)
                          if isinstance(k, str) else None for k in keys})

    def __str__(self) -> str:
        # KeyError's __str__ would show repr(message), quotes and escapes included.
        return BaseException.__str__(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.keys, self.suggestions), self.__dict__


class GraphValidationError(FlinknetError, ValueError):
    """A job graph Flink would not build (a forward edge between different parallelisms, a
    cycle, a parallelism above the max parallelism, ...); the message names the vertices."""


class WorkerLostError(FlinknetError):
    """A worker (process or Ray actor) died while it ran tasks; its tasks fail with this, naming
    it (pid, exit code or signal, node)."""


class JobFailedError(FlinknetError):
    """A job failed: :attr:`root_cause` is the task failure that started it (the first, in time,
    that is not a consequence of another), :attr:`failures` every task failure in the order they
    were reported (:class:`flinknet.graph.TaskFailure` s); ``__cause__`` is the root cause's
    exception when it could be brought back from its worker."""

    def __init__(self, job_name: str, failures: Iterable[TaskFailure]) -> None:
        self.job_name = job_name
        self.failures: list[TaskFailure] = list(failures)
        causes = [f for f in self.failures if not f.is_consequence] or self.failures
        self.root_cause: TaskFailure | None = min(causes, key=lambda f: f.at) if causes else None
        lines = [f"job {job_name!r} failed: {self.root_cause}" if self.root_cause
                 else f"job {job_name!r} failed"]
        others = [f for f in self.failures if f is not self.root_cause]
        if others:
            lines.append(f"then {len(others)} more task(s) failed:")
            lines.extend(f"  {f}" for f in others[:20])
            if len(others) > 20:
                lines.append(f"  ... and {len(others) - 20} more")
        if self.root_cause is not None and self.root_cause.exception is None:
            lines.append(f"root cause traceback (from {self.root_cause.worker}):\n"
                         f"{self.root_cause.traceback}")
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.job_name, self.failures))
