"""What a connection does before its first frame: flinknet's handshake, then optional TLS.

Flink's Netty stack goes straight to frames (with TLS in the pipeline when enabled). flinknet puts
a short handshake first so that a peer speaking another protocol version, or a stranger without the
cluster's shared secret, is dropped before a single frame is parsed:

1. client → server ``HELLO``: ``b"flinknet"``, version ``u16``, flags ``u8`` (bit 0: a shared
   secret is configured, bit 1: TLS follows), 32-byte client nonce (43 bytes).
2. server → client ``WELCOME``: ``b"flinknet"``, status ``u8``, version ``u16``, flags ``u8``,
   32-byte server nonce (44 bytes). A status other than 0 is followed by ``u16`` length and a UTF-8
   reason, and the server closes.
3. With a shared secret (both sides must have one; bit 0 must agree), a mutual challenge-response:
   the client sends ``HMAC-SHA256(secret, "flinknet-client" | server nonce | client nonce)``; the
   server answers status ``u8`` and, if 0, ``HMAC-SHA256(secret, "flinknet-server" | client nonce |
   server nonce)``, which the client checks. The secret itself never crosses the wire and a
   recorded exchange cannot be replayed (fresh nonces on both sides).
4. With TLS (``security.ssl.internal.enabled``, both sides must agree; bit 1), both ends wrap the
   socket in TLS with mutual authentication: each presents the certificate of its keystore and
   requires the peer's to be signed by its truststore (Flink's internal SSL; host names are not
   checked, as in Flink, since internal certificates identify the cluster, not a host).

Status codes: 0 ok, 1 protocol version not supported, 2 configuration mismatch (secret or TLS on
one side only), 3 authentication failed, 4 malformed handshake.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import ssl
import struct
from collections.abc import Mapping
from typing import Any, Self, cast

from flinknet.errors import HandshakeError

__all__ = ["HandshakeError", "PROTOCOL_VERSION", "HandshakeConfig", "ServerHandshake", "client_handshake",
           "server_handshake", "ssl_context"]

PROTOCOL_VERSION = 1
MAGIC = b"flinknet"
NONCE = 32
_HELLO = struct.Struct(">8sHB32s")
_WELCOME = struct.Struct(">8sBHB32s")
_FLAG_SECRET = 1
_FLAG_TLS = 2

OK, BAD_VERSION, MISMATCH, AUTH_FAILED, MALFORMED = range(5)
_REASONS = {BAD_VERSION: "protocol version not supported", MISMATCH: "configuration mismatch",
            AUTH_FAILED: "authentication failed", MALFORMED: "malformed handshake"}


class HandshakeConfig:
    """The handshake's settings: shared secret, TLS contexts, timeout (from a NetworkConfig)."""

    def __init__(self, shared_secret: str | bytes = b"", ssl_enabled: bool = False,
                 keystore: str = "", truststore: str = "", timeout: float = 10.0):
        if isinstance(shared_secret, str):
            shared_secret = shared_secret.encode()
        if not isinstance(shared_secret, bytes):
            raise TypeError("shared_secret must be str or bytes")
        if not timeout > 0:
            raise ValueError(f"the handshake timeout must be > 0, got {timeout}")
        self.secret = shared_secret
        self.timeout = float(timeout)
        self.ssl_enabled = bool(ssl_enabled)
        self.server_context: ssl.SSLContext | None = None
        self.client_context: ssl.SSLContext | None = None
        if self.ssl_enabled:
            if not keystore or not truststore:
                raise ValueError("security.ssl.internal.enabled needs security.ssl.internal.keystore "
                                 "(PEM certificate chain and key) and .truststore (PEM CA certificates)")
            for path in (keystore, truststore):
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"SSL file not found: {path}")
            self.server_context = ssl_context(ssl.PROTOCOL_TLS_SERVER, keystore, truststore)
            self.client_context = ssl_context(ssl.PROTOCOL_TLS_CLIENT, keystore, truststore)

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> Self:
        """The settings of a :class:`~flinknet.NetworkConfig` (``flinknet.network.shared-secret``,
        ``security.ssl.internal.*``, ``flinknet.network.handshake-timeout``)."""
        return cls(cast(str, config["flinknet.network.shared-secret"]),
                   cast(bool, config["security.ssl.internal.enabled"]),
                   cast(str, config["security.ssl.internal.keystore"]),
                   cast(str, config["security.ssl.internal.truststore"]),
                   cast(float, config["flinknet.network.handshake-timeout"]))

    @property
    def flags(self) -> int:
        """The HELLO / WELCOME flags this configuration announces."""
        return (_FLAG_SECRET if self.secret else 0) | (_FLAG_TLS if self.ssl_enabled else 0)


def ssl_context(purpose: int, keystore: str, truststore: str) -> ssl.SSLContext:
    """The TLS context of one side of the transport, as ``security.ssl.internal.*`` configures it.

    ``purpose`` is ``ssl.PROTOCOL_TLS_SERVER`` or ``ssl.PROTOCOL_TLS_CLIENT``; ``keystore`` is a PEM
    file with this node's certificate chain and private key, ``truststore`` a PEM file with the
    certificates it trusts. TLS 1.2 or later, and mutual: each side requires and verifies the
    other's certificate (against the truststore; host names are not checked, as in Flink's
    internal SSL).
    """
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(keystore)
    ctx.load_verify_locations(truststore)
    ctx.verify_mode = ssl.CERT_REQUIRED       # mutual: each side requires the other's certificate
    ctx.check_hostname = False
    return ctx


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise HandshakeError("the peer closed the connection during the handshake")
        data += chunk
    return bytes(data)


def _proof(secret: bytes, label: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(secret, label + first + second, hashlib.sha256).digest()


def client_handshake(sock: socket.socket, cfg: HandshakeConfig, address: tuple[Any, ...]) -> socket.socket:
    """Run the client's side on a connected blocking socket; returns the socket to use (TLS-wrapped
    when enabled). Raises :class:`HandshakeError` (the socket is then unusable)."""
    sock.settimeout(cfg.timeout)
    peer = f"{address[0]}:{address[1]}"
    try:
        nonce = os.urandom(NONCE)
        sock.sendall(_HELLO.pack(MAGIC, PROTOCOL_VERSION, cfg.flags, nonce))
        magic, status, version, flags, server_nonce = _WELCOME.unpack(_recv_exact(sock, _WELCOME.size))
        if magic != MAGIC:
            raise HandshakeError(f"'{peer}' is not a flinknet server (bad handshake magic)")
        if status != OK:
            (n,) = struct.unpack(">H", _recv_exact(sock, 2))
            reason = _recv_exact(sock, min(n, 1024)).decode(errors="replace")
            raise HandshakeError(f"'{peer}' refused the connection: {reason}")
        if version != PROTOCOL_VERSION or flags != cfg.flags:
            raise HandshakeError(f"'{peer}' answered with version {version}, flags {flags}")
        if cfg.secret:
            sock.sendall(_proof(cfg.secret, b"flinknet-client", server_nonce, nonce))
            (status,) = _recv_exact(sock, 1)
            if status != OK:
                (n,) = struct.unpack(">H", _recv_exact(sock, 2))
                reason = _recv_exact(sock, min(n, 1024)).decode(errors="replace")
                raise HandshakeError(f"'{peer}' refused the connection: {reason}")
            expected = _proof(cfg.secret, b"flinknet-server", nonce, server_nonce)
            if not hmac.compare_digest(_recv_exact(sock, 32), expected):
                raise HandshakeError(f"'{peer}' does not know the shared secret")
        if cfg.ssl_enabled:
            context = cfg.client_context
            if context is None:
                raise HandshakeError("TLS is enabled but the handshake configuration has no client context")
            try:
                sock = context.wrap_socket(sock, server_side=False)
            except (ssl.SSLError, ssl.CertificateError) as err:
                raise HandshakeError(f"TLS handshake with '{peer}' failed: {err}") from err
        return sock
    except TimeoutError as err:
        raise HandshakeError(f"the handshake with '{peer}' timed out after {cfg.timeout} s") from err
    except HandshakeError:
        raise
    except OSError as err:
        raise HandshakeError(f"the handshake with '{peer}' failed: {err}") from err


class ServerHandshake:
    """The server's side of the handshake (steps 1-3) as a state machine without I/O, so that the
    I/O thread can run many at once on non-blocking sockets without a thread per connection.

    Read :attr:`wanted` bytes (never more: with TLS the peer's TLS hello follows at once) and pass
    them to :meth:`feed`, which returns ``(reply, error)``: bytes to send (possibly empty), and a
    :class:`HandshakeError` when the peer is refused (send ``reply`` — the reason — then close).
    :attr:`done` turns True when the connection may carry frames (after TLS, if
    :attr:`needs_tls`). Every decision is taken on bytes already received; nothing is allocated
    for a field before it was checked.
    """

    __slots__ = ("cfg", "peer", "done", "_buf", "_state", "_client_nonce", "_server_nonce")

    def __init__(self, cfg: HandshakeConfig, peer: str):
        self.cfg = cfg
        self.peer = peer
        self.done = False
        self._buf = bytearray()
        self._state = "hello"
        self._client_nonce = b""
        self._server_nonce = b""

    @property
    def needs_tls(self) -> bool:
        """Whether TLS follows the handshake (step 4)."""
        return self.cfg.ssl_enabled

    @property
    def wanted(self) -> int:
        """Bytes to read before :meth:`feed` can decide (0 once done or failed)."""
        if self._state == "hello":
            return _HELLO.size - len(self._buf)
        if self._state == "proof":
            return 32 - len(self._buf)
        return 0

    def feed(self, data: bytes) -> tuple[bytes, HandshakeError | None]:
        """Consume ``data`` (at most :attr:`wanted` bytes); see the class docstring."""
        if len(data) > self.wanted:
            raise ValueError(f"fed {len(data)} bytes, {self.wanted} wanted")
        self._buf += data
        if self.wanted:
            return b"", None
        cfg, peer = self.cfg, self.peer
        if self._state == "hello":
            magic, version, flags, self._client_nonce = _HELLO.unpack(self._buf)
            self._buf.clear()
            if magic != MAGIC:
                return self._fail(b"", f"'{peer}' is not a flinknet client (bad handshake magic)")
            if version != PROTOCOL_VERSION:
                detail = f"this server speaks version {PROTOCOL_VERSION}, the client {version}"
                return self._fail(_rejection(BAD_VERSION, cfg.flags, detail),
                                  f"'{peer}' speaks protocol version {version}")
            if flags != cfg.flags:
                detail = (f"shared secret {'on' if cfg.secret else 'off'}, TLS "
                          f"{'on' if cfg.ssl_enabled else 'off'} at the server")
                return self._fail(_rejection(MISMATCH, cfg.flags, detail),
                                  f"'{peer}' has a different security configuration (flags {flags})")
            self._server_nonce = os.urandom(NONCE)
            welcome = _WELCOME.pack(MAGIC, OK, PROTOCOL_VERSION, cfg.flags, self._server_nonce)
            if cfg.secret:
                self._state = "proof"
            else:
                self._state = "done"
                self.done = True
            return welcome, None
        # the client's proof of the shared secret
        proof = bytes(self._buf)
        self._buf.clear()
        if not hmac.compare_digest(proof, _proof(cfg.secret, b"flinknet-client", self._server_nonce,
                                                 self._client_nonce)):
            reason = b"authentication failed: wrong shared secret"
            return self._fail(bytes([AUTH_FAILED]) + struct.pack(">H", len(reason)) + reason,
                              f"'{peer}' failed the shared-secret challenge")
        self._state = "done"
        self.done = True
        answer = _proof(cfg.secret, b"flinknet-server", self._client_nonce, self._server_nonce)
        return bytes([OK]) + answer, None

    def _fail(self, reply: bytes, message: str) -> tuple[bytes, HandshakeError]:
        self._state = "failed"
        return reply, HandshakeError(message)


def _rejection(status: int, flags: int, detail: str) -> bytes:
    reason = f"{_REASONS[status]}: {detail}".encode()[:1024]
    return (_WELCOME.pack(MAGIC, status, PROTOCOL_VERSION, flags, bytes(NONCE))
            + struct.pack(">H", len(reason)) + reason)


def server_handshake(sock: socket.socket, cfg: HandshakeConfig, address: tuple[Any, ...]) -> socket.socket:
    """Run the server's side on an accepted blocking socket (a blocking wrapper of
    :class:`ServerHandshake`, for tools and tests; the transport server drives the state machine
    on its I/O thread); returns the socket to use. Raises :class:`HandshakeError` after telling
    the peer why."""
    sock.settimeout(cfg.timeout)
    peer = f"{address[0]}:{address[1]}"
    hs = ServerHandshake(cfg, peer)
    try:
        while not hs.done:
            reply, error = hs.feed(_recv_exact(sock, hs.wanted))
            if error is not None:
                if reply:
                    try:
                        sock.sendall(reply)
                    except OSError:
                        pass
                raise error
            sock.sendall(reply)
        if cfg.ssl_enabled:
            context = cfg.server_context
            if context is None:
                raise HandshakeError("TLS is enabled but the handshake configuration has no server context")
            try:
                sock = context.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, ssl.CertificateError) as err:
                raise HandshakeError(f"TLS handshake with '{peer}' failed: {err}") from err
        return sock
    except TimeoutError as err:
        raise HandshakeError(f"the handshake with '{peer}' timed out after {cfg.timeout} s") from err
    except HandshakeError:
        raise
    except (OSError, struct.error) as err:
        raise HandshakeError(f"the handshake with '{peer}' failed: {err}") from err
