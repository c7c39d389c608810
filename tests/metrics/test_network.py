"""The Shuffle.Netty gauges against hand-computed scenarios (§13 of the reference)."""

from __future__ import annotations

import time

import pytest

from flinknet.consumer import RecordReader
from flinknet.core import NetworkBufferPool
from flinknet.environment import NetworkEnvironment
from flinknet.metrics import (
    MetricRegistry,
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
)
from flinknet.partition import create_result_partition
from flinknet.writer import RecordWriter

SEG = 4096
FULL = b"x" * (SEG - 4)          # one record fills exactly one buffer (4-byte length + payload)


class _HasPool:
    def __init__(self, pool):
        self.buffer_pool = pool


def test_out_pool_usage_counts_overdraft_above_one():
    nbp = NetworkBufferPool(64, SEG)
    try:
        pool = nbp.create_buffer_pool(2, 4)
        pool.max_overdraft_buffers_per_gate = 2
        builders = [pool.request_buffer_builder() for _ in range(6)]     # 4 + 2 overdraft
        assert out_pool_usage([_HasPool(pool)]) == 6 / 4
        other = nbp.create_buffer_pool(2, 4)
        assert out_pool_usage([_HasPool(pool), _HasPool(other)]) == 6 / 8   # sums over pools
        for b in builders:
            b.close()
        assert out_pool_usage([_HasPool(pool), _HasPool(other)]) == 0.0
        assert out_pool_usage([]) == 0.0
        pool.lazy_destroy()
        other.lazy_destroy()
    finally:
        nbp.destroy()


def test_output_metrics_of_a_partition_without_consumer():
    nbp = NetworkBufferPool(64, SEG)
    try:
        p = create_result_partition(nbp, 2)
        p.setup()
        reg = MetricRegistry(start=False)
        register_output_metrics(reg.group("tm", "Source", "0"), [p])
        with RecordWriter(p, timeout=-1) as w:
            for _ in range(5):
                w.emit(FULL, 0)       # 5 finished buffers queued in subpartition 0
            w.emit(b"tail", 1)        # and an unfinished one in subpartition 1
        snap = reg.update()
        size = p.buffer_pool.num_buffers
        assert size == 2 * 2 + 8      # Flink's sizing: 2 per subpartition + 8 floating
        assert snap["tm.Source.0.Shuffle.Netty.Output.Buffers.outPoolUsage"] == 6 / size
        assert snap["tm.Source.0.Shuffle.Netty.Output.Buffers.outputQueueLength"] == 6
        assert output_queue_length([p]) == 6
        p.release()
        p.close()
        reg.close()
    finally:
        nbp.destroy()


def test_network_buffer_pool_metrics():
    nbp = NetworkBufferPool(10, SEG)
    try:
        reg = MetricRegistry(start=False)
        register_network_buffer_pool_metrics(reg.group("taskmanager", "tm-1"), nbp)
        segs = nbp.request_unpooled_memory_segments(3)
        snap = reg.update()
        prefix = "taskmanager.tm-1.Shuffle.Netty."
        assert {k[len(prefix):]: v for k, v in snap.items() if not k.endswith("Usage")} == {
            "TotalMemorySegments": 10, "AvailableMemorySegments": 7, "UsedMemorySegments": 3,
            "TotalMemory": 10 * SEG, "AvailableMemory": 7 * SEG, "UsedMemory": 3 * SEG}
        assert prefix + "RequestedMemoryUsage" in snap
        nbp.recycle_unpooled_memory_segments(segs)
    finally:
        nbp.destroy()


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.01)
    return pred()


def test_input_metrics_of_a_stalled_remote_channel():
    opts = {"taskmanager.memory.segment-size": "4kb", "taskmanager.memory.network.max": "2mb"}
    with NetworkEnvironment(opts) as prod, NetworkEnvironment(opts) as cons:
        p = prod.create_result_partition(1)
        gate = cons.create_input_gate([(p.partition_id, 0, prod.address)])
        reg = MetricRegistry(start=False)
        group = reg.group("tm", "Sink", "0")
        register_input_metrics(group, [gate])
        assert input_exclusive_buffers_usage([gate]) == 0.0 and input_queue_length([gate]) == 0
        with RecordWriter(p, timeout=-1) as w:
            for _ in range(30):       # far more than the channel's 2 exclusive + 8 floating
                w.emit(FULL, 0)
            # Requested after the writes, so the first buffers carry the backlog: as in Flink, a
            # receiver with exclusive credit learns the backlog only from the buffers it gets, so
            # buffers sent before the writer got ahead (a slow debug build) would announce none.
            gate.request_partitions()
            # the consumer reads nothing: every credit fills
            ch = gate.input_channels[0]
            assert _wait(lambda: ch.number_of_queued_buffers == 10)
            snap = reg.update()
            pre = "tm.Sink.0.Shuffle.Netty.Input.Buffers."
            assert snap[pre + "inputExclusiveBuffersUsage"] == 1.0          # 2 of 2
            assert snap[pre + "inputFloatingBuffersUsage"] == 1.0           # 8 of 8 in the queue
            assert snap[pre + "inPoolUsage"] == 1.0
            assert snap[pre + "inputQueueLength"] == 10
            assert snap[pre + "inputQueueSize"] == 10 * SEG
            # the task takes 3 buffers: 3 credits free up, the sender refills them
            with RecordReader(gate) as r:
                for _ in range(3):
                    assert r.read_batch(timeout=10) == [FULL]
                assert _wait(lambda: ch.number_of_queued_buffers == 10)
                assert in_pool_usage([gate]) == 1.0
                p.fail(RuntimeError("done"))
        gate.close()
        assert input_queue_length([gate]) == 0 and input_queue_size([gate]) == 0
        reg.close()


def test_floating_usage_discounts_idle_floating_buffers():
    opts = {"taskmanager.memory.segment-size": "4kb", "taskmanager.memory.network.max": "2mb"}
    with NetworkEnvironment(opts) as prod, NetworkEnvironment(opts) as cons:
        p = prod.create_result_partition(1)
        gate = cons.create_input_gate([(p.partition_id, 0, prod.address)])
        gate.request_partitions()
        ch = gate.input_channels[0]
        assert _wait(lambda: ch._client is not None)
        ch.on_sender_backlog(5)        # the sender announced a backlog: 5 floating buffers borrowed
        assert ch.floating_buffers_available == 5
        # borrowed but idle in the channel: not "used" (Flink's FloatingBuffersUsageGauge)
        assert input_floating_buffers_usage([gate]) == 0.0
        assert gate.buffer_pool.used_buffers == 5
        p.fail(RuntimeError("done"))
        gate.close()


@pytest.mark.parametrize("fn", [input_floating_buffers_usage, input_exclusive_buffers_usage, in_pool_usage])
def test_input_usage_without_remote_channels_is_zero(fn):
    assert fn([]) == 0.0


@pytest.mark.parametrize("native_io", [True, False])
def test_output_queue_size_drains_over_a_remote_consumer(native_io):
    """outputQueueSize (bytes written minus bytes handed to the reader) returns to 0 once a remote
    consumer read everything, whether the native engine or the Python I/O thread sends."""
    opts = {"taskmanager.memory.segment-size": "4kb", "taskmanager.memory.network.max": "2mb",
            "flinknet.network.native-io": "true" if native_io else "false"}
    with NetworkEnvironment(opts) as prod, NetworkEnvironment(opts) as cons:
        p = prod.create_result_partition(1)
        gate = cons.create_input_gate([(p.partition_id, 0, prod.address)])
        gate.request_partitions()
        with RecordWriter(p, timeout=-1) as w, RecordReader(gate) as r:
            n = 0
            for i in range(20):
                w.emit(FULL if i % 2 else b"small", 0)
            w.flush_all()
            while n < 20:
                n += len(r.read_batch(timeout=10))
            assert _wait(lambda: p.size_of_queued_buffers == 0)
            assert output_queue_size([p]) == 0
            p.fail(RuntimeError("done"))
        gate.close()
