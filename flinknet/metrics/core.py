"""Metric types with Flink's definitions (``org.apache.flink.metrics`` and ``runtime.metrics``).

=====================================  ==========================================
Flink                                  flinknet
=====================================  ==========================================
``SimpleCounter``                      :class:`Counter`
``Gauge``                              :class:`Gauge`
``MeterView`` (``getRate``)            :class:`MeterView` (``get_rate``)
``TimerGauge``                         :class:`TimerGauge`
``View.UPDATE_INTERVAL_SECONDS``       :data:`UPDATE_INTERVAL_SECONDS`
``MetricGroup`` / ``MetricRegistry``   :class:`MetricGroup` / :class:`MetricRegistry`
=====================================  ==========================================

Views (meters and timer gauges) are refreshed every :data:`UPDATE_INTERVAL_SECONDS` by the
registry's updater (Flink's ``ViewUpdater``); their values are the rates over their window, so
reading a metric never costs the data path anything. Counters are plain integers incremented by
their single writer (the task thread), as Flink's ``SimpleCounter``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["UPDATE_INTERVAL_SECONDS", "Counter", "Gauge", "MeterView", "TimerGauge", "View"]

#: Flink's ``View.UPDATE_INTERVAL_SECONDS``: how often views are refreshed.
UPDATE_INTERVAL_SECONDS = 5


def _millis() -> int:
    return time.monotonic_ns() // 1_000_000


class Counter:
    """A count that only its writer changes (Flink's ``SimpleCounter``)."""

    __slots__ = ("count",)

    def __init__(self, count: int = 0) -> None:
        self.count = int(count)

    def inc(self, n: int = 1) -> None:
        self.count += n

    def dec(self, n: int = 1) -> None:
        self.count -= n

    def get_count(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"Counter({self.count})"


class Gauge:
    """A value computed when read: ``Gauge(fn)``; ``get_value()`` calls ``fn()``."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[], Any]) -> None:
        if not callable(fn):
            raise TypeError("a Gauge needs a callable")
        self._fn = fn

    def get_value(self) -> Any:
        return self._fn()


class View:
    """Something the registry refreshes every :data:`UPDATE_INTERVAL_SECONDS` (Flink's ``View``)."""

    def update(self) -> None:  # pragma: no cover (interface)
        raise NotImplementedError


def _span(time_span_seconds: int) -> int:
    if not isinstance(time_span_seconds, int) or time_span_seconds <= 0:
        raise ValueError(f"time_span_seconds must be a positive int, got {time_span_seconds!r}")
    # Flink rounds down to a multiple of the update interval, at least one interval
    return max(time_span_seconds - time_span_seconds % UPDATE_INTERVAL_SECONDS, UPDATE_INTERVAL_SECONDS)


class MeterView(View):
    """Events per second over the last ``time_span_seconds`` (default 60), from a counter
    sampled at every update (Flink's ``MeterView``)."""

    def __init__(self, counter: Counter | None = None, time_span_seconds: int = 60) -> None:
        self.counter = counter if counter is not None else Counter()
        self.time_span_seconds = _span(time_span_seconds)
        self._values = [0] * (self.time_span_seconds // UPDATE_INTERVAL_SECONDS + 1)
        self._time = 0
        self._rate = 0.0

    def mark_event(self, n: int = 1) -> None:
        self.counter.inc(n)

    def get_count(self) -> int:
        return self.counter.get_count()

    def get_rate(self) -> float:
        return self._rate

    def update(self) -> None:
        values = self._values
        self._time = (self._time + 1) % len(values)
        values[self._time] = self.counter.get_count()
        self._rate = (values[self._time] - values[(self._time + 1) % len(values)]) / self.time_span_seconds


class TimerGauge(View):
    """Milliseconds per second spent in a state between ``mark_start()`` and ``mark_end()``, over
    the last ``time_span_seconds`` (Flink's ``TimerGauge``; a measurement still running at an
    update counts up to that moment).

    ``get_value()``: ms/s, clamped to [0, 1000]; ``get_max_single_measurement()``: the longest
    single period seen in the last update interval (a period spanning updates counts whole);
    ``get_accumulated_count()``: total ms since creation. ``clock`` returns milliseconds.
    Thread-safe: the task marks, the updater updates.
    """

    def __init__(self, clock: Callable[[], int] = _millis, time_span_seconds: int = UPDATE_INTERVAL_SECONDS) -> None:
        self._clock = clock
        self.time_span_seconds = _span(time_span_seconds)
        self._values = [0] * (self.time_span_seconds // UPDATE_INTERVAL_SECONDS)
        self._idx = 0
        self._full = False
        self._lock = threading.Lock()
        self._current_value = 0
        self._current_count = 0
        self._start = 0          # start of the running measurement (0: none)
        self._update_ts = 0      # last mark_start or update inside the running measurement
        self._previous_max = 0
        self._current_max = 0
        self._accumulated = 0

    def mark_start(self, now: int | None = None) -> None:
        with self._lock:
            if self._start == 0:
                now = self._clock() if now is None else now
                self._start = self._update_ts = now if now != 0 else 1

    def mark_end(self, now: int | None = None) -> None:
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
            self._current_value = max(min(total // (UPDATE_INTERVAL_SECONDS * filled), 1000), 0)
            self._previous_max = self._current_max
            self._current_count = 0
            self._current_max = 0

    def get_value(self) -> int:
        return self._current_value

    def get_max_single_measurement(self) -> int:
        return self._previous_max

    def get_accumulated_count(self) -> int:
        with self._lock:
            return self._accumulated

    def get_count(self) -> int:
        return self._current_count

    def is_measuring(self) -> bool:
        return self._start != 0
