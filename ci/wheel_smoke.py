"""The installed wheel works without a compiler or the source tree: run by ci/wheel.sh (and by
cibuildwheel's test-command) from a directory outside the repository.

Checks that the compiled core imports (and is the release build, not a source checkout), then
moves records between two processes over TCP and checks every one arrived and both pools are
whole."""

from __future__ import annotations

import multiprocessing as mp
import pathlib
import sys


def _producer(q_out, q_in, n: int) -> None:
    from flinknet import NetworkEnvironment, RecordWriter

    with NetworkEnvironment({"taskmanager.memory.network.max": "8mb"}) as env:
        p = env.create_result_partition(1)
        q_out.put((p.partition_id.to_bytes(), env.address))
        q_in.get(timeout=60)
        with RecordWriter(p, timeout=10) as w:
            for i in range(n):
                w.emit(b"record-%d" % i, 0)
        p.finish()
        p.close()
    q_out.put(env.network_buffer_pool.is_whole)


def main() -> int:
    import flinknet
    from flinknet import NetworkEnvironment, RecordReader
    from flinknet._core import buffer
    from flinknet.ids import ResultPartitionID

    where = pathlib.Path(flinknet.__file__).resolve()
    if "site-packages" not in where.parts:
        raise SystemExit(f"flinknet was imported from {where}, not from the installed wheel")
    if buffer.is_debug_build():
        raise SystemExit("the wheel carries the debug build")
    n = 50_000
    ctx = mp.get_context("spawn")
    q_out, q_in = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_producer, args=(q_out, q_in, n))
    proc.start()
    try:
        pid, address = q_out.get(timeout=60)
        with NetworkEnvironment({"taskmanager.memory.network.max": "8mb"}) as env:
            gate = env.create_input_gate([(ResultPartitionID.from_bytes(pid), 0, tuple(address))])
            q_in.put("go")
            with RecordReader(gate) as reader:
                got = list(reader)
            gate.close()
            consumer_whole = env.network_buffer_pool.is_whole
        producer_whole = q_out.get(timeout=60)
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
    if got != [b"record-%d" % i for i in range(n)]:
        raise SystemExit(f"records lost or reordered: {len(got)} of {n} arrived")
    if not (consumer_whole and producer_whole and proc.exitcode == 0):
        raise SystemExit(f"pools whole: consumer {consumer_whole}, producer {producer_whole}; "
                         f"producer exit code {proc.exitcode}")
    print(f"wheel smoke test: flinknet {flinknet.__version__} from {where.parent}, {n} records "
          f"between two processes, pools whole (Python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
