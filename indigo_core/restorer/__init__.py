"""The stage-1 restoration module R (DiffBIR's "degradation removal", which the paper's
LatentINDIGO runs on): a small network that maps the measurement y to a clean, smooth estimate
at the target size. The prior starts from E(R(y)) and the colour fix takes R(y)'s low frequencies;
the INN guidance still works against the measurement y itself."""

from .network import RestorerConfig, StageOneRestorer, build_restorer
from .weights import RESTORER_FORMAT, load_restorer, save_restorer

__all__ = ["RESTORER_FORMAT", "RestorerConfig", "StageOneRestorer", "build_restorer", "load_restorer",
           "save_restorer"]
