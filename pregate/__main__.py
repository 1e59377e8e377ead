"""``python -m pregate`` is the same as the ``pregate`` command."""

import sys

from pregate.cli import main

sys.exit(main())
