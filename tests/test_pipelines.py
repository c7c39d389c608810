"""In-process pipelines: producer threads × consumer threads over real partitions and gates.

Each producer task owns a result partition (one subpartition per consumer) and a record writer
built by :class:`RecordWriterBuilder` with the edge's partitioner; each consumer task reads a
:class:`SingleInputGate` of local channels (one per producer) through a :class:`RecordReader`.
Records have random sizes from 0 to 3× the segment size, so many span buffers, and encode
``(edge, producer, sequence, key, crc32)``: every record must arrive exactly once, intact and in
order per (producer → consumer) channel, and broadcast edges deliver everything everywhere.

Also: a slow consumer back-pressures the producers while memory stays within the pools;
cancellation (a consumer closing its gate, a producer failing its partition, a blocked producer
failed by another thread) ends every thread with the expected error and leaves every pool whole
(by default a consumer that leaves early fails its producers with ConsumerLostError; the tests
whose subject is the rest of the pipeline carrying on create their partitions with
``on_consumer_lost="discard"``);
a BLOCKING edge is read (twice) after its producers finished; a UnionInputGate reads two edges.
"""

from __future__ import annotations

import random
import struct
import threading
import time
import zlib
from collections import defaultdict

import pytest

from flinknet._core.keygroups import assign_key_to_parallel_operator
from flinknet.consumer import RecordReader, SingleInputGate, UnionInputGate
from flinknet.errors import CancelTaskError, ConsumerLostError, ProducerFailedError
from flinknet.partition import ResultPartitionManager, create_result_partition
from flinknet.partitioners import BroadcastPartitioner, KeyGroupStreamPartitioner, RebalancePartitioner
from flinknet.types import ResultPartitionType
from flinknet.writer import BroadcastRecordWriter, RecordWriter, RecordWriterBuilder

SEG = 128
WAIT = 10.0  # a consumer waiting this long for a buffer fails (TimeoutError)
JOIN = 20.0  # all threads of a pipeline must be done by then
MAX_PARALLELISM = 128
HEADER = struct.Struct(">BHIiI")  # edge, producer, sequence, key, crc32 of the body


# --- records -------------------------------------------------------------------------------------


def make_records(edge: int, producer: int, count: int, seed: int, num_keys: int = 40) -> list[bytes]:
    rng = random.Random(seed * 7919 + edge * 101 + producer)
    out = []
    for seq in range(count):
        body = rng.randbytes(rng.randrange(3 * SEG + 1))
        key = rng.randrange(num_keys) * 1_000_003 - 20_000_000  # a few keys, shared by producers
        out.append(HEADER.pack(edge, producer, seq, key, zlib.crc32(body)) + body)
    return out


def key_of(record) -> int:
    return HEADER.unpack_from(record)[3]


def by_channel(records) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """(edge, producer) → [(sequence, key)] in arrival order; every record's body is checked."""
    out = defaultdict(list)
    for r in records:
        edge, producer, seq, key, crc = HEADER.unpack_from(r)
        assert zlib.crc32(memoryview(r)[HEADER.size:]) == crc, f"corrupt record {edge}/{producer}/{seq}"
        out[(edge, producer)].append((seq, key))
    return out


def seqs(items) -> list[int]:
    return [s for s, _ in items]


# --- tasks ---------------------------------------------------------------------------------------


class Task(threading.Thread):
    """A daemon thread keeping its result or exception; ``got`` collects what a consumer read."""

    def __init__(self, name, fn, *args, **kwargs):
        super().__init__(name=name, daemon=True)
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self.result = None
        self.error: BaseException | None = None
        self.got: list = []

    def run(self):
        try:
            self.result = self._fn(self, *self._args, **self._kwargs)
        except BaseException as e:  # noqa: BLE001 (checked by the test)
            self.error = e


def selector_for(kind: str):
    if kind == "keyed":
        return KeyGroupStreamPartitioner(key_of, max_parallelism=MAX_PARALLELISM)
    if kind == "rebalance":
        return RebalancePartitioner()
    if kind == "broadcast":
        return BroadcastPartitioner()
    raise ValueError(kind)


def produce(task, partition, kind, timeout, records, fail_at=None, error=None):
    """A producing task: emit, finish, close; on an error fail the partition (Flink's Task)."""
    writer = (RecordWriterBuilder().set_channel_selector(selector_for(kind)).set_timeout(timeout)
              .set_task_name(task.name).build(partition))
    try:
        for seq, record in enumerate(records):
            if seq == fail_at:
                raise error
            writer.emit(record)
        partition.finish()
    except BaseException as e:
        partition.fail(e)
        raise
    finally:
        writer.close()
        partition.close()
    return len(records)


def consume(task, gate, slow: float = 0.0, stop_after: int | None = None, before_reading=None):
    """A consuming task: read the gate to its end (or ``stop_after`` records), then close."""
    reader = RecordReader(gate)
    try:
        if before_reading is not None:
            before_reading()
        while (batch := reader.read_batch(timeout=WAIT)) is not None:
            task.got.extend(batch)
            if slow:
                time.sleep(slow)
            if stop_after is not None and len(task.got) >= stop_after:
                return "stopped"
        return "finished"
    finally:
        reader.close()
        gate.close()


class Pipeline:
    """Partitions, gates and threads of one test; ``run`` starts and joins them all, and on a
    hang fails every partition and closes every gate so that nothing outlives the test."""

    def __init__(self, nbp, manager):
        self.nbp = nbp
        self.manager = manager
        self.partitions = []
        self.gates = []
        self.tasks = []

    def edge(self, num_producers, num_consumers, partition_type=ResultPartitionType.PIPELINED_BOUNDED,
             **kwargs):
        parts = [create_result_partition(self.nbp, num_consumers, partition_type=partition_type,
                                         partition_manager=self.manager, owning_task_name=f"p{i}",
                                         **kwargs)
                 for i in range(num_producers)]
        for p in parts:
            p.setup()
        self.partitions += parts
        return parts

    def gate(self, parts, consumer: int, gate_index: int = 0):
        g = SingleInputGate.create_local(self.manager, [(p.partition_id, consumer) for p in parts],
                                         gate_index, owning_task_name=f"c{consumer}")
        g.request_partitions()  # the partitions are registered: every channel gets its view now
        self.gates.append(g)
        return g

    def task(self, name, fn, *args, **kwargs):
        t = Task(name, fn, *args, **kwargs)
        self.tasks.append(t)
        return t

    def run(self, tasks=None, timeout: float = JOIN):
        tasks = self.tasks if tasks is None else tasks
        for t in tasks:
            t.start()
        self.join(tasks, timeout)

    def join(self, tasks=None, timeout: float = JOIN):
        tasks = self.tasks if tasks is None else tasks
        deadline = time.monotonic() + timeout
        for t in tasks:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in tasks if t.is_alive()]
        if stuck:
            self.abort()
            pytest.fail(f"threads still running after {timeout} s: {stuck}")

    def abort(self):
        for p in self.partitions:
            p.fail(RuntimeError("pipeline aborted by the test"))
        for g in self.gates:
            try:
                g.close()
            except Exception:  # noqa: BLE001 (best effort)
                pass
        for t in self.tasks:
            t.join(JOIN)

    def errors(self):
        return {t.name: t.error for t in self.tasks if t.error is not None}


@pytest.fixture
def manager(make_pool):
    m = ResultPartitionManager()
    yield m
    m.shutdown()


@pytest.fixture
def pipeline(make_pool, manager):
    nbp = make_pool(96, SEG)
    pl = Pipeline(nbp, manager)
    yield pl
    if any(t.is_alive() for t in pl.tasks):
        pl.abort()
    for p in pl.partitions:
        p.release()
        p.close()
    for g in pl.gates:
        g.close()


# --- expectations --------------------------------------------------------------------------------


def expected_keyed(records, consumer: int, num_consumers: int) -> list[int]:
    return [s for s, r in enumerate(records)
            if assign_key_to_parallel_operator(key_of(r), MAX_PARALLELISM, num_consumers) == consumer]


def check_edge(kind, edge: int, records_by_producer, got_by_consumer):
    """Every record of ``edge`` exactly once, in order per channel, where the partitioner sends it."""
    num_consumers = len(got_by_consumer)
    channels = [by_channel(got) for got in got_by_consumer]
    for p, records in enumerate(records_by_producer):
        count = len(records)
        lists = [seqs(ch.get((edge, p), [])) for ch in channels]
        if kind == "broadcast":
            for c in range(num_consumers):
                assert lists[c] == list(range(count)), f"consumer {c} from producer {p}"
        elif kind == "keyed":
            for c in range(num_consumers):
                assert lists[c] == expected_keyed(records, c, num_consumers), f"consumer {c} from {p}"
        else:  # rebalance: round robin from a random start, so each consumer gets one residue
            residues = set()
            for c in range(num_consumers):
                assert lists[c], f"consumer {c} got nothing from producer {p}"
                r = lists[c][0]
                assert r < num_consumers
                assert lists[c] == list(range(r, count, num_consumers)), f"consumer {c} from {p}"
                residues.add(r)
            assert residues == set(range(num_consumers))
        if kind != "broadcast":
            assert sorted(s for lst in lists for s in lst) == list(range(count))  # exactly once
    if kind == "keyed":
        # A key is read by one consumer only, whichever producer sent it.
        owner = {}
        for c, ch in enumerate(channels):
            for (e, _p), items in ch.items():
                if e == edge:
                    for _s, key in items:
                        assert owner.setdefault(key, c) == c, f"key {key} went to two consumers"


# --- all-to-all pipelines ------------------------------------------------------------------------


@pytest.mark.parametrize("kind,shape,timeout", [
    ("keyed", (3, 2), -1),
    ("keyed", (2, 3), 5),
    ("rebalance", (3, 2), 0),
    ("rebalance", (2, 3), -1),
    ("broadcast", (3, 2), 5),
    ("broadcast", (2, 3), 0),
])
def test_all_to_all_exactly_once_in_order(pipeline, kind, shape, timeout):
    n, m = shape
    count = 1000
    parts = pipeline.edge(n, m)
    records = [make_records(0, p, count, seed=n * 10 + m) for p in range(n)]
    gates = [pipeline.gate(parts, c) for c in range(m)]
    producers = [pipeline.task(f"producer-{p}", produce, parts[p], kind, timeout, records[p])
                 for p in range(n)]
    consumers = [pipeline.task(f"consumer-{c}", consume, gates[c]) for c in range(m)]
    pipeline.run()
    assert pipeline.errors() == {}
    assert all(t.result == "finished" for t in consumers)
    check_edge(kind, 0, records, [t.got for t in consumers])
    total = sum(len(t.got) for t in consumers)
    assert total == n * count * (m if kind == "broadcast" else 1)
    for p in parts:
        assert p.num_records_out == count
        assert p.is_released  # released on consumption: every view released, producer closed
    assert pipeline.manager.get_unreleased_partitions() == []
    for g in gates:
        assert g.is_finished
    if kind == "broadcast":
        for p, w_records in zip(parts, records):
            framed = sum(len(r) + 4 for r in w_records)
            assert p.total_written_bytes == framed * m
    assert producers[0].result == count


def test_broadcast_writer_is_used_on_broadcast_edges(pipeline):
    parts = pipeline.edge(1, 2)
    writer = RecordWriterBuilder().set_channel_selector(selector_for("broadcast")).build(parts[0])
    try:
        assert isinstance(writer, BroadcastRecordWriter)
    finally:
        writer.close()
    writer = RecordWriterBuilder().set_channel_selector(selector_for("keyed")).build(parts[0])
    try:
        assert type(writer) is RecordWriter
    finally:
        writer.close()


# --- backpressure --------------------------------------------------------------------------------


def test_slow_consumer_back_pressures_producers_within_the_pools(pipeline):
    n, m, count = 2, 3, 200
    parts = pipeline.edge(n, m, max_overdraft_buffers=0)
    records = [make_records(0, p, count, seed=5) for p in range(n)]
    gates = [pipeline.gate(parts, c) for c in range(m)]
    nbp = pipeline.nbp

    def all_capped():
        # Unavailable because the slow consumer's subpartition holds its cap of buffers: until
        # the slow consumer reads, no blocked request can be served, and the producer, which
        # has far more data for it than its pool holds, is bound to block.
        return all(not p.is_available and p.buffer_pool.subpartition_buffer_count(0)
                   >= p.buffer_pool.max_buffers_per_channel for p in parts)

    def wait_until_all_capped():
        deadline = time.monotonic() + WAIT
        while not all_capped() and time.monotonic() < deadline:
            time.sleep(0.001)

    samples = []
    violations = []
    stop = threading.Event()

    def sample(task):
        limits = {id(p): p.buffer_pool.max_buffers + p.buffer_pool.max_overdraft_buffers_per_gate
                  for p in parts}
        while not stop.is_set():
            used = nbp.used_segments
            samples.append(used)
            if used > nbp.total_segments:
                violations.append(f"global pool: {used} > {nbp.total_segments}")
            for p in parts:
                pool = p.buffer_pool
                if not pool.is_destroyed and pool.requested_segments > limits[id(p)]:
                    violations.append(f"{p}: {pool.requested_segments} > {limits[id(p)]}")
            stop.wait(0.001)

    producers = [pipeline.task(f"producer-{p}", produce, parts[p], "keyed", 5, records[p])
                 for p in range(n)]
    consumers = [pipeline.task("consumer-0-slow", consume, gates[0], slow=0.001,
                               before_reading=wait_until_all_capped)]
    consumers += [pipeline.task(f"consumer-{c}", consume, gates[c]) for c in range(1, m)]
    sampler = Task("sampler", sample)
    sampler.start()
    try:
        pipeline.run(producers + consumers)
    finally:
        stop.set()
        sampler.join(JOIN)
    assert not sampler.is_alive() and sampler.error is None
    assert pipeline.errors() == {}
    check_edge("keyed", 0, records, [t.got for t in consumers])
    for p in parts:
        assert p.back_pressured_ns > 0, f"{p} was never back-pressured"
    assert samples and violations == []
    assert max(samples) <= nbp.total_segments


# --- cancellation --------------------------------------------------------------------------------


def test_consumer_closing_its_gate_mid_stream(pipeline):
    """Consumer 0 stops after a few records and closes its gate: with ``on_consumer_lost=
    "discard"`` the producers go on (what they write for it is dropped), the other consumer gets
    everything, and everything is released."""
    n, m, count = 3, 2, 300
    parts = pipeline.edge(n, m, on_consumer_lost="discard")
    records = [make_records(0, p, count, seed=7) for p in range(n)]
    gates = [pipeline.gate(parts, c) for c in range(m)]
    _producers = [pipeline.task(f"producer-{p}", produce, parts[p], "rebalance", -1, records[p])
                 for p in range(n)]
    quitter = pipeline.task("consumer-0", consume, gates[0], stop_after=60)
    reader = pipeline.task("consumer-1", consume, gates[1])
    pipeline.run()
    assert pipeline.errors() == {}
    assert quitter.result == "stopped"
    assert reader.result == "finished"
    assert 60 <= len(quitter.got) < n * count // m
    assert gates[0].is_closed
    with pytest.raises(CancelTaskError):
        gates[0].get_next(timeout=WAIT)
    # The quitter's records are an in-order prefix of what it would have got.
    full = by_channel(reader.got)
    for (edge, p), items in by_channel(quitter.got).items():
        got = seqs(items)
        other = seqs(full[(edge, p)])
        r = got[0]
        assert r < m and r != other[0]
        assert got == list(range(r, count, m))[:len(got)]
    for p in range(n):
        other = seqs(full[(0, p)])
        assert other == list(range(other[0], count, m))
    for p in parts:
        assert p.is_released
        assert list(p.lost_consumers) == [0]   # recorded, not raised
        assert p.lost_consumers[0].consumer.startswith("local gate 'c0'")
    assert pipeline.manager.get_unreleased_partitions() == []


def test_consumer_closing_its_gate_mid_stream_fails_its_producers(pipeline):
    """The default policy: consumer 0 stops after a few records and closes its gate while every
    producer still has far more to write than its pool holds. The producers' writers raise
    ConsumerLostError naming the gate that left (whichever subpartition they were writing to),
    each producer fails its partition with it, the other consumer sees ProducerFailedError caused
    by one of them after an in-order prefix, and every buffer comes back.

    The failure cascades as in Flink: consumer 1 closes its gate on the first ProducerFailedError,
    which can reach a partition before consumer 0's close (its channels are released one by one)
    did; that producer then names consumer 1."""
    n, m, count = 3, 2, 300
    parts = pipeline.edge(n, m)
    records = [make_records(0, p, count, seed=7) for p in range(n)]
    gates = [pipeline.gate(parts, c) for c in range(m)]
    producers = [pipeline.task(f"producer-{p}", produce, parts[p], "rebalance", -1, records[p])
                 for p in range(n)]
    quitter = pipeline.task("consumer-0", consume, gates[0], stop_after=60)
    reader = pipeline.task("consumer-1", consume, gates[1])
    pipeline.run()
    assert quitter.error is None and quitter.result == "stopped"
    named = []
    for t, p in zip(producers, parts):
        err = t.error
        assert isinstance(err, ConsumerLostError), (t.name, err)
        assert err.partition_id == p.partition_id and err.subpartition in (0, 1)
        named.append(err.subpartition)
        assert err.consumer.startswith(f"local gate 'c{err.subpartition}' (channel "), err.consumer
        assert "gate closed" in err.reason
        assert err.consumer in str(err) and str(p.partition_id) in str(err)
        assert p.failure_cause is err and p.is_released
        assert p.lost_consumers[err.subpartition].consumer == err.consumer
        assert set(p.lost_consumers) <= {0, 1}
        assert p.num_records_out < count
    assert 0 in named             # consumer 0 left first: at least one producer saw it
    assert isinstance(reader.error, ProducerFailedError), reader.error
    assert reader.error.__cause__ in [t.error for t in producers]
    # what consumer 1 read before the failure is an in-order prefix of each producer's share
    for (edge, p), items in by_channel(reader.got).items():
        got = seqs(items)
        assert got == list(range(got[0], count, m))[:len(got)], (edge, p)
    assert pipeline.manager.get_unreleased_partitions() == []
    for g in gates:
        g.close()
    assert pipeline.nbp.is_whole


def test_gate_closed_by_another_thread_mid_stream(pipeline):
    """The task canceller closes a (slow) consumer's gate while it reads: the consumer's next
    read raises CancelTaskError; with ``on_consumer_lost="discard"`` producers and the other
    consumers are unaffected."""
    n, m, count = 2, 3, 600
    parts = pipeline.edge(n, m, on_consumer_lost="discard")
    records = [make_records(0, p, count, seed=17) for p in range(n)]
    gates = [pipeline.gate(parts, c) for c in range(m)]
    producers = [pipeline.task(f"producer-{p}", produce, parts[p], "keyed", 5, records[p])
                 for p in range(n)]
    victim = pipeline.task("consumer-0", consume, gates[0], slow=0.001)
    others = [pipeline.task(f"consumer-{c}", consume, gates[c]) for c in range(1, m)]
    for t in pipeline.tasks:
        t.start()
    deadline = time.monotonic() + WAIT
    while len(victim.got) < 20 and victim.is_alive() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert victim.is_alive() and len(victim.got) >= 20
    gates[0].close()
    pipeline.join()
    assert isinstance(victim.error, CancelTaskError), victim.error
    assert {t.name: t.error for t in producers + others if t.error is not None} == {}
    got = by_channel(victim.got)
    for p in range(n):
        prefix = seqs(got.get((0, p), []))
        assert prefix == expected_keyed(records[p], 0, m)[:len(prefix)]
    check_edge("keyed", 0, records, [expected_as_records(records, 0, m)] + [t.got for t in others])
    assert all(p.is_released for p in parts)
    assert all(list(p.lost_consumers) == [0] for p in parts)   # recorded, not raised


def expected_as_records(records_by_producer, consumer: int, num_consumers: int) -> list[bytes]:
    """What ``consumer`` of a keyed edge would have read (to check the others with check_edge)."""
    return [records[s] for records in records_by_producer
            for s in expected_keyed(records, consumer, num_consumers)]


def test_producer_failing_its_partition_mid_stream(pipeline):
    """Producer 0 fails after 100 records: every consumer sees ProducerFailedError (caused by the
    producer's error) after an in-order prefix of its records, closes its gate, and producer 1,
    whose consumers are gone, finishes; nothing hangs, nothing leaks.

    ``on_consumer_lost="discard"``: with the default policy producer 1 would fail too as its
    consumers leave, and a consumer could see producer 1's failure before producer 0's."""
    n, m, count = 2, 3, 300
    parts = pipeline.edge(n, m, on_consumer_lost="discard")
    records = [make_records(0, p, count, seed=8) for p in range(n)]
    gates = [pipeline.gate(parts, c) for c in range(m)]
    crash = RuntimeError("producer 0 crashed")
    failing = pipeline.task("producer-0", produce, parts[0], "keyed", 5, records[0],
                            fail_at=100, error=crash)
    healthy = pipeline.task("producer-1", produce, parts[1], "keyed", 5, records[1])
    consumers = [pipeline.task(f"consumer-{c}", consume, gates[c]) for c in range(m)]
    pipeline.run()
    assert failing.error is crash
    assert healthy.error is None
    for t in consumers:
        assert isinstance(t.error, ProducerFailedError), (t.name, t.error)
        assert t.error.__cause__ is crash
        got = by_channel(t.got)
        c = consumers.index(t)
        for p in range(n):
            prefix = seqs(got.get((0, p), []))
            expected = expected_keyed(records[p], c, m)
            assert prefix == expected[:len(prefix)]
        assert all(s < 100 for s in seqs(got.get((0, 0), [])))
    assert parts[0].is_released and parts[0].failure_cause is crash
    assert parts[1].is_released
    assert pipeline.manager.get_unreleased_partitions() == []


def test_blocked_producer_failed_from_another_thread(pipeline):
    """The consumers do not read yet, so both producers block on their pools; the task canceller
    fails producer 0's partition from the main thread: its blocked emit raises CancelTaskError,
    the consumers then see ProducerFailedError, close their gates, and producer 1 finishes.

    ``on_consumer_lost="discard"``: with the default policy producer 1 would fail too as its
    consumers leave, and a consumer could see producer 1's failure before producer 0's."""
    n, m, count = 2, 2, 400
    parts = pipeline.edge(n, m, max_overdraft_buffers=0, on_consumer_lost="discard")
    records = [make_records(0, p, count, seed=9) for p in range(n)]
    gates = [pipeline.gate(parts, c) for c in range(m)]
    go = threading.Event()
    producers = [pipeline.task(f"producer-{p}", produce, parts[p], "broadcast", -1, records[p])
                 for p in range(n)]
    consumers = [pipeline.task(f"consumer-{c}", consume, gates[c], before_reading=lambda: go.wait(JOIN))
                 for c in range(m)]
    for t in producers + consumers:
        t.start()
    try:
        deadline = time.monotonic() + WAIT
        while parts[0].is_available and time.monotonic() < deadline:
            time.sleep(0.001)
        assert not parts[0].is_available, "producer 0 never ran out of buffers"
        producers[0].join(0.1)
        assert producers[0].is_alive()  # blocked: far more data than its pool holds
        cancel = RuntimeError("task cancelled")
        parts[0].fail(cancel)
        producers[0].join(JOIN)
        assert not producers[0].is_alive()
    finally:
        go.set()
        pipeline.join()
    assert isinstance(producers[0].error, CancelTaskError), producers[0].error
    assert producers[1].error is None
    for t in consumers:
        assert isinstance(t.error, ProducerFailedError), (t.name, t.error)
        assert t.error.__cause__ is cancel
        prefix = seqs(by_channel(t.got).get((0, 0), []))
        assert prefix == list(range(len(prefix)))
    assert all(p.is_released for p in parts)
    # producer 1 was blocked far from its end when its consumers left: both losses recorded
    assert sorted(parts[1].lost_consumers) == [0, 1]
    assert parts[0].lost_consumers == {}     # failed by its producer first: no loss


# --- blocking edge -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["keyed", "rebalance", "broadcast"])
def test_blocking_edge_read_after_the_producers_finished(pipeline, kind):
    n, m, count = 2, 2, 200
    parts = pipeline.edge(n, m, partition_type=ResultPartitionType.BLOCKING)
    records = [make_records(1, p, count, seed=11) for p in range(n)]
    producers = [pipeline.task(f"producer-{p}", produce, parts[p], kind, 100, records[p])
                 for p in range(n)]
    pipeline.run(producers)
    assert pipeline.errors() == {}
    for p in parts:
        assert p.is_finished and not p.is_released  # blocking results outlive their producer
        assert p.buffer_pool.is_destroyed  # its memory is back: the data is in files
    assert pipeline.nbp.is_whole
    results = []
    for attempt in range(2):  # blocking partitions can be consumed again
        gates = [pipeline.gate(parts, c) for c in range(m)]
        consumers = [pipeline.task(f"consumer-{c}-{attempt}", consume, gates[c]) for c in range(m)]
        pipeline.run(consumers)
        assert pipeline.errors() == {}
        check_edge(kind, 1, records, [t.got for t in consumers])
        results.append([t.got for t in consumers])
    assert results[0] == results[1]
    for p in parts:
        pipeline.manager.release_partition(p.partition_id)
        assert p.is_released


# --- union of two edges --------------------------------------------------------------------------


def test_union_input_gate_over_two_edges(pipeline):
    """Two keyed producers (edge 0) and one broadcast producer (edge 1) into two consumers, each
    reading both edges through a UnionInputGate."""
    m, count = 2, 200
    keyed_parts = pipeline.edge(2, m)
    bcast_parts = pipeline.edge(1, m)
    keyed_records = [make_records(0, p, count, seed=13) for p in range(2)]
    bcast_records = [make_records(1, 0, count, seed=13)]
    unions = [UnionInputGate(pipeline.gate(keyed_parts, c, 0), pipeline.gate(bcast_parts, c, 1))
              for c in range(m)]
    for p in range(2):
        pipeline.task(f"keyed-{p}", produce, keyed_parts[p], "keyed", 5, keyed_records[p])
    pipeline.task("broadcast-0", produce, bcast_parts[0], "broadcast", -1, bcast_records[0])
    consumers = [pipeline.task(f"consumer-{c}", consume, unions[c]) for c in range(m)]
    pipeline.run()
    assert pipeline.errors() == {}
    got = [t.got for t in consumers]
    check_edge("keyed", 0, keyed_records, got)
    check_edge("broadcast", 1, bcast_records, got)
    for u in unions:
        assert u.is_finished
        assert u.number_of_input_channels == 3
    assert all(p.is_released for p in keyed_parts + bcast_parts)
