"""Talking to a running job: start() → JobHandle, control messages in, reports out, cancel."""

from __future__ import annotations

import threading
import time

import pytest

from flinknet.errors import IllegalStateError
from flinknet.graph import JobFailedError, JobGraph, ProcessRunner, ThreadRunner
from tests.graph import jobs
from tests.graph.test_runners import SMALL

RUNNERS = [pytest.param(lambda: ThreadRunner(SMALL), id="threads"),
           pytest.param(lambda: ProcessRunner(config=SMALL), id="processes")]


def _graph() -> JobGraph:
    g = JobGraph("control")
    g.connect(g.add_vertex("source", 2), g.add_vertex("sink", 1))
    return g


class Reports:
    def __init__(self) -> None:
        self.items: list = []
        self.cond = threading.Condition()

    def __call__(self, key, message) -> None:
        with self.cond:
            self.items.append((key, message))
            self.cond.notify_all()

    def wait_for(self, predicate, timeout: float = 60) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: predicate(self.items), timeout), self.items


@pytest.mark.parametrize("make", RUNNERS)
def test_messages_reach_tasks_and_reports_reach_the_driver(make):
    reports = Reports()
    handle = make().start(_graph(), {"source": jobs.echo_source, "sink": jobs.discard}, timeout=120,
                          on_report=reports)
    reports.wait_for(lambda items: sum(1 for _, m in items if m[0] == "ready") == 2)
    handle.send("source", 0, "hello")
    handle.send("source", 1, {"phase": "slow"})
    reports.wait_for(lambda items: sum(1 for _, m in items if m[0] == "echo") == 2)
    handle.broadcast("stop", vertex="source")
    result = handle.result(timeout=120)
    assert result.results("source") == [["hello"], [{"phase": "slow"}]]
    assert result.results("sink") == [6]
    echoes = sorted((k, m) for k, m in reports.items if m[0] == "echo")
    assert echoes == [(("source", 0), ("echo", 0, "hello")), (("source", 1), ("echo", 1, {"phase": "slow"}))]
    assert handle.done
    with pytest.raises(IllegalStateError, match="has ended"):
        handle.send("source", 0, "late")
    with pytest.raises(KeyError, match="no subtask 5 of 'source'"):
        handle.send("source", 5, "x")
    with pytest.raises(KeyError):
        handle.broadcast("x", vertex="nope")


@pytest.mark.parametrize("make", RUNNERS)
def test_cancel_fails_the_job(make):
    handle = make().start(_graph(), {"source": jobs.echo_source, "sink": jobs.discard}, timeout=120)
    with pytest.raises(TimeoutError, match="still running"):
        handle.result(timeout=0.2)
    handle.cancel("enough")
    started = time.monotonic()
    with pytest.raises(JobFailedError, match="enough"):
        handle.result(timeout=60)
    assert time.monotonic() - started < 30


def test_a_raising_report_callback_does_not_stop_the_job():
    def bad(key, message):
        raise RuntimeError("callback bug")

    handle = ThreadRunner(SMALL).start(_graph(), {"source": jobs.echo_source, "sink": jobs.discard},
                                      on_report=bad)
    handle.broadcast("stop", vertex="source")
    assert handle.result(timeout=60).results("sink") == [6]


def test_start_checks_arguments_at_once():
    with pytest.raises(TypeError, match="on_report"):
        ThreadRunner().start(_graph(), {"source": jobs.source, "sink": jobs.discard}, on_report=3)
    bad = JobGraph("bad")
    bad.connect(bad.add_vertex("a", 2), bad.add_vertex("b", 3), "forward")
    with pytest.raises(Exception, match="Forward partitioning"):
        ProcessRunner().start(bad, {"a": jobs.source, "b": jobs.discard})
