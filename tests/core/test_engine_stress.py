"""A randomized multi-thread stress test of the native receive engine (CI runs it in the debug
build too, where the engine asserts its invariants).

Real loopback sockets: one server thread per connection sends BufferResponses only against the
credit it was given (initial credit + every AddCredit it reads), with random sizes and pauses;
consumer threads wait on the gate's doorbell, check every buffer's sequence and bytes and
recycle it after random stalls; meanwhile channels are cancelled at random and one connection
is killed mid-frame. At the end every buffer went back: the pools are whole."""

from __future__ import annotations

import random
import select
import socket
import threading
import time

import pytest

from flinknet._core import protocol as P  # noqa: N812
from flinknet._core.buffer import DataType, NetworkBuffer
from flinknet._core.engine import ChannelQueue, GateSignal, NativeConnection, OutputQueue, ReceiveEngine
from flinknet._core.pool import NetworkBufferPool
from flinknet.errors import BufferRequestTimeoutError

SEG = 1024


def _payload(channel: int, seq: int, size: int) -> bytes:
    head = bytes([channel & 0xFF, seq & 0xFF])
    return (head * (size // 2 + 1))[:size]


class _Conn:
    """The Python side of one connection (the handler) and its server thread."""

    def __init__(self, engine, index, channels, frames_per_channel, rnd, kill_after):
        lst = socket.create_server(("127.0.0.1", 0))
        self.client = socket.create_connection(lst.getsockname())
        self.server, _ = lst.accept()
        lst.close()
        self.client.setblocking(False)
        self.index = index
        self.channels = channels          # [(global channel index, rid, queue, initial credit)]
        self.n = frames_per_channel
        self.rnd = random.Random(rnd.random())
        self.kill_after = kill_after      # frames sent before the connection is cut (None: never)
        self.failed = threading.Event()
        self.removed = threading.Event()
        self.python_frames = 0
        self.errors = []
        self.native = NativeConnection(engine, self.client, self, 1 << 20, SEG)
        self.thread = threading.Thread(target=self._serve, daemon=True)

    # handler (the engine's I/O thread, with the GIL)
    def on_frame(self, frame):
        self.python_frames += 1          # backlog announcements, frames of cancelled channels

    def on_failure(self, message, is_local):
        self.failed.set()

    def on_channel_error(self, queue, expected, sequence_number):
        self.errors.append((expected, sequence_number))

    def on_removed(self):
        self.removed.set()
        self.client.close()

    # the server
    def _serve(self):
        sock = self.server
        credit = {rid: initial for _, rid, _, initial in self.channels}
        sent = {rid: 0 for _, rid, _, _ in self.channels}
        chan = {rid: c for c, rid, _, _ in self.channels}
        dec = P.FrameDecoder(side="server")
        total = 0
        try:
            while any(sent[r] < self.n for r in sent):
                readable, _, _ = select.select([sock], [], [], 0.002)
                if readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    for m in dec.feed(data):
                        if type(m) is P.AddCredit:
                            credit[m.receiver_id] += m.credit
                out = []
                for rid in credit:
                    while credit[rid] and sent[rid] < self.n:
                        size = self.rnd.randint(1, SEG)
                        seq = sent[rid]
                        out.append(P.encode_buffer_response(
                            rid, 0, seq, self.rnd.randint(0, 5), DataType.DATA_BUFFER, False,
                            _payload(chan[rid], seq, size)))
                        if self.rnd.random() < 0.02:
                            out.append(P.encode_backlog_announcement(3, rid))
                        credit[rid] -= 1
                        sent[rid] += 1
                        total += 1
                        if self.kill_after is not None and total >= self.kill_after:
                            # cut the connection in the middle of a frame
                            blob = b"".join(out)
                            sock.sendall(blob[:len(blob) - 7])
                            sock.close()
                            return
                if out:
                    blob = b"".join(out)
                    # random split points: frames arrive in pieces
                    while blob:
                        k = self.rnd.randint(1, len(blob))
                        sock.sendall(blob[:k])
                        blob = blob[k:]
                        if self.rnd.random() < 0.05:
                            time.sleep(self.rnd.random() * 0.002)
        except OSError:
            return


@pytest.mark.parametrize("seed", [7, 11])
def test_random_stress_stalls_cancellations_and_a_killed_connection(seed):
    rnd = random.Random(seed)
    pool = NetworkBufferPool(1024, SEG)
    engine = ReceiveEngine()
    engine.start()
    num_conns, per_conn, frames = 3, 8, 200
    n_channels = num_conns * per_conn
    signal = GateSignal(n_channels)
    queues = []
    conns = []
    kill = rnd.randrange(num_conns)
    for c in range(num_conns):
        chans = []
        for k in range(per_conn):
            idx = c * per_conn + k
            rid = rnd.randbytes(16)
            q = ChannelQueue(signal, idx, rid, pool.recycle_unpooled_memory_segments)
            initial = rnd.randint(1, 4)
            for seg in pool.request_unpooled_memory_segments(initial):
                q.add_exclusive(seg, announce=False)
            chans.append((idx, rid, q, initial))
            queues.append(q)
        conn = _Conn(engine, c, chans, frames, rnd,
                     kill_after=rnd.randint(50, per_conn * frames // 2) if c == kill else None)
        conn.native.start()
        for _, _, q, _ in chans:
            conn.native.register(q)
        conns.append(conn)
    deadline = time.monotonic() + 10
    while sum(c.native.num_channels for c in conns) < n_channels and time.monotonic() < deadline:
        time.sleep(0.001)
    for conn in conns:
        conn.thread.start()

    expected_seq = [0] * n_channels
    cancelled = set()
    problems = []
    lock = threading.Lock()
    done = threading.Event()
    conn_of = [c // per_conn for c in range(n_channels)]

    def consume(worker):
        r = random.Random(seed * 100 + worker)
        held = []
        while not done.is_set():
            signal.wait(0.05)
            for idx in signal.drain():
                q = queues[idx]
                while True:
                    with lock:   # two workers may drain the same channel: poll and check as one
                        item = q.poll()
                        if item is None:
                            break
                        buf, _, seq, backlog = item
                        if seq != expected_seq[idx]:
                            problems.append(("order", idx, seq, expected_seq[idx]))
                        expected_seq[idx] = seq + 1
                    if buf.to_bytes() != _payload(idx, seq, buf.size):
                        problems.append(("bytes", idx, seq))
                    held.append(buf)
                    if r.random() < 0.1:
                        time.sleep(r.random() * 0.003)       # a stalled task
                    if len(held) > r.randint(0, 3):
                        held.pop(r.randrange(len(held))).recycle()
            while held:
                held.pop().recycle()

    workers = [threading.Thread(target=consume, args=(w,), daemon=True) for w in range(2)]
    for w in workers:
        w.start()

    # cancel a few channels while the data flows
    for _ in range(3):
        time.sleep(rnd.random() * 0.05)
        idx = rnd.randrange(n_channels)
        if idx in cancelled:
            continue
        with lock:
            cancelled.add(idx)
        queues[idx].release()
        conns[conn_of[idx]].native.unregister(queues[idx])

    def finished():
        for idx in range(n_channels):
            if idx in cancelled or conns[conn_of[idx]].failed.is_set():
                continue
            if expected_seq[idx] < frames:
                return False
        return conns[kill].failed.is_set()

    deadline = time.monotonic() + 60
    while not finished() and time.monotonic() < deadline:
        time.sleep(0.01)
    done.set()
    for w in workers:
        w.join(10)
    assert finished(), [(i, expected_seq[i]) for i in range(n_channels)]
    assert problems == []
    assert conns[kill].failed.is_set()
    assert all(not c.errors for c in conns), [c.errors for c in conns]
    for i, q in enumerate(queues):
        if i not in cancelled and not conns[conn_of[i]].failed.is_set():
            assert q.check_whole() == 0          # nothing handed out, nothing lost
    for q in queues:
        q.release()
    for conn in conns:
        conn.native.remove()
    engine.close()
    for conn in conns:
        assert conn.removed.is_set()
        conn.thread.join(10)
        conn.server.close()
    assert pool.is_whole, (pool.available_segments, pool.total_segments)


class _Side:
    """A handler for one end of an engine-to-engine connection."""

    def __init__(self):
        self.failed = threading.Event()
        self.removed = threading.Event()
        self.frames = 0
        self.errors = []

    def on_frame(self, frame):
        self.frames += 1     # frames of cancelled channels / queues (unknown receivers)

    def on_failure(self, message, is_local):
        self.failed.set()

    def on_channel_error(self, queue, expected, sequence_number):
        self.errors.append((expected, sequence_number))

    def on_removed(self):
        self.removed.set()


@pytest.mark.parametrize(("seed", "blocking"), [(3, False), (5, False), (7, True), (11, True)])
def test_engine_to_engine_stress(seed, blocking):
    """Both ends native, as between two flinknet processes: producer threads push buffers of
    random sizes into OutputQueues (waiting for their pool when the credit loop holds every
    buffer), the server-role engine sends them as credit allows, the client-role engine receives
    them into credit slots and announces recycled slots as AddCredit, consumer threads check and
    recycle them after random stalls; queues are cancelled on both ends and one connection is cut
    meanwhile. Every byte arrives in order on the live channels and both pools end whole.

    ``blocking``: the producers' pools have the sending engine as their reclaimer and the
    producers take buffers with blocking requests, as a RecordWriter does: a producer whose pool
    ran dry recycles the written buffers itself, or waits in the engine for the I/O thread to
    write some (several producers on different pools wait there at once, each recycling the
    others' buffers too), or for a poke when the reaper recycled them."""
    rnd = random.Random(seed)
    prod_pool = NetworkBufferPool(256, SEG)
    cons_pool = NetworkBufferPool(256, SEG)
    sender, receiver = ReceiveEngine(), ReceiveEngine()
    sender.start()
    receiver.start()
    num_conns, per_conn, frames = 3, 6, 300
    # a pool per connection (a partition's), each channel at most 8 buffers queued (Flink's
    # max-buffers-per-channel): the cut connection's queues cannot starve the others
    # (blocking: a pool smaller than what its six channels may queue, so that it runs dry)
    prod_locals = [prod_pool.create_buffer_pool(6, 6) if blocking else prod_pool.create_buffer_pool(8, 64)
                   for _ in range(num_conns)]
    if blocking:
        for pool in prod_locals:
            pool.set_reclaimer(sender)
    n = num_conns * per_conn
    signal = GateSignal(n)
    outqs, chqs, links = [], [], []
    for c in range(num_conns):
        lst = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(lst.getsockname())
        server, _ = lst.accept()
        lst.close()
        client.setblocking(False)
        server.setblocking(False)
        s_side, c_side = _Side(), _Side()
        s_conn = NativeConnection(sender, server, s_side, 1 << 20, SEG, server=True)
        c_conn = NativeConnection(receiver, client, c_side, 1 << 20, SEG)
        s_conn.start()
        c_conn.start()
        for k in range(per_conn):
            idx = c * per_conn + k
            rid = rnd.randbytes(16)
            credit = rnd.randint(1, 3)
            cq = ChannelQueue(signal, idx, rid, cons_pool.recycle_unpooled_memory_segments)
            for seg in cons_pool.request_unpooled_memory_segments(credit):
                cq.add_exclusive(seg, announce=False)
            c_conn.register(cq)
            oq = OutputQueue(rid, idx, credit)
            s_conn.register_output(oq)
            chqs.append(cq)
            outqs.append(oq)
        links.append((s_conn, c_conn, s_side, c_side, server, client))
    # Every channel routed and every queue served before data flows, as a PartitionRequest (which
    # the client writes only after its I/O thread registered the channel) guarantees between
    # flinknet processes: a frame read before its receiver's registration goes to Python as one
    # for an unknown receiver, and the first frames of a whole connection were lost so (1 run in
    # about 6 once a pushing thread could write an idle connection itself).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (
            all(link[1].num_channels == per_conn for link in links)
            and all(q.is_registered for q in outqs)):
        time.sleep(0.001)
    assert all(link[1].num_channels == per_conn for link in links)
    assert all(q.is_registered for q in outqs)
    conn_of = [i // per_conn for i in range(n)]
    cut = rnd.randrange(num_conns)
    cancelled: set[int] = set()
    lock = threading.Lock()
    expected = [0] * n
    pushed = [0] * n
    problems = []
    done = threading.Event()

    def produce(c):
        r = random.Random(seed * 31 + c)
        mine = list(range(c * per_conn, (c + 1) * per_conn))
        while not done.is_set():
            live = [i for i in mine if pushed[i] < frames and i not in cancelled]
            if not live or links[c][2].failed.is_set():
                return
            live = [i for i in live if outqs[i].queued_buffers < 8]
            if not live:
                time.sleep(0.0005)
                continue
            i = r.choice(live)
            if blocking:
                try:
                    seg = prod_locals[c].request_memory_segment_blocking(0.02)
                except BufferRequestTimeoutError:
                    continue        # (look again whether the connection failed or the test ended)
                buf = NetworkBuffer(seg, prod_locals[c])
            else:
                buf = prod_locals[c].request_buffer()
                if buf is None:
                    sender.reap()
                    time.sleep(0.0005)
                    continue
            size = r.randint(1, SEG)
            memoryview(buf.memory_segment)[:size] = _payload(i, pushed[i], size)
            buf.size = size
            outqs[i].push(buf)
            pushed[i] += 1
            if r.random() < 0.01:
                time.sleep(r.random() * 0.002)

    def consume(worker):
        r = random.Random(seed * 100 + worker)
        held = []
        while not done.is_set():
            if not signal.wait(0.01):
                while held:          # nothing arrives: a task holding the only slot gives it back
                    held.pop().recycle()
            for idx in signal.drain():
                while True:
                    with lock:
                        item = chqs[idx].poll()
                        if item is None:
                            break
                        buf, _, seq, _ = item
                        if seq != expected[idx]:
                            problems.append(("order", idx, seq, expected[idx]))
                        expected[idx] = seq + 1
                    if buf.to_bytes() != _payload(idx, seq, buf.size):
                        problems.append(("bytes", idx, seq))
                    held.append(buf)
                    if r.random() < 0.05:
                        time.sleep(r.random() * 0.002)
                    if len(held) > r.randint(0, 2):
                        held.pop(r.randrange(len(held))).recycle()
        while held:
            held.pop().recycle()

    producers = [threading.Thread(target=produce, args=(c,), daemon=True) for c in range(num_conns)]
    consumers = [threading.Thread(target=consume, args=(w,), daemon=True) for w in range(2)]
    for t in producers + consumers:
        t.start()
    # cancel a few channels on both ends, and cut one connection, while the data flows
    for _ in range(3):
        time.sleep(rnd.random() * 0.05)
        idx = rnd.randrange(n)
        if idx in cancelled:
            continue
        with lock:
            cancelled.add(idx)
        s_conn, c_conn = links[conn_of[idx]][:2]
        c_conn.unregister(chqs[idx])
        chqs[idx].release()
        s_conn.unregister_output(outqs[idx])
        outqs[idx].release()
    time.sleep(rnd.random() * 0.05)
    links[cut][5].shutdown(socket.SHUT_RDWR)

    def finished():
        for i in range(n):
            if i in cancelled or conn_of[i] == cut:
                continue
            if expected[i] < frames:
                return False
        return links[cut][2].failed.is_set() and links[cut][3].failed.is_set()

    deadline = time.monotonic() + 60
    while not finished() and time.monotonic() < deadline:
        time.sleep(0.01)
    done.set()
    for t in producers + consumers:
        t.join(10)
    assert finished(), [(i, pushed[i], expected[i], outqs[i].credit, outqs[i].queued_buffers,
                         chqs[i].free_slots, chqs[i].queued_buffers)
                        for i in range(n) if expected[i] < frames and i not in cancelled and conn_of[i] != cut]
    assert problems == []
    assert all(not link[3].errors for link in links)
    for q in outqs:
        q.release()
    for q in chqs:
        q.release()
    for link in links:
        link[0].remove()
        link[1].remove()
    sender.close()
    receiver.close()
    for _, _, s_side, c_side, server, client in links:
        assert s_side.removed.is_set() and c_side.removed.is_set()
        server.close()
        client.close()
    sender.reap()
    if blocking:
        # the producers recycled written buffers themselves (not only the reaper)
        assert sender.buffers_reclaimed > 0
        assert sender.reclaim_waiters == 0
    for pool in prod_locals:
        pool.lazy_destroy()
    assert prod_pool.is_whole, (prod_pool.available_segments, prod_pool.total_segments)
    assert cons_pool.is_whole, (cons_pool.available_segments, cons_pool.total_segments)
