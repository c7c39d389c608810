"""The command line of ``flinknet demo --checkpointing MODE``: the run
(:mod:`flinknet.tools.demo.checkpoint`) shown live (:mod:`flinknet.tools.demo.checkpoint_view`,
the default on a terminal) or as lines (``--no-live``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from flinknet.tools.demo.checkpoint import (
    BLOCK,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CheckpointView,
    compare_debloating,
    parse_args,
    run_checkpoint_demo,
)

__all__ = ["main"]


def _make_view(live: bool | None) -> Callable[[], CheckpointView] | None:
    """A factory of live views when ``live`` (or, when None, stdout is a terminal and rich is
    installed); None for lines."""
    if live is False or (live is None and not sys.stdout.isatty()):
        return None
    try:
        from flinknet.tools.demo.checkpoint_view import CheckpointLiveView
    except ImportError:
        if live:
            raise
        return None
    return CheckpointLiveView


def main(argv: Sequence[str] | None = None) -> int:
    """``flinknet demo --checkpointing MODE [options]``; returns the exit status."""
    try:
        cfg, live = parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        make_view = _make_view(live)
    except ImportError:
        print("flinknet demo: error: --live needs the optional package rich (pip install 'flinknet[demo]')",
              file=sys.stderr)
        return EXIT_USAGE
    print(f"checkpointed job: {cfg.sources} sources -> key groups -> {cfg.aggregators} aggregators, "
          f"{cfg.label} checkpoints every {cfg.checkpoint_interval_ms} ms, {cfg.blocks * BLOCK} records "
          f"per source at {cfg.rate}/s, debloating {cfg.debloat}")
    view = None if make_view is None else make_view()
    try:
        result = run_checkpoint_demo(cfg, view=view)
    finally:
        if view is not None:
            view.close()
    print(f"check: {result.records} records, {'every key exact' if result.counts_ok else 'MISMATCH'} "
          f"({result.mismatched_keys} keys differ); {len(result.checkpoints)} checkpoints completed"
          + (f"; restored from checkpoint {result.restored_from} after killing pid {result.killed_pid}, "
             f"{result.replayed_records} in-flight records replayed"
             if result.restored_from is not None else "")
          + f"; {result.elapsed:.1f} s")
    if cfg.kill and result.restored_from is None:
        print("the aggregator was not killed: no checkpoint completed in the slow phase "
              "(a longer run or a shorter --checkpoint-interval)")
    if result.ok and cfg.debloat == "compare":
        compare_debloating(cfg, view=None if make_view is None else make_view())
    return EXIT_OK if result.ok else EXIT_FAILED
