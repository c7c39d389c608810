"""The producer side of an unaligned checkpoint (Flink's ``PipelinedSubpartition
.processPriorityBuffer``): a priority barrier overtakes the data queued in a subpartition, and
that data is handed to the partition's channel state writer as in-flight output — in process
(the Python queue) and over TCP (the native engine's output queue), with pools whole after."""

from __future__ import annotations

import time

import pytest

from flinknet import NetworkEnvironment
from flinknet.checkpointing import InMemoryChannelStateWriter
from flinknet.events import CancelCheckpointMarker, CheckpointBarrier
from flinknet.partition import ResultSubpartitionInfo, create_result_partition
from tests.checkpointing.harness import ALIGNED, UNALIGNED, barrier, encode, records_of

SMALL = {"taskmanager.memory.segment-size": "4kb", "taskmanager.memory.network.max": "2mb"}
# The producers' environment: a partition's pool (1 x 2 + 30 buffers, 64 per subpartition) holds
# all the data these tests emit, so emitting never blocks. These tests produce and consume on one
# thread: with Flink's default pool of 10, a producer whose receiver held back its credits
# blocked the thread that would have read (how the debug pass hung in CI).
PRODUCER = {**SMALL, "taskmanager.network.memory.floating-buffers-per-gate": 30,
            "taskmanager.network.memory.max-buffers-per-channel": 64}


class _Listener:
    def notify_data_available(self, view):
        pass

    def notify_priority_event(self, sequence_number):
        pass


def _drain(view):
    """Everything the view hands out: ('event', event) or ('data', records)."""
    from flinknet.events import from_buffer

    out = []
    while (b := view.get_next_buffer()) is not None:
        buf = b.buffer
        if buf.data_type.is_buffer:
            out.append(("data", records_of(buf.to_bytes())))
        else:
            out.append(("event", from_buffer(buf)))
        buf.recycle()
    return out


@pytest.fixture
def partition(make_pool):
    nbp = make_pool(64, 128)
    p = create_result_partition(nbp, 2, partition_index=3)
    p.setup()
    yield p
    p.close()


def test_an_unaligned_barrier_hands_the_data_it_overtakes_to_the_writer(partition):
    p = partition
    writer = InMemoryChannelStateWriter()
    p.set_channel_state_writer(writer)
    views = [sp.create_read_view(_Listener()) for sp in p.subpartitions]
    for i in range(40):
        p.emit_record(encode(i), i % 2)       # 8 records a buffer: several buffers each, one open
    p.flush(0)
    first = views[0].get_next_buffer()        # subpartition 0's reader took one buffer already
    taken = records_of(first.buffer.to_bytes())
    first.buffer.recycle()
    p.broadcast_event(barrier(5, UNALIGNED), is_priority=True)
    writer.finish_output(5)
    result = writer.get_and_remove_write_result(5)
    try:
        assert result.output_finished
        for sp, view in enumerate(views):
            seen = _drain(view)
            assert seen[0] == ("event", barrier(5, UNALIGNED))      # the barrier first
            after = [r for kind, recs in seen[1:] if kind == "data" for r in recs]
            captured = records_of(result.subpartition_bytes(ResultSubpartitionInfo(3, sp)))
            # exactly the records the barrier overtook: all of them but those read before it
            assert captured == after
            expected = list(range(sp, 40, 2))
            assert (taken if sp == 0 else []) + after == expected
        assert set(result.output_data) == {ResultSubpartitionInfo(3, 0), ResultSubpartitionInfo(3, 1)}
    finally:
        result.recycle()
        writer.close()


@pytest.mark.parametrize("event, priority", [
    (barrier(6, ALIGNED), False),                # aligned: behind the data, nothing captured
    (barrier(6, UNALIGNED), False),              # not a priority event: in order
    (CancelCheckpointMarker(6), True),           # a priority event that is not a barrier
])
def test_only_a_priority_unaligned_barrier_captures(partition, event, priority):
    p = partition
    writer = InMemoryChannelStateWriter()
    p.set_channel_state_writer(writer)
    views = [sp.create_read_view(_Listener()) for sp in p.subpartitions]
    for i in range(20):
        p.emit_record(encode(i), i % 2)
    p.broadcast_event(event, is_priority=priority)
    assert writer.checkpoint_ids == []
    for view in views:
        _drain(view)
    writer.close()


def test_without_a_writer_nothing_is_captured_and_the_emit_event_form_captures_one(partition):
    p = partition
    views = [sp.create_read_view(_Listener()) for sp in p.subpartitions]
    for i in range(10):
        p.emit_record(encode(i), 0)
    p.broadcast_event(barrier(1, UNALIGNED), is_priority=True)      # no writer: fine
    writer = InMemoryChannelStateWriter()
    p.set_channel_state_writer(writer)
    for i in range(10, 20):
        p.emit_record(encode(i), 1)
    p.emit_event(barrier(2, UNALIGNED), 1, is_priority=True)
    result = writer.get_and_remove_write_result(2)
    try:
        assert list(result.output_data) == [ResultSubpartitionInfo(3, 1)]
        assert records_of(result.subpartition_bytes(ResultSubpartitionInfo(3, 1))) == list(range(10, 20))
    finally:
        result.recycle()
    for view in views:
        _drain(view)
    with pytest.raises(TypeError, match="add_output_data"):
        p.set_channel_state_writer(object())


def test_a_failing_writer_gets_nothing_and_leaks_nothing(partition):
    p = partition

    class Failing:
        def add_output_data(self, *args):
            raise RuntimeError("disk full")

        def finish_output(self, checkpoint_id):
            pass

    p.set_channel_state_writer(Failing())
    views = [sp.create_read_view(_Listener()) for sp in p.subpartitions]
    for i in range(10):
        p.emit_record(encode(i), 0)
    with pytest.raises(RuntimeError, match="disk full"):
        p.broadcast_event(barrier(3, UNALIGNED), is_priority=True)
    for view in views:
        _drain(view)                       # the partition fixture's pool check: nothing leaked


def test_over_tcp_the_native_queue_hands_over_the_data_the_barrier_overtakes():
    """The subpartition is served by the engine's output queue: the consumer holds back (no
    credit), data waits in the queue, the priority barrier jumps it and captures it."""
    with NetworkEnvironment(PRODUCER) as pe, NetworkEnvironment(SMALL) as ce:
        p = pe.create_result_partition(1)
        writer = InMemoryChannelStateWriter()
        p.set_channel_state_writer(writer)
        gate = ce.create_input_gate([(p.partition_id, 0, pe.address)])
        gate.request_partitions()
        # 48 KiB in 2.4 KiB flushes: the consumer's 10 credits take 24 KiB, the rest waits in
        # the producer's queue (its pool holds it all: emitting never blocks)
        n = 3000
        for i in range(n):
            p.emit_record(encode(i), 0)
            if i % 150 == 149:
                p.flush(0)
        time.sleep(0.3)                       # the credit's worth is sent, the rest waits
        assert p.subpartitions[0]._outq is not None     # served by the engine's output queue
        p.broadcast_event(barrier(9, UNALIGNED), is_priority=True)
        writer.finish_output(9)
        p.finish()
        result = writer.get_and_remove_write_result(9)
        try:
            captured = records_of(result.subpartition_bytes(ResultSubpartitionInfo(0, 0)))
            assert captured, "nothing was waiting: the test did not exercise the capture"
            before, after, seen_barrier = [], [], False
            while (boe := gate.get_next(timeout=30)) is not None:
                if boe.is_buffer:
                    (after if seen_barrier else before).extend(records_of(boe.buffer.to_bytes()))
                    boe.buffer.recycle()
                elif isinstance(boe.event, CheckpointBarrier):
                    seen_barrier = True
            assert seen_barrier and before + after == list(range(n))
            # what the consumer got after the barrier: the data its channel had received before
            # the barrier (the consumer's in-flight input) followed by the producer's captured
            # output, which is the tail of the stream
            assert after[len(after) - len(captured):] == captured
            assert captured == list(range(n - len(captured), n))
        finally:
            result.recycle()
            writer.close()
            gate.close()
        p.close()
    assert pe.network_buffer_pool.is_whole and ce.network_buffer_pool.is_whole


class _CutTask:
    """Snapshots how many records it processed when the checkpoint triggers (its "state")."""

    def __init__(self):
        self.processed = []
        self.cuts = {}

    def trigger_checkpoint_on_barrier(self, metadata, options, metrics):
        self.cuts[metadata.checkpoint_id] = {ch: len(v) for ch, v in self.by_channel().items()}

    def abort_checkpoint_on_barrier(self, checkpoint_id, cause):
        raise AssertionError(f"checkpoint {checkpoint_id} aborted: {cause}")

    def take(self, cgate):
        """Read the next buffer or event; a buffer's records are processed (and it recycled)."""
        boe = cgate.get_next(timeout=30)
        assert boe is not None
        if boe.is_buffer:
            ch = boe.channel_info.input_channel_idx
            self.processed += [(ch, r) for r in records_of(boe.buffer.to_bytes())]
            boe.buffer.recycle()
        return boe

    def by_channel(self):
        out = {0: [], 1: []}
        for ch, r in self.processed:
            out[ch].append(r)
        return out


@pytest.mark.parametrize("read_first", [0, 3])
def test_unaligned_checkpoint_over_tcp_captures_every_in_flight_record_exactly_once(read_first):
    """Two producers, each behind a consumer that has not read what it holds: an unaligned
    barrier overtakes the producers' queued data (their output channel state) and, at the
    consumer, the data its channels had received (its input channel state, by sequence number).
    Per channel: the records processed before the snapshot + the input state + the output state
    are exactly the records emitted before the barrier, in order, each once."""
    from flinknet.checkpointing import create_checkpointed_input_gate
    from flinknet.consumer import InputChannelInfo

    with NetworkEnvironment(PRODUCER) as pe, NetworkEnvironment(SMALL) as ce:
        parts = [pe.create_result_partition(1, partition_index=k) for k in range(2)]
        out_writer = InMemoryChannelStateWriter()
        for p in parts:
            p.set_channel_state_writer(out_writer)
        gate = ce.create_input_gate([(p.partition_id, 0, pe.address) for p in parts])
        task = _CutTask()
        in_writer = InMemoryChannelStateWriter()
        cgate = create_checkpointed_input_gate(gate, task, "unaligned", channel_state_writer=in_writer)
        cgate.request_partitions()
        n, m = 3000, 200
        try:
            for k, p in enumerate(parts):
                for i in range(n):
                    p.emit_record(encode(k * 100_000 + i), 0)
                    if i % 150 == 149:
                        p.flush(0)
            time.sleep(0.3)

            def read_one():
                return task.take(cgate)

            def barrier_arrived():
                gate.get_priority_event_available_future().result(timeout=30)

            for _ in range(read_first):
                read_one()
            # producer 0's barrier overtakes its queue and, at the consumer, what channel 0 holds
            parts[0].broadcast_event(barrier(4, UNALIGNED), is_priority=True)
            out_writer.finish_output(4)
            for i in range(n, n + m):
                parts[0].emit_record(encode(i), 0)
            parts[0].flush(0)
            barrier_arrived()
            boe = read_one()                  # the barrier first: the checkpoint starts
            assert isinstance(boe.event, CheckpointBarrier)
            for _ in range(12):               # channel 1's data, captured or not, and channel 0's
                read_one()
            time.sleep(0.2)                   # channel 1 receives more pre-barrier data meanwhile
            parts[1].broadcast_event(barrier(4, UNALIGNED), is_priority=True)
            for i in range(n, n + m):
                parts[1].emit_record(encode(100_000 + i), 0)
            parts[1].flush(0)
            barrier_arrived()
            for p in parts:
                p.finish()
            while not cgate.is_finished:
                read_one()
            assert set(task.cuts) == {4}
            got = task.by_channel()
            ins = in_writer.get_and_remove_write_result(4)
            outs = out_writer.get_and_remove_write_result(4)
            try:
                assert ins.input_finished
                for k in range(2):
                    before = got[k][:task.cuts[4][k]]
                    in_state = records_of(ins.channel_bytes(InputChannelInfo(0, k)))
                    out_state = records_of(outs.subpartition_bytes(ResultSubpartitionInfo(k, 0)))
                    emitted_before = [k * 100_000 + i for i in range(n)]
                    assert before + in_state + out_state == emitted_before, (
                        k, len(before), len(in_state), len(out_state))
                    assert got[k] == emitted_before + [k * 100_000 + i for i in range(n, n + m)]
                assert outs.size > 0 and ins.size > 0      # both sides really held data
            finally:
                ins.recycle()
                outs.recycle()
        finally:
            cgate.close()
            in_writer.close()
            out_writer.close()
        for p in parts:
            p.close()
    assert pe.network_buffer_pool.is_whole and ce.network_buffer_pool.is_whole


def test_a_timed_out_alignment_over_tcp_makes_the_announced_barrier_overtake_and_captures_by_sequence():
    """Flink's announcement path: a barrier whose alignment may time out is queued in order at
    a remote channel and announced ahead of the data (EventAnnouncement). Once the alignment
    timed out, the handler converts it to a priority event: it overtakes the channel's queued
    data, which is captured by sequence number as in-flight input; nothing lost, nothing twice."""
    from flinknet.checkpointing import SystemClock, create_checkpointed_input_gate
    from flinknet.consumer import InputChannelInfo
    from flinknet.events import EventAnnouncement
    from tests.checkpointing.harness import timeoutable

    with NetworkEnvironment(PRODUCER) as pe, NetworkEnvironment(SMALL) as ce:
        parts = [pe.create_result_partition(1, partition_index=k) for k in range(2)]
        gate = ce.create_input_gate([(p.partition_id, 0, pe.address) for p in parts])
        task = _CutTask()
        writer = InMemoryChannelStateWriter()
        cgate = create_checkpointed_input_gate(gate, task, "unaligned", channel_state_writer=writer,
                                               clock=SystemClock())
        cgate.request_partitions()
        n = 1500
        try:
            for i in range(n):                       # channel 1: data queued at the consumer
                parts[1].emit_record(encode(100_000 + i), 0)
                if i % 150 == 149:
                    parts[1].flush(0)
            time.sleep(0.3)
            now = int(time.time() * 1000)
            options = timeoutable(50)
            for p in parts:
                p.broadcast_event(barrier(2, options, now))
                p.flush(0)
            gate.get_priority_event_available_future().result(timeout=30)   # the announcement
            time.sleep(0.2)                          # past the 50 ms alignment timeout
            seen_announcement = False
            while 2 not in task.cuts:
                boe = task.take(cgate)
                if not boe.is_buffer and isinstance(boe.event, EventAnnouncement):
                    seen_announcement = True
            cut = task.cuts[2][1]
            assert cut < n                            # the snapshot came before channel 1's data
            assert seen_announcement
            for p in parts:
                p.finish()
            while not cgate.is_finished:
                task.take(cgate)
            got = task.by_channel()
            assert got[1] == [100_000 + i for i in range(n)]
            result = writer.get_and_remove_write_result(2)
            try:
                assert result.options is not None and result.options.is_unaligned
                in_state = records_of(result.channel_bytes(InputChannelInfo(0, 1)))
                assert got[1][:cut] + in_state == [100_000 + i for i in range(n)]
                assert in_state
            finally:
                result.recycle()
        finally:
            cgate.close()
            writer.close()
        for p in parts:
            p.close()
    assert pe.network_buffer_pool.is_whole and ce.network_buffer_pool.is_whole


def test_a_record_spanning_the_cut_is_in_the_channel_state_whole(make_pool):
    """Flink's prepareInflightDataSnapshot / getUnconsumedBuffer: when an unaligned checkpoint
    starts while a reader holds part of a record that spans buffers, that part goes to the
    channel state first and the rest follows as captured data: restored, the channel's state
    starts at a record boundary and gives the record whole."""
    import struct

    from flinknet import RecordReader
    from flinknet.checkpointing import create_checkpointed_input_gate
    from flinknet.consumer import InputChannelInfo, SingleInputGate
    from flinknet.partition import ResultPartitionManager

    nbp = make_pool(32, 128)
    manager = ResultPartitionManager()
    p = create_result_partition(nbp, 2, partition_manager=manager)
    p.setup()
    gate = SingleInputGate.create_local(manager, [(p.partition_id, 0), (p.partition_id, 1)])
    writer = InMemoryChannelStateWriter()

    class Task:
        reader = None
        triggered = []

        def trigger_checkpoint_on_barrier(self, metadata, options, metrics):
            self.triggered.append(metadata.checkpoint_id)

        def abort_checkpoint_on_barrier(self, checkpoint_id, cause):
            raise AssertionError(cause)

        def prepare_input_snapshot(self, channel_state_writer, checkpoint_id):
            self.reader.prepare_snapshot(channel_state_writer, checkpoint_id)

    task = Task()
    cgate = create_checkpointed_input_gate(gate, task, "unaligned", channel_state_writer=writer)
    reader = task.reader = RecordReader(cgate)
    record = bytes(i % 251 for i in range(300))      # spans three 128-byte buffers
    try:
        p.emit_record(record, 0)                     # two buffers finished, the third open
        assert reader.read_batch(timeout=5) == [] and reader.read_batch(timeout=5) == []
        p.emit_event(barrier(1, UNALIGNED), 1, is_priority=True)
        assert reader.read_batch(timeout=5) == []    # the barrier: the checkpoint starts
        assert task.triggered == [1]
        p.flush(0)
        assert reader.read_batch(timeout=5) == [record]
        p.emit_event(barrier(1, UNALIGNED), 0, is_priority=True)
        assert reader.read_batch(timeout=5) == []
        result = writer.get_and_remove_write_result(1)
        try:
            assert result.input_finished
            assert result.channel_bytes(InputChannelInfo(0, 0)) == struct.pack(">i", 300) + record
            assert result.channel_bytes(InputChannelInfo(0, 1)) == b""
        finally:
            result.recycle()
    finally:
        reader.close()
        cgate.close()
        writer.close()
        p.release()
        p.close()
        manager.shutdown()
