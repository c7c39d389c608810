"""The peers of the ``remote.*`` rows: what a Python user would pick to move the same records
between two processes, each measured the way :func:`flinknet.tools.bench.transport.run_remote`
measures flinknet.

Every peer runs its producer in its own process (``multiprocessing`` spawn: the process functions
are module level) and its consumer in this process, over loopback; it moves ``n`` records of
``size`` bytes (the same bytes as flinknet's producer sends, :func:`record_of`) and returns the
best of ``repeats`` transfers (one producer process serves them all), in seconds. A transfer is
timed from the consumer being ready (connected, its "go" about to be sent or its request about to
be made) to the end of the stream, right after its last record was read out. Every consumer
counts the records it read out and raises :class:`CountMismatchError` unless there are exactly
``n`` (``produce`` makes the producer send another number: the tests check the check).

* :func:`hand_written_loop`: a hand-written Python TCP framing loop. The producer packs each
  record behind a 4-byte little-endian length (``struct.pack_into``) into a 32 KiB ``bytearray``
  and ``sendall``\\ s it when full; a record larger than the space left is **split** across
  chunks (its length first, whole: when fewer than 4 bytes are left the chunk goes out short), so
  every chunk but the last is 32 KiB or 1-3 bytes short (:func:`frame_records`). The consumer
  ``recv_into``\\ s a 128 KiB buffer (at least 32 KiB free per call) and deframes every record
  into a Python ``bytes`` object, a list per call (:class:`Deframer`, :func:`deframe`).
* :func:`pyzmq_framed`: the same framing over pyzmq PUSH/PULL (``tcp://127.0.0.1``): each 32 KiB
  chunk is one message (copied by ``send``), an empty message ends the stream; the consumer
  ``recv_into``\\ s each message into the same :class:`Deframer` (pyzmq older than 26.4:
  ``recv(copy=False)`` then a copy into it).
* :func:`flight_do_get`: Apache Arrow Flight ``DoGet`` (``pyarrow.flight``, gRPC): a Flight
  server in the producer process streams record batches of one ``binary`` column, about 1 MiB of
  payload per batch and at most 64 Ki rows (:func:`flight_rows_per_batch`: 65 536 rows of 8 B,
  10 485 of 100 B, 1 048 of 1000 B, 32 of 32 KiB), what a Flight user would pick: every batch is
  one gRPC message costing tens of µs, so batches of flinknet's 32 KiB unit made Flight 2-4x
  slower per record on the benchmark's machine (the bigger batch costs latency instead: a batch
  leaves when whole). Consumer ``"to_pylist"``: the server builds every batch from a Python list
  of ``bytes`` (``pa.array(records)``, the Python records a user has) and the consumer turns each
  batch's column back into Python ``bytes`` (``batch.column(0).to_pylist()``). Consumer
  ``"columnar"``: the server streams one prebuilt batch over and over (arrays at both ends, as
  flinknet's numpy API) and the consumer only touches the arrays (counts the column's rows), no
  Python object per record.

:func:`missing` says which peers cannot run here (pyzmq or pyarrow.flight not installed).
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["CHUNK", "FLIGHT_BATCH_BYTES", "FLIGHT_BATCH_ROWS", "LARGE_RECORD", "CountMismatchError",
           "Deframer", "busy_python_threads", "check_count", "deframe", "flight_do_get",
           "flight_rows_per_batch", "frame_records", "hand_written_loop", "missing", "pyzmq_framed",
           "record_of"]

#: the framing chunk (one ``sendall`` / one ZeroMQ message)
CHUNK = 32 * 1024
#: Flight's payload per batch (and its most rows)
FLIGHT_BATCH_BYTES = 1 << 20
FLIGHT_BATCH_ROWS = 1 << 16
#: records of at least this many bytes are copied straight out of the receive buffer; smaller ones
#: are sliced out of one ``bytes`` copy of the received region (one allocation per record: the
#: faster of the two below this size, the slower above it)
LARGE_RECORD = 4096
#: the consumer's receive buffer (grows for an incomplete record longer than it less a chunk)
RECV_BUFFER = 4 * CHUNK

_LEN = struct.Struct("<I")
_WAIT = 120.0   # s: the longest a side waits for the other


class CountMismatchError(AssertionError):
    """A peer read out another number of records than it should have."""


@contextmanager
def busy_python_threads(count: int) -> Iterator[None]:
    """``count`` threads spinning in pure Python for the duration of the block (a GIL-hungry
    neighbour in the consumer's process: a CPU-bound task, a pure-Python parser or metrics
    loop), stopped and joined on the way out. Such a thread releases the GIL only when the
    interpreter forces it to (every ``sys.getswitchinterval()``, 5 ms by default), so a consumer
    that releases the GIL to wait waits that long to get it back."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    running = [True]

    def spin() -> None:
        while running[0]:
            pass

    threads = [threading.Thread(target=spin, name=f"busy-python-{i}", daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        running[0] = False
        for t in threads:
            t.join()


def check_count(peer: str, got: int, expected: int) -> None:
    """Raise :class:`CountMismatchError` unless ``got == expected``."""
    if got != expected:
        raise CountMismatchError(f"{peer}: read {got} records, expected {expected}")


def record_of(size: int) -> bytes:
    """The ``size``-byte record every producer sends (the one flinknet's producer sends)."""
    return bytes(range(256)) * (size // 256) + bytes(size % 256)


def frame_records(record: bytes, n: int, send: Callable[[memoryview], Any], chunk: int = CHUNK) -> None:
    """``n`` times ``record``, each behind its 4-byte little-endian length, packed into a
    ``chunk``-byte ``bytearray`` handed to ``send`` when full (then reused: ``send`` copies it).
    A record larger than the space left is split across chunks (its length is never split: with
    fewer than 4 bytes left the chunk goes out short); the last chunk goes out short."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    src = memoryview(record)
    pack = _LEN.pack_into
    size = len(record)
    need = 4 + size
    pos = 0
    for _ in range(n):
        if pos + need <= chunk:
            pack(view, pos, size)
            view[pos + 4:pos + need] = record    # a memoryview's slice assignment: 3x a bytearray's
            pos += need
            continue
        # the record does not fit whole: its length, then its bytes across as many chunks as it takes
        if chunk - pos < 4:
            send(view[:pos])
            pos = 0
        pack(view, pos, size)
        pos += 4
        off = 0
        while off < size:
            if pos == chunk:
                send(view)
                pos = 0
            k = min(chunk - pos, size - off)
            view[pos:pos + k] = src[off:off + k]
            pos += k
            off += k
    if pos:
        send(view[:pos])


def deframe(view: memoryview, start: int, end: int, out: list[bytes]) -> int:
    """Append every whole length-prefixed record of ``view[start:end]`` to ``out`` as ``bytes``;
    return the offset of the first incomplete one (``end`` when there is none)."""
    unpack = _LEN.unpack_from
    if end - start < 4:
        return start
    (k,) = unpack(view, start)
    if start + 4 + k > end:          # the first record is not whole yet: nothing to read out
        return start
    append = out.append
    if k >= LARGE_RECORD:
        # large records: one copy each, straight out of the receive buffer
        while end - start >= 4:
            (k,) = unpack(view, start)
            stop = start + 4 + k
            if stop > end:
                break
            append(bytes(view[start + 4:stop]))
            start = stop
        return start
    # small records: one copy of the region, each record a slice of it (one allocation each)
    data = bytes(view[start:end])
    lim = end - start
    pos = 0
    while lim - pos >= 4:
        (k,) = unpack(data, pos)
        stop = pos + 4 + k
        if stop > lim:
            break
        append(data[pos + 4:stop])
        pos = stop
    return start + pos


class Deframer:
    """Length-prefixed records out of a byte stream arriving in pieces of any size (a record, or
    its length, may be split across pieces): write a piece into :meth:`space` (``recv_into``),
    then :meth:`feed` its length to get the records it completed."""

    def __init__(self, capacity: int = RECV_BUFFER) -> None:
        if capacity < CHUNK:
            raise ValueError(f"capacity {capacity} < {CHUNK}")
        self._buf = bytearray(capacity)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0

    def space(self) -> memoryview:
        """Where the next piece goes: at least :data:`CHUNK` bytes."""
        if len(self._buf) - self._end < CHUNK:
            self._make_room()
        return self._view[self._end:]

    def _make_room(self) -> None:
        left = self._end - self._start
        if len(self._buf) - left < CHUNK:   # an incomplete record almost as long as the buffer
            buf = bytearray(max(2 * len(self._buf), left + CHUNK))
            buf[:left] = self._view[self._start:self._end]
            self._buf, self._view = buf, memoryview(buf)
        else:
            self._view[:left] = self._view[self._start:self._end]   # memmove
        self._start, self._end = 0, left

    def feed(self, k: int) -> list[bytes]:
        """The records completed by the ``k`` bytes just written at the start of :meth:`space`."""
        self._end += k
        out: list[bytes] = []
        self._start = deframe(self._view, self._start, self._end, out)
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete record (0 at the end of a well-formed stream)."""
        return self._end - self._start


def missing() -> dict[str, str]:
    """Peer -> why it cannot run here (``"pyzmq framed"``, ``"flight"``), empty when all can."""
    out = {}
    try:
        import zmq  # type: ignore[import-not-found,unused-ignore]  # noqa: F401  # optional: flinknet[bench]
    except ImportError:
        out["pyzmq framed"] = "pyzmq not installed"
    try:
        import pyarrow  # type: ignore[import-not-found,import-untyped,unused-ignore]  # noqa: F401  # optional: flinknet[bench]
    except ImportError:
        out["flight"] = "pyarrow not installed"
    else:
        try:
            import pyarrow.flight  # type: ignore[import-not-found,import-untyped,unused-ignore]  # noqa: F401
        except ImportError:
            out["flight"] = "pyarrow.flight not available"
    return out


def flight_rows_per_batch(size: int) -> int:
    """Rows of a Flight batch of ``size``-byte records: about :data:`FLIGHT_BATCH_BYTES` of
    payload, at most :data:`FLIGHT_BATCH_ROWS` rows."""
    return max(1, min(FLIGHT_BATCH_ROWS, FLIGHT_BATCH_BYTES // max(size, 1)))


# -- processes (module level: spawn imports them) ----------------------------------------------

def _socket_producer(q_out, q_in, size: int, n: int, repeats: int) -> None:
    try:
        record = record_of(size)
        with socket.create_server(("127.0.0.1", 0)) as lst:
            q_out.put(("addr", lst.getsockname()))
            for _ in range(repeats):
                conn, _ = lst.accept()
                with conn:
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    if q_in.get(timeout=_WAIT) != "go":
                        return
                    frame_records(record, n, conn.sendall)
                    conn.shutdown(socket.SHUT_WR)
        q_out.put(("done",))
    except BaseException as err:  # noqa: BLE001 (reported to the parent)
        q_out.put(("error", repr(err)))


def _zmq_producer(q_out, q_in, size: int, n: int, repeats: int) -> None:
    try:
        import zmq  # type: ignore[import-not-found,unused-ignore]  # optional: flinknet[bench]

        record = record_of(size)
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.setsockopt(zmq.SNDTIMEO, int(_WAIT * 1000))
        try:
            port = push.bind_to_random_port("tcp://127.0.0.1")
            q_out.put(("addr", f"tcp://127.0.0.1:{port}"))
            push.send(b"ready")         # returns once the consumer is connected
            for _ in range(repeats):
                if q_in.get(timeout=_WAIT) != "go":
                    return
                frame_records(record, n, push.send)
                push.send(b"")          # end of stream (a chunk is never empty)
            q_in.get(timeout=_WAIT)     # the consumer has every message: close
        finally:
            push.close(0)
            ctx.term()
        q_out.put(("done",))
    except BaseException as err:  # noqa: BLE001 (reported to the parent)
        q_out.put(("error", repr(err)))


def _flight_server(q_out, q_in, size: int, rows: int) -> None:
    try:
        import pyarrow as pa  # type: ignore[import-not-found,import-untyped,unused-ignore]  # optional: flinknet[bench]
        import pyarrow.flight as flight  # type: ignore[import-not-found,import-untyped,unused-ignore]

        records = [record_of(size)] * rows
        schema = pa.schema([("record", pa.binary())])
        prebuilt = pa.record_batch([pa.array(records, type=pa.binary())], schema=schema)

        def from_lists(n):
            # every batch built from Python bytes objects, as a user holding Python records does
            for _ in range(n // rows):
                yield pa.record_batch([pa.array(records, type=pa.binary())], schema=schema)
            if n % rows:
                yield pa.record_batch([pa.array(records[:n % rows], type=pa.binary())], schema=schema)

        def columnar(n):
            for _ in range(n // rows):
                yield prebuilt
            if n % rows:
                yield prebuilt.slice(0, n % rows)

        class Server(flight.FlightServerBase):
            def do_get(self, context, ticket):
                mode, n = ticket.ticket.decode().split()
                gen = from_lists(int(n)) if mode == "to_pylist" else columnar(int(n))
                return flight.GeneratorStream(schema, gen)

        server = Server("grpc://127.0.0.1:0")
        try:
            q_out.put(("addr", f"grpc://127.0.0.1:{server.port}"))
            q_in.get(timeout=3600)      # the consumer is done
        finally:
            server.shutdown()
        q_out.put(("done",))
    except BaseException as err:  # noqa: BLE001 (reported to the parent)
        q_out.put(("error", repr(err)))


# -- measurements -------------------------------------------------------------------------------

def _expect(q_out, tag: str) -> Any:
    msg = q_out.get(timeout=_WAIT)
    if msg[0] == "error":
        raise RuntimeError(f"peer producer failed: {msg[1]}")
    if msg[0] != tag:
        raise RuntimeError(f"peer producer: expected {tag!r}, got {msg!r}")
    return msg[1] if len(msg) > 1 else None


@contextmanager
def _producer(target, *args) -> Iterator[tuple[Any, Any]]:
    """(messages from, messages to) ``target(q_out, q_in, *args)`` running in a spawned process,
    stopped on the way out (killed at once if the measurement failed)."""
    ctx = mp.get_context("spawn")
    q_out, q_in = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=target, args=(q_out, q_in, *args), daemon=True)
    proc.start()
    try:
        yield q_out, q_in
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()


def _check(peer: str, count: int, n: int, deframer: Deframer) -> None:
    check_count(peer, count, n)
    if deframer.pending:
        raise CountMismatchError(f"{peer}: {deframer.pending} bytes of an incomplete record at the end")


def hand_written_loop(size: int, n: int, repeats: int = 1, *, produce: int | None = None,
                      busy: int = 0) -> float:
    """Best seconds of ``repeats`` transfers of ``n`` records of ``size`` bytes through the
    hand-written framing loop over a TCP socket (the producer sends ``produce``, default ``n``);
    ``busy`` pure-Python threads spin in this process while it reads (:func:`busy_python_threads`)."""
    with _producer(_socket_producer, size, n if produce is None else produce, repeats) as (q_out, q_in):
        addr = _expect(q_out, "addr")
        best = float("inf")
        for _ in range(repeats):
            with socket.create_connection(addr, timeout=_WAIT) as s, busy_python_threads(busy):
                deframer = Deframer()
                space, feed = deframer.space, deframer.feed
                recv_into = s.recv_into
                count = 0
                t0 = time.perf_counter()
                q_in.put("go")
                while k := recv_into(space()):
                    count += len(feed(k))
                dt = time.perf_counter() - t0
            _check("hand-written loop", count, n, deframer)
            best = min(best, dt)
        _expect(q_out, "done")
    return best


def pyzmq_framed(size: int, n: int, repeats: int = 1, *, produce: int | None = None,
                 busy: int = 0) -> float:
    """Best seconds of ``repeats`` transfers of ``n`` records of ``size`` bytes framed into 32 KiB
    pyzmq PUSH/PULL messages (the producer sends ``produce``, default ``n``); ``busy``
    pure-Python threads spin in this process while it reads (:func:`busy_python_threads`)."""
    import zmq  # type: ignore[import-not-found,unused-ignore]  # optional: flinknet[bench]

    with _producer(_zmq_producer, size, n if produce is None else produce, repeats) as (q_out, q_in):
        endpoint = _expect(q_out, "addr")
        ctx = zmq.Context()
        pull = ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        pull.setsockopt(zmq.RCVTIMEO, int(_WAIT * 1000))
        try:
            pull.connect(endpoint)
            if pull.recv() != b"ready":
                raise RuntimeError("pyzmq framed: no ready message")
            best = float("inf")
            for _ in range(repeats):
                deframer = Deframer()
                space, feed = deframer.space, deframer.feed
                count = 0
                with busy_python_threads(busy):
                    if hasattr(pull, "recv_into"):      # pyzmq >= 26.4
                        recv_into = pull.recv_into
                        t0 = time.perf_counter()
                        q_in.put("go")
                        while k := recv_into(space()):
                            count += len(feed(k))
                    else:
                        recv = pull.recv
                        t0 = time.perf_counter()
                        q_in.put("go")
                        while k := len(frame := recv(copy=False)):
                            space()[:k] = frame.buffer
                            count += len(feed(k))
                    dt = time.perf_counter() - t0
                _check("pyzmq framed", count, n, deframer)
                best = min(best, dt)
            q_in.put("close")
        finally:
            pull.close(0)
            ctx.term()
        _expect(q_out, "done")
    return best


def flight_do_get(size: int, n: int, consumer: str = "to_pylist", repeats: int = 1, *,
                  rows_per_batch: int | None = None, produce: int | None = None,
                  busy: int = 0) -> float:
    """Best seconds of ``repeats`` Arrow Flight ``DoGet`` streams of ``n`` records of ``size``
    bytes, read by ``consumer``: ``"to_pylist"`` (each batch's column to Python ``bytes``) or
    ``"columnar"`` (rows counted, no per-record object). The server sends ``produce``
    (default ``n``); ``busy`` pure-Python threads spin in this process while it reads
    (:func:`busy_python_threads`)."""
    import pyarrow.flight as flight  # type: ignore[import-not-found,import-untyped,unused-ignore]  # optional: flinknet[bench]

    if consumer not in ("to_pylist", "columnar"):
        raise ValueError(f"unknown Flight consumer {consumer!r}")
    rows = flight_rows_per_batch(size) if rows_per_batch is None else rows_per_batch
    with _producer(_flight_server, size, rows) as (q_out, q_in):
        location = _expect(q_out, "addr")
        ticket = flight.Ticket(f"{consumer} {n if produce is None else produce}".encode())
        client = flight.FlightClient(location)
        try:
            client.wait_for_available(timeout=_WAIT)
            best = float("inf")
            for _ in range(repeats):
                count = 0
                with busy_python_threads(busy):
                    t0 = time.perf_counter()
                    reader = client.do_get(ticket)
                    if consumer == "to_pylist":
                        for chunk in reader:
                            count += len(chunk.data.column(0).to_pylist())
                    else:
                        for chunk in reader:
                            count += len(chunk.data.column(0))
                    dt = time.perf_counter() - t0
                check_count(f"flight {consumer}", count, n)
                best = min(best, dt)
        finally:
            client.close()
            q_in.put("done")
        _expect(q_out, "done")
    return best
