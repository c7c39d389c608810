"""Reading records from a gate (Flink's ``RecordReader`` / ``AbstractRecordReader``).

One :class:`~flinknet._core.serialization.RecordDeserializer` per channel reassembles records
that span buffers; the per-record work is in Cython, this layer runs once per buffer. On asyncio,
``async for record in reader`` and ``await reader.read_batch_async()`` read without blocking a
thread (:mod:`flinknet.aio`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, Self

import numpy.typing as npt

from flinknet import aio as _aio
from flinknet._core.buffer import FREEING_BUFFER_RECYCLER, Buffer, DataType, NetworkBuffer
from flinknet._core.cursor import RecordCursor
from flinknet._core.engine import defer_credit
from flinknet._core.memory import MemorySegment
from flinknet._core.serialization import (
    DEFAULT_SPILLING_THRESHOLD,
    PayloadSerializer,
    RecordDeserializer,
    get_serializer,
)
from flinknet.consumer.channels import InputChannelInfo
from flinknet.consumer.gate import BufferOrEvent, InputGate, SingleInputGate, UnionInputGate
from flinknet.errors import IllegalStateError
from flinknet.events import Event
from flinknet.types import SerializerSpec

#: _read_lane's default: the buffer's records as a list (not an array)
_RECORDS: Any = object()

__all__ = ["RecordReader", "RecordOrEvent"]


class RecordOrEvent:
    """What :meth:`RecordReader.read_batch` returns when asked for events too: an event with the
    channel it came from (records come as plain values)."""

    __slots__ = ("event", "channel_info")

    def __init__(self, event: Event, channel_info: InputChannelInfo):
        self.event = event
        self.channel_info = channel_info

    def __repr__(self) -> str:
        return f"RecordOrEvent({self.event!r}, channel={tuple(self.channel_info)})"


class RecordReader:
    """Iterates the records of an input gate.

    ``RecordReader(gate, serializer="bytes", emit_events=False)``: iterating yields records in
    channel order (records of one channel keep their order; channels interleave per buffer);
    with ``emit_events=True`` events are yielded too, as :class:`RecordOrEvent`. Batch forms:
    :meth:`read_batch` (all records completed by the next buffer) and :meth:`read_array`
    (fixed-width records straight into a numpy array). Closing the reader clears the
    deserializers, giving back any buffer they hold.
    """

    def __init__(self, gate: InputGate, serializer: SerializerSpec = "bytes", emit_events: bool = False,
                 spilling_threshold: int = DEFAULT_SPILLING_THRESHOLD, tmp_dirs: Iterable[str] | None = None):
        if not isinstance(gate, InputGate):
            raise TypeError("gate must be a SingleInputGate or UnionInputGate")
        self.gate = gate
        self.emit_events = emit_events
        self._serializer = get_serializer(serializer)
        self._spilling_threshold = spilling_threshold
        self._tmp_dirs = tmp_dirs
        self._deserializers: dict[InputChannelInfo, RecordDeserializer] = {}
        # the records read and not yet handed out (every read form takes from it), and the
        # native async iterator over them
        self._cursor = RecordCursor(self.read_batch, self._wait_next_record, _aio.YIELD_EVERY)
        self._closed = False
        # the gate's fast lane (poll_data_buffer), where the gate is exactly a SingleInputGate or
        # a UnionInputGate (a subclass may read differently)
        self._fast_lane: Callable[[], tuple[Buffer, InputChannelInfo] | None] | None = None
        if type(gate) is SingleInputGate or type(gate) is UnionInputGate:
            self._fast_lane = gate.poll_data_buffer
        #: a SingleInputGate's lane, whose non-blocking miss may skip the general path's poll
        self._lane_gate: SingleInputGate | None = gate if type(gate) is SingleInputGate else None
        self.num_records_in = 0
        #: the channel of the buffer or event the last batch came from.
        self.last_channel_info: InputChannelInfo | None = None

    def _take_fast(self) -> tuple[RecordDeserializer, Buffer] | None:
        """The gate's fast lane: the next data buffer with its channel's deserializer, or None
        (then the general path)."""
        fast = self._fast_lane
        if fast is None or (got := fast()) is None:
            return None
        buffer, info = got
        self.last_channel_info = info
        d = self._deserializers.get(info)
        return (d if d is not None else self._deserializer(info)), buffer

    def _read_lane(self, taken: tuple[RecordDeserializer, Buffer], dtype: Any = _RECORDS) -> Any:
        """The records (or, given a ``dtype``, the array) of a buffer the lane took. On a
        SingleInputGate the credit its recycle frees is deferred (``defer_credit``) and announced
        by the lane's next poll (``poll_data_buffer``, or a wait's ``flush_credit``): the AddCredit's
        ``send`` falls after the records are handed out, not between their arrival and their
        hand-out."""
        d, buffer = taken
        defer = self._lane_gate is not None
        if defer:
            defer_credit(True)
        try:
            return d.read_records(buffer) if dtype is _RECORDS else d.read_array(buffer, dtype)
        finally:
            if defer:
                defer_credit(False)

    def _wait_fast(self, timeout: float | None
                   ) -> tuple[tuple[RecordDeserializer, Buffer] | None, float | None]:
        """The lane found nothing and the caller blocks: wait on the gate's doorbell
        (``wait_for_lane``) and take the lane again, so that a reader that caught up with its
        producers reads on through the lane after the wait instead of the general path. Returns
        what the lane took (None when it cannot serve now or still has nothing: what woke the
        wait is the general path's) and what is left of ``timeout`` for the general path."""
        if timeout is None:
            return (self._take_fast() if self.gate.wait_for_lane(None) else None), None
        deadline = time.monotonic() + timeout
        taken = self._take_fast() if self.gate.wait_for_lane(timeout) else None
        return taken, max(0.0, deadline - time.monotonic())

    def _deserializer(self, channel_info: InputChannelInfo) -> RecordDeserializer:
        d = self._deserializers.get(channel_info)
        if d is None:
            d = self._deserializers[channel_info] = RecordDeserializer(
                self._serializer, self._spilling_threshold, tmp_dirs=self._tmp_dirs,
                channel=channel_info)
        return d

    @property
    def serializer(self) -> PayloadSerializer:
        """The payload serializer records are read with (shared by the channels' deserializers)."""
        return self._serializer

    def _check_open(self) -> None:
        if self._closed:
            raise IllegalStateError("the record reader is closed")

    def read_batch(self, timeout: float | None = None, blocking: bool = True) -> list[Any] | None:
        """The records completed by the next buffer (possibly none, if it only continued a
        spanning record), or with ``emit_events`` a one-element list of an event. None when the
        gate is finished (or, with ``blocking=False``, when nothing is ready)."""
        self._check_open()
        taken = self._take_fast()
        if taken is None and blocking and self._fast_lane is not None:
            taken, timeout = self._wait_fast(timeout)
        if taken is not None:
            records: list[Any] = self._read_lane(taken)
            self.num_records_in += len(records)
            return records
        if blocking:
            boe = self.gate.get_next(timeout)
        else:
            lane = self._lane_gate
            if lane is not None and lane.partitions_requested and not lane.is_closed \
                    and not lane.is_available:
                # the lane found nothing and nothing waits for the general path either: no poll
                # (the gate's lock), which would also move a channel turning ready meanwhile
                # off the lane (async for polls so before every wait)
                return None
            boe = self.gate.poll_next()
        if boe is None:
            return None
        self.last_channel_info = boe.channel_info
        if boe.buffer is not None:
            records = self._deserializer(boe.channel_info).read_records(boe.buffer)
            self.num_records_in += len(records)
            return records
        event = self._on_event(boe)
        if self.emit_events:
            return [RecordOrEvent(event, boe.channel_info)]
        return []

    def read_array(self, dtype: npt.DTypeLike, timeout: float | None = None) -> npt.NDArray[Any] | None:
        """The fixed-width records of the next data buffer as one numpy array of ``dtype``
        (events are skipped); None when the gate is finished."""
        self._check_open()
        taken = self._take_fast()
        if taken is None and self._fast_lane is not None:
            taken, timeout = self._wait_fast(timeout)
        if taken is not None:
            arr: npt.NDArray[Any] = self._read_lane(taken, dtype)
            self.num_records_in += len(arr)
            return arr
        while True:
            boe = self.gate.get_next(timeout)
            if boe is None:
                return None
            self.last_channel_info = boe.channel_info
            if boe.buffer is not None:
                arr = self._deserializer(boe.channel_info).read_array(boe.buffer, dtype)
                self.num_records_in += len(arr)
                return arr
            self._on_event(boe)

    def _on_event(self, boe: BufferOrEvent) -> Event:
        from flinknet.events import EndOfPartitionEvent

        event = boe.event
        if event is None:  # a gate's BufferOrEvent has either a buffer or an event
            raise IllegalStateError(f"{boe!r} has neither a buffer nor an event")
        if type(event) is EndOfPartitionEvent:
            d = self._deserializers.pop(boe.channel_info, None)
            if d is not None:
                if d.has_unfinished_data:
                    d.clear()
                    raise IllegalStateError(
                        f"channel {tuple(boe.channel_info)} ended inside a record "
                        "(EndOfPartition after a partial record)")
                d.clear()
        return event

    def __iter__(self) -> Iterator[Any]:
        """Every record (and event, with ``emit_events``) until the gate is finished."""
        # Records left by next_record() or an async read first, then one batch per buffer: the
        # per-record cost is a generator step, the per-buffer work is in read_batch.
        rest = self._cursor.take_rest()
        if rest:
            yield from rest
        read = self.read_batch
        while (batch := read()) is not None:
            yield from batch

    async def read_batch_async(self, timeout: float | None = None) -> list[Any] | None:
        """asyncio: :meth:`read_batch`'s records, at once if a buffer is ready, else when one
        arrives (the running loop waits on the gate's doorbell or availability future; no
        thread blocks); None once the gate is finished. See :func:`flinknet.aio.read_batch`."""
        # A buffer ready on the gate's fast lane is read here, without a second coroutine or
        # the gate's availability check (which takes the doorbell's lock); a timeout is
        # checked first, as the slow way checks it. Without a timeout, a reader that caught up
        # waits on the lane's doorbell (aio.wait_lane) and reads on through the lane, as the
        # threaded read_batch does; what the lane does not hold, the slow way reads.
        if (timeout is None or _aio.is_timeout(timeout)) and not self._closed:
            taken = self._take_fast()
            if taken is None and timeout is None and self._fast_lane is not None:
                await _aio.wait_lane(self.gate)
                taken = None if self._closed else self._take_fast()   # closed meanwhile: raise
            if taken is not None:
                records: list[Any] = self._read_lane(taken)
                self.num_records_in += len(records)
                return records
        return await _aio.read_batch(self, timeout)

    def __aiter__(self) -> AsyncIterator[Any]:
        """``async for record in reader``: every record (and event, with ``emit_events``) until
        the gate is finished. Native (:class:`~flinknet._core.cursor.RecordCursor`): a record of
        a buffer already read costs about a generator step; the next buffer is read without
        blocking, and the loop is awaited only when none is ready (and every
        :data:`~flinknet.aio.YIELD_EVERY` buffers, so that an always-ready stream cannot starve
        it). Records left by ``break`` stay with the reader for its next read."""
        return self._cursor

    def __anext__(self) -> Awaitable[Any]:
        """``await anext(reader)``: the next record (or event, with ``emit_events``), as
        :meth:`next_record` without blocking a thread; ``StopAsyncIteration`` at the end."""
        return self._cursor.__anext__()

    async def _wait_next_record(self, yield_first: bool) -> Any:
        # The cursor's slow way: request the partitions off the loop (once), yield to the loop
        # when the cursor says so, then wait for a buffer with records.
        cursor = self._cursor
        self._check_open()
        if not cursor.partitions_requested:
            await _aio.request_partitions(self.gate)
            cursor.partitions_requested = True
        if yield_first:
            await asyncio.sleep(0)
        while True:
            batch = await self.read_batch_async()   # the lane, and its wait, where it serves
            if batch is None:
                raise StopAsyncIteration
            if batch:
                cursor.set_batch(batch, 1)
                return batch[0]

    def next_record(self, timeout: float | None = None) -> Any:
        """The next record (or event, with ``emit_events``); raises StopIteration at the end."""
        return self._cursor.next_record(timeout)

    def prepare_snapshot(self, channel_state_writer: Any, checkpoint_id: int) -> int:
        """An unaligned checkpoint starts: hand ``channel_state_writer`` (``add_input_data``)
        what each channel's deserializer holds and has not returned as records yet — a record
        that spans buffers, as Flink's ``StreamTaskNetworkInput.prepareSnapshot`` writes
        ``getUnconsumedBuffer()`` — so that the channel's state, restored, starts at a record
        boundary. Call it from the task's ``prepare_input_snapshot``. Returns the bytes written."""
        total = 0
        for channel_info, d in self._deserializers.items():
            if not d.has_unfinished_data:
                continue
            data = d.get_unconsumed_bytes()
            buffer = NetworkBuffer(MemorySegment.wrap_copy(data), FREEING_BUFFER_RECYCLER,
                                   DataType.DATA_BUFFER, len(data))
            # -1: Flink's ChannelStateWriter.SEQUENCE_NUMBER_UNKNOWN
            channel_state_writer.add_input_data(checkpoint_id, channel_info, -1, [buffer])
            total += len(data)
        return total

    @property
    def is_finished(self) -> bool:
        """The gate is finished and every record was handed out."""
        return self.gate.is_finished and not len(self._cursor)

    def channel_index(self, channel_info: InputChannelInfo) -> int:
        """The channel's index in the gate (a union gate's flat index)."""
        if isinstance(self.gate, UnionInputGate):
            return self.gate.channel_index(BufferOrEvent(channel_info=channel_info))
        return channel_info.input_channel_idx

    def close(self) -> None:
        """Give back every buffer the deserializers hold."""
        if self._closed:
            return
        self._closed = True
        self.gate.flush_credit()     # what this reader's last reads deferred
        for d in self._deserializers.values():
            d.clear()
        self._deserializers.clear()
        self._cursor.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
