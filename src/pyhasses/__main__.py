"""``python -m pyhasses`` runs the daemon as the ``pyhasses`` command does."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
