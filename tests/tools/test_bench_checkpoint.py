"""``flinknet bench --only checkpoint``: its rows, from short real runs of the checkpointed job."""

from __future__ import annotations

import math

import pytest

from flinknet.tools.bench import runner
from flinknet.tools.bench.checkpoint import VARIANTS, bench_checkpoint_cost, bench_slow_alignment

pytestmark = pytest.mark.slow


def test_slow_phase_rows_compare_every_variant_with_aligned(capsys):
    rows = bench_slow_alignment(records=20_000)
    names = {r.name for r in rows}
    variants = [v for v in VARIANTS if v != "aligned"]
    assert names == {f"checkpoint.slow.{m}.{v}" for m in ("duration", "start_delay", "alignment", "in_flight")
                     for v in variants}
    for r in rows:
        assert set(r.baselines) == {"aligned"}
        assert r.unit == ("KiB" if ".in_flight." in r.name else "ms")
        assert "checkpoints" in r.note
    # unaligned checkpoints under back-pressure capture what their barriers overtook
    flight = next(r for r in rows if r.name == "checkpoint.slow.in_flight.unaligned")
    assert math.isfinite(flight.value) and flight.value > 0
    table = capsys.readouterr().err
    assert [line.split()[0] for line in table.splitlines()[1:5]] == list(VARIANTS)


def test_cost_rows_compare_checkpointing_with_none_in_the_same_run():
    rows = bench_checkpoint_cost(intervals=(50,), repeats=1, records=200_000)
    assert [r.name for r in rows] == ["checkpoint.cost.aligned.50ms", "checkpoint.cost.unaligned.50ms"]
    for r in rows:
        assert r.unit == "ns/record" and set(r.baselines) == {"checkpointing off"}
        assert r.value > 0 and r.baselines["checkpointing off"] > 0
        assert "checkpoints (triggered every 50 ms, one at a time)" in r.note


def test_checkpoint_is_a_group_that_runs_only_when_named():
    assert "checkpoint" in runner.EXTRA_GROUPS and "checkpoint" not in runner.GROUPS
