"""`python -m indigo_core.train {pixel-inn,latent-inn,estimator} ...` (see docs/TRAINING.md)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
