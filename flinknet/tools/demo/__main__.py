"""``python -m flinknet.tools.demo [options]``: the same as ``flinknet demo``."""

import sys

from flinknet.tools.demo import main

if __name__ == "__main__":
    sys.exit(main())
