"""Latency markers (Flink's ``LatencyMarker`` tracking): emitted by sources, carried in-band,
measured into histograms where they arrive.

=============================================================  ===========================================
Flink                                                          flinknet
=============================================================  ===========================================
``StreamSource.LatencyMarkerEmitter``                          :class:`LatencyMarkerEmitter`
``metrics.latency.interval`` (default 0: off)                  ``LatencyMarkerEmitter(…, interval_ms)``
``LatencyStats`` / ``LatencyStats.Granularity``                :class:`LatencyStats` (``"single"``,
                                                               ``"operator"``, ``"subtask"``)
``metrics.latency.history-size`` (128)                         ``LatencyStats(…, history_size=128)``
``AbstractStreamOperator.reportOrForwardLatencyMarker``        :meth:`LatencyStats.report_latency`, then
                                                               :func:`forward_latency_marker`
=============================================================  ===========================================

A marker is a stream element (``StreamElementSerializer`` tag 3) written into the same buffers as
the records around it, so it can never overtake them: it measures the time records spend queued
in the network stack, not user code. It goes to one random channel (``randomEmit``); operators
forward it the same way; sinks only report. Marked times are wall-clock milliseconds
(``System.currentTimeMillis``), so processes on different hosts need synchronised clocks.
"""

from __future__ import annotations

import time

from flinknet._core.elements import LatencyMarker, StreamElementSerializer
from flinknet.ids import OperatorID
from flinknet.metrics.core import Histogram
from flinknet.metrics.registry import MetricGroup
from flinknet.writer import RecordWriter

__all__ = ["LatencyMarkerEmitter", "LatencyStats", "forward_latency_marker", "GRANULARITIES",
           "DEFAULT_LATENCY_HISTORY_SIZE", "current_time_millis", "marker_operator_id"]

#: Flink's ``MetricOptions.LATENCY_HISTORY_SIZE`` default.
DEFAULT_LATENCY_HISTORY_SIZE = 128
#: Flink's ``MetricOptions.LATENCY_SOURCE_GRANULARITY`` values (default ``"operator"``).
GRANULARITIES = ("single", "operator", "subtask")


def current_time_millis() -> int:
    """Wall-clock milliseconds (Java's ``System.currentTimeMillis``)."""
    return time.time_ns() // 1_000_000


def marker_operator_id(marker: LatencyMarker) -> OperatorID:
    """The source operator of ``marker`` as an :class:`~flinknet.ids.OperatorID`."""
    return OperatorID.from_parts(marker.operator_id_lower, marker.operator_id_upper)


def _check_stream_elements(writer: RecordWriter) -> None:
    if not isinstance(writer, RecordWriter):
        raise TypeError(f"expected a RecordWriter, got {type(writer).__name__}")
    if not isinstance(writer.partition.serializer, StreamElementSerializer):
        raise ValueError("latency markers travel as stream elements: create the partition with "
                         "serializer=StreamElementSerializer(...)")


def _operator(operator_id: OperatorID | None, subtask_index: int) -> OperatorID:
    """Check an operator subtask's identity; a new random OperatorID when none is given."""
    if isinstance(subtask_index, bool) or not isinstance(subtask_index, int) or subtask_index < 0:
        raise ValueError(f"subtask_index must be an int >= 0, got {subtask_index!r}")
    if operator_id is None:
        return OperatorID.generate()
    if not isinstance(operator_id, OperatorID):
        raise TypeError("operator_id must be a flinknet.ids.OperatorID")
    return operator_id


def forward_latency_marker(writer: RecordWriter, marker: LatencyMarker) -> None:
    """Pass ``marker`` on to one random channel of ``writer`` (Flink's operators forward markers
    with ``randomEmit`` after reporting them)."""
    if type(marker) is not LatencyMarker:
        raise TypeError(f"expected a LatencyMarker, got {type(marker).__name__}")
    writer.random_emit(marker)


class LatencyMarkerEmitter:
    """Emits a :class:`~flinknet._core.elements.LatencyMarker` every ``interval_ms`` from a
    source task (Flink's ``LatencyMarkerEmitter``).

    ``LatencyMarkerEmitter(writer, interval_ms, operator_id=None, subtask_index=0)``; the
    writer's partition must use a ``StreamElementSerializer``. The task calls :meth:`maybe_emit`
    from its own loop (once per batch is plenty): a writer has one thread, and Flink too emits
    markers from the task's mailbox thread. The first marker goes out at the first call.
    """

    def __init__(self, writer: RecordWriter, interval_ms: float, operator_id: OperatorID | None = None,
                 subtask_index: int = 0) -> None:
        _check_stream_elements(writer)
        if isinstance(interval_ms, bool) or not isinstance(interval_ms, (int, float)) or not interval_ms > 0:
            raise ValueError(f"interval_ms must be > 0 (markers are off unless asked for), "
                             f"got {interval_ms!r}")
        operator_id = _operator(operator_id, subtask_index)
        self.writer = writer
        self.interval_ms = float(interval_ms)
        self.operator_id = operator_id
        self.subtask_index = subtask_index
        self._lower = operator_id.lower_part
        self._upper = operator_id.upper_part
        self._next_ns = 0
        self._interval_ns = int(self.interval_ms * 1_000_000)
        #: markers emitted so far.
        self.markers_emitted = 0

    def emit_now(self) -> LatencyMarker:
        """Emit one marker stamped now, whatever the interval says; returns it."""
        marker = LatencyMarker(current_time_millis(), self._lower, self._upper, self.subtask_index)
        self.writer.random_emit(marker)
        self.markers_emitted += 1
        return marker

    def maybe_emit(self) -> bool:
        """Emit a marker if one is due; True if it did."""
        now = time.monotonic_ns()
        if now < self._next_ns:
            return False
        # Fixed rate without catch-up bursts: the next marker is an interval after this one.
        self._next_ns = now + self._interval_ns
        self.emit_now()
        return True

    def __repr__(self) -> str:
        return (f"LatencyMarkerEmitter(operator={self.operator_id}, subtask={self.subtask_index}, "
                f"every {self.interval_ms:g} ms, emitted={self.markers_emitted})")


class LatencyStats:
    """Latency histograms of the markers reaching one operator (Flink's ``LatencyStats``).

    ``LatencyStats(group, granularity="operator", history_size=128, operator_id=None,
    subtask_index=0)``: histograms go under ``group.latency`` (Flink registers them under the
    job's group), keyed by ``granularity``: ``"single"`` (one per receiving operator subtask),
    ``"operator"`` (one per source operator: ``source_id``), ``"subtask"`` (one per source
    subtask: ``source_id`` and ``source_subtask_index``), each then by ``operator_id`` and
    ``operator_subtask_index`` of the receiver, named ``latency``. Each keeps the last
    ``history_size`` latencies in milliseconds (``DescriptiveStatisticsHistogram``).
    """

    def __init__(self, group: MetricGroup, granularity: str = "operator",
                 history_size: int = DEFAULT_LATENCY_HISTORY_SIZE, operator_id: OperatorID | None = None,
                 subtask_index: int = 0) -> None:
        if not isinstance(group, MetricGroup):
            raise TypeError("group must be a flinknet.metrics.MetricGroup")
        granularity = str(granularity).lower() if isinstance(granularity, str) else granularity
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size <= 0:
            raise ValueError(f"history_size must be a positive int, got {history_size!r}")
        operator_id = _operator(operator_id, subtask_index)
        self.group = group.add_group("latency")
        self.granularity = granularity
        self.history_size = history_size
        self.operator_id = operator_id
        self.subtask_index = subtask_index
        self._histograms: dict[tuple[int, ...], Histogram] = {}

    def _key(self, marker: LatencyMarker) -> tuple[int, ...]:
        if self.granularity == "single":
            return ()
        if self.granularity == "operator":
            return (marker.operator_id_lower, marker.operator_id_upper)
        return (marker.operator_id_lower, marker.operator_id_upper, marker.subtask_index)

    def report_latency(self, marker: LatencyMarker, now_ms: int | None = None) -> int:
        """Record ``now − marker.marked_time`` (ms) in the marker's histogram; returns it."""
        if type(marker) is not LatencyMarker:
            raise TypeError(f"expected a LatencyMarker, got {type(marker).__name__}")
        key = self._key(marker)
        hist = self._histograms.get(key)
        if hist is None:
            hist = Histogram(self.history_size)
            g = self.group
            if self.granularity != "single":
                g = g.add_group("source_id", str(marker_operator_id(marker)))
                if self.granularity == "subtask":
                    g = g.add_group("source_subtask_index", str(marker.subtask_index))
            g = g.add_group("operator_id", str(self.operator_id))
            g = g.add_group("operator_subtask_index", str(self.subtask_index))
            g.histogram("latency", hist)
            self._histograms[key] = hist
        latency = (current_time_millis() if now_ms is None else now_ms) - marker.marked_time
        hist.update(latency)
        return latency

    def histograms(self) -> dict[tuple[int, ...], Histogram]:
        """The histograms by key (``()``, ``(lower, upper)`` or ``(lower, upper, subtask)``): a
        new dict each call (a copy, safe to iterate while the task adds histograms)."""
        return dict(self._histograms)

    def __repr__(self) -> str:
        return f"LatencyStats({self.granularity}, histograms={len(self._histograms)})"
