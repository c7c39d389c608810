"""flinknet's command line: ``flinknet <command>`` (also ``python -m flinknet <command>``).

Commands: ``bench`` (the kernel and transport benchmarks), ``demo`` (a keyed streaming job
across processes with a live view of backpressure, credits and latency) and ``version``. Each
command parses its own options: ``flinknet demo --help``.
"""

from __future__ import annotations

import argparse
import sys

COMMANDS = {
    "bench": "time flinknet's kernels and transport against baselines",
    "demo": "run a keyed streaming job across processes and watch backpressure (--help for options)",
    "version": "print the version",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flinknet", description="Apache Flink's network stack for Python.",
        epilog="commands:\n" + "\n".join(f"  {name:<9}{text}" for name, text in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=list(COMMANDS), help="what to run")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        # no command, an unknown one, or -h/--help: argparse prints usage or help and exits
        try:
            _parser().parse_args(argv[:1])
        except SystemExit as exit_:
            return exit_.code if isinstance(exit_.code, int) else 2
        return 2
    command, rest = argv[0], argv[1:]
    if command == "version":
        from flinknet import __version__
        from flinknet._core.buffer import is_debug_build

        print(f"flinknet {__version__}{' (debug build)' if is_debug_build() else ''}")
        return 0
    if command == "demo":
        from flinknet import demo

        return demo.main(rest)
    from flinknet import bench

    try:
        return bench.main(rest)
    except SystemExit as exit_:      # argparse in bench: --help or a bad option
        return exit_.code if isinstance(exit_.code, int) else 2


if __name__ == "__main__":
    sys.exit(main())
