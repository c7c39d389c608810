"""Process targets for the transport tests (importable by multiprocessing's spawn)."""

from __future__ import annotations

import os
import struct
import time

REC = struct.Struct(">II")  # (producer, sequence) then padding


_cycle = bytes(range(256)) * 2


def record(producer: int, seq: int, size: int) -> bytes:
    """(producer, seq) then bytes seq, seq+1, ... (mod 256): cheap to make and to check."""
    global _cycle
    head = REC.pack(producer, seq)
    n = max(0, size - len(head))
    if n + 256 > len(_cycle):
        _cycle = bytes(range(256)) * ((n + 511) // 256)
    start = seq & 0xFF
    return head + _cycle[start:start + n]


def record_size(seq: int, segment_size: int) -> int:
    # 0 .. 3 segments, deterministic
    return 8 + (seq * 7919) % (3 * segment_size)


def record_key(record: bytes) -> int:
    return REC.unpack_from(record)[1] % 1000


def producer(q_out, q_in, producer_index: int, num_subpartitions: int, n: int, options: dict,
             mode: str = "finish", delay_register: float = 0.0, edge: str = "rebalance"):
    """One environment, one partition of ``num_subpartitions``; emits ``n`` records.

    edge: "rebalance" (record i to subpartition i % n), "keyed" (key groups of ``record_key``),
    "broadcast" (every record to every subpartition).
    mode: "finish" (EndOfPartition), "fail" (partition.fail after half), "kill" (os._exit after half).
    Reports (partition id, address) first, and at the end whether its pool was whole.
    """
    from flinknet.environment import NetworkEnvironment
    from flinknet.ids import ResultPartitionID
    from flinknet.partitioners import BroadcastPartitioner, KeyGroupStreamPartitioner
    from flinknet.writer import RecordWriter

    with NetworkEnvironment(options) as env:
        pid = ResultPartitionID()
        q_out.put((pid.to_bytes(), env.address))
        if delay_register:
            time.sleep(delay_register)
        p = env.create_result_partition(num_subpartitions, partition_id=pid)
        seg = env.config.segment_size
        selector = {"rebalance": None, "keyed": KeyGroupStreamPartitioner(record_key),
                    "broadcast": BroadcastPartitioner()}[edge]
        with RecordWriter(p, selector, timeout=5) as w:
            for i in range(n):
                if i == n // 2 and mode == "fail":
                    p.fail(ValueError("producer failed on purpose"))
                    break
                if i == n // 2 and mode == "kill":
                    w.flush_all()
                    time.sleep(0.2)
                    os._exit(3)
                rec = record(producer_index, i, record_size(i, seg))
                if edge == "rebalance":
                    w.emit(rec, i % num_subpartitions)
                elif edge == "broadcast":
                    w.broadcast_emit(rec)
                else:
                    w.emit(rec)
        if mode == "finish":
            p.finish()
        p.close()
        q_in.get(timeout=60)  # the consumer is done
        deadline = time.monotonic() + 10
        while not env.network_buffer_pool.is_whole and time.monotonic() < deadline:
            time.sleep(0.01)
        q_out.put(("whole", env.network_buffer_pool.is_whole,
                   env.partition_manager.get_unreleased_partitions() == []))


def rss_bytes() -> int:
    import psutil
    return psutil.Process().memory_info().rss


def two_partition_producer(q_out, q_in, n: int, size: int, options: dict):
    """Two single-subpartition partitions, each written by its own thread with ``n`` records of
    ``size`` bytes (producer index = partition index) once the consumer says go."""
    import threading

    from flinknet.environment import NetworkEnvironment
    from flinknet.writer import RecordWriter

    with NetworkEnvironment(options) as env:
        parts = [env.create_result_partition(1) for _ in range(2)]
        q_out.put(([p.partition_id.to_bytes() for p in parts], env.address))
        q_in.get(timeout=60)

        def write(k):
            p = parts[k]
            with RecordWriter(p, timeout=5) as w:
                for i in range(n):
                    w.emit(record(k, i, size), 0)
            p.finish()
            p.close()

        threads = [threading.Thread(target=write, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        q_in.get(timeout=120)
        deadline = time.monotonic() + 10
        while not env.network_buffer_pool.is_whole and time.monotonic() < deadline:
            time.sleep(0.01)
        q_out.put(("whole", env.network_buffer_pool.is_whole))


def streaming_producer(q_out, q_in, size: int, options: dict):
    """Emits ``size``-byte records as fast as it can until told to stop; samples its RSS every
    50 ms while emitting. Reports (emitted, rss at start of emitting, max rss)."""
    import threading

    from flinknet.environment import NetworkEnvironment
    from flinknet.writer import RecordWriter

    with NetworkEnvironment(options) as env:
        p = env.create_result_partition(1)
        q_out.put((p.partition_id.to_bytes(), env.address))
        stop = threading.Event()
        samples = []

        def sample():
            while not stop.wait(0.05):
                samples.append(rss_bytes())

        def stopper():
            q_in.get(timeout=120)
            stop.set()

        threading.Thread(target=stopper, daemon=True).start()
        emitted = 0
        payloads = [record(0, i, size) for i in range(1000)]   # prebuilt: no allocation per record
        with RecordWriter(p, timeout=5) as w:
            w.emit(payloads[0], 0)   # the first buffer is taken: the pool and I/O path are warm
            emitted = 1
            start_rss = rss_bytes()
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            while not stop.is_set():
                for i in range(1000):
                    w.emit(payloads[(emitted + i) % 1000], 0)
                emitted += 1000
        p.finish()
        p.close()
        sampler.join()
        q_out.put(("done", emitted, start_rss, max(samples, default=start_rss), len(samples)))
        q_in.get(timeout=60)


def finish_and_leave(q_out, q_in, n: int, options: dict):
    """The README's producer lifecycle: emit ``n`` records, finish and close the partition, and
    leave the environment's ``with`` block at once; report how long closing took."""
    from flinknet.environment import NetworkEnvironment
    from flinknet.writer import RecordWriter

    with NetworkEnvironment(options) as env:
        p = env.create_result_partition(1)
        q_out.put((p.partition_id.to_bytes(), env.address))
        q_in.get(timeout=60)                       # the consumer has its gate (not reading yet)
        with RecordWriter(p, timeout=10) as w:
            for i in range(n):
                w.emit(b"%d" % i, 0)
        p.finish()
        p.close()
        t0 = time.monotonic()
    q_out.put(("closed", time.monotonic() - t0, env.network_buffer_pool.is_whole))
