"""``flinknet demo``: a keyed streaming job across real processes, with backpressure you can watch.

:mod:`~flinknet.tools.demo.job` is the job (topology, the source, aggregator and sink tasks, the
exactly-once check); :mod:`~flinknet.tools.demo.view` shows it (live ``rich`` view, ``--no-live``
lines, summary tables); :mod:`~flinknet.tools.demo.coordinator` runs it (processes, phases, task
status, arguments). ``python -m flinknet.tools.demo`` is ``flinknet demo``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``flinknet demo [options]``; returns the exit status."""
    # Imported here, not at module level: every task process imports this package (spawn loads
    # flinknet.tools.demo.job by name), and a task needs neither the coordinator nor rich.
    from flinknet.tools.demo.coordinator import main as run

    return run(argv)
