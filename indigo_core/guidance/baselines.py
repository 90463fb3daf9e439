"""The guidance baselines the paper compares with (Sec. IV-C1), as objectives over x0 = D(z0).

LDPS with the learned operator: h = w_dc * rms(y - g_c(x0)).
HGS (PromptFix): h = w_dc * rms(H(x0) - H(up(y))), H the Sobel high-pass of the luma
    (`sobel_magnitude`).
PGDiff: h = w_dc * rms(x0 - r), r a restoration of y (e.g. a host upscale model's output).

The rms (unsquared, per item) and the step rule are the same as for the paper's own modes
(settings.py, "Loss normalisation"): under the default Polyak rule a squared norm would only halve
the step, and DPS / INDIGO+ differentiate the unsquared norm.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..errors import ShapeError
from .pixel_inn import Objective
from .update import rms_per_item

# ITU-R BT.601 luma weights, as PromptFix's rgb_to_grayscale.
LUMA = (0.299, 0.587, 0.114)


def ldps_objective(x0: Tensor, y: Tensor, inn, degradation: Optional[Tensor], w_dc: float) -> Objective:
    """x0 (B,3,H,W), y (B,3,H/s,W/s) -> ||y - g_c(x0)|| (rms), LDPS with the learned operator."""
    x_c, _ = inn(x0, degradation)
    residual = rms_per_item(y - x_c)
    return Objective(h=w_dc * residual, residual=residual, coarse=x_c)


def sobel_magnitude(x: Tensor) -> Tensor:
    """The HGS high-pass H: Sobel gradient magnitude of the luma, (B,3,H,W) RGB (or (B,1,H,W)
    grey) -> (B,1,H,W) (kornia: 3x3 Sobel kernels normalised by 1/8, replicate padding,
    sqrt(gx^2 + gy^2 + 1e-6)).

    Like PromptFix's `sobel_operator` (and the Sobel operator the paper cites) it works on the
    intensity, BT.601 luma, not on each colour channel: a per-channel map would also pull the
    colour edges of D(z0) towards those of up(y), which HGS does not. Ours: PromptFix also divides
    the map by its maximum and adds an FFT high-pass term weighted by exp(-0.001 t); both are left
    out (the paper's Eq. 24 compares the high-pass components themselves; a max-normalised map
    hangs on a single pixel and is blind to the overall edge contrast), and the padding replicates
    the border where PromptFix pads with zeros (which adds edges along the border that are not in
    the image).
    """
    from kornia.filters import sobel

    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ShapeError(f"sobel_magnitude: expected (B,3,H,W) or (B,1,H,W), got {tuple(x.shape)}")
    x = x.float()
    if x.shape[1] == 3:
        # plain numbers, no weight tensor: no host-to-device copy in every guidance step
        x = LUMA[0] * x[:, 0:1] + LUMA[1] * x[:, 1:2] + LUMA[2] * x[:, 2:3]
    return sobel(x)


def hgs_objective(x0: Tensor, y_edges: Tensor, w_dc: float) -> Objective:
    """x0 (B,3,H,W); y_edges = sobel_magnitude(up(y)) (B,1,H,W), computed once per run."""
    residual = rms_per_item(sobel_magnitude(x0) - y_edges)
    return Objective(h=w_dc * residual, residual=residual)


def pgdiff_objective(x0: Tensor, restoration: Tensor, w_dc: float) -> Objective:
    """x0 (B,3,H,W); restoration (B,3,H,W) in [0,1]."""
    residual = rms_per_item(x0 - restoration)
    return Objective(h=w_dc * residual, residual=residual)
