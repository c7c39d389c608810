"""The cross-process benchmark's machinery (not its speed: timings never gate tests)."""

from __future__ import annotations

import pytest

from flinknet.tools.bench import transport


@pytest.mark.parametrize("size, api", [(8, "numpy"), (100, "batch"), (1000, "per-record"), (32768, "batch")])
def test_remote_run_moves_every_record(size, api):
    # run_remote raises unless exactly n records arrived and the consumer's pool is whole
    assert transport.run_remote(size, 3000 if size < 32768 else 200, api) > 0


def test_remote_run_moves_every_record_beside_a_busy_python_thread():
    # a pure-Python thread spins in the consumer's process for the transfer: the native I/O
    # thread keeps receiving without the GIL, the reader still reads every record
    assert transport.run_remote(1000, 3000, "batch", busy=1) > 0
    assert transport.run_remote(1000, 3000, "batch", producer_busy=1) > 0   # the producer's side


def test_latency_run_returns_one_delay_per_record():
    delays = transport.run_remote(100, 500, "latency", timeout_ms=0, rate=5000)
    assert len(delays) == 500 and all(d > 0 for d in delays)


def test_raw_socket_baselines():
    assert transport.raw_socket_ns_per_byte(8 << 20, transport.CHUNK) > 0
    rtts = transport.raw_round_trip_us(50)
    assert len(rtts) == 50 and min(rtts) > 0


@pytest.mark.parametrize("api", ["asyncio", "asyncio-batch", "uvloop", "uvloop-batch"])
def test_remote_run_read_on_an_asyncio_loop_moves_every_record(api):
    assert transport.run_remote(100, 5000, api) > 0


def test_a_paced_run_of_any_api_moves_every_record_and_reports_the_reading_threads_cpu():
    stats: dict = {}
    assert transport.run_remote(100, 300, "asyncio-batch", timeout_ms=0, rate=5000, stats=stats) > 0.05
    assert 0 < stats["consumer_task_cpu_s"] <= stats["consumer_cpu_s"]
    with pytest.raises(ValueError, match="rate"):
        transport.run_remote(100, 10, "latency")


def test_asyncio_rows_compare_with_the_threaded_reader_of_the_same_run():
    rows = transport.bench_asyncio_reading(quick=True, repeats=1, records=2000)
    assert [r.name for r in rows] == [
        "remote.100B.asyncio.per-record", "remote.100B.asyncio.batch", "remote.100B.asyncio.wait",
        "remote.100B.uvloop.per-record", "remote.100B.uvloop.batch", "remote.100B.uvloop.wait"]
    for row in rows:
        wait = row.name.endswith(".wait")
        assert row.unit == ("us/rec" if wait else "ns/rec") and row.value > 0
        assert list(row.baselines) == [transport.THREADED_READER, *([transport.LOOP_WAKE_FLOOR] if wait else [])]
        assert all(b > 0 for b in row.baselines.values())


def test_an_asyncio_rows_ratio_is_the_median_of_its_alternated_pairs_ratios(monkeypatch):
    # run_remote replaced by a clock whose load changes between pairs: the pairs' ratios are
    # 1.0, 1.2 and 1.1 (median 1.1), while the medians of each side would give 60/50 = 1.2
    times = iter([50.0, 50.0, 72.0, 60.0, 30.0, 33.0])     # pair 2 runs the loop first
    calls = []

    def fake_run_remote(size, n, api, **kw):
        calls.append((size, n, api))
        return next(times)

    monkeypatch.setattr(transport, "run_remote", fake_run_remote)
    row = transport._async_pair_row("asyncio", "asyncio-batch", "batch", 1000, 3000, 3)
    assert [c[2] for c in calls] == ["batch", "asyncio-batch", "asyncio-batch", "batch",
                                     "batch", "asyncio-batch"]
    assert {c[:2] for c in calls} == {(1000, 3000)}
    assert row.name == "remote.1000B.asyncio.batch"
    base = row.baselines[transport.THREADED_READER]
    assert base == pytest.approx(50.0 / 3000 * 1e9)
    assert row.value / base == pytest.approx(1.1)
    assert "median of 3 alternated pairs 1.10x, pairs 1.00-1.20x" in row.note


def test_full_asyncio_rows_add_the_batch_row_of_each_extra_size():
    rows = transport.bench_asyncio_reading(repeats=1, records=1000, sizes=(1000,))
    names = [r.name for r in rows]
    assert "remote.1000B.asyncio.batch" in names and "remote.1000B.uvloop.batch" in names
    assert all(r.value > 0 for r in rows if r.name.startswith("remote.1000B."))


@pytest.mark.parametrize("loop_name", [None, "asyncio", "uvloop"])
def test_a_bare_wake_up_costs_the_waiting_thread_some_cpu(loop_name):
    assert 0 < transport.bare_wake_us(loop_name, 200) < 1e5


def test_window_rows_compare_with_flinks_window_of_the_same_run_and_the_peers():
    peers = {100: ({"hand-written loop": 50.0}, {"flight columnar": 20.0})}
    rows = transport.bench_credit_window(repeats=1, floating=16, peer_baselines=peers, records=3000)
    assert [r.name for r in rows] == ["remote.100B.batch.floating16", "remote.100B.numpy.floating16",
                                      "remote.1000B.batch.floating16", "remote.32768B.batch.floating16"]
    for row in rows:
        assert row.unit == "ns/rec" and row.value > 0 and row.baselines[transport.FLINK_WINDOW] > 0
        assert "2 + 16 buffers" in row.note
    assert rows[0].baselines["hand-written loop"] == 50.0 and "flight columnar" not in rows[0].baselines
    assert rows[1].baselines["flight columnar"] == 20.0 and "hand-written loop" not in rows[1].baselines
    assert list(rows[2].baselines) == [transport.FLINK_WINDOW]
