"""The credit-based TCP transport between network environments (Flink §10, §11)."""

from flinknet.transport.client import (
    ClientConnection,
    ConnectionManager,
    LocalTransportError,
    RemoteTransportError,
    TransportError,
)
from flinknet.transport.eventloop import IOThread
from flinknet.transport.handshake import PROTOCOL_VERSION, HandshakeConfig, HandshakeError
from flinknet.transport.server import ServerConnection, TransportServer

__all__ = [
    "ClientConnection",
    "ConnectionManager",
    "HandshakeConfig",
    "HandshakeError",
    "IOThread",
    "LocalTransportError",
    "PROTOCOL_VERSION",
    "RemoteTransportError",
    "ServerConnection",
    "TransportError",
    "TransportServer",
]
