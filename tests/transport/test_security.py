"""The handshake (protocol version, shared-secret challenge-response) and mutual TLS.

A peer that fails either is dropped before a single frame is read; the server keeps serving
everyone else; nothing leaks.
"""

from __future__ import annotations

import pathlib
import socket
import ssl
import struct
import threading
import time

import pytest

from flinknet.consumer import RecordReader
from flinknet.environment import NetworkEnvironment
from flinknet.transport import RemoteTransportError
from flinknet.transport.handshake import (
    PROTOCOL_VERSION,
    HandshakeConfig,
    HandshakeError,
    client_handshake,
)
from flinknet.writer import RecordWriter

CERTS = pathlib.Path(__file__).parent / "certs"
SMALL = {"taskmanager.memory.segment-size": "4kb", "taskmanager.memory.network.max": "1mb"}
TLS = {"security.ssl.internal.enabled": True,
       "security.ssl.internal.keystore": str(CERTS / "node.pem"),
       "security.ssl.internal.truststore": str(CERTS / "ca.pem")}
ROGUE = {"security.ssl.internal.enabled": True,
         "security.ssl.internal.keystore": str(CERTS / "rogue-node.pem"),
         "security.ssl.internal.truststore": str(CERTS / "ca.pem")}


def _exchange(prod, cons, n=2000, size=300, inspect=None):
    """Write ``n`` records of ``size`` bytes at ``prod``; read them at ``cons``; check them.
    ``inspect()`` runs once the first record was read, before the partition is finished (the
    channel's connection is open)."""
    p = prod.create_result_partition(1)
    gate = cons.create_input_gate([(p.partition_id, 0, prod.address)])
    records = [i.to_bytes(4, "big") * (size // 4) for i in range(n)]

    first_read = threading.Event()

    def write():
        with RecordWriter(p, timeout=1) as w:
            for r in records:
                w.emit(r, 0)
            if inspect is not None:
                first_read.wait(30)
        p.finish()
        p.close()

    t = threading.Thread(target=write)
    t.start()
    try:
        with RecordReader(gate) as reader:
            got = []
            for record in reader:
                got.append(record)
                if len(got) == 1 and inspect is not None:
                    inspect()
                    first_read.set()
    finally:
        first_read.set()
        t.join(30)
        gate.close()
    assert got == records


def _wait_whole(*envs):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all(e.network_buffer_pool.is_whole for e in envs):
        time.sleep(0.01)
    for e in envs:
        assert e.network_buffer_pool.is_whole


def _wait_failed(server, count):
    deadline = time.monotonic() + 5
    while server.handshakes_failed < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.handshakes_failed >= count


def test_default_handshake_then_frames():
    with NetworkEnvironment(SMALL) as prod, NetworkEnvironment(SMALL) as cons:
        _exchange(prod, cons)
        _wait_whole(prod, cons)
        assert prod.server.handshakes_failed == 0


def test_shared_secret_both_sides():
    opts = dict(SMALL, **{"flinknet.network.shared-secret": "s3cret"})
    with NetworkEnvironment(opts) as prod, NetworkEnvironment(opts) as cons:
        _exchange(prod, cons)
        _wait_whole(prod, cons)


@pytest.mark.parametrize("client_secret, message", [
    ("wrong", "authentication failed"),
    ("", "configuration mismatch"),
])
def test_wrong_or_missing_secret_is_refused_and_server_keeps_serving(client_secret, message):
    good = dict(SMALL, **{"flinknet.network.shared-secret": "s3cret"})
    bad = dict(SMALL, **{"flinknet.network.shared-secret": client_secret})
    with NetworkEnvironment(good) as prod, NetworkEnvironment(bad) as intruder, \
            NetworkEnvironment(good) as friend:
        p = prod.create_result_partition(1)
        gate = intruder.create_input_gate([(p.partition_id, 0, prod.address)])
        with pytest.raises(RemoteTransportError, match=message) as info:
            gate.get_next(timeout=10)
        assert f"{prod.address[1]}" in str(info.value)
        gate.close()
        _wait_failed(prod.server, 1)
        assert not prod.server.connections        # dropped before any frame
        p.fail(RuntimeError("unused"))
        _exchange(prod, friend)                   # everyone else is still served
        _wait_whole(prod, intruder, friend)


def test_server_without_secret_refuses_client_with_one():
    with NetworkEnvironment(SMALL) as prod, \
            NetworkEnvironment(dict(SMALL, **{"flinknet.network.shared-secret": "x"})) as cons:
        p = prod.create_result_partition(1)
        gate = cons.create_input_gate([(p.partition_id, 0, prod.address)])
        with pytest.raises(RemoteTransportError, match="configuration mismatch"):
            gate.get_next(timeout=10)
        gate.close()
        p.fail(RuntimeError("unused"))
        _wait_whole(prod, cons)


def test_client_rejects_server_that_does_not_know_the_secret():
    """Mutual: a fake server that accepts any proof cannot produce its own."""
    lst = socket.create_server(("127.0.0.1", 0))
    addr = lst.getsockname()

    def fake_server():
        conn, _ = lst.accept()
        with conn:
            conn.recv(43)
            conn.sendall(struct.pack(">8sBHB32s", b"flinknet", 0, PROTOCOL_VERSION, 1, b"\x07" * 32))
            conn.recv(32)
            conn.sendall(b"\x00" + b"\x00" * 32)   # "ok", with a made-up proof
            conn.recv(1)

    t = threading.Thread(target=fake_server)
    t.start()
    try:
        with socket.create_connection(addr, timeout=5) as s:
            with pytest.raises(HandshakeError, match="does not know the shared secret"):
                client_handshake(s, HandshakeConfig("s3cret"), addr)
    finally:
        t.join(10)
        lst.close()


@pytest.mark.parametrize("hello, status", [
    (struct.pack(">8sHB32s", b"flinknet", 99, 0, b"\x00" * 32), 1),   # unknown version
    (struct.pack(">8sHB32s", b"flinknet", PROTOCOL_VERSION, 1, b"\x00" * 32), 2),  # flags
])
def test_bad_hello_gets_a_reason_then_close(hello, status):
    with NetworkEnvironment(SMALL) as prod:
        with socket.create_connection(prod.address, timeout=10) as s:
            s.sendall(hello)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        magic, got_status, version, _flags, _nonce = struct.unpack_from(">8sBHB32s", data)
        assert (magic, got_status, version) == (b"flinknet", status, PROTOCOL_VERSION)
        (n,) = struct.unpack_from(">H", data, 44)
        assert len(data) == 46 + n and n > 0
        _wait_failed(prod.server, 1)
        assert not prod.server.connections


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\x00" * 20,           # another protocol
    b"\x00\x00\x00\x1d\xba\xdc\x0f\xfe\x06" + b"\x01" * 40,          # frames without a handshake
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a TLS ClientHello
])
def test_garbage_before_the_handshake_is_dropped_without_reading_frames(garbage):
    with NetworkEnvironment(SMALL) as prod, NetworkEnvironment(SMALL) as cons:
        with socket.create_connection(prod.address, timeout=10) as s:
            s.sendall(garbage)
            try:
                while s.recv(4096):
                    pass
            except ConnectionResetError:   # closed with our bytes unread: a reset
                pass
        _wait_failed(prod.server, 1)
        assert not prod.server.connections
        _exchange(prod, cons)


def test_silent_peer_is_dropped_after_the_handshake_timeout():
    opts = dict(SMALL, **{"flinknet.network.handshake-timeout": "300 ms"})
    with NetworkEnvironment(opts) as prod:
        t0 = time.monotonic()
        with socket.create_connection(prod.address, timeout=10) as s:
            assert s.recv(1) == b""                  # the server gives up on us
        assert time.monotonic() - t0 < 5
        _wait_failed(prod.server, 1)


def test_stalled_handshakes_cost_no_thread_and_do_not_delay_a_legitimate_peer():
    """300 peers that connect and never send their HELLO: each costs one socket until its own
    deadline and no thread; a legitimate peer connecting meanwhile is served at once, not after
    their timeout (30 s here); then they are dropped at their deadline."""
    opts = dict(SMALL, **{"flinknet.network.handshake-timeout": "30 s"})
    with NetworkEnvironment(opts) as prod, NetworkEnvironment(SMALL) as cons:
        threads = threading.active_count()
        socks = [socket.create_connection(prod.address, timeout=10) for _ in range(300)]
        try:
            deadline = time.monotonic() + 10
            while prod.server.num_handshaking < 300 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert prod.server.num_handshaking == 300
            assert threading.active_count() <= threads + 1     # no thread per handshake
            t0 = time.monotonic()
            _exchange(prod, cons, n=100)
            served = time.monotonic() - t0
            assert served < 15, served          # well before the stalled peers' 30 s deadline
            assert prod.server.num_handshaking == 300          # the stalled ones still wait
        finally:
            for s in socks:
                s.close()
        _wait_failed(prod.server, 300)
        assert prod.server.num_handshaking == 0
        _wait_whole(prod, cons)


def test_at_the_cap_the_oldest_handshake_is_dropped():
    opts = dict(SMALL, **{"flinknet.network.handshake-timeout": "30 s"})
    with NetworkEnvironment(opts) as prod, NetworkEnvironment(SMALL) as cons:
        prod.server._max_handshakes = 8
        socks = [socket.create_connection(prod.address, timeout=10) for _ in range(20)]
        try:
            _wait_failed(prod.server, 12)
            # (the I/O thread counts a drop before it adds the newcomer that caused it: the
            # snapshot read here may fall between the two)
            deadline = time.monotonic() + 5
            while prod.server.num_handshaking != 8 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert prod.server.num_handshaking == 8
            assert socks[0].recv(1) == b""             # the oldest were closed
            _exchange(prod, cons, n=100)                 # and a real peer gets in
        finally:
            for s in socks:
                s.close()
        _wait_whole(prod, cons)


def test_a_flood_of_garbage_connections_does_not_flood_the_log(caplog):
    with NetworkEnvironment(SMALL) as prod, NetworkEnvironment(SMALL) as cons:
        with caplog.at_level("WARNING", logger="flinknet.transport.server"):
            for _ in range(500):
                with socket.create_connection(prod.address, timeout=10) as s:
                    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(40))
            _wait_failed(prod.server, 500)
            _exchange(prod, cons, n=100)
        lines = [r for r in caplog.records if r.name == "flinknet.transport.server"]
        assert 1 <= len(lines) <= 12, len(lines)       # 10 per 10 s, then one summary line
        _wait_whole(prod, cons)


def test_out_of_descriptors_drops_a_handshake_instead_of_spinning():
    """accept() failing with EMFILE leaves the listening socket readable: the server frees the
    oldest handshake's socket and goes on (with no handshake to drop it pauses accepting)."""
    import resource
    import subprocess
    import sys

    code = """
import os, resource, socket, time
from flinknet.environment import NetworkEnvironment
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
with NetworkEnvironment({"taskmanager.memory.segment-size": "4kb",
                         "taskmanager.memory.network.max": "1mb",
                         "flinknet.network.handshake-timeout": "30 s"}) as env:
    server = env.server
    used = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 40, hard))
    socks = []
    for _ in range(60):     # each costs two descriptors here: the client's and the accepted one
        try:
            socks.append(socket.create_connection(env.address, timeout=5))
        except OSError:
            break
        # paced: the server accepts (or drops) each connection before the next one, so that it
        # meets EMFILE holding handshakes (a client that ran ahead would take every descriptor
        # first and leave the server nothing to drop)
        deadline = time.monotonic() + 10
        while (server.num_handshaking + server.handshakes_failed < len(socks)
               and time.monotonic() < deadline):
            time.sleep(0.005)
        if server.handshakes_failed and not server.num_handshaking:
            break           # every handshake dropped for a client socket: accepting is paused
    time.sleep(0.5)
    cpu0 = time.process_time(); time.sleep(1.0); cpu = time.process_time() - cpu0
    print(env.server.handshakes_failed > 0, cpu < 0.5, env.server.num_handshaking)
    for s in socks:
        s.close()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    failed, idle, _ = out.stdout.split()
    assert failed == "True", out.stdout
    assert idle == "True", out.stdout          # the I/O thread does not spin on EMFILE
    assert resource.getrlimit(resource.RLIMIT_NOFILE)   # (this process's limit untouched)


def test_dropped_connection_log_summarises_what_it_left_out(caplog):
    from flinknet.transport.server import _DropLog

    drop_log = _DropLog(limit=2, interval=0.05)
    with caplog.at_level("WARNING", logger="flinknet.transport.server"):
        for i in range(7):
            drop_log.dropped(("127.0.0.1", i), "garbage")
        time.sleep(0.06)
        drop_log.tick()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert "dropped 5 more connections" in messages[-1]


def test_peer_that_stalls_inside_tls_is_dropped_at_its_deadline_and_others_are_served():
    """With TLS, a peer that completes flinknet's handshake and then never sends its TLS hello
    is driven by the I/O thread like any other handshake: dropped at its deadline."""
    opts = dict(SMALL, **TLS, **{"flinknet.network.handshake-timeout": "1 s"})
    cfg = HandshakeConfig(ssl_enabled=False)
    with NetworkEnvironment(opts) as prod, NetworkEnvironment(opts) as cons:
        from flinknet.transport import handshake as hs_module

        s = socket.create_connection(prod.address, timeout=10)
        try:
            nonce = bytes(hs_module.NONCE)
            s.sendall(hs_module._HELLO.pack(hs_module.MAGIC, PROTOCOL_VERSION, 2, nonce))
            welcome = s.recv(hs_module._WELCOME.size)
            assert welcome[8] == hs_module.OK
            _exchange(prod, cons, n=200)                  # served while we stall inside TLS
            _wait_failed(prod.server, 1)
            assert s.recv(1) == b""
        finally:
            s.close()
        assert cfg.flags == 0
        _wait_whole(prod, cons)


# -- TLS ------------------------------------------------------------------------------------

def test_mutual_tls_exchange():
    opts = dict(SMALL, **TLS)
    with NetworkEnvironment(opts) as prod, NetworkEnvironment(opts) as cons:
        def inspect():
            conn = next(iter(prod.server.connections))
            assert isinstance(conn.sock, ssl.SSLSocket)
            assert conn.sock.getpeercert()["subject"] == ((("commonName", "flinknet test node"),),)

        _exchange(prod, cons, n=3000, size=5000, inspect=inspect)   # records spanning buffers
        _wait_whole(prod, cons)


def test_mutual_tls_with_secret_and_tcp_backpressure():
    opts = dict(SMALL, **TLS, **{"flinknet.network.shared-secret": "s3cret",
                                 "flinknet.network.flow-control": "tcp"})
    with NetworkEnvironment(opts) as prod, NetworkEnvironment(opts) as cons:
        _exchange(prod, cons, n=3000, size=2000)
        _wait_whole(prod, cons)


@pytest.mark.parametrize("prod_opts, cons_opts", [
    (TLS, ROGUE),            # the client presents a certificate the server does not trust
    (ROGUE, TLS),            # the server presents a certificate the client does not trust
])
def test_untrusted_certificate_is_refused(prod_opts, cons_opts):
    with NetworkEnvironment(dict(SMALL, **prod_opts)) as prod, \
            NetworkEnvironment(dict(SMALL, **cons_opts)) as cons, \
            NetworkEnvironment(dict(SMALL, **TLS)) as friend:
        p = prod.create_result_partition(1)
        gate = cons.create_input_gate([(p.partition_id, 0, prod.address)])
        with pytest.raises(RemoteTransportError, match="TLS|closed|reset|certificate"):
            gate.get_next(timeout=10)
        gate.close()
        _wait_failed(prod.server, 1)
        assert not prod.server.connections
        p.fail(RuntimeError("unused"))
        if prod_opts is TLS:
            _exchange(prod, friend)
        _wait_whole(prod, cons, friend)


def test_tls_on_one_side_only_is_a_mismatch():
    with NetworkEnvironment(dict(SMALL, **TLS)) as prod, NetworkEnvironment(SMALL) as cons:
        p = prod.create_result_partition(1)
        gate = cons.create_input_gate([(p.partition_id, 0, prod.address)])
        with pytest.raises(RemoteTransportError, match="configuration mismatch"):
            gate.get_next(timeout=10)
        gate.close()
        p.fail(RuntimeError("unused"))


def test_tls_misconfiguration_fails_before_allocating():
    with pytest.raises(ValueError, match="keystore"):
        NetworkEnvironment(dict(SMALL, **{"security.ssl.internal.enabled": True}))
    with pytest.raises(FileNotFoundError):
        NetworkEnvironment(dict(SMALL, **dict(TLS, **{"security.ssl.internal.truststore": "/nonexistent.pem"})))
