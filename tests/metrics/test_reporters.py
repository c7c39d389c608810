"""LogReporter: one strict-JSON log line per report, alone and through a MetricRegistry."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest

from flinknet.metrics import MetricRegistry
from flinknet.metrics.reporters import LogReporter

LOGGER = "tests.flinknet.metrics.log_reporter"


def strict_json(text: str):
    """Parse ``text`` refusing NaN/Infinity, which are not JSON."""
    def refuse(token):
        raise ValueError(f"non-JSON constant {token}")
    return json.loads(text, parse_constant=refuse)


def lines(caplog, name: str = LOGGER) -> list:
    return [r for r in caplog.records if r.name == name]


@pytest.fixture
def registry():
    reg = MetricRegistry(update_interval=1, start=False)
    yield reg
    reg.close()


def test_one_json_line_per_report(caplog):
    reporter = LogReporter(LOGGER)
    caplog.set_level(logging.INFO, logger=LOGGER)
    before = time.time()
    reporter.report({"a.b.numRecordsIn": 3, "a.b.outPoolUsage": 0.5, "a.b.flag": True, "a.b.state": "OK"})
    after = time.time()
    (record,) = lines(caplog)
    assert record.levelno == logging.INFO
    message = record.getMessage()
    assert "\n" not in message
    payload = strict_json(message)
    assert list(payload) == ["ts", "metrics"]
    assert isinstance(payload["ts"], float) and before <= payload["ts"] <= after
    assert payload["metrics"] == {"a.b.numRecordsIn": 3, "a.b.outPoolUsage": 0.5, "a.b.flag": True,
                                  "a.b.state": "OK"}
    reporter.report({})
    assert len(lines(caplog)) == 2
    assert strict_json(lines(caplog)[1].getMessage())["metrics"] == {}


def test_nan_and_infinities_become_null_and_other_values_str(caplog):
    class Thing:
        def __str__(self):
            return "thing!"

    reporter = LogReporter(LOGGER)
    caplog.set_level(logging.INFO, logger=LOGGER)
    reporter.report({
        "nan": float("nan"), "inf": float("inf"), "ninf": float("-inf"), "none": None,
        "np_nan": np.float64("nan"), "np_int": np.int64(7), "np_float": np.float32(0.25), "np_bool": np.bool_(False),
        "hist": {"count": 0, "p50": float("nan"), "min": 0},
        "nested": [1, float("nan"), (2, "x")], "obj": Thing(), "bytes": b"ab", "big": 10**30,
        "keys": {1: "one"},
    })
    metrics = strict_json(lines(caplog)[0].getMessage())["metrics"]
    assert metrics == {
        "nan": None, "inf": None, "ninf": None, "none": None,
        "np_nan": None, "np_int": 7, "np_float": 0.25, "np_bool": False,
        "hist": {"count": 0, "p50": None, "min": 0},
        "nested": [1, None, [2, "x"]], "obj": "thing!", "bytes": "b'ab'", "big": 10**30,
        "keys": {"1": "one"},
    }


def test_prefix_keeps_matching_identifiers(caplog):
    reporter = LogReporter(LOGGER, prefix="h.taskmanager.tm-0.job.Map")
    caplog.set_level(logging.INFO, logger=LOGGER)
    reporter.report({"h.taskmanager.tm-0.job.Map.0.numRecordsIn": 1,
                     "h.taskmanager.tm-0.job.Map.1.numRecordsIn": 2,
                     "h.taskmanager.tm-0.job.Source.0.numRecordsIn": 3,
                     "x.h.taskmanager.tm-0.job.Map.0.n": 4})
    metrics = strict_json(lines(caplog)[0].getMessage())["metrics"]
    assert metrics == {"h.taskmanager.tm-0.job.Map.0.numRecordsIn": 1,
                       "h.taskmanager.tm-0.job.Map.1.numRecordsIn": 2}


def test_through_registry_subscribe_and_update(registry, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    task = registry.task_group("Source: gen", 0, host="127.0.0.1")
    counter = task.counter("numRecordsOut")
    meter = task.meter("numRecordsOutPerSecond", counter)
    task.gauge("outPoolUsage", lambda: float("nan"))
    hist = task.histogram("latency")
    task.add_group("operator", "op-1").counter("numRecordsIn").inc(5)
    registry.task_group("Other", 0).counter("numRecordsOut").inc(9)
    prefix = "127_0_0_1.taskmanager.tm-0.job.Source: gen.0."
    registry.subscribe(LogReporter(LOGGER, prefix=prefix))

    counter.inc(60)
    hist.update(4)
    registry.update()
    counter.inc(60)
    registry.update()

    records = lines(caplog)
    assert len(records) == 2
    first, second = (strict_json(r.getMessage())["metrics"] for r in records)
    assert set(first) == {prefix + "numRecordsOut", prefix + "numRecordsOutPerSecond", prefix + "outPoolUsage",
                          prefix + "latency", prefix + "operator.op-1.numRecordsIn"}
    assert first[prefix + "numRecordsOut"] == 60
    assert first[prefix + "numRecordsOutPerSecond"] == pytest.approx(1.0)
    assert first[prefix + "outPoolUsage"] is None
    assert first[prefix + "latency"]["count"] == 1 and first[prefix + "latency"]["p50"] == 4.0
    assert first[prefix + "operator.op-1.numRecordsIn"] == 5
    assert second[prefix + "numRecordsOut"] == 120
    assert second[prefix + "numRecordsOutPerSecond"] == pytest.approx(meter.rate) == pytest.approx(2.0)


def test_level_logger_forms_and_disabled_level(caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    LogReporter(logging.getLogger(LOGGER), level="debug").report({"x": 1})
    LogReporter(logging.LoggerAdapter(logging.getLogger(LOGGER), {}), level=logging.WARNING).report({"x": 2})
    assert [r.levelno for r in lines(caplog)] == [logging.DEBUG, logging.WARNING]

    caplog.clear()
    caplog.set_level(logging.WARNING, logger=LOGGER)
    LogReporter(LOGGER, level=logging.INFO).report({"x": 3})  # below the logger's level
    assert lines(caplog) == []

    default = LogReporter()
    assert default.logger.name == "flinknet.metrics.reporters"
    assert default.level == logging.INFO and default.prefix is None
    assert "LogReporter(flinknet.metrics.reporters, INFO" in repr(default)


def test_default_logger_records(caplog):
    caplog.set_level(logging.INFO, logger="flinknet.metrics.reporters")
    LogReporter().report({"a": 1.5})
    (record,) = lines(caplog, "flinknet.metrics.reporters")
    assert strict_json(record.getMessage())["metrics"] == {"a": 1.5}


def test_format_is_deterministic_given_ts():
    line = LogReporter(prefix="a").format({"a.x": float("inf"), "b.y": 1}, ts=12.5)
    assert line == '{"ts":12.5,"metrics":{"a.x":null}}'


def test_bad_arguments_are_rejected():
    for bad in (42, object(), logging):
        with pytest.raises(TypeError, match="logger"):
            LogReporter(bad)
    for bad in ("LOUD", "", -1):
        with pytest.raises(ValueError, match="level"):
            LogReporter(level=bad)
    for bad in (None, 1.5, True):
        with pytest.raises(TypeError, match="level"):
            LogReporter(level=bad)
    for bad in (1, b"x", ["a"]):
        with pytest.raises(TypeError, match="prefix"):
            LogReporter(prefix=bad)


def test_close_with_the_registry_and_a_failing_logger_does_not_break_updates(registry, caplog):
    class Broken(logging.Handler):
        def emit(self, record):
            raise RuntimeError("disk full")  # reaches the registry through report()

    broken = logging.getLogger(LOGGER + ".broken")
    broken.propagate = False
    broken.setLevel(logging.INFO)
    handler = Broken()
    broken.addHandler(handler)
    try:
        registry.group("x").counter("n").inc()
        registry.subscribe(LogReporter(broken))
        with caplog.at_level(logging.WARNING, logger="flinknet.metrics.registry"):
            snap = registry.update()  # the registry logs the reporter's failure and goes on
        assert snap == {"x.n": 1}
        assert "disk full" in caplog.text
        registry.close()  # closes the LogReporter (nothing to release)
    finally:
        broken.removeHandler(handler)
        broken.propagate = True
        broken.setLevel(logging.NOTSET)
