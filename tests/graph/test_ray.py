"""RayRunner on a local Ray cluster started by the test (a few worker processes on loopback)."""

from __future__ import annotations

import time

import pytest

ray = pytest.importorskip("ray")

from flinknet.graph import JobFailedError, JobGraph, RayRunner, WorkerLostError  # noqa: E402
from tests.graph import jobs  # noqa: E402
from tests.graph.test_runners import SMALL as _SMALL  # noqa: E402
from tests.graph.test_runners import _gone  # noqa: E402

# Loopback only: Ray reports this machine's node address (not 127.0.0.1, even when asked), so the
# actors' environments are bound to loopback explicitly.
SMALL = {**_SMALL, "taskmanager.network.bind-host": "127.0.0.1"}


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=4, _node_ip_address="127.0.0.1", include_dashboard=False,
             logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


def test_three_stage_keyed_job_on_ray(cluster):
    runner = RayRunner(config=SMALL)
    result = runner.run(jobs.three_stage(), jobs.FUNCTIONS, timeout=120)
    (totals,) = result.results("sink")
    jobs.check_exact(totals)
    assert result.num_records_out("source") == jobs.N_RECORDS == result.num_records_in("count")
    assert result.leaky_workers == []
    assert len(runner.last_pids) == 6 and _gone(runner.last_pids)


def test_packed_actors_and_lambdas(cluster):
    g = JobGraph("packed")
    g.connect(g.add_vertex("source", 2), g.add_vertex("sink", 2), "rescale")
    runner = RayRunner(actors=2, config=SMALL)
    result = runner.run(g, {"source": jobs.source, "sink": lambda ctx: sum(n for _, n in ctx.reader())},
                        timeout=120)
    assert sum(result.results("sink")) == jobs.N_RECORDS
    assert len(runner.last_pids) == 2 and _gone(runner.last_pids)


def test_a_killed_actor_fails_the_job_naming_it_within_seconds(cluster):
    runner = RayRunner(config=SMALL)
    started = time.monotonic()
    with pytest.raises(JobFailedError) as info:
        runner.run(jobs.three_stage(), {**jobs.FUNCTIONS, "count": jobs.dying_count}, timeout=120)
    took = time.monotonic() - started
    err = info.value
    assert err.root_cause is not None and err.root_cause.task_name == "count (1/3)"
    assert isinstance(err.root_cause.exception, WorkerLostError)
    assert "Ray actor" in err.root_cause.message and "died" in err.root_cause.message
    assert took < 60, took
    assert _gone(runner.last_pids)          # nothing of the job is left running


def test_a_failing_task_on_ray_is_the_root_cause(cluster):
    runner = RayRunner(config=SMALL)
    with pytest.raises(JobFailedError) as info:
        runner.run(jobs.three_stage(), {**jobs.FUNCTIONS, "count": jobs.failing_count}, timeout=120)
    assert info.value.root_cause.task_name == "count (2/3)"
    assert isinstance(info.value.__cause__, ValueError)
    assert _gone(runner.last_pids)


def test_bad_arguments():
    with pytest.raises(ValueError, match="actors"):
        RayRunner(actors=0)
    with pytest.raises(TypeError, match="mapping"):
        RayRunner(config="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_cpus"):
        RayRunner(num_cpus=-1)
