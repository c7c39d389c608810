"""``python -m flinknet <command>``: the same as the ``flinknet`` command."""

import sys

from flinknet.cli import main

if __name__ == "__main__":
    sys.exit(main())
