"""Image quality metrics: PSNR (RGB, BT.601 Y), SSIM (as scikit-image), LPIPS and DISTS with
offline weights (converted once by `python -m indigo_core.metrics.convert`), and FID when a
feature network is available.

Light to import: LPIPS/DISTS/FID load their networks only when asked
(`load_lpips`, `load_dists`, `InceptionFeatures`).
"""

from .psnr import psnr, psnr_y, rgb_to_y
from .ssim import ssim
from .weights import PerceptualWeightsMissing, search_dirs

__all__ = ["psnr", "psnr_y", "rgb_to_y", "ssim", "PerceptualWeightsMissing", "search_dirs", "load_lpips",
           "load_dists"]


def load_lpips(net: str = "alex", weights_dir=None, device=None):
    """See `indigo_core.metrics.lpips.load_lpips`."""
    from .lpips import load_lpips as _load

    return _load(net, weights_dir, device)


def load_dists(weights_dir=None, device=None):
    """See `indigo_core.metrics.dists.load_dists`."""
    from .dists import load_dists as _load

    return _load(weights_dir, device)
