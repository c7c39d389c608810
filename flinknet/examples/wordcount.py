"""Word count, the streaming way, on any runner.

``python -m flinknet.examples.wordcount [--runner thread|process|ray] [--sources N]
[--counters N] [--lines N]``

A 3-stage keyed job: ``read`` (each subtask generates its share of the lines and splits them into
words) → key groups by word → ``count`` (counts per word: every word reaches exactly one counter
subtask) → rebalance → ``collect`` (one subtask: merges and checks the counts). The program checks
the result against a count made without flinknet and exits 1 if a single word is off.
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
import time
from collections.abc import Sequence

from flinknet.graph import JobGraph, ProcessRunner, Runner, TaskContext, TaskFunction, ThreadRunner

WORDS = ("the quick brown fox jumps over the lazy dog while the network stack moves every record "
         "exactly once between tasks threads processes and hosts with bounded memory and real "
         "backpressure").split()


def line(i: int) -> str:
    """Line ``i`` of the input: a deterministic mix of WORDS."""
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(1 + i % 9))


def word_of(pair: tuple[str, int]) -> str:
    """The key of a (word, count) pair: the word."""
    return pair[0]


def read(ctx: TaskContext, lines: int) -> int:
    """Source: this subtask's lines, split into (word, 1) pairs, emitted a batch per line."""
    out = ctx.writer()
    n = 0
    for i in range(ctx.subtask_index, lines, ctx.parallelism):
        pairs = [(word, 1) for word in line(i).split()]
        out.emit_batch(pairs)
        n += len(pairs)
    return n


def count(ctx: TaskContext) -> int:
    """Keyed stage: sum per word, then emit (word, total) once the input ends."""
    totals: collections.Counter[str] = collections.Counter()
    reader = ctx.reader()
    while (batch := reader.read_batch()) is not None:   # a batch per buffer: no per-record call
        for word, n in batch:
            totals[word] += n
    ctx.writer().emit_batch(list(totals.items()))
    return len(totals)


def collect(ctx: TaskContext) -> dict[str, int]:
    """Sink: merge the counters' totals; a word from two counters would be a routing error."""
    result: dict[str, int] = {}
    for word, n in ctx.reader():
        if word in result:
            raise AssertionError(f"{word!r} was counted by two counter subtasks")
        result[word] = n
    return result


def build(sources: int, counters: int) -> JobGraph:
    """The job graph: read → (key groups by word) → count → (rebalance) → collect."""
    graph = JobGraph("wordcount")
    src = graph.add_vertex("read", sources)
    cnt = graph.add_vertex("count", counters)
    out = graph.add_vertex("collect", 1)
    graph.connect(src, cnt, "key_groups", key_selector=word_of)
    graph.connect(cnt, out, "rebalance")
    return graph


def make_runner(name: str) -> Runner:
    """The runner named on the command line (Ray: a local cluster on this machine)."""
    config = {"taskmanager.memory.network.max": "8mb"}
    if name == "thread":
        return ThreadRunner(config)
    if name == "process":
        return ProcessRunner(config=config)
    from flinknet.graph.ray import RayRunner  # needs the ray extra

    # A local cluster on this machine: its actors listen on loopback (on a real cluster leave the
    # bind host out: each actor then binds to its node's address).
    return RayRunner(config={**config, "taskmanager.network.bind-host": "127.0.0.1"}, init_kwargs={
        "num_cpus": 4, "_node_ip_address": "127.0.0.1", "include_dashboard": False,
        "logging_level": "WARNING", "log_to_driver": False})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job; print the top words and the check; 0 if every count is exact."""
    parser = argparse.ArgumentParser(prog="python -m flinknet.examples.wordcount", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runner", choices=("thread", "process", "ray"), default="thread")
    parser.add_argument("--sources", type=int, default=2)
    parser.add_argument("--counters", type=int, default=3)
    parser.add_argument("--lines", type=int, default=20_000)
    args = parser.parse_args(argv)
    graph = build(args.sources, args.counters)
    functions: dict[str, TaskFunction] = {"read": functools.partial(read, lines=args.lines), "count": count,
                                          "collect": collect}
    started = time.monotonic()
    result = make_runner(args.runner).run(graph, functions, timeout=300)
    (counts,) = result.results("collect")
    expected = collections.Counter(w for i in range(args.lines) for w in line(i).split())
    words = sum(expected.values())
    print(f"{args.runner}: {words} words from {args.lines} lines in {time.monotonic() - started:.2f} s "
          f"(deploy {result.deploy_s:.2f} s, run {result.run_s:.2f} s)")
    for word, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]:
        print(f"  {word:>10} {n}")
    ok = counts == dict(expected)
    print("check: every word counted exactly once" if ok else "check: FAILED, counts differ")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
