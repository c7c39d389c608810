"""A wheel built from pyproject.toml must carry every subpackage (editable installs hide a miss)."""

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "flinknet").rglob("__init__.py")}
    found |= {"flinknet._core"}   # Cython sources only, no __init__.py needed
    assert found <= listed, f"missing from [tool.setuptools] packages: {sorted(found - listed)}"
