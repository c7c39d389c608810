"""``flinknet bench``: microbenchmarks of the core, each beside a baseline measured in the same run.

Every row reports flinknet's cost and one or more baselines timed moments before on the same
machine, and the ratio between them, so the numbers mean something on a shared, noisy host.
The groups and their suites:

* ``kernels``: ``pool.*``, ``append.*``, ``copy.32KiB``, ``serialize.*`` / ``deserialize.*``
  against pure-Python equivalents, the same kernels driven from C and ``memcpy`` (see
  :mod:`flinknet.tools.bench.kernels`).
* ``local``: records from a producer thread to a consumer thread through a pipelined partition
  and a local input channel (per record, batch, numpy), against a bounded ``queue.Queue`` between
  the same threads and beside Flink 2.3's recorded in-process figure (see
  :mod:`flinknet.tools.bench.exchange`).
* ``remote`` (``remote.*`` / ``latency.*``): a producer process → a consumer process over loopback
  TCP (credit-based transport), against a raw Python socket and the socket ceiling measured in
  the same run and beside Flink 2.3's recorded two-TaskManager figures (see
  :mod:`flinknet.tools.bench.transport`); the native floors (the same thread structure in C
  without the GIL, with and without Flink's credit window: :mod:`flinknet.tools.bench.floor`)
  measured in the same run beside the 32 KiB and latency rows; the same exchange read on an
  asyncio event loop against the threaded reader of the same run (``remote.100B.asyncio.*``);
  full runs add 32 floating buffers per gate (``remote.*.floating32``) and a keyed job of two
  producer processes → one consumer against pyzmq (``remote.keyed.2to1.100B``,
  :mod:`flinknet.tools.bench.keyed`).
* ``metrics``: the local exchange with task metrics on, against metrics off in the same run (see
  :mod:`flinknet.tools.bench.exchange`).
* ``network``: flink-benchmarks' network suite (throughput for writers x channels x buffer
  timeout, data skew, broadcast, latency; credit-based and TCP flow control, with and without
  TLS) between a producer process and this one, against a raw socket and ZeroMQ PUSH/PULL (when
  pyzmq is installed) measured around each row (see :mod:`flinknet.tools.bench.network`).
* ``scale``: only with ``--only scale`` (see :func:`flinknet.tools.bench.scale.bench_scale`).
* ``runners``: only with ``--only runners``: the same keyed job on ThreadRunner, ProcessRunner and
  RayRunner, and the deployment time of jobs of 1, 8 and 64 subtasks (see
  :mod:`flinknet.tools.bench.runners`).
* ``checkpoint``: only with ``--only checkpoint``: alignment time, start delay and in-flight bytes
  of checkpoints under back-pressure, aligned vs unaligned, debloating off vs on, side by side;
  the cost of checkpointing on a job's throughput (on vs off, same run) (see
  :mod:`flinknet.tools.bench.checkpoint`).

Groups ``kernels``, ``local``, ``remote``, ``metrics`` and ``network`` run by default; ``--only``
picks some; ``--quick`` runs a reduced set (all default groups in a few minutes);
``--json FILE`` writes every row (value, unit, baselines, ratios, recorded references, note) and
the environment (:mod:`flinknet.tools.bench.report`), which ``ci/bench_gate.py`` compares with its
committed reference ratios. Recorded figures (Flink's) are kept apart from baselines
(``Row.references``): they are printed, never gated. Every group checks its buffer pools are
whole at the end and stops the processes and threads it started.

Each measurement is the best of several repeats (the least disturbed by other load).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

from flinknet.tools.bench import (
    checkpoint,
    exchange,
    floor,
    kernels,
    keyed,
    network,
    runners,
    scale,
    transport,
)
from flinknet.tools.bench.report import Row, environment, format_table, write_json

__all__ = ["EXTRA_GROUPS", "GROUPS", "main", "run"]

#: the groups a plain ``flinknet bench`` (and ``--quick``) runs, in order
GROUPS = ("kernels", "local", "remote", "metrics", "network")
#: groups that run only when named with ``--only``: the scale experiments (channels 1 -> 1000
#: with their set-up cost and memory, a hot key against the per-channel cap, hosts behind a
#: delayed link in network namespaces) are minutes long and partly root-only; the runners (a
#: local Ray cluster, 64 worker processes) are minutes long too; the checkpoint runs take a minute
#: of real processes
EXTRA_GROUPS = ("scale", "runners", "checkpoint")

#: group -> the suite function that returns its rows, ``(quick) -> list[Row]``
_SUITES: dict[str, Callable[[bool], list[Row]]] = {
    "kernels": kernels.bench_kernels,
    "local": lambda quick: exchange.bench_local_exchange(quick=quick),
    # the keyed 2 -> 1 job (remote.keyed.*) only in full runs: it keeps the quick run short
    "remote": lambda quick: _remote_rows(quick),
    "metrics": lambda quick: exchange.bench_metrics_overhead(quick=quick),
    "network": lambda quick: network.bench_network(quick=quick),
    "scale": lambda quick: scale.bench_scale(quick=quick),
    "runners": lambda quick: runners.bench_runners(quick=quick),
    "checkpoint": lambda quick: checkpoint.bench_checkpoint(quick=quick),
}


def _remote_rows(quick: bool) -> list[Row]:
    """The ``remote`` group: the exchange's rows with the native floors measured beside the rows
    they bound, the floors again in alternated pairs with flinknet (issue 14's acceptance), then
    (full runs) the keyed job."""
    rows = transport.bench_remote_exchange(quick=quick)
    floor.add_floor_baselines(rows, total=(256 << 20) if quick else (1 << 30),
                              latency_records=5_000 if quick else 20_000)
    rows += floor.bench_floor_pairs(quick=quick)
    return rows + ([] if quick else keyed.bench_keyed(quick=False, repeats=2))


def run(quick: bool = False, groups: Sequence[str] = GROUPS) -> list[Row]:
    """The rows of ``groups``, in the order of :data:`GROUPS` then :data:`EXTRA_GROUPS`."""
    unknown = set(groups) - set(GROUPS + EXTRA_GROUPS)
    if unknown:
        raise ValueError(f"unknown benchmark group(s): {', '.join(sorted(unknown))} "
                         f"(groups: {', '.join(GROUPS + EXTRA_GROUPS)})")
    rows = []
    for group in GROUPS + EXTRA_GROUPS:
        if group in groups:
            for row in _SUITES[group](quick):
                row.group = group
                rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """``flinknet bench [--quick] [--only GROUP ...] [--json FILE]``; returns the exit status."""
    all_groups = GROUPS + EXTRA_GROUPS
    parser = argparse.ArgumentParser(prog="flinknet bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a reduced set with fewer iterations (all default groups in a few minutes)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument("--only", metavar="GROUP", action="append", choices=all_groups,
                        help=f"run only these groups (repeatable; default: {', '.join(GROUPS)}; "
                             f"only when named: {', '.join(EXTRA_GROUPS)})")
    args = parser.parse_args(argv)
    env = environment()
    if env["debug_build"]:
        print("warning: this is a FLINKNET_DEBUG build; numbers are not representative", file=sys.stderr)
    groups = tuple(g for g in all_groups if g in (args.only or GROUPS))
    t0 = time.perf_counter()
    rows = []
    for group in groups:
        t1 = time.perf_counter()
        print(f"[flinknet bench] {group} ...", file=sys.stderr, flush=True)
        rows += run(quick=args.quick, groups=(group,))
        print(f"[flinknet bench] {group}: {time.perf_counter() - t1:.1f} s", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    print(f"flinknet bench{' --quick' if args.quick else ''}  (Python {env['python']}, {env['platform']})")
    print(format_table(rows))
    print(f"({wall:.1f} s)")
    if args.json:
        write_json(args.json, rows, env, args.quick, groups, wall)
    return 0
