"""The guidance baselines the paper compares with (Sec. IV-C1), as objectives over x0 = D(z0).

LDPS with the learned operator: h = w_dc * rms(y - g_c(x0)).
HGS (PromptFix): h = w_dc * rms(sobel(x0) - sobel(up(y))).
PGDiff: h = w_dc * rms(x0 - r), r a restoration of y (e.g. a host upscale model's output).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from .pixel_inn import Objective
from .update import rms_per_item


def ldps_objective(x0: Tensor, y: Tensor, inn, degradation: Optional[Tensor], w_dc: float) -> Objective:
    """x0 (B,3,H,W), y (B,3,H/s,W/s) -> ||y - g_c(x0)|| (rms), LDPS with the learned operator."""
    x_c, _ = inn(x0, degradation)
    residual = rms_per_item(y - x_c)
    return Objective(h=w_dc * residual, residual=residual, coarse=x_c)


def sobel_magnitude(x: Tensor) -> Tensor:
    """Sobel gradient magnitude per channel: (B,C,H,W) -> (B,C,H,W) (kornia)."""
    from kornia.filters import sobel

    return sobel(x.float())


def hgs_objective(x0: Tensor, y_edges: Tensor, w_dc: float) -> Objective:
    """x0 (B,3,H,W); y_edges = sobel_magnitude(up(y)) (B,3,H,W), computed once per run."""
    residual = rms_per_item(sobel_magnitude(x0) - y_edges)
    return Objective(h=w_dc * residual, residual=residual)


def pgdiff_objective(x0: Tensor, restoration: Tensor, w_dc: float) -> Objective:
    """x0 (B,3,H,W); restoration (B,3,H,W) in [0,1]."""
    residual = rms_per_item(x0 - restoration)
    return Objective(h=w_dc * residual, residual=residual)
