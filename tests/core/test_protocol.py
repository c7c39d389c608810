"""The frame codec against Flink's own frames (vectors/netty_messages.json), and bad input."""

from __future__ import annotations

import json
import pathlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flinknet._core import protocol as P
from flinknet._core.buffer import DataType, NetworkBuffer
from flinknet._core.memory import MemorySegment
from flinknet.ids import ResultPartitionID
from tests.helpers import RecordingRecycler

VECTORS = json.loads((pathlib.Path(__file__).parent.parent / "vectors" / "netty_messages.json").read_text())
FRAMES = {m["name"]: bytes.fromhex(m["hex"]) for m in VECTORS["messages"]}
RID = bytes.fromhex("01020304050607081112131415161718")
PID_HEX = ("2122232425262728313233343536373800000005606162636465666768696a6b6c6d6e6f"
           "414243444546474851525354555657580000000600000002")
PID = bytes.fromhex(PID_HEX)


def test_constants_match_flink():
    assert VECTORS["magic_number_hex"] == f"{P.MAGIC_NUMBER:08x}"
    assert VECTORS["frame_header_length"] == P.FRAME_HEADER_LENGTH
    assert VECTORS["buffer_response_message_header_length"] == P.BUFFER_RESPONSE_HEADER_LENGTH


def test_partition_id_layout_matches_flink():
    pid = ResultPartitionID.from_bytes(PID)
    assert pid.to_bytes() == PID
    assert pid.partition_id.partition_num == 5
    assert pid.producer_id.execution_vertex_id.subtask_index == 6
    assert pid.producer_id.attempt_number == 2


ENCODED = {
    "BufferResponse(DATA_BUFFER, 9 bytes, seq=3, subpartition=1, backlog=4)":
        lambda: P.encode_buffer_response(RID, 1, 3, 4, DataType.DATA_BUFFER, False, b"\x00\x00\x00\x05hello"),
    "BufferResponse(DATA_BUFFER, 0 bytes, seq=0, subpartition=0, backlog=0)":
        lambda: P.encode_buffer_response(RID, 0, 0, 0, DataType.DATA_BUFFER, False, b""),
    "BufferResponse(END_OF_PARTITION event, seq=7, subpartition=2, backlog=0)":
        lambda: P.encode_buffer_response(RID, 2, 7, 0, DataType.END_OF_PARTITION, False, b"\x00" * 4),
    "BufferResponse(DATA_BUFFER flagged compressed, seq=1, subpartition=0, backlog=2)":
        lambda: P.encode_buffer_response(RID, 0, 1, 2, DataType.DATA_BUFFER, True, b"\x00\x00\x00\x05hello"),
    "BufferResponse(FullyFilledBuffer with 2 partial buffers 5+6 bytes, seq=4, subpartition=1, backlog=1)":
        lambda: P.encode_buffer_response(RID, 1, 4, 1, DataType.DATA_BUFFER, False,
                                         bytes.fromhex("0000000161000000026263"), (5, 6)),
    "BacklogAnnouncement(backlog=5)": lambda: P.encode_backlog_announcement(5, RID),
    "PartitionRequest(subpartition 3, credit=2)": lambda: P.encode_partition_request(PID, 3, 3, RID, 2),
    "PartitionRequest(subpartitions 1..4, credit=0)": lambda: P.encode_partition_request(PID, 1, 4, RID, 0),
    "CancelPartitionRequest": lambda: P.encode_cancel_partition_request(RID),
    "CloseRequest": lambda: P.encode_close_request(),
    "AddCredit(credit=3)": lambda: P.encode_add_credit(3, RID),
    "ResumeConsumption": lambda: P.encode_resume_consumption(RID),
    "AckAllUserRecordsProcessed": lambda: P.encode_ack_all_user_records_processed(RID),
    "NewBufferSize(4096)": lambda: P.encode_new_buffer_size(4096, RID),
    "SegmentId(subpartitionId=1, segmentId=9)": lambda: P.encode_segment_id(1, 9, RID),
}


@pytest.mark.parametrize("name", sorted(ENCODED))
def test_encoders_match_flink_bytes(name):
    assert ENCODED[name]() == FRAMES[name]


def test_every_non_error_vector_is_covered():
    names = {m["name"] for m in VECTORS["messages"] if m["msg_id"] not in (1, 3)}
    assert names == set(ENCODED)


def test_task_event_request_matches_flink():
    (m,) = [m for m in VECTORS["messages"] if m["msg_id"] == 3]
    frame = bytes.fromhex(m["hex"])
    (msg,) = P.FrameDecoder(side="server").feed(frame)
    assert isinstance(msg, P.TaskEventRequest)
    assert P.encode_task_event_request(msg.event, msg.partition_id, msg.receiver_id) == frame
    from flinknet.events import TerminationEvent, from_serialized_event

    assert isinstance(from_serialized_event(msg.event), TerminationEvent)


def test_header_is_the_first_47_bytes_of_flinks_frame():
    frame = FRAMES["BufferResponse(DATA_BUFFER, 9 bytes, seq=3, subpartition=1, backlog=4)"]
    assert P.encode_buffer_response_header(RID, 1, 3, 4, DataType.DATA_BUFFER, False, 9) == frame[:47]


class Allocator:
    """Hands out pool-like buffers (segments of ``size``) and records what it gave."""

    def __init__(self, size=64):
        self.recycler = RecordingRecycler()
        self.size = size
        self.given = []

    def __call__(self, receiver_id, size, data_type, subpartition):
        b = NetworkBuffer(MemorySegment(self.size), self.recycler)
        self.given.append(b)
        return b


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 47, 1000])
def test_decoder_reassembles_flinks_frames_at_any_chunking(chunk):
    stream = b"".join(FRAMES[n] for n in ENCODED if n.startswith("BufferResponse") or n.startswith("Backlog"))
    alloc = Allocator()
    dec = P.FrameDecoder(max_buffer_size=64, allocator=alloc, side="client")
    msgs = []
    for i in range(0, len(stream), chunk):
        msgs += dec.feed(stream[i:i + chunk])
    assert [type(m).__name__ for m in msgs] == ["BufferResponse"] * 5 + ["BacklogAnnouncement"]
    first = msgs[0]
    assert (first.receiver_id, first.subpartition_id, first.sequence_number, first.backlog) == (RID, 1, 3, 4)
    assert first.data_type == DataType.DATA_BUFFER and not first.is_compressed
    assert first.buffer.to_bytes() == b"\x00\x00\x00\x05hello"
    assert msgs[2].buffer.data_type == DataType.END_OF_PARTITION
    assert msgs[3].is_compressed and msgs[3].buffer.is_compressed
    assert msgs[4].partial_buffer_sizes == (5, 6)
    assert msgs[5] == P.BacklogAnnouncement(5, RID)
    for m in msgs[:5]:
        m.buffer.recycle()
    assert not dec.in_frame
    assert len(alloc.recycler.segments) == 5


def test_server_side_messages_round_trip():
    msgs = [P.PartitionRequest(PID, 1, 4, RID, 0), P.CancelPartitionRequest(RID), P.CloseRequest(),
            P.AddCredit(3, RID), P.ResumeConsumption(RID), P.AckAllUserRecordsProcessed(RID),
            P.NewBufferSize(4096, RID), P.SegmentId(1, 9, RID), P.TaskEventRequest(b"\x00\x00\x00\x02", PID, RID)]
    stream = b"".join(P.encode_message(m) for m in msgs)
    assert P.FrameDecoder(side="server").feed(stream) == msgs


@pytest.mark.parametrize("receiver", [RID, None])
def test_error_response_layout(receiver):
    frame = P.encode_error_response("PartitionNotFoundError", "Partition x not found. ü", receiver)
    (msg,) = P.FrameDecoder(side="client").feed(frame)
    assert msg == P.ErrorResponse("PartitionNotFoundError", "Partition x not found. ü", receiver)
    assert msg.is_fatal_error == (receiver is None)


def test_payload_dropped_when_allocator_declines():
    frame = FRAMES["BufferResponse(DATA_BUFFER, 9 bytes, seq=3, subpartition=1, backlog=4)"]
    (msg,) = P.FrameDecoder(max_buffer_size=64, allocator=lambda *a: None).feed(frame * 1)
    assert msg.buffer is None and msg.size == 9


# -- bad input ------------------------------------------------------------------------------------

def _corrupt(frame: bytes, offset: int, value: bytes) -> bytes:
    return frame[:offset] + value + frame[offset + len(value):]


BR = FRAMES["BufferResponse(DATA_BUFFER, 9 bytes, seq=3, subpartition=1, backlog=4)"]
ADD = FRAMES["AddCredit(credit=3)"]


@pytest.mark.parametrize("frame, side, match", [
    (_corrupt(BR, 4, b"\xde\xad\xbe\xef"), "client", "magic"),
    (_corrupt(BR, 0, (5).to_bytes(4, "big")), "client", "smaller than the frame header"),
    (_corrupt(BR, 0, (-1).to_bytes(4, "big", signed=True)), "client", "smaller"),
    (_corrupt(BR, 0, (1 << 30).to_bytes(4, "big")), "client", "exceeds the maximum"),
    (_corrupt(BR, 8, b"\x0c"), "client", "unknown message"),
    (_corrupt(BR, 8, b"\xff"), "client", "unknown message"),
    (ADD, "client", "not sent by a server"),
    (BR, "server", "not sent by a client"),
    (_corrupt(ADD, 9, (0).to_bytes(4, "big")), "server", "non-positive"),
    (_corrupt(ADD, 9, (-5).to_bytes(4, "big", signed=True)), "server", "non-positive"),
    (_corrupt(ADD, 0, (30).to_bytes(4, "big")) + b"\x00", "server", "body must be 20"),
    (_corrupt(BR, 43, (1 << 20).to_bytes(4, "big")), "client", "maximum"),
    (_corrupt(BR, 43, (-3).to_bytes(4, "big", signed=True)), "client", "maximum"),
    (_corrupt(BR, 43, (8).to_bytes(4, "big")), "client", "does not match its frame"),
    (_corrupt(BR, 41, b"\x00"), "client", "data type"),
    (_corrupt(BR, 41, b"\x0e"), "client", "data type"),
    (_corrupt(BR, 42, b"\x02"), "client", "compression"),
    (_corrupt(BR, 29, (-1).to_bytes(4, "big", signed=True)), "client", "partial buffers"),
    (_corrupt(BR, 37, (-2).to_bytes(4, "big", signed=True)), "client", "backlog"),
    (_corrupt(BR, 25, (-2).to_bytes(4, "big", signed=True)), "client", "subpartition"),
])
def test_bad_frames_are_rejected_before_allocation(frame, side, match):
    alloc = Allocator()
    dec = P.FrameDecoder(max_frame_length=1 << 16, max_buffer_size=64, allocator=alloc, side=side)
    with pytest.raises(P.CorruptFrameError, match=match):
        dec.feed(frame)
    assert not alloc.given  # nothing was allocated for it
    assert dec.is_failed
    with pytest.raises(P.CorruptFrameError):
        dec.feed(b"\x00")  # poisoned


def test_failure_mid_payload_gives_the_buffer_back():
    alloc = Allocator()
    dec = P.FrameDecoder(max_buffer_size=64, allocator=alloc)
    dec.feed(BR[:50])
    assert dec.in_frame and len(alloc.given) == 1
    dec.close()
    assert len(alloc.recycler.segments) == 1


def test_allocator_buffer_too_small_is_an_error_and_recycled():
    alloc = Allocator(size=4)
    dec = P.FrameDecoder(max_buffer_size=64, allocator=alloc)
    with pytest.raises(P.CorruptFrameError, match="cannot hold"):
        dec.feed(BR)
    assert len(alloc.recycler.segments) == 1


def test_encoders_validate_arguments():
    with pytest.raises(ValueError):
        P.encode_add_credit(0, RID)
    with pytest.raises(ValueError):
        P.encode_add_credit(1, b"short")
    with pytest.raises(ValueError):
        P.encode_partition_request(PID, 3, 2, RID, 1)
    with pytest.raises(ValueError):
        P.encode_partition_request(PID[:59], 0, 0, RID, 1)
    with pytest.raises(ValueError):
        P.encode_buffer_response_header(RID, 0, 0, 0, 0, False, 1)
    with pytest.raises(ValueError):
        P.encode_backlog_announcement(1 << 40, RID)
    with pytest.raises(OverflowError):
        P.encode_backlog_announcement(1 << 70, RID)
    with pytest.raises(TypeError):
        P.encode_message(object())


@settings(max_examples=300)
@given(st.binary(max_size=400), st.integers(1, 64))
def test_random_bytes_never_crash_or_leak(data, chunk):
    alloc = Allocator()
    dec = P.FrameDecoder(max_frame_length=4096, max_buffer_size=64, allocator=alloc, side="any")
    msgs = []
    try:
        for i in range(0, len(data), chunk):
            msgs += dec.feed(data[i:i + chunk])
    except P.CorruptFrameError:
        pass
    dec.close()
    for m in msgs:
        if isinstance(m, P.BufferResponse) and m.buffer is not None:
            m.buffer.recycle()
    assert len(alloc.recycler.segments) == len(alloc.given)


@settings(max_examples=300)
@given(st.data())
def test_mutated_valid_frames_never_crash_or_leak(data):
    frames = list(FRAMES.values())
    stream = bytearray(b"".join(data.draw(st.lists(st.sampled_from(frames), min_size=1, max_size=6))))
    for _ in range(data.draw(st.integers(0, 4))):
        pos = data.draw(st.integers(0, len(stream) - 1))
        stream[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(stream)))
    alloc = Allocator()
    dec = P.FrameDecoder(max_frame_length=1 << 12, max_buffer_size=64, allocator=alloc, side="any")
    msgs = []
    try:
        msgs += dec.feed(bytes(stream[:cut]))
        msgs += dec.feed(bytes(stream[cut:]))
    except P.CorruptFrameError:
        pass
    dec.close()
    for m in msgs:
        if isinstance(m, P.BufferResponse) and m.buffer is not None:
            m.buffer.recycle()
    assert len(alloc.recycler.segments) == len(alloc.given)


def test_many_frames_in_one_feed():
    rng = random.Random(7)
    payloads = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64))) for _ in range(200)]
    stream = b"".join(P.encode_buffer_response(RID, 0, i, 0, DataType.DATA_BUFFER, False, p)
                      for i, p in enumerate(payloads))
    alloc = Allocator()
    msgs = P.FrameDecoder(max_buffer_size=64, allocator=alloc).feed(stream)
    assert [m.buffer.to_bytes() for m in msgs] == payloads
    assert [m.sequence_number for m in msgs] == list(range(200))
    for m in msgs:
        m.buffer.recycle()


# -- pausing (TCP-backpressure mode: the allocator answers WAIT) -------------------------------

class WaitingAllocator(Allocator):
    """Answers WAIT while ``waits`` has entries popping True, a fresh buffer otherwise."""

    def __init__(self, waits, size=64):
        super().__init__(size)
        self.waits = list(waits)
        self.calls = 0

    def __call__(self, receiver_id, size, data_type, subpartition):
        self.calls += 1
        if self.waits and self.waits.pop(0):
            return P.WAIT
        return super().__call__(receiver_id, size, data_type, subpartition)


def _buffer_stream():
    names = [n for n in ENCODED if n.startswith("BufferResponse") or n.startswith("Backlog")]
    return b"".join(FRAMES[n] for n in names)


def _summary(msgs):
    return [(type(m).__name__, m.buffer.to_bytes() if getattr(m, "buffer", None) is not None else None)
            for m in msgs]


def _reference(stream):
    msgs = P.FrameDecoder(max_buffer_size=64, allocator=Allocator()).feed(stream)
    out = _summary(msgs)
    for m in msgs:
        if getattr(m, "buffer", None) is not None:
            m.buffer.recycle()
    return out


def test_decoder_pauses_on_wait_and_resumes_where_it_stopped():
    stream = _buffer_stream()
    reference = _reference(stream)
    alloc = WaitingAllocator([False, True, True])   # the second BufferResponse waits twice
    dec = P.FrameDecoder(max_buffer_size=64, allocator=alloc)
    first = dec.feed(stream)
    assert len(first) == 1 and dec.is_paused and dec.pending_bytes > 0
    with pytest.raises(RuntimeError, match="paused"):
        dec.feed(b"\x00")
    assert dec.resume() is None and dec.is_paused     # still no buffer
    rest = dec.resume()
    assert not dec.is_paused and dec.pending_bytes == 0
    assert _summary(first + rest) == reference
    assert dec.resume() == []                          # not paused: nothing to do
    for m in first + rest:
        if getattr(m, "buffer", None) is not None:
            m.buffer.recycle()
    assert len(alloc.recycler.segments) == len(alloc.given)


def test_close_while_paused_drops_held_input():
    alloc = WaitingAllocator([True])
    dec = P.FrameDecoder(max_buffer_size=64, allocator=alloc)
    assert dec.feed(_buffer_stream()) == [] and dec.is_paused
    dec.close()
    assert dec.pending_bytes == 0 and dec.is_failed
    with pytest.raises(P.CorruptFrameError):
        dec.resume()


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.integers(1, 200), min_size=1, max_size=40),
       waits=st.lists(st.booleans(), max_size=30))
def test_pausing_at_any_point_gives_the_same_messages(chunks, waits):
    stream = _buffer_stream() * 2
    reference = _reference(stream)
    alloc = WaitingAllocator(waits)
    dec = P.FrameDecoder(max_buffer_size=64, allocator=alloc)
    got, pos, i = [], 0, 0
    while pos < len(stream) or dec.is_paused:
        if dec.is_paused:
            out = dec.resume()
            if out is not None:
                got += out
            continue
        step = chunks[i % len(chunks)]
        i += 1
        got += dec.feed(stream[pos:pos + step])
        pos += step
    assert _summary(got) == reference
    for m in got:
        if getattr(m, "buffer", None) is not None:
            m.buffer.recycle()
    assert len(alloc.recycler.segments) == len(alloc.given)


def test_decoded_messages_pickle_round_trip():
    """Decoded messages are plain namedtuples of this module (a framework may ship them between
    processes); they pickle and compare equal after the round trip."""
    import pickle

    proto = P
    rid = bytes(range(16))
    for msg in (proto.AddCredit(3, rid), proto.ResumeConsumption(rid), proto.CloseRequest(),
                proto.ErrorResponse("PartitionNotFoundError", "gone", rid),
                proto.NewBufferSize(4096, rid)):
        assert type(msg).__module__ == "flinknet._core.protocol"
        assert pickle.loads(pickle.dumps(msg)) == msg
