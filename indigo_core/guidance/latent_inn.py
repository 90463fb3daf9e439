"""Algorithm 2 (LatentINN guidance), as pure functions.

[z_c, z_d] = g(z0); z_inv = g^-1(z_y, z_d); z0 <- z0 + zeta (z_inv - z0), z_y = E(up(y)).
No backpropagation: the INN's exact inverse gives a latent whose coarse part equals z_y.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .autoencoder import Autoencoder, ae_encode


def upsample_measurement(y: Tensor, size: Sequence[int]) -> Tensor:
    """up(y): bicubic resize of y (B,3,h,w) in [0,1] to `size` (H,W), clamped to [0,1]."""
    size = (int(size[0]), int(size[1]))
    if tuple(y.shape[-2:]) == size:
        return y
    return F.interpolate(y, size=size, mode="bicubic", align_corners=False).clamp(0.0, 1.0)


@torch.no_grad()
def measurement_latent(y: Tensor, ae: Autoencoder, image_size: Sequence[int]) -> Tensor:
    """z_y = E(up(y)): y (B,3,h,w) in [0,1] upsampled to image_size (H,W), encoded to
    (B,C,H/d,W/d) in the VAE's own latent space."""
    return ae_encode(ae, upsample_measurement(y, image_size))


@torch.no_grad()
def latent_inn_guide(z0: Tensor, z_y: Tensor, inn, degradation: Optional[Tensor], zeta: float,
                     details: Optional[Sequence[Tensor]] = None) -> Tensor:
    """One LatentINN guidance update (Alg. 2, lines 4-6).

    z0: (B,C,h,w) clean-latent estimate; z_y: (B,C,h_c,w_c) measurement latent (coarse size);
    degradation: (B,128) or None; zeta in [0,1]. `details` may pass the detail parts of g(z0)
    when the caller already ran the forward (e.g. for refinement). Returns z0 + zeta (z_inv - z0).
    """
    if details is None:
        _, details = inn(z0, degradation)
    z_inv = inn.inverse(z_y, list(details), degradation)
    return torch.lerp(z0, z_inv.to(z0.dtype), zeta)
