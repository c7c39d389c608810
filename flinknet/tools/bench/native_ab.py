"""The native receive engine against the Python I/O thread, alternated in one window.

``python -m flinknet.tools.bench.native_ab [--rounds N] [--quick]`` runs the ``remote`` transfers
of ``transport.run_remote`` (a producer process → this process, Flink's defaults) with
``flinknet.network.native-io`` on and off in turn, ``N`` rounds, and prints per case the median
of each side, their ratio (the Python path's time / the native engine's: > 1 means the engine is
faster) and the CPU seconds per GB of each process. Latency rows compare the median and p99
one-way delay at 10 000 records/s of 100 B with buffer timeout 0 (the Python path's delay / the
engine's).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from typing import Any

from flinknet.tools.bench.transport import run_remote

_ON = {"flinknet.network.native-io": True}
_OFF = {"flinknet.network.native-io": False}


def _pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def throughput_case(size: int, n: int, rounds: int) -> dict[str, Any]:
    """Seconds and CPU per GB for ``n`` records of ``size`` bytes (batch API), native and
    Python path alternated ``rounds`` times."""
    out: dict[str, Any] = {"size": size, "n": n, "native": [], "python": []}
    for _ in range(rounds):
        for name, options in (("native", _ON), ("python", _OFF)):
            stats: dict[str, float] = {}
            seconds = run_remote(size, n, "batch", stats=stats, options=options)
            gb = size * n / 1e9
            out[name].append((seconds, stats["consumer_cpu_s"] / gb, stats["producer_cpu_s"] / gb))
    return out


def latency_case(n: int, rounds: int) -> dict[str, Any]:
    """One-way delays (µs) at 10 000 records/s of 100 B, buffer timeout 0, alternated."""
    out: dict[str, Any] = {"native": [], "python": []}
    for _ in range(rounds):
        for name, options in (("native", _ON), ("python", _OFF)):
            delays = run_remote(100, n, "latency", timeout_ms=0, rate=10_000, options=options)
            out[name].append((_pct(delays, 0.5), _pct(delays, 0.99)))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="The native receive engine against the Python I/O thread, alternated.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer records per transfer")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    scale = 0.2 if args.quick else 1.0
    cases = [(100, int(2_000_000 * scale)), (1000, int(600_000 * scale)), (32768, int(30_000 * scale))]
    print("case        native (median)        python path (median)   python/native   "
          "CPU s/GB native (cons, prod)   python (cons, prod)")
    for size, n in cases:
        r = throughput_case(size, n, args.rounds)
        nat = statistics.median(t for t, _, _ in r["native"])
        py = statistics.median(t for t, _, _ in r["python"])
        cpu = {k: (statistics.median(c for _, c, _ in r[k]), statistics.median(p for _, _, p in r[k]))
               for k in ("native", "python")}
        ratios = ", ".join(f"{p[0] / q[0]:.2f}" for q, p in zip(r["native"], r["python"], strict=True))
        print(f"{size:>6} B   {n / nat / 1e6:6.2f} M/s {size * n / nat / 1e9:5.2f} GB/s   "
              f"{n / py / 1e6:6.2f} M/s {size * n / py / 1e9:5.2f} GB/s   {py / nat:5.2f} ({ratios})   "
              f"{cpu['native'][0]:.2f}, {cpu['native'][1]:.2f}              "
              f"{cpu['python'][0]:.2f}, {cpu['python'][1]:.2f}", flush=True)
    lat = latency_case(int(20_000 * scale) or 2000, args.rounds)
    for i, label in ((0, "p50"), (1, "p99")):
        nat = statistics.median(v[i] for v in lat["native"])
        py = statistics.median(v[i] for v in lat["python"])
        print(f"latency {label}: native {nat:.1f} µs, python path {py:.1f} µs, python/native "
              f"{py / nat:.2f}", flush=True)


if __name__ == "__main__":
    main()
