"""Aligned checkpoints with a timeout switching to unaligned: ports of Flink's
``AlternatingCheckpointBarrierHandlerTest`` (the alternating handler), on real local channels
with a manual clock; the alignment timer fires on the reading thread at the next read."""

from __future__ import annotations

import threading
import time

import pytest

from flinknet.checkpointing import (
    CheckpointFailureReason,
    InMemoryChannelStateWriter,
    SystemClock,
    create_checkpointed_input_gate,
)
from flinknet.events import AlignmentType, EventAnnouncement
from tests.checkpointing.harness import (
    ALIGNED,
    EOP,
    RECORD_BYTES,
    UNALIGNED,
    RecordingTask,
    barrier,
    cancel,
    encode,
    rec_entries,
    timeoutable,
)

TIMEOUT = 10


def tb(h, cid: int, timeout: int = TIMEOUT, ts: int | None = None):
    """A timeoutable barrier created now (by the harness' clock)."""
    return barrier(cid, timeoutable(timeout), h.clock.absolute_time_millis() if ts is None else ts)


def test_checkpoint_handling_alternates_aligned_and_unaligned(harness):
    """Flink's testCheckpointHandling: aligned and unaligned barriers in turn."""
    h = harness(2, "alternating")
    h.step(0, 1, barrier(1))
    assert h.subpartition_blocked(0)
    h.step(0, 2)
    h.step(1, 3, barrier(1))
    assert h.task.triggered_ids == [1]
    assert h.task.triggers[0].options.alignment == AlignmentType.ALIGNED
    h.assert_aligned_cut()
    assert h.writer.checkpoint_ids == []        # aligned: nothing captured
    h.step(1, 4, barrier(2, UNALIGNED))
    h.step(0, 5, barrier(2, UNALIGNED))
    assert h.task.triggered_ids == [1, 2]
    assert h.task.triggers[1].options.is_unaligned
    h.assert_unaligned_cut([2])
    h.step(0, barrier(3))
    h.step(1, 6, barrier(3))
    assert h.task.triggered_ids == [1, 2, 3]
    assert not h.subpartition_blocked(0) and not h.subpartition_blocked(1)


def test_alignment_completes_before_the_timeout(harness):
    h = harness(2, "alternating")
    h.step(0, 1, tb(h, 1))
    h.clock.advance_millis(TIMEOUT - 1)
    h.step(1, 2, tb(h, 1, ts=h.clock.absolute_time_millis() - TIMEOUT + 1))
    (t,) = h.task.triggers
    assert t.options.is_timeoutable and not t.options.is_unaligned
    # a timeoutable aligned checkpoint starts (and finishes) the channel-state write: its output
    # may still need a snapshot
    r = h.result(1)
    assert r.input_finished and r.input_data == {}
    h.clock.advance_millis(100)
    h.drain()                                   # the timer was cancelled: nothing fires
    assert h.task.triggered_ids == [1]
    h.assert_aligned_cut()


def test_timeout_alignment(harness):
    """Flink's testTimeoutAlignment: the timer fires while channel 0 is blocked; the
    checkpoint turns unaligned, channel 1's data up to its barrier is captured, channel 0 stays
    blocked until the last barrier."""
    h = harness(2, "alternating")
    h.step(0, 1, tb(h, 1))
    h.step(0, 2)                                # held back upstream
    h.step(1, 3)
    assert h.task.triggers == []
    h.clock.advance_millis(TIMEOUT + 1)
    h.step(1, 4)                                # the read fires the timer first
    (t,) = h.task.triggers
    assert t.options.is_unaligned
    assert t.seen == {0: [1], 1: [3]}
    assert h.subpartition_blocked(0)
    h.step(1, 5, tb(h, 1, ts=0))
    assert not h.subpartition_blocked(0) and not h.subpartition_blocked(1)
    assert ("rec", 0, 2) in h.log
    assert h.captured(1) == {1: [4, 5]}
    assert t.metrics.is_complete


def test_timeout_alignment_on_first_barrier(harness):
    """Flink's testTimeoutAlignmentOnFirstBarrier: the barrier arrives after its timeout
    already passed (measured from its creation): unaligned at once."""
    h = harness(2, "alternating")
    created = h.clock.absolute_time_millis()
    h.clock.advance_millis(TIMEOUT + 5)
    h.step(0, 1, tb(h, 1, ts=created))
    (t,) = h.task.triggers
    assert t.options.is_unaligned
    assert t.metrics.checkpoint_start_delay_nanos == (TIMEOUT + 5) * 1_000_000
    h.step(1, 2, 3, tb(h, 1, ts=created))
    assert h.captured(1) == {1: [2, 3]}
    assert not h.subpartition_blocked(0) and not h.subpartition_blocked(1)


def test_timeout_on_a_later_barrier_without_the_timer(harness):
    """Timeouts are also detected when a later barrier arrives (before the timer fired)."""
    h = harness(3, "alternating")
    created = h.clock.absolute_time_millis()
    h.step(0, tb(h, 1, ts=created))
    h.clock.advance_millis(TIMEOUT + 1)
    # the next read would fire the timer; the barrier itself is checked first here
    h.push(1, 1, tb(h, 1, ts=created))
    h.handler.process_barrier(tb(h, 1, ts=created), h.info(2))   # as if channel 2's barrier came first
    assert h.task.triggers[0].options.is_unaligned


def test_timeout_before_first_barrier_with_announcement(harness):
    """Flink's testTimeoutAlignmentBeforeFirstBarrier: an announcement starts the timer; it
    fires before any barrier; the first barrier then triggers unaligned."""
    h = harness(2, "alternating")
    created = h.clock.absolute_time_millis()
    announced = tb(h, 1, ts=created)
    h.step(0, 1, EventAnnouncement(announced, 5))
    assert h.handler.is_checkpoint_pending
    h.clock.advance_millis(TIMEOUT + 1)
    h.step(1, 2)
    assert type(h.handler.state).__name__ == "AlternatingWaitingForFirstBarrierUnaligned"
    h.step(0, 3, announced)
    (t,) = h.task.triggers
    assert t.options.is_unaligned
    h.step(1, 4, announced)
    assert h.captured(1) == {1: [4]}


def test_timeout_after_end_of_partition(harness):
    """An EndOfPartition after the timeout passed switches the alignment to unaligned."""
    h = harness(3, "alternating")
    created = h.clock.absolute_time_millis()
    h.step(0, tb(h, 1, ts=created))
    h.clock.advance_millis(TIMEOUT + 1)
    h.handler.process_end_of_partition(h.info(2))   # before the timer had a chance
    assert h.task.triggers[0].options.is_unaligned
    h.step(1, 1, tb(h, 1, ts=created))
    assert h.captured(1) == {1: [1]}
    assert not h.subpartition_blocked(0)


def test_all_barriers_aligned_after_end_of_partition(harness):
    h = harness(2, "alternating")
    h.step(0, 1, tb(h, 1))
    h.step(1, 2, EOP)
    (t,) = h.task.triggers
    assert t.options.is_timeoutable and not t.options.is_unaligned
    h.assert_aligned_cut()
    assert not h.subpartition_blocked(0)


def test_cancellation_after_timeout_recycles_captured_data(harness):
    h = harness(2, "alternating")
    h.step(0, tb(h, 1))
    h.clock.advance_millis(TIMEOUT + 1)
    h.step(1, 1, 2)                              # captured after the switch
    h.step(1, cancel(1))
    assert h.task.aborted_ids == [1]
    assert h.task.aborts[0][1].reason is CheckpointFailureReason.CHECKPOINT_DECLINED_ON_CANCELLATION_BARRIER
    assert h.writer.checkpoint_ids == []
    assert not h.subpartition_blocked(0)
    h.step(1, tb(h, 1))                          # late barrier: obsolete, resumed at once
    assert not h.subpartition_blocked(1)
    h.step(0, 3, tb(h, 2))
    h.step(1, tb(h, 2))
    assert h.task.triggered_ids == [1, 2]


def test_next_checkpoint_overtakes_cancellation(harness):
    """Flink's testNextFirstCheckpointBarrierOvertakesCancellationBarrier."""
    h = harness(2, "alternating")
    h.step(0, barrier(1))
    h.step(1, barrier(2, UNALIGNED))             # subsumes 1, unaligned at once
    assert h.task.aborted_ids == [1]
    assert not h.subpartition_blocked(0)
    h.step(0, cancel(1), 1, barrier(2, UNALIGNED))
    assert h.task.triggered_ids == [2]
    assert h.captured(2) == {0: [1]}


def test_metrics_alternation(harness):
    """Flink's testMetricsAlternation: aligned then unaligned, alignment time and start delay."""
    h = harness(2, "alternating")
    t0 = h.clock.absolute_time_millis()
    h.clock.advance_millis(2)
    h.step(0, barrier(1, ts=t0))
    h.clock.advance_millis(3)
    h.step(1, barrier(1, ts=t0))
    assert h.task.triggers[0].metrics.alignment_duration_nanos == 3_000_000
    assert h.task.triggers[0].metrics.checkpoint_start_delay_nanos == 2_000_000
    t1 = h.clock.absolute_time_millis()
    h.clock.advance_millis(4)
    h.step(0, barrier(2, UNALIGNED, ts=t1))
    m = h.task.triggers[1].metrics
    assert m.checkpoint_start_delay_nanos == 4_000_000
    assert m.alignment_duration_nanos is None    # triggered before the alignment ended
    h.clock.advance_millis(6)
    h.step(1, 1, barrier(2, UNALIGNED, ts=t1))
    assert m.alignment_duration_nanos == 6_000_000
    assert m.bytes_persisted_during_alignment == RECORD_BYTES
    assert h.cgate.alignment_duration_nanos == 6_000_000


@pytest.fixture
def real_clock_gate(make_pool):
    """A two-channel local partition read through an alternating handler on the real clock:
    ``(partition, checkpointed gate, task, writer)``; everything released after the test."""
    from flinknet.consumer import SingleInputGate
    from flinknet.partition import ResultPartitionManager, create_result_partition
    nbp = make_pool(32, 128)
    manager = ResultPartitionManager()
    p = create_result_partition(nbp, 2, partition_manager=manager)
    p.setup()
    gate = SingleInputGate.create_local(manager, [(p.partition_id, 0), (p.partition_id, 1)])
    task = RecordingTask()
    writer = InMemoryChannelStateWriter()
    cgate = create_checkpointed_input_gate(gate, task, "unaligned", channel_state_writer=writer,
                                           clock=SystemClock())
    yield p, cgate, task, writer
    writer.close()
    cgate.close()
    p.release()
    p.close()
    manager.shutdown()


def test_get_next_waits_no_longer_than_the_alignment_timer(real_clock_gate):
    """With the real clock, a reader blocked in get_next sees the timeout fire while it waits."""
    p, cgate, task, writer = real_clock_gate
    now = int(time.time() * 1000)
    p.emit_event(barrier(1, timeoutable(50), now), 0)
    boe = cgate.get_next(timeout=5)
    assert boe is not None and boe.is_event
    timer = threading.Timer(0.3, lambda: (p.emit_record(encode(7), 1), p.flush(1)))
    timer.start()
    boe = cgate.get_next(timeout=5)
    timer.join()
    assert boe is not None and boe.is_buffer
    boe.buffer.recycle()
    assert task.triggered_ids == [1] and task.triggers[0].options.is_unaligned
    p.emit_event(barrier(1, timeoutable(50), now), 1)
    assert cgate.get_next(timeout=5).is_event
    result = writer.get_and_remove_write_result(1)
    assert result.input_finished and result.size == RECORD_BYTES
    result.recycle()
    assert not p.subpartitions[0].is_blocked


def test_aligned_barrier_with_aligned_options_never_times_out(harness):
    h = harness(2, "alternating")
    h.step(0, barrier(1, ALIGNED))
    h.clock.advance_millis(10_000)
    h.drain()
    assert h.task.triggers == []
    h.step(1, barrier(1, ALIGNED))
    assert h.task.triggers[0].options == ALIGNED
    assert rec_entries(h.log) == []


@pytest.mark.parametrize("how", ["gate.next", "async for"])
def test_the_alignment_timeout_fires_while_an_asyncio_reader_waits(real_clock_gate, how):
    """On asyncio the wait for input is bounded by the handler's next timer, as the threaded
    get_next's is: the alignment times out (and the checkpoint is taken unaligned) while the
    task waits, with no input arriving."""
    import asyncio

    from flinknet import RecordReader
    p, cgate, task, writer = real_clock_gate
    reader = RecordReader(cgate, emit_events=True)

    async def main():
        p.emit_event(barrier(1, timeoutable(50), int(time.time() * 1000)), 0)
        if how == "gate.next":
            boe = await cgate.next()
            assert boe is not None and boe.is_event
            waiting = asyncio.ensure_future(cgate.next())
        else:
            it = aiter(reader)
            assert isinstance((await anext(it)).event, type(barrier(1)))
            waiting = asyncio.ensure_future(anext(it))
        for _ in range(10_000):               # no input arrives: only the timer can trigger
            if task.triggered_ids:
                break
            await asyncio.sleep(0.001)
        assert task.triggered_ids == [1] and task.triggers[0].options.is_unaligned
        assert not waiting.done()
        waiting.cancel()
        try:
            await waiting
        except asyncio.CancelledError:
            pass

    try:
        asyncio.run(main())
    finally:
        reader.close()
