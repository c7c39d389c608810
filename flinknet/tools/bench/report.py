"""The plumbing every benchmark suite shares: :class:`Row`, the table, the ``--json`` document.

A row is flinknet's time per operation beside the baselines measured in the same run (and the
recorded figures printed next to them, never gated). :func:`format_table` prints rows,
:func:`environment` says where they were measured, :func:`to_json` / :func:`write_json` make the
``--json`` document (``ci/bench_gate.py`` reads it) and :func:`rows_from_json` reads its rows back.

This module imports no suite: the suites import it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy

from flinknet import __version__
from flinknet._core.buffer import is_debug_build

__all__ = ["JSON_SCHEMA", "Environment", "Row", "environment", "format_table", "rows_from_json", "to_json",
           "write_json"]

#: version of the ``--json`` layout (``ci/bench_gate.py`` checks it)
JSON_SCHEMA = 1


@dataclass
class Row:
    """One benchmark: flinknet's ``value`` (time per operation, in ``unit``), the baselines measured
    in the same run (``baselines``: name -> time in the same unit) and recorded figures printed
    beside them (``references``, e.g. Flink 2.3's, never re-measured: not gated)."""

    name: str
    unit: str
    value: float
    baselines: dict[str, float] = field(default_factory=dict)
    note: str = ""
    references: dict[str, float] = field(default_factory=dict)
    group: str = ""

    def ratio(self, baseline: str) -> float:
        """flinknet / baseline, time per operation: above 1 flinknet is slower."""
        return self.value / self.baselines[baseline]

    def ratios(self) -> dict[str, float | None]:
        """flinknet / baseline for every baseline (None where it is undefined: a zero or
        non-finite time on either side)."""
        return {name: _ratio(self.value, base) for name, base in self.baselines.items()}

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "group": self.group, "unit": self.unit, "value": _finite(self.value),
                "baselines": {k: _finite(v) for k, v in self.baselines.items()}, "ratios": self.ratios(),
                "references": {k: _finite(v) for k, v in self.references.items()},
                "reference_ratios": {k: _ratio(self.value, v) for k, v in self.references.items()},
                "note": self.note}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Row:
        """The row :meth:`to_json` wrote (a time it wrote as null, not finite, comes back NaN)."""
        return cls(row["name"], row["unit"], _number(row["value"]),
                   {k: _number(v) for k, v in row.get("baselines", {}).items()}, row.get("note", ""),
                   {k: _number(v) for k, v in row.get("references", {}).items()}, row.get("group", ""))


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _number(x: float | None) -> float:
    return float("nan") if x is None else x


def _ratio(value: float, base: float) -> float | None:
    if not (math.isfinite(value) and math.isfinite(base)) or base == 0:
        return None
    return value / base


def _fmt(v: float) -> str:
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"


def format_table(rows: list[Row]) -> str:
    """The table: one line per baseline (measured in this run) and per recorded reference."""
    name_w = max([40] + [len(r.name) for r in rows])
    base_w = max([24] + [len(b) for r in rows for b in (*r.baselines, *r.references)])
    head = f"{'benchmark':<{name_w}} {'flinknet':>14}  {'baseline':<{base_w}} {'baseline':>10} {'ratio':>8}"
    lines = [head, "-" * len(head)]
    for row in rows:
        first = True
        for base_name, base_value in [*row.baselines.items(), *row.references.items()]:
            name = row.name if first else ""
            value = f"{_fmt(row.value)} {row.unit}" if first else ""
            r = _ratio(row.value, base_value)
            lines.append(f"{name:<{name_w}} {value:>14}  {base_name:<{base_w}} {_fmt(base_value):>10} "
                         + (f"{r:>7.2f}x" if r is not None else f"{'-':>8}"))
            first = False
        if first:
            lines.append(f"{row.name:<{name_w}} {_fmt(row.value) + ' ' + row.unit:>14}")
        if row.note:
            lines.append(f"{'':<{name_w}} {'':>14}  {row.note}")
    lines.append("")
    lines.append("ratio = flinknet / baseline (time per operation, record or byte; "
                 "below 1.00x flinknet is faster).")
    lines.append("Baselines are measured in this run; '(rec.)' marks a recorded figure "
                 "(bench/flink_reference.md), printed for comparison only.")
    lines.append("records/s = 1e9 / (ns/rec).")
    return "\n".join(lines)


class Environment(TypedDict):
    """Where the rows were measured (:func:`environment`, the ``--json`` document's ``environment``)."""

    flinknet: str
    python: str
    platform: str
    machine: str
    cpus: int | None
    numpy: str
    #: pyzmq's version, None when it is not installed (no ZeroMQ baselines)
    pyzmq: str | None
    debug_build: bool


def environment() -> Environment:
    """Where the rows were measured: versions, platform, CPUs, whether this is a debug build."""
    pyzmq: str | None
    try:
        import zmq  # type: ignore[import-not-found,unused-ignore]  # optional: flinknet[bench]

        pyzmq = zmq.__version__
    except ImportError:
        pyzmq = None
    return {
        "flinknet": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "numpy": numpy.__version__,
        "pyzmq": pyzmq,
        "debug_build": is_debug_build(),
    }


def to_json(rows: list[Row], env: Environment, quick: bool, groups: Iterable[str],
            wall_s: float) -> dict[str, Any]:
    """The ``--json`` document: every row with its value, unit, baselines, ratios and the run's
    environment. ``ratios`` are flinknet / baseline for the baselines measured in this run."""
    return {"schema": JSON_SCHEMA, "environment": env, "quick": quick, "groups": list(groups),
            "wall_s": round(wall_s, 1), "results": [r.to_json() for r in rows]}


def write_json(path: str, rows: list[Row], env: Environment, quick: bool, groups: Iterable[str],
               wall_s: float) -> None:
    """Write :func:`to_json`'s document to ``path``."""
    with open(path, "w") as f:
        json.dump(to_json(rows, env, quick, groups, wall_s), f, indent=2)
        f.write("\n")


def rows_from_json(doc: dict[str, Any]) -> list[Row]:
    """The rows of a ``--json`` document (:func:`to_json`'s ``results``)."""
    return [Row.from_json(r) for r in doc.get("results", [])]
