#!/usr/bin/env python3
"""CI benchmark gate: fail only on a large regression of a ratio to a same-run baseline.

``flinknet bench`` prints, for every row, flinknet's time per operation and the time of one or
more baselines measured in the same run on the same machine (memcpy, a raw socket, ZeroMQ, a
pure-Python equivalent, ...). The gate compares each row's **ratios** ``flinknet / baseline``
with the reference ratios committed in ``ci/reference_ratios.json``:

* direction: both numbers are *time per operation*, so a **higher ratio is worse**. A ratio
  regressed when ``new > reference * (1 + tolerance)``; the tolerance is 30% unless the reference
  file (``threshold``) or ``--threshold`` says otherwise, or one of the file's ``tolerance``
  patterns (``fnmatch`` on the row name or on ``"row | baseline"``) matches: a wider tolerance
  for ratios known to be noisier than that on shared machines (``ci/README.md`` says why each);
* absolute times never gate: a slower machine slows flinknet and its baselines alike, and
  recorded figures (Flink's, ``references`` in the JSON) are not baselines and are ignored;
* a row or baseline present on only one side (a group not run, ``pyzmq`` or ``openssl`` missing,
  a renamed row) is listed as a note and ignored;
* noise: with ``--retries N`` (default 2), groups with a regressed ratio are measured again and
  each ratio keeps its best value over the attempts before the verdict: noise on a shared machine
  rarely repeats, a real regression does.

Usage::

    python ci/bench_gate.py                       # runs `flinknet bench --quick --json <tmp>`
    python ci/bench_gate.py --json results.json   # gates an existing result (no re-runs)
    python ci/bench_gate.py --make-reference a.json b.json [-o ci/reference_ratios.json]

Exit status: 0 pass, 1 a ratio regressed (or the benchmark failed), 2 bad input (no usable
result, a debug build, an unknown schema). The table of the run and the comparison are printed
either way. See ``ci/README.md`` for refreshing the references.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fnmatch
import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_REFERENCE = os.path.join(HERE, "reference_ratios.json")
DEFAULT_THRESHOLD = 0.30
SCHEMA = 1

Key = tuple  # (row name, baseline name)


class GateInputError(Exception):
    """The input cannot be gated (exit status 2)."""


# -- reading --------------------------------------------------------------------------------------

def ratios_of(doc: dict) -> dict[Key, float]:
    """``(row, baseline) -> flinknet / baseline`` of a ``flinknet bench --json`` document (time per
    operation, higher is worse). Only baselines measured in the run: recorded references never
    appear here."""
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise GateInputError(f"not a flinknet bench --json document of schema {SCHEMA} "
                             f"(schema: {doc.get('schema') if isinstance(doc, dict) else None!r})")
    out: dict[Key, float] = {}
    for row in doc.get("results", []):
        value = row.get("value")
        for name, base in row.get("baselines", {}).items():
            ratio = row.get("ratios", {}).get(name)
            if ratio is None and value is not None and base:
                ratio = value / base
            if ratio is not None and math.isfinite(ratio) and ratio > 0:   # undefined ratios: not gated
                out[(row["name"], name)] = float(ratio)
    return out


def group_of(doc: dict) -> dict[str, str]:
    """row name -> its ``flinknet bench`` group."""
    return {row["name"]: row.get("group", "") for row in doc.get("results", [])}


def reference_ratios(ref: dict) -> dict[Key, float]:
    return {(row, base): float(r)
            for row, bases in ref.get("ratios", {}).items() for base, r in bases.items()}


# -- comparing ------------------------------------------------------------------------------------

@dataclass
class Verdict:
    key: Key
    reference: float
    new: float
    limit: float
    status: str    # "ok", "REGRESSED", "improved"

    @property
    def change(self) -> float:
        return self.new / self.reference - 1


@dataclass
class Comparison:
    verdicts: list[Verdict] = field(default_factory=list)
    only_in_run: list[Key] = field(default_factory=list)
    only_in_reference: list[Key] = field(default_factory=list)
    not_gated: list[Key] = field(default_factory=list)

    @property
    def regressions(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.status == "REGRESSED"]

    @property
    def passed(self) -> bool:
        return not self.regressions


def tolerance_for(key: Key, tolerance: dict[str, float | None], threshold: float) -> float | None:
    """The allowed regression of one ratio: ``threshold``, unless ``tolerance`` patterns
    (``fnmatch``, matched against the row name and against ``"row | baseline"``) match it; then
    the largest matching value, or None (not gated) if a matching pattern says null."""
    row, base = key
    matched = []
    for pattern, tol in tolerance.items():
        if fnmatch.fnmatchcase(row, pattern) or fnmatch.fnmatchcase(f"{row} | {base}", pattern):
            if tol is None:
                return None
            matched.append(float(tol))
    return max(matched) if matched else threshold


def compare(new: dict[Key, float], reference: dict[Key, float], threshold: float = DEFAULT_THRESHOLD,
            tolerance: dict[str, float | None] | None = None) -> Comparison:
    """Each ratio against its reference. Ratios are time per operation (flinknet / baseline):
    regressed iff ``new > reference * (1 + tol)``, ``tol`` = :func:`tolerance_for` (the
    threshold unless a tolerance pattern matches); "improved" iff ``new < reference / (1 + tol)``
    (informational: time to refresh the references)."""
    tolerance = tolerance or {}
    out = Comparison()
    for key in sorted(set(new) | set(reference)):
        if key not in reference:
            out.only_in_run.append(key)
            continue
        if key not in new:
            out.only_in_reference.append(key)
            continue
        tol = tolerance_for(key, tolerance, threshold)
        if tol is None:
            out.not_gated.append(key)
            continue
        ref, ratio = reference[key], new[key]
        limit = ref * (1 + tol)
        if ratio > limit:
            status = "REGRESSED"
        elif ratio < ref / (1 + tol):
            status = "improved"
        else:
            status = "ok"
        out.verdicts.append(Verdict(key, ref, ratio, limit, status))
    return out


def best_of(*runs: dict[Key, float]) -> dict[Key, float]:
    """Per key, the lowest (best) ratio over several measurements of the same code."""
    out: dict[Key, float] = {}
    for run in runs:
        for key, ratio in run.items():
            out[key] = min(ratio, out.get(key, ratio))
    return out


def make_reference(docs: list[dict], threshold: float = DEFAULT_THRESHOLD,
                   tolerance: dict[str, float] | None = None) -> dict:
    """A reference file from several runs: per key the **worst** (highest) ratio seen, so that
    the noise of a shared machine does not make the gate flaky; keys in any run count."""
    if not docs:
        raise GateInputError("make_reference needs at least one result")
    worst: dict[Key, float] = {}
    for doc in docs:
        for key, ratio in ratios_of(doc).items():
            worst[key] = max(ratio, worst.get(key, ratio))
    nested: dict[str, dict[str, float]] = {}
    for (row, base), ratio in sorted(worst.items()):
        nested.setdefault(row, {})[base] = round(ratio, 4)
    env = docs[0].get("environment", {})
    return {
        "about": "flinknet / baseline time-per-operation ratios (higher is worse) that ci/bench_gate.py "
                 "compares against; see ci/README.md",
        "threshold": threshold,
        "tolerance": dict(sorted((tolerance or {}).items())),
        "generated": {
            "date": _dt.date.today().isoformat(),
            "runs": len(docs),
            "rule": "worst ratio per row and baseline over the runs",
            "quick": [doc.get("quick") for doc in docs],
            "environment": env,
        },
        "ratios": nested,
    }


# -- printing -------------------------------------------------------------------------------------

def format_comparison(cmp: Comparison, attempts: int = 1) -> str:
    lines = []
    w_row = max([44] + [len(v.key[0]) for v in cmp.verdicts])
    w_base = max([28] + [len(v.key[1]) for v in cmp.verdicts])
    head = (f"{'row':<{w_row}} {'baseline':<{w_base}} {'reference':>9} {'this run':>9} "
            f"{'change':>8} {'limit':>8}  status")
    lines += [head, "-" * len(head)]
    for v in cmp.verdicts:
        lines.append(f"{v.key[0]:<{w_row}} {v.key[1]:<{w_base}} {v.reference:>8.3f}x {v.new:>8.3f}x "
                     f"{100 * v.change:>+7.1f}% {v.limit:>7.3f}x  {v.status}")
    lines.append("")
    lines.append("ratio = flinknet / baseline, time per operation: higher is worse; a ratio regressed "
                 "when it exceeds its limit = reference x (1 + tolerance). Absolute times never gate.")
    if attempts > 1:
        lines.append(f"Each ratio is the best of {attempts} measurements of its group.")
    if cmp.only_in_run:
        lines.append(f"note: {len(cmp.only_in_run)} ratio(s) have no reference (not gated): "
                     + ", ".join(f"{r} / {b}" for r, b in cmp.only_in_run))
    if cmp.only_in_reference:
        lines.append(f"note: {len(cmp.only_in_reference)} reference ratio(s) were not measured in this run "
                     "(not gated): " + ", ".join(f"{r} / {b}" for r, b in cmp.only_in_reference))
    if cmp.not_gated:
        lines.append(f"note: {len(cmp.not_gated)} ratio(s) are not gated (tolerance null): "
                     + ", ".join(f"{r} / {b}" for r, b in cmp.not_gated))
    improved = [v for v in cmp.verdicts if v.status == "improved"]
    if improved:
        lines.append(f"note: {len(improved)} ratio(s) improved beyond the tolerance; consider refreshing "
                     "ci/reference_ratios.json (ci/README.md)")
    return "\n".join(lines)


def print_bench_table(doc: dict) -> None:
    """The benchmark's own table, rebuilt from a JSON result (for --json runs)."""
    try:
        from flinknet.tools.bench.report import format_table, rows_from_json
    except ImportError:
        for row in doc.get("results", []):
            print(f"{row['name']:<46} {row['value']} {row['unit']}  ratios: "
                  + ", ".join(f"{k} {v}" for k, v in row.get("ratios", {}).items()))
        return
    print(format_table(rows_from_json(doc)))


# -- running --------------------------------------------------------------------------------------

def run_bench(out_path: str, groups: list[str] | None = None, python: str = sys.executable) -> int:
    """``flinknet bench --quick --json out_path [--only g ...]``; its table goes to our stdout."""
    cmd = [python, "-m", "flinknet", "bench", "--quick", "--json", out_path]
    for g in groups or []:
        cmd += ["--only", g]
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT).returncode


def load_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise GateInputError(f"cannot read {path}: {err}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ci/bench_gate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="FILE", help="gate this flinknet bench --json result instead of "
                                                      "running flinknet bench --quick")
    parser.add_argument("--reference", metavar="FILE", default=DEFAULT_REFERENCE,
                        help="reference ratios (default: ci/reference_ratios.json)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="allowed regression as a fraction (default: the reference file's, else 0.30)")
    parser.add_argument("--retries", type=int, default=2,
                        help="re-measure groups with a regressed ratio up to this many times, keeping "
                             "each ratio's best (default 2; not with --json)")
    parser.add_argument("--make-reference", nargs="+", metavar="RESULT",
                        help="write a reference file from these --json results (worst ratio per row)")
    parser.add_argument("-o", "--output", metavar="FILE", default=DEFAULT_REFERENCE,
                        help="where --make-reference writes (default: ci/reference_ratios.json)")
    args = parser.parse_args(argv)
    try:
        return _main(args)
    except GateInputError as err:
        print(f"bench gate: {err}", file=sys.stderr)
        return 2


def _main(args) -> int:
    if args.make_reference:
        docs = [load_json(p) for p in args.make_reference]
        old_tolerance = {}
        if os.path.exists(args.output):
            try:
                old_tolerance = load_json(args.output).get("tolerance", {})
            except GateInputError:
                pass
        ref = make_reference(docs, args.threshold if args.threshold is not None else DEFAULT_THRESHOLD,
                             old_tolerance)
        with open(args.output, "w") as f:
            json.dump(ref, f, indent=2)
            f.write("\n")
        n = sum(len(v) for v in ref["ratios"].values())
        print(f"wrote {args.output}: {n} ratios of {len(ref['ratios'])} rows from {len(docs)} run(s)")
        return 0

    ref = load_json(args.reference)
    reference = reference_ratios(ref)
    threshold = (args.threshold if args.threshold is not None
                 else float(ref.get("threshold", DEFAULT_THRESHOLD)))
    tolerance = ref.get("tolerance", {})

    with tempfile.TemporaryDirectory(prefix="flinknet-bench-gate-") as tmp:
        if args.json:
            doc = load_json(args.json)
            print_bench_table(doc)
            code = 0
        else:
            path = os.path.join(tmp, "bench.json")
            code = run_bench(path)
            if code != 0 or not os.path.exists(path):
                print(f"bench gate: FAILED: flinknet bench exited with status {code}", file=sys.stderr)
                return 1
            doc = load_json(path)
        if doc.get("environment", {}).get("debug_build"):
            raise GateInputError("the result comes from a FLINKNET_DEBUG build: its numbers are not "
                                 "representative; gate a release build")
        new = ratios_of(doc)
        cmp = compare(new, reference, threshold, tolerance)
        attempts = 1
        retries = 0 if args.json else max(0, args.retries)
        while not cmp.passed and retries > 0:
            groups_by_row = group_of(doc)
            groups = sorted({groups_by_row.get(v.key[0], "") for v in cmp.regressions} - {""})
            if not groups:
                break
            print(f"\nbench gate: {len(cmp.regressions)} ratio(s) above their limit; measuring "
                  f"{', '.join(groups)} again\n", flush=True)
            path = os.path.join(tmp, f"retry{attempts}.json")
            if run_bench(path, groups) != 0 or not os.path.exists(path):
                print("bench gate: FAILED: flinknet bench failed on the retry", file=sys.stderr)
                return 1
            new = best_of(new, ratios_of(load_json(path)))
            cmp = compare(new, reference, threshold, tolerance)
            attempts += 1
            retries -= 1

    print()
    print(f"bench gate: ratios against {os.path.relpath(args.reference)} (threshold {100 * threshold:.0f}%)")
    print(format_comparison(cmp, attempts))
    if cmp.passed:
        print(f"\nbench gate: PASSED ({len(cmp.verdicts)} ratios compared)")
        return code
    print(f"\nbench gate: FAILED: {len(cmp.regressions)} ratio(s) regressed by more than their tolerance:")
    for v in cmp.regressions:
        print(f"  {v.key[0]} / {v.key[1]}: {v.reference:.3f}x -> {v.new:.3f}x ({100 * v.change:+.0f}%)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
