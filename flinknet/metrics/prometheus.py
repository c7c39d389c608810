"""Prometheus export of a :class:`~flinknet.metrics.MetricRegistry`, named as Flink's reporter.

=============================================  ==================================================
Flink (``flink-metrics-prometheus``)           flinknet
=============================================  ==================================================
``PrometheusReporter`` (HTTP ``/metrics``)     :class:`PrometheusReporter`
``AbstractPrometheusReporter`` collectors      :class:`PrometheusCollector` (reads the registry
                                               on every scrape)
``HistogramSummaryProxy``                      the summaries of :class:`PrometheusCollector`
``SCOPE_PREFIX`` (``"flink_"``)                :data:`SCOPE_PREFIX` (``"flinknet_"``)
``replaceInvalidChars`` (``[^a-zA-Z0-9:_]``)   :func:`sanitize_name`
``filterLabelValueCharacters`` (default on)    ``filter_label_values=True``
``port`` (default ``9249``, all interfaces)    ``port=0`` (a free port), ``host="127.0.0.1"``
(text exposition via the client library)       :func:`render_prometheus_text`
=============================================  ==================================================

Names and labels are Flink's: a metric ``name`` of a group with logical scope
``("taskmanager", "job", "task")`` is the family ``flinknet_taskmanager_job_task_<name>``, every
character outside ``[a-zA-Z0-9:_]`` replaced by ``_``; the group's
:attr:`~flinknet.metrics.MetricGroup.variables` are its labels (names sanitized, values too unless
``filter_label_values=False``, as Flink's ``filterLabelValueCharacters``). Counters, meters (their
rate) and numeric gauges (``bool`` as 1/0, NaN and infinities as they are) are Prometheus gauges,
so a counter keeps its name (no ``_total``). A :class:`~flinknet.metrics.Histogram` is a summary
with ``_count`` and the quantiles 0.5, 0.75, 0.95, 0.98, 0.99, 0.999 plus its minimum and maximum
as quantiles ``0.0`` and ``1.0`` (FLINK-29984), and no ``_sum``: the statistics only hold a window
of recent values, so the sum of all observations is unknown (FLINK-29037).

Where flinknet differs from Flink, it keeps a scrape valid instead of failing or misreporting:

* a gauge whose value is not a number (a string, a dict, ``None``) is left out (Flink exports 0);
  a gauge that raises is left out and logged (once per metric, then at debug level);
* metrics of one family with different label names (a key group and its value group share a
  logical scope) become one family whose label names are the union, the labels a metric lacks
  set to ``""`` (in Prometheus an empty label is an absent one, so every series keeps its
  identity);
* the first metric of a family name wins: a later metric of another type, a gauge named as a
  summary's ``_count``/``_sum`` series (Flink loses the second one too), or a series whose
  labels repeat an earlier one is left out and logged once; so is a metric whose variables map
  to the same label name twice (as Flink does);
* label names are also stripped of ``:`` (valid in metric names only) and get a leading ``_``
  if they would start with a digit.

``prometheus_client`` is an optional dependency (``pip install 'flinknet[prometheus]'``),
imported only when a collector, a reporter or :func:`render_prometheus_text` is used. Nothing
opens a port unless a :class:`PrometheusReporter` is started, and it listens on loopback unless
``host`` says otherwise.
"""

from __future__ import annotations

import ipaddress
import logging
import numbers
import re
import threading
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from flinknet.metrics.core import Counter, Gauge, Histogram, MeterView, TimerGauge
from flinknet.metrics.registry import Metric, MetricGroup, MetricRegistry, Reporter, has_value

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer as _Server

    from prometheus_client.metrics_core import Metric as PrometheusMetric
    from prometheus_client.registry import CollectorRegistry

__all__ = ["PrometheusCollector", "PrometheusReporter", "QUANTILES", "SCOPE_PREFIX",
           "render_prometheus_text", "sanitize_name"]

log = logging.getLogger(__name__)

#: Prefix of every family name (Flink's ``SCOPE_PREFIX`` is ``"flink_"``).
SCOPE_PREFIX = "flinknet_"
#: The quantiles of a histogram's summary (Flink's ``HistogramSummaryProxy.QUANTILES``); the
#: minimum and maximum are exported as quantiles ``0.0`` and ``1.0`` besides.
QUANTILES = (0.5, 0.75, 0.95, 0.98, 0.99, 0.999)

#: Oldest client whose ``start_http_server`` returns ``(server, thread)`` so it can be stopped.
_MIN_CLIENT_VERSION = (0, 20)
_INSTALL_HINT = "pip install 'flinknet[prometheus]'"

#: A family entry's value: a gauge's number, or a summary's count and ``(quantile, value)`` pairs.
_Value: TypeAlias = "float | tuple[float, list[tuple[str, float]]]"

_UNALLOWED = re.compile(r"[^a-zA-Z0-9:_]")
_UNALLOWED_IN_LABEL = re.compile(r"[^a-zA-Z0-9_]")


def sanitize_name(text: str) -> str:
    """``text`` with every character outside ``[a-zA-Z0-9:_]`` replaced by ``_`` (Flink's
    ``AbstractPrometheusReporter.replaceInvalidChars``, used for family names and, by default,
    label values)."""
    return _UNALLOWED.sub("_", str(text))


def _label_name(text: str) -> str:
    """A variable's name as a valid Prometheus label name (``[a-zA-Z_][a-zA-Z0-9_]*``)."""
    name = _UNALLOWED_IN_LABEL.sub("_", str(text))
    return "_" + name if not name or name[0].isdigit() else name


def _require_client() -> None:
    """Import ``prometheus_client`` (an optional dependency, imported only when used), or raise
    an ImportError saying what to install."""
    try:
        import prometheus_client  # noqa: F401
        import prometheus_client.exposition
        import prometheus_client.metrics_core
        import prometheus_client.registry  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "Prometheus export needs the optional dependency prometheus_client: "
            f"{_INSTALL_HINT}") from err


def _collector_registry() -> CollectorRegistry:
    """A private ``CollectorRegistry`` (no default collectors, no describe at registration)."""
    _require_client()
    from prometheus_client.registry import CollectorRegistry

    return CollectorRegistry(auto_describe=False)


def _client_version() -> tuple[int, ...]:
    try:
        text = version("prometheus_client")
    except PackageNotFoundError:  # vendored or renamed: trust it
        return (999,)
    parts = []
    for piece in text.split(".")[:2]:
        digits = re.match(r"\d+", piece)
        parts.append(int(digits.group()) if digits else 0)
    return tuple(parts)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Warnings:
    """Logs a problem at WARNING the first time per key, then at DEBUG (a scrape every few
    seconds must not flood the log)."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def __call__(self, key: tuple[str, str], msg: str, *args: object, exc_info: bool = False) -> None:
        with self._lock:
            first = key not in self._seen
            if first:
                self._seen.add(key)
        log.log(logging.WARNING if first else logging.DEBUG, msg, *args, exc_info=exc_info)


class _Family:
    __slots__ = ("name", "kind", "help", "label_names", "entries")

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = name
        self.kind = kind            # "gauge" or "summary"
        self.help = help_text
        self.label_names: list[str] = []
        self.entries: list[tuple[dict[str, str], _Value]] = []


class PrometheusCollector:
    """A ``prometheus_client`` collector reading a live :class:`MetricRegistry` (or one
    :class:`MetricGroup` and its subgroups) on every scrape.

    ``collect()`` yields a ``GaugeMetricFamily`` per counter, meter and numeric gauge name and a
    ``SummaryMetricFamily`` per histogram name, named and labelled as described in this module.
    Register it with any ``CollectorRegistry`` (``describe()`` returns nothing, as for any
    collector whose families change); :class:`PrometheusReporter` and
    :func:`render_prometheus_text` use a private one. A metric that cannot be read never breaks
    a scrape: it is left out and logged.
    """

    def __init__(self, registry: MetricRegistry | MetricGroup, filter_label_values: bool = True) -> None:
        if not isinstance(registry, (MetricRegistry, MetricGroup)):
            raise TypeError(f"a PrometheusCollector reads a flinknet MetricRegistry or MetricGroup, "
                            f"got {type(registry).__name__}")
        if not isinstance(filter_label_values, bool):
            raise TypeError(f"filter_label_values must be a bool, got {filter_label_values!r}")
        _require_client()
        self.registry = registry
        self.filter_label_values = filter_label_values
        self._warn = _Warnings()

    def describe(self) -> list[PrometheusMetric]:
        """Nothing: the families follow the registry, so a ``CollectorRegistry`` must not check
        them once at registration."""
        return []

    # -- reading the registry ----------------------------------------------------------------

    def _labels(self, group: MetricGroup, ident: str) -> dict[str, str] | None:
        labels: dict[str, str] = {}
        for key, value in group.variables.items():
            name = _label_name(key)
            if name in labels:
                self._warn(("dup-label", name),
                           "metric group variables map to the label name %s more than once; metrics "
                           "carrying them, such as %s, are not exported", name, ident)
                return None
            text = str(value)
            labels[name] = sanitize_name(text) if self.filter_label_values else text
        return labels

    def _read(self, metric: Metric, ident: str) -> tuple[str, _Value] | None:
        """``("gauge", float)``, ``("summary", (count, [(quantile, value)…]))`` or None (skip)."""
        value: object
        try:
            if isinstance(metric, Counter):
                return "gauge", float(metric.count)
            if isinstance(metric, MeterView):
                return "gauge", float(metric.rate)
            if isinstance(metric, Histogram):
                stats = metric.get_statistics()
                quantiles = [("0.0", float(stats.min))]
                quantiles += [(repr(q), float(stats.get_quantile(q))) for q in QUANTILES]
                quantiles.append(("1.0", float(stats.max)))
                return "summary", (float(metric.count), quantiles)
            if isinstance(metric, (Gauge, TimerGauge)):
                value = metric.value
            elif has_value(metric):
                value = getattr(metric, "value")  # noqa: B009 (another View with a value)
            else:
                self._warn(("type", ident), "metric %s has an unsupported type %s; not exported",
                           ident, type(metric).__name__)
                return None
        except Exception:  # noqa: BLE001 (a metric never breaks a scrape)
            self._warn(("raised", ident), "reading metric %s failed; not exported in this scrape",
                       ident, exc_info=True)
            return None
        if isinstance(value, (bool, np.bool_)):
            return "gauge", 1.0 if value else 0.0
        if isinstance(value, numbers.Real):
            try:
                return "gauge", float(value)
            except (TypeError, ValueError, OverflowError):
                pass
        log.debug("gauge %s has a non-numeric value of type %s; not exported",
                  ident, type(value).__name__)
        return None

    def _families(self) -> list[_Family]:
        families: dict[str, _Family] = {}
        owner: dict[str, str] = {}          # every series name -> the family that emits it
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()   # (family, labels) already exported
        for group, name, metric in self.registry.collect():
            ident = group.metric_identifier(name)
            scope = "_".join(sanitize_name(c) for c in group.logical_scope)
            family_name = f"{SCOPE_PREFIX}{scope}_{sanitize_name(name)}"
            labels = self._labels(group, ident)
            if labels is None:
                continue
            read = self._read(metric, ident)
            if read is None:
                continue
            kind, value = read
            family = families.get(family_name)
            if family is None:
                names = [family_name] + ([family_name + "_count", family_name + "_sum"]
                                         if kind == "summary" else [])
                taken = next((owner[n] for n in names if n in owner), None)
                if taken is not None:
                    self._warn(("name", ident),
                               "metric %s (family %s) collides with the series of family %s; "
                               "not exported", ident, family_name, taken)
                    continue
                family = families[family_name] = _Family(
                    family_name, kind, f"{name} (scope: {scope})")
                for n in names:
                    owner[n] = family_name
            elif family.kind != kind:
                self._warn(("kind", ident), "metric %s would make family %s a %s, but it is a %s; "
                           "not exported", ident, family_name, kind, family.kind)
                continue
            if kind == "summary" and "quantile" in labels:
                self._warn(("quantile", ident), "histogram %s has a variable named quantile, "
                           "which a summary reserves; not exported", ident)
                continue
            key = (family_name, tuple(sorted(labels.items())))
            if key in seen:
                self._warn(("series", ident), "metric %s repeats the series %s%s; not exported",
                           ident, family_name, labels)
                continue
            seen.add(key)
            for label in labels:
                if label not in family.label_names:
                    family.label_names.append(label)
            family.entries.append((labels, value))
        return list(families.values())

    def collect(self) -> Iterator[PrometheusMetric]:
        """The registry's metrics as ``GaugeMetricFamily`` and ``SummaryMetricFamily`` objects."""
        _require_client()
        from prometheus_client.metrics_core import GaugeMetricFamily, SummaryMetricFamily

        for family in self._families():
            names = family.label_names
            out: PrometheusMetric
            if family.kind == "gauge":
                gauge = out = GaugeMetricFamily(family.name, family.help, labels=names)
                for labels, value in family.entries:
                    assert isinstance(value, float)
                    gauge.add_metric([labels.get(n, "") for n in names], value)
            else:
                out = SummaryMetricFamily(family.name, family.help, labels=names)
                for labels, entry in family.entries:
                    assert isinstance(entry, tuple)
                    count, quantiles = entry
                    full = {n: labels.get(n, "") for n in names}
                    out.add_sample(family.name + "_count", full, count)
                    for q, quantile_value in quantiles:
                        out.add_sample(family.name, {**full, "quantile": q}, quantile_value)
            yield out


def render_prometheus_text(registry: MetricRegistry | MetricGroup, filter_label_values: bool = True) -> str:
    """The Prometheus text exposition (format 0.0.4) of ``registry``'s current metrics, as
    :class:`PrometheusReporter` serves it, without any HTTP."""
    collectors = _collector_registry()
    from prometheus_client.exposition import generate_latest

    collectors.register(PrometheusCollector(registry, filter_label_values=filter_label_values))
    return generate_latest(collectors).decode("utf-8")


class PrometheusReporter(Reporter):
    """Serves ``registry``'s metrics at ``http://<host>:<port>/metrics`` for Prometheus to
    scrape (Flink's ``PrometheusReporter``), with the names of :class:`PrometheusCollector`.

    ``port=0`` takes a free port (read :attr:`port` or :attr:`url` after :meth:`start`);
    ``host`` is loopback unless given otherwise (``"0.0.0.0"`` exposes the metrics to the
    network: a warning is logged). :meth:`start` binds and serves on a daemon thread,
    :meth:`close` stops the server, joins its thread and frees the port; ``with
    PrometheusReporter(registry) as r:`` does both. Every scrape reads the live registry, so
    :meth:`report` (called when subscribed to the registry, which then closes the reporter with
    itself) has nothing to do.
    """

    def __init__(self, registry: MetricRegistry | MetricGroup, port: int = 0, host: str = "127.0.0.1",
                 *, filter_label_values: bool = True) -> None:
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"port must be an int, got {port!r}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in [0, 65535] (0: any free port), got {port}")
        if not isinstance(host, str):
            raise TypeError(f"host must be a str, got {host!r}")
        if not host.strip() or host != host.strip():
            raise ValueError(f"host must be a non-empty host name or address, got {host!r}")
        self.collector = PrometheusCollector(registry, filter_label_values=filter_label_values)
        self.registry = registry
        self.host = host
        #: the port asked for (0: any free one); :attr:`port` is the one bound
        self.requested_port = port
        self._port: int | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        if not _is_loopback(host):
            log.warning("PrometheusReporter will serve metrics on %s, beyond this machine's loopback", host)

    @property
    def port(self) -> int | None:
        """The port bound by :meth:`start` (still set after :meth:`close`); None before."""
        return self._port

    @property
    def url(self) -> str | None:
        """``http://<host>:<port>/metrics`` once started; None before."""
        if self._port is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}/metrics"

    @property
    def is_running(self) -> bool:
        """True between :meth:`start` and :meth:`close`."""
        return self._server is not None

    def start(self) -> PrometheusReporter:
        """Bind ``host:port`` and serve on a daemon thread; returns self. Raises OSError when the
        address cannot be bound and RuntimeError when already serving."""
        _require_client()
        from prometheus_client.exposition import start_http_server

        if _client_version() < _MIN_CLIENT_VERSION:
            raise ImportError("PrometheusReporter needs prometheus_client >= 0.20 (its HTTP server must "
                              f"be stoppable): {_INSTALL_HINT}")
        with self._lock:
            if self._server is not None:
                raise RuntimeError(f"PrometheusReporter already serves {self.url}")
            collectors = _collector_registry()
            collectors.register(self.collector)
            try:
                server, thread = start_http_server(self.requested_port, addr=self.host,
                                                   registry=collectors)
            except OSError as err:
                raise OSError(err.errno, f"PrometheusReporter cannot listen on {self.host}:"
                              f"{self.requested_port}: {err.strerror or err}") from err
            self._server, self._thread = server, thread
            self._port = server.server_port
        log.info("PrometheusReporter serving %s", self.url)
        return self

    def report(self, snapshot: dict[str, Any]) -> None:
        """Nothing to do: every scrape reads the live registry."""

    def close(self) -> None:
        """Stop serving, join the server thread and close the listening socket (idempotent)."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(5)
        log.info("PrometheusReporter stopped serving %s:%s", self.host, self._port)

    def __enter__(self) -> PrometheusReporter:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = self.url if self.is_running else "stopped"
        return f"PrometheusReporter({state})"
