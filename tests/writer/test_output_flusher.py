"""The buffer timeout and the output flusher (Flink's ``RecordWriter.OutputFlusher`` and the
flush rules of its ``PipelinedSubpartition``).

``-1``: a partially filled buffer becomes readable only when it is full (the next buffer is
added), on ``flush_all``, on an event or on ``finish``. ``0``: every emit makes its record
readable. ``> 0``: a daemon ``OutputFlusher`` thread flushes every subpartition that often, so
data becomes readable without further emits; it stops on ``close`` and its errors surface on the
next emit as :class:`OutputFlusherError`.

"Readable" is what a reader is told: the view's listener is notified and the view reports data
available (a reader that polls anyway may also see the committed bytes of an unfinished buffer,
as in Flink, so polling is not the test).
"""

from __future__ import annotations

import struct
import threading
import time

import numpy as np
import pytest

from flinknet import events as ev
from flinknet._core.buffer import DataType
from flinknet.consumer import SingleInputGate
from flinknet.errors import FlinknetError
from flinknet.partition import ResultPartitionManager, create_result_partition
from flinknet.partitioners import BroadcastPartitioner
from flinknet.types import ResultPartitionType
from flinknet.writer import (
    DEFAULT_OUTPUT_FLUSH_THREAD_NAME,
    OutputFlusherError,
    RecordWriter,
    RecordWriterBuilder,
)

SEG = 64
WAIT = 10.0


class Listener:
    def __init__(self):
        self._lock = threading.Lock()
        self.notifications = 0
        self.available = threading.Event()

    def notify_data_available(self, view):
        with self._lock:
            self.notifications += 1
        self.available.set()

    def notify_priority_event(self, sequence_number):
        pass


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def drain_data(view) -> bytes:
    out = b""
    while (bb := view.get_next_buffer()) is not None:
        try:
            if bb.buffer.data_type == DataType.DATA_BUFFER:
                out += bb.buffer.to_bytes()
        finally:
            bb.buffer.recycle()
    return out


def readable(view) -> bool:
    return view.get_availability_and_backlog(True).is_available


def wait_until(predicate, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


@pytest.fixture
def env(make_pool):
    """``env(n=2, timeout=-1, **partition kwargs)`` → (partition, writer, views, listeners); all
    closed, released and destroyed at the end of the test."""
    made = []

    def make(n=2, timeout=-1, broadcast=False, views=True, **kwargs):
        nbp = make_pool(64, SEG)
        p = create_result_partition(nbp, n, **kwargs)
        p.setup()
        builder = RecordWriterBuilder().set_timeout(timeout).set_task_name("flusher-test")
        if broadcast:
            builder.set_channel_selector(BroadcastPartitioner())
        w = builder.build(p)
        made.append((p, w))
        listeners = [Listener() for _ in range(n)] if views else []
        vs = [p.create_subpartition_view(i, listeners[i]) for i in range(n)] if views else []
        return p, w, vs, listeners

    yield make
    for p, w in made:
        w.close()
        p.release()
        p.close()


# --- timeout -1 ----------------------------------------------------------------------------------


def test_disabled_timeout_keeps_partial_buffers_unreadable_until_full(env):
    p, w, (v0, v1), (l0, l1) = env(timeout=-1)
    assert not w.flusher_alive
    sent = b""
    for i in range(5):  # 5 × 8 bytes: less than a buffer
        r = struct.pack(">I", i)
        w.emit(r, 0)
        sent += frame(r)
        assert l0.notifications == 0
        assert not readable(v0)
    assert v0.subpartition.buffers_in_backlog == 0
    # The record that does not fit finishes the first buffer: it becomes readable (the rest of
    # the record, in the next buffer, does not).
    big = b"B" * SEG
    w.emit(big, 0)
    sent += frame(big)
    assert l0.notifications == 1
    assert readable(v0)
    assert v0.subpartition.buffers_in_backlog == 1
    assert l1.notifications == 0 and not readable(v1)  # the other subpartition is untouched
    first = v0.get_next_buffer()
    try:
        assert first.buffer.to_bytes() == sent[:SEG]
        assert first.next_data_type == DataType.NONE  # the open tail is not announced
    finally:
        first.buffer.recycle()
    assert not readable(v0)
    w.flush_all()
    assert readable(v0)
    assert l0.notifications == 2
    assert drain_data(v0) == sent[SEG:]


@pytest.mark.parametrize("how", ["flush_all", "event", "finish"])
def test_disabled_timeout_data_becomes_readable_on_flush_event_or_finish(env, how):
    p, w, views, listeners = env(n=3, timeout=-1)
    for i in range(3):
        w.emit(b"r%d" % i, i)
    assert not any(readable(v) for v in views)
    assert all(lst.notifications == 0 for lst in listeners)
    if how == "flush_all":
        w.flush_all()
    elif how == "event":
        w.broadcast_event(ev.EndOfSuperstepEvent())
    else:
        p.finish()
    for i, (v, lst) in enumerate(zip(views, listeners)):
        assert lst.notifications == 1
        assert readable(v)
        assert drain_data(v) == frame(b"r%d" % i)


def test_disabled_timeout_through_an_input_gate(make_pool):
    """A consumer's gate (a local channel) sees nothing before the flush and the record after it."""
    manager = ResultPartitionManager()
    try:
        nbp = make_pool(16, SEG)
        p = create_result_partition(nbp, 1, partition_manager=manager)
        p.setup()
        gate = SingleInputGate.create_local(manager, [(p.partition_id, 0)])
        with RecordWriter(p, timeout=-1) as w:
            w.emit(b"hello")
            assert gate.poll_next() is None
            w.flush_all()
            boe = gate.get_next(timeout=WAIT)
            try:
                assert boe.buffer.to_bytes() == frame(b"hello")
            finally:
                boe.buffer.recycle()
        p.finish()
        p.close()
        assert gate.get_next(timeout=WAIT).event == ev.EndOfPartitionEvent()
        assert gate.get_next(timeout=WAIT) is None
        gate.close()
    finally:
        manager.shutdown()


# --- timeout 0 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["emit", "emit_target", "random_emit", "emit_batch", "broadcast_emit",
                                 "broadcast_writer"])
def test_flush_after_every_record(env, how):
    n = 2
    p, w, views, listeners = env(n=n, timeout=0, broadcast=how == "broadcast_writer")
    assert not w.flusher_alive
    got = [b""] * n
    sent = [b""] * n
    for i in range(40):  # 40 records of 9..16 framed bytes: several buffers, some records span
        r = bytes([i]) * (5 + i % 8)
        if how == "emit":
            w.emit(r)  # round robin
            targets = [i % n]
        elif how == "emit_target":
            w.emit(r, 1)
            targets = [1]
        elif how == "random_emit":
            w.random_emit(r)
            targets = None
        elif how == "emit_batch":
            w.emit_batch([r], i % n)
            targets = [i % n]
        else:
            w.broadcast_emit(r) if how == "broadcast_emit" else w.emit(r)
            targets = list(range(n))
        if targets is None:  # find out where it went: the one subpartition that is readable
            targets = [j for j in range(n) if readable(views[j])]
            assert len(targets) == 1
        for j in range(n):
            assert readable(views[j]) == (j in targets), (i, j)
        for j in targets:
            sent[j] += frame(r)
            got[j] += drain_data(views[j])
            assert got[j] == sent[j], (i, j)  # everything emitted so far has arrived
            assert not readable(views[j])
    for j in range(n):
        assert listeners[j].notifications >= (1 if sent[j] else 0)


# --- timeout > 0: the flusher thread -------------------------------------------------------------


@pytest.mark.parametrize("broadcast", [False, True])
def test_flusher_makes_data_readable_without_further_emits(env, broadcast):
    p, w, views, listeners = env(n=2, timeout=5, broadcast=broadcast)
    assert w.flusher_alive
    w.emit(b"lonely record") if broadcast else w.emit(b"lonely record", 1)
    targets = [0, 1] if broadcast else [1]
    for j in targets:
        assert listeners[j].available.wait(WAIT), "the flusher never flushed"
        assert readable(views[j])
        assert drain_data(views[j]) == frame(b"lonely record")
    if not broadcast:
        assert listeners[0].notifications == 0  # an empty subpartition is never announced
    # Later records are flushed too.
    for lst in listeners:
        lst.available.clear()
    w.emit(b"second") if broadcast else w.emit(b"second", 1)
    for j in targets:
        assert listeners[j].available.wait(WAIT)
        assert readable(views[j])
        assert drain_data(views[j]) == frame(b"second")


def flusher_threads():
    return [t for t in threading.enumerate() if t.name.startswith(DEFAULT_OUTPUT_FLUSH_THREAD_NAME)]


def test_flusher_thread_stops_on_close(env):
    before = set(flusher_threads())
    p, w, views, listeners = env(n=1, timeout=5)
    mine = [t for t in flusher_threads() if t not in before]
    assert [t.name for t in mine] == ["OutputFlusher for flusher-test"]
    assert mine[0].daemon
    assert w.flusher_alive
    w.close()
    assert not w.flusher_alive
    assert not mine[0].is_alive()  # joined by close
    w.close()
    # Nothing flushes any more: a record emitted straight into the partition stays unannounced.
    p.emit_record(b"after close", 0)
    threading.Event().wait(0.05)  # ten flush intervals
    assert listeners[0].notifications == 0
    assert not readable(views[0])


def test_context_manager_closes_the_writer(env):
    p, w, views, listeners = env(n=1, timeout=5)
    with w as same:
        assert same is w
        assert w.flusher_alive
    assert not w.flusher_alive
    with pytest.raises(FlinknetError):
        w.emit(b"x")


def test_blocking_partitions_have_no_flusher(env):
    p, w, _, _ = env(n=2, timeout=5, views=False, partition_type=ResultPartitionType.BLOCKING)
    assert not w.flusher_alive
    w.emit(b"batch", 0)
    p.finish()


def test_a_huge_timeout_is_a_flusher_that_never_fires(env):
    p, w, views, listeners = env(n=1, timeout=1e18)
    assert w.flusher_alive
    w.emit(b"x")
    listeners[0].available.wait(0.05)
    assert w.flusher_alive  # the flusher did not die of an overflowing wait
    assert listeners[0].notifications == 0
    w.emit(b"y")  # no stored flusher error
    w.close()
    assert not w.flusher_alive


def test_flusher_error_surfaces_on_the_next_emit(env):
    p, w, views, listeners = env(n=2, timeout=-1)
    w.close()
    called = threading.Event()
    boom = OSError("disk on fire")

    def failing_flush_all():
        called.set()
        raise boom

    p.flush_all = failing_flush_all  # the partition instance's flush, as the flusher calls it
    w = RecordWriter(p, timeout=5, task_name="failing")
    try:
        try:
            w.emit(b"maybe before the failure", 0)  # may or may not already see the error
        except OutputFlusherError:
            pass
        assert called.wait(WAIT)
        assert wait_until(lambda: not w.flusher_alive), "the failed flusher thread kept running"
        emits = [lambda: w.emit(b"x"), lambda: w.emit(b"x", 1), lambda: w.emit_batch([b"x"]),
                 lambda: w.emit_array(np.zeros(2, dtype=np.int32), 0),
                 lambda: w.broadcast_emit(b"x"), lambda: w.random_emit(b"x"),
                 lambda: w.broadcast_event(ev.EndOfSuperstepEvent())]
        for emit in emits:
            with pytest.raises(OutputFlusherError, match="flushing the outputs") as info:
                emit()
            assert info.value.__cause__ is boom
            assert isinstance(info.value, OSError) and isinstance(info.value, FlinknetError)
    finally:
        w.close()  # a dead flusher closes fine
        del p.flush_all
    assert not w.flusher_alive
