"""Record writers: what a task calls to emit records and events (Flink's ``RecordWriter`` family).

A :class:`RecordWriter` routes records through a channel selector (see
:mod:`flinknet.partitioners`) into a :class:`~flinknet.partition.ResultPartition`, whose Cython
serializer frames them into the subpartitions' buffers. A :class:`BroadcastRecordWriter` writes
each record once into a buffer shared by all subpartitions.

The buffer timeout decides when partially filled buffers become readable:

* ``-1`` (:data:`DISABLED_NETWORK_BUFFER_TIMEOUT`): only full buffers, events and ``finish``;
* ``0`` (:data:`FLUSH_AFTER_EVERY_RECORD`): after every emit (lowest latency);
* ``> 0`` milliseconds (default 100, Flink's ``execution.buffer-timeout.interval``): a daemon
  ``OutputFlusher`` thread flushes every subpartition that often. Its errors are raised by the
  next emit (:class:`OutputFlusherError`).

Emitting blocks while the partition's pool has no buffer: that is backpressure.
``partition.fail(cause)`` from another thread wakes a blocked emit with
:class:`~flinknet.errors.CancelTaskError`.

A consumer that goes away before it read its (pipelined) subpartition to the end fails the
writer as a whole, as Flink fails the producer task: every later ``emit``, ``emit_batch``,
``emit_array``, ``broadcast_emit``, ``random_emit``, ``broadcast_event`` and ``flush_all`` raises
:class:`~flinknet.errors.ConsumerLostError` (naming the partition, the subpartition, the consumer
and why), whichever subpartition it targets; an emit blocked on backpressure wakes up with it;
rejected records are not counted in ``numRecordsOut``. See
:meth:`~flinknet.partition.ResultPartition.on_subpartition_consumer_lost`.

Name map: ``RecordWriter.emit(record[, target])``, ``broadcastEmit``, ``randomEmit``,
``broadcastEvent(event, isPriority)``, ``flushAll``, ``close``, ``isAvailable`` /
``getAvailableFuture``, ``RecordWriterBuilder.setChannelSelector / setTimeout / setTaskName /
build`` map to the snake_case names below; ``ChannelSelectorRecordWriter`` is
:class:`RecordWriter` with a selector; ``emit_batch`` / ``emit_array`` are flinknet's batch forms.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import random
import threading
import time
from collections.abc import Sequence
from typing import Any, NoReturn, Self, TypeAlias

import numpy as np
import numpy.typing as npt

from flinknet import aio as _aio
from flinknet.errors import CancelTaskError, ConsumerLostError, FlinknetError, OutputFlusherError
from flinknet.events import Event
from flinknet.interfaces import WaitTimer
from flinknet.partition.result_partition import ResultPartition
from flinknet.partitioners import ChannelSelector, RoundRobinChannelSelector

__all__ = [
    "DEFAULT_OUTPUT_FLUSH_THREAD_NAME",
    "DEFAULT_BUFFER_TIMEOUT",
    "DISABLED_NETWORK_BUFFER_TIMEOUT",
    "FLUSH_AFTER_EVERY_RECORD",
    "BroadcastRecordWriter",
    "OutputFlusherError",
    "RecordWriter",
    "RecordWriterBuilder",
    "Targets",
]

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_FLUSH_THREAD_NAME = "OutputFlusher"
#: Flink's ``ExecutionOptions.BUFFER_TIMEOUT`` default, in milliseconds.
DEFAULT_BUFFER_TIMEOUT = 100
DISABLED_NETWORK_BUFFER_TIMEOUT = -1
FLUSH_AFTER_EVERY_RECORD = 0
# wait_available re-checks the partition (released, failed) at least this often.
_AVAILABILITY_POLL_S = 0.1

#: Where a batch goes: one subpartition for all records, or one per record.
Targets: TypeAlias = int | Sequence[int] | npt.NDArray[np.integer[Any]]


class _OutputFlusher(threading.Thread):
    def __init__(self, writer: RecordWriter, name: str, timeout_ms: float):
        super().__init__(name=name, daemon=True)
        self._writer = writer
        # Event.wait overflows beyond TIMEOUT_MAX: a longer interval is as good as never.
        self._interval = min(timeout_ms / 1000.0, threading.TIMEOUT_MAX)
        self._stop_event = threading.Event()

    def run(self) -> None:
        stop = self._stop_event
        flush_all = self._writer._partition.flush_all
        try:
            while not stop.wait(self._interval):
                flush_all()
        except BaseException as err:  # noqa: BLE001 (stored, raised by the next emit)
            if not stop.is_set():
                log.debug("output flusher failed", exc_info=True)
                self._writer._flusher_error = err

    def terminate(self) -> None:
        self._stop_event.set()
        if self is not threading.current_thread():
            self.join()


class RecordWriter:
    """Emits records into a partition through a channel selector (Flink's
    ``ChannelSelectorRecordWriter``).

    ``RecordWriter(partition, channel_selector=None, timeout=100, task_name="")``; without a
    selector records go round-robin. ``timeout`` is the buffer timeout in milliseconds (see the
    module documentation). Not thread-safe: one task thread emits (the flusher is internal).
    Use as a context manager or call :meth:`close` to stop the flusher.
    """

    def __init__(self, partition: ResultPartition, channel_selector: ChannelSelector | None = None,
                 timeout: float = DEFAULT_BUFFER_TIMEOUT, task_name: str = ""):
        if not isinstance(partition, ResultPartition):
            raise TypeError(f"partition must be a ResultPartition, got {type(partition).__name__}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError("timeout must be a number of milliseconds")
        if not math.isfinite(timeout) or (timeout < 0 and timeout != DISABLED_NETWORK_BUFFER_TIMEOUT):
            raise ValueError(f"Timeout {timeout} ms is invalid: it must be -1 (disabled), 0 "
                             "(flush after every record) or positive")
        if channel_selector is None:
            channel_selector = RoundRobinChannelSelector()
        elif not isinstance(channel_selector, ChannelSelector):
            raise TypeError("channel_selector must be a flinknet.partitioners.ChannelSelector")
        self._partition = partition
        self._num_channels = partition.num_subpartitions
        self.channel_selector = channel_selector
        channel_selector.setup(self._num_channels)
        self.task_name = task_name
        self.timeout = timeout
        self._flush_always = timeout == FLUSH_AFTER_EVERY_RECORD
        self._flusher_error: BaseException | None = None
        self._rng = random.Random()
        self._serializer = partition.record_serializer
        self._select = channel_selector.select_channel
        self._closed = False
        self._soft_back_pressure_timer: WaitTimer | None = None
        self._flusher: _OutputFlusher | None = None
        if timeout > 0 and not partition.partition_type.is_blocking:
            # Blocking partitions are batch: Flink disables the buffer timeout there.
            name = f"{DEFAULT_OUTPUT_FLUSH_THREAD_NAME} for {task_name}" if task_name else \
                DEFAULT_OUTPUT_FLUSH_THREAD_NAME
            self._flusher = _OutputFlusher(self, name, timeout)
            self._flusher.start()

    # -- checks ----------------------------------------------------------------------------

    def _check_errors(self) -> None:
        err = self._flusher_error
        if err is not None:
            raise OutputFlusherError("An exception happened while flushing the outputs") from err
        if self._closed:
            raise FlinknetError("the record writer is closed")
        self._partition.check_producing()

    def _emit_failed(self, err: CancelTaskError) -> NoReturn:
        # An emit woken by its destroyed pool: a lost consumer destroyed it (then say so), or
        # the partition was failed (the CancelTaskError as it is).
        if not isinstance(err, ConsumerLostError):
            self._partition.check_consumers()
        raise err

    # -- records ---------------------------------------------------------------------------

    def emit(self, record: object, target_subpartition: int | None = None) -> None:
        """Emit one record to the selected (or given) subpartition."""
        # The partition's state is checked by its serializer (finish/release make it reject
        # records), so the per-record path checks only the writer's own state.
        if self._flusher_error is not None or self._closed:
            self._check_errors()
        if target_subpartition is None:
            target_subpartition = self._select(record)
        try:
            self._serializer.emit(record, target_subpartition)
        except CancelTaskError as err:
            self._emit_failed(err)
        if self._flush_always:
            self._partition.flush(target_subpartition)

    def emit_batch(self, records: Sequence[object] | npt.NDArray[Any], targets: Targets | None = None) -> int:
        """Emit a sequence of records; ``targets`` (one subpartition, or one per record) defaults
        to the selector's choice for each record. Returns the number of records emitted."""
        self._check_errors()
        if targets is None:
            targets = self.channel_selector.select_channels(records)
        try:
            n = self._serializer.emit_batch(records, targets)
        except CancelTaskError as err:
            self._emit_failed(err)
        if self._flush_always:
            self._flush_targets(targets)
        return n

    def emit_array(self, array: npt.NDArray[Any], targets: Targets | None = None) -> int:
        """Emit every row of a numpy array as one record of its raw bytes."""
        self._check_errors()
        if targets is None:
            targets = self.channel_selector.select_channels(array)
        try:
            n = self._serializer.emit_array(array, targets)
        except CancelTaskError as err:
            self._emit_failed(err)
        if self._flush_always:
            self._flush_targets(targets)
        return n

    def _flush_targets(self, targets: Targets) -> None:
        if isinstance(targets, (int, np.integer)):
            self._partition.flush(int(targets))
        else:
            self._partition.flush_all()

    def broadcast_emit(self, record: object) -> None:
        """Emit one record to every subpartition, serialized once (watermarks on keyed edges)."""
        self._check_errors()
        try:
            self._serializer.broadcast_emit(record)
        except CancelTaskError as err:
            self._emit_failed(err)
        if self._flush_always:
            self._partition.flush_all()

    def random_emit(self, record: object) -> None:
        """Emit one record to a uniformly random subpartition (latency markers)."""
        self._check_errors()
        target = self._rng.randrange(self._num_channels)
        try:
            self._serializer.emit(record, target)
        except CancelTaskError as err:
            self._emit_failed(err)
        if self._flush_always:
            self._partition.flush(target)

    # -- events and flushing ---------------------------------------------------------------

    def broadcast_event(self, event: Event, is_priority: bool = False) -> None:
        """Send an event to every subpartition, each in its own buffer after all records so far
        (priority events overtake the queued data)."""
        self._check_errors()
        self._partition.broadcast_event(event, is_priority)
        if self._flush_always:
            self._partition.flush_all()

    def flush_all(self) -> None:
        """Make everything emitted so far readable (raises
        :class:`~flinknet.errors.ConsumerLostError` once a consumer is lost)."""
        self._partition.check_consumers()
        self._partition.flush_all()

    # -- availability ----------------------------------------------------------------------

    @property
    def is_available(self) -> bool:
        """Whether an emit would find a buffer now (a framework can await the future instead)."""
        return self._partition.is_available

    def get_available_future(self) -> concurrent.futures.Future[None]:
        """A future completed when the partition turns available (completed already if it is)."""
        return self._partition.get_available_future()

    def wait_available(self, timeout: float | None = None) -> bool:
        """Wait until the partition is available (Flink's task mailbox suspending on an
        unavailable output): True once it is, False after ``timeout`` seconds.

        The wait is *soft* back-pressure: it is timed by the timer the metrics attach
        (``softBackPressuredTimeMsPerSecond`` when metrics are on), while a wait inside an emit
        for a buffer is hard back-pressure. Raises if the writer or partition fails meanwhile.
        """
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not timeout >= 0):
            raise ValueError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
        self._check_errors()
        partition = self._partition
        if partition.is_available:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        timer = self._soft_back_pressure_timer
        if timer is not None:
            timer.mark_start()
        try:
            while not partition.is_available:
                wait = _AVAILABILITY_POLL_S
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        return False
                try:
                    partition.get_available_future().result(wait)
                except concurrent.futures.TimeoutError:
                    pass
                self._check_errors()   # a released partition or failed flusher ends the wait
            return True
        finally:
            if timer is not None:
                timer.mark_end()

    async def wait_available_async(self, timeout: float | None = None) -> bool:
        """asyncio: :meth:`wait_available` without blocking a thread — the running loop waits
        on the partition's availability future (see :func:`flinknet.aio.wait_writer_available`):
        True once a buffer is available, False after ``timeout`` seconds; raises what an emit
        would (a released partition, a lost consumer, a failed flusher)."""
        self._check_errors()
        return await _aio.wait_writer_available(self, timeout)

    def set_soft_back_pressure_timer(self, timer: WaitTimer | None) -> None:
        """The metrics hook: ``timer`` (a :class:`~flinknet.interfaces.WaitTimer`, e.g. the task's
        ``softBackPressuredTimeMsPerSecond`` TimerGauge) is marked around every
        :meth:`wait_available` wait; None detaches it."""
        self._soft_back_pressure_timer = timer

    @property
    def soft_back_pressure_timer(self) -> WaitTimer | None:
        """The timer attached by :meth:`set_soft_back_pressure_timer`, or None."""
        return self._soft_back_pressure_timer

    def set_max_overdraft_buffers_per_gate(self, n: int) -> None:
        """Overdraft buffers the partition's pool may hand out beyond its size (Flink's
        ``taskmanager.network.memory.max-overdraft-buffers-per-gate``)."""
        self._partition.buffer_pool.max_overdraft_buffers_per_gate = n

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the output flusher (the partition is finished/closed by its owner)."""
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            self._flusher.terminate()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def partition(self) -> ResultPartition:
        """The partition written to."""
        return self._partition

    @property
    def number_of_channels(self) -> int:
        """The partition's subpartitions (the selector's channels)."""
        return self._num_channels

    @property
    def flusher_alive(self) -> bool:
        """The output flusher thread runs."""
        return self._flusher is not None and self._flusher.is_alive()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self._partition}, {self.channel_selector}, "
                f"timeout={self.timeout} ms)")


class BroadcastRecordWriter(RecordWriter):
    """Every record to every subpartition from one shared buffer (Flink's
    ``BroadcastRecordWriter``): the bytes are written once, whatever the parallelism."""

    def __init__(self, partition: ResultPartition, timeout: float = DEFAULT_BUFFER_TIMEOUT,
                 task_name: str = "", channel_selector: ChannelSelector | None = None):
        from flinknet.partitioners import BroadcastPartitioner

        super().__init__(partition, channel_selector or BroadcastPartitioner(), timeout, task_name)

    def emit(self, record: object, target_subpartition: int | None = None) -> None:
        """Emit one record to every subpartition (or to the given one)."""
        if target_subpartition is not None:
            return RecordWriter.emit(self, record, target_subpartition)
        self.broadcast_emit(record)

    def broadcast_emit(self, record: object) -> None:
        """Emit one record to every subpartition, written once into a shared buffer."""
        if self._flusher_error is not None or self._closed:
            self._check_errors()
        try:
            self._serializer.broadcast_record(record)
        except CancelTaskError as err:
            self._emit_failed(err)
        if self._flush_always:
            self._partition.flush_all()

    def emit_batch(self, records: Sequence[object] | npt.NDArray[Any], targets: Targets | None = None) -> int:
        """Emit a sequence of records to every subpartition (or to ``targets``)."""
        if targets is not None:
            return RecordWriter.emit_batch(self, records, targets)
        self._check_errors()
        broadcast = self._serializer.broadcast_record
        n = 0
        try:
            for record in records:
                broadcast(record)
                n += 1
        except CancelTaskError as err:
            self._emit_failed(err)
        if self._flush_always:
            self._partition.flush_all()
        return n

    def emit_array(self, array: npt.NDArray[Any], targets: Targets | None = None) -> int:
        """Emit every row of a one-dimensional numpy array to every subpartition (or to ``targets``)."""
        if targets is not None:
            return RecordWriter.emit_array(self, array, targets)
        arr = np.ascontiguousarray(array)
        if arr.ndim != 1 or arr.dtype.hasobject:
            raise ValueError("emit_array needs a one-dimensional array without Python objects")
        # One-row slices, not scalars: a scalar's bytes are in native order, a row's are raw.
        return self.emit_batch([arr[i:i + 1] for i in range(arr.shape[0])])


class RecordWriterBuilder:
    """Flink's ``RecordWriterBuilder``: a broadcast selector builds a :class:`BroadcastRecordWriter`."""

    def __init__(self) -> None:
        self._selector: ChannelSelector | None = None
        self._timeout: float = DEFAULT_BUFFER_TIMEOUT
        self._task_name = ""

    def set_channel_selector(self, selector: ChannelSelector) -> Self:
        """The channel selector (default: round robin; a broadcast one builds a broadcast writer)."""
        self._selector = selector
        return self

    def set_timeout(self, timeout: float) -> Self:
        """The buffer timeout in milliseconds (see :mod:`flinknet.writer`)."""
        self._timeout = timeout
        return self

    def set_task_name(self, task_name: str) -> Self:
        """The task's name (names the output flusher thread)."""
        self._task_name = task_name
        return self

    def build(self, partition: ResultPartition) -> RecordWriter:
        """The writer for ``partition``."""
        if self._selector is not None and self._selector.is_broadcast:
            return BroadcastRecordWriter(partition, self._timeout, self._task_name, self._selector)
        return RecordWriter(partition, self._selector, self._timeout, self._task_name)
