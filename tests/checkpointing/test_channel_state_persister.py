"""The per-channel capture of in-flight data (Flink's ``ChannelStatePersisterTest``) and the
in-memory channel-state writer, with real buffers (each captured one holds a reference until
the writer's result is recycled)."""

from __future__ import annotations

from flinknet._core.buffer import FREEING_BUFFER_RECYCLER, DataType, NetworkBuffer
from flinknet._core.memory import MemorySegment
from flinknet.checkpointing import (
    ChannelStatePersister,
    CheckpointFailure,
    CheckpointFailureReason,
    InMemoryChannelStateWriter,
)
from flinknet.consumer import InputChannelInfo
from tests.checkpointing.harness import UNALIGNED, barrier

INFO = InputChannelInfo(0, 1)


def buf(data: bytes = b"abcd") -> NetworkBuffer:
    return NetworkBuffer(MemorySegment.wrap_copy(data), FREEING_BUFFER_RECYCLER, DataType.DATA_BUFFER, len(data))


def test_persists_until_the_barrier():
    writer = InMemoryChannelStateWriter()
    p = ChannelStatePersister(INFO, writer)
    b = buf()
    assert p.maybe_persist(b) == 0                   # nothing started
    p.start_persisting(1)
    assert p.is_persisting
    assert p.maybe_persist(b) == 4
    assert b.ref_count == 1                          # the writer copied it and gave its reference back
    assert p.check_for_barrier(barrier(1, UNALIGNED)) == 1
    assert p.maybe_persist(b) == 0
    b.recycle()
    result = writer.get_and_remove_write_result(1)
    assert result.channel_bytes(INFO) == b"abcd"
    result.recycle()
    writer.close()


def test_new_barrier_not_overwritten_by_stop_persisting():
    p = ChannelStatePersister(INFO, InMemoryChannelStateWriter())
    p.check_for_barrier(barrier(2, UNALIGNED))
    p.stop_persisting(1)                             # an older checkpoint ends
    assert p.last_seen_barrier == 2
    p.start_persisting(2)
    assert not p.is_persisting                       # its barrier was already taken here


def test_new_barrier_not_overwritten_by_check_for_barrier():
    p = ChannelStatePersister(INFO, InMemoryChannelStateWriter())
    p.start_persisting(2)
    assert p.check_for_barrier(barrier(1, UNALIGNED)) is None   # late barrier of an older one
    assert p.is_persisting and p.last_seen_barrier == 2


def test_late_barrier_on_started_and_cancelled_checkpoint():
    p = ChannelStatePersister(INFO, InMemoryChannelStateWriter())
    p.start_persisting(1)
    p.stop_persisting(1)
    assert p.check_for_barrier(barrier(1, UNALIGNED)) is None
    assert not p.is_persisting


def test_newer_barrier_seen_before_an_older_checkpoint_starts():
    p = ChannelStatePersister(INFO, InMemoryChannelStateWriter())
    p.check_for_barrier(barrier(3, UNALIGNED))
    p.start_persisting(2)
    assert not p.is_persisting and p.last_seen_barrier == 3


def test_writer_abort_recycles_and_close_recycles_the_rest():
    writer = InMemoryChannelStateWriter()
    a, b = buf(), buf(b"xy")
    writer.start(1, UNALIGNED)
    writer.add_input_data(1, INFO, -1, [a.retain()])
    writer.add_input_data(2, INFO, -1, [b.retain()])
    writer.abort(1, CheckpointFailure(CheckpointFailureReason.CHECKPOINT_DECLINED_SUBSUMED, 1), True)
    assert a.ref_count == 1
    assert writer.checkpoint_ids == [2]
    writer.close()
    assert b.ref_count == 1
    a.recycle()
    b.recycle()


def test_failure_reason_messages_are_flinks():
    f = CheckpointFailure(CheckpointFailureReason.CHECKPOINT_DECLINED_ON_CANCELLATION_BARRIER, 7)
    assert f.message == "Task received cancellation from one of its inputs"
    assert "checkpoint 7" in str(f)


def test_writer_start_drops_unfinished_older_checkpoints():
    writer = InMemoryChannelStateWriter()
    a, b = buf(), buf()
    writer.start(1, UNALIGNED)
    writer.add_input_data(1, INFO, -1, [a.retain()])
    writer.start(2, UNALIGNED)
    writer.add_input_data(2, INFO, -1, [b.retain()])
    writer.finish_input(2)
    assert a.ref_count == 1 and writer.checkpoint_ids == [2]
    writer.start(3, UNALIGNED)                       # 2 finished: kept for its taker
    assert writer.checkpoint_ids == [2, 3]
    writer.close()
    a.recycle()
    b.recycle()
