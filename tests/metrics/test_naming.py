"""The naming rule over flinknet.metrics, checked mechanically (issue 13).

State is a property (``count``, ``value``, ``is_measuring``, ``back_pressure_level``), actions
are methods, a getter with arguments stays a method (``get_quantile(q)``) and so does one whose
answer is a new object each call (a snapshot). So no class of the metrics package has a public
method named ``get_*``, ``is_*``, ``has_*`` (or ``should_*``, ``num_*``, ``number_of_*``) that can
be called without arguments, inherited ones included, except the snapshot methods listed here;
and every Flink getter the package maps is a property, named in its module's docstring next to
Flink's name.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import flinknet.metrics
from flinknet.metrics import Histogram

#: ``Class.method`` -> why it is a method: each answers a new object per call. (The snapshot
#: methods not named get_* need no entry: ``snapshot()``, ``back_pressure_status()``,
#: ``histograms()``, ``as_dict()``.)
SNAPSHOT_METHODS = {
    "Histogram.get_statistics": "a new HistogramStatistics snapshot of the window (Flink's getStatistics())",
}
#: ``Class.method`` -> an object to call it on.
SNAPSHOT_SUBJECTS = {
    "Histogram.get_statistics": lambda: Histogram(4),
}

#: (module, class, Flink's accessor, flinknet's property)
FLINK_ACCESSORS = [
    ("core", "Counter", "getCount()", "count"),
    ("core", "Gauge", "getValue()", "value"),
    ("core", "MeterView", "getRate()", "rate"),
    ("core", "MeterView", "getCount()", "count"),
    ("core", "TimerGauge", "getValue()", "value"),
    ("core", "TimerGauge", "getMaxSingleMeasurement()", "max_single_measurement"),
    ("core", "TimerGauge", "getAccumulatedCount()", "accumulated_count"),
    ("core", "TimerGauge", "getCount()", "count"),
    ("core", "TimerGauge", "isMeasuring()", "is_measuring"),
    ("core", "Histogram", "getCount()", "count"),
    ("core", "HistogramStatistics", "getValues()", "values"),
    ("core", "HistogramStatistics", "size()", "size"),
    ("core", "HistogramStatistics", "getMean()", "mean"),
    ("core", "HistogramStatistics", "getStdDev()", "std_dev"),
    ("core", "HistogramStatistics", "getMin()", "min"),
    ("core", "HistogramStatistics", "getMax()", "max"),
    ("task", "TaskIOMetrics", "getBackPressuredTimeMsPerSecond()", "back_pressured_time_ms_per_second"),
    ("task", "TaskIOMetrics", "getBusyTimePerSecond()", "busy_time_ms_per_second"),
    ("task", "TaskIOMetrics", "getAccumulatedBackPressuredTimeMs()", "accumulated_back_pressured_time_ms"),
    ("task", "TaskIOMetrics", "getAccumulatedBusyTime()", "accumulated_busy_time_ms"),
    ("task", "TaskIOMetrics", "Task.isBackPressured()", "is_back_pressured"),
]

#: names that read as state (the same prefixes as tests/test_naming.py, the package-wide check)
STATE_PREFIXES = ("get_", "is_", "has_", "should_", "num_", "number_of_")


def metrics_modules() -> list[ModuleType]:
    pkg = flinknet.metrics
    return [pkg] + [importlib.import_module(info.name)
                    for info in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + ".")]


def metrics_classes() -> list[type]:
    """Every class defined in flinknet.metrics (private ones too: their objects can be handed out)."""
    classes: dict[str, type] = {}
    for module in metrics_modules():
        for obj in vars(module).values():
            if inspect.isclass(obj) and obj.__module__.startswith("flinknet.metrics"):
                classes[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [classes[k] for k in sorted(classes)]


def _callable_without_arguments(function: object) -> bool:
    params = list(inspect.signature(function).parameters.values())[1:]     # without self / cls
    return not any(p.default is inspect.Parameter.empty
                   and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
                   for p in params)


def rule_violations(cls: type, allowed: dict[str, str]) -> list[str]:
    """``Class.name`` of every public zero-argument ``get_*``/``is_*``/``has_*`` method of ``cls``
    (its own or inherited from a flinknet.metrics class) not in ``allowed``."""
    out = []
    for name in dir(cls):
        if name.startswith("_") or not name.startswith(STATE_PREFIXES):
            continue
        owner = next((k for k in cls.__mro__ if name in vars(k)), None)
        if owner is None or not owner.__module__.startswith("flinknet.metrics"):
            continue
        attr = inspect.getattr_static(cls, name)
        if isinstance(attr, (staticmethod, classmethod)):
            attr = attr.__func__
        if not inspect.isfunction(attr) or not _callable_without_arguments(attr):
            continue
        if f"{owner.__name__}.{name}" not in allowed:
            out.append(f"{cls.__module__}.{cls.__qualname__}.{name}")
    return out


def test_the_package_has_classes_to_check():
    names = {cls.__name__ for cls in metrics_classes()}
    assert {"Counter", "Gauge", "MeterView", "TimerGauge", "Histogram", "HistogramStatistics",
            "MetricGroup", "MetricRegistry", "TaskIOMetrics", "LatencyStats", "PrometheusReporter",
            "LogReporter"} <= names


def test_no_zero_argument_getters_outside_the_snapshot_methods():
    violations = [v for cls in metrics_classes() for v in rule_violations(cls, SNAPSHOT_METHODS)]
    assert violations == [], ("state is a property; a zero-argument get_/is_/has_ method is only "
                              f"for a snapshot listed in SNAPSHOT_METHODS: {violations}")


def test_the_check_catches_a_getter():
    class Bad:
        __module__ = "flinknet.metrics.example"

        def get_x(self) -> int:
            return 1

        def is_y(self, strict: bool = False) -> bool:
            return strict

        def get_z(self, key: str) -> str:         # a getter with an argument is fine
            return key

        @property
        def is_w(self) -> bool:
            return True

    assert [v.rsplit(".", 1)[1] for v in rule_violations(Bad, {})] == ["get_x", "is_y"]
    assert rule_violations(Bad, {"Bad.get_x": "", "Bad.is_y": ""}) == []


@pytest.mark.parametrize("qualified", sorted(SNAPSHOT_METHODS))
def test_snapshot_methods_answer_a_new_object_each_call(qualified):
    assert set(SNAPSHOT_SUBJECTS) == set(SNAPSHOT_METHODS)
    method = qualified.split(".")[1]
    subject = SNAPSHOT_SUBJECTS[qualified]()
    assert inspect.isfunction(inspect.getattr_static(type(subject), method))
    assert "snapshot" in (getattr(subject, method).__doc__ or "")
    assert getattr(subject, method)() is not getattr(subject, method)()


def test_a_histogram_snapshot_does_not_follow_the_histogram():
    h = Histogram(4)
    h.update(1)
    snapshot = h.get_statistics()
    h.update(2)
    assert (snapshot.count, snapshot.values) == (1, (1,))
    assert (h.count, h.get_statistics().values) == (2, (1, 2))


@pytest.mark.parametrize("module, cls_name, flink, name", FLINK_ACCESSORS,
                         ids=[f"{c}.{n}" for _, c, _, n in FLINK_ACCESSORS])
def test_flink_getters_are_properties_named_in_the_module_map(module, cls_name, flink, name):
    mod = importlib.import_module(f"flinknet.metrics.{module}")
    cls = getattr(mod, cls_name)
    assert isinstance(inspect.getattr_static(cls, name), property), f"{cls_name}.{name} is not a property"
    doc = mod.__doc__ or ""
    assert flink in doc, f"flinknet.metrics.{module}'s docstring does not map Flink's {flink}"
    assert name in doc, f"flinknet.metrics.{module}'s docstring does not name {cls_name}.{name}"
