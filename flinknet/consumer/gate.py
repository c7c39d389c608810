"""Input gates: what a consuming task reads from (Flink's ``SingleInputGate`` and
``UnionInputGate``).

A :class:`SingleInputGate` reads one intermediate result through one channel per producer. Ready
channels wait in a queue (priority section first); each poll takes one buffer from the head
channel and puts the channel back at the tail if it has more, so busy channels cannot starve
others. Events are decoded here; EndOfPartition releases its channel, and the gate is finished
when every channel delivered it. A corrupt event or a compressed buffer (flinknet has no codec)
fails its channel with :class:`~flinknet.errors.CorruptEventError` or
:class:`~flinknet.errors.UnsupportedCompressionError`, raised at every read of it from then on.
:class:`UnionInputGate` merges several gates the same way.

``get_next(timeout=None)`` blocks (``TimeoutError`` after ``timeout`` seconds) and returns None
once the gate is finished; ``poll_next()`` never blocks and returns None when nothing is ready.
Frameworks with their own event loop wait on :meth:`~SingleInputGate.get_available_future` (a
:class:`concurrent.futures.Future`) and then poll; on asyncio, ``await gate.next()`` does that
(:mod:`flinknet.aio`).

Name map: ``getNext`` / ``pollNext`` → ``get_next`` / ``poll_next``; ``requestPartitions`` →
``request_partitions``; ``resumeConsumption(channelInfo)`` → ``resume_consumption``;
``acknowledgeAllRecordsProcessed`` → ``acknowledge_all_records_processed``; ``isFinished`` /
``hasReceivedEndOfData`` → ``is_finished`` / ``has_received_end_of_data``; ``getAvailableFuture``
→ ``get_available_future``; ``close`` → ``close``; ``triggerDebloating`` /
``getBuffersInUseCount`` / ``announceBufferSize`` → ``trigger_debloating`` /
``buffers_in_use_count`` / ``announce_buffer_size``.

Buffer debloating (:mod:`flinknet.consumer.debloat`): a gate given a
:class:`~flinknet.consumer.debloat.BufferDebloater` with :meth:`SingleInputGate.set_buffer_debloater`
measures its throughput (bytes handed out over the time it was not waiting for input) and, when
given a period, recalculates and announces the buffer size itself: every read checks a
monotonic deadline (one clock read per buffer), so a task that only reads its gate (a
:class:`~flinknet.consumer.RecordReader`) debloats without code of its own. Frameworks with their
own timers pass no period and call :meth:`~SingleInputGate.trigger_debloating` on the reading
thread.
"""

from __future__ import annotations

import math
import operator
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, NoReturn, Protocol, Self, SupportsIndex, overload

from flinknet import aio as _aio
from flinknet import events as _events
from flinknet._core.buffer import Buffer, DataType
from flinknet._core.engine import ChannelQueue, GateSignal
from flinknet._core.pool import AvailabilityHelper, LocalBufferPool
from flinknet._core.pool import complete_future as _complete
from flinknet.consumer.channels import InputChannel, InputChannelInfo, LocalInputChannel
from flinknet.consumer.debloat import BufferDebloater, ThroughputCalculator
from flinknet.errors import (
    CancelTaskError,
    CorruptEventError,
    IllegalStateError,
    UnsupportedCompressionError,
)
from flinknet.ids import ResultPartitionID
from flinknet.interfaces import WaitTimer

if TYPE_CHECKING:
    from flinknet.partition.manager import ResultPartitionManager

__all__ = ["BufferOrEvent", "GateAvailabilityListener", "InputGate", "SingleInputGate", "UnionInputGate"]

_INT_MIN = -(1 << 31)
_monotonic = time.monotonic
_DATA_BUFFER = DataType.DATA_BUFFER
_PRIORITY_TYPES = frozenset(t for t in DataType if t.has_priority)


def _check_local_spec(i: int, spec: object) -> tuple[ResultPartitionID, int]:
    """``partitions[i]`` of :meth:`SingleInputGate.create_local`, checked."""
    if not isinstance(spec, (tuple, list)) or len(spec) != 2:
        raise TypeError(f"partitions[{i}] must be a (ResultPartitionID, subpartition index) tuple, "
                        f"got {spec!r}")
    pid, given_index = spec
    if not isinstance(pid, ResultPartitionID):
        raise TypeError(f"partitions[{i}]: the partition id must be a ResultPartitionID, got {pid!r}")
    # numpy integers are ints here too; bools are not
    if isinstance(given_index, bool) or not isinstance(given_index, SupportsIndex):
        raise TypeError(f"partitions[{i}]: the subpartition index must be an int, got {given_index!r}")
    index = operator.index(given_index)
    if index < 0:
        raise ValueError(f"partitions[{i}]: the subpartition index must be >= 0, got {index}")
    return pid, index


class GateAvailabilityListener(Protocol):
    """What :meth:`SingleInputGate.register_availability_listener` takes: called as
    ``listener(gate, has_priority)`` when the gate turns available and ``listener(gate)`` when it
    finishes or closes (a :class:`UnionInputGate`'s callback)."""

    def __call__(self, gate: SingleInputGate, has_priority: bool = ..., /) -> None: ...


class BufferOrEvent:
    """A data buffer or a decoded event from a gate, with the channel it came from.

    A buffer must be recycled by whoever takes it (a :class:`~flinknet.consumer.RecordReader`
    does); an event's buffer was already recycled.
    """

    __slots__ = ("buffer", "event", "channel_info", "more_available", "size",
                 "more_priority_events", "has_priority")

    buffer: Buffer | None
    event: _events.Event | None
    channel_info: InputChannelInfo

    def __init__(self, buffer: Buffer | None = None, event: _events.Event | None = None,
                 channel_info: InputChannelInfo | None = None, more_available: bool = False,
                 size: int = 0, more_priority_events: bool = False, has_priority: bool = False):
        self.buffer = buffer
        self.event = event
        # Every gate gives the channel; None (the default) is left for code that builds a
        # BufferOrEvent only to ask a UnionInputGate for its flat channel index.
        self.channel_info = channel_info  # type: ignore[assignment]
        self.more_available = more_available
        self.size = size
        self.more_priority_events = more_priority_events
        self.has_priority = has_priority

    @property
    def is_buffer(self) -> bool:
        """A data buffer (``buffer`` is set, ``event`` None)."""
        return self.buffer is not None

    @property
    def is_event(self) -> bool:
        """An event (``event`` is set, ``buffer`` None)."""
        return self.buffer is None

    def __repr__(self) -> str:
        what = f"buffer={self.buffer!r}" if self.buffer is not None else f"event={self.event!r}"
        return (f"BufferOrEvent({what}, channel={tuple(self.channel_info)}, "
                f"more_available={self.more_available}, priority={self.has_priority})")


class InputGate:
    """What :class:`SingleInputGate` and :class:`UnionInputGate` have in common (Flink's
    ``InputGate``)."""

    def get_next(self, timeout: float | None = None) -> BufferOrEvent | None:
        """The next buffer or event, waiting up to ``timeout`` seconds (``TimeoutError``); None
        once the gate is finished."""
        raise NotImplementedError

    def poll_next(self) -> BufferOrEvent | None:
        """The next buffer or event if one is ready now, else None."""
        raise NotImplementedError

    def poll_data_buffer(self) -> tuple[Buffer, InputChannelInfo] | None:
        """The gate's fast lane for a record reader, if it has one: the next data buffer and
        its channel when the gate can hand it out without its general path; else None (then
        :meth:`get_next` / :meth:`poll_next`). A gate without a lane always says None."""
        return None

    def wait_for_lane(self, timeout: float | None = None) -> bool:
        """The fast lane's wait, for a record reader whose :meth:`poll_data_buffer` found nothing:
        block until the lane may have a buffer, then True (poll the lane again; if it still
        finds nothing, something else woke the wait and :meth:`get_next` reads it). False at
        once, without waiting, when the lane cannot serve the gate now (then :meth:`get_next`).
        ``TimeoutError`` after ``timeout`` seconds, as :meth:`get_next` raises it. A gate
        without a lane always says False."""
        return False

    def flush_credit(self) -> None:
        """Announce the credit a record reader's lane reads deferred (see
        :meth:`SingleInputGate.flush_credit`); a gate without a lane has none."""

    def arm_lane_wake_fd(self) -> bool:
        """The fast lane's wait on an event loop (:func:`flinknet.aio.wait_lane`), for a reader
        whose :meth:`poll_data_buffer` found nothing: arm the doorbell's ``wake_fd`` and return
        False (the loop then waits for the fd); True instead when the caller should poll now: a
        channel is ready already, or the lane cannot serve the gate now (then the general path
        reads). A gate without a lane always says True."""
        return True

    def __iter__(self) -> Iterator[BufferOrEvent]:
        """Every BufferOrEvent until the gate is finished (blocking)."""
        while True:
            boe = self.get_next()
            if boe is None:
                return
            yield boe

    async def next(self, timeout: float | None = None) -> BufferOrEvent | None:
        """asyncio: the next buffer or event, at once if one is ready, else when one arrives
        (the running loop waits on :meth:`get_available_future`; no thread blocks); None once the
        gate is finished; ``TimeoutError`` after ``timeout`` seconds. See
        :func:`flinknet.aio.next_buffer_or_event`."""
        return await _aio.next_buffer_or_event(self, timeout)

    def request_partitions(self) -> None:
        """Every channel requests its subpartition (once; done by the first poll otherwise)."""
        raise NotImplementedError

    @property
    def partitions_requested(self) -> bool:
        """:meth:`request_partitions` has run (or is running)."""
        raise NotImplementedError

    def resume_consumption(self, channel_info: InputChannelInfo) -> None:
        """Resume a channel blocked by an upstream-blocking event (an aligned barrier)."""
        raise NotImplementedError

    def acknowledge_all_records_processed(self, channel_info: InputChannelInfo) -> None:
        """Tell a channel's producer that every user record was processed."""
        raise NotImplementedError

    def get_available_future(self) -> Future[None]:
        """Done while a buffer or event is ready (or the gate is finished)."""
        raise NotImplementedError

    def set_idle_timer(self, timer: WaitTimer | None) -> None:
        """The metrics hook: ``timer`` is marked around every wait of :meth:`get_next`."""
        raise NotImplementedError

    def trigger_debloating(self) -> None:
        """Recalculate the buffer size from the throughput since the last call and announce it
        if it changed enough (Flink's ``triggerDebloating``; see :mod:`flinknet.consumer.debloat`).
        Call it on the reading thread."""
        raise NotImplementedError

    def buffers_in_use_count(self) -> int:
        """Buffers the channels hold or have queued (Flink's ``getBuffersInUseCount``)."""
        raise NotImplementedError

    def announce_buffer_size(self, size: int) -> None:
        """Ask every producer for buffers of ``size`` bytes (Flink's ``announceBufferSize``)."""
        raise NotImplementedError

    @property
    def idle_timer(self) -> WaitTimer | None:
        """The timer attached by :meth:`set_idle_timer`, or None."""
        raise NotImplementedError

    @property
    def is_available(self) -> bool:
        """Whether a buffer or event is ready now (or the gate is finished)."""
        raise NotImplementedError

    @property
    def is_finished(self) -> bool:
        """Every channel delivered EndOfPartition."""
        raise NotImplementedError

    @property
    def has_received_end_of_data(self) -> bool:
        """Every channel delivered EndOfData."""
        raise NotImplementedError

    @property
    def should_drain_on_end_of_data(self) -> bool:
        """Every EndOfData asked to drain."""
        raise NotImplementedError

    @property
    def number_of_input_channels(self) -> int:
        """How many channels the gate reads."""
        raise NotImplementedError

    def get_channel(self, index: int) -> InputChannel:
        """The channel at ``index``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release every channel and wake a blocked reader (idempotent)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SingleInputGate(InputGate):
    """Reads one intermediate result, one channel per producer subtask.

    ``SingleInputGate(gate_index=0, owning_task_name="", buffer_pool=None)``; add channels with
    :meth:`set_input_channels` (or build a local gate with :meth:`create_local`), then
    :meth:`setup` and :meth:`request_partitions` (done on the first poll if not called).
    ``buffer_pool`` is the gate's floating pool (remote channels use it; local ones need none).
    """

    def __init__(self, gate_index: int = 0, owning_task_name: str = "",
                 buffer_pool: LocalBufferPool | None = None):
        if gate_index < 0:
            raise ValueError("gate_index must be >= 0")
        self.gate_index = gate_index
        self.owning_task_name = owning_task_name
        self.buffer_pool = buffer_pool
        self._lock = threading.Lock()
        # The doorbell: channels that became non-empty (the native I/O thread rings it without
        # the GIL) and the wake-up the reading task waits on with the GIL released. Made with
        # the channels.
        self.signal: GateSignal | None = None
        self.input_channels: list[InputChannel] = []
        self._queue: deque[InputChannel] = deque()
        self._num_priority = 0
        self._enqueued: list[bool] = []
        self._end_of_partition: list[bool] = []
        self._end_of_data: list[bool] = []
        self._last_priority_seq: list[int] = []
        self._num_eop = 0
        self._num_eod = 0
        self._all_eop = False
        self._finished_returned = False
        self._should_drain_on_end_of_data = True
        self._requested = False
        self._closed = False
        self._close_future: Future[None] = Future()
        self._availability = AvailabilityHelper(False)
        self._priority_availability = AvailabilityHelper(False)
        self._timers: set[threading.Timer] = set()
        # register_availability_listener: a UnionInputGate's callback (gate, has_priority).
        self._availability_listener: GateAvailabilityListener | None = None
        self.num_bytes_in = 0
        self.num_buffers_in = 0
        # numBytesIn/numBuffersIn split by channel kind (Flink's ...Local / ...Remote).
        self.num_bytes_in_local = 0
        self.num_bytes_in_remote = 0
        self.num_buffers_in_local = 0
        self.num_buffers_in_remote = 0
        self._idle_timer: WaitTimer | None = None
        # Buffer debloating (set_buffer_debloater): the reading path checks _throughput for None
        # and, when set, reads the clock once per buffer against _debloat_deadline.
        self._debloater: BufferDebloater | None = None
        self._throughput: ThroughputCalculator | None = None
        self._throughput_paused = False
        self._throughput_monotonic = True   # the calculator's clock is time.monotonic (ms)
        self._debloat_period = math.inf
        self._debloat_deadline = math.inf
        self._debloat_bytes_mark = 0
        # The fast lane's view of the channels (poll_data_buffer): channel index -> its native
        # ChannelQueue (None for a channel without one); made at its first use after the request.
        self._native_queues: list[ChannelQueue | None] | None = None
        # wait_for_lane waits only where the lane can serve (a channel with a native queue)
        self._lane_waits = False
        # reader_gil_hold: applied to the doorbell (GateSignal.set_gil_hold) once every channel
        # is a remote one attached to a native connection (_apply_gil_hold)
        self._reader_gil_hold = 0.0
        self._gil_hold_pending = False

    # -- hooks -----------------------------------------------------------------------------

    def set_idle_timer(self, timer: WaitTimer | None) -> None:
        """The metrics hook: ``timer`` (a :class:`~flinknet.interfaces.WaitTimer`, e.g. the task's
        ``idleTimeMsPerSecond`` TimerGauge) is marked around every wait of :meth:`get_next` for
        input; None detaches it."""
        self._idle_timer = timer

    @property
    def idle_timer(self) -> WaitTimer | None:
        """The timer attached by :meth:`set_idle_timer`, or None."""
        return self._idle_timer

    # -- buffer debloating -----------------------------------------------------------------

    def set_buffer_debloater(self, debloater: BufferDebloater | None, period: float | None = None,
                             throughput_calculator: ThroughputCalculator | None = None) -> None:
        """Debloat this gate's buffers with ``debloater`` (None: stop). With ``period`` (seconds,
        e.g. ``taskmanager.network.memory.buffer-debloat.period``) the gate triggers itself: the
        first read of a buffer at least ``period`` after the last trigger runs
        :meth:`trigger_debloating`; without, whoever drives the task calls it.
        ``throughput_calculator`` replaces the default one (tests give one with a manual clock).
        Call before reading, or on the reading thread."""
        if debloater is not None and not isinstance(debloater, BufferDebloater):
            raise TypeError(f"expected a BufferDebloater, got {type(debloater).__name__}")
        if period is not None and not period > 0:
            raise ValueError(f"period must be > 0 seconds, got {period!r}")
        if debloater is None:
            self._debloater = None
            self._throughput = None
            self._debloat_period = self._debloat_deadline = math.inf
            return
        self._debloater = debloater
        if throughput_calculator is None:
            throughput_calculator = ThroughputCalculator()
        self._throughput = throughput_calculator
        # Nothing is measured until the first buffer arrives (its read resumes the measurement).
        self._throughput_paused = True
        self._throughput_monotonic = throughput_calculator.uses_monotonic_clock
        throughput_calculator.pause_measurement()
        self._debloat_bytes_mark = self.num_bytes_in
        self._debloat_period = math.inf if period is None else float(period)
        self._debloat_deadline = _monotonic() + self._debloat_period

    @property
    def buffer_debloater(self) -> BufferDebloater | None:
        """The gate's :class:`~flinknet.consumer.debloat.BufferDebloater`, if debloating."""
        return self._debloater

    @property
    def throughput_calculator(self) -> ThroughputCalculator | None:
        """The gate's throughput measurement, if debloating."""
        return self._throughput

    @property
    def debloat_period(self) -> float | None:
        """Seconds between the gate's own triggers (None: triggered from outside only)."""
        return None if self._debloat_period == math.inf else self._debloat_period

    def buffers_in_use_count(self) -> int:
        """Σ over the channels of the buffers each holds or has queued (remote: received
        buffers plus the floating ones its sender's backlog asks for; local: the producer's
        queue length). Flink's ``getBuffersInUseCount``."""
        return sum(ch.buffers_in_use_count for ch in self.input_channels)

    def announce_buffer_size(self, size: int) -> None:
        """Tell every unreleased channel's producer to fill new buffers up to ``size`` bytes
        (remote: a NewBufferSize message; local: the subpartition view directly)."""
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f"the buffer size must be a positive int, got {size!r}")
        for ch in self.input_channels:
            if not ch.is_released:
                ch.announce_buffer_size(size)

    def trigger_debloating(self) -> None:
        """Recalculate the buffer size from the throughput since the last trigger and the
        buffers in use, and announce it if it changed enough (Flink's ``triggerDebloating``;
        nothing once the gate is finished or closed). Call it on the reading thread.
        :class:`IllegalStateError` if the gate has no debloater."""
        self._trigger_debloating(_monotonic())

    def _trigger_debloating(self, now: float) -> None:
        debloater, calc = self._debloater, self._throughput
        if debloater is None or calc is None:
            raise IllegalStateError(f"{self} has no buffer debloater (see set_buffer_debloater)")
        self._debloat_deadline = now + self._debloat_period
        if self._all_eop or self._closed:
            return
        # The bytes this gate handed out since the last trigger (counted per buffer anyway).
        total = self.num_bytes_in
        calc.add_data_size(total - self._debloat_bytes_mark)
        self._debloat_bytes_mark = total
        new_size = debloater.recalculate_buffer_size(calc.calculate_throughput(), self.buffers_in_use_count())
        if new_size is not None:
            self.announce_buffer_size(new_size)

    def _pause_throughput(self) -> None:
        """The reader waits for input (or found none): stop measuring time."""
        calc = self._throughput
        if calc is not None and not self._throughput_paused:
            self._throughput_paused = True
            calc.pause_measurement(_monotonic() * 1000.0 if self._throughput_monotonic else None)

    def register_availability_listener(self, listener: GateAvailabilityListener) -> None:
        """Call ``listener(gate, has_priority)`` when the gate turns available (a channel became
        ready while none was, or a priority event arrived) and ``listener(gate)`` when it finishes
        or closes. Runs on the thread that made it so (a producer or I/O thread): keep it short.
        One listener per gate (the :class:`UnionInputGate` that owns it)."""
        if not callable(listener):
            raise TypeError("listener must be callable")
        with self._lock:
            if self._availability_listener is not None:
                raise IllegalStateError(f"{self} already belongs to a union input gate")
            self._availability_listener = listener
            # channels the native I/O thread makes ready call the listener from now on (a
            # channel ready already shows in is_available, which the union gate checks next)
            self._arm_unsafe()

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def create_local(cls, partition_manager: ResultPartitionManager,
                     partitions: Iterable[tuple[ResultPartitionID, int]], gate_index: int = 0,
                     owning_task_name: str = "", initial_backoff: int = 100,
                     max_backoff: int = 10_000) -> Self:
        """A gate of local channels, one per ``(partition_id, subpartition_index)`` in ``partitions``
        (anything else is a TypeError or ValueError naming the item)."""
        specs = [_check_local_spec(i, spec) for i, spec in enumerate(partitions)]
        gate = cls(gate_index, owning_task_name)
        channels = [LocalInputChannel(gate, i, pid, sp, partition_manager, initial_backoff, max_backoff)
                    for i, (pid, sp) in enumerate(specs)]
        gate.set_input_channels(channels)
        gate.setup()
        return gate

    def set_input_channels(self, channels: Iterable[InputChannel]) -> None:
        """The gate's channels, in index order (once, before :meth:`setup`)."""
        channels = list(channels)
        if self.input_channels:
            raise IllegalStateError("the gate's channels are already set")
        if not channels:
            raise ValueError("a gate needs at least one channel")
        for i, ch in enumerate(channels):
            if not isinstance(ch, InputChannel):
                raise TypeError(f"channel {i} is not an InputChannel")
            if ch.channel_index != i or ch.input_gate is not self:
                raise ValueError(f"channel {i} has index {ch.channel_index} or belongs to another gate")
        n = len(channels)
        self.signal = GateSignal(n, self._on_signal)
        self.input_channels = channels
        self._enqueued = [False] * n
        self._end_of_partition = [False] * n
        self._end_of_data = [False] * n
        self._last_priority_seq = [_INT_MIN] * n

    def setup(self) -> None:
        """Reserve the gate pool's first buffer (Flink's deadlock avoidance, FLINK-24035)."""
        if self.buffer_pool is not None:
            self.buffer_pool.reserve_segments(1)

    def request_partitions(self) -> None:
        """Every channel requests its subpartition (once); failures are stored on the channel."""
        with self._lock:
            if self._requested:
                return
            if self._closed:
                raise CancelTaskError("Input gate is already closed.")
            if not self.input_channels:
                raise IllegalStateError("the gate has no channels")
            self._requested = True
        for ch in self.input_channels:
            try:
                ch.request_subpartitions()
            except BaseException as err:  # noqa: BLE001 (stored on the channel)
                ch.set_error(err)

    @property
    def partitions_requested(self) -> bool:
        """:meth:`request_partitions` has run (or is running)."""
        return self._requested

    def retrigger_partition_request(self, channel: InputChannel, delay_ms: float) -> None:
        """Re-request ``channel``'s subpartition after ``delay_ms`` (local channels' backoff)."""
        def fire() -> None:
            with self._lock:
                self._timers.discard(timer)
                if self._closed:
                    return
            channel.retrigger_subpartition_request()

        timer = threading.Timer(delay_ms / 1000.0, fire)
        timer.daemon = True
        with self._lock:
            if self._closed:
                return
            self._timers.add(timer)
        timer.start()

    # -- notifications from channels (producer threads) ------------------------------------

    def notify_channel_non_empty(self, channel: InputChannel) -> None:
        """``channel`` has something to read (any thread): queue it."""
        self._queue_channel(channel, None)

    def notify_priority_event(self, channel: InputChannel, sequence_number: int) -> None:
        """``channel``'s first readable item is a priority event: queue it in the priority section."""
        self._queue_channel(channel, sequence_number)

    def notify_priority_event_force(self, channel: InputChannel) -> None:
        """``channel``'s first readable item became a priority event whose sequence number the
        gate may have seen already (a barrier converted after its announcement was taken):
        queue it in the priority section regardless (Flink's ``notifyPriorityEventForce``)."""
        self._queue_channel(channel, None, force_priority=True)

    def _queue_channel(self, channel: InputChannel, priority_seq: int | None,
                       force_priority: bool = False) -> None:
        futures: list[Future[None] | None] = []
        priority = force_priority or priority_seq is not None
        with self._lock:
            was_empty = self._queue_channel_unsafe(channel, priority, priority_seq, futures)
            has_priority = priority and self._num_priority > 0
            if was_empty:
                # Ready Python-side (a local channel's data, a failure, the end): wake a reader
                # blocked on the doorbell or an event loop armed on its eventfd.
                self._wake()
        # The priority future may have been collected even if the queue was not empty.
        for f in futures:
            _complete(f)
        if not (was_empty or has_priority):
            return
        listener = self._availability_listener
        if listener is not None:
            listener(self, has_priority)

    def _queue_channel_unsafe(self, channel: InputChannel, priority: bool, priority_seq: int | None,
                              futures: list[Future[None] | None]) -> bool:
        """Enqueue under the lock; True if the queue went from empty to non-empty."""
        idx = channel.channel_index
        if self._end_of_partition[idx] or self._closed:
            # Closed: releasing the channels notifies them once more; nothing is read any more.
            return False
        if priority_seq is not None:
            last = self._last_priority_seq[idx]
            if (last != _INT_MIN and ((priority_seq - last) & 0xFFFFFFFF) >= 0x80000000
                    or priority_seq == last):
                return False  # stale: that priority event was already polled
        queue = self._queue
        if self._enqueued[idx]:
            if not priority:
                return False
            # Upgrade: move the channel into the priority section.
            pos = queue.index(channel)
            if pos < self._num_priority:
                return False
            del queue[pos]
        else:
            self._enqueued[idx] = True
        was_empty = not queue
        if priority:
            queue.insert(self._num_priority, channel)
            self._num_priority += 1
            if self._num_priority == 1:
                futures.append(self._priority_availability.get_unavailable_to_reset_available())
        else:
            queue.append(channel)
        if was_empty:
            futures.append(self._availability.get_unavailable_to_reset_available())
        # No doorbell notify here: what the reader queues itself (a channel with more, the
        # doorbell's channels it drains) wakes nobody, and the native ring that made a drained
        # channel ready woke every waiter already. A notify here would leave a stale wake-up that
        # the reader's next wait answers with a poll that finds nothing. queue_channel notifies.
        return was_empty

    def _wake(self) -> None:
        signal = self.signal
        if signal is not None:
            signal.notify()

    def _drain_signal_unsafe(self, futures: list[Future[None] | None]) -> None:
        """Queue the channels the doorbell names (under the lock). Once a reader takes the fast
        lane only the first of them: the others stay in the doorbell's order, where the lane
        reads them, and the general path takes the next one when it comes back here."""
        signal = self.signal
        if signal is None or not signal.ready_count:
            return
        channels = self.input_channels
        if self._native_queues is not None:
            idx = signal.pop()
            if idx >= 0:
                self._queue_channel_unsafe(channels[idx], False, None, futures)
            return
        for idx in signal.drain():
            self._queue_channel_unsafe(channels[idx], False, None, futures)

    def _on_signal(self) -> None:
        """The armed doorbell rang (the thread that rang it, with the GIL): queue the ready
        channels, complete the availability future, tell the union gate."""
        futures: list[Future[None] | None] = []
        with self._lock:
            was_empty = not self._queue
            if self._native_queues is None:
                self._drain_signal_unsafe(futures)
                became_available = was_empty and bool(self._queue)
            else:
                # a reader takes the fast lane: the doorbell's channels stay where it reads them
                became_available = was_empty and self.signal is not None and self.signal.ready_count > 0
                if became_available:
                    futures.append(self._availability.get_unavailable_to_reset_available())
        for f in futures:
            _complete(f)
        listener = self._availability_listener
        if became_available and listener is not None:
            listener(self, False)

    # -- reading ---------------------------------------------------------------------------

    def get_next(self, timeout: float | None = None) -> BufferOrEvent | None:
        """The next buffer or event, waiting up to ``timeout`` seconds (``TimeoutError``);
        None once every channel delivered EndOfPartition and the last one was returned."""
        return self._get_next(True, timeout)

    def poll_next(self) -> BufferOrEvent | None:
        """The next buffer or event if one is ready now, else None (see :attr:`is_finished`)."""
        return self._get_next(False, None)

    def poll_data_buffer(self) -> tuple[Buffer, InputChannelInfo] | None:
        """The fast lane of a :class:`~flinknet.consumer.RecordReader`: the next data buffer a
        remote channel received (natively, or through the Python transport) and its channel,
        if one is ready and nothing needs the general path; else None (then :meth:`get_next` /
        :meth:`poll_next`, which read what is left in order). The general path serves what
        Python code made ready (local channels, failures, priority events), events and
        compressed buffers; the fast lane takes the data buffers of the doorbell's channels in
        its order, round robin, without the gate's lock or a :class:`BufferOrEvent`, and counts
        them as :meth:`get_next` does (gate and channel). Not with buffer debloating (the
        general path measures each buffer), before the partitions were requested, or once the
        gate is closed or finished. The caller owns (recycles) the buffer. First it writes the
        credit the reader's last lane read deferred (:meth:`flush_credit`): after the caller had
        those records, and without waiting for a wait, which a reader reading on from other
        channels never does; not that of a channel that received more meanwhile (its credit
        waits for its queue to run dry, rather than a ``send`` before its next buffer is handed
        out). The poll that empties a channel's queue defers the credit that waited for that
        the same way. Task thread, as :meth:`get_next`."""
        queues = self._native_queues
        signal = self.signal
        if queues is None:
            if signal is None or not self._requested:
                return None
            # from now on the general path puts a channel with more back into the doorbell's
            # order (requeue), where this lane finds it
            queues = self._native_queues = self._channel_queues()
            self._lane_waits = any(q is not None for q in queues)
        elif signal.deferred_credit_count:  # type: ignore[union-attr]  # set with the channels
            signal.flush_credit(queues, True)   # type: ignore[union-attr]  # (not a channel with more)
        if (self._queue or self._num_priority or self._all_eop or self._closed
                or self._throughput is not None):
            return None
        got = signal.poll_data(queues)  # type: ignore[union-attr]  # set with the channels
        if not got:
            return None
        buffer, index, sequence_number, backlog, more_ready = got
        channel = self.input_channels[index]
        if channel.failure_cause is not None:
            # failed meanwhile: what it received is dropped, the reader gets the failure (and
            # the channel stays readable with it, as on the general path)
            buffer.recycle()
            self.notify_channel_non_empty(channel)
            channel.check_error()
        try:
            # (a channel with a native queue is a RemoteInputChannel)
            channel.note_polled(buffer, sequence_number, backlog)  # type: ignore[attr-defined]
        except BaseException:
            buffer.recycle()
            raise
        size = buffer.size
        self.num_buffers_in += 1
        self.num_bytes_in += size
        self.num_buffers_in_remote += 1
        self.num_bytes_in_remote += size
        if not more_ready and not self._queue:
            with self._lock:
                self._check_unavailability()
        return buffer, channel.channel_info

    @property
    def reader_gil_hold(self) -> float:
        """The longest, in seconds, a reader's wait for this gate keeps the GIL (0: never); set
        by the environment from ``flinknet.network.reader-gil-hold``.

        It applies once every channel is a remote one served by the native I/O thread (its data
        arrives without the GIL), and only while it pays: see
        :meth:`~flinknet._core.engine.GateSignal.set_gil_hold`. A gate with a local channel, or
        with a connection on the Python I/O thread (TLS, ``flinknet.network.native-io`` off),
        whose data needs the GIL to arrive, never keeps it."""
        return self._reader_gil_hold

    @reader_gil_hold.setter
    def reader_gil_hold(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 0.1:
            raise ValueError(f"reader_gil_hold must be a number of seconds in [0, 0.1], got {seconds!r}")
        self._reader_gil_hold = float(seconds)
        self._gil_hold_pending = seconds > 0
        if self.signal is not None and seconds == 0:
            self.signal.set_gil_hold(0.0)

    def _apply_gil_hold(self) -> None:
        """Hand the reader's GIL hold to the doorbell once every channel's data comes from the
        native I/O thread (checked at each wait until then). Task thread."""
        queues = self._native_queues
        signal = self.signal
        if queues is None or signal is None or not all(q is not None and q.is_attached for q in queues):
            return
        signal.set_gil_hold(self._reader_gil_hold)
        self._gil_hold_pending = False

    def _lane_declines(self) -> bool:
        """The lane cannot serve a wait now (wait_for_lane, arm_lane_wake_fd): no channel has a
        native queue, something is queued for the general path, the gate is finished or closed,
        or buffer debloating measures the waits."""
        return (not self._lane_waits or bool(self._queue) or bool(self._num_priority)
                or self._all_eop or self._closed or self._throughput is not None)

    def wait_for_lane(self, timeout: float | None = None) -> bool:
        """Block until the doorbell names a ready channel or a notify says something Python-side
        changed (a local channel's data, a failure, the end, a close), with the GIL released:
        True. The wait :meth:`get_next` would do, without its general path around it: after it
        the reader's next buffer comes through the fast lane, not through a
        :class:`BufferOrEvent` (a reader that caught up with its producers waits about once
        every eight buffers). False at once when the lane is not in use, no channel has a native
        queue (local channels only), or the lane cannot serve now
        (something is queued for the general path, the gate is closed or finished, buffer
        debloating measures the waits); True at once when a channel is ready already. The
        idle timer is marked around the wait, as around :meth:`get_next`'s. Task thread."""
        signal = self.signal
        if signal is None or self._lane_declines():
            return False
        if signal.ready_count:
            return True
        if timeout is not None and not timeout > 0:
            if timeout != timeout:
                raise ValueError(f"timeout must be None or a number of seconds, got {timeout!r}")
            raise TimeoutError("no buffer or event arrived before the timeout")
        with self._lock:
            # every notifier holds the lock: a notify from before is news the lane's poll has
            # read (what it queued is seen here), not a reason to end the wait at once
            if self._queue or self._all_eop or self._closed:
                return False
            signal.clear_pending()
        self.flush_credit()
        if self._gil_hold_pending:
            self._apply_gil_hold()
        idle = self._idle_timer
        if idle is not None:
            idle.mark_start()       # idleTimeMsPerSecond: the task waits for input
        try:
            woken = signal.wait(timeout)
        finally:
            if idle is not None:
                idle.mark_end()
        if not woken:
            raise TimeoutError("no buffer or event arrived before the timeout")
        return True

    def flush_credit(self) -> None:
        """Announce now the credit freed by the buffers a record reader read through the lane
        (:func:`~flinknet._core.engine.defer_credit`): listed on their connections, not written
        inline at the recycle, so that the AddCredit's ``send`` falls after the records are handed
        out. The lane's next poll (:meth:`poll_data_buffer`) writes it (but for a channel that
        received more meanwhile: its credit waits for its queue to run dry, and the poll that
        empties it defers it again), every wait of this gate first, and the reader's close; the
        connection's credit timer what is left within 5 ms. Task thread."""
        signal = self.signal
        if signal is None or not signal.deferred_credit_count:
            return
        queues = self._native_queues
        if queues is None:      # (deferred before the lane's first poll: a thread's own choice)
            queues = self._channel_queues()
        signal.flush_credit(queues)

    def _channel_queues(self) -> list[ChannelQueue | None]:
        """Channel index -> its native ChannelQueue (None for a channel without one)."""
        return [q if isinstance(q := getattr(ch, "queue", None), ChannelQueue) else None
                for ch in self.input_channels]

    def arm_lane_wake_fd(self) -> bool:
        """:meth:`wait_for_lane` for an event loop (:func:`flinknet.aio.wait_lane`): arm
        :attr:`signal`'s ``wake_fd`` and return False, the loop waits for the fd (written at the
        next ready channel, or by a notify for what is Python-side: a local channel's data, a
        failure, the end, a close; ``signal.disarm()`` ends the wait). True, with nothing armed,
        when a channel is ready already or the lane cannot serve now (as :meth:`wait_for_lane`
        declines): the caller polls the lane, then the general path. Unlike
        :meth:`arm_wake_fd`, no ready channel moves to the general path's queue, so the buffer
        that ends the wait comes through the lane. Task thread."""
        signal = self.signal
        if signal is None or self._lane_declines():
            return True
        self.flush_credit()
        with self._lock:
            # as in wait_for_lane: a notify from before is news the lane's poll has read
            if self._queue or self._all_eop or self._closed:
                return True
            signal.clear_pending()
            return bool(signal.arm_fd())

    def _get_next(self, blocking: bool, timeout: float | None) -> BufferOrEvent | None:
        if not self._requested:
            self.request_partitions()
        if self._all_eop:
            return None
        if self._closed:
            raise CancelTaskError("Input gate is already closed.")
        deadline = None if timeout is None else time.monotonic() + timeout
        futures: list[Future[None] | None] = []
        while True:
            with self._lock:
                channel = self._get_channel(blocking, deadline)
                if channel is None:
                    if self._throughput is not None:
                        self._pause_throughput()
                    return None
                try:
                    result = channel.get_next_buffer()
                except BaseException:
                    # Keep the failed channel readable so every poll reports its error.
                    if not self._enqueued[channel.channel_index]:
                        self._enqueued[channel.channel_index] = True
                        self._queue.append(channel)
                    raise
                if result is None:
                    self._check_unavailability()
                    continue
                if result.more_available:
                    native = self._native_queues
                    if (native is not None and native[channel.channel_index] is not None
                            and not result.more_priority_events):
                        # back to the doorbell's order, where the fast lane reads on
                        self.signal.requeue(channel.channel_index)  # type: ignore[union-attr]
                    else:
                        self._queue_channel_unsafe(channel, result.more_priority_events, None, futures)
                more_priority = self._num_priority > 0
                buffer = result.buffer
                data_type = buffer.data_type
                if data_type in _PRIORITY_TYPES:
                    self._last_priority_seq[channel.channel_index] = result.sequence_number
                    if not more_priority:
                        self._priority_availability.reset_unavailable()
                self._check_unavailability()
                more_available = bool(self._queue) or bool(self.signal and self.signal.ready_count)
            for f in futures:
                _complete(f)
            size = buffer.size
            if buffer.is_compressed:
                # Flink decompresses here (decompressBufferIfNeeded); flinknet has no codec.
                buffer.recycle()
                self._fail_channel(channel, UnsupportedCompressionError(
                    f"{channel} received a compressed buffer ({data_type.name}, {size} bytes): "
                    "compression is not supported (the producer must not compress)"))
            self.num_buffers_in += 1
            self.num_bytes_in += size
            if channel.is_remote:
                self.num_buffers_in_remote += 1
                self.num_bytes_in_remote += size
            else:
                self.num_buffers_in_local += 1
                self.num_bytes_in_local += size
            calc = self._throughput
            if calc is not None:
                # Buffer debloating: one clock read per buffer (see set_buffer_debloater).
                now = _monotonic()
                if self._throughput_paused:
                    self._throughput_paused = False
                    calc.resume_measurement(now * 1000.0 if self._throughput_monotonic else None)
                if now >= self._debloat_deadline:
                    self._trigger_debloating(now)
            if data_type == _DATA_BUFFER:
                return BufferOrEvent(buffer, None, channel.channel_info, more_available, buffer.size,
                                     more_priority, False)
            return self._transform_event(buffer, channel, more_available, more_priority)

    def _wait_for_channel(self, blocking: bool, deadline: float | None) -> bool:
        """Wait (under the lock) until a channel is queued: True, or False if none will be
        (all channels ended, or not blocking)."""
        queue = self._queue
        signal = self.signal
        futures: list[Future[None] | None] = []
        try:
            while not queue:
                if self._closed:
                    raise CancelTaskError("Input gate is already closed.")
                if self._all_eop:
                    return False
                self._drain_signal_unsafe(futures)
                if queue:
                    break
                if not blocking or signal is None:
                    self._check_unavailability()
                    self._drain_signal_unsafe(futures)   # made ready while the doorbell was armed
                    if queue:
                        break
                    return False
                remaining = None
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError("no buffer or event arrived before the timeout")
                # Wait with the lock and the GIL released; a channel made ready meanwhile, or a
                # notify, ends the wait at once. A notify from before (every notifier holds the
                # lock) is news this loop has read already: forgotten, not answered with a poll.
                signal.clear_pending()
                self._lock.release()
                try:
                    self.flush_credit()
                    signal.wait(remaining)
                finally:
                    self._lock.acquire()
        finally:
            for f in futures:
                _complete(f)
        return True

    def _get_channel(self, blocking: bool, deadline: float | None) -> InputChannel | None:
        """Pop the head channel (under the lock), waiting if asked; None if nothing is ready."""
        queue = self._queue
        if not queue:
            idle = self._idle_timer if blocking else None
            if idle is not None:
                idle.mark_start()       # idleTimeMsPerSecond: the task waits for input
            if blocking and self._throughput is not None:
                self._pause_throughput()     # waiting is not consuming
            try:
                if not self._wait_for_channel(blocking, deadline):
                    return None
            finally:
                if idle is not None:
                    idle.mark_end()
        elif self.signal is not None and self.signal.ready_count:
            # The doorbell's channels join the round robin now: a channel that always has more
            # (or has failed: it is ready at every read) must not starve them.
            futures: list[Future[None] | None] = []
            self._drain_signal_unsafe(futures)
            for f in futures:
                _complete(f)
        channel = queue.popleft()
        if self._num_priority:
            self._num_priority -= 1
        self._enqueued[channel.channel_index] = False
        return channel

    def _check_unavailability(self) -> None:
        # A closed gate stays available: whoever waits on it must wake up and see the close.
        if not self._queue and not self._all_eop and not self._closed:
            signal = self.signal
            if signal is not None and signal.ready_count:
                return
            self._availability.reset_unavailable()
            if signal is not None and self._availability_listener is not None:
                # a union gate waits for this one: the next ready channel calls back
                self._arm_unsafe()

    def _arm_unsafe(self) -> None:
        """Have the doorbell call back at the next ready channel (under the lock). If one is
        ready already the callback is not armed: the caller drains the doorbell next (and the
        gate reports itself available)."""
        signal = self.signal
        if signal is not None:
            signal.arm()

    def _transform_event(self, buffer: Buffer, channel: InputChannel, more_available: bool,
                         more_priority: bool) -> BufferOrEvent:
        size = buffer.size
        has_priority = buffer.data_type in _PRIORITY_TYPES
        try:
            event = _events.from_buffer(buffer)
        except CorruptEventError as err:
            error = CorruptEventError(f"{channel} received a corrupt event: {err}")
            error.__cause__ = err
            self._fail_channel(channel, error)
        finally:
            buffer.recycle()
        idx = channel.channel_index
        futures: list[Future[None] | None] = []
        if type(event) is _events.EndOfPartitionEvent:
            with self._lock:
                if self._end_of_partition[idx]:
                    raise IllegalStateError(f"channel {idx} delivered EndOfPartition twice")
                self._end_of_partition[idx] = True
                self._num_eop += 1
                self._all_eop = self._num_eop == len(self.input_channels)
                if self._enqueued[idx]:
                    self._enqueued[idx] = False
                    pos = self._queue.index(channel)
                    if pos < self._num_priority:
                        self._num_priority -= 1
                    del self._queue[pos]
                more_available = bool(self._queue)
                if self._all_eop:
                    futures.append(self._availability.get_unavailable_to_reset_available())
                    self._wake()
            channel.release_all_resources()
            for f in futures:
                _complete(f)
            if self._all_eop and self._availability_listener is not None:
                self._availability_listener(self)
        elif type(event) is _events.EndOfData:
            with self._lock:
                if self._end_of_data[idx]:
                    raise IllegalStateError(f"channel {idx} delivered EndOfData twice")
                self._end_of_data[idx] = True
                self._num_eod += 1
                self._should_drain_on_end_of_data &= event.mode == _events.StopMode.DRAIN
        return BufferOrEvent(None, event, channel.channel_info, more_available, size, more_priority,
                             has_priority)

    def _fail_channel(self, channel: InputChannel, error: BaseException) -> NoReturn:
        """Fail ``channel`` with ``error`` (unless it failed already) and raise its failure: it
        stays queued, so every later read of it raises the same."""
        channel.set_error(error)
        channel.check_error()
        raise error   # not reached: the channel has a failure

    # -- control ---------------------------------------------------------------------------

    def resume_consumption(self, channel_info: InputChannelInfo) -> None:
        """Resume a channel blocked by an upstream-blocking event (aligned barrier)."""
        if self._closed:
            raise CancelTaskError("Input gate is already closed.")
        self.input_channels[channel_info.input_channel_idx].resume_consumption()

    def acknowledge_all_records_processed(self, channel_info: InputChannelInfo) -> None:
        """Tell a channel's producer that every user record was processed."""
        self.input_channels[channel_info.input_channel_idx].acknowledge_all_records_processed()

    def get_available_future(self) -> Future[None]:
        """Done while a buffer or event is ready (or the gate is finished)."""
        f = None
        futures: list[Future[None] | None] = []
        with self._lock:
            self._drain_signal_unsafe(futures)
            if self._queue or self._all_eop:
                f = self._availability.get_unavailable_to_reset_available()
            future = self._availability.get_future()
            if not future.done() and self.signal is not None and self.signal.arm():
                self._drain_signal_unsafe(futures)
        for fut in futures:
            _complete(fut)
        _complete(f)
        return future

    def get_priority_event_available_future(self) -> Future[None]:
        """Done while a priority event is queued."""
        with self._lock:
            return self._priority_availability.get_future()

    def arm_wake_fd(self) -> bool:
        """For an event loop about to wait on :attr:`signal`'s ``wake_fd`` (:mod:`flinknet.aio`):
        True if a buffer or event is ready (or the gate is finished or closed), so the caller polls
        now; else arm the eventfd (written at the next ready channel or notify; ``signal.disarm()``
        ends the wait) and return False. Under the gate's lock, so a notify from before, whose news
        the reader has seen, does not end the wait at once."""
        signal = self.signal
        if signal is None:
            raise IllegalStateError("the gate has no channels yet (setup_channels was not called)")
        futures: list[Future[None] | None] = []
        self.flush_credit()
        with self._lock:
            self._drain_signal_unsafe(futures)
            ready = bool(self._queue) or self._all_eop or self._closed
            if not ready:
                signal.clear_pending()
                ready = signal.arm_fd()
        for f in futures:
            _complete(f)
        return ready

    @property
    def is_available(self) -> bool:
        """Whether a buffer or event is ready now (or the gate is finished)."""
        return bool(self._queue) or self._all_eop or bool(self.signal and self.signal.ready_count)

    @property
    def is_finished(self) -> bool:
        """Every channel delivered EndOfPartition."""
        return self._all_eop

    @property
    def has_received_end_of_data(self) -> bool:
        """Every channel delivered EndOfData."""
        return self._num_eod == len(self.input_channels) and self._num_eod > 0

    @property
    def should_drain_on_end_of_data(self) -> bool:
        """Every EndOfData asked to drain (``StopMode.DRAIN``)."""
        return self._should_drain_on_end_of_data

    @property
    def number_of_input_channels(self) -> int:
        """How many channels the gate reads."""
        return len(self.input_channels)

    def get_channel(self, index: int) -> InputChannel:
        """The channel at ``index``."""
        return self.input_channels[index]

    @property
    def number_of_queued_channels(self) -> int:
        """Channels waiting to be read (for metrics)."""
        return len(self._queue)

    def close(self) -> None:
        """Release every channel (their buffers go back), wake a blocked reader with
        CancelTaskError, and lazily destroy the gate's pool. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            timers, self._timers = self._timers, set()
            self._queue.clear()
            self._num_priority = 0
            self._wake()
            fut = self._availability.get_unavailable_to_reset_available()
        for t in timers:
            t.cancel()
        errors: list[BaseException] = []
        for ch in self.input_channels:
            try:
                ch.release_all_resources()
            except BaseException as err:  # noqa: BLE001
                errors.append(err)
        if self.buffer_pool is not None:
            self.buffer_pool.lazy_destroy()
        _complete(fut)
        if self._availability_listener is not None:
            self._availability_listener(self)
        if not self._close_future.done():
            self._close_future.set_result(None)
        if errors:
            raise errors[0]

    @property
    def is_closed(self) -> bool:
        """:meth:`close` was called."""
        return self._closed

    def __repr__(self) -> str:
        return (f"SingleInputGate#{self.gate_index} [{self.owning_task_name}, "
                f"{len(self.input_channels)} channels, finished={self._all_eop}]")


class UnionInputGate(InputGate):
    """Reads several gates as one (Flink's ``UnionInputGate``): ready gates take turns, one
    buffer or event each; finished when every gate is finished. ``channel_index(boe)`` gives the
    flat channel index (gate offset + channel index)."""

    @overload
    def __init__(self, gates: Sequence[SingleInputGate], /) -> None: ...
    @overload
    def __init__(self, *gates: SingleInputGate) -> None: ...

    def __init__(self, *gates: SingleInputGate | Sequence[SingleInputGate]) -> None:
        given: Sequence[object] = (tuple(gates[0]) if len(gates) == 1 and isinstance(gates[0], (list, tuple))
                                   else gates)
        if len(given) < 2:
            raise ValueError("a union input gate needs at least two gates")
        if len({id(g) for g in given}) != len(given):
            raise ValueError("the same gate appears twice")
        self.gates: list[SingleInputGate] = []
        self._by_index: dict[int, SingleInputGate] = {}
        self._offsets: dict[int, int] = {}
        offset = 0
        for g in given:
            if not isinstance(g, SingleInputGate):
                raise TypeError("UnionInputGate takes SingleInputGates")
            if g.gate_index in self._by_index:
                raise ValueError(f"two gates have index {g.gate_index}")
            self.gates.append(g)
            self._by_index[g.gate_index] = g
            self._offsets[g.gate_index] = offset
            offset += g.number_of_input_channels
        self._num_channels = offset
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: deque[SingleInputGate] = deque()
        self._enqueued: set[int] = set()
        self._priority: set[int] = set()  # gates in the queue's priority section (at its head)
        self._finished: set[int] = set()
        self._idle_timer: WaitTimer | None = None
        self._requested = False
        self._availability = AvailabilityHelper(False)
        for g in self.gates:
            g.register_availability_listener(self._on_gate_available)
        for g in self.gates:
            if g.is_available:
                self._on_gate_available(g, g.get_priority_event_available_future().done())

    def set_idle_timer(self, timer: WaitTimer | None) -> None:
        """The metrics hook (see :meth:`SingleInputGate.set_idle_timer`): marked around every
        wait of :meth:`get_next` for input."""
        self._idle_timer = timer

    @property
    def idle_timer(self) -> WaitTimer | None:
        """The timer attached by :meth:`set_idle_timer`, or None."""
        return self._idle_timer

    def _on_gate_available(self, gate: SingleInputGate, priority: bool = False) -> None:
        """Queue ``gate`` (at the tail, or in the priority section at the head if it has a
        priority event, as Flink's UnionInputGate does)."""
        fut = None
        idx = gate.gate_index
        with self._lock:
            if idx in self._enqueued:
                if not priority or idx in self._priority:
                    return
                self._queue.remove(gate)  # upgrade into the priority section
            else:
                self._enqueued.add(idx)
            was_empty = not self._queue
            if priority:
                self._queue.insert(len(self._priority), gate)
                self._priority.add(idx)
            else:
                self._queue.append(gate)
            if was_empty:
                fut = self._availability.get_unavailable_to_reset_available()
                self._cond.notify()
        _complete(fut)

    def request_partitions(self) -> None:
        """Every member gate requests its partitions (once)."""
        self._requested = True
        for g in self.gates:
            g.request_partitions()

    @property
    def partitions_requested(self) -> bool:
        """:meth:`request_partitions` has run (or is running)."""
        return self._requested

    def get_next(self, timeout: float | None = None) -> BufferOrEvent | None:
        return self._get_next(True, timeout)

    def poll_next(self) -> BufferOrEvent | None:
        return self._get_next(False, None)

    def poll_data_buffer(self) -> tuple[Buffer, InputChannelInfo] | None:
        """The union's fast lane (see :meth:`SingleInputGate.poll_data_buffer`): the head gate
        of the union's round robin offers its next data buffer through its own lane; that gate
        then goes to the back of the order if it has more. None when no gate is queued, a
        priority event is (the general path's order), or the head gate's lane declines (the gate
        keeps its turn for :meth:`get_next`)."""
        if not self._requested:
            return None
        with self._lock:
            if not self._queue or self._priority:
                return None
            gate = self._queue.popleft()
            self._enqueued.discard(gate.gate_index)
        try:
            got = gate.poll_data_buffer()
        except BaseException:
            self._on_gate_available(gate)    # readable with its error, as on the general path
            raise
        if got is None:
            with self._lock:
                if gate.gate_index not in self._enqueued:
                    self._queue.appendleft(gate)
                    self._enqueued.add(gate.gate_index)
            return None
        if gate.is_available:
            self._on_gate_available(gate)
        else:
            with self._lock:
                if not self._queue and len(self._finished) != len(self.gates):
                    self._availability.reset_unavailable()
        return got

    def _get_next(self, blocking: bool, timeout: float | None) -> BufferOrEvent | None:
        if not self._requested:
            self.request_partitions()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                waits = blocking and not self._queue
                idle = self._idle_timer if waits else None
                if idle is not None:
                    idle.mark_start()
                if waits:
                    # The union waits for every member: none of them is consuming meanwhile.
                    for g in self.gates:
                        if g.throughput_calculator is not None:
                            g._pause_throughput()
                try:
                    gate = self._wait_for_gate(blocking, deadline)
                finally:
                    if idle is not None:
                        idle.mark_end()
                if gate is None:
                    return None
            try:
                boe = gate.poll_next()
            except BaseException:
                # Keep the failing gate queued so that every poll reports its error, as a
                # SingleInputGate does for a failed channel.
                self._on_gate_available(gate)
                raise
            if boe is None:
                if gate.is_finished:
                    self._mark_finished(gate)
                continue
            if gate.is_finished:
                self._mark_finished(gate)
            elif boe.more_available or gate.is_available:
                self._on_gate_available(gate, boe.more_priority_events)
            with self._lock:
                if not self._queue and len(self._finished) != len(self.gates):
                    self._availability.reset_unavailable()
                boe.more_available = bool(self._queue)
            return boe

    def _wait_for_gate(self, blocking: bool, deadline: float | None) -> SingleInputGate | None:
        """Wait (under the lock) for a queued gate and pop it; None if nothing is ready."""
        while not self._queue:
            if len(self._finished) == len(self.gates):
                return None
            if any(g.is_closed for g in self.gates):
                raise CancelTaskError("Input gate is already closed.")
            if not blocking:
                self._availability.reset_unavailable()
                return None
            if deadline is None:
                self._cond.wait()
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cond.wait(remaining):
                    if not self._queue:
                        raise TimeoutError("no buffer or event arrived before the timeout")
        gate = self._queue.popleft()
        self._enqueued.discard(gate.gate_index)
        self._priority.discard(gate.gate_index)
        return gate

    def _mark_finished(self, gate: SingleInputGate) -> None:
        fut = None
        with self._lock:
            self._finished.add(gate.gate_index)
            if len(self._finished) == len(self.gates):
                fut = self._availability.get_unavailable_to_reset_available()
                self._cond.notify_all()
        _complete(fut)

    def trigger_debloating(self) -> None:
        """Trigger debloating on every member gate that has a debloater (Flink's
        ``UnionInputGate.triggerDebloating``); :class:`IllegalStateError` if none has."""
        members = [g for g in self.gates if g.buffer_debloater is not None]
        if not members:
            raise IllegalStateError("no gate of this union has a buffer debloater")
        for g in members:
            g.trigger_debloating()

    def buffers_in_use_count(self) -> int:
        """Σ over the member gates (see :meth:`SingleInputGate.buffers_in_use_count`)."""
        return sum(g.buffers_in_use_count() for g in self.gates)

    def announce_buffer_size(self, size: int) -> None:
        """Announce ``size`` through every member gate."""
        for g in self.gates:
            g.announce_buffer_size(size)

    def channel_index(self, boe: BufferOrEvent) -> int:
        """The flat channel index of ``boe`` in this union (gate offset + channel index)."""
        return self._offsets[boe.channel_info.gate_idx] + boe.channel_info.input_channel_idx

    def get_channel(self, flat_index: int) -> InputChannel:
        for g in self.gates:
            off = self._offsets[g.gate_index]
            if off <= flat_index < off + g.number_of_input_channels:
                return g.input_channels[flat_index - off]
        raise IndexError(flat_index)

    def resume_consumption(self, channel_info: InputChannelInfo) -> None:
        self._by_index[channel_info.gate_idx].resume_consumption(channel_info)

    def acknowledge_all_records_processed(self, channel_info: InputChannelInfo) -> None:
        self._by_index[channel_info.gate_idx].acknowledge_all_records_processed(channel_info)

    def get_available_future(self) -> Future[None]:
        f = None
        with self._lock:
            if self._queue or len(self._finished) == len(self.gates):
                f = self._availability.get_unavailable_to_reset_available()
            future = self._availability.get_future()
        _complete(f)
        return future

    @property
    def is_available(self) -> bool:
        """Whether a member gate has a buffer or event ready now (or all are finished)."""
        return bool(self._queue) or self.is_finished

    @property
    def is_finished(self) -> bool:
        return len(self._finished) == len(self.gates)

    @property
    def has_received_end_of_data(self) -> bool:
        """Every member gate received EndOfData on every channel."""
        return all(g.has_received_end_of_data for g in self.gates)

    @property
    def should_drain_on_end_of_data(self) -> bool:
        """Every member gate's EndOfData asked to drain."""
        return all(g.should_drain_on_end_of_data for g in self.gates)

    @property
    def number_of_input_channels(self) -> int:
        return self._num_channels

    def close(self) -> None:
        """Close every member gate (see :meth:`SingleInputGate.close`)."""
        errors: list[BaseException] = []
        for g in self.gates:
            try:
                g.close()
            except BaseException as err:  # noqa: BLE001
                errors.append(err)
        with self._lock:
            self._cond.notify_all()
        if errors:
            raise errors[0]
