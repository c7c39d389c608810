"""Latency markers: in-band with records (never overtaking them), histograms per granularity."""

from __future__ import annotations

import threading

import pytest

from flinknet._core.elements import LatencyMarker, StreamElementSerializer, StreamRecord
from flinknet.consumer import RecordReader
from flinknet.environment import NetworkEnvironment
from flinknet.ids import OperatorID
from flinknet.metrics import (
    Histogram,
    LatencyMarkerEmitter,
    LatencyStats,
    MetricRegistry,
    forward_latency_marker,
)
from flinknet.writer import RecordWriter

OPTS = {"taskmanager.memory.segment-size": "4kb", "taskmanager.memory.network.max": "4mb"}


def _stream(env, n=1):
    return env.create_result_partition(n, serializer=StreamElementSerializer("bytes"))


def test_markers_never_overtake_records_on_their_channel():
    with NetworkEnvironment(OPTS) as prod, NetworkEnvironment(OPTS) as cons:
        p = _stream(prod, 3)
        gate = cons.create_input_gate([(p.partition_id, i, prod.address) for i in range(3)])
        op = OperatorID.generate()
        sent = {0: [], 1: [], 2: []}
        before_marker = {}
        with RecordWriter(p, timeout=5) as w:
            for i in range(3000):
                target = i % 3
                w.emit(StreamRecord(b"%06d" % i), target)
                sent[target].append(b"%06d" % i)
                if i % 100 == 99:
                    # a marker with a unique stamp, to a random channel (Flink's randomEmit)
                    stamp = i
                    before_marker[stamp] = {k: len(v) for k, v in sent.items()}
                    forward_latency_marker(w, LatencyMarker(stamp, op.lower_part, op.upper_part, 2))
            p.finish()
        with RecordReader(gate, serializer=StreamElementSerializer("bytes")) as r:
            seen = {0: [], 1: [], 2: []}
            got_markers = []
            while True:
                batch = r.read_batch(timeout=30)
                if batch is None:
                    break
                ch = r.last_channel_info.input_channel_idx
                for e in batch:
                    if type(e) is LatencyMarker:
                        got_markers.append((e, ch, len(seen[ch])))
                    else:
                        seen[ch].append(e.value)
        assert seen == sent
        assert sorted(m.marked_time for m, _, _ in got_markers) == sorted(before_marker)
        channels_used = set()
        for got, ch, position in got_markers:
            assert got.operator_id_lower == op.lower_part and got.subtask_index == 2
            # the marker sits exactly after the records emitted before it on its channel
            assert position == before_marker[got.marked_time][ch]
            channels_used.add(ch)
        assert len(channels_used) > 1                 # random channels, not always the same
        gate.close()


def test_latency_stats_granularities_and_percentiles():
    reg = MetricRegistry(start=False)
    job = reg.job_group("demo")
    me = OperatorID.from_parts(1, 2)
    src_a, src_b = OperatorID.from_parts(10, 0), OperatorID.from_parts(20, 0)
    stats = {g: LatencyStats(job.add_group(g), g, operator_id=me, subtask_index=3) for g in
             ("single", "operator", "subtask")}
    markers = [LatencyMarker(1000 - lat, src.lower_part, src.upper_part, sub)
               for lat, src, sub in [(1, src_a, 0), (2, src_a, 1), (3, src_b, 0), (4, src_a, 0),
                                     (5, src_b, 1)]]
    for s in stats.values():
        for m in markers:
            s.report_latency(m, now_ms=1000)
    snap = reg.snapshot()
    base = "localhost.taskmanager.tm-0.demo."
    tail = f"operator_id.{me}.operator_subtask_index.3.latency"
    single = snap[base + "single.latency." + tail]
    assert single["count"] == 5 and single["min"] == 1 and single["max"] == 5
    assert single["p50"] == 3.0 and single["mean"] == 3.0
    a = snap[base + f"operator.latency.source_id.{src_a}." + tail]
    b = snap[base + f"operator.latency.source_id.{src_b}." + tail]
    assert (a["count"], a["min"], a["max"]) == (3, 1, 4)
    assert (b["count"], b["min"], b["max"]) == (2, 3, 5)
    sub = {k: v for k, v in snap.items() if k.startswith(base + "subtask.")}
    assert len(sub) == 4                       # (a,0) (a,1) (b,0) (b,1)
    a0 = snap[base + f"subtask.latency.source_id.{src_a}.source_subtask_index.0." + tail]
    assert a0["count"] == 2 and a0["max"] == 4
    # variables for reporters' labels
    groups = {name: g for g, name, _ in reg.collect() if "source_subtask_index" in g.variables}
    assert groups and all(g.variables["operator_id"] == str(me) for g in groups.values())
    reg.close()


def test_histogram_window_and_quantiles():
    h = Histogram(4)
    for v in [10, 20, 30, 40, 50, 60]:
        h.update(v)
    s = h.get_statistics()
    assert s.count == 6 and s.size == 4
    assert s.values == (30, 40, 50, 60)           # the last window_size values, sorted
    # Commons Math's default (LEGACY) percentile: position q × (n + 1), interpolated
    assert s.get_quantile(0.5) == 45.0
    assert s.get_quantile(0.99) == 60.0
    assert s.get_quantile(0.1) == 30.0
    assert s.get_quantile(0.75) == pytest.approx(57.5)
    assert s.mean == 45.0
    assert Histogram().get_statistics().as_dict()["p50"] != Histogram().get_statistics().as_dict()["p50"]
    with pytest.raises(ValueError):
        Histogram(0)
    with pytest.raises(ValueError):
        s.get_quantile(1.5)


def test_markers_through_an_operator_to_a_sink_give_plausible_latencies():
    """source → (remote) → operator that reports and forwards → (local) → sink."""
    reg = MetricRegistry(start=False)
    with NetworkEnvironment(OPTS) as src_env, NetworkEnvironment(OPTS) as op_env:
        p1 = _stream(src_env)
        gate1 = op_env.create_input_gate([(p1.partition_id, 0, src_env.address)])
        p2 = _stream(op_env)
        gate2 = op_env.create_input_gate([(p2.partition_id, 0)])
        op_stats = LatencyStats(reg.job_group("j", tm_id="op"), "operator", subtask_index=0)
        sink_stats = LatencyStats(reg.job_group("j", tm_id="sink"), "subtask", subtask_index=0)
        errors = []

        def operator():
            try:
                with RecordReader(gate1, serializer=StreamElementSerializer("bytes")) as r, \
                        RecordWriter(p2, timeout=1) as w:
                    for e in r:
                        if type(e) is LatencyMarker:
                            op_stats.report_latency(e)
                            forward_latency_marker(w, e)
                        else:
                            w.emit(e)
                    p2.finish()
            except BaseException as err:  # noqa: BLE001
                errors.append(err)

        emitted = []

        def source():
            try:
                with RecordWriter(p1, timeout=1) as w:
                    em = LatencyMarkerEmitter(w, 0.001)
                    for i in range(2000):
                        w.emit(StreamRecord(b"x" * 100))
                        if i % 50 == 0:
                            em.maybe_emit()
                    p1.finish()
                    emitted.append(em.markers_emitted)
            except BaseException as err:  # noqa: BLE001
                errors.append(err)

        threads = [threading.Thread(target=operator), threading.Thread(target=source)]
        for t in threads:
            t.start()
        records = 0
        with RecordReader(gate2, serializer=StreamElementSerializer("bytes")) as r:
            for e in r:
                if type(e) is LatencyMarker:
                    sink_stats.report_latency(e)
                else:
                    records += 1
        for t in threads:
            t.join(30)
        assert not errors and records == 2000
        assert emitted == [40]
        (op_hist,) = op_stats.histograms().values()
        (sink_hist,) = sink_stats.histograms().values()
        s_op, s_sink = op_hist.get_statistics(), sink_hist.get_statistics()
        assert s_op.count == s_sink.count == 40
        for s in (s_op, s_sink):
            assert 0 <= s.min <= s.get_quantile(0.5) <= s.get_quantile(0.99) <= s.max < 30_000
        gate1.close()
        gate2.close()
    reg.close()


def test_validation():
    reg = MetricRegistry(start=False)
    with NetworkEnvironment(OPTS) as env:
        plain = env.create_result_partition(1)
        with RecordWriter(plain, timeout=-1) as w:
            with pytest.raises(ValueError, match="StreamElementSerializer"):
                LatencyMarkerEmitter(w, 100)
        plain.release()
        p = _stream(env)
        with RecordWriter(p, timeout=-1) as w:
            for bad in (0, -5, True, "1"):
                with pytest.raises(ValueError):
                    LatencyMarkerEmitter(w, bad)
            with pytest.raises(TypeError):
                LatencyMarkerEmitter(w, 100, operator_id=b"x" * 16)
            with pytest.raises(ValueError):
                LatencyMarkerEmitter(w, 100, subtask_index=-1)
            em = LatencyMarkerEmitter(w, 60_000)
            assert em.maybe_emit() is True          # the first call emits
            assert em.maybe_emit() is False         # then not before the interval
            with pytest.raises(TypeError):
                forward_latency_marker(w, StreamRecord(b"not a marker"))
        p.release()
    with pytest.raises(TypeError):
        LatencyMarkerEmitter(object(), 100)
    g = reg.job_group()
    with pytest.raises(ValueError):
        LatencyStats(g, "task")
    with pytest.raises(ValueError):
        LatencyStats(g, history_size=0)
    with pytest.raises(TypeError):
        LatencyStats("group")
    with pytest.raises(TypeError):
        LatencyStats(g).report_latency(StreamRecord(b"x"))
    reg.close()


def test_latency_markers_are_not_counted_as_records():
    from flinknet.metrics import TaskIOMetrics

    reg = MetricRegistry(start=False)
    with NetworkEnvironment(OPTS) as env:
        p = _stream(env, 2)
        gate = env.create_input_gate([(p.partition_id, 0), (p.partition_id, 1)])
        src = TaskIOMetrics(reg.task_group("Source", 0))
        sink = TaskIOMetrics(reg.task_group("Sink", 0))
        with RecordWriter(p, timeout=-1) as w:
            src.register_writer(w)
            em = LatencyMarkerEmitter(w, 1000)
            for i in range(100):
                w.emit(StreamRecord(b"r"), i % 2)
                if i % 10 == 0:
                    em.emit_now()
            p.finish()
        with RecordReader(gate, serializer=StreamElementSerializer("bytes")) as r:
            sink.register_reader(r)
            elements = list(r)
        assert len(elements) == 110
        assert r.serializer.latency_markers_read == 10
        snap = reg.update()
        assert snap["localhost.taskmanager.tm-0.job.Source.0.numRecordsOut"] == 100
        assert snap["localhost.taskmanager.tm-0.job.Sink.0.numRecordsIn"] == 100
        src.close()
        sink.close()
        gate.close()
    reg.close()
