"""The gate's fast lane (SingleInputGate.poll_data_buffer), which a RecordReader uses first: over
real TCP between two NetworkEnvironments it must deliver what the general path delivers — every
record and event of every channel in order — and count it the same; what it cannot take (events,
failures, debloating) stays the general path's. Pools whole after each."""

from __future__ import annotations

import random
import struct
import time

import pytest

from flinknet import events as ev
from flinknet.consumer import RecordOrEvent, RecordReader
from flinknet.environment import NetworkEnvironment
from flinknet.errors import FlinknetError
from flinknet.writer import RecordWriter
from tests.helpers import Worker, assert_whole, count_calls, first_record_read, two_local_gates, wait_queued

JOIN = 30.0
SMALL = {"taskmanager.memory.segment-size": "4kb", "taskmanager.memory.network.max": "4mb"}
HEADER = struct.Struct(">HI")


def record(producer: int, seq: int) -> bytes:
    rng = random.Random(producer * 1_000_003 + seq)
    return HEADER.pack(producer, seq) + rng.randbytes(rng.randrange(900))


def produce(partition, producer: int, n: int, every: int) -> None:
    """``n`` records; after every ``every``-th a CancelCheckpointMarker naming it (an event in
    the channel's order, taken by the general path)."""
    with RecordWriter(partition, timeout=1) as w:
        for i in range(n):
            w.emit(record(producer, i), 0)
            if i % every == every - 1:
                partition.broadcast_event(ev.CancelCheckpointMarker(i))
    partition.finish()


def collect(item, seen: dict[int, list], channel_of=None) -> None:
    """File a record (checked, as its sequence number, under its producer) or an event (under
    its channel: ``channel_of(info)``, by default the channel index)."""
    if isinstance(item, RecordOrEvent):
        key = channel_of(item.channel_info) if channel_of else item.channel_info.input_channel_idx
        seen[key].append(item.event)
    else:
        producer, seq = HEADER.unpack_from(item)
        assert item == record(producer, seq)
        seen[producer].append(seq)


def expected(n: int, every: int) -> list:
    """A channel's items: its records, each marker right after the record it names, the end."""
    want: list = []
    for seq in range(n):
        want.append(seq)
        if seq % every == every - 1:
            want.append(ev.CancelCheckpointMarker(seq))
    return [*want, ev.EndOfPartitionEvent()]


@pytest.mark.parametrize("api", ["read_batch", "iterate"])
def test_fast_lane_delivers_every_record_and_event_in_order_and_counts_alike(api):
    n, every, channels = 3000, 700, 3
    with NetworkEnvironment(SMALL) as prod, NetworkEnvironment(SMALL) as cons:
        partitions = [prod.create_result_partition(1) for _ in range(channels)]
        gate = cons.create_input_gate([(p.partition_id, 0, prod.address) for p in partitions])
        hits = {"fast": 0}
        lane = gate.poll_data_buffer

        def counting():
            got = lane()
            if got is not None:
                hits["fast"] += 1
            return got

        gate.poll_data_buffer = counting          # the reader binds it when it is made
        workers = [Worker(produce, p, i, n, every) for i, p in enumerate(partitions)]
        for w in workers:
            w.start()
        seen: dict[int, list] = {i: [] for i in range(channels)}
        with gate, RecordReader(gate, emit_events=True) as reader:
            items = iter(reader) if api == "iterate" else (
                x for batch in iter(reader.read_batch, None) for x in batch)
            for item in items:
                collect(item, seen)
            for w in workers:
                w.finish(JOIN)
                assert w.error is None
            want = expected(n, every)
            for i in range(channels):
                assert seen[i] == want, (i, seen[i][-3:])
            assert hits["fast"] > 0                # the lane was taken, events went around it
            # gate and channels count what both paths took, alike
            chans = gate.input_channels
            assert gate.num_buffers_in == gate.num_buffers_in_remote == sum(c.num_buffers_in for c in chans)
            assert gate.num_bytes_in == gate.num_bytes_in_remote == sum(c.num_bytes_in for c in chans)
            assert gate.num_buffers_in > hits["fast"]
        for p in partitions:
            p.close()
    assert_whole(prod, cons)


def test_a_channel_failed_meanwhile_raises_through_the_fast_lane_and_stays_failed():
    with first_record_read(SMALL) as (w, gate, reader, channel):
        w.emit(b"second", 0)
        w.emit(b"third", 0)
        wait_queued(channel, 2)
        # the failure lands between the arrival and the reader's next take (set without the gate
        # hearing of it yet: the race the fast lane checks for)
        channel._cause = FlinknetError("the connection broke")
        with pytest.raises(FlinknetError, match="the connection broke"):
            reader.read_batch()
        with pytest.raises(FlinknetError, match="the connection broke"):
            reader.read_batch()           # readable with its failure from now on


def test_a_debloating_gate_reads_every_buffer_on_the_general_path():
    opts = {**SMALL, "taskmanager.network.memory.buffer-debloat.enabled": True}
    with NetworkEnvironment(opts) as prod, NetworkEnvironment(opts) as cons:
        partition = prod.create_result_partition(1)
        gate = cons.create_input_gate([(partition.partition_id, 0, prod.address)])
        worker = Worker(produce, partition, 0, 500, 10_000)
        worker.start()
        with gate, RecordReader(gate) as reader:
            got = 0
            while (batch := reader.read_batch()) is not None:
                got += len(batch)
                assert gate.poll_data_buffer() is None     # debloating measures every buffer
            worker.finish(JOIN)
            assert worker.error is None and got == 500
        partition.close()
    assert_whole(prod, cons)


@pytest.mark.parametrize("path", ["fast lane", "general path"])
def test_a_failing_backlog_request_gives_the_taken_buffer_back(path):
    # note_polled (the sender's backlog: floating buffers from the gate pool) raising after the
    # buffer left the channel's queue: the buffer is recycled, the error reaches the reader
    with first_record_read(SMALL) as (w, gate, reader, channel):

        def broken(*args):
            raise RuntimeError("the gate pool broke")

        channel.note_polled = broken
        w.emit(b"second", 0)
        wait_queued(channel, 1)
        with pytest.raises(RuntimeError, match="the gate pool broke"):
            if path == "fast lane":
                gate.poll_data_buffer()
            else:
                gate.poll_next()
        del channel.note_polled


def test_a_reader_that_caught_up_reads_on_through_the_lane_after_its_waits():
    # A producer slower than the reader: the reader finds the gate empty before nearly every
    # buffer and waits on the doorbell (wait_for_lane); the buffer that ends the wait comes
    # through the lane too, not through get_next's BufferOrEvent. Only the end goes around.
    n = 60
    with first_record_read(SMALL) as (w, gate, reader, channel):
        counts: dict = {}
        count_calls(gate, "get_next", counts)
        count_calls(gate, "wait_for_lane", counts)

        def slowly():
            for i in range(n):
                time.sleep(0.002)
                w.emit(i.to_bytes(4, "big"), 0)     # the writer's timeout 0: one buffer each

        worker = Worker(slowly)
        worker.start()
        got = []
        while len(got) < n:
            got.extend(reader.read_batch(timeout=JOIN))
        worker.finish(JOIN)
        assert worker.error is None
        assert got == [i.to_bytes(4, "big") for i in range(n)]
        assert counts.get("wait_for_lane", 0) >= n // 4      # it waited, on the doorbell
        assert counts.get("get_next", 0) == 0                 # and never took the general path
        # (about a buffer per record: one emitted before the sender took the last may join it)
        assert n // 2 < channel.num_buffers_in == gate.num_buffers_in <= n + 1


def test_a_timed_read_on_the_lane_times_out_and_the_lane_reads_on_after_it():
    with first_record_read(SMALL) as (w, gate, reader, channel):
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            reader.read_batch(timeout=0.05)
        assert 0.04 <= time.monotonic() - t0 < JOIN
        with pytest.raises(TimeoutError):
            reader.read_batch(timeout=0)
        with pytest.raises(TimeoutError):
            reader.read_array("V5", timeout=0.01)
        with pytest.raises(ValueError, match="timeout"):
            gate.wait_for_lane(float("nan"))
        w.emit(b"later", 0)
        assert reader.read_batch(timeout=JOIN) == [b"later"]
        w.emit(b"array", 0)
        assert reader.read_array("V5", timeout=JOIN).tobytes() == b"array"


@pytest.mark.parametrize("what", ["a channel failure", "the gate's close"])
def test_a_wait_on_the_lane_ends_at_a_failure_or_a_close(what):
    # Python-side news (a failed channel, a closed gate) rings the doorbell's waiters: the
    # reader waiting on the lane wakes within the test's patience and gets it from get_next.
    from flinknet.errors import CancelTaskError
    with first_record_read(SMALL) as (w, gate, reader, channel):
        def later():
            time.sleep(0.1)
            if what == "a channel failure":
                channel.on_error(FlinknetError("the producer failed"))
            else:
                gate.close()

        worker = Worker(later)
        worker.start()
        expected_error = FlinknetError if what == "a channel failure" else CancelTaskError
        t0 = time.monotonic()
        with pytest.raises(expected_error):
            reader.read_batch()
        assert time.monotonic() - t0 < JOIN
        worker.finish(JOIN)


def test_wait_for_lane_declines_where_the_lane_cannot_serve():
    from flinknet.consumer import UnionInputGate
    with two_local_gates(SMALL) as (local, other):
        assert local.poll_data_buffer() is None
        assert local.wait_for_lane(0.01) is False               # local channels only
        union = UnionInputGate([local, other])
        assert union.wait_for_lane(0.01) is False               # a union has no lane wait
    with first_record_read(SMALL) as (w, gate, reader, channel):
        assert gate.poll_data_buffer() is None                  # the lane in use, empty
        w.emit(b"ready", 0)
        wait_queued(channel, 1)
        assert gate.wait_for_lane(0) is True                    # ready already: no wait
        assert reader.read_batch() == [b"ready"]
        gate.close()
        assert gate.wait_for_lane(0.01) is False                # closed: the general path's


def _produce_randomly(partition, producer: int, n: int, seed: int) -> None:
    """``n`` records of random sizes with random pauses, flushes and markers (seeded)."""
    rng = random.Random(seed * 7919 + producer)
    with RecordWriter(partition, timeout=rng.choice([0, 1, 100])) as w:
        for i in range(n):
            w.emit(record(producer, i), 0)
            roll = rng.random()
            if roll < 0.02:
                partition.broadcast_event(ev.CancelCheckpointMarker(i))
            elif roll < 0.05:
                partition.flush_all()
            elif roll < 0.06:
                time.sleep(rng.random() * 0.003)
    partition.finish()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fast_lane_under_random_producers_and_a_stalling_reader(seed):
    # Randomized: producers with random pauses, flushes and events; a reader that stalls at
    # random points, reads through the lane and, now and then, through poll_next (the general
    # path) on the same gate. Every channel's records and markers arrive in order, the counts
    # agree, and the pools are whole.
    rng = random.Random(seed)
    n, channels = 2000, 4
    with NetworkEnvironment(SMALL) as prod, NetworkEnvironment(SMALL) as cons:
        partitions = [prod.create_result_partition(1) for _ in range(channels)]
        gate = cons.create_input_gate([(p.partition_id, 0, prod.address) for p in partitions])
        workers = [Worker(_produce_randomly, p, i, n, seed) for i, p in enumerate(partitions)]
        for w in workers:
            w.start()
        seen: dict[int, list] = {i: [] for i in range(channels)}
        with gate, RecordReader(gate, emit_events=True) as reader:
            while True:
                if rng.random() < 0.01:
                    time.sleep(rng.random() * 0.002)
                if rng.random() < 0.1:
                    boe = gate.poll_next()
                    if boe is None:
                        if gate.is_finished:
                            break
                        continue
                    if boe.buffer is not None:
                        batch = reader._deserializer(boe.channel_info).read_records(boe.buffer)
                    else:
                        batch = [RecordOrEvent(boe.event, boe.channel_info)]
                else:
                    batch = reader.read_batch(timeout=JOIN)
                    if batch is None:
                        break
                for item in batch:
                    collect(item, seen)
            for w in workers:
                w.finish(JOIN)
                assert w.error is None
            for i in range(channels):
                assert [x for x in seen[i] if isinstance(x, int)] == list(range(n))
                # each marker right after the record it names
                for pos, x in enumerate(seen[i]):
                    if isinstance(x, ev.CancelCheckpointMarker):
                        assert seen[i][pos - 1] == x.checkpoint_id
                assert seen[i][-1] == ev.EndOfPartitionEvent()
            chans = gate.input_channels
            assert gate.num_buffers_in == sum(c.num_buffers_in for c in chans)
            assert gate.num_bytes_in == sum(c.num_bytes_in for c in chans)
        for p in partitions:
            p.close()
    assert_whole(prod, cons)


def test_union_fast_lane_delivers_every_record_and_event_of_every_member_in_order():
    from flinknet.consumer import UnionInputGate

    n, every = 2000, 300
    with NetworkEnvironment(SMALL) as prod, NetworkEnvironment(SMALL) as cons:
        partitions = [prod.create_result_partition(1) for _ in range(4)]
        gates = [cons.create_input_gate([(p.partition_id, 0, prod.address) for p in partitions[2 * g:2 * g + 2]],
                                        gate_index=g) for g in range(2)]
        union = UnionInputGate(*gates)
        hits = {"fast": 0}
        lane = union.poll_data_buffer

        def counting():
            got = lane()
            hits["fast"] += got is not None
            return got

        union.poll_data_buffer = counting
        workers = [Worker(produce, p, i, n, every) for i, p in enumerate(partitions)]
        for w in workers:
            w.start()
        seen: dict[int, list] = {i: [] for i in range(4)}
        with union, RecordReader(union, emit_events=True) as reader:
            for item in reader:
                collect(item, seen, lambda info: 2 * info.gate_idx + info.input_channel_idx)
            for w in workers:
                w.finish(JOIN)
                assert w.error is None
            want = expected(n, every)
            assert all(seen[i] == want for i in range(4))
            assert hits["fast"] > 0
            for g in gates:
                assert g.num_buffers_in == sum(c.num_buffers_in for c in g.input_channels)
        for p in partitions:
            p.close()
    assert_whole(prod, cons)


# -- the credit a lane read frees goes out after the records are handed out ------------------------

def wait_credit_written(channel) -> None:
    """Until ``channel`` has no unannounced credit left (written inline, or by the I/O thread
    if the connection was busy; bounded by JOIN)."""
    deadline = time.monotonic() + JOIN
    while channel.unannounced_credit and time.monotonic() < deadline:
        time.sleep(0.001)
    assert channel.unannounced_credit == 0


def read_one_on_the_lane(w, gate, reader, channel) -> None:
    """Start clean (nothing deferred), then emit one record and read it through the lane."""
    gate.flush_credit()                                  # (what the first read deferred)
    assert channel.unannounced_credit == 0
    w.emit(b"one", 0)
    wait_queued(channel, 1)
    assert reader.read_batch() == [b"one"]


def test_a_lane_reads_credit_is_announced_before_the_reader_waits_not_inside_the_read():
    # The recycle inside read_batch frees a slot with nothing queued: instead of an inline
    # AddCredit there (between the record's arrival and its hand-out), the credit is listed and
    # marked in the doorbell; the reader's next wait writes it first, so the sender can send.
    with first_record_read(SMALL) as (w, gate, reader, channel):
        signal = gate.signal
        read_one_on_the_lane(w, gate, reader, channel)
        assert signal.deferred_credit_count == 1         # listed, not written
        assert channel.unannounced_credit == 1
        assert channel.credit == 2                       # the slot itself is free at once

        def later():
            time.sleep(0.05)
            w.emit(b"two", 0)

        worker = Worker(later)
        worker.start()
        assert reader.read_batch(timeout=JOIN) == [b"two"]   # waited: flushed first
        worker.finish(JOIN)
        assert signal.deferred_credit_count == 1             # ("two"'s own, deferred again)
        reader.close()                                       # the reader's close flushes
        assert signal.deferred_credit_count == 0
        assert channel.unannounced_credit == 0


def test_deferred_credit_reaches_the_sender_even_if_the_reader_never_comes_back():
    # The connection's credit timer writes a listed credit within 5 ms: a reader that stops
    # after a read never strands its channel's sender.
    with first_record_read(SMALL) as (w, gate, reader, channel):
        read_one_on_the_lane(w, gate, reader, channel)
        assert channel.unannounced_credit == 1
        wait_credit_written(channel)


def test_a_deferred_credit_goes_out_at_the_next_read_while_the_reader_reads_other_channels():
    # A reader that reads on from another channel never waits, so the next read, not only the
    # next wait, writes what the last one deferred: a channel whose queue ran dry is not left
    # to the credit timer while its neighbours keep the reader busy.
    with NetworkEnvironment(SMALL) as prod, NetworkEnvironment(SMALL) as cons:
        partition = prod.create_result_partition(2)
        gate = cons.create_input_gate([(partition.partition_id, i, prod.address) for i in range(2)])
        with RecordWriter(partition, timeout=0) as w, gate, RecordReader(gate) as reader:
            first, second = gate.input_channels
            for sub in range(2):
                w.emit(b"first", sub)
                assert reader.read_batch(timeout=JOIN) == [b"first"]
            read_one_on_the_lane(w, gate, reader, first)      # first's credit: deferred
            signal = gate.signal
            assert signal.deferred_credit_count == 1
            w.emit(b"next", 1)
            wait_queued(second, 1)
            assert reader.read_batch(blocking=False) == [b"next"]   # no wait in between
            assert reader.last_channel_info == second.channel_info
            # first's deferred credit went out before that read; only second's is deferred now
            assert signal.deferred_credit_count == 1
            wait_credit_written(first)
            reader.close()
            assert signal.deferred_credit_count == 0 and second.unannounced_credit == 0
        partition.close()
    assert_whole(prod, cons)


def emit_queued(w, channel, records: list[bytes]) -> None:
    """Emit each record once the one before it is queued at the consumer: a buffer each (an
    emit into a buffer not yet sent would join it)."""
    for i, rec in enumerate(records):
        w.emit(rec, 0)
        wait_queued(channel, i + 1)


def test_the_lane_poll_that_empties_a_channel_defers_the_credit_that_waited_for_it():
    # Two records queued: the first one's recycle lists its credit (the queue is not empty),
    # and the poll that takes the second one empties the queue. That credit goes out after
    # the second record is handed out (the gate's next flush), not by an inline AddCredit in
    # the poll before it.
    with first_record_read(SMALL) as (w, gate, reader, channel):
        signal = gate.signal
        gate.flush_credit()
        assert channel.unannounced_credit == 0
        emit_queued(w, channel, [b"one", b"two"])
        assert reader.read_batch() == [b"one"]
        assert channel.unannounced_credit == 1 and signal.deferred_credit_count == 0
        assert reader.read_batch() == [b"two"]
        # the first credit (listed when the poll emptied the queue) and the second (freed by
        # the read): both still to be written, by the gate's next flush
        assert channel.unannounced_credit == 2
        assert signal.deferred_credit_count == 1
        assert reader.read_batch(blocking=False) is None       # the next poll writes them
        assert signal.deferred_credit_count == 0
        wait_credit_written(channel)


def test_the_next_poll_leaves_a_channel_that_received_more_to_its_queue_running_dry():
    # A read defers its credit; the next record arrives before the next read. That read's poll
    # does not write the deferred credit before handing the new buffer out (a channel with
    # buffers queued keeps its credit listed until its queue runs dry): both credits go out
    # together after it. The connection's 5 ms credit timer may write the first one between
    # the two reads on a slow machine, so the scenario runs five times and most must show it.
    with first_record_read(SMALL) as (w, gate, reader, channel):
        signal = gate.signal
        together = 0
        for _ in range(5):
            gate.flush_credit()
            emit_queued(w, channel, [b"one"])
            assert reader.read_batch() == [b"one"]
            assert signal.deferred_credit_count == 1
            emit_queued(w, channel, [b"two"])
            assert reader.read_batch() == [b"two"]
            assert signal.deferred_credit_count == 1
            together += channel.unannounced_credit == 2
        assert together >= 3
        reader.close()
        assert signal.deferred_credit_count == 0
        wait_credit_written(channel)


def test_no_floating_buffer_is_borrowed_for_buffers_still_queued_but_one_is_for_buffers_held():
    # Backlog 0 and no free slot: while the buffer behind the one polled is still queued, the
    # reader is about to take it (and recycle both), so nothing is borrowed; when the task
    # holds both buffers (none will come back), the poll borrows a floating buffer, so that
    # the sender gets credit, as Flink's channel does.
    with first_record_read(SMALL) as (w, gate, reader, channel):
        counts: dict = {}
        count_calls(channel, "on_sender_backlog", counts)
        emit_queued(w, channel, [b"one", b"two"])
        assert reader.read_batch() == [b"one"]      # free 0, one queued: no request
        assert reader.read_batch() == [b"two"]
        assert counts.get("on_sender_backlog", 0) == 0
        reader.close()                              # (its close writes the credit)
        emit_queued(w, channel, [b"three", b"four"])
        held = [gate.get_next(JOIN), gate.get_next(JOIN)]   # the general path: the task keeps them
        try:
            assert [bytes(b.buffer.get_nio_buffer_readable()[4:]) for b in held] == [b"three", b"four"]
            assert counts.get("on_sender_backlog", 0) == 1  # at the second: free 0, none queued
            assert channel.floating_buffers_available + channel.queue.free_slots >= 1
        finally:
            for boe in held:
                boe.buffer.recycle()


def test_without_a_reader_defers_nothing_and_a_recycle_announces_at_once():
    from flinknet._core.engine import defer_credit
    with first_record_read(SMALL) as (w, gate, reader, channel):
        gate.flush_credit()
        w.emit(b"one", 0)
        wait_queued(channel, 1)
        boe = gate.get_next(JOIN)                        # the general path: no deferral
        boe.buffer.recycle()
        assert gate.signal.deferred_credit_count == 0 and channel.unannounced_credit == 0
        defer_credit(True)
        try:
            w.emit(b"two", 0)
            wait_queued(channel, 1)
            gate.get_next(JOIN).buffer.recycle()         # deferred on this thread
        finally:
            defer_credit(False)
        assert gate.signal.deferred_credit_count == 1 and channel.unannounced_credit == 1
        gate.flush_credit()
        assert gate.signal.deferred_credit_count == 0 and channel.unannounced_credit == 0


def test_no_floating_buffer_is_borrowed_for_a_buffer_whose_own_recycle_refills_the_credit():
    # backlog 0 with a free slot left: the shortfall is the buffer being read (Flink borrows a
    # floating buffer and gives it back at its recycle); with a backlog, or no slot left, the
    # channel borrows as Flink does.
    with first_record_read(SMALL) as (w, gate, reader, channel):
        counts: dict = {}
        count_calls(channel, "on_sender_backlog", counts)
        for i in range(5):
            w.emit(i.to_bytes(2, "big"), 0)
            wait_queued(channel, 1)
            assert reader.read_batch() == [i.to_bytes(2, "big")]
        assert counts.get("on_sender_backlog", 0) == 0
        assert channel.floating_buffers_available == 0
        # the sender reports a backlog (as its next buffer would): borrow for it
        from flinknet._core.buffer import FREEING_BUFFER_RECYCLER, NetworkBuffer
        from flinknet._core.memory import MemorySegment
        buffer = NetworkBuffer(MemorySegment(16), FREEING_BUFFER_RECYCLER)
        try:
            channel.note_polled(buffer, 0, 3)
        finally:
            buffer.recycle()
        assert counts.get("on_sender_backlog", 0) == 1
        assert channel.credit >= 3 + channel.initial_credit - 1
