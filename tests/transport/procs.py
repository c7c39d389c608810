"""Process targets for the transport tests (importable by multiprocessing's spawn)."""

from __future__ import annotations

import os
import struct
import time

REC = struct.Struct(">II")  # (producer, sequence) then padding


def record(producer: int, seq: int, size: int) -> bytes:
    head = REC.pack(producer, seq)
    return head + bytes((seq + i) & 0xFF for i in range(max(0, size - len(head))))


def record_size(seq: int, segment_size: int) -> int:
    # 0 .. 3 segments, deterministic
    return 8 + (seq * 7919) % (3 * segment_size)


def producer(q_out, q_in, producer_index: int, num_subpartitions: int, n: int, options: dict,
             mode: str = "finish", delay_register: float = 0.0):
    """One environment, one partition of ``num_subpartitions``; emits ``n`` records round-robin.

    mode: "finish" (EndOfPartition), "fail" (partition.fail after half), "kill" (os._exit after half).
    Reports (partition id, address) first, and at the end whether its pool was whole.
    """
    from flinknet.environment import NetworkEnvironment
    from flinknet.ids import ResultPartitionID
    from flinknet.writer import RecordWriter

    with NetworkEnvironment(options) as env:
        pid = ResultPartitionID()
        q_out.put((pid.to_bytes(), env.address))
        if delay_register:
            time.sleep(delay_register)
        p = env.create_result_partition(num_subpartitions, partition_id=pid)
        seg = env.config.segment_size
        with RecordWriter(p, timeout=5) as w:
            for i in range(n):
                if i == n // 2 and mode == "fail":
                    p.fail(ValueError("producer failed on purpose"))
                    break
                if i == n // 2 and mode == "kill":
                    w.flush_all()
                    time.sleep(0.2)
                    os._exit(3)
                w.emit(record(producer_index, i, record_size(i, seg)), i % num_subpartitions)
        if mode == "finish":
            p.finish()
        p.close()
        q_in.get(timeout=60)  # the consumer is done
        deadline = time.monotonic() + 10
        while not env.network_buffer_pool.is_whole() and time.monotonic() < deadline:
            time.sleep(0.01)
        q_out.put(("whole", env.network_buffer_pool.is_whole(),
                   env.partition_manager.get_unreleased_partitions() == []))
