"""Process targets for the fault-injection tests (importable by multiprocessing's spawn)."""

from __future__ import annotations

import time

from tests.transport.procs import REC, record, record_size


def consumer(q_out, pid_bytes: bytes, subpartition: int, num_subpartitions: int, address, options: dict,
             stall_after: int | None = None):
    """Read one subpartition of producer 0's partition and check every record on the spot.

    Records of subpartition ``s`` are producer 0's sequence numbers ``s, s + n, s + 2n, ...``
    (``n = num_subpartitions``, round-robin), each ``record(0, seq, record_size(seq, seg))``.
    ``stall_after``: report ``("progress", count)`` after that many records, then stop reading
    for good (the test kills this process). Otherwise report at the end
    ``("done", count, first_problem_or_None, pool_whole)``.
    """
    from flinknet.consumer import RecordReader
    from flinknet.environment import NetworkEnvironment
    from flinknet.ids import ResultPartitionID

    with NetworkEnvironment(options) as env:
        seg = env.config.segment_size
        gate = env.create_input_gate([(ResultPartitionID.from_bytes(pid_bytes), subpartition, tuple(address))])
        q_out.put(("ready",))
        expected = subpartition
        count = 0
        problem = None
        with RecordReader(gate) as reader:
            for rec in reader:
                if problem is None:
                    prod, seq = REC.unpack_from(rec)
                    if prod != 0 or seq != expected:
                        problem = f"record #{count}: got (producer {prod}, seq {seq}), expected seq {expected}"
                    elif rec != record(0, seq, record_size(seq, seg)):
                        problem = f"record #{count} (seq {seq}): wrong contents (length {len(rec)})"
                expected += num_subpartitions
                count += 1
                if stall_after is not None and count == stall_after:
                    q_out.put(("progress", count))
                    while True:          # stop reading: the producer is back-pressured
                        time.sleep(3600)
        gate.close()
        deadline = time.monotonic() + 10
        while not env.network_buffer_pool.is_whole and time.monotonic() < deadline:
            time.sleep(0.01)
        q_out.put(("done", count, problem, env.network_buffer_pool.is_whole))
