"""At-least-once barrier tracking: ports of Flink's ``CheckpointBarrierTrackerTest``.

At-least-once barriers are plain events (they block nothing), so data after a barrier flows on
while the tracker counts; the checkpoint is triggered when its barrier arrived on every open
channel."""

from __future__ import annotations

from flinknet.checkpointing import CheckpointFailureReason
from flinknet.checkpointing.handlers import MAX_CHECKPOINTS_TO_TRACK
from tests.checkpointing.harness import AT_LEAST_ONCE, EOP, barrier, cancel


def alo(cid: int, ts: int = 0):
    return barrier(cid, AT_LEAST_ONCE, ts)


def test_single_channel_no_barriers(harness):
    h = harness(1, "tracker")
    h.step(0, 1, 2, 3, EOP)
    assert h.task.triggers == []
    assert h.cgate.is_finished


def test_single_channel_with_barriers(harness):
    h = harness(1, "tracker")
    h.step(0, 1, alo(1), 2, alo(2), alo(3), 3, alo(4), alo(5), EOP)
    assert h.task.triggered_ids == [1, 2, 3, 4, 5]
    h.assert_aligned_cut()


def test_single_channel_with_skipped_barriers(harness):
    h = harness(1, "tracker")
    h.step(0, 1, alo(1), 2, alo(3), alo(4), 3, alo(6), alo(7), alo(9))
    assert h.task.triggered_ids == [1, 3, 4, 6, 7, 9]


def test_multi_channel_with_barriers(harness):
    h = harness(3, "tracker")
    h.step(0, 1)
    h.step(1, alo(1))
    h.step(1, 2)                     # flows on: nothing blocks
    h.step(0, alo(1))
    h.step(2, 3, alo(1))
    assert h.task.triggered_ids == [1]
    for ch in (2, 0, 1):
        h.step(ch, alo(2))
    h.step(2, alo(3))
    h.step(0, 4)
    h.step(0, alo(3))
    h.step(1, alo(3))
    assert h.task.triggered_ids == [1, 2, 3]
    assert not any(h.subpartition_blocked(i) for i in range(3))


def test_multi_channel_skipping_checkpoints(harness):
    """A newer checkpoint completing drops the older incomplete ones silently."""
    h = harness(3, "tracker")
    h.step(0, alo(1))
    h.step(1, alo(1))
    h.step(0, alo(2))
    h.step(2, alo(1))               # 1 complete
    h.step(1, alo(3))               # 2 incomplete
    h.step(0, alo(3))
    h.step(2, alo(3))               # 3 complete, 2 dropped
    h.step(1, alo(2))               # late: ignored
    h.step(2, alo(2))
    assert h.task.triggered_ids == [1, 3]
    assert h.task.aborts == []


def test_complete_checkpoints_on_late_barriers(harness):
    h = harness(3, "tracker")
    h.step(0, alo(2))
    h.step(1, alo(2))
    h.step(0, alo(3))
    h.step(1, alo(3))
    h.step(2, alo(2))               # 2 completes, 3 still pending
    h.step(2, alo(3))
    assert h.task.triggered_ids == [2, 3]
    assert h.handler.pending_checkpoint_ids == []


def test_abort_on_cancellation_barriers(harness):
    """Flink's testSingleChannelAbortCheckpoint / testMultiChannelAbortCheckpoint."""
    h = harness(3, "tracker")
    h.step(0, alo(1))
    h.step(1, alo(1))
    h.step(2, alo(1))
    h.step(0, alo(2))
    h.step(1, cancel(2))             # aborts 2 (once)
    h.step(2, cancel(2))
    h.step(0, alo(3))
    h.step(1, cancel(4))             # aborts 3 (older) and 4
    h.step(2, alo(3))
    h.step(1, alo(5))
    h.step(0, alo(5))
    h.step(2, alo(5))
    assert h.task.triggered_ids == [1, 5]
    assert h.task.aborted_ids == [2, 3, 4]
    assert all(a[1].reason is CheckpointFailureReason.CHECKPOINT_DECLINED_ON_CANCELLATION_BARRIER
               for a in h.task.aborts)


def test_single_channel_cancellation(harness):
    h = harness(1, "tracker")
    h.step(0, alo(1), cancel(2), alo(3), cancel(3))
    assert h.task.triggered_ids == [1, 3]
    assert h.task.aborted_ids == [2, 3]


def test_end_of_partition_completes_a_checkpoint_waiting_only_for_it(harness):
    h = harness(3, "tracker")
    h.step(0, alo(1))
    h.step(1, alo(1))
    h.step(0, alo(2))
    h.step(2, 1, EOP)
    assert h.task.triggered_ids == [1]
    assert h.handler.num_open_channels == 2
    h.step(1, alo(2))
    assert h.task.triggered_ids == [1, 2]


def test_end_of_partition_aborts_without_checkpoints_after_finish(harness):
    h = harness(2, "tracker", enable_checkpoint_after_tasks_finished=False)
    h.step(0, alo(1), alo(2))
    h.step(1, EOP)
    assert h.task.aborted_ids == [1, 2]
    assert h.task.aborts[0][1].reason is CheckpointFailureReason.CHECKPOINT_DECLINED_INPUT_END_OF_STREAM
    h.step(0, alo(3))
    assert h.task.triggered_ids == [3]


def test_tracks_at_most_fifty_checkpoints(harness):
    h = harness(2, "tracker")
    for cid in range(1, MAX_CHECKPOINTS_TO_TRACK + 3):
        h.push(0, alo(cid))
    h.drain()
    assert len(h.handler.pending_checkpoint_ids) == MAX_CHECKPOINTS_TO_TRACK
    assert h.handler.pending_checkpoint_ids[0] == 3
    h.step(1, alo(1))                 # no longer tracked
    assert h.task.triggers == []
    h.step(1, alo(3))
    assert h.task.triggered_ids == [3]


def test_metrics(harness):
    h = harness(2, "tracker")
    t0 = h.clock.absolute_time_millis()
    h.clock.advance_millis(4)
    h.step(0, alo(1, ts=t0))
    h.clock.advance_millis(6)
    h.step(1, alo(1, ts=t0))
    m = h.task.triggers[0].metrics
    assert m.checkpoint_start_delay_nanos == 4_000_000
    assert m.alignment_duration_nanos == 6_000_000
