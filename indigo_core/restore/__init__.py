"""Restoration with the small bundled prior and an INN, outside any host (`python -m indigo_core.restore`).

* `RestoreSettings`, `RestoreModels`, `load_models`, `restore_image`: one image in, one out
* `sampler`: a k-diffusion-style Euler sampler over SD's discrete schedule, with SDEdit starts
* `bundled`: where the pack's own model files are
"""

from .pipeline import MODES, RestoreModels, RestoreSettings, load_models, restore_image
from .sampler import SAMPLERS, SCHEDULERS, make_sigmas, partial_sigmas, sample

__all__ = ["MODES", "RestoreModels", "RestoreSettings", "load_models", "restore_image",
           "SAMPLERS", "SCHEDULERS", "make_sigmas", "partial_sigmas", "sample"]
