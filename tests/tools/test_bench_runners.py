"""The runners benchmark group (``flinknet bench --only runners``) in a tiny configuration: the
rows come out with sane fields (no timing thresholds: the machine is shared), a missing Ray is a
row saying so, and the group stays out of the default set (so out of CI's bench gate)."""

from __future__ import annotations

import math

import pytest

from flinknet.tools.bench import runner, runners

TINY = 5_000


def _by_name(rows):
    names = [r.name for r in rows]
    assert len(names) == len(set(names)), names
    return {r.name: r for r in rows}


def test_tiny_group_on_threads_and_processes():
    rows = _by_name(runners.bench_runners(
        n_records=TINY, keyed_runners=("threads", "processes"), sizes=(1, 2),
        deploy_runners=("threads", "processes", "processes1"), repeats=1))
    assert set(rows) == {
        "runners.keyed.2-2-1.100B.threads", "runners.keyed.2-2-1.100B.processes",
        "runners.deploy.1.threads", "runners.deploy.1.processes",
        "runners.deploy.2.threads", "runners.deploy.2.processes", "runners.deploy.2.processes1"}
    for row in rows.values():
        assert math.isfinite(row.value) and row.value > 0, row
        assert all(math.isfinite(v) and v > 0 for v in row.baselines.values()), row
        assert all(r is not None and r > 0 for r in row.ratios().values()), row

    threads, procs = rows["runners.keyed.2-2-1.100B.threads"], rows["runners.keyed.2-2-1.100B.processes"]
    assert threads.unit == procs.unit == "ns/rec"
    assert threads.baselines == {}                                # the baseline itself
    assert procs.baselines == {"ThreadRunner": threads.value}     # measured in the same run
    assert "M records/s" in procs.note and "ThreadRunner's speed" in procs.note
    assert "5 worker(s)" in procs.note and f"{TINY} records" in threads.note

    for n in (1, 2):
        base = rows[f"runners.deploy.{n}.threads"]
        assert base.unit == "ms" and base.baselines == {}
        assert rows[f"runners.deploy.{n}.processes"].baselines == {"ThreadRunner": base.value}
        assert "wall" in base.note and "of network memory each" in base.note
    assert "2 workers" in rows["runners.deploy.2.processes"].note
    assert "ProcessRunner(processes=1)" in rows["runners.deploy.2.processes1"].note


def test_a_missing_ray_is_a_row_saying_so(monkeypatch):
    monkeypatch.setattr(runners, "ray_missing", lambda: "no module named 'ray'")
    rows = runners.bench_runners(n_records=TINY, keyed_runners=("ray",), sizes=(1,), deploy_runners=("ray",))
    assert [r.name for r in rows] == ["runners.keyed.2-2-1.100B.ray", "runners.deploy.1.ray"]
    for row in rows:
        assert math.isnan(row.value) and row.baselines == {}
        assert "not measured" in row.note and "no module named 'ray'" in row.note
        assert row.to_json()["value"] is None


def test_one_small_ray_row():
    pytest.importorskip("ray")
    (row,) = runners.bench_runners(keyed_runners=(), sizes=(1,), deploy_runners=("ray",), repeats=1)
    assert row.name == "runners.deploy.1.ray" and row.unit == "ms"
    assert math.isfinite(row.value) and row.value > 0
    assert "RayRunner" in row.note and "1 worker" in row.note


def test_minimum_network_memory_is_what_the_subtasks_need():
    seg = 32 * 1024
    g = runners.deploy_graph(64)
    # one subtask per worker: a sink's gate has 32 remote channels, 2 exclusive buffers each, plus
    # one floating buffer (so "2mb", 64 buffers, is one short); a source's partition 32 + 1
    assert runners.minimum_network_memory(g, 64) == 65 * seg
    # one worker: 32 partitions of 33, the gates' channels all local (no buffers)
    assert runners.minimum_network_memory(g, 1) == 32 * 33 * seg
    # 4 workers: 8 sources (8 x 33) and 8 sinks reading 24 remote channels (8 x 49)
    assert runners.minimum_network_memory(g, 4) == (8 * 33 + 8 * 49) * seg
    assert runners.minimum_network_memory(runners.deploy_graph(1), 1) == 0
    with pytest.raises(ValueError, match="even"):
        runners.deploy_graph(3)


def test_the_group_runs_only_when_named():
    # ci/bench_gate.py runs `flinknet bench --quick` without --only (the default GROUPS) and
    # retries only groups of rows it has: the runners group never runs in CI's gate.
    assert "runners" in runner.EXTRA_GROUPS and "runners" not in runner.GROUPS
    assert "runners" in runner._SUITES
