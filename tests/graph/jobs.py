"""Task functions for the runner tests: module level, so worker processes and Ray actors can
import them by name."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from flinknet.graph import JobGraph, TaskContext

N_RECORDS = 30_000
N_KEYS = 101


def key_of(record: tuple[int, int]) -> int:
    return record[0]


def source(ctx: TaskContext) -> int:
    """Emits (key, 1) for its share of N_RECORDS, in batches."""
    w = ctx.writer()
    mine = range(ctx.subtask_index, N_RECORDS, ctx.parallelism)
    batch: list[Any] = []
    for i in mine:
        batch.append((i % N_KEYS, 1))
        if len(batch) == 500:
            w.emit_batch(batch)
            batch = []
    if batch:
        w.emit_batch(batch)
    return len(mine)


def count(ctx: TaskContext) -> int:
    """Counts per key (a keyed stage), then emits (key, count, subtask)."""
    counts: dict[int, int] = {}
    for key, n in ctx.reader():
        counts[key] = counts.get(key, 0) + n
    w = ctx.writer()
    for key, c in counts.items():
        w.emit((key, c, ctx.subtask_index))
    return len(counts)


def sink(ctx: TaskContext) -> dict[int, int]:
    """Collects the counts; a key seen twice (or counted by the wrong subtask) is an error."""
    totals: dict[int, int] = {}
    owner: dict[int, int] = {}
    for key, c, subtask in ctx.reader():
        if key in totals:
            raise AssertionError(f"key {key} counted by subtasks {owner[key]} and {subtask}")
        totals[key] = c
        owner[key] = subtask
    return totals


FUNCTIONS = {"source": source, "count": count, "sink": sink}


def three_stage(sources: int = 2, counters: int = 3, name: str = "three-stage") -> JobGraph:
    g = JobGraph(name)
    s = g.add_vertex("source", sources)
    c = g.add_vertex("count", counters)
    k = g.add_vertex("sink", 1)
    g.connect(s, c, "key_groups", key_selector=key_of)
    g.connect(c, k, "rebalance")
    return g


def check_exact(totals: dict[int, int]) -> None:
    expected = {k: len(range(k, N_RECORDS, N_KEYS)) for k in range(N_KEYS)}
    assert totals == expected


# -- failures --------------------------------------------------------------------------------


def failing_count(ctx: TaskContext) -> int:
    """Subtask 1 fails after reading a few records; the others count."""
    seen = 0
    for _ in ctx.reader():
        seen += 1
        if ctx.subtask_index == 1 and seen == 100:
            raise ValueError(f"bad record in {ctx.task_name}")
    return seen


def dying_count(ctx: TaskContext) -> int:
    """Subtask 0 kills its own process (SIGKILL) after reading a few records."""
    seen = 0
    for _ in ctx.reader():
        seen += 1
        if ctx.subtask_index == 0 and seen == 100:
            os.kill(os.getpid(), signal.SIGKILL)
    return seen


def endless_source(ctx: TaskContext) -> None:
    """Emits until cancelled (back-pressured by a consumer that stops reading)."""
    w = ctx.writer()
    while True:
        w.emit_batch([(i, 1) for i in range(200)])


def stuck_sink(ctx: TaskContext) -> None:
    """Reads one record, then sleeps far longer than any test's timeout."""
    next(iter(ctx.reader()))
    time.sleep(600)


def discard(ctx: TaskContext) -> int:
    return sum(1 for _ in ctx.reader())


def unpicklable_result(ctx: TaskContext) -> Any:
    return lambda: None


def names_of_inputs(ctx: TaskContext) -> list[str]:
    return ctx.input_names


def split(ctx: TaskContext) -> None:
    """Two named outputs: evens and odds."""
    ev, od = ctx.writer("evens"), ctx.writer("odds")
    for i in range(1000):
        (ev if i % 2 == 0 else od).emit(i)


def join_two(ctx: TaskContext) -> tuple[int, int, int]:
    """Reads two named inputs separately."""
    evens = sum(ctx.reader("evens"))
    odds = sum(ctx.reader("odds"))
    return evens, odds, len(ctx.input_names)


def union_all(ctx: TaskContext) -> int:
    return sum(ctx.union_reader())


def echo(ctx: TaskContext) -> list[Any]:
    """Reports 'ready', then echoes every control message back as a report until 'stop'."""
    ctx.report(("ready", ctx.subtask_index))
    seen = []
    while True:
        msg = ctx.next_message(timeout=60)
        if msg is None or msg == "stop":
            return seen
        seen.append(msg)
        ctx.report(("echo", ctx.subtask_index, msg))


def echo_source(ctx: TaskContext) -> list[Any]:
    seen = echo(ctx)
    ctx.writer().emit_batch([1, 2, 3])
    return seen


def stubborn(ctx: TaskContext, flag: str) -> None:
    """Subtask 1 marks ``flag`` (a file) once it runs, then sleeps in code that never touches
    flinknet (so it ignores its cancellation); subtask 0 fails once subtask 1 is running."""
    if ctx.subtask_index == 1:
        open(flag, "w").close()
        time.sleep(600)
    deadline = time.monotonic() + 60
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.01)
    raise ValueError("first")


def metered_source(ctx: TaskContext) -> None:
    """Emits for ~2.5 s so the started registry refreshes the task's rates."""
    w = ctx.writer()
    end = time.monotonic() + 2.5
    while time.monotonic() < end:
        w.emit_batch([(i, 1) for i in range(100)])
        time.sleep(0.001)


def rates(ctx: TaskContext) -> float:
    n = sum(1 for _ in ctx.reader())
    assert ctx.metrics is not None
    return float(n)
