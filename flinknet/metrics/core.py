"""Metric types with Flink's definitions (``org.apache.flink.metrics`` and ``runtime.metrics``).

==========================================================  ==================================================
Flink                                                       flinknet
==========================================================  ==================================================
``SimpleCounter`` (``inc``, ``dec``, ``getCount()``)        :class:`Counter` (``inc``, ``dec``, ``count``)
``Gauge<T>.getValue()``                                     :class:`Gauge` ``.value``
``MeterView`` (``markEvent``, ``getRate()``,                :class:`MeterView` (``mark_event``, ``rate``,
``getCount()``)                                             ``count``)
``TimerGauge`` (``markStart``, ``markEnd``,                 :class:`TimerGauge` (``mark_start``, ``mark_end``,
``getValue()``, ``getMaxSingleMeasurement()``,              ``value``, ``max_single_measurement``,
``getAccumulatedCount()``, ``getCount()``,                  ``accumulated_count``, ``count``,
``isMeasuring()``)                                          ``is_measuring``)
``DescriptiveStatisticsHistogram`` (``update``,             :class:`Histogram` (``update``, ``count``,
``getCount()``, ``getStatistics()``)                        ``get_statistics()``)
``HistogramStatistics`` (``getQuantile(q)``,                :class:`HistogramStatistics` (``get_quantile(q)``,
``getValues()``, ``size()``, ``getMean()``,                 ``values``, ``size``, ``mean``, ``std_dev``,
``getStdDev()``, ``getMin()``, ``getMax()``)                ``min``, ``max``)
``View`` (``update``)                                       :class:`View` (``update``)
``View.UPDATE_INTERVAL_SECONDS``                            :data:`UPDATE_INTERVAL_SECONDS`
``MetricGroup`` / ``MetricRegistry``                        :class:`MetricGroup` / :class:`MetricRegistry`
==========================================================  ==================================================

Names follow the project's rule: state is a property (Flink's ``getX()`` → ``x``, ``isX()`` →
``is_x``), actions are methods, a getter with arguments stays a method (``get_quantile(q)``) and
so does one answering a new object each call (``get_statistics()``: a snapshot).

Views (meters and timer gauges) are refreshed every :data:`UPDATE_INTERVAL_SECONDS` by the
registry's updater (Flink's ``ViewUpdater``); their values are the rates over their window, so
reading a metric never costs the data path anything. Counters are plain integers incremented by
their single writer (the task thread), as Flink's ``SimpleCounter``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

__all__ = ["UPDATE_INTERVAL_SECONDS", "Counter", "Gauge", "Histogram", "HistogramStatistics", "MeterView",
           "TimerGauge", "View"]

#: Flink's ``View.UPDATE_INTERVAL_SECONDS``: how often views are refreshed.
UPDATE_INTERVAL_SECONDS = 5

T = TypeVar("T")


def _millis() -> float:
    # Fractional milliseconds: Flink's TimerGauge reads a whole-millisecond clock, which counts a
    # 0.1 ms wait that crosses a millisecond boundary as 1 ms (a task waiting briefly every few
    # milliseconds then reads as idle all the time). Values are still reported in whole ms.
    return time.monotonic_ns() / 1_000_000


class Counter:
    """A count that only its writer changes (Flink's ``SimpleCounter``)."""

    __slots__ = ("_count",)

    def __init__(self, count: int = 0) -> None:
        self._count = int(count)

    def inc(self, n: int = 1) -> None:
        self._count += n

    def dec(self, n: int = 1) -> None:
        self._count -= n

    @property
    def count(self) -> int:
        """The current count (Flink's ``getCount()``)."""
        return self._count

    def __repr__(self) -> str:
        return f"Counter({self.count})"


class Gauge(Generic[T]):
    """A value computed when read: ``Gauge(fn)``; :attr:`value` calls ``fn()``."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[], T]) -> None:
        if not callable(fn):
            raise TypeError("a Gauge needs a callable")
        self._fn = fn

    @property
    def value(self) -> T:
        """``fn()`` now (Flink's ``getValue()``)."""
        return self._fn()


class View:
    """Something the registry refreshes every :data:`UPDATE_INTERVAL_SECONDS` (Flink's ``View``)."""

    def update(self) -> None:  # pragma: no cover (interface)
        raise NotImplementedError


def _interval(update_interval: object) -> int:
    if isinstance(update_interval, bool) or not isinstance(update_interval, int) or update_interval <= 0:
        raise ValueError(f"update_interval must be a positive int (seconds), got {update_interval!r}")
    return update_interval


def _span(time_span_seconds: object, update_interval: int = UPDATE_INTERVAL_SECONDS) -> int:
    if isinstance(time_span_seconds, bool) or not isinstance(time_span_seconds, int) \
            or time_span_seconds <= 0:
        raise ValueError(f"time_span_seconds must be a positive int, got {time_span_seconds!r}")
    # Flink rounds down to a multiple of the update interval, at least one interval
    return max(time_span_seconds - time_span_seconds % update_interval, update_interval)


class MeterView(View):
    """Events per second over the last ``time_span_seconds`` (default 60), from a counter
    sampled at every update (Flink's ``MeterView``).

    ``update_interval`` (seconds, default Flink's 5) must match how often the registry calls
    :meth:`update`; :meth:`MetricGroup.meter` takes it from the registry."""

    def __init__(self, counter: Counter | None = None, time_span_seconds: int = 60,
                 update_interval: int = UPDATE_INTERVAL_SECONDS) -> None:
        self.counter = counter if counter is not None else Counter()
        self.update_interval = _interval(update_interval)
        self.time_span_seconds = _span(time_span_seconds, self.update_interval)
        self._values = [0] * (self.time_span_seconds // self.update_interval + 1)
        self._time = 0
        self._rate = 0.0

    def mark_event(self, n: int = 1) -> None:
        self.counter.inc(n)

    @property
    def count(self) -> int:
        """The counter's count (Flink's ``getCount()``)."""
        return self.counter.count

    @property
    def rate(self) -> float:
        """Events per second over the window, as of the last :meth:`update` (Flink's ``getRate()``)."""
        return self._rate

    def update(self) -> None:
        values = self._values
        self._time = (self._time + 1) % len(values)
        values[self._time] = self.counter.count
        self._rate = (values[self._time] - values[(self._time + 1) % len(values)]) / self.time_span_seconds


class TimerGauge(View):
    """Milliseconds per second spent in a state between ``mark_start()`` and ``mark_end()``, over
    the last ``time_span_seconds`` (Flink's ``TimerGauge``; a measurement still running at an
    update counts up to that moment).

    :attr:`value`: ms/s, clamped to [0, 1000]; :attr:`max_single_measurement`: the longest
    single period seen in the last update interval (a period spanning updates counts whole);
    :attr:`accumulated_count`: total ms since creation; :attr:`is_measuring`: a period is
    running. ``clock`` returns milliseconds. Thread-safe: the task marks, the updater updates.
    ``update_interval`` as for :class:`MeterView`.
    """

    def __init__(self, clock: Callable[[], float] = _millis, time_span_seconds: int = UPDATE_INTERVAL_SECONDS,
                 update_interval: int = UPDATE_INTERVAL_SECONDS) -> None:
        self._clock = clock
        self.update_interval = _interval(update_interval)
        self.time_span_seconds = _span(time_span_seconds, self.update_interval)
        self._values: list[float] = [0] * (self.time_span_seconds // self.update_interval)
        self._idx = 0
        self._full = False
        self._lock = threading.Lock()
        self._current_value = 0
        self._current_count: float = 0
        self._start: float = 0          # start of the running measurement (0: none)
        self._update_ts: float = 0      # last mark_start or update inside the running measurement
        self._previous_max: float = 0
        self._current_max: float = 0
        self._accumulated: float = 0

    def mark_start(self, now: float | None = None) -> None:
        with self._lock:
            if self._start == 0:
                now = self._clock() if now is None else now
                self._start = self._update_ts = now if now != 0 else 1

    def mark_end(self, now: float | None = None) -> None:
        with self._lock:
            if self._start != 0:
                now = self._clock() if now is None else now
                elapsed = now - self._update_ts
                self._current_count += elapsed
                self._accumulated += elapsed
                self._current_max = max(self._current_max, now - self._start)
                self._start = 0

    def update(self) -> None:
        with self._lock:
            if self._start != 0:
                now = self._clock()
                elapsed = now - self._update_ts
                self._current_count += elapsed
                self._accumulated += elapsed
                self._update_ts = now
                self._current_max = max(self._current_max, now - self._start)
            values = self._values
            if self._idx == len(values) - 1:
                self._full = True
            values[self._idx] = self._current_count
            self._idx = (self._idx + 1) % len(values)
            filled = len(values) if self._full else self._idx
            total = sum(values[:filled])
            self._current_value = int(max(min(total // (self.update_interval * filled), 1000), 0))
            self._previous_max = self._current_max
            self._current_count = 0
            self._current_max = 0

    @property
    def value(self) -> int:
        """Milliseconds per second in the state over the window, as of the last :meth:`update`
        (Flink's ``getValue()``)."""
        return self._current_value

    @property
    def max_single_measurement(self) -> int:
        """The longest single period in the last update interval, ms (Flink's
        ``getMaxSingleMeasurement()``)."""
        return int(self._previous_max)

    @property
    def accumulated_count(self) -> int:
        """Milliseconds in the state since creation (Flink's ``getAccumulatedCount()``)."""
        with self._lock:
            return int(self._accumulated)

    @property
    def count(self) -> int:
        """Milliseconds in the state since the last :meth:`update` (Flink's ``getCount()``)."""
        return int(self._current_count)

    @property
    def is_measuring(self) -> bool:
        """A period is running: marked started, not yet ended (Flink's ``isMeasuring()``)."""
        return self._start != 0


class HistogramStatistics:
    """A snapshot of a :class:`Histogram` (Flink's ``HistogramStatistics``); immutable."""

    __slots__ = ("_values", "_count")

    def __init__(self, values: Iterable[float], count: int) -> None:
        self._values: tuple[float, ...] = tuple(sorted(values))
        self._count = count

    @property
    def count(self) -> int:
        """How many values the histogram had seen when the snapshot was taken (all of them, not
        only the window)."""
        return self._count

    def get_quantile(self, quantile: float) -> float:
        """The ``quantile`` (0..1) of the window, interpolated as Flink's
        ``DescriptiveStatisticsHistogram`` (Apache Commons Math's default percentile:
        position ``q × (n + 1)``); NaN for an empty window."""
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {quantile}")
        v = self._values
        n = len(v)
        if n == 0:
            return float("nan")
        pos = quantile * (n + 1)
        if pos < 1:
            return float(v[0])
        if pos >= n:
            return float(v[-1])
        lo = int(pos)
        frac = pos - lo
        return float(v[lo - 1] + frac * (v[lo] - v[lo - 1]))

    @property
    def values(self) -> tuple[float, ...]:
        """The window's values, sorted (Flink's ``getValues()``)."""
        return self._values

    @property
    def size(self) -> int:
        """How many values the window holds (Flink's ``size()``)."""
        return len(self._values)

    @property
    def min(self) -> float:
        """The smallest value in the window, 0 when empty (Flink's ``getMin()``)."""
        return self._values[0] if self._values else 0

    @property
    def max(self) -> float:
        """The largest value in the window, 0 when empty (Flink's ``getMax()``)."""
        return self._values[-1] if self._values else 0

    @property
    def mean(self) -> float:
        """The window's mean, 0.0 when empty (Flink's ``getMean()``)."""
        v = self._values
        return sum(v) / len(v) if v else 0.0

    @property
    def std_dev(self) -> float:
        """The window's sample standard deviation, 0.0 below two values (Flink's ``getStdDev()``)."""
        v = self._values
        n = len(v)
        if n < 2:
            return 0.0
        m = sum(v) / n
        return float((sum((x - m) ** 2 for x in v) / (n - 1)) ** 0.5)

    def as_dict(self) -> dict[str, float]:
        """``count``, ``min``, ``max``, ``mean``, ``stddev``, ``p50``, ``p75``, ``p95``,
        ``p98``, ``p99``, ``p999`` (the quantiles Flink's reporters export); a new dict each call."""
        q = self.get_quantile
        return {"count": self.count, "min": self.min, "max": self.max,
                "mean": self.mean, "stddev": self.std_dev, "p50": q(0.5),
                "p75": q(0.75), "p95": q(0.95), "p98": q(0.98), "p99": q(0.99), "p999": q(0.999)}


class Histogram:
    """The last ``window_size`` values and the total count (Flink's
    ``DescriptiveStatisticsHistogram``; latency histograms use a window of 128).

    ``update(value)`` is O(1) (a ring); :meth:`get_statistics` sorts a copy of the window into a
    new :class:`HistogramStatistics` snapshot each call. Thread-safe: the task updates, reporters
    read.
    """

    def __init__(self, window_size: int = 128) -> None:
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size <= 0:
            raise ValueError(f"window_size must be a positive int, got {window_size!r}")
        self.window_size = window_size
        self._ring: list[float] = []
        self._pos = 0
        self._count = 0
        self._lock = threading.Lock()

    def update(self, value: float) -> None:
        with self._lock:
            if len(self._ring) < self.window_size:
                self._ring.append(value)
            else:
                self._ring[self._pos] = value
                self._pos = (self._pos + 1) % self.window_size
            self._count += 1

    @property
    def count(self) -> int:
        """How many values were ever recorded (Flink's ``getCount()``)."""
        return self._count

    def get_statistics(self) -> HistogramStatistics:
        """A snapshot of the window (Flink's ``getStatistics()``): a new object each call."""
        with self._lock:
            return HistogramStatistics(list(self._ring), self._count)

    def __repr__(self) -> str:
        return f"Histogram(count={self._count}, window={self.window_size})"
