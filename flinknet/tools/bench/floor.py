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
least any implementation at all can do. ``python -m flinknet.tools.bench.floor`` prints both.

The **native floor** (:func:`native_relay_bandwidth_gbps`, :func:`native_relay_one_way_us`) is
the same relay written in C without the GIL (:mod:`flinknet.tools.bench._floorkit`: a producer
pthread, an epoll I/O thread with an eventfd wake-up and gather writes, a condition-variable
hand-off to the consumer): the most a native engine with I/O threads can do on this machine.
:func:`native_relay_records_ns` runs it with small records packed into its slots, each copied
in and out on its own: the floor of the 100 B and 1000 B rows. :func:`bench_floor_pairs`
alternates the floors with flinknet's rows (issue 14's acceptance).
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import selectors
import socket
import statistics
import struct
import sys
import threading
import time

from flinknet.tools.bench.report import Row
from flinknet.tools.bench.transport import (
    WIDE_FLOATING,
    drop_warmup,
    percentile,
    raw_round_trip_us,
    raw_socket_ns_per_byte,
    run_remote,
)

__all__ = ["CREDIT_FLOOR", "FLOOR_BANDWIDTH_ROWS", "NATIVE_FLOOR", "NATIVE_FLOOR_P50",
           "NATIVE_FLOOR_P99", "add_floor_baselines", "bench_floor_pairs",
           "native_credit_relay_bandwidth_gbps", "native_relay_bandwidth_gbps", "native_relay_one_way_us",
           "paced_raw_one_way_us",
           "relay_bandwidth_gbps", "relay_one_way_us", "thread_handoff_us"]

_TS = struct.Struct("<q")
_SIZE = 100


def _ctx():
    return mp.get_context("spawn")


def _accept_one(q_out) -> socket.socket:
    """Listen on loopback, tell the parent where, and return the one connection (TCP_NODELAY)."""
    with socket.create_server(("127.0.0.1", 0)) as lst:
        q_out.put(lst.getsockname())
        conn, _ = lst.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def _finish(conn: socket.socket) -> None:
    """End the stream and wait until the reader closed its side (reading what it still sends:
    credit messages in credit mode)."""
    conn.shutdown(socket.SHUT_WR)
    while conn.recv(65536):
        pass
    conn.close()


def _paced_messages(n: int, rate: float):
    """``n`` messages of 100 bytes at ``rate`` per second, each stamped as it is handed out.
    The pacing sleeps, never spins: a spinning thread keeps the GIL from the I/O thread."""
    pad = bytes(_SIZE - _TS.size)
    interval = 1.0 / rate
    due = time.perf_counter()
    for _ in range(n):
        due += interval
        left = due - time.perf_counter()
        if left > 0:
            time.sleep(left)
        yield _TS.pack(time.monotonic_ns()) + pad


class _Peer:
    """A sender process started with spawn (``target(q_out, q_in, *args)``), stopped by PID."""

    def __init__(self, target, *args):
        ctx = _ctx()
        self.q_out, self.q_in = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(target=target, args=(self.q_out, self.q_in) + args, daemon=True)

    def __enter__(self) -> socket.socket:
        self.proc.start()
        sock = socket.create_connection(self.q_out.get(timeout=60))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def go(self) -> None:
        self.q_in.put("go")

    def __exit__(self, *exc) -> None:
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def _io_sender(sock, wake_r, out: collections.deque, done: threading.Event,
               space: threading.Semaphore | None = None) -> None:
    """The sending process's I/O thread: sleeps in select until woken, then sends what is queued
    (releasing ``space`` per item when the queue is bounded)."""
    sel = selectors.DefaultSelector()
    sel.register(wake_r, selectors.EVENT_READ)
    try:
        while not done.is_set() or out:
            if not out:
                for _key, _mask in sel.select(0.1):
                    wake_r.recv(4096)
            while out:
                sock.sendall(out.popleft())
                if space is not None:
                    space.release()
    finally:
        sel.close()


class _Relay:
    """A task thread's side of the sending process: a deque and a self-pipe wake-up (asyncio's
    ``call_soon_threadsafe``) in front of an :func:`_io_sender` thread."""

    def __init__(self, conn: socket.socket, window: int | None = None):
        self.conn = conn
        self.wake_r, self.wake_w = socket.socketpair()
        self.out: collections.deque = collections.deque()
        self.space = threading.Semaphore(window) if window else None
        self.done = threading.Event()
        self.io = threading.Thread(target=_io_sender,
                                   args=(conn, self.wake_r, self.out, self.done, self.space))
        self.io.start()

    def send(self, item) -> None:
        if self.space is not None:
            self.space.acquire()
        was_empty = not self.out
        self.out.append(item)
        if was_empty:
            self.wake_w.send(b"\0")

    def close(self) -> None:
        self.done.set()
        self.wake_w.send(b"\0")
        self.io.join()
        _finish(self.conn)
        self.wake_r.close()
        self.wake_w.close()


def _relay_sender(q_out, q_in, n: int, rate: float) -> None:
    relay = _Relay(_accept_one(q_out))
    q_in.get(timeout=60)
    for msg in _paced_messages(n, rate):
        relay.send(msg)
    relay.close()


def _paced_sender(q_out, q_in, n: int, rate: float) -> None:
    conn = _accept_one(q_out)
    q_in.get(timeout=60)
    for msg in _paced_messages(n, rate):
        conn.sendall(msg)
    _finish(conn)


def _bulk_sender(q_out, q_in, total: int, chunk: int, window: int) -> None:
    relay = _Relay(_accept_one(q_out), window)    # bounded: at most `window` chunks queued
    record = bytes(chunk)
    q_in.get(timeout=60)
    for _ in range(total // chunk):
        relay.send(bytearray(record))              # the producer's copy into its buffer
    relay.close()


def _stamped_delays(data: bytes, now: int, out: list) -> bytes:
    """Append the delay (µs) of every whole message in ``data``; return the partial rest."""
    k = len(data) // _SIZE * _SIZE
    for i in range(0, k, _SIZE):
        out.append((now - _TS.unpack_from(data, i)[0]) / 1e3)
    return data[k:]


def paced_raw_one_way_us(n: int = 20_000, rate: float = 10_000) -> list[float]:
    """One-way delays (µs) of 100-byte messages at ``rate``/s over a raw socket, one thread per
    side blocked in ``recv``: the ping-pong's hardware and kernel path, plus waking an idle
    process for every message (the ping-pong never idles)."""
    peer = _Peer(_paced_sender, n, rate)
    with peer as sock:
        peer.go()
        delays: list[float] = []
        pending = b""
        while data := sock.recv(65536):
            pending = _stamped_delays(pending + data, time.monotonic_ns(), delays)
        sock.shutdown(socket.SHUT_WR)
        sock.close()
    return delays


def relay_one_way_us(n: int = 20_000, rate: float = 10_000) -> list[float]:
    """One-way delays (µs) through user thread → I/O thread → TCP → I/O thread → user thread."""
    peer = _Peer(_relay_sender, n, rate)
    with peer as sock:
        cond = threading.Condition()
        inbox: list[bytes] = []
        finished = []

        def io_receiver():
            sel = selectors.DefaultSelector()
            sel.register(sock, selectors.EVENT_READ)
            try:
                while True:
                    sel.select()
                    data = sock.recv(65536)
                    if not data:
                        break
                    with cond:
                        inbox.append(data)
                        cond.notify()
            finally:
                sel.close()
                with cond:
                    finished.append(True)
                    cond.notify()

        io = threading.Thread(target=io_receiver)
        io.start()
        peer.go()
        delays: list[float] = []
        pending = b""
        while len(delays) < n:
            with cond:
                while not inbox and not finished:
                    cond.wait()
                chunks = inbox[:]
                inbox.clear()
                if not chunks and finished:
                    break
            pending = _stamped_delays(pending + b"".join(chunks), time.monotonic_ns(), delays)
        sock.shutdown(socket.SHUT_WR)
        io.join(30)
        sock.close()
    return delays


def relay_bandwidth_gbps(total: int = 1 << 30, chunk: int = 32 * 1024, window: int = 10) -> float:
    """GB/s of ``chunk``-byte records through producer thread → I/O thread → TCP → I/O thread →
    consumer thread, each side copying once in user space (into a buffer; out of it) and at
    most ``window`` chunks queued per side, with no framing and no credits: an upper bound for
    any design with I/O threads in CPython."""
    peer = _Peer(_bulk_sender, total, chunk, window)
    with peer as sock:
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
        peer.go()
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
    if received != total // chunk * chunk:
        raise AssertionError(f"the relay delivered {received} of {total // chunk * chunk} bytes")
    return received / elapsed / 1e9


def _native_sender(q_out, q_in, count: int, chunk: int, window: int, rate: float,
                   credits: int = 0, record: int = 0) -> None:
    from flinknet.tools.bench import _floorkit

    conn = _accept_one(q_out)
    q_in.get(timeout=60)
    sent = _floorkit.relay_send(conn.fileno(), count, chunk, window, rate, credits, record)
    conn.setblocking(True)
    _finish(conn)
    q_out.put(sent)


def _native_relay(count: int, chunk: int, window: int, rate: float, stamps: bool,
                  credits: bool = False, record: int = 0):
    from flinknet.tools.bench import _floorkit

    peer = _Peer(_native_sender, count, chunk, window, rate, window if credits else 0, record)
    with peer as sock:
        peer.go()
        t0 = time.perf_counter()
        received, _, delays = _floorkit.relay_receive(sock.fileno(), count, chunk, window, stamps,
                                                      credits, record)
        elapsed = time.perf_counter() - t0
        sock.setblocking(True)
        sock.shutdown(socket.SHUT_WR)
        sock.close()
        sent = peer.q_out.get(timeout=60)
    if received != count or sent != count:
        raise AssertionError(f"the native relay moved {sent} / {received} of {count} records")
    return elapsed, delays


def native_relay_bandwidth_gbps(total: int = 1 << 30, chunk: int = 32 * 1024, window: int = 10) -> float:
    """GB/s of ``chunk``-byte records through the relay of :func:`relay_bandwidth_gbps` written in
    C without the GIL (one copy per side, ``window`` slots per side)."""
    count = total // chunk
    elapsed, _ = _native_relay(count, chunk, window, 0.0, False)
    return count * chunk / elapsed / 1e9


def native_credit_relay_bandwidth_gbps(total: int = 1 << 30, chunk: int = 32 * 1024,
                                       window: int = 10) -> float:
    """GB/s of :func:`native_relay_bandwidth_gbps`'s relay with Flink's credit loop added
    (``_floorkit``'s credit mode): the sender holds ``window`` credits at the start (Flink's 2
    exclusive + 8 floating buffers by default) and sends a record only against one; the
    consumer gives each slot back as credit, with flinknet's announcement rule. What a native
    engine with Flink's credit window reaches here, nothing else in it."""
    count = total // chunk
    elapsed, _ = _native_relay(count, chunk, window, 0.0, False, credits=True)
    return count * chunk / elapsed / 1e9


def native_relay_records_ns(size: int, count: int, chunk: int = 32 * 1024, window: int = 10,
                            credits: bool = False) -> float:
    """ns per ``size``-byte record through the native relay in record mode: ``count`` records
    packed into ``chunk``-byte slots with a 4-byte length each, the producer copying each record
    in and the consumer each one out (``_floorkit``'s record mode); ``credits``: with Flink's
    credit loop (:func:`native_credit_relay_bandwidth_gbps`'s). The floor of the 100 B and
    1000 B rows: the relay's thread structure and the per-record copies, nothing else (no
    buffers or Python objects; no credits unless asked)."""
    if size < 1 or count < 1:
        raise ValueError(f"size and count must be at least 1, got {size} and {count}")
    elapsed, _ = _native_relay(count, chunk, window, 0.0, False, credits=credits, record=size)
    return elapsed / count * 1e9


def native_relay_one_way_us(n: int = 20_000, rate: float = 10_000) -> list[float]:
    """One-way delays (µs) of 100-byte records at ``rate``/s through the native relay."""
    _, delays = _native_relay(n, _SIZE, 64, rate, True)
    return [float(d) for d in delays]


#: Baseline names the native floors get in ``flinknet bench`` (:func:`add_floor_baselines`).
NATIVE_FLOOR = "native floor, C without the GIL (same run)"
CREDIT_FLOOR = "native floor with Flink's credit window (same run)"
NATIVE_FLOOR_P50 = "native floor one-way p50 (same run)"
NATIVE_FLOOR_P99 = "native floor one-way p99 (same run)"
#: The rows each floor bounds: 32 KiB records (bandwidth) and the paced 100 B latency.
FLOOR_BANDWIDTH_ROWS = ("remote.32768B.per-record", "remote.32768B.batch",
                        f"remote.32768B.batch.floating{WIDE_FLOATING}")


def add_floor_baselines(rows: list, total: int = 1 << 30, latency_records: int = 20_000) -> None:
    """Measure the native floors now and add them as baselines of the rows they bound (issue
    14's acceptance for a target out of reach: within 1.2x of the floor, measured in the same
    run): :func:`native_relay_bandwidth_gbps` and :func:`native_credit_relay_bandwidth_gbps`
    (``total`` bytes of 32 KiB records) as ns per 32 KiB record beside the
    :data:`FLOOR_BANDWIDTH_ROWS`, and :func:`native_relay_one_way_us` (``latency_records`` at
    10 000/s) beside ``latency.100B.timeout0.p50`` / ``.p99``. Rows that are absent are skipped;
    nothing is measured when none is there."""
    by_name = {row.name: row for row in rows}
    bandwidth = [by_name[name] for name in FLOOR_BANDWIDTH_ROWS if name in by_name]
    if bandwidth:
        chunk = 32 * 1024
        native = native_relay_bandwidth_gbps(total, chunk)          # bytes per ns
        credit = native_credit_relay_bandwidth_gbps(total, chunk)
        for row in bandwidth:
            row.baselines[NATIVE_FLOOR] = chunk / native
            row.baselines[CREDIT_FLOOR] = chunk / credit
    p50_row = by_name.get("latency.100B.timeout0.p50")
    p99_row = by_name.get("latency.100B.timeout0.p99")
    if p50_row is not None or p99_row is not None:
        delays = drop_warmup(native_relay_one_way_us(latency_records))
        if p50_row is not None:
            p50_row.baselines[NATIVE_FLOOR_P50] = percentile(delays, 50)
        if p99_row is not None:
            p99_row.baselines[NATIVE_FLOOR_P99] = percentile(delays, 99)


#: The rows of small records :func:`bench_floor_pairs` measures against the record-mode floors:
#: ``(size, api)`` -> records per transfer (full runs; a quarter in quick runs).
RECORD_FLOOR_ROWS = {(1000, "batch"): 1_000_000, (100, "batch"): 4_000_000,
                     (100, "numpy"): 4_000_000}


def _pairs_note(ratios_plain: list[float], ratios_credit: list[float], pairs: int) -> str:
    return (f"time against the floors: median of {pairs} alternated pairs "
            f"{statistics.median(ratios_plain):.2f}x / {statistics.median(ratios_credit):.2f}x, "
            f"pairs {min(ratios_plain):.2f}-{max(ratios_plain):.2f}x / "
            f"{min(ratios_credit):.2f}-{max(ratios_credit):.2f}x")


def bench_floor_pairs(quick: bool = False, pairs: int | None = None, records: int | None = None,
                      latency_records: int | None = None,
                      small_records: dict[tuple[int, str], int] | None = None) -> list[Row]:
    """Issue 14's acceptance, measured in alternated pairs. :func:`add_floor_baselines` measures
    each floor once, after all of flinknet's rows, minutes away from the row it bounds; on a
    shared machine the floor itself then moves 1.5x from one run to the next. Here flinknet and
    the floors run in turn, ``pairs`` times (5; 3 in quick runs; the order reverses every
    other pair), and each ratio is the **median of the pairs' ratios**:

    - ``remote.32768B.batch.floor_pairs``: ``run_remote(32768, records, "batch")`` (1 GiB, a
      quarter in quick runs) against :func:`native_relay_bandwidth_gbps` and
      :func:`native_credit_relay_bandwidth_gbps` moving the same bytes, ns per 32 KiB record;
    - ``latency.100B.timeout0.floor_pairs.p50`` / ``.p99``: the latency row's exchange
      (``latency_records`` at 10 000/s, buffer timeout 0, the first 10 % dropped) against
      :func:`native_relay_one_way_us`, µs;
    - ``remote.{size}B.{api}.floor_pairs`` for each of ``small_records`` (``(size, api)`` ->
      records; :data:`RECORD_FLOOR_ROWS` by default, a quarter of each in quick runs; ``{}``
      for none): ``run_remote(size, n, api)`` against :func:`native_relay_records_ns` plain and
      with credits, moving the same records, ns per record. The issue's peers for these rows
      (Arrow Flight, pyzmq) send far more than Flink's window of ten 32 KiB buffers per round
      trip; these floors keep flinknet's structure and window and drop everything else.

    A row's value is flinknet's median; each baseline is that value over the median ratio, so
    the printed ratio is the median ratio (the note gives the pairs' range)."""
    pairs = (3 if quick else 5) if pairs is None else pairs
    if pairs < 1:
        raise ValueError(f"pairs must be at least 1, got {pairs}")
    chunk = 32 * 1024
    n = (8192 if quick else 32768) if records is None else records
    n_lat = (5_000 if quick else 20_000) if latency_records is None else latency_records
    if small_records is None:
        small_records = {key: (count // 4 if quick else count) for key, count in RECORD_FLOOR_ROWS.items()}
    ns: list[float] = []
    plain: list[float] = []
    credit: list[float] = []
    lat: list[tuple[float, float]] = []
    floor_lat: list[tuple[float, float]] = []
    small: dict[tuple[int, str], list[float]] = {key: [] for key in small_records}
    small_floor: dict[tuple[int, bool], list[float]] = {}

    def flinknet_bandwidth() -> None:
        ns.append(run_remote(chunk, n, "batch") / n * 1e9)

    def plain_floor() -> None:
        plain.append(chunk / native_relay_bandwidth_gbps(n * chunk, chunk))

    def credit_floor() -> None:
        credit.append(chunk / native_credit_relay_bandwidth_gbps(n * chunk, chunk))

    def flinknet_latency() -> None:
        d = drop_warmup(run_remote(100, n_lat, "latency", timeout_ms=0, rate=10_000))
        lat.append((percentile(d, 50), percentile(d, 99)))

    def floor_latency() -> None:
        d = drop_warmup(native_relay_one_way_us(n_lat))
        floor_lat.append((percentile(d, 50), percentile(d, 99)))

    def flinknet_records(size: int, api: str, count: int):
        def step() -> None:
            small[(size, api)].append(run_remote(size, count, api) / count * 1e9)
        return step

    def record_floor(size: int, count: int, with_credits: bool):
        def step() -> None:
            small_floor.setdefault((size, with_credits), []).append(
                native_relay_records_ns(size, count, chunk, credits=with_credits))
        return step

    steps = [flinknet_bandwidth, plain_floor, credit_floor, flinknet_latency, floor_latency]
    floor_count: dict[int, int] = {}
    for (size, api), count in small_records.items():
        steps.append(flinknet_records(size, api, count))
        floor_count[size] = max(floor_count.get(size, 0), count)
    for size, count in floor_count.items():     # one floor per size serves its rows
        steps += [record_floor(size, count, False), record_floor(size, count, True)]
    for i in range(pairs):
        for step in (steps if i % 2 == 0 else steps[::-1]):
            step()
    rows = []
    value = statistics.median(ns)
    r_plain = [a / b for a, b in zip(ns, plain, strict=True)]
    r_credit = [a / b for a, b in zip(ns, credit, strict=True)]
    m_plain, m_credit = statistics.median(r_plain), statistics.median(r_credit)
    rows.append(Row("remote.32768B.batch.floor_pairs", "ns/rec", value,
                    {NATIVE_FLOOR: value / m_plain, CREDIT_FLOOR: value / m_credit},
                    note=f"flinknet {chunk / value:.2f} GB/s, plain floor "
                         f"{chunk / statistics.median(plain):.2f}, credit floor "
                         f"{chunk / statistics.median(credit):.2f} GB/s (medians); "
                         + _pairs_note(r_plain, r_credit, pairs)))
    for k, (q, name) in enumerate(((50, NATIVE_FLOOR_P50), (99, NATIVE_FLOOR_P99))):
        ours = [x[k] for x in lat]
        ratios = [a / b[k] for a, b in zip(ours, floor_lat, strict=True)]
        value = statistics.median(ours)
        m = statistics.median(ratios)
        rows.append(Row(f"latency.100B.timeout0.floor_pairs.p{q}", "us", value, {name: value / m},
                        note=f"p{q}: flinknet {value:.1f} µs, native floor "
                             f"{statistics.median(x[k] for x in floor_lat):.1f} µs (medians of {n_lat} "
                             f"records at 10 000/s); median of {pairs} alternated pairs {m:.2f}x, "
                             f"pairs {min(ratios):.2f}-{max(ratios):.2f}x"))
    for (size, api), ours in small.items():
        f_plain, f_credit = small_floor[(size, False)], small_floor[(size, True)]
        r_plain = [a / b for a, b in zip(ours, f_plain, strict=True)]
        r_credit = [a / b for a, b in zip(ours, f_credit, strict=True)]
        value = statistics.median(ours)
        rows.append(Row(f"remote.{size}B.{api}.floor_pairs", "ns/rec", value,
                        {NATIVE_FLOOR: value / statistics.median(r_plain),
                         CREDIT_FLOOR: value / statistics.median(r_credit)},
                        note=f"flinknet {1e3 / value:.2f} M/s, plain floor "
                             f"{1e3 / statistics.median(f_plain):.2f}, credit floor "
                             f"{1e3 / statistics.median(f_credit):.2f} M/s (medians, "
                             f"{small_records[(size, api)]} records); "
                             + _pairs_note(r_plain, r_credit, pairs)))
    return rows


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


def main(argv: list[str] | None = None) -> int:  # pragma: no cover (a measurement script)
    """``python -m flinknet.tools.bench.floor``: print the floor beside the raw socket (1 min)."""
    import numpy as np

    argparse.ArgumentParser(prog="python -m flinknet.tools.bench.floor",
                            description=__doc__.split("\n\n")[0]).parse_args(argv)
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
    native = native_relay_one_way_us()[2000:]
    print(f"native relay with I/O threads (C, no GIL), 32 KiB records: "
          f"{max(native_relay_bandwidth_gbps() for _ in range(2)):.2f} GB/s "
          f"(raw Python socket {1 / raw_socket_ns_per_byte(1 << 30, 32 * 1024):.2f} GB/s)")
    print(f"native relay with I/O threads: one-way p50 {p(native, 50):.1f} us, "
          f"p99 {p(native, 99):.1f} us (10 000 msg/s, 100 B)")
    print(f"native relay with Flink's credit window (10 buffers), 32 KiB records: "
          f"{max(native_credit_relay_bandwidth_gbps() for _ in range(2)):.2f} GB/s")
    for size, count in ((1000, 1_000_000), (100, 4_000_000)):
        plain = min(native_relay_records_ns(size, count) for _ in range(2))
        credit = min(native_relay_records_ns(size, count, credits=True) for _ in range(2))
        print(f"native relay, {size} B records packed into 32 KiB slots: {1e3 / plain:.2f} M/s, "
              f"with Flink's credit window {1e3 / credit:.2f} M/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
