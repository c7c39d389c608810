"""The public API type-checks as a user sees it: ``mypy --strict`` over code that imports flinknet.

Each check writes its code to a temporary directory and runs ``python -m mypy --strict`` there, so
that mypy finds the *installed* flinknet (through site-packages, as a user's project would), not the
source tree of this repository by accident. It checks:

* every ```python block of README.md, each as a module of its own: no errors;
* a typed use of the framework API (addresses as tuples and "host:port" strings): no errors;
* a wrong call, ``create_input_gate([("not-an-id", "x", 42)])``: an error at that call;
* ``NetworkEnvironment().__enter__()`` (and a ``with`` target) is a NetworkEnvironment, not Any.

With setuptools' default editable install (its ``__editable___*_finder`` import hook), mypy could
not see the package at all; pyproject.toml's ``package-dir`` makes ``pip install -e .`` a static
path entry instead, which :func:`test_mypy_sees_the_installed_package` checks.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                       reason="mypy is not installed (it belongs to the `test` extra: "
                              "pip install -e '.[test]')"),
    pytest.mark.slow,
]


def _readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.fixture(scope="module")
def mypy_strict(tmp_path_factory):
    """``run({file name: source}) -> (exit status, output)``: ``mypy --strict`` over the files,
    in a fresh directory outside the repository (one cache shared by the module's runs)."""
    base = tmp_path_factory.mktemp("typing")
    cache = base / ".mypy_cache"
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    counter = iter(range(1_000_000))

    def run(files: dict[str, str]) -> tuple[int, str]:
        work = base / f"run{next(counter)}"
        work.mkdir()
        for name, source in files.items():
            (work / name).write_text(source)
        proc = subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache), "--no-color-output",
             "--hide-error-context", *sorted(files)],
            cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False)
        return proc.returncode, proc.stdout + proc.stderr

    return run


def test_mypy_sees_the_installed_package(mypy_strict):
    status, output = mypy_strict({"sees_flinknet.py": textwrap.dedent("""\
        from flinknet import NetworkEnvironment
        from flinknet.consumer import RecordReader
        from flinknet.core import NetworkBufferPool

        reveal_type(RecordReader)
        reveal_type(NetworkBufferPool)
        reveal_type(NetworkEnvironment)
        """)})
    assert "import-not-found" not in output and status == 0, (
        "mypy run outside the repository cannot see the installed flinknet. With setuptools' "
        "default editable install the package is found through an import hook "
        "(__editable___flinknet_*_finder) that mypy does not run; pyproject.toml's "
        "[tool.setuptools] package-dir makes `pip install -e .` install a plain path entry "
        "instead: reinstall with `pip install -e .`.\n" + output)


@pytest.mark.parametrize("index", range(len(_readme_blocks())),
                         ids=[f"block{i + 1}" for i in range(len(_readme_blocks()))])
def test_readme_example_passes_mypy_strict(mypy_strict, index):
    block = _readme_blocks()[index]
    name = f"readme_example_{index + 1}.py"
    status, output = mypy_strict({name: block})
    assert status == 0, (f"mypy --strict reports errors in README.md's python block {index + 1} "
                         f"(exit status {status}):\n{output}\n--- the block ---\n{block}")


def test_the_readme_has_python_examples():
    assert _readme_blocks(), "README.md has no ```python block"


TYPED_USE = textwrap.dedent("""\
    from collections.abc import Iterator
    from typing import Any

    from flinknet import (Address, NetworkEnvironment, RecordReader, RecordWriter, ResultPartition,
                          ResultPartitionID, SingleInputGate)
    from flinknet.events import EndOfPartitionEvent, Event


    def gate_of(env: NetworkEnvironment, pid: ResultPartitionID, peer: Address) -> SingleInputGate:
        return env.create_input_gate([(pid, 0), (pid, 1, peer), (pid, 2, "127.0.0.1:6121"),
                                      (pid, 3, "[::1]:6121"), (pid, 4, None)],
                                     gate_index=1, owning_task_name="task")


    def produce(partition: ResultPartition) -> int:
        with RecordWriter(partition, timeout=10) as writer:
            writer.emit(b"record")
            writer.emit_batch([b"a", b"b"], 0)
            writer.broadcast_event(EndOfPartitionEvent())
            return writer.number_of_channels


    def records(gate: SingleInputGate) -> Iterator[Any]:
        with RecordReader(gate, serializer="bytes") as reader:
            yield from reader


    def events(gate: SingleInputGate) -> list[Event]:
        found: list[Event] = []
        for boe in gate:
            if boe.event is not None:
                found.append(boe.event)
            elif boe.buffer is not None:
                boe.buffer.recycle()
            gate.resume_consumption(boe.channel_info)
        return found


    with NetworkEnvironment({"taskmanager.memory.network.max": "8mb"}) as env:
        address: Address = env.address
        partition = env.create_result_partition(2)
        pid: ResultPartitionID = partition.partition_id
        gate = gate_of(env, pid, address)
        n: int = produce(partition)
        rows: list[Any] = list(records(gate))
    """)


def test_typed_use_of_the_framework_api_passes(mypy_strict):
    status, output = mypy_strict({"typed_use.py": TYPED_USE})
    assert status == 0, f"mypy --strict rejects a correct use of the API:\n{output}"


def test_a_wrong_create_input_gate_call_fails_mypy_strict(mypy_strict):
    source = textwrap.dedent("""\
        from flinknet import NetworkEnvironment

        with NetworkEnvironment() as env:
            env.create_input_gate([("not-an-id", "x", 42)])
        """)
    status, output = mypy_strict({"wrong_gate.py": source})
    assert status != 0, f"mypy --strict accepted create_input_gate([('not-an-id', 'x', 42)]):\n{output}"
    errors = [line for line in output.splitlines()
              if line.startswith("wrong_gate.py:4:") and ": error:" in line]
    assert errors, f"no error at the create_input_gate call (line 4):\n{output}"
    # mypy names the bad argument: the item's type against the ones create_input_gate takes.
    assert any('"tuple[str, str, int]"' in line and "ResultPartitionID" in line for line in errors), output


def test_entering_a_network_environment_gives_a_network_environment(mypy_strict):
    source = textwrap.dedent("""\
        from flinknet import NetworkEnvironment

        reveal_type(NetworkEnvironment().__enter__())
        with NetworkEnvironment() as env:
            reveal_type(env)
            reveal_type(env.create_input_gate)
        """)
    status, output = mypy_strict({"enter.py": source})
    revealed = re.findall(r'^enter\.py:(\d+): note: Revealed type is "(.*)"$', output, re.M)
    assert status == 0, output
    assert revealed[:2] == [("3", "flinknet.environment.NetworkEnvironment"),
                            ("5", "flinknet.environment.NetworkEnvironment")], output
    assert "Any" not in revealed[2][1], output
