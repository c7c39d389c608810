"""Prometheus export against Flink's ``AbstractPrometheusReporter`` (names, labels, summaries)
and the HTTP endpoint's lifecycle, over real loopback sockets."""

from __future__ import annotations

import errno
import http.client
import logging
import math
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import psutil
import pytest

# prometheus_client is in the test extra: without it these tests fail rather than skip.
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from flinknet.metrics import Histogram, MetricRegistry, TimerGauge  # noqa: E402
from flinknet.metrics.prometheus import (  # noqa: E402
    QUANTILES,
    SCOPE_PREFIX,
    PrometheusCollector,
    PrometheusReporter,
    render_prometheus_text,
    sanitize_name,
)

TASK = "flinknet_taskmanager_job_task_"
OPERATOR = "flinknet_taskmanager_job_task_operator_"
TASK_LABELS = {"host": "127_0_0_1", "tm_id": "tm_0", "job_name": "job", "task_name": "Source:_gen",
               "subtask_index": "0"}
ALL_QUANTILES = {"0.0", "0.5", "0.75", "0.95", "0.98", "0.99", "0.999", "1.0"}


@pytest.fixture
def registry():
    reg = MetricRegistry(update_interval=1, start=False)
    yield reg
    reg.close()


class Task:
    """A task group with one metric of every kind, as the brief's example."""

    def __init__(self, registry: MetricRegistry):
        self.group = g = registry.task_group("Source: gen", 0, host="127.0.0.1")
        self.counter = g.counter("numRecordsOut")
        self.counter.inc(42)
        self.meter = g.meter("numRecordsOutPerSecond", self.counter)
        self.gauge = g.gauge("outPoolUsage", lambda: 0.25)
        self.timer: TimerGauge = g.timer_gauge("busyTimeMsPerSecond")
        self.timer.mark_start(now=1_000)
        self.timer.mark_end(now=1_500)
        self.histogram = g.histogram("latency")
        for v in range(1, 101):
            self.histogram.update(v)
        self.operator = g.add_group("operator", "op-1")
        self.op_counter = self.operator.counter("numRecordsIn")
        self.op_counter.inc(7)
        registry.update()  # refresh the meter and the timer gauge


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(family) -> dict:
    """``{(sample name, frozenset(labels)): value}``."""
    return {(s.name, frozenset(s.labels.items())): s.value for s in family.samples}


def only_value(family) -> float:
    assert len(family.samples) == 1, family.samples
    return family.samples[0].value


def scrape(reporter) -> tuple[str, str]:
    """GET the reporter's /metrics without any proxy: ``(content type, body)``."""
    conn = http.client.HTTPConnection(reporter.host, reporter.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200
        return resp.getheader("Content-Type"), resp.read().decode("utf-8")
    finally:
        conn.close()


def connection_refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def listening_sockets() -> set:
    proc = psutil.Process()
    conns = proc.net_connections(kind="inet") if hasattr(proc, "net_connections") else proc.connections("inet")
    return {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}


def wait_threads_back(before: set, timeout: float = 3.0) -> set:
    deadline = time.monotonic() + timeout
    while True:
        extra = {t for t in threading.enumerate() if t not in before and t.is_alive()}
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.02)


# -- names, labels, values -------------------------------------------------------------------


def test_sanitize_name_is_flinks_replace_invalid_chars():
    assert sanitize_name("my.scope-here") == "my_scope_here"
    assert sanitize_name("my:metric-name") == "my:metric_name"  # ':' is legal in a metric name
    assert sanitize_name("Source: gen") == "Source:_gen"
    assert sanitize_name("a b\n\"c\"é") == "a_b__c__"
    assert SCOPE_PREFIX == "flinknet_"
    assert QUANTILES == (0.5, 0.75, 0.95, 0.98, 0.99, 0.999)


def test_names_types_help_and_labels(registry):
    Task(registry)
    fams = families(render_prometheus_text(registry))
    assert {name: f.type for name, f in fams.items()} == {
        TASK + "numRecordsOut": "gauge",
        TASK + "numRecordsOutPerSecond": "gauge",
        TASK + "outPoolUsage": "gauge",
        TASK + "busyTimeMsPerSecond": "gauge",
        TASK + "latency": "summary",
        OPERATOR + "numRecordsIn": "gauge",
    }
    assert fams[TASK + "numRecordsOut"].documentation == "numRecordsOut (scope: taskmanager_job_task)"
    assert fams[OPERATOR + "numRecordsIn"].documentation == "numRecordsIn (scope: taskmanager_job_task_operator)"
    for name in ("numRecordsOut", "numRecordsOutPerSecond", "outPoolUsage", "busyTimeMsPerSecond"):
        (sample,) = fams[TASK + name].samples
        assert sample.name == TASK + name  # a counter keeps its name: no _total
        assert sample.labels == TASK_LABELS
    (sample,) = fams[OPERATOR + "numRecordsIn"].samples
    assert sample.labels == {**TASK_LABELS, "operator": "op_1"}


def test_values_match_the_registry(registry):
    task = Task(registry)
    fams = families(render_prometheus_text(registry))
    assert only_value(fams[TASK + "numRecordsOut"]) == 42.0
    assert task.meter.rate == pytest.approx(42 / 60)
    assert only_value(fams[TASK + "numRecordsOutPerSecond"]) == pytest.approx(task.meter.rate)
    assert only_value(fams[TASK + "outPoolUsage"]) == 0.25
    assert task.timer.value == 500
    assert only_value(fams[TASK + "busyTimeMsPerSecond"]) == 500.0
    assert only_value(fams[OPERATOR + "numRecordsIn"]) == 7.0


def test_every_scrape_reads_the_live_registry(registry):
    task = Task(registry)
    collector = PrometheusCollector(registry)
    first = {f.name: f for f in collector.collect()}
    assert first[TASK + "numRecordsOut"].samples[0].value == 42.0
    task.counter.inc(8)
    task.group.counter("late")
    second = {f.name: f for f in collector.collect()}
    assert second[TASK + "numRecordsOut"].samples[0].value == 50.0
    assert TASK + "late" in second
    task.operator.remove()
    assert OPERATOR + "numRecordsIn" not in {f.name for f in collector.collect()}


def test_histogram_is_a_summary_with_count_and_quantiles_without_sum(registry):
    task = Task(registry)
    fam = families(render_prometheus_text(registry))[TASK + "latency"]
    assert fam.type == "summary"
    by_name: dict = {}
    for s in fam.samples:
        by_name.setdefault(s.name, []).append(s)
    assert set(by_name) == {TASK + "latency", TASK + "latency_count"}  # no _sum (FLINK-29037)
    (count,) = by_name[TASK + "latency_count"]
    assert count.labels == TASK_LABELS and count.value == 100.0
    quantiles = {s.labels["quantile"]: s.value for s in by_name[TASK + "latency"]}
    assert set(quantiles) == ALL_QUANTILES
    stats = task.histogram.get_statistics()
    for q in QUANTILES:
        assert quantiles[repr(q)] == pytest.approx(stats.get_quantile(q))
    assert quantiles["0.0"] == 1.0 and quantiles["1.0"] == 100.0  # min and max (FLINK-29984)
    for s in by_name[TASK + "latency"]:
        assert {k: v for k, v in s.labels.items() if k != "quantile"} == TASK_LABELS
    text = render_prometheus_text(registry)
    assert "_sum" not in text


def test_histogram_count_is_the_total_and_quantiles_the_window(registry):
    h = registry.group("lat").histogram("h", Histogram(window_size=4))
    for v in (1000, 1, 2, 3, 4):
        h.update(v)
    fam = families(render_prometheus_text(registry))["flinknet_lat_h"]
    values = samples(fam)
    assert values[("flinknet_lat_h_count", frozenset())] == 5.0
    assert values[("flinknet_lat_h", frozenset({("quantile", "1.0")}))] == 4.0


def test_empty_histogram_exports_nan_quantiles(registry):
    registry.group("lat").histogram("empty")
    fam = families(render_prometheus_text(registry))["flinknet_lat_empty"]
    values = samples(fam)
    assert values[("flinknet_lat_empty_count", frozenset())] == 0.0
    for q in QUANTILES:
        assert math.isnan(values[("flinknet_lat_empty", frozenset({("quantile", repr(q))}))])


def test_gauges_numbers_and_bools_exported_everything_else_skipped(registry):
    g = registry.group("g")
    g.gauge("int", lambda: 3)
    g.gauge("float", lambda: 1.5)
    g.gauge("true", lambda: True)
    g.gauge("false", lambda: False)
    g.gauge("nan", lambda: float("nan"))
    g.gauge("posInf", lambda: float("inf"))
    g.gauge("negInf", lambda: float("-inf"))
    g.gauge("np_int", lambda: np.int64(9))
    g.gauge("np_float", lambda: np.float32(0.5))
    g.gauge("np_bool", lambda: np.bool_(True))
    g.gauge("string", lambda: "HIGH")
    g.gauge("numeric_string", lambda: "3")
    g.gauge("dict", lambda: {"a": 1})
    g.gauge("none", lambda: None)
    g.gauge("object", lambda: object())
    g.gauge("list", lambda: [1, 2])
    text = render_prometheus_text(registry)
    fams = families(text)
    values = {name[len("flinknet_g_"):]: only_value(f) for name, f in fams.items()}
    assert set(values) == {"int", "float", "true", "false", "nan", "posInf", "negInf", "np_int", "np_float", "np_bool"}
    assert values["int"] == 3.0 and values["float"] == 1.5
    assert values["true"] == 1.0 and values["false"] == 0.0
    assert math.isnan(values["nan"])
    assert values["posInf"] == math.inf and values["negInf"] == -math.inf
    assert values["np_int"] == 9.0 and values["np_float"] == 0.5 and values["np_bool"] == 1.0
    assert "flinknet_g_nan NaN\n" in text and "flinknet_g_posInf +Inf\n" in text


def test_a_raising_gauge_is_skipped_and_logged_once(registry, caplog):
    Task(registry)
    g = registry.task_group("Source: gen", 0, host="127.0.0.1")

    def boom():
        raise RuntimeError("gauge broke")

    g.gauge("broken", boom)
    collector = PrometheusCollector(registry)
    cr = CollectorRegistry(auto_describe=False)
    cr.register(collector)
    with caplog.at_level(logging.DEBUG, logger="flinknet.metrics.prometheus"):
        for _ in range(3):
            fams = families(generate_latest(cr).decode())
            assert TASK + "broken" not in fams
            assert only_value(fams[TASK + "numRecordsOut"]) == 42.0
            assert TASK + "latency" in fams
    records = [r for r in caplog.records if "broken" in r.getMessage()]
    assert [r.levelno for r in records] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert "gauge broke" in caplog.text  # the traceback is in the log


def test_a_raising_histogram_is_skipped(registry, caplog):
    class BadHistogram(Histogram):
        def get_statistics(self):
            raise ValueError("no statistics")

    registry.group("x").histogram("bad", BadHistogram())
    registry.group("x").counter("ok").inc()
    with caplog.at_level(logging.WARNING, logger="flinknet.metrics.prometheus"):
        fams = families(render_prometheus_text(registry))
    assert set(fams) == {"flinknet_x_ok"}
    assert "flinknet_x_bad" not in caplog.text and "x.bad" in caplog.text


def test_different_label_sets_share_one_family_padded_with_empty_labels(registry):
    # a key group and its value group share a logical scope, as in Flink
    key_group = registry.group("a").add_group("b")
    key_group.counter("c").inc(1)
    value_group = registry.group("a").add_group("b", "v1")
    value_group.counter("c").inc(2)
    deeper = value_group.add_group("k", "v2")  # logical scope a.b.k: another family
    deeper.counter("c").inc(3)
    text = render_prometheus_text(registry)
    fams = families(text)
    assert set(fams) == {"flinknet_a_b_c", "flinknet_a_b_k_c"}
    assert samples(fams["flinknet_a_b_c"]) == {
        ("flinknet_a_b_c", frozenset({("b", "")})): 1.0,
        ("flinknet_a_b_c", frozenset({("b", "v1")})): 2.0,
    }
    assert samples(fams["flinknet_a_b_k_c"]) == {
        ("flinknet_a_b_k_c", frozenset({("b", "v1"), ("k", "v2")})): 3.0}
    assert text.count("# TYPE flinknet_a_b_c gauge") == 1


def test_different_label_sets_in_a_summary(registry):
    registry.group("a").add_group("b").histogram("h").update(1)
    registry.group("a").add_group("b", "v1").histogram("h").update(2)
    fam = families(render_prometheus_text(registry))["flinknet_a_b_h"]
    values = samples(fam)
    assert values[("flinknet_a_b_h_count", frozenset({("b", "")}))] == 1.0
    assert values[("flinknet_a_b_h_count", frozenset({("b", "v1")}))] == 1.0
    assert values[("flinknet_a_b_h", frozenset({("b", "v1"), ("quantile", "0.5")}))] == 2.0
    assert len(fam.samples) == 2 * 9


def test_label_values_filtered_by_default_and_raw_on_request(registry):
    group = registry.group("s").add_group("job_name", 'a job, with "quotes" and\na newline')
    group.counter("n").inc()
    filtered = families(render_prometheus_text(registry))["flinknet_s_job_name_n"]
    assert filtered.samples[0].labels == {"job_name": "a_job__with__quotes__and_a_newline"}
    raw = families(render_prometheus_text(registry, filter_label_values=False))["flinknet_s_job_name_n"]
    assert raw.samples[0].labels == {"job_name": 'a job, with "quotes" and\na newline'}


def test_label_names_are_sanitized(registry):
    registry.group("s").add_group("my-key", "x").add_group("9lives", "y").add_group("a:b", "z").counter("n")
    (sample,) = families(render_prometheus_text(registry))["flinknet_s_my_key_9lives_a:b_n"].samples
    assert sample.labels == {"my_key": "x", "_9lives": "y", "a_b": "z"}


def test_variables_mapping_to_one_label_name_are_not_exported(registry, caplog):
    registry.group("s").add_group("a-b", "1").add_group("a_b", "2").counter("dup")
    registry.group("s").counter("fine")
    with caplog.at_level(logging.WARNING, logger="flinknet.metrics.prometheus"):
        fams = families(render_prometheus_text(registry))
    assert set(fams) == {"flinknet_s_fine"}
    assert "label name a_b" in caplog.text


def test_repeated_series_after_filtering_keeps_the_first(registry, caplog):
    registry.task_group("Source: gen", 0).counter("n").inc(1)
    registry.task_group("Source:_gen", 0).counter("n").inc(2)  # same labels once filtered
    with caplog.at_level(logging.WARNING, logger="flinknet.metrics.prometheus"):
        fam = families(render_prometheus_text(registry))[TASK + "n"]
    assert [s.value for s in fam.samples] == [1.0]
    assert "repeats the series" in caplog.text
    raw = families(render_prometheus_text(registry, filter_label_values=False))[TASK + "n"]
    assert sorted((s.labels["task_name"], s.value) for s in raw.samples) == [("Source: gen", 1.0),
                                                                              ("Source:_gen", 2.0)]


def test_same_family_of_another_type_keeps_the_first(registry, caplog):
    registry.group("t").add_group("k").counter("m").inc(4)
    registry.group("t").add_group("k", "v").histogram("m").update(1)
    with caplog.at_level(logging.WARNING, logger="flinknet.metrics.prometheus"):
        fams = families(render_prometheus_text(registry))
    assert fams["flinknet_t_k_m"].type == "gauge"
    assert samples(fams["flinknet_t_k_m"]) == {("flinknet_t_k_m", frozenset()): 4.0}
    assert "would make family flinknet_t_k_m a summary" in caplog.text


@pytest.mark.parametrize("suffix", ["_count", "_sum"])
@pytest.mark.parametrize("gauge_first", [True, False])
def test_gauge_named_as_a_summary_series_the_second_is_lost(registry, caplog, suffix, gauge_first):
    g = registry.group("r")
    if gauge_first:
        g.counter("hazard" + suffix).inc(5)
        g.histogram("hazard").update(1)
    else:
        g.histogram("hazard").update(1)
        g.counter("hazard" + suffix).inc(5)
    with caplog.at_level(logging.WARNING, logger="flinknet.metrics.prometheus"):
        fams = families(render_prometheus_text(registry))
    types = {name: f.type for name, f in fams.items()}
    if gauge_first:
        assert types == {"flinknet_r_hazard" + suffix: "gauge"}
    else:
        assert types == {"flinknet_r_hazard": "summary"}
    assert "collides with the series of family" in caplog.text


@pytest.mark.parametrize("suffix", ["_created", "_total", "_bucket", "_info"])
def test_other_suffixes_do_not_collide(registry, suffix):
    registry.group("r").histogram("hazard").update(1)
    registry.group("r").counter("hazard" + suffix).inc(5)
    types = {name: f.type for name, f in families(render_prometheus_text(registry)).items()}
    assert types == {"flinknet_r_hazard": "summary", "flinknet_r_hazard" + suffix: "gauge"}


def test_collector_in_any_collector_registry_and_from_one_group(registry):
    task = Task(registry)
    cr = CollectorRegistry()  # auto_describe: describe() returning [] keeps it from collecting
    collector = PrometheusCollector(task.operator)
    assert collector.describe() == []
    cr.register(collector)
    fams = families(generate_latest(cr).decode())
    assert set(fams) == {OPERATOR + "numRecordsIn"}
    assert cr.get_sample_value(OPERATOR + "numRecordsIn", {**TASK_LABELS, "operator": "op_1"}) == 7.0


def test_collector_and_reporter_reject_bad_arguments(registry):
    for bad in (None, "registry", {}, object()):
        with pytest.raises(TypeError, match="MetricRegistry"):
            PrometheusCollector(bad)
        with pytest.raises(TypeError):
            PrometheusReporter(bad)
        with pytest.raises(TypeError):
            render_prometheus_text(bad)
    for bad in (1, "yes", None):
        with pytest.raises(TypeError, match="filter_label_values"):
            PrometheusCollector(registry, filter_label_values=bad)
        with pytest.raises(TypeError, match="filter_label_values"):
            PrometheusReporter(registry, filter_label_values=bad)
    for bad in ("9249", 1.5, None, True, False):
        with pytest.raises(TypeError, match="port"):
            PrometheusReporter(registry, port=bad)
    for bad in (-1, 65536, 10**6):
        with pytest.raises(ValueError, match="port"):
            PrometheusReporter(registry, port=bad)
    for bad in (None, 127, b"127.0.0.1"):
        with pytest.raises(TypeError, match="host"):
            PrometheusReporter(registry, host=bad)
    for bad in ("", "  ", " 127.0.0.1"):
        with pytest.raises(ValueError, match="host"):
            PrometheusReporter(registry, host=bad)
    with pytest.raises(TypeError):
        PrometheusReporter(registry, 0, "127.0.0.1", True)  # filter_label_values is keyword-only


# -- the HTTP endpoint -------------------------------------------------------------------------


def test_served_text_parses_and_matches_the_registry(registry):
    task = Task(registry)
    with PrometheusReporter(registry) as reporter:
        assert reporter.is_running and reporter.port > 0
        assert reporter.url == f"http://127.0.0.1:{reporter.port}/metrics"
        content_type, body = scrape(reporter)
        assert content_type.startswith("text/plain; version=0.0.4")
        fams = families(body)
        assert only_value(fams[TASK + "numRecordsOut"]) == 42.0
        assert only_value(fams[TASK + "numRecordsOutPerSecond"]) == pytest.approx(task.meter.rate)
        assert only_value(fams[TASK + "outPoolUsage"]) == 0.25
        assert only_value(fams[TASK + "busyTimeMsPerSecond"]) == float(task.timer.value)
        assert only_value(fams[OPERATOR + "numRecordsIn"]) == 7.0
        quantiles = {s.labels["quantile"]: s.value for s in fams[TASK + "latency"].samples
                     if "quantile" in s.labels}
        assert set(quantiles) == ALL_QUANTILES
        assert body == render_prometheus_text(registry)
        # live: the next scrape sees the new count
        task.counter.inc(58)
        assert only_value(families(scrape(reporter)[1])[TASK + "numRecordsOut"]) == 100.0


def test_endpoint_only_while_started_and_close_frees_the_port(registry):
    Task(registry)
    threads_before = set(threading.enumerate())
    reporter = PrometheusReporter(registry)
    assert reporter.port is None and reporter.url is None and not reporter.is_running
    assert "stopped" in repr(reporter)
    reporter.start()
    port = reporter.port
    assert ("127.0.0.1", port) in listening_sockets()
    scrape(reporter)
    # the port is really held: nobody else can listen on it, even with SO_REUSEADDR
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    with probe, pytest.raises(OSError) as info:
        probe.bind(("127.0.0.1", port))
        probe.listen()
    assert info.value.errno == errno.EADDRINUSE

    reporter.close()
    assert not reporter.is_running and reporter.port == port  # the port stays readable
    assert connection_refused("127.0.0.1", port)
    assert ("127.0.0.1", port) not in listening_sockets()
    assert wait_threads_back(threads_before) == set()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()
    # and a reporter can take the very same port again
    with PrometheusReporter(registry, port=port) as second:
        assert second.port == port
        assert TASK + "numRecordsOut" in families(scrape(second)[1])
    assert connection_refused("127.0.0.1", port)
    reporter.close()  # idempotent
    assert wait_threads_back(threads_before) == set()


def test_start_twice_fails_and_restart_after_close_works(registry):
    reporter = PrometheusReporter(registry).start()
    try:
        with pytest.raises(RuntimeError, match="already serves"):
            reporter.start()
        with reporter:  # entering a started reporter does not start it again
            scrape(reporter)
    finally:
        reporter.close()
    assert not reporter.is_running
    reporter.start()
    try:
        assert reporter.is_running
        scrape(reporter)
    finally:
        reporter.close()


def test_busy_port_raises_oserror_and_leaves_nothing_running(registry):
    threads_before = set(threading.enumerate())
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        reporter = PrometheusReporter(registry, port=port)
        with pytest.raises(OSError, match=f"127.0.0.1:{port}") as info:
            reporter.start()
        assert info.value.errno == errno.EADDRINUSE
        assert not reporter.is_running and reporter.port is None
        reporter.close()
    assert wait_threads_back(threads_before) == set()


def test_subscribed_reporter_closes_with_the_registry():
    reg = MetricRegistry(update_interval=1, start=False)
    reg.group("x").counter("n").inc()
    reporter = PrometheusReporter(reg).start()
    reg.subscribe(reporter)
    reg.update()  # report() is a no-op: scrapes read the registry
    port = reporter.port
    assert "flinknet_x_n" in families(scrape(reporter)[1])
    reg.close()
    assert not reporter.is_running
    assert connection_refused("127.0.0.1", port)


def test_ipv6_loopback_url(registry):
    if not socket.has_ipv6:
        pytest.skip("this Python was built without IPv6 support")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("this machine has no IPv6 loopback address (::1) to bind")
    registry.group("x").counter("n").inc(3)
    with PrometheusReporter(registry, host="::1") as reporter:
        assert reporter.url == f"http://[::1]:{reporter.port}/metrics"
        assert only_value(families(scrape(reporter)[1])["flinknet_x_n"]) == 3.0


def test_non_loopback_host_is_explicit_and_warned(registry, caplog):
    with caplog.at_level(logging.WARNING, logger="flinknet.metrics.prometheus"):
        for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
            PrometheusReporter(registry, host=host)
        assert caplog.records == []
        reporter = PrometheusReporter(registry, host="0.0.0.0")  # constructed, never started
    assert "0.0.0.0" in caplog.text and "beyond" in caplog.text
    assert not reporter.is_running
    assert PrometheusReporter(registry).host == "127.0.0.1"  # the default is loopback


def test_nothing_listens_without_a_reporter():
    before = listening_sockets()
    threads_before = set(threading.enumerate())
    reg = MetricRegistry(update_interval=1, start=True)
    try:
        Task(reg)
        reg.update()
        render_prometheus_text(reg)
        PrometheusCollector(reg)
        PrometheusReporter(reg)  # created but not started: still no socket
        assert listening_sockets() == before
        extra = {t.name for t in threading.enumerate() if t not in threads_before}
        assert extra == {"flinknet-metrics"}  # only the registry's updater, no server thread
    finally:
        reg.close()
    assert listening_sockets() == before


def test_import_is_lazy_and_a_missing_client_says_what_to_install():
    code = textwrap.dedent("""
        import sys
        import flinknet.metrics.prometheus as p
        assert "prometheus_client" not in sys.modules, "imported eagerly"
        sys.modules["prometheus_client"] = None  # as if not installed
        from flinknet.metrics import MetricRegistry
        reg = MetricRegistry(start=False)
        reg.group("x").counter("n")
        for call in (lambda: p.render_prometheus_text(reg), lambda: p.PrometheusCollector(reg),
                     lambda: p.PrometheusReporter(reg)):
            try:
                call()
            except ImportError as err:
                assert "pip install 'flinknet[prometheus]'" in str(err), err
            else:
                raise SystemExit("no ImportError")
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-W", "error::ResourceWarning", "-c", code],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
