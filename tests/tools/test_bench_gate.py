"""ci/bench_gate.py: its comparison of ratios (on synthetic results) and the JSON it reads.

Timings never gate tests: every result here is made up, except the one produced by
``flinknet bench --only kernels --quick --json``, whose *shape* is checked, not its numbers.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
GATE_PATH = ROOT / "ci" / "bench_gate.py"


@pytest.fixture(scope="module")
def gate():
    spec = importlib.util.spec_from_file_location("bench_gate", GATE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gate"] = module   # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_gate", None)


def result(rows, debug=False):
    """A flinknet bench --json document: rows of (name, value, {baseline: time})."""
    return {
        "schema": 1,
        "environment": {"python": "3.11", "debug_build": debug},
        "quick": True,
        "groups": ["kernels"],
        "wall_s": 1.0,
        "results": [{"name": name, "group": "kernels", "unit": "ns/op", "value": value,
                     "baselines": dict(bases), "ratios": {k: value / v for k, v in bases.items()},
                     "references": {}, "reference_ratios": {}, "note": ""}
                    for name, value, bases in rows],
    }


def reference(ratios, threshold=0.30, tolerance=None):
    return {"threshold": threshold, "tolerance": tolerance or {}, "ratios": ratios}


def write(tmp_path, name, doc):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


# -- comparison -----------------------------------------------------------------------------------

def test_within_threshold_passes(gate):
    new = gate.ratios_of(result([("a", 25.0, {"memcpy": 10.0})]))          # 2.5x
    cmp = gate.compare(new, {("a", "memcpy"): 2.0}, 0.30)                   # +25%
    assert cmp.passed and [v.status for v in cmp.verdicts] == ["ok"]


def test_beyond_threshold_fails(gate):
    new = gate.ratios_of(result([("a", 27.0, {"memcpy": 10.0})]))          # 2.7x: +35%
    cmp = gate.compare(new, {("a", "memcpy"): 2.0}, 0.30)
    assert not cmp.passed
    (v,) = cmp.regressions
    assert v.key == ("a", "memcpy") and v.limit == pytest.approx(2.6) and v.change == pytest.approx(0.35)


def test_exactly_at_the_limit_passes(gate):
    cmp = gate.compare({("a", "b"): 2.6}, {("a", "b"): 2.0}, 0.30)
    assert cmp.passed


def test_direction_lower_ratio_is_better(gate):
    # ratio = flinknet / baseline in time per operation: a lower ratio means flinknet got faster
    # (or the baseline slower); it never fails, however large the change.
    cmp = gate.compare({("a", "b"): 0.5}, {("a", "b"): 2.0}, 0.30)
    assert cmp.passed and cmp.verdicts[0].status == "improved"
    # the same change the other way round fails
    assert not gate.compare({("a", "b"): 2.0}, {("a", "b"): 0.5}, 0.30).passed


def test_absolute_times_do_not_gate(gate):
    # everything 3x slower (a slower or busier machine): the ratios hold, the gate passes
    ref = gate.make_reference([result([("a", 20.0, {"memcpy": 10.0})])])
    slow = result([("a", 60.0, {"memcpy": 30.0})])
    assert gate.compare(gate.ratios_of(slow), gate.reference_ratios(ref), 0.30).passed


def test_recorded_references_are_not_gated(gate):
    doc = result([("a", 20.0, {"memcpy": 10.0})])
    doc["results"][0]["references"] = {"flink-2.3 (rec.)": 1.0}
    doc["results"][0]["reference_ratios"] = {"flink-2.3 (rec.)": 20.0}
    assert set(gate.ratios_of(doc)) == {("a", "memcpy")}


def test_missing_rows_on_either_side_are_notes(gate):
    new = {("a", "memcpy"): 2.0, ("new-row", "memcpy"): 9.0}
    ref = {("a", "memcpy"): 2.0, ("gone-row", "zmq"): 1.0}
    cmp = gate.compare(new, ref, 0.30)
    assert cmp.passed
    assert cmp.only_in_run == [("new-row", "memcpy")]
    assert cmp.only_in_reference == [("gone-row", "zmq")]
    text = gate.format_comparison(cmp)
    assert "new-row / memcpy" in text and "gone-row / zmq" in text


def test_tolerance_patterns(gate):
    tol = {"noisy.*": 1.0, "row | zmq*": None}
    assert gate.tolerance_for(("noisy.p99", "raw"), tol, 0.3) == 1.0
    assert gate.tolerance_for(("quiet", "raw"), tol, 0.3) == 0.3
    assert gate.tolerance_for(("row", "zmq PUSH/PULL"), tol, 0.3) is None
    cmp = gate.compare({("noisy.p99", "raw"): 3.9, ("row", "zmq PUSH/PULL"): 100.0},
                       {("noisy.p99", "raw"): 2.0, ("row", "zmq PUSH/PULL"): 1.0}, 0.3, tol)
    assert cmp.passed and cmp.not_gated == [("row", "zmq PUSH/PULL")]
    assert not gate.compare({("noisy.p99", "raw"): 4.1}, {("noisy.p99", "raw"): 2.0}, 0.3, tol).passed


def test_make_reference_takes_the_worst_ratio(gate):
    a = result([("x", 20.0, {"memcpy": 10.0}), ("y", 5.0, {"memcpy": 10.0})])
    b = result([("x", 30.0, {"memcpy": 10.0}), ("y", 4.0, {"memcpy": 10.0})])
    ref = gate.make_reference([a, b])
    assert ref["ratios"] == {"x": {"memcpy": 3.0}, "y": {"memcpy": 0.5}}
    assert ref["generated"]["runs"] == 2


def test_best_of_retries(gate):
    assert gate.best_of({("a", "b"): 3.0, ("c", "d"): 1.0}, {("a", "b"): 2.0}) == \
        {("a", "b"): 2.0, ("c", "d"): 1.0}


def test_unknown_schema_is_an_input_error(gate):
    with pytest.raises(gate.GateInputError):
        gate.ratios_of({"results": []})


# -- the command line (on files: no benchmark runs) ---------------------------------------------

def test_main_exit_codes(gate, tmp_path, capsys):
    ref = write(tmp_path, "ref.json", reference({"a": {"memcpy": 2.0}}))
    ok = write(tmp_path, "ok.json", result([("a", 25.0, {"memcpy": 10.0})]))
    bad = write(tmp_path, "bad.json", result([("a", 27.0, {"memcpy": 10.0})]))
    debug = write(tmp_path, "debug.json", result([("a", 25.0, {"memcpy": 10.0})], debug=True))
    assert gate.main(["--json", ok, "--reference", ref]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "a" in out
    assert gate.main(["--json", bad, "--reference", ref]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "+35%" in out
    assert gate.main(["--json", bad, "--reference", ref, "--threshold", "0.4"]) == 0
    assert gate.main(["--json", debug, "--reference", ref]) == 2
    assert gate.main(["--json", str(tmp_path / "missing.json"), "--reference", ref]) == 2


def test_make_reference_command(gate, tmp_path):
    a = write(tmp_path, "a.json", result([("x", 20.0, {"memcpy": 10.0})]))
    b = write(tmp_path, "b.json", result([("x", 24.0, {"memcpy": 10.0})]))
    out = tmp_path / "ref.json"
    out.write_text(json.dumps(reference({}, tolerance={"x": 0.5})))   # kept across refreshes
    assert gate.main(["--make-reference", a, b, "-o", str(out)]) == 0
    ref = json.loads(out.read_text())
    assert ref["ratios"] == {"x": {"memcpy": 2.4}} and ref["tolerance"] == {"x": 0.5}


def test_committed_reference_file_is_usable(gate):
    ref = json.loads((ROOT / "ci" / "reference_ratios.json").read_text())
    ratios = gate.reference_ratios(ref)
    assert ratios and all(r > 0 for r in ratios.values())
    assert 0 < ref["threshold"] <= 1
    # every group that --quick runs by default has references
    prefixes = {row.split(".")[0] for row, _ in ratios}
    assert {"pool", "append", "serialize", "deserialize", "local", "remote", "metrics", "network"} <= prefixes


# -- the schema flinknet bench writes -------------------------------------------------------------

def test_flinknet_bench_json_has_the_schema_the_gate_reads(gate, tmp_path):
    out = tmp_path / "kernels.json"
    proc = subprocess.run([sys.executable, "-m", "flinknet", "bench", "--only", "kernels", "--quick",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "pool.request_buffer+recycle" in proc.stdout      # the table is printed too
    doc = json.loads(out.read_text())
    assert doc["schema"] == 1 and doc["quick"] is True and doc["groups"] == ["kernels"]
    assert {"python", "platform", "debug_build", "cpus"} <= set(doc["environment"])
    names = [r["name"] for r in doc["results"]]
    assert "append.100B" in names and "deserialize.8B.per_buffer_list" in names
    for row in doc["results"]:
        assert {"name", "group", "unit", "value", "baselines", "ratios", "references", "note"} <= set(row)
        assert row["group"] == "kernels" and row["value"] > 0 and row["baselines"]
        assert set(row["ratios"]) == set(row["baselines"])
        for name, base in row["baselines"].items():
            assert row["ratios"][name] == pytest.approx(row["value"] / base)
    ratios = gate.ratios_of(doc)
    assert len(ratios) == sum(len(r["baselines"]) for r in doc["results"])
    # and the gate accepts it against itself
    assert gate.compare(ratios, ratios).passed


def test_committed_tolerances_are_the_ones_ci_readme_documents():
    """ci/README.md's table says why each tolerance pattern is wider than the threshold; the
    reference file must hold exactly those (a refresh once dropped them all, gating every ratio
    at 30%)."""
    import re

    ref = json.loads((ROOT / "ci" / "reference_ratios.json").read_text())
    documented = {}
    for line in (ROOT / "ci" / "README.md").read_text().splitlines():
        line = line.strip()
        if not line.startswith("| `"):
            continue
        cells = re.split(r"(?<!\\)\|", line)   # a pattern's own pipe is written \|
        patterns, value = cells[1], cells[2].strip()
        for pattern in re.findall(r"`([^`]+)`", patterns):
            documented[pattern.replace("\\|", "|")] = float(value)
    assert documented, "ci/README.md lost its tolerance table"
    assert ref["tolerance"] == documented
