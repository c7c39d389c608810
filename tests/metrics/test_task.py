"""Task I/O metrics (Flink's TaskIOMetricGroup) against hand-computed scenarios.

Timer gauges are driven with ``MetricRegistry(start=False)`` and explicit ``update()`` calls:
a window's value is read right after the state it measures (blocked, waiting, idle) held for
the whole window, so no assertion depends on how fast this machine is.
"""

from __future__ import annotations

import threading
import time

import pytest

from flinknet.consumer import RecordReader
from flinknet.environment import NetworkEnvironment
from flinknet.errors import CancelTaskError, IllegalStateError
from flinknet.metrics import MetricRegistry, TaskIOMetrics, TimerGauge
from flinknet.writer import RecordWriter

SEG = 4096
OPTS = {"taskmanager.memory.segment-size": "4kb", "taskmanager.memory.network.max": "4mb"}
FULL = b"x" * (SEG - 4)          # one record fills exactly one buffer


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.005)
    return pred()


def _task(reg, name="T", index=0, **kw):
    return TaskIOMetrics(reg.task_group(name, index), **kw)


def _get(snap, suffix):
    # the identifier's part after the task scope (<host>.taskmanager.<tm>.<job>.<task>.0.)
    hits = [v for k, v in snap.items() if k.split(".0.", 1)[1] == suffix]
    assert len(hits) == 1, (suffix, hits)
    return hits[0]


def test_counters_of_a_local_exchange():
    reg = MetricRegistry(update_interval=1, start=False)
    with NetworkEnvironment(OPTS) as env:
        p = env.create_result_partition(2)
        gate = env.create_input_gate([(p.partition_id, 0), (p.partition_id, 1)])
        out_m, in_m = _task(reg, "Source"), _task(reg, "Sink")
        with RecordWriter(p, timeout=-1) as w:
            out_m.register_writer(w)
            for i in range(10):
                w.emit(b"r%03d" % i, i % 2)           # 10 records of 4 + 4 bytes
            w.emit(FULL, 0)                            # does not fit: finishes sp 0's buffer
            w.flush_all()
            p.finish()
        with RecordReader(gate) as r:
            in_m.register_reader(r)
            records = list(r)
        assert len(records) == 11
        snap = reg.update()
        src = "localhost.taskmanager.tm-0.job.Source.0."
        sink = "localhost.taskmanager.tm-0.job.Sink.0."
        assert snap[src + "numRecordsOut"] == 11
        # finished data buffers: sp0 [5 small], [FULL], sp1 [5 small]
        assert snap[src + "numBuffersOut"] == 3
        assert snap[src + "numBytesOut"] == 10 * 8 + SEG
        assert snap[sink + "numRecordsIn"] == 11
        # numBytesIn counts every buffer the gate returned: data + EndOfPartition events (4 B)
        assert snap[sink + "numBytesIn"] == 10 * 8 + SEG + 2 * 4
        assert snap[sink + "numBytesInLocal"] == snap[sink + "numBytesIn"]
        assert snap[sink + "numBytesInRemote"] == 0
        assert snap[sink + "numBuffersInLocal"] == 3 + 2
        assert snap[sink + "numBuffersInRemote"] == 0
        # the Shuffle.Netty input group carries the local/remote counters too
        assert snap[sink + "Shuffle.Netty.Input.numBuffersInLocal"] == 5
        # meters: one 1-second bucket of a 60 s window (Flink's MeterView divides by the span)
        assert snap[src + "numRecordsOutPerSecond"] == pytest.approx(11 / 60)
        out_m.close()
        in_m.close()
        gate.close()
    reg.close()


def test_remote_bytes_and_buffers_are_counted_as_remote():
    reg = MetricRegistry(update_interval=1, start=False)
    with NetworkEnvironment(OPTS) as prod, NetworkEnvironment(OPTS) as cons:
        p = prod.create_result_partition(1)
        gate = cons.create_input_gate([(p.partition_id, 0, prod.address)])
        m = _task(reg, "Sink")
        with RecordWriter(p, timeout=-1) as w:
            for _ in range(7):
                w.emit(FULL, 0)
            p.finish()
        with RecordReader(gate) as r:
            m.register_reader(r)
            assert sum(1 for _ in r) == 7
        snap = reg.update()
        assert _get(snap, "numBuffersInRemote") == 7 + 1          # + EndOfPartition
        assert _get(snap, "numBytesInRemote") == 7 * SEG + 4
        assert _get(snap, "numBytesInLocal") == 0
        assert _get(snap, "numRecordsIn") == 7
        m.close()
        gate.close()
    reg.close()


def test_output_queue_size_follows_flinks_definition():
    """Bytes written (records with their length prefix, events × subpartitions) minus bytes
    polled, as BufferWritingResultPartitionTest#testSizeOfQueuedBuffers."""
    reg = MetricRegistry(update_interval=1, start=False)
    with NetworkEnvironment(OPTS) as env:
        p = env.create_result_partition(2)
        m = _task(reg, "Source")
        key = "Shuffle.Netty.Output.Buffers.outputQueueSize"
        with RecordWriter(p, timeout=-1) as w:
            m.register_writer(w)
            w.emit(b"abc", 0)
            assert _get(reg.snapshot(), key) == 7
            w.emit(b"abc", 1)
            assert _get(reg.snapshot(), key) == 14
            w.broadcast_event(_end_of_partition())        # 4 bytes into each subpartition
            assert _get(reg.snapshot(), key) == 22
            w.broadcast_emit(b"0123456")                   # 11 bytes × 2
            assert _get(reg.snapshot(), key) == 44
            sp0 = p.subpartitions[0]
            polled = sp0.poll_buffer()                     # the 7-byte record buffer
            assert polled.buffer.size == 7
            polled.buffer.recycle()
            assert _get(reg.snapshot(), key) == 37
            polled = sp0.poll_buffer()                     # the event
            assert polled.buffer.size == 4
            polled.buffer.recycle()
            assert _get(reg.snapshot(), key) == 33
            p.release()
        m.close()
    reg.close()


def _end_of_partition():
    from flinknet.events import EndOfPartitionEvent

    return EndOfPartitionEvent()


def test_hard_back_pressure_is_high_while_the_consumer_stalls_and_ok_after():
    reg = MetricRegistry(update_interval=1, start=False)
    with NetworkEnvironment(OPTS) as prod, NetworkEnvironment(OPTS) as cons:
        p = prod.create_result_partition(1)
        gate = cons.create_input_gate([(p.partition_id, 0, prod.address)])
        gate.request_partitions()
        m = _task(reg, "Source", time_span_seconds=1)
        stalled = threading.Event()
        resume = threading.Event()
        done = threading.Event()
        errors = []

        def produce():
            try:
                with RecordWriter(p, timeout=-1) as w:
                    m.register_writer(w)
                    for _ in range(400):                  # far more than both sides buffer
                        w.emit(FULL, 0)
                    w.flush_all()
                    p.finish()
            except BaseException as err:  # noqa: BLE001
                errors.append(err)
            finally:
                done.set()

        t = threading.Thread(target=produce)
        t.start()
        hard = m.hard_back_pressured_time
        assert _wait(lambda: hard.is_measuring)           # the emit blocks: no buffer
        reg.update()                                      # window starts while blocked
        time.sleep(1.0)
        snap = reg.update()                               # a whole window blocked
        assert hard.is_measuring and not done.is_set()
        assert _get(snap, "hardBackPressuredTimeMsPerSecond") >= 900
        assert _get(snap, "backPressuredTimeMsPerSecond") >= 900
        assert _get(snap, "maxHardBackPressureTimeMs") >= 900
        assert _get(snap, "softBackPressuredTimeMsPerSecond") == 0
        assert m.back_pressure_level == "HIGH"
        assert m.is_back_pressured
        stalled.set()
        with RecordReader(gate) as r:
            assert sum(1 for _ in r) == 400
        t.join(30)
        assert not errors and done.is_set()
        reg.update()                                      # closes the window with the last block
        snap = reg.update()                               # a window with no blocking at all
        assert _get(snap, "hardBackPressuredTimeMsPerSecond") == 0
        assert m.back_pressure_level == "OK"
        assert _get(snap, "accumulateBackPressuredTimeMs") >= 900
        assert resume is not None
        m.close()
        gate.close()
    reg.close()


def test_soft_back_pressure_is_timed_by_wait_available():
    reg = MetricRegistry(update_interval=1, start=False)
    with NetworkEnvironment(OPTS) as env:
        p = env.create_result_partition(1)
        m = _task(reg, "Source", time_span_seconds=1)
        with RecordWriter(p, timeout=-1) as w:
            m.register_writer(w)
            assert w.wait_available(0) is True            # available: returns at once
            while w.is_available:                       # fill the subpartition up to its cap
                w.emit(FULL, 0)
            reg.update()
            t0 = time.monotonic()
            assert w.wait_available(timeout=0.3) is False
            assert time.monotonic() - t0 >= 0.29
            snap = reg.update()
            assert _get(snap, "softBackPressuredTimeMsPerSecond") >= 250
            assert _get(snap, "maxSoftBackPressureTimeMs") >= 250
            assert _get(snap, "hardBackPressuredTimeMsPerSecond") == 0
            # a consumer taking buffers makes the writer available again
            sp = p.subpartitions[0]
            threading.Timer(0.05, lambda: [sp.poll_buffer().buffer.recycle() for _ in range(3)]).start()
            assert w.wait_available(timeout=10) is True
            with pytest.raises(ValueError):
                w.wait_available(-1)
            p.release()
            with pytest.raises(CancelTaskError):
                w.wait_available(1)                       # released: an error, never a hang
        m.close()
    reg.close()


def test_idle_time_and_busy_time():
    reg = MetricRegistry(update_interval=1, start=False)
    with NetworkEnvironment(OPTS) as env:
        p = env.create_result_partition(1)
        gate = env.create_input_gate([(p.partition_id, 0)])
        m = _task(reg, "Sink", time_span_seconds=1)
        with RecordReader(gate) as r:
            m.register_reader(r)
            got = []
            t = threading.Thread(target=lambda: got.append(r.read_batch(timeout=30)))
            t.start()
            assert _wait(lambda: m.idle_time.is_measuring)  # the reader waits for input
            reg.update()
            time.sleep(1.0)
            snap = reg.update()
            assert _get(snap, "idleTimeMsPerSecond") >= 900
            assert _get(snap, "busyTimeMsPerSecond") <= 100
            with RecordWriter(p, timeout=0) as w:
                w.emit(b"wake", 0)
            t.join(10)
            assert got == [[b"wake"]]
            assert not m.idle_time.is_measuring
            assert _get(reg.snapshot(), "accumulateIdleTimeMs") >= 900
            p.release()
        m.close()
        gate.close()
    reg.close()


def test_union_gate_waits_count_once_as_idle():
    from flinknet.consumer import UnionInputGate

    reg = MetricRegistry(update_interval=1, start=False)
    with NetworkEnvironment(OPTS) as env:
        p1, p2 = env.create_result_partition(1), env.create_result_partition(1)
        g1 = env.create_input_gate([(p1.partition_id, 0)], gate_index=0)
        g2 = env.create_input_gate([(p2.partition_id, 0)], gate_index=1)
        union = UnionInputGate(g1, g2)
        m = _task(reg, "Sink")
        with RecordReader(union) as r:
            m.register_reader(r)
            assert union.idle_timer is m.idle_time
            assert g1.idle_timer is None and g2.idle_timer is None   # members never block
            for p in (p1, p2):
                with RecordWriter(p, timeout=-1) as w:
                    w.emit(b"abcd", 0)
                p.finish()
            assert sorted(r) == [b"abcd", b"abcd"]
        snap = reg.update()
        assert _get(snap, "numBuffersInLocal") == 4               # 2 data + 2 EndOfPartition
        m.close()
        assert union.idle_timer is None
        union.close()
    reg.close()


def test_detailed_metrics_per_gate_and_partition():
    reg = MetricRegistry(update_interval=1, start=False)
    with NetworkEnvironment(OPTS) as prod, NetworkEnvironment(OPTS) as cons:
        p = prod.create_result_partition(3)
        gate = cons.create_input_gate([(p.partition_id, i, prod.address) for i in range(3)])
        src, sink = _task(reg, "Source", detailed=True), _task(reg, "Sink", detailed=True)
        with RecordWriter(p, timeout=-1) as w:
            src.register_writer(w)
            for _ in range(4):
                w.emit(FULL, 0)
            w.emit(FULL, 1)
            w.emit(b"tail", 2)                        # unfinished: queued, not sent
            snap = reg.update()
            out = "localhost.taskmanager.tm-0.job.Source.0.Shuffle.Netty.Output.0."
            # nothing is requested yet: every subpartition still holds its buffers (sp2 its tail)
            assert snap[out + "maxQueueLen"] >= 1 and snap[out + "minQueueLen"] >= 0
            assert snap[out + "totalQueueLen"] == sum(
                sp.number_of_queued_buffers for sp in p.subpartitions)
            w.flush_all()
            # Requested once everything is written, so that sp0's first buffers carry its backlog
            # (a receiver with exclusive credit learns the backlog only from the buffers it gets).
            gate.request_partitions()
            with RecordReader(gate) as r:
                sink.register_reader(r)
                ch = gate.input_channels
                assert _wait(lambda: [c.number_of_queued_buffers for c in ch] == [4, 1, 1])
                snap = reg.update()
                inp = "localhost.taskmanager.tm-0.job.Sink.0.Shuffle.Netty.Input.0."
                assert snap[inp + "totalQueueLen"] == 6
                assert snap[inp + "maxQueueLen"] == 4
                assert snap[inp + "minQueueLen"] == 1
                assert snap[inp + "avgQueueLen"] == pytest.approx(2.0)
                p.release()
        src.close()
        sink.close()
        gate.close()
    reg.close()


def test_validation_and_close():
    reg = MetricRegistry(start=False)
    with pytest.raises(TypeError):
        TaskIOMetrics("not a group")
    with pytest.raises(ValueError):
        TaskIOMetrics(reg.task_group("T", 0), time_span_seconds=0)
    with pytest.raises(ValueError):
        reg.task_group("T", -1)
    m = TaskIOMetrics(reg.task_group("T", 0))
    with pytest.raises(TypeError):
        m.register_writer(object())
    with pytest.raises(TypeError):
        m.register_reader(object())
    with pytest.raises(TypeError):
        m.register_gate(object())
    assert isinstance(m.idle_time, TimerGauge)
    assert m.back_pressure_level == "OK" and not m.is_back_pressured
    assert "localhost.taskmanager.tm-0.job.T.0.busyTimeMsPerSecond" in reg.snapshot()
    with NetworkEnvironment(OPTS) as env:
        p = env.create_result_partition(1)
        with RecordWriter(p, timeout=-1) as w:
            m.register_writer(w)
            with pytest.raises(ValueError):
                m.register_writer(w)
            assert w.soft_back_pressure_timer is m.soft_back_pressured_time
            assert p.record_serializer.back_pressure_timer is m.hard_back_pressured_time
            m.close()
            m.close()                                     # idempotent
            assert w.soft_back_pressure_timer is None
            assert p.record_serializer.back_pressure_timer is None
            assert reg.snapshot() == {}
            with pytest.raises(IllegalStateError):
                m.register_writer(w)
            p.release()
    reg.close()


def test_back_pressure_status_per_subtask_and_vertex():
    reg = MetricRegistry(update_interval=1, start=False)
    ms = {(name, i): _task(reg, name, i) for name, n in (("Source", 3), ("Sink", 1)) for i in range(n)}
    # drive the timers by hand with explicit clock values: Source.1 hard back-pressured 600 of
    # 1000 ms, Source.2 soft 50 ms, the sink idle 700 ms
    def hold(timer, ms_):
        timer.mark_start(now=1)
        timer.mark_end(now=1 + ms_)

    hold(ms[("Source", 1)].hard_back_pressured_time, 600)
    hold(ms[("Source", 2)].soft_back_pressured_time, 50)
    hold(ms[("Sink", 0)].idle_time, 700)
    reg.update()
    status = reg.back_pressure_status()
    src = status["Source"]
    assert src["backpressure_level"] == "HIGH"
    assert src["max_back_pressure_ratio"] == pytest.approx(0.6)
    levels = [(s["subtask"], s["backpressure_level"], s["back_pressure_ratio"]) for s in src["subtasks"]]
    assert levels == [(0, "OK", 0.0), (1, "HIGH", 0.6), (2, "OK", 0.05)]
    assert src["subtasks"][1]["busy_ratio"] == pytest.approx(0.4)
    sink = status["Sink"]
    assert sink["backpressure_level"] == "OK"
    assert sink["subtasks"][0]["idle_ratio"] == pytest.approx(0.7)
    assert sink["subtasks"][0]["busy_ratio"] == pytest.approx(0.3)
    for m in ms.values():
        m.close()
    assert reg.back_pressure_status() == {}
    reg.close()
