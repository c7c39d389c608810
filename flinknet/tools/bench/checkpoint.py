"""Checkpoints through the network stack: alignment under back-pressure, and what checkpointing
costs a job's throughput.

``flinknet bench --only checkpoint [--quick]`` (not a default group: about a minute of real
processes; never run by CI's bench gate). Both parts run the job of ``flinknet demo
--checkpointing`` (:mod:`flinknet.tools.demo.checkpoint`): 2 source processes → key groups →
2 aggregator processes over TCP, 12-byte records, the coordinator in this process triggering a
checkpoint every ``interval`` ms, every key's count and sum checked at the end (a run that loses
or duplicates a record fails the suite).

* ``checkpoint.slow.<metric>.<variant>``: the demo's slow phase for the whole run (the sources at
  50,000 records/s each, Aggregator[0] slowed to 20,000 records/s while it is sent 50,000, so its
  input buffers fill, its channels run out of credit and the sources block on it), a checkpoint
  every 200 ms, in four
  variants run one after the other: ``aligned`` (the baseline of every row), ``aligned.debloat``
  (buffer debloating on: target 200 ms, period 100 ms), ``unaligned`` and ``unaligned.debloat``.
  Metrics, medians over the checkpoints taken while slowed: ``duration`` (trigger to the last
  ack, ms), ``start_delay`` (the largest ``checkpointStartDelayNanos`` over the aggregators: how
  long the barrier travelled behind queued data), ``alignment`` (the largest
  ``checkpointAlignmentTime``) and ``in_flight`` (KiB at the cut: captured channel state plus the
  bytes processed while aligning). The side-by-side table is printed to stderr as well.
* ``checkpoint.cost.<mode>.<interval>ms``: the same job unthrottled (sources as fast as they
  generate), no slow phase, checkpoints every ``interval`` ms against the same job without
  checkpoints (the baseline ``checkpointing off``), runs interleaved, best of the repeats. Value:
  ns per record over the run (from the tasks' start to the last aggregator's result; process
  start-up excluded); the note has records/s and the checkpoints completed.
"""

from __future__ import annotations

import sys
from typing import Any

from flinknet.tools.bench.report import Row
from flinknet.tools.demo.checkpoint import (
    CheckpointDemoConfig,
    CheckpointDemoResult,
    CheckpointStats,
    CheckpointSummary,
    CheckpointView,
    format_checkpoint_comparison,
    run_checkpoint_demo,
)

__all__ = ["VARIANTS", "bench_checkpoint", "bench_checkpoint_cost", "bench_slow_alignment"]

#: name -> (mode, debloat) of the slow-phase runs; the first is every row's baseline
VARIANTS: dict[str, tuple[str, bool]] = {"aligned": ("aligned", False), "aligned.debloat": ("aligned", True),
                                         "unaligned": ("unaligned", False),
                                         "unaligned.debloat": ("unaligned", True)}
_METRICS = (("duration", "ms", "duration_ms", 1.0), ("start_delay", "ms", "start_delay_ms", 1.0),
            ("alignment", "ms", "alignment_ms", 1.0), ("in_flight", "KiB", "in_flight_bytes", 1 / 1024))
#: records/s the slowed aggregator keeps (it is sent 50,000/s: the demo's slow phase)
SLOW_RATE = 20_000
#: records/s a source is asked for in the cost runs: more than it can generate (unthrottled)
UNTHROTTLED = 10**9


def _run(cfg: CheckpointDemoConfig, **kwargs: Any) -> CheckpointDemoResult:
    result = run_checkpoint_demo(cfg, view=CheckpointView(), kill=False, **kwargs)
    if not result.counts_ok:
        raise RuntimeError(f"the checkpointed job lost or duplicated records ({result.mismatched_keys} keys "
                           f"differ): {cfg}")
    return result


def bench_slow_alignment(quick: bool = False, records: int | None = None) -> list[Row]:
    """The four variants of the slow phase, one after the other; rows against ``aligned``.
    ``records`` per source (default 60,000 quick, else 200,000: the slowed aggregator takes
    records / 20,000 s)."""
    records = (60_000 if quick else 200_000) if records is None else records
    found: dict[str, list[CheckpointStats]] = {}
    for name, (mode, debloat) in VARIANTS.items():
        cfg = CheckpointDemoConfig(mode=mode, records=records, rate=50_000,
                                   slow_rate=SLOW_RATE, checkpoint_interval_ms=200)
        result = _run(cfg, debloat=debloat, slow_from=0.0, slow_until=float("inf"))
        found[name] = [s for s in result.checkpoints if s.slow]
    print(format_checkpoint_comparison(found, label="slow phase"), file=sys.stderr)
    summaries = {name: CheckpointSummary.of(stats) for name, stats in found.items()}
    base_name = next(iter(VARIANTS))
    base = summaries[base_name]
    rows = []
    for metric, unit, attr, scale in _METRICS:
        base_value = getattr(base, attr)
        for name, summary in summaries.items():
            if name == base_name:
                continue
            value = getattr(summary, attr)
            rows.append(Row(
                f"checkpoint.slow.{metric}.{name}", unit,
                float("nan") if value is None else value * scale,
                {base_name: float("nan") if base_value is None else base_value * scale},
                note=f"medians of {summary.checkpoints} checkpoints (aligned: {base.checkpoints}) taken "
                     f"while Aggregator[0] was slowed to {SLOW_RATE:,} records/s, one every 200 ms"))
    return rows


def bench_checkpoint_cost(quick: bool = False, intervals: tuple[int, ...] | None = None,
                          repeats: int | None = None, records: int | None = None) -> list[Row]:
    """Throughput with checkpoints every ``interval`` ms (default 100 quick, else 10 and 100)
    against none, runs interleaved, best of ``repeats``; ``records`` per source."""
    repeats = (2 if quick else 3) if repeats is None else repeats
    intervals = ((100,) if quick else (10, 100)) if intervals is None else intervals
    records = (1_000_000 if quick else 3_000_000) if records is None else records
    modes = ("aligned", "unaligned")
    runs = [("off", "aligned", 0)] + [(f"{mode}.{i}ms", mode, i) for mode in modes for i in intervals]
    best: dict[str, CheckpointDemoResult] = {}
    for _ in range(repeats):
        for name, mode, interval in runs:
            cfg = CheckpointDemoConfig(mode=mode, records=records, rate=UNTHROTTLED,
                                       checkpoint_interval_ms=interval)
            result = _run(cfg, slow_from=float("inf"), slow_until=float("inf"))
            if name not in best or result.run_seconds < best[name].run_seconds:
                best[name] = result
    off = best["off"]
    off_ns = off.run_seconds / off.records * 1e9
    rows = []
    for name, _mode, interval in runs[1:]:
        r = best[name]
        rows.append(Row(
            f"checkpoint.cost.{name}", "ns/record", r.run_seconds / r.records * 1e9,
            {"checkpointing off": off_ns},
            note=f"{r.records / r.run_seconds / 1e6:.2f} M records/s with {len(r.checkpoints)} checkpoints "
                 f"(triggered every {interval} ms, one at a time) vs "
                 f"{off.records / off.run_seconds / 1e6:.2f} M/s without; 2 sources -> 2 aggregators, "
                 f"12-byte records, best of {repeats}"))
    return rows


def bench_checkpoint(quick: bool = False) -> list[Row]:
    """Both parts: alignment in the slow phase, then the cost on throughput."""
    return bench_slow_alignment(quick) + bench_checkpoint_cost(quick)
