"""Result partitions: what a producing task writes into (Flink's ``ResultPartition`` family).

:class:`ResultPartition` is Flink's ``BufferWritingResultPartition``: it owns the partition's
:class:`~flinknet._core.pool.LocalBufferPool` and a
:class:`~flinknet._core.serialization.SpanningRecordSerializer` that frames records into one open
:class:`~flinknet._core.builder.BufferBuilder` per subpartition, and it is the serializer's sink:
every new buffer's consumer goes into the subpartition's queue. Records are serialized in Cython;
this layer runs once per buffer.

:class:`PipelinedResultPartition` (PIPELINED, PIPELINED_BOUNDED, HYBRID_*) holds
:class:`~flinknet.partition.subpartition.PipelinedSubpartition` s;
:class:`~flinknet.partition.blocking.BoundedBlockingResultPartition` (BLOCKING,
BLOCKING_PERSISTENT) writes each subpartition to a file.

Lifecycle (Flink's ``ResultPartition``): construct → :meth:`~ResultPartition.setup` (registers
with the partition manager) → emit → :meth:`~ResultPartition.finish` (EndOfPartition in every
subpartition) → :meth:`~ResultPartition.close` (the pool is destroyed once every buffer is back).
:meth:`~ResultPartition.release` (once, with an optional cause that consumers then see as
:class:`~flinknet.errors.ProducerFailedError`) drops all queued data; :meth:`~ResultPartition.fail`
(any thread) also destroys the pool at once, so an emit blocked on backpressure wakes up with
:class:`~flinknet.errors.CancelTaskError`.

A consumer that goes away before it read its pipelined subpartition to the end (see
:class:`~flinknet.errors.ConsumerLostError`) fails the producer, as Flink's region failover
does: :meth:`~ResultPartition.on_subpartition_consumer_lost` records it
(:attr:`~ResultPartition.lost_consumers`), drops that subpartition's buffers, and makes every
later emit, ``finish`` and writer flush raise ConsumerLostError (an emit blocked on backpressure
wakes up with it: the pool is destroyed, as :meth:`~ResultPartition.fail` does).
``on_consumer_lost="discard"`` only records the loss.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, Self, TypeAlias

import numpy as np
import numpy.typing as npt

from flinknet import events as _events
from flinknet._core.builder import BufferConsumer
from flinknet._core.pool import LocalBufferPool, NetworkBufferPool
from flinknet._core.serialization import PayloadSerializer, SpanningRecordSerializer
from flinknet.errors import CancelTaskError, ConsumerLostError, IllegalStateError
from flinknet.ids import ResultPartitionID
from flinknet.interfaces import BufferAvailabilityListener, ResultSubpartitionView, WaitTimer
from flinknet.partition.subpartition import PipelinedSubpartition, ResultSubpartitionInfo
from flinknet.types import ResultPartitionType, SerializerSpec

if TYPE_CHECKING:
    from flinknet._core.buffer import Buffer
    from flinknet.partition.manager import ResultPartitionManager

__all__ = [
    "ConsumerLostPolicy",
    "LostConsumer",
    "OutputChannelStateWriter",
    "SEQUENCE_NUMBER_UNKNOWN",
    "ResultPartition",
    "ResultSubpartition",
    "PipelinedResultPartition",
    "get_min_max_network_buffers_per_result_partition",
]

#: Flink 2.x hard-codes these (in NettyShuffleEnvironmentOptions' defaults).
DEFAULT_BUFFERS_PER_CHANNEL = 2
DEFAULT_FLOATING_BUFFERS_PER_GATE = 8
DEFAULT_MAX_BUFFERS_PER_CHANNEL = 10
DEFAULT_MAX_OVERDRAFT_BUFFERS_PER_GATE = 20
INT_MAX = (1 << 31) - 1

log = logging.getLogger(__name__)

#: What a partition does when a consumer goes away before the end of its subpartition: ``"fail"``
#: (the default, Flink's behaviour: every writer of the partition raises
#: :class:`~flinknet.errors.ConsumerLostError`) or ``"discard"`` (record the loss, drop what is
#: written for that subpartition and go on; Flink has no such mode).
ConsumerLostPolicy: TypeAlias = Literal["fail", "discard"]



#: Flink's ``ChannelStateWriter.SEQUENCE_NUMBER_UNKNOWN``.
SEQUENCE_NUMBER_UNKNOWN = -1


class OutputChannelStateWriter(Protocol):
    """The output side of Flink's ``ChannelStateWriter`` (``addOutputData`` /
    ``finishOutput``): what a partition hands an unaligned barrier's in-flight output to
    (:class:`flinknet.checkpointing.InMemoryChannelStateWriter` is one)."""

    def add_output_data(self, checkpoint_id: int, subpartition_info: ResultSubpartitionInfo,
                        sequence_number: int, buffers: Sequence[Buffer]) -> None:
        """In-flight output of ``subpartition_info`` for ``checkpoint_id``: retained buffers the
        writer now owns (and recycles)."""
        ...

    def finish_output(self, checkpoint_id: int) -> None:
        """No more output data for ``checkpoint_id``."""
        ...


class LostConsumer(NamedTuple):
    """A subpartition whose consumer went away before it read the subpartition to its end
    (:attr:`ResultPartition.lost_consumers`)."""

    subpartition: int
    #: who read it: ``"local gate <task name> ..."`` or ``"remote consumer host:port ..."``
    consumer: str
    #: why it is gone (gate closed, connection closed or reset, CancelPartitionRequest)
    reason: str


def get_min_max_network_buffers_per_result_partition(
        partition_type: ResultPartitionType, num_subpartitions: int,
        buffers_per_channel: int = DEFAULT_BUFFERS_PER_CHANNEL,
        floating_buffers_per_gate: int = DEFAULT_FLOATING_BUFFERS_PER_GATE) -> tuple[int, int]:
    """Flink's ``NettyShuffleUtils.getMinMaxNetworkBuffersPerResultPartition`` for the
    partition kinds flinknet builds (blocking partitions are the bounded-blocking kind, whose pool
    only ever holds one buffer per subpartition plus the broadcast one)."""
    if num_subpartitions <= 0:
        raise ValueError(f"num_subpartitions must be > 0, got {num_subpartitions}")
    n = num_subpartitions
    minimum = n + 1
    if partition_type.is_bounded:
        maximum = max(minimum, n * buffers_per_channel + floating_buffers_per_gate)
    elif partition_type.is_blocking:
        maximum = max(minimum, n * buffers_per_channel + floating_buffers_per_gate)
    else:
        maximum = INT_MAX
    return minimum, maximum


class ResultSubpartition(Protocol):
    """What a :class:`ResultPartition` holds per subpartition (Flink's ``ResultSubpartition``):
    :class:`~flinknet.partition.PipelinedSubpartition` or
    :class:`~flinknet.partition.BoundedBlockingSubpartition`. Called by the partition on the
    producer's thread (``flush`` also by the output flusher)."""

    def add(self, consumer: BufferConsumer, partial_record_length: int = 0, finish: bool = False) -> int:
        """Take over ``consumer``; the desired buffer size, or ``ADD_BUFFER_ERROR_CODE``."""
        ...

    def finish(self) -> None:
        """Append EndOfPartition; nothing can be added afterwards."""
        ...

    def flush(self) -> None:
        """Make what was written so far readable."""
        ...

    def release(self) -> None:
        """Drop what is queued (the buffers go back to their pool)."""
        ...

    def create_read_view(self, listener: BufferAvailabilityListener) -> ResultSubpartitionView:
        """A read view reporting to ``listener``."""
        ...

    @property
    def is_finished(self) -> bool:
        """EndOfPartition was added."""
        ...

    @property
    def has_unflushed_data(self) -> bool:
        """A flush could make something readable (read without a lock)."""
        ...

    @property
    def number_of_queued_buffers(self) -> int:
        """Buffers queued, read without a lock (for metrics)."""
        ...


class ResultPartition:
    """The partition a producer writes to; subclasses choose the subpartition kind.

    ``ResultPartition(num_subpartitions, buffer_pool, ...)`` takes over ``buffer_pool`` (a
    :class:`LocalBufferPool` created with ``num_subpartitions`` subpartitions); or use
    :meth:`create` to size a pool from a :class:`NetworkBufferPool` as Flink does.
    ``serializer`` turns records into payloads (see
    :func:`~flinknet._core.serialization.get_serializer`). ``on_consumer_lost`` (``"fail"``, the
    default, or ``"discard"``) says what a consumer that goes away before the end of its
    subpartition does to the producer (see :meth:`on_subpartition_consumer_lost`).
    """

    _partition_type_default = ResultPartitionType.PIPELINED_BOUNDED
    subpartitions: Sequence[ResultSubpartition]

    def __init__(self, num_subpartitions: int, buffer_pool: LocalBufferPool, *,
                 partition_id: ResultPartitionID | None = None,
                 partition_type: ResultPartitionType | None = None,
                 serializer: SerializerSpec = "bytes",
                 partition_manager: ResultPartitionManager | None = None, owning_task_name: str = "",
                 partition_index: int = 0, on_consumer_lost: ConsumerLostPolicy = "fail"):
        if not isinstance(num_subpartitions, int) or num_subpartitions <= 0:
            raise ValueError(f"num_subpartitions must be a positive int, got {num_subpartitions!r}")
        if not isinstance(buffer_pool, LocalBufferPool):
            raise TypeError(f"buffer_pool must be a LocalBufferPool, got {type(buffer_pool).__name__}")
        if buffer_pool.is_destroyed:
            raise IllegalStateError("the buffer pool is destroyed")
        if partition_id is None:
            partition_id = ResultPartitionID()
        elif not isinstance(partition_id, ResultPartitionID):
            raise TypeError("partition_id must be a ResultPartitionID")
        partition_type = self._partition_type_default if partition_type is None else partition_type
        if not isinstance(partition_type, ResultPartitionType):
            raise TypeError("partition_type must be a ResultPartitionType")
        self._check_partition_type(partition_type)
        if on_consumer_lost not in ("fail", "discard"):
            raise ValueError(f"on_consumer_lost must be 'fail' or 'discard', got {on_consumer_lost!r}")
        self.on_consumer_lost_policy: ConsumerLostPolicy = on_consumer_lost
        self.partition_id = partition_id
        self.partition_type = partition_type
        self.partition_index = partition_index
        self.owning_task_name = owning_task_name
        self.partition_manager = partition_manager
        self._pool = buffer_pool
        self._lock = threading.Lock()
        self._num_subpartitions = num_subpartitions
        self.subpartitions = self._create_subpartitions(num_subpartitions)
        self._serializer = SpanningRecordSerializer(buffer_pool, num_subpartitions, serializer, self)
        self._is_setup = False
        self._is_finished = False
        self._is_released = False
        self._is_closed = False
        self._cause: BaseException | None = None
        # Subpartitions whose consumer went away before the end (any thread adds, under _lock);
        # _failing_loss: the first of them when the policy is "fail" (emits raise from then on).
        self._lost: dict[int, LostConsumer] = {}
        self._failing_loss: LostConsumer | None = None
        self._end_of_data_sent = False
        self._all_data_processed: Future[None] = Future()
        self._all_data_processed_acks: set[int] = set()
        self.num_bytes_produced = [0] * num_subpartitions  # per-subpartition finished bytes
        self._event_bytes_written = 0  # events enqueued (× subpartitions), for outputQueueSize
        self._channel_state_writer: OutputChannelStateWriter | None = None

    @classmethod
    def create(cls, network_buffer_pool: NetworkBufferPool, num_subpartitions: int, *,
               partition_type: ResultPartitionType | None = None,
               max_buffers_per_channel: int = DEFAULT_MAX_BUFFERS_PER_CHANNEL,
               max_overdraft_buffers: int | None = None,
               buffers_per_channel: int = DEFAULT_BUFFERS_PER_CHANNEL,
               floating_buffers_per_gate: int = DEFAULT_FLOATING_BUFFERS_PER_GATE,
               **kwargs: Any) -> Self:
        """A partition whose pool is sized from ``network_buffer_pool`` as Flink sizes it
        (``NettyShuffleUtils``, from ``buffers_per_channel`` and ``floating_buffers_per_gate``:
        ``taskmanager.network.memory.buffers-per-channel`` and ``.floating-buffers-per-gate``);
        ``kwargs`` go to the constructor."""
        if not isinstance(network_buffer_pool, NetworkBufferPool):
            raise TypeError("network_buffer_pool must be a NetworkBufferPool")
        for name, value in (("buffers_per_channel", buffers_per_channel),
                            ("floating_buffers_per_gate", floating_buffers_per_gate)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        partition_type = cls._partition_type_default if partition_type is None else partition_type
        minimum, maximum = get_min_max_network_buffers_per_result_partition(
            partition_type, num_subpartitions, buffers_per_channel, floating_buffers_per_gate)
        if max_overdraft_buffers is None:
            max_overdraft_buffers = (DEFAULT_MAX_OVERDRAFT_BUFFERS_PER_GATE
                                     if partition_type.is_pipelined else 0)
        pool = network_buffer_pool.create_buffer_pool(
            minimum, maximum, num_subpartitions, max_buffers_per_channel, max_overdraft_buffers)
        try:
            return cls(num_subpartitions, pool, partition_type=partition_type, **kwargs)
        except BaseException:
            # lazy_destroy gives the pool's segments back and unregisters it (destroy_buffer_pool
            # alone only unregisters it, leaking the segments it already requested).
            pool.lazy_destroy()
            raise

    # -- subclass hooks --------------------------------------------------------------------

    def _check_partition_type(self, partition_type: ResultPartitionType) -> None:
        pass

    def _create_subpartitions(self, n: int) -> Sequence[ResultSubpartition]:
        raise NotImplementedError

    # -- serializer sink (once per buffer) -------------------------------------------------

    def add_buffer_consumer(self, subpartition: int, consumer: BufferConsumer,
                            partial_record_length: int) -> int:
        """The serializer's sink: enqueue a new buffer's consumer (the desired buffer size back:
        the serializer trims the new buffer to it, and lets it grow back while this partition's
        pool is exhausted, as Flink's ``BufferWritingResultPartition.append`` does)."""
        return self.subpartitions[subpartition].add(consumer, partial_record_length)

    def buffer_finished(self, subpartition: int, num_bytes: int) -> None:
        """The serializer's sink: a buffer of ``subpartition`` (-1: the broadcast buffer) was
        finished with ``num_bytes`` bytes."""
        if subpartition >= 0:
            self.num_bytes_produced[subpartition] += num_bytes
        else:
            produced = self.num_bytes_produced
            for i in range(self._num_subpartitions):
                produced[i] += num_bytes

    # -- lifecycle -------------------------------------------------------------------------

    def setup(self) -> None:
        """Register with the partition manager (if any); call once before emitting."""
        if self._is_setup:
            raise IllegalStateError("the partition is already set up")
        self._is_setup = True
        if self.partition_manager is not None:
            self.partition_manager.register_result_partition(self)

    def check_producing(self) -> None:
        """Raise what an emit would raise now: :class:`~flinknet.errors.ConsumerLostError`
        once a consumer is lost (policy ``"fail"``), :class:`~flinknet.errors.CancelTaskError`
        (its ``__cause__`` the release's cause) once released, :class:`IllegalStateError` once
        finished."""
        if self._is_released or self._is_finished or self._failing_loss is not None:
            raise self._rejected_emit_error()

    def check_consumers(self) -> None:
        """Raise :class:`~flinknet.errors.ConsumerLostError` if a consumer was lost and the
        partition fails for it (policy ``"fail"``); otherwise nothing. A record writer calls
        this when an emit fails with CancelTaskError (its pool destroyed under it) to tell
        which of the two it was."""
        lost = self._failing_loss
        if lost is not None:
            raise self._consumer_lost_error(lost) from None

    def _consumer_lost_error(self, lost: LostConsumer) -> ConsumerLostError:
        return ConsumerLostError(self.partition_id, lost.subpartition, lost.consumer, lost.reason)

    def _rejected_emit_error(self) -> BaseException:
        # The serializer's reject_records hook calls this for every emit after finish/release
        # or a lost consumer (a new error each time: raising one object again and again would
        # chain its tracebacks).
        lost = self._failing_loss
        if lost is not None:
            return self._consumer_lost_error(lost)
        if self._is_released:
            err = CancelTaskError(f"{self} has been released")
            err.__cause__ = self._cause
            return err
        return IllegalStateError("Partition already finished.")

    def finish(self) -> None:
        """Finish every open builder and end every subpartition with EndOfPartition."""
        self.check_producing()
        self._serializer.finish_all()
        for sp in self.subpartitions:
            sp.finish()
        self._is_finished = True
        self._serializer.reject_records(self._rejected_emit_error)

    def close(self) -> None:
        """Drop open builders and destroy the pool once all its buffers are back (idempotent)."""
        if self._is_closed:
            return
        self._is_closed = True
        self._serializer.close()
        self._pool.lazy_destroy()
        self._on_producer_closed()

    def release(self, cause: BaseException | None = None) -> None:
        """Release once: queued buffers go back to the pool; readers fail with ``cause``."""
        with self._lock:
            if self._is_released:
                return
            self._is_released = True
            if cause is not None:
                self._cause = cause
        self._serializer.reject_records(self._rejected_emit_error)
        self._release_internal()
        if not self._all_data_processed.done():
            self._all_data_processed.set_exception(
                CancelTaskError(f"{self} was released before all data was processed"))

    def fail(self, cause: BaseException | None = None) -> None:
        """Fail the partition from any thread: destroy the pool (waking a blocked emit) and
        release it through the partition manager (or directly)."""
        self._pool.lazy_destroy()
        if self.partition_manager is not None and self.partition_manager.contains(self.partition_id):
            self.partition_manager.release_partition(self.partition_id, cause)
        self.release(cause)

    def _release_internal(self) -> None:
        for sp in self.subpartitions:
            sp.release()

    def _on_producer_closed(self) -> None:
        pass

    def on_consumed_subpartition(self, index: int) -> None:
        """The view of subpartition ``index`` was released (called by the subpartition)."""

    def on_subpartition_consumer_lost(self, index: int, consumer: str, reason: str) -> None:
        """Subpartition ``index``'s consumer went away before it read the subpartition to its
        end (called by the subpartition when its view is released early, on the thread that
        released it: the consumer's, or the I/O thread for a remote consumer).

        Recorded in :attr:`lost_consumers` and logged. With the ``"fail"`` policy (the
        default) the partition then fails its producer as Flink's region failover would:
        every later emit, :meth:`finish`, event and record writer flush raises
        :class:`~flinknet.errors.ConsumerLostError`, whatever subpartition it targets, and the
        pool is destroyed (as :meth:`fail` does), which wakes an emit blocked on backpressure
        with that error. The partition is not released: its other consumers keep what is
        queued for them until the producer fails or releases it. Ignored once released (the
        producer's own release is no loss)."""
        with self._lock:
            if self._is_released or index in self._lost:
                return
            lost = self._lost[index] = LostConsumer(index, consumer, reason)
            fail = self.on_consumer_lost_policy == "fail" and self._failing_loss is None
            if fail:
                self._failing_loss = lost
            first = len(self._lost) == 1
        # One warning per partition (a consumer process with a thousand channels is one event).
        (log.warning if first else log.debug)(
            "%s: the consumer of subpartition %d is lost: %s went away: %s%s", self, index,
            consumer, reason, "; the producer fails" if fail else "")
        if fail:
            self._serializer.reject_records(self._rejected_emit_error)
            self._pool.lazy_destroy()

    @property
    def lost_consumers(self) -> dict[int, LostConsumer]:
        """The subpartitions whose consumer went away before their end, by index, each with
        who read it and why it is gone (a copy; empty while every consumer is there)."""
        with self._lock:
            return dict(self._lost)

    @property
    def consumer_lost(self) -> LostConsumer | None:
        """The first consumer lost (None if none was): what the writers' ConsumerLostError
        names under the ``"fail"`` policy."""
        with self._lock:
            return next(iter(self._lost.values()), None)

    def on_subpartition_all_data_processed(self, index: int) -> None:
        """Subpartition ``index``'s consumer acknowledged all user records (called by the
        subpartition)."""
        with self._lock:
            self._all_data_processed_acks.add(index)
            done = len(self._all_data_processed_acks) == self._num_subpartitions
        if done and not self._all_data_processed.done():
            self._all_data_processed.set_result(None)

    # -- producing -------------------------------------------------------------------------

    def emit_record(self, record: object, target_subpartition: int) -> None:
        """Serialize ``record`` into subpartition ``target_subpartition``."""
        if self._is_released or self._is_finished:
            self.check_producing()
        try:
            self._serializer.emit(record, target_subpartition)
        except CancelTaskError as err:
            if not isinstance(err, ConsumerLostError):
                self.check_consumers()   # woken by the pool a lost consumer destroyed
            raise

    def emit_records(self, records: Iterable[object],
                     targets: int | Sequence[int] | npt.NDArray[np.integer[Any]]) -> int:
        """Serialize a batch; ``targets`` is one subpartition or one per record."""
        if self._is_released or self._is_finished:
            self.check_producing()
        try:
            return self._serializer.emit_batch(records, targets)
        except CancelTaskError as err:
            if not isinstance(err, ConsumerLostError):
                self.check_consumers()   # woken by the pool a lost consumer destroyed
            raise

    def emit_array(self, array: npt.NDArray[Any],
                   targets: int | Sequence[int] | npt.NDArray[np.integer[Any]]) -> int:
        """Serialize every row of a numpy array (each row one record, its raw bytes)."""
        if self._is_released or self._is_finished:
            self.check_producing()
        try:
            return self._serializer.emit_array(array, targets)
        except CancelTaskError as err:
            if not isinstance(err, ConsumerLostError):
                self.check_consumers()   # woken by the pool a lost consumer destroyed
            raise

    def broadcast_record(self, record: object) -> None:
        """One copy of the record in a shared buffer read by every subpartition."""
        if self._is_released or self._is_finished:
            self.check_producing()
        try:
            self._serializer.broadcast_record(record)
        except CancelTaskError as err:
            if not isinstance(err, ConsumerLostError):
                self.check_consumers()   # woken by the pool a lost consumer destroyed
            raise

    def broadcast_emit(self, record: object) -> None:
        """The record serialized once and copied into every subpartition's own buffer."""
        if self._is_released or self._is_finished:
            self.check_producing()
        try:
            self._serializer.broadcast_emit(record)
        except CancelTaskError as err:
            if not isinstance(err, ConsumerLostError):
                self.check_consumers()   # woken by the pool a lost consumer destroyed
            raise

    # -- channel state (unaligned checkpoints) ---------------------------------------------

    def set_channel_state_writer(self, writer: OutputChannelStateWriter | None) -> None:
        """Where an unaligned barrier's in-flight output data goes (Flink's
        ``ChannelStateHolder.setChannelStateWriter``): when a priority
        :class:`~flinknet.events.CheckpointBarrier` of an unaligned checkpoint is enqueued, every
        data buffer it overtakes in a subpartition (the bytes not yet sent) is handed to
        ``writer.add_output_data(checkpoint_id, ResultSubpartitionInfo(partition_index,
        subpartition), SEQUENCE_NUMBER_UNKNOWN, buffers)``, retained: the writer recycles them.
        The task calls the writer's ``finish_output(checkpoint_id)`` once the barrier is out.
        None: nothing is captured."""
        if writer is not None and not callable(getattr(writer, "add_output_data", None)):
            raise TypeError(f"{writer!r} has no add_output_data(checkpoint_id, subpartition_info, "
                            f"sequence_number, buffers)")
        self._channel_state_writer = writer

    @property
    def channel_state_writer(self) -> OutputChannelStateWriter | None:
        """The writer set by :meth:`set_channel_state_writer`, or None."""
        return self._channel_state_writer

    def _capture_for(self, event: _events.Event, is_priority: bool) -> int | None:
        """The checkpoint id whose in-flight output ``event`` captures, or None."""
        if (is_priority and self._channel_state_writer is not None
                and isinstance(event, _events.CheckpointBarrier) and event.options.is_unaligned):
            return event.id
        return None

    def _add_event(self, sp: ResultSubpartition, consumer: BufferConsumer, checkpoint_id: int | None) -> None:
        if checkpoint_id is None or not isinstance(sp, PipelinedSubpartition):
            sp.add(consumer, 0)
            return
        overtaken: list[Buffer] = []
        sp.add(consumer, 0, overtaken=overtaken)
        if not overtaken:
            return
        writer = self._channel_state_writer
        try:
            assert writer is not None
            writer.add_output_data(checkpoint_id, ResultSubpartitionInfo(self.partition_index, sp.index),
                                   SEQUENCE_NUMBER_UNKNOWN, overtaken)
        except BaseException:
            for b in overtaken:
                b.recycle()
            raise

    def broadcast_event(self, event: _events.Event, is_priority: bool = False) -> None:
        """Finish all builders and enqueue ``event`` (one standalone buffer) everywhere. A
        priority barrier of an unaligned checkpoint hands the data it overtakes to the channel
        state writer (:meth:`set_channel_state_writer`)."""
        self.check_producing()
        self._serializer.finish_all()
        consumer = _events.to_buffer_consumer(event, is_priority)
        checkpoint_id = self._capture_for(event, is_priority)
        try:
            for sp in self.subpartitions:
                self._add_event(sp, consumer.copy(), checkpoint_id)
            # Flink counts events in totalWrittenBytes (× subpartitions) for outputQueueSize.
            self._event_bytes_written += consumer.written_bytes * self._num_subpartitions
        finally:
            consumer.close()

    def emit_event(self, event: _events.Event, target_subpartition: int, is_priority: bool = False) -> None:
        """Enqueue ``event`` into one subpartition (its open builder is finished first); a
        priority unaligned barrier captures what it overtakes, as :meth:`broadcast_event`."""
        self.check_producing()
        self._check_target(target_subpartition)
        self._serializer.finish_unicast_builder(target_subpartition)
        self._serializer.finish_broadcast_builder()
        consumer = _events.to_buffer_consumer(event, is_priority)
        size = consumer.written_bytes
        self._add_event(self.subpartitions[target_subpartition], consumer,
                        self._capture_for(event, is_priority))
        self._event_bytes_written += size

    def notify_end_of_data(self, stop_mode: _events.StopMode | int = _events.StopMode.NO_DRAIN) -> None:
        """Broadcast EndOfData once (Flink's ``notifyEndOfData``)."""
        if not self._end_of_data_sent:
            self._end_of_data_sent = True
            self.broadcast_event(_events.EndOfData(_events.StopMode(stop_mode)))

    def get_all_data_processed_future(self) -> Future[None]:
        """Completes when every consumer acknowledged all user records (AckAllUserRecordsProcessed)."""
        return self._all_data_processed

    def flush(self, target_subpartition: int) -> None:
        """Make what was written to one subpartition so far readable."""
        self._check_target(target_subpartition)
        self.subpartitions[target_subpartition].flush()

    def flush_all(self) -> None:
        """Make what was written so far readable, in every subpartition."""
        for sp in self.subpartitions:
            sp.flush()

    def _check_target(self, target: int) -> None:
        if not 0 <= target < self._num_subpartitions:
            raise ValueError(f"subpartition {target} out of range [0, {self._num_subpartitions})")

    # -- consuming -------------------------------------------------------------------------

    def create_subpartition_view(self, index: int,
                                 listener: BufferAvailabilityListener) -> ResultSubpartitionView:
        """The read view of subpartition ``index`` (Flink's ``createSubpartitionView``)."""
        if self._is_released:
            raise IllegalStateError(f"{self} has been released")
        self._check_target(index)
        return self.subpartitions[index].create_read_view(listener)

    # -- inspection ------------------------------------------------------------------------

    @property
    def num_subpartitions(self) -> int:
        """How many subpartitions (consumer subtasks) the partition has."""
        return self._num_subpartitions

    @property
    def buffer_pool(self) -> LocalBufferPool:
        """The partition's own pool (its buffers' memory)."""
        return self._pool

    @property
    def serializer(self) -> PayloadSerializer:
        """The payload serializer records are written with."""
        return self._serializer.serializer

    @property
    def record_serializer(self) -> SpanningRecordSerializer:
        """The :class:`~flinknet._core.serialization.SpanningRecordSerializer` framing this
        partition's records (its counters feed numRecordsOut / numBytesOut / numBuffersOut)."""
        return self._serializer

    @property
    def is_finished(self) -> bool:
        """:meth:`finish` was called."""
        return self._is_finished

    @property
    def is_released(self) -> bool:
        """:meth:`release` (or :meth:`fail`) was called."""
        return self._is_released

    @property
    def is_closed(self) -> bool:
        """:meth:`close` was called."""
        return self._is_closed

    @property
    def failure_cause(self) -> BaseException | None:
        """The cause the partition was released or failed with, if any."""
        return self._cause

    @property
    def is_available(self) -> bool:
        """Whether the pool has a buffer now (Flink's ``isAvailable`` for the record writer)."""
        return self._pool.is_available

    def get_available_future(self) -> Future[None]:
        """A future completed once the pool has a buffer (completed already if it has)."""
        return self._pool.get_available_future()

    @property
    def num_bytes_out(self) -> int:
        """Bytes of the buffers handed to the subpartitions (``numBytesOut``)."""
        return self._serializer.num_bytes_out

    @property
    def num_buffers_out(self) -> int:
        """Buffers handed to the subpartitions (``numBuffersOut``)."""
        return self._serializer.num_buffers_out

    @property
    def total_written_bytes(self) -> int:
        """Bytes of records written, framing included."""
        return self._serializer.total_written_bytes

    @property
    def num_records_out(self) -> int:
        """Records written (``numRecordsOut``)."""
        return self._serializer.num_records_out

    @property
    def back_pressured_ns(self) -> int:
        """Nanoseconds spent blocked waiting for a buffer (hard backpressure)."""
        return self._serializer.back_pressured_ns

    def set_hard_back_pressure_timer(self, timer: WaitTimer | None) -> None:
        """The metrics hook: ``timer`` (a :class:`~flinknet.interfaces.WaitTimer`, e.g. the task's
        ``hardBackPressuredTimeMsPerSecond`` TimerGauge) is marked around every emit that blocks
        for a buffer (only then: the serializer touches it on the blocking path); None detaches
        it."""
        self._serializer.back_pressure_timer = timer

    @property
    def hard_back_pressure_timer(self) -> WaitTimer | None:
        """The timer attached by :meth:`set_hard_back_pressure_timer`, or None."""
        timer: WaitTimer | None = self._serializer.back_pressure_timer
        return timer

    @property
    def size_of_queued_buffers(self) -> int:
        """Bytes written (records and events) minus bytes consumers have polled (Flink's
        ``getSizeOfQueuedBuffersUnsafe``, the ``outputQueueSize`` metric); approximate, no lock."""
        polled = 0
        for sp in self.subpartitions:
            polled += max(0, getattr(sp, "total_number_of_bytes", 0))
        return self._serializer.total_written_bytes + self._event_bytes_written - polled

    @property
    def number_of_queued_buffers(self) -> int:
        """Buffers queued in all subpartitions, read without locks (for metrics)."""
        return sum(sp.number_of_queued_buffers for sp in self.subpartitions)

    def get_number_of_queued_buffers(self, target_subpartition: int) -> int:
        """Buffers queued in one subpartition (Flink's ``getNumberOfQueuedBuffers(int)``)."""
        self._check_target(target_subpartition)
        return self.subpartitions[target_subpartition].number_of_queued_buffers

    def __repr__(self) -> str:
        return (f"{type(self).__name__} {self.partition_id} [{self.partition_type.name}, "
                f"{self._num_subpartitions} subpartitions]")


class PipelinedResultPartition(ResultPartition):
    """A partition consumed while it is produced (PIPELINED, PIPELINED_BOUNDED, HYBRID_*).

    Released on consumption, as Flink does: once the producer closed it and every subpartition's
    view was released, the partition manager releases it (or it releases itself when it has no
    manager). A view released before its reader was handed EndOfPartition is a consumer that went
    away (:meth:`~ResultPartition.on_subpartition_consumer_lost`): that subpartition's queued buffers are
    dropped at once, so the producer is never blocked by a consumer that no longer exists, and
    the producer fails with :class:`~flinknet.errors.ConsumerLostError` (or, with
    ``on_consumer_lost="discard"``, what it writes there afterwards is discarded).
    """

    subpartitions: Sequence[PipelinedSubpartition]

    def __init__(self, num_subpartitions: int, buffer_pool: LocalBufferPool, *,
                 receiver_exclusive_buffers_per_channel: int = DEFAULT_BUFFERS_PER_CHANNEL, **kwargs: Any):
        self._receiver_exclusive = receiver_exclusive_buffers_per_channel
        super().__init__(num_subpartitions, buffer_pool, **kwargs)
        self._consumed = [False] * num_subpartitions
        self._num_users = num_subpartitions + 1

    def _check_partition_type(self, partition_type: ResultPartitionType) -> None:
        if partition_type.is_blocking:
            raise ValueError(f"{partition_type.name} is a blocking type; use BoundedBlockingResultPartition")

    def _create_subpartitions(self, n: int) -> list[PipelinedSubpartition]:
        return [PipelinedSubpartition(i, self, self._receiver_exclusive) for i in range(n)]

    def flush_all(self) -> None:
        """Flush the subpartitions that hold data (Flink's FLINK-14118): the output flusher calls
        this every buffer timeout, and locking a thousand idle subpartitions each time costs
        more than the data it moves. An unlocked look is enough: a buffer added after it is
        flushed by the next call, as one added after Flink's flush is."""
        for sp in self.subpartitions:
            if sp.has_unflushed_data:
                sp.flush()

    def on_consumed_subpartition(self, index: int) -> None:
        sp = self.subpartitions[index]
        if not sp.is_finished or index in self._lost:
            sp.release()     # nobody will read what is queued: the buffers go back now
        with self._lock:
            if self._consumed[index]:
                return
            self._consumed[index] = True
            self._num_users -= 1
            last = self._num_users == 0
        if last:
            self._on_all_consumed()

    @property
    def is_consumed(self) -> bool:
        """Every subpartition's reader let go of it (after reading it whole, or going away)."""
        return all(self._consumed)

    def _on_producer_closed(self) -> None:
        with self._lock:
            self._num_users -= 1
            last = self._num_users == 0
        if last:
            self._on_all_consumed()

    def _on_all_consumed(self) -> None:
        if self.partition_manager is not None and self.partition_manager.contains(self.partition_id):
            self.partition_manager.on_consumed_partition(self)
        else:
            self.release()
