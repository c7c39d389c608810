"""The credit-based TCP transport between network environments (Flink's Netty-based network
stack: its ``NettyMessage`` frames, ``NettyServer`` / ``NettyClient`` and credit-based flow control)."""

from flinknet.errors import LocalTransportError, PeerLimitError, RemoteTransportError, TransportError
from flinknet.transport.client import ClientConnection, ConnectionManager
from flinknet.transport.eventloop import IOThread
from flinknet.transport.handshake import PROTOCOL_VERSION, HandshakeConfig, HandshakeError
from flinknet.transport.server import ServerConnection, ServerLimits, TransportServer

__all__ = [
    "ClientConnection",
    "ConnectionManager",
    "HandshakeConfig",
    "HandshakeError",
    "IOThread",
    "LocalTransportError",
    "PROTOCOL_VERSION",
    "PeerLimitError",
    "RemoteTransportError",
    "ServerConnection",
    "ServerLimits",
    "TransportError",
    "TransportServer",
]
