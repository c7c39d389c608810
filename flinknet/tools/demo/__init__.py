"""``flinknet demo``: a keyed streaming job across real processes, with backpressure you can watch.

:mod:`~flinknet.tools.demo.job` is the job (its job graph, the source, aggregator and sink task
functions, the exactly-once check); :mod:`~flinknet.tools.demo.view` shows it (live ``rich``
view, ``--no-live`` lines, summary tables); :mod:`~flinknet.tools.demo.coordinator` runs it on a
:mod:`flinknet.graph` runner (``--runner process|ray|thread``), drives the phases and collects
the tasks' status. ``flinknet demo --checkpointing MODE`` runs the checkpointed job instead
(:mod:`~flinknet.tools.demo.checkpoint`: periodic checkpoints, a killed aggregator, the restore;
:mod:`~flinknet.tools.demo.checkpoint_view`: its live view; :mod:`~flinknet.tools.demo.checkpoint_cli`:
its command line). ``python -m flinknet.tools.demo`` is ``flinknet demo``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``flinknet demo [options]``; returns the exit status. With ``--checkpointing MODE``:
    the checkpointed job (:mod:`flinknet.tools.demo.checkpoint_cli`)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if any(a == "--checkpointing" or a.startswith("--checkpointing=") for a in args):
        from flinknet.tools.demo.checkpoint_cli import main as run_checkpointed

        return run_checkpointed(args)
    # Imported here, not at module level: every worker process or actor imports this package (it
    # loads the task functions of flinknet.tools.demo.job by name), and a task needs neither the
    # coordinator nor rich.
    try:
        import rich  # noqa: F401  (the views: the demo extra)
    except ImportError:
        print("flinknet demo: error: the demo needs the optional package rich "
              "(pip install 'flinknet[demo]')", file=sys.stderr)
        return 2
    from flinknet.tools.demo.coordinator import main as run

    return run(argv)
