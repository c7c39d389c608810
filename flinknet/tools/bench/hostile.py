"""What a hostile or broken peer costs a process (issue 17): ``python -m flinknet.tools.bench.hostile``.

Each case runs against a producer environment in this process, with its default configuration,
from raw sockets on loopback speaking Flink's frames past flinknet's handshake, and prints the
producer's RSS growth, its descriptors and threads, the longest stall of its I/O thread (the lag
of a 1 ms heartbeat scheduled on it), what happened to the peer, and the time of a legitimate
exchange (200 records through a second environment) right after. Runs on any flinknet version
(an option the version does not know is left out), so the same command measures a build before
and after a change.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from flinknet import NetworkEnvironment, RecordReader, RecordWriter
from flinknet._core import protocol as P  # noqa: N812
from flinknet.config import OPTIONS
from flinknet.transport.handshake import HandshakeConfig, client_handshake

_HDR = struct.Struct(">iIB")


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _threads() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _connect(address: Any) -> socket.socket:
    sock = socket.create_connection(address, timeout=30)
    return client_handshake(sock, HandshakeConfig(), address)


def _pid(rng: random.Random, bad: bool = False) -> bytes:
    pid = bytearray(rng.randbytes(60))
    for offset in (16, 52, 56):
        pid[offset] &= 0x7F
    if bad:
        pid[16] |= 0x80          # a negative partition number: answered at once with an error
    return bytes(pid)


class _LagProbe:
    """The I/O thread's longest stall (a callback every millisecond, its lateness recorded) and
    the process's peak RSS meanwhile."""

    def __init__(self, env: NetworkEnvironment):
        self.env = env
        self.max_lag = 0.0
        self.peak_rss = _rss()
        self.peak_fds = _fds()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            done = threading.Event()
            self.env.loop.call_soon_threadsafe(done.set)
            done.wait(60)
            self.max_lag = max(self.max_lag, time.perf_counter() - t0)
            self.peak_rss = max(self.peak_rss, _rss())
            self.peak_fds = max(self.peak_fds, _fds())
            time.sleep(0.001)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.max_lag


def _exchange(prod: NetworkEnvironment, n: int = 200) -> str:
    t0 = time.perf_counter()
    p = prod.create_result_partition(1)
    try:
        with NetworkEnvironment() as cons:
            gate = cons.create_input_gate([(p.partition_id, 0, prod.address)])
            with RecordWriter(p, timeout=0) as w:
                for i in range(n):
                    w.emit(b"%d" % i, 0)
            p.finish()
            p.close()
            with RecordReader(gate) as r:
                ok = list(r) == [b"%d" % i for i in range(n)]
            gate.close()
        return f"{'exact' if ok else 'WRONG'} in {time.perf_counter() - t0:.2f} s"
    except Exception as err:  # noqa: BLE001 (reported)
        return f"failed: {type(err).__name__}: {err}"


def _drain(s: socket.socket, timeout: float) -> str:
    """Read what the server sends until it closes or ``timeout``; how it ended."""
    s.settimeout(timeout)
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            if not s.recv(1 << 20):
                return "closed by the server"
    except TimeoutError:
        pass
    except OSError as err:
        return f"closed by the server ({err.strerror})"
    return "still open"


# -- the cases ------------------------------------------------------------------------------


def case_cancel(prod: NetworkEnvironment, n: int) -> str:
    """A peer with ``n`` requests waiting for one partition id hangs up."""
    rng = random.Random(1)
    pid = _pid(rng)
    s = _connect(prod.address)
    s.sendall(b"".join(P.encode_partition_request(pid, 0, 0, rng.randbytes(16), 2) for _ in range(n)))
    deadline = time.monotonic() + 60
    last, still = -1, 0
    while time.monotonic() < deadline:            # until the server took them (or refused)
        now = prod.partition_manager.num_pending_requests
        still = still + 1 if now == last else 0
        if now >= n or still > 50:
            break
        last = now
        time.sleep(0.01)
    waiting = prod.partition_manager.num_pending_requests
    s.close()
    t0 = time.perf_counter()
    while prod.partition_manager.num_pending_requests and time.perf_counter() - t0 < 120:
        time.sleep(0.001)
    return f"{waiting} requests waited; all cancelled {time.perf_counter() - t0:.3f} s after the hang-up"


def _cancel_options(n: int) -> dict[str, object]:
    return {"flinknet.network.max-pending-requests-per-connection": n + 1}


def case_pending(prod: NetworkEnvironment, n: int) -> str:
    """A peer requests ``n`` partitions nobody registered (and stays)."""
    rng = random.Random(2)
    s = _connect(prod.address)
    chunk = 10_000
    try:
        for i in range(0, n, chunk):
            s.sendall(b"".join(P.encode_partition_request(_pid(rng), 0, 0, rng.randbytes(16), 2)
                               for _ in range(min(chunk, n - i))))
    except OSError:
        pass
    time.sleep(1.0)
    waiting = prod.partition_manager.num_pending_requests
    how = _drain(s, 1.0)
    s.close()
    return f"{waiting} requests waiting, peer {how}"


def case_no_reader(prod: NetworkEnvironment, n: int) -> str:
    """A peer sends ``n`` requests answered at once with an error, and never reads."""
    rng = random.Random(3)
    pid = _pid(rng, bad=True)
    s = _connect(prod.address)
    s.setblocking(False)
    frame = P.encode_partition_request(pid, 0, 0, rng.randbytes(16), 1)
    data = memoryview(frame * 10_000)
    sent, stalled, total = 0, None, n * len(frame)
    while sent < total:
        try:
            sent += s.send(data[sent % len(data):])
            stalled = None
        except BlockingIOError:
            stalled = stalled or time.monotonic()
            if time.monotonic() - stalled > 2.0:
                break
            time.sleep(0.01)
        except OSError:
            break
    time.sleep(0.5)
    s.setblocking(True)
    how = _drain(s, 0.5)
    s.close()
    return f"{sent // len(frame)} requests sent before the server stopped taking them; peer {how}"


def case_partial_frames(prod: NetworkEnvironment, n: int) -> str:
    """``n`` peers each declare a 15 MiB task-event frame and send 15 MiB of it minus a byte."""
    socks = []
    body = os.urandom(1 << 20)
    refused = 0
    for _ in range(n):
        s = _connect(prod.address)
        try:
            s.sendall(_HDR.pack(15 << 20, P.MAGIC_NUMBER, 3))
            for _ in range(14):
                s.sendall(body)
            s.sendall(body[:-10])
            socks.append(s)
        except OSError:
            refused += 1
            s.close()
    time.sleep(1.0)
    held = sum(_drain(s, 0.05) == "still open" for s in socks)
    for s in socks:
        s.close()
    return f"{held} of {n} peers held open with their partial frame ({refused} refused while sending)"


def case_idle(prod: NetworkEnvironment, n: int) -> str:
    """``n`` peers connect, pass the handshake and send nothing."""
    socks = []
    for _ in range(n):
        try:
            socks.append(_connect(prod.address))
        except OSError:
            break
    time.sleep(1.0)
    open_ = sum(_drain(s, 0.01) == "still open" for s in socks)
    for s in socks:
        s.close()
    return f"{open_} of {n} idle connections held open"


def case_churn(prod: NetworkEnvironment, n: int) -> str:
    """``n`` consumers, one after another, each read a partition and leave (a long-lived
    producer environment): what stays behind."""
    for _ in range(n):
        p = prod.create_result_partition(1)
        with NetworkEnvironment() as cons:
            gate = cons.create_input_gate([(p.partition_id, 0, prod.address)])
            with RecordWriter(p, timeout=0) as w:
                w.emit(b"x", 0)
            p.finish()
            p.close()
            with RecordReader(gate) as r:
                list(r)
            gate.close()
    time.sleep(0.5)
    gc.collect()
    alive = sum(type(o).__name__ == "ServerConnection" for o in gc.get_objects())
    kept = len(getattr(prod, "_partitions", ()))
    return (f"{n} consumers came and went; the producer keeps {kept} partitions and {alive} "
            "server connections")


_Options = Callable[[int], dict[str, object]] | None
CASES: dict[str, tuple[Callable[[NetworkEnvironment, int], str], int, _Options]] = {
    # with the bound on pending requests raised above n: what cancelling n costs
    "cancel": (case_cancel, 16_000, _cancel_options),
    "pending": (case_pending, 200_000, None),
    "no-reader": (case_no_reader, 1_000_000, None),
    "partial-frames": (case_partial_frames, 24, None),
    "idle": (case_idle, 1_000, None),
    "churn": (case_churn, 300, None),
}


def run(name: str, n: int | None = None, python_io: bool = False) -> dict[str, Any]:
    case, default_n, options = CASES[name]
    n = default_n if n is None else n
    opts = {k: v for k, v in (options(n) if options else {}).items() if k in OPTIONS}
    if python_io:
        opts["flinknet.network.native-io"] = False
    with NetworkEnvironment(opts) as prod:
        gc.collect()
        rss0, fds0, thr0 = _rss(), _fds(), _threads()
        probe = _LagProbe(prod)
        t0 = time.perf_counter()
        what = case(prod, n)
        seconds = time.perf_counter() - t0
        lag = probe.stop()
        gc.collect()
        time.sleep(0.5)
        row = {"case": name, "n": n, "what": what, "seconds": seconds,
               "peak_rss_mib": (probe.peak_rss - rss0) / 2**20, "rss_mib": (_rss() - rss0) / 2**20,
               "peak_fds": probe.peak_fds - fds0, "fds": _fds() - fds0, "threads": _threads() - thr0,
               "max_io_stall_ms": lag * 1000, "legit": _exchange(prod)}
    return row


def _run_in_child(q: Any, name: str, n: int | None, python_io: bool) -> None:
    try:
        q.put(run(name, n, python_io))
    except BaseException as err:  # noqa: BLE001 (reported)
        q.put({"case": name, "error": repr(err)})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=sorted(CASES), help="cases to run (default: all)")
    ap.add_argument("--n", type=int, help="the case's size (default: the issue's)")
    ap.add_argument("--python-io", action="store_true",
                    help="serve on the Python I/O thread (flinknet.network.native-io false)")
    args = ap.parse_args(argv)
    print(f"{'case':15} {'n':>9} {'peak RSS +MiB':>14} {'after':>6} {'peak fds +':>10} {'after':>6} "
          f"{'thr +':>6} {'I/O stall ms':>13}  what happened / legitimate exchange after")
    ctx = mp.get_context("spawn")
    for name in args.only or list(CASES):
        # each case in a fresh process: what one case left in the allocator does not blur the next
        q = ctx.Queue()
        proc = ctx.Process(target=_run_in_child, args=(q, name, args.n, args.python_io))
        proc.start()
        row = q.get(timeout=900)
        proc.join(60)
        if "error" in row:
            print(f"{name:15} failed: {row['error']}", flush=True)
            continue
        print(f"{row['case']:15} {row['n']:>9} {row['peak_rss_mib']:>14.1f} {row['rss_mib']:>6.1f} "
              f"{row['peak_fds']:>10} {row['fds']:>6} {row['threads']:>6} {row['max_io_stall_ms']:>13.1f}  "
              f"{row['what']}; legitimate exchange {row['legit']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
