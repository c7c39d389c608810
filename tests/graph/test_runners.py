"""Runners end to end: a 3-stage keyed job with an exact count on each runner, failures named
with a root cause, a killed worker, timeouts, nothing left running."""

from __future__ import annotations

import time

import psutil
import pytest

from flinknet.errors import CancelTaskError
from flinknet.graph import (
    GraphValidationError,
    JobFailedError,
    JobGraph,
    ProcessRunner,
    ThreadRunner,
    WorkerLostError,
)
from tests.graph import jobs

SMALL = {"taskmanager.memory.network.max": "4mb"}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:    # (gone between the listing and the look: it exited)
        return False


def _gone(pids: list[int]) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return True
        time.sleep(0.05)
    return False


RUNNERS = [
    pytest.param(lambda: ThreadRunner(SMALL), id="threads"),
    pytest.param(lambda: ProcessRunner(config=SMALL), id="processes"),
    pytest.param(lambda: ProcessRunner(processes=2, config=SMALL), id="two-processes"),
]


@pytest.mark.parametrize("make", RUNNERS)
def test_three_stage_keyed_job_counts_every_key_exactly_once(make):
    runner = make()
    result = runner.run(jobs.three_stage(), jobs.FUNCTIONS, timeout=120)
    (totals,) = result.results("sink")
    jobs.check_exact(totals)
    assert sum(result.results("source")) == jobs.N_RECORDS
    assert result.num_records_out("source") == jobs.N_RECORDS == result.num_records_in("count")
    assert result.num_records_out("count") == jobs.N_KEYS == result.num_records_in("sink")
    assert sum(result.results("count")) == jobs.N_KEYS          # each key counted by one subtask
    task = result.tasks[("count", 0)]
    assert task.task_name == "count (1/3)" and task.metrics["numRecordsIn"] == task.num_records_in
    assert result.deploy_s > 0 and result.run_s > 0
    assert result.leaky_workers == []                         # every worker's network memory came back
    if isinstance(runner, ProcessRunner):
        assert len(runner.last_pids) == (6 if runner.processes is None else 2)
        assert _gone(runner.last_pids)


@pytest.mark.parametrize("make", RUNNERS)
def test_named_edges_and_union(make):
    g = JobGraph("named")
    src = g.add_vertex("split", 1)
    j = g.add_vertex("join", 1)
    u = g.add_vertex("union", 1)
    g.connect(src, j, "forward", name="evens")
    g.connect(src, j, "forward", name="odds")
    # a second split feeding a union of two inputs
    src2 = g.add_vertex("split2", 1)
    g.connect(src2, u, "forward", name="evens")
    g.connect(src2, u, "forward", name="odds")
    result = make().run(g, {"split": jobs.split, "split2": jobs.split, "join": jobs.join_two,
                            "union": jobs.union_all}, timeout=120)
    assert result.results("join") == [(sum(range(0, 1000, 2)), sum(range(1, 1000, 2)), 2)]
    assert result.results("union") == [sum(range(1000))]


@pytest.mark.parametrize("make", RUNNERS)
def test_a_failing_task_fails_the_job_with_its_error_as_root_cause(make):
    runner = make()
    started = time.monotonic()
    with pytest.raises(JobFailedError) as info:
        runner.run(jobs.three_stage(), {**jobs.FUNCTIONS, "count": jobs.failing_count}, timeout=120)
    err = info.value
    assert time.monotonic() - started < 60
    assert err.root_cause is not None and err.root_cause.task_name == "count (2/3)"
    assert err.root_cause.error_type == "ValueError" and "bad record in count (2/3)" in err.root_cause.message
    assert isinstance(err.__cause__, ValueError)
    assert "count (2/3)" in str(err) and "ValueError" in str(err)
    # the other tasks were cancelled or saw the failure; none is blamed
    assert all(f.is_consequence for f in err.failures if f is not err.root_cause)
    if isinstance(runner, ProcessRunner):
        assert "pid" in err.root_cause.worker
        assert _gone(runner.last_pids)


def test_a_killed_worker_fails_the_job_naming_it_and_nothing_is_left_running():
    runner = ProcessRunner(config=SMALL)
    started = time.monotonic()
    with pytest.raises(JobFailedError) as info:
        runner.run(jobs.three_stage(), {**jobs.FUNCTIONS, "count": jobs.dying_count}, timeout=120)
    err = info.value
    assert time.monotonic() - started < 60
    assert err.root_cause is not None and err.root_cause.task_name == "count (1/3)"
    assert isinstance(err.root_cause.exception, WorkerLostError)
    assert "signal 9" in err.root_cause.message and "count (1/3)" in err.root_cause.message
    assert _gone(runner.last_pids)


@pytest.mark.parametrize("make", [RUNNERS[0], RUNNERS[1]])
def test_timeout_cancels_everything(make):
    runner = make()
    g = JobGraph("stuck")
    g.connect(g.add_vertex("source", 1), g.add_vertex("sink", 1))
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="did not finish within 3"):
        runner.run(g, {"source": jobs.endless_source, "sink": jobs.stuck_sink}, timeout=3)
    assert time.monotonic() - started < 60
    if isinstance(runner, ProcessRunner):
        assert _gone(runner.last_pids)


@pytest.mark.parametrize("make", RUNNERS[:2])
def test_result_that_does_not_pickle_is_a_clear_failure_across_processes(make):
    g = JobGraph("lambda")
    g.connect(g.add_vertex("source", 1), g.add_vertex("sink", 1))
    runner = make()
    if isinstance(runner, ThreadRunner):
        result = runner.run(g, {"source": jobs.source, "sink": jobs.unpicklable_result}, timeout=60)
        assert callable(result.results("sink")[0])
        return
    with pytest.raises(JobFailedError, match="sink"):
        runner.run(g, {"source": jobs.source, "sink": jobs.unpicklable_result}, timeout=60)


def test_bad_arguments_fail_before_anything_starts():
    g = jobs.three_stage()
    with pytest.raises(KeyError, match="no function for vertex"):
        ThreadRunner().run(g, {"source": jobs.source})
    with pytest.raises(KeyError, match="'nope', which is not a vertex"):
        ProcessRunner().run(g, {**jobs.FUNCTIONS, "nope": jobs.source})
    with pytest.raises(TypeError, match="must be callable"):
        ThreadRunner().run(g, {**jobs.FUNCTIONS, "sink": 3})
    with pytest.raises(ValueError, match="timeout"):
        ThreadRunner().run(g, jobs.FUNCTIONS, timeout=0)
    with pytest.raises(ValueError, match="processes"):
        ProcessRunner(processes=0)
    with pytest.raises(ValueError, match="fork"):
        ProcessRunner(start_method="fork")
    bad = JobGraph("bad")
    bad.connect(bad.add_vertex("a", 2), bad.add_vertex("b", 3), "forward")
    runner = ProcessRunner()
    with pytest.raises(GraphValidationError, match="Forward partitioning does not allow change of parallelism"):
        runner.run(bad, {"a": jobs.source, "b": jobs.discard})
    assert runner.last_pids == []


def test_cancel_task_error_is_a_consequence():
    from flinknet.graph import TaskFailure

    assert TaskFailure.of("t", CancelTaskError("x"), "w").is_consequence
    assert not TaskFailure.of("t", ValueError("x"), "w").is_consequence


@pytest.mark.parametrize("make", [RUNNERS[0], RUNNERS[1]])
def test_a_task_that_ignores_its_cancellation_is_abandoned_after_the_grace(make, monkeypatch, tmp_path):
    import functools

    import flinknet.graph.runners as runners

    monkeypatch.setattr(runners, "CANCEL_GRACE_S", 1.0)   # the ThreadRunner reads it here
    g = JobGraph("stubborn")
    g.add_vertex("t", 2)
    started = time.monotonic()
    with pytest.raises(JobFailedError) as info:
        make().run(g, {"t": functools.partial(jobs.stubborn, flag=str(tmp_path / "running"))}, timeout=120)
    assert info.value.root_cause.error_type == "ValueError"
    stuck = [f for f in info.value.failures if f.task_name == "t (2/2)"]
    assert stuck and "did not stop within" in stuck[0].message
    assert time.monotonic() - started < 60


def test_task_metrics_are_refreshed_while_the_job_runs():
    g = JobGraph("metered")
    g.connect(g.add_vertex("source", 1), g.add_vertex("sink", 1))
    result = ThreadRunner(SMALL).run(g, {"source": jobs.metered_source, "sink": jobs.rates}, timeout=60)
    metrics = result.tasks[("source", 0)].metrics
    assert metrics["numRecordsOutPerSecond"] > 0          # a started registry updated the meter
    assert result.tasks[("source", 0)].num_records_out == result.results("sink")[0]
