"""flinknet's command line: ``flinknet <command>`` (also ``python -m flinknet <command>``).

Commands: ``bench`` (the kernel and transport benchmarks, :mod:`flinknet.tools.bench`), ``demo``
(a keyed streaming job across processes with a live view of backpressure, credits and latency,
:mod:`flinknet.tools.demo`) and ``version`` (also ``flinknet --version``). Each command parses
its own options: ``flinknet demo --help``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flinknet import __version__
from flinknet._core.buffer import is_debug_build

__all__ = ["COMMANDS", "main", "version_text"]

COMMANDS = {
    "bench": "time flinknet's kernels and transport against baselines",
    "demo": "run a keyed streaming job across processes and watch backpressure (--help for options)",
    "version": "print the version",
}


def version_text() -> str:
    """What ``flinknet version`` and ``flinknet --version`` print."""
    return f"flinknet {__version__}{' (debug build)' if is_debug_build() else ''}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flinknet", description="Apache Flink's network stack for Python.",
        epilog="commands:\n" + "\n".join(f"  {name:<9}{text}" for name, text in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version_text(),
                        help="print the version and exit")
    parser.add_argument("command", choices=list(COMMANDS), help="what to run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        # no command, an unknown one, -h/--help or --version: argparse prints usage, help or the
        # version and exits
        try:
            _parser().parse_args(argv[:1])
        except SystemExit as exit_:
            return exit_.code if isinstance(exit_.code, int) else 2
        return 2
    command, rest = argv[0], argv[1:]
    if command == "version":
        print(version_text())
        return 0
    # Each command's modules are imported only when it runs: ``flinknet demo`` needs none of the
    # benchmarks, and ``flinknet version`` neither.
    if command == "demo":
        from flinknet.tools import demo

        return demo.main(rest)
    from flinknet.tools.bench import runner

    try:
        return runner.main(rest)
    except SystemExit as exit_:      # argparse in bench: --help or a bad option
        return exit_.code if isinstance(exit_.code, int) else 2


if __name__ == "__main__":
    sys.exit(main())
