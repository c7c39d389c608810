"""Bad input from a remote producer fails the channel it was meant for, with an error that names
the problem and the peer; the connection, the other channels and the process carry on, and every
buffer goes back to its pool.

The producer is hand-written: a listening socket on loopback that runs the server side of
flinknet's handshake, reads the consumer's PartitionRequests and answers with BufferResponse
frames built here byte by byte. Every case runs on both receive paths: the native engine
(``flinknet.network.native-io`` true) and the Python I/O thread.

* A corrupt event (unknown tag, truncated body, non-zero bytes after the event) surfaced as
  ``BufferError`` ("cannot recycle the buffer: 1 memoryview(s) still export this memory"), hiding
  the CorruptEventError and leaking the event's buffer: the decoder's views of the buffer lived
  on in the error's traceback while the gate recycled it.
* A buffer flagged compressed (Flink's ``isCompressed``) was read as plain records: flinknet has
  no codec, so it must refuse it with :class:`~flinknet.errors.UnsupportedCompressionError`.
* A failed channel (ready at every read) starved the other channels of its gate: the gate took
  the channels its native doorbell named only when no channel was queued at all.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from flinknet import errors
from flinknet._core import protocol as P
from flinknet._core.buffer import DataType
from flinknet.environment import NetworkEnvironment
from flinknet.errors import CorruptEventError, FlinknetError, UnsupportedCompressionError
from flinknet.events import EndOfPartitionEvent, to_serialized_event
from flinknet.ids import ResultPartitionID
from flinknet.transport.handshake import HandshakeConfig, server_handshake

SMALL = {"taskmanager.memory.segment-size": "4kb", "taskmanager.memory.network.max": "2mb"}
BAD, GOOD = 0, 1                     # the subpartitions (and channel indexes) of every gate here
RECORD = b"\x00\x00\x00\x04fine"     # one length-prefixed record
EOP = to_serialized_event(EndOfPartitionEvent())

Answer = Callable[[P.PartitionRequest], list[bytes]]


def _frame(request: P.PartitionRequest, seq: int, data_type: DataType, payload: bytes,
           compressed: bool = False) -> bytes:
    return P.encode_buffer_response(request.receiver_id, request.start_index, seq, 0, data_type,
                                    compressed, payload)


def _well_behaved(request: P.PartitionRequest) -> list[bytes]:
    """One record, then EndOfPartition."""
    return [_frame(request, 0, DataType.DATA_BUFFER, RECORD),
            _frame(request, 1, DataType.EVENT_BUFFER, EOP)]


class FakeProducer:
    """A hand-written producer on 127.0.0.1: for each PartitionRequest on any connection it
    sends the frames ``answers[subpartition](request)``."""

    def __init__(self, answers: dict[int, Answer]):
        self._answers = answers
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.address = self._listener.getsockname()[:2]
        self._closed = threading.Event()
        self._conns: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn, peer), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        decoder = P.FrameDecoder(side="server")
        try:
            sock = server_handshake(conn, HandshakeConfig(), peer)
            sock.settimeout(None)
            while data := sock.recv(65536):
                for msg in decoder.feed(data):
                    if type(msg) is P.PartitionRequest:
                        sock.sendall(b"".join(self._answers[msg.start_index](msg)))
        except OSError:
            pass          # the consumer went away, or close() shut the socket
        finally:
            decoder.close()

    def close(self) -> None:
        self._closed.set()
        self._threads[0].join(10)
        self._listener.close()
        for conn in self._conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        for t in self._threads:
            t.join(10)
            assert not t.is_alive()


def _wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture(params=[True, False], ids=["native-io", "python-io"])
def consumer(request) -> Iterator[NetworkEnvironment]:
    with NetworkEnvironment({**SMALL, "flinknet.network.native-io": request.param}) as env:
        yield env
        assert _wait_for(lambda: env.network_buffer_pool.is_whole), (
            f"{env.network_buffer_pool.total_segments - env.network_buffer_pool.available_segments}"
            " segment(s) not back in the pool")


def _read_both(env: NetworkEnvironment, bad: Answer) -> tuple[FlinknetError, str]:
    """Read a gate of two channels from one fake producer (one connection): BAD answered by
    ``bad``, GOOD by a well-behaved subpartition. Returns the error BAD's channel failed with
    (every read of it raised the same one) and the peer as the error should name it.

    GOOD must deliver its record and EndOfPartition in full; the gate is closed after."""
    producer = FakeProducer({BAD: bad, GOOD: _well_behaved})
    pid = ResultPartitionID()
    gate = env.create_input_gate([(pid, BAD, producer.address), (pid, GOOD, producer.address)])
    try:
        raised: list[BaseException] = []
        good: list[object] = []
        deadline = time.monotonic() + 30      # the failed channel is ready at every read
        while (len(good) < 2 or not raised) and time.monotonic() < deadline:
            try:
                boe = gate.get_next(timeout=20)
            except FlinknetError as err:
                raised.append(err)
                continue
            assert boe is not None and boe.channel_info.input_channel_idx == GOOD, boe
            if boe.buffer is not None:
                good.append(boe.buffer.to_bytes())
                boe.buffer.recycle()
            else:
                good.append(boe.event)
        assert good == [RECORD, EndOfPartitionEvent()]
        assert raised and all(e is raised[0] for e in raised), raised
        assert gate.get_channel(BAD).failure_cause is raised[0]
        assert env.connection_manager.num_connections == 1     # the connection survived
        error = raised[0]
        assert isinstance(error, FlinknetError)
        return error, f"{producer.address[0]}:{producer.address[1]}"
    finally:
        gate.close()
        producer.close()


# -- 1. corrupt events ------------------------------------------------------------------------

CORRUPT_EVENTS = {
    "unknown tag": (struct.pack(">i", 99), "unknown tag 99"),
    "negative tag": (struct.pack(">i", -7), "unknown tag -7"),
    "truncated tag": (b"\x00\x00", "Incomplete event"),
    "truncated CancelCheckpointMarker": (struct.pack(">i", 4) + b"\x00" * 3, "Incomplete event"),
    "truncated CheckpointBarrier": (struct.pack(">iqq", 1, 42, 7), "Incomplete event"),
    "bad EndOfData mode": (struct.pack(">ib", 8, 9), "end of data mode"),
    "garbage after EndOfPartition": (EOP + b"\x00\x01\x02", "ends at byte 4 of 7"),
    "garbage after CancelCheckpointMarker": (struct.pack(">iq", 4, 1) + b"\xff", "ends at byte 12 of 13"),
}


@pytest.mark.parametrize("data_type", [DataType.EVENT_BUFFER, DataType.PRIORITIZED_EVENT_BUFFER],
                         ids=lambda t: t.name)
@pytest.mark.parametrize("case", list(CORRUPT_EVENTS))
def test_corrupt_event_fails_its_channel_with_corrupt_event_error(consumer, case, data_type):
    payload, problem = CORRUPT_EVENTS[case]
    error, peer = _read_both(consumer, lambda r: [_frame(r, 0, data_type, payload)])
    assert isinstance(error, CorruptEventError), repr(error)
    message = str(error)
    assert problem in message and peer in message and f"#{BAD}" in message, message


def test_empty_event_fails_its_channel(consumer):
    pid = ResultPartitionID()
    producer = FakeProducer({0: lambda r: [_frame(r, 0, DataType.EVENT_BUFFER, b""),
                                           _frame(r, 1, DataType.EVENT_BUFFER, EOP)]})
    gate = consumer.create_input_gate([(pid, 0, producer.address)])
    try:
        with pytest.raises(CorruptEventError, match="empty|Incomplete"):
            gate.get_next(timeout=20)
    finally:
        gate.close()
        producer.close()


def test_zero_padding_after_an_event_is_not_garbage(consumer):
    """Flink sends an event in its serializer's whole backing array: zeros may follow it."""
    pid = ResultPartitionID()
    producer = FakeProducer({0: lambda r: [_frame(r, 0, DataType.EVENT_BUFFER, EOP + b"\x00" * 124)]})
    gate = consumer.create_input_gate([(pid, 0, producer.address)])
    try:
        boe = gate.get_next(timeout=20)
        assert boe is not None and boe.event == EndOfPartitionEvent()
        assert gate.is_finished
    finally:
        gate.close()
        producer.close()


# -- 2. compressed buffers --------------------------------------------------------------------

@pytest.mark.parametrize("data_type, payload", [(DataType.DATA_BUFFER, RECORD),
                                                (DataType.EVENT_BUFFER, EOP)], ids=["data", "event"])
def test_compressed_buffer_is_refused(consumer, data_type, payload):
    error, peer = _read_both(consumer, lambda r: [_frame(r, 0, data_type, payload, compressed=True)])
    assert isinstance(error, UnsupportedCompressionError), repr(error)
    message = str(error)
    assert "compress" in message and "not supported" in message, message
    assert peer in message and f"#{BAD}" in message, message


def test_compressed_buffer_after_good_ones_fails_the_channel(consumer):
    """Records before the compressed buffer are read; the compressed one is never handed out."""
    pid = ResultPartitionID()
    producer = FakeProducer({0: lambda r: [_frame(r, 0, DataType.DATA_BUFFER, RECORD),
                                           _frame(r, 1, DataType.DATA_BUFFER, RECORD, compressed=True),
                                           _frame(r, 2, DataType.EVENT_BUFFER, EOP)]})
    gate = consumer.create_input_gate([(pid, 0, producer.address)])
    try:
        boe = gate.get_next(timeout=20)
        assert boe is not None and boe.buffer is not None
        assert boe.buffer.to_bytes() == RECORD
        boe.buffer.recycle()
        with pytest.raises(UnsupportedCompressionError, match="compressed"):
            gate.get_next(timeout=20)
        with pytest.raises(UnsupportedCompressionError):   # the channel stays failed
            gate.get_next(timeout=20)
    finally:
        gate.close()
        producer.close()


def test_unsupported_compression_error_in_the_tree():
    assert issubclass(UnsupportedCompressionError, FlinknetError)
    assert issubclass(UnsupportedCompressionError, ValueError)
    assert "UnsupportedCompressionError" in errors.__all__
    import flinknet
    assert flinknet.UnsupportedCompressionError is UnsupportedCompressionError
