"""``python -m master_api`` = ``aicdn-master``."""

import sys

from master_api.cli import main

sys.exit(main())
