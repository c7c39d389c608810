"""The hostile-peer benchmark (``python -m flinknet.tools.bench.hostile``) runs every case and
reports what the bounds did (small sizes; the figures are in bench/RESULTS.md section 5)."""

from __future__ import annotations

import pytest

from flinknet.tools.bench import hostile


@pytest.mark.parametrize("name,n,expect", [
    ("cancel", 300, "300 requests waited; all cancelled"),
    ("pending", 5000, "0 requests waiting, peer closed by the server"),
    ("partial-frames", 2, "0 of 2 peers held open"),
    ("idle", 5, "5 of 5 idle connections held open"),
    ("churn", 70, "the producer keeps"),
])
def test_each_case_runs_and_the_bound_holds(name, n, expect):
    row = hostile.run(name, n)
    assert expect in row["what"], row
    assert row["legit"].startswith("exact"), row
    assert row["threads"] <= 1, row          # no thread per peer (a closing one may linger)


def test_the_command_prints_a_row_per_case(capsys):
    assert hostile.main(["--only", "partial-frames", "--n", "1"]) == 0
    out = capsys.readouterr().out
    assert "partial-frames" in out and "legitimate exchange exact" in out
