"""The ``flinknet`` command: ``--version`` and ``version`` agree, and every entry point of the tools
(the console script, ``python -m flinknet``, ``python -m flinknet.tools.*``) starts."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from flinknet import __version__
from flinknet.tools.cli import main, version_text

#: the console script pip installed next to this interpreter (pyproject's [project.scripts])
SCRIPT = pathlib.Path(sys.executable).with_name("flinknet")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120)


def test_version_text():
    assert version_text().startswith(f"flinknet {__version__}")


def test_version_option_prints_what_the_version_command_prints(capsys):
    assert main(["version"]) == 0
    by_command = capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == by_command == version_text() + "\n"


def test_flinknet_version_option():
    assert SCRIPT.exists(), f"no console script at {SCRIPT} (pip install -e .)"
    by_option, by_command = _run(str(SCRIPT), "--version"), _run(str(SCRIPT), "version")
    assert by_option.returncode == 0, by_option.stderr
    assert by_option.stdout == by_command.stdout == version_text() + "\n"


def test_python_m_flinknet_version_option():
    by_option = _run(sys.executable, "-m", "flinknet", "--version")
    by_command = _run(sys.executable, "-m", "flinknet", "version")
    assert by_option.returncode == 0 and by_command.returncode == 0, by_option.stderr + by_command.stderr
    assert by_option.stdout == by_command.stdout == version_text() + "\n"


def test_no_or_unknown_command_exits_2(capsys):
    assert main([]) == 2
    assert main(["nonsense"]) == 2
    assert "usage: flinknet" in capsys.readouterr().err


@pytest.mark.parametrize("module, prog", [
    ("flinknet", "flinknet"),
    ("flinknet.tools.bench", "flinknet bench"),
    ("flinknet.tools.demo", "flinknet demo"),
    ("flinknet.tools.bench.scale", "python -m flinknet.tools.bench.scale"),
    ("flinknet.tools.bench.floor", "python -m flinknet.tools.bench.floor"),
])
def test_every_entry_point_answers_help(module, prog):
    proc = _run(sys.executable, "-W", "error::RuntimeWarning", "-m", module, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {prog}"), proc.stdout[:200]
