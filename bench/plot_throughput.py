#!/usr/bin/env python3
"""Plot throughput against record size from a ``flinknet bench --json`` result.

    flinknet bench --only remote --json result.json
    python bench/plot_throughput.py result.json            # writes bench/throughput.png

Lines: flinknet's remote exchange (producer process -> consumer process over loopback TCP, the
``remote.<size>B.<api>`` rows: 8 B, 100 B, 1000 B and 32 KiB records, one line per API), the raw
Python socket measured in the same run (the ``raw socket 32KiB (bytes)`` baseline: the same
bytes, 32 KiB calls) and Apache Flink 2.3's recorded two-TaskManager figures parsed from
``bench/flink_reference.md`` (buffer timeout 100 ms; the mean of its two runs, the range as an
error bar). Left: payload MB/s; right: records/s. Needs matplotlib (``pip install
'flinknet[bench]'``); without it the script says so and exits 0 without writing anything.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent
SIZES = (8, 100, 1000, 32768)
APIS = ("per-record", "batch", "numpy")
RAW = "raw socket 32KiB (bytes)"


def flink_reference(path: pathlib.Path = HERE / "flink_reference.md") -> dict[int, tuple[float, float]]:
    """Record size -> (lowest, highest) records/s of Flink 2.3 with two TaskManagers and buffer
    timeout 100 ms, from the markdown table in ``bench/flink_reference.md``."""
    text = path.read_text()
    section = text.split("## Two TaskManagers", 1)[-1]
    out = {}
    row = re.compile(r"^\|\s*(\d+)\s*\|\s*100 ms\s*\|\s*([\d.]+)\s*([kM])\s*/\s*([\d.]+)\s*([kM])\s*\|", re.M)
    scale = {"k": 1e3, "M": 1e6}
    for m in row.finditer(section):
        a, b = float(m.group(2)) * scale[m.group(3)], float(m.group(4)) * scale[m.group(5)]
        out[int(m.group(1))] = (min(a, b), max(a, b))
    return out


def series(doc: dict) -> tuple[dict[str, dict[int, float]], dict[int, float]]:
    """(api -> size -> records/s, size -> raw-socket records/s) from the ``remote.*`` rows."""
    by_name = {r["name"]: r for r in doc.get("results", [])}
    flinknet: dict[str, dict[int, float]] = {}
    raw: dict[int, float] = {}
    for size in SIZES:
        for api in APIS:
            row = by_name.get(f"remote.{size}B.{api}")
            if row is None:
                continue
            flinknet.setdefault(api, {})[size] = 1e9 / row["value"]
            if RAW in row.get("baselines", {}):
                raw[size] = max(raw.get(size, 0.0), 1e9 / row["baselines"][RAW])
    return flinknet, raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("result", help="a flinknet bench --json file with the remote group")
    parser.add_argument("-o", "--output", default=str(HERE / "throughput.png"),
                        help="the image to write (default: bench/throughput.png)")
    args = parser.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_throughput: matplotlib is not installed (pip install 'flinknet[bench]'); "
              "skipping the plot", file=sys.stderr)
        return 0
    doc = json.loads(pathlib.Path(args.result).read_text())
    flinknet, raw = series(doc)
    if not flinknet:
        print(f"plot_throughput: {args.result} has no remote.* rows; run `flinknet bench --only remote "
              "--json FILE` (or a full run)", file=sys.stderr)
        return 1
    flink = flink_reference()

    fig, (ax_bytes, ax_recs) = plt.subplots(1, 2, figsize=(12, 4.8))
    markers = {"per-record": "o", "batch": "s", "numpy": "^"}
    for ax, per_byte in ((ax_bytes, True), (ax_recs, False)):
        def y(size, rps, per_byte=per_byte):
            return rps * size / 1e6 if per_byte else rps

        for api, points in flinknet.items():
            xs = sorted(points)
            ax.plot(xs, [y(s, points[s]) for s in xs], marker=markers[api],
                    label=f"flinknet remote, {api} API")
        if raw:
            xs = sorted(raw)
            ax.plot(xs, [y(s, raw[s]) for s in xs], "k--", label="raw Python socket, same bytes (same run)")
        if flink:
            xs = sorted(flink)
            mid = [y(s, sum(flink[s]) / 2) for s in xs]
            lo = [m - y(s, flink[s][0]) for s, m in zip(xs, mid)]
            hi = [y(s, flink[s][1]) - m for s, m in zip(xs, mid)]
            ax.errorbar(xs, mid, yerr=[lo, hi], fmt="D-", color="tab:red", capsize=4,
                        label="Apache Flink 2.3, 2 TaskManagers (recorded)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(list(SIZES))
        ax.set_xticklabels(["8 B", "100 B", "1000 B", "32 KiB"])
        ax.set_xlabel("record size")
        ax.set_ylabel("payload MB/s" if per_byte else "records/s")
        ax.grid(True, which="both", alpha=0.3)
    ax_bytes.legend(fontsize=8)
    env = doc.get("environment", {})
    fig.suptitle(f"Producer process -> consumer process over loopback TCP "
                 f"(Python {env.get('python', '?')}, {env.get('cpus', '?')} CPUs"
                 f"{', quick run' if doc.get('quick') else ''})")
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
