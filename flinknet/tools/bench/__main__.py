"""``python -m flinknet.tools.bench [options]``: the same as ``flinknet bench``."""

import sys

from flinknet.tools.bench.runner import main

if __name__ == "__main__":
    sys.exit(main())
