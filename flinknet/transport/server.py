"""The sending side: a TCP server whose connections serve subpartition views (Flink's
``NettyServer`` with its ``PartitionRequestQueue`` and ``PartitionRequestServerHandler``).

One :class:`ServerConnection` per client connection (Flink's ``PartitionRequestQueue`` plus
``PartitionRequestServerHandler``): a reader per receiver id with its credit; readers with credit
and data (or an event at the head) take turns, one BufferResponse each; a data buffer costs one
credit; every BufferResponse carries the subpartition's backlog; a reader with backlog but no credit
and no exclusive buffers gets a BacklogAnnouncement. BufferResponses go out as a gather write of
their 47-byte header and the buffer's own memory (several frames per system call); a buffer goes
back to its pool once the kernel took all of it.

A reader released before its subpartition's EndOfPartition went out (the connection closed or
reset, a CancelPartitionRequest, a failure serving it) tells the view who the consumer was and
why it left (:meth:`_Reader.release`): the partition counts that as a lost consumer and fails its
producer with :class:`~flinknet.errors.ConsumerLostError`. This is the control path of both the
Python I/O thread and the native engine (whose connection failures and cancellations reach
:meth:`ServerConnection.close` and ``_handle`` with the GIL); nothing is added per buffer.
"""

from __future__ import annotations

import errno
import logging
import resource
import selectors
import socket
import ssl
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flinknet._core import protocol as P  # noqa: N812 (the wire protocol, as in the client)
from flinknet._core.buffer import DataType
from flinknet._core.engine import NativeConnection, OutputQueue, ReceiveEngine
from flinknet.errors import PartitionNotFoundError, PeerLimitError
from flinknet.ids import ResultPartitionID, ResultSubpartitionIndexSet
from flinknet.interfaces import ResultSubpartitionView
from flinknet.transport.eventloop import IOThread, TimerHandle, configure_socket
from flinknet.transport.handshake import HandshakeConfig, HandshakeError, ServerHandshake
from flinknet.types import Address

if TYPE_CHECKING:
    from flinknet.config import NetworkConfig
    from flinknet.partition.manager import ResultPartitionManager, ViewCallback

__all__ = ["TransportServer", "ServerConnection", "ServerLimits"]

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


@dataclass(frozen=True)
class ServerLimits:
    """What one peer may take from a server; exceeding a bound closes that peer's connection
    with a :class:`~flinknet.errors.PeerLimitError` naming the configuration key (Flink has no
    such bounds: its TaskManagers trust each other).

    - ``max_connections`` (``flinknet.network.max-connections``): established connections in
      total; one more is refused after its handshake.
    - ``max_connections_per_host`` (``...max-connections-per-host``): the same, per peer address.
    - ``max_pending_requests`` (``...max-pending-requests-per-connection``): partition requests of
      one connection waiting for their partition to be registered.
    - ``max_unsent_bytes`` (``...max-unsent-bytes-per-connection``): bytes queued for a peer that
      does not read them. The Python I/O thread stops reading that peer's requests until half of
      them drained (the queue can pass the bound by the answers to one read, 256 KiB of
      requests); the native engine closes the connection.
    - ``max_request_frame_length`` (``...max-request-frame-length``): the largest frame a client
      may send (requests are under 100 bytes; a task event is the only variable one), which
      bounds the partial frame a connection can hold.
    - ``idle_timeout`` (``flinknet.network.idle-timeout``): seconds a connection may stay without
      readers and without input before it is closed; 0 never.
    - ``liveness_timeout`` (``flinknet.network.liveness-timeout``): a peer that vanished, or in
      credit-based mode stopped reading what it has credit for (a frozen process), fails its
      connection after about this many seconds (keepalive and ``TCP_USER_TIMEOUT``, see
      :func:`~flinknet.transport.eventloop.configure_socket`); 0: the kernel's defaults.

    Receive buffers are not per connection: the Python I/O thread reads every plain connection
    into one buffer (the decoder keeps only what belongs to a partial frame).
    """

    max_connections: int = 1024
    max_connections_per_host: int = 256
    max_pending_requests: int = 4096
    max_unsent_bytes: int = 64 * 1024 * 1024
    max_request_frame_length: int = 64 * 1024
    idle_timeout: float = 600.0
    liveness_timeout: float = 60.0

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_connections_per_host", "max_pending_requests"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.max_unsent_bytes, int) or self.max_unsent_bytes < 65536:
            raise ValueError(f"max_unsent_bytes must be >= 65536, got {self.max_unsent_bytes!r}")
        if not 1024 <= self.max_request_frame_length <= 2147483647:
            raise ValueError("max_request_frame_length must be in [1024, 2**31), got "
                             f"{self.max_request_frame_length!r}")
        if not self.idle_timeout >= 0:
            raise ValueError(f"idle_timeout must be >= 0, got {self.idle_timeout!r}")
        if not self.liveness_timeout >= 0:
            raise ValueError(f"liveness_timeout must be >= 0, got {self.liveness_timeout!r}")

    @classmethod
    def from_config(cls, config: NetworkConfig) -> ServerLimits:
        return cls(config.max_connections, config.max_connections_per_host,
                   config.max_pending_requests_per_connection, config.max_unsent_bytes_per_connection,
                   config.max_request_frame_length, config.idle_timeout, config.liveness_timeout)


class _Reader:
    """One receiver's view of one subpartition (CreditBasedSequenceNumberingViewReader)."""

    __slots__ = ("conn", "receiver_id", "subpartition", "credit", "initial_credit", "view", "queued",
                 "released", "pending_listener", "outq", "release_reason")

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
        self.release_reason = ""

    @property
    def consumer(self) -> str:
        """Who reads this subpartition, for a lost-consumer error."""
        host, port = self.conn.address[:2]
        return f"remote consumer {host}:{port} (receiver {self.receiver_id.hex()})"

    # BufferAvailabilityListener: called on producer threads, handed to the I/O thread.
    def notify_data_available(self, view: ResultSubpartitionView) -> None:
        self.conn.loop.call_soon_threadsafe(self.conn._enqueue, self)

    def notify_priority_event(self, sequence_number: int) -> None:
        self.conn.loop.call_soon_threadsafe(self.conn._enqueue, self)

    def release(self, reason: str = "its reader was released") -> None:
        """Let go of the view (once); ``reason`` says why the consumer left, should the
        subpartition not have sent its EndOfPartition yet (then the consumer is lost)."""
        if not self.released:
            self.released = True
            self.release_reason = reason
            view, self.view = self.view, None
            outq, self.outq = self.outq, None
            # The view first: a natively served subpartition tells a normal end (its output
            # queue empty, EndOfPartition taken by the engine) from a lost consumer by what is
            # still queued there, which releasing the queue would drop.
            if view is not None:
                _release_view(view, self.consumer, reason)
            if outq is not None:
                native = self.conn.native
                if native is not None:
                    native.unregister_output(outq)
                outq.release()


def _release_view(view: ResultSubpartitionView, consumer: str, reason: str) -> None:
    """Release ``view`` saying who its consumer was and why it left (a pipelined view turns that
    into a lost consumer if its EndOfPartition was not sent yet; other views just release)."""
    release = getattr(view, "release_by_consumer", None)
    if release is not None:
        release(consumer, reason)
    else:
        view.release_all_resources()


class ServerConnection:
    """The server end of one TCP connection (runs on the I/O thread)."""

    def __init__(self, server: TransportServer, sock: socket.socket, address: tuple[Any, ...]):
        self.server = server
        self.loop = server.loop
        self.sock = sock
        self.address = address
        limits = self.limits = server.limits
        self.decoder = P.FrameDecoder(max_frame_length=limits.max_request_frame_length, side="server")
        self.readers: dict[bytes, _Reader] = {}
        self.num_pending = 0            # readers waiting for their partition to be registered
        self.last_input = time.monotonic()
        # Receivers this side answered with an ErrorResponse (their reader is gone): messages the
        # client sent before it saw the error (AddCredit, ResumeConsumption, ...) are dropped
        # instead of failing the whole connection. Bounded: oldest forgotten first.
        self._failed_receivers: dict[bytes, None] = {}
        self.available: deque[_Reader] = deque()
        # [bytes-like, offset, buffer-or-None] parts not yet sent (lists: the offset moves)
        self.out: deque[list[Any]] = deque()
        self.out_frames = 0
        self.out_bytes = 0              # bytes in ``out`` not sent yet
        self._reading_paused = False    # over max_unsent_bytes: the peer's input waits
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
        self._frames_in = 0
        self._frames_done = 0
        self._flooded = False
        self._max_frames_queued = 2 * limits.max_pending_requests + 1024
        if engine is not None and not self.tls and self.credit_based:
            self.native = NativeConnection(engine, sock, self, limits.max_request_frame_length,
                                           limits.max_request_frame_length,
                                           max_unwritten_bytes=limits.max_unsent_bytes, server=True)
            self.native.start()
            return
        self.loop.register(sock, selectors.EVENT_READ, self._on_event)

    # -- the native engine's handler (its I/O thread, with the GIL) --------------------------

    def on_frame(self, frame: bytes) -> None:
        # The engine reads faster than this side may handle: frames waiting for the I/O thread
        # are bounded (a legitimate client sends a couple per channel, then waits for answers).
        # Each counter has one writer: _frames_in the engine's thread, _frames_done the loop's.
        if self._flooded:
            return
        if self._frames_in - self._frames_done >= self._max_frames_queued:
            self._flooded = True
            self.loop.call_soon_threadsafe(
                self.close_for_limit, f"more than {self._max_frames_queued} requests wait to be "
                "handled", "flinknet.network.max-pending-requests-per-connection")
            return
        self._frames_in += 1
        self.loop.call_soon_threadsafe(self._on_native_frame, frame)

    def _on_native_frame(self, frame: bytes) -> None:
        self._frames_done += 1
        self._on_data(frame)

    def close_for_limit(self, message: str, key: str) -> None:
        """The peer exceeded a bound: log it (rate-limited), count it, and close the connection
        after a fatal PeerLimitError (I/O thread)."""
        err = PeerLimitError(f"{message} (peer {self.address[0]}:{self.address[1]}; bound: {key})",
                             self.address, key)
        self.server._note_limit(key, self.address, f"closing the connection: {err}")
        self._send_fatal(err)

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
        if self._reading_paused:
            return False
        buf = self.server._recv_buf
        try:
            n = self.sock.recv_into(buf)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except OSError as err:
            self.close(f"connection error: {err}")
            return False
        if n == 0:
            self.close("the client closed the connection")
            return False
        with memoryview(buf) as view, view[:n] as data:
            self._on_data(data)    # the decoder copies what it keeps: the buffer is shared
        return True

    def _on_data(self, data: bytes | memoryview) -> None:
        if self._closing or self.closed:
            return   # a fatal error is on its way: the rest of the input is not looked at
        self.last_input = time.monotonic()
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
                self._release_reader(reader, "it cancelled its partition request "
                                             "(CancelPartitionRequest) before the end of the partition")
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
        if self.num_pending >= self.limits.max_pending_requests:
            self.close_for_limit(f"more than {self.limits.max_pending_requests} partition requests "
                                 "wait for their partition on one connection",
                                 "flinknet.network.max-pending-requests-per-connection")
            return
        reader = _Reader(self, msg.receiver_id, msg.credit, msg.start_index)
        self.readers[msg.receiver_id] = reader

        def on_view(view: ResultSubpartitionView | None, error: BaseException | None) -> None:  # any thread
            self.loop.call_soon_threadsafe(self._on_view, reader, view, error)

        reader.pending_listener = (partition_id, on_view)
        self.num_pending += 1
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
        if reader.pending_listener is not None:
            reader.pending_listener = None
            self.num_pending -= 1
        if reader.released or self.closed:
            if view is not None:    # the consumer left while its view was on its way
                _release_view(view, reader.consumer, reader.release_reason or
                             "its connection closed before its partition request was served")
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
        self.out_bytes += len(header) + size
        if more:
            reader.queued = True
            self.available.append(reader)

    def _reader_failed(self, reader: _Reader, cause: BaseException) -> None:
        self.readers.pop(reader.receiver_id, None)
        self._remember_failed(reader.receiver_id)
        self._queue_frame(P.encode_error_response(type(cause).__name__, str(cause), reader.receiver_id))
        # After the producer's release this is no loss (the subpartition knows); otherwise the
        # consumer was sent an error instead of the rest of its subpartition.
        self._release_reader(reader, f"serving it failed ({type(cause).__name__}: {cause})")

    def _remember_failed(self, receiver_id: bytes) -> None:
        failed = self._failed_receivers
        failed[receiver_id] = None
        if len(failed) > _MAX_FAILED_RECEIVERS:
            del failed[next(iter(failed))]

    def _queue_frame(self, frame: bytes) -> None:
        # Control frames in a row share one bytearray entry: a peer that makes the server queue
        # many small answers costs their bytes, not a list and a bytes object each.
        out = self.out
        self.out_bytes += len(frame)
        if out:
            last = out[-1]
            if last[2] is None and type(last[0]) is bytearray and len(last[0]) < _TLS_CHUNK:
                last[0] += frame
                return
        out.append([bytearray(frame), 0, None])
        self.out_frames += 1

    def _set_interest(self) -> None:
        """Register for what the connection waits for (Python path): writability while bytes
        wait, readability unless the peer leaves more than ``max_unsent_bytes`` unread (then its
        requests wait in the kernel until it reads; resumed below half the bound)."""
        limit = self.limits.max_unsent_bytes
        paused = self.out_bytes > (limit // 2 if self._reading_paused else limit)
        if paused and not self._reading_paused:
            self.server._note_limit("flinknet.network.max-unsent-bytes-per-connection", self.address,
                                    f"{self.out_bytes} bytes wait for the peer to read them: "
                                    "not reading its requests until it does")
        self._reading_paused = paused
        events = (0 if paused else selectors.EVENT_READ) | (selectors.EVENT_WRITE if self.out else 0)
        self.loop.modify(self.sock, events or selectors.EVENT_READ, self._on_event)

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
                self._set_interest()
                return False
        self._set_interest()
        return True

    def _consume(self, sent: int) -> None:
        """``sent`` bytes of the queued parts went: pop them, recycling finished buffers."""
        self.out_bytes -= sent
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
        self.out_frames = 0
        self.out_bytes = 0
        if parts and self.native is not None:
            try:
                self.native.send(b"".join(parts))
            except BufferError as err:
                self.server._note_limit("flinknet.network.max-unsent-bytes-per-connection", self.address,
                                        f"the peer does not read: {err}")
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
                self._set_interest()
                return False
            except OSError as err:
                self._tls_chunk = None
                self.close(f"send failed: {err}")
                return False
            self._tls_chunk = None
            self._consume(sent)
            if sent < len(chunk):   # not expected without partial writes; keep the rest
                self._tls_chunk = chunk[sent:]
        self._set_interest()
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

    def _release_reader(self, reader: _Reader, reason: str) -> None:
        if reader.pending_listener is not None:
            pid, on_view = reader.pending_listener
            self.server.partition_manager.cancel_pending_request(pid, on_view)
            reader.pending_listener = None
            self.num_pending -= 1
        reader.release(reason)

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
        lost = "its connection was closed or reset before the end of the partition" + (
            f" ({reason})" if reason else "")
        for reader in list(self.readers.values()):
            self._release_reader(reader, lost)
        self.readers.clear()
        self.available.clear()
        while self.out:
            data, _, buffer = self.out.popleft()
            if buffer is not None:
                data.release()
                buffer.recycle()
        self.out_frames = 0
        self.out_bytes = 0
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
        self.warn("dropping connection from %s: %s", addr, reason)

    def warn(self, fmt: str, *args: object) -> None:
        self.tick()
        if self._logged < self.limit:
            self._logged += 1
            log.warning(fmt, *args)
        else:
            self._suppressed += 1

    def tick(self) -> None:
        """Close the window if it is over (called on every drop and once a second)."""
        now = time.monotonic()
        if now - self._window_start >= self.interval:
            if self._suppressed:
                log.warning("dropped %d more connections (or peers over a limit) in the last %.0f s "
                            "(see TransportServer.handshakes_failed and .limit_hits)", self._suppressed,
                            now - self._window_start)
            self._window_start = now
            self._logged = 0
            self._suppressed = 0


class TransportServer:
    """Listens on ``host:port`` and serves the partitions of ``partition_manager``."""

    def __init__(self, loop: IOThread, partition_manager: ResultPartitionManager, host: str = "127.0.0.1",
                 port: int = 0,
                 max_frame_length: int = P.DEFAULT_MAX_FRAME_LENGTH, credit_based: bool = True,
                 handshake: HandshakeConfig | None = None, limits: ServerLimits | None = None):
        self.loop = loop
        self.partition_manager = partition_manager
        self.max_frame_length = max_frame_length
        self.credit_based = credit_based
        self.handshake = handshake if handshake is not None else HandshakeConfig()
        self.limits = limits if limits is not None else ServerLimits()
        self.connections: set[ServerConnection] = set()
        self._per_host: Counter[str] = Counter()     # established connections per peer address
        #: connections closed (or refused) per bound, by configuration key
        self.limit_hits: Counter[str] = Counter()
        # One receive buffer for every connection the Python I/O thread reads (its decoder keeps
        # only a partial frame): idle connections cost no receive memory.
        self._recv_buf = bytearray(_RECV_SIZE)
        # The native engine serving plain-TCP, credit-based connections (set by the environment).
        self.engine: ReceiveEngine | None = None
        # Connections in their handshake, oldest first (I/O thread only).
        self._handshaking: dict[_Handshaking, None] = {}
        self._drop_log = _DropLog()
        # At most a quarter of the process's descriptors in handshakes (the rest for connections).
        descriptors = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._max_handshakes = max(16, min(_MAX_HANDSHAKES, descriptors // 4))
        self.handshakes_failed = 0
        if not isinstance(host, str) or not host.strip():
            raise ValueError(f"host must name a host or address (\"0.0.0.0\" or \"::\" for every "
                             f"interface), got {host!r}")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
            self.sock.listen(_BACKLOG)
        except OSError as err:
            self.sock.close()
            # the same type (gaierror, OSError(EADDRINUSE), ...), naming what was asked for
            what = err.strerror or str(err)
            raise type(err)(err.errno, f"cannot listen on {host}:{port} "
                                       f"(taskmanager.network.bind-host, taskmanager.data.port): "
                                       f"{what}") from err
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
                configure_socket(sock, self.limits.liveness_timeout, self.credit_based)
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
        """The handshake (and TLS) succeeded: the socket becomes a ServerConnection, unless the
        connection limits are reached (then it is told why and closed)."""
        hs.detach()
        if self._closed:
            sock.close()
            return
        host = str(hs.addr[0])
        conn = ServerConnection(self, sock, hs.addr)
        self.connections.add(conn)
        self._per_host[host] += 1
        limits = self.limits
        if len(self.connections) > limits.max_connections:
            conn.close_for_limit(f"more than {limits.max_connections} connections",
                                 "flinknet.network.max-connections")
        elif self._per_host[host] > limits.max_connections_per_host:
            conn.close_for_limit(f"more than {limits.max_connections_per_host} connections from {host}",
                                 "flinknet.network.max-connections-per-host")

    def _note_limit(self, key: str, addr: tuple[Any, ...], message: str) -> None:
        """A peer hit a bound: counted per key, logged with the drop log's rate limit."""
        self.limit_hits[key] += 1
        self._drop_log.warn("peer %s:%s: %s", addr[0], addr[1], message)

    def _check_idle(self, now: float) -> None:
        timeout = self.limits.idle_timeout
        if not timeout:
            return
        for conn in list(self.connections):
            if not conn.readers and not conn.closed and not conn._closing and now - conn.last_input > timeout:
                conn.close_for_limit(f"no partition requested and nothing received for {timeout:g} s",
                                     "flinknet.network.idle-timeout")

    def _check_timeouts(self) -> None:
        if self._closed:
            return
        self._drop_log.tick()
        self.partition_manager.check_request_timeouts()
        self._check_idle(time.monotonic())
        self._timer = self.loop.call_later(1.0, self._check_timeouts)

    def _connection_closed(self, conn: ServerConnection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            host = str(conn.address[0])
            left = self._per_host[host] - 1
            if left > 0:
                self._per_host[host] = left
            else:
                del self._per_host[host]

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
