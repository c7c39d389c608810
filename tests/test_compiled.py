"""Guard: the tests must run against the compiled core, never against an unbuilt source tree."""

import ast
import importlib
import importlib.machinery
import pathlib

import pytest

CORE_MODULES = ["memory", "buffer", "builder", "pool", "serialization", "elements", "keygroups", "protocol",
                "engine", "cursor"]
#: compiled modules outside the core (setup.py builds them as separate extensions)
TOOL_EXTENSIONS = ["flinknet.tools.bench._benchkit", "flinknet.tools.bench._floorkit"]


@pytest.mark.parametrize("module_name", [f"flinknet._core.{name}" for name in CORE_MODULES] + TOOL_EXTENSIONS)
def test_core_module_is_compiled(module_name):
    module = importlib.import_module(module_name)
    path = pathlib.Path(module.__file__)
    assert any(str(path).endswith(suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES), (
        f"{module_name} was imported from {path}, not from a compiled extension")
    assert type(module.__loader__).__name__ == "ExtensionFileLoader"


def test_setup_builds_the_same_extensions():
    """setup.py's CORE_MODULES and its separate extensions are the ones checked above."""
    text = (pathlib.Path(__file__).resolve().parent.parent / "setup.py").read_text()
    assigned = [node for node in ast.parse(text).body if isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "CORE_MODULES" for t in node.targets)]
    assert len(assigned) == 1 and ast.literal_eval(assigned[0].value) == CORE_MODULES
    for name in TOOL_EXTENSIONS:
        assert f'"{name}"' in text, name


def test_core_classes_are_extension_types():
    from flinknet._core.buffer import NetworkBuffer
    from flinknet._core.memory import MemorySegment
    from flinknet._core.pool import LocalBufferPool

    for cls in (MemorySegment, NetworkBuffer, LocalBufferPool):
        assert cls.__flags__ & (1 << 9) == 0, f"{cls} is a heap (Python-defined) type"


def test_debug_flag_matches_build(tmp_path):
    import os

    from flinknet._core import buffer

    expect_debug = os.environ.get("FLINKNET_EXPECT_DEBUG")
    if expect_debug is None:
        pytest.skip("FLINKNET_EXPECT_DEBUG not set (only .ci/run sets it, to check which build ran)")
    assert buffer.is_debug_build() == (expect_debug == "1")
