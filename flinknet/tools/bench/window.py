"""Which side's buffers bound a transfer between two processes: the credit window, alternated.

``python -m flinknet.tools.bench.window [--rounds N] [--quick] [--floating F]`` runs the
``remote`` transfers of :func:`~flinknet.tools.bench.transport.run_remote` (a producer process →
this process) in turn with

* Flink's defaults on both sides (2 exclusive buffers per channel, 8 floating per gate: ten
  buffers of credit for one channel),
* ``F`` floating buffers per gate (``taskmanager.network.memory.floating-buffers-per-gate``) on
  the producer only (its partition's pool: ``1 × 2 + F`` buffers),
* ``F`` on the consumer only (the gate's pool: up to ``F`` floating buffers of credit),

``N`` rounds, and prints each case's median. If the consumer's larger window speeds a transfer up
and the producer's larger pool does not, the credit round trip bounds it: each credit costs a
round of thread wake-ups across the two processes (the consumer's ``AddCredit`` wakes the
producer's I/O thread, whose frames wake the consumer's I/O thread, which wakes the reading
task), and the window decides how many buffers share one round. ``bench/RESULTS.md`` §1f has a
run.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from typing import Any

from flinknet.tools.bench.transport import run_remote

FLOATING_KEY = "taskmanager.network.memory.floating-buffers-per-gate"

#: (record size in bytes, API, records per transfer)
CASES = ((100, "numpy", 4_000_000), (32768, "batch", 40_000))


def window_cases(floating: int) -> dict[str, dict[str, Any]]:
    """The configurations compared: name → ``run_remote`` keyword arguments."""
    more = {FLOATING_KEY: floating}
    return {
        "Flink's defaults (2 + 8)": {},
        f"{floating} floating, producer only": {"producer_options": more},
        f"{floating} floating, consumer only": {"consumer_options": more},
    }


def measure(size: int, api: str, n: int, rounds: int, floating: int) -> dict[str, list[dict[str, float]]]:
    """Per configuration, one result per round (alternated): seconds, the consumer gate's
    largest floating pool, CPU seconds per process."""
    cases = window_cases(floating)
    out: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, kwargs in cases.items():
            stats: dict[str, float] = {}
            seconds = run_remote(size, n, api, stats=stats, **kwargs)
            out[name].append({"seconds": seconds, **stats})
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="The consumer's credit window against the producer's pool, alternated.")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--floating", type=int, default=32,
                        help="floating buffers per gate for the larger side (default 32)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the records per transfer")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.floating < 1:
        parser.error("--floating must be >= 1")
    scale = 0.1 if args.quick else 1.0
    for size, api, n in CASES:
        n = max(1000, int(n * scale))
        results = measure(size, api, n, args.rounds, args.floating)
        print(f"{size} B records, {api} API, {n} records per transfer, {args.rounds} rounds "
              "alternated (median; every round in brackets):", flush=True)
        for name, runs in results.items():
            speeds = [n / r["seconds"] for r in runs]
            med = statistics.median(speeds)
            # every round in the unit that tells them apart: GB/s for large records
            every = ", ".join(f"{v * size / 1e9:.2f}" if size >= 1000 else f"{v / 1e6:.2f}"
                              for v in speeds)
            pool = int(runs[0]["consumer_gate_max_floating"])
            print(f"  {name:<32} {med / 1e6:7.2f} M records/s {med * size / 1e9:6.2f} GB/s   "
                  f"[{every}]  consumer gate pool <= {pool} floating", flush=True)


if __name__ == "__main__":
    main()
