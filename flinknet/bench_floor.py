"""The latency floor of the transport's architecture, in plain Python, measured beside flinknet.

The transport issue asks that user code never runs on the I/O thread: a record goes from the
producing task's thread to its process's I/O thread, over TCP, to the consuming process's I/O
thread and on to the consuming task's thread. This module builds exactly that relay with nothing
else in it: no buffers, no framing, no credits — a ``deque`` and a self-pipe wake-up
(``asyncio``'s ``call_soon_threadsafe`` mechanism) on the sending side, a ``selectors`` loop on
each I/O thread, a ``threading.Condition`` hand-off on the receiving side, 100-byte messages
carrying their send time (``CLOCK_MONOTONIC``, shared by processes on one host), paced at
10 000 per second like ``latency.100B.timeout0``.

Its one-way p50 is the least any implementation with a dedicated I/O thread per process can do
in CPython on this machine; the raw socket ping-pong (one thread per side, no hand-offs) is the
least any implementation at all can do. ``python -m flinknet.bench_floor`` prints both.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import selectors
import socket
import struct
import threading
import time

__all__ = ["relay_one_way_us", "paced_raw_one_way_us", "thread_handoff_us", "relay_bandwidth_gbps"]

_TS = struct.Struct("<q")
_SIZE = 100


def _ctx():
    return mp.get_context("spawn")


def _io_sender(sock: socket.socket, wake_r: socket.socket, out: collections.deque, done: threading.Event) -> None:
    sel = selectors.DefaultSelector()
    sel.register(wake_r, selectors.EVENT_READ)
    try:
        while not done.is_set() or out:
            for _key, _mask in sel.select(0.1):
                wake_r.recv(4096)
            while out:
                sock.sendall(out.popleft())
    finally:
        sel.close()


def _producer(q_out, q_in, n: int, rate: float) -> None:
    lst = socket.create_server(("127.0.0.1", 0))
    q_out.put(lst.getsockname())
    conn, _ = lst.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    wake_r, wake_w = socket.socketpair()
    out: collections.deque = collections.deque()
    done = threading.Event()
    io = threading.Thread(target=_io_sender, args=(conn, wake_r, out, done))
    io.start()
    pad = bytes(_SIZE - _TS.size)
    q_in.get(timeout=60)
    interval = 1.0 / rate
    due = time.perf_counter()
    for _ in range(n):
        due += interval
        left = due - time.perf_counter()
        if left > 0:
            time.sleep(left)
        out.append(_TS.pack(time.monotonic_ns()) + pad)
        wake_w.send(b"\0")            # call_soon_threadsafe: wake the I/O thread
    done.set()
    wake_w.send(b"\0")
    io.join()
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)
    for s in (conn, lst, wake_r, wake_w):
        s.close()


def _paced_sender(q_out, q_in, n: int, rate: float) -> None:
    lst = socket.create_server(("127.0.0.1", 0))
    q_out.put(lst.getsockname())
    conn, _ = lst.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pad = bytes(_SIZE - _TS.size)
    q_in.get(timeout=60)
    interval = 1.0 / rate
    due = time.perf_counter()
    for _ in range(n):
        due += interval
        left = due - time.perf_counter()
        if left > 0:
            time.sleep(left)
        conn.sendall(_TS.pack(time.monotonic_ns()) + pad)
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)
    conn.close()
    lst.close()


def paced_raw_one_way_us(n: int = 20_000, rate: float = 10_000) -> list[float]:
    """One-way delays (µs) of 100-byte messages at ``rate``/s over a raw socket, one thread per
    side blocked in ``recv``: the ping-pong's hardware and kernel path, plus waking an idle
    process for every message (the ping-pong never idles)."""
    ctx = _ctx()
    q_out, q_in = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_paced_sender, args=(q_out, q_in, n, rate), daemon=True)
    proc.start()
    try:
        addr = q_out.get(timeout=60)
        with socket.create_connection(addr) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            q_in.put("go")
            delays = []
            clock = time.monotonic_ns
            unpack = _TS.unpack_from
            pending = b""
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                now = clock()
                pending += data
                k = len(pending) // _SIZE * _SIZE
                for i in range(0, k, _SIZE):
                    delays.append((now - unpack(pending, i)[0]) / 1e3)
                pending = pending[k:]
            sock.shutdown(socket.SHUT_WR)
        return delays
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()


def relay_one_way_us(n: int = 20_000, rate: float = 10_000) -> list[float]:
    """One-way delays (µs) through user thread → I/O thread → TCP → I/O thread → user thread."""
    ctx = _ctx()
    q_out, q_in = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_producer, args=(q_out, q_in, n, rate), daemon=True)
    proc.start()
    try:
        addr = q_out.get(timeout=60)
        sock = socket.create_connection(addr)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cond = threading.Condition()
        inbox: collections.deque = collections.deque()
        finished = []

        def io_receiver():
            sel = selectors.DefaultSelector()
            sel.register(sock, selectors.EVENT_READ)
            pending = b""
            try:
                while True:
                    sel.select()
                    data = sock.recv(65536)
                    if not data:
                        break
                    pending += data
                    k = len(pending) // _SIZE * _SIZE
                    if k:
                        msgs = [pending[i:i + _SIZE] for i in range(0, k, _SIZE)]
                        pending = pending[k:]
                        with cond:
                            inbox.extend(msgs)
                            cond.notify()
            finally:
                sel.close()
                with cond:
                    finished.append(True)
                    cond.notify()

        io = threading.Thread(target=io_receiver)
        io.start()
        q_in.put("go")
        delays = []
        clock = time.monotonic_ns
        unpack = _TS.unpack_from
        while len(delays) < n:
            with cond:
                while not inbox and not finished:
                    cond.wait()
                msgs = list(inbox)
                inbox.clear()
                if not msgs and finished:
                    break
            now = clock()
            delays.extend((now - unpack(m)[0]) / 1e3 for m in msgs)
        sock.shutdown(socket.SHUT_WR)
        io.join(30)
        sock.close()
        return delays
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _bulk_io_sender(sock, wake_r, out: collections.deque, space: threading.Semaphore,
                    done: threading.Event) -> None:
    sel = selectors.DefaultSelector()
    sel.register(wake_r, selectors.EVENT_READ)
    try:
        while not done.is_set() or out:
            if not out:
                for _key, _mask in sel.select(0.1):
                    wake_r.recv(4096)
            while out:
                sock.sendall(out.popleft())
                space.release()
    finally:
        sel.close()


def _bulk_producer(q_out, q_in, total: int, chunk: int, window: int) -> None:
    lst = socket.create_server(("127.0.0.1", 0))
    q_out.put(lst.getsockname())
    conn, _ = lst.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    wake_r, wake_w = socket.socketpair()
    out: collections.deque = collections.deque()
    space = threading.Semaphore(window)      # bounded: at most `window` chunks queued
    done = threading.Event()
    io = threading.Thread(target=_bulk_io_sender, args=(conn, wake_r, out, space, done))
    io.start()
    record = bytes(chunk)
    q_in.get(timeout=60)
    for _ in range(total // chunk):
        space.acquire()
        buf = bytearray(record)               # the producer's copy into its buffer
        was_empty = not out
        out.append(buf)
        if was_empty:
            wake_w.send(b"\0")
    done.set()
    wake_w.send(b"\0")
    io.join()
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)
    for s_ in (conn, lst, wake_r, wake_w):
        s_.close()


def relay_bandwidth_gbps(total: int = 1 << 30, chunk: int = 32 * 1024, window: int = 10) -> float:
    """GB/s of ``chunk``-byte records through producer thread → I/O thread → TCP → I/O thread →
    consumer thread, each side copying once in user space (into a buffer; out of it) and at
    most ``window`` chunks queued per side, with no framing and no credits: an upper bound for
    any design with I/O threads in CPython."""
    ctx = _ctx()
    q_out, q_in = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_bulk_producer, args=(q_out, q_in, total, chunk, window), daemon=True)
    proc.start()
    try:
        addr = q_out.get(timeout=60)
        sock = socket.create_connection(addr)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cond = threading.Condition()
        inbox: collections.deque = collections.deque()
        state = {"eof": False}

        def io_receiver():
            try:
                while True:
                    with cond:
                        while len(inbox) >= window:
                            cond.wait()
                    buf = bytearray(chunk)
                    view = memoryview(buf)
                    got = 0
                    while got < chunk:
                        n = sock.recv_into(view[got:])
                        if n == 0:
                            return
                        got += n
                    with cond:
                        inbox.append(buf)
                        if len(inbox) == 1:
                            cond.notify_all()
            finally:
                with cond:
                    state["eof"] = True
                    cond.notify_all()

        io = threading.Thread(target=io_receiver)
        t0 = time.perf_counter()
        io.start()
        q_in.put("go")
        received = 0
        while True:
            with cond:
                while not inbox and not state["eof"]:
                    cond.wait()
                if not inbox:
                    break
                buf = inbox.popleft()
                if len(inbox) == window - 1:
                    cond.notify_all()
            received += len(bytes(buf))       # the consumer's copy out of the buffer
        elapsed = time.perf_counter() - t0
        sock.shutdown(socket.SHUT_WR)
        io.join(30)
        sock.close()
        return received / elapsed / 1e9
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()


def thread_handoff_us(n: int = 20_000) -> list[float]:
    """One-way hand-off (µs) between two threads of one process through a Condition (half of a
    ping-pong): the price of every thread boundary a record crosses."""
    cond = threading.Condition()
    state = {"turn": 0}
    out = []

    def ponger():
        for _ in range(n):
            with cond:
                while state["turn"] != 1:
                    cond.wait()
                state["turn"] = 0
                cond.notify()

    t = threading.Thread(target=ponger)
    t.start()
    for _ in range(n):
        t0 = time.perf_counter_ns()
        with cond:
            state["turn"] = 1
            cond.notify()
            while state["turn"] != 0:
                cond.wait()
        out.append((time.perf_counter_ns() - t0) / 2e3)
    t.join()
    return out


def main() -> None:  # pragma: no cover (a measurement script)
    import numpy as np

    from flinknet.bench_transport import raw_round_trip_us

    relay = relay_one_way_us()[2000:]
    paced = paced_raw_one_way_us()[2000:]
    rtt = raw_round_trip_us(10_000)
    hop = thread_handoff_us()
    p = np.percentile
    print(f"raw socket one-way p50 {p(rtt, 50) / 2:.1f} us (ping-pong, one thread per side)")
    print(f"raw socket paced one-way p50 {p(paced, 50):.1f} us, p99 {p(paced, 99):.1f} us "
          "(10 000 msg/s, 100 B, one thread per side)")
    print(f"thread hand-off p50 {p(hop, 50):.1f} us (Condition ping-pong / 2)")
    print(f"plain-Python relay with I/O threads, 32 KiB records: "
          f"{max(relay_bandwidth_gbps() for _ in range(2)):.2f} GB/s")
    print(f"plain-Python relay with I/O threads: one-way p50 {p(relay, 50):.1f} us, "
          f"p99 {p(relay, 99):.1f} us (10 000 msg/s, 100 B)")


if __name__ == "__main__":
    main()
