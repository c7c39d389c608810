"""asyncio reading and writing (flinknet.aio): real exchanges in one process and over TCP between
two NetworkEnvironments on loopback, each test on the standard event loop and on uvloop.

Nothing here is timed: a task "suspended" is one that is not done after the loop ran every other
task many times while nothing it waits for could happen; the waits that must end are bounded by
``asyncio.timeout(JOIN)`` only so that a bug fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import struct
import threading
import time

import pytest

from flinknet import aio
from flinknet import events as ev
from flinknet.consumer import RecordOrEvent, RecordReader, SingleInputGate, UnionInputGate
from flinknet.environment import NetworkEnvironment
from flinknet.errors import CancelTaskError, ProducerFailedError
from flinknet.partition import ResultPartitionManager, create_result_partition
from flinknet.transport import RemoteTransportError
from flinknet.types import ResultPartitionType
from flinknet.writer import RecordWriter
from tests.helpers import Worker, assert_whole, count_calls, first_record_read, two_local_gates

JOIN = 30.0
SEG = 256
SMALL = {"taskmanager.memory.segment-size": "4kb", "taskmanager.memory.network.max": "2mb"}
HEADER = struct.Struct(">HI")  # producer, sequence number


def record(producer: int, seq: int, max_size: int = 600) -> bytes:
    """A record that often spans buffers: a header and a deterministic random payload."""
    rng = random.Random(producer * 1_000_003 + seq)
    return HEADER.pack(producer, seq) + rng.randbytes(rng.randrange(max_size))


def by_producer(records, max_size: int = 600):
    """producer -> the sequence numbers of its records, in arrival order (each record checked)."""
    out: dict[int, list[int]] = {}
    for r in records:
        producer, seq = HEADER.unpack_from(r)
        assert r == record(producer, seq, max_size), "a record arrived corrupted"
        out.setdefault(producer, []).append(seq)
    return out


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_factory(request):
    """The event loop every test runs on: the standard one and uvloop's."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.new_event_loop
    return asyncio.new_event_loop


@pytest.fixture
def run(loop_factory):
    """``run(coroutine)``: run it to completion on a fresh loop of the parametrized kind, and fail
    the test if the loop's exception handler was called (a callback that raised, a task that
    failed unobserved)."""
    def runner(coro):
        problems = []
        with asyncio.Runner(loop_factory=loop_factory) as r:
            r.get_loop().set_exception_handler(lambda loop, context: problems.append(context))
            result = r.run(coro)
        assert not problems, problems
        return result
    return runner


@pytest.fixture
def manager():
    m = ResultPartitionManager()
    yield m
    m.shutdown()


async def until(predicate, rounds: int = 10_000) -> None:
    """Let the loop run until ``predicate()`` holds (giving other tasks and threads a chance)."""
    for _ in range(rounds):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the condition never held")


async def still_pending(task: asyncio.Task, rounds: int = 50) -> bool:
    """The task is not done after the loop ran every other ready callback ``rounds`` times."""
    for _ in range(rounds):
        await asyncio.sleep(0)
    return not task.done()


class LoopSteps:
    """``async with LoopSteps(interval) as ticks``: a task that counts its steps in ``ticks.steps``
    (one per ``asyncio.sleep(interval)``) while the block runs: whether, and how often, the loop
    ran other tasks."""

    def __init__(self, interval: float = 0.0):
        self.interval = interval
        self.steps = 0
        self._task: asyncio.Task | None = None

    async def _tick(self) -> None:
        while True:
            self.steps += 1
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> LoopSteps:
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._task is not None
        self._task.cancel()


def produce(partition, producer: int, n: int, subpartitions: int = 1, timeout: float = 2, fail_after=None,
            max_size: int = 600):
    """Emit ``n`` records (round robin over ``subpartitions``) and finish, or fail the partition
    after ``fail_after`` records."""
    with RecordWriter(partition, timeout=timeout) as w:
        for i in range(n):
            if fail_after is not None and i == fail_after:
                # fail once every consumer is reading (a partition failed before it is requested is
                # not found, and the consumer retries for a while before it says so)
                deadline = time.monotonic() + JOIN
                while not all(sp.has_view for sp in partition.subpartitions) and time.monotonic() < deadline:
                    time.sleep(0.005)
                partition.fail(ValueError("producer failed on purpose"))
                return
            w.emit(record(producer, i, max_size), i % subpartitions)
    partition.finish()


# -- async for: every record, exactly once, in order -----------------------------------------------

def test_async_for_reads_every_record_in_process(run, make_pool, manager):
    nbp = make_pool(64, SEG)
    partitions = [create_result_partition(nbp, 1, partition_manager=manager) for _ in range(2)]
    for p in partitions:
        p.setup()
    n = 3000
    gate = SingleInputGate.create_local(manager, [(p.partition_id, 0) for p in partitions])
    producers = [Worker(produce, p, i, n) for i, p in enumerate(partitions)]

    async def consume():
        got = []
        with gate, RecordReader(gate) as reader:
            for t in producers:
                t.start()
            async with asyncio.timeout(JOIN):
                async for r in reader:
                    got.append(r)
            assert reader.is_finished
        return got

    got = run(consume())
    for t in producers:
        t.finish(JOIN)
        assert t.error is None
    assert by_producer(got) == {0: list(range(n)), 1: list(range(n))}
    for p in partitions:
        p.close()


def test_async_for_reads_every_record_over_tcp(run):
    n = 4000
    with NetworkEnvironment(SMALL) as prod, NetworkEnvironment(SMALL) as cons:
        partitions = [prod.create_result_partition(2) for _ in range(2)]
        gates = [cons.create_input_gate([(p.partition_id, sp, prod.address) for p in partitions],
                                        gate_index=sp) for sp in range(2)]
        producers = [Worker(produce, p, i, n, 2) for i, p in enumerate(partitions)]
        for t in producers:
            t.start()

        async def consume(gate):
            # both subpartitions at once, in one loop: one after the other would deadlock, as in Flink
            with gate, RecordReader(gate) as reader:
                return [r async for r in reader]

        async def main():
            async with asyncio.timeout(JOIN):
                return await asyncio.gather(*(consume(g) for g in gates))

        outs = run(main())
        for t in producers:
            t.finish(JOIN)
            assert t.error is None
        for sp, got in enumerate(outs):
            assert by_producer(got) == {i: list(range(sp, n, 2)) for i in range(2)}
        for p in partitions:
            p.close()
    assert_whole(prod, cons)


def test_read_batch_async_takes_a_ready_lane_buffer_at_once_and_still_checks_its_timeout(run):
    # A buffer ready on a remote gate's fast lane is read without suspending (no trip through the
    # loop, the gate's availability check skipped); a malformed timeout is refused even then, and
    # what it refused stays for the next read.
    with NetworkEnvironment(SMALL) as prod, NetworkEnvironment(SMALL) as cons:
        p = prod.create_result_partition(1)
        gate = cons.create_input_gate([(p.partition_id, 0, prod.address)])
        checks = {"is_available": 0}
        original = type(gate).is_available

        class Counting(type(gate)):
            @property
            def is_available(self):
                checks["is_available"] += 1
                return original.fget(self)

        async def main():
            with RecordWriter(p, timeout=0) as w, gate, RecordReader(gate) as reader:
                w.emit(b"first", 0)
                assert await reader.read_batch_async(timeout=JOIN) == [b"first"]   # the slow way
                channel = gate.input_channels[0]
                deadline = time.monotonic() + JOIN
                for i in range(2):               # the channel's two exclusive credits
                    w.emit(i.to_bytes(2, "big"), 0)
                    # one buffer each: a record emitted before the sender took the last one's
                    # flush joins it in the same buffer
                    while channel.queue.queued_buffers < i + 1 and time.monotonic() < deadline:
                        await asyncio.sleep(0.001)
                assert channel.queue.queued_buffers == 2
                for bad in (float("nan"), True, "1"):
                    with pytest.raises(ValueError, match="timeout"):
                        await reader.read_batch_async(timeout=bad)
                gate.__class__ = Counting
                async with LoopSteps() as ticks:
                    before = ticks.steps
                    got = [await reader.read_batch_async(), await reader.read_batch_async(timeout=1.0)]
                    assert ticks.steps == before     # read at once: the loop did not run
                gate.__class__ = Counting.__mro__[1]
                assert got == [[i.to_bytes(2, "big")] for i in range(2)]
                assert checks["is_available"] == 0
            p.close()

        run(main())
    assert_whole(prod, cons)


@pytest.mark.parametrize("api", ["read_batch_async", "async for"])
def test_a_reader_on_the_loop_that_caught_up_reads_on_through_the_lane_after_its_waits(run, api):
    # A producer slower than the reader: the reader finds the lane empty before nearly every
    # buffer and waits on the doorbell's eventfd (aio.wait_lane), the loop free meanwhile; the
    # buffer that ends the wait comes through the lane too, never through the general path
    # (poll_next, get_next, or arm_wake_fd, which would move the ready channel to its queue).
    n = 60
    with first_record_read(SMALL) as (w, gate, reader, channel):
        counts: dict = {}
        for name in ("poll_next", "get_next", "arm_wake_fd"):
            count_calls(gate, name, counts)
        count_calls(gate, "arm_lane_wake_fd", counts, results=True)

        def slowly():
            for i in range(n):
                time.sleep(0.002)
                w.emit(i.to_bytes(4, "big"), 0)     # the writer's timeout 0: one buffer each

        async def main():
            worker = Worker(slowly)
            worker.start()
            got = []
            async with LoopSteps(0.001) as ticks, asyncio.timeout(JOIN):
                if api == "read_batch_async":
                    while len(got) < n:
                        got.extend(await reader.read_batch_async())
                else:
                    async for r in reader:
                        got.append(r)
                        if len(got) == n:
                            break
            worker.finish(JOIN)
            assert worker.error is None
            return got, ticks.steps

        got, steps = run(main())
        assert got == [i.to_bytes(4, "big") for i in range(n)]
        assert counts.get(("arm_lane_wake_fd", False), 0) >= n // 4   # it waited, on the lane
        assert steps >= 10                                  # and the loop ran other tasks
        assert counts.get("poll_next", 0) == counts.get("get_next", 0) == 0
        assert counts.get("arm_wake_fd", 0) == 0
        # (about a buffer per record: one emitted before the sender took the last may join it)
        assert n // 2 < channel.num_buffers_in == gate.num_buffers_in <= n + 1


@pytest.mark.parametrize("what", ["cancel", "a channel failure", "the gate's close"])
def test_a_lane_wait_on_the_loop_ends_at_a_cancel_a_failure_or_a_close(run, what):
    # A task cancelled in its lane wait leaves the doorbell disarmed and loses nothing: the next
    # read gets the next record through the lane. Python-side news (a failed channel, a closed
    # gate) rings the armed eventfd: the waiting read wakes and raises the typed error.
    with first_record_read(SMALL) as (w, gate, reader, channel):
        counts: dict = {}
        count_calls(gate, "arm_lane_wake_fd", counts, results=True)

        async def main():
            task = asyncio.create_task(reader.read_batch_async())
            assert await still_pending(task)
            assert counts[("arm_lane_wake_fd", False)] == 1     # armed, waiting on the lane
            signal = gate.signal
            if what == "cancel":
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                signal.clear_fd()
                assert not signal.arm_fd()          # was disarmed: nothing rang, nothing pending
                signal.disarm()
                w.emit(b"after", 0)
                async with asyncio.timeout(JOIN):
                    assert await reader.read_batch_async() == [b"after"]
                return
            if what == "a channel failure":
                threading.Thread(target=channel.on_error,
                                 args=(RemoteTransportError("the producer failed"),)).start()
                expected = RemoteTransportError
            else:
                threading.Thread(target=gate.close).start()
                expected = CancelTaskError
            with pytest.raises(expected):
                await asyncio.wait_for(task, JOIN)

        run(main())


def test_arm_lane_wake_fd_declines_where_the_lane_cannot_serve(run):
    with two_local_gates(SMALL) as (local, other):
        assert local.poll_data_buffer() is None
        assert local.arm_lane_wake_fd() is True                 # local channels only: poll
        assert UnionInputGate([local, other]).arm_lane_wake_fd() is True
    with first_record_read(SMALL) as (w, gate, reader, channel):
        assert gate.poll_data_buffer() is None                  # the lane in use, empty
        w.emit(b"ready", 0)
        deadline = time.monotonic() + JOIN
        while channel.queue.queued_buffers < 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert gate.arm_lane_wake_fd() is True                  # ready already: nothing armed

        async def read():
            return await reader.read_batch_async()

        assert run(read()) == [b"ready"]
        assert gate.arm_lane_wake_fd() is False                 # empty: armed
        gate.signal.disarm()
        gate.close()
        assert gate.arm_lane_wake_fd() is True                  # closed: the general path's


def test_read_batch_async_over_a_union_gate_over_tcp(run):
    n = 3000
    with NetworkEnvironment(SMALL) as prod, NetworkEnvironment(SMALL) as cons:
        partitions = [prod.create_result_partition(1) for _ in range(2)]
        union = UnionInputGate(*(cons.create_input_gate([(p.partition_id, 0, prod.address)], gate_index=i)
                                 for i, p in enumerate(partitions)))
        producers = [Worker(produce, p, i, n) for i, p in enumerate(partitions)]
        for t in producers:
            t.start()

        async def consume():
            got = []
            with union, RecordReader(union) as reader:
                async with asyncio.timeout(JOIN):
                    while (batch := await reader.read_batch_async()) is not None:
                        got.extend(batch)
            return got

        got = run(consume())
        for t in producers:
            t.finish(JOIN)
            assert t.error is None
        assert by_producer(got) == {0: list(range(n)), 1: list(range(n))}
        for p in partitions:
            p.close()
    assert_whole(prod, cons)


def test_async_producer_and_consumer_in_one_loop_over_tcp(run):
    """Writer and reader are coroutines of the same thread: nothing may block it (a blocked emit
    or read would deadlock the exchange), so the writer awaits its partition's availability."""
    n = 5000
    with NetworkEnvironment(SMALL) as prod, NetworkEnvironment(SMALL) as cons:
        partition = prod.create_result_partition(1)
        gate = cons.create_input_gate([(partition.partition_id, 0, prod.address)])
        waits = []

        async def write():
            with RecordWriter(partition, timeout=1) as w:
                for i in range(n):
                    if not w.is_available:
                        waits.append(i)
                        assert await w.wait_available_async()
                    w.emit(record(0, i, 200), 0)
            partition.finish()
            partition.close()

        async def read():
            with gate, RecordReader(gate) as reader:
                return [r async for r in reader]

        async def main():
            async with asyncio.timeout(JOIN):
                _, got = await asyncio.gather(write(), read())
            return got

        got = run(main())
        assert by_producer(got, 200) == {0: list(range(n))}
        assert waits, "the writer never had to wait: the test proves nothing"
    assert_whole(prod, cons)


def test_break_gives_the_rest_of_the_batch_back(run, make_pool, manager):
    nbp = make_pool(32, 4096)
    p = create_result_partition(nbp, 1, partition_manager=manager)
    p.setup()
    n = 300
    produce(p, 0, n, max_size=40)      # everything fits: the partition is finished before reading
    gate = SingleInputGate.create_local(manager, [(p.partition_id, 0)])

    async def consume():
        got = []
        with gate, RecordReader(gate) as reader:
            async with contextlib.aclosing(aiter(reader)) as it:
                async for r in it:
                    got.append(r)
                    if len(got) == 7:
                        break      # in the middle of a buffer's batch
            got.append(await anext(reader))           # the next one, then the rest
            async for r in reader:
                got.append(r)
            with pytest.raises(StopAsyncIteration):
                await anext(reader)
        return got

    got = run(consume())
    assert by_producer(got, 40) == {0: list(range(n))}
    p.close()


def test_anext_and_next_record_share_the_reader(run, make_pool, manager):
    nbp = make_pool(32, 4096)
    p = create_result_partition(nbp, 1, partition_manager=manager)
    p.setup()
    produce(p, 0, 50, max_size=40)
    gate = SingleInputGate.create_local(manager, [(p.partition_id, 0)])

    async def consume():
        with gate, RecordReader(gate) as reader:
            first = [await anext(reader) for _ in range(3)]
            rest = []
            while True:
                try:
                    rest.append(reader.next_record(timeout=JOIN))
                except StopIteration:
                    break
            return first + rest

    assert by_producer(run(consume()), 40) == {0: list(range(50))}
    p.close()


def test_an_always_ready_stream_lets_other_tasks_run(run, make_pool, manager, tmp_path):
    nbp = make_pool(32, SEG)
    p = create_result_partition(nbp, 1, ResultPartitionType.BLOCKING, partition_manager=manager,
                                tmp_dir=str(tmp_path))
    p.setup()
    n = 4 * aio.YIELD_EVERY * (SEG // 20)     # several hundred buffers, all readable before reading
    with RecordWriter(p, timeout=-1) as w:
        for i in range(n):
            w.emit(HEADER.pack(0, i) + bytes(10), 0)
    p.finish()
    gate = SingleInputGate.create_local(manager, [(p.partition_id, 0)])

    async def consume():
        ticks = 0
        done = False

        async def ticker():
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0)

        t = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        ticks_before = ticks
        count = 0
        with gate, RecordReader(gate) as reader:
            async for _ in reader:
                count += 1
        ticks_during = ticks - ticks_before
        done = True
        await t
        return count, ticks_during

    count, ticks = run(consume())
    assert count == n
    assert ticks >= 2, "the reader never yielded to the loop"
    p.release()
    p.close()


# -- await gate.next(): buffers, events, end of partition ------------------------------------------

def test_gate_next_suspends_then_returns_buffers_events_and_end_of_partition(run, make_pool, manager):
    nbp = make_pool(16, SEG)
    partitions = [create_result_partition(nbp, 1, partition_manager=manager) for _ in range(2)]
    for p in partitions:
        p.setup()
    gate = SingleInputGate.create_local(manager, [(p.partition_id, 0) for p in partitions])
    writers = [RecordWriter(p, timeout=0) for p in partitions]

    async def consume():
        with gate:
            waiting = asyncio.create_task(gate.next())
            assert await still_pending(waiting), "next() returned with nothing to read"
            writers[0].emit(b"hello", 0)           # from the loop's own thread
            boe = await asyncio.wait_for(waiting, JOIN)
            assert boe.is_buffer and boe.channel_info.input_channel_idx == 0
            assert boe.buffer.to_bytes() == b"\x00\x00\x00\x05hello"
            boe.buffer.recycle()

            def later():                            # from another thread
                writers[1].broadcast_event(ev.EndOfSuperstepEvent())
                writers[1].emit(b"x" * 10, 0)
                writers[1].broadcast_event(ev.EndOfData(ev.StopMode.DRAIN))
                partitions[1].finish()
                partitions[0].finish()

            t = threading.Thread(target=later)
            t.start()
            seen = []
            async with asyncio.timeout(JOIN):
                while (boe := await gate.next()) is not None:
                    if boe.is_buffer:
                        seen.append((boe.channel_info.input_channel_idx, boe.buffer.to_bytes()[4:]))
                        boe.buffer.recycle()
                    else:
                        seen.append((boe.channel_info.input_channel_idx, type(boe.event).__name__))
            t.join()
            assert await gate.next() is None       # finished stays finished
            assert gate.is_finished
            return seen

    seen = run(consume())
    assert [s for s in seen if s[0] == 1] == [(1, "EndOfSuperstepEvent"), (1, b"x" * 10), (1, "EndOfData"),
                                              (1, "EndOfPartitionEvent")]
    assert [s for s in seen if s[0] == 0] == [(0, "EndOfPartitionEvent")]
    for w in writers:
        w.close()
    for p in partitions:
        p.close()


def test_union_gate_next_over_tcp(run):
    with NetworkEnvironment(SMALL) as prod, NetworkEnvironment(SMALL) as cons:
        partitions = [prod.create_result_partition(1) for _ in range(2)]
        union = UnionInputGate(*(cons.create_input_gate([(p.partition_id, 0, prod.address)], gate_index=i)
                                 for i, p in enumerate(partitions)))

        async def consume():
            events, data = [], []
            with union:
                waiting = asyncio.create_task(union.next())
                assert await still_pending(waiting)
                for i, p in enumerate(partitions):
                    with RecordWriter(p, timeout=0) as w:
                        w.emit(b"from %d" % i, 0)
                    p.finish()
                async with asyncio.timeout(JOIN):
                    boe = await waiting
                    while boe is not None:
                        if boe.is_buffer:
                            data.append(boe.buffer.to_bytes()[4:])
                            boe.buffer.recycle()
                        else:
                            events.append((union.channel_index(boe), type(boe.event).__name__))
                        boe = await union.next()
            return sorted(data), sorted(events)

        data, events = run(consume())
        assert data == [b"from 0", b"from 1"]
        assert events == [(0, "EndOfPartitionEvent"), (1, "EndOfPartitionEvent")]
        for p in partitions:
            p.close()
    assert_whole(prod, cons)


def test_emit_events_through_async_for(run, make_pool, manager):
    nbp = make_pool(16, SEG)
    p = create_result_partition(nbp, 1, partition_manager=manager)
    p.setup()
    with RecordWriter(p, timeout=0) as w:
        w.emit(b"a", 0)
        w.broadcast_event(ev.EndOfSuperstepEvent())
        w.emit(b"b", 0)
    p.finish()
    gate = SingleInputGate.create_local(manager, [(p.partition_id, 0)])

    async def consume():
        with gate, RecordReader(gate, emit_events=True) as reader:
            return [type(r.event).__name__ if isinstance(r, RecordOrEvent) else r async for r in reader]

    assert run(consume()) == [b"a", "EndOfSuperstepEvent", b"b", "EndOfPartitionEvent"]
    p.close()


def test_gate_next_times_out(run, make_pool, manager):
    nbp = make_pool(16, SEG)
    p = create_result_partition(nbp, 1, partition_manager=manager)
    p.setup()
    gate = SingleInputGate.create_local(manager, [(p.partition_id, 0)])

    async def consume():
        with gate, RecordReader(gate) as reader:
            with pytest.raises(TimeoutError):
                await gate.next(timeout=0.05)
            with pytest.raises(TimeoutError):
                await reader.read_batch_async(timeout=0)
            p.emit_record(b"late", 0)
            p.flush(0)
            assert await reader.read_batch_async(timeout=JOIN) == [b"late"]

    run(consume())
    p.release()
    p.close()


# -- await writer availability ---------------------------------------------------------------------

class RecordingTimer:
    """A WaitTimer that records its marks."""

    def __init__(self):
        self.marks = []

    def mark_start(self):
        self.marks.append("start")

    def mark_end(self):
        self.marks.append("end")


def fill(partition, writer) -> int:
    """Emit full-buffer records into subpartition 0 until the partition's pool has no buffer."""
    i = 0
    while writer.is_available:
        writer.emit(bytes([i]) * (SEG - 4), 0)
        i += 1
        assert i <= partition.buffer_pool.num_buffers, "the pool never became unavailable"
    return i


def test_writer_wait_suspends_while_the_pool_is_exhausted_and_resumes_when_a_consumer_reads(
        run, make_pool, manager):
    nbp = make_pool(8, SEG)
    p = create_result_partition(nbp, 1, partition_manager=manager, max_overdraft_buffers=0)
    p.setup()
    gate = SingleInputGate.create_local(manager, [(p.partition_id, 0)])
    writer = RecordWriter(p, timeout=-1)
    timer = RecordingTimer()
    writer.set_soft_back_pressure_timer(timer)

    async def main():
        with gate:
            filled = fill(p, writer)
            waiting = asyncio.create_task(aio.wait_writer_available(writer))
            assert await still_pending(waiting), "the wait returned on an exhausted pool"
            assert timer.marks == ["start"]
            boe = await gate.next()               # the consumer reads one buffer ...
            boe.buffer.recycle()                  # ... and gives it back
            assert await asyncio.wait_for(waiting, JOIN) is True
            assert timer.marks == ["start", "end"]
            assert writer.is_available
            # available already: no wait, no timer marks
            assert await writer.wait_available_async() is True
            assert timer.marks == ["start", "end"]
            # a timeout gives False, as RecordWriter.wait_available does
            fill(p, writer)
            assert await writer.wait_available_async(timeout=0.02) is False
            p.finish()
            async with asyncio.timeout(JOIN):
                while (boe := await gate.next()) is not None:
                    if boe.is_buffer:
                        boe.buffer.recycle()
            return filled

    assert run(main()) >= 1
    writer.close()
    p.close()


def test_writer_wait_ends_with_cancel_task_error_when_the_partition_fails(run, make_pool, manager):
    nbp = make_pool(8, SEG)
    p = create_result_partition(nbp, 1, partition_manager=manager, max_overdraft_buffers=0)
    p.setup()
    writer = RecordWriter(p, timeout=-1)

    async def main():
        fill(p, writer)
        waiting = asyncio.create_task(aio.wait_writer_available(writer))
        assert await still_pending(waiting)
        threading.Thread(target=p.fail, args=(RuntimeError("task cancelled"),)).start()
        with pytest.raises(CancelTaskError):
            await asyncio.wait_for(waiting, JOIN)

    run(main())
    writer.close()
    p.close()


def test_writer_wait_ends_when_the_partition_is_released(run, make_pool, manager):
    """The consumer holds every buffer, so releasing the partition gives none back: the wait
    must still end (the partition's release is a wake-up of its own)."""
    nbp = make_pool(8, SEG)
    p = create_result_partition(nbp, 1, partition_manager=manager, max_overdraft_buffers=0)
    p.setup()
    writer = RecordWriter(p, timeout=-1)
    gate = SingleInputGate.create_local(manager, [(p.partition_id, 0)])

    async def main():
        held = []
        with gate:
            try:
                fill(p, writer)
                while (boe := gate.poll_next()) is not None:
                    held.append(boe.buffer)
                assert held and not writer.is_available
                waiting = asyncio.create_task(aio.wait_writer_available(writer))
                assert await still_pending(waiting)
                threading.Thread(target=p.release, args=(RuntimeError("released"),)).start()
                with pytest.raises(CancelTaskError):
                    await asyncio.wait_for(waiting, JOIN)
            finally:
                for b in held:
                    b.recycle()

    run(main())
    writer.close()
    p.close()


# -- cancellation ----------------------------------------------------------------------------------

def test_cancelling_a_waiting_reader_leaves_nothing_behind(run, make_pool, manager):
    nbp = make_pool(16, SEG)
    p = create_result_partition(nbp, 1, partition_manager=manager)
    p.setup()
    gate = SingleInputGate.create_local(manager, [(p.partition_id, 0)])
    n = 2000

    async def main():
        with gate, RecordReader(gate) as reader:
            got = []
            # cancelled while waiting in async for, in read_batch_async and in gate.next()
            async def via_async_for():
                async for r in reader:
                    return r

            for waiter in (via_async_for, reader.read_batch_async, gate.next):
                task = asyncio.create_task(waiter())
                assert await still_pending(task)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            # the gate's availability future is not cancelled: a thread can still wait on it
            future = gate.get_available_future()
            assert not future.cancelled()
            producer = Worker(produce, p, 0, n)
            producer.start()
            async with asyncio.timeout(JOIN):
                async for r in reader:
                    got.append(r)
            producer.finish(JOIN)
            assert producer.error is None
            assert future.done() and not future.cancelled()
            return got

    assert by_producer(run(main())) == {0: list(range(n))}
    p.close()
    # make_pool checks every segment is back; no_buffer_leaks that no buffer is alive


def test_a_remote_gate_wakes_the_loop_through_its_eventfd_and_unregisters_it_at_the_end(run):
    """Remote channels wake a waiting task through the gate doorbell's eventfd (no callback on the
    I/O thread). The eventfd stays registered with the loop while the gate is read there (one
    add_reader per gate, not per wait); a task cancelled while waiting leaves it disarmed, the
    next reader gets every record, and the end of the gate takes it off the loop."""
    n = 3000
    with NetworkEnvironment(SMALL) as prod, NetworkEnvironment(SMALL) as cons:
        p = prod.create_result_partition(1)
        gate = cons.create_input_gate([(p.partition_id, 0, prod.address)])
        signal = None

        async def main():
            nonlocal signal
            loop = asyncio.get_running_loop()
            with gate, RecordReader(gate) as reader:
                for waiter in (reader.read_batch_async, gate.next, lambda: anext(reader)):
                    task = asyncio.create_task(waiter())
                    assert await still_pending(task)
                    signal = gate.signal
                    assert signal is not None
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task
                    # disarmed: a channel turning ready now does not write the eventfd
                    signal.clear_fd()
                    assert not signal.arm_fd()
                    signal.disarm()
                producer = Worker(produce, p, 0, n)
                producer.start()
                async with asyncio.timeout(JOIN):
                    got = [r async for r in reader]
                producer.finish(JOIN)
                assert producer.error is None
                # read to its end: nothing left registered (uvloop's remove_reader returns None
                # either way, asyncio's False)
                assert loop.remove_reader(signal.wake_fd) is not True
                return got

        assert by_producer(run(main())) == {0: list(range(n))}
        p.close()
    assert_whole(prod, cons)


def test_one_registration_of_the_eventfd_serves_every_wait_of_a_gate():
    """The gate's eventfd is added to the loop once, however many times the reader waits, and
    removed when the gate is read to its end."""
    class CountingLoop(asyncio.SelectorEventLoop):
        def __init__(self):
            super().__init__()
            self.added: list[int] = []
            self.removed: list[int] = []

        def add_reader(self, fd, callback, *args):
            self.added.append(fd)
            return super().add_reader(fd, callback, *args)

        def remove_reader(self, fd):
            self.removed.append(fd)
            return super().remove_reader(fd)

    def paced(partition, batches: int):
        with RecordWriter(partition, timeout=2) as w:
            for b in range(batches):
                time.sleep(0.03)                 # the reader waits for every batch
                for i in range(10):
                    w.emit(record(0, b * 10 + i))
                w.flush_all()
        partition.finish()

    with NetworkEnvironment(SMALL) as prod, NetworkEnvironment(SMALL) as cons:
        p = prod.create_result_partition(1)
        gate = cons.create_input_gate([(p.partition_id, 0, prod.address)])
        batches = 0

        async def main():
            nonlocal batches
            got = []
            with gate, RecordReader(gate) as reader:
                await aio.request_partitions(gate)
                producer = Worker(paced, p, 8)
                producer.start()
                async with asyncio.timeout(JOIN):
                    # each batch comes 30 ms after the last was read: every read waits
                    while (batch := await reader.read_batch_async()) is not None:
                        got += batch
                        batches += bool(batch)
                producer.finish(JOIN)
                assert producer.error is None
            return got

        loop = CountingLoop()
        try:
            got = loop.run_until_complete(main())
        finally:
            loop.close()
        fd = gate.signal.wake_fd
        assert by_producer(got) == {0: list(range(80))}
        assert batches >= 8
        assert loop.added.count(fd) == 1, (loop.added, fd)
        assert fd in loop.removed
        p.close()
    assert_whole(prod, cons)


def test_cancelling_a_waiting_writer_leaves_the_pool_whole(run, make_pool, manager):
    nbp = make_pool(8, SEG)
    p = create_result_partition(nbp, 1, partition_manager=manager, max_overdraft_buffers=0)
    p.setup()
    gate = SingleInputGate.create_local(manager, [(p.partition_id, 0)])
    writer = RecordWriter(p, timeout=-1)
    timer = RecordingTimer()
    writer.set_soft_back_pressure_timer(timer)

    async def main():
        with gate:
            fill(p, writer)
            future = p.get_available_future()
            task = asyncio.create_task(aio.wait_writer_available(writer))
            assert await still_pending(task)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert timer.marks == ["start", "end"]
            # a thread blocked on the same future is not disturbed by the cancellation
            blocked = Worker(future.result, JOIN)
            blocked.start()
            boe = await gate.next()
            boe.buffer.recycle()                   # completes the future; the stale callback is inert
            blocked.finish(JOIN)
            assert blocked.error is None
            p.finish()
            async with asyncio.timeout(JOIN):
                while (boe := await gate.next()) is not None:
                    if boe.is_buffer:
                        boe.buffer.recycle()

    run(main())
    writer.close()
    p.close()


def test_a_wake_up_after_the_loop_closed_is_dropped_quietly(loop_factory, caplog):
    """A wait still suspended when its loop is closed (not cancelled: the loop was just dropped):
    the future completed later by another thread must not raise into the closed loop."""
    future: concurrent.futures.Future[None] = concurrent.futures.Future()
    loop = loop_factory()
    loop.set_exception_handler(lambda loop, context: None)  # the pending task dropped below
    task = loop.create_task(aio.wait_future(future))
    loop.run_until_complete(asyncio.sleep(0))
    assert not task.done()
    loop.close()
    caplog.set_level(logging.DEBUG)
    t = threading.Thread(target=future.set_result, args=(None,))
    t.start()
    t.join()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    task.get_coro().close()


def test_wait_future_never_cancels_the_future(run):
    future: concurrent.futures.Future[int] = concurrent.futures.Future()

    async def main():
        task = asyncio.create_task(aio.wait_future(future))
        assert await still_pending(task)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not future.cancelled() and not future.done()
        assert await aio.wait_future(future, timeout=0.01) is False
        threading.Thread(target=future.set_result, args=(7,)).start()
        assert await aio.wait_future(future, timeout=JOIN) is True
        assert future.result() == 7

    run(main())


# -- errors: the same typed exceptions as the threaded reader ---------------------------------------

def test_closing_the_gate_wakes_a_waiting_reader_with_cancel_task_error(run, make_pool, manager):
    nbp = make_pool(16, SEG)
    p = create_result_partition(nbp, 1, partition_manager=manager)
    p.setup()
    gate = SingleInputGate.create_local(manager, [(p.partition_id, 0)])

    async def main():
        with RecordReader(gate) as reader:
            task = asyncio.create_task(reader.read_batch_async())
            assert await still_pending(task)
            threading.Thread(target=gate.close).start()
            with pytest.raises(CancelTaskError):
                await asyncio.wait_for(task, JOIN)

    run(main())
    p.release()
    p.close()


def _read_threaded(gate):
    with RecordReader(gate) as reader:
        for _ in reader:
            pass


def test_a_failed_producer_surfaces_as_in_the_threaded_reader_in_process(run, make_pool, manager):
    nbp = make_pool(16, SEG)
    p = create_result_partition(nbp, 2, partition_manager=manager)
    p.setup()
    gates = [SingleInputGate.create_local(manager, [(p.partition_id, sp)]) for sp in range(2)]
    threaded = Worker(_read_threaded, gates[1])
    threaded.start()

    async def main():
        with RecordReader(gates[0]) as reader:
            producer = Worker(produce, p, 0, 10_000, 2, 2, 300)
            producer.start()
            with pytest.raises(ProducerFailedError) as info:
                async with asyncio.timeout(JOIN):
                    async for _ in reader:
                        pass
            producer.finish(JOIN)
            return info.value

    err = run(main())
    threaded.finish(JOIN)
    assert type(err) is type(threaded.error) is ProducerFailedError
    assert str(err.__cause__) == str(threaded.error.__cause__) == "producer failed on purpose"
    for g in gates:
        g.close()
    p.close()


def test_a_failed_producer_surfaces_as_in_the_threaded_reader_over_tcp(run):
    with NetworkEnvironment(SMALL) as prod, NetworkEnvironment(SMALL) as cons:
        p = prod.create_result_partition(2)
        gates = [cons.create_input_gate([(p.partition_id, sp, prod.address)], gate_index=sp)
                 for sp in range(2)]
        threaded = Worker(_read_threaded, gates[1])
        threaded.start()

        async def main():
            with RecordReader(gates[0]) as reader:
                producer = Worker(produce, p, 0, 10_000, 2, 2, 300)
                producer.start()
                with pytest.raises(RemoteTransportError, match="producer failed on purpose") as info:
                    async with asyncio.timeout(JOIN):
                        async for _ in reader:
                            pass
                producer.finish(JOIN)
                return info.value

        err = run(main())
        threaded.finish(JOIN)
        assert type(err) is type(threaded.error) is RemoteTransportError
        for g in gates:
            g.close()
        p.close()
    assert_whole(prod, cons)


# -- no lost wake-up: readiness from producer threads while the reader reads and waits ------------

def stalling_producer(partition, producer: int, n: int, seed: int) -> None:
    """Emit ``n`` records in bursts with random flushes and stalls, so that the reader's queue
    runs empty and refills from this thread at random points of its reads and waits."""
    rng = random.Random(seed)
    with RecordWriter(partition, timeout=-1) as w:
        for i in range(n):
            w.emit(record(producer, i, 300))
            if rng.random() < 0.2:
                w.flush_all()
            if rng.random() < 0.02:
                time.sleep(rng.random() * 0.003)
    partition.finish()


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("reader_kind", ["threaded", "asyncio", "uvloop"])
def test_no_wake_up_is_lost_to_producers_racing_the_reader(reader_kind, seed, make_pool, manager):
    """Producer threads make local channels ready (the gate's Python-side notify) at random
    points of the reader's reads and waits; the reader forgets a notify only once it has seen its
    news (GateSignal.clear_pending under the gate lock). A lost wake-up would leave the reader
    asleep with data queued: every record must arrive, in order per producer, before the
    deadline, and the pools end whole."""
    nbp = make_pool(96, SEG)
    producers, n = 3, 1500
    partitions = [create_result_partition(nbp, 1, partition_manager=manager) for _ in range(producers)]
    for p in partitions:
        p.setup()
    gate = SingleInputGate.create_local(manager, [(p.partition_id, 0) for p in partitions])
    workers = [Worker(stalling_producer, p, i, n, seed * 100 + i) for i, p in enumerate(partitions)]
    got: list[bytes] = []
    with gate, RecordReader(gate) as reader:
        if reader_kind == "threaded":
            gate.request_partitions()
            for t in workers:
                t.start()
            deadline = time.monotonic() + JOIN
            while (batch := reader.read_batch(timeout=max(0.001, deadline - time.monotonic()))) is not None:
                got.extend(batch)
        else:
            loop_factory = (pytest.importorskip("uvloop").new_event_loop if reader_kind == "uvloop"
                            else asyncio.new_event_loop)

            async def consume():
                for t in workers:
                    t.start()
                async with asyncio.timeout(JOIN):
                    while (batch := await reader.read_batch_async()) is not None:
                        got.extend(batch)

            problems: list[dict] = []
            with asyncio.Runner(loop_factory=loop_factory) as r:
                r.get_loop().set_exception_handler(lambda loop, context: problems.append(context))
                r.run(consume())
            assert not problems, problems
        assert reader.is_finished
    for t in workers:
        t.finish(JOIN)
        assert t.error is None
    assert by_producer(got, 300) == {i: list(range(n)) for i in range(producers)}
    for p in partitions:
        p.close()
