"""ResultPartition / PipelinedResultPartition against Flink's rules (Flink's ``ResultPartition``
lifecycle and its ``BufferWritingResultPartition`` record path).

Ports the behaviours of Flink's ``ResultPartitionTest``: producing on a finished or released
partition, records and broadcast records spanning buffers, events after records, the byte and
buffer counters, queued buffers, failing a partition whose producer is blocked on backpressure,
release on consumption, end of data, the all-records-processed future, pool sizing and buffer
debloating (the desired buffer size trims the writer's next buffer).
"""

from __future__ import annotations

import sys
import threading
import time

import pytest

from flinknet import CancelTaskError, ConsumerLostError, IllegalStateError
from flinknet import events as ev
from flinknet.core import DataType, RecordDeserializer
from flinknet.partition import (
    PipelinedResultPartition,
    ResultPartitionManager,
    create_result_partition,
    get_min_max_network_buffers_per_result_partition,
)
from flinknet.partition.result_partition import INT_MAX, ResultPartition
from flinknet.types import ResultPartitionType
from tests.helpers import Worker, pattern

SEGMENT_SIZE = 128
PIPELINED = ResultPartitionType.PIPELINED
PIPELINED_BOUNDED = ResultPartitionType.PIPELINED_BOUNDED


class Listener:
    def __init__(self):
        self.num_notifications = 0

    def notify_data_available(self, view):
        self.num_notifications += 1

    def notify_priority_event(self, sequence_number):
        pass


def poll_all(view):
    """Every buffer the view hands out now, as (data type, bytes); all recycled."""
    out = []
    while (bab := view.get_next_buffer()) is not None:
        try:
            out.append((bab.buffer.data_type, bab.buffer.to_bytes()))
        finally:
            bab.buffer.recycle()
    return out


def read_all(view, deserializer=None):
    """Records and events the view hands out now (records decoded, events decoded)."""
    deserializer = deserializer or RecordDeserializer("bytes")
    out = []
    while (bab := view.get_next_buffer()) is not None:
        buffer = bab.buffer
        if buffer.is_buffer:
            out.extend(deserializer.read_records(buffer))
        else:
            try:
                out.append(ev.from_buffer(buffer))
            finally:
                buffer.recycle()
    return out


class Setup:
    """A partition with views on every subpartition; closes and checks everything at the end."""

    def __init__(self, nbp, n=2, partition_type=PIPELINED_BOUNDED, **kwargs):
        self.nbp = nbp
        self.partition = create_result_partition(nbp, n, partition_type, **kwargs)
        self.partition.setup()
        self.listeners = [Listener() for _ in range(n)]
        self.views = [self.partition.create_subpartition_view(i, self.listeners[i]) for i in range(n)]

    def close(self):
        for view in self.views:
            view.release_all_resources()
        self.partition.close()
        assert self.partition.is_released


@pytest.fixture
def setup(make_pool):
    s = Setup(make_pool(64, SEGMENT_SIZE))
    yield s
    s.close()


# --- producing on a finished / released partition -------------------------------------------------

PRODUCING_CALLS = {
    "emit_record": lambda p: p.emit_record(b"x", 0),
    "emit_records": lambda p: p.emit_records([b"x", b"y"], 0),
    "broadcast_record": lambda p: p.broadcast_record(b"x"),
    "broadcast_emit": lambda p: p.broadcast_emit(b"x"),
    "broadcast_event": lambda p: p.broadcast_event(ev.EndOfSuperstepEvent()),
    "emit_event": lambda p: p.emit_event(ev.EndOfSuperstepEvent(), 0),
    "finish": lambda p: p.finish(),
}


@pytest.mark.parametrize("call", list(PRODUCING_CALLS))
def test_producing_on_finished_partition_fails(setup, call):
    setup.partition.finish()
    with pytest.raises(IllegalStateError, match=r"^Partition already finished\.$"):
        PRODUCING_CALLS[call](setup.partition)
    # Nothing was queued after EndOfPartition.
    for view in setup.views:
        assert [t for t, _ in poll_all(view)] == [DataType.END_OF_PARTITION]


@pytest.mark.parametrize("call", list(PRODUCING_CALLS))
def test_producing_on_released_partition_fails(make_pool, call):
    nbp = make_pool(16, SEGMENT_SIZE)
    partition = create_result_partition(nbp, 2, PIPELINED_BOUNDED)
    cause = RuntimeError("task failed")
    partition.release(cause)
    with pytest.raises(CancelTaskError) as info:
        PRODUCING_CALLS[call](partition)
    assert info.value.__cause__ is cause
    assert partition.failure_cause is cause
    partition.close()
    assert partition.buffer_pool.is_destroyed


# --- records, broadcast, events --------------------------------------------------------------------


def test_record_spanning_several_buffers(setup):
    record = pattern(5 * SEGMENT_SIZE + 17, 7)
    setup.partition.emit_record(b"small", 0)
    setup.partition.emit_record(record, 0)
    setup.partition.emit_record(b"after", 0)
    setup.partition.flush(0)
    buffers = []
    deserializer = RecordDeserializer("bytes")
    records = []
    while (bab := setup.views[0].get_next_buffer()) is not None:
        buffers.append(bab.buffer.size)
        records.extend(deserializer.read_records(bab.buffer))
    assert records == [b"small", record, b"after"]
    total = 3 * 4 + 5 + len(record) + 5
    assert sum(buffers) == total
    assert buffers[:-1] == [SEGMENT_SIZE] * (len(buffers) - 1)
    assert len(buffers) == -(-total // SEGMENT_SIZE)
    assert poll_all(setup.views[1]) == []


def test_broadcast_record_spanning_buffers_reaches_every_subpartition(setup):
    record = pattern(3 * SEGMENT_SIZE + 5, 3)
    setup.partition.emit_record(b"only-0", 0)
    setup.partition.broadcast_record(record)
    setup.partition.broadcast_record(b"tiny")
    setup.partition.finish()
    assert read_all(setup.views[0]) == [b"only-0", record, b"tiny", ev.EndOfPartitionEvent()]
    assert read_all(setup.views[1]) == [record, b"tiny", ev.EndOfPartitionEvent()]


def test_broadcast_record_shares_one_buffer(setup):
    setup.partition.broadcast_record(b"z" * (SEGMENT_SIZE - 4))  # exactly one full buffer
    assert setup.partition.buffer_pool.used_buffers == 1
    bab0 = setup.views[0].get_next_buffer()
    bab1 = setup.views[1].get_next_buffer()
    try:
        assert bab0.buffer.memory_segment is bab1.buffer.memory_segment
    finally:
        bab0.buffer.recycle()
        bab1.buffer.recycle()
    assert setup.partition.buffer_pool.used_buffers == 0


def test_broadcast_event_after_records(setup):
    setup.partition.emit_record(b"a" * 10, 0)
    setup.partition.emit_record(b"b" * 20, 1)
    setup.partition.broadcast_event(ev.EndOfSuperstepEvent())
    setup.partition.emit_record(b"c" * 5, 0)
    setup.partition.finish()
    serialized = ev.to_serialized_event(ev.EndOfSuperstepEvent())
    for view, size, payload in ((setup.views[0], 10, b"a"), (setup.views[1], 20, b"b")):
        buffers = poll_all(view)
        # The open record buffer was finished before the event, which travels alone.
        assert buffers[0] == (DataType.DATA_BUFFER, (size).to_bytes(4, "big") + payload * size)
        assert buffers[1] == (DataType.EVENT_BUFFER, serialized)
        assert buffers[-1][0] == DataType.END_OF_PARTITION
    assert len(buffers) == 3  # subpartition 1: records, event, EndOfPartition


def test_emit_event_into_one_subpartition(setup):
    setup.partition.emit_record(b"r0", 0)
    setup.partition.emit_record(b"r1", 1)
    setup.partition.emit_event(ev.CancelCheckpointMarker(3), 1)
    assert read_all(setup.views[1]) == [b"r1", ev.CancelCheckpointMarker(3)]
    # Subpartition 0 still has its record open (not flushed).
    assert not setup.views[0].get_availability_and_backlog(True).is_available
    assert read_all(setup.views[0]) == [b"r0"]


def test_priority_event_overtakes_records(setup):
    barrier = ev.CheckpointBarrier(7, 1, ev.CheckpointOptions(alignment=ev.AlignmentType.UNALIGNED))
    for i in range(5):
        setup.partition.emit_record(pattern(100, i), 0)
    setup.partition.broadcast_event(barrier, is_priority=True)
    bab = setup.views[0].get_next_buffer()
    try:
        assert bab.buffer.data_type == DataType.PRIORITIZED_EVENT_BUFFER
        assert ev.from_buffer(bab.buffer) == barrier
    finally:
        bab.buffer.recycle()
    assert read_all(setup.views[0]) == [pattern(100, i) for i in range(5)]
    assert read_all(setup.views[1]) == [barrier]


# --- counters -------------------------------------------------------------------------------------


def test_counters_for_unicast(setup):
    p = setup.partition
    p.emit_record(b"x" * (SEGMENT_SIZE - 4), 0)  # exactly one buffer: finished at once
    assert p.total_written_bytes == SEGMENT_SIZE
    assert p.num_bytes_out == SEGMENT_SIZE
    assert p.num_buffers_out == 1
    assert p.num_bytes_produced == [SEGMENT_SIZE, 0]
    assert p.num_records_out == 1

    p.emit_record(b"y" * 6, 1)  # 10 bytes, buffer still open
    assert p.total_written_bytes == SEGMENT_SIZE + 10
    assert p.num_bytes_out == SEGMENT_SIZE  # counted when the buffer is finished
    assert p.num_buffers_out == 1
    p.flush_all()  # a pipelined flush does not finish the buffer
    assert p.num_bytes_out == SEGMENT_SIZE
    p.broadcast_event(ev.EndOfSuperstepEvent())  # finishes it; events are not counted
    assert p.num_bytes_out == SEGMENT_SIZE + 10
    assert p.num_buffers_out == 2
    assert p.num_bytes_produced == [SEGMENT_SIZE, 10]
    for view in setup.views:
        poll_all(view)


def test_counters_for_broadcast(setup):
    p = setup.partition
    p.broadcast_record(b"x" * (SEGMENT_SIZE - 4))
    assert p.total_written_bytes == 2 * SEGMENT_SIZE
    assert p.num_bytes_out == 2 * SEGMENT_SIZE
    assert p.num_buffers_out == 2
    assert p.num_bytes_produced == [SEGMENT_SIZE, SEGMENT_SIZE]

    p.broadcast_record(b"y" * 16)  # 20 bytes, open
    assert p.total_written_bytes == 2 * (SEGMENT_SIZE + 20)
    assert p.num_bytes_out == 2 * SEGMENT_SIZE
    p.finish()
    assert p.num_bytes_out == 2 * (SEGMENT_SIZE + 20)
    assert p.num_buffers_out == 4
    assert p.num_bytes_produced == [SEGMENT_SIZE + 20] * 2
    for view in setup.views:
        poll_all(view)


def test_number_of_queued_buffers(setup):
    p = setup.partition
    assert p.number_of_queued_buffers == 0
    p.emit_record(b"x" * (2 * SEGMENT_SIZE), 0)  # 3 buffers, the last open
    assert p.get_number_of_queued_buffers(0) == 3
    assert p.get_number_of_queued_buffers(1) == 0
    p.emit_record(b"y", 1)
    assert p.number_of_queued_buffers == 4
    p.broadcast_event(ev.EndOfSuperstepEvent())
    assert p.number_of_queued_buffers == 6
    poll_all(setup.views[0])
    assert p.number_of_queued_buffers == 2
    assert p.get_number_of_queued_buffers(1) == 2
    with pytest.raises(ValueError):
        p.get_number_of_queued_buffers(2)
    poll_all(setup.views[1])


# --- failing a back-pressured producer -------------------------------------------------------------


def _wait_until_blocked(thread, timeout=10.0):
    """Until ``thread`` waits on a condition (the pool's buffer future) under ``emit_record``."""
    emit = ResultPartition.emit_record.__code__
    wait = threading.Condition.wait.__code__
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        codes = []
        frame = sys._current_frames().get(thread.ident)
        while frame is not None:
            codes.append(frame.f_code)
            frame = frame.f_back
        if emit in codes and wait in codes:
            return
        if not thread.is_alive():
            break
        time.sleep(0.001)
    raise AssertionError("the producer never blocked on the pool")


@pytest.mark.parametrize("with_manager", [False, True])
def test_fail_wakes_producer_blocked_on_exhausted_pool(make_pool, with_manager):
    nbp = make_pool(16, SEGMENT_SIZE)
    pool = nbp.create_buffer_pool(2, 2, 1, 10, 0)  # two buffers, no overdraft
    manager = ResultPartitionManager() if with_manager else None
    partition = PipelinedResultPartition(1, pool, partition_manager=manager)
    partition.setup()
    view = partition.create_subpartition_view(0, Listener())
    worker = Worker(partition.emit_record, pattern(10 * SEGMENT_SIZE), 0)
    worker.start()
    _wait_until_blocked(worker)
    assert not partition.is_available

    cause = RuntimeError("cancelled")
    partition.fail(cause)
    worker.finish()
    assert isinstance(worker.error, CancelTaskError)
    assert partition.is_released
    assert partition.failure_cause is cause
    assert view.is_released
    if manager is not None:
        assert not manager.contains(partition.partition_id)
    view.release_all_resources()
    partition.close()
    assert pool.is_destroyed
    assert nbp.is_whole
    assert nbp.number_of_registered_buffer_pools == 0


# --- release on consumption ------------------------------------------------------------------------


@pytest.mark.parametrize("close_first", [True, False], ids=["producer_closes_first", "views_first"])
def test_release_on_consumption(make_pool, close_first):
    nbp = make_pool(32, SEGMENT_SIZE)
    manager = ResultPartitionManager()
    partition = create_result_partition(nbp, 2, PIPELINED_BOUNDED, partition_manager=manager)
    partition.setup()
    assert manager.contains(partition.partition_id)
    views = [manager.create_subpartition_view(partition.partition_id, i, Listener()) for i in range(2)]
    partition.emit_record(b"r", 0)
    partition.finish()
    for view in views:
        poll_all(view)

    if close_first:
        partition.close()
        views[0].release_all_resources()
        views[0].release_all_resources()  # released once only
        assert not partition.is_released
        assert manager.contains(partition.partition_id)
        views[1].release_all_resources()
    else:
        for view in views:
            view.release_all_resources()
        assert not partition.is_released  # the producer still holds it
        assert manager.contains(partition.partition_id)
        partition.close()
    assert partition.is_released
    assert not manager.contains(partition.partition_id)
    assert manager.get_unreleased_partitions() == []


def test_release_on_consumption_without_manager(make_pool):
    s = Setup(make_pool(32, SEGMENT_SIZE), n=3)
    s.partition.finish()
    s.partition.close()
    for view in s.views[:2]:
        view.release_all_resources()
    assert not s.partition.is_released
    s.views[2].release_all_resources()
    assert s.partition.is_released
    s.close()


def test_consumer_going_away_drops_its_queued_buffers_and_fails_the_producer(setup):
    """The default policy ("fail"): a view released before EndOfPartition is a lost consumer;
    its queued buffers go back at once and every later emit (whatever its target) and finish
    raise ConsumerLostError naming the consumer; the producer then fails the partition."""
    p = setup.partition
    p.emit_record(pattern(3 * SEGMENT_SIZE), 1)
    assert p.buffer_pool.used_buffers == 4
    setup.views[1].release_all_resources()
    assert p.subpartitions[1].is_released
    # Only the open builder is still held by the writer.
    assert p.buffer_pool.used_buffers == 1
    assert list(p.lost_consumers) == [1]
    records_out = p.num_records_out
    for target in (1, 0):
        with pytest.raises(ConsumerLostError) as info:
            p.emit_record(pattern(3 * SEGMENT_SIZE), target)
        err = info.value
        assert (err.partition_id, err.subpartition) == (p.partition_id, 1)
        assert err.consumer == f"the reader {setup.listeners[1]!r}"
        assert "released before the end of the partition" in err.reason
        assert err.consumer in str(err) and str(p.partition_id) in str(err)
    with pytest.raises(ConsumerLostError):
        p.finish()
    assert p.num_records_out == records_out
    assert p.buffer_pool.used_buffers == 1
    p.fail(err)
    assert p.is_released and p.failure_cause is err


def test_consumer_going_away_with_the_discard_policy_drops_its_queued_buffers(make_pool):
    """``on_consumer_lost="discard"``: the loss is only recorded; the queued buffers go back at
    once, later records for that subpartition are discarded and the others carry on."""
    setup = Setup(make_pool(64, SEGMENT_SIZE), on_consumer_lost="discard")
    p = setup.partition
    p.emit_record(pattern(3 * SEGMENT_SIZE), 1)
    assert p.buffer_pool.used_buffers == 4
    setup.views[1].release_all_resources()
    assert p.subpartitions[1].is_released
    assert list(p.lost_consumers) == [1]
    # Only the open builder is still held by the writer; later records for 1 are discarded.
    assert p.buffer_pool.used_buffers == 1
    p.emit_record(pattern(3 * SEGMENT_SIZE), 1)
    assert p.buffer_pool.used_buffers == 1
    p.emit_record(b"still", 0)
    p.finish()
    assert read_all(setup.views[0]) == [b"still", ev.EndOfPartitionEvent()]
    setup.close()


# --- end of data, all records processed -----------------------------------------------------------


@pytest.mark.parametrize("mode", [ev.StopMode.DRAIN, ev.StopMode.NO_DRAIN])
def test_notify_end_of_data_once(setup, mode):
    setup.partition.emit_record(b"last", 0)
    setup.partition.notify_end_of_data(mode)
    setup.partition.notify_end_of_data(mode)
    setup.partition.notify_end_of_data(ev.StopMode.DRAIN)
    setup.partition.finish()
    end = ev.EndOfData(mode)
    assert read_all(setup.views[0]) == [b"last", end, ev.EndOfPartitionEvent()]
    assert read_all(setup.views[1]) == [end, ev.EndOfPartitionEvent()]


def test_all_data_processed_future(make_pool):
    s = Setup(make_pool(32, SEGMENT_SIZE), n=3)
    try:
        future = s.partition.get_all_data_processed_future()
        s.partition.notify_end_of_data(ev.StopMode.DRAIN)
        s.views[0].acknowledge_all_data_processed()
        s.views[2].acknowledge_all_data_processed()
        s.views[0].acknowledge_all_data_processed()  # a repeated ack does not count twice
        assert not future.done()
        s.views[1].acknowledge_all_data_processed()
        assert future.done()
        assert future.result(0) is None
        s.partition.finish()
        for view in s.views:
            poll_all(view)
    finally:
        s.close()


def test_all_data_processed_future_fails_on_release(setup):
    future = setup.partition.get_all_data_processed_future()
    setup.views[0].acknowledge_all_data_processed()
    setup.partition.release()
    assert future.done()
    with pytest.raises(CancelTaskError):
        future.result(0)


# --- pool sizing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7])
def test_min_max_network_buffers(n):
    assert get_min_max_network_buffers_per_result_partition(PIPELINED_BOUNDED, n) == (n + 1, 2 * n + 8)
    assert get_min_max_network_buffers_per_result_partition(
        ResultPartitionType.PIPELINED_APPROXIMATE, n) == (n + 1, 2 * n + 8)
    assert get_min_max_network_buffers_per_result_partition(PIPELINED, n) == (n + 1, 2**31 - 1)
    assert INT_MAX == 2**31 - 1
    with pytest.raises(ValueError):
        get_min_max_network_buffers_per_result_partition(PIPELINED, 0)


@pytest.mark.parametrize(("partition_type", "n", "maximum"),
                         [(PIPELINED_BOUNDED, 3, 14), (PIPELINED, 3, INT_MAX),
                          (PIPELINED_BOUNDED, 30, 68)])
def test_create_sizes_pool_as_flink(make_pool, partition_type, n, maximum):
    nbp = make_pool(128, SEGMENT_SIZE)
    partition = create_result_partition(nbp, n, partition_type)
    try:
        pool = partition.buffer_pool
        assert isinstance(partition, PipelinedResultPartition)
        assert partition.num_subpartitions == n
        assert (pool.min_buffers, pool.max_buffers) == (n + 1, maximum)
        assert pool.num_subpartitions == n
        assert pool.max_buffers_per_channel == 10
        assert pool.max_overdraft_buffers_per_gate == 20
        assert pool.num_buffers == min(maximum, 128)  # the only pool: it gets every excess buffer
    finally:
        partition.release()
        partition.close()


def test_create_sizes_pool_from_the_given_buffers_per_channel_and_floating_buffers(make_pool):
    nbp = make_pool(128, SEGMENT_SIZE)
    partition = create_result_partition(nbp, 3, PIPELINED_BOUNDED, buffers_per_channel=4,
                                        floating_buffers_per_gate=20)
    try:
        assert (partition.buffer_pool.min_buffers, partition.buffer_pool.max_buffers) == (4, 3 * 4 + 20)
    finally:
        partition.release()
        partition.close()
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="buffers_per_channel"):
            create_result_partition(nbp, 3, PIPELINED_BOUNDED, buffers_per_channel=bad)
        with pytest.raises(ValueError, match="floating_buffers_per_gate"):
            create_result_partition(nbp, 3, PIPELINED_BOUNDED, floating_buffers_per_gate=bad)
    assert nbp.number_of_registered_buffer_pools == 0


def test_an_environment_sizes_its_partitions_pools_from_its_configuration():
    """Flink's ResultPartitionFactory sizes a partition's pool from the configured
    buffers-per-channel and floating-buffers-per-gate, not from their defaults."""
    from flinknet import NetworkEnvironment

    config = {"taskmanager.memory.segment-size": "4kb", "taskmanager.memory.network.max": "2mb",
              "taskmanager.network.memory.buffers-per-channel": 3,
              "taskmanager.network.memory.floating-buffers-per-gate": 30}
    with NetworkEnvironment(config) as env:
        p = env.create_result_partition(2)
        assert (p.buffer_pool.min_buffers, p.buffer_pool.max_buffers) == (3, 2 * 3 + 30)
        p.close()
    with NetworkEnvironment({"taskmanager.memory.segment-size": "4kb",
                             "taskmanager.memory.network.max": "2mb"}) as default_env:
        p = default_env.create_result_partition(2)
        assert (p.buffer_pool.min_buffers, p.buffer_pool.max_buffers) == (3, 2 * 2 + 8)
        p.close()


def test_create_rejects_a_blocking_type_for_pipelined_partition(make_pool):
    nbp = make_pool(16, SEGMENT_SIZE)
    with pytest.raises(ValueError):
        PipelinedResultPartition.create(nbp, 2, partition_type=ResultPartitionType.BLOCKING)
    assert nbp.number_of_registered_buffer_pools == 0  # the pool it made was given back


# --- buffer debloating -----------------------------------------------------------------------------


def test_buffer_size_trims_next_builder(setup):
    p = setup.partition
    setup.views[0].notify_new_buffer_size(32)
    for i in range(5):
        p.emit_record(bytes([i]) * 10, 0)  # 14 bytes each
    p.flush(0)
    sizes = []
    capacities = []
    records = []
    deserializer = RecordDeserializer("bytes")
    while (bab := setup.views[0].get_next_buffer()) is not None:
        sizes.append(bab.buffer.size)
        capacities.append(bab.buffer.max_capacity)
        records.extend(deserializer.read_records(bab.buffer))
    assert records == [bytes([i]) * 10 for i in range(5)]
    assert sizes == [32, 32, 6]
    assert capacities[:2] == [32, 32]
    # Subpartition 1 keeps whole segments.
    p.emit_record(b"x" * 100, 1)
    p.flush(1)
    assert [len(b) for _, b in poll_all(setup.views[1])] == [104]


def test_buffer_size_at_least_the_first_record(setup):
    p = setup.partition
    p.subpartitions[0].set_buffer_size(16)
    p.emit_record(b"x" * 60, 0)  # 64 bytes: the new buffer is not trimmed below the record
    p.emit_record(b"y" * 4, 0)
    p.flush(0)
    assert [len(b) for _, b in poll_all(setup.views[0])] == [64, 8]
