"""ResultPartitionManager against Flink's rules (Flink's ``ResultPartitionManagerTest``).

Registration (twice is an error), unknown partitions, releasing, pending view requests answered on
registration or failed after the request timeout (driven by ``check_request_timeouts(now=...)``,
never by sleeping), cancelled requests and shutdown.
"""

from __future__ import annotations

import time

import pytest

from flinknet import IllegalStateError
from flinknet import events as ev
from flinknet.errors import PartitionNotFoundError
from flinknet.ids import ResultPartitionID, ResultSubpartitionIndexSet
from flinknet.partition import ResultPartitionManager, create_result_partition
from flinknet.types import ResultPartitionType

SEGMENT_SIZE = 128


class Listener:
    def __init__(self):
        self.num_notifications = 0

    def notify_data_available(self, view):
        self.num_notifications += 1

    def notify_priority_event(self, sequence_number):
        pass


class Answers:
    """Records the ``on_view(view, error)`` callbacks of pending requests."""

    def __init__(self):
        self.calls = []

    def __call__(self, view, error):
        self.calls.append((view, error))


@pytest.fixture
def nbp(make_pool):
    return make_pool(64, SEGMENT_SIZE)


@pytest.fixture
def manager():
    m = ResultPartitionManager(partition_request_timeout=10.0)
    yield m
    m.shutdown()


def new_partition(nbp, manager, n=2, partition_type=ResultPartitionType.PIPELINED_BOUNDED):
    return create_result_partition(nbp, n, partition_type, partition_manager=manager)


def close(partition):
    partition.release()
    partition.close()


def test_register_twice_fails(nbp, manager):
    partition = new_partition(nbp, manager)
    partition.setup()
    with pytest.raises(IllegalStateError, match="already registered"):
        manager.register_result_partition(partition)
    # Another partition with the same id is just as much a duplicate.
    twin = create_result_partition(nbp, 1, partition_id=partition.partition_id)
    with pytest.raises(IllegalStateError, match="already registered"):
        manager.register_result_partition(twin)
    assert manager.get_unreleased_partitions() == [partition.partition_id]
    close(twin)
    close(partition)


def test_setup_twice_fails(nbp, manager):
    partition = new_partition(nbp, manager)
    partition.setup()
    with pytest.raises(IllegalStateError):
        partition.setup()
    close(partition)


def test_unknown_partition(manager):
    pid = ResultPartitionID()
    with pytest.raises(PartitionNotFoundError) as info:
        manager.create_subpartition_view(pid, 0, Listener())
    assert info.value.partition_id == pid
    assert isinstance(info.value, OSError)


def test_view_of_registered_partition(nbp, manager):
    partition = new_partition(nbp, manager)
    partition.setup()
    view = manager.create_subpartition_view(partition.partition_id, 1, Listener())
    partition.emit_record(b"hello", 1)
    partition.flush(1)
    bab = view.get_next_buffer()
    assert bab.buffer.to_bytes() == b"\x00\x00\x00\x05hello"
    bab.buffer.recycle()
    # A single-subpartition index set is accepted, a wider one is not supported.
    view0 = manager.create_subpartition_view(partition.partition_id, ResultSubpartitionIndexSet(0, 0),
                                             Listener())
    with pytest.raises(ValueError):
        manager.create_subpartition_view(partition.partition_id, ResultSubpartitionIndexSet(0, 1),
                                         Listener())
    with pytest.raises(TypeError):
        manager.create_subpartition_view(partition.partition_id, True, Listener())
    view.release_all_resources()
    view0.release_all_resources()
    close(partition)


def test_release_partition(nbp, manager):
    partition = new_partition(nbp, manager)
    partition.setup()
    view = manager.create_subpartition_view(partition.partition_id, 0, Listener())
    partition.emit_record(b"x" * (3 * SEGMENT_SIZE), 0)
    cause = RuntimeError("gone")
    manager.release_partition(partition.partition_id, cause)
    assert partition.is_released
    assert partition.failure_cause is cause
    assert view.is_released
    assert view.failure_cause is cause
    assert not manager.contains(partition.partition_id)
    assert manager.get_unreleased_partitions() == []
    with pytest.raises(PartitionNotFoundError):
        manager.create_subpartition_view(partition.partition_id, 0, Listener())
    manager.release_partition(partition.partition_id)  # unknown now: no effect
    # Queued buffers went back; only the writer's open builder is still out.
    assert partition.buffer_pool.used_buffers == 1
    partition.close()
    assert partition.buffer_pool.is_destroyed


def test_pending_request_answered_on_registration(nbp, manager):
    partition = new_partition(nbp, manager)
    answers = Answers()
    listener = Listener()
    assert manager.create_subpartition_view_or_register_listener(
        partition.partition_id, 1, listener, answers) is None
    assert manager.num_pending_requests == 1
    assert answers.calls == []
    partition.setup()
    assert manager.num_pending_requests == 0
    assert len(answers.calls) == 1
    view, error = answers.calls[0]
    assert error is None
    assert view.subpartition is partition.subpartitions[1]
    # Once registered, requests are answered at once.
    view0 = manager.create_subpartition_view_or_register_listener(
        partition.partition_id, 0, Listener(), answers)
    assert view0 is not None and len(answers.calls) == 1
    partition.finish()
    for v in (view, view0):
        bab = v.get_next_buffer()
        assert ev.from_buffer(bab.buffer) == ev.EndOfPartitionEvent()
        bab.buffer.recycle()
        v.release_all_resources()
    partition.close()
    assert partition.is_released
    assert not manager.contains(partition.partition_id)


def test_pending_request_for_bad_subpartition_gets_the_error(nbp, manager):
    partition = new_partition(nbp, manager, n=2)
    answers = Answers()
    manager.create_subpartition_view_or_register_listener(partition.partition_id, 5, Listener(), answers)
    partition.setup()
    [(view, error)] = answers.calls
    assert view is None
    assert isinstance(error, ValueError)
    close(partition)


def test_pending_request_times_out(manager):
    pid = ResultPartitionID()
    answers = Answers()
    before = time.monotonic()
    manager.create_subpartition_view_or_register_listener(pid, 0, Listener(), answers)
    after = time.monotonic()
    assert manager.check_request_timeouts(now=before) == 0
    assert manager.check_request_timeouts(now=before + 9.0) == 0
    assert answers.calls == []
    assert manager.num_pending_requests == 1
    assert manager.check_request_timeouts(now=after + 10.0) == 1
    [(view, error)] = answers.calls
    assert view is None
    assert isinstance(error, PartitionNotFoundError)
    assert error.partition_id == pid
    assert manager.num_pending_requests == 0
    assert manager.check_request_timeouts(now=after + 100.0) == 0  # answered once only
    assert len(answers.calls) == 1


def test_only_expired_requests_time_out(manager):
    pid = ResultPartitionID()
    early, late = Answers(), Answers()
    manager.create_subpartition_view_or_register_listener(pid, 0, Listener(), early)
    manager.partition_request_timeout = 20.0
    manager.create_subpartition_view_or_register_listener(pid, 1, Listener(), late)
    t1 = time.monotonic()
    assert manager.check_request_timeouts(now=t1 + 10.0) == 1
    assert len(early.calls) == 1 and late.calls == []
    assert manager.num_pending_requests == 1
    assert manager.check_request_timeouts(now=t1 + 20.0) == 1
    assert len(late.calls) == 1 and len(early.calls) == 1
    assert manager.num_pending_requests == 0


def test_cancel_pending_request(nbp, manager):
    partition = new_partition(nbp, manager)
    kept, cancelled = Answers(), Answers()
    manager.create_subpartition_view_or_register_listener(partition.partition_id, 0, Listener(), kept)
    manager.create_subpartition_view_or_register_listener(partition.partition_id, 1, Listener(), cancelled)
    assert manager.cancel_pending_request(partition.partition_id, cancelled)
    assert not manager.cancel_pending_request(partition.partition_id, cancelled)
    assert not manager.cancel_pending_request(ResultPartitionID(), kept)
    partition.setup()
    assert cancelled.calls == []
    [(view, error)] = kept.calls
    assert error is None
    view.release_all_resources()
    close(partition)


def test_release_partition_fails_pending_requests(manager):
    pid = ResultPartitionID()
    answers = Answers()
    manager.create_subpartition_view_or_register_listener(pid, 0, Listener(), answers)
    manager.release_partition(pid)
    [(view, error)] = answers.calls
    assert view is None and isinstance(error, PartitionNotFoundError)
    assert manager.num_pending_requests == 0


def test_shutdown_releases_everything(nbp):
    manager = ResultPartitionManager()
    partitions = [new_partition(nbp, manager) for _ in range(3)]
    for p in partitions:
        p.setup()
    partitions[0].emit_record(b"x" * 300, 0)
    answers = Answers()
    missing = ResultPartitionID()
    manager.create_subpartition_view_or_register_listener(missing, 0, Listener(), answers)
    manager.shutdown()
    assert all(p.is_released for p in partitions)
    assert manager.get_unreleased_partitions() == []
    [(view, error)] = answers.calls
    assert view is None and isinstance(error, PartitionNotFoundError)
    late = new_partition(nbp, None)
    with pytest.raises(IllegalStateError, match="shut down"):
        manager.register_result_partition(late)
    close(late)
    with pytest.raises(IllegalStateError, match="shut down"):
        manager.create_subpartition_view_or_register_listener(missing, 0, Listener(), answers)
    for p in partitions:
        p.close()
        assert p.buffer_pool.is_destroyed


def test_consumed_partition_is_removed(nbp, manager):
    partition = new_partition(nbp, manager, n=1)
    partition.setup()
    view = manager.create_subpartition_view(partition.partition_id, 0, Listener())
    partition.finish()
    partition.close()
    assert manager.contains(partition.partition_id)
    view.release_all_resources()
    assert not manager.contains(partition.partition_id)
    assert partition.is_released
    # A stale notification for a partition that is not (or no longer) registered is ignored.
    manager.on_consumed_partition(partition)


def test_invalid_timeout():
    with pytest.raises(ValueError):
        ResultPartitionManager(partition_request_timeout=0)
