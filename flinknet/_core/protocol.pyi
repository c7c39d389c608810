"""Type stubs for flinknet._core.protocol (compiled)."""

import enum
from collections.abc import Callable, Iterable
from typing import Final, Literal, NamedTuple, TypeAlias, final

from typing_extensions import Buffer as _BufferLike

from flinknet._core.buffer import Buffer, DataType

# Re-exported: flinknet.errors defines it; this module raises it and keeps the old name.
from flinknet.errors import CorruptFrameError as CorruptFrameError

MAGIC_NUMBER: Final = 0xBADC0FFE
FRAME_HEADER_LENGTH: Final = 9
BUFFER_RESPONSE_HEADER_LENGTH: Final = 38
DEFAULT_MAX_FRAME_LENGTH: Final = 16777216

class MessageId(enum.IntEnum):
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

class BufferResponse(NamedTuple):
    receiver_id: bytes
    subpartition_id: int
    sequence_number: int
    backlog: int
    data_type: DataType
    is_compressed: bool
    size: int
    buffer: Buffer | None
    partial_buffer_sizes: tuple[int, ...]

class ErrorResponse(NamedTuple):
    error_type: str
    message: str
    receiver_id: bytes | None
    @property
    def is_fatal_error(self) -> bool: ...

class PartitionRequest(NamedTuple):
    partition_id: bytes
    start_index: int
    end_index: int
    receiver_id: bytes
    credit: int

class TaskEventRequest(NamedTuple):
    event: bytes
    partition_id: bytes
    receiver_id: bytes

class CancelPartitionRequest(NamedTuple):
    receiver_id: bytes

class CloseRequest(NamedTuple): ...

class AddCredit(NamedTuple):
    credit: int
    receiver_id: bytes

class ResumeConsumption(NamedTuple):
    receiver_id: bytes

class AckAllUserRecordsProcessed(NamedTuple):
    receiver_id: bytes

class BacklogAnnouncement(NamedTuple):
    backlog: int
    receiver_id: bytes

class NewBufferSize(NamedTuple):
    buffer_size: int
    receiver_id: bytes

class SegmentId(NamedTuple):
    subpartition_id: int
    segment_id: int
    receiver_id: bytes

def encode_buffer_response_header(receiver_id: bytes, subpartition_id: int, sequence_number: int,
                                  backlog: int, data_type: DataType | int, is_compressed: bool,
                                  size: int) -> bytes: ...
def encode_buffer_response(receiver_id: bytes, subpartition_id: int, sequence_number: int, backlog: int,
                           data_type: DataType | int, is_compressed: bool, payload: _BufferLike,
                           partial_buffer_sizes: Iterable[int] = ()) -> bytes: ...
def encode_error_response(error_type: str, message: str, receiver_id: bytes | None = None) -> bytes: ...
def encode_partition_request(partition_id: bytes, start_index: int, end_index: int, receiver_id: bytes,
                             credit: int) -> bytes: ...
def encode_task_event_request(event: bytes, partition_id: bytes, receiver_id: bytes) -> bytes: ...
def encode_cancel_partition_request(receiver_id: bytes) -> bytes: ...
def encode_close_request() -> bytes: ...
def encode_add_credit(credit: int, receiver_id: bytes) -> bytes: ...
def encode_resume_consumption(receiver_id: bytes) -> bytes: ...
def encode_ack_all_user_records_processed(receiver_id: bytes) -> bytes: ...
def encode_backlog_announcement(backlog: int, receiver_id: bytes) -> bytes: ...
def encode_new_buffer_size(buffer_size: int, receiver_id: bytes) -> bytes: ...
def encode_segment_id(subpartition_id: int, segment_id: int, receiver_id: bytes) -> bytes: ...
# Every message a FrameDecoder returns and encode_message takes (stub-only, hence private).
_Message: TypeAlias = (BufferResponse | ErrorResponse | PartitionRequest | TaskEventRequest
                       | CancelPartitionRequest | CloseRequest | AddCredit | ResumeConsumption
                       | AckAllUserRecordsProcessed | BacklogAnnouncement | NewBufferSize | SegmentId)

def encode_message(msg: _Message) -> bytes: ...

class _Wait: ...

WAIT: Final[_Wait]
"""An allocator's answer "no buffer yet": the decoder pauses until resume()."""

@final
class FrameDecoder:
    """Streaming, validating decoder of frames."""

    # Read-only (Cython ``cdef readonly``).
    @property
    def max_frame_length(self) -> int: ...
    @property
    def max_buffer_size(self) -> int: ...
    @property
    def frames_decoded(self) -> int: ...
    @property
    def bytes_decoded(self) -> int: ...
    # allocator(receiver_id, size, data_type, subpartition_id) -> the Buffer the payload goes to,
    # None (drop the payload) or WAIT (pause until resume()).
    def __init__(self, max_frame_length: int = 16777216, max_buffer_size: int | None = None,
                 allocator: Callable[[bytes, int, int, int], Buffer | _Wait | None] | None = None,
                 side: Literal["client", "server", "any"] = "client") -> None: ...
    def feed(self, data: _BufferLike) -> list[_Message]: ...
    def resume(self) -> list[_Message] | None: ...
    def close(self) -> None: ...
    @property
    def is_paused(self) -> bool: ...
    @property
    def pending_bytes(self) -> int: ...
    @property
    def is_failed(self) -> bool: ...
    @property
    def in_frame(self) -> bool: ...
