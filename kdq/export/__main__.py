"""``python -m kdq.export verify DIR`` / ``python -m kdq.export export MODEL OUT ...``."""
import sys

from .cli import main

sys.exit(main())
