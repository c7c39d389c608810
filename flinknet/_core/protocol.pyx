"""Flink's network frames: encoders and a validating streaming decoder (Flink's
``NettyMessage`` and ``NettyMessageClientDecoderDelegate``).

Every frame is ``[frame length i32 BE][magic 0xBADC0FFE][message id u8][body]`` where the frame
length counts the whole frame. Bodies are Flink 2.3's, byte for byte (``vectors/netty_messages.json``),
except ErrorResponse, which carries a flinknet error instead of a Java-serialized Throwable::

    ErrorResponse body = u16 type length | type (UTF-8) | i32 message length | message (UTF-8)
                         | u8 has receiver (0/1) | [receiver id (16)]

(an error without a receiver id is fatal for the connection, as in Flink).

Encoders return ``bytes``; :func:`encode_buffer_response_header` returns only the 47-byte header
of a BufferResponse so that the sender writes it and the buffer's own memory in one gather write.

:class:`FrameDecoder` is fed whatever the socket returned (``feed(data)``) and returns the complete
messages. Each frame's header is checked (length within ``[9, max_frame_length]``, magic, known id,
exact body size for the fixed-size messages, credit and sizes in range) before anything is
allocated for it. A BufferResponse's payload is copied once, straight from the received bytes into
the buffer that ``allocator(receiver_id, size, data_type, subpartition_id)`` returns (the receiving
channel's credit buffer); an allocator returning None discards the payload (a released channel).
A bad frame raises :class:`CorruptFrameError` and poisons the decoder: the connection must close.

Name map: ``NettyMessage.BufferResponse`` … ``SegmentId`` → the message classes below;
``NettyMessageEncoder`` → the ``encode_*`` functions; ``NettyMessageClientDecoderDelegate`` /
``NettyMessageServerDecoder`` → :class:`FrameDecoder`.
"""

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from libc.stdint cimport int32_t, uint32_t, int64_t
from libc.string cimport memcpy

from flinknet._core.buffer cimport Buffer, NetworkBuffer
from flinknet._core.defs cimport *

import enum
from collections import namedtuple

from flinknet._core.buffer import DataType
from flinknet.errors import CorruptFrameError

MAGIC_NUMBER = 0xBADC0FFE
FRAME_HEADER_LENGTH = 9
BUFFER_RESPONSE_HEADER_LENGTH = 38
#: Default bound of a frame the decoder accepts (a 32 KiB buffer plus headers fits many times).
DEFAULT_MAX_FRAME_LENGTH = 16 * 1024 * 1024

cdef enum:
    _MAGIC = 0xBADC0FFE
    _HDR = 9
    _BR_HDR = 38
    _MAX_DATA_TYPE = 13
    _MAX_PARTIAL_BUFFERS = 4096


class MessageId(enum.IntEnum):
    """Flink's message ids (``NettyMessage.*.ID``)."""
    BUFFER_RESPONSE = 0
    ERROR_RESPONSE = 1
    PARTITION_REQUEST = 2
    TASK_EVENT_REQUEST = 3
    CANCEL_PARTITION_REQUEST = 4
    CLOSE_REQUEST = 5
    ADD_CREDIT = 6
    RESUME_CONSUMPTION = 7
    ACK_ALL_USER_RECORDS_PROCESSED = 8
    BACKLOG_ANNOUNCEMENT = 9
    NEW_BUFFER_SIZE = 10
    SEGMENT_ID = 11


# -- messages ------------------------------------------------------------------------------------

# DataType members by value: constructing an IntEnum costs about a microsecond per frame.
cdef tuple _DATA_TYPES = tuple(DataType)

BufferResponse = namedtuple("BufferResponse", [
    "receiver_id", "subpartition_id", "sequence_number", "backlog", "data_type", "is_compressed",
    "size", "buffer", "partial_buffer_sizes"], module=__name__)
BufferResponse.__doc__ = ("Server → client: one buffer (``buffer`` is None if it was discarded); "
                          "``partial_buffer_sizes`` is empty unless the payload holds several buffers.")
ErrorResponse = namedtuple("ErrorResponse", ["error_type", "message", "receiver_id"], module=__name__)
ErrorResponse.__doc__ = "Server → client: an error, for one channel or (receiver_id None) the whole connection."
ErrorResponse.is_fatal_error = property(lambda self: self.receiver_id is None)
PartitionRequest = namedtuple("PartitionRequest", [
    "partition_id", "start_index", "end_index", "receiver_id", "credit"], module=__name__)
PartitionRequest.__doc__ = "Client → server: read subpartitions start..end (inclusive) of a partition (60-byte id)."
TaskEventRequest = namedtuple("TaskEventRequest", ["event", "partition_id", "receiver_id"], module=__name__)
TaskEventRequest.__doc__ = "Client → server: a task event (EventSerializer bytes) for a partition's producer."
CancelPartitionRequest = namedtuple("CancelPartitionRequest", ["receiver_id"], module=__name__)
CancelPartitionRequest.__doc__ = "Client → server: stop sending to this receiver."
CloseRequest = namedtuple("CloseRequest", [], module=__name__)
CloseRequest.__doc__ = "Client → server: the client closes the connection."
AddCredit = namedtuple("AddCredit", ["credit", "receiver_id"], module=__name__)
AddCredit.__doc__ = "Client → server: ``credit`` more buffers are free for this receiver."
ResumeConsumption = namedtuple("ResumeConsumption", ["receiver_id"], module=__name__)
ResumeConsumption.__doc__ = "Client → server: resume a subpartition blocked by an aligned barrier."
AckAllUserRecordsProcessed = namedtuple("AckAllUserRecordsProcessed", ["receiver_id"], module=__name__)
AckAllUserRecordsProcessed.__doc__ = "Client → server: all user records were processed."
BacklogAnnouncement = namedtuple("BacklogAnnouncement", ["backlog", "receiver_id"], module=__name__)
BacklogAnnouncement.__doc__ = "Server → client: backlog of a reader without credit."
NewBufferSize = namedtuple("NewBufferSize", ["buffer_size", "receiver_id"], module=__name__)
NewBufferSize.__doc__ = "Client → server: the desired buffer size (debloating)."
SegmentId = namedtuple("SegmentId", ["subpartition_id", "segment_id", "receiver_id"], module=__name__)
SegmentId.__doc__ = "Client → server: the segment a tiered-storage reader wants next."


# -- encoders ------------------------------------------------------------------------------------

cdef inline bytes _id16(object value, str what):
    cdef bytes b = value if type(value) is bytes else bytes(value)
    if len(b) != 16:
        raise ValueError(f"{what} must be 16 bytes, got {len(b)}")
    return b


cdef inline int32_t _i32(object value, str what, int64_t minimum) except? -1:
    cdef int64_t v = value
    if v < minimum or v > 2147483647:
        raise ValueError(f"{what} must be in [{minimum}, 2**31), got {v}")
    return <int32_t>v


cdef bytes _frame(int msg_id, Py_ssize_t body_length):
    """A frame of ``body_length`` body bytes (zeroed) with its header filled in."""
    cdef Py_ssize_t total = _HDR + body_length
    if total > 2147483647:
        raise ValueError("frame too large")
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef char *p = PyBytes_AS_STRING(out)
    fn_store_be_i32(p, <int32_t>total)
    fn_store_be_i32(p + 4, <int32_t>_MAGIC)
    p[8] = <char>msg_id
    return out


def encode_buffer_response_header(receiver_id, subpartition_id, sequence_number, backlog,
                                  data_type, bint is_compressed, size):
    """The 47-byte header of a BufferResponse whose ``size`` payload bytes follow it."""
    cdef bytes rid = _id16(receiver_id, "receiver_id")
    cdef int32_t sp = _i32(subpartition_id, "subpartition_id", 0)
    cdef int32_t seq = _i32(sequence_number, "sequence_number", -2147483648)
    cdef int32_t bl = _i32(backlog, "backlog", -1)
    cdef int32_t n = _i32(size, "size", 0)
    cdef int dt = data_type
    if dt < 1 or dt > _MAX_DATA_TYPE:
        raise ValueError(f"invalid data type {dt}")
    if <int64_t>_HDR + _BR_HDR + n > 2147483647:
        raise ValueError("frame too large")
    cdef bytes out = PyBytes_FromStringAndSize(NULL, _HDR + _BR_HDR)
    cdef char *p = PyBytes_AS_STRING(out)
    fn_store_be_i32(p, <int32_t>(_HDR + _BR_HDR + n))
    fn_store_be_i32(p + 4, <int32_t>_MAGIC)
    p[8] = 0
    memcpy(p + 9, PyBytes_AS_STRING(rid), 16)
    fn_store_be_i32(p + 25, sp)
    fn_store_be_i32(p + 29, 0)          # numOfPartialBuffers
    fn_store_be_i32(p + 33, seq)
    fn_store_be_i32(p + 37, bl)
    p[41] = <char>dt
    p[42] = 1 if is_compressed else 0
    fn_store_be_i32(p + 43, n)
    return out


def encode_buffer_response(receiver_id, subpartition_id, sequence_number, backlog, data_type,
                           bint is_compressed, payload, partial_buffer_sizes=()):
    """A whole BufferResponse frame (header + payload copied); for tests and small messages."""
    cdef bytes data = bytes(payload)
    cdef list parts = [int(x) for x in partial_buffer_sizes]
    if parts and sum(parts) != len(data):
        raise ValueError("partial buffer sizes must add up to the payload size")
    header = bytearray(encode_buffer_response_header(receiver_id, subpartition_id, sequence_number,
                                                     backlog, data_type, is_compressed, len(data)))
    if parts:
        fn_store_be_i32(<char *>header + 0, <int32_t>(_HDR + _BR_HDR + 4 * len(parts) + len(data)))
        tmp = bytearray(4)
        tmp[:] = len(parts).to_bytes(4, "big")
        header[29:33] = tmp
        return bytes(header) + b"".join(p.to_bytes(4, "big", signed=True) for p in parts) + data
    return bytes(header) + data


def encode_error_response(str error_type, str message, receiver_id=None):
    """An ErrorResponse in flinknet's layout (see the module documentation)."""
    cdef bytes t = error_type.encode("utf-8")
    cdef bytes m = message.encode("utf-8")
    if len(t) > 65535:
        raise ValueError("error type too long")
    cdef bytes rid = None if receiver_id is None else _id16(receiver_id, "receiver_id")
    cdef Py_ssize_t body = 2 + len(t) + 4 + len(m) + 1 + (16 if rid is not None else 0)
    cdef bytes out = _frame(1, body)
    cdef char *p = PyBytes_AS_STRING(out) + _HDR
    fn_store_be_i16(p, <int16_t><uint16_t>len(t))
    memcpy(p + 2, PyBytes_AS_STRING(t), len(t))
    p += 2 + len(t)
    fn_store_be_i32(p, <int32_t>len(m))
    memcpy(p + 4, PyBytes_AS_STRING(m), len(m))
    p += 4 + len(m)
    p[0] = 1 if rid is not None else 0
    if rid is not None:
        memcpy(p + 1, PyBytes_AS_STRING(rid), 16)
    return out


def encode_partition_request(partition_id, start_index, end_index, receiver_id, credit):
    """PartitionRequest: 60-byte ResultPartitionID, index set, receiver id, initial credit."""
    cdef bytes pid = bytes(partition_id)
    if len(pid) != 60:
        raise ValueError(f"partition_id must be 60 bytes, got {len(pid)}")
    cdef bytes rid = _id16(receiver_id, "receiver_id")
    cdef int32_t s = _i32(start_index, "start_index", 0)
    cdef int32_t e = _i32(end_index, "end_index", 0)
    if e < s:
        raise ValueError("end_index < start_index")
    cdef int32_t c = _i32(credit, "credit", 0)
    cdef bytes out = _frame(2, 88)
    cdef char *p = PyBytes_AS_STRING(out) + _HDR
    memcpy(p, PyBytes_AS_STRING(pid), 60)
    fn_store_be_i32(p + 60, s)
    fn_store_be_i32(p + 64, e)
    memcpy(p + 68, PyBytes_AS_STRING(rid), 16)
    fn_store_be_i32(p + 84, c)
    return out


def encode_task_event_request(event, partition_id, receiver_id):
    """TaskEventRequest: EventSerializer bytes, 60-byte partition id, receiver id."""
    cdef bytes ev = bytes(event)
    cdef bytes pid = bytes(partition_id)
    if len(pid) != 60:
        raise ValueError(f"partition_id must be 60 bytes, got {len(pid)}")
    cdef bytes rid = _id16(receiver_id, "receiver_id")
    cdef bytes out = _frame(3, 4 + len(ev) + 76)
    cdef char *p = PyBytes_AS_STRING(out) + _HDR
    fn_store_be_i32(p, <int32_t>len(ev))
    memcpy(p + 4, PyBytes_AS_STRING(ev), len(ev))
    memcpy(p + 4 + len(ev), PyBytes_AS_STRING(pid), 60)
    memcpy(p + 64 + len(ev), PyBytes_AS_STRING(rid), 16)
    return out


cdef bytes _receiver_only(int msg_id, receiver_id):
    cdef bytes rid = _id16(receiver_id, "receiver_id")
    cdef bytes out = _frame(msg_id, 16)
    memcpy(PyBytes_AS_STRING(out) + _HDR, PyBytes_AS_STRING(rid), 16)
    return out


cdef bytes _int_and_receiver(int msg_id, int32_t value, receiver_id):
    cdef bytes rid = _id16(receiver_id, "receiver_id")
    cdef bytes out = _frame(msg_id, 20)
    cdef char *p = PyBytes_AS_STRING(out) + _HDR
    fn_store_be_i32(p, value)
    memcpy(p + 4, PyBytes_AS_STRING(rid), 16)
    return out


def encode_cancel_partition_request(receiver_id):
    return _receiver_only(4, receiver_id)


def encode_close_request():
    return _frame(5, 0)


def encode_add_credit(credit, receiver_id):
    return _int_and_receiver(6, _i32(credit, "credit", 1), receiver_id)


def encode_resume_consumption(receiver_id):
    return _receiver_only(7, receiver_id)


def encode_ack_all_user_records_processed(receiver_id):
    return _receiver_only(8, receiver_id)


def encode_backlog_announcement(backlog, receiver_id):
    return _int_and_receiver(9, _i32(backlog, "backlog", 1), receiver_id)


def encode_new_buffer_size(buffer_size, receiver_id):
    return _int_and_receiver(10, _i32(buffer_size, "buffer_size", 1), receiver_id)


def encode_segment_id(subpartition_id, segment_id, receiver_id):
    cdef int32_t sp = _i32(subpartition_id, "subpartition_id", 0)
    cdef int32_t sg = _i32(segment_id, "segment_id", 1)
    cdef bytes rid = _id16(receiver_id, "receiver_id")
    cdef bytes out = _frame(11, 24)
    cdef char *p = PyBytes_AS_STRING(out) + _HDR
    fn_store_be_i32(p, sp)
    fn_store_be_i32(p + 4, sg)
    memcpy(p + 8, PyBytes_AS_STRING(rid), 16)
    return out


def encode_message(msg):
    """Encode any message tuple of this module (except BufferResponse with a live buffer)."""
    t = type(msg)
    if t is BufferResponse:
        return encode_buffer_response(msg.receiver_id, msg.subpartition_id, msg.sequence_number,
                                      msg.backlog, msg.data_type, msg.is_compressed,
                                      memoryview(msg.buffer) if msg.buffer is not None else b"",
                                      msg.partial_buffer_sizes)
    if t is ErrorResponse:
        return encode_error_response(msg.error_type, msg.message, msg.receiver_id)
    if t is PartitionRequest:
        return encode_partition_request(msg.partition_id, msg.start_index, msg.end_index,
                                        msg.receiver_id, msg.credit)
    if t is TaskEventRequest:
        return encode_task_event_request(msg.event, msg.partition_id, msg.receiver_id)
    if t is CancelPartitionRequest:
        return encode_cancel_partition_request(msg.receiver_id)
    if t is CloseRequest:
        return encode_close_request()
    if t is AddCredit:
        return encode_add_credit(msg.credit, msg.receiver_id)
    if t is ResumeConsumption:
        return encode_resume_consumption(msg.receiver_id)
    if t is AckAllUserRecordsProcessed:
        return encode_ack_all_user_records_processed(msg.receiver_id)
    if t is BacklogAnnouncement:
        return encode_backlog_announcement(msg.backlog, msg.receiver_id)
    if t is NewBufferSize:
        return encode_new_buffer_size(msg.buffer_size, msg.receiver_id)
    if t is SegmentId:
        return encode_segment_id(msg.subpartition_id, msg.segment_id, msg.receiver_id)
    raise TypeError(f"not a flinknet message: {type(msg).__name__}")


# -- decoder -------------------------------------------------------------------------------------

cdef enum _State:
    ST_HEADER = 0        # collecting the 9-byte frame header
    ST_BODY = 1          # collecting a whole (small) body into _staging
    ST_BR_HEADER = 2     # collecting the BufferResponse header (+ partial sizes)
    ST_BR_PAYLOAD = 3    # copying a BufferResponse payload into its buffer
    ST_FAILED = 4
    ST_BR_WAIT = 5       # the allocator said WAIT: the rest of the input is kept until resume()


class _Wait:
    """The allocator's answer "no buffer yet": the decoder pauses (TCP-backpressure mode)."""

    __slots__ = ()

    def __repr__(self):
        return "FrameDecoder.WAIT"


WAIT = _Wait()


@cython.final
cdef class FrameDecoder:
    """Streaming, validating decoder of flinknet/Flink frames.

    ``FrameDecoder(max_frame_length=16 MiB, max_buffer_size=None, allocator=None, side="client")``:
    ``max_buffer_size`` bounds a BufferResponse payload (the segment size); ``allocator`` gives
    the buffer a payload goes to (None: payloads are dropped); ``side`` is ``"client"`` (accepts
    the server's messages: BufferResponse, ErrorResponse, BacklogAnnouncement), ``"server"``
    (the client's) or ``"any"``.
    """

    cdef readonly Py_ssize_t max_frame_length
    cdef readonly Py_ssize_t max_buffer_size
    cdef object _allocator
    cdef int _side   # 0 any, 1 client (server→client messages), 2 server
    cdef int _state
    cdef char _hdr[_HDR]
    cdef Py_ssize_t _have
    cdef int _msg_id
    cdef Py_ssize_t _frame_length
    cdef bytearray _staging
    cdef Py_ssize_t _need
    # BufferResponse in progress
    cdef bytes _br_receiver
    cdef int32_t _br_sp, _br_seq, _br_backlog, _br_size, _br_parts
    cdef int _br_type
    cdef bint _br_compressed
    cdef tuple _br_partial
    cdef Buffer _br_buffer
    cdef Py_ssize_t _br_written
    cdef object _error
    cdef bytes _pending
    cdef readonly int64_t frames_decoded
    cdef readonly int64_t bytes_decoded

    def __init__(self, Py_ssize_t max_frame_length=DEFAULT_MAX_FRAME_LENGTH, max_buffer_size=None,
                 allocator=None, str side="client"):
        if max_frame_length < _HDR + _BR_HDR or max_frame_length > 2147483647:
            raise ValueError(f"max_frame_length must be in [{_HDR + _BR_HDR}, 2**31), got {max_frame_length}")
        self.max_frame_length = max_frame_length
        self.max_buffer_size = max_frame_length if max_buffer_size is None else int(max_buffer_size)
        if self.max_buffer_size < 0:
            raise ValueError("max_buffer_size must be >= 0")
        if side not in ("client", "server", "any"):
            raise ValueError("side must be 'client', 'server' or 'any'")
        self._side = {"any": 0, "client": 1, "server": 2}[side]
        self._allocator = allocator
        self._state = ST_HEADER
        self._have = 0
        self._staging = bytearray()
        self._error = None
        self._pending = b""

    cdef int _fail(self, str message) except -1:
        self._state = ST_FAILED
        self._error = CorruptFrameError(message)
        self._release_partial()
        raise self._error

    cdef void _release_partial(self):
        cdef Buffer b = self._br_buffer
        self._br_buffer = None
        if b is not None:
            try:
                b.recycle()
            except BaseException:
                pass

    def close(self):
        """Give back a buffer held for a half-received BufferResponse; the decoder is unusable after."""
        self._release_partial()
        self._pending = b""
        if self._state != ST_FAILED:
            self._state = ST_FAILED
            self._error = CorruptFrameError("decoder closed")

    @property
    def is_failed(self):
        return self._state == ST_FAILED

    @property
    def in_frame(self):
        """True while a frame is partly received (a cut connection then lost data mid-frame)."""
        return self._state != ST_HEADER or self._have != 0

    @property
    def is_paused(self):
        """True after the allocator answered WAIT, until :meth:`resume` finds a buffer."""
        return self._state == ST_BR_WAIT

    @property
    def pending_bytes(self):
        """Bytes received but held back while paused (at most one ``feed``'s worth)."""
        return len(self._pending)

    def resume(self):
        """Ask the allocator again for the paused BufferResponse; returns the messages decoded
        from the held-back input, or None while the allocator still answers WAIT."""
        cdef list out = []
        cdef bytes rest
        cdef Py_buffer view
        if self._state == ST_FAILED:
            raise self._error
        if self._state != ST_BR_WAIT:
            return out
        try:
            if self._allocate() == 1:
                return None
            if self._br_size == 0:
                self._finish_buffer_response(out)
            rest, self._pending = self._pending, b""
            if rest:
                PyObject_GetBuffer(rest, &view, PyBUF_SIMPLE)
                try:
                    self._feed_from(<const char *>view.buf, view.len, out)
                finally:
                    PyBuffer_Release(&view)
        except BaseException:
            for m in out:
                if type(m) is BufferResponse and m.buffer is not None:
                    m.buffer.recycle()
            raise
        return out

    def feed(self, data):
        """Decode ``data`` (any contiguous bytes); returns the list of complete messages.

        While paused (the allocator answered WAIT) the decoder takes no input: call
        :meth:`resume` first."""
        cdef Py_buffer view
        cdef list out = []
        if self._state == ST_FAILED:
            raise self._error
        if self._state == ST_BR_WAIT:
            raise RuntimeError("the decoder is paused waiting for a buffer: resume() first")
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self.bytes_decoded += view.len
            self._feed_from(<const char *>view.buf, view.len, out)
        except BaseException:
            # The connection is lost: the buffers of frames decoded before the bad one go back.
            for m in out:
                if type(m) is BufferResponse and m.buffer is not None:
                    m.buffer.recycle()
            raise
        finally:
            PyBuffer_Release(&view)
        return out

    cdef int _feed_from(self, const char *p, Py_ssize_t n, list out) except -1:
        cdef Py_ssize_t take
        while n > 0:
            if self._state == ST_BR_WAIT:
                self._pending = PyBytes_FromStringAndSize(p, n)
                return 0
            if self._state == ST_HEADER:
                take = min(n, _HDR - self._have)
                memcpy(self._hdr + self._have, p, take)
                self._have += take
                p += take
                n -= take
                if self._have == _HDR:
                    self._have = 0
                    self._start_frame(out)
            elif self._state == ST_BODY or self._state == ST_BR_HEADER:
                take = min(n, self._need - len(self._staging))
                self._staging += PyBytes_FromStringAndSize(p, take)
                p += take
                n -= take
                if len(self._staging) == self._need:
                    if self._state == ST_BODY:
                        self._state = ST_HEADER
                        out.append(self._decode_body(self._msg_id, self._staging))
                        self.frames_decoded += 1
                    else:
                        self._start_payload(out)
            elif self._state == ST_BR_PAYLOAD:
                take = min(n, self._br_size - self._br_written)
                if self._br_buffer is not None:
                    memcpy(self._br_buffer.data() + self._br_written, p, take)
                self._br_written += take
                p += take
                n -= take
                if self._br_written == self._br_size:
                    self._finish_buffer_response(out)
            else:
                raise self._error
        return 0

    cdef int _start_frame(self, list out) except -1:
        cdef int32_t length = fn_load_be_i32(self._hdr)
        cdef uint32_t magic = <uint32_t>fn_load_be_i32(self._hdr + 4)
        cdef int msg_id = <unsigned char>self._hdr[8]
        if length < _HDR:
            self._fail(f"frame length {length} is smaller than the frame header")
        if length > self.max_frame_length:
            self._fail(f"frame length {length} exceeds the maximum of {self.max_frame_length}")
        if magic != _MAGIC:
            self._fail("Network stream corrupted: received incorrect magic number.")
        if msg_id > 11:
            self._fail(f"Received unknown message from producer: id {msg_id}")
        if self._side == 1 and msg_id not in (0, 1, 9):
            self._fail(f"message id {msg_id} is not sent by a server")
        if self._side == 2 and msg_id in (0, 1, 9):
            self._fail(f"message id {msg_id} is not sent by a client")
        self._msg_id = msg_id
        self._frame_length = length
        cdef Py_ssize_t body = length - _HDR
        cdef Py_ssize_t expected = -1
        if msg_id == 0:
            if body < _BR_HDR:
                self._fail(f"BufferResponse frame of {length} bytes is shorter than its header")
            self._staging = bytearray()
            self._need = _BR_HDR
            self._br_parts = -1
            self._state = ST_BR_HEADER
            return 0
        elif msg_id == 2:
            expected = 88
        elif msg_id in (4, 7, 8):
            expected = 16
        elif msg_id == 5:
            expected = 0
        elif msg_id in (6, 9, 10):
            expected = 20
        elif msg_id == 11:
            expected = 24
        if expected >= 0 and body != expected:
            self._fail(f"{MessageId(msg_id).name} body must be {expected} bytes, got {body}")
        self._staging = bytearray()
        self._need = body
        if body == 0:
            # Only CloseRequest has an empty body (checked above).
            if msg_id != 5:
                self._fail(f"{MessageId(msg_id).name} frame without a body")
            self._state = ST_HEADER
            self.frames_decoded += 1
            out.append(CloseRequest())
            return 0
        self._state = ST_BODY
        return 0

    cdef object _decode_body(self, int msg_id, bytearray body):
        cdef const char *p = body
        cdef Py_ssize_t n = len(body)
        cdef int32_t v, w, tl, ml, el
        if msg_id == 2:
            v = fn_load_be_i32(p + 60)
            w = fn_load_be_i32(p + 64)
            if v < 0 or w < v:
                self._fail(f"PartitionRequest with invalid subpartition range [{v}, {w}]")
            el = fn_load_be_i32(p + 84)
            if el < 0:
                self._fail(f"PartitionRequest with negative credit {el}")
            return PartitionRequest(bytes(body[:60]), v, w, bytes(body[68:84]), el)
        if msg_id == 3:
            if n < 4 + 76:
                self._fail("TaskEventRequest too short")
            el = fn_load_be_i32(p)
            if el < 0 or 4 + <Py_ssize_t>el + 76 != n:
                self._fail(f"TaskEventRequest event length {el} does not match its frame")
            return TaskEventRequest(bytes(body[4:4 + el]), bytes(body[4 + el:64 + el]),
                                    bytes(body[64 + el:80 + el]))
        if msg_id == 4:
            return CancelPartitionRequest(bytes(body))
        if msg_id == 7:
            return ResumeConsumption(bytes(body))
        if msg_id == 8:
            return AckAllUserRecordsProcessed(bytes(body))
        if msg_id in (6, 9, 10):
            v = fn_load_be_i32(p)
            if v <= 0:
                self._fail(f"{MessageId(msg_id).name} with non-positive value {v}")
            if msg_id == 6:
                return AddCredit(v, bytes(body[4:]))
            if msg_id == 9:
                return BacklogAnnouncement(v, bytes(body[4:]))
            return NewBufferSize(v, bytes(body[4:]))
        if msg_id == 11:
            v = fn_load_be_i32(p)
            w = fn_load_be_i32(p + 4)
            if v < 0 or w <= 0:
                self._fail(f"SegmentId with invalid subpartition {v} or segment {w}")
            return SegmentId(v, w, bytes(body[8:]))
        if msg_id == 1:
            if n < 2 + 4 + 1:
                self._fail("ErrorResponse too short")
            tl = <uint16_t>fn_load_be_i16(p)
            if 2 + tl + 4 + 1 > n:
                self._fail("ErrorResponse type length beyond its frame")
            ml = fn_load_be_i32(p + 2 + tl)
            if ml < 0 or 2 + tl + 4 + <Py_ssize_t>ml + 1 > n:
                self._fail("ErrorResponse message length beyond its frame")
            v = <unsigned char>p[2 + tl + 4 + ml]
            w = 2 + tl + 4 + ml + 1
            if v > 1 or w + 16 * v != n:
                self._fail("ErrorResponse receiver flag does not match its frame")
            try:
                etype = body[2:2 + tl].decode("utf-8")
                msg = body[6 + tl:6 + tl + ml].decode("utf-8")
            except UnicodeDecodeError:
                self._fail("ErrorResponse text is not UTF-8")
            return ErrorResponse(etype, msg, bytes(body[w:w + 16]) if v else None)
        self._fail(f"unexpected message id {msg_id}")

    cdef int _start_payload(self, list out) except -1:
        cdef const char *p = self._staging
        cdef int32_t sp, parts, seq, backlog, size, s
        cdef int dt, comp, i
        cdef Py_ssize_t total
        if self._br_parts < 0:
            parts = fn_load_be_i32(p + 20)
            if parts < 0 or parts > _MAX_PARTIAL_BUFFERS:
                self._fail(f"BufferResponse with {parts} partial buffers")
            if parts > 0:
                self._br_parts = parts
                self._need = _BR_HDR + 4 * parts
                if self._need + _HDR > self._frame_length:
                    self._fail("BufferResponse partial sizes beyond its frame")
                return 0
            self._br_parts = 0
        parts = self._br_parts
        sp = fn_load_be_i32(p + 16)
        seq = fn_load_be_i32(p + 24)
        backlog = fn_load_be_i32(p + 28)
        dt = <unsigned char>p[32]
        comp = <unsigned char>p[33]
        size = fn_load_be_i32(p + 34)
        if sp < 0:
            self._fail(f"BufferResponse with negative subpartition {sp}")
        if backlog < -1:
            self._fail(f"BufferResponse with invalid backlog {backlog}")
        if dt < 1 or dt > _MAX_DATA_TYPE:
            self._fail(f"BufferResponse with invalid data type {dt}")
        if comp > 1:
            self._fail(f"BufferResponse with invalid compression flag {comp}")
        if size < 0 or size > self.max_buffer_size:
            self._fail(f"BufferResponse of {size} bytes (maximum {self.max_buffer_size})")
        total = _HDR + _BR_HDR + 4 * <Py_ssize_t>parts + size
        if total != self._frame_length:
            self._fail(f"BufferResponse size {size} does not match its frame length {self._frame_length}")
        cdef int64_t psum = 0
        cdef list plist
        partial = ()
        if parts:
            plist = []
            for i in range(parts):
                s = fn_load_be_i32(p + _BR_HDR + 4 * i)
                if s < 0:
                    self._fail("BufferResponse with a negative partial buffer size")
                psum += s
                plist.append(s)
            if psum != size:
                self._fail("BufferResponse partial buffer sizes do not add up to its size")
            partial = tuple(plist)
        self._br_receiver = PyBytes_FromStringAndSize(p, 16)
        self._br_sp = sp
        self._br_seq = seq
        self._br_backlog = backlog
        self._br_type = dt
        self._br_compressed = comp
        self._br_size = size
        self._br_partial = partial
        self._br_written = 0
        self._br_buffer = None
        if self._allocate() == 1:
            return 0
        if size == 0:
            self._finish_buffer_response(out)
        return 0

    cdef int _allocate(self) except -1:
        """Get the payload's buffer: 0 and ST_BR_PAYLOAD, or 1 and ST_BR_WAIT (allocator said WAIT)."""
        cdef Py_ssize_t size = self._br_size
        if self._allocator is not None:
            b = self._allocator(self._br_receiver, size, self._br_type, self._br_sp)
            if b is WAIT:
                self._state = ST_BR_WAIT
                return 1
            if b is not None:
                if not isinstance(b, Buffer):
                    raise TypeError("the allocator must return a Buffer, None or WAIT")
                if (<Buffer>b)._max_capacity < size or (<Buffer>b)._read_only:
                    try:
                        (<Buffer>b).recycle()
                    finally:
                        self._fail(f"the receiving buffer cannot hold {size} bytes")
                self._br_buffer = <Buffer>b
        self._state = ST_BR_PAYLOAD
        return 0

    cdef int _finish_buffer_response(self, list out) except -1:
        cdef Buffer b = self._br_buffer
        self._br_buffer = None
        if b is not None:
            b._writer_index = self._br_size
            b._reader_index = 0
            b._data_type = self._br_type
            b._compressed = self._br_compressed
        self._state = ST_HEADER
        self.frames_decoded += 1
        out.append(BufferResponse(self._br_receiver, self._br_sp, self._br_seq, self._br_backlog,
                                  _DATA_TYPES[self._br_type], bool(self._br_compressed), self._br_size,
                                  b, self._br_partial))
        return 0
