"""Credit-based flow control against TCP backpressure, with real processes on loopback.

* Backpressure: a consumer reading at a tenth of the producer's rate keeps the producer's memory
  flat (its RSS grows by no more than its network memory plus a small constant) and loses nothing.
* Credit isolation: two channels share one connection; with credits a stalled consumer does not
  slow the other channel; in TCP-backpressure mode (Flink before 1.5) it stalls the other too.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time

from flinknet.config import parse_memory_size
from flinknet.consumer import RecordReader
from flinknet.environment import NetworkEnvironment
from flinknet.ids import ResultPartitionID
from tests.transport import procs

CTX = mp.get_context("spawn")
OPTS = {"taskmanager.memory.segment-size": "4kb", "taskmanager.memory.network.max": "4mb"}


def _stop(proc):
    if proc.is_alive():
        proc.kill()
    proc.join(30)


def _check_stream(records, producer, start, size, modulo=None):
    """``records`` are ``producer``'s sequence numbers start, start+1, ... (mod ``modulo``)."""
    for k, r in enumerate(records):
        seq = start + k if modulo is None else (start + k) % modulo
        assert r == procs.record(producer, seq, size)


def test_slow_consumer_keeps_producer_memory_flat():
    size = 100
    q_out, q_in = CTX.Queue(), CTX.Queue()
    proc = CTX.Process(target=procs.streaming_producer, args=(q_out, q_in, size, OPTS))
    proc.start()
    try:
        pid, addr = q_out.get(timeout=60)
        with NetworkEnvironment(OPTS) as env:
            gate = env.create_input_gate([(ResultPartitionID.from_bytes(pid), 0, addr)])
            received = 0
            with RecordReader(gate) as reader:
                # 1 s at full speed: the producer's rate when nobody slows it down
                t0 = time.monotonic()
                while time.monotonic() - t0 < 1.0:
                    batch = reader.read_batch(timeout=30)
                    _check_stream(batch, 0, received, size, modulo=1000)
                    received += len(batch)
                full_rate = received / (time.monotonic() - t0)
                # 3 s at a tenth of it
                slow_rate = full_rate / 10
                t1, slow_start = time.monotonic(), received
                while time.monotonic() - t1 < 3.0:
                    batch = reader.read_batch(timeout=30)
                    _check_stream(batch, 0, received, size, modulo=1000)
                    received += len(batch)
                    ahead = (received - slow_start) / slow_rate - (time.monotonic() - t1)
                    if ahead > 0:
                        time.sleep(ahead)
                measured_slow = (received - slow_start) / (time.monotonic() - t1)
                q_in.put("stop")
                # drain the rest: nothing may be lost
                for batch in iter(lambda: reader.read_batch(timeout=30), None):
                    _check_stream(batch, 0, received, size, modulo=1000)
                    received += len(batch)
            tag, emitted, start_rss, max_rss, n_samples = q_out.get(timeout=60)
            assert tag == "done"
            assert received == emitted, "records were lost or duplicated"
            assert measured_slow < full_rate / 5     # the consumer really was slow
            assert n_samples >= 20
            network_memory = parse_memory_size(OPTS["taskmanager.memory.network.max"])
            growth = max_rss - start_rss
            assert growth < network_memory + 8 * 1024 * 1024, (
                f"producer RSS grew by {growth / 2**20:.1f} MiB under backpressure")
            gate.close()
            assert env.network_buffer_pool.is_whole
        q_in.put("bye")
        proc.join(30)
        assert proc.exitcode == 0
    finally:
        _stop(proc)


def _two_channels(mode: str, n: int, size: int):
    """Start the two-partition producer; returns (proc, queues, env, gates)."""
    opts = dict(OPTS, **{"flinknet.network.flow-control": mode})
    q_out, q_in = CTX.Queue(), CTX.Queue()
    proc = CTX.Process(target=procs.two_partition_producer, args=(q_out, q_in, n, size, opts))
    proc.start()
    pids, addr = q_out.get(timeout=60)
    env = NetworkEnvironment(opts)
    gates = [env.create_input_gate([(ResultPartitionID.from_bytes(pids[k]), 0, addr)], gate_index=k)
             for k in range(2)]
    for g in gates:
        g.request_partitions()   # as a task does at start-up: both channels are live on the connection
    return proc, q_out, q_in, env, gates


def _read_n(reader, n, timeout):
    """Read up to ``n`` records; returns (records, seconds); stops early on a ``timeout`` gap."""
    out = []
    t0 = time.monotonic()
    try:
        while len(out) < n:
            batch = reader.read_batch(timeout=timeout)
            if batch is None:
                break
            out.extend(batch)
    except TimeoutError:
        pass
    return out, time.monotonic() - t0


def _finish(proc, q_out, q_in, env, gates, readers, got, n, size):
    """Read both channels to the end; check everything arrived once and in order; pools whole."""
    def drain(k):
        for batch in iter(lambda: readers[k].read_batch(timeout=60), None):
            got[k].extend(batch)

    threads = [threading.Thread(target=drain, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive()
    for k in range(2):
        assert len(got[k]) == n
        _check_stream(got[k], k, 0, size)
        readers[k].close()
        gates[k].close()
    assert env.connection_manager.num_connections <= 1
    env.close()
    assert env.network_buffer_pool.is_whole
    q_in.put("done")
    assert q_out.get(timeout=60) == ("whole", True)
    proc.join(30)
    assert proc.exitcode == 0


def test_credit_isolation_one_stalled_consumer_does_not_slow_the_other():
    n, size = 200_000, 100
    proc, q_out, q_in, env, gates = _two_channels("credit", 2 * n, size)
    try:
        readers = [RecordReader(g) for g in gates]
        q_in.put("go")
        # phase 1: channel 0's consumer is stalled; channel 1 reads n records
        got1, t_stalled = _read_n(readers[1], n, timeout=10)
        assert len(got1) >= n, "the other channel stalled although it had credit"
        # phase 2: channel 0 reads too; channel 1 reads n more records (its unstalled rate)
        got0 = []

        def read0():
            got0.extend(_read_n(readers[0], 2 * n, timeout=30)[0])

        t = threading.Thread(target=read0)
        t.start()
        more, t_unstalled = _read_n(readers[1], n, timeout=10)
        got1.extend(more)
        t.join(120)
        rate_stalled = n / t_stalled
        rate_unstalled = len(more) / t_unstalled
        print(f"channel 1: {rate_stalled / 1e6:.2f} M rec/s with channel 0 stalled, "
              f"{rate_unstalled / 1e6:.2f} M rec/s with both reading")
        assert rate_stalled >= 0.9 * rate_unstalled
        _finish(proc, q_out, q_in, env, gates, readers, [got0, got1], 2 * n, size)
    finally:
        env.close()
        _stop(proc)


def test_tcp_backpressure_one_stalled_consumer_stalls_the_other():
    n, size = 200_000, 100
    proc, q_out, q_in, env, gates = _two_channels("tcp", n, size)
    try:
        readers = [RecordReader(g) for g in gates]
        q_in.put("go")
        # channel 0 is never read: its few buffers fill, the client stops reading the shared
        # socket, and channel 1 starves although its own consumer is ready.
        got1, _ = _read_n(readers[1], n, timeout=3)
        print(f"channel 1 got {len(got1)} of {n} records before the connection stalled")
        assert len(got1) < n
        connection = next(iter(env.connection_manager._clients.values())).result()
        assert connection._decoder.is_paused
        # unstalling channel 0 lets both finish, nothing lost
        _finish(proc, q_out, q_in, env, gates, readers, [[], got1], n, size)
    finally:
        env.close()
        _stop(proc)
