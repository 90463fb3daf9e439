"""Shared set-up of the guidance host tests: tiny INNs, measurements, residuals, node calls.

Everything runs through the pack as ComfyUI loaded it (``comfy_inprocess``): INN classes come from
the pack's own ``indigo_core`` and the nodes are executed with ``run_node`` (ComfyUI's V3 path,
under inference mode like the server).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

import models as M
from inn_files import state_hash  # noqa: F401  (re-exported for the guidance tests)

#: Guidance widgets of the pack's guidance nodes (the nodes' defaults, except where a test says).
DEFAULT_WIDGETS = dict(mode="auto", zeta=0.3, w_dc=2.5, w_p=0.0, step_size=0.5, max_step=0.1, grad_wrt="z0",
                       guidance_start=0.0, guidance_end=1.0)


def tiny_inn(host, domain: str, split: str | None = None, seed: int = 0, channels: int | None = None,
             scale_noise: float = 0.05):
    """A small resblock INN of the pack's core with seeded, non-trivial weights (eval, frozen)."""
    core = host.core
    if split is None:
        split = "undecimated_haar" if domain == "latent" else "haar"
    c = channels if channels is not None else (4 if domain == "latent" else 3)
    cfg = core.INNConfig(domain=domain, channels=c, split=split, levels=2, pairs=1, block="resblock", hidden=8,
                         n_mrstb=1)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # the initial weights too, not only the added noise
        torch.manual_seed(seed)
        inn = core.WaveletINN(cfg).eval()
    with torch.no_grad():
        for p in inn.parameters():
            p.add_(scale_noise * torch.randn(p.shape, generator=gen))
    inn.requires_grad_(False)
    return inn


def to_image(x: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) -> ComfyUI IMAGE (B,H,W,3)."""
    return x.movedim(1, -1).contiguous()


@dataclass
class Scene:
    """An analytic-prior restoration problem: a true latent z*, its image, the measurement."""

    model: Any  # MODEL whose denoiser is the exact Gaussian MMSE denoiser
    vae: Any
    ae: Any  # the pack's Autoencoder adapter over `vae`
    inn: Any
    latent_hw: int
    z_star: torch.Tensor  # VAE space
    x_star: torch.Tensor  # (1,3,H,W) in [0,1]
    y: torch.Tensor  # (1,3,h,w) measurement in [0,1]
    positive: Any
    negative: Any
    guidance: Any  # the pack's indigo_core.guidance module

    def latent(self, batch: int = 1) -> dict:
        return {"samples": torch.zeros(batch, 4, self.latent_hw, self.latent_hw)}

    def measurement_latent(self) -> torch.Tensor:
        """z_y = E(up(y)) at the INN's coarse size (what the LatentINN guidance matches)."""
        g = self.guidance
        hc, wc = self.inn.config.coarse_shape(self.latent_hw, self.latent_hw)
        d = self.ae.downscale
        with torch.no_grad():
            return g.measurement_latent(self.y, self.ae, (hc * d, wc * d)).float()

    def residual(self, z: torch.Tensor) -> float:
        """rms data-consistency residual of a VAE-space latent: ||g_c(z) - z_y|| (latent INN) or
        ||y - g_c(D(z))|| (pixel INN)."""
        with torch.no_grad():
            z = z.float()
            if self.inn.config.domain == "latent":
                return float((self.inn(z)[0] - self.measurement_latent()).pow(2).mean().sqrt())
            x = self.ae.decode(z).float()
            return float((self.inn(x)[0] - self.y).pow(2).mean().sqrt())


def make_scene(host, domain: str, latent_hw: int, split: str | None = None, seed: int = 0) -> Scene:
    """The analytic prior, a smooth tiny VAE, a tiny INN, and a measurement of a prior sample.

    z* is drawn from the prior itself (unguided sampling, another seed), x* = D(z*). PixelINN: y =
    g_c(x*) clamped to [0,1] (the INN is the degradation operator, so y is consistent with it).
    LatentINN: y = x* downsampled x4 (antialiased bicubic)."""
    import nodes as comfy_nodes

    gp = host.module("nodes.guidance_patch")
    model = M.gaussian_prior_model(seed=seed)
    vae = M.tiny_vae(seed=seed)
    ae = gp.ComfyVAEAutoencoder(vae)
    inn = tiny_inn(host, domain, split=split, seed=seed)
    pos = M.empty_conditioning(1, 32, seed=1)
    neg = M.empty_conditioning(1, 32, seed=2)
    with torch.inference_mode():
        z_star = comfy_nodes.common_ksampler(model, 1000 + seed, 10, 1.0, "euler", "normal", pos, neg,
                                             {"samples": torch.zeros(1, 4, latent_hw, latent_hw)})[0]["samples"]
    z_star = z_star.clone()
    with torch.no_grad():
        x_star = ae.decode(z_star).float().clamp(0, 1)
        if domain == "pixel":
            y = inn(x_star)[0].clamp(0, 1)
        else:
            y = F.interpolate(x_star, scale_factor=0.25, mode="bicubic", antialias=True).clamp(0, 1)
    return Scene(model, vae, ae, inn, latent_hw, z_star, x_star, y.contiguous(), pos, neg,
                 host.module("indigo_core.guidance"))


def apply_guidance(host, scene: Scene, measurement: torch.Tensor | None = None, model=None, **widgets):
    """INDIGO_ApplyGuidance through ComfyUI's node path -> the guided MODEL."""
    w = dict(DEFAULT_WIDGETS)
    w.update(widgets)
    y = scene.y if measurement is None else measurement
    return host.run_node("INDIGO_ApplyGuidance", model=scene.model if model is None else model,
                         vae=w.pop("vae", scene.vae), inn=w.pop("inn", scene.inn), measurement=to_image(y), **w)[0]


def ksampler(host, model, scene: Scene, latent: dict | None = None, seed: int = 0, steps: int = 10,
             sampler_name: str = "euler", scheduler: str = "normal", cfg: float = 1.0, denoise: float = 1.0):
    """ComfyUI's KSampler node -> the VAE-space latent tensor."""
    out = host.run_node("KSampler", model=model, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name,
                        scheduler=scheduler, positive=scene.positive, negative=scene.negative,
                        latent_image=latent if latent is not None else scene.latent(), denoise=denoise)[0]
    return out["samples"]


def guided_ksampler(host, scene: Scene, measurement: torch.Tensor | None = None, latent: dict | None = None,
                    seed: int = 0, steps: int = 10, sampler_name: str = "euler", scheduler: str = "normal",
                    cfg: float = 1.0, denoise: float = 1.0, start_from_measurement: bool = False, model=None,
                    colour_fix: str = "none", **widgets):
    """INDIGO_GuidedKSampler through ComfyUI's node path -> NodeResult (latent, preview; ui)."""
    w = dict(DEFAULT_WIDGETS)
    w.update(widgets)
    y = scene.y if measurement is None else measurement
    return host.run_node(
        "INDIGO_GuidedKSampler", model=scene.model if model is None else model, positive=scene.positive,
        negative=scene.negative, latent_image=latent if latent is not None else scene.latent(), seed=seed,
        steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler, denoise=denoise,
        vae=w.pop("vae", scene.vae), inn=w.pop("inn", scene.inn), measurement=to_image(y),
        start_from_measurement=start_from_measurement, colour_fix=colour_fix, **w)


