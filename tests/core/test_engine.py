"""The native receive engine (flinknet._core.engine): the gate doorbell, a channel's native
queue (against a pure-Python model, with hypothesis), and the I/O thread on real loopback
sockets fed by hand-made frames: the native path, the Python path, bad frames, sequence errors,
credit announcements, removal — with the pools whole after each."""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flinknet._core import protocol as P  # noqa: N812
from flinknet._core.buffer import BufferRecycler, DataType, NetworkBuffer
from flinknet._core.engine import ChannelQueue, GateSignal, NativeConnection, ReceiveEngine
from flinknet._core.pool import NetworkBufferPool

SEG = 4096


def _wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


# -- GateSignal ------------------------------------------------------------------------------

def test_signal_orders_and_deduplicates_ready_channels():
    s = GateSignal(4)
    for i in (2, 0, 2, 3, 0):
        s.ready(i)
    assert s.ready_count == 3
    assert s.drain() == [2, 0, 3]
    assert s.drain() == [] and s.ready_count == 0
    s.ready(2)
    assert s.drain() == [2]


def _fd_readable(fd, timeout=0.0):
    import select
    return bool(select.select([fd], [], [], timeout)[0])


def test_signal_wake_fd_is_written_once_at_the_next_ready_channel_when_armed():
    s = GateSignal(3)
    fd = s.wake_fd
    assert fd == s.wake_fd and fd >= 0          # made once, kept
    assert not _fd_readable(fd)
    s.ready(1)                                   # not armed: nothing written
    assert not _fd_readable(fd)
    assert s.arm_fd() is True                    # a channel is ready already: not armed
    s.drain()
    assert s.arm_fd() is False
    s.ready(2)
    assert _fd_readable(fd)
    s.ready(0)                                   # one write per arming
    s.clear_fd()
    assert not _fd_readable(fd)
    s.drain()
    assert s.arm_fd() is False
    s.disarm()
    s.ready(1)
    assert not _fd_readable(fd)                  # disarmed: nothing written
    s.drain()


def test_signal_arm_fd_clears_a_stale_wake_up_and_the_fd_closes_with_the_signal():
    import os

    s = GateSignal(1)
    s.arm_fd()
    s.ready(0)
    fd = s.wake_fd
    assert _fd_readable(fd)
    s.drain()
    assert s.arm_fd() is False and not _fd_readable(fd)   # the old wake-up is gone
    del s
    assert not os.path.exists(f"/proc/self/fd/{fd}") or os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:[eventfd]"


def test_signal_notify_rings_an_armed_wake_fd_and_a_notify_before_arming_counts_once():
    """Python-side readiness (a local channel, a failure, the end, a close) reaches an event
    loop through the same notify a blocked thread wakes on: no future needed beside the fd."""
    s = GateSignal(2)
    fd = s.wake_fd
    s.notify()                                   # nobody waits: remembered
    assert not _fd_readable(fd)
    assert s.arm_fd() is True                    # the notify counts: poll now, nothing armed
    assert s.arm_fd() is False                   # ... once
    s.notify()
    assert _fd_readable(fd)                      # armed: the notify writes the fd ...
    s.clear_fd()
    assert s.arm_fd() is False                   # ... and is delivered by it (nothing pending)
    s.notify()
    s.notify()                                   # one write per arming; this one is pending
    s.clear_fd()
    assert not _fd_readable(fd)
    assert s.arm_fd() is True                    # the second notify is still pending
    assert s.arm_fd() is False
    s.disarm()
    s.notify()
    assert not _fd_readable(fd)                  # disarmed: nothing written
    assert s.wait(0) is True                     # a thread's wait consumes it instead
    assert s.arm_fd() is False
    s.ready(1)
    assert _fd_readable(fd)
    assert s.arm_fd() is True and not _fd_readable(fd)   # the unread wake-up is read here
    assert s.drain() == [1]


def test_signal_wake_fd_loses_no_wake_up_against_ringing_threads():
    """Threads ring random channels while this one arms, selects and drains: every ready
    channel is seen, and no wait outlives the ringing (a lost wake-up would time out)."""
    n, rounds = 8, 2000
    s = GateSignal(n)
    fd = s.wake_fd
    seen = [0] * n
    rung = [0] * n
    def ring(seed):
        rnd = random.Random(seed)
        for _ in range(rounds):
            i = rnd.randrange(n)
            rung[i] += 1
            s.ready(i)
            if rnd.random() < 0.1:
                time.sleep(0.0001)

    threads = [threading.Thread(target=ring, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    lost = 0
    while True:
        for i in s.drain():
            seen[i] += 1
        if not any(t.is_alive() for t in threads):
            break
        if not s.arm_fd():
            # armed with nothing ready: a channel that turns ready writes the fd under the
            # signal's lock, so "ready but not readable" is a lost wake-up
            if not _fd_readable(fd, 0.5) and s.ready_count and not _fd_readable(fd):
                lost += 1
            s.clear_fd()
            s.disarm()
    for t in threads:
        t.join()
    for i in s.drain():
        seen[i] += 1
    assert lost == 0
    assert all(rung[i] == 0 or seen[i] >= 1 for i in range(n))


def test_signal_rejects_bad_arguments():
    with pytest.raises(ValueError):
        GateSignal(0)
    with pytest.raises(TypeError):
        GateSignal(1, callback=3)
    s = GateSignal(2)
    with pytest.raises(IndexError):
        s.ready(2)
    with pytest.raises(IndexError):
        s.ready(-1)
    with pytest.raises(ValueError):
        s.wait(-1)
    with pytest.raises(ValueError):
        s.wait(float("nan"))


def test_signal_wait_times_out_and_wakes_on_ready_or_notify():
    s = GateSignal(2)
    assert s.wait(0.01) is False
    s.notify()
    assert s.wait(0.01) is True      # the notify since the last wait counts once
    assert s.wait(0.01) is False
    woke = []
    t = threading.Thread(target=lambda: woke.append(s.wait(10)))
    t.start()
    time.sleep(0.05)
    s.ready(1)
    t.join(5)
    assert woke == [True] and s.drain() == [1]


def test_signal_calls_back_once_when_armed():
    calls = []
    s = GateSignal(3, callback=lambda: calls.append(1))
    s.ready(0)
    assert calls == []                # not armed
    s.drain()
    assert s.arm() is False           # nothing ready: armed
    s.ready(1)
    s.ready(2)
    assert calls == [1]               # one-shot
    assert s.arm() is True            # ready already: not armed, the caller drains
    s.drain()
    s.ready(0)
    assert calls == [1]


def test_signal_callback_errors_are_logged_not_raised(caplog):
    s = GateSignal(1, callback=lambda: 1 / 0)
    s.arm()
    s.ready(0)
    assert "callback failed" in caplog.text


# -- ChannelQueue against a model -------------------------------------------------------------

def _queue(pool, index=0, n=1):
    signal = GateSignal(n)
    return signal, ChannelQueue(signal, index, bytes(range(16)), pool.recycle_unpooled_memory_segments)


def test_queue_rejects_bad_arguments():
    pool = NetworkBufferPool(8, SEG)
    signal = GateSignal(1)
    with pytest.raises(IndexError):
        ChannelQueue(signal, 1, bytes(16), pool.recycle_unpooled_memory_segments)
    with pytest.raises(ValueError):
        ChannelQueue(signal, 0, bytes(15), pool.recycle_unpooled_memory_segments)
    with pytest.raises(TypeError):
        ChannelQueue(signal, 0, bytes(16), 5)
    with pytest.raises(TypeError):
        ChannelQueue(None, 0, bytes(16), pool.recycle_unpooled_memory_segments)


def test_queue_exclusive_buffers_round_trip_as_credit():
    pool = NetworkBufferPool(8, SEG)
    signal, q = _queue(pool)
    for seg in pool.request_unpooled_memory_segments(2):
        assert q.add_exclusive(seg, announce=False) is False
    assert q.free_slots == 2 and q.free_exclusive == 2 and q.unannounced_credit == 0
    b = q.pop_free_buffer()
    b.size = 5
    assert q.free_slots == 1
    assert q.push_buffer(b, 0) == "ok"
    assert signal.drain() == [0]
    buf, next_type, seq, backlog = q.poll()
    assert buf is b and next_type == DataType.NONE and seq == 0 and backlog == -1
    assert q.poll() is None
    buf.recycle()                     # the slot comes back as one unannounced credit
    assert q.free_slots == 2 and q.unannounced_credit == 1
    assert q.take_unannounced_credit() == 1 and q.unannounced_credit == 0
    q.release()
    assert pool.is_whole


def test_queue_puts_priority_events_ahead_of_the_received_data_in_their_own_order():
    """Flink's RemoteInputChannel.onBuffer: a priority event goes to the head of the received
    queue, behind the priority events already there (PrioritizedDeque.addPriorityElement)."""
    pool = NetworkBufferPool(16, SEG)
    signal, q = _queue(pool)
    for seg in pool.request_unpooled_memory_segments(4):
        q.add_exclusive(seg, announce=False)
    pushed = []
    seq = 0
    for kind in ("d", "d", "p", "d", "p", "d", "p"):
        if kind == "d":
            b = q.pop_free_buffer()
            b.size = 3
        else:
            b = NetworkBuffer(pool.request_unpooled_memory_segments(1)[0], _freeing(pool),
                              DataType.PRIORITIZED_EVENT_BUFFER, 8)
        assert q.push_buffer(b, seq, -1, priority=(kind == "p")) == "ok"
        pushed.append((seq, kind))
        seq += 1
        if kind == "d" and q.free_slots == 0:
            break
    order = []
    while (item := q.poll()) is not None:
        buf, next_type, s_, _ = item
        order.append(s_)
        buf.recycle()
    priority = [n for n, k in pushed if k == "p"]
    data = [n for n, k in pushed if k == "d"]
    assert order == priority + data
    q.release()
    assert pool.is_whole


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.sampled_from(["data", "priority", "poll"]), max_size=60))
def test_queue_priority_order_against_a_model(ops):
    """Random pushes of data buffers and priority events and polls, against a deque model:
    priority events in arrival order ahead of data in arrival order."""
    from collections import deque

    pool = NetworkBufferPool(64, SEG)
    signal, q = _queue(pool)
    for seg in pool.request_unpooled_memory_segments(4):
        q.add_exclusive(seg, announce=False)
    model_p, model_d = deque(), deque()
    seq = 0
    for op in ops:
        if op == "poll":
            item = q.poll()
            if model_p or model_d:
                expected = model_p.popleft() if model_p else model_d.popleft()
                assert item is not None and item[2] == expected[0]
                next_expected = model_p[0][1] if model_p else (model_d[0][1] if model_d else DataType.NONE)
                assert item[1] == next_expected
                item[0].recycle()
            else:
                assert item is None
            continue
        if op == "data":
            b = q.pop_free_buffer()
            if b is None:
                continue          # no credit: the sender would not send
            b.size = 1
            model_d.append((seq, DataType.DATA_BUFFER))
        else:
            b = NetworkBuffer(pool.request_unpooled_memory_segments(1)[0], _freeing(pool),
                              DataType.PRIORITIZED_EVENT_BUFFER, 4)
            model_p.append((seq, DataType.PRIORITIZED_EVENT_BUFFER))
        assert q.push_buffer(b, seq, -1, priority=(op == "priority")) == "ok"
        seq += 1
    q.release()
    assert pool.is_whole


def test_queue_announcement_and_conversion_to_a_priority_event():
    """Flink's announce / convertToPriorityEvent: the announcement shares its barrier's number
    and jumps the queue; converting moves the barrier itself ahead of the data before it."""
    pool = NetworkBufferPool(16, SEG)
    signal, q = _queue(pool)
    for seg in pool.request_unpooled_memory_segments(2):
        q.add_exclusive(seg, announce=False)

    def event(dt):
        return NetworkBuffer(pool.request_unpooled_memory_segments(1)[0], _freeing(pool), dt, 8)

    for seq in (0, 1):
        b = q.pop_free_buffer()
        b.size = 2
        assert q.push_buffer(b, seq) == "ok"
    assert q.push_buffer(event(DataType.TIMEOUTABLE_ALIGNED_CHECKPOINT_BARRIER), 2) == "ok"
    assert q.push_announcement(event(DataType.PRIORITIZED_EVENT_BUFFER), 2) == "ok"
    assert q.expected_sequence_number == 3                  # the announcement took no number
    ann = q.poll()
    assert ann[2] == 2 and ann[0].data_type == DataType.PRIORITIZED_EVENT_BUFFER
    ann[0].recycle()
    assert q.prioritize(1) is False                         # a data buffer: not an event
    assert q.prioritize(2) is True
    assert q.prioritize(2) is False                         # already in the priority section
    order = []
    while (item := q.poll()) is not None:
        order.append((item[2], item[0].data_type))
        item[0].recycle()
    assert order == [(2, DataType.PRIORITIZED_EVENT_BUFFER), (0, DataType.DATA_BUFFER),
                     (1, DataType.DATA_BUFFER)]
    assert q.prioritize(2) is False                         # taken
    q.release()
    assert pool.is_whole


def test_queue_inflight_buffers_by_sequence_number():
    """Flink's getInflightBuffersUnsafe: the data after ``after_seq`` and before the barrier's
    number (or before the oldest priority event queued); the slices are retained and the task
    still reads every buffer."""
    pool = NetworkBufferPool(16, SEG)
    signal, q = _queue(pool)
    for seg in pool.request_unpooled_memory_segments(4):
        q.add_exclusive(seg, announce=False)
    for seq in range(3):
        b = q.pop_free_buffer()
        b.size = 1
        b.memory_segment.put_bytes(0, bytes([seq]))
        assert q.push_buffer(b, seq) == "ok"
    prio = NetworkBuffer(pool.request_unpooled_memory_segments(1)[0], _freeing(pool),
                         DataType.PRIORITIZED_EVENT_BUFFER, 8)
    assert q.push_buffer(prio, 3, -1, priority=True) == "ok"
    b = q.pop_free_buffer()
    b.size = 1
    assert q.push_buffer(b, 4) == "ok"                      # after the barrier on the wire
    got, last = q.inflight_buffers(-1)                      # bounded by the queued barrier
    assert [x.to_bytes() for x in got] == [b"\x00", b"\x01", b"\x02"] and last == 2
    got2, last2 = q.inflight_buffers(0, 2)                  # (0, 2): just seq 1
    assert [x.to_bytes() for x in got2] == [b"\x01"] and last2 == 1
    for x in got + got2:
        x.recycle()
    while (item := q.poll()) is not None:                   # the task still reads all of it
        item[0].recycle()
    assert q.free_slots == 4
    q.release()
    assert pool.is_whole


def test_queue_sequence_numbers_and_release():
    pool = NetworkBufferPool(8, SEG)
    signal, q = _queue(pool)
    q.add_exclusive(pool.request_unpooled_memory_segments(1)[0], announce=False)
    b = q.pop_free_buffer()
    assert q.push_buffer(b, 1) == "reordered"
    assert q.advance_sequence(0) is True and q.expected_sequence_number == 1
    assert q.advance_sequence(5) is False
    assert q.push_buffer(b, 1) == "ok"
    q.release()                        # the queued buffer goes back with the rest
    assert q.is_released and q.queued_buffers == 0
    assert pool.is_whole
    fresh = NetworkBuffer(pool.request_unpooled_memory_segments(1)[0], _freeing(pool))
    assert q.push_buffer(fresh, 2) == "released"
    fresh.recycle()
    # an exclusive segment added after release goes straight back
    assert q.add_exclusive(pool.request_unpooled_memory_segments(1)[0]) is False
    assert pool.is_whole
    q.release()                        # idempotent


def _freeing(pool):
    """A recycler giving unpooled segments back to the global pool."""
    class R(BufferRecycler):
        def recycle(self, segment):
            pool.recycle_unpooled_memory_segments([segment])
    return R()


# The model: ops on the queue and on a plain-Python mirror; after every op both agree and the
# queue's slot accounting is whole.
_ops = st.lists(st.sampled_from(
    ["exclusive", "floating", "receive", "receive", "event", "poll", "poll", "recycle", "recycle",
     "take_floating", "required", "credit", "empty"]), min_size=1, max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops, seed=st.integers(0, 2**16), release_at=st.integers(0, 70))
def test_queue_matches_its_model(ops, seed, release_at):
    rnd = random.Random(seed)
    pool = NetworkBufferPool(64, SEG)
    gate_pool = pool.create_buffer_pool(1, 16, max_overdraft_buffers=0)
    signal, q = _queue(pool)
    handed = []                 # buffers the "task" holds
    queued = []                 # model of the received queue: (size, seq)
    free_total = 0              # model of free slots
    seq = 0
    released = False
    for step, op in enumerate(ops):
        if step == release_at:
            q.release()
            released = True
            queued.clear()
            free_total = 0
        if op == "exclusive":
            segs = pool.request_unpooled_memory_segments(1) if pool.available_segments > 8 else []
            for s in segs:
                q.add_exclusive(s)
                free_total += 0 if released else 1
        elif op == "floating":
            b = gate_pool.request_buffer()
            if b is not None:
                q.add_floating(b)
                free_total += 0 if released else 1
        elif op in ("receive", "event"):
            if op == "receive":
                b = q.pop_free_buffer()
                if b is None:
                    assert free_total == 0
                    continue
                free_total -= 1
            else:
                b = NetworkBuffer(pool.request_unpooled_memory_segments(1)[0], _freeing(pool),
                                  DataType.EVENT_BUFFER)
            size = rnd.randint(0, 64)
            b.size = size
            result = q.push_buffer(b, seq)
            if released:
                assert result == "released"
                b.recycle()
            else:
                assert result == "ok"
                queued.append((b.size, seq))
            seq += 1
        elif op == "poll":
            r = q.poll()
            if not queued:
                assert r is None
            else:
                size, s = queued.pop(0)
                buf, next_type, got_seq, _ = r
                assert (buf.size, got_seq) == (size, s)
                assert (next_type == DataType.NONE) == (not queued)
                handed.append(buf)
        elif op == "recycle" and handed:
            b = handed.pop(rnd.randrange(len(handed)))
            exclusive_or_floating = b.data_type == DataType.DATA_BUFFER
            b.recycle()
            if exclusive_or_floating and not released:
                free_total = q.free_slots     # may swap a floating one back (required)
        elif op == "take_floating":
            b = q.take_free_floating()
            if b is not None:
                free_total -= 1
                b.recycle()
        elif op == "required":
            q.set_required(rnd.randint(0, 8))
        elif op == "credit":
            q.take_unannounced_credit()
        elif op == "empty":
            ok = q.advance_sequence(seq)
            assert ok is not released or True
            if ok:
                seq += 1
        assert q.free_slots == free_total
        assert q.queued_buffers == len(queued)
        assert q.check_whole() >= 0
    for b in handed:
        b.recycle()
    q.release()
    gate_pool.lazy_destroy()
    assert pool.is_whole, (pool.available_segments, pool.total_segments)


# -- the I/O thread on real sockets ------------------------------------------------------------

class Handler:
    """The Python side of a NativeConnection, recording what the I/O thread hands over."""

    def __init__(self):
        self.frames = []
        self.failures = []
        self.channel_errors = []
        self.removed = threading.Event()
        self.sock = None

    def on_frame(self, frame):
        self.frames.append(frame)

    def on_failure(self, message, is_local):
        self.failures.append((message, is_local))

    def on_channel_error(self, queue, expected, sequence_number):
        self.channel_errors.append((queue, expected, sequence_number))

    def on_removed(self):
        self.removed.set()
        if self.sock is not None:
            self.sock.close()


@contextlib.contextmanager
def _open_wire(segment_size=SEG):
    """(engine, client socket handler, NativeConnection, server-side socket) over loopback,
    everything removed and closed at the end."""
    engine = ReceiveEngine()
    engine.start()
    lst = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(lst.getsockname())
    server, _ = lst.accept()
    lst.close()
    client.setblocking(False)
    handler = Handler()
    handler.sock = client
    conn = NativeConnection(engine, client, handler, 1 << 20, segment_size)
    conn.start()
    try:
        yield engine, handler, conn, server
    finally:
        conn.remove()
        assert handler.removed.wait(10)
        engine.close()
        assert not engine.is_alive
        server.close()


@pytest.fixture
def wire():
    """(engine, client socket handler, NativeConnection, server-side socket)."""
    with _open_wire() as w:
        yield w


def _attach(conn, pool, n_exclusive=2, index=0, signal=None):
    signal = signal or GateSignal(index + 1)
    rid = bytes(random.getrandbits(8) for _ in range(16))
    q = ChannelQueue(signal, index, rid, pool.recycle_unpooled_memory_segments)
    for seg in pool.request_unpooled_memory_segments(n_exclusive):
        q.add_exclusive(seg, announce=False)
    before = conn.num_channels
    conn.register(q)
    assert _wait_for(lambda: conn.num_channels == before + 1)   # the I/O thread routes it now
    return signal, q, rid


def _drain_and_detach(conn, q, pool):
    """Recycle what ``q`` still holds, detach it from ``conn`` and check the pool is whole."""
    while (r := q.poll()) is not None:
        r[0].recycle()
    conn.unregister(q)
    q.release()
    assert _wait_for(lambda: pool.is_whole)


def _br(rid, seq, payload, dt=DataType.DATA_BUFFER, backlog=0):
    return P.encode_buffer_response(rid, 0, seq, backlog, dt, False, payload)


def test_data_buffers_are_received_natively_and_credit_is_announced(wire):
    engine, handler, conn, server = wire
    pool = NetworkBufferPool(16, SEG)
    signal, q, rid = _attach(conn, pool)
    payloads = [bytes([i]) * (100 + i) for i in range(2)]
    server.sendall(b"".join(_br(rid, i, p, backlog=i) for i, p in enumerate(payloads)))
    assert _wait_for(lambda: q.queued_buffers == 2)
    assert conn.frames_native == 2 and handler.frames == []
    assert signal.drain() == [0]
    got = []
    while (r := q.poll()) is not None:
        buf, _, seq, backlog = r
        got.append((buf.to_bytes(), seq, backlog))
        buf.recycle()
    # each poll reports the sender's backlog as the newest received buffer gave it (1), not
    # the polled buffer's older figure: Flink acts on a backlog when the buffer arrives
    assert got == [(payloads[0], 0, 1), (payloads[1], 1, 1)]
    # two recycled slots -> AddCredit frames (coalesced: one or two), 2 credits in total
    server.settimeout(5)
    dec = P.FrameDecoder(side="server")
    credit = 0
    while credit < 2:
        for m in dec.feed(server.recv(4096)):
            assert type(m) is P.AddCredit and m.receiver_id == rid
            credit += m.credit
    assert credit == 2
    conn.unregister(q)
    q.release()
    assert _wait_for(lambda: pool.is_whole)


def _add_credits(server, want, timeout=5.0):
    """The AddCredit frames on ``server`` until ``want`` credits arrived: their credits."""
    server.settimeout(timeout)
    dec = P.FrameDecoder(side="server")
    got = []
    while sum(got) < want:
        for m in dec.feed(server.recv(4096)):
            assert type(m) is P.AddCredit
            got.append(m.credit)
    return got


def test_credit_of_a_reader_that_stops_with_buffers_queued_still_reaches_the_sender(wire):
    """Credit freed while buffers are still queued is listed for the I/O thread without waking
    it (it goes out at the I/O thread's next run, within the engine's credit timer), so a
    reader that stops with buffers queued still returns the credit of those it recycled, as
    Flink does; once nothing is queued, a recycle writes its AddCredit at once."""
    engine, handler, conn, server = wire
    pool = NetworkBufferPool(16, SEG)
    signal, q, rid = _attach(conn, pool, n_exclusive=4)
    server.sendall(b"".join(_br(rid, i, bytes([i]) * 64, backlog=0) for i in range(4)))
    assert _wait_for(lambda: q.queued_buffers == 4)
    for _ in range(3):
        q.poll()[0].recycle()          # one buffer stays queued: the reader stops here
    assert sum(_add_credits(server, 3)) == 3
    assert q.unannounced_credit == 0 and q.queued_buffers == 1
    last = q.poll()[0]                 # held (a record spanning into the next buffer)
    last.recycle()                     # nothing queued: written by this thread, at once
    assert _add_credits(server, 1) == [1]
    conn.unregister(q)
    q.release()
    assert _wait_for(lambda: pool.is_whole)


def test_events_unknown_receivers_and_no_credit_go_to_python(wire):
    engine, handler, conn, server = wire
    pool = NetworkBufferPool(16, SEG)
    signal, q, rid = _attach(conn, pool, n_exclusive=1)
    frames = [
        _br(rid, 0, b"x" * 10),                                         # native (1 slot)
        _br(rid, 1, b"\x00\x00\x00\x01", dt=DataType.EVENT_BUFFER),   # an event
        _br(bytes(16), 0, b"abc"),                                     # unknown receiver
        _br(rid, 2, b"y" * 10),                                         # no free slot: Python
        _br(rid, 3, b""),                                              # empty: Python
        P.encode_backlog_announcement(3, rid),
        P.encode_error_response("SomeError", "boom", rid),
    ]
    server.sendall(b"".join(frames))
    assert _wait_for(lambda: len(handler.frames) == 6)
    assert handler.frames == frames[1:]
    assert conn.frames_native == 1 and conn.frames_python == 6 and handler.failures == []
    assert q.queued_buffers == 1
    conn.unregister(q)
    q.release()
    assert _wait_for(lambda: pool.is_whole)


@pytest.mark.parametrize("frame, words", [
    (struct.pack(">iIb", 5, 0xBADC0FFE, 0), "smaller than the frame header"),
    (struct.pack(">iIb", 1 << 30, 0xBADC0FFE, 0), "exceeds the maximum"),
    (struct.pack(">iIb", 9, 0x12345678, 0), "magic number"),
    (struct.pack(">iIb", 9, 0xBADC0FFE, 77), "unknown message"),
    (struct.pack(">iIb", 29, 0xBADC0FFE, 6) + bytes(20), "not sent by a server"),
    (struct.pack(">iIb", 20, 0xBADC0FFE, 0) + bytes(11), "shorter than its header"),
])
def test_bad_headers_fail_the_connection_with_a_named_error(wire, frame, words):
    engine, handler, conn, server = wire
    server.sendall(frame)
    assert _wait_for(lambda: handler.failures)
    message, local = handler.failures[0]
    assert words in message and local is True
    assert len(handler.failures) == 1


@pytest.mark.parametrize("field, value, words", [
    ("sp", -1, "negative subpartition"),
    ("backlog", -2, "invalid backlog"),
    ("dt", 0, "invalid data type"),
    ("dt", 14, "invalid data type"),
    ("comp", 2, "compression flag"),
    ("size", SEG + 1, "maximum"),
    ("parts", -1, "partial buffers"),
    ("size", 5, "does not match its frame length"),
])
def test_bad_buffer_response_fields_fail_before_any_slot_is_used(wire, field, value, words):
    engine, handler, conn, server = wire
    pool = NetworkBufferPool(16, SEG)
    signal, q, rid = _attach(conn, pool)
    fields = {"sp": 0, "parts": 0, "seq": 0, "backlog": 0, "dt": 1, "comp": 0, "size": 10}
    fields[field] = value
    body = rid + struct.pack(">iiiiBBi", fields["sp"], fields["parts"], fields["seq"],
                             fields["backlog"], fields["dt"], fields["comp"], fields["size"])
    payload = bytes(10)
    server.sendall(struct.pack(">iIb", 9 + 38 + 10, 0xBADC0FFE, 0) + body + payload)
    assert _wait_for(lambda: handler.failures)
    assert words in handler.failures[0][0]
    assert q.free_slots == 2 and q.queued_buffers == 0
    q.release()
    conn.unregister(q)
    assert _wait_for(lambda: pool.is_whole)


def test_out_of_sequence_buffer_is_reported_and_its_slot_kept(wire):
    engine, handler, conn, server = wire
    pool = NetworkBufferPool(16, SEG)
    signal, q, rid = _attach(conn, pool)
    server.sendall(_br(rid, 0, b"a" * 8) + _br(rid, 5, b"b" * 8))
    assert _wait_for(lambda: handler.channel_errors)
    (queue, expected, got), = handler.channel_errors
    assert queue is q and expected == 1 and got == 5
    assert q.queued_buffers == 1 and q.free_slots == 1
    q.poll()[0].recycle()
    q.release()
    conn.unregister(q)
    assert _wait_for(lambda: pool.is_whole)


def _spin_holding_the_gil(cond, seconds):
    """Evaluate ``cond`` in a pure-Python loop for up to ``seconds`` without releasing the GIL
    (no sleep, no I/O): True as soon as it holds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
    return cond()


def test_io_thread_receives_frame_after_frame_while_python_holds_the_gil(wire):
    """The I/O thread takes the GIL only on the control path. Every frame here is a data
    buffer, so it must keep receiving while this thread holds the GIL throughout (the switch
    interval raised so that nothing forces the GIL away). Each frame is written with the GIL
    held (libc's ``send`` through ``ctypes.PyDLL``) and waited for before the next, so each
    needs a turn of the I/O loop of its own: a loop that took the GIL on every turn (Cython does
    so at each exit of a function with a Python local, as ``_run_commands`` once did) would
    stall at the second frame."""
    import ctypes
    import sys

    engine, handler, conn, server = wire
    pool = NetworkBufferPool(16, SEG)
    signal, q, rid = _attach(conn, pool, n_exclusive=4)
    libc_send = ctypes.PyDLL(None).send          # PyDLL: the GIL stays held across the call
    libc_send.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int)
    libc_send.restype = ctypes.c_ssize_t
    frames = [_br(rid, i, bytes([65 + i]) * 64) for i in range(4)]
    received = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(60.0)
    try:
        for i, frame in enumerate(frames):
            assert libc_send(server.fileno(), frame, len(frame), 0) == len(frame)
            received.append(_spin_holding_the_gil(lambda n=i + 1: q.queued_buffers == n, 10.0))
    finally:
        sys.setswitchinterval(interval)
    assert received == [True] * 4, received
    assert conn.frames_native == 4 and handler.frames == []
    _drain_and_detach(conn, q, pool)


def test_signal_gil_hold_rejects_bad_values():
    s = GateSignal(1)
    assert s.gil_hold == 0.0 and s.held_waits == 0
    for bad in (-0.001, float("nan"), 0.2, float("inf")):
        with pytest.raises(ValueError, match="GIL hold"):
            s.set_gil_hold(bad)
    s.set_gil_hold(0.002)
    assert s.gil_hold == 0.002
    s.set_gil_hold(0)
    assert s.gil_hold == 0.0


class _Sender:
    """A child process that writes ``data`` to ``fd`` 30 ms after :meth:`go`: a sender that
    needs nothing from this process (least of all its GIL)."""

    def __init__(self, fd, data):
        import os
        import subprocess
        import sys

        self._r, self._w = os.pipe()
        code = ("import os, sys, time; os.read(int(sys.argv[3]), 1); time.sleep(0.03); "
                "os.write(int(sys.argv[1]), bytes.fromhex(sys.argv[2]))")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(fd), data.hex(), str(self._r)],
                                     pass_fds=(fd, self._r))

    def go(self):
        import os

        os.write(self._w, b"g")

    def close(self):
        import os

        os.close(self._w)
        os.close(self._r)
        self.proc.wait(10)


def test_wait_keeps_the_gil_through_a_short_wait_once_python_contends_for_it(wire):
    """GateSignal.set_gil_hold: a wait gives the GIL away until one took it back slowly from
    another Python thread (contention); then a wait that is likely short keeps it and is woken
    by the I/O thread (which needs no GIL) within the hold. A wait that runs past the hold gives
    the GIL away, and the next one does not keep it."""
    engine, handler, conn, server = wire
    pool = NetworkBufferPool(16, SEG)
    signal, q, rid = _attach(conn, pool, n_exclusive=4)
    signal.set_gil_hold(0.1)
    senders = [_Sender(server.fileno(), _br(rid, i, bytes([97 + i]) * 64)) for i in range(3)]
    counter, running = [0], [True]

    def spin():
        while running[0]:
            counter[0] += 1

    def take(seq):
        # the doorbell rings when a channel's queue turns non-empty: empty it after each wake
        assert signal.drain() == [0]
        buf, _, got, _ = q.poll()
        assert got == seq and q.poll() is None
        buf.recycle()

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        # 1. not contended yet: the wait gives the GIL away (the spinner runs), and taking it
        #    back from the spinner takes a switch interval: contention seen
        senders[0].go()
        c0 = counter[0]
        assert signal.wait(10) is True
        assert counter[0] > c0 and signal.held_waits == 0
        take(0)
        # 2. a short wait now keeps the GIL, woken within the hold
        senders[1].go()
        assert signal.wait(10) is True and signal.held_waits == 1
        take(1)
        # 3. a wait past the hold (nothing comes) gives the GIL away after it ...
        c0 = counter[0]
        assert signal.wait(0.3) is False
        assert counter[0] > c0 and signal.held_waits == 1
        # ... and, having been long, the next wait does not keep it
        senders[2].go()
        assert signal.wait(10) is True and signal.held_waits == 1
        take(2)
    finally:
        running[0] = False
        spinner.join()
        for sender in senders:
            sender.close()
    assert conn.frames_native == 3
    _drain_and_detach(conn, q, pool)


def test_peer_close_and_partial_payload_give_the_slot_back(wire):
    engine, handler, conn, server = wire
    pool = NetworkBufferPool(16, SEG)
    signal, q, rid = _attach(conn, pool)
    frame = _br(rid, 0, b"z" * 3000)
    server.sendall(frame[:1000])         # the payload starts arriving into a slot ...
    assert _wait_for(lambda: q.free_slots == 1)
    server.close()                       # ... and the peer goes away
    assert _wait_for(lambda: handler.failures)
    assert "closed by remote task manager" in handler.failures[0][0]
    assert handler.failures[0][1] is False
    assert _wait_for(lambda: q.free_slots == 2)
    q.release()
    assert pool.is_whole


def test_released_channel_mid_payload_gets_its_slot_back(wire):
    engine, handler, conn, server = wire
    pool = NetworkBufferPool(16, SEG)
    signal, q, rid = _attach(conn, pool)
    frame = _br(rid, 0, b"z" * 3000)
    server.sendall(frame[:1000])
    assert _wait_for(lambda: q.free_slots == 1)
    q.release()                          # one slot is still being received into
    assert not pool.is_whole
    conn.unregister(q)                   # the I/O thread drops the rest and gives it back
    assert _wait_for(lambda: pool.is_whole)
    server.sendall(frame[1000:] + _br(rid, 1, b"late"))
    assert _wait_for(lambda: len(handler.frames) == 2)   # the rest, then the late frame
    assert handler.failures == []


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_large_and_small_frames_cut_anywhere_arrive_whole_and_in_order(seed):
    """After a large payload (at least the staging area) the I/O thread reads only the next
    frame's header behind it, after a small one a whole staging area: a stream mixing both with
    frames for Python, cut at random points (inside headers too), arrives byte for byte and in
    order."""
    rng = random.Random(seed)
    seg = 32768
    pool = NetworkBufferPool(8, seg)
    with _open_wire(seg) as (_, handler, conn, server):
        signal, q, rid = _attach(conn, pool, n_exclusive=4)
        other = bytes(16)
        seq = 0
        to_python = 0
        for _ in range(25):
            sizes = [rng.choice((seg, seg - 1, 20000, 16384, 16383, 3000, 47, 1))
                     for _ in range(rng.randint(1, 4))]
            frames, payloads = [], []
            for size in sizes:
                if rng.random() < 0.25:
                    # a frame for a receiver the connection does not know goes to Python whole
                    frames.append(_br(other, 0, b"o" * rng.choice((0, 5, 40, 3000, 20000))))
                    to_python += 1
                payload = bytes(rng.getrandbits(8) for _ in range(64)) * (size // 64)
                payload += bytes(size - len(payload))
                frames.append(_br(rid, seq, payload))
                payloads.append((seq, payload))
                seq += 1
            stream = b"".join(frames)
            cuts = sorted(rng.sample(range(1, len(stream)), min(6, len(stream) - 1)))
            for a, b in zip([0, *cuts], [*cuts, len(stream)]):
                server.sendall(stream[a:b])
                time.sleep(rng.choice((0, 0, 0.001)))
            assert _wait_for(lambda: q.queued_buffers >= len(payloads))
            got = []
            while (r := q.poll()) is not None:
                buf, _, s, _ = r
                got.append((s, buf.to_bytes()))
                buf.recycle()
            assert got == payloads
            assert _wait_for(lambda: len(handler.frames) == to_python)
        assert conn.frames_native == seq
        assert handler.failures == [] and handler.channel_errors == []
        conn.unregister(q)
        q.release()
    assert _wait_for(lambda: pool.is_whole)


def test_send_writes_frames_in_order_and_bounds_unwritten_bytes():
    engine = ReceiveEngine()
    engine.start()
    lst = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(lst.getsockname())
    server, _ = lst.accept()
    lst.close()
    client.setblocking(False)
    handler = Handler()
    handler.sock = client
    with pytest.raises(ValueError):
        NativeConnection(engine, client, handler, 8, SEG)
    with pytest.raises(ValueError):
        NativeConnection(engine, client, handler, 1 << 20, -1)
    with pytest.raises(ValueError):
        NativeConnection(engine, client, handler, 1 << 20, SEG, 100)
    conn = NativeConnection(engine, client, handler, 1 << 20, SEG, 8192)
    conn.start()
    with pytest.raises(RuntimeError):
        conn.start()
    frames = [P.encode_add_credit(i + 1, bytes(16)) for i in range(50)]
    for f in frames:
        assert conn.send(f) is True
    server.settimeout(5)
    got = b""
    while len(got) < sum(map(len, frames)):
        got += server.recv(65536)
    assert got == b"".join(frames)
    # a peer that never reads: the bound refuses more
    big = bytes(4000)
    with pytest.raises(BufferError):
        for _ in range(100_000):
            conn.send(big)
    conn.remove()
    assert handler.removed.wait(10)
    assert conn.send(b"x") is False
    engine.close()
    server.close()


def test_engine_close_removes_every_connection_and_refuses_new_ones():
    engine = ReceiveEngine()
    engine.start()
    pairs = []
    for _ in range(3):
        lst = socket.create_server(("127.0.0.1", 0))
        c = socket.create_connection(lst.getsockname())
        s, _ = lst.accept()
        lst.close()
        c.setblocking(False)
        h = Handler()
        h.sock = c
        conn = NativeConnection(engine, c, h, 1 << 20, SEG)
        conn.start()
        pairs.append((conn, h, s))
    pool = NetworkBufferPool(16, SEG)
    signal, q, rid = _attach(pairs[0][0], pool)
    assert _wait_for(lambda: engine.num_connections == 3)
    engine.close()
    assert not engine.is_alive
    assert all(h.removed.is_set() for _, h, _ in pairs)
    q.release()
    assert pool.is_whole
    with socket.socket() as spare:
        late = NativeConnection(engine, spare, Handler(), 1 << 20, SEG)
        with pytest.raises(RuntimeError):
            late.start()
    engine.close()      # idempotent
    for _, _, s in pairs:
        s.close()


def test_never_started_engine_closes_cleanly():
    engine = ReceiveEngine()
    engine.close()
    assert not engine.is_alive


class _Waiting:
    """A gate pool listener (another channel waiting for a floating buffer)."""

    def __init__(self):
        self.got = []

    def notify_buffer_available(self, buffer):
        self.got.append(buffer)
        return True

    def notify_buffer_destroyed(self):
        pass


def test_recycled_floating_buffer_stays_while_the_backlog_needs_it():
    """A floating slot's buffer comes back to its channel as credit while the sender's backlog
    needs it (no round trip through the gate pool and its listener); past the need, or when
    another channel waits for the pool, it goes back to the pool (Flink's FIFO of waiters)."""
    nbp = NetworkBufferPool(8, SEG)
    gate_pool = nbp.create_buffer_pool(1, 4)
    signal, q = _queue(nbp)
    floating = [gate_pool.request_buffer() for _ in range(2)]
    for b in floating:
        q.add_floating(b)
    q.set_required(2)
    assert q.free_floating == 2
    b = q.pop_free_buffer()
    assert q.free_floating == 1
    b.recycle()                       # needed (1 free < 2 required): stays as credit
    assert q.free_floating == 2 and gate_pool.used_buffers == 2
    q.set_required(1)
    b = q.pop_free_buffer()
    b.recycle()                       # 1 free already covers the need: back to the pool
    assert q.free_floating == 1 and gate_pool.used_buffers == 1
    q.set_required(2)
    b = q.pop_free_buffer()
    held = [gate_pool.request_buffer() for _ in range(3)]
    waiting = _Waiting()
    assert gate_pool.add_buffer_listener(waiting)
    b.recycle()                       # another channel waits: it gets the buffer
    assert len(waiting.got) == 1 and q.free_floating == 0
    # the channel owning the queue is the only one waiting (it wants more): it keeps its buffer
    owner = _Waiting()
    q.set_backlog_callback(owner.notify_buffer_available)   # its __self__ is the owner
    q.add_floating(waiting.got.pop())
    b = q.pop_free_buffer()
    assert gate_pool.add_buffer_listener(owner)
    b.recycle()
    assert q.free_floating == 1 and owner.got == []
    for x in held + waiting.got:
        x.recycle()                   # the first goes to the still-waiting owner
    for x in owner.got:
        x.recycle()
    q.release()
    gate_pool.lazy_destroy()
    assert nbp.is_whole


def test_poll_reports_the_backlog_of_the_newest_arrival_announcements_included(wire):
    """The backlog a taken buffer reports is the newest one that arrived (a later buffer's, or
    a BacklogAnnouncement's noted after it), never the taken buffer's own older figure: Flink
    acts on each backlog on arrival."""
    engine, handler, conn, server = wire
    pool = NetworkBufferPool(16, SEG)
    signal, q, rid = _attach(conn, pool)
    assert q.latest_backlog == -1
    payloads = [bytes([i]) * 100 for i in range(2)]
    server.sendall(b"".join(_br(rid, i, p, backlog=5 - i) for i, p in enumerate(payloads)))
    assert _wait_for(lambda: q.queued_buffers == 2)
    assert q.latest_backlog == 4
    q.note_backlog(11)                           # an announcement after both buffers
    q.note_backlog(-1)                           # no figure: ignored
    assert q.latest_backlog == 11
    got = []
    while (r := q.poll()) is not None:
        buf, _, seq, backlog = r
        got.append((seq, backlog))
        buf.recycle()
    assert got == [(0, 11), (1, 11)]
    conn.unregister(q)
    q.release()
    assert _wait_for(lambda: pool.is_whole)


# -- the gate's fast lane (GateSignal.poll_data / requeue) ------------------------------------

def _obj_buffer(pool, payload=b"x", dt=DataType.DATA_BUFFER, compressed=False):
    seg = pool.request_unpooled_memory_segments(1)[0]
    seg.put_bytes(0, payload)
    b = NetworkBuffer(seg, _GiveBack(pool), dt, len(payload))
    b.is_compressed = compressed
    return b


class _GiveBack(BufferRecycler):
    def __init__(self, pool):
        self.pool = pool

    def recycle(self, segment):
        self.pool.recycle_unpooled_memory_segments([segment])


def test_fast_lane_takes_native_data_round_robin_in_the_doorbells_order(wire):
    engine, handler, conn, server = wire
    pool = NetworkBufferPool(16, SEG)
    signal = GateSignal(2)
    _, q0, rid0 = _attach(conn, pool, index=0, signal=signal)
    _, q1, rid1 = _attach(conn, pool, index=1, signal=signal)
    server.sendall(_br(rid0, 0, b"a0") + _br(rid0, 1, b"a1"))
    assert _wait_for(lambda: q0.queued_buffers == 2)
    server.sendall(_br(rid1, 0, b"b0") + _br(rid1, 1, b"b1"))
    assert _wait_for(lambda: q1.queued_buffers == 2)
    got = []
    while (r := signal.poll_data([q0, q1])) is not None:
        buf, idx, seq, backlog, more = r
        got.append((idx, seq, buf.to_bytes(), more))
        buf.recycle()
    # channel 0 became ready first; a channel with more goes to the back of the order
    assert got == [(0, 0, b"a0", True), (1, 0, b"b0", True), (0, 1, b"a1", True), (1, 1, b"b1", False)]
    assert signal.ready_count == 0 and q0.queued_buffers == q1.queued_buffers == 0
    # the credit of the four recycled slots reaches the sender, as after poll()
    assert sum(_add_credits(server, 4)) == 4
    for q in (q0, q1):
        conn.unregister(q)
        q.release()
    assert _wait_for(lambda: pool.is_whole)


def test_fast_lane_leaves_events_priority_and_compressed_buffers_to_the_general_path(wire):
    engine, handler, conn, server = wire
    pool = NetworkBufferPool(16, SEG)
    signal, q, rid = _attach(conn, pool)
    server.sendall(_br(rid, 0, b"data"))
    assert _wait_for(lambda: q.queued_buffers == 1)
    q.push_buffer(_obj_buffer(pool, b"event", DataType.EVENT_BUFFER), 1)
    q.push_buffer(_obj_buffer(pool, b"more"), 2)
    r = signal.poll_data([q])
    assert r[0].to_bytes() == b"data" and r[1:4] == (0, 0, 0) and r[4] is True
    r[0].recycle()
    # an event at the head: nothing taken, the channel stays ready for the general path
    assert signal.poll_data([q]) is False
    assert q.queued_buffers == 2 and signal.ready_count == 1
    event, _, seq, _ = q.poll()
    assert event.data_type == DataType.EVENT_BUFFER and seq == 1
    event.recycle()
    # a buffer the Python transport queued is taken too (not compressed)
    r = signal.poll_data([q])
    assert r[0].to_bytes() == b"more" and r[2] == 2 and r[4] is False
    r[0].recycle()
    # a compressed one, and a priority event ahead of data, are the general path's
    q.push_buffer(_obj_buffer(pool, b"zz", compressed=True), 3)
    assert signal.poll_data([q]) is False
    q.push_buffer(_obj_buffer(pool, b"prio", DataType.PRIORITIZED_EVENT_BUFFER), 4, priority=True)
    assert signal.poll_data([q]) is False
    _drain_and_detach(conn, q, pool)


def test_fast_lane_forgets_stale_marks_and_refuses_what_is_not_its_own():
    pool = NetworkBufferPool(8, SEG)
    signal, q = _queue(pool, 0, 2)
    signal.ready(0)                              # a mark for an empty queue (taken meanwhile)
    assert signal.poll_data([q, None]) is None and signal.ready_count == 0
    q.push_buffer(_obj_buffer(pool), 0)
    assert signal.ready_count == 1
    assert signal.poll_data([]) is False         # no queue for the channel
    assert signal.poll_data([None]) is False
    assert signal.poll_data(["not a queue"]) is False
    other_signal, other = _queue(pool)
    assert signal.poll_data([other]) is False    # a queue of another gate
    assert signal.ready_count == 1 and q.queued_buffers == 1
    q.release()                                  # released: the general path raises there
    assert signal.poll_data([q]) is False
    other.release()
    with pytest.raises(TypeError):
        signal.poll_data(None)
    assert pool.is_whole


def test_pop_takes_the_first_ready_channel_only():
    signal = GateSignal(3)
    assert signal.pop() == -1
    for i in (2, 0, 1):
        signal.ready(i)
    assert signal.pop() == 2 and signal.ready_count == 2
    signal.ready(2)                              # ready again: to the back
    assert signal.drain() == [0, 1, 2]
    assert signal.pop() == -1


def test_requeue_puts_a_channel_at_the_back_once_and_calls_nobody_back():
    calls = []
    signal = GateSignal(3, lambda: calls.append(1))
    signal.ready(1)
    assert signal.arm() is True                  # a channel is ready: nothing armed
    signal.drain()
    assert signal.arm() is False                 # armed: the next ready() calls back
    signal.requeue(2)
    signal.requeue(0)
    signal.requeue(2)                            # already ready: stays where it is
    assert calls == [] and signal.ready_count == 2
    assert signal.drain() == [2, 0]
    with pytest.raises(IndexError):
        signal.requeue(3)
    signal.ready(1)                              # the armed callback still fires for arrivals
    assert calls == [1]
