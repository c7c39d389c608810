"""The README's example and set-up commands stay true."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_example_runs():
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})


def test_readme_starts_with_the_two_setup_commands():
    text = README.read_text()
    first = re.search(r"```sh\n(.*?)```", text, re.S)
    assert first is not None and text.startswith("# flinknet\n\n```sh\n"), "README must open with them"
    commands = first.group(1).strip().splitlines()
    assert len(commands) == 2
    assert commands[0].endswith("flinknet demo") and "pip install -e '.[demo]'" in commands[0]
    assert "pip install -e '.[test,ray]'" in commands[1] and "pytest" in commands[1]
