import sys

from flinknet.cli import main

sys.exit(main())
