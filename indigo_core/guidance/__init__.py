"""LatentINDIGO guidance (paper Sec. III, Algorithms 1-3) and the baselines it is compared with.

Pure functions over explicit per-run state; nothing here imports a host. Public API:

* settings: `GuidanceSettings`, `RefineSettings`, `Schedule`, `step_index_from_sigmas`
* per-run state: `GuidanceRun` (`step`, `step_zt`, `finish`, `preview`, records), `StepRecord`
* autoencoder: `Autoencoder` protocol, `LinearTestAutoencoder`, `ae_encode`, `ae_decode`
* algorithms: `latent_inn_guide`, `measurement_latent`, `pixel_inn_objective`, `ldps_objective`,
  `hgs_objective`, `pgdiff_objective`, `descent_update`, `reencode`
* checks: `check_aspect`
* colour: `colour_fix`, `wavelet_colour_fix`, `adain_colour_fix`
* tiling (Alg. 3): `TileRegion`, `tile_grid`, `gaussian_weights`, `tiled_apply`, `tiled_encode`,
  `tiled_decode`
* memory and speed: `GuidanceMemoryError`, `is_out_of_memory`, `decode_for_grad` (decoder
  checkpointing), `CompiledINN` (optional torch.compile)
"""

from .autoencoder import Autoencoder, LinearTestAutoencoder, ae_decode, ae_encode
from .baselines import hgs_objective, ldps_objective, pgdiff_objective, sobel_magnitude
from .checks import check_aspect
from .colour import adain_colour_fix, colour_fix, wavelet_colour_fix
from .accel import CompiledINN
from .latent_inn import latent_inn_guide, measurement_latent, upsample_measurement
from .memory import GuidanceMemoryError, decode_for_grad, is_out_of_memory
from .pixel_inn import Objective, pixel_inn_objective
from .refine import private_inn_copy, private_module_copy
from .regulariser import reencode
from .run import GuidanceRun, StepRecord
from .schedule import Schedule, step_index_from_sigmas
from .settings import COLOUR_FIXES, MODES, GuidanceSettings, RefineSettings
from .tiling import TileRegion, gaussian_weights, tile_grid, tiled_apply, tiled_decode, tiled_encode
from .update import descent_update, rms_per_item

__all__ = [
    "Autoencoder", "LinearTestAutoencoder", "ae_decode", "ae_encode",
    "hgs_objective", "ldps_objective", "pgdiff_objective", "sobel_magnitude",
    "check_aspect",
    "adain_colour_fix", "colour_fix", "wavelet_colour_fix",
    "latent_inn_guide", "measurement_latent", "upsample_measurement",
    "Objective", "pixel_inn_objective",
    "private_inn_copy", "private_module_copy", "reencode",
    "GuidanceRun", "StepRecord",
    "Schedule", "step_index_from_sigmas",
    "COLOUR_FIXES", "MODES", "GuidanceSettings", "RefineSettings",
    "TileRegion", "gaussian_weights", "tile_grid", "tiled_apply", "tiled_decode", "tiled_encode",
    "descent_update", "rms_per_item",
    "GuidanceMemoryError", "is_out_of_memory", "decode_for_grad", "CompiledINN",
]
