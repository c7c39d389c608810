"""Push reporters for :meth:`MetricRegistry.subscribe <flinknet.metrics.MetricRegistry.subscribe>`.

=====================================  ==================================================
Flink                                  flinknet
=====================================  ==================================================
``Slf4jReporter``                      :class:`LogReporter` (one JSON line per report
                                       instead of Flink's multi-line table)
``MetricReporter.report()``            :meth:`LogReporter.report` (called with the
                                       registry's snapshot at every update)
``metrics.reporter.<name>.filter``     ``prefix`` (keep identifiers starting with it)
=====================================  ==================================================

A :class:`LogReporter` subscribed to a registry writes, at every
:meth:`~flinknet.metrics.MetricRegistry.update` (every 5 s by default, Flink's interval), one
log record whose message is a JSON object::

    {"ts": 1718000000.123, "metrics": {"<host>.taskmanager.<tm>.<job>.<task>.0.numRecordsIn": 42, ...}}

``ts`` is the wall-clock time of the report (epoch seconds); ``metrics`` maps every identifier to
its value (a histogram's statistics as an object). NaN and infinities become ``null``, so the
line is strict JSON; values JSON cannot hold are written as their ``str``. For Prometheus, see
:mod:`flinknet.metrics.prometheus`.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from flinknet.metrics.registry import Reporter

__all__ = ["LogReporter"]

log = logging.getLogger(__name__)


def _json_value(value: Any) -> Any:
    """``value`` as something :func:`json.dumps` writes as strict JSON."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return str(value)


def _level(level: int | str) -> int:
    if isinstance(level, bool):
        raise TypeError(f"level must be a logging level (int or name), got {level!r}")
    if isinstance(level, str):
        number = logging.getLevelName(level.upper())
        if not isinstance(number, int):
            raise ValueError(f"unknown logging level {level!r}")
        return number
    if not isinstance(level, int):
        raise TypeError(f"level must be a logging level (int or name), got {level!r}")
    if level < 0:
        raise ValueError(f"level must be >= 0, got {level}")
    return level


class LogReporter(Reporter):
    """Writes each snapshot as one JSON log line (Flink's ``Slf4jReporter``, structured).

    ``logger``: a :class:`logging.Logger`, a logger name, or None for
    ``flinknet.metrics.reporters``; ``level``: the record's level (an int or a name such as
    ``"DEBUG"``); ``prefix``: keep only the identifiers starting with it (None: all). Nothing is
    formatted when the logger would drop the record. Use with
    ``registry.subscribe(LogReporter())``.
    """

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter[Any] | str | None = None,
                 level: int | str = logging.INFO, prefix: str | None = None) -> None:
        if logger is None:
            logger = log
        elif isinstance(logger, str):
            logger = logging.getLogger(logger)
        elif not isinstance(logger, (logging.Logger, logging.LoggerAdapter)):
            raise TypeError(f"logger must be a logging.Logger, a logger name or None, got {logger!r}")
        if prefix is not None and not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str or None, got {prefix!r}")
        self.logger = logger
        self.level = _level(level)
        self.prefix = prefix

    def format(self, snapshot: Mapping[str, Any], ts: float | None = None) -> str:
        """The JSON line for ``snapshot`` (filtered by ``prefix``) at ``ts`` (default: now)."""
        prefix = self.prefix
        metrics = {str(ident): _json_value(value) for ident, value in snapshot.items()
                   if prefix is None or str(ident).startswith(prefix)}
        payload = {"ts": time.time() if ts is None else float(ts), "metrics": metrics}
        return json.dumps(payload, allow_nan=False, separators=(",", ":"))

    def report(self, snapshot: dict[str, Any]) -> None:
        """Log ``snapshot`` as one line at :attr:`level`."""
        if self.logger.isEnabledFor(self.level):
            self.logger.log(self.level, "%s", self.format(snapshot))

    def __repr__(self) -> str:
        name = (getattr(self.logger, "name", None)
                or getattr(getattr(self.logger, "logger", None), "name", "?"))
        return f"LogReporter({name}, {logging.getLevelName(self.level)}, prefix={self.prefix!r})"
