"""The re-encoding regulariser (Alg. 1, lines 9-10): z0 <- E(D(z0)).

Pulls z0 towards a fixed point of decode-then-encode, i.e. back onto the VAE's latent manifold
after a guidance update. The paper applies it in the first 15 of 50 steps (Table IV).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .autoencoder import Autoencoder, ae_decode, ae_encode


@torch.no_grad()
def reencode(z0: Tensor, ae: Autoencoder) -> Tensor:
    """E(D(z0)): (B,C,h,w) -> (B,C,h,w), same dtype; no gradient."""
    return ae_encode(ae, ae_decode(ae, z0))
