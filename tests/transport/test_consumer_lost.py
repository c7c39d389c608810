"""A consumer that goes away is noticed by its producer (issue 16).

The consumer of a pipelined subpartition that leaves before it read the subpartition to its end
(its gate closed early, its process killed, its connection reset, its CancelPartitionRequest)
fails the producer with :class:`~flinknet.errors.ConsumerLostError`, as Flink's region failover
cancels a producer whose consumer failed: the writer's next emit, batch, array, broadcast, event,
flush and the partition's finish raise it, whichever subpartition they target; an emit blocked on
backpressure wakes up with it; rejected records are not counted in numRecordsOut; the lost
subpartition's buffers go back at once. A normal end (the view released after EndOfPartition)
and the producer's own release are no loss.

Real sockets on loopback, real processes, no mocks; every path with the native engine on and off
(``flinknet.network.native-io``). Nothing is timed: the tests wait for conditions with generous
deadlines. Every environment ends with its pool whole.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import socket
import threading
import time

import numpy as np
import pytest

from flinknet import ConsumerLostError
from flinknet._core import protocol as P
from flinknet.consumer import RecordReader
from flinknet.environment import NetworkEnvironment
from flinknet.errors import CancelTaskError, IllegalStateError, ProducerFailedError
from flinknet.events import EndOfData
from flinknet.ids import InputChannelID
from flinknet.partition import LostConsumer
from flinknet.transport import RemoteTransportError
from flinknet.transport.handshake import HandshakeConfig, client_handshake
from flinknet.writer import RecordWriter
from tests.helpers import Worker
from tests.transport import fault_procs, procs

SMALL = {"taskmanager.memory.segment-size": "4kb", "taskmanager.memory.network.max": "2mb"}
CTX = mp.get_context("spawn")
WAIT = 60.0        # generous: the machine is shared
MAX_RECORDS = 3_000_000   # a producer loop that never fails stops here (the test then fails)

NATIVE = pytest.mark.parametrize("native", [True, False], ids=["native-io", "python-io"])


def _opts(native: bool = True) -> dict:
    return {**SMALL, "flinknet.network.native-io": native}


def _wait_for(cond, timeout: float = WAIT, interval: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def _assert_whole(*envs) -> None:
    assert _wait_for(lambda: all(e.network_buffer_pool.is_whole for e in envs)), [
        (e, e.network_buffer_pool.total_segments - e.network_buffer_pool.available_segments)
        for e in envs if not e.network_buffer_pool.is_whole]


class BlockTimer:
    """A WaitTimer (the hard back-pressure hook the metrics use): the serializer marks it around
    every emit that blocks for a buffer, so the test knows, without timing anything, that the
    writer is blocked right now."""

    def __init__(self) -> None:
        self.blocked = threading.Event()
        self.blocks = 0

    def mark_start(self) -> None:
        self.blocks += 1
        self.blocked.set()

    def mark_end(self) -> None:
        self.blocked.clear()


class Producer(Worker):
    """Emits ``make(i)`` (to subpartition ``i % n``) until an emit raises; ``emitted`` counts the
    emits that returned (what numRecordsOut must say)."""

    def __init__(self, partition, make=None, timeout: float = 5):
        self.partition = partition
        self.emitted = 0
        self.make = make or (lambda i: b"record-%d" % i)
        self.writer = RecordWriter(partition, timeout=timeout)
        self.timer = BlockTimer()
        partition.set_hard_back_pressure_timer(self.timer)
        super().__init__(self._produce)

    def _produce(self) -> None:
        n = self.partition.num_subpartitions
        with self.writer as w:
            for i in range(MAX_RECORDS):
                w.emit(self.make(i), i % n)
                self.emitted += 1


def _check_lost(err: BaseException, partition, subpartition: int, consumer: str, reason: str) -> None:
    assert isinstance(err, ConsumerLostError), repr(err)
    assert isinstance(err, CancelTaskError)
    assert err.partition_id == partition.partition_id
    assert err.subpartition == subpartition
    assert consumer in err.consumer, err.consumer
    assert reason in err.reason, err.reason
    text = str(err)
    for part in (str(partition.partition_id), f"subpartition {subpartition}", err.consumer, err.reason):
        assert part in text, (part, text)
    lost = partition.lost_consumers
    assert subpartition in lost
    assert lost[subpartition] == LostConsumer(subpartition, err.consumer, err.reason)


def _assert_writer_failed(w: RecordWriter, p) -> None:
    """Every way of writing raises ConsumerLostError, for every subpartition, and counts nothing."""
    before = p.num_records_out
    for target in range(p.num_subpartitions):
        with pytest.raises(ConsumerLostError):
            w.emit(b"late", target)
    with pytest.raises(ConsumerLostError):
        w.emit_batch([b"a", b"b"], 0)
    with pytest.raises(ConsumerLostError):
        w.emit_batch([b"a", b"b"], [0, 1 % p.num_subpartitions])
    with pytest.raises(ConsumerLostError):
        w.emit_array(np.arange(4, dtype=np.int64), 0)
    with pytest.raises(ConsumerLostError):
        w.broadcast_emit(b"everyone")
    with pytest.raises(ConsumerLostError):
        w.random_emit(b"anyone")
    with pytest.raises(ConsumerLostError):
        w.broadcast_event(EndOfData())
    with pytest.raises(ConsumerLostError):
        w.flush_all()
    with pytest.raises(ConsumerLostError):
        w.wait_available(0)
    with pytest.raises(ConsumerLostError):
        p.emit_record(b"direct", 0)
    with pytest.raises(ConsumerLostError):
        p.finish()
    assert p.num_records_out == before


# -- a local gate closed early --------------------------------------------------------------


def test_local_gate_closed_early_fails_the_writer_as_a_whole():
    with NetworkEnvironment(SMALL) as env:
        p = env.create_result_partition(2)
        gate0 = env.create_input_gate([(p.partition_id, 0)], owning_task_name="Sink (1/2)")
        gate1 = env.create_input_gate([(p.partition_id, 1)], owning_task_name="Sink (2/2)")
        gate1.request_partitions()
        w = RecordWriter(p, timeout=-1)
        for i in range(200):
            w.emit(b"r%d" % i, i % 2)
        w.flush_all()
        with RecordReader(gate0) as r0:
            assert r0.next_record(WAIT) == b"r0"
        assert p.lost_consumers == {} and p.consumer_lost is None
        gate0.close()                      # the consumer leaves with data still queued

        lost = p.consumer_lost
        assert lost is not None and lost.subpartition == 0
        assert lost.consumer.startswith("local gate 'Sink (1/2)'")
        assert "closed" in lost.reason and "before the end of the partition" in lost.reason
        sp = p.subpartitions[0]
        assert sp.is_released and sp.number_of_queued_buffers == 0   # its buffers went back
        emitted = p.num_records_out
        assert emitted == 200

        with pytest.raises(ConsumerLostError) as info:
            w.emit(b"to the healthy one", 1)
        _check_lost(info.value, p, 0, "local gate 'Sink (1/2)' (channel 0)", "gate closed")
        _assert_writer_failed(w, p)
        w.close()

        # The producer fails, as a task does with any error: its other consumer learns it.
        p.fail(info.value)
        with RecordReader(gate1) as r1, pytest.raises(ProducerFailedError) as failed:
            for _ in r1:
                pass
        assert failed.value.__cause__ is info.value
        gate1.close()
        p.close()
        assert p.lost_consumers.keys() == {0}       # the producer's release added nothing
        _assert_whole(env)


def test_local_blocked_writer_is_woken_by_the_loss():
    """The consumer never reads, so the writer blocks on backpressure; closing the consumer's
    gate wakes it with ConsumerLostError (not a timeout), and numRecordsOut counts exactly the
    emits that returned."""
    with NetworkEnvironment(SMALL) as env:
        p = env.create_result_partition(1)
        gate = env.create_input_gate([(p.partition_id, 0)], owning_task_name="Slow sink")
        gate.request_partitions()
        assert _wait_for(lambda: p.subpartitions[0].has_view)
        producer = Producer(p, lambda i: b"x" * 1000)
        producer.start()
        assert producer.timer.blocked.wait(WAIT), "the writer never blocked"
        assert producer.is_alive()
        gate.close()
        producer.finish(WAIT)
        _check_lost(producer.error, p, 0, "local gate 'Slow sink'", "gate closed")
        assert p.num_records_out == producer.emitted > 0
        p.fail(producer.error)
        p.close()
        _assert_whole(env)


def test_consumer_lost_after_finish_drops_its_buffers_and_later_calls_raise():
    """The producer finished, the consumer left before reading EndOfPartition: the loss is
    recorded and that subpartition's buffers go back at once (the environment's close does not
    wait for it)."""
    with NetworkEnvironment(SMALL) as env:
        p = env.create_result_partition(1)
        gate = env.create_input_gate([(p.partition_id, 0)])
        with RecordWriter(p, timeout=-1) as w:
            for _ in range(100):
                w.emit(b"y" * 500)
        p.finish()
        gate.request_partitions()
        assert _wait_for(lambda: p.subpartitions[0].has_view)
        assert p.buffer_pool.used_buffers > 0
        gate.close()
        assert p.consumer_lost is not None
        assert p.subpartitions[0].number_of_queued_buffers == 0
        with pytest.raises(ConsumerLostError):
            p.check_producing()
        p.close()
        assert p.is_released            # consumed (by a lost consumer) and closed
        _assert_whole(env)


def test_a_lost_subpartition_cannot_be_requested_again():
    with NetworkEnvironment(SMALL) as env:
        p = env.create_result_partition(1)
        first = env.create_input_gate([(p.partition_id, 0)])
        first.request_partitions()
        first.close()
        assert _wait_for(lambda: p.consumer_lost is not None)
        again = env.create_input_gate([(p.partition_id, 0)])
        with pytest.raises(IllegalStateError, match="released"):
            again.get_next(WAIT)
        again.close()
        p.release()
        p.close()
        _assert_whole(env)


# -- a remote gate closed early -------------------------------------------------------------


@NATIVE
def test_remote_gate_closed_early_fails_the_writer(native):
    with NetworkEnvironment(_opts(native)) as prod, NetworkEnvironment(_opts(native)) as cons:
        p = prod.create_result_partition(2)
        gate = cons.create_input_gate([(p.partition_id, 0, prod.address)])
        other = cons.create_input_gate([(p.partition_id, 1, prod.address)])
        other.request_partitions()
        producer = Producer(p)
        producer.start()
        with RecordReader(gate) as reader:
            for _ in range(500):
                reader.next_record(WAIT)
        gate.close()
        producer.finish(WAIT)
        err = producer.error
        _check_lost(err, p, 0, "remote consumer 127.0.0.1:", "CancelPartitionRequest")
        assert "receiver " in err.consumer
        assert p.num_records_out == producer.emitted
        with RecordWriter(p, timeout=-1) as fresh:     # any writer of the partition fails
            _assert_writer_failed(fresh, p)
        # the other consumer is healthy until the producer fails
        p.fail(err)
        with RecordReader(other) as r, pytest.raises(RemoteTransportError, match="ConsumerLostError"):
            for _ in r:
                pass
        other.close()
        p.close()
        assert p.lost_consumers.keys() == {0}
        _assert_whole(prod, cons)


@NATIVE
def test_remote_blocked_writer_is_woken_when_the_consumer_environment_closes(native):
    with NetworkEnvironment(_opts(native)) as prod:
        p = prod.create_result_partition(1)
        cons = NetworkEnvironment(_opts(native))
        try:
            cons.create_input_gate([(p.partition_id, 0, prod.address)]).request_partitions()  # never read
            assert _wait_for(lambda: p.subpartitions[0].has_view)
            producer = Producer(p, lambda i: b"z" * 700)
            producer.start()
            assert producer.timer.blocked.wait(WAIT), "the writer never blocked"
        finally:
            cons.close(0)
        producer.finish(WAIT)
        _check_lost(producer.error, p, 0, "remote consumer 127.0.0.1:", "before the end of the partition")
        assert p.num_records_out == producer.emitted > 0
        p.fail(producer.error)
        p.close()
        _assert_whole(prod)


# -- a consumer process killed --------------------------------------------------------------


@NATIVE
def test_consumer_process_killed_wakes_the_blocked_writer(native):
    """The consumer (a real child process) reads 200 records and stops reading; the writer
    blocks on backpressure; SIGKILL on the consumer wakes it with ConsumerLostError naming the
    dead peer and the closed or reset connection."""
    opts = _opts(native)
    with NetworkEnvironment(opts) as prod:
        p = prod.create_result_partition(1)
        seg = prod.config.segment_size
        q = CTX.Queue()
        child = CTX.Process(target=fault_procs.consumer,
                            args=(q, p.partition_id.to_bytes(), 0, 1, prod.address, opts, 200))
        try:
            child.start()
            assert q.get(timeout=WAIT) == ("ready",)
            producer = Producer(p, lambda i: procs.record(0, i, procs.record_size(i, seg)))
            producer.start()
            assert q.get(timeout=WAIT) == ("progress", 200)
            assert producer.timer.blocked.wait(WAIT), "the writer never blocked"
            assert producer.is_alive()
            assert prod.loop.run_sync(lambda: [c.native is not None for c in prod.server.connections]) \
                == [native]
            child.kill()
            child.join(WAIT)
            producer.finish(WAIT)
        finally:
            if child.is_alive():
                child.kill()
            child.join(WAIT)
        _check_lost(producer.error, p, 0, "remote consumer 127.0.0.1:",
                    "its connection was closed or reset before the end of the partition")
        assert p.num_records_out == producer.emitted >= 200
        p.fail(producer.error)
        p.close()
        assert _wait_for(lambda: prod.loop.run_sync(lambda: len(prod.server.connections)) == 0)
        _assert_whole(prod)


# -- CancelPartitionRequest from a raw client -----------------------------------------------


def _connect(address) -> socket.socket:
    sock = socket.create_connection(address, timeout=WAIT)
    try:
        return client_handshake(sock, HandshakeConfig(), address)
    except BaseException:
        sock.close()
        raise


@NATIVE
def test_cancel_partition_request_fails_the_writer(native):
    """A client that requests the subpartition and cancels it, keeping its connection open: the
    cancellation alone is the loss."""
    with NetworkEnvironment(_opts(native)) as prod:
        p = prod.create_result_partition(1)
        with RecordWriter(p, timeout=-1) as w:
            for i in range(50):
                w.emit(b"queued-%d" % i)
            w.flush_all()
            rid = InputChannelID().to_bytes()
            sock = _connect(prod.address)
            try:
                sock.sendall(P.encode_partition_request(p.partition_id.to_bytes(), 0, 0, rid, 2))
                assert _wait_for(lambda: p.subpartitions[0].has_view)
                # the path under test: served by the native engine or by the Python I/O thread
                assert prod.loop.run_sync(lambda: [c.native is not None for c in prod.server.connections]) \
                    == [native]
                sock.sendall(P.encode_cancel_partition_request(rid))
                assert _wait_for(lambda: p.consumer_lost is not None)
                assert prod.loop.run_sync(lambda: len(prod.server.connections)) == 1   # still open
                with pytest.raises(ConsumerLostError) as info:
                    w.emit(b"after the cancel")
                _check_lost(info.value, p, 0, f"receiver {rid.hex()}", "CancelPartitionRequest")
                assert p.num_records_out == 50
            finally:
                sock.close()
        p.release()
        p.close()
        assert _wait_for(lambda: prod.loop.run_sync(lambda: len(prod.server.connections)) == 0)
        _assert_whole(prod)


# -- no loss ------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["local", "native-io", "python-io"])
def test_a_normal_end_is_not_a_loss(where):
    """Every record read, EndOfPartition read, the gate closed (and its channels released) after
    it: no loss, nothing raises, the partition is released on consumption."""
    n = 5000
    with NetworkEnvironment(_opts(where != "python-io")) as prod, \
            NetworkEnvironment(_opts(where != "python-io")) as cons:
        p = prod.create_result_partition(2)
        if where == "local":
            gates = [prod.create_input_gate([(p.partition_id, i)]) for i in range(2)]
        else:
            gates = [cons.create_input_gate([(p.partition_id, i, prod.address)]) for i in range(2)]
        counts = [0, 0]

        def consume(i: int) -> None:
            with RecordReader(gates[i]) as r:
                counts[i] = sum(1 for _ in r)
            gates[i].close()

        readers = [Worker(consume, i) for i in range(2)]
        for t in readers:
            t.start()
        with RecordWriter(p, timeout=5) as w:
            for i in range(n):
                w.emit(b"e%d" % i, i % 2)
        p.finish()
        p.close()
        for t in readers:
            t.finish(WAIT)
            assert t.error is None, t.error
        assert counts == [n // 2, n // 2]
        assert p.lost_consumers == {} and p.consumer_lost is None
        assert all(sp.is_consumed_to_end for sp in p.subpartitions)
        assert _wait_for(lambda: p.is_released)
        assert p.num_records_out == n
        _assert_whole(prod, cons)


@NATIVE
def test_the_producers_own_release_is_not_a_loss(native):
    with NetworkEnvironment(_opts(native)) as prod, NetworkEnvironment(_opts(native)) as cons:
        p = prod.create_result_partition(2)
        local = prod.create_input_gate([(p.partition_id, 0)])
        remote = cons.create_input_gate([(p.partition_id, 1, prod.address)])
        with RecordWriter(p, timeout=0) as w:
            w.emit(b"one", 0)
            w.emit(b"two", 1)
        for g in (local, remote):
            boe = g.get_next(WAIT)
            assert boe.buffer is not None
            boe.buffer.recycle()
        crash = RuntimeError("the producer crashed")
        p.fail(crash)
        for g in (local, remote):
            with pytest.raises((ProducerFailedError, RemoteTransportError)):
                while True:
                    boe = g.get_next(WAIT)
                    if boe is not None and boe.buffer is not None:
                        boe.buffer.recycle()
            g.close()
        p.close()
        assert p.lost_consumers == {}
        _assert_whole(prod, cons)


# -- the "discard" policy, the error's face ---------------------------------------------------


def test_discard_policy_records_the_loss_and_goes_on():
    with NetworkEnvironment(SMALL) as env:
        p = env.create_result_partition(2, on_consumer_lost="discard")
        gate0 = env.create_input_gate([(p.partition_id, 0)])
        gate1 = env.create_input_gate([(p.partition_id, 1)])
        gate0.request_partitions()
        gate1.request_partitions()
        gate0.close()
        assert _wait_for(lambda: 0 in p.lost_consumers)
        with RecordWriter(p, timeout=-1) as w:
            for i in range(100):
                w.emit(b"d%d" % i, i % 2)     # those for 0 are dropped
            w.flush_all()
        p.finish()
        with RecordReader(gate1) as r:
            assert sum(1 for _ in r) == 50
        gate1.close()
        p.close()
        assert p.is_released
        _assert_whole(env)


def test_the_policy_is_checked():
    with NetworkEnvironment(SMALL) as env, pytest.raises(ValueError, match="on_consumer_lost"):
        env.create_result_partition(1, on_consumer_lost="ignore")


def test_the_error_pickles_and_is_exported():
    import flinknet
    from flinknet.ids import ResultPartitionID

    assert "ConsumerLostError" in flinknet.__all__
    pid = ResultPartitionID()
    err = ConsumerLostError(pid, 3, "local gate 'Sink'", "gone")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is ConsumerLostError and str(back) == str(err)
    assert (back.partition_id, back.subpartition, back.consumer, back.reason) == (pid, 3, "local gate 'Sink'", "gone")
