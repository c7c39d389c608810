"""Buffer debloating: the consumer measures its throughput and asks its producers for buffers
that hold about ``target`` of data in flight (Flink's ``org.apache.flink.runtime.throughput``).

A gate with debloating (:meth:`~flinknet.consumer.SingleInputGate.set_buffer_debloater`; a
:class:`~flinknet.environment.NetworkEnvironment` does it for every gate when
``taskmanager.network.memory.buffer-debloat.enabled`` is true) counts the bytes it hands out and
the time it was not idle (:class:`ThroughputCalculator`); every ``period`` its
:meth:`~flinknet.consumer.SingleInputGate.trigger_debloating` turns that throughput and the
number of buffers in use into a buffer size (:class:`BufferDebloater`, an exponential moving
average, :class:`BufferSizeEMA`) and, when it changed enough, announces it to every channel:
remote channels send ``NewBufferSize``, local channels tell their subpartition view directly.
The producer then trims each *new* buffer to that size (segments stay whole; only how far they
are filled changes).

Name map (Flink → flinknet):

==========================================  =============================================
``ThroughputCalculator``                    :class:`ThroughputCalculator`
``BufferSizeEMA``                           :class:`BufferSizeEMA`
``BufferDebloater``                         :class:`BufferDebloater`
``BufferDebloatConfiguration``              :class:`BufferDebloatConfiguration`
``recalculateBufferSize`` / ``skipUpdate``  ``recalculate_buffer_size`` / ``skip_update``
``getLastBufferSize``                       ``BufferDebloater.last_buffer_size``
``getLastEstimatedTimeToConsumeBuffers``    ``last_estimated_time_to_consume_buffers_ms``
==========================================  =============================================

The formulas are Flink 2.x's: the per-buffer share ``desiredTotal / buffersInUse`` is floating
point, the moving average is kept as a float and rounded half up (``Math.round``), and the
average starts at ``taskmanager.memory.starting-segment-size``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flinknet.config import NetworkConfig

__all__ = [
    "BufferDebloatConfiguration",
    "BufferDebloater",
    "BufferSizeEMA",
    "ThroughputCalculator",
]

_MILLIS_IN_SECOND = 1000
_NOT_TRACKED = -1.0


def _monotonic_ms() -> float:
    return time.monotonic() * 1000.0


def _java_round(value: float) -> int:
    """Java's ``Math.round``: half up (Python's ``round`` rounds half to even)."""
    return math.floor(value + 0.5)


class ThroughputCalculator:
    """Bytes per second over the time measured since the last calculation (Flink's
    ``ThroughputCalculator``).

    ``ThroughputCalculator(clock=None)``: ``clock()`` returns the current time in milliseconds
    (default: the monotonic clock). Time between :meth:`pause_measurement` and the next
    :meth:`resume_measurement` (or :meth:`incoming_data_size`) is not measured: a gate pauses
    while it waits for input, so the throughput is what the reader *can* consume, not what
    arrived. Not thread-safe: one thread (the gate's reader) drives it.
    """

    __slots__ = ("_clock", "_current_throughput", "_accumulated", "_measured_ms", "_start_ms")

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock: Callable[[], float] = clock if clock is not None else _monotonic_ms
        self._current_throughput = 0
        self._accumulated = 0
        self._measured_ms = 0.0
        self._start_ms = _NOT_TRACKED

    def incoming_data_size(self, received: int) -> None:
        """Count ``received`` bytes; resumes the measurement if it was paused."""
        if self._start_ms == _NOT_TRACKED:
            self._start_ms = self._clock()
        self._accumulated += received

    def add_data_size(self, received: int) -> None:
        """Count ``received`` bytes without resuming a paused measurement (for a caller that
        counts bytes elsewhere and adds them in bulk, as a gate does when it triggers)."""
        self._accumulated += received

    def pause_measurement(self, now_ms: float | None = None) -> None:
        """Stop measuring time (the reader waits); ``now_ms`` saves a clock read."""
        if self._start_ms != _NOT_TRACKED:
            self._measured_ms += (self._clock() if now_ms is None else now_ms) - self._start_ms
        self._start_ms = _NOT_TRACKED

    def resume_measurement(self, now_ms: float | None = None) -> None:
        """Measure time again (no effect if not paused); ``now_ms`` saves a clock read."""
        if self._start_ms == _NOT_TRACKED:
            self._start_ms = self._clock() if now_ms is None else now_ms

    @property
    def uses_monotonic_clock(self) -> bool:
        """Whether the clock is the default one (``time.monotonic()`` in milliseconds): then a
        caller that read that clock anyway may pass its reading as ``now_ms``."""
        return self._clock is _monotonic_ms

    @property
    def is_measuring(self) -> bool:
        """Whether time is being measured now (not paused)."""
        return self._start_ms != _NOT_TRACKED

    def calculate_throughput(self) -> int:
        """Bytes per second since the previous call (the previous value if no time was
        measured since); resets the counts."""
        if self._start_ms != _NOT_TRACKED:
            now = self._clock()
            self._measured_ms += now - self._start_ms
            self._start_ms = now
        throughput = self.calculate_throughput_of(self._accumulated, self._measured_ms)
        self._accumulated = 0
        self._measured_ms = 0.0
        return throughput

    def calculate_throughput_of(self, data_size: int, time_ms: float) -> int:
        """``data_size`` bytes over ``time_ms`` as bytes per second (kept as the current value);
        the current value if ``time_ms`` is 0."""
        if data_size < 0:
            raise ValueError(f"Size of data should be non negative, got {data_size}")
        if time_ms < 0:
            raise ValueError(f"Time should be non negative, got {time_ms}")
        if time_ms == 0:
            return self._current_throughput
        self._current_throughput = int(data_size / time_ms * _MILLIS_IN_SECOND)
        return self._current_throughput

    def __repr__(self) -> str:
        return (f"ThroughputCalculator(throughput={self._current_throughput} B/s, "
                f"measuring={self.is_measuring})")


class BufferSizeEMA:
    """The exponential moving average of the buffer size (Flink's ``BufferSizeEMA``).

    ``BufferSizeEMA(max_buffer_size, min_buffer_size, number_of_samples, starting_buffer_size=None)``:
    ``alpha = 2 / (samples + 1)``; each step moves toward ``min(total / buffers, 2 × last)``
    (growing at most as fast as it can shrink) and clamps to ``[min, max]``. Starts at
    ``starting_buffer_size`` (default: the maximum).
    """

    __slots__ = ("max_buffer_size", "min_buffer_size", "alpha", "_last")

    def __init__(self, max_buffer_size: int, min_buffer_size: int, number_of_samples: int,
                 starting_buffer_size: int | None = None) -> None:
        if number_of_samples <= 0:
            raise ValueError(f"number_of_samples must be > 0, got {number_of_samples}")
        self.max_buffer_size = max_buffer_size
        self.min_buffer_size = min_buffer_size
        self.alpha = 2.0 / (number_of_samples + 1)
        self._last = float(max_buffer_size if starting_buffer_size is None else starting_buffer_size)

    def calculate_buffer_size(self, total_buffer_size_in_bytes: int, total_buffers: int) -> int:
        """The next buffer size for ``total_buffer_size_in_bytes`` spread over ``total_buffers``."""
        if total_buffer_size_in_bytes < 0:
            raise ValueError("Size of buffer should be non negative")
        if total_buffers <= 0:
            raise ValueError("Number of buffers should be positive")
        desirable = min(total_buffer_size_in_bytes / total_buffers, 2.0 * self._last)
        last = self._last + self.alpha * (desirable - self._last)
        self._last = last = max(float(self.min_buffer_size), min(last, float(self.max_buffer_size)))
        return _java_round(last)


class BufferDebloater:
    """Computes a gate's buffer size from its throughput (Flink's ``BufferDebloater``).

    ``BufferDebloater(target_ms, max_buffer_size, min_buffer_size, threshold_percentages,
    number_of_samples, starting_buffer_size=None, gate_index=0, owning_task_name="")``.
    :meth:`recalculate_buffer_size` returns the size to announce, or None when it is the same
    as the last one or differs from it by less than ``threshold_percentages`` of it (the bounds
    ``min`` and ``max`` are always announced).
    """

    def __init__(self, target_ms: int, max_buffer_size: int, min_buffer_size: int,
                 threshold_percentages: int, number_of_samples: int,
                 starting_buffer_size: int | None = None, gate_index: int = 0,
                 owning_task_name: str = "") -> None:
        starting = max_buffer_size if starting_buffer_size is None else starting_buffer_size
        if not 0 < min_buffer_size <= starting <= max_buffer_size:
            raise ValueError("buffer sizes must satisfy 0 < min <= starting <= max, got "
                             f"min={min_buffer_size}, starting={starting}, max={max_buffer_size}")
        if target_ms <= 0:
            raise ValueError(f"target_ms must be > 0, got {target_ms}")
        if threshold_percentages < 0:
            raise ValueError(f"threshold_percentages must be >= 0, got {threshold_percentages}")
        self.gate_index = gate_index
        self.owning_task_name = owning_task_name
        self.target_ms = int(target_ms)
        self.max_buffer_size = max_buffer_size
        self.min_buffer_size = min_buffer_size
        self.threshold_factor = threshold_percentages / 100.0
        self._ema = BufferSizeEMA(max_buffer_size, min_buffer_size, number_of_samples, starting)
        self._last_buffer_size = starting
        self._last_estimated_ms = 0

    def recalculate_buffer_size(self, current_throughput: int, buffers_in_use: int) -> int | None:
        """The new size to announce for ``current_throughput`` bytes per second and
        ``buffers_in_use`` buffers (0 counts as 1), or None to keep the last one."""
        actual_in_use = max(1, buffers_in_use)
        desired_total = current_throughput * self.target_ms // _MILLIS_IN_SECOND
        new_size = self._ema.calculate_buffer_size(desired_total, actual_in_use)
        self._last_estimated_ms = (new_size * actual_in_use * _MILLIS_IN_SECOND
                                   // max(1, current_throughput))
        if self.skip_update(new_size):
            return None
        self._last_buffer_size = new_size
        return new_size

    def skip_update(self, new_size: int) -> bool:
        """Whether ``new_size`` is not worth announcing (Flink's ``skipUpdate``)."""
        last = self._last_buffer_size
        if new_size == last:
            return True
        if new_size <= self.min_buffer_size or new_size >= self.max_buffer_size:
            return False
        delta = int(last * self.threshold_factor)
        return abs(new_size - last) < delta

    @property
    def last_buffer_size(self) -> int:
        """The last announced size (the starting size before any): ``debloatedBufferSize``."""
        return self._last_buffer_size

    @property
    def last_estimated_time_to_consume_buffers_ms(self) -> int:
        """``newSize × buffersInUse × 1000 / max(1, throughput)`` of the last recalculation:
        ``estimatedTimeToConsumeBuffersMs``."""
        return self._last_estimated_ms

    def __repr__(self) -> str:
        return (f"BufferDebloater(gate {self.gate_index} of {self.owning_task_name!r}, "
                f"size={self._last_buffer_size}, target={self.target_ms} ms)")


@dataclass(frozen=True)
class BufferDebloatConfiguration:
    """The debloating options (Flink's ``BufferDebloatConfiguration``); build it from a
    :class:`~flinknet.config.NetworkConfig` with :meth:`from_config`. Times are in seconds,
    sizes in bytes."""

    enabled: bool = False
    target: float = 1.0
    period: float = 0.2
    starting_buffer_size: int = 1024
    max_buffer_size: int = 32 * 1024
    min_buffer_size: int = 256
    threshold_percentages: int = 25
    number_of_samples: int = 20

    def __post_init__(self) -> None:
        if not 0 < self.min_buffer_size <= self.starting_buffer_size <= self.max_buffer_size:
            raise ValueError("buffer sizes must satisfy 0 < min <= starting <= max, got "
                             f"min={self.min_buffer_size}, starting={self.starting_buffer_size}, "
                             f"max={self.max_buffer_size}")
        if self.number_of_samples <= 0:
            raise ValueError(f"number_of_samples must be > 0, got {self.number_of_samples}")
        if self.target_ms <= 0:
            raise ValueError(f"target must be at least 1 ms, got {self.target} s")
        if not self.period > 0:
            raise ValueError(f"period must be > 0, got {self.period} s")
        if self.threshold_percentages < 0:
            raise ValueError(f"threshold_percentages must be >= 0, got {self.threshold_percentages}")

    @property
    def target_ms(self) -> int:
        """The target in whole milliseconds (Flink's ``getTargetTotalTime().toMillis()``)."""
        return int(self.target * 1000 + 1e-9)

    @classmethod
    def from_config(cls, config: NetworkConfig) -> BufferDebloatConfiguration:
        """The options of ``config`` (``taskmanager.network.memory.buffer-debloat.*`` and the
        segment sizes ``taskmanager.memory.{segment-size,min-segment-size,starting-segment-size}``).
        With debloating disabled the sizes are clamped into order instead of checked."""
        seg = config.segment_size
        lo, start = config.min_segment_size, config.starting_segment_size
        if not config.buffer_debloat_enabled:
            lo = min(lo, seg)
            start = min(max(start, lo), seg)
        return cls(enabled=config.buffer_debloat_enabled, target=config.buffer_debloat_target,
                   period=config.buffer_debloat_period, starting_buffer_size=start,
                   max_buffer_size=seg, min_buffer_size=lo,
                   threshold_percentages=config.buffer_debloat_threshold_percentages,
                   number_of_samples=config.buffer_debloat_samples)

    def create_debloater(self, gate_index: int = 0, owning_task_name: str = "") -> BufferDebloater:
        """A :class:`BufferDebloater` with these options for one gate."""
        return BufferDebloater(self.target_ms, self.max_buffer_size, self.min_buffer_size,
                               self.threshold_percentages, self.number_of_samples,
                               self.starting_buffer_size, gate_index, owning_task_name)
