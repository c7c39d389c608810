"""Metric groups with Flink's scopes, a registry that refreshes views, snapshots and reporters.

A :class:`MetricGroup` is a scope (``taskmanager.<host>.<task>.<subtask>`` …) holding metrics
by name; ``add_group("Shuffle").add_group("Netty")`` builds Flink's nested groups, and a metric's
identifier is its scope and name joined by dots, as Flink's default delimiter
(``taskmanager.tm-1.Source.0.Shuffle.Netty.Output.Buffers.outPoolUsage``).

:class:`MetricRegistry` owns the root groups, refreshes every view (meters, timer gauges) each
:data:`~flinknet.metrics.core.UPDATE_INTERVAL_SECONDS` on one daemon thread (Flink's
``ViewUpdater``), gives frameworks a :meth:`~MetricRegistry.snapshot` (a dict) and calls
subscribed reporters with each new snapshot.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, TypeAlias, TypeVar

from flinknet.metrics.core import (
    UPDATE_INTERVAL_SECONDS,
    Counter,
    Gauge,
    Histogram,
    MeterView,
    TimerGauge,
    View,
)

__all__ = ["MetricGroup", "MetricRegistry", "Reporter", "backpressure_level", "value_of", "Metric",
           "BACKPRESSURE_LOW_THRESHOLD", "BACKPRESSURE_HIGH_THRESHOLD"]

#: What a group holds: a counter, a gauge, a histogram or a view (a meter, a timer gauge, or
#: another view exposing ``value``).
Metric: TypeAlias = "Counter | Gauge[Any] | Histogram | View"
#: What :meth:`MetricRegistry.subscribe` takes.
ReporterLike: TypeAlias = "Reporter | Callable[[dict[str, Any]], None]"

_M = TypeVar("_M", bound="Counter | Gauge[Any] | Histogram | View")

log = logging.getLogger(__name__)

#: Flink 1.13+ (JobVertexBackPressureHandler): OK <= 0.10 < LOW <= 0.5 < HIGH.
BACKPRESSURE_LOW_THRESHOLD = 0.10
BACKPRESSURE_HIGH_THRESHOLD = 0.5


def backpressure_level(ratio: float) -> str:
    """``"OK"``, ``"LOW"`` or ``"HIGH"`` for a back-pressured time ratio in [0, 1] (a task's
    ``backPressuredTimeMsPerSecond / 1000``; a vertex uses the maximum over its subtasks)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or math.isnan(ratio):
        raise ValueError(f"the back-pressure ratio must be a number, got {ratio!r}")
    if ratio <= BACKPRESSURE_LOW_THRESHOLD:
        return "OK"
    if ratio <= BACKPRESSURE_HIGH_THRESHOLD:
        return "LOW"
    return "HIGH"


def _component(value: str) -> str:
    """A variable's value as one scope component (dots would split it)."""
    value = str(value)
    if not value:
        raise ValueError("a scope variable needs a non-empty value")
    return value.replace(".", "_")


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"a metric or group name must be a non-empty string without '.', got {name!r}")
    return name


class MetricGroup:
    """A scope of metrics and subgroups (Flink's ``MetricGroup``)."""

    def __init__(self, registry: MetricRegistry, scope: tuple[str, ...],
                 logical_scope: tuple[str, ...] | None = None,
                 variables: dict[str, str] | None = None) -> None:
        self.registry = registry
        self.scope = scope
        #: the scope with every variable's value left out (Flink's ``getLogicalScope``):
        #: ``("taskmanager", "job", "task", "Shuffle", …)``; reporters name metrics by it.
        self.logical_scope = scope if logical_scope is None else logical_scope
        #: ``{"host": "…", "task_name": "…", …}`` (Flink's ``getAllVariables`` without the angle
        #: brackets); reporters turn them into labels.
        self.variables: dict[str, str] = dict(variables or {})
        self._metrics: dict[str, Metric] = {}
        self._groups: dict[str, MetricGroup] = {}
        self._lock = threading.Lock()

    # -- registration ----------------------------------------------------------------------

    def _add(self, name: str, metric: _M) -> _M:
        _check_name(name)
        with self._lock:
            if name in self._metrics or name in self._groups:
                raise ValueError(f"'{self.metric_identifier(name)}' is already registered")
            self._metrics[name] = metric
        if isinstance(metric, View):
            self.registry._add_view(metric)
        return metric

    def counter(self, name: str, counter: Counter | None = None) -> Counter:
        return self._add(name, counter if counter is not None else Counter())

    def gauge(self, name: str, gauge: Gauge[Any] | View | Callable[[], Any]) -> Gauge[Any] | View:
        """Register ``gauge`` (a :class:`Gauge`, a view such as a TimerGauge, or a callable)."""
        if isinstance(gauge, (Gauge, View)):
            return self._add(name, gauge)
        return self._add(name, Gauge(gauge))

    def meter(self, name: str, meter: MeterView | Counter, time_span_seconds: int = 60) -> MeterView:
        """Register ``meter``; given a :class:`Counter` instead, a :class:`MeterView` over it
        refreshed at the registry's interval (``time_span_seconds`` rounded down to it)."""
        if isinstance(meter, Counter):
            meter = MeterView(meter, max(time_span_seconds, self.registry.view_interval),
                              update_interval=self.registry.view_interval)
        elif not isinstance(meter, MeterView):
            raise TypeError("a meter is a MeterView or the Counter it rates")
        return self._add(name, meter)

    def timer_gauge(self, name: str, time_span_seconds: int | None = None) -> TimerGauge:
        """A new :class:`TimerGauge` refreshed at the registry's interval (window: one interval
        unless ``time_span_seconds`` says more)."""
        iv = self.registry.view_interval
        return self._add(name, TimerGauge(time_span_seconds=max(time_span_seconds or iv, iv),
                                          update_interval=iv))

    def histogram(self, name: str, histogram: Histogram | None = None) -> Histogram:
        return self._add(name, histogram if histogram is not None else Histogram())

    def add_group(self, name: str, value: object = None) -> MetricGroup:
        """The subgroup ``name`` (created once, then shared). With ``value``, Flink's key-value
        group (``addGroup(key, value)``): the identifier gets ``name.value``, the logical scope
        only ``name``, and the variable ``name`` is ``value``."""
        _check_name(name)
        group = self._child(name, self.logical_scope + (name,), self.variables)
        if value is None:
            return group
        text = str(value)
        return group._child(_component(text), group.logical_scope, {**group.variables, name: text})

    def _child(self, component: str, logical_scope: tuple[str, ...],
               variables: dict[str, str]) -> MetricGroup:
        """The subgroup ``component`` (created once with this logical scope and variables)."""
        with self._lock:
            group = self._groups.get(component)
            if group is None:
                if component in self._metrics:
                    raise ValueError(f"'{self.metric_identifier(component)}' is a metric, not a group")
                group = self._groups[component] = MetricGroup(
                    self.registry, self.scope + (component,), logical_scope, variables)
            return group

    def remove(self) -> None:
        """Unregister this group's metrics and subgroups (a task ended)."""
        with self._lock:
            metrics, groups = list(self._metrics.values()), list(self._groups.values())
            self._metrics.clear()
            self._groups.clear()
        for m in metrics:
            if isinstance(m, View):
                self.registry._remove_view(m)
        for g in groups:
            g.remove()

    # -- reading ---------------------------------------------------------------------------

    def metric_identifier(self, name: str) -> str:
        return ".".join(self.scope + (name,))

    def get(self, name: str) -> Metric:
        return self._metrics[name]

    def items(self) -> Iterator[tuple[str, Metric]]:
        """``(identifier, metric)`` for this group and its subgroups, recursively."""
        with self._lock:
            metrics, groups = list(self._metrics.items()), list(self._groups.values())
        for name, m in metrics:
            yield self.metric_identifier(name), m
        for g in groups:
            yield from g.items()

    def collect(self) -> Iterator[tuple[MetricGroup, str, Metric]]:
        """``(group, name, metric)`` for this group and its subgroups, recursively (reporters
        read ``group.logical_scope`` and ``group.variables``)."""
        with self._lock:
            metrics, groups = list(self._metrics.items()), list(self._groups.values())
        for name, m in metrics:
            yield self, name, m
        for g in groups:
            yield from g.collect()

    def snapshot(self) -> dict[str, Any]:
        """``{identifier: value}``; a metric whose read raises is left out (and logged), so one
        broken gauge never hides the others from reporters."""
        out: dict[str, Any] = {}
        for ident, m in self.items():
            try:
                out[ident] = value_of(m)
            except Exception as err:  # noqa: BLE001 (a gauge is user code)
                _log_failed_read(ident, err)
        return out

    def __repr__(self) -> str:
        return f"MetricGroup({'.'.join(self.scope)})"


_failed_reads: set[str] = set()


def _log_failed_read(ident: str, err: BaseException) -> None:
    # WARNING once per metric, DEBUG after that (a gauge failing every second must not flood logs).
    level = logging.DEBUG if ident in _failed_reads else logging.WARNING
    if len(_failed_reads) < 10_000:
        _failed_reads.add(ident)
    log.log(level, "reading metric %s failed: %s: %s", ident, type(err).__name__, err)


def has_value(metric: object) -> bool:
    """Whether ``metric`` is read as a gauge: a :class:`Gauge`, a :class:`TimerGauge` or another
    object whose class has a ``value`` (checked on the class, so nothing is computed)."""
    return isinstance(metric, (Gauge, TimerGauge)) or hasattr(type(metric), "value")


def value_of(metric: Metric) -> Any:
    """A metric's current value: counters their count, meters their rate, histograms their
    statistics (a dict), gauges (and other views) their ``value``."""
    if isinstance(metric, Counter):
        return metric.count
    if isinstance(metric, MeterView):
        return metric.rate
    if isinstance(metric, Histogram):
        return metric.get_statistics().as_dict()
    if isinstance(metric, (Gauge, TimerGauge)):
        return metric.value
    if not has_value(metric):
        raise TypeError(f"a {type(metric).__name__} has no value to read")
    value: Any = getattr(metric, "value")  # noqa: B009 (another View with a value)
    return value


class Reporter:
    """Receives each new snapshot (``report``) and is closed with the registry."""

    def report(self, snapshot: dict[str, Any]) -> None:  # pragma: no cover (interface)
        raise NotImplementedError

    def close(self) -> None:
        pass


class MetricRegistry:
    """Root of all metric groups; refreshes views and feeds reporters.

    ``MetricRegistry(update_interval=5.0, start=True)``: with ``start`` a daemon thread calls
    :meth:`update` every ``update_interval`` seconds (Flink's cadence); tests drive
    :meth:`update` by hand with ``start=False``.
    """

    def __init__(self, update_interval: float = float(UPDATE_INTERVAL_SECONDS), start: bool = True) -> None:
        if isinstance(update_interval, bool) or not isinstance(update_interval, (int, float)) \
                or not update_interval > 0 or update_interval == float("inf"):
            raise ValueError(f"update_interval must be a number of seconds > 0, got {update_interval!r}")
        self.update_interval = float(update_interval)
        #: the interval (whole seconds, at least 1) that views built by the groups assume; a
        #: registry updating every 1 s gives rates over 1-second buckets.
        self.view_interval = max(1, round(update_interval))
        self._views: set[View] = set()
        self._roots: dict[tuple[str, ...], MetricGroup] = {}
        self._reporters: list[ReporterLike] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name="flinknet-metrics", daemon=True)
            self._thread.start()

    def group(self, *scope: str) -> MetricGroup:
        """The root group for ``scope`` (e.g. ``("taskmanager", "tm-1", "Source", "0")``)."""
        for part in scope:
            _check_name(part)
        if not scope:
            raise ValueError("a scope needs at least one component")
        with self._lock:
            g = self._roots.get(scope)
            if g is None:
                g = self._roots[scope] = MetricGroup(self, tuple(scope))
            return g

    def _root(self, scope: tuple[str, ...], logical: tuple[str, ...],
              variables: dict[str, str]) -> MetricGroup:
        with self._lock:
            g = self._roots.get(scope)
            if g is None:
                g = self._roots[scope] = MetricGroup(self, scope, logical, variables)
            return g

    def task_manager_group(self, host: str = "localhost", tm_id: str = "tm-0") -> MetricGroup:
        """Flink's TaskManager scope ``<host>.taskmanager.<tm_id>`` (logical ``taskmanager``;
        variables ``host``, ``tm_id``): where the process's ``Shuffle.Netty`` pool metrics go."""
        scope = (_component(host), "taskmanager", _component(tm_id))
        return self._root(scope, ("taskmanager",), {"host": str(host), "tm_id": str(tm_id)})

    def job_group(self, job_name: str = "job", host: str = "localhost", tm_id: str = "tm-0") -> MetricGroup:
        """Flink's job scope on a TaskManager ``<host>.taskmanager.<tm_id>.<job_name>`` (logical
        ``taskmanager.job``): where latency histograms go."""
        scope = (_component(host), "taskmanager", _component(tm_id), _component(job_name))
        return self._root(scope, ("taskmanager", "job"),
                          {"host": str(host), "tm_id": str(tm_id), "job_name": str(job_name)})

    def task_group(self, task_name: str, subtask_index: int, job_name: str = "job",
                   host: str = "localhost", tm_id: str = "tm-0") -> MetricGroup:
        """Flink's task scope ``<host>.taskmanager.<tm_id>.<job_name>.<task_name>.<subtask_index>``
        (logical ``taskmanager.job.task``), with those five variables."""
        if isinstance(subtask_index, bool) or not isinstance(subtask_index, int) or subtask_index < 0:
            raise ValueError(f"subtask_index must be an int >= 0, got {subtask_index!r}")
        scope = (_component(host), "taskmanager", _component(tm_id), _component(job_name),
                 _component(task_name), str(subtask_index))
        variables = {"host": str(host), "tm_id": str(tm_id), "job_name": str(job_name),
                     "task_name": str(task_name), "subtask_index": str(subtask_index)}
        return self._root(scope, ("taskmanager", "job", "task"), variables)

    def collect(self) -> Iterator[tuple[MetricGroup, str, Metric]]:
        """``(group, name, metric)`` for every registered metric (for reporters)."""
        with self._lock:
            roots = list(self._roots.values())
        for g in roots:
            yield from g.collect()

    def back_pressure_status(self) -> dict[str, dict[str, Any]]:
        """Back-pressure per vertex and subtask, as Flink's ``JobVertexBackPressureHandler``
        (1.13+) computes it from the task metrics: ``{task_name: {"backpressure_level": …,
        "max_back_pressure_ratio": …, "subtasks": [{"subtask": i, "backpressure_level": …,
        "back_pressure_ratio": …, "idle_ratio": …, "busy_ratio": …}, …]}}``. The ratios are
        ``backPressuredTimeMsPerSecond`` (and idle/busy) ÷ 1000; a vertex's level is its worst
        subtask's. Only task groups (:meth:`task_group`) with :class:`TaskIOMetrics` count. A new
        dict each call (a snapshot)."""
        per_task: dict[tuple[str, int], dict[str, Any]] = {}
        wanted = {"backPressuredTimeMsPerSecond": "back_pressure_ratio",
                  "idleTimeMsPerSecond": "idle_ratio", "busyTimeMsPerSecond": "busy_ratio"}
        for group, name, metric in self.collect():
            key = wanted.get(name)
            if key is None or group.logical_scope != ("taskmanager", "job", "task"):
                continue
            v = group.variables
            try:
                value = value_of(metric)
            except Exception as err:  # noqa: BLE001
                _log_failed_read(group.metric_identifier(name), err)
                continue
            entry = per_task.setdefault((v["task_name"], int(v["subtask_index"])), {})
            entry[key] = min(max(float(value), 0.0), 1000.0) / 1000.0
        vertices: dict[str, dict[str, Any]] = {}
        for (task, subtask), e in sorted(per_task.items()):
            if "back_pressure_ratio" not in e:
                continue
            e["subtask"] = subtask
            e["backpressure_level"] = backpressure_level(e["back_pressure_ratio"])
            vx = vertices.setdefault(task, {"subtasks": [], "max_back_pressure_ratio": 0.0})
            vx["subtasks"].append(e)
            vx["max_back_pressure_ratio"] = max(vx["max_back_pressure_ratio"], e["back_pressure_ratio"])
        for vx in vertices.values():
            vx["backpressure_level"] = backpressure_level(vx["max_back_pressure_ratio"])
        return vertices

    def _add_view(self, view: View) -> None:
        with self._lock:
            self._views.add(view)

    def _remove_view(self, view: View) -> None:
        with self._lock:
            self._views.discard(view)

    def subscribe(self, reporter: ReporterLike) -> None:
        """Call ``reporter`` (a :class:`Reporter` or a callable) with every new snapshot."""
        if not isinstance(reporter, Reporter) and not callable(reporter):
            raise TypeError("a reporter is a flinknet.metrics.Reporter or a callable")
        with self._lock:
            self._reporters.append(reporter)

    def unsubscribe(self, reporter: ReporterLike) -> None:
        with self._lock:
            self._reporters.remove(reporter)

    def snapshot(self) -> dict[str, Any]:
        """Every metric's identifier and current value."""
        with self._lock:
            roots = list(self._roots.values())
        out: dict[str, Any] = {}
        for g in roots:
            out.update(g.snapshot())
        return out

    def update(self) -> dict[str, Any]:
        """Refresh every view, then hand the snapshot to the reporters; returns it."""
        with self._lock:
            views = list(self._views)
            reporters = list(self._reporters)
        for v in views:
            v.update()
        snap = self.snapshot()
        for r in reporters:
            try:
                (r.report if isinstance(r, Reporter) else r)(snap)
            except Exception as err:  # noqa: BLE001 (a reporter never breaks the registry)
                log.warning("metric reporter %r failed: %s", r, str(err))
        return snap

    def _run(self) -> None:
        while not self._stop.wait(self.update_interval):
            self.update()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            reporters = list(self._reporters)
            self._reporters.clear()
        for r in reporters:
            if isinstance(r, Reporter):
                r.close()

    def __enter__(self) -> MetricRegistry:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
