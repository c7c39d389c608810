"""flinknet's command line: ``flinknet <command>`` (also ``python -m flinknet <command>``)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="flinknet", description="Apache Flink's network stack for Python.")
    parser.add_argument("command", choices=["bench", "version"], help="what to run")
    args, rest = parser.parse_known_args(argv)
    if args.command == "version":
        from flinknet import __version__
        from flinknet._core.buffer import is_debug_build

        print(f"flinknet {__version__}{' (debug build)' if is_debug_build() else ''}")
        return 0
    from flinknet import bench

    return bench.main(rest)


if __name__ == "__main__":
    sys.exit(main())
