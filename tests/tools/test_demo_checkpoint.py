"""``flinknet demo --checkpointing MODE``: the keyed job across real processes over TCP, with
periodic checkpoints, an aggregator killed with SIGKILL in the slow phase and every task restored
from the last complete checkpoint (counts, captured in-flight data, sources rewound): every key's
count and sum must come out exact, in aligned, unaligned and timed-out-alignment modes."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys

import pytest

from flinknet.tools.demo.checkpoint import (
    CheckpointDemoConfig,
    compare_debloating,
    expected_totals,
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
