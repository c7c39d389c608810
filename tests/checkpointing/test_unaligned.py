"""Unaligned barrier handling: ports of Flink's ``UnalignedCheckpointsTest``.

The first barrier triggers the checkpoint; the data each other channel delivers before its own
barrier is captured for the checkpoint (retained buffers handed to the writer) and still given
to the task. Checked: triggers and aborts, the writer calls, and the cut: what the task had
seen when triggered plus the captured data is exactly what came before the barrier on every
channel. Captured buffers are recycled by the test (the harness) or by the writer on abort.
"""

from __future__ import annotations

from flinknet.checkpointing import CheckpointFailureReason
from flinknet.events import AlignmentType
from tests.checkpointing.harness import ALIGNED, EOP, RECORD_BYTES, UNALIGNED, barrier, cancel, rec_entries


def ub(cid: int, ts: int = 0):
    return barrier(cid, UNALIGNED, ts)


def test_single_channel_no_barriers(harness):
    h = harness(1, "unaligned")
    h.step(0, 1, 2, EOP)
    assert [e[2] for e in rec_entries(h.log)] == [1, 2]
    assert h.task.triggers == []


def test_single_channel_with_barriers(harness):
    h = harness(1, "unaligned")
    h.step(0, 1, ub(1), 2, 3, ub(2), ub(3), 4, EOP)
    assert h.task.triggered_ids == [1, 2, 3]
    for t in h.task.triggers:
        assert t.options.is_unaligned
        assert t.metrics.alignment_duration_nanos == 0
        assert h.captured(t.checkpoint_id) == {}   # a single channel has nothing in flight
    h.assert_aligned_cut()


def test_multi_channel_with_barriers(harness):
    """Flink's testMultiChannelWithBarriers: the checkpoint is triggered at the first barrier;
    the other channels' data up to their barriers is the in-flight data."""
    h = harness(3, "unaligned")
    h.step(0, 1)
    h.step(2, 2)
    h.step(0, 3)
    h.step(1, ub(1))                 # triggers checkpoint 1 at once
    assert h.task.triggered_ids == [1]
    assert h.task.triggers[0].seen == {0: [1, 3], 1: [], 2: [2]}
    h.step(2, 4)                     # in flight for 1
    h.step(1, 5)                     # after channel 1's barrier: not captured
    h.step(2, ub(1))
    h.step(0, 6)                     # in flight for 1
    h.step(0, ub(1))                 # all barriers: input state complete
    assert h.writer.checkpoint_ids == [1]
    h.assert_unaligned_cut([1])
    # the next checkpoint, barriers in another order
    h.step(2, 7, ub(2))
    h.step(0, 8)
    h.step(1, 9, ub(2))
    h.step(0, ub(2))
    assert h.task.triggered_ids == [1, 2]
    h.assert_unaligned_cut([2])
    assert all(t.metrics.is_complete for t in h.task.triggers)


def test_multi_channel_trailing_inflight_data(harness):
    h = harness(3, "unaligned")
    h.step(0, 1, ub(1), 2)
    h.step(1, 3, 4, 5)
    h.step(2, 6)
    h.step(1, ub(1))
    h.step(2, 7, ub(1), 8)
    assert h.task.triggered_ids == [1]
    assert h.captured(1) == {1: [3, 4, 5], 2: [6, 7]}
    assert h.task.triggers[0].seen == {0: [1], 1: [], 2: []}


def test_missing_cancellation_barriers(harness):
    h = harness(2, "unaligned")
    h.step(1, 1, ub(1))
    h.step(0, 2)                 # captured for 1
    h.step(0, cancel(1))         # aborts 1: its captured data is dropped
    assert h.task.aborted_ids == [1]
    assert [a[0] for a in h.writer.aborted] == [1]
    assert h.writer.checkpoint_ids == []
    h.step(0, 3)                 # no checkpoint pending: not captured
    h.step(0, ub(2))
    h.step(1, cancel(1), 4, ub(2))
    assert h.task.triggered_ids == [1, 2]
    assert h.captured(2) == {1: [4]}


def test_start_alignment_with_closed_channels(harness):
    h = harness(4, "unaligned")
    h.step(2, EOP)
    h.step(0, 1, ub(2))
    h.step(1, 2, ub(2))
    h.step(3, 3, ub(2))
    assert h.task.triggered_ids == [2]
    assert h.captured(2) == {1: [2], 3: [3]}
    h.step(0, 4)
    h.step(1, ub(3))
    h.step(0, 5, EOP)            # counted as aligned: 5 came before the end, it is in flight
    h.step(3, ub(3))
    assert h.task.triggered_ids == [2, 3]
    r = h.result(3)
    assert r.input_finished
    assert sorted(i.input_channel_idx for i in r.input_data) == [0]


def test_end_of_stream_while_checkpoint(harness):
    h = harness(3, "unaligned", enable_checkpoint_after_tasks_finished=False)
    h.step(0, ub(2))
    h.step(1, 1)                 # captured
    h.step(1, EOP)
    assert h.task.aborts[0][0] == 2
    assert h.task.aborts[0][1].reason is CheckpointFailureReason.CHECKPOINT_DECLINED_INPUT_END_OF_STREAM
    assert h.writer.checkpoint_ids == []   # aborted with cleanup: the buffers went back
    h.step(2, 2, ub(2))          # the rest of the aborted checkpoint is ignored
    assert h.task.triggered_ids == [2]


def test_single_channel_abort_checkpoint(harness):
    h = harness(1, "unaligned")
    h.step(0, 1, ub(1), 2, cancel(2), ub(3), 3, cancel(3), ub(4))
    assert h.task.triggered_ids == [1, 3, 4]
    assert h.task.aborted_ids == [2]


def test_multi_channel_abort_checkpoint(harness):
    h = harness(3, "unaligned")
    h.step(0, 1, ub(1))
    h.step(1, 2, ub(1))
    h.step(2, 3, ub(1))
    h.step(0, 4, ub(2))
    h.step(1, 5)                 # in flight for 2
    h.step(2, cancel(2))         # abort: captured data for 2 recycled
    assert h.task.aborted_ids == [2]
    h.step(1, ub(2))             # late barrier of the aborted checkpoint
    h.step(2, 6, ub(3))
    h.step(0, 7)
    h.step(1, ub(3))
    h.step(0, ub(3))
    assert h.task.triggered_ids == [1, 2, 3]
    assert h.captured(3) == {0: [7]}
    assert h.captured(1) == {1: [2], 2: [3]}


def test_abort_via_queued_barriers(harness):
    """A newer barrier subsumes the pending unaligned checkpoint."""
    h = harness(2, "unaligned")
    h.step(0, ub(1))
    h.step(1, 1)                 # in flight for 1
    h.step(0, 2, ub(2))          # 1 subsumed; 2 triggered; channel 1 owes both barriers
    assert h.task.aborts == [(1, h.task.aborts[0][1])]
    assert h.task.aborts[0][1].reason is CheckpointFailureReason.CHECKPOINT_DECLINED_SUBSUMED
    h.step(1, 3, ub(1), 4, ub(2))
    assert h.task.triggered_ids == [1, 2]
    # for checkpoint 2, everything channel 1 delivered after the trigger and before barrier 2
    assert h.captured(2) == {1: [3, 4]}
    assert h.writer.checkpoint_ids == []


def test_ignore_cancel_barrier_if_checkpoint_subsumed(harness):
    h = harness(3, "unaligned")
    h.step(0, ub(3))
    h.step(1, ub(5))
    h.step(2, cancel(3))
    assert h.task.aborted_ids == [3]
    h.step(0, ub(5))
    h.step(2, ub(5))
    assert h.task.triggered_ids == [3, 5]


def test_aligned_barriers_are_taken_unaligned_and_resumed(harness):
    """An (out-of-order) aligned barrier blocked its subpartition: the unaligned handler
    checkpoints at once and resumes the channel when all barriers arrived."""
    h = harness(2, "unaligned")
    h.step(0, 1, barrier(1, ALIGNED))
    assert h.task.triggers[0].options.alignment == AlignmentType.UNALIGNED
    assert h.subpartition_blocked(0)
    h.step(0, 2)                 # held back by the producer
    h.step(1, 3, barrier(1, ALIGNED))
    assert not h.subpartition_blocked(0) and not h.subpartition_blocked(1)
    assert h.captured(1) == {1: [3]}
    assert ("rec", 0, 2) in h.log


def test_bytes_persisted_metric(harness):
    h = harness(2, "unaligned")
    h.step(0, ub(1))
    h.step(1, 1, 2, 3, ub(1))
    (t,) = h.task.triggers
    assert t.metrics.bytes_persisted_during_alignment == 3 * RECORD_BYTES
    assert h.handler.bytes_persisted_during_alignment == 3 * RECORD_BYTES
    assert t.metrics.bytes_processed_during_alignment == 3 * RECORD_BYTES
    assert t.metrics.is_complete


def test_priority_barrier_overtakes_local_data(harness):
    """A priority (unaligned) barrier jumps ahead of the data queued in the local
    subpartition: the consumer takes it first, and the data it overtook is the producer's
    output state, not captured at the input."""
    h = harness(2, "unaligned")
    h.push(0, 1, 2, ("priority", ub(1)))
    out = h.drain()
    assert out[0] == ("trigger", 1)
    assert [e[2] for e in rec_entries(out)] == [1, 2]
    h.step(1, 3, ub(1))
    assert h.captured(1) == {1: [3]}


def test_newer_cancellation_aborts_an_unfinished_unaligned_checkpoint(harness):
    """Found by the model: checkpoint 1 triggered unaligned, then a cancellation of 2 arrives
    before 1's last barrier: 1 cannot complete; its captured data goes back."""
    h = harness(3, "unaligned")
    h.step(0, EOP)
    h.step(1, ub(1))
    h.step(2, 1)                       # captured for 1
    h.step(1, cancel(2))
    assert h.task.aborted_ids == [1, 2]
    assert h.writer.checkpoint_ids == []
    h.step(2, ub(1), barrier(2))
    assert h.task.triggered_ids == [1]
