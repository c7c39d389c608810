"""A task's I/O metrics (Flink's ``TaskIOMetricGroup``), with Flink's names and definitions.

=====================================================  =================================================
Flink                                                  flinknet
=====================================================  =================================================
``TaskIOMetricGroup``                                  :class:`TaskIOMetrics`
``numRecordsIn/Out``, ``numBytesIn/Out``, …            counters read from the Cython serializer, the
                                                       readers and the gates (no per-record cost)
``…PerSecond`` (``MeterView``)                         meters over those counters
``idleTimeMsPerSecond``                                a :class:`~flinknet.metrics.TimerGauge` marked
                                                       while a reader's gate waits for input
``softBackPressuredTimeMsPerSecond``                   marked by
                                                       :meth:`~flinknet.RecordWriter.wait_available`
``hardBackPressuredTimeMsPerSecond``                   marked while an emit blocks for a buffer
``backPressuredTimeMsPerSecond`` / ``busyTime…``       soft + hard / ``1000 − min(idle + bp, 1000)``
``maxSoft/HardBackPressureTimeMs``                     the longest single wait in the last interval
``accumulate{Idle,BackPressured,Busy}TimeMs``          totals since the task started
``getBackPressuredTimeMsPerSecond()``                  ``TaskIOMetrics.back_pressured_time_ms_per_second``
``getBusyTimePerSecond()``                             ``TaskIOMetrics.busy_time_ms_per_second``
``getAccumulatedBackPressuredTimeMs()``                ``TaskIOMetrics.accumulated_back_pressured_time_ms``
``getAccumulatedBusyTime()``                           ``TaskIOMetrics.accumulated_busy_time_ms``
``InputGateMetrics`` / ``ResultPartitionMetrics``      ``detailed=True``: per gate / partition queue
                                                       lengths (Flink's ``detailed-metrics``)
``Task.isBackPressured()``                             ``TaskIOMetrics.is_back_pressured``
``debloatedBufferSize``                                per debloating gate (``Shuffle.Netty.Input.<i>``):
                                                       its last announced buffer size
``estimatedTimeToConsumeBuffersMs``                    per debloating gate, and for the task the
                                                       maximum over its gates
the REST handler's ratio and level                     ``TaskIOMetrics.back_pressured_ratio``,
                                                       ``TaskIOMetrics.back_pressure_level``
=====================================================  =================================================

The ``TaskIOMetrics`` accessors above are read-only properties (state, cheap to read); the
``register_*`` methods and :meth:`~TaskIOMetrics.close` are the actions.

Counting is free on the data path: the record serializer (Cython) already counts records,
bytes and buffers out; readers count records per batch and gates count buffers and bytes per
buffer. Counters here are views summing those numbers when read; timers are marked only when a
task actually waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from types import TracebackType

from flinknet.consumer.gate import InputGate, SingleInputGate, UnionInputGate
from flinknet.consumer.reader import RecordReader
from flinknet.consumer.remote import RemoteInputChannel
from flinknet.errors import IllegalStateError
from flinknet.metrics.core import Counter
from flinknet.metrics.network import register_input_metrics, register_output_metrics
from flinknet.metrics.registry import MetricGroup, backpressure_level
from flinknet.partition.result_partition import ResultPartition
from flinknet.writer import RecordWriter

__all__ = ["TaskIOMetrics", "SumCounter"]


class SumCounter(Counter):
    """A counter whose count is computed when read (a sum over live sources); ``inc`` adds an
    offset (counts kept after a source went away)."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[], int]) -> None:
        super().__init__(0)
        self._fn = fn

    @property
    def count(self) -> int:
        """The offset plus the sum over the live sources."""
        return self._count + self._fn()


def _queue_len_gauges(group: MetricGroup, lengths: Callable[[], list[int]]) -> None:
    """Flink's detailed queue metrics over the queue lengths ``lengths()`` returns."""
    group.gauge("totalQueueLen", lambda: sum(lengths()))
    group.gauge("minQueueLen", lambda: min(lengths(), default=0))
    group.gauge("maxQueueLen", lambda: max(lengths(), default=0))
    group.gauge("avgQueueLen", lambda: (sum(ls) / len(ls)) if (ls := lengths()) else 0.0)


def _gates_of(gate: SingleInputGate | UnionInputGate) -> list[SingleInputGate]:
    """The SingleInputGates behind a gate (a UnionInputGate's members)."""
    return list(gate.gates) if isinstance(gate, UnionInputGate) else [gate]


class TaskIOMetrics:
    """The I/O metrics of one task (one subtask), registered under ``group`` (normally
    ``registry.task_group(task_name, subtask_index, …)``).

    ``TaskIOMetrics(group, time_span_seconds=60, detailed=False)``; then
    :meth:`register_writer` for each of the task's record writers and :meth:`register_reader`
    for each record reader (or :meth:`register_partition` / :meth:`register_gate` for code that
    uses partitions and gates directly). Meters and timer gauges average over
    ``time_span_seconds`` (rounded down to the registry's update interval). :meth:`close`
    unhooks the timers and unregisters everything.
    """

    def __init__(self, group: MetricGroup, time_span_seconds: int = 60, detailed: bool = False) -> None:
        if not isinstance(group, MetricGroup):
            raise TypeError("group must be a flinknet.metrics.MetricGroup")
        if isinstance(time_span_seconds, bool) or not isinstance(time_span_seconds, int) \
                or time_span_seconds <= 0:
            raise ValueError(f"time_span_seconds must be a positive int, got {time_span_seconds!r}")
        self.group = group
        self.detailed = bool(detailed)
        self._writers: list[RecordWriter] = []
        self._readers: list[RecordReader] = []
        self._partitions: list[ResultPartition] = []
        self._gates: list[SingleInputGate] = []   # union members flattened
        # the gates whose waits are timed (a union, or single gates)
        self._waiting_gates: list[SingleInputGate | UnionInputGate] = []
        self._debloating_gates: list[SingleInputGate] = []
        self._closed = False
        self._start_ms = time.monotonic_ns() // 1_000_000
        g = group
        rs, ps, gs = self._readers, self._partitions, self._gates

        def total(attr: str, items: Sequence[object]) -> Callable[[], int]:
            return lambda: sum(int(getattr(x, attr)) for x in list(items))

        def records_in() -> int:
            # Latency markers are stream elements, not records: Flink does not count them.
            return sum(r.num_records_in - getattr(r.serializer, "latency_markers_read", 0)
                       for r in list(rs))

        def records_out() -> int:
            return sum(p.num_records_out - getattr(p.serializer, "latency_markers_written", 0)
                       for p in list(ps))

        counters = {
            "numRecordsIn": SumCounter(records_in),
            "numRecordsOut": SumCounter(records_out),
            "numBytesIn": SumCounter(total("num_bytes_in", gs)),
            "numBytesOut": SumCounter(total("num_bytes_out", ps)),
            "numBuffersOut": SumCounter(total("num_buffers_out", ps)),
            "numBytesInLocal": SumCounter(total("num_bytes_in_local", gs)),
            "numBytesInRemote": SumCounter(total("num_bytes_in_remote", gs)),
            "numBuffersInLocal": SumCounter(total("num_buffers_in_local", gs)),
            "numBuffersInRemote": SumCounter(total("num_buffers_in_remote", gs)),
        }
        self.counters = counters
        for name, c in counters.items():
            g.counter(name, c)
            g.meter(name + "PerSecond", c, time_span_seconds)

        self.idle_time = g.timer_gauge("idleTimeMsPerSecond", time_span_seconds)
        self.soft_back_pressured_time = g.timer_gauge("softBackPressuredTimeMsPerSecond", time_span_seconds)
        self.hard_back_pressured_time = g.timer_gauge("hardBackPressuredTimeMsPerSecond", time_span_seconds)
        idle, soft, hard = self.idle_time, self.soft_back_pressured_time, self.hard_back_pressured_time
        g.gauge("backPressuredTimeMsPerSecond", lambda: self.back_pressured_time_ms_per_second)
        g.gauge("busyTimeMsPerSecond", lambda: self.busy_time_ms_per_second)
        g.gauge("maxSoftBackPressureTimeMs", lambda: soft.max_single_measurement)
        g.gauge("maxHardBackPressureTimeMs", lambda: hard.max_single_measurement)
        g.gauge("accumulateIdleTimeMs", lambda: idle.accumulated_count)
        g.gauge("accumulateBackPressuredTimeMs", lambda: self.accumulated_back_pressured_time_ms)
        g.gauge("accumulateBusyTimeMs", lambda: self.accumulated_busy_time_ms)

        # The Shuffle.Netty buffer gauges over the live lists of this task's partitions and gates.
        register_output_metrics(g, ps)
        register_input_metrics(g, gs)
        netty = g.add_group("Shuffle").add_group("Netty")
        self._output_group = netty.add_group("Output")
        self._input_group = inp = netty.add_group("Input")
        # Flink also registers the local/remote input counters under the Shuffle.Netty input group.
        for name in ("numBytesInLocal", "numBytesInRemote", "numBuffersInLocal", "numBuffersInRemote"):
            inp.counter(name, counters[name])

    # -- registration ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise IllegalStateError("these task metrics are closed")

    def register_writer(self, writer: RecordWriter) -> None:
        """Count ``writer``'s output, time its waits (soft: :meth:`wait_available`; hard: an
        emit blocked on a buffer) and add its partition to the output buffer gauges."""
        if not isinstance(writer, RecordWriter):
            raise TypeError(f"expected a RecordWriter, got {type(writer).__name__}")
        self._check_open()
        if any(w is writer for w in self._writers):
            raise ValueError("this writer is already registered")
        self._writers.append(writer)
        writer.set_soft_back_pressure_timer(self.soft_back_pressured_time)
        self.register_partition(writer.partition)

    def register_partition(self, partition: ResultPartition) -> None:
        """Count ``partition``'s output and time its hard back-pressure (for code that emits
        into partitions without a RecordWriter)."""
        if not isinstance(partition, ResultPartition):
            raise TypeError(f"expected a ResultPartition, got {type(partition).__name__}")
        self._check_open()
        if any(p is partition for p in self._partitions):
            return
        partition.set_hard_back_pressure_timer(self.hard_back_pressured_time)
        self._partitions.append(partition)
        if self.detailed:
            self._register_partition_detail(partition)

    def register_reader(self, reader: RecordReader) -> None:
        """Count ``reader``'s records and its gate's buffers and bytes, and time its waits for
        input (``idleTimeMsPerSecond``)."""
        if not isinstance(reader, RecordReader):
            raise TypeError(f"expected a RecordReader, got {type(reader).__name__}")
        self._check_open()
        if any(r is reader for r in self._readers):
            raise ValueError("this reader is already registered")
        self._readers.append(reader)
        self.register_gate(reader.gate)

    def register_gate(self, gate: InputGate) -> None:
        """Count ``gate``'s buffers and bytes (local and remote), add it to the input buffer
        gauges and time its blocking waits as idle time. ``gate`` is a SingleInputGate, a
        UnionInputGate or a :class:`~flinknet.checkpointing.CheckpointedInputGate` (the gate it
        wraps is registered). A member gate that debloats its buffers (see
        :meth:`~flinknet.consumer.SingleInputGate.set_buffer_debloater`; set before
        registering) gets ``debloatedBufferSize`` and ``estimatedTimeToConsumeBuffersMs`` under
        ``Shuffle.Netty.Input.<i>`` (``i``: its position among the task's gates, as Flink's gate
        index), and the task the maximum ``estimatedTimeToConsumeBuffersMs`` over its gates."""
        # Imported here: flinknet.checkpointing imports the metrics registry.
        from flinknet.checkpointing.gate import CheckpointedInputGate

        inner = gate.input_gate if isinstance(gate, CheckpointedInputGate) else gate
        if not isinstance(inner, (SingleInputGate, UnionInputGate)):
            raise TypeError("expected a SingleInputGate, UnionInputGate or CheckpointedInputGate, "
                            f"got {type(gate).__name__}")
        self._check_open()
        if any(g is inner for g in self._waiting_gates):
            return
        inner.set_idle_timer(self.idle_time)
        self._waiting_gates.append(inner)
        for member in _gates_of(inner):
            if not any(g is member for g in self._gates):
                self._gates.append(member)
                if self.detailed:
                    self._register_gate_detail(member)
                if member.buffer_debloater is not None:
                    self._register_gate_debloat(member)

    def _register_gate_debloat(self, gate: SingleInputGate) -> None:
        """Flink's per-gate debloating gauges (SingleInputGateFactory) and the task's maximum."""
        group = self._input_group.add_group(str(len(self._gates) - 1))

        def debloated_size() -> int:
            d = gate.buffer_debloater
            return d.last_buffer_size if d is not None else 0

        def time_to_consume() -> int:
            d = gate.buffer_debloater
            return d.last_estimated_time_to_consume_buffers_ms if d is not None else 0

        group.gauge("debloatedBufferSize", debloated_size)
        group.gauge("estimatedTimeToConsumeBuffersMs", time_to_consume)
        if not self._debloating_gates:
            gates = self._debloating_gates
            self.group.gauge("estimatedTimeToConsumeBuffersMs", lambda: max(
                (d.last_estimated_time_to_consume_buffers_ms for g in list(gates)
                 if (d := g.buffer_debloater) is not None), default=0))
        self._debloating_gates.append(gate)

    # -- detailed metrics (Flink's taskmanager.network.detailed-metrics) -------------------

    def _register_gate_detail(self, gate: SingleInputGate) -> None:
        _queue_len_gauges(self._input_group.add_group(str(len(self._gates) - 1)), lambda: [
            ch.number_of_queued_buffers for ch in list(gate.input_channels)
            if isinstance(ch, RemoteInputChannel)])

    def _register_partition_detail(self, partition: ResultPartition) -> None:
        _queue_len_gauges(self._output_group.add_group(str(len(self._partitions) - 1)), lambda: [
            sp.number_of_queued_buffers for sp in partition.subpartitions])

    # -- derived values --------------------------------------------------------------------

    @property
    def back_pressured_time_ms_per_second(self) -> int:
        """Soft plus hard back-pressured time, ms per second (Flink's
        ``getBackPressuredTimeMsPerSecond()``)."""
        return self.soft_back_pressured_time.value + self.hard_back_pressured_time.value

    @property
    def busy_time_ms_per_second(self) -> float:
        """``1000 − min(idle + back-pressured, 1000)`` (Flink's ``getBusyTimePerSecond()``)."""
        return 1000.0 - min(self.idle_time.value + self.back_pressured_time_ms_per_second, 1000.0)

    @property
    def accumulated_back_pressured_time_ms(self) -> int:
        """Soft plus hard back-pressured ms since the task started (Flink's
        ``getAccumulatedBackPressuredTimeMs()``)."""
        return (self.soft_back_pressured_time.accumulated_count
                + self.hard_back_pressured_time.accumulated_count)

    @property
    def accumulated_busy_time_ms(self) -> int:
        """Time since the task started that was neither idle nor back-pressured, ms (≥ 0;
        Flink's ``getAccumulatedBusyTime()``)."""
        elapsed = time.monotonic_ns() // 1_000_000 - self._start_ms
        return max(0, elapsed - self.idle_time.accumulated_count
                   - self.accumulated_back_pressured_time_ms)

    @property
    def back_pressured_ratio(self) -> float:
        """``backPressuredTimeMsPerSecond / 1000`` (the ratio Flink's back-pressure status uses)."""
        return min(self.back_pressured_time_ms_per_second, 1000) / 1000.0

    @property
    def back_pressure_level(self) -> str:
        """``"OK"``, ``"LOW"`` or ``"HIGH"`` (OK ≤ 0.10 < LOW ≤ 0.5 < HIGH, Flink 1.13+)."""
        return backpressure_level(self.back_pressured_ratio)

    @property
    def is_back_pressured(self) -> bool:
        """Whether any registered partition is unavailable now (Flink's
        ``Task.isBackPressured()``, the 1.10–1.12 sampler's probe)."""
        return any(not p.is_available for p in list(self._partitions)
                   if not (p.is_released or p.is_finished))

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Unhook the timers from the writers, partitions and gates and unregister the metrics
        (idempotent). Counts are kept in the counters until then."""
        if self._closed:
            return
        self._closed = True
        for w in self._writers:
            if w.soft_back_pressure_timer is self.soft_back_pressured_time:
                w.set_soft_back_pressure_timer(None)
        for p in self._partitions:
            if p.hard_back_pressure_timer is self.hard_back_pressured_time:
                p.set_hard_back_pressure_timer(None)
        for g in self._waiting_gates:
            if g.idle_timer is self.idle_time:
                g.set_idle_timer(None)
        self.idle_time.mark_end()
        self.soft_back_pressured_time.mark_end()
        self.hard_back_pressured_time.mark_end()
        self.group.remove()

    def __enter__(self) -> TaskIOMetrics:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"TaskIOMetrics({'.'.join(self.group.scope)}, writers={len(self._writers)}, "
                f"readers={len(self._readers)})")
