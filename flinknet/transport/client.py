"""The receiving side: one shared TCP connection per remote environment (Flink's
``PartitionRequestClientFactory`` and ``NettyPartitionRequestClient``).

:class:`ConnectionManager` (Flink's ``PartitionRequestClientFactory``) keeps one
:class:`ClientConnection` per remote address; concurrent callers wait for the same connect, a
failed connect is not cached, and connections are reference-counted by their channels. A
connection demultiplexes frames by receiver id to its :class:`~flinknet.consumer.remote.RemoteInputChannel` s:
the decoder copies each BufferResponse payload once, from the socket straight into a credit
buffer of the receiving channel. Outbound control messages (AddCredit, ResumeConsumption, ...) are
written by the I/O thread; an AddCredit takes the channel's unannounced credit when it is written,
so credits coalesce and each is announced exactly once.
"""

from __future__ import annotations

import logging
import selectors
import socket
import ssl
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import TypeVarTuple

from flinknet._core import protocol as P  # noqa: N812 (the wire protocol, as in the server)
from flinknet._core.buffer import FREEING_BUFFER_RECYCLER, DataType, NetworkBuffer
from flinknet._core.engine import ChannelQueue, NativeConnection, ReceiveEngine
from flinknet._core.memory import MemorySegment
from flinknet.errors import (
    CorruptEventError,
    FlinknetError,
    LocalTransportError,
    RemoteTransportError,
    TransportError,
)
from flinknet.interfaces import CreditBasedInputChannel
from flinknet.transport.eventloop import IOThread, configure_socket
from flinknet.transport.handshake import HandshakeConfig, HandshakeError, client_handshake
from flinknet.types import Address

# The errors are flinknet.errors' (re-exported under their old import path).
__all__ = ["ClientConnection", "ConnectionManager", "LocalTransportError", "RemoteTransportError",
           "TransportError"]

log = logging.getLogger(__name__)

_DATA_BUFFER = DataType.DATA_BUFFER
_RECV_SIZE = 256 * 1024
_TLS_READS = 64
_Ts = TypeVarTuple("_Ts")


def _fmt(address: Address | None) -> str:
    return f"{address[0]}:{address[1]}" if address else "?"


class ClientConnection:
    """The client end of one TCP connection, shared by every channel reading from that peer
    (Flink's ``NettyPartitionRequestClient`` with its ``CreditBasedPartitionRequestClientHandler``).

    It is the :class:`~flinknet.interfaces.PartitionRequestClient` of its channels (any thread;
    the work goes to the I/O thread) and drives them as
    :class:`~flinknet.interfaces.CreditBasedInputChannel` s from the I/O thread. Only this class
    encodes the frames a receiver sends.
    """

    def __init__(self, manager: ConnectionManager, address: Address):
        self.manager = manager
        self.loop = manager.loop
        self.address = address
        self.sock: socket.socket | None = None
        self.channels: dict[bytes, CreditBasedInputChannel] = {}
        self.error: BaseException | None = None
        self.closed = False
        self.ref_count = 0
        self._out: deque[bytes] = deque()
        self._credit_pending: deque[CreditBasedInputChannel] = deque()
        # The allocator answers Buffer, None or P.WAIT, whose type the stub keeps private (see
        # _allocate): hence the ignore.
        self._decoder = P.FrameDecoder(max_frame_length=manager.max_frame_length,
                                       max_buffer_size=manager.segment_size,
                                       allocator=self._allocate, side="client")  # type: ignore[arg-type]
        self._recv_buf = bytearray(_RECV_SIZE)
        self._recv_view = memoryview(self._recv_buf)
        self._lock = threading.Lock()
        self._unknown_receivers: set[bytes] = set()
        self.credit_based = manager.credit_based
        # TCP mode: the channel whose free buffer the decoder waits for
        self._paused_on: CreditBasedInputChannel | None = None
        self._events = 0            # selector interest now registered
        self.tls = False
        # Plain-TCP, credit-based connections are read and written by the native engine's I/O
        # thread; this object then only handles the frames it hands over (control path).
        self._native: NativeConnection | None = None

    # -- connect (loop thread) -------------------------------------------------------------

    def _connect(self, timeout: float, retries: int) -> None:
        """Connect on the calling thread (never the I/O thread), then hand the socket over."""
        family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
        last: OSError | None = None
        for _attempt in range(retries + 1):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(self.address)
            except OSError as err:
                sock.close()
                last = err
                continue
            configure_socket(sock, self.manager.liveness_timeout, self.credit_based)
            try:
                sock = client_handshake(sock, self.manager.handshake, self.address)
            except HandshakeError as err:
                sock.close()
                raise RemoteTransportError(
                    f"Connecting to remote task manager '{_fmt(self.address)}' has failed: {err}",
                    self.address) from err
            sock.setblocking(False)
            self.tls = isinstance(sock, ssl.SSLSocket)
            self.sock = sock
            engine = self.manager.engine
            if engine is not None and not self.tls and self.credit_based:
                self._native = NativeConnection(engine, sock, self, self.manager.max_frame_length,
                                                self.manager.segment_size)
                self._native.start()
            else:
                self.loop.run_sync(self._update_interest)
            return
        raise RemoteTransportError(
            f"Connecting to remote task manager '{_fmt(self.address)}' has failed. This might "
            f"indicate that the remote task manager has been lost. ({last})", self.address)

    # -- channels (any thread) -------------------------------------------------------------

    def request_subpartition(self, channel: CreditBasedInputChannel, initial_credit: int) -> None:
        """Register ``channel`` and send its PartitionRequest."""
        frame = P.encode_partition_request(
            channel.partition_id.to_bytes(), channel.consumed_subpartition_index,
            channel.consumed_subpartition_index, channel.input_channel_id.to_bytes(), initial_credit)
        native = self._native
        if native is not None:
            self._request_native(native, channel, frame)
            return

        def send() -> None:
            if self.error is not None:
                channel.on_error(self.error)
                return
            self.channels[channel.input_channel_id.to_bytes()] = channel
            self._send(frame)
        self.loop.call_soon_threadsafe(send)

    def _request_native(self, native: NativeConnection, channel: CreditBasedInputChannel,
                        frame: bytes) -> None:
        rid = channel.input_channel_id.to_bytes()
        if self.error is not None:
            channel.on_error(self.error)
            return
        self.channels[rid] = channel
        queue: ChannelQueue = channel.queue  # type: ignore[attr-defined]
        if not queue.is_attached:
            native.register(queue)
        self._send(frame)
        if self.error is not None and self.channels.pop(rid, None) is not None:
            channel.on_error(self.error)   # the connection failed meanwhile

    def notify_credit_available(self, channel: CreditBasedInputChannel) -> None:
        """The channel's unannounced credit went from 0 to > 0: write one AddCredit."""
        if self._native is not None:
            self._write_credit(channel)   # any thread: the engine writes it
            return
        self.loop.call_soon_threadsafe(self._write_credit, channel)

    def _write_credit(self, channel: CreditBasedInputChannel) -> None:
        if self.closed:
            return
        if not self.credit_based:
            # TCP-backpressure mode: no credits on the wire; a freed buffer may unblock the socket.
            channel.take_unannounced_credit()
            if self._paused_on is channel:
                self._resume()
            return
        if channel.is_released:
            return
        credit = channel.take_unannounced_credit()
        if credit > 0:
            self._send(P.encode_add_credit(credit, channel.input_channel_id.to_bytes()))

    def resume_consumption(self, channel: CreditBasedInputChannel) -> None:
        """Send ResumeConsumption for ``channel`` (any thread)."""
        self._send_control(channel, P.encode_resume_consumption, channel.input_channel_id.to_bytes())

    def acknowledge_all_records_processed(self, channel: CreditBasedInputChannel) -> None:
        """Send AckAllUserRecordsProcessed for ``channel`` (any thread)."""
        self._send_control(channel, P.encode_ack_all_user_records_processed,
                           channel.input_channel_id.to_bytes())

    def notify_new_buffer_size(self, channel: CreditBasedInputChannel, buffer_size: int) -> None:
        """Send NewBufferSize for ``channel`` (buffer debloating; any thread)."""
        self._send_control(channel, P.encode_new_buffer_size, buffer_size,
                           channel.input_channel_id.to_bytes())

    def _send_control(self, channel: CreditBasedInputChannel, encode: Callable[[*_Ts], bytes],
                      *args: *_Ts) -> None:
        if self._native is not None:
            if not channel.is_released and not self.closed:
                self._send(encode(*args))
            return

        def send() -> None:
            if not channel.is_released and not self.closed:
                self._send(encode(*args))
        self.loop.call_soon_threadsafe(send)

    def release_channel(self, channel: CreditBasedInputChannel) -> None:
        """Unregister; CancelPartitionRequest; close the connection with its last channel."""
        native = self._native
        if native is not None:
            rid = channel.input_channel_id.to_bytes()
            if self.channels.pop(rid, None) is not None and not self.closed:
                self._send(P.encode_cancel_partition_request(rid))
            queue: ChannelQueue | None = getattr(channel, "_queue", None)
            if queue is not None:
                native.unregister(queue)
            self.manager.release_client(self)
            return

        def release() -> None:
            rid = channel.input_channel_id.to_bytes()
            if self.channels.pop(rid, None) is not None and not self.closed:
                self._send(P.encode_cancel_partition_request(rid))
            if self._paused_on is channel and not self.closed:
                self._resume()   # the payload the decoder held for it is now dropped
            self.manager.release_client(self)
        self.loop.call_soon_threadsafe(release)

    # -- I/O (loop thread) -----------------------------------------------------------------

    def _socket(self) -> socket.socket:
        # Set by _connect before the connection is handed out: every I/O path runs after it.
        sock = self.sock
        if sock is None:
            raise LocalTransportError(f"not connected to '{_fmt(self.address)}'", self.address)
        return sock

    def _send(self, frame: bytes) -> None:
        if self.closed:
            return
        native = self._native
        if native is not None:
            try:
                native.send(frame)
            except BufferError as err:
                self._fail(LocalTransportError(
                    f"{err} (connection to '{_fmt(self.address)}')", self.address))
            return
        self._out.append(frame)
        self._flush()

    def _flush(self) -> None:
        out = self._out
        while out:
            try:
                n = self._socket().send(out[0])   # TLS: a write it could not finish is retried as is
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                n = 0
            except OSError as err:
                self._fail(self._lost(err))
                return
            if n == len(out[0]):
                out.popleft()
                continue
            if n:
                out[0] = out[0][n:]
            break
        self._update_interest()

    def _lost(self, err: OSError) -> RemoteTransportError:
        where = _fmt(self.address)
        if isinstance(err, ssl.SSLError):
            # With TLS 1.3 a server that refuses this side's certificate does so after the
            # client finished its handshake: the client's next read or write meets the closed
            # TLS session (SSLEOFError "EOF occurred in violation of protocol") or the alert.
            return RemoteTransportError(
                f"Lost the TLS connection to task manager '{where}': {err} (the peer closed the TLS "
                "session; if it happens at once, it may have refused this side's certificate)",
                self.address)
        return RemoteTransportError(f"Lost connection to task manager '{where}': {err}", self.address)

    def _update_interest(self) -> None:
        """Read unless the decoder is paused (TCP mode); write while frames wait."""
        if self.closed:
            return
        events = (0 if self._paused_on is not None else selectors.EVENT_READ) | (
            selectors.EVENT_WRITE if self._out else 0)
        if events == self._events:
            return
        sock = self._socket()
        if not events:
            self.loop.unregister(sock)
        elif not self._events:
            self.loop.register(sock, events, self._on_event)
        else:
            self.loop.modify(sock, events, self._on_event)
        self._events = events

    def _on_event(self, mask: int) -> None:
        if mask & selectors.EVENT_READ and not self.closed:
            self._on_readable()
        if mask & selectors.EVENT_WRITE and not self.closed:
            self._flush()

    def _on_readable(self) -> None:
        if self.tls:
            # TLS hands out one record per read and keeps what it decrypted out of the selector's
            # sight: read on while it has more (bounded), unless the decoder paused.
            for _ in range(_TLS_READS):
                if (not self._read_once() or self.closed or self._paused_on is not None
                        or not self._tls_pending()):
                    break
        else:
            self._read_once()

    def _tls_pending(self) -> int:
        """Decrypted bytes the TLS socket holds (0 for a plain socket)."""
        sock = self.sock
        return sock.pending() if isinstance(sock, ssl.SSLSocket) else 0

    def _read_once(self) -> bool:
        try:
            n = self._socket().recv_into(self._recv_buf)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except OSError as err:
            self._fail(self._lost(err))
            return False
        if n == 0:
            self._fail(RemoteTransportError(
                f"Connection unexpectedly closed by remote task manager '{_fmt(self.address)}'. "
                "This might indicate that the remote task manager was lost.", self.address))
            return False
        self._on_bytes(n)
        return True

    def _on_bytes(self, n: int) -> None:
        try:
            messages = self._decoder.feed(self._recv_view[:n])
        except P.CorruptFrameError as err:
            self._fail(LocalTransportError(
                f"{err} (connection to '{_fmt(self.address)}')", self.address))
            return
        self._deliver(messages)

    def _resume(self) -> None:
        """TCP mode: retry the buffer the decoder waits for; read the socket again if it came."""
        try:
            messages = self._decoder.resume()
        except P.CorruptFrameError as err:
            self._fail(LocalTransportError(
                f"{err} (connection to '{_fmt(self.address)}')", self.address))
            return
        if messages is None:
            return
        self._deliver(messages)
        self._update_interest()
        if self.tls and self._paused_on is None and not self.closed and self._tls_pending():
            self._on_readable()   # records TLS decrypted while we were paused

    def _deliver(self, messages: Iterable[object]) -> None:
        for msg in messages:
            self._dispatch(msg)   # after a failure, buffers for now-unknown receivers go back
        if self._decoder.is_paused and self._paused_on is not None:
            self._update_interest()   # stop reading: TCP's window closes, the sender blocks
        if self._unknown_receivers:
            for rid in self._unknown_receivers:
                self._send(P.encode_cancel_partition_request(rid))
            self._unknown_receivers.clear()

    def _allocate(self, receiver_id: bytes, size: int, data_type: int, subpartition: int) -> object:
        # A Buffer, None (drop the payload) or P.WAIT (pause): the stub names WAIT's type _Wait,
        # private to it, so the annotation can only say object.
        # One frame is allocated at a time: a paused decoder only retries the frame it paused on.
        retry = self._paused_on is not None
        self._paused_on = None
        channel = self.channels.get(receiver_id)
        if channel is None or channel.is_released:
            return None
        if data_type == _DATA_BUFFER:
            if self.credit_based:
                return channel.request_buffer()
            buf = channel.request_buffer(arrival=not retry)
            if buf is None:
                self._paused_on = channel
                return P.WAIT
            return buf
        if size == 0:
            return None
        return NetworkBuffer(MemorySegment(size), FREEING_BUFFER_RECYCLER)

    def _dispatch(self, msg: object) -> None:
        if type(msg) is P.BufferResponse:
            channel = self.channels.get(msg.receiver_id)
            if channel is None or channel.is_released:
                if msg.buffer is not None:
                    msg.buffer.recycle()
                self._unknown_receivers.add(msg.receiver_id)
                return
            if msg.size == 0 and msg.data_type != _DATA_BUFFER:
                # an event has at least its 4-byte tag (Flink: "The read buffer is null ...")
                if msg.buffer is not None:
                    msg.buffer.recycle()
                channel.on_error(CorruptEventError(f"{channel} received an empty {msg.data_type.name}"))
                return
            if msg.buffer is None:
                if msg.size == 0:
                    channel.on_empty_buffer(msg.sequence_number, msg.backlog)
                else:
                    channel.on_error(FlinknetError(
                        "The read buffer is null in credit-based input channel."))
                return
            if msg.size == 0:
                msg.buffer.recycle()
                channel.on_empty_buffer(msg.sequence_number, msg.backlog)
                return
            channel.on_buffer(msg.buffer, msg.sequence_number, msg.backlog, msg.subpartition_id)
        elif type(msg) is P.BacklogAnnouncement:
            channel = self.channels.get(msg.receiver_id)
            if channel is not None and not channel.is_released:
                channel.on_backlog_announcement(msg.backlog)
        elif type(msg) is P.ErrorResponse:
            if msg.receiver_id is None:
                self._fail(RemoteTransportError(
                    f"Fatal error at remote task manager '{_fmt(self.address)}': "
                    f"{msg.error_type}: {msg.message}", self.address))
                return
            channel = self.channels.pop(msg.receiver_id, None)
            if channel is None:
                return
            if msg.error_type == "PartitionNotFoundError":
                channel.on_partition_not_found()
            else:
                channel.on_error(RemoteTransportError(
                    f"Error at remote task manager '{_fmt(self.address)}': {msg.error_type}: "
                    f"{msg.message}", self.address))

    # -- the native engine's handler (its I/O thread, with the GIL) ---------------------------

    def on_frame(self, frame: bytes) -> None:
        """A whole frame the engine does not handle natively: decode and dispatch it."""
        if self.closed:
            return
        try:
            messages = self._decoder.feed(frame)
        except P.CorruptFrameError as err:
            self._fail(LocalTransportError(
                f"{err} (connection to '{_fmt(self.address)}')", self.address))
            return
        self._deliver(messages)

    def on_failure(self, message: str, is_local: bool) -> None:
        """The engine lost the connection or found a corrupt frame."""
        if is_local:
            self._fail(LocalTransportError(f"{message} (connection to '{_fmt(self.address)}')",
                                           self.address))
        else:
            self._fail(RemoteTransportError(
                f"{message} (task manager '{_fmt(self.address)}')", self.address))

    def on_channel_error(self, queue: ChannelQueue, expected: int, sequence_number: int) -> None:
        """A natively received buffer was out of sequence (or over the queue's bound)."""
        for channel in list(self.channels.values()):
            if getattr(channel, "_queue", None) is queue:
                if expected < 0:
                    channel.on_error(FlinknetError(
                        f"{channel} received more buffers and events than it can queue"))
                else:
                    channel.on_reordered(expected, sequence_number)  # type: ignore[attr-defined]
                return

    def on_removed(self) -> None:
        """The engine no longer uses the socket: close it."""
        self._decoder.close()
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        channels = list(self.channels.values())
        self.channels.clear()
        self._close_socket()
        for ch in channels:
            ch.on_error(self.error)
        self.manager._forget(self)

    def _close_socket(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._native is not None:
            self._native.remove()   # the socket closes in on_removed, on the engine's thread
            self._out.clear()
            return
        if self.sock is not None:
            self.loop.unregister(self.sock)
            try:
                self.sock.close()
            except OSError:
                pass
        self._out.clear()
        self._decoder.close()

    def close(self) -> None:
        """Send CloseRequest (best effort) and close (loop thread)."""
        if self._native is not None:
            if not self.closed:
                self._send(P.encode_close_request())
            self._close_socket()
            return
        if not self.closed and self.sock is not None:
            try:
                self.sock.send(P.encode_close_request())
            except OSError:
                pass
        self._close_socket()


class ConnectionManager:
    """One shared connection per remote address (Flink's PartitionRequestClientFactory)."""

    def __init__(self, loop: IOThread, segment_size: int, max_frame_length: int = P.DEFAULT_MAX_FRAME_LENGTH,
                 connect_timeout: float = 120.0, retries: int = 0, credit_based: bool = True,
                 handshake: HandshakeConfig | None = None, engine: ReceiveEngine | None = None,
                 liveness_timeout: float = 0.0):
        if not liveness_timeout >= 0:
            raise ValueError(f"liveness_timeout must be >= 0, got {liveness_timeout!r}")
        self.loop = loop
        self.liveness_timeout = liveness_timeout   # seconds (configure_socket); 0: the kernel's
        # The native receive engine for plain-TCP, credit-based connections (None: the Python
        # I/O thread reads every connection).
        self.engine = engine
        self.credit_based = credit_based
        self.handshake = handshake if handshake is not None else HandshakeConfig()
        self.segment_size = segment_size
        self.max_frame_length = max_frame_length
        self.connect_timeout = connect_timeout
        self.retries = retries
        self._lock = threading.Lock()
        self._clients: dict[Address, Future[ClientConnection]] = {}
        self._closed = False

    def create_client(self, address: Address, timeout: float | None = None) -> ClientConnection:
        """The connection to ``address`` (connecting if needed); its reference count goes up.

        The first caller connects (on its own thread); concurrent callers wait for the same
        connect; a failed connect is not cached."""
        address = (str(address[0]), int(address[1]))
        connect: ClientConnection | None = None
        with self._lock:
            if self._closed:
                raise LocalTransportError("the connection manager is closed", address)
            fut = self._clients.get(address)
            if fut is None or (fut.done() and (fut.exception() is not None or fut.result().closed)):
                fut = self._clients[address] = Future()
                connect = ClientConnection(self, address)
        if connect is not None:
            try:
                connect._connect(self.connect_timeout, self.retries)
            except BaseException as err:
                with self._lock:
                    if self._clients.get(address) is fut:
                        del self._clients[address]   # failures are not cached
                fut.set_exception(err)
                raise
            fut.set_result(connect)
        wait = timeout if timeout is not None else self.connect_timeout * (self.retries + 1) + 5
        conn = fut.result(wait)
        with self._lock:
            conn.ref_count += 1
        return conn

    def release_client(self, conn: ClientConnection) -> None:
        """Drop one reference of ``conn`` (from :meth:`create_client`); the last one closes it."""
        with self._lock:
            conn.ref_count -= 1
            last = conn.ref_count <= 0
            if last and self._clients.get(conn.address) is not None:
                fut = self._clients[conn.address]
                if fut.done() and fut.exception() is None and fut.result() is conn:
                    del self._clients[conn.address]
        if last:
            conn.close()

    def _forget(self, conn: ClientConnection) -> None:
        with self._lock:
            fut = self._clients.get(conn.address)
            if fut is not None and fut.done() and fut.exception() is None and fut.result() is conn:
                del self._clients[conn.address]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            futures = list(self._clients.values())
            self._clients.clear()

        def close_all() -> None:
            for fut in futures:
                if fut.done() and fut.exception() is None:
                    fut.result()._fail(LocalTransportError("the network environment was closed"))
        self.loop.run_sync(close_all)

    @property
    def num_connections(self) -> int:
        """Connections open or being opened."""
        with self._lock:
            return len(self._clients)
