"""The framework guide's examples run and check themselves (README: "Deploying jobs")."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

RUNNERS = ["thread", "process",
           pytest.param("ray", marks=pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                                        reason="the ray extra is not installed"))]


@pytest.mark.parametrize("runner", RUNNERS)
def test_wordcount_example_counts_every_word_exactly_once(runner):
    proc = subprocess.run([sys.executable, "-m", "flinknet.examples.wordcount", "--runner", runner,
                           "--lines", "3000", "--sources", "2", "--counters", "2"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{runner}: 14991 words from 3000 lines" in proc.stdout
    assert "check: every word counted exactly once" in proc.stdout


def test_wordcount_example_functions_in_process():
    from flinknet.examples import wordcount

    assert wordcount.main(["--runner", "thread", "--lines", "500"]) == 0
    with pytest.raises(SystemExit):
        wordcount.main(["--runner", "nope"])
