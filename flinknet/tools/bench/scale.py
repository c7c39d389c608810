"""Behaviour at scale: many channels, a hot key, and hosts with real round-trip times.

``python -m flinknet.tools.bench.scale [--quick] [--only channels|skew|hosts] [--json FILE]``
prints Markdown tables; :func:`bench_scale` returns :class:`~flinknet.tools.bench.report.Row` s
for ``flinknet bench --only scale``.
Every experiment runs a producer process and a consumer process (``multiprocessing`` spawn), each
with its own :class:`~flinknet.environment.NetworkEnvironment`; the parent only orchestrates
(addresses and a shared ``CLOCK_MONOTONIC`` "go" time go through queues). At the end every child
reports whether its global buffer pool is whole (every segment back), and every child is joined,
or killed by its PID when it does not exit.

channels
    One partition of N subpartitions in the producer, one gate of N remote channels in the
    consumer (all-to-all between the two processes, one shared TCP connection), N = 1, 10, 100,
    1000; 100-byte records spread round-robin (lists of 1000 through ``emit_batch``). Reports
    records/s and MB/s (from "go" to the last record read), the set-up time of the partition and
    of the gate, the network buffers Flink's sizing gives per channel (output pool min N+1 / max
    2N+8, 2 exclusive buffers per remote channel + 8 floating per gate) and the RSS growth of
    both processes per channel (the 64 MiB of network memory are allocated and touched when the
    environment starts, so the growth is the per-channel bookkeeping). Then a run at the exact
    minimum budget, and startup with too little network memory on each side, which must fail at
    once with Flink's "Insufficient number of network buffers: required X, but only Y available"
    and give every buffer back (never a hang: a 60 s guard declares one).

skew
    64 subpartitions; a hot key sends half of the records to subpartition 0, whose consumer is
    slow (paced to a few MB/s); the 63 cold subpartitions are read at full speed by another
    gate of the consumer process (same TCP connection). The producer behaves like a Flink task:
    it emits only while its output is available (``RecordWriter.wait_available``), in batches
    that can take at most one new buffer per subpartition, so the per-subpartition cap
    (``taskmanager.network.memory.max-buffers-per-channel``, 10) bounds the hot subpartition
    exactly. Scenarios: no skew (baseline), skew with the cap, skew with the cap lifted, skew
    with TCP flow control (``flinknet.network.flow-control: tcp``, Flink before 1.5) and a
    completely stalled hot consumer. Reports the hot subpartition's outstanding buffers (max), the
    output pool's free buffers (min), the cold channels' throughput and their records' latency.

hosts
    Three network namespaces (producer host, link, consumer host) joined by two veth pairs; the
    link namespace routes every packet between the hosts through a TUN device served by a
    user-space delay line (half the round-trip time each way, and a rate limit: each packet takes
    size / rate on the wire, as ``tc netem delay ... rate ...`` does). ``tc netem`` itself is not
    used because the kernel may not have it (this project's machines do not): the delay line
    needs only ``CONFIG_TUN``. MTU 65000, so a 1 Gbit/s link is about 2 000 packets/s each way and
    the delay line stays CPU-light. The namespaces, links and routes are created and removed by
    the benchmark (root and ``ip`` needed; otherwise the experiment is skipped with a message).
    One subpartition, one remote channel, floating buffers per gate set to 0 (flinknet's gate
    pool keeps its minimum of one floating buffer, so a channel has k + 1 credits), k = 2, 4, 8
    exclusive buffers (and the rule-of-thumb k) at 1 ms and 10 ms; compared with the link (a raw
    TCP stream through the same link), with k x 32 KiB / RTT and with the credit limit
    (k + 1) x 32 KiB / (RTT + 32 KiB / link rate): a credit returns one round trip after its
    buffer has been received in full.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import fcntl
import heapq
import json
import math
import multiprocessing as mp
import os
import queue
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Self

from flinknet.tools.bench.report import Row, format_table

if TYPE_CHECKING:
    from flinknet.core import NetworkBufferPool
    from flinknet.ids import ResultPartitionID

__all__ = [
    "NetnsTopology",
    "bench_scale",
    "hosts_available",
    "main",
    "run_channels",
    "run_host_transfer",
    "run_skew",
    "startup_too_few_buffers",
]

SEGMENT = 32 * 1024
RECORD = 100                  # bytes per record in the channels and skew experiments
BATCH = 1000                  # records per emit_batch (channels)
SKEW_BATCH = 256              # records per emit_batch (skew): 256 x 104 B < one 32 KiB buffer
HOST_RECORD = 4092            # 4 KiB framed: 8 records per buffer (hosts)
HOST_BATCH = 64
LINK_MBIT = 1000              # the emulated link's rate
HANG_GUARD_S = 60.0           # a startup that has not failed by then counts as a hang
_TS = struct.Struct("<q")


# ---------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------

class ChildError(RuntimeError):
    """A child process failed, died or stayed silent."""


def _ctx():
    return mp.get_context("spawn")


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


_CLONE_NEWNET = 0x40000000


def _setns(name: str) -> None:
    """Move the calling thread (and every thread it starts later) into network namespace ``name``."""
    fd = os.open(os.path.join("/run/netns", name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if hasattr(os, "setns"):
            os.setns(fd, _CLONE_NEWNET)
        else:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"setns({name}): {os.strerror(e)}")
    finally:
        os.close(fd)


def _child_main(target: Callable[..., None], netns: str | None, out: Any, inbox: Any,
                args: tuple[Any, ...]) -> None:
    try:
        if netns:
            _setns(netns)
        target(out, inbox, *args)
    except BaseException:  # noqa: BLE001 (reported to the parent)
        out.put(("error", traceback.format_exc()))


class _Child:
    """A spawned child with an outbox and an inbox; stopped by joining it, or killing its PID."""

    def __init__(self, name: str, target: Callable[..., None], *args: Any, netns: str | None = None) -> None:
        ctx = _ctx()
        self.name = name
        self.out: Any = ctx.Queue()
        self.inbox: Any = ctx.Queue()
        self.proc = ctx.Process(target=_child_main, args=(target, netns, self.out, self.inbox, args),
                                name=name, daemon=True)

    def start(self) -> _Child:
        self.proc.start()
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def put(self, msg: tuple[Any, ...]) -> None:
        self.inbox.put(msg)

    def get(self, timeout: float) -> Any:
        """The child's next message; raises ChildError if it failed, died or stayed silent."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.out.get(timeout=max(0.01, min(0.2, deadline - time.monotonic())))
            except queue.Empty:
                if not self.proc.is_alive():
                    try:
                        msg = self.out.get(timeout=1.0)
                    except queue.Empty:
                        raise ChildError(f"{self.name} (pid {self.pid}) exited with code "
                                         f"{self.proc.exitcode} without reporting") from None
                elif time.monotonic() >= deadline:
                    raise ChildError(f"{self.name} (pid {self.pid}) reported nothing within "
                                     f"{timeout:.0f} s") from None
                else:
                    continue
            if msg[0] == "error":
                raise ChildError(f"{self.name} (pid {self.pid}) failed:\n{msg[1]}")
            return msg

    def stop(self, timeout: float = 20.0) -> None:
        """Join the child; kill it by its PID if it does not exit in ``timeout`` s. Idempotent."""
        p = self.proc
        if p.pid is not None:
            p.join(timeout)
            if p.exitcode is None:
                p.kill()              # SIGKILL to p.pid
                p.join(10)
        for q in (self.out, self.inbox):
            q.close()
            q.cancel_join_thread()


def _go(prod: _Child, cons: _Child, consumer_timeout: float,
        producer_timeout: float) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Start both children at the same moment, then collect the consumer's result, tell the
    producer it is done and collect its result: ``(consumer result, producer result, start
    time)``."""
    t_go = time.monotonic() + 0.05
    prod.put(("go", t_go))
    cons.put(("go", t_go))
    cres = cons.get(consumer_timeout)[1]
    prod.put(("done",))
    pres = prod.get(producer_timeout)[1]
    return cres, pres, t_go


def _stop_all(children: Sequence[_Child]) -> None:
    """Stop ``children`` (last started first): joined normally; when called from a ``finally``
    while an exception (a failure, Ctrl-C, SIGTERM) is on its way, killed after 2 s instead."""
    timeout = 2.0 if sys.exc_info()[0] is not None else 20.0
    for c in reversed(children):
        try:
            c.stop(timeout)
        except Exception:  # noqa: BLE001 (stop the others regardless)
            pass


def _sleep_until(t: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``t`` (the parent's shared "go" time)."""
    while True:
        left = t - time.monotonic()
        if left <= 0:
            return
        time.sleep(left)


def _wait_whole(nbp: NetworkBufferPool, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not nbp.is_whole and time.monotonic() < deadline:
        time.sleep(0.01)
    return nbp.is_whole


class _RssSampler(threading.Thread):
    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        self.peak = _rss()
        self._interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self._interval):
            self.peak = max(self.peak, _rss())

    def finish(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, _rss())
        return self.peak


def _pid(pid_bytes: bytes) -> ResultPartitionID:
    from flinknet.ids import ResultPartitionID

    return ResultPartitionID.from_bytes(pid_bytes)


# ---------------------------------------------------------------------------------------------
# channels: 1 .. 1000 subpartitions all-to-all, and startup with too few buffers
# ---------------------------------------------------------------------------------------------

def _channels_producer(out: Any, inbox: Any, n: int, options: dict[str, Any], n_records: int,
                       size: int) -> None:
    import numpy as np

    from flinknet.environment import NetworkEnvironment
    from flinknet.errors import InsufficientNetworkBuffersError
    from flinknet.writer import RecordWriter

    env = NetworkEnvironment(options)
    result: dict[str, Any] = {}
    close_timeout: float | None = None                  # the configured wait for consumers
    try:
        rss_env = _rss()
        t0 = time.perf_counter()
        try:
            p = env.create_result_partition(n)
        except InsufficientNetworkBuffersError as err:
            result["insufficient"] = {"type": type(err).__name__, "message": str(err),
                                      "elapsed_s": time.perf_counter() - t0}
            p = None
        if p is not None:
            setup_s = time.perf_counter() - t0
            pool = p.buffer_pool
            out.put(("ready", p.partition_id.to_bytes(), env.address,
                     {"rss_env": rss_env, "rss_setup": _rss(), "setup_s": setup_s,
                      "pool_min": pool.min_buffers, "pool_max": pool.max_buffers,
                      "network_buffers": env.network_buffer_pool.total_segments}))
            _sleep_until(inbox.get(timeout=600)[1])     # go
            sampler = _RssSampler()
            sampler.start()
            cpu0 = _cpu()
            record = bytes(range(256)) * (size // 256) + bytes(size % 256)
            block = [record] * BATCH
            base = np.arange(BATCH, dtype=np.int64)
            with RecordWriter(p, timeout=100) as w:
                left, offset = n_records, 0
                while left > 0:
                    k = min(BATCH, left)
                    w.emit_batch(block if k == BATCH else block[:k], (base[:k] + offset) % n)
                    offset = (offset + k) % n
                    left -= k
            p.finish()
            p.close()
            result.update(emitted=n_records, back_pressured_s=p.back_pressured_ns / 1e9,
                          cpu_s=_cpu() - cpu0)
            done = inbox.get(timeout=600)               # the consumer is done
            if done[1:] == ("consumer failed",):
                close_timeout = 0.0                     # nobody will read the partition
            result["rss_peak"] = sampler.finish()
    finally:
        env.close(close_timeout)
    result["whole"] = _wait_whole(env.network_buffer_pool)
    out.put(("result", result))


def _channels_consumer(out: Any, inbox: Any, n: int, options: dict[str, Any], pid_bytes: bytes,
                       addr: Sequence[Any]) -> None:
    from flinknet.consumer import RecordReader
    from flinknet.environment import NetworkEnvironment
    from flinknet.errors import InsufficientNetworkBuffersError

    env = NetworkEnvironment(options)
    result: dict[str, Any] = {}
    try:
        rss_env = _rss()
        pid = _pid(pid_bytes)
        addr = tuple(addr)
        t0 = time.perf_counter()
        try:
            gate = env.create_input_gate([(pid, i, addr) for i in range(n)])
        except InsufficientNetworkBuffersError as err:
            result["insufficient"] = {"type": type(err).__name__, "message": str(err),
                                      "elapsed_s": time.perf_counter() - t0}
            gate = None
        if gate is not None:
            gate.request_partitions()
            setup_s = time.perf_counter() - t0
            out.put(("ready", {"rss_env": rss_env, "rss_setup": _rss(), "setup_s": setup_s,
                               "network_buffers": env.network_buffer_pool.total_segments,
                               "required": env.network_buffer_pool.num_total_required_buffers}))
            t_go = inbox.get(timeout=600)[1]
            _sleep_until(t_go)
            sampler = _RssSampler()
            sampler.start()
            cpu0 = _cpu()
            count = 0
            with RecordReader(gate) as reader:
                read = reader.read_batch
                while (batch := read()) is not None:
                    count += len(batch)
            t_end = time.monotonic()
            gate.close()
            result.update(count=count, seconds=t_end - t_go, rss_peak=sampler.finish(),
                          bytes_in=gate.num_bytes_in, cpu_s=_cpu() - cpu0,
                          buffers_in=gate.num_buffers_in)
    finally:
        env.close()
    result["whole"] = _wait_whole(env.network_buffer_pool)
    out.put(("result", result))


def run_channels(n: int, n_records: int, size: int = RECORD, producer_options: dict[str, Any] | None = None,
                 consumer_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """One producer process → one consumer process, ``n`` subpartitions / remote channels.

    Raises unless every record arrived and both pools are whole at the end."""
    children: list[_Child] = []
    try:
        prod = _Child(f"channels-producer-{n}", _channels_producer, n, producer_options or {},
                      n_records, size).start()
        children.append(prod)
        msg = prod.get(120)
        if msg[0] == "result":
            raise ChildError(f"producer could not start: {msg[1]}")
        _, pid_bytes, addr, pinfo = msg
        cons = _Child(f"channels-consumer-{n}", _channels_consumer, n, consumer_options or {},
                      pid_bytes, addr).start()
        children.append(cons)
        msg = cons.get(120)
        if msg[0] == "result":
            raise ChildError(f"consumer could not start: {msg[1]}")
        cinfo = msg[1]
        cres, pres, _ = _go(prod, cons, 600, 120)
    finally:
        _stop_all(children)
    if cres["count"] != n_records:
        raise AssertionError(f"{n} channels: read {cres['count']} records, expected {n_records}")
    if not (cres["whole"] and pres["whole"]):
        raise AssertionError(f"{n} channels: pools not whole (producer {pres['whole']}, "
                             f"consumer {cres['whole']})")
    secs = cres["seconds"]
    return {
        "channels": n, "records": n_records, "record_size": size, "seconds": secs,
        "records_per_s": n_records / secs, "mb_per_s": n_records * size / secs / 1e6,
        "producer_setup_s": pinfo["setup_s"], "consumer_setup_s": cinfo["setup_s"],
        "producer_pool_min": pinfo["pool_min"], "producer_pool_max": pinfo["pool_max"],
        "producer_network_buffers": pinfo["network_buffers"],
        "consumer_network_buffers": cinfo["network_buffers"], "consumer_required": cinfo["required"],
        "producer_rss_env": pinfo["rss_env"], "producer_rss_setup": pinfo["rss_setup"],
        "producer_rss_peak": pres["rss_peak"], "consumer_rss_env": cinfo["rss_env"],
        "consumer_rss_setup": cinfo["rss_setup"], "consumer_rss_peak": cres["rss_peak"],
        "producer_back_pressured_s": pres["back_pressured_s"],
        "producer_cpu_s": pres["cpu_s"], "consumer_cpu_s": cres["cpu_s"],
        "buffers_received": cres["buffers_in"],
        "producer_whole": pres["whole"], "consumer_whole": cres["whole"],
    }


def startup_too_few_buffers(side: str = "consumer", n: int = 1000, network_memory: str = "32mb",
                            guard_s: float = HANG_GUARD_S) -> dict[str, Any]:
    """Start an ``n``-channel exchange with too little network memory on ``side`` ("consumer":
    its gate's exclusive buffers, "producer": its partition's pool) in real processes.

    Returns what the failing side reported (exception type, message, seconds from the request to
    the failure inside the process, seconds from starting the process to its report, whether its
    pool is whole afterwards); raises ChildError if it did not fail within ``guard_s``."""
    children: list[_Child] = []
    small = {"taskmanager.memory.network.max": network_memory}
    t_start = time.monotonic()
    try:
        if side == "producer":
            prod = _Child(f"too-few-producer-{n}", _channels_producer, n, small, 0, RECORD).start()
            children.append(prod)
            msg = prod.get(guard_s)
            if msg[0] != "result" or "insufficient" not in msg[1]:
                raise AssertionError(f"the producer started with {network_memory} for {n} subpartitions")
            res = msg[1]
        elif side == "consumer":
            prod = _Child(f"too-few-producer-{n}", _channels_producer, n, {}, 0, RECORD).start()
            children.append(prod)
            _, pid_bytes, addr, _ = prod.get(120)
            t_start = time.monotonic()
            cons = _Child(f"too-few-consumer-{n}", _channels_consumer, n, small, pid_bytes, addr).start()
            children.append(cons)
            msg = cons.get(guard_s)
            if msg[0] != "result" or "insufficient" not in msg[1]:
                raise AssertionError(f"the consumer started with {network_memory} for {n} channels")
            res = msg[1]
            prod.put(("go", time.monotonic()))         # nothing to emit: it finishes at once
            prod.put(("done", "consumer failed"))
            pres = prod.get(60)[1]
            res["producer_whole"] = pres["whole"]
        else:
            raise ValueError(f"side must be 'producer' or 'consumer', got {side!r}")
    finally:
        _stop_all(children)
    wall = time.monotonic() - t_start
    ins = res["insufficient"]
    return {"side": side, "channels": n, "network_memory": network_memory, "type": ins["type"],
            "message": ins["message"], "fail_s": ins["elapsed_s"], "wall_s": wall,
            "whole": res["whole"] and res.get("producer_whole", True)}


def _minimum_budget(n: int) -> tuple[int, int]:
    """Network memory (bytes) that is exactly enough: producer pool min n+1; consumer 2n
    exclusive + 1 floating (the gate pool's minimum)."""
    return (n + 1) * SEGMENT, (2 * n + 1) * SEGMENT


def experiment_channels(quick: bool = False) -> dict[str, Any]:
    counts = (1, 10, 100, 1000)
    n_records = 1_000_000 if quick else 6_000_000
    repeats = 1 if quick else 3
    runs = []
    for n in counts:
        # best of `repeats` (the least disturbed by other load on a shared machine)
        runs.append(max((run_channels(n, n_records) for _ in range(repeats)),
                        key=lambda r: r["records_per_s"]))
    p_mem, c_mem = _minimum_budget(1000)
    minimum = run_channels(1000, n_records // 2,
                           producer_options={"taskmanager.memory.network.max": p_mem},
                           consumer_options={"taskmanager.memory.network.max": c_mem})
    too_few = [startup_too_few_buffers("consumer", 1000, "32mb"),
               startup_too_few_buffers("producer", 1000, "16mb")]
    return {"runs": runs, "minimum": minimum, "too_few": too_few, "repeats": repeats}


# ---------------------------------------------------------------------------------------------
# skew: one hot key, a slow hot consumer, the per-subpartition cap
# ---------------------------------------------------------------------------------------------

def _skew_targets(n: int, hot_fraction: float | None, batches: int) -> list[tuple[Any, int]]:
    """``batches`` target arrays of SKEW_BATCH records: hot_fraction of them (spread evenly) to
    subpartition 0, the others round-robin over 1..n-1; None = uniform round-robin over all."""
    import numpy as np

    k = SKEW_BATCH
    out = []
    if hot_fraction is None:
        base = np.arange(k, dtype=np.int64)
        for j in range(batches):
            out.append(((base + j * k) % n, k // n))
        return out
    hot = np.array([math.floor((i + 1) * hot_fraction) > math.floor(i * hot_fraction) for i in range(k)])
    n_hot = int(hot.sum())
    n_cold = k - n_hot
    for j in range(batches):
        t = np.zeros(k, dtype=np.int64)
        t[~hot] = 1 + (np.arange(n_cold, dtype=np.int64) + j * n_cold) % (n - 1)
        out.append((t, n_hot))
    return out


def _skew_producer(out: Any, inbox: Any, n: int, options: dict[str, Any], hot_fraction: float | None,
                   duration: float, size: int, timeout_ms: float) -> None:
    from flinknet.environment import NetworkEnvironment
    from flinknet.writer import RecordWriter

    env = NetworkEnvironment(options)
    result: dict[str, Any] = {}
    try:
        p = env.create_result_partition(n)
        pool = p.buffer_pool
        hot_sp = p.subpartitions[0]
        out.put(("ready", p.partition_id.to_bytes(), env.address,
                 {"pool_min": pool.min_buffers, "pool_max": pool.max_buffers,
                  "cap": pool.max_buffers_per_channel,
                  "overdraft": pool.max_overdraft_buffers_per_gate}))
        t_go = inbox.get(timeout=600)[1]
        cycle = n - 1 if hot_fraction is not None else n
        targets = _skew_targets(n, hot_fraction, max(1, cycle))
        pad = bytes(size - _TS.size)
        hot_max = queued_hot_max = used_max = 0
        free_min = 1 << 30
        frees: list[int] = []      # the pool's free buffers after each batch
        wait_frees: list[int] = []  # ... and whenever the output turned unavailable
        waits_cap = waits_exhausted = 0
        emitted_hot = emitted = 0
        soft = 0.0
        t_end = t_go + duration
        j = 0
        _sleep_until(t_go)
        with RecordWriter(p, timeout=timeout_ms) as w:
            while True:
                now = time.monotonic()
                if now >= t_end:
                    break
                if not p.is_available:
                    # Flink's task loop: no new input while the output is unavailable (soft
                    # back-pressure): a subpartition at its cap, or no free buffer in the pool.
                    if pool.available_segments > 0:
                        waits_cap += 1
                    else:
                        waits_exhausted += 1
                    wait_frees.append(pool.num_buffers - pool.used_buffers)
                    ts = time.perf_counter()
                    w.wait_available(timeout=t_end - now)
                    soft += time.perf_counter() - ts
                    continue
                t, n_hot = targets[j % len(targets)]
                w.emit_batch([_TS.pack(time.monotonic_ns()) + pad] * SKEW_BATCH, t)
                j += 1
                emitted += SKEW_BATCH
                emitted_hot += n_hot
                c = pool.subpartition_buffer_count(0)
                if c > hot_max:
                    hot_max = c
                q = hot_sp.number_of_queued_buffers
                if q > queued_hot_max:
                    queued_hot_max = q
                used = pool.used_buffers
                if used > used_max:
                    used_max = used
                free = pool.num_buffers - used
                frees.append(free)
                if free < free_min:
                    free_min = free
            t_stop = time.monotonic()
        pool_size = pool.num_buffers
        p.finish()
        p.close()
        result.update(emitted=emitted, emitted_hot=emitted_hot, t_stop=t_stop, hot_max=hot_max,
                      queued_hot_max=queued_hot_max, used_max=used_max, free_min=free_min,
                      free_median=_pct(frees, 50), wait_free_median=_pct(wait_frees, 50),
                      waits_cap=waits_cap, waits_exhausted=waits_exhausted,
                      pool_size=pool_size, soft_s=soft, hard_s=p.back_pressured_ns / 1e9)
        inbox.get(timeout=600)                          # the consumer is done
    finally:
        env.close()
    result["whole"] = _wait_whole(env.network_buffer_pool)
    out.put(("result", result))


def _skew_consumer(out: Any, inbox: Any, n: int, options: dict[str, Any], pid_bytes: bytes,
                   addr: Sequence[Any], hot_rate: float, hot_stall_s: float) -> None:
    from flinknet.consumer import RecordReader
    from flinknet.environment import NetworkEnvironment

    env = NetworkEnvironment(options)
    result: dict[str, Any] = {}
    try:
        pid = _pid(pid_bytes)
        addr = tuple(addr)
        gate_hot = env.create_input_gate([(pid, 0, addr)], gate_index=0, owning_task_name="hot")
        gate_cold = env.create_input_gate([(pid, i, addr) for i in range(1, n)], gate_index=1,
                                          owning_task_name="cold")
        gate_hot.request_partitions()
        gate_cold.request_partitions()
        out.put(("ready",))
        t_go = inbox.get(timeout=600)[1]
        _sleep_until(t_go)
        errors: list[str] = []
        hot_res: dict[str, Any] = {}
        cold_res: dict[str, Any] = {}

        def hot() -> None:
            try:
                count = 0
                with RecordReader(gate_hot) as reader:
                    if hot_stall_s:
                        time.sleep(max(0.0, t_go + hot_stall_s - time.monotonic()))
                    while (batch := reader.read_batch()) is not None:
                        count += len(batch)
                        if hot_rate:
                            # a slow consumer: hot_rate bytes/s
                            wait = t_go + gate_hot.num_bytes_in / hot_rate - time.monotonic()
                            if wait > 0:
                                time.sleep(wait)
                hot_res.update(count=count, t_end=time.monotonic(), bytes=gate_hot.num_bytes_in)
            except BaseException:  # noqa: BLE001
                errors.append(traceback.format_exc())
                raise

        def cold() -> None:
            try:
                count = 0
                samples: list[tuple[float, int]] = [(t_go, 0)]
                lat: list[tuple[int, int]] = []
                unpack = _TS.unpack_from
                clock = time.monotonic_ns
                with RecordReader(gate_cold) as reader:
                    while (batch := reader.read_batch()) is not None:
                        if batch:
                            count += len(batch)
                            now_ns = clock()
                            lat.append((now_ns, now_ns - unpack(batch[0])[0]))
                            _sample(samples, now_ns / 1e9, count)
                samples.append((time.monotonic(), count))
                cold_res.update(count=count, samples=samples, latencies=lat, bytes=gate_cold.num_bytes_in)
            except BaseException:  # noqa: BLE001
                errors.append(traceback.format_exc())
                raise

        threads = [threading.Thread(target=hot, daemon=True), threading.Thread(target=cold, daemon=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        if errors or any(t.is_alive() for t in threads):
            raise ChildError("skew consumer thread failed:\n" + "\n".join(errors))
        gate_hot.close()
        gate_cold.close()
        result.update(hot=hot_res, cold=cold_res)
    finally:
        env.close()
    result["whole"] = _wait_whole(env.network_buffer_pool)
    out.put(("result", result))


def _sample(samples: list[tuple[float, int]], now: float, value: int) -> None:
    """Record (now, value), at most one sample per 10 ms: within 10 ms of the one before the
    last, the last sample is moved forward instead, so the newest value is always recorded."""
    if len(samples) > 1 and now - samples[-2][0] < 0.01:
        samples[-1] = (now, value)
    else:
        samples.append((now, value))


def _interp(samples: Sequence[Sequence[float]], t: float) -> float:
    """Count at time ``t`` from increasing (time, count) samples: the last sample at or before
    ``t`` (a step function: data is never credited before it was seen)."""
    count = samples[0][1]
    for s in samples:
        if s[0] > t:
            break
        count = s[1]
    return count


def _pct(values: Iterable[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def run_skew(n: int = 64, hot_fraction: float | None = 0.5, hot_rate: float = 4e6,
             hot_stall_s: float = 0.0, cap: int = 10, flow_control: str = "credit",
             duration: float = 3.0, size: int = RECORD, timeout_ms: float = 10) -> dict[str, Any]:
    """A producer process with ``n`` subpartitions → a consumer process reading subpartition 0
    (the hot key's, at ``hot_rate`` bytes/s, 0 = full speed, or not at all for ``hot_stall_s``)
    and the others (full speed) through two gates over one connection; ``duration`` s of
    emitting. Raises unless every record arrived and both pools are whole."""
    options = {"taskmanager.network.memory.max-buffers-per-channel": cap,
               "flinknet.network.flow-control": flow_control}
    children: list[_Child] = []
    try:
        prod = _Child("skew-producer", _skew_producer, n, options, hot_fraction, duration, size,
                      timeout_ms).start()
        children.append(prod)
        _, pid_bytes, addr, pinfo = prod.get(120)
        cons = _Child("skew-consumer", _skew_consumer, n, options, pid_bytes, addr, hot_rate,
                      hot_stall_s).start()
        children.append(cons)
        cons.get(120)
        cres, pres, t_go = _go(prod, cons, 600, 120)
    finally:
        _stop_all(children)
    hot, cold = cres["hot"], cres["cold"]
    if hot["count"] + cold["count"] != pres["emitted"]:
        raise AssertionError(f"skew: read {hot['count']} + {cold['count']} records, "
                             f"emitted {pres['emitted']}")
    if hot["count"] != pres["emitted_hot"]:
        raise AssertionError(f"skew: hot channel read {hot['count']}, emitted {pres['emitted_hot']}")
    if not (cres["whole"] and pres["whole"]):
        raise AssertionError(f"skew: pools not whole (producer {pres['whole']}, consumer {cres['whole']})")
    t_stop = pres["t_stop"]
    window = t_stop - t_go
    samples = cold["samples"]
    cold_in_window = _interp(samples, t_stop)
    # flow: cold records delivered in each 200 ms slice of the window (after the first 200 ms)
    slices = []
    t = t_go + 0.2
    while t + 0.2 <= t_stop + 1e-9:
        slices.append(_interp(samples, t + 0.2) - _interp(samples, t))
        t += 0.2
    lat_ms = [d / 1e6 for (ts, d) in cold["latencies"] if ts / 1e9 <= t_stop]
    n_cold_channels = n - 1
    hot_share = pres["emitted_hot"] / max(1, pres["emitted"])
    rec = size + 4
    pacing = (hot_rate * (1 - hot_share) / hot_share / rec
              if hot_rate and hot_fraction is not None and hot_share > 0 else float("nan"))
    return {
        "channels": n, "hot_fraction": hot_fraction, "hot_rate": hot_rate, "hot_stall_s": hot_stall_s,
        "cap": pinfo["cap"], "flow_control": flow_control, "duration": window,
        "pool_min": pinfo["pool_min"], "pool_max": pinfo["pool_max"], "pool_size": pres["pool_size"],
        "overdraft": pinfo["overdraft"],
        "emitted": pres["emitted"], "emitted_hot": pres["emitted_hot"],
        "hot_max": pres["hot_max"], "queued_hot_max": pres["queued_hot_max"],
        "used_max": pres["used_max"], "free_min": pres["free_min"], "free_median": pres["free_median"],
        "wait_free_median": pres["wait_free_median"], "waits_cap": pres["waits_cap"],
        "waits_exhausted": pres["waits_exhausted"],
        "soft_fraction": pres["soft_s"] / window, "hard_fraction": pres["hard_s"] / window,
        "cold_records": cold_in_window, "cold_records_per_s": cold_in_window / window,
        "cold_records_per_s_per_channel": cold_in_window / window / n_cold_channels,
        "cold_mb_per_s": cold_in_window * rec / window / 1e6,
        "cold_min_per_200ms": min(slices) if slices else 0, "cold_slices": len(slices),
        "cold_slices_with_data": sum(1 for x in slices if x > 0),
        "cold_latency_p50_ms": _pct(lat_ms, 50), "cold_latency_p99_ms": _pct(lat_ms, 99),
        "hot_records": hot["count"], "hot_mb_per_s_in_window": (hot["bytes"] / window / 1e6),
        "pacing_bound_cold_records_per_s": pacing,
        "producer_whole": pres["whole"], "consumer_whole": cres["whole"],
    }


@dataclass(frozen=True)
class SkewScenario:
    """A scenario of the skew experiment: :func:`run_skew`'s arguments besides the duration."""

    description: str
    hot_fraction: float | None
    hot_rate: float
    cap: int = 10
    flow_control: str = "credit"
    #: the hot consumer reads nothing for the whole window (``hot_stall_s``: the duration)
    stalled: bool = False


SKEW_SCENARIOS = {
    "uniform": SkewScenario("no skew: 64 channels round-robin, every consumer at full speed",
                            hot_fraction=None, hot_rate=0),
    "hot-cap10": SkewScenario("hot key 50 %, hot consumer 4 MB/s, cap 10 (Flink's default)",
                              hot_fraction=0.5, hot_rate=4e6, cap=10),
    "hot-nocap": SkewScenario("same, cap lifted (max-buffers-per-channel 10000)",
                              hot_fraction=0.5, hot_rate=4e6, cap=10000),
    "hot-cap10-tcp": SkewScenario("same as hot-cap10 with TCP flow control (no credits, Flink < 1.5)",
                                  hot_fraction=0.5, hot_rate=4e6, cap=10, flow_control="tcp"),
    "hot-stalled": SkewScenario("hot consumer stalled for the whole window, cap 10",
                                hot_fraction=0.5, hot_rate=0, cap=10, stalled=True),
}


def experiment_skew(quick: bool = False) -> dict[str, Any]:
    duration = 1.5 if quick else 3.0
    names = ("uniform", "hot-cap10") if quick else tuple(SKEW_SCENARIOS)
    runs = {}
    for name in names:
        sc = SKEW_SCENARIOS[name]
        r = run_skew(hot_fraction=sc.hot_fraction, hot_rate=sc.hot_rate,
                     hot_stall_s=duration if sc.stalled else 0.0, cap=sc.cap,
                     flow_control=sc.flow_control, duration=duration)
        r["description"] = sc.description
        runs[name] = r
    return {"runs": runs}


# ---------------------------------------------------------------------------------------------
# hosts: network namespaces, a user-space delay line, throughput against RTT
# ---------------------------------------------------------------------------------------------

NETNS_PREFIX = "fnscale-"
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_PR_SET_TIMERSLACK = 29


def hosts_available() -> tuple[bool, str]:
    """Whether this process can build the namespaces (root, ``ip``, ``/dev/net/tun``), and why not."""
    if os.geteuid() != 0:
        return False, "hosts: skipped: needs root (network namespaces, veth pairs, a TUN device)"
    if shutil.which("ip") is None:
        return False, "hosts: skipped: the `ip` command (iproute2) is not installed"
    if not os.path.exists("/dev/net/tun"):
        return False, "hosts: skipped: /dev/net/tun is missing (kernel without CONFIG_TUN)"
    return True, ""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def _netns_list() -> list[str]:
    r = _ip("netns", "list", check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def _delay_line(out: Any, inbox: Any, tun_name: str, ctrl: Connection, one_way: float, rate_bps: float,
                limit: int, mtu: int) -> None:
    """Serve the TUN device: each packet leaves after its transmission time at ``rate_bps``
    (queued behind the packets before it in the same direction) plus ``one_way`` seconds;
    at most ``limit`` packets queued per direction (more are dropped, as netem's limit)."""
    try:
        ctypes.CDLL(None).prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)   # timers to the µs
    except (OSError, AttributeError):
        pass
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", tun_name.encode(), _IFF_TUN | _IFF_NO_PI))
        os.set_blocking(fd, False)
        out.put(("ready",))
        heap: list[tuple[float, int, bytes, bytes]] = []
        tx_end: dict[bytes, float] = {}
        queued: dict[bytes, int] = {}
        seq = forwarded = dropped = 0
        cfd = ctrl.fileno()
        read, write, mono = os.read, os.write, time.monotonic
        push, pop = heapq.heappush, heapq.heappop
        bufsize = mtu + 64
        while True:
            timeout = max(0.0, heap[0][0] - mono()) if heap else 1.0
            ready, _, _ = select.select([fd, cfd], [], [], timeout)
            if cfd in ready:
                msg = ctrl.recv()
                if msg[0] == "stop":
                    ctrl.send(("stopped", forwarded, dropped))
                    break
                if msg[0] == "set":
                    one_way, rate_bps = msg[1], msg[2]
                    ctrl.send(("ok",))
            if fd in ready:
                while True:
                    try:
                        pkt = read(fd, bufsize)
                    except BlockingIOError:
                        break
                    now = mono()
                    key = pkt[16:20] if pkt[:1] == b"\x45" else pkt[24:40]   # destination address
                    if queued.get(key, 0) >= limit:
                        dropped += 1
                        continue
                    start = tx_end.get(key, 0.0)
                    if start < now:
                        start = now
                    end = start + len(pkt) * 8 / rate_bps
                    tx_end[key] = end
                    queued[key] = queued.get(key, 0) + 1
                    push(heap, (end + one_way, seq, key, pkt))
                    seq += 1
            now = mono()
            while heap and heap[0][0] <= now:
                _, _, key, pkt = pop(heap)
                queued[key] -= 1
                try:
                    write(fd, pkt)
                    forwarded += 1
                except OSError:
                    dropped += 1
    finally:
        os.close(fd)


class NetnsTopology:
    """Two test hosts (network namespaces) joined through a third that emulates the link.

    ``producer host`` (10.77.1.2) ──veth── ``link`` ──veth── ``consumer host`` (10.77.2.2); the link
    namespace forwards every packet between the hosts through a TUN device served by
    :func:`_delay_line` (RTT/2 each way plus a rate limit). Use as a context manager;
    :meth:`cleanup` is idempotent and also runs at interpreter exit. Names carry this process's
    PID; namespaces left by a dead process are removed by :meth:`remove_stale`.
    """

    PRODUCER_ADDR = "10.77.1.2"
    CONSUMER_ADDR = "10.77.2.2"
    _counter = 0

    def __init__(self, rtt_ms: float = 1.0, rate_mbit: float = LINK_MBIT, mtu: int = 65000,
                 limit: int = 1000):
        NetnsTopology._counter += 1
        k = NetnsTopology._counter
        pid = os.getpid()
        self.tag = f"{pid}-{k}"
        self.ns_producer = f"{NETNS_PREFIX}{self.tag}-prod"
        self.ns_link = f"{NETNS_PREFIX}{self.tag}-link"
        self.ns_consumer = f"{NETNS_PREFIX}{self.tag}-cons"
        short = f"fs{pid % 10_000_000}{chr(ord('a') + (k - 1) % 26)}"      # <= 10 characters
        self.if_prod, self.if_link_prod = short + "p", short + "lp"
        self.if_cons, self.if_link_cons = short + "c", short + "lc"
        self.if_tun = short + "t"
        self.rtt_ms = rtt_ms
        self.rate_mbit = rate_mbit
        self.mtu = mtu
        self.limit = limit
        self._delay: _Child | None = None
        self._ctrl: Connection | None = None
        self._created: list[str] = []
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    @staticmethod
    def remove_stale() -> list[str]:
        """Delete namespaces named by this module for processes that no longer exist."""
        removed = []
        for name in _netns_list():
            m = re.match(re.escape(NETNS_PREFIX) + r"(\d+)-\d+-(prod|link|cons)$", name)
            if not m:
                continue
            pid = int(m.group(1))
            try:
                os.kill(pid, 0)
                continue                  # its process is alive: not ours to remove
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            _ip("netns", "del", name, check=False)
            removed.append(name)
        return removed

    def create(self) -> Self:
        ok, why = hosts_available()
        if not ok:
            raise RuntimeError(why)
        self.remove_stale()
        atexit.register(self.cleanup)
        try:
            self._create()
        except BaseException:
            self.cleanup()
            raise
        return self

    def _create(self) -> None:
        prod, link, cons = self.ns_producer, self.ns_link, self.ns_consumer
        for ns in (prod, link, cons):
            _ip("netns", "add", ns)
            self._created.append(ns)
        # veth pairs made inside the namespaces: nothing is ever left in the root namespace
        _ip("-n", prod, "link", "add", self.if_prod, "type", "veth", "peer", "name", self.if_link_prod,
            "netns", link)
        _ip("-n", cons, "link", "add", self.if_cons, "type", "veth", "peer", "name", self.if_link_cons,
            "netns", link)
        for ns, dev, addr in ((prod, self.if_prod, self.PRODUCER_ADDR + "/24"),
                              (link, self.if_link_prod, "10.77.1.1/24"),
                              (cons, self.if_cons, self.CONSUMER_ADDR + "/24"),
                              (link, self.if_link_cons, "10.77.2.1/24")):
            _ip("-n", ns, "addr", "add", addr, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "mtu", str(self.mtu), "up")
        for ns in (prod, link, cons):
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", prod, "route", "add", "default", "via", "10.77.1.1")
        _ip("-n", cons, "route", "add", "default", "via", "10.77.2.1")
        _ip("netns", "exec", link, "sysctl", "-qw", "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
        # the delay line owns the TUN device (it vanishes with the process)
        ctx = _ctx()
        parent_end, child_end = ctx.Pipe()
        self._ctrl = parent_end
        self._delay = _Child(f"delay-line-{self.tag}", _delay_line, self.if_tun, child_end,
                             self.rtt_ms / 2000.0, self.rate_mbit * 1e6, self.limit, self.mtu,
                             netns=link).start()
        self._delay.get(30)
        child_end.close()
        _ip("-n", link, "link", "set", self.if_tun, "mtu", str(self.mtu), "up")
        _ip("netns", "exec", link, "sysctl", "-qw", f"net.ipv4.conf.{self.if_tun}.rp_filter=0")
        # packets from either host go to the TUN device; what the delay line writes back is
        # routed by the main table to the other host
        _ip("-n", link, "route", "add", "default", "dev", self.if_tun, "table", "100")
        _ip("-n", link, "rule", "add", "iif", self.if_link_prod, "lookup", "100", "pref", "100")
        _ip("-n", link, "rule", "add", "iif", self.if_link_cons, "lookup", "100", "pref", "101")

    def set_link(self, rtt_ms: float | None = None, rate_mbit: float | None = None) -> None:
        """Change the round-trip time and/or the rate (packets already queued keep their time)."""
        if rtt_ms is not None:
            self.rtt_ms = rtt_ms
        if rate_mbit is not None:
            self.rate_mbit = rate_mbit
        ctrl = self._ctrl
        if ctrl is None:
            raise RuntimeError("the link has no delay line: create() the topology first")
        ctrl.send(("set", self.rtt_ms / 2000.0, self.rate_mbit * 1e6))
        if not ctrl.poll(10):
            raise ChildError("the delay line did not answer")
        ctrl.recv()

    def cleanup(self) -> None:
        """Stop the delay line and delete the namespaces (their veths and routes go with them).
        Safe to run twice, and after a partial creation."""
        if self._delay is not None:
            try:
                if self._ctrl is not None:
                    self._ctrl.send(("stop",))
            except (OSError, ValueError):
                pass
            self._delay.stop(timeout=5)
            self._delay = None
        if self._ctrl is not None:
            try:
                self._ctrl.close()
            except OSError:
                pass
            self._ctrl = None
        existing = set(_netns_list()) if shutil.which("ip") else set()
        for ns in (self.ns_producer, self.ns_link, self.ns_consumer):
            if ns in existing:
                _ip("netns", "del", ns, check=False)
        self._created = []
        self._closed = True
        try:
            atexit.unregister(self.cleanup)
        except Exception:  # noqa: BLE001
            pass

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return self.ns_producer, self.ns_link, self.ns_consumer

    def __enter__(self) -> Self:
        return self if self._delay is not None else self.create()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _raw_server(out: Any, inbox: Any, host: str) -> None:
    lst = socket.create_server((host, 0))
    out.put(("ready", lst.getsockname()))
    with lst:
        conn, _ = lst.accept()                       # ping-pong
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while True:
                msg = conn.recv(64)
                if not msg:
                    break
                conn.sendall(msg)
        conn, _ = lst.accept()                       # bulk
        with conn:
            buf = bytearray(1 << 20)
            total = 0
            t0 = t1 = None
            while True:
                k = conn.recv_into(buf)
                if not k:
                    break
                t1 = time.monotonic()
                if t0 is None:
                    t0 = t1
                total += k
    out.put(("bulk", total, (t1 - t0) if t0 is not None and t1 is not None else 0.0))


def _raw_client(out: Any, inbox: Any, addr: Sequence[Any], pings: int, bulk_s: float) -> None:
    address = tuple(addr)
    rtts: list[float] = []
    with socket.create_connection(address, timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        msg = bytes(64)
        for i in range(pings + 5):
            t0 = time.perf_counter()
            s.sendall(msg)
            got = 0
            while got < 64:
                got += len(s.recv(64 - got))
            if i >= 5:
                rtts.append((time.perf_counter() - t0) * 1e3)
    sent = 0
    if bulk_s > 0:
        with socket.create_connection(address, timeout=30) as s:
            data = memoryview(bytes(1 << 20))
            t_end = time.monotonic() + bulk_s
            while time.monotonic() < t_end:
                s.sendall(data)
                sent += len(data)
    else:
        with socket.create_connection(address, timeout=30):
            pass
    out.put(("done", rtts, sent))


def measure_link(topo: NetnsTopology, pings: int = 50, bulk_s: float = 0.0) -> dict[str, float]:
    """RTT (ms) of 64-byte ping-pongs from the producer host to the consumer host and, with
    ``bulk_s``, the rate of a raw TCP stream through the link (the link's capacity)."""
    children: list[_Child] = []
    try:
        srv = _Child("raw-server", _raw_server, topo.CONSUMER_ADDR, netns=topo.ns_consumer).start()
        children.append(srv)
        addr = srv.get(30)[1]
        cli = _Child("raw-client", _raw_client, addr, pings, bulk_s, netns=topo.ns_producer).start()
        children.append(cli)
        _, rtts, _sent = cli.get(60 + bulk_s)
        _, total, secs = srv.get(60)
    finally:
        _stop_all(children)
    out = {"rtt_ms_p50": _pct(rtts, 50), "rtt_ms_min": min(rtts), "rtt_ms_p99": _pct(rtts, 99)}
    if bulk_s > 0:
        out["raw_mb_per_s"] = total / secs / 1e6 if secs else float("nan")
    return out


def _host_producer(out: Any, inbox: Any, options: dict[str, Any], size: int, duration: float) -> None:
    from flinknet.environment import NetworkEnvironment
    from flinknet.writer import RecordWriter

    env = NetworkEnvironment(options)
    result: dict[str, Any] = {}
    try:
        p = env.create_result_partition(1)
        out.put(("ready", p.partition_id.to_bytes(), env.address))
        t_go = inbox.get(timeout=600)[1]
        _sleep_until(t_go)
        block = [bytes(size)] * HOST_BATCH
        emitted = 0
        with RecordWriter(p, timeout=100) as w:
            t_end = t_go + duration
            while time.monotonic() < t_end:
                w.emit_batch(block, 0)
                emitted += HOST_BATCH
            t_stop = time.monotonic()
        p.finish()
        p.close()
        result.update(emitted=emitted, hard_s=p.back_pressured_ns / 1e9, emit_s=t_stop - t_go)
        inbox.get(timeout=600)
    finally:
        env.close()
    result["whole"] = _wait_whole(env.network_buffer_pool)
    out.put(("result", result))


def _host_consumer(out: Any, inbox: Any, options: dict[str, Any], pid_bytes: bytes,
                   addr: Sequence[Any]) -> None:
    from flinknet.consumer import RecordReader
    from flinknet.environment import NetworkEnvironment

    env = NetworkEnvironment(options)
    result: dict[str, Any] = {}
    try:
        gate = env.create_input_gate([(_pid(pid_bytes), 0, tuple(addr))])
        gate.request_partitions()
        out.put(("ready",))
        t_go = inbox.get(timeout=600)[1]
        _sleep_until(t_go)
        samples: list[tuple[float, int]] = [(t_go, 0)]
        count = 0
        with RecordReader(gate) as reader:
            read = reader.read_batch
            while (batch := read()) is not None:
                count += len(batch)
                _sample(samples, time.monotonic(), gate.num_bytes_in)
        samples.append((time.monotonic(), gate.num_bytes_in))
        gate.close()
        result.update(count=count, samples=samples)
    finally:
        env.close()
    result["whole"] = _wait_whole(env.network_buffer_pool)
    out.put(("result", result))


def run_host_transfer(topo: NetnsTopology, exclusive: int, floating: int = 0, duration: float = 3.0,
                      warmup: float = 0.5, size: int = HOST_RECORD) -> dict[str, Any]:
    """A producer in the producer host → a consumer in the consumer host, one channel with
    ``exclusive`` exclusive buffers; throughput (bytes of buffers received) over the window after
    ``warmup``. Raises unless every record arrived and both pools are whole."""
    common = {"taskmanager.network.memory.buffers-per-channel": exclusive,
              "taskmanager.network.memory.floating-buffers-per-gate": floating}
    children: list[_Child] = []
    try:
        # The producer's partition pool (exclusive + floating-buffers-per-gate, as Flink sizes
        # it) keeps 8 floating buffers: what is measured is the receiver's credit, not a starved
        # sender.
        prod_opts = dict(common, **{"taskmanager.network.bind-host": topo.PRODUCER_ADDR,
                                    "taskmanager.network.memory.floating-buffers-per-gate": max(8, floating)})
        prod = _Child(f"host-producer-{exclusive}", _host_producer, prod_opts,
                      size, duration, netns=topo.ns_producer).start()
        children.append(prod)
        _, pid_bytes, addr = prod.get(60)
        cons = _Child(f"host-consumer-{exclusive}", _host_consumer,
                      dict(common, **{"taskmanager.network.bind-host": topo.CONSUMER_ADDR}),
                      pid_bytes, addr, netns=topo.ns_consumer).start()
        children.append(cons)
        cons.get(60)
        cres, pres, t_go = _go(prod, cons, duration + 120, 60)
    finally:
        _stop_all(children)
    if cres["count"] != pres["emitted"]:
        raise AssertionError(f"hosts: read {cres['count']} records, emitted {pres['emitted']}")
    if not (cres["whole"] and pres["whole"]):
        raise AssertionError(f"hosts: pools not whole (producer {pres['whole']}, consumer {cres['whole']})")
    s = cres["samples"]
    t1, t2 = t_go + warmup, t_go + duration - 0.05
    b1, b2 = _interp(s, t1), _interp(s, t2)
    rate = (b2 - b1) / (t2 - t1)
    return {"exclusive": exclusive, "floating_setting": floating, "credits": exclusive + max(1, floating),
            "mb_per_s": rate / 1e6, "mbit_per_s": rate * 8 / 1e6, "records": cres["count"],
            "hard_fraction": pres["hard_s"] / pres["emit_s"],
            "producer_whole": pres["whole"], "consumer_whole": cres["whole"]}


def rule_of_thumb_buffers(rate_mbit: float, rtt_ms: float, buffer_size: int = SEGMENT) -> float:
    """Flink's tuning guide: buffers = bandwidth x RTT / buffer size."""
    return rate_mbit * 1e6 / 8 * rtt_ms / 1e3 / buffer_size


def experiment_hosts(quick: bool = False) -> dict[str, Any]:
    ok, why = hosts_available()
    if not ok:
        print(why, file=sys.stderr)
        return {"skipped": why}
    rtts = (1.0, 10.0)
    ks = (2, 8) if quick else (2, 4, 8)
    duration = 1.5 if quick else 3.0
    repeats = 1 if quick else 2
    runs: list[dict[str, Any]] = []
    links: dict[float, dict[str, float]] = {}
    topo = NetnsTopology(rtt_ms=rtts[0], rate_mbit=LINK_MBIT)
    try:
        topo.create()
    except (subprocess.CalledProcessError, OSError, ChildError) as err:
        detail = (getattr(err, "stderr", "") or str(err)).strip().splitlines()
        why = f"hosts: skipped: could not build the test hosts ({detail[-1] if detail else err!r})"
        print(why, file=sys.stderr)
        return {"skipped": why}
    with topo:
        for rtt in rtts:
            topo.set_link(rtt_ms=rtt)
            link = measure_link(topo, pings=50, bulk_s=1.0 if quick else 2.0)
            links[rtt] = link
            thumb = rule_of_thumb_buffers(LINK_MBIT, rtt)
            k_thumb = math.ceil(thumb)
            for k in sorted(set(ks) | ({k_thumb} if not quick or rtt > 5 else set())):
                # best of `repeats` (the least disturbed by other load on a shared machine)
                r = max((run_host_transfer(topo, k, floating=0, duration=duration) for _ in range(repeats)),
                        key=lambda x: x["mb_per_s"])
                rtt_s = link["rtt_ms_p50"] / 1e3
                link_bps = link["raw_mb_per_s"] * 1e6
                # one credit comes back one round trip after its buffer was fully received:
                # credits x buffer / (RTT + buffer / link rate)
                credit_limit = r["credits"] * SEGMENT / (rtt_s + SEGMENT / link_bps) / 1e6
                simple = k * SEGMENT / (rtt / 1e3) / 1e6      # exclusive credits only, nominal RTT
                expected = min(link["raw_mb_per_s"], credit_limit)
                r.update(rtt_ms=rtt, rtt_measured_ms=link["rtt_ms_p50"], link_mb_per_s=link["raw_mb_per_s"],
                         rule_of_thumb=thumb, credit_limit_mb_per_s=credit_limit,
                         credit_limit_nominal_mb_per_s=simple,
                         expected_mb_per_s=expected, efficiency=r["mb_per_s"] / expected,
                         link_fraction=r["mb_per_s"] / link["raw_mb_per_s"])
                runs.append(r)
        namespaces = topo.namespaces
    left = [ns for ns in _netns_list() if ns in namespaces]
    if left:
        raise AssertionError(f"namespaces left behind: {left}")
    return {"runs": runs, "links": {str(k): v for k, v in links.items()}, "rate_mbit": LINK_MBIT,
            "mtu": 65000, "repeats": repeats, "duration": duration}


# ---------------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------------

def _mib(b: float) -> str:
    return f"{b / 2**20:.1f}"


def format_channels(res: dict[str, Any]) -> str:
    runs = res["runs"]
    base = runs[0]
    every = runs + [dict(res["minimum"], _minimum=True)]

    def label(r: dict[str, Any]) -> str:
        if not r.get("_minimum"):
            return f"{r['channels']}"
        return (f"{r['channels']}, minimum budget ({r['producer_network_buffers']} / "
                f"{r['consumer_network_buffers']} buffers)")

    lines = ["### Channels: 1 → 1000 subpartitions all-to-all between two processes", "",
             f"{base['records'] / 1e6:g} M records of {base['record_size']} B (the minimum-budget run: "
             f"{res['minimum']['records'] / 1e6:g} M), round-robin over the channels, buffer timeout "
             "100 ms; timed from \"go\" to the last record read; best of "
             f"{res.get('repeats', 1)} run(s) per row (the minimum-budget run: one).", "",
             "| channels | records/s | MB/s | vs 1 channel | buffers received | CPU s producer / consumer "
             "| set-up partition / gate | pools whole |",
             "|---|---|---|---|---|---|---|---|"]
    for r in every:
        lines.append(
            f"| {label(r)} | {r['records_per_s'] / 1e6:.2f} M | {r['mb_per_s']:.0f} | "
            f"{r['records_per_s'] / base['records_per_s']:.2f}× | {r['buffers_received']} | "
            f"{r['producer_cpu_s']:.2f} / {r['consumer_cpu_s']:.2f} | "
            f"{r['producer_setup_s'] * 1e3:.1f} / {r['consumer_setup_s'] * 1e3:.1f} ms | "
            f"{'yes' if r['producer_whole'] and r['consumer_whole'] else 'NO'} |")
    lines += ["", "Memory. Network buffers by Flink's sizing (output pool min N+1 / max 2N+8; 2 exclusive "
              "buffers per remote channel + 8 floating per gate) and RSS growth (the 64 MiB of network "
              "memory are allocated and touched when the environment starts, so RSS growth is the "
              "per-channel bookkeeping):", "",
              "| channels | output pool min–max | gate: exclusive + floating | network buffers (both "
              "processes, at most) | per channel | RSS after set-up, per channel: producer / consumer | "
              "peak RSS growth over 1 channel, per channel: producer / consumer |",
              "|---|---|---|---|---|---|---|"]
    for r in every:
        n = r["channels"]
        most = r["producer_pool_max"] + 2 * n + 8
        d_ps = (r["producer_rss_setup"] - r["producer_rss_env"]) / n / 1024
        d_cs = (r["consumer_rss_setup"] - r["consumer_rss_env"]) / n / 1024
        if n > 1:
            # growth of the peak over the environment's own start, above the 1-channel run's
            d_pp = ((r["producer_rss_peak"] - r["producer_rss_env"])
                    - (base["producer_rss_peak"] - base["producer_rss_env"])) / (n - 1) / 1024
            d_cp = ((r["consumer_rss_peak"] - r["consumer_rss_env"])
                    - (base["consumer_rss_peak"] - base["consumer_rss_env"])) / (n - 1) / 1024
            peak = f"{d_pp:.1f} / {d_cp:.1f} KiB"
        else:
            peak = "—"
        lines.append(
            f"| {label(r)} | {r['producer_pool_min']}–{r['producer_pool_max']} | {2 * n} + 8 | {most} "
            f"({_mib(most * SEGMENT)} MiB) | {most / n:.1f} buffers ({most * SEGMENT / n / 1024:.0f} KiB) | "
            f"{d_ps:.2f} / {d_cs:.2f} KiB | {peak} |")
    lines += ["", "Startup with too few network buffers (real processes, 1000 channels):", "",
              "| side | network memory | failed after: in the process / from starting the process | "
              "exception | message (start) | pool whole after |", "|---|---|---|---|---|---|"]
    for t in res["too_few"]:
        msg = t["message"].split(". The total number")[0]
        lines.append(f"| {t['side']} | {t['network_memory']} | {t['fail_s'] * 1e3:.2f} ms / "
                     f"{t['wall_s']:.2f} s | {t['type']} | \"{msg}.\" | "
                     f"{'yes' if t['whole'] else 'NO'} |")
    lines += ["", "Full message (consumer side): \"" + res["too_few"][0]["message"] + "\""]
    return "\n".join(lines)


def format_skew(res: dict[str, Any]) -> str:
    lines = ["### Skew: one hot key, 64 subpartitions", "",
             "| scenario | hot subpartition: max outstanding buffers (cap) | output pool: size, max used, "
             "free min / median | producer waits: at the cap / pool exhausted (free buffers while "
             "waiting, median) | producer soft / hard back-pressure | cold channels: records/s (per "
             "channel) | pacing bound | cold flow: min records per 200 ms | cold latency p50 / p99 | "
             "pools whole |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["runs"].items():
        cap = r["cap"] if r["cap"] < 1000 else "none"
        pacing = (f"{r['pacing_bound_cold_records_per_s'] / 1e3:.1f} k/s"
                  if r["pacing_bound_cold_records_per_s"] == r["pacing_bound_cold_records_per_s"] else "—")
        wf = r["wait_free_median"]
        lines.append(
            f"| **{name}**: {r['description']} | {r['hot_max']} ({cap}) | {r['pool_size']}, {r['used_max']}, "
            f"{r['free_min']} / {r['free_median']:.0f} | {r['waits_cap']} / {r['waits_exhausted']} "
            f"({'—' if math.isnan(wf) else f'{wf:.0f}'}) | "
            f"{r['soft_fraction'] * 100:.0f} % / {r['hard_fraction'] * 100:.0f} % | "
            f"{r['cold_records_per_s'] / 1e3:.1f} k ({r['cold_records_per_s_per_channel']:.0f}) | "
            f"{pacing} | {r['cold_min_per_200ms']:.0f} | "
            f"{r['cold_latency_p50_ms']:.1f} / {r['cold_latency_p99_ms']:.1f} ms | "
            f"{'yes' if r['producer_whole'] and r['consumer_whole'] else 'NO'} |")
    return "\n".join(lines)


def format_hosts(res: dict[str, Any]) -> str:
    if "skipped" in res:
        return f"### Hosts\n\n{res['skipped']}"
    lines = [f"### Hosts: producer and consumer in two network namespaces, {res['rate_mbit']} Mbit/s link",
             "", "| RTT nominal | RTT measured (64 B ping-pong, p50 / p99) | raw TCP through the link |",
             "|---|---|---|"]
    for rtt, link in res["links"].items():
        lines.append(f"| {float(rtt):g} ms | {link['rtt_ms_p50']:.2f} / {link['rtt_ms_p99']:.2f} ms | "
                     f"{link['raw_mb_per_s']:.1f} MB/s ({link['raw_mb_per_s'] * 8:.0f} Mbit/s) |")
    lines += ["", f"One channel, 4 KiB records, {res.get('duration', 3):g} s of emitting, throughput over "
              f"the window after 0.5 s; best of {res.get('repeats', 1)} run(s) per row. "
              "floating-buffers-per-gate = 0 (the gate pool keeps its minimum of 1, so k + 1 credits).",
              "", "| RTT | exclusive buffers k (credits k+1) | flinknet MB/s (Mbit/s) | of the link | "
              "k·32 KiB/RTT | credit limit (k+1)·32 KiB/(RTT + 32 KiB/link) | expected = min(link, "
              "credit limit) | measured / expected | rule of thumb: bandwidth·RTT/32 KiB | "
              "producer hard back-pressure |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        lines.append(
            f"| {r['rtt_ms']:g} ms | {r['exclusive']} ({r['credits']}) | {r['mb_per_s']:.1f} "
            f"({r['mbit_per_s']:.0f}) | {r['link_fraction'] * 100:.0f} % | "
            f"{r['credit_limit_nominal_mb_per_s']:.1f} MB/s | {r['credit_limit_mb_per_s']:.1f} MB/s | "
            f"{r['expected_mb_per_s']:.1f} MB/s | {r['efficiency'] * 100:.0f} % | {r['rule_of_thumb']:.1f} | "
            f"{r['hard_fraction'] * 100:.0f} % |")
    return "\n".join(lines)


def format_markdown(raw: dict[str, Any]) -> str:
    parts = []
    if "channels" in raw:
        parts.append(format_channels(raw["channels"]))
    if "skew" in raw:
        parts.append(format_skew(raw["skew"]))
    if "hosts" in raw:
        parts.append(format_hosts(raw["hosts"]))
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------
# rows for flinknet bench
# ---------------------------------------------------------------------------------------------

def _rows(raw: dict[str, Any]) -> list[Row]:
    rows = []
    ch = raw.get("channels")
    if ch:
        base = ch["runs"][0]
        base_ns = 1e9 / base["records_per_s"]
        for r in ch["runs"] + [dict(ch["minimum"], _minimum=True)]:
            name = f"scale.channels.{r['channels']}" + (".minimum_budget" if r.get("_minimum") else "")
            rows.append(Row(name, "ns/rec", 1e9 / r["records_per_s"], {"1 channel": base_ns},
                            note=f"{r['records_per_s'] / 1e6:.2f} M records/s of {r['record_size']} B, "
                                 f"{r['mb_per_s']:.0f} MB/s; set-up {r['producer_setup_s'] * 1e3:.1f} / "
                                 f"{r['consumer_setup_s'] * 1e3:.1f} ms; pools whole"))
        for t in ch["too_few"]:
            rows.append(Row(f"scale.channels.too_few_buffers.{t['side']}", "s", t["wall_s"],
                            {"hang guard": HANG_GUARD_S},
                            note=f"{t['type']} after {t['fail_s'] * 1e3:.1f} ms: "
                                 f"{t['message'].split('. The total')[0]}"))
    sk = raw.get("skew")
    if sk:
        runs = sk["runs"]
        base = runs.get("uniform")
        for name, r in runs.items():
            baselines = {"cap (buffers)": r["cap"], "output pool (buffers)": r["pool_size"]}
            rows.append(Row(f"scale.skew.{name}.hot_max_outstanding", "buffers", r["hot_max"], baselines,
                            note=f"{r['description']}; pool min free {r['free_min']}"))
            if name != "uniform" and base:
                b = {"no skew (per cold channel)": 1e9 / base["cold_records_per_s_per_channel"]}
                if r["pacing_bound_cold_records_per_s"] == r["pacing_bound_cold_records_per_s"]:
                    b["pacing bound"] = 1e9 / (r["pacing_bound_cold_records_per_s"] / (r["channels"] - 1))
                value = (1e9 / r["cold_records_per_s_per_channel"]
                         if r["cold_records_per_s_per_channel"] > 0 else float("inf"))
                rows.append(Row(f"scale.skew.{name}.cold_per_channel", "ns/rec", value, b,
                                note=f"cold {r['cold_records_per_s'] / 1e3:.0f} k records/s, latency p50 "
                                     f"{r['cold_latency_p50_ms']:.1f} ms "
                                     f"p99 {r['cold_latency_p99_ms']:.1f} ms"))
    ho = raw.get("hosts")
    if ho and "runs" in ho:
        for r in ho["runs"]:
            rows.append(Row(f"scale.hosts.rtt{r['rtt_ms']:g}ms.exclusive{r['exclusive']}", "ns/KiB",
                            1e9 / (r["mb_per_s"] * 1e6 / 1024),
                            {"expected min(link, credits)": 1e9 / (r["expected_mb_per_s"] * 1e6 / 1024),
                             "link (raw TCP)": 1e9 / (r["link_mb_per_s"] * 1e6 / 1024)},
                            note=f"{r['mbit_per_s']:.0f} Mbit/s with {r['credits']} credits at "
                                 f"{r['rtt_measured_ms']:.2f} ms RTT; credit limit "
                                 f"{r['credit_limit_mb_per_s'] * 8:.0f} Mbit/s"))
    return rows


EXPERIMENTS = ("channels", "skew", "hosts")


def run_scale(quick: bool = False, only: str | Iterable[str] | None = None) -> dict[str, Any]:
    """Raw results of the chosen experiments (``only``: a name or a list of names)."""
    names: tuple[str, ...]
    if only is None:
        names = EXPERIMENTS
    elif isinstance(only, str):
        names = (only,)
    else:
        names = tuple(only)
    for name in names:
        if name not in EXPERIMENTS:
            raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    raw: dict[str, Any] = {}
    for name in names:
        t0 = time.monotonic()
        raw[name] = {"channels": experiment_channels, "skew": experiment_skew,
                     "hosts": experiment_hosts}[name](quick=quick)
        raw[name]["elapsed_s"] = time.monotonic() - t0
    return raw


def bench_scale(quick: bool = False, only: str | Iterable[str] | None = None) -> list[Row]:
    """Rows of the scale experiments for ``flinknet bench --only scale``."""
    return _rows(run_scale(quick=quick, only=only))


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flinknet.tools.bench.scale",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (under a minute)")
    parser.add_argument("--only", action="append", choices=EXPERIMENTS,
                        help="run only this experiment (repeatable)")
    parser.add_argument("--json", metavar="FILE", help="also write rows and raw results as JSON")
    args = parser.parse_args(argv)
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        t0 = time.monotonic()
        raw = run_scale(quick=args.quick, only=args.only)
        rows = _rows(raw)
    finally:
        signal.signal(signal.SIGTERM, old)
    print(format_markdown(raw))
    print()
    print(format_table(rows))
    print(f"({time.monotonic() - t0:.1f} s)")
    if args.json:
        from dataclasses import asdict

        for ex in raw.values():   # the latency samples are bulky: keep the summaries only
            for r in (ex.get("runs", {}).values() if isinstance(ex.get("runs"), dict) else []):
                r.pop("samples", None)
        with open(args.json, "w") as f:
            json.dump({"python": sys.version.split()[0], "rows": [asdict(r) for r in rows], "raw": raw},
                      f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
