"""asyncio support: awaitable reading and writing for frameworks built on an event loop.

The gates and the record writer already say when they turn ready through availability futures
(:class:`concurrent.futures.Future`, completed by whichever thread made them ready: a producer,
the I/O thread). This module bridges them into the running loop: read without blocking first, and
only when nothing is there, suspend until the future completes. No polling loop, no thread per
wait: the thread that completes the future schedules the wake-up with
``loop.call_soon_threadsafe`` (the loop's self-pipe), and everything else runs on the loop.
A :class:`~flinknet.consumer.SingleInputGate` has a faster way, with no future at all: its
native doorbell (:class:`~flinknet._core.engine.GateSignal`) writes an eventfd the loop selects
on, without the GIL, from the I/O thread that received the buffer; the loop wakes straight from
its selector, and the I/O thread never stops to run a Python callback. What Python code makes
ready (a local channel's data, a failure, the end of the partition, a close) rings the same fd
through the gate's notify, the wake-up a thread blocked in ``get_next`` relies on; a notify
before the wait is armed counts once (the wait polls at once). The eventfd is added to the loop
once per gate (at its first wait there) and stays until the gate is read to its end or
collected; it is written only while a wait armed it. Union and checkpointed gates wait on their
availability futures.

* :func:`next_buffer_or_event` (``await gate.next()``) and :func:`read_batch`
  (``await reader.read_batch_async()``) return what is ready at once, else wait for it; ``async
  for record in reader`` pulls one batch per buffer and yields its records.
* :func:`wait_writer_available`: suspend while the writer's partition has no buffer (the
  asyncio form of :meth:`~flinknet.writer.RecordWriter.wait_available`). An emit that follows may
  still block if one record needs more than one buffer.
* :func:`wait_future`: await any concurrent future without ever cancelling it (``asyncio.wrap_future``
  cancels the future it wraps when the awaiting task is cancelled; the availability futures are
  shared with other waiters and must not be).
* :func:`request_partitions`: a gate's first read requests its partitions, which for a remote
  channel connects (and runs the handshake) on the calling thread; the readers here do it once
  per gate in the loop's default executor so the loop does not stall on a connect.

Cancelling a task that waits here leaves nothing behind: it waits only when it holds no buffer,
and its wake-up callback is detached (a callback that fires later does nothing, also after the
loop closed). A read that returns at once does not yield to the loop (as
``asyncio.StreamReader.read`` with data buffered); ``async for`` over a reader yields every
:data:`YIELD_EVERY` batches so that a stream that is always ready cannot starve other tasks.

Works with any asyncio event loop (uvloop too). One task reads a gate or reader at a time, as one
thread does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flinknet.errors import CancelTaskError

if TYPE_CHECKING:
    from flinknet.consumer.gate import BufferOrEvent, InputGate
    from flinknet.consumer.reader import RecordReader
    from flinknet.partition.result_partition import ResultPartition
    from flinknet.writer import RecordWriter

__all__ = [
    "YIELD_EVERY",
    "is_timeout",
    "next_buffer_or_event",
    "read_batch",
    "request_partitions",
    "wait_future",
    "wait_gate_available",
    "wait_lane",
    "wait_writer_available",
]

#: ``async for`` over a :class:`~flinknet.consumer.RecordReader` yields to the event loop after
#: this many batches in a row (a fast stream would otherwise never suspend).
YIELD_EVERY = 64


class _Wakeup:
    """A concurrent future's done-callback that wakes one asyncio waiter, from any thread.

    Detached when the wait ends (woken, timed out or cancelled): a callback that fires later, on
    a future that stayed pending, does nothing and holds neither the loop nor the waiter."""

    __slots__ = ("loop", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[bool]):
        self.loop: asyncio.AbstractEventLoop | None = loop
        self.waiter: asyncio.Future[bool] | None = waiter

    def __call__(self, _future: object) -> None:
        loop = self.loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self.wake)
        except RuntimeError:
            pass   # the loop closed meanwhile: nobody waits any more

    def wake(self) -> None:
        """On the loop: complete the waiter (True: the future completed)."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def detach(self) -> None:
        """Forget the loop and the waiter (the wait is over)."""
        self.loop = None
        self.waiter = None


def _timed_out(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


def is_timeout(timeout: object) -> bool:
    """Whether ``timeout`` is a number of seconds the readers here accept (an int or float, not
    a bool, not NaN)."""
    return (isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
            and not math.isnan(timeout))


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and not is_timeout(timeout):
        raise ValueError(f"timeout must be None or a number of seconds, got {timeout!r}")


async def _wait_any(futures: Iterable[concurrent.futures.Future[Any]], timeout: float | None) -> bool:
    """Suspend until one of ``futures`` is done (True) or ``timeout`` seconds passed (False)."""
    futures = tuple(futures)
    for f in futures:
        if f.done():
            return True
    if timeout is not None and timeout <= 0:
        return False
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[bool] = loop.create_future()
    wakeup = _Wakeup(loop, waiter)
    timer = loop.call_later(timeout, _timed_out, waiter) if timeout is not None else None
    try:
        for f in futures:
            f.add_done_callback(wakeup)   # runs at once (here) if f completed meanwhile
        return await waiter
    finally:
        wakeup.detach()
        if timer is not None:
            timer.cancel()


async def wait_future(future: concurrent.futures.Future[Any], timeout: float | None = None) -> bool:
    """Wait, in the running loop, until ``future`` is done: True, or False after ``timeout``
    seconds. Never touches the future's outcome (its result or exception is the caller's to
    read), and cancelling the waiting task does not cancel the future."""
    _check_timeout(timeout)
    return await _wait_any((future,), timeout)


async def request_partitions(gate: InputGate) -> None:
    """Have ``gate`` request its partitions (once), in the loop's default executor: a remote
    channel's request connects and runs the handshake on the calling thread. A no-op once done."""
    if gate.partitions_requested:
        return
    # Cancelling the waiting task lets a request already running finish in its thread (one still
    # queued does not start, and the next read requests again).
    await asyncio.get_running_loop().run_in_executor(None, gate.request_partitions)


async def wait_gate_available(gate: InputGate, timeout: float | None = None) -> bool:
    """Suspend until ``gate`` has a buffer or event ready, is finished or closed: True, or False
    after ``timeout`` seconds. The gate's idle timer (``idleTimeMsPerSecond``), if attached, is
    marked around the wait, as around a blocking :meth:`~flinknet.consumer.InputGate.get_next`."""
    _check_timeout(timeout)
    signal = getattr(gate, "signal", None)
    if signal is None:
        future = gate.get_available_future()
        if future.done():
            return True
    elif gate.is_available or getattr(gate, "is_closed", False):
        return True
    idle = gate.idle_timer
    if idle is not None:
        idle.mark_start()
    try:
        if signal is None:
            return await _wait_any((future,), timeout)
        # A SingleInputGate's native doorbell: the loop selects on its eventfd, written without
        # the GIL by whoever makes a remote channel ready, and by the gate's own notify for all
        # that is Python-side (a local channel's data, a failure, the end, a close): the wake-ups
        # a thread blocked in get_next relies on. No future, no callback, no thread hand-off.
        loop = asyncio.get_running_loop()
        bell = _doorbell(gate, signal, loop)
        if gate.arm_wake_fd():  # type: ignore[attr-defined]  # a SingleInputGate (it has a signal)
            return True
        waiter: asyncio.Future[bool] = loop.create_future()
        bell.waiter = waiter
        timer = loop.call_later(timeout, _timed_out, waiter) if timeout is not None else None
        try:
            return await waiter
        finally:
            if bell.waiter is waiter:
                bell.waiter = None
            signal.disarm()
            if timer is not None:
                timer.cancel()
    finally:
        if idle is not None:
            idle.mark_end()


async def wait_lane(gate: InputGate) -> None:
    """The fast lane's wait on the running loop (:meth:`~flinknet.consumer.RecordReader.read_batch_async`
    after :meth:`~flinknet.consumer.InputGate.poll_data_buffer` found nothing): suspend until the
    gate's doorbell rings, or return at once when a channel is ready already or the lane cannot
    serve now (:meth:`~flinknet.consumer.InputGate.arm_lane_wake_fd`). The caller then polls the
    lane, and reads through the general path what the lane does not hold (a local channel's
    data, a failure, the end, a close: each also rings). No timeout: a timed read takes
    :func:`read_batch`. The gate's idle timer is marked around the wait."""
    signal = getattr(gate, "signal", None)
    if signal is None:
        return
    loop = asyncio.get_running_loop()
    bell = _doorbell(gate, signal, loop)
    if gate.arm_lane_wake_fd():
        return
    waiter: asyncio.Future[bool] = loop.create_future()
    bell.waiter = waiter
    idle = gate.idle_timer
    if idle is not None:
        idle.mark_start()
    try:
        await waiter
    finally:
        if bell.waiter is waiter:
            bell.waiter = None
        signal.disarm()
        if idle is not None:
            idle.mark_end()


class _Doorbell:
    """A gate's eventfd registered with one event loop for as long as the gate is read there.

    Registering once (not per wait) saves each wait an ``add_reader`` and a ``remove_reader``
    (two ``epoll_ctl`` calls and their handles). The fd is written only while armed (during a
    wait), so between waits the registration costs the loop nothing. It ends when the gate is
    read to its end, when the gate is read on another loop, or when the gate is collected
    (``weakref.finalize``, from whatever thread: the loop removes it on its own thread). The
    signal (whose collection closes the eventfd) stays alive while the registration does, so the
    loop never holds a stale fd number."""

    __slots__ = ("__weakref__", "fd", "finalizer", "loop", "signal", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, signal: Any) -> None:
        self.loop = loop
        self.signal = signal
        self.fd: int = signal.wake_fd
        self.waiter: asyncio.Future[bool] | None = None
        self.finalizer: weakref.finalize[Any, Any] | None = None
        loop.add_reader(self.fd, self.on_fd)

    def on_fd(self) -> None:
        """On the loop: the gate rang (a channel turned ready while armed)."""
        self.signal.clear_fd()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def close(self) -> None:
        """End the registration (on the loop's thread, or from any thread once it stopped)."""
        if self.finalizer is not None:
            self.finalizer.detach()
            self.finalizer = None
        loop = self.loop
        if loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop or not loop.is_running():
            loop.remove_reader(self.fd)
        else:
            try:
                loop.call_soon_threadsafe(loop.remove_reader, self.fd)
            except RuntimeError:
                pass            # the loop closed meanwhile: its selector went with it


_doorbells: weakref.WeakKeyDictionary[Any, _Doorbell] = weakref.WeakKeyDictionary()


def _doorbell(gate: Any, signal: Any, loop: asyncio.AbstractEventLoop) -> _Doorbell:
    bell = _doorbells.get(gate)
    if bell is not None:
        if bell.loop is loop and bell.signal is signal and not loop.is_closed():
            return bell
        bell.close()
    bell = _Doorbell(loop, signal)
    _doorbells[gate] = bell
    bell.finalizer = weakref.finalize(gate, bell.close)
    return bell


def _release_doorbell(gate: Any) -> None:
    """The gate was read to its end (or closed): its eventfd leaves the loop."""
    bell = _doorbells.pop(gate, None)
    if bell is not None:
        bell.close()


def _remaining(loop: asyncio.AbstractEventLoop, deadline: float | None) -> float | None:
    return None if deadline is None else deadline - loop.time()


async def _wait_input_or_timer(gate: InputGate, loop: asyncio.AbstractEventLoop,
                               deadline: float | None) -> bool:
    """Wait for input until ``deadline``; a gate with timers (a
    :class:`~flinknet.checkpointing.CheckpointedInputGate`'s alignment timeout) is waited on no
    longer than until its next timer is due, as its threaded ``get_next`` does: True when the
    caller should poll (input, or a timer to fire through the poll), False at the deadline."""
    wait = _remaining(loop, deadline)
    timer: float | None = getattr(gate, "next_timer_due_in", None)
    if timer is not None and (wait is None or timer < wait):
        await wait_gate_available(gate, timer)
        return True             # input, or the timer is due: the poll fires it
    return await wait_gate_available(gate, wait)


async def next_buffer_or_event(gate: InputGate, timeout: float | None = None) -> BufferOrEvent | None:
    """The next buffer or event of ``gate`` (``await gate.next()``): at once if one is ready,
    else when one arrives; None once the gate is finished. ``TimeoutError`` after ``timeout``
    seconds, and the gate's errors (a failed producer's :class:`~flinknet.errors.ProducerFailedError`,
    :class:`~flinknet.errors.RemoteTransportError`, ...) as :meth:`~flinknet.consumer.InputGate.get_next`
    raises them. A returned buffer is the caller's to recycle."""
    if timeout is not None:
        _check_timeout(timeout)
    if not gate.partitions_requested:
        await request_partitions(gate)
    boe = gate.poll_next()
    if boe is not None or gate.is_finished:
        if boe is None:
            _release_doorbell(gate)
        return boe
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while True:
        if not await _wait_input_or_timer(gate, loop, deadline):
            raise TimeoutError("no buffer or event arrived before the timeout")
        boe = gate.poll_next()
        if boe is not None or gate.is_finished:
            if boe is None:
                _release_doorbell(gate)
            return boe


async def read_batch(reader: RecordReader, timeout: float | None = None) -> list[Any] | None:
    """The records completed by the next buffer of ``reader``'s gate (``await
    reader.read_batch_async()``), as :meth:`~flinknet.consumer.RecordReader.read_batch` returns
    them (possibly none; with ``emit_events`` a one-element list of an event): at once if a
    buffer is ready, else when one arrives; None once the gate is finished. ``TimeoutError``
    after ``timeout`` seconds; the gate's errors as the threaded reader raises them."""
    if timeout is not None:
        _check_timeout(timeout)
    gate = reader.gate
    if not gate.partitions_requested:
        await request_partitions(gate)
    if gate.is_available:         # else no poll: it would find nothing (and cost a failed poll)
        batch = reader.read_batch(blocking=False)
        if batch is not None or gate.is_finished:
            if batch is None:
                _release_doorbell(gate)
            return batch
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while True:
        if not await _wait_input_or_timer(gate, loop, deadline):
            raise TimeoutError("no buffer or event arrived before the timeout")
        batch = reader.read_batch(blocking=False)
        if batch is not None or gate.is_finished:
            if batch is None:
                _release_doorbell(gate)
            return batch


def _check_writable(partition: ResultPartition) -> None:
    """Raise what an emit into ``partition`` would raise now."""
    partition.check_producing()
    if partition.buffer_pool.is_destroyed:
        # partition.fail() destroys the pool first and releases the partition after it: a
        # destroyed pool shows as available, and an emit into it raises this
        partition.check_producing()
        raise CancelTaskError(f"{partition}: its buffer pool has been destroyed")


async def wait_writer_available(writer: RecordWriter, timeout: float | None = None) -> bool:
    """Suspend until ``writer``'s partition has a buffer (the asyncio form of
    :meth:`~flinknet.writer.RecordWriter.wait_available`): True once it has, False after
    ``timeout`` seconds.

    Wakes when a consumer gives a buffer back, when the pool is destroyed (``partition.fail``,
    ``close``) or when the partition is released, and then raises what an emit would:
    :class:`~flinknet.errors.CancelTaskError` once released or once the pool is destroyed,
    :class:`~flinknet.errors.IllegalStateError` once finished. The writer's own state (closed,
    a failed output flusher) is not checked here; the next emit raises it. The writer's soft
    back-pressure timer (``softBackPressuredTimeMsPerSecond``), if attached, is marked around
    the wait."""
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout >= 0):
        raise ValueError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
    partition = writer.partition
    _check_writable(partition)
    if partition.is_available:
        return True
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    timer = writer.soft_back_pressure_timer
    if timer is not None:
        timer.mark_start()
    try:
        while not partition.is_available:
            # the pool's future completes when a buffer comes back or the pool is destroyed; the
            # partition's all-data-processed future fails when it is released
            futures = [partition.get_available_future()]
            processed = partition.get_all_data_processed_future()
            if not processed.done():
                futures.append(processed)
            woken = await _wait_any(futures, _remaining(loop, deadline))
            _check_writable(partition)
            if not woken:
                return partition.is_available
        return True
    finally:
        if timer is not None:
            timer.mark_end()
