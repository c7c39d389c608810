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

__all__ = ["HandshakeError", "PROTOCOL_VERSION", "HandshakeConfig", "client_handshake",
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


def _reject(sock: socket.socket, status: int, version: int, flags: int, detail: str) -> None:
    reason = f"{_REASONS[status]}: {detail}".encode()[:1024]
    try:
        sock.sendall(_WELCOME.pack(MAGIC, status, version, flags, bytes(NONCE))
                     + struct.pack(">H", len(reason)) + reason)
    except OSError:
        pass


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


def server_handshake(sock: socket.socket, cfg: HandshakeConfig, address: tuple[Any, ...]) -> socket.socket:
    """Run the server's side on an accepted blocking socket (on a handshake thread, never the I/O
    thread); returns the socket to use. Raises :class:`HandshakeError` after telling the peer why."""
    sock.settimeout(cfg.timeout)
    peer = f"{address[0]}:{address[1]}"
    try:
        hello = _recv_exact(sock, _HELLO.size)
        magic, version, flags, client_nonce = _HELLO.unpack(hello)
        if magic != MAGIC:
            raise HandshakeError(f"'{peer}' is not a flinknet client (bad handshake magic)")
        if version != PROTOCOL_VERSION:
            _reject(sock, BAD_VERSION, PROTOCOL_VERSION, cfg.flags,
                    f"this server speaks version {PROTOCOL_VERSION}, the client {version}")
            raise HandshakeError(f"'{peer}' speaks protocol version {version}")
        if flags != cfg.flags:
            detail = (f"shared secret {'on' if cfg.secret else 'off'}, TLS "
                      f"{'on' if cfg.ssl_enabled else 'off'} at the server")
            _reject(sock, MISMATCH, PROTOCOL_VERSION, cfg.flags, detail)
            raise HandshakeError(f"'{peer}' has a different security configuration (flags {flags})")
        server_nonce = os.urandom(NONCE)
        sock.sendall(_WELCOME.pack(MAGIC, OK, PROTOCOL_VERSION, cfg.flags, server_nonce))
        if cfg.secret:
            proof = _recv_exact(sock, 32)
            if not hmac.compare_digest(proof, _proof(cfg.secret, b"flinknet-client", server_nonce,
                                                     client_nonce)):
                reason = b"authentication failed: wrong shared secret"
                try:
                    sock.sendall(bytes([AUTH_FAILED]) + struct.pack(">H", len(reason)) + reason)
                except OSError:
                    pass
                raise HandshakeError(f"'{peer}' failed the shared-secret challenge")
            sock.sendall(bytes([OK]) + _proof(cfg.secret, b"flinknet-server", client_nonce, server_nonce))
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
