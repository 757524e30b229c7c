"""``python -m scoresde.metrics``: see ``scoresde.metrics.cli``."""
import sys

from .cli import main

sys.exit(main())
