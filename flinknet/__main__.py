"""``python -m flinknet <command>``: the same as the ``flinknet`` command (:mod:`flinknet.tools.cli`)."""

import sys

from flinknet.tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
