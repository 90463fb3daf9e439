"""A toy diffusion set-up for the guidance tests, in pure torch.

Latents follow a Gaussian prior N(mu, s^2 I) whose exact MMSE denoiser is
    D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu),
sampled with k-diffusion-style Euler or Heun steps over a Karras sigma list. A guidance run is
plugged in where ComfyUI's post-CFG hook would call it: on every denoiser output.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from indigo_core import INNConfig, WaveletINN
from indigo_core.guidance import GuidanceRun, step_index_from_sigmas


def karras_sigmas(n: int, sigma_min: float = 0.03, sigma_max: float = 20.0, rho: float = 7.0) -> Tensor:
    """n + 1 sigmas (float64), decreasing, last 0 (k-diffusion's get_sigmas_karras)."""
    r = torch.linspace(0, 1, n, dtype=torch.float64)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    s = (hi + r * (lo - hi)) ** rho
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)])


def linear_sigmas(n: int, sigma_min: float = 0.03, sigma_max: float = 20.0) -> Tensor:
    return torch.cat([torch.linspace(sigma_max, sigma_min, n, dtype=torch.float64),
                      torch.zeros(1, dtype=torch.float64)])


class GaussianPrior:
    def __init__(self, mu: Tensor, s: float) -> None:
        self.mu, self.s = mu, s

    def denoise(self, x: Tensor, sigma: float) -> Tensor:
        return self.mu + self.s ** 2 / (self.s ** 2 + sigma ** 2) * (x - self.mu)


def sample(prior: GaussianPrior, noise: Tensor, sigmas: Tensor, run: Optional[GuidanceRun] = None,
           sampler: str = "euler", calls: Optional[list] = None) -> Tensor:
    """Sample from x_T = noise * sigma_0; the guidance run (if any) rewrites every denoiser output.
    sampler "euler" (one evaluation per step) or "heun" (two: sigma_i and sigma_{i+1}).
    `calls` collects (step_index, sigma) of each guided evaluation."""
    sig = [float(v) for v in sigmas]

    def model(x: Tensor, sigma: float) -> Tensor:
        z0 = prior.denoise(x, sigma)
        if run is not None:
            i, n = step_index_from_sigmas(torch.tensor([sigma], dtype=torch.float32), sigmas)
            if calls is not None:
                calls.append((i, sigma))
            z0 = run.step(z0, i, n)
        return z0

    x = noise * sig[0]
    for i in range(len(sig) - 1):
        s, s_next = sig[i], sig[i + 1]
        d = (x - model(x, s)) / s
        if sampler == "heun" and s_next > 0:
            x2 = x + d * (s_next - s)
            d2 = (x2 - model(x2, s_next)) / s_next
            x = x + (d + d2) / 2 * (s_next - s)
        else:
            x = x + d * (s_next - s)
    return x


def tiny_latent_inn(seed: int = 0, levels: int = 1) -> WaveletINN:
    """A small LatentINN (undecimated Haar split, Swin-based PM/UM) with seeded random weights."""
    cfg = INNConfig(domain="latent", channels=4, split="undecimated_haar", levels=levels, pairs=1,
                    hidden=8, n_mrstb=1, swin_layers=2, heads=2, window=4)
    torch.manual_seed(seed)
    return WaveletINN(cfg).eval()


def pixel_small_inn(seed: int = 0) -> WaveletINN:
    torch.manual_seed(seed)
    return WaveletINN(INNConfig.preset("pixel-small")).eval()


def latent_small_inn(seed: int = 0) -> WaveletINN:
    torch.manual_seed(seed)
    return WaveletINN(INNConfig.preset("latent-small")).eval()


def params_hash(module: torch.nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
