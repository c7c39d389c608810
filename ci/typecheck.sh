#!/usr/bin/env bash
# Static checks: the compiled core's stubs against the compiled modules, the stubs themselves,
# mypy over the Python package and ruff. Uses the `python` on PATH, which must have
# flinknet installed (built) and mypy importable; run from anywhere, it works in the repo root.
# Exit status: 0 when every check passes, else the failing check's status.
set -euo pipefail
cd "$(dirname "$0")/.."

# The compiled core modules: every flinknet/_core/*.pyx (each must have a .pyi next to it).
core_modules=()
for pyx in flinknet/_core/*.pyx; do
    core_modules+=("flinknet._core.$(basename "$pyx" .pyx)")
done

# --- 1. stubtest: flinknet/_core/*.pyi against the compiled modules ----------------------------
# Names, signatures (positional-only / keyword names / defaults), properties vs methods,
# module constants. ci/stubtest-allowlist.txt lists the Cython-generated names that are not
# API; ci/stubtest-allowlist-py311.txt what only Python < 3.12 lacks. ci/stubtest-mypy.ini keeps
# type errors in the Python package (imported by the stubs) out of this check.
# tests/test_stubs.py runs the same command.
echo "== stubtest: ${core_modules[*]}"
allowlists=(--allowlist ci/stubtest-allowlist.txt)
if python -c 'import sys; sys.exit(0 if sys.version_info < (3, 12) else 1)'; then
    allowlists+=(--allowlist ci/stubtest-allowlist-py311.txt)
fi
python -m mypy.stubtest "${core_modules[@]}" --mypy-config-file ci/stubtest-mypy.ini "${allowlists[@]}"

# --- 2. the stubs themselves, mypy --strict --------------------------------------------------
# Only the stubs and the typing helpers they import (flinknet/_core/typedefs.py); errors in the
# Python package the stubs import are section 3's business, hence --follow-imports=silent.
echo "== mypy --strict: flinknet/_core/*.pyi flinknet/_core/typedefs.py"
python -m mypy --strict --follow-imports=silent flinknet/_core/*.pyi flinknet/_core/typedefs.py

# --- 3. mypy over the Python package ----------------------------------------------------------
# pyproject.toml's [tool.mypy]: the whole package, strict for the library, the tools checked
# with check_untyped_defs.
echo "== mypy: flinknet"
python -m mypy

# --- 4. ruff -------------------------------------------------------------------------------------
# pyproject.toml's [tool.ruff]: the package, the tests, the benchmarks and ci/.
echo "== ruff"
python -m ruff check .

echo "== typecheck: all passed"
