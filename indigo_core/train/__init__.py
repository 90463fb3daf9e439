"""Training of the PixelINN, the LatentINN and the degradation estimator.

Command line: `python -m indigo_core.train {pixel-inn,latent-inn,estimator} --data DIR --out DIR ...`,
also under `torchrun --nproc_per_node N` (data-parallel). From Python: `run([...argv...])`.
Training-only code: nothing in the rest of the core imports this package.
"""

from .cli import main, run

__all__ = ["main", "run"]
