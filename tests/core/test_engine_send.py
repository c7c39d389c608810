"""The send side of the native engine (flinknet._core.engine): an OutputQueue served by a
server-role NativeConnection on a real loopback socket, read by a hand-written client: credit,
sequence numbers and backlog on the wire, events without credit, priority events first, blocking
events and ResumeConsumption, AddCredit natively and for unknown receivers, client-only frames,
release and removal with the pools whole."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flinknet._core import protocol as P  # noqa: N812
from flinknet._core.buffer import DataType
from flinknet._core.engine import NativeConnection, OutputQueue, ReceiveEngine
from flinknet._core.pool import NetworkBufferPool
from flinknet.events import EndOfPartitionEvent, to_buffer

SEG = 4096
RID = bytes(range(16))
_BR = struct.Struct(">iIB16siiiiBBi")      # frame length, magic, id, then the BufferResponse header


def _wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


class _Handler:
    def __init__(self):
        self.frames: list[bytes] = []
        self.failures: list[str] = []
        self.removed = threading.Event()

    def on_frame(self, frame):
        self.frames.append(frame)

    def on_failure(self, message, is_local):
        self.failures.append(message)

    def on_channel_error(self, queue, expected, got):  # pragma: no cover (client role only)
        raise AssertionError("no channels on a server connection")

    def on_removed(self):
        self.removed.set()


@pytest.fixture
def served():
    """(engine, connection, handler, client socket, pool) with the pool whole at the end."""
    engine = ReceiveEngine()
    engine.start()
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    server.setblocking(False)
    handler = _Handler()
    conn = NativeConnection(engine, server, handler, 1 << 20, SEG, server=True)
    conn.start()
    nbp = NetworkBufferPool(64, SEG)
    pool = nbp.create_buffer_pool(1, 64)
    client.settimeout(10)
    try:
        yield engine, conn, handler, client, pool
    finally:
        conn.remove()
        assert handler.removed.wait(10)
        engine.close()
        server.close()
        client.close()
        pool.lazy_destroy()
        engine.reap()
        assert nbp.is_whole
        nbp.destroy()


def _data(pool, payload: bytes):
    b = pool.request_buffer()
    assert b is not None
    memoryview(b.memory_segment)[:len(payload)] = payload
    b.size = len(payload)
    return b


def _read_exact(sock, n):
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError("closed")
        out += chunk
    return bytes(out)


def _read_response(sock):
    """(receiver id, subpartition, seq, backlog, data type, payload) of one BufferResponse."""
    head = _read_exact(sock, 47)
    length, magic, msg_id, rid, sp, parts, seq, backlog, dt, comp, size = _BR.unpack(head)
    assert magic == P.MAGIC_NUMBER and msg_id == 0 and parts == 0 and comp == 0
    assert length == 47 + size
    return rid, sp, seq, backlog, DataType(dt), _read_exact(sock, size)


def _nothing_to_read(sock, wait=0.2):
    sock.settimeout(wait)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(10)
    return False


def _add_credit(sock, credit, rid=RID):
    sock.sendall(P.encode_add_credit(credit, rid))


def test_output_queue_rejects_bad_arguments():
    with pytest.raises(ValueError):
        OutputQueue(bytes(15), 0, 1)
    with pytest.raises(ValueError):
        OutputQueue(RID, -1, 1)
    with pytest.raises(ValueError):
        OutputQueue(RID, 0, -1)
    q = OutputQueue(RID, 0, 0)
    with pytest.raises(ValueError):
        q.add_credit(0)
    with pytest.raises(RuntimeError):
        q.resume()                  # not blocked
    with pytest.raises(TypeError):
        q.push(b"bytes")


def test_credit_sequence_and_backlog_on_the_wire(served):
    engine, conn, handler, client, pool = served
    q = OutputQueue(RID, 3, 2)
    for i in range(5):
        assert q.push(_data(pool, bytes([i]) * (100 + i)))
    assert q.push(to_buffer(EndOfPartitionEvent()))
    conn.register_output(q)          # after the pushes: the backlog is known when the first goes
    got = [_read_response(client) for _ in range(2)]
    assert [(g[2], g[3]) for g in got] == [(0, 4), (1, 3)]          # seq, backlog behind it
    assert all(g[0] == RID and g[1] == 3 and g[4] == DataType.DATA_BUFFER for g in got)
    assert got[1][5] == b"\x01" * 101
    assert _nothing_to_read(client)                                  # no credit left
    assert q.credit == 0 and q.backlog == 3 and q.queued_buffers == 4
    _add_credit(client, 3)
    got = [_read_response(client) for _ in range(4)]
    assert [(g[2], g[3], g[4]) for g in got] == [
        (2, 2, DataType.DATA_BUFFER), (3, 1, DataType.DATA_BUFFER), (4, 0, DataType.DATA_BUFFER),
        (5, 0, DataType.END_OF_PARTITION)]                           # the event needs no credit
    assert got[2][5] == b"\x04" * 104
    # the I/O thread counts a frame once sendmsg returned: the peer may have read it before
    assert _wait_for(lambda: conn.frames_sent == 6), conn.frames_sent
    assert q.buffers_sent == 6 and conn.frames_sent == 6 and q.sequence_number == 6
    assert handler.frames == [] and handler.failures == []
    assert _wait_for(lambda: engine.buffers_to_recycle == 0)
    conn.unregister_output(q)
    assert _wait_for(lambda: not q.is_registered)
    assert q.release() == 0


def test_a_small_frame_pushed_into_an_idle_connection_is_written_by_the_pushing_thread(served):
    """Write-through, the latency path: a flushed small frame that finds the connection idle is
    on the wire (and counted, and its buffer recycled) before push returns -- no wake-up of the
    I/O thread on its way; frames queued for credit still go through the I/O thread, in order."""
    engine, conn, handler, client, pool = served
    q = OutputQueue(RID, 0, 4)
    conn.register_output(q)
    assert _wait_for(lambda: q.is_registered)
    for i in range(20):
        before = conn.frames_sent
        assert q.push(_data(pool, bytes([i]) * (50 + i)))
        assert conn.frames_sent == before + 1          # written by this thread
        assert engine.buffers_to_recycle == 0           # and recycled here, not by the reaper
        rid, sp, seq, backlog, dt, payload = _read_response(client)
        assert (rid, seq, backlog, dt, payload) == (RID, i, 0, DataType.DATA_BUFFER, bytes([i]) * (50 + i))
        _add_credit(client, 1)
        assert _wait_for(lambda: q.credit == 4)
    # without credit the frames wait in the queue; the I/O thread sends them when credit comes,
    # and the next push after them finds the connection idle again
    q.set_credit(0)
    for i in range(3):
        assert q.push(_data(pool, b"w" * (10 + i)))
    assert _nothing_to_read(client)
    _add_credit(client, 4)
    got = [_read_response(client) for _ in range(3)]
    assert [(g[2], g[5]) for g in got] == [(20 + i, b"w" * (10 + i)) for i in range(3)]
    assert _wait_for(lambda: conn.frames_sent == 23)
    assert q.push(_data(pool, b"z"))
    assert _read_response(client)[2:] == (23, 0, DataType.DATA_BUFFER, b"z")
    assert handler.failures == []
    assert _wait_for(lambda: engine.buffers_to_recycle == 0)
    conn.unregister_output(q)
    assert _wait_for(lambda: not q.is_registered)
    assert q.release() == 0


def test_priority_event_overtakes_queued_data_without_credit(served):
    engine, conn, handler, client, pool = served
    q = OutputQueue(RID, 0, 0)
    for _ in range(3):
        q.push(_data(pool, b"d" * 10))
    barrier = to_buffer(EndOfPartitionEvent())
    barrier.data_type = DataType.PRIORITIZED_EVENT_BUFFER
    q.push(barrier)
    assert q.next_data_type == DataType.PRIORITIZED_EVENT_BUFFER
    conn.register_output(q)
    rid, sp, seq, backlog, dt, payload = _read_response(client)
    assert (seq, backlog, dt) == (0, 3, DataType.PRIORITIZED_EVENT_BUFFER)
    assert _nothing_to_read(client)
    _add_credit(client, 5)
    assert [_read_response(client)[2] for _ in range(3)] == [1, 2, 3]
    conn.unregister_output(q)
    assert _wait_for(lambda: not q.is_registered)
    q.release()


def test_blocking_event_stops_the_queue_until_resume(served):
    engine, conn, handler, client, pool = served
    q = OutputQueue(RID, 0, 10)
    conn.register_output(q)
    barrier = to_buffer(EndOfPartitionEvent())
    barrier.data_type = DataType.ALIGNED_CHECKPOINT_BARRIER
    q.push(_data(pool, b"a" * 8))
    q.push(barrier)
    q.push(_data(pool, b"b" * 8))
    assert _read_response(client)[4] == DataType.DATA_BUFFER
    assert _read_response(client)[4] == DataType.ALIGNED_CHECKPOINT_BARRIER
    assert _nothing_to_read(client)
    assert q.is_blocked
    q.resume()
    assert _read_response(client)[5] == b"b" * 8
    conn.unregister_output(q)
    assert _wait_for(lambda: not q.is_registered)
    q.release()


def test_add_credit_for_an_unknown_receiver_goes_to_python(served):
    engine, conn, handler, client, pool = served
    _add_credit(client, 4, bytes(16))
    assert _wait_for(lambda: len(handler.frames) == 1)
    assert handler.frames[0] == P.encode_add_credit(4, bytes(16))
    client.sendall(P.encode_partition_request(bytes(60), 0, 0, bytes(16), 2))
    assert _wait_for(lambda: len(handler.frames) == 2)


def test_zero_credit_fails_the_connection(served):
    engine, conn, handler, client, pool = served
    q = OutputQueue(RID, 0, 0)
    conn.register_output(q)
    assert _wait_for(lambda: q.is_registered)
    frame = bytearray(P.encode_add_credit(1, RID))
    frame[9:13] = struct.pack(">i", 0)
    client.sendall(bytes(frame))
    assert _wait_for(lambda: handler.failures)
    assert "credit 0" in handler.failures[0]
    conn.remove()
    assert _wait_for(lambda: not q.is_registered)
    q.release()


def test_server_frames_from_a_client_fail_the_connection(served):
    engine, conn, handler, client, pool = served
    client.sendall(P.encode_error_response("E", "m", None))
    assert _wait_for(lambda: handler.failures)
    assert "not sent by a client" in handler.failures[0]


def test_release_and_removal_give_every_buffer_back(served):
    engine, conn, handler, client, pool = served
    q = OutputQueue(RID, 0, 1000)
    conn.register_output(q)
    # the client reads nothing: the kernel fills, the rest waits on the wire or in the queue
    pushed = 0
    while pushed < 60:
        b = pool.request_buffer()
        if b is None:
            engine.reap()
            time.sleep(0.01)
            continue
        b.size = SEG
        q.push(b)
        pushed += 1
    assert _wait_for(lambda: q.buffers_sent > 0)
    conn.remove()
    assert handler.removed.wait(10)
    assert not q.is_registered
    q.release()
    engine.reap()
    assert q.push(_data(pool, b"late")) is False     # released: recycled at once


def test_many_queues_are_served_round_robin(served):
    engine, conn, handler, client, pool = served
    queues = [OutputQueue(bytes([i]) * 16, i, 100) for i in range(4)]
    for q in queues:
        for _ in range(3):
            q.push(_data(pool, b"x" * 16))
    for q in queues:
        conn.register_output(q)
    order = [_read_response(client)[1] for _ in range(12)]
    assert sorted(order) == sorted(list(range(4)) * 3)
    # round robin: no queue sends its third buffer before every queue sent its first
    firsts = {sp: order.index(sp) for sp in range(4)}
    assert max(firsts.values()) < 8
    for q in queues:
        conn.unregister_output(q)
    assert _wait_for(lambda: not any(q.is_registered for q in queues))
    for q in queues:
        q.release()


# -- OutputQueue against a pure-Python model (hypothesis) ----------------------------------------

_OPS = st.lists(st.one_of(
    st.tuples(st.just("data"), st.integers(1, 300)),
    st.tuples(st.just("event"), st.just(0)),
    st.tuples(st.just("priority"), st.just(0)),
    st.tuples(st.just("blocking"), st.just(0)),
    st.tuples(st.just("credit"), st.integers(1, 3)),
    st.tuples(st.just("poll"), st.just(0)),
    st.tuples(st.just("resume"), st.just(0)),
), max_size=80)

_KIND_TYPES = {"data": DataType.DATA_BUFFER, "event": DataType.EVENT_BUFFER,
               "priority": DataType.PRIORITIZED_EVENT_BUFFER,
               "blocking": DataType.ALIGNED_CHECKPOINT_BARRIER}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(initial_credit=st.integers(0, 3), ops=_OPS)
def test_output_queue_matches_the_model(initial_credit, ops):
    """Random push/credit/poll/resume sequences: the native queue hands out exactly what Flink's
    subpartition + credit-based reader would (order with priority events first, credit per data
    buffer, events without credit, blocking until resumed, sequence numbers, the backlog)."""
    nbp = NetworkBufferPool(128, SEG)
    pool = nbp.create_buffer_pool(1, 128)
    q = OutputQueue(RID, 0, initial_credit)
    model: list[tuple[DataType, bytes]] = []
    credit, blocked, seq, tag = initial_credit, False, 0, 0
    try:
        for op, arg in ops:
            if op in _KIND_TYPES:
                tag += 1
                payload = tag.to_bytes(4, "big") * (arg if op == "data" else 1)
                buf = _data(pool, payload)
                buf.data_type = _KIND_TYPES[op]
                assert q.push(buf)
                entry = (_KIND_TYPES[op], payload)
                if op == "priority":
                    n = sum(1 for t, _ in model if t.has_priority)
                    model.insert(n, entry)
                else:
                    model.append(entry)
            elif op == "credit":
                q.add_credit(arg)
                credit += arg
            elif op == "resume":
                if blocked:
                    q.resume()
                    blocked = False
                else:
                    with pytest.raises(RuntimeError):
                        q.resume()
            else:
                got = q.poll()
                can = bool(model) and not blocked and (credit > 0 or not model[0][0].is_buffer)
                if not can:
                    assert got is None
                    continue
                dt, payload = model.pop(0)
                assert got is not None
                buf, s, backlog, nxt = got
                try:
                    assert (buf.data_type, buf.to_bytes()) == (dt, payload)
                finally:
                    buf.recycle()
                if dt.is_buffer:
                    credit -= 1
                if dt.is_blocking_upstream:
                    blocked = True
                assert s == seq
                seq += 1
                assert backlog == sum(1 for t, _ in model if t.is_buffer)
                assert nxt == (model[0][0] if model else DataType.NONE)
            assert q.queued_buffers == len(model)
            assert q.backlog == sum(1 for t, _ in model if t.is_buffer)
            assert q.credit == credit and q.is_blocked == blocked
    finally:
        assert q.release() == len(model)
        pool.lazy_destroy()
        assert nbp.is_whole
        nbp.destroy()


def test_a_pusher_outrunning_a_slow_reader_loses_nothing(served):
    """A pushing thread fills the kernel's buffer while the client does not read; the I/O thread
    finishes the frames as the client reads (nothing lost, nothing out of order)."""
    engine, conn, handler, client, pool = served
    q = OutputQueue(RID, 0, 10_000)
    conn.register_output(q)
    assert _wait_for(lambda: q.is_registered)
    n = 300
    sent = 0
    pusher_done = threading.Event()

    def pusher():
        nonlocal sent
        while sent < n:
            b = pool.request_buffer()
            if b is None:
                time.sleep(0.001)
                continue
            memoryview(b.memory_segment)[:8] = sent.to_bytes(8, "big")
            b.size = SEG
            q.push(b)
            sent += 1
        pusher_done.set()

    t = threading.Thread(target=pusher)
    t.start()
    time.sleep(0.2)                    # the kernel fills: the rest waits on the wire and queue
    for i in range(n):
        rid, sp, seq, backlog, dt, payload = _read_response(client)
        assert seq == i and payload[:8] == i.to_bytes(8, "big") and len(payload) == SEG
    t.join(10)
    assert pusher_done.is_set() and q.buffers_sent == n
    conn.unregister_output(q)
    assert _wait_for(lambda: not q.is_registered)
    q.release()


def test_flushes_of_one_buffer_waiting_for_credit_go_as_one_frame(served):
    """Slices of the same buffer pushed back to back (flushes of the open buffer) while the
    first still waits merge into one BufferResponse, as Flink's poll builds one slice of what
    was flushed by then; they cost one credit, and every reference goes back."""
    engine, conn, handler, client, pool = served
    q = OutputQueue(RID, 0, 0)
    conn.register_output(q)
    # registered before the AddCredit comes (an AddCredit the engine cannot route goes to the
    # Python handler, which this test's handler only records)
    assert _wait_for(lambda: q.is_registered)
    buf = _data(pool, bytes(range(100)))
    for start, end in ((0, 10), (10, 35), (35, 100)):
        assert q.push(buf.read_only_slice(start, end - start).retain())
    other = _data(pool, b"z" * 5)
    q.push(other)                                   # another buffer: its own frame
    assert q.queued_buffers == 2 and q.backlog == 2
    _add_credit(client, 2)
    first, second = _read_response(client), _read_response(client)
    assert first[5] == bytes(range(100)) and (first[2], first[3]) == (0, 1)
    assert second[5] == b"z" * 5
    buf.recycle()
    conn.unregister_output(q)
    assert _wait_for(lambda: not q.is_registered)
    q.release()
