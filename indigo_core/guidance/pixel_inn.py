"""Algorithm 1 (PixelINN guidance): the objective whose gradient moves z0.

x0 = D(z0); [x_c, x_d] = g(x0); x_inv = g^-1(y, x_d);
h = w_dc * rms(y - x_c) + w_p * LPIPS(x_inv, x0), per item (see settings.py for the normalisation).
The decoded x0 is computed once by the caller and reused for both terms and the refinement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import Tensor

from .update import rms_per_item

Perceptual = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Objective:
    """h: (B,) objective; residual: (B,) rms data-consistency residual (for records);
    coarse: the operator output A(x0) when there is one (reused by the refinement), else None."""

    h: Tensor
    residual: Tensor
    coarse: Optional[Tensor] = None


def pixel_inn_objective(x0: Tensor, y: Tensor, inn, degradation: Optional[Tensor], w_dc: float,
                        w_p: float, perceptual: Optional[Perceptual]) -> Objective:
    """x0: (B,3,H,W) decoded estimate (with graph); y: (B,3,H/s,W/s) in [0,1]; returns the
    objective of Alg. 1 lines 5-7. `perceptual` maps two (B,3,H,W) [0,1] images to (B,)."""
    x_c, x_d = inn(x0, degradation)
    residual = rms_per_item(y - x_c)
    h = w_dc * residual
    if w_p > 0:
        x_inv = inn.inverse(y, x_d, degradation)
        h = h + w_p * perceptual(x_inv, x0).reshape(-1).float()
    return Objective(h=h, residual=residual, coarse=x_c)
