"""How the guidance sees a VAE: a small protocol, casting helpers and a tiny test autoencoder.

Latents are in the VAE's own space (for SD1.x: the raw encoder mean, i.e. ComfyUI's
`latent_format.process_out` of the model-space latent), never the diffusion model's scaled space.
"""

from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@runtime_checkable
class Autoencoder(Protocol):
    """What the guidance needs from a VAE.

    latent_channels: C of the latent (4 for SD1.x/SDXL, 16 for SD3/Flux).
    downscale: spatial factor image -> latent (8 for the SD family).
    encode(x): (B,3,H,W) in [0,1] -> (B,C,H/downscale,W/downscale), deterministic (posterior
        mean), in the VAE's own latent space.
    decode(z): the inverse direction, (B,3,H,W) roughly in [0,1]; must be differentiable with
        respect to z for the gradient modes (and its weights must not be inference tensors).
    Optional attribute `dtype` (e.g. torch.float16): inputs are cast to it at the boundary and
    outputs cast back to float32, so the VAE may run in half precision while the INN stays fp32.
    """

    latent_channels: int
    downscale: int

    def encode(self, x: Tensor) -> Tensor: ...

    def decode(self, z: Tensor) -> Tensor: ...


def _ae_dtype(ae: Autoencoder) -> Optional[torch.dtype]:
    dt = getattr(ae, "dtype", None)
    return dt if isinstance(dt, torch.dtype) else None


def ae_encode(ae: Autoencoder, x: Tensor) -> Tensor:
    """E(x) with the dtype cast at the boundary: (B,3,H,W) [0,1] -> (B,C,h,w) in x's dtype."""
    dt = _ae_dtype(ae)
    z = ae.encode(x if dt is None else x.to(dt))
    return z.to(x.dtype)


def ae_decode(ae: Autoencoder, z: Tensor) -> Tensor:
    """D(z) with the dtype cast at the boundary: (B,C,h,w) -> (B,3,H,W) in z's dtype."""
    dt = _ae_dtype(ae)
    x = ae.decode(z if dt is None else z.to(dt))
    return x.to(z.dtype)


class LinearTestAutoencoder(nn.Module):
    """A tiny deterministic autoencoder for tests: pixel-unshuffle by `downscale`, an orthonormal
    projection to `latent_channels`, and a smooth squashing in the decoder.

    encode(x) = P pixel_unshuffle(x - 0.5)   (P: C x 3*d*d with orthonormal rows; the first three
        rows are the per-colour block means, the rest a seeded random orthonormal complement)
    decode(z) = 0.5 + 0.5 * tanh(2 * pixel_shuffle(P^T z))

    So D maps into (0, 1) like a real VAE decoder and E(D(z)) = z only for small z (the decoder's
    squashing makes re-encoding a mild contraction, as with real VAEs). Differentiable; pure torch.
    """

    def __init__(self, latent_channels: int = 4, downscale: int = 8, seed: int = 0,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        d = int(downscale)
        n = 3 * d * d
        if not 3 <= latent_channels <= n:
            raise ValueError(f"latent_channels: expected 3..{n}, got {latent_channels}")
        self.latent_channels = int(latent_channels)
        self.downscale = d
        g = torch.Generator().manual_seed(seed)
        means = torch.zeros(3, n)
        for c in range(3):  # pixel_unshuffle orders channels as c * d*d + (i*d + j)
            means[c, c * d * d:(c + 1) * d * d] = 1.0 / d
        rest = torch.randn(n, max(latent_channels - 3, 1), generator=g)
        basis = torch.cat([means.t(), rest], dim=1)[:, :latent_channels]
        q, _ = torch.linalg.qr(basis)  # orthonormal columns; the first three keep the block means
        signs = torch.sign(torch.diagonal(q.t() @ basis))
        q = q * torch.where(signs == 0, torch.ones_like(signs), signs)
        self.register_buffer("proj", q.t().contiguous())  # (C, 3*d*d)
        if dtype is not None:
            self.to(dtype)
        self.dtype = dtype if dtype is not None else torch.float32

    def encode(self, x: Tensor) -> Tensor:
        """(B,3,H,W) in [0,1] -> (B,C,H/d,W/d); H, W multiples of d."""
        u = F.pixel_unshuffle(x - 0.5, self.downscale)
        return torch.einsum("kn,bnhw->bkhw", self.proj.to(x.dtype), u)

    def decode(self, z: Tensor) -> Tensor:
        """(B,C,h,w) -> (B,3,h*d,w*d) in (0, 1)."""
        u = torch.einsum("kn,bkhw->bnhw", self.proj.to(z.dtype), z)
        return 0.5 + 0.5 * torch.tanh(2.0 * F.pixel_shuffle(u, self.downscale))
