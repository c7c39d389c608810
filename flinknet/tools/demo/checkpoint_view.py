"""The live ``rich`` view of ``flinknet demo --checkpointing MODE``.

It redraws four times a second what the coordinator of
:mod:`flinknet.tools.demo.checkpoint` knows (a
:class:`~flinknet.tools.demo.checkpoint.JobProgress`): the phase and attempt; per task its
process, state, progress, back-pressure and the last checkpoint it acknowledged with that
checkpoint's alignment time, start delay and in-flight bytes; the last completed checkpoints; and
the recent events (the slow phase, the kill, the restore). Kept apart from the checkpoint module
because every task process imports that module and none of them needs ``rich``.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from flinknet.tools.demo.checkpoint import (
    CheckpointStats,
    CheckpointView,
    JobProgress,
    format_bytes,
)
from flinknet.tools.demo.view import format_count

__all__ = ["CheckpointLiveView", "render"]

PHASE_STYLES = {"starting": "dim", "steady": "green", "slow": "red", "recovery": "yellow",
                "restored": "magenta", "finishing": "cyan", "done": "bold green"}
STATE_STYLES = {"running": "green", "finished": "cyan", "killed": "bold red", "cancelled": "yellow",
                "starting": "dim"}
#: completed checkpoints and events the view keeps on screen
RECENT = 6
REFRESH_SECONDS = 0.25


class CheckpointLiveView(CheckpointView):
    """A terminal view redrawn four times a second (``flinknet demo --checkpointing MODE``, the
    default when stdout is a terminal)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = Console() if console is None else console
        self.events: collections.deque[str] = collections.deque(maxlen=RECENT)
        self._live: Live | None = None
        self._drawn = 0.0

    def event(self, job: JobProgress, text: str) -> None:
        self.events.append(f"[{job.elapsed:6.2f}s] {text}")
        self.update(job, force=True)

    def checkpoint(self, job: JobProgress, stats: CheckpointStats) -> None:
        self.update(job, force=True)

    def update(self, job: JobProgress, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn < REFRESH_SECONDS:
            return
        self._drawn = now
        if self._live is None:
            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.start()
        self._live.update(render(job, self.events), refresh=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
            if not self.console.is_terminal:
                self.console.line()


def render(job: JobProgress, events: Any = ()) -> RenderableType:
    """The whole view of ``job`` (also used by the tests, rendered to a string)."""
    return Group(_header(job), _tasks(job), _checkpoints(job), *_events(events))


def _header(job: JobProgress) -> Panel:
    cfg = job.cfg
    text = Text()
    text.append(f"{cfg.label} checkpoints", style="bold")
    text.append(f" every {cfg.checkpoint_interval_ms} ms · debloating {'on' if job.debloat else 'off'} · ")
    text.append(job.phase, style=PHASE_STYLES.get(job.phase, ""))
    text.append(f"\nattempt {job.attempt + 1}")
    if job.restored_from is not None:
        text.append(f" (restored from checkpoint {job.restored_from})", style="magenta")
    text.append(f" · {job.elapsed:.1f} s\n")
    last = job.checkpoints[-1].checkpoint_id if job.checkpoints else "-"
    pending = job.pending_id if job.pending_id is not None else "-"
    text.append(f"checkpoints completed {len(job.checkpoints)} · last {last} · in progress {pending}")
    return Panel(text, title=f"flinknet demo --checkpointing {cfg.label}", box=box.ROUNDED)


def _tasks(job: JobProgress) -> Table:
    table = Table(title="tasks · the last checkpoint each acked: delay, alignment, in-flight",
                  box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    for name, justify in (("task", "left"), ("pid", "right"), ("state", "left"), ("records", "right"),
                          ("rate", "right"), ("bp", "right"), ("ckpt", "right"), ("delay", "right"),
                          ("align", "right"), ("in-flight", "right")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for t in job.tasks:
        bp = (Text(f"{t.backpressured:.0%}", style="red" if t.backpressured > 0.5 else "")
              if t.role == "source" else Text("-"))
        table.add_row(t.name, "-" if t.pid is None else str(t.pid),
                      Text(t.state, style=STATE_STYLES.get(t.state, "")),
                      format_count(t.records), format_count(t.rate, 0), bp,
                      "-" if t.checkpoint_id is None else str(t.checkpoint_id),
                      _ms(t.start_delay_ms), _ms(t.alignment_ms),
                      "-" if t.in_flight_bytes is None else format_bytes(t.in_flight_bytes))
    return table


def _checkpoints(job: JobProgress) -> Table:
    table = Table(title="completed checkpoints (max over aggregators)",
                  box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    for name in ("id", "attempt", "duration", "delay", "align", "state in", "state out", "phase"):
        table.add_column(name, justify="left" if name == "phase" else "right", no_wrap=True)
    for s in job.checkpoints[-RECENT:]:
        table.add_row(str(s.checkpoint_id), str(s.attempt + 1), _ms(s.duration_ms),
                      _ms(max(s.start_delay_ms, default=None)), _ms(max(s.alignment_ms, default=None)),
                      format_bytes(s.input_state_bytes), format_bytes(s.output_state_bytes),
                      Text("slow", style="red") if s.slow else "")
    if not job.checkpoints:
        table.add_row(*["-"] * 7, "")
    return table


def _events(events: Any) -> list[RenderableType]:
    if not events:
        return []
    return [Text("\n".join(events), style="dim")]


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} ms"

