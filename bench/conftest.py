"""pytest-benchmark kernels of flinknet's core, outside the default test run.

Run: ``python -m pytest bench/ --benchmark-only`` (pyproject's ``testpaths = ["tests"]`` keeps
a plain ``pytest`` from collecting this directory). Each group pairs flinknet's kernel with a
pure-Python baseline measured in the same session: compare rows within a group, not absolute
times. Every benchmark ends with no NetworkBuffer alive or dropped un-recycled (as in
``tests/conftest.py``), and the pool fixtures check their global pool is whole.
"""

from __future__ import annotations

import gc
import importlib.util

import pytest

if importlib.util.find_spec("pytest_benchmark") is None:
    # without the plugin the ``benchmark`` fixture does not exist: collect nothing, say why
    collect_ignore_glob = ["test_*.py"]
    print("bench/: pytest-benchmark is not installed (pip install -e '.[test]'); no kernels collected")

from flinknet._core import buffer as _buffer


@pytest.fixture(autouse=True)
def no_buffer_leaks():
    live_before = _buffer.live_buffer_count()
    leaked_before = _buffer.leaked_buffer_count()
    yield
    if _buffer.live_buffer_count() != live_before:
        gc.collect()
    assert _buffer.leaked_buffer_count() == leaked_before, "a NetworkBuffer was dropped without recycle()"
    assert _buffer.live_buffer_count() == live_before, "a NetworkBuffer still holds references"
