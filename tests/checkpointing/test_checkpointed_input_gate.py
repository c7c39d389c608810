"""The checkpointed gate itself (Flink's ``CheckpointedInputGateTest`` cases that apply), the
factory, the metrics registration, union gates, a RecordReader reading through it, and the
aligned and unaligned paths over TCP between two environments (ResumeConsumption on the wire).
"""

from __future__ import annotations

import time

import pytest

from flinknet import NetworkEnvironment, RecordReader
from flinknet.checkpointing import (
    CheckpointBarrierTracker,
    CheckpointedInputGate,
    CheckpointingMode,
    InMemoryChannelStateWriter,
    ManualClock,
    SingleCheckpointBarrierHandler,
    create_checkpointed_input_gate,
    register_checkpoint_metrics,
)
from flinknet.consumer import InputChannelInfo, SingleInputGate, UnionInputGate
from flinknet.events import CheckpointBarrier, EndOfData, StopMode
from flinknet.metrics import MetricRegistry
from flinknet.partition import ResultPartitionManager, create_result_partition
from tests.checkpointing.harness import (
    ALIGNED,
    EOP,
    RECORD_BYTES,
    UNALIGNED,
    RecordingTask,
    barrier,
    encode,
    records_of,
    timeoutable,
)

SMALL = {"taskmanager.memory.segment-size": "4kb", "taskmanager.memory.network.max": "2mb"}


def test_end_of_data_acknowledges_all_records_processed(harness):
    """Flink's CheckpointedInputGate acknowledges EndOfData on its channel."""
    h = harness(2)
    h.step(0, 1, EndOfData(StopMode.DRAIN))
    assert not h.partition.get_all_data_processed_future().done()
    h.step(1, EndOfData(StopMode.DRAIN))
    assert h.partition.get_all_data_processed_future().done()


def test_finished_after_every_end_of_partition(harness):
    h = harness(2)
    h.step(0, 1, EOP)
    assert not h.cgate.is_finished
    h.step(1, EOP)
    assert h.cgate.poll_next() is None
    assert h.cgate.is_finished
    assert h.handler.num_open_channels == 0
    assert h.cgate.get_all_barriers_received_future(5).done()   # nothing open: nothing to wait for


def test_all_barriers_received_future(harness):
    h = harness(2, "unaligned")
    h.step(0, barrier(1, UNALIGNED))
    f = h.cgate.get_all_barriers_received_future(1)
    assert not f.done()
    with pytest.raises(Exception, match="has not been started"):
        h.cgate.get_all_barriers_received_future(2)
    h.step(1, barrier(1, UNALIGNED))
    assert f.done() and f.result() is None
    h.step(0, barrier(2, UNALIGNED))
    f2 = h.cgate.get_all_barriers_received_future(2)
    h.step(1, barrier(3, UNALIGNED))     # subsumes 2
    assert f2.result().checkpoint_id == 2
    assert h.cgate.get_all_barriers_received_future(1).done()
    assert h.cgate.latest_checkpoint_id == 3


def test_record_reader_reads_through_the_checkpointed_gate(make_pool):
    nbp = make_pool(64, 128)
    manager = ResultPartitionManager()
    p = create_result_partition(nbp, 2, partition_manager=manager)
    p.setup()
    gate = SingleInputGate.create_local(manager, [(p.partition_id, 0), (p.partition_id, 1)])
    task = RecordingTask()
    cgate = create_checkpointed_input_gate(gate, task)
    reader = RecordReader(cgate, emit_events=True)
    try:
        for i in range(5):
            p.emit_record(encode(i), 0)
            p.emit_record(encode(10 + i), 1)
        p.broadcast_event(barrier(1))
        for i in range(5, 8):
            p.emit_record(encode(i), 0)
        p.finish()
        got = list(reader)
        events = [x.event for x in got if not isinstance(x, bytes)]
        assert sum(isinstance(e, CheckpointBarrier) for e in events) == 2
        assert task.triggered_ids == [1]
        assert len([x for x in got if isinstance(x, bytes)]) == 13
    finally:
        reader.close()
        cgate.close()
        p.close()
        manager.shutdown()


def test_union_gate_aligns_across_member_gates(make_pool):
    nbp = make_pool(64, 128)
    manager = ResultPartitionManager()
    p1 = create_result_partition(nbp, 2, partition_manager=manager)
    p2 = create_result_partition(nbp, 1, partition_manager=manager)
    p1.setup()
    p2.setup()
    g1 = SingleInputGate.create_local(manager, [(p1.partition_id, 0), (p1.partition_id, 1)], gate_index=0)
    g2 = SingleInputGate.create_local(manager, [(p2.partition_id, 0)], gate_index=1)
    union = UnionInputGate(g1, g2)
    task = RecordingTask()
    writer = InMemoryChannelStateWriter()
    cgate = create_checkpointed_input_gate(union, task, CheckpointingMode.UNALIGNED, channel_state_writer=writer)
    assert cgate.channel_infos == [InputChannelInfo(0, 0), InputChannelInfo(0, 1), InputChannelInfo(1, 0)]

    def drain():
        out = []
        while (boe := cgate.poll_next()) is not None:
            if boe.is_buffer:
                out.append((tuple(boe.channel_info), records_of(boe.buffer.to_bytes())))
                boe.buffer.recycle()
        return out

    try:
        p2.emit_event(barrier(1), 0)
        drain()
        assert p2.subpartitions[0].is_blocked
        p2.emit_record(encode(99), 0)
        p2.flush(0)
        p1.emit_record(encode(1), 0)
        p1.flush(0)
        p1.broadcast_event(barrier(1))
        out = drain()
        assert task.triggered_ids == [1]
        assert ((1, 0), [99]) in out          # resumed on the right member gate
        assert not p1.subpartitions[0].is_blocked and not p1.subpartitions[1].is_blocked
        # unaligned across the union: gate 1's data captured
        p1.broadcast_event(barrier(2, UNALIGNED))
        drain()
        p2.emit_record(encode(5), 0)
        p2.flush(0)
        p2.emit_event(barrier(2, UNALIGNED), 0)
        drain()
        result = writer.get_and_remove_write_result(2)
        assert result.input_finished
        assert [records_of(b.to_bytes()) for b in result.input_data[InputChannelInfo(1, 0)]] == [[5]]
        result.recycle()
    finally:
        writer.close()
        cgate.close()
        for p in (p1, p2):
            p.release()
            p.close()
        manager.shutdown()


def test_factory_modes_and_validation(make_pool):
    nbp = make_pool(16, 128)
    manager = ResultPartitionManager()
    p = create_result_partition(nbp, 1, partition_manager=manager)
    p.setup()
    gate = SingleInputGate.create_local(manager, [(p.partition_id, 0)])
    task = RecordingTask()
    try:
        assert isinstance(create_checkpointed_input_gate(gate, task, "at-least-once").barrier_handler,
                          CheckpointBarrierTracker)
        h = create_checkpointed_input_gate(gate, task, "aligned").barrier_handler
        assert isinstance(h, SingleCheckpointBarrierHandler) and not h.is_alternating
        with pytest.raises(ValueError, match="channel_state_writer"):
            create_checkpointed_input_gate(gate, task, "unaligned")
        with pytest.raises(ValueError, match="mode"):
            create_checkpointed_input_gate(gate, task, "exactly-twice")
        with pytest.raises(TypeError):
            CheckpointedInputGate(object(), h)  # type: ignore[arg-type]
    finally:
        gate.close()
        p.release()
        p.close()
        manager.shutdown()


def test_register_checkpoint_metrics(harness):
    h = harness(2)
    registry = MetricRegistry(start=False)
    try:
        group = registry.group("task")
        register_checkpoint_metrics(group, h.cgate)
        t0 = h.clock.absolute_time_millis()
        h.clock.advance_millis(3)
        h.step(0, barrier(1, ts=t0))
        h.clock.advance_millis(2)
        h.step(1, 1, barrier(1, ts=t0))
        snap = {k.rsplit(".", 1)[-1]: v for k, v in group.snapshot().items()}
        assert snap["checkpointAlignmentTime"] == 2_000_000
        assert snap["checkpointStartDelayNanos"] == 3_000_000
        assert snap["checkpointBytesProcessedDuringAlignment"] == RECORD_BYTES
        assert snap["checkpointBytesPersistedDuringAlignment"] == 0
        with pytest.raises(TypeError):
            register_checkpoint_metrics(registry.group("other"), object())  # type: ignore[arg-type]
    finally:
        registry.close()


def test_alignment_metrics_reach_the_prometheus_export(harness):
    """The alignment gauges of a task group, as Prometheus scrapes them (Flink's names under
    the task scope, with the task's labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    from flinknet.metrics.prometheus import render_prometheus_text

    h = harness(2)
    registry = MetricRegistry(start=False)
    try:
        register_checkpoint_metrics(registry.task_group("map", 1, host="127.0.0.1"), h.cgate)
        t0 = h.clock.absolute_time_millis()
        h.clock.advance_millis(3)
        h.step(0, barrier(1, ts=t0))
        h.clock.advance_millis(2)
        h.step(1, 1, barrier(1, ts=t0))
        fams = {f.name: f for f in text_string_to_metric_families(render_prometheus_text(registry))}
        prefix = "flinknet_taskmanager_job_task_"
        values = {name: fams[prefix + name].samples[0] for name in (
            "checkpointAlignmentTime", "checkpointStartDelayNanos",
            "checkpointBytesProcessedDuringAlignment", "checkpointBytesPersistedDuringAlignment")}
        assert values["checkpointAlignmentTime"].value == 2_000_000
        assert values["checkpointStartDelayNanos"].value == 3_000_000
        assert values["checkpointBytesProcessedDuringAlignment"].value == RECORD_BYTES
        sample = values["checkpointAlignmentTime"]
        assert sample.labels["task_name"] == "map" and sample.labels["subtask_index"] == "1"
    finally:
        registry.close()


def test_close_cancels_the_alignment_timer(harness):
    h = harness(2, "alternating", clock=ManualClock(0))
    h.step(0, barrier(1, timeoutable(5), ts=0))
    assert h.handler.timer_service.pending == 1
    h.cgate.close()
    assert h.handler.timer_service.pending == 0


# -- over TCP ------------------------------------------------------------------------------------

def _read_until(cgate, pred, timeout=30.0):
    """Read (recycling buffers) until ``pred(log)``; the log of (channel, records|event)."""
    log = []
    deadline = time.monotonic() + timeout
    while not pred(log):
        remaining = deadline - time.monotonic()
        assert remaining > 0, log
        try:
            boe = cgate.get_next(timeout=min(remaining, 0.2))
        except TimeoutError:
            continue
        if boe is None:
            break
        ch = boe.channel_info.input_channel_idx
        if boe.is_buffer:
            log.append((ch, records_of(boe.buffer.to_bytes())))
            boe.buffer.recycle()
        else:
            log.append((ch, boe.event))
    return log


@pytest.mark.parametrize("mode", ["aligned", "unaligned"])
def test_barriers_over_tcp(mode):
    """Two environments over loopback: the aligned barrier stops the sender's queue until the
    handler sends ResumeConsumption; unaligned barriers block nothing and capture channel 1's
    in-flight data."""
    with NetworkEnvironment(SMALL) as producer_env, NetworkEnvironment(SMALL) as consumer_env:
        p = producer_env.create_result_partition(2)
        gate = consumer_env.create_input_gate([(p.partition_id, i, producer_env.address) for i in range(2)])
        task = RecordingTask()
        writer = InMemoryChannelStateWriter()
        cgate = create_checkpointed_input_gate(gate, task, "unaligned", channel_state_writer=writer)
        options = ALIGNED if mode == "aligned" else UNALIGNED
        try:
            p.emit_record(encode(1), 0)
            p.emit_event(barrier(1, options), 0)
            p.emit_record(encode(2), 0)        # behind the barrier
            p.flush(0)
            log = _read_until(cgate, lambda log: any(isinstance(e, CheckpointBarrier) for _, e in log))
            time.sleep(0.3)
            while (boe := cgate.poll_next()) is not None:
                if boe.is_buffer:
                    log.append((boe.channel_info.input_channel_idx, records_of(boe.buffer.to_bytes())))
                    boe.buffer.recycle()
            if mode == "aligned":
                assert (0, [2]) not in log, log      # held back by the sender
                assert task.triggers == []
            else:
                assert (0, [2]) in log, log
                assert task.triggered_ids == [1]
            p.emit_record(encode(3), 1)
            p.emit_event(barrier(1, options), 1)
            p.flush(1)
            before = list(log)
            log += _read_until(cgate, lambda new: (0, [2]) in before + new and any(
                ch == 1 and isinstance(e, CheckpointBarrier) for ch, e in new))
            assert task.triggered_ids == [1]
            result = writer.get_and_remove_write_result(1)
            try:
                if mode == "aligned":
                    assert result.input_data == {}
                else:
                    assert result.input_finished
                    assert [records_of(b.to_bytes()) for b in result.input_data[InputChannelInfo(0, 1)]] == [[3]]
            finally:
                result.recycle()
            p.finish()
            _read_until(cgate, lambda log: False)
            assert cgate.is_finished
        finally:
            writer.close()
            cgate.close()


def test_process_priority_events_takes_the_unaligned_barrier_ahead_of_queued_data(harness):
    """Flink's processPriorityEvents: the priority barrier is handled before the data queued
    ahead of it in the gate; that data stays queued for the normal input."""
    h = harness(2, "unaligned")
    h.cgate.request_partitions()         # the views exist: a priority event is announced
    h.push(0, 1, 2)
    h.push(1, 3)
    assert h.cgate.process_priority_events() == []
    h.push(1, ("priority", barrier(1, UNALIGNED)))
    taken = h.cgate.process_priority_events()
    assert [type(b.event).__name__ for b in taken] == ["CheckpointBarrier"]
    assert h.task.triggered_ids == [1]
    assert h.task.triggers[0].seen == {0: [], 1: []}
    h.drain()
    h.step(0, barrier(1, UNALIGNED))
    assert h.captured(1) == {0: [1, 2]}     # channel 1's overtaken record is producer state
    assert h.seen == {0: [1, 2], 1: [3]}


def test_a_remote_channel_hands_out_a_priority_barrier_before_the_data_it_already_received():
    """Flink's RemoteInputChannel.onBuffer puts a priority event at the head of the received
    queue: the unaligned barrier the sender sent ahead of its queued data is read before the
    buffers this channel had received (and not yet handed out) when it arrived."""
    with NetworkEnvironment(SMALL) as producer_env, NetworkEnvironment(SMALL) as consumer_env:
        p = producer_env.create_result_partition(1)
        gate = consumer_env.create_input_gate([(p.partition_id, 0, producer_env.address)])
        gate.request_partitions()
        channel = gate.input_channels[0]
        n = 40
        for i in range(n):
            p.emit_record(encode(i), 0)
            p.flush(0)                         # one buffer per record
        deadline = time.monotonic() + 30
        while channel.queue.queued_buffers < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        received_before = channel.queue.queued_buffers
        assert received_before >= 1            # data waiting in the channel, not read
        p.broadcast_event(barrier(7, UNALIGNED), is_priority=True)
        priority = gate.get_priority_event_available_future()
        priority.result(timeout=30)
        boe = gate.get_next(timeout=30)
        assert not boe.is_buffer and isinstance(boe.event, CheckpointBarrier), boe
        assert boe.event.id == 7
        got = []
        p.finish()
        while (boe := gate.get_next(timeout=30)) is not None:
            if boe.is_buffer:
                got += records_of(boe.buffer.to_bytes())
                boe.buffer.recycle()
        assert got == list(range(n))           # the data in order, none lost
        gate.close()
        p.close()
    assert producer_env.network_buffer_pool.is_whole and consumer_env.network_buffer_pool.is_whole
