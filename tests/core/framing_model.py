"""A tiny pure-Python model of Flink's record framing: the oracle of the serialization tests.

Write side (reference §5.1-§5.3, Flink's ``RecordWriter.serializeRecord`` +
``BufferWritingResultPartition.emitRecord`` / ``broadcastRecord``): a record is
``[length: int32 BE][payload]``; the framed bytes are appended into the open buffer of the target,
cut wherever the buffer ends. A new record that finds no open buffer opens one and announces it
to the subpartition *before* appending (partial record length 0); a continuation buffer is
announced *after* its bytes were appended, with the number of those bytes as partial record
length; the desired buffer size the subpartition answers trims the buffer to
``min(max(desired, bytes the record still needs), segment size)``; a buffer that ends exactly
full is finished at once. Switching between unicast and broadcast finishes the other mode's open
buffers (broadcast first, unicast in subpartition order).

Read side (reference §6, Flink's ``SpillingAdaptiveSpanningRecordDeserializer``): the results
``getNextRecord`` returns for a stream cut into arbitrary chunks.

The model knows nothing of flinknet: it only manipulates ``bytes``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

LENGTH_BYTES = 4
BROADCAST = -1

PARTIAL, INTERMEDIATE, LAST = 0, 1, 2
RESULT_NAMES = {PARTIAL: "PARTIAL_RECORD", INTERMEDIATE: "INTERMEDIATE_RECORD_FROM_BUFFER",
                LAST: "LAST_RECORD_FROM_BUFFER"}


# --- framing --------------------------------------------------------------------------------------

def frame(payload: bytes) -> bytes:
    """``[len BE][payload]``."""
    return struct.pack(">i", len(payload)) + bytes(payload)


def frame_all(payloads: Iterable[bytes]) -> bytes:
    """The byte stream of the framed payloads, in order."""
    return b"".join(frame(p) for p in payloads)


def parse_stream(data: bytes) -> list[bytes]:
    """The payloads of a complete stream of framed records (ValueError if it is not one)."""
    out, pos = [], 0
    while pos < len(data):
        if len(data) - pos < LENGTH_BYTES:
            raise ValueError(f"{len(data) - pos} trailing bytes")
        (n,) = struct.unpack_from(">i", data, pos)
        if n < 0 or pos + LENGTH_BYTES + n > len(data):
            raise ValueError(f"bad length {n} at {pos}")
        out.append(bytes(data[pos + LENGTH_BYTES:pos + LENGTH_BYTES + n]))
        pos += LENGTH_BYTES + n
    return out


def chunk(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at the sorted positions ``cuts`` (duplicates give empty chunks)."""
    out, prev = [], 0
    for c in sorted(cuts):
        out.append(data[prev:c])
        prev = c
    out.append(data[prev:])
    return out


# --- write side -----------------------------------------------------------------------------------

@dataclass
class ModelBuffer:
    """One network buffer: its target (-1: shared broadcast buffer), bytes and capacity."""

    target: int
    partial_record_length: int
    capacity: int
    data: bytearray = field(default_factory=bytearray)
    finished: bool = False


class WriterModel:
    """Flink's unicast/broadcast emit over segments of ``segment_size`` bytes.

    ``desired(subpartition) -> int`` is what the subpartition answers when a buffer is added (0:
    no change). ``calls`` lists the sink calls flinknet must make, in order:
    ``("add", subpartition, partial_record_length)`` and ``("finished", subpartition, bytes)``
    (subpartition -1 for the shared broadcast buffer, announced once per subpartition).
    """

    def __init__(self, segment_size: int, num_subpartitions: int = 1,
                 desired: Callable[[int], int] | None = None):
        self.segment_size = segment_size
        self.num_subpartitions = num_subpartitions
        self.desired = desired or (lambda sp: 0)
        self.calls: list[tuple] = []
        self.buffers: list[ModelBuffer] = []
        self.open: dict[int, ModelBuffer] = {}
        self.total_written_bytes = 0
        self.num_bytes_out = 0
        self.num_buffers_out = 0
        self.num_records_out = 0

    # -- helpers ------------------------------------------------------------------------------

    def _targets(self, target: int) -> list[int]:
        return list(range(self.num_subpartitions)) if target == BROADCAST else [target]

    def _announce(self, buf: ModelBuffer, partial: int, min_size: int) -> None:
        wanted = 0
        for sp in self._targets(buf.target):
            self.calls.append(("add", sp, partial))
            d = self.desired(sp) or 0
            if d > 0 and (wanted == 0 or d < wanted):
                wanted = d
        if wanted > 0:
            cap = max(wanted, min_size, len(buf.data))
            buf.capacity = min(cap, self.segment_size)

    def _new_buffer(self, target: int) -> ModelBuffer:
        if target == BROADCAST:
            for sp in range(self.num_subpartitions):
                self.finish(sp)
        else:
            self.finish(BROADCAST)
        buf = ModelBuffer(target, 0, self.segment_size)
        self.buffers.append(buf)
        self.open[target] = buf
        return buf

    @staticmethod
    def _append(buf: ModelBuffer, data: bytes, pos: int) -> int:
        n = min(len(data) - pos, buf.capacity - len(buf.data))
        buf.data += data[pos:pos + n]
        return n

    # -- operations ---------------------------------------------------------------------------

    def emit(self, payload: bytes, target: int) -> None:
        """Flink ``emitRecord`` (``target >= 0``) or ``broadcastRecord`` (``target == -1``)."""
        framed = frame(payload)
        fan_out = self.num_subpartitions if target == BROADCAST else 1
        buf = self.open.get(target)
        if buf is None:
            buf = self._new_buffer(target)
            self._announce(buf, 0, len(framed))
        pos = self._append(buf, framed, 0)
        while pos < len(framed):
            self.finish(target)
            buf = self._new_buffer(target)
            n = self._append(buf, framed, pos)
            buf.partial_record_length = n
            pos += n
            self._announce(buf, n, n)
        if len(buf.data) == buf.capacity:
            self.finish(target)
        self.total_written_bytes += len(framed) * fan_out
        self.num_records_out += 1

    def broadcast(self, payload: bytes) -> None:
        """Flink ``broadcastRecord``: one buffer shared by every subpartition."""
        self.emit(payload, BROADCAST)

    def finish(self, target: int) -> None:
        """Finish the open buffer of ``target`` (-1: the broadcast buffer), if any."""
        buf = self.open.pop(target, None)
        if buf is None:
            return
        buf.finished = True
        fan_out = self.num_subpartitions if target == BROADCAST else 1
        self.num_bytes_out += len(buf.data) * fan_out
        self.num_buffers_out += fan_out
        self.calls.append(("finished", target, len(buf.data)))

    def finish_all(self) -> None:
        """Finish the broadcast buffer, then every unicast buffer in subpartition order."""
        self.finish(BROADCAST)
        for sp in range(self.num_subpartitions):
            self.finish(sp)

    def subpartition_buffers(self, sp: int) -> list[bytes]:
        """The buffers subpartition ``sp`` received (its own and the shared ones), in order."""
        return [bytes(b.data) for b in self.buffers if b.target in (sp, BROADCAST)]

    def subpartition_partials(self, sp: int) -> list[int]:
        """The partial record length of each buffer of ``sp``."""
        return [b.partial_record_length for b in self.buffers if b.target in (sp, BROADCAST)]


# --- read side ------------------------------------------------------------------------------------

class ReaderModel:
    """The results Flink's spanning deserializer returns for a stream fed in arbitrary chunks."""

    def __init__(self):
        # Bytes of the record being gathered across chunks (its length prefix first), or None.
        self.span: bytearray | None = None

    def _span_needs(self) -> int | None:
        """Bytes still missing from the spanning record (None while its length is unknown)."""
        if len(self.span) < LENGTH_BYTES:
            return None
        (n,) = struct.unpack_from(">i", self.span, 0)
        return LENGTH_BYTES + n - len(self.span)

    def feed(self, data: bytes) -> list[tuple[int, bytes | None]]:
        """``setNextBuffer(data)`` then ``getNextRecord()`` until the buffer is consumed."""
        data = bytes(data)
        out: list[tuple[int, bytes | None]] = []
        pos = 0
        if self.span is not None:
            # setNextBuffer appends to the spanning part up to the record's end.
            if len(self.span) < LENGTH_BYTES:
                take = min(LENGTH_BYTES - len(self.span), len(data))
                self.span += data[:take]
                pos = take
            need = self._span_needs()
            if need is not None:
                take = min(need, len(data) - pos)
                self.span += data[pos:pos + take]
                pos += take
            if self._span_needs() == 0:
                record = bytes(self.span[LENGTH_BYTES:])
                self.span = None
                if pos == len(data):
                    return [(LAST, record)]
                out.append((INTERMEDIATE, record))
            else:
                return [(PARTIAL, None)]
        while True:
            remaining = len(data) - pos
            if remaining >= LENGTH_BYTES:
                (n,) = struct.unpack_from(">i", data, pos)
                if n <= remaining - LENGTH_BYTES:
                    record = data[pos + LENGTH_BYTES:pos + LENGTH_BYTES + n]
                    pos += LENGTH_BYTES + n
                    if pos == len(data):
                        out.append((LAST, record))
                        return out
                    out.append((INTERMEDIATE, record))
                    continue
            # The rest (a split length prefix, or the start of a spanning record) is gathered.
            if remaining > 0:
                self.span = bytearray(data[pos:])
            out.append((PARTIAL, None))
            return out

    def unconsumed_after_feed(self, data: bytes) -> bytes:
        """What ``getUnconsumedBuffer`` holds right after ``setNextBuffer(data)`` (before any read):
        the spanning part (with the chunk's bytes it took) followed by the chunk's rest."""
        if self.span is None:
            return bytes(data)
        span = bytearray(self.span)
        pos = 0
        if len(span) < LENGTH_BYTES:
            pos = min(LENGTH_BYTES - len(span), len(data))
            span += data[:pos]
        if len(span) >= LENGTH_BYTES:
            (n,) = struct.unpack_from(">i", span, 0)
            take = min(LENGTH_BYTES + n - len(span), len(data) - pos)
            span += data[pos:pos + take]
            pos += take
        return bytes(span) + bytes(data[pos:])

    @property
    def has_unfinished_data(self) -> bool:
        return self.span is not None


def model_results(chunks: Iterable[bytes]) -> list[list[tuple[int, bytes | None]]]:
    """The results of every chunk of a stream fed in order to a fresh deserializer."""
    model = ReaderModel()
    return [model.feed(c) for c in chunks]
