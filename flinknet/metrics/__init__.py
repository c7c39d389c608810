"""Metrics with Flink's names and definitions: types, groups, registry, network gauges.

See :mod:`flinknet.metrics.core` (Counter, Gauge, MeterView, TimerGauge), :mod:`flinknet.metrics.registry`
(MetricGroup, MetricRegistry, back-pressure levels) and :mod:`flinknet.metrics.network` (the
``Shuffle.Netty`` buffer and queue gauges).
"""

from flinknet.metrics.core import UPDATE_INTERVAL_SECONDS, Counter, Gauge, MeterView, TimerGauge, View
from flinknet.metrics.network import (
    in_pool_usage,
    input_exclusive_buffers_usage,
    input_floating_buffers_usage,
    input_queue_length,
    input_queue_size,
    out_pool_usage,
    output_queue_length,
    register_input_metrics,
    register_network_buffer_pool_metrics,
    register_output_metrics,
)
from flinknet.metrics.registry import (
    BACKPRESSURE_HIGH_THRESHOLD,
    BACKPRESSURE_LOW_THRESHOLD,
    MetricGroup,
    MetricRegistry,
    Reporter,
    backpressure_level,
)

__all__ = [
    "BACKPRESSURE_HIGH_THRESHOLD", "BACKPRESSURE_LOW_THRESHOLD", "Counter", "Gauge", "MeterView",
    "MetricGroup", "MetricRegistry", "Reporter", "TimerGauge", "UPDATE_INTERVAL_SECONDS", "View",
    "backpressure_level", "in_pool_usage", "input_exclusive_buffers_usage",
    "input_floating_buffers_usage", "input_queue_length", "input_queue_size", "out_pool_usage",
    "output_queue_length", "register_input_metrics", "register_network_buffer_pool_metrics",
    "register_output_metrics",
]
