"""The sending side: a TCP server whose connections serve subpartition views (Flink's
``NettyServer`` with its ``PartitionRequestQueue`` and ``PartitionRequestServerHandler``).

One :class:`ServerConnection` per client connection (Flink's ``PartitionRequestQueue`` plus
``PartitionRequestServerHandler``): a reader per receiver id with its credit; readers with credit
and data (or an event at the head) take turns, one BufferResponse each; a data buffer costs one
credit; every BufferResponse carries the subpartition's backlog; a reader with backlog but no credit
and no exclusive buffers gets a BacklogAnnouncement. BufferResponses go out as a gather write of
their 47-byte header and the buffer's own memory (several frames per system call); a buffer goes
back to its pool once the kernel took all of it.
"""

from __future__ import annotations

import errno
import logging
import resource
import selectors
import socket
import ssl
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from flinknet._core import protocol as P  # noqa: N812 (the wire protocol, as in the client)
from flinknet._core.buffer import DataType
from flinknet._core.engine import NativeConnection, OutputQueue, ReceiveEngine
from flinknet.errors import PartitionNotFoundError
from flinknet.ids import ResultPartitionID, ResultSubpartitionIndexSet
from flinknet.interfaces import ResultSubpartitionView
from flinknet.transport.eventloop import IOThread, TimerHandle
from flinknet.transport.handshake import HandshakeConfig, HandshakeError, ServerHandshake
from flinknet.types import Address

if TYPE_CHECKING:
    from flinknet.partition.manager import ResultPartitionManager, ViewCallback

__all__ = ["TransportServer", "ServerConnection"]

log = logging.getLogger(__name__)

_DATA_BUFFER = DataType.DATA_BUFFER
_EVENT_TYPES = frozenset(t for t in DataType if t.is_event)
_RECV_SIZE = 256 * 1024
_MAX_QUEUED_FRAMES = 64          # frames handed to sendmsg at once / held before the kernel takes them
_IOV_MAX = 1024
_TLS_CHUNK = 256 * 1024          # bytes per TLS write (TLS cannot gather: the parts are joined)
_TLS_READS = 64                  # TLS records decrypted per readiness event at most
_MAX_HANDSHAKES = 1024           # connections handshaking at once; beyond, the oldest is dropped
_BACKLOG = 1024                  # the listening socket's accept queue
_MAX_FAILED_RECEIVERS = 4096     # failed receiver ids remembered per connection


class _Reader:
    """One receiver's view of one subpartition (CreditBasedSequenceNumberingViewReader)."""

    __slots__ = ("conn", "receiver_id", "subpartition", "credit", "initial_credit", "view", "queued",
                 "released", "pending_listener", "outq")

    def __init__(self, conn: ServerConnection, receiver_id: bytes, initial_credit: int,
                 subpartition: int = 0):
        self.conn = conn
        self.receiver_id = receiver_id
        self.subpartition = subpartition   # the requested subpartition, sent in every BufferResponse
        self.credit = initial_credit
        self.initial_credit = initial_credit
        self.view: ResultSubpartitionView | None = None
        self.queued = False
        self.released = False
        self.pending_listener: tuple[ResultPartitionID, ViewCallback] | None = None
        # The native engine's queue this reader's subpartition pushes into (None: Python polls).
        self.outq: OutputQueue | None = None

    # BufferAvailabilityListener: called on producer threads, handed to the I/O thread.
    def notify_data_available(self, view: ResultSubpartitionView) -> None:
        self.conn.loop.call_soon_threadsafe(self.conn._enqueue, self)

    def notify_priority_event(self, sequence_number: int) -> None:
        self.conn.loop.call_soon_threadsafe(self.conn._enqueue, self)

    def release(self) -> None:
        if not self.released:
            self.released = True
            view, self.view = self.view, None
            outq, self.outq = self.outq, None
            if outq is not None:
                native = self.conn.native
                if native is not None:
                    native.unregister_output(outq)
                outq.release()
            if view is not None:
                view.release_all_resources()


class ServerConnection:
    """The server end of one TCP connection (runs on the I/O thread)."""

    def __init__(self, server: TransportServer, sock: socket.socket, address: tuple[Any, ...]):
        self.server = server
        self.loop = server.loop
        self.sock = sock
        self.address = address
        self.decoder = P.FrameDecoder(max_frame_length=server.max_frame_length, side="server")
        self.readers: dict[bytes, _Reader] = {}
        # Receivers this side answered with an ErrorResponse (their reader is gone): messages the
        # client sent before it saw the error (AddCredit, ResumeConsumption, ...) are dropped
        # instead of failing the whole connection. Bounded: oldest forgotten first.
        self._failed_receivers: dict[bytes, None] = {}
        self.available: deque[_Reader] = deque()
        # [bytes-like, offset, buffer-or-None] parts not yet sent (lists: the offset moves)
        self.out: deque[list[Any]] = deque()
        self.out_frames = 0
        self.closed = False
        self.credit_based = server.credit_based
        self.tls = isinstance(sock, ssl.SSLSocket)
        self._tls_chunk: bytes | None = None   # a TLS write to retry with the same bytes
        self._closing = False    # a fatal error is queued: send what is queued, then close
        self._close_timer: TimerHandle | None = None
        self._writing = False
        # Plain-TCP, credit-based connections are served by the native engine's I/O thread:
        # it reads every frame (AddCredit natively, the rest handed here) and writes the
        # subpartitions' buffers without the GIL; this object keeps the control path.
        self.native: NativeConnection | None = None
        engine = server.engine
        if engine is not None and not self.tls and self.credit_based:
            self._recv_buf = bytearray(0)
            self._recv_view = memoryview(self._recv_buf)
            self.native = NativeConnection(engine, sock, self, server.max_frame_length,
                                           server.max_frame_length, server=True)
            self.native.start()
            return
        self._recv_buf = bytearray(_RECV_SIZE)
        self._recv_view = memoryview(self._recv_buf)
        self.loop.register(sock, selectors.EVENT_READ, self._on_event)

    # -- the native engine's handler (its I/O thread, with the GIL) --------------------------

    def on_frame(self, frame: bytes) -> None:
        self.loop.call_soon_threadsafe(self._on_data, frame)

    def on_failure(self, message: str, is_local: bool) -> None:
        self.loop.call_soon_threadsafe(self.close, message)

    def on_channel_error(self, queue: object, expected: int, got: int) -> None:  # pragma: no cover
        pass   # client-role connections only

    def on_removed(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- socket events ---------------------------------------------------------------------

    def _on_event(self, mask: int) -> None:
        if mask & selectors.EVENT_READ and not self.closed:
            self._on_readable()
        if mask & selectors.EVENT_WRITE and not self.closed:
            if self._flush() and self._closing:
                self.close("fatal error sent")
                return
            self._write_loop()

    def _on_readable(self) -> None:
        if self.tls:
            # A TLS socket hands out one record per read; what it decrypted stays invisible to
            # the selector, so read until it has nothing more (bounded per event).
            sock = self.sock
            for _ in range(_TLS_READS):
                if (not self._read_once() or self.closed
                        or not (isinstance(sock, ssl.SSLSocket) and sock.pending())):
                    break
        else:
            self._read_once()

    def _read_once(self) -> bool:
        try:
            n = self.sock.recv_into(self._recv_buf)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except OSError as err:
            self.close(f"connection error: {err}")
            return False
        if n == 0:
            self.close("the client closed the connection")
            return False
        self._on_data(self._recv_view[:n])
        return True

    def _on_data(self, data: bytes | memoryview) -> None:
        if self._closing or self.closed:
            return   # a fatal error is on its way: the rest of the input is not looked at
        try:
            messages = self.decoder.feed(data)
        except P.CorruptFrameError as err:
            # str(err): a logged exception object would keep this connection alive in handlers
            log.warning("closing connection from %s: %s", self.address, str(err))
            self._send_fatal(err)
            return
        for msg in messages:
            if self.closed or self._closing:
                return
            try:
                self._handle(msg)
            except Exception as err:  # noqa: BLE001 (Flink's respondWithError: fatal for the connection)
                log.warning("closing connection from %s: %s: %s", self.address,
                            type(err).__name__, str(err))
                self._send_fatal(err)
                return
        self._write_loop()

    # -- messages --------------------------------------------------------------------------

    def _handle(self, msg: object) -> None:
        if type(msg) is P.AddCredit:
            reader = self._reader(msg.receiver_id)
            if reader is not None:
                if reader.outq is not None:     # sent before the engine registered the queue
                    reader.outq.add_credit(msg.credit)
                    return
                reader.credit += msg.credit
                self._enqueue(reader)
        elif type(msg) is P.PartitionRequest:
            self._on_partition_request(msg)
        elif type(msg) is P.CancelPartitionRequest:
            self._failed_receivers.pop(msg.receiver_id, None)
            reader = self.readers.pop(msg.receiver_id, None)
            if reader is not None:
                self._release_reader(reader)
        elif type(msg) is P.CloseRequest:
            self.close("the client sent CloseRequest")
        elif type(msg) is P.ResumeConsumption:
            reader = self._reader(msg.receiver_id)
            if reader is not None and reader.view is not None:
                if reader.initial_credit == 0:
                    reader.credit = 0
                reader.view.resume_consumption()
                self._enqueue(reader)
        elif type(msg) is P.AckAllUserRecordsProcessed:
            reader = self._reader(msg.receiver_id)
            if reader is not None and reader.view is not None:
                reader.view.acknowledge_all_data_processed()
        elif type(msg) is P.NewBufferSize:
            reader = self.readers.get(msg.receiver_id)
            if reader is not None and reader.view is not None:
                reader.view.notify_new_buffer_size(msg.buffer_size)
        elif type(msg) is P.TaskEventRequest:
            self._queue_frame(P.encode_error_response(
                "IllegalArgumentError", "Task event receiver not found.", msg.receiver_id))
        elif type(msg) is P.SegmentId:
            pass  # tiered storage only: no segments to select here
        else:  # pragma: no cover (the decoder's side check rejects the rest)
            self._send_fatal(P.CorruptFrameError(f"unexpected message {type(msg).__name__}"))

    def _reader(self, receiver_id: bytes) -> _Reader | None:
        reader = self.readers.get(receiver_id)
        if reader is None and receiver_id not in self._failed_receivers:
            self._send_fatal(P.CorruptFrameError(
                f"No reader for receiverId = {receiver_id.hex()} exists."))
        return reader

    def _on_partition_request(self, msg: P.PartitionRequest) -> None:
        self._failed_receivers.pop(msg.receiver_id, None)   # a retry of a failed request
        if msg.receiver_id in self.readers:
            self._send_fatal(P.CorruptFrameError(f"duplicate receiver id {msg.receiver_id.hex()}"))
            return
        try:
            partition_id = ResultPartitionID.from_bytes(msg.partition_id)
            index = ResultSubpartitionIndexSet(msg.start_index, msg.end_index)
        except ValueError as err:
            self._queue_frame(P.encode_error_response(type(err).__name__, str(err), msg.receiver_id))
            return
        reader = _Reader(self, msg.receiver_id, msg.credit, msg.start_index)
        self.readers[msg.receiver_id] = reader

        def on_view(view: ResultSubpartitionView | None, error: BaseException | None) -> None:  # any thread
            self.loop.call_soon_threadsafe(self._on_view, reader, view, error)

        reader.pending_listener = (partition_id, on_view)
        try:
            view = self.server.partition_manager.create_subpartition_view_or_register_listener(
                partition_id, index, reader, on_view)
        except Exception as err:  # noqa: BLE001 (answered to the requester)
            self._on_view(reader, None, err)
            return
        if view is not None:
            self._on_view(reader, view, None)

    def _on_view(self, reader: _Reader, view: ResultSubpartitionView | None,
                 error: BaseException | None) -> None:
        reader.pending_listener = None
        if reader.released or self.closed:
            if view is not None:
                view.release_all_resources()
            return
        if error is not None:
            self.readers.pop(reader.receiver_id, None)
            self._remember_failed(reader.receiver_id)
            reader.released = True
            self._queue_frame(P.encode_error_response(type(error).__name__, str(error), reader.receiver_id))
            self._write_loop()
            return
        reader.view = view
        attach = getattr(view, "attach_output", None)   # pipelined views can be served natively
        if self.native is not None and reader.initial_credit > 0 and attach is not None:
            outq = OutputQueue(reader.receiver_id, reader.subpartition, reader.credit)
            if attach(outq):
                reader.outq = outq
                self.native.register_output(outq)
                if view is not None and view.is_released:
                    self._enqueue(reader)
                return
        self._enqueue(reader)

    # -- the write loop --------------------------------------------------------------------

    def _enqueue(self, reader: _Reader) -> None:
        if self.closed or reader.released or reader.queued:
            return
        view = reader.view
        if view is None:
            return
        if reader.outq is not None:
            # the engine sends the data; only a release (the producer failed) is answered here
            if view.is_released:
                cause = view.failure_cause
                self._reader_failed(reader, cause if cause is not None else
                                    PartitionNotFoundError("the consumed partition was released"))
                self._write_loop()
            return
        if view.is_released:
            pass  # released (producer failed or partition gone): the poll sends the error
        elif self.credit_based:
            avail = view.get_availability_and_backlog(reader.credit > 0)
            if not avail.is_available:
                if avail.backlog > 0 and reader.initial_credit == 0 and reader.credit == 0:
                    self._queue_frame(P.encode_backlog_announcement(avail.backlog, reader.receiver_id))
                    self._write_loop()
                return
        elif not view.get_availability_and_backlog(True).is_available:
            return
        reader.queued = True
        self.available.append(reader)
        self._write_loop()

    def _write_loop(self) -> None:
        if self._writing or self.closed or self._closing:
            return
        self._writing = True
        try:
            while True:
                while self.available and self.out_frames < _MAX_QUEUED_FRAMES:
                    reader = self.available.popleft()
                    reader.queued = False
                    if reader.released:
                        continue
                    self._poll_reader(reader)
                if not self.out:
                    return
                if not self._flush():
                    return  # the kernel is full: EVENT_WRITE resumes us
                if not self.available:
                    return
        finally:
            self._writing = False

    def _poll_reader(self, reader: _Reader) -> None:
        view = reader.view
        if view is None:   # queued readers have their view (released ones are skipped)
            return
        try:
            nxt = view.get_next_buffer()
        except Exception as err:  # noqa: BLE001 (the producer's failure goes to that receiver)
            self._reader_failed(reader, err)
            return
        if nxt is None:
            if view.is_released:
                cause = view.failure_cause
                self._reader_failed(reader, cause if cause is not None else
                                    PartitionNotFoundError("the consumed partition was released"))
            return
        buffer = nxt.buffer
        data_type = buffer.data_type
        if data_type == _DATA_BUFFER and self.credit_based:
            reader.credit -= 1
            if reader.credit < 0:
                buffer.recycle()
                raise RuntimeError("no credit available")
        next_type = nxt.next_data_type
        more = next_type != DataType.NONE and (
            not self.credit_based or reader.credit > 0 or next_type in _EVENT_TYPES)
        size = buffer.readable_bytes
        header = P.encode_buffer_response_header(
            reader.receiver_id, reader.subpartition,
            nxt.sequence_number, nxt.buffers_in_backlog, data_type, buffer.is_compressed, size)
        self.out.append([header, 0, None])
        if size:
            self.out.append([memoryview(buffer), 0, buffer])
        else:
            buffer.recycle()
        self.out_frames += 1
        if more:
            reader.queued = True
            self.available.append(reader)

    def _reader_failed(self, reader: _Reader, cause: BaseException) -> None:
        self.readers.pop(reader.receiver_id, None)
        self._remember_failed(reader.receiver_id)
        self._queue_frame(P.encode_error_response(type(cause).__name__, str(cause), reader.receiver_id))
        self._release_reader(reader)

    def _remember_failed(self, receiver_id: bytes) -> None:
        failed = self._failed_receivers
        failed[receiver_id] = None
        if len(failed) > _MAX_FAILED_RECEIVERS:
            del failed[next(iter(failed))]

    def _queue_frame(self, frame: bytes) -> None:
        self.out.append([frame, 0, None])
        self.out_frames += 1

    def _flush(self) -> bool:
        """Send queued parts; True when everything went, False when the kernel is full."""
        if self.tls:
            return self._flush_tls()
        if self.native is not None:
            return self._flush_native()
        out = self.out
        while out:
            parts: list[bytes | memoryview] = []
            for i, entry in enumerate(out):
                if i >= _IOV_MAX:
                    break
                data, offset, _ = entry
                parts.append(data[offset:] if offset else data)
            try:
                sent = self.sock.sendmsg(parts)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as err:
                del parts
                self.close(f"send failed: {err}")
                return False
            # The slices export the buffers' memory: drop them before any buffer is recycled.
            del parts
            self._consume(sent)
            if out:
                self.loop.modify(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self._on_event)
                return False
        self.loop.modify(self.sock, selectors.EVENT_READ, self._on_event)
        return True

    def _consume(self, sent: int) -> None:
        """``sent`` bytes of the queued parts went: pop them, recycling finished buffers."""
        out = self.out
        while sent and out:
            entry = out[0]
            data, offset, buffer = entry
            left = len(data) - offset
            if sent >= left:
                sent -= left
                out.popleft()
                if buffer is not None:
                    data.release()
                    buffer.recycle()
                else:
                    self.out_frames -= 1
            else:
                entry[1] = offset + sent
                sent = 0

    def _flush_native(self) -> bool:
        """Frames polled here (views the engine does not serve, control frames) are copied into
        the engine's write buffer, in order."""
        out = self.out
        parts: list[bytes] = []
        while out:
            data, offset, buffer = out.popleft()
            parts.append(bytes(data[offset:]))
            if buffer is not None:
                data.release()
                buffer.recycle()
            else:
                self.out_frames -= 1
        self.out_frames = 0
        if parts and self.native is not None:
            try:
                self.native.send(b"".join(parts))
            except BufferError as err:
                self.close(f"the client does not read: {err}")
                return False
        return True

    def _flush_tls(self) -> bool:
        """TLS cannot gather: join up to 256 KiB of parts and write them (a write TLS could not
        finish is retried with the very same bytes, as OpenSSL requires)."""
        out = self.out
        while out or self._tls_chunk is not None:
            chunk = self._tls_chunk
            if chunk is None:
                pieces: list[memoryview] = []
                size = 0
                for data, offset, _ in out:
                    piece = memoryview(data)[offset:offset + _TLS_CHUNK - size]
                    pieces.append(piece)
                    size += len(piece)
                    if size >= _TLS_CHUNK:
                        break
                chunk = b"".join(pieces)
                for piece in pieces:
                    piece.release()
                del pieces
            try:
                sent = self.sock.send(chunk)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                self._tls_chunk = chunk
                self.loop.modify(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self._on_event)
                return False
            except OSError as err:
                self._tls_chunk = None
                self.close(f"send failed: {err}")
                return False
            self._tls_chunk = None
            self._consume(sent)
            if sent < len(chunk):   # not expected without partial writes; keep the rest
                self._tls_chunk = chunk[sent:]
        self.loop.modify(self.sock, selectors.EVENT_READ, self._on_event)
        return True

    # -- closing ---------------------------------------------------------------------------

    def _send_fatal(self, err: BaseException) -> None:
        """A fatal ErrorResponse (no receiver) behind everything already queued (a half-sent frame
        must complete, earlier answers must not be lost), then close: at once if the kernel takes
        it all, else when it is drained or after 2 s. Nothing more is read or served meanwhile."""
        if self.closed or self._closing:
            return
        self._closing = True
        self.available.clear()
        self._queue_frame(P.encode_error_response(type(err).__name__, str(err), None))
        if self._flush():
            self.close(f"fatal: {err}")
        elif not self.closed:
            self._close_timer = self.loop.call_later(2.0, self.close, f"fatal: {err} (not drained)")

    def _release_reader(self, reader: _Reader) -> None:
        if reader.pending_listener is not None:
            pid, on_view = reader.pending_listener
            self.server.partition_manager.cancel_pending_request(pid, on_view)
            reader.pending_listener = None
        reader.release()

    def close(self, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        if self._close_timer is not None:
            self.loop.cancel(self._close_timer)
            self._close_timer = None
        log.debug("server connection from %s closed: %s", self.address, reason)
        if self.native is not None:
            self.native.remove()        # the socket is closed once the engine let go of it
        else:
            self.loop.unregister(self.sock)
            try:
                self.sock.close()
            except OSError:
                pass
        for reader in list(self.readers.values()):
            self._release_reader(reader)
        self.readers.clear()
        self.available.clear()
        while self.out:
            data, _, buffer = self.out.popleft()
            if buffer is not None:
                data.release()
                buffer.recycle()
        self.out_frames = 0
        self.decoder.close()
        self.server._connection_closed(self)


class _Handshaking:
    """An accepted connection during the handshake (and TLS), driven on the I/O thread by its
    socket's readiness: no thread per connection, no read beyond what the handshake needs, a
    deadline of its own. A stalled or garbage peer costs one socket until its deadline."""

    __slots__ = ("server", "sock", "addr", "hs", "out", "tls", "timer", "closed")

    def __init__(self, server: TransportServer, sock: socket.socket, addr: tuple[Any, ...]):
        self.server = server
        self.sock: socket.socket = sock
        self.addr = addr
        self.hs = ServerHandshake(server.handshake, f"{addr[0]}:{addr[1]}")
        self.out = b""
        self.tls = False
        self.closed = False
        sock.setblocking(False)
        server.loop.register(sock, selectors.EVENT_READ, self._on_event)
        self.timer = server.loop.call_later(server.handshake.timeout, self._on_timeout)

    def _on_event(self, mask: int) -> None:
        try:
            if self.tls:
                self._tls_step()
                return
            if mask & selectors.EVENT_WRITE and self.out:
                self._send()
            if mask & selectors.EVENT_READ and not self.closed and not self.out:
                self._read()
        except HandshakeError as err:
            self.fail(str(err))
        except OSError as err:
            self.fail(f"the handshake with '{self.hs.peer}' failed: {err}")

    def _read(self) -> None:
        hs = self.hs
        try:
            data = self.sock.recv(hs.wanted)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            return
        if not data:
            raise HandshakeError("the peer closed the connection during the handshake")
        reply, error = hs.feed(data)
        if error is not None:
            if reply:
                try:                      # the reason, best effort: the peer may be gone
                    self.sock.send(reply)
                except OSError:
                    pass
            raise error
        self.out = reply
        self._send()

    def _send(self) -> None:
        if self.out:
            try:
                n = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                n = 0
            self.out = self.out[n:]
        if self.out:
            self.server.loop.modify(self.sock, selectors.EVENT_WRITE, self._on_event)
            return
        self.server.loop.modify(self.sock, selectors.EVENT_READ, self._on_event)
        if self.hs.done:
            self._handshake_done()

    def _handshake_done(self) -> None:
        if not self.hs.needs_tls:
            self.server._adopt(self, self.sock)
            return
        context = self.server.handshake.server_context
        if context is None:
            raise HandshakeError("TLS is enabled but the handshake configuration has no server context")
        loop = self.server.loop
        loop.unregister(self.sock)
        try:
            self.sock = context.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
        except (ssl.SSLError, OSError) as err:
            raise HandshakeError(f"TLS handshake with '{self.hs.peer}' failed: {err}") from err
        self.tls = True
        loop.register(self.sock, selectors.EVENT_READ, self._on_event)
        self._tls_step()

    def _tls_step(self) -> None:
        sock = self.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self.server.loop.modify(sock, selectors.EVENT_READ, self._on_event)
            return
        except ssl.SSLWantWriteError:
            self.server.loop.modify(sock, selectors.EVENT_WRITE, self._on_event)
            return
        except (ssl.SSLError, ssl.CertificateError, OSError) as err:
            raise HandshakeError(f"TLS handshake with '{self.hs.peer}' failed: {err}") from err
        self.server._adopt(self, sock)

    def _on_timeout(self) -> None:
        if not self.closed:
            timeout = self.server.handshake.timeout
            self.fail(f"the handshake with '{self.hs.peer}' timed out after {timeout} s")

    def detach(self) -> None:
        """Stop driving the socket (adopted by a connection, or about to be closed)."""
        if not self.closed:
            self.closed = True
            self.server.loop.cancel(self.timer)
            self.server.loop.unregister(self.sock)
            self.server._handshaking.pop(self, None)

    def fail(self, reason: str) -> None:
        """Drop the connection (once): counted, logged with a rate limit, socket closed."""
        if self.closed:
            return
        self.detach()
        self.sock.close()
        self.server.handshakes_failed += 1
        self.server._drop_log.dropped(self.addr, reason)


class _DropLog:
    """Warnings about dropped connections, at most ``limit`` lines per ``interval`` seconds and
    then one summary line per interval: a flood of garbage connections must not flood the log."""

    def __init__(self, limit: int = 10, interval: float = 10.0):
        self.limit = limit
        self.interval = interval
        self._window_start = time.monotonic()
        self._logged = 0
        self._suppressed = 0

    def dropped(self, addr: tuple[Any, ...], reason: str) -> None:
        self.tick()
        if self._logged < self.limit:
            self._logged += 1
            log.warning("dropping connection from %s: %s", addr, reason)
        else:
            self._suppressed += 1

    def tick(self) -> None:
        """Close the window if it is over (called on every drop and once a second)."""
        now = time.monotonic()
        if now - self._window_start >= self.interval:
            if self._suppressed:
                log.warning("dropped %d more connections in the last %.0f s (handshake failures; "
                            "see TransportServer.handshakes_failed)", self._suppressed,
                            now - self._window_start)
            self._window_start = now
            self._logged = 0
            self._suppressed = 0


class TransportServer:
    """Listens on ``host:port`` and serves the partitions of ``partition_manager``."""

    def __init__(self, loop: IOThread, partition_manager: ResultPartitionManager, host: str = "127.0.0.1",
                 port: int = 0,
                 max_frame_length: int = P.DEFAULT_MAX_FRAME_LENGTH, credit_based: bool = True,
                 handshake: HandshakeConfig | None = None):
        self.loop = loop
        self.partition_manager = partition_manager
        self.max_frame_length = max_frame_length
        self.credit_based = credit_based
        self.handshake = handshake if handshake is not None else HandshakeConfig()
        self.connections: set[ServerConnection] = set()
        # The native engine serving plain-TCP, credit-based connections (set by the environment).
        self.engine: ReceiveEngine | None = None
        # Connections in their handshake, oldest first (I/O thread only).
        self._handshaking: dict[_Handshaking, None] = {}
        self._drop_log = _DropLog()
        # At most a quarter of the process's descriptors in handshakes (the rest for connections).
        descriptors = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._max_handshakes = max(16, min(_MAX_HANDSHAKES, descriptors // 4))
        self.handshakes_failed = 0
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
            self.sock.listen(_BACKLOG)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.address: Address = self.sock.getsockname()[:2]
        self._closed = False
        loop.run_sync(loop.register, self.sock, selectors.EVENT_READ, self._on_accept)
        self._timer = loop.call_later(1.0, self._check_timeouts)

    @property
    def num_handshaking(self) -> int:
        """Connections accepted and still in their handshake (read on any thread: a snapshot)."""
        return len(self._handshaking)

    def _on_accept(self, mask: int) -> None:
        # Accept everything the kernel holds: each handshake runs on this thread without blocking
        # it. At the cap, the oldest handshake is dropped to make room, so that peers that stall
        # (or a flood of them) can delay a legitimate peer by at most one accept, never by their
        # own timeout.
        while True:
            try:
                sock, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors or memory: the listening socket stays readable, so
                    # free a handshake's socket and retry, or stop accepting for a moment
                    # (never spin on the error).
                    if self._handshaking:
                        next(iter(self._handshaking)).fail(f"cannot accept a connection: {err}")
                        continue
                    self._drop_log.dropped(("?", 0), f"cannot accept a connection: {err}")
                    self.loop.unregister(self.sock)
                    self.loop.call_later(0.1, self._resume_accept)
                return
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            except OSError:            # reset before we looked at it
                sock.close()
                continue
            if len(self._handshaking) >= self._max_handshakes:
                oldest = next(iter(self._handshaking))
                oldest.fail(f"more than {self._max_handshakes} connections in their handshake: the "
                            f"oldest is dropped")
            self._handshaking[_Handshaking(self, sock, addr)] = None

    def _resume_accept(self) -> None:
        if not self._closed:
            self.loop.register(self.sock, selectors.EVENT_READ, self._on_accept)
            self._on_accept(selectors.EVENT_READ)

    def _adopt(self, hs: _Handshaking, sock: socket.socket) -> None:
        """The handshake (and TLS) succeeded: the socket becomes a ServerConnection."""
        hs.detach()
        if self._closed:
            sock.close()
            return
        self.connections.add(ServerConnection(self, sock, hs.addr))

    def _check_timeouts(self) -> None:
        if self._closed:
            return
        self._drop_log.tick()
        self.partition_manager.check_request_timeouts()
        self._timer = self.loop.call_later(1.0, self._check_timeouts)

    def _connection_closed(self, conn: ServerConnection) -> None:
        self.connections.discard(conn)

    def close(self) -> None:
        """Close the listening socket and every connection (on the I/O thread)."""
        def _close() -> None:
            if self._closed:
                return
            self._closed = True
            self.loop.cancel(self._timer)
            self.loop.unregister(self.sock)
            self.sock.close()
            for hs in list(self._handshaking):
                hs.detach()
                hs.sock.close()
            for conn in list(self.connections):
                conn.close("server shut down")
        self.loop.run_sync(_close)
