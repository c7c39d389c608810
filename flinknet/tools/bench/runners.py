"""The runners of :mod:`flinknet.graph`: the same job on each, and what deploying a job costs.

``flinknet bench --only runners [--quick]`` (not a default group, never run by CI's bench gate:
it starts a local Ray cluster and up to 64 worker processes, minutes on a 2-core machine). Every
row names the runner last; the ThreadRunner measured in the same run is the baseline.

* ``runners.keyed.2-2-1.100B.<runner>``: a keyed 3-stage job, ``source`` (2 subtasks)
  ``-key_groups->`` ``count`` (2) ``-rebalance->`` ``sink`` (1). Each source emits its share of
  ``n_records`` records of 100 bytes whose first 8 bytes are the key (1000 keys drawn at random,
  the records of ``remote.keyed.*``: :func:`flinknet.tools.bench.keyed.key_batches`) with
  ``emit_batch`` in lists of 1000, serializer ``bytes``, routed by key group (max parallelism
  128); each count subtask reads with ``read_batch``, counts its keys and emits one
  ``(key, count)`` tuple per key (``pickle``); the sink checks that no key was counted twice and
  that the counts add up to ``n_records``. Value: ns per source record over the run phase
  (:attr:`~flinknet.graph.JobResult.run_s`: from the first task started to the last finished,
  best of the repeats, runners interleaved); the note has records/s, the speed relative to
  ThreadRunner's, the deployment time and the wall time. Every runner uses Flink's default
  configuration (64 MiB of network memory per worker; ThreadRunner's one environment is shared
  by all five subtasks).
* ``runners.deploy.<n>.<runner>`` for ``n`` = 1, 8, 64 subtasks: ``source`` alone for 1, else
  ``source`` (n/2) ``-rebalance->`` ``sink`` (n/2), every source emitting 100 small ints (all to
  all: every channel is used). Value: :attr:`~flinknet.graph.JobResult.deploy_s` in ms (workers
  started, their addresses exchanged, every task set up), best of the repeats; the note has the
  wall time of ``runner.run`` (deployment, run, and stopping the workers). Runners: ThreadRunner
  (one environment), ProcessRunner with a worker process per subtask, ProcessRunner packing the
  subtasks into 4 workers (``processes4``, for n > 4), RayRunner with an actor per subtask. Each
  worker gets the least network memory its subtasks need (:func:`minimum_network_memory`, rounded
  up to a MiB: every environment allocates it up front), stated in the note.

RayRunner runs on a local cluster this module starts when Ray is not initialized
(``ray.init(num_cpus=4, _node_ip_address="127.0.0.1", ...)``, loopback only) and shuts down at
the end; without Ray its rows say so (value NaN) instead of failing. Ray's start-up is not part of
any row (it is printed in the note of the first Ray row). Actors reserve ``min(0.5, 4 / n)`` CPUs
so that every actor of an n-subtask job fits the 4 logical CPUs of the cluster.

The task functions are module-level (worker processes import them by name) and the job
arguments travel as :func:`functools.partial` of them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from flinknet.config import NetworkConfig
from flinknet.graph import JobGraph, JobResult, ProcessRunner, Runner, TaskContext, ThreadRunner, deploy
from flinknet.partition import get_min_max_network_buffers_per_result_partition
from flinknet.tools.bench.keyed import MAX_PARALLELISM, key_batches
from flinknet.tools.bench.report import Row

__all__ = ["DEPLOY_RUNNERS", "DEPLOY_SIZES", "KEYED_RUNNERS", "bench_deploy_runners", "bench_keyed_runners",
           "bench_runners", "deploy_graph", "keyed_graph", "minimum_network_memory", "ray_cluster",
           "ray_missing"]

#: the runners of the keyed rows, and of the deployment rows (``processes4``: 4 packed workers)
KEYED_RUNNERS = ("threads", "processes", "ray")
DEPLOY_RUNNERS = ("threads", "processes", "processes4", "ray")
#: subtasks of the deployment jobs (full run; the quick run leaves out 64)
DEPLOY_SIZES = (1, 8, 64)
DEPLOY_SIZES_QUICK = (1, 8)
#: source records of the keyed job (full / quick)
N_FULL = 2_000_000
N_QUICK = 400_000

RECORD_SIZE = 100
KEYS = 1000
DEPLOY_RECORDS = 100      # records each source of a deployment job emits
PACKED = 4                # workers of the packed ProcessRunner
RAY_CPUS = 4              # logical CPUs of the local Ray cluster
TIMEOUT = 600.0           # s: the longest one job may take
BASELINE = "ThreadRunner"
_MIB = 1 << 20

_LABELS = {"threads": "ThreadRunner", "processes": "ProcessRunner", "ray": "RayRunner"}


# -- the jobs' functions (module level: worker processes import them) ----------------------------

def key_of(record: bytes) -> bytes:
    """A record's key: its first 8 bytes."""
    return record[:8]


def keyed_source(ctx: TaskContext, n_records: int) -> int:
    """Emit this subtask's share of ``n_records`` keyed 100-byte records, in batches of 1000."""
    share = n_records // ctx.parallelism + (1 if ctx.subtask_index < n_records % ctx.parallelism else 0)
    batches = key_batches(RECORD_SIZE, KEYS, seed=ctx.subtask_index)
    emit_batch = ctx.writer().emit_batch
    left, i = share, 0
    while left > 0:
        batch = batches[i % len(batches)]
        if left < len(batch):
            batch = batch[:left]
        emit_batch(batch)
        left -= len(batch)
        i += 1
    return share


def keyed_count(ctx: TaskContext) -> int:
    """Count the records per key, then emit one ``(key, count)`` per key; returns the keys seen."""
    counts: Counter[bytes] = Counter()
    read = ctx.reader().read_batch
    while (batch := read()) is not None:
        counts.update([r[:8] for r in batch])
    ctx.writer().emit_batch(list(counts.items()))
    return len(counts)


def keyed_sink(ctx: TaskContext) -> tuple[int, int]:
    """``(records counted, keys)``; a key counted by two subtasks is an error."""
    totals: dict[bytes, int] = {}
    for key, n in ctx.reader():
        if key in totals:
            raise AssertionError(f"key {key!r} was counted by two count subtasks")
        totals[key] = n
    return sum(totals.values()), len(totals)


def deploy_source(ctx: TaskContext) -> int:
    """Emit :data:`DEPLOY_RECORDS` small ints (nothing without an output)."""
    if not ctx.output_names:
        return 0
    ctx.writer().emit_batch(list(range(DEPLOY_RECORDS)))
    return DEPLOY_RECORDS


def deploy_sink(ctx: TaskContext) -> int:
    return sum(1 for _ in ctx.reader())


# -- the jobs --------------------------------------------------------------------------------------

def keyed_graph(shape: tuple[int, int, int] = (2, 2, 1)) -> JobGraph:
    """source -key_groups-> count -rebalance-> sink with the parallelisms of ``shape``."""
    g = JobGraph("bench-keyed")
    s = g.add_vertex("source", shape[0])
    c = g.add_vertex("count", shape[1], max_parallelism=MAX_PARALLELISM)
    k = g.add_vertex("sink", shape[2])
    g.connect(s, c, "key_groups", key_selector=key_of, serializer="bytes")
    g.connect(c, k, "rebalance")
    return g


def keyed_functions(n_records: int) -> dict[str, Any]:
    return {"source": functools.partial(keyed_source, n_records=n_records), "count": keyed_count,
            "sink": keyed_sink}


def deploy_graph(n: int) -> JobGraph:
    """``n`` subtasks: one source for 1, else source (n/2) -rebalance-> sink (n/2)."""
    g = JobGraph(f"bench-deploy-{n}")
    if n == 1:
        g.add_vertex("source", 1)
        return g
    if n < 1 or n % 2:
        raise ValueError(f"a deployment job has 1 or an even number of subtasks, not {n}")
    g.connect(g.add_vertex("source", n // 2), g.add_vertex("sink", n // 2), "rebalance")
    return g


def deploy_functions(graph: JobGraph) -> dict[str, Any]:
    fns = {"source": deploy_source, "sink": deploy_sink}
    return {v.name: fns[v.name] for v in graph.vertices}


def minimum_network_memory(graph: JobGraph, workers: int, config: NetworkConfig | None = None) -> int:
    """Bytes of network memory the most demanding worker needs when ``graph``'s subtasks, in
    topological order, are placed on ``workers`` workers round robin (subtask ``k`` on worker
    ``k mod workers``, as ProcessRunner and RayRunner place them): per produced partition its
    pool's minimum (one buffer per subpartition, plus one), per input gate with remote channels
    their exclusive buffers plus one floating buffer (the gate pool's minimum; local channels
    need none)."""
    cfg = config if config is not None else NetworkConfig()
    keys = [(v.name, i) for v in graph.vertices_in_topological_order() for i in range(v.parallelism)]
    n = min(workers, len(keys))
    where = {k: ("127.0.0.1", 1 + j % n) for j, k in enumerate(keys)}   # a made-up address per worker
    need = [0] * n
    for key, d in deploy(graph, where).items():
        w = where[key][1] - 1
        for p in d.produced_partitions:
            need[w] += get_min_max_network_buffers_per_result_partition(
                p.partition_type, p.number_of_subpartitions)[0]
        for g in d.input_gates:
            remote = sum(1 for s in g.shuffle_descriptors if s.producer_location != where[key])
            if remote:
                need[w] += remote * len(g.subpartition_index_range) * cfg.buffers_per_channel + 1
    return max(need) * cfg.segment_size


def _memory_option(graph: JobGraph, workers: int) -> tuple[dict[str, object], str]:
    mib = max(1, math.ceil(minimum_network_memory(graph, workers) / _MIB))
    return {"taskmanager.memory.network.max": f"{mib}mb"}, f"{mib} MiB"


# -- Ray -------------------------------------------------------------------------------------------

def ray_missing() -> str | None:
    """Why RayRunner cannot run here (None if it can)."""
    try:
        import flinknet.graph.ray  # noqa: F401
    except ImportError as err:
        return f"{err}"
    return None


@contextlib.contextmanager
def ray_cluster() -> Iterator[float]:
    """A local Ray cluster on loopback (started unless Ray is initialized, then shut down);
    yields the seconds its start took (0 if it was running)."""
    import ray

    started = False
    t0 = time.perf_counter()
    if not ray.is_initialized():
        ray.init(num_cpus=RAY_CPUS, _node_ip_address="127.0.0.1", include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=False)
        started = True
    try:
        yield time.perf_counter() - t0 if started else 0.0
    finally:
        if started:
            ray.shutdown()


# -- measuring -------------------------------------------------------------------------------------

def _packed(kind: str) -> int | None:
    """k for ``processes<k>`` (a ProcessRunner packing subtasks into k workers), else None."""
    digits = kind.removeprefix("processes")
    return int(digits) if digits != kind and digits.isdigit() else None


def _workers(kind: str, subtasks: int) -> int:
    if kind == "threads":
        return 1
    k = _packed(kind)
    return subtasks if k is None else min(k, subtasks)


def _label(kind: str) -> str:
    k = _packed(kind)
    return _LABELS[kind] if k is None else f"ProcessRunner(processes={k})"


def _make_runner(kind: str, subtasks: int, config: Mapping[str, object] | None) -> Runner:
    if kind == "threads":
        return ThreadRunner(config)
    if kind == "processes":
        return ProcessRunner(config=config)
    if (k := _packed(kind)) is not None:
        return ProcessRunner(processes=k, config=config)
    if kind == "ray":
        from flinknet.graph.ray import RayRunner

        # The local cluster's actors listen on loopback (Ray reports the node's own address).
        return RayRunner(config={**(config or {}), "taskmanager.network.bind-host": "127.0.0.1"},
                         num_cpus=min(0.5, RAY_CPUS / subtasks))
    raise ValueError(f"unknown runner {kind!r}")


def _run(kind: str, graph: JobGraph, functions: Mapping[str, Any],
         config: Mapping[str, object] | None) -> tuple[JobResult, float]:
    runner = _make_runner(kind, graph.number_of_subtasks, config)
    t0 = time.perf_counter()
    result = runner.run(graph, functions, timeout=TIMEOUT)
    wall = time.perf_counter() - t0
    if result.leaky_workers:
        raise AssertionError(f"{_label(kind)} leaked network buffers in {', '.join(result.leaky_workers)}")
    return result, wall


class _Best:
    """The best (lowest) deployment, run and wall times of a runner over the repeats."""

    def __init__(self) -> None:
        self.deploy_s = self.run_s = self.wall_s = math.inf

    def add(self, result: JobResult, wall: float) -> None:
        self.deploy_s = min(self.deploy_s, result.deploy_s)
        self.run_s = min(self.run_s, result.run_s)
        self.wall_s = min(self.wall_s, wall)


def _check_keyed(kind: str, result: JobResult, n_records: int) -> None:
    what = _label(kind)
    counted, keys = result.results("sink")[0]
    if counted != n_records or result.num_records_out("source") != n_records \
            or result.num_records_in("count") != n_records:
        raise AssertionError(f"{what}: {n_records} records sent, {result.num_records_out('source')} written, "
                             f"{result.num_records_in('count')} read, {counted} counted")
    if sum(result.results("count")) != keys or result.num_records_in("sink") != keys:
        raise AssertionError(f"{what}: {keys} keys at the sink, {sum(result.results('count'))} counted")


def _check_deploy(kind: str, graph: JobGraph, result: JobResult) -> None:
    if len(graph) == 1:
        return
    expected = graph.vertex("source").parallelism * DEPLOY_RECORDS
    if sum(result.results("sink")) != expected:
        raise AssertionError(f"{_label(kind)}: {sum(result.results('sink'))} of {expected} records arrived")


def _absent_row(name: str, unit: str, why: str) -> Row:
    return Row(name, unit, math.nan, note=f"not measured: {why}")


def bench_keyed_runners(n_records: int, runners: Sequence[str] = KEYED_RUNNERS, repeats: int = 3,
                        ray_note: str = "") -> list[Row]:
    """The ``runners.keyed.2-2-1.100B.*`` rows (Ray must be initialized if ``runners`` has it)."""
    graph = keyed_graph()
    fns = keyed_functions(n_records)
    best = {kind: _Best() for kind in runners}
    for _ in range(max(1, repeats)):
        for kind in runners:
            result, wall = _run(kind, graph, fns, None)
            _check_keyed(kind, result, n_records)
            best[kind].add(result, wall)
    base = best.get("threads")
    rows = []
    for kind in runners:
        b = best[kind]
        ns = b.run_s / n_records * 1e9
        rps = n_records / b.run_s
        note = f"{_label(kind)}: {rps / 1e6:.2f} M records/s"
        baselines = {}
        if base is not None and kind != "threads":
            baselines[BASELINE] = base.run_s / n_records * 1e9
            note += f", {base.run_s / b.run_s:.2f}x ThreadRunner's speed"
        note += (f"; deploy {b.deploy_s * 1e3:.0f} ms, wall {b.wall_s:.2f} s, "
                 f"{_workers(kind, graph.number_of_subtasks)} worker(s)")
        if kind == "threads":
            note += (f" (source(2) -key groups-> count(2) -rebalance-> sink(1), {n_records} records of "
                     f"{RECORD_SIZE} B, {KEYS} keys, emit_batch of 1000, best of {max(1, repeats)})")
        if kind == "ray" and ray_note:
            note += f" ({ray_note})"
        rows.append(Row(f"runners.keyed.2-2-1.100B.{kind}", "ns/rec", ns, baselines, note=note))
    return rows


def bench_deploy_runners(sizes: Sequence[int] = DEPLOY_SIZES, runners: Sequence[str] = DEPLOY_RUNNERS,
                         repeats: int = 2, ray_note: str = "") -> list[Row]:
    """The ``runners.deploy.<n>.*`` rows (Ray must be initialized if ``runners`` has it). A packed
    runner (``processes<k>``) runs only for jobs of more than ``k`` subtasks."""
    plan = [(n, kind) for n in sizes for kind in runners if n > (_packed(kind) or 0)]
    best = {key: _Best() for key in plan}
    memory: dict[tuple[int, str], str] = {}
    for _ in range(max(1, repeats)):
        for n, kind in plan:
            graph = deploy_graph(n)
            config, memory[(n, kind)] = _memory_option(graph, _workers(kind, n))
            result, wall = _run(kind, graph, deploy_functions(graph), config)
            _check_deploy(kind, graph, result)
            best[(n, kind)].add(result, wall)
    rows = []
    for n, kind in plan:
        b = best[(n, kind)]
        base = best.get((n, "threads"))
        baselines = {BASELINE: base.deploy_s * 1e3} if base is not None and kind != "threads" else {}
        workers = _workers(kind, n)
        note = (f"{_label(kind)}: wall {b.wall_s:.2f} s (run {b.run_s * 1e3:.0f} ms); {workers} "
                f"worker{'s' if workers > 1 else ''}, {memory[(n, kind)]} of network memory each")
        if kind == "threads" and n == sizes[0]:
            note += f"; best of {max(1, repeats)}"
        if kind == "ray" and ray_note:
            note += f" ({ray_note})"
            ray_note = ""
        rows.append(Row(f"runners.deploy.{n}.{kind}", "ms", b.deploy_s * 1e3, baselines, note=note))
    return rows


def bench_runners(quick: bool = False, *, n_records: int | None = None,
                  keyed_runners: Sequence[str] = KEYED_RUNNERS, sizes: Sequence[int] | None = None,
                  deploy_runners: Sequence[str] = DEPLOY_RUNNERS, repeats: int | None = None) -> list[Row]:
    """The group's rows: the keyed job on ``keyed_runners``, then the deployment jobs of ``sizes``
    subtasks on ``deploy_runners``. Without Ray, its rows say so (value NaN)."""
    n = n_records if n_records is not None else (N_QUICK if quick else N_FULL)
    sizes = tuple(sizes if sizes is not None else (DEPLOY_SIZES_QUICK if quick else DEPLOY_SIZES))
    keyed_repeats = repeats if repeats is not None else (1 if quick else 3)
    deploy_repeats = repeats if repeats is not None else (1 if quick else 2)
    keyed_ray, deploy_ray = "ray" in keyed_runners, "ray" in deploy_runners
    missing = ray_missing() if keyed_ray or deploy_ray else None
    if missing is not None:
        keyed_runners = [k for k in keyed_runners if k != "ray"]
        deploy_runners = [k for k in deploy_runners if k != "ray"]
    with ray_cluster() if missing is None and "ray" in (*keyed_runners, *deploy_runners) \
            else contextlib.nullcontext(0.0) as ray_start:
        ray_note = f"Ray cluster started in {ray_start:.1f} s, not counted" if ray_start else ""
        rows = []
        if keyed_runners:
            rows += bench_keyed_runners(n, keyed_runners, keyed_repeats, ray_note)
            if "ray" in keyed_runners:
                ray_note = ""
        if sizes and deploy_runners:
            rows += bench_deploy_runners(sizes, deploy_runners, deploy_repeats, ray_note)
    if missing is not None:
        why = f"RayRunner unavailable ({missing})"
        if keyed_ray:
            rows.append(_absent_row("runners.keyed.2-2-1.100B.ray", "ns/rec", why))
        if deploy_ray:
            rows += [_absent_row(f"runners.deploy.{s}.ray", "ms", why) for s in sizes]
    return rows
