"""python -m indigo_core.restore: see indigo_core/restore/cli.py."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
