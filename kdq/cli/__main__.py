"""``python -m kdq.cli COMMAND ...``: the ``kdq`` command without the console script."""

import sys

from .main import main

sys.exit(main())
