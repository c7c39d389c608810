"""What ``flinknet demo`` shows: a live ``rich`` view, plain periodic lines, and the summary.

Both views read the coordinator they are given (a
:class:`~flinknet.tools.demo.coordinator.DemoCoordinator`; this module does not import it): its
tasks' latest status (Flink's metric names, as each task registered them), the phase and the
clock.
:class:`LiveView` redraws a terminal view four times a second; :class:`PlainView` prints one
greppable ``key=value`` line per task per interval (``--no-live``, logs, CI). Both end with the
same summary tables; the plain view adds ``RESULT`` lines.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO, cast

from rich import box
from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from flinknet.metrics import backpressure_level
from flinknet.tools.demo.job import ROLE_SINK, ROLE_SOURCE, DemoConfig, SinkResult, latency_of

if TYPE_CHECKING:
    from flinknet.tools.demo.coordinator import DemoCoordinator, TaskHandle

__all__ = ["LiveView", "PlainView", "for_config", "format_count", "phase_description", "render_summary",
           "result_lines"]

LEVEL_STYLES = {"OK": "bold green", "LOW": "bold yellow", "HIGH": "bold red"}
PHASE_STYLES = {"startup": "dim", "steady": "green", "slow": "red", "recovery": "yellow",
                "finish": "cyan", "done": "bold green"}
PHASE_ORDER = ("steady", "slow", "recovery", "finish")
#: The phases long enough for a back-pressure reading (finish lasts a moment).
MEASURED_PHASES = ("steady", "slow", "recovery")
_IN_POOL = "Shuffle.Netty.Input.Buffers.inPoolUsage"
_OUT_POOL = "Shuffle.Netty.Output.Buffers.outPoolUsage"


def phase_description(cfg: DemoConfig, phase: str) -> str:
    """One sentence on what a phase shows."""
    slow = f"Aggregator[{cfg.slow_aggregator}]"
    # With the thread runner every channel is local: no input buffers, no credit, the producers'
    # subpartitions fill instead.
    fills = ("the subpartitions it reads fill" if cfg.runner == "thread"
             else "its input buffers fill, its channels run out of credit")
    return {
        "startup": "starting the tasks: the runner deploys them and connects their channels",
        "steady": "steady state: every task keeps up, back-pressure OK",
        "slow": f"{slow} processes only {cfg.slow_factor:.0%} of its steady rate: {fills}, "
                "the sources block on it (back-pressure HIGH)",
        "recovery": f"{slow} is fast again: the backlog drains and back-pressure clears",
        "finish": "sources stopped: EndOfPartition flows downstream, aggregators emit final results",
        "done": "every task finished",
    }.get(phase, phase)



def _bp_ratio(task: TaskHandle) -> float:
    return min(float(task.value("backPressuredTimeMsPerSecond")), 1000.0) / 1000.0


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f}MiB"


def format_count(x: float, decimals: int = 1) -> str:
    """A count or rate for a narrow column: ``1.23M``, ``45.6k`` (``decimals`` after the point
    in thousands), ``999``."""
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e4:
        return f"{x / 1e3:.{decimals}f}k"
    return f"{x:.0f}"


def _ms(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.1f}"


def _latency_text(lat: dict[str, Any] | None) -> str:
    if not lat:
        return "-"
    return (f"p50 {_ms(lat.get('p50'))}  p95 {_ms(lat.get('p95'))}  p99 {_ms(lat.get('p99'))}  "
            f"max {_ms(lat.get('max'))} ms")


class _View:
    def __init__(self, cfg: DemoConfig, out: TextIO | None = None) -> None:
        self.cfg = cfg
        self.out = out if out is not None else sys.stdout

    def _stamp(self, coordinator: DemoCoordinator | None = None) -> str:
        if coordinator is None or coordinator.t_start is None:
            return "[  setup]"
        return f"[{coordinator.elapsed():6.1f}s]"


class PlainView(_View):
    """``--no-live``: event lines and one ``key=value`` line per task every ``--interval`` s."""

    def __init__(self, cfg: DemoConfig, out: TextIO | None = None) -> None:
        super().__init__(cfg, out)
        self._last = 0.0
        self._coordinator: DemoCoordinator | None = None

    def _print(self, text: str) -> None:
        try:
            print(text, file=self.out, flush=True)
        except BrokenPipeError:
            # the reader went away (``flinknet demo --no-live | head``): the job goes on quietly
            if self.out is sys.stdout:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)

    def event(self, text: str, coordinator: DemoCoordinator | None = None) -> None:
        self._coordinator = coordinator or self._coordinator
        self._print(f"{self._stamp(self._coordinator)} {text}")

    def phase(self, coordinator: DemoCoordinator, phase: str) -> None:
        self._coordinator = coordinator
        self._print(f"{self._stamp(coordinator)} === phase {phase}: {phase_description(self.cfg, phase)} ===")

    def update(self, coordinator: DemoCoordinator) -> None:
        self._coordinator = coordinator
        now = time.monotonic()
        if coordinator.t_start is None or now - self._last < self.cfg.interval:
            return
        self._last = now
        for task in coordinator.tasks:
            # a task's rates and timers mean something once its views were refreshed
            if task.status is not None and task.status.get("views_updated"):
                self._print(self.task_line(coordinator, task))

    def task_line(self, coordinator: DemoCoordinator, task: TaskHandle) -> str:
        """One greppable line: phase, task, rates, pool usages, back-pressure, channels, latency
        (``state=starting`` and no more for a task that has not reported yet)."""
        s = task.status
        head = [self._stamp(coordinator), f"phase={coordinator.phase}", f"task={task.name}",
                f"pid={task.pid}"]
        if s is None:
            return " ".join(head + ["state=starting"])
        bp = _bp_ratio(task)
        parts = [*head,
                 f"state={s['state']}",
                 f"in/s={task.value('numRecordsInPerSecond'):.0f}",
                 f"out/s={task.value('numRecordsOutPerSecond'):.0f}",
                 f"outPool={task.value(_OUT_POOL):.2f}", f"inPool={task.value(_IN_POOL):.2f}",
                 f"bp={bp:.2f}", f"level={backpressure_level(bp)}",
                 f"busy={task.value('busyTimeMsPerSecond'):.0f}",
                 f"idle={task.value('idleTimeMsPerSecond'):.0f}",
                 f"rss={_mib(s['rss'])}"]
        if slowed_to := s.get("slowed_to"):
            parts.append(f"slowed_to={slowed_to:.0f}/s")
        if s["channels"]:
            parts.append("credit/backlog=" + ",".join(
                f"{c['from']}:{c['credit']}/{c['backlog']}" for c in s["channels"]))
        lat = latency_of(s)
        if lat:
            parts.append(f"latency_ms=p50:{_ms(lat.get('p50'))},p95:{_ms(lat.get('p95'))},"
                         f"p99:{_ms(lat.get('p99'))}")
        return " ".join(parts)

    def close(self) -> None:
        pass

    def summary(self, coordinator: DemoCoordinator) -> None:
        console = Console(file=self.out, force_terminal=False, no_color=True, width=170, highlight=False)
        render_summary(console, coordinator)
        for line in result_lines(coordinator):
            self._print(line)


class LiveView(_View):
    """The live terminal view (``rich.live.Live``), redrawn at most four times a second."""

    REFRESH = 0.25

    def __init__(self, cfg: DemoConfig, out: TextIO | None = None) -> None:
        super().__init__(cfg, out)
        self.console = Console(file=self.out, highlight=False)
        self._live: Live | None = None
        self._last = 0.0

    def _ensure_live(self) -> Live:
        if self._live is None:
            self._live = Live(Text("starting..."), console=self.console, auto_refresh=False,
                              transient=False, redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        return self._live

    def event(self, text: str, coordinator: DemoCoordinator | None = None) -> None:
        # Before the first update there is nothing to draw yet: plain lines (what else writes to
        # the terminal meanwhile, such as Ray starting, then stays above the view).
        console = self.console if self._live is None else self._live.console
        console.print(Text(f"{self._stamp(coordinator)} {text}", style="dim"))

    def phase(self, coordinator: DemoCoordinator, phase: str) -> None:
        live = self._ensure_live()
        live.console.print(Text.assemble((f"{self._stamp(coordinator)} phase ", "bold"),
                                         (phase.upper(), PHASE_STYLES.get(phase, "")),
                                         f": {phase_description(self.cfg, phase)}"))
        self.update(coordinator, force=True)

    def update(self, coordinator: DemoCoordinator, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.REFRESH:
            return
        self._last = now
        self._ensure_live().update(self.render(coordinator), refresh=True)

    def render(self, coordinator: DemoCoordinator) -> RenderableType:
        """The whole view as one renderable."""
        return Group(self._header(coordinator), self._tasks_table(coordinator),
                     self._channels_table(coordinator), self._footer(coordinator))

    def _header(self, coordinator: DemoCoordinator) -> Panel:
        cfg = self.cfg
        total = cfg.duration
        elapsed = min(coordinator.elapsed(), total)
        phase = coordinator.phase
        timeline = Text()
        for p in PHASE_ORDER:
            style = PHASE_STYLES[p] + (" reverse" if p == phase else "")
            timeline.append(f" {p} ", style=style)
            timeline.append(" ")
        grid = Table.grid(padding=(0, 1), expand=True)
        grid.add_column(ratio=1)
        grid.add_column(no_wrap=True)
        grid.add_row(ProgressBar(total=total, completed=elapsed, complete_style="cyan",
                                 finished_style="green"),
                     Text(f"{elapsed:5.1f} / {total:g} s", style="bold"))
        grid.add_row(timeline, Text(""))
        grid.add_row(Text(phase_description(cfg, phase), style=PHASE_STYLES.get(phase, "")), Text(""))
        title = (f"flinknet demo: {cfg.sources} × Source → keyBy (128 key groups) → {cfg.aggregators} × "
                 f"Aggregator → Sink ({cfg.runner} runner)")
        rate = f"{format_count(cfg.rate)} rec/s" if cfg.rate else "max rate"
        subtitle = (f"{cfg.keys} keys · {cfg.record_size} B records · {rate} per source · buffer timeout "
                    f"{cfg.buffer_timeout} ms · Ctrl-C stops")
        return Panel(grid, title=title, title_align="left", subtitle=subtitle, subtitle_align="right",
                     border_style=PHASE_STYLES.get(phase, "white"))

    def _tasks_table(self, coordinator: DemoCoordinator) -> Table:
        narrow = self.console.width < 110          # an 80-column terminal: fewer, tighter columns
        t = _table("Tasks")
        t.add_column("Task", no_wrap=True, min_width=9)
        if not narrow:
            t.add_column("PID", justify="right", no_wrap=True)
        t.add_column("Phase", no_wrap=True)
        for name in ("Rec/s\nin", "Rec/s\nout", "outPool\nUsage", "inPool\nUsage"):
            t.add_column(name, justify="right", no_wrap=True)
        t.add_column("Back-\npressure", no_wrap=True)
        if not narrow:
            t.add_column("Busy\nms/s", justify="right", no_wrap=True)
        t.add_column("RSS", justify="right", no_wrap=True)
        for task in coordinator.tasks:
            s = task.status
            if s is None:
                cells: list[RenderableType] = [task.name, *([str(task.pid or "-")] if not narrow else []),
                                               "starting"]
                t.add_row(*cells)
                continue
            bp = _bp_ratio(task)
            level = backpressure_level(bp)
            phase = "finished" if task.finished else s["phase"]
            if s.get("slowed_to") and not task.finished and not narrow:
                phase += f" ({self.cfg.slow_factor:.0%})"
            cells = [task.name, *([str(task.pid)] if not narrow else []),
                Text(phase, style=PHASE_STYLES.get(s["phase"], "")),
                format_count(task.value("numRecordsInPerSecond")),
                format_count(task.value("numRecordsOutPerSecond")),
                _usage(task.value(_OUT_POOL)), _usage(task.value(_IN_POOL)),
                Text.assemble((f"{level:<4}", LEVEL_STYLES[level]), f" {bp:.2f}")]
            if not narrow:
                cells.append(f"{task.value('busyTimeMsPerSecond'):.0f}" if s.get("views_updated") else "-")
            cells.append(f"{s['rss'] / (1 << 20):.0f}M" if narrow else _mib(s["rss"]))
            t.add_row(*cells)
        return t

    def _channels_table(self, coordinator: DemoCoordinator) -> Table:
        t = _table("Remote input channels (credit-based flow control)")
        t.add_column("Channel", no_wrap=True)
        for name in ("Credit", "Sender\nbacklog", "Queued\nbuffers", "Exclusive\nused", "Floating\nheld"):
            t.add_column(name, justify="right", no_wrap=True)
        for task in coordinator.tasks:
            for c in task.status["channels"] if task.status is not None else []:
                credit = Text(str(c["credit"]), style="bold red" if c["credit"] == 0 else "green")
                t.add_row(f"{c['from']} → {task.name}", credit, str(c["backlog"]), str(c["queued"]),
                          f"{c['exclusive_used']}/{c['exclusive']}", str(c["floating"]))
        return t

    def _footer(self, coordinator: DemoCoordinator) -> Table:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        sink = next((t for t in coordinator.tasks if t.role == ROLE_SINK), None)
        lat = latency_of(sink.status) if sink is not None and sink.status else None
        grid.add_row("Latency at the sink",
                     _latency_text(lat) + (f"  ({lat['count']} markers)" if lat else ""))
        grid.add_row("Source throughput",
                     f"{format_count(coordinator.throughput())} records/s (average since start)")
        return grid

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def summary(self, coordinator: DemoCoordinator) -> None:
        render_summary(self.console, coordinator)


def for_config(cfg: DemoConfig, out: TextIO | None = None) -> PlainView | LiveView:
    """The view ``cfg`` asks for: live with ``--live``, plain lines with ``--no-live``, and without
    either live when ``out`` (stdout by default) is a terminal."""
    out = out if out is not None else sys.stdout
    live = cfg.live if cfg.live is not None else out.isatty()
    return LiveView(cfg, out) if live else PlainView(cfg, out)


def _table(title: str, expand: bool = True) -> Table:
    """A table with a bold title (if any) and one space between columns."""
    return Table(box=box.SIMPLE_HEAD, expand=expand, title=title or None, title_justify="left",
                 title_style="bold", collapse_padding=True, pad_edge=False)


def _usage(x: float) -> Text:
    style = "bold red" if x >= 0.9 else "yellow" if x >= 0.5 else "green"
    return Text(f"{x:.2f}", style=style)


# -- the summary -----------------------------------------------------------------------------

def _task_totals(coordinator: DemoCoordinator, task: TaskHandle) -> tuple[int, int, float]:
    """Records in, records out and the average rate of the task's main flow over the run."""
    r = task.result or {}
    records_in = r.get("numRecordsIn", int(task.value("numRecordsIn", 0)))
    records_out = r.get("numRecordsOut", int(task.value("numRecordsOut", 0)))
    start = coordinator.t_start
    if start is None:
        return records_in, records_out, 0.0
    if task.role == ROLE_SOURCE:
        span = (coordinator.t_stop or time.monotonic()) - start
        return records_in, records_out, records_out / max(span, 1e-9)
    span = (coordinator.t_done or time.monotonic()) - start
    return records_in, records_out, records_in / max(span, 1e-9)


def _level_text(ratio: float | None) -> Text:
    if ratio is None:
        return Text("-")
    level = backpressure_level(ratio)
    return Text.assemble((level, LEVEL_STYLES[level]), f" {ratio:.2f}")


def render_summary(console: Console, coordinator: DemoCoordinator) -> None:
    """Print the per-task tables, the latency table, throughput and the check."""
    rows: list[tuple[list[RenderableType], list[RenderableType]]] = []
    for task in coordinator.tasks:
        rin, rout, rate = _task_totals(coordinator, task)
        slow_first = task.rss_at_phase.get("slow")
        slow_last = task.rss_at_phase.get("slow.last")
        delta = ("-" if slow_first is None or slow_last is None
                 else f"{(slow_last - slow_first) / (1 << 20):+.1f}MiB")
        in_pool = task.max_in_pool.get("slow")
        rows.append(([task.name, str(task.pid or "-"), f"{rin:,}", f"{rout:,}", format_count(rate)],
                     [*[_level_text(task.max_bp.get(p)) for p in MEASURED_PHASES],
                      "-" if in_pool is None else f"{in_pool:.2f}", _mib(task.peak_rss), delta]))
    task_column: list[tuple[str, JustifyMethod]] = [("Task", "left")]
    flow_columns: list[tuple[str, JustifyMethod]] = [*task_column, ("PID", "right"), ("Records\nin", "right"),
                                                     ("Records\nout", "right"), ("Avg\nrec/s", "right")]
    bp_columns: list[tuple[str, JustifyMethod]] = [(f"Max BP\n{p}", "left") for p in MEASURED_PHASES] + [
        ("Max\ninPool\nslow", "right"), ("Peak\nRSS", "right"), ("RSS Δ\nslow", "right")]
    console.print(Text("Summary per task (max back-pressure over one-second windows within each phase)",
                       style="bold"))
    tables: list[tuple[list[tuple[str, JustifyMethod]], list[list[RenderableType]]]]
    if console.width >= 120:
        tables = [(flow_columns + bp_columns, [a + b for a, b in rows])]
    else:                                       # narrow terminal: two tables
        tables = [(flow_columns, [a for a, _ in rows]), (task_column + bp_columns,
                                                          [[a[0]] + b for a, b in rows])]
    for columns, cells in tables:
        t = _table("", expand=False)
        for name, justify in columns:
            t.add_column(name, justify=justify, no_wrap=True)
        for row in cells:
            t.add_row(*row)
        console.print(t)

    sink = next((x for x in coordinator.tasks if x.role == ROLE_SINK), None)
    # the sink's result is a SinkResult (SinkTask.process)
    samples = (cast(SinkResult, sink.result or {}).get("latency_by_phase") or {}) if sink is not None else {}
    if samples:
        import numpy as np

        console.print(Text("End-to-end latency at the sink, ms (latency markers by phase of arrival)",
                           style="bold"))
        lt = _table("", expand=False)
        for name in ("Phase", "Markers", "p50", "p95", "p99", "max"):
            lt.add_column(name, justify="left" if name == "Phase" else "right")
        for phase in PHASE_ORDER:
            values = samples.get(phase)
            if not values:
                continue
            a = np.asarray(values)
            lt.add_row(phase, str(len(a)), *[_ms(float(np.percentile(a, q))) for q in (50, 95, 99)],
                       _ms(float(a.max())))
        console.print(lt)

    if coordinator.t_start is not None:
        console.print(f"Sources emitted {format_count(coordinator.throughput())} records/s on average "
                      f"({coordinator.cfg.sources} sources, {coordinator.cfg.record_size} B records); "
                      f"coordinator peak RSS {_mib(coordinator.coordinator_peak_rss)}")
    check = coordinator.check
    if coordinator.interrupted:
        console.print(Text("INTERRUPTED: every task was stopped; the results were not checked",
                           style="bold yellow"))
    if coordinator.failures:
        for failure in coordinator.failures:
            console.print(Text(f"FAILED: {failure}", style="bold red"))
    if check is not None:
        if check.ok:
            console.print(Text(
                f"CHECK PASSED: all {check.keys} keys have the count and sum the sources produced "
                f"({check.produced:,} records; nothing lost, nothing duplicated)", style="bold green"))
        else:
            console.print(Text(
                f"CHECK FAILED: {check.mismatched_keys} of {check.keys} keys differ; "
                f"produced {check.produced:,}, "
                f"aggregated {check.aggregated:,}, at the sink {check.at_sink:,} (lost {check.lost:,}, "
                f"duplicated {check.duplicated:,}); {check.not_final_keys} keys without final result; "
                f"{check.misrouted} misrouted", style="bold red"))
            for key, pc, sc, ps, ss in check.examples:
                console.print(f"  key {key}: count {sc} at the sink, {pc} produced; "
                              f"sum {ss} at the sink, {ps} produced")


def result_lines(coordinator: DemoCoordinator) -> list[str]:
    """Greppable ``RESULT`` lines (the plain view prints them after the summary)."""
    lines = []
    for task in coordinator.tasks:
        rin, rout, rate = _task_totals(coordinator, task)
        levels = " ".join(f"max_bp_{p}={backpressure_level(task.max_bp[p]) if p in task.max_bp else '-'}"
                          for p in MEASURED_PHASES)
        lines.append(f"RESULT task={task.name} pid={task.pid} records_in={rin} records_out={rout} "
                     f"rate={rate:.0f} {levels} peak_rss={_mib(task.peak_rss)}")
    lines.append(f"RESULT throughput={coordinator.throughput():.0f} records/s")
    check = coordinator.check
    if check is not None:
        lines.append(f"RESULT check={'PASS' if check.ok else 'FAIL'} keys={check.keys} "
                     f"produced={check.produced} "
                     f"aggregated={check.aggregated} at_sink={check.at_sink} lost={check.lost} "
                     f"duplicated={check.duplicated} mismatched_keys={check.mismatched_keys}")
    else:
        lines.append("RESULT check=NOT-RUN" + (" interrupted" if coordinator.interrupted else ""))
    for failure in coordinator.failures:
        lines.append(f"RESULT failed={failure.splitlines()[0] if failure else ''}")
    return lines
