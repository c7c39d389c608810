"""Fault injection on the TCP transport: real sockets on loopback, real processes.

* a consumer process killed mid-stream (with ``on_consumer_lost="discard"``, the other consumer
  and the producer carry on);
* the connection cut by a proxy inside a frame header, a payload, a record spanning buffers (the
  reader fails; the producer fails with ConsumerLostError naming the cut connection);
* a fuzzed live server (random bytes, mutated frames) that must drop each bad connection, keep
  serving, and leak nothing (buffers, connections, threads, file descriptors, memory);
* a zero-credit client (back-pressure, exact credit) and huge declared frame lengths;
* bugs found this way (see their docstrings): a message handler's exception escaping to the I/O
  loop, and fatal ErrorResponses written past (or into) frames still queued.

Every process started here is killed and joined by its test; every environment of the test
process ends with its pool whole.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing as mp
import os
import random
import select
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from flinknet._core import protocol as P
from flinknet._core.buffer import FREEING_BUFFER_RECYCLER, DataType, NetworkBuffer
from flinknet._core.memory import MemorySegment
from flinknet.consumer import RecordReader
from flinknet.environment import NetworkEnvironment
from flinknet.errors import CancelTaskError, ConsumerLostError
from flinknet.transport import RemoteTransportError
from flinknet.transport.handshake import PROTOCOL_VERSION, HandshakeConfig, client_handshake
from flinknet.writer import RecordWriter
from tests.helpers import Worker
from tests.transport import fault_procs, procs

SMALL = {"taskmanager.memory.segment-size": "4kb", "taskmanager.memory.network.max": "2mb"}
CTX = mp.get_context("spawn")
HDR = struct.Struct(">iIB")          # frame length, magic, message id
MAGIC = P.MAGIC_NUMBER
HELLO = struct.Struct(">8sHB32s")    # the handshake's client HELLO (flinknet/transport/handshake.py)
WELCOME_SIZE = 44                    # the server's WELCOME: b"flinknet", status, version, flags, nonce


# -- helpers -------------------------------------------------------------------------------


def _wait_for(cond, timeout: float = 5.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def _assert_whole(*envs, timeout: float = 5.0) -> None:
    assert _wait_for(lambda: all(e.network_buffer_pool.is_whole for e in envs), timeout), [
        (e, e.network_buffer_pool.total_segments - e.network_buffer_pool.available_segments)
        for e in envs if not e.network_buffer_pool.is_whole]


def _num_server_connections(env) -> int:
    return env.loop.run_sync(lambda: len(env.server.connections))


def _wait_stalled(progress, quiet: float = 0.3, timeout: float = 20.0) -> int:
    """Wait until ``progress[0]`` stops moving for ``quiet`` seconds; returns its value."""
    deadline = time.monotonic() + timeout
    last, since = progress[0], time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now = progress[0]
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise AssertionError(f"the writer never stalled (at {progress[0]})")


def _stop_process(proc) -> None:
    if proc.is_alive():
        proc.kill()
    proc.join(30)


def _connect(address, timeout: float = 10.0) -> socket.socket:
    """A raw client socket past flinknet's handshake (no secret, no TLS): frames from here on."""
    sock = socket.create_connection(address, timeout=timeout)
    try:
        return client_handshake(sock, HandshakeConfig(), address)
    except BaseException:
        sock.close()
        raise


def _client_allocator(receiver_id, size, data_type, subpartition):
    return NetworkBuffer(MemorySegment(max(size, 1)), FREEING_BUFFER_RECYCLER)


def _recycle_all(messages) -> None:
    for m in messages:
        if type(m) is P.BufferResponse and m.buffer is not None:
            m.buffer.recycle()


def _read_reply(sock, timeout: float, stop_on_error_for: bytes | None = None):
    """Read what the server sends until it closes (or resets) the connection, or an
    ErrorResponse for ``stop_on_error_for`` arrives, or ``timeout`` passes.

    Returns ``(how, messages)``, how in "closed", "reset", "error", "timeout"; messages are the
    decoded frames (the test fails on bytes that do not decode as server frames)."""
    decoder = P.FrameDecoder(side="client", max_buffer_size=1 << 20)
    messages = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout", messages
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                return "timeout", messages
            except ConnectionResetError:
                return "reset", messages
            if not data:
                return "closed", messages
            messages.extend(decoder.feed(data))
            if stop_on_error_for is not None and any(
                    type(m) is P.ErrorResponse and m.receiver_id == stop_on_error_for for m in messages):
                return "error", messages
    finally:
        decoder.close()
        _recycle_all(messages)


# -- 1. a consumer process killed mid-stream -----------------------------------------------


def test_consumer_process_killed_mid_stream_does_not_stop_the_other():
    """Two consumer processes read one subpartition each; one stops reading (the writer is
    back-pressured by it) and is killed. With ``on_consumer_lost="discard"`` (by default the
    producer fails: tests/transport/test_consumer_lost.py) the writer must get past the dead
    subpartition, the other consumer must get every record of its subpartition in order, and the
    producer must give back every buffer (queued in the dead subpartition or in flight on the dead
    connection)."""
    n = 3000
    stall_after = 300
    with NetworkEnvironment(SMALL) as prod:
        p = prod.create_result_partition(2, on_consumer_lost="discard")
        seg = prod.config.segment_size
        progress = [0]

        def produce():
            try:
                with RecordWriter(p, timeout=5) as w:
                    for i in range(n):
                        w.emit(procs.record(0, i, procs.record_size(i, seg)), i % 2)
                        progress[0] = i + 1
                p.finish()
            finally:
                p.close()

        writer = Worker(produce)
        q_live, q_dead = CTX.Queue(), CTX.Queue()
        pid = p.partition_id.to_bytes()
        live = CTX.Process(target=fault_procs.consumer, args=(q_live, pid, 0, 2, prod.address, SMALL))
        dead = CTX.Process(target=fault_procs.consumer,
                           args=(q_dead, pid, 1, 2, prod.address, SMALL, stall_after))
        try:
            live.start()
            dead.start()
            assert q_live.get(timeout=60) == ("ready",)
            assert q_dead.get(timeout=60) == ("ready",)
            writer.start()
            assert q_dead.get(timeout=30) == ("progress", stall_after)
            stalled_at = _wait_stalled(progress)
            assert stalled_at < n, "the writer was not blocked by the stalled consumer"
            assert _num_server_connections(prod) == 2

            dead.kill()
            dead.join(30)
            writer.finish(30)              # not blocked by the dead consumer's subpartition
            assert writer.error is None, writer.error
            assert progress[0] == n
            lost = p.lost_consumers          # recorded, not raised
            assert list(lost) == [1], lost
            assert lost[1].consumer.startswith("remote consumer 127.0.0.1:"), lost[1]
            assert "its connection was closed or reset" in lost[1].reason, lost[1]

            msg = q_live.get(timeout=30)
            assert msg[0] == "done", msg
            _, count, problem, consumer_pool_whole = msg
            assert problem is None, problem
            assert count == n // 2
            assert consumer_pool_whole
            live.join(30)
            assert live.exitcode == 0

            assert _wait_for(lambda: _num_server_connections(prod) == 0)
            _assert_whole(prod)
            assert prod.partition_manager.get_unreleased_partitions() == []
            assert p.is_released
        finally:
            _stop_process(dead)
            _stop_process(live)


# -- 2. the connection cut mid-frame and mid-record ----------------------------------------


class CuttingProxy:
    """A TCP proxy for one connection that forwards the server's bytes up to offset
    ``cut_offset`` of server frame ``cut_frame`` (0 = the first frame after the handshake's
    WELCOME; None: ``cut_offset`` counts from the first byte), then closes both sides
    (``reset``: SO_LINGER 0, an RST; otherwise a plain close)."""

    def __init__(self, target, cut_frame: int, cut_offset: int, reset: bool):
        self.target = target
        self.cut_frame = cut_frame
        self.cut_offset = cut_offset
        self.reset = reset
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()[:2]
        self.forwarded = 0
        self.handshake_ok = False
        self.upstream_address: tuple[str, int] | None = None   # the producer's peer: this proxy
        self.cut_done = threading.Event()
        self.error: BaseException | None = None
        self._socks = [self.listener]
        self._stop = False
        self.thread = threading.Thread(target=self._run, name="cutting-proxy", daemon=True)
        self.thread.start()

    def _cut_position(self, seen: bytearray):
        if self.cut_frame is None:
            return self.cut_offset
        pos = WELCOME_SIZE
        for _ in range(self.cut_frame):
            if pos + 4 > len(seen):
                return None
            pos += int.from_bytes(seen[pos:pos + 4], "big")
        return pos + self.cut_offset

    def _run(self) -> None:
        try:
            self.listener.settimeout(10)
            client, _ = self.listener.accept()
            self._socks.append(client)
            upstream = socket.create_connection(self.target, timeout=10)
            self._socks.append(upstream)
            self.upstream_address = upstream.getsockname()[:2]
            seen = bytearray()
            while not self._stop:
                readable, _, _ = select.select([client, upstream], [], [], 0.05)
                if client in readable:
                    data = client.recv(65536)
                    if not data:
                        return
                    upstream.sendall(data)
                if upstream in readable:
                    data = upstream.recv(65536)
                    if not data:
                        return
                    seen += data
                    self.handshake_ok = seen[:8] == b"flinknet"[:len(seen)]
                    cut = self._cut_position(seen)
                    end = len(seen) if cut is None else min(cut, len(seen))
                    if end > self.forwarded:
                        client.sendall(seen[self.forwarded:end])
                        self.forwarded = end
                    if cut is not None and len(seen) > cut:   # bytes beyond the cut exist: cut
                        self.cut_done.set()
                        return
        except BaseException as err:  # noqa: BLE001 (checked by the test)
            self.error = err
        finally:
            self._close_all()

    def _close_all(self) -> None:
        for s in self._socks:
            try:
                if self.reset and s is not self.listener:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self._stop = True
        self.thread.join(10)
        assert not self.thread.is_alive()


REC_SIZE = 10_000      # records span 2-3 buffers of 4 KiB; every data frame carries 4096 bytes
BR_HEADER = P.FRAME_HEADER_LENGTH + P.BUFFER_RESPONSE_HEADER_LENGTH   # 47
CUTS = {
    # (server frame, offset in that frame); frame None: offset in the whole stream
    "in-handshake": (None, 20),
    "before-first-frame": (0, 0),
    "in-first-frame-header": (0, 20),
    "in-later-frame-header": (3, 30),
    "in-payload": (2, BR_HEADER + 1000),
    "in-record-spanning-buffers": (1, BR_HEADER + 2000),   # frame 1 is the middle of record 0
    "frame-boundary-inside-spanning-record": (4, 0),      # record 1 spans frames 2..4
}


@pytest.mark.parametrize("reset", [True, False], ids=["rst", "fin"])
@pytest.mark.parametrize("cut", list(CUTS.values()), ids=list(CUTS))
def test_connection_cut_mid_frame_fails_the_reader(cut, reset):
    """The reader fails with RemoteTransportError after a correct prefix, whatever the cut. The
    producer, which has far more to write than its pool holds, is woken by the cut too: its
    consumer is lost, and it fails with ConsumerLostError naming the cut connection (after a cut
    in the handshake no consumer ever came: the producer waits until it is failed)."""
    n = 200
    with NetworkEnvironment(SMALL) as prod, NetworkEnvironment(SMALL) as cons:
        p = prod.create_result_partition(1)

        def produce():
            try:
                with RecordWriter(p, timeout=-1) as w:     # only full buffers: fixed frame layout
                    for i in range(n):
                        w.emit(procs.record(0, i, REC_SIZE), 0)
                p.finish()
            except BaseException as err:
                p.fail(err)        # as a failing task does: its consumers learn it
                raise
            finally:
                p.close()

        writer = Worker(produce)
        writer.start()
        proxy = CuttingProxy(prod.address, *cut, reset=reset)
        try:
            gate = cons.create_input_gate([(p.partition_id, 0, proxy.address)])
            got = []

            def consume():
                with RecordReader(gate) as r:
                    for rec in r:
                        got.append(rec)

            reader = Worker(consume)
            t0 = time.monotonic()
            reader.start()
            reader.finish(10)          # never hangs
            assert time.monotonic() - t0 < 10
            assert proxy.error is None, proxy.error
            assert proxy.cut_done.is_set(), f"the stream ended before the cut ({proxy.forwarded} bytes)"
            assert proxy.handshake_ok, "the stream does not start with the handshake's WELCOME"
            assert isinstance(reader.error, RemoteTransportError), repr(reader.error)
            assert f"127.0.0.1:{proxy.address[1]}" in str(reader.error)
            # what was read before the cut is a correct prefix: no truncated or garbled record
            assert len(got) < n
            for i, rec in enumerate(got):
                assert rec == procs.record(0, i, REC_SIZE), i
            gate.close()
            if cut[0] is None:
                # cut in the handshake: no PartitionRequest ever reached the producer, whose writer
                # waits for a consumer (back-pressure, as in Flink) until the partition fails
                time.sleep(0.2)
                assert writer.is_alive()
                p.fail(ValueError("no consumer came"))
                writer.finish(20)
                assert isinstance(writer.error, CancelTaskError), repr(writer.error)
                assert p.lost_consumers == {}
            else:
                writer.finish(20)      # the producer is not blocked by the lost consumer: it fails
                err = writer.error
                assert isinstance(err, ConsumerLostError), repr(err)
                assert (err.partition_id, err.subpartition) == (p.partition_id, 0)
                host, port = proxy.upstream_address
                assert err.consumer.startswith(f"remote consumer {host}:{port} (receiver "), err.consumer
                assert "its connection was closed or reset" in err.reason, err.reason
                assert err.consumer in str(err) and err.reason in str(err)
                assert p.failure_cause is err and list(p.lost_consumers) == [0]
                assert p.num_records_out < n
            _assert_whole(prod, cons)
            assert _wait_for(lambda: _num_server_connections(prod) == 0)
            assert cons.connection_manager.num_connections == 0
            assert prod.partition_manager.get_unreleased_partitions() == []
        finally:
            proxy.close()


# -- 3. fuzzing a live server --------------------------------------------------------------

# Expectations: "fatal" = the server closes the connection (after at most one fatal
# ErrorResponse, without receiver id); "close" = it closes without a word (CloseRequest);
# ("error", rid, type) = it answers an ErrorResponse for rid; "abandon" = the client hangs up.


def _frame(msg_id: int, body: bytes, length: int | None = None, magic: int = MAGIC) -> bytes:
    return HDR.pack(P.FRAME_HEADER_LENGTH + len(body) if length is None else length,
                    magic, msg_id) + body


def _pr_body(pid: bytes, start: int, end: int, rid: bytes, credit: int) -> bytes:
    return pid + struct.pack(">ii", start, end) + rid + struct.pack(">i", credit)


def _unknown_pid(rng: random.Random) -> bytes:
    """A well-formed ResultPartitionID that nobody registered (its three ints non-negative)."""
    pid = bytearray(rng.randbytes(60))
    for offset in (16, 52, 56):   # partition_num, subtask_index, attempt_number
        pid[offset] &= 0x7F
    return bytes(pid)


def _invalid_pid(rng: random.Random) -> bytes:
    """60 bytes that are no ResultPartitionID (a negative partition_num, subtask or attempt)."""
    pid = bytearray(rng.randbytes(60))
    pid[rng.choice((16, 52, 56))] |= 0x80
    return bytes(pid)


def _valid_client_frame(rng: random.Random) -> bytes:
    rid = rng.randbytes(16)
    pid = _unknown_pid(rng)
    kind = rng.randrange(9)
    if kind == 0:
        return P.encode_partition_request(pid, 0, 0, rid, rng.randrange(0, 10))
    if kind == 1:
        return P.encode_add_credit(rng.randrange(1, 100), rid)
    if kind == 2:
        return P.encode_resume_consumption(rid)
    if kind == 3:
        return P.encode_ack_all_user_records_processed(rid)
    if kind == 4:
        return P.encode_cancel_partition_request(rid)
    if kind == 5:
        return P.encode_new_buffer_size(rng.randrange(1, 1 << 20), rid)
    if kind == 6:
        return P.encode_segment_id(rng.randrange(4), rng.randrange(1, 9), rid)
    if kind == 7:
        return P.encode_task_event_request(rng.randbytes(rng.randrange(0, 40)), pid, rid)
    return P.encode_close_request()


def _fatal_frame(rng: random.Random) -> tuple[str, bytes]:
    """One frame the server must reject by closing the connection."""
    rid = rng.randbytes(16)
    valid = _valid_client_frame(rng)
    kind = rng.randrange(17)
    if kind == 0:
        return "random-bytes", rng.randbytes(rng.randint(P.FRAME_HEADER_LENGTH, 3000))
    if kind == 1:
        magic = rng.choice([0, 0xFEC0DCBA, MAGIC ^ (1 << rng.randrange(32))])
        return "wrong-magic", struct.pack(">i", len(valid)) + struct.pack(">I", magic) + valid[8:]
    if kind == 2:
        return "huge-length", struct.pack(">i", 0x7FFFFFFF) + valid[4:]
    if kind == 3:
        return "negative-length", struct.pack(">i", rng.randint(-(1 << 31), -1)) + valid[4:]
    if kind == 4:
        return "length-below-header", struct.pack(">i", rng.randrange(0, P.FRAME_HEADER_LENGTH)) + valid[4:]
    if kind == 5:
        return "unknown-id", _frame(rng.randint(12, 255), rng.randbytes(rng.randrange(0, 64)))
    if kind == 6:
        return "server-id", rng.choice([
            P.encode_buffer_response(rid, 0, 0, 0, DataType.DATA_BUFFER, False, b"\0\0\0\1x"),
            P.encode_error_response("IOError", "from a client", rng.choice([None, rid])),
            P.encode_backlog_announcement(rng.randrange(1, 9), rid),
        ])
    if kind == 7:
        credit = rng.choice([0, -1, -(1 << 31), rng.randint(-(1 << 31), 0)])
        return "add-credit-non-positive", _frame(6, struct.pack(">i", credit) + rid)
    if kind == 8:
        return "add-credit-unknown-receiver", P.encode_add_credit(rng.choice([1, 0x7FFFFFFF]), rid)
    if kind == 9:
        return "resume-unknown-receiver", P.encode_resume_consumption(rid)
    if kind == 10:
        return "ack-unknown-receiver", P.encode_ack_all_user_records_processed(rid)
    if kind == 11:
        start = rng.randrange(1, 100)
        return "request-start-after-end", _frame(2, _pr_body(rng.randbytes(60), start,
                                                              rng.randrange(0, start), rid, 2))
    if kind == 12:
        return "request-negative-index", _frame(2, _pr_body(rng.randbytes(60), rng.randint(-(1 << 31), -1),
                                                             rng.randrange(0, 4), rid, 2))
    if kind == 13:
        return "request-negative-credit", _frame(2, _pr_body(rng.randbytes(60), 0, 0, rid,
                                                              rng.randint(-(1 << 31), -1)))
    if kind == 14:   # a fixed-size message whose length does not match its body
        delta = rng.choice([-4, -1, 1, 4])
        body = valid[9:]
        body = body[:delta] if delta < 0 else body + bytes(delta)
        if valid[8] == 3:    # TaskEventRequest: variable size; make its event length lie
            body = struct.pack(">i", len(body)) + body[4:]
        return "body-size-mismatch", _frame(valid[8], body)   # (a shortened CloseRequest stays valid)
    if kind == 15:
        req = P.encode_partition_request(_unknown_pid(rng), 0, 0, rid, 1)
        return "duplicate-receiver", req + req
    return "segment-id-invalid", _frame(11, struct.pack(">ii", rng.randint(-5, 3), rng.randint(-5, 0)) + rid)


def _hello(version: int = PROTOCOL_VERSION, flags: int = 0, magic: bytes = b"flinknet") -> bytes:
    return HELLO.pack(magic, version, flags, os.urandom(32))


def _fuzz_cases(seed: int, count: int):
    """``(name, chunks, byte_by_byte, expectation, handshake)`` cases, reproducible from ``seed``.

    ``handshake``: the client does the handshake first (frames follow), otherwise the chunks go
    out raw from the first byte (they are the handshake, bad or not)."""
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        kind = rng.randrange(12)
        if kind <= 4:            # one bad frame, maybe after valid ones, maybe byte by byte
            name, bad = _fatal_frame(rng)
            prefix = b""
            if kind == 4:        # harmless valid messages first (unknown receivers are ignored)
                rid = rng.randbytes(16)
                prefix = (P.encode_cancel_partition_request(rid) + P.encode_new_buffer_size(4096, rid)
                          + P.encode_segment_id(0, 1, rid))
                name = "valid-then-" + name
            data = prefix + bad
            by_byte = len(data) <= 200 and rng.random() < 0.3
            cases.append((f"{i}:{name}", [data], by_byte, "fatal", True))
        elif kind == 5:          # a pending request for a partition that never comes
            rid = rng.randbytes(16)
            req = P.encode_partition_request(_unknown_pid(rng), 0, 0, rid, rng.choice([0, 1, 2, 0x7FFFFFFF]))
            extra = b""
            if rng.random() < 0.5:   # credit and control messages for a request without view yet
                extra = (P.encode_add_credit(rng.choice([1, 0x7FFFFFFF]), rid)
                         + P.encode_resume_consumption(rid) + P.encode_ack_all_user_records_processed(rid))
            if rng.random() < 0.3:   # pipelined right behind the HELLO, before the WELCOME came
                cases.append((f"{i}:hello-pipelined-request-unknown-partition", [_hello() + req + extra],
                              False, ("error", rid, "PartitionNotFoundError"), False))
            else:
                cases.append((f"{i}:request-unknown-partition", [req + extra], False,
                              ("error", rid, "PartitionNotFoundError"), True))
        elif kind == 6:          # a request for several subpartitions (not supported), or a bad id
            rid = rng.randbytes(16)
            if rng.random() < 0.5:
                start = rng.randrange(0, 5)
                req = P.encode_partition_request(_unknown_pid(rng), start, start + rng.randint(1, 5), rid, 2)
                name = "request-subpartition-range"
            else:
                req = P.encode_partition_request(_invalid_pid(rng), 0, 0, rid, 2)
                name = "request-invalid-partition-id"
            cases.append((f"{i}:{name}", [req], False, ("error", rid, "ValueError"), True))
        elif kind == 7:          # a task event: answered, the connection stays
            rid = rng.randbytes(16)
            ev = P.encode_task_event_request(rng.randbytes(rng.randrange(0, 100)), _unknown_pid(rng), rid)
            cases.append((f"{i}:task-event", [ev], False, ("error", rid, "IllegalArgumentError"), True))
        elif kind == 8:          # a truncated frame (maybe after a pending request), then hang up
            frames = b""
            if rng.random() < 0.5:
                frames = P.encode_partition_request(_unknown_pid(rng), 0, 0, rng.randbytes(16), 2)
            valid = _valid_client_frame(rng)
            cut = rng.randrange(1, len(valid))
            cases.append((f"{i}:truncated", [frames + valid[:cut]], rng.random() < 0.3, "abandon", True))
        elif kind == 9:
            cases.append((f"{i}:close-request", [P.encode_close_request()], False, "close", True))
        elif kind == 10:         # a bad handshake: the server drops the connection
            sub = rng.randrange(5)
            if sub == 0:
                name, data = "hs-random-bytes", rng.randbytes(rng.randint(1, 200))
            elif sub == 1:
                name, data = "hs-bad-version", _hello(version=rng.choice([0, 2, 0xFFFF]))
            elif sub == 2:
                name, data = "hs-flags-mismatch", _hello(flags=rng.randint(1, 255))
            elif sub == 3:
                name, data = "hs-frame-instead-of-hello", _valid_client_frame(rng) * 5
            else:
                name, data = "hs-silent", b""
            cases.append((f"{i}:{name}", [data], len(data) <= 60 and rng.random() < 0.3, "dropped", False))
        else:                    # a truncated handshake, then hang up
            hello = _hello()
            cases.append((f"{i}:hs-truncated", [hello[:rng.randrange(0, len(hello))]],
                          rng.random() < 0.3, "abandon", False))
    return cases


def _read_dropped(sock, timeout: float) -> tuple[str, bytes]:
    """Read raw bytes until the server closes or resets the connection (or ``timeout``)."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return "reset", bytes(data)
        if not chunk:
            return "closed", bytes(data)
        data += chunk
    return "timeout", bytes(data)


def _run_fuzz_case(address, case) -> str | None:
    """Run one case on its own connection; returns a failure description or None."""
    name, chunks, by_byte, expect, handshake = case
    try:
        sock = _connect(address) if handshake else socket.create_connection(address, timeout=10)
    except OSError as err:
        return f"{name}: could not connect: {err!r}"
    try:
        try:
            for chunk in chunks:
                if by_byte:
                    for b in chunk:
                        sock.sendall(bytes([b]))
                else:
                    sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass   # the server hung up before the end: fine for bad input
        if expect == "abandon":
            return None
        if expect == "dropped":
            how, data = _read_dropped(sock, 8.0)
            if how == "timeout":
                return f"{name}: a bad handshake was not dropped"
            if data and not (data.startswith(b"flinknet") and len(data) > 8 and data[8] != 0):
                return f"{name}: unexpected answer to a bad handshake: {data[:60]!r}"
            return None
        if not handshake:   # the HELLO went raw: the WELCOME comes first
            sock.settimeout(8.0)
            welcome = b""
            while len(welcome) < WELCOME_SIZE:
                chunk = sock.recv(WELCOME_SIZE - len(welcome))
                if not chunk:
                    return f"{name}: closed during the handshake"
                welcome += chunk
            if not welcome.startswith(b"flinknet") or welcome[8] != 0:
                return f"{name}: bad WELCOME {welcome!r}"
        rid = expect[1] if isinstance(expect, tuple) else None
        how, messages = _read_reply(sock, 8.0, stop_on_error_for=rid)
    except P.CorruptFrameError as err:
        return f"{name}: the server sent an undecodable frame: {err}"
    except OSError as err:
        return f"{name}: {err!r}"
    finally:
        sock.close()
    kinds = [type(m).__name__ for m in messages]
    if expect == "fatal":
        if how not in ("closed", "reset"):
            return f"{name}: the connection was not closed ({how}, got {kinds})"
        fatal = [m for m in messages if type(m) is P.ErrorResponse and m.receiver_id is None]
        others = [m for m in messages if type(m) is not P.ErrorResponse]
        if others or len(fatal) > 1 or (fatal and messages[-1] is not fatal[0]):
            return f"{name}: unexpected frames before the close: {messages}"
    elif expect == "close":
        if how not in ("closed", "reset") or messages:
            return f"{name}: CloseRequest not honoured ({how}, {messages})"
    else:
        _, rid, error_type = expect
        if how != "error":
            return f"{name}: no ErrorResponse for the receiver ({how}, {kinds})"
        err = next(m for m in messages if type(m) is P.ErrorResponse and m.receiver_id == rid)
        if err.error_type != error_type:
            return f"{name}: ErrorResponse {err.error_type}: {err.message}, expected {error_type}"
    return None


class _ErrorLog(logging.Handler):
    """Keeps the text (never the record: its arguments may hold a connection) of every ERROR that
    flinknet logs, e.g. an exception that escaped into the I/O thread's guard."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record) -> None:
        self.messages.append(self.format(record))


def _fds(proc) -> int:
    return proc.num_fds()


def _threads(proc) -> tuple[int, int]:
    """(Python threads, OS threads) of this process."""
    return threading.active_count(), proc.num_threads()


def test_fuzzed_server_drops_bad_connections_keeps_serving_and_leaks_nothing():
    """Hundreds of connections with bad handshakes, bad frames and odd but valid messages: each is
    dropped (or answered), the server keeps serving a stream meanwhile and afterwards, and nothing
    stays behind: connections, pending requests, buffers, threads, file descriptors, memory; the
    I/O thread logs no error."""
    # Below ERROR, flinknet logs every dropped connection; pytest keeps each record for the report,
    # and a record's arguments (the exception and its traceback) keep that connection's memory
    # alive, which would show as RSS growth: those records are not made here.
    flog = logging.getLogger("flinknet")
    errors = _ErrorLog()
    level = flog.level
    flog.setLevel(logging.ERROR)
    flog.addHandler(errors)
    try:
        _fuzz_live_server()
    finally:
        flog.removeHandler(errors)
        flog.setLevel(level)
    assert not errors.messages, "\n".join(errors.messages[:5])


def _fuzz_live_server():
    opts = dict(SMALL, **{"taskmanager.network.partition-request-timeout": "200 ms",
                          "flinknet.network.handshake-timeout": "300 ms"})
    me = psutil.Process()
    gc.collect()
    threads_0, fds_0 = _threads(me), _fds(me)
    n = 2000
    with NetworkEnvironment(opts) as prod, NetworkEnvironment(SMALL) as cons:
        threads_1, fds_1 = _threads(me), _fds(me)
        # a partition written and read while the fuzz goes on
        p1 = prod.create_result_partition(1)
        seg = prod.config.segment_size

        def produce(p):
            try:
                with RecordWriter(p, timeout=5) as w:
                    for i in range(n):
                        w.emit(procs.record(0, i, procs.record_size(i, seg)), 0)
                p.finish()
            finally:
                p.close()

        def read_all(pid):
            """Read and check the stream on the fly (nothing kept: RSS measures the server)."""
            gate = cons.create_input_gate([(pid, 0, prod.address)])
            count = 0
            try:
                with RecordReader(gate) as r:
                    for rec in r:
                        assert rec == procs.record(0, count, procs.record_size(count, seg)), count
                        count += 1
                return count
            finally:
                gate.close()

        writer1, reader1 = Worker(produce, p1), Worker(read_all, p1.partition_id)
        writer1.start()
        reader1.start()

        cases = _fuzz_cases(seed=20240611, count=480)
        run = lambda c: _run_fuzz_case(prod.address, c)   # noqa: E731
        with ThreadPoolExecutor(max_workers=16) as pool:
            # phase 1, while partition 1 is written and read: the first 120 cases
            failures = [f for f in pool.map(run, cases[:120]) if f]
            writer1.finish(60)
            reader1.finish(60)
            assert writer1.error is None and reader1.error is None, (writer1.error, reader1.error)
            assert reader1.result == n       # the stream read during the fuzz is complete
            assert _wait_for(lambda: _num_server_connections(prod) == 0), _num_server_connections(prod)
            gc.collect()
            rss_0 = me.memory_info().rss
            # phase 2: the rest; the server's memory must not grow with the connections it dropped
            failures += [f for f in pool.map(run, cases[120:]) if f]
        assert not failures, f"{len(failures)} bad case(s):\n" + "\n".join(failures[:15])
        assert _wait_for(lambda: _num_server_connections(prod) == 0), _num_server_connections(prod)
        gc.collect()
        grown = me.memory_info().rss - rss_0
        assert grown < 24 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over {len(cases) - 120} connections"

        # the server survived: a new stream works
        p2 = prod.create_result_partition(1)
        writer2, reader2 = Worker(produce, p2), Worker(read_all, p2.partition_id)
        writer2.start()
        reader2.start()
        writer2.finish(60)
        reader2.finish(60)
        assert writer2.error is None and reader2.error is None, (writer2.error, reader2.error)
        assert reader2.result == n

        # nothing left behind
        assert _wait_for(lambda: _num_server_connections(prod) == 0), _num_server_connections(prod)
        assert _wait_for(lambda: prod.partition_manager.num_pending_requests == 0, 3)
        assert prod.partition_manager.get_unreleased_partitions() == []
        _assert_whole(prod, cons)
        assert _wait_for(lambda: _threads(me) == threads_1), (threads_1, _threads(me), threading.enumerate())
        assert _wait_for(lambda: _fds(me) == fds_1), (fds_1, _fds(me))
    assert _wait_for(lambda: _threads(me) == threads_0), (threads_0, _threads(me), threading.enumerate())
    assert _wait_for(lambda: _fds(me) == fds_0), (fds_0, _fds(me))


# -- 4. a client that never gives credit; huge declared frames -----------------------------


def test_zero_credit_client_is_back_pressured_and_gets_exactly_its_credit():
    """A raw client requests with initial credit 0 and never gives credit: the server only
    announces the backlog, sends no data buffer, and the writer blocks. AddCredit(3) then releases
    exactly 3 data buffers (the first ones, in order). The client's hang-up wakes the writer with
    ConsumerLostError naming the client: its consumer is lost."""
    n = 2000
    rec = 3000
    with NetworkEnvironment(SMALL) as prod:
        p = prod.create_result_partition(1)
        seg = prod.config.segment_size
        progress = [0]

        def produce():
            try:
                with RecordWriter(p, timeout=-1) as w:     # only full buffers
                    for i in range(n):
                        w.emit(procs.record(0, i, rec), 0)
                        progress[0] = i + 1
                p.finish()
            except BaseException as err:
                p.fail(err)        # as a failing task does
                raise
            finally:
                p.close()

        writer = Worker(produce)
        rid = os.urandom(16)
        decoder = P.FrameDecoder(side="client", max_buffer_size=seg, allocator=_client_allocator)
        messages = []

        def read_for(seconds):
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                s.settimeout(left)
                try:
                    data = s.recv(65536)
                except TimeoutError:
                    break
                assert data, "the server closed the connection"
                messages.extend(decoder.feed(data))

        try:
            with _connect(prod.address) as s:
                s.sendall(P.encode_partition_request(p.partition_id.to_bytes(), 0, 0, rid, 0))
                writer.start()
                stalled_at = _wait_stalled(progress)
                read_for(0.2)
                assert stalled_at < n
                assert messages and all(type(m) is P.BacklogAnnouncement and m.receiver_id == rid
                                        for m in messages), messages[:5]
                assert all(m.backlog > 0 for m in messages)

                s.sendall(P.encode_add_credit(3, rid))
                read_for(0.5)
                data = [m for m in messages if type(m) is P.BufferResponse]
                assert [m.data_type for m in data] == [DataType.DATA_BUFFER] * 3
                assert [m.sequence_number for m in data] == [0, 1, 2]
                assert all(m.receiver_id == rid and m.size == seg for m in data)
                stream = b"".join(m.buffer.to_bytes() for m in data)
                assert stream[:4 + rec] == struct.pack(">i", rec) + procs.record(0, 0, rec)
                client = s.getsockname()[:2]
                blocked_at = progress[0]
            writer.finish(20)          # the hang-up released the subpartition: the writer fails
            err = writer.error
            assert isinstance(err, ConsumerLostError), repr(err)
            assert err.subpartition == 0
            assert err.consumer == f"remote consumer {client[0]}:{client[1]} (receiver {rid.hex()})"
            assert "its connection was closed or reset" in err.reason, err.reason
            assert p.failure_cause is err
            assert progress[0] < n and p.num_records_out == progress[0] >= blocked_at
            _assert_whole(prod)
            assert _wait_for(lambda: _num_server_connections(prod) == 0)
            assert prod.partition_manager.get_unreleased_partitions() == []
        finally:
            decoder.close()
            _recycle_all(messages)


def test_huge_declared_frame_length_is_not_allocated_and_dropped():
    """Request frames up to ``flinknet.network.max-request-frame-length`` are accepted, but the
    server stages only the bytes that arrive: connections declaring 120 MB frames and sending
    64 KiB cost no more than that; one byte more than the maximum is fatal; hang-ups are
    dropped."""
    max_len = 128 * 2**20
    opts = dict(SMALL, **{"flinknet.network.max-request-frame-length": "128mb"})
    me = psutil.Process()
    with NetworkEnvironment(opts) as prod:
        gc.collect()
        rss_0 = me.memory_info().rss
        socks = []
        try:
            for i in range(6):
                s = _connect(prod.address)
                socks.append(s)
                length = max_len if i == 0 else 120 * 2**20
                s.sendall(HDR.pack(length, MAGIC, 3) + os.urandom(64 * 1024))   # TaskEventRequest
            assert _wait_for(lambda: _num_server_connections(prod) == 6)
            time.sleep(0.3)
            # still open: the server waits for the rest of the body
            for s in socks:
                s.settimeout(0.05)
                with pytest.raises((socket.timeout, TimeoutError)):
                    s.recv(1)
            gc.collect()
            grown = me.memory_info().rss - rss_0
            assert grown < 30 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB for 6 huge frame headers"

            # the server still serves while they hang
            p = prod.create_result_partition(1)
            with NetworkEnvironment(SMALL) as cons:
                gate = cons.create_input_gate([(p.partition_id, 0, prod.address)])
                with RecordWriter(p, timeout=0) as w:
                    for i in range(50):
                        w.emit(b"%d" % i, 0)
                p.finish()
                p.close()
                with RecordReader(gate) as r:
                    assert list(r) == [b"%d" % i for i in range(50)]
                gate.close()
                _assert_whole(cons)
        finally:
            for s in socks:
                s.close()
        assert _wait_for(lambda: _num_server_connections(prod) == 0)

        # one byte over the maximum: fatal at the header
        with _connect(prod.address) as s:
            s.sendall(HDR.pack(max_len + 1, MAGIC, 3))
            how, messages = _read_reply(s, 5.0)
        assert how in ("closed", "reset")
        assert [(type(m), m.receiver_id) for m in messages] in ([], [(P.ErrorResponse, None)])
        assert _wait_for(lambda: _num_server_connections(prod) == 0)
        _assert_whole(prod)


# -- 5. bugs found by fault injection ------------------------------------------------------


def test_failing_message_handler_answers_and_closes_the_connection():
    """A client message whose handling raises (here ResumeConsumption for a subpartition that is
    not blocked: IllegalStateError "Should be blocked by checkpoint.") must be answered with an
    ErrorResponse and/or close the connection, as Flink's server handler does (respondWithError).

    Regression (found by this suite, fixed): ServerConnection._on_readable lets the exception escape to the I/O loop's guard: the
    connection stays open, nothing is answered, and the rest of the decoded messages are dropped
    (the AddCredit for an unknown receiver after it, itself fatal, is never seen)."""
    with NetworkEnvironment(SMALL) as prod:
        p = prod.create_result_partition(1)
        rid = os.urandom(16)
        with _connect(prod.address) as s:
            s.sendall(P.encode_partition_request(p.partition_id.to_bytes(), 0, 0, rid, 2)
                      + P.encode_resume_consumption(rid)
                      + P.encode_add_credit(1, os.urandom(16)))
            how, messages = _read_reply(s, 3.0, stop_on_error_for=rid)
        p.close()
        assert how != "timeout", "the server neither answered nor closed the connection"
        assert _wait_for(lambda: _num_server_connections(prod) == 0)
        _assert_whole(prod)


def test_fatal_error_is_not_written_inside_a_partially_sent_frame():
    """When a bad frame arrives while a BufferResponse is half-written (the kernel's send buffer
    was full), the fatal ErrorResponse must go after that frame or not at all.

    Regression (found by this suite, fixed): ServerConnection._send_fatal writes the ErrorResponse straight to the socket, ahead of
    the rest of the queued frame in ``self.out``: its bytes land inside the payload of the
    half-sent frame, the client's decoder reads them as payload (or as a corrupt header) and never
    sees the error.

    The Python I/O thread's send queue is inspected, so the native engine is off here; the engine
    writes control frames only between whole BufferResponses (``_flush_server``)."""
    with NetworkEnvironment({**SMALL, "flinknet.network.native-io": "false"}) as prod:
        p = prod.create_result_partition(1)
        stop = threading.Event()

        def produce():
            try:
                with RecordWriter(p, timeout=-1) as w:
                    i = 0
                    while not stop.is_set():
                        w.emit(procs.record(0, i, 3000), 0)
                        i += 1
            finally:
                p.close()

        writer = Worker(produce)
        writer.start()
        hold, held = threading.Event(), threading.Event()
        data = bytearray()
        try:
            with _connect(prod.address) as s:
                rid = os.urandom(16)
                s.sendall(P.encode_partition_request(p.partition_id.to_bytes(), 0, 0, rid, 1 << 30))

                def half_sent():   # the head of the send queue is the rest of a frame
                    if len(prod.server.connections) != 1:
                        return False   # not adopted yet: the handshake thread hands it over
                    (conn,) = prod.server.connections
                    return bool(conn.out) and (conn.out[0][1] > 0 or conn.out[0][2] is not None)
                assert _wait_for(lambda: prod.loop.run_sync(half_sent), 10), "the server never blocked"

                def block_loop():
                    held.set()
                    hold.wait(10)
                prod.loop.call_soon_threadsafe(block_loop)   # the I/O thread waits ...
                assert held.wait(5)
                s.sendall(b"\0" * P.FRAME_HEADER_LENGTH)     # ... a bad frame (length 0) arrives ...
                s.settimeout(0.3)
                try:                                        # ... and the kernel has room again
                    while chunk := s.recv(1 << 20):
                        data += chunk
                except TimeoutError:
                    pass
                hold.set()
                s.settimeout(5)
                try:
                    while chunk := s.recv(1 << 20):
                        data += chunk
                except ConnectionResetError:
                    pass
        finally:
            hold.set()
            stop.set()
            writer.finish(20)
        error = P.encode_error_response(
            "CorruptFrameError", "frame length 0 is smaller than the frame header", None)
        decoder = P.FrameDecoder(side="client", max_buffer_size=1 << 20)
        messages = decoder.feed(bytes(data))
        ended_in_frame = decoder.in_frame
        decoder.close()
        _recycle_all(messages)
        if error in data:
            assert type(messages[-1]) is P.ErrorResponse and not ended_in_frame, (
                "the fatal ErrorResponse was written inside another frame")
        _assert_whole(prod)
        assert _wait_for(lambda: _num_server_connections(prod) == 0)


def test_fatal_error_does_not_overtake_an_earlier_answer():
    """Answers go out in order: the ErrorResponse for a bad PartitionRequest comes before the
    fatal ErrorResponse that a later bad message (AddCredit for the receiver that was refused)
    causes, as Netty's ordered writes guarantee in Flink.

    BUG (the same root cause as the test above): ServerConnection._send_fatal writes the fatal
    error straight to the socket and close() then drops ``self.out``, where the first answer was
    still queued: the client never learns why its request failed."""
    with NetworkEnvironment(SMALL) as prod:
        rid = os.urandom(16)
        with _connect(prod.address) as s:
            s.sendall(P.encode_partition_request(_invalid_pid(random.Random(7)), 0, 0, rid, 2)
                      + P.encode_add_credit(1, rid))
            how, messages = _read_reply(s, 5.0)
        assert how in ("closed", "reset")
        assert [(type(m).__name__, m.receiver_id) for m in messages] == [
            ("ErrorResponse", rid), ("ErrorResponse", None)], messages
        assert messages[0].error_type == "ValueError"
        assert _wait_for(lambda: _num_server_connections(prod) == 0)
        _assert_whole(prod)


def test_idle_connections_do_not_lock_out_consumers():
    """Connections that never send their HELLO (a port scanner, a stuck peer, a slowloris) must
    not keep consumers out: they are dropped after the handshake timeout, and a consumer
    connecting meanwhile is served (at the latest once they are gone).

    Regression (found by this suite, fixed): TransportServer._on_accept (flinknet/transport/server.py) accepted at most
    32 handshaking connections and *closed* every connection beyond that: 32 silent sockets made
    every consumer fail at once with RemoteTransportError (connection reset during the
    handshake), for as long as they were renewed. Handshakes now run on the I/O thread without a
    thread each (see test_security.py for 300 stalled peers)."""
    opts = dict(SMALL, **{"flinknet.network.handshake-timeout": "1 s"})
    with NetworkEnvironment(opts) as prod, NetworkEnvironment(SMALL) as cons:
        p = prod.create_result_partition(1)
        idle = []
        try:
            for _ in range(64):
                idle.append(socket.create_connection(prod.address, timeout=10))
            time.sleep(0.2)
            gate = cons.create_input_gate([(p.partition_id, 0, prod.address)])
            with RecordWriter(p, timeout=0) as w:
                for i in range(10):
                    w.emit(b"%d" % i, 0)
            p.finish()
            p.close()

            def consume():
                with RecordReader(gate) as r:
                    return list(r)

            reader = Worker(consume)
            reader.start()
            reader.finish(10)
            assert reader.error is None, repr(reader.error)
            assert reader.result == [b"%d" % i for i in range(10)]
            gate.close()
        finally:
            for s in idle:
                s.close()
        _assert_whole(prod, cons)
        assert _wait_for(lambda: _num_server_connections(prod) == 0)


def test_late_messages_for_a_failed_reader_do_not_fail_the_connection():
    """A producer fails: the server answers its receiver with an ErrorResponse and drops the
    reader. An AddCredit the client sent before it saw that answer must be dropped, not treated
    as a protocol violation that closes the connection every other channel shares (as Flink keeps
    a failed reader until the client cancels it). This race made
    test_producer_failure_fails_only_its_channel fail now and then."""
    with NetworkEnvironment(SMALL) as prod:
        bad = prod.create_result_partition(1)
        good = prod.create_result_partition(1)
        rid_bad, rid_good = os.urandom(16), os.urandom(16)
        with _connect(prod.address) as s:
            s.sendall(P.encode_partition_request(bad.partition_id.to_bytes(), 0, 0, rid_bad, 2)
                      + P.encode_partition_request(good.partition_id.to_bytes(), 0, 0, rid_good, 2))
            assert _wait_for(lambda: bad.subpartitions[0].has_view and good.subpartitions[0].has_view)
            bad.fail(ValueError("producer failed on purpose"))
            how, messages = _read_reply(s, 5.0, stop_on_error_for=rid_bad)
            assert how == "error", (how, messages)
            # the client had not seen the error yet: credit and a resume for the failed receiver
            s.sendall(P.encode_add_credit(1, rid_bad) + P.encode_resume_consumption(rid_bad))
            good.emit_record(b"still served", 0)
            good.flush(0)
            how, messages = _read_reply(s, 2.0)
            assert how == "timeout", (how, messages)   # the connection stayed open
            data = [m for m in messages if type(m) is P.BufferResponse]
            assert [m.receiver_id for m in data] == [rid_good]
            # after CancelPartitionRequest the id is forgotten: a message for it is fatal again
            s.sendall(P.encode_cancel_partition_request(rid_bad) + P.encode_add_credit(1, rid_bad))
            how, messages = _read_reply(s, 5.0)
            assert how in ("closed", "reset")
            assert [m.receiver_id for m in messages if type(m) is P.ErrorResponse] == [None]
        good.release()
        good.close()
        bad.close()
        assert _wait_for(lambda: _num_server_connections(prod) == 0)
        _assert_whole(prod)
