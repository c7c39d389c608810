"""``flinknet demo --checkpointing MODE``: the keyed job across real processes over TCP, with
periodic checkpoints, an aggregator killed with SIGKILL in the slow phase and every task restored
from the last complete checkpoint (counts, captured in-flight data, sources rewound): every key's
count and sum must come out exact, in aligned, unaligned and timed-out-alignment modes."""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import subprocess
import sys
import time

import pytest

from flinknet.tools.demo.checkpoint import (
    CheckpointDemoConfig,
    CheckpointStats,
    JobProgress,
    LineView,
    compare_debloating,
    expected_totals,
    parse_args,
    parse_config,
    run_checkpoint_demo,
    split_records,
)

pytestmark = pytest.mark.slow


def small(mode: str = "aligned", timeout_ms: int | None = None, **kw) -> CheckpointDemoConfig:
    """Two seconds of records per source, a checkpoint every 200 ms, an aggregator slowed to a
    trickle in the middle second."""
    base = dict(mode=mode, aligned_timeout_ms=timeout_ms, records=60_000, rate=30_000,
                checkpoint_interval_ms=200, slow_rate=3_000, keys=500)
    base.update(kw)
    return CheckpointDemoConfig(**base)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize(("mode", "timeout_ms"), [("aligned", None), ("unaligned", None), ("aligned", 20)])
def test_a_killed_aggregator_is_restored_from_the_last_checkpoint_and_every_key_is_exact(mode, timeout_ms):
    out = io.StringIO()
    result = run_checkpoint_demo(small(mode, timeout_ms), out)
    text = out.getvalue()
    assert result.killed_pid is not None and _gone(result.killed_pid), text
    assert result.restored_from is not None, text
    assert result.restored_from in {s.checkpoint_id for s in result.checkpoints if s.attempt == 0}
    assert any(s.attempt == 1 for s in result.checkpoints), "no checkpoint after the restore:\n" + text
    assert result.counts_ok and result.mismatched_keys == 0, text
    assert result.ok
    assert result.records == 2 * small().blocks * 256
    assert "restoring every task from checkpoint" in text
    if mode == "unaligned":
        # the unaligned barriers overtook data at both ends while the aggregator was slowed
        captured = [s for s in result.checkpoints if s.input_state_bytes or s.output_state_bytes]
        assert captured, text
        assert all(s.persisted_bytes[i] == 0 or s.input_state_bytes for s in captured
                   for i in range(len(s.persisted_bytes)))
    else:
        # aligned barriers overtake nothing at the sources
        assert all(s.output_state_bytes == 0 for s in result.checkpoints)
    if timeout_ms is None and mode == "aligned":
        assert all(s.input_state_bytes == 0 for s in result.checkpoints)


def test_a_restore_without_the_captured_in_flight_data_is_caught_by_the_check():
    """The check is not vacuous: restoring an unaligned checkpoint without its channel state
    loses exactly the records that were in flight at the cut."""
    out = io.StringIO()
    result = run_checkpoint_demo(small("unaligned"), out, drop_channel_state=True)
    restored = next(s for s in result.checkpoints if s.checkpoint_id == result.restored_from)
    assert restored.input_state_bytes + restored.output_state_bytes > 0, (
        "the restored checkpoint captured nothing: the test did not exercise the loss\n" + out.getvalue())
    assert not result.counts_ok and not result.ok
    assert result.mismatched_keys > 0


def test_without_a_kill_the_job_runs_to_the_end_exactly_once():
    result = run_checkpoint_demo(small("unaligned", records=30_000), io.StringIO(), kill=False)
    assert result.ok and result.restored_from is None and result.killed_pid is None
    assert result.checkpoints


def test_debloating_on_and_off_side_by_side():
    out = io.StringIO()
    found = compare_debloating(small("aligned", records=30_000, rate=15_000), out)
    text = out.getvalue()
    assert set(found) == {False, True}
    assert found[False] and found[True], text          # checkpoints taken while slowed, both runs
    table = text.splitlines()[-3:]
    assert table[0].split()[0] == "debloating"
    assert [row.split()[0] for row in table[1:]] == ["off", "on"]


def test_expected_totals_match_the_generated_blocks():
    cfg = small(records=1_000, sources=3, keys=7)
    counts, sums = expected_totals(cfg)
    assert counts.sum() == 3 * cfg.blocks * 256 and (sums >= counts).all()


def test_split_records_reads_whole_length_prefixed_records_and_rejects_a_cut_one():
    recs = [b"", b"a", b"x" * 300]
    data = b"".join(struct.pack(">i", len(r)) + r for r in recs)
    assert split_records(data) == recs
    for cut in (1, 5, len(data) - 1):
        with pytest.raises(ValueError, match="channel state"):
            split_records(data[:cut])
    with pytest.raises(ValueError, match="channel state"):
        split_records(struct.pack(">i", -1))


@pytest.mark.parametrize("bad", ["sideways", "timeout:", "timeout:-1", "timeout:x"])
def test_bad_modes_are_usage_errors(bad):
    with pytest.raises(SystemExit) as err:
        parse_config(["--checkpointing", bad])
    assert err.value.code == 2


def test_modes_parse():
    assert parse_config(["--checkpointing", "unaligned"]).mode == "unaligned"
    cfg = parse_config(["--checkpointing", "timeout:30", "--no-kill"])
    assert (cfg.mode, cfg.aligned_timeout_ms, cfg.kill, cfg.label) == ("aligned", 30, False, "timeout:30")


def test_live_and_no_live_parse():
    assert parse_args(["--checkpointing", "aligned"])[1] is None          # a terminal decides
    assert parse_args(["--checkpointing", "aligned", "--live"])[1] is True
    assert parse_args(["--checkpointing", "aligned", "--no-live"])[1] is False
    with pytest.raises(SystemExit):
        parse_args(["--checkpointing", "aligned", "--live", "--no-live"])


class _Snapshots(LineView):
    """A line view that also keeps, at every completed checkpoint, what each task showed."""

    def __init__(self, out):
        super().__init__(out)
        self.seen = []

    def checkpoint(self, job, stats):
        super().checkpoint(job, stats)
        self.seen.append((stats, job.phase, [dataclasses.replace(t) for t in job.tasks]))


def test_the_progress_board_follows_every_task_through_checkpoints_the_kill_and_the_restore():
    """What the live view draws: per task its last acked checkpoint with that checkpoint's start
    delay, alignment time and in-flight bytes; the phase; the killed task; the restore."""
    view = _Snapshots(io.StringIO())
    result = run_checkpoint_demo(small("unaligned"), view=view)
    assert result.ok, view.out.getvalue()
    for stats, _phase, tasks in view.seen:
        sources, aggregators = tasks[:2], tasks[2:]
        assert [t.name for t in tasks] == ["Source[0]", "Source[1]", "Aggregator[0]", "Aggregator[1]"]
        # every task acked the completed checkpoint, with what it measured for it
        assert all(t.checkpoint_id == stats.checkpoint_id for t in tasks)
        assert [t.alignment_ms for t in aggregators] == stats.alignment_ms
        assert [t.start_delay_ms for t in aggregators] == stats.start_delay_ms
        assert sum(t.in_flight_bytes for t in sources) == stats.output_state_bytes
        assert (sum(t.in_flight_bytes for t in aggregators)
                == stats.input_state_bytes + sum(stats.processed_bytes))
        assert all(t.pid is not None and t.state in ("running", "finished") for t in tasks)
    phases = [phase for _, phase, _ in view.seen]
    assert "slow" in phases and "restored" in phases, phases
    slow = [tasks for stats, phase, tasks in view.seen if phase == "slow"]
    assert any(t.in_flight_bytes for tasks in slow for t in tasks), "nothing in flight while slowed"
    # the restored attempt runs in new processes
    first = next(tasks for _, phase, tasks in view.seen if phase != "restored")
    after = next(tasks for _, phase, tasks in view.seen if phase == "restored")
    assert result.killed_pid == first[2].pid
    assert {t.pid for t in first}.isdisjoint({t.pid for t in after})
    assert all(t.records > 0 for t in after)           # progress reports arrived


def _board() -> JobProgress:
    job = JobProgress.for_config(small("unaligned"), debloat=True)
    job.running([101, 102, 103, 104])
    job.phase, job.attempt, job.restored_from = "slow", 1, 7
    job.status("source", 0, 51_200, 0.0)
    job.tasks[0].last_report = (job.tasks[0].last_report[0] - 1.0, 25_600, 0.0)
    job.status("source", 0, 51_200, 0.9)
    job.acked("source", 0, 9, {"out_bytes": 421_800})
    job.acked("aggregator", 1, 9, {"alignment_ms": 12.5, "start_delay_ms": 61.0, "in_bytes": 318_100,
                                   "processed_during_alignment": 0})
    job.tasks[2].state = "killed"
    job.checkpoints.append(CheckpointStats(9, 1, 65.0, [3.0, 12.5], [5.0, 61.0], [0, 0], [0, 318_100],
                                           421_800, 318_100, True))
    return job


def test_a_progress_report_gives_the_rate_and_the_back_pressured_share():
    task = _board().tasks[0]
    assert task.records == 51_200
    assert 20_000 < task.rate < 30_000                      # 25,600 records in about a second
    assert 0.8 < task.backpressured <= 0.9


def test_the_live_view_renders_checkpoint_alignment_and_in_flight_per_task():
    from rich.console import Console

    from flinknet.tools.demo.checkpoint_view import render

    console = Console(file=io.StringIO(), width=80, color_system=None)
    console.print(render(_board(), ["[  1.00s] killed Aggregator[0]"]))
    text = console.file.getvalue()
    lines = text.splitlines()
    assert max(map(len, lines)) <= 80 and "…" not in text          # fits a terminal of 80 columns
    assert "attempt 2 (restored from checkpoint 7)" in text and "slow" in text
    row = next(line for line in lines if line.startswith("Aggregator[1]"))
    assert "61 ms" in row and "12 ms" in row and "310.6 KiB" in row
    src = next(line for line in lines if line.startswith("Source[0]"))
    assert "411.9 KiB" in src and "51.2k" in src and "90%" in src
    assert "killed" in next(line for line in lines if line.startswith("Aggregator[0]"))
    assert "killed Aggregator[0]" in text


def test_flinknet_demo_checkpointing_from_the_command_line():
    proc = subprocess.run(
        [sys.executable, "-m", "flinknet.tools.cli", "demo", "--checkpointing", "unaligned",
         "--records", "60000", "--rate", "30000", "--checkpoint-interval", "200", "--slow-rate", "3000",
         "--keys", "500"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every key exact" in proc.stdout
    assert "restored from checkpoint" in proc.stdout
    assert "checkpoint 1 complete" in proc.stdout
    assert "Traceback" not in proc.stderr          # the sources that lose their consumer fail quietly


def test_flinknet_demo_checkpointing_live_view_from_the_command_line():
    proc = subprocess.run(
        [sys.executable, "-m", "flinknet.tools.cli", "demo", "--checkpointing", "aligned", "--live",
         "--records", "30000", "--rate", "30000", "--checkpoint-interval", "200", "--no-kill"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "100"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "flinknet demo --checkpointing aligned" in proc.stdout      # the panel's title
    assert "Aggregator[1]" in proc.stdout and "every key exact" in proc.stdout


def test_a_task_that_cannot_start_fails_the_run_with_a_clear_error():
    """A source whose environment cannot be made (too little network memory for a buffer pool)
    ends before it is ready: the run stops at once and says so, and leaves no process behind."""
    import multiprocessing

    with pytest.raises(RuntimeError, match="a source to start: the process ended first"):
        run_checkpoint_demo(small(network_memory="16kb"), io.StringIO(), timeout=60)
    assert not multiprocessing.active_children()


def test_an_aggregator_whose_source_fails_reports_it_and_ends_quietly(capfd):
    """A source that loses its consumer fails and its connections close; the aggregators still
    reading from it fail too. Each says so to the coordinator and ends with exit code 0 and no
    traceback: the coordinator cancels the job (a traceback cut short by that cancel's SIGKILL
    once reached the demo's output)."""
    import multiprocessing

    from flinknet import NetworkEnvironment
    from flinknet.tools.demo.checkpoint import _aggregator_main

    cfg = small()
    ctx = multiprocessing.get_context("spawn")
    with NetworkEnvironment(cfg.net_options(False)) as source_env:
        p = source_env.create_result_partition(1)
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_aggregator_main,
                           args=(child, cfg, 0, [(p.partition_id, source_env.address)], None, False),
                           name="Aggregator[0]", daemon=True)
        proc.start()
        assert parent.poll(60) and parent.recv() == ("ready",)
        parent.send(("go",))
        deadline = time.monotonic() + 30       # a liveness guard
        while not p.subpartitions[0].has_view:
            assert time.monotonic() < deadline, "the aggregator never requested its subpartition"
            time.sleep(0.01)
        p.fail(RuntimeError("the source failed"))
    # the source's environment is closed: its connection to the aggregator is gone
    messages = []
    while parent.poll(30):
        try:
            messages.append(parent.recv())
        except EOFError:
            break
        if messages[-1][0] == "failed":
            break
    proc.join(30)
    assert proc.exitcode == 0
    failed = [m for m in messages if m[0] == "failed"]
    assert failed and failed[0][1:3] == ("aggregator", 0)
    assert "Traceback" not in capfd.readouterr().err
