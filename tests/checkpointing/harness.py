"""A checkpointed gate over real local channels, fed item by item.

A :class:`Harness` owns a pipelined partition with ``n`` subpartitions, a local gate reading
all of them and a :class:`~flinknet.checkpointing.CheckpointedInputGate` over it with a
:class:`RecordingTask`. ``push(channel, *items)`` writes records (ints), barriers, cancellation
markers or :data:`EOP` into that channel's subpartition (flushed), so the barrier blocks the
real subpartition when the gate takes it, exactly as upstream blocking works in flinknet.
``drain()`` polls the checkpointed gate until nothing is ready and logs, in order, every record
taken (``("rec", channel, value)``), every event, every trigger and abort the task got. Data
buffers are recycled by the harness; captured in-flight buffers by the writer's results.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from flinknet import events as ev
from flinknet.checkpointing import (
    CheckpointableInput,
    CheckpointBarrierTracker,
    CheckpointedInputGate,
    CheckpointFailure,
    CheckpointMetaData,
    CheckpointMetrics,
    InMemoryChannelStateWriter,
    ManualClock,
    SingleCheckpointBarrierHandler,
)
from flinknet.consumer import InputChannelInfo, SingleInputGate
from flinknet.partition import ResultPartitionManager, create_result_partition

SEGMENT = 128
#: bytes of one record in a buffer (length prefix + 12-byte payload)
RECORD_BYTES = 16
EOP = "EOP"

ALIGNED = ev.CheckpointOptions()
UNALIGNED = ev.CheckpointOptions(alignment=ev.AlignmentType.UNALIGNED)
AT_LEAST_ONCE = ev.CheckpointOptions(alignment=ev.AlignmentType.AT_LEAST_ONCE)


def timeoutable(timeout_ms: int) -> ev.CheckpointOptions:
    return ev.CheckpointOptions(alignment=ev.AlignmentType.ALIGNED, aligned_checkpoint_timeout=timeout_ms)


def barrier(cid: int, options: ev.CheckpointOptions = ALIGNED, ts: int = 0) -> ev.CheckpointBarrier:
    return ev.CheckpointBarrier(cid, ts, options)


def cancel(cid: int) -> ev.CancelCheckpointMarker:
    return ev.CancelCheckpointMarker(cid)


def encode(value: int) -> bytes:
    """A 12-byte record: with its 4-byte length, 8 fill a 128-byte buffer exactly (no record
    spans buffers, so every buffer holds whole records)."""
    return struct.pack(">qi", value, 0)


def records_of(data: bytes) -> list[int]:
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from(">i", data, pos)
        out.append(struct.unpack_from(">q", data, pos + 4)[0])
        pos += 4 + n
    assert pos == len(data)
    return out


@dataclass
class Trigger:
    checkpoint_id: int
    options: ev.CheckpointOptions
    metrics: CheckpointMetrics
    metadata: CheckpointMetaData
    #: the records the task had taken when it was triggered, per channel
    seen: dict[int, list[int]] = field(default_factory=dict)


class RecordingTask:
    """A CheckpointableTask that logs what it is told."""

    def __init__(self, harness: Harness | None = None) -> None:
        self.harness = harness
        self.log: list[tuple] = []
        self.triggers: list[Trigger] = []
        self.aborts: list[tuple[int, CheckpointFailure]] = []

    def trigger_checkpoint_on_barrier(self, metadata, options, metrics) -> None:
        seen = {} if self.harness is None else {ch: list(v) for ch, v in self.harness.seen.items()}
        t = Trigger(metadata.checkpoint_id, options, metrics, metadata, seen)
        self.triggers.append(t)
        self.log.append(("trigger", metadata.checkpoint_id))

    def abort_checkpoint_on_barrier(self, checkpoint_id, cause) -> None:
        self.aborts.append((checkpoint_id, cause))
        self.log.append(("abort", checkpoint_id, cause.reason.name))

    @property
    def triggered_ids(self) -> list[int]:
        return [t.checkpoint_id for t in self.triggers]

    @property
    def aborted_ids(self) -> list[int]:
        return [a[0] for a in self.aborts]


class Harness:
    """``Harness(nbp, n, mode)`` with mode ``aligned`` / ``unaligned`` / ``alternating`` /
    ``tracker``; close it (the tests' fixture does)."""

    def __init__(self, nbp, n: int, mode: str = "aligned", *, clock: ManualClock | None = None,
                 enable_checkpoint_after_tasks_finished: bool = True, gates: int = 1) -> None:
        self.n = n
        self.manager = ResultPartitionManager()
        self.partition = create_result_partition(nbp, n, partition_manager=self.manager)
        self.partition.setup()
        self.clock = clock if clock is not None else ManualClock(1_000_000)
        self.gate = SingleInputGate.create_local(
            self.manager, [(self.partition.partition_id, i) for i in range(n)])
        self.task = RecordingTask(self)
        self.writer = InMemoryChannelStateWriter()
        self.seen: dict[int, list[int]] = {i: [] for i in range(n)}
        self.pushed: dict[int, list] = {i: [] for i in range(n)}
        self.log = self.task.log
        self.resumed: list[int] = []
        inputs = [CheckpointableInput(self.gate, self.writer)]
        kw = dict(clock=self.clock, enable_checkpoint_after_tasks_finished=enable_checkpoint_after_tasks_finished)
        if mode == "aligned":
            self.handler = SingleCheckpointBarrierHandler.aligned(self.task, inputs, **kw)
        elif mode == "unaligned":
            self.handler = SingleCheckpointBarrierHandler.unaligned(self.task, inputs, self.writer, **kw)
        elif mode == "alternating":
            self.handler = SingleCheckpointBarrierHandler.alternating(self.task, inputs, self.writer, **kw)
        elif mode == "tracker":
            self.handler = CheckpointBarrierTracker(n, self.task, **kw)
        else:
            raise ValueError(mode)
        self.cgate = CheckpointedInputGate(self.gate, self.handler)
        self._finished_channels: set[int] = set()
        self._results = []

    # -- feeding -----------------------------------------------------------------------------------

    def push(self, channel: int, *items) -> Harness:
        for item in items:
            self.pushed[channel].append(item)
            if item == EOP:
                self.partition.record_serializer.finish_unicast_builder(channel)
                self.partition.subpartitions[channel].finish()
                self._finished_channels.add(channel)
            elif isinstance(item, int):
                self.partition.emit_record(encode(item), channel)
                self.partition.flush(channel)
            elif isinstance(item, tuple) and item[0] == "priority":
                self.partition.emit_event(item[1], channel, is_priority=True)
            else:
                self.partition.emit_event(item, channel)
        return self

    def step(self, channel: int, *items) -> list[tuple]:
        """Push then drain; the new log entries."""
        self.push(channel, *items)
        return self.drain()

    def drain(self) -> list[tuple]:
        start = len(self.log)
        while (boe := self.cgate.poll_next()) is not None:
            ch = boe.channel_info.input_channel_idx
            if boe.is_buffer:
                try:
                    for r in records_of(boe.buffer.to_bytes()):
                        self.seen[ch].append(r)
                        self.log.append(("rec", ch, r))
                finally:
                    boe.buffer.recycle()
            else:
                self.log.append(("event", ch, boe.event))
        return self.log[start:]

    # -- reading the outcome -----------------------------------------------------------------------

    def result(self, cid: int):
        r = self.writer.get_and_remove_write_result(cid)
        self._results.append(r)
        return r

    def captured(self, cid: int) -> dict[int, list[int]]:
        """The records captured as in-flight data of ``cid``, per channel (result recycled)."""
        r = self.result(cid)
        out = {}
        for info, bufs in r.input_data.items():
            out[info.input_channel_idx] = [x for b in bufs for x in records_of(b.to_bytes())]
        return out

    def before_barrier(self, ch: int, cid: int) -> list[int]:
        """The records pushed into ``ch`` before its barrier ``cid`` (or its EndOfPartition,
        or everything pushed so far)."""
        out = []
        for item in self.pushed[ch]:
            if item == EOP:
                break
            if isinstance(item, tuple) and item[0] == "priority":
                item = item[1]
            if isinstance(item, ev.CheckpointBarrier) and item.id == cid:
                break
            if isinstance(item, int):
                out.append(item)
        return out

    def assert_aligned_cut(self) -> None:
        """Every trigger saw exactly the records before its barrier on every channel."""
        for t in self.task.triggers:
            for ch in range(self.n):
                assert t.seen[ch] == self.before_barrier(ch, t.checkpoint_id), (t.checkpoint_id, ch)

    def assert_unaligned_cut(self, ids: list[int] | None = None) -> None:
        """Every completed unaligned checkpoint (of ``ids``): what the task had seen when
        triggered plus the captured in-flight data (its write result, finished) is exactly the
        records before its barrier on every channel."""
        for t in self.task.triggers:
            if t.checkpoint_id in self.task.aborted_ids or (ids is not None and t.checkpoint_id not in ids):
                continue
            r = self.result(t.checkpoint_id)
            assert r.input_finished, t.checkpoint_id
            captured = {info.input_channel_idx: [x for b in bufs for x in records_of(b.to_bytes())]
                        for info, bufs in r.input_data.items()}
            for ch in range(self.n):
                got = t.seen[ch] + captured.get(ch, [])
                assert got == self.before_barrier(ch, t.checkpoint_id), (t.checkpoint_id, ch, t.seen[ch],
                                                                          captured.get(ch))

    def info(self, ch: int) -> InputChannelInfo:
        return InputChannelInfo(0, ch)

    def subpartition_blocked(self, ch: int) -> bool:
        return self.partition.subpartitions[ch].is_blocked

    def close(self) -> None:
        for r in self._results:
            r.recycle()
        self.writer.close()
        self.cgate.close()
        if not self.partition.is_finished and not self.partition.is_released:
            self.partition.release()
        self.partition.close()
        self.manager.shutdown()


def rec_entries(log) -> list[tuple]:
    return [e for e in log if e[0] == "rec"]


def kinds(log) -> list:
    """The log without records: triggers, aborts and event kinds, for sequence assertions."""
    out = []
    for e in log:
        if e[0] == "event":
            out.append((type(e[2]).__name__, e[1]))
        elif e[0] != "rec":
            out.append(e)
    return out
