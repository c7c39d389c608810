"""Metrics with Flink's names and definitions: types, groups, registry, network gauges.

See :mod:`flinknet.metrics.core` (Counter, Gauge, MeterView, TimerGauge), :mod:`flinknet.metrics.registry`
(MetricGroup, MetricRegistry, back-pressure levels), :mod:`flinknet.metrics.network` (the
``Shuffle.Netty`` buffer and queue gauges), :mod:`flinknet.metrics.task` (a task's I/O metrics
and back-pressure timers) and :mod:`flinknet.metrics.latency` (latency markers).
"""

from flinknet.metrics.core import (
    UPDATE_INTERVAL_SECONDS,
    Counter,
    Gauge,
    Histogram,
    HistogramStatistics,
    MeterView,
    TimerGauge,
    View,
)
from flinknet.metrics.latency import LatencyMarkerEmitter, LatencyStats, forward_latency_marker
from flinknet.metrics.network import (
    in_pool_usage,
    input_exclusive_buffers_usage,
    input_floating_buffers_usage,
    input_queue_length,
    input_queue_size,
    out_pool_usage,
    output_queue_length,
    output_queue_size,
    register_input_metrics,
    register_network_buffer_pool_metrics,
    register_output_metrics,
    register_transport_metrics,
)
from flinknet.metrics.prometheus import PrometheusCollector, PrometheusReporter, render_prometheus_text
from flinknet.metrics.registry import (
    BACKPRESSURE_HIGH_THRESHOLD,
    BACKPRESSURE_LOW_THRESHOLD,
    MetricGroup,
    MetricRegistry,
    Reporter,
    backpressure_level,
)
from flinknet.metrics.reporters import LogReporter
from flinknet.metrics.task import SumCounter, TaskIOMetrics

__all__ = [
    "BACKPRESSURE_HIGH_THRESHOLD", "BACKPRESSURE_LOW_THRESHOLD", "Counter", "Gauge", "Histogram",
    "HistogramStatistics", "MeterView",
    "MetricGroup", "MetricRegistry", "Reporter", "TimerGauge", "UPDATE_INTERVAL_SECONDS", "View",
    "backpressure_level", "in_pool_usage", "input_exclusive_buffers_usage",
    "input_floating_buffers_usage", "input_queue_length", "input_queue_size", "out_pool_usage",
    "output_queue_length", "output_queue_size", "register_input_metrics",
    "register_network_buffer_pool_metrics", "register_transport_metrics", "register_output_metrics",
    "SumCounter", "TaskIOMetrics",
    "LatencyMarkerEmitter", "LatencyStats", "forward_latency_marker", "LogReporter", "PrometheusCollector",
    "PrometheusReporter", "render_prometheus_text",
]
