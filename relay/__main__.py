"""``python -m relay`` is ``aicdn-relay``."""

import sys

from relay.cli import main

sys.exit(main())
