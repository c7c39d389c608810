"""Flink's network metrics (``io.network.metrics``), with Flink's names and definitions.

=========================================  ====================================================
Flink                                      flinknet
=========================================  ====================================================
``NettyShuffleMetricFactory``              :func:`register_network_buffer_pool_metrics`,
                                           :func:`register_output_metrics`,
                                           :func:`register_input_metrics`
``OutputBufferPoolUsageGauge``             :func:`out_pool_usage`
``OutputBuffersGauge``                     :func:`output_queue_length`
``OutputBuffersSizeGauge``                 :func:`output_queue_size`
``FloatingBuffersUsageGauge``              :func:`input_floating_buffers_usage`
``ExclusiveBuffersUsageGauge``             :func:`input_exclusive_buffers_usage`
``CreditBasedInputBuffersUsageGauge``      :func:`in_pool_usage`
``InputBuffersGauge`` / ``…SizeGauge``     :func:`input_queue_length` / :func:`input_queue_size`
(none: Flink's server has no peer bounds)  :func:`register_transport_metrics`
=========================================  ====================================================

Groups, as Flink registers them: ``<scope>.Shuffle.Netty.{TotalMemorySegments, …}`` for the
process's :class:`~flinknet.NetworkBufferPool`, ``<task>.Shuffle.Netty.Output.Buffers.*`` and
``<task>.Shuffle.Netty.Input.Buffers.*`` for a task's partitions and gates. Every gauge is
computed when read (best effort, without locks, as Flink's ``unsynchronizedGet…``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar

from flinknet._core.pool import NetworkBufferPool
from flinknet.consumer.channels import InputChannel, LocalInputChannel
from flinknet.consumer.gate import SingleInputGate
from flinknet.consumer.remote import RemoteInputChannel
from flinknet.metrics.registry import MetricGroup
from flinknet.transport.server import TransportServer

__all__ = [
    "in_pool_usage", "input_exclusive_buffers_usage", "input_floating_buffers_usage",
    "input_queue_length", "input_queue_size", "out_pool_usage", "output_queue_length", "output_queue_size",
    "register_input_metrics", "register_network_buffer_pool_metrics", "register_output_metrics",
    "register_transport_metrics",
]

#: ``limitHits.<name>`` → the configuration key of the bound it counts
LIMIT_KEYS = {
    "maxConnections": "flinknet.network.max-connections",
    "maxConnectionsPerHost": "flinknet.network.max-connections-per-host",
    "maxPendingRequests": "flinknet.network.max-pending-requests-per-connection",
    "maxUnsentBytes": "flinknet.network.max-unsent-bytes-per-connection",
    "idleTimeout": "flinknet.network.idle-timeout",
}


class _BufferPool(Protocol):
    """What the usage gauges read of a buffer pool (a ``LocalBufferPool``)."""

    @property
    def is_destroyed(self) -> bool: ...

    @property
    def used_buffers(self) -> int: ...

    @property
    def num_buffers(self) -> int: ...


class _HasBufferPool(Protocol):
    # ``buffer_pool`` may raise before set-up or after release
    @property
    def buffer_pool(self) -> _BufferPool | None: ...


class _HasQueuedBuffers(Protocol):
    @property
    def number_of_queued_buffers(self) -> int: ...


class _HasQueuedBytes(Protocol):
    @property
    def size_of_queued_buffers(self) -> int: ...


class _OutputPartition(_HasBufferPool, _HasQueuedBuffers, _HasQueuedBytes, Protocol):
    """What the output gauges read of a partition (a ``ResultPartition``)."""


_T = TypeVar("_T")


def _pool(partition: _HasBufferPool) -> _BufferPool | None:
    try:
        return partition.buffer_pool
    except Exception:  # noqa: BLE001 (not set up yet, or released)
        return None


# -- output --------------------------------------------------------------------------------

def out_pool_usage(partitions: Iterable[_HasBufferPool]) -> float:
    """Σ used buffers ÷ Σ current pool sizes over the partitions (0 without pools); above 1.0
    while overdraft buffers are held."""
    used = total = 0
    for p in partitions:
        pool = _pool(p)
        if pool is None or pool.is_destroyed:
            continue
        used += pool.used_buffers
        total += pool.num_buffers
    return used / total if total else 0.0


def output_queue_length(partitions: Iterable[_HasQueuedBuffers]) -> int:
    """Σ over subpartitions of the buffers queued for consumers (the unfinished tail included)."""
    return sum(p.number_of_queued_buffers for p in partitions)


def output_queue_size(partitions: Iterable[_HasQueuedBytes]) -> int:
    """Σ over partitions of bytes written (records and events) minus bytes polled by consumers."""
    return sum(p.size_of_queued_buffers for p in partitions)


def _live(items: Iterable[_T]) -> list[_T]:
    # A list is kept as it is, so that appending to it later adds to the gauges (each read takes
    # a snapshot of it); any other iterable is read once.
    return items if isinstance(items, list) else list(items)


def register_output_metrics(task_group: MetricGroup, partitions: Iterable[_OutputPartition]) -> MetricGroup:
    """``<task>.Shuffle.Netty.Output.Buffers.{outPoolUsage, outputQueueLength, outputQueueSize}``
    over ``partitions`` (a list is read live)."""
    live = _live(partitions)
    g = task_group.add_group("Shuffle").add_group("Netty").add_group("Output").add_group("Buffers")
    g.gauge("outPoolUsage", lambda: out_pool_usage(list(live)))
    g.gauge("outputQueueLength", lambda: output_queue_length(list(live)))
    g.gauge("outputQueueSize", lambda: output_queue_size(list(live)))
    return g


# -- input ---------------------------------------------------------------------------------

def _remote_channels(gates: Iterable[SingleInputGate]) -> Iterator[RemoteInputChannel]:
    for gate in gates:
        for ch in gate.input_channels:
            if isinstance(ch, RemoteInputChannel):
                yield ch


def _floating_used_total(gates: Iterable[SingleInputGate]) -> tuple[int, int]:
    used = total = 0
    for gate in gates:
        pool = gate.buffer_pool
        if pool is None or pool.is_destroyed:
            continue
        idle_in_channels = sum(ch.floating_buffers_available for ch in _remote_channels([gate]))
        used += max(0, pool.used_buffers - idle_in_channels)
        total += pool.num_buffers
    return used, total


def _exclusive_used_total(gates: Iterable[SingleInputGate]) -> tuple[int, int]:
    used = total = 0
    for ch in _remote_channels(gates):
        used += ch.exclusive_buffers_used
        total += ch.initial_credit
    return used, total


def input_floating_buffers_usage(gates: Iterable[SingleInputGate]) -> float:
    """Per gate: used = max(0, gate pool used − floating buffers idle in its channels), total =
    the gate pool's size; summed over gates, used ÷ total (0 without floating buffers)."""
    used, total = _floating_used_total(gates)
    return used / total if total else 0.0


def input_exclusive_buffers_usage(gates: Iterable[SingleInputGate]) -> float:
    """Σ max(0, initial credit − free exclusive) ÷ Σ initial credit over remote channels."""
    used, total = _exclusive_used_total(gates)
    return used / total if total else 0.0


def in_pool_usage(gates: Iterable[SingleInputGate]) -> float:
    """(floating used + exclusive used) ÷ (floating total + exclusive total)."""
    gates = list(gates)
    fu, ft = _floating_used_total(gates)
    eu, et = _exclusive_used_total(gates)
    return (fu + eu) / (ft + et) if ft + et else 0.0


def _queued_buffers(channel: InputChannel) -> int:
    # Flink's InputChannel.unsynchronizedGetNumberOfQueuedBuffers: 0 unless the channel queues
    if isinstance(channel, (LocalInputChannel, RemoteInputChannel)):
        return channel.number_of_queued_buffers
    return 0


def input_queue_length(gates: Iterable[SingleInputGate]) -> int:
    """Σ over channels of queued buffers (local channels: the producer subpartition's queue)."""
    return sum(_queued_buffers(ch) for g in gates for ch in g.input_channels)


def input_queue_size(gates: Iterable[SingleInputGate]) -> int:
    """Σ bytes queued in remote channels (local channels report 0)."""
    return sum(ch.size_of_queued_buffers for ch in _remote_channels(gates))


def register_input_metrics(task_group: MetricGroup, gates: Iterable[SingleInputGate]) -> MetricGroup:
    """``<task>.Shuffle.Netty.Input.Buffers.{inPoolUsage, inputFloatingBuffersUsage,
    inputExclusiveBuffersUsage, inputQueueLength, inputQueueSize}`` over ``gates`` (a list is
    read live)."""
    live = _live(gates)
    g = task_group.add_group("Shuffle").add_group("Netty").add_group("Input").add_group("Buffers")
    g.gauge("inPoolUsage", lambda: in_pool_usage(list(live)))
    g.gauge("inputFloatingBuffersUsage", lambda: input_floating_buffers_usage(list(live)))
    g.gauge("inputExclusiveBuffersUsage", lambda: input_exclusive_buffers_usage(list(live)))
    g.gauge("inputQueueLength", lambda: input_queue_length(list(live)))
    g.gauge("inputQueueSize", lambda: input_queue_size(list(live)))
    return g


# -- the process's buffer pool -------------------------------------------------------------

def register_network_buffer_pool_metrics(group: MetricGroup, nbp: NetworkBufferPool) -> MetricGroup:
    """``<scope>.Shuffle.Netty.{Total,Available,Used}MemorySegments``, ``…Memory`` (bytes) and
    ``RequestedMemoryUsage`` (percent of segments requested by pools, Flink's estimate)."""
    g = group.add_group("Shuffle").add_group("Netty")
    g.gauge("TotalMemorySegments", lambda: nbp.total_segments)
    g.gauge("AvailableMemorySegments", lambda: nbp.available_segments)
    g.gauge("UsedMemorySegments", lambda: nbp.used_segments)
    g.gauge("TotalMemory", lambda: nbp.total_memory)
    g.gauge("AvailableMemory", lambda: nbp.available_memory)
    g.gauge("UsedMemory", lambda: nbp.used_memory)
    g.gauge("RequestedMemoryUsage", lambda: nbp.estimated_requested_segments_usage)
    return g


# -- the server's peers (flinknet's own) -------------------------------------------------------

def register_transport_metrics(group: MetricGroup, server: TransportServer) -> MetricGroup:
    """``<scope>.Shuffle.Netty.Server.{connections, handshaking, handshakesFailed,
    pendingRequests}`` and ``…Server.limitHits.<bound>`` (peers closed, or for
    ``maxUnsentBytes`` on the Python I/O thread paused, by each per-peer bound; the names map to
    configuration keys in :data:`LIMIT_KEYS`). The server is ``NetworkEnvironment.server``."""
    g = group.add_group("Shuffle").add_group("Netty").add_group("Server")
    g.gauge("connections", lambda: len(server.connections))
    g.gauge("handshaking", lambda: server.num_handshaking)
    g.gauge("handshakesFailed", lambda: server.handshakes_failed)
    g.gauge("pendingRequests", lambda: server.partition_manager.num_pending_requests)
    hits = g.add_group("limitHits")
    for name, key in LIMIT_KEYS.items():
        hits.gauge(name, functools.partial(server.limit_hits.__getitem__, key))
    return g
