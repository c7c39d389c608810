"""Aligned (exactly-once) barrier handling: ports of Flink's ``AlignedCheckpointsTest``.

The gate reads real local channels; an aligned barrier blocks its real subpartition when the
gate takes it, so "the data after a barrier is held back until the alignment ends" is checked
on the real path, not simulated. Each case pushes Flink's sequence item by item (``step``) and
checks the triggers, aborts, the resumes, and that every trigger saw exactly the records before
its barrier on every channel.
"""

from __future__ import annotations

import pytest

from flinknet.checkpointing import CheckpointFailureReason
from tests.checkpointing.harness import EOP, RECORD_BYTES, barrier, cancel, kinds, rec_entries


def test_single_channel_no_barriers(harness):
    h = harness(1)
    h.step(0, 1, 2, 3, EOP)
    assert [e[2] for e in rec_entries(h.log)] == [1, 2, 3]
    assert h.task.triggers == [] and h.task.aborts == []
    assert h.cgate.is_finished


def test_multi_channel_no_barriers(harness):
    h = harness(4)
    for ch in (2, 2, 0, 1, 0, 1, 3, 1, 2):
        h.step(ch, ch * 10 + len(h.pushed[ch]))
    for ch in range(4):
        h.step(ch, EOP)
    assert h.task.triggers == []
    assert h.cgate.is_finished


def test_single_channel_with_barriers(harness):
    h = harness(1)
    h.step(0, 1, 2, barrier(1), 3, 4, barrier(2), barrier(3), 5, barrier(4), EOP)
    assert h.task.triggered_ids == [1, 2, 3, 4]
    h.assert_aligned_cut()
    # a single channel: the alignment starts and ends at once
    assert all(t.metrics.alignment_duration_nanos == 0 for t in h.task.triggers)


def test_multi_channel_with_barriers(harness):
    """Flink's testMultiChannelWithBarriers: blocked data, no blocked data, data from one
    channel only, an empty checkpoint, trailing data."""
    h = harness(3)
    # checkpoint with blocked data
    h.step(0, 1)
    h.step(2, 2)
    h.step(0, 3)
    h.step(1, barrier(1))
    h.step(2, barrier(1))
    assert h.subpartition_blocked(1) and h.subpartition_blocked(2)
    h.step(2, 4)           # held back: channel 2 is blocked upstream
    assert ("rec", 2, 4) not in h.log
    h.step(0, 5)
    out = h.step(0, barrier(1))
    assert kinds(out)[0] == ("trigger", 1)
    assert ("rec", 2, 4) in out  # released by the resume after the checkpoint
    # checkpoint without blocked data
    for ch, v in ((0, 6), (0, 7), (1, 8), (1, 9), (2, 10)):
        h.step(ch, v)
    h.step(0, barrier(2))
    h.step(1, barrier(2))
    h.step(2, barrier(2))
    # checkpoint with data only from one channel
    h.step(2, 11)
    h.step(2, 12)
    h.step(2, barrier(3))
    h.step(0, 13)
    h.step(0, 14)
    h.step(0, barrier(3))
    h.step(1, barrier(3))
    # empty checkpoint
    h.step(1, barrier(4))
    h.step(2, barrier(4))
    h.step(0, barrier(4))
    # trailing data
    h.step(0, 15, EOP)
    h.step(1, EOP)
    h.step(2, EOP)
    assert h.task.triggered_ids == [1, 2, 3, 4]
    assert h.task.aborts == []
    h.assert_aligned_cut()
    assert not any(h.subpartition_blocked(i) for i in range(3))
    assert h.cgate.is_finished


def test_multi_channel_trailing_blocked_data(harness):
    h = harness(3)
    h.step(0, 1)
    h.step(1, 2)
    h.step(2, 3)
    h.step(1, barrier(1), 4, 5)
    h.step(2, barrier(1), 6)
    h.step(0, 7, 8)
    assert [e for e in rec_entries(h.log) if e[1] != 0] == [("rec", 1, 2), ("rec", 2, 3)]
    h.step(0, barrier(1))
    assert h.task.triggered_ids == [1]
    h.assert_aligned_cut()
    assert h.seen == {0: [1, 7, 8], 1: [2, 4, 5], 2: [3, 6]}


def test_missing_cancellation_barriers(harness):
    """Flink's testMissingCancellationBarriers: a cancellation marker for checkpoint 1 arrives
    on one channel only; the later checkpoint 2 completes normally."""
    h = harness(2)
    h.step(1, barrier(1))
    h.step(0, cancel(1))
    assert h.task.aborted_ids == [1]
    assert not h.subpartition_blocked(1)   # the abort resumed the channel
    h.step(0, cancel(1))                   # a trailing duplicate is ignored
    h.step(0, barrier(2))
    h.step(1, cancel(1))                   # late marker of the aborted checkpoint
    h.step(1, barrier(2))
    assert h.task.triggered_ids == [2]
    assert h.task.aborted_ids == [1]
    h.step(0, 1)
    h.step(1, 2)
    h.assert_aligned_cut()


def test_start_alignment_with_closed_channels(harness):
    """Flink's testStartAlignmentWithClosedChannels: channels finished before a checkpoint
    starts do not count."""
    h = harness(4)
    h.step(2, EOP)
    h.step(0, 1, barrier(2))
    h.step(1, 2, barrier(2))
    h.step(3, 3, barrier(2))
    assert h.task.triggered_ids == [2]
    h.step(0, 4)
    h.step(1, barrier(3))
    h.step(1, 5)
    h.step(0, EOP)
    h.step(3, barrier(3))
    assert h.task.triggered_ids == [2, 3]   # EndOfPartition counted channel 0 as aligned
    h.step(3, EOP)
    h.step(1, EOP)
    h.assert_aligned_cut()
    assert h.cgate.is_finished


def test_end_of_stream_while_checkpoint_is_pending_aborts_without_checkpoints_after_finish(harness):
    """Flink's testEndOfStreamWhileCheckpoint with checkpoints after tasks finish disabled."""
    h = harness(3, enable_checkpoint_after_tasks_finished=False)
    h.step(0, barrier(2))
    h.step(1, barrier(2))
    h.step(2, 1)
    assert h.subpartition_blocked(0)
    h.step(2, EOP)
    assert h.task.aborts[0][0] == 2
    assert h.task.aborts[0][1].reason is CheckpointFailureReason.CHECKPOINT_DECLINED_INPUT_END_OF_STREAM
    assert not h.subpartition_blocked(0) and not h.subpartition_blocked(1)
    assert h.task.triggers == []


def test_end_of_partition_during_alignment_counts_as_aligned(harness):
    """Flink's testTriggerCheckpointsWithEndOfPartition (checkpoints after finish: default)."""
    h = harness(3)
    h.step(0, 1, barrier(1))
    h.step(1, 2, barrier(1), 3)
    assert h.task.triggers == []
    h.step(2, 4, EOP)
    assert h.task.triggered_ids == [1]
    h.assert_aligned_cut()
    assert ("rec", 1, 3) in h.log


def test_deduplicate_channels_with_both_barrier_and_end_of_partition(harness):
    """Flink's testDeduplicateChannelsWithBothBarrierAndEndOfPartition."""
    h = harness(2)
    h.step(0, barrier(2))
    h.step(0, EOP)       # not readable while blocked; the barrier counts once either way
    h.step(1, barrier(2))
    assert h.task.triggered_ids == [2]
    h.drain()
    h.step(1, EOP)
    assert h.handler.num_open_channels == 0
    assert h.cgate.is_finished


def test_single_channel_abort_checkpoint(harness):
    h = harness(1)
    h.step(0, 1, barrier(1), 2, cancel(2), barrier(3), cancel(3), barrier(4))
    assert h.task.triggered_ids == [1, 3, 4]   # cancel(3) after the checkpoint completed: no abort
    assert h.task.aborted_ids == [2]
    assert h.task.aborts[0][1].reason is CheckpointFailureReason.CHECKPOINT_DECLINED_ON_CANCELLATION_BARRIER


def test_multi_channel_abort_checkpoint(harness):
    """Flink's testMultiChannelAbortCheckpoint: cancellation while aligning, a cancellation
    for a not yet started checkpoint, and late barriers of aborted checkpoints."""
    h = harness(3)
    h.step(0, 1)
    h.step(1, barrier(1))
    h.step(2, barrier(1))
    h.step(0, barrier(1))          # checkpoint 1 completes
    h.step(0, 2)
    h.step(0, barrier(2))
    h.step(1, 3)
    h.step(2, cancel(2))           # abort while channel 0 is blocked
    assert h.task.aborted_ids == [2]
    assert not h.subpartition_blocked(0)
    h.step(0, 4)
    h.step(1, barrier(2))          # late barrier of the aborted checkpoint: resumed at once
    assert not h.subpartition_blocked(1)
    h.step(1, 5)
    h.step(0, barrier(3))
    h.step(2, barrier(3))
    h.step(1, barrier(3))          # checkpoint 3 completes
    h.step(1, barrier(4))
    h.step(0, cancel(4))
    h.step(2, cancel(5))           # a newer cancellation: aborts 5 before it started
    h.step(0, barrier(5))          # obsolete: resumed
    h.step(1, barrier(5))
    h.step(0, barrier(6))
    h.step(1, barrier(6))
    h.step(2, barrier(6))
    assert h.task.triggered_ids == [1, 3, 6]
    assert h.task.aborted_ids == [2, 4, 5]
    h.assert_aligned_cut()
    assert not any(h.subpartition_blocked(i) for i in range(3))


def test_abort_via_queued_barriers(harness):
    """A barrier of a newer checkpoint subsumes the pending one (CHECKPOINT_DECLINED_SUBSUMED)."""
    h = harness(2)
    h.step(0, barrier(1))
    h.step(1, 1)
    h.step(1, barrier(2))   # checkpoint 1 subsumed; channel 0 resumed
    assert h.task.aborts[0][0] == 1
    assert h.task.aborts[0][1].reason is CheckpointFailureReason.CHECKPOINT_DECLINED_SUBSUMED
    assert not h.subpartition_blocked(0)
    h.step(0, 2, barrier(2))
    assert h.task.triggered_ids == [2]
    h.assert_aligned_cut()


def test_ignore_cancel_barrier_if_checkpoint_subsumed(harness):
    h = harness(3)
    h.step(0, barrier(3))
    h.step(1, barrier(5))            # subsumes 3
    h.step(2, cancel(3))             # cancel of the subsumed checkpoint: ignored
    assert h.task.aborted_ids == [3]
    h.step(0, barrier(5))
    h.step(2, barrier(5))
    assert h.task.triggered_ids == [5]


def test_multi_channel_jumping_over_checkpoint(harness):
    """Flink's testMultiChannelJumpingOverCheckpoint."""
    h = harness(3)
    h.step(0, 1)
    h.step(1, barrier(1))
    h.step(0, barrier(1))
    h.step(2, barrier(1))           # 1 done
    h.step(0, barrier(2))
    h.step(2, barrier(2))
    h.step(1, 2)
    h.step(1, barrier(3))           # 2 subsumed by 3
    h.step(0, barrier(3))
    h.step(2, barrier(4))           # 3 subsumed by 4 (channel 2 skipped barrier 3)
    h.step(0, barrier(4))
    h.step(1, barrier(4))
    assert h.task.triggered_ids == [1, 4]
    assert h.task.aborted_ids == [2, 3]
    h.assert_aligned_cut()


def test_metrics(harness):
    """Alignment time from the first to the last barrier, start delay from the barrier's
    timestamp to its first arrival, bytes processed during the alignment."""
    h = harness(3)
    created = h.clock.absolute_time_millis()
    h.clock.advance_millis(7)
    h.step(0, barrier(1, ts=created))
    h.clock.advance_millis(5)
    h.step(1, 1, 2)
    assert h.cgate.alignment_duration_nanos == 5_000_000   # running
    h.step(1, barrier(1, ts=created))
    h.clock.advance_millis(3)
    h.step(2, barrier(1, ts=created))
    (t,) = h.task.triggers
    assert t.metrics.checkpoint_start_delay_nanos == 7_000_000
    assert t.metrics.alignment_duration_nanos == 8_000_000
    assert t.metrics.bytes_processed_during_alignment == 2 * RECORD_BYTES
    assert h.cgate.alignment_duration_nanos == 8_000_000   # the latest
    assert h.cgate.checkpoint_start_delay_nanos == 7_000_000
    h.clock.advance_millis(100)
    assert h.cgate.alignment_duration_nanos == 8_000_000


def test_rejects_unaligned_barrier(harness):
    from flinknet.errors import IllegalStateError
    from tests.checkpointing.harness import UNALIGNED
    h = harness(2)
    with pytest.raises(IllegalStateError):
        h.step(0, barrier(1, UNALIGNED))
