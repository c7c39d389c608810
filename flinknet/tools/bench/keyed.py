"""A keyed job across processes: two producer processes → one consumer process over loopback.

``remote.keyed.2to1.100B``: each of two producer processes (``multiprocessing`` spawn) writes
``n_per_producer`` records of 100 bytes whose first 8 bytes are a key (one of ``keys`` keys, drawn
at random: :func:`key_batches`) and routes every record by its key, as Flink's ``keyBy``; the
consumer in this process reads both streams and counts ``2 * n_per_producer`` records. Timed from
the consumer's "go" to the last record read (best of the repeats).

* flinknet (:func:`run_keyed_flinknet`): each producer has its own
  :class:`~flinknet.environment.NetworkEnvironment` (Flink's defaults) and a
  :class:`~flinknet.writer.RecordWriter` with a
  :class:`~flinknet.partitioners.KeyGroupStreamPartitioner` (key = the first 8 bytes, given as
  ``slice(0, 8)``: Flink's positional key; ``max_parallelism`` 128) over one subpartition (the
  consumer's parallelism is 1), fed by ``emit_batch`` in lists of 1000 records (the
  partitioner's batch routing, ``select_channels``: a key group per record, the key bytes hashed
  in place). The consumer's input gate has one remote channel per producer and is
  read with ``RecordReader.read_batch``.
* ``pyzmq joined`` (:func:`run_keyed_pyzmq`): the same job with pyzmq PUSH/PULL: each producer
  routes every batch of 1000 records by key the same way
  (``operator_indexes_of_slices`` over the batch with the same key slice: the per-batch call
  flinknet's partitioner makes) and joins the records, each
  behind its 4-byte little-endian length, into messages of at most 32 KiB (a record never split:
  :func:`join_records`); both PUSH sockets connect to one PULL socket bound by the consumer,
  which deframes every record into a Python ``bytes`` object
  (:class:`~flinknet.tools.bench.peers.Deframer`). Absent, and said in the note, without pyzmq.

Both producers draw their records the same way, before "go" (the record objects are prebuilt:
the timed part moves them, it does not build them).
"""

from __future__ import annotations

import multiprocessing as mp
import random
import struct
import time
from typing import Any

from flinknet.tools.bench.peers import CHUNK, Deframer, check_count, missing
from flinknet.tools.bench.report import Row

__all__ = ["BATCH", "KEY", "KEYED_ROW", "MAX_PARALLELISM", "PYZMQ_JOINED", "bench_keyed", "join_records",
           "key_batches", "run_keyed_flinknet", "run_keyed_pyzmq"]

#: records per ``emit_batch`` call (and per routing call of the pyzmq producer)
BATCH = 1000
#: the keyed edge's max parallelism (key groups)
MAX_PARALLELISM = 128
#: every record's key: its first 8 bytes (Flink's positional key)
KEY = slice(0, 8)
#: the row's name and its pyzmq baseline
KEYED_ROW = "remote.keyed.2to1.100B"
PYZMQ_JOINED = "pyzmq joined"
#: records per producer (quick / full)
N_QUICK = 200_000
N_FULL = 1_000_000

_PRODUCERS = 2
_DISTINCT_BATCHES = 64   # distinct random batches each producer cycles through
_LEN = struct.Struct("<I")
_WAIT = 120.0            # s: the longest a side waits for the other


def _ctx():
    return mp.get_context("spawn")


def key_batches(size: int, keys: int, seed: int) -> list[list[bytes]]:
    """Batches of :data:`BATCH` ``size``-byte records, each starting with a key drawn at random
    from ``keys`` keys (``key.to_bytes(8, 'little')``); a producer cycles through them. Every key's
    record is one ``bytes`` object, shared by the batches (a few hundred KiB in all)."""
    if size < 8:
        raise ValueError(f"a keyed record needs at least 8 bytes (its key), got {size}")
    if keys < 1:
        raise ValueError(f"keys must be positive, got {keys}")
    pad = (bytes(range(256)) * (size // 256 + 1))[8:size]
    by_key = [k.to_bytes(8, "little") + pad for k in range(keys)]
    rng = random.Random(seed)
    return [rng.choices(by_key, k=BATCH) for _ in range(_DISTINCT_BATCHES)]


def _batches_of(batches: list[list[bytes]], n: int):
    """``n`` records as lists taken in turn from ``batches`` (the last one cut short)."""
    i = 0
    while n > 0:
        batch = batches[i % len(batches)]
        if n < len(batch):
            batch = batch[:n]
        yield batch
        n -= len(batch)
        i += 1


def join_records(records: list[bytes], send, buf: bytearray, pos: int = 0) -> int:
    """Append ``records``, each behind its 4-byte little-endian length, to the message being
    joined in ``buf`` (its first ``pos`` bytes); whenever the next record does not fit whole,
    ``send`` the message (a ``memoryview`` slice: ``send`` copies it) and start another. Returns
    the bytes of the message left pending (the caller sends them last). Records are never split:
    every message holds whole records."""
    view = memoryview(buf)
    cap = len(buf)
    pack = _LEN.pack_into
    for rec in records:
        k = len(rec)
        end = pos + 4 + k
        if end > cap:
            if 4 + k > cap:
                raise ValueError(f"a {k}-byte record does not fit a {cap}-byte message")
            send(view[:pos])
            pos, end = 0, 4 + k
        pack(view, pos, k)
        view[pos + 4:end] = rec
        pos = end
    return pos


# -- processes (module level: spawn imports them) ----------------------------------------------

def _flinknet_producer(q_out, q_in, size: int, n: int, keys: int, seed: int) -> None:
    from flinknet.environment import NetworkEnvironment
    from flinknet.partitioners import KeyGroupStreamPartitioner
    from flinknet.writer import RecordWriter

    try:
        batches = key_batches(size, keys, seed)
        with NetworkEnvironment() as env:
            p = env.create_result_partition(1)
            q_out.put((p.partition_id.to_bytes(), env.address))
            selector = KeyGroupStreamPartitioner(KEY, max_parallelism=MAX_PARALLELISM)
            with RecordWriter(p, selector) as writer:
                emit_batch = writer.emit_batch
                q_in.get(timeout=_WAIT)   # go
                for batch in _batches_of(batches, n):
                    emit_batch(batch)     # routed by the partitioner: select_channels
            p.finish()
            p.close()
            q_in.get(timeout=300)   # the consumer is done
        # the producer's side of the check the consumer makes: every buffer back in the pool
        q_out.put(("closed", env.network_buffer_pool.is_whole))
    except BaseException as err:  # noqa: BLE001 (reported to the parent)
        q_out.put(("error", repr(err)))


def _zmq_producer(q_out, q_in, endpoint: str, size: int, n: int, keys: int, seed: int) -> None:
    try:
        import zmq  # type: ignore[import-not-found,unused-ignore]  # optional: flinknet[bench]

        from flinknet.core import operator_indexes_of_slices

        batches = key_batches(size, keys, seed)
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.setsockopt(zmq.SNDTIMEO, int(_WAIT * 1000))
        try:
            push.connect(endpoint)
            push.send(b"ready")
            buf = bytearray(CHUNK)
            send = push.send
            pos = 0
            q_out.put(("ready",))
            q_in.get(timeout=_WAIT)   # go
            for batch in _batches_of(batches, n):
                # route by key as flinknet's partitioner does (one consumer: every target is 0)
                operator_indexes_of_slices(batch, KEY, MAX_PARALLELISM, 1)
                pos = join_records(batch, send, buf, pos)
            if pos:
                send(memoryview(buf)[:pos])
            send(b"")                 # end of this producer's stream (a message is never empty)
            q_in.get(timeout=300)     # the consumer is done
        finally:
            push.close()
            ctx.term()
        q_out.put(("closed", True))
    except BaseException as err:  # noqa: BLE001 (reported to the parent)
        q_out.put(("error", repr(err)))


# -- measurements -------------------------------------------------------------------------------

def _get(q_out, what: str) -> Any:
    msg = q_out.get(timeout=_WAIT)
    if msg[0] == "error":
        raise RuntimeError(f"{what} producer failed: {msg[1]}")
    return msg


def _stop(procs, failed: bool) -> None:
    """Join the producers (killed at once if the measurement failed, after 60 s otherwise)."""
    for proc in procs:
        if not failed:
            proc.join(60)
        if proc.is_alive():
            proc.kill()
        proc.join()


def run_keyed_flinknet(n_per_producer: int, size: int = 100, keys: int = 1000) -> float:
    """Seconds for two producer processes to move ``n_per_producer`` keyed records of ``size``
    bytes each through flinknet (a key group per record, ``emit_batch`` of 1000) to this process,
    which reads them with ``read_batch`` from a gate of two remote channels. Raises unless exactly
    ``2 * n_per_producer`` records arrived and every process's buffer pool is whole."""
    from flinknet.consumer import RecordReader
    from flinknet.environment import NetworkEnvironment
    from flinknet.ids import ResultPartitionID

    ctx = _ctx()
    queues = [(ctx.Queue(), ctx.Queue()) for _ in range(_PRODUCERS)]
    procs = [ctx.Process(target=_flinknet_producer, args=(q_out, q_in, size, n_per_producer, keys, i),
                         daemon=True) for i, (q_out, q_in) in enumerate(queues)]
    for proc in procs:
        proc.start()
    failed = True
    try:
        specs = []
        for q_out, _ in queues:
            pid, addr = _get(q_out, "flinknet")
            specs.append((ResultPartitionID.from_bytes(pid), 0, addr))
        with NetworkEnvironment() as env:
            gate = env.create_input_gate(specs)
            gate.request_partitions()
            count = 0
            with RecordReader(gate) as reader:
                read = reader.read_batch
                t0 = time.perf_counter()
                for _, q_in in queues:
                    q_in.put("go")
                while (batch := read()) is not None:
                    count += len(batch)
                elapsed = time.perf_counter() - t0
            gate.close()
            if not env.network_buffer_pool.is_whole:
                raise AssertionError("the benchmark leaked network buffers")
        for _, q_in in queues:
            q_in.put("done")
        for q_out, _ in queues:
            if _get(q_out, "flinknet") != ("closed", True):
                raise AssertionError("the benchmark leaked network buffers in a producer process")
        check_count("flinknet keyed", count, _PRODUCERS * n_per_producer)
        failed = False
        return elapsed
    finally:
        _stop(procs, failed)


def run_keyed_pyzmq(n_per_producer: int, size: int = 100, keys: int = 1000) -> float:
    """Seconds for the same job over pyzmq: two PUSH producers (records routed by key per batch
    with ``operator_indexes_of_slices``, joined into messages of at most 32 KiB) → one PULL socket bound
    here, every record deframed into ``bytes``. Raises unless exactly ``2 * n_per_producer``
    records arrived; ImportError without pyzmq."""
    import zmq  # type: ignore[import-not-found,unused-ignore]  # optional: flinknet[bench]

    zctx = zmq.Context()
    pull = zctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.setsockopt(zmq.RCVTIMEO, int(_WAIT * 1000))
    procs = []
    failed = True
    try:
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        endpoint = f"tcp://127.0.0.1:{port}"
        ctx = _ctx()
        queues = [(ctx.Queue(), ctx.Queue()) for _ in range(_PRODUCERS)]
        procs = [ctx.Process(target=_zmq_producer,
                             args=(q_out, q_in, endpoint, size, n_per_producer, keys, i), daemon=True)
                 for i, (q_out, q_in) in enumerate(queues)]
        for proc in procs:
            proc.start()
        for q_out, _ in queues:
            _get(q_out, "pyzmq")
        for _ in range(_PRODUCERS):
            if pull.recv() != b"ready":
                raise RuntimeError("pyzmq joined: no ready message")
        deframer = Deframer()
        space, feed = deframer.space, deframer.feed
        count = 0
        ended = 0
        if hasattr(pull, "recv_into"):      # pyzmq >= 26.4
            recv_into = pull.recv_into
            t0 = time.perf_counter()
            for _, q_in in queues:
                q_in.put("go")
            while ended < _PRODUCERS:
                if k := recv_into(space()):
                    count += len(feed(k))
                else:
                    ended += 1
        else:
            recv = pull.recv
            t0 = time.perf_counter()
            for _, q_in in queues:
                q_in.put("go")
            while ended < _PRODUCERS:
                if k := len(frame := recv(copy=False)):
                    space()[:k] = frame.buffer
                    count += len(feed(k))
                else:
                    ended += 1
        elapsed = time.perf_counter() - t0
        for _, q_in in queues:
            q_in.put("done")
        for q_out, _ in queues:
            if _get(q_out, "pyzmq")[0] != "closed":
                raise RuntimeError("pyzmq joined: a producer did not close")
        if deframer.pending:
            raise AssertionError(f"pyzmq joined: {deframer.pending} bytes of an incomplete record")
        check_count("pyzmq joined", count, _PRODUCERS * n_per_producer)
        failed = False
        return elapsed
    finally:
        _stop(procs, failed)
        pull.close(0)
        zctx.term()


def bench_keyed(quick: bool, repeats: int) -> list[Row]:
    """The ``remote.keyed.2to1.100B`` row: ns per record of flinknet, against ``pyzmq joined``
    measured in the same run (best of ``repeats`` each, interleaved)."""
    n = N_QUICK if quick else N_FULL
    total = _PRODUCERS * n
    has_zmq = PYZMQ_JOINED not in _absent()
    best_fn = best_zmq = float("inf")
    for _ in range(max(1, repeats)):
        best_fn = min(best_fn, run_keyed_flinknet(n))
        if has_zmq:
            best_zmq = min(best_zmq, run_keyed_pyzmq(n))
    ns = best_fn / total * 1e9
    rps = total / best_fn
    note = f"flinknet {rps / 1e6:.2f} M records/s"
    baselines = {}
    if has_zmq:
        zmq_ns = best_zmq / total * 1e9
        baselines[PYZMQ_JOINED] = zmq_ns
        note += (f", pyzmq joined {total / best_zmq / 1e6:.2f} M records/s: flinknet "
                 f"{zmq_ns / ns:.2f}x pyzmq's speed")
    else:
        note += "; pyzmq not installed (no pyzmq joined baseline)"
    note += f" (2 producers x {n} keyed records -> 1 consumer)"
    return [Row(KEYED_ROW, "ns/rec", ns, baselines, note=note)]


def _absent() -> dict[str, str]:
    out = {}
    if "pyzmq framed" in missing():
        out[PYZMQ_JOINED] = "pyzmq not installed"
    return out
