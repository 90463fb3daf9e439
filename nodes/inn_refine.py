"""INN Refine: test-time refinement settings, and adaptation of an INN before sampling.

During sampling (paper Eq. 16, Alg. 1 line 11): one Adam step per scheduled step on a private copy
of the INN, minimising ||y - g_c(x0)||^2 (PixelINN) or ||z_y - g_c(z0)||^2 (LatentINN); the copy is
made fresh for every run, so runs never influence each other and the loaded INN never changes.

Before sampling (the paper's unseen-degradation use): given (reference, measurement) pairs, a copy
of the INN is adapted for a few iterations with the training objective
L = ||g_c(x) - y||^2 + lambda ||g^-1(y, g_d(x)) - x||^2 (in latent space for a LatentINN, with
x = E(reference), y = E(up(measurement))), and returned as a new INDIGO_INN.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..indigo_core.errors import ConfigError, ShapeError
from ..indigo_core.guidance import RefineSettings, check_aspect, measurement_latent
from .common import CATEGORY, INN, private_inn_copy
from .guidance_inputs import (DEGRADATION, REFINE, degradation_tensor, schedule_from, schedule_inputs,
                              warn_estimator_pairing)
from .guidance_patch import ComfyVAEAutoencoder, image_to_bchw
from .host import ProgressBar, io, throw_if_interrupted


def adapt_inn(inn: Any, reference: torch.Tensor, measurement: torch.Tensor, iterations: int, lr: float,
              inverse_weight: float = 1.0, degradation: Optional[torch.Tensor] = None, vae: Any = None,
              node_id: Optional[str] = None) -> torch.nn.Module:
    """A copy of ``inn`` adapted to (reference (B,3,H,W), measurement (B|1,3,h,w)) pairs, both in [0,1].

    Returns a new INN (eval mode, frozen); ``inn`` is not modified."""
    cfg = inn.config
    B = reference.shape[0]
    if measurement.shape[0] not in (1, B):
        raise ShapeError(f"measurement: expected a batch of {B} (one per reference) or 1, got {measurement.shape[0]}")
    H, W = reference.shape[-2:]
    if degradation is not None and (degradation.shape[0] not in (1, B) or degradation.shape[1] != cfg.emb_dim):
        rows = f"{B} or 1" if B > 1 else "1"
        raise ShapeError(f"degradation: expected ({rows}, {cfg.emb_dim}) (one per reference; the INN's "
                         f"embedding size), got {tuple(degradation.shape)}")
    if cfg.domain == "pixel":
        want = cfg.coarse_shape(H, W)
        if tuple(measurement.shape[-2:]) != tuple(want):
            raise ShapeError(f"measurement: expected {want[0]}x{want[1]} (reference {H}x{W} / PixelINN scale "
                             f"x{cfg.scale}), got {measurement.shape[-2]}x{measurement.shape[-1]}")
    else:
        check_aspect("measurement", measurement.shape[-2:], (H, W), "the reference")
        if vae is None:
            raise ConfigError("vae: adapting a LatentINN expects the VAE of its latent space, got none")
    warn_estimator_pairing(inn, degradation)
    with torch.inference_mode(False):
        private = private_inn_copy(inn, trainable=True)
        device = next(private.parameters()).device
        x = reference.detach().clone().to(device)
        y = measurement.detach().clone().to(device).expand(B, -1, -1, -1)
        deg = None if degradation is None else degradation.detach().clone().to(device).expand(B, -1)
        if cfg.domain == "latent":
            ae = ComfyVAEAutoencoder(vae, device=device)
            if ae.latent_channels != cfg.channels:
                raise ShapeError(f"vae: expected {cfg.channels} latent channels (the LatentINN's), got {ae.latent_channels}")
            with torch.no_grad():
                x = ae.encode(x.to(dtype=ae.dtype or torch.float32)).float()
                hc, wc = cfg.coarse_shape(x.shape[-2], x.shape[-1])
                y = measurement_latent(y, ae, (hc * ae.downscale, wc * ae.downscale)).float()
        params = [p for p in private.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr)
        pbar = ProgressBar(iterations, node_id=node_id)
        private.train()
        for _ in range(iterations):
            throw_if_interrupted()
            with torch.enable_grad():
                coarse, details = private(x, deg)
                loss = F.mse_loss(coarse, y)
                if inverse_weight > 0:
                    loss = loss + inverse_weight * F.mse_loss(private.inverse(y, details, deg), x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            pbar.update(1)
        private.eval()
        private.requires_grad_(False)
    return private


class INNRefine(io.ComfyNode):
    """Refinement schedule and learning rate; optional adaptation of an INN to example pairs."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="INDIGO_INNRefine",
            display_name="INN Refine",
            category=CATEGORY,
            description=("Test-time refinement of the INN during guided sampling (one Adam step per scheduled step "
                         "on a private copy, reset every run; paper default: the first half of the steps). With "
                         "reference/measurement pairs and iterations > 0 it also adapts a copy of the INN to them "
                         "before sampling (unseen degradations)."),
            inputs=schedule_inputs("the refinement", 0.0, 0.5) + [
                io.Float.Input("lr", default=5e-5, min=1e-7, max=1.0, step=1e-6, round=1e-7,
                               tooltip="Adam learning rate of the per-step refinement (INDIGO+: 5e-5)."),
                io.Int.Input("iterations", default=0, min=0, max=100000,
                             tooltip="Adaptation iterations before sampling (0 = none; needs inn, reference "
                                     "and measurement)."),
                io.Float.Input("adapt_lr", default=1e-4, min=1e-7, max=1.0, step=1e-6, round=1e-7,
                               tooltip="Adam learning rate of the adaptation."),
                io.Float.Input("inverse_weight", default=1.0, min=0.0, max=100.0, step=0.1,
                               tooltip="lambda of the adaptation loss ||g_c(x)-y||^2 + lambda ||g^-1(y, x_d) - x||^2."),
                INN.Input("inn", optional=True, tooltip="The INN to adapt (not modified: the output is a copy)."),
                io.Image.Input("reference", optional=True, tooltip="Clean reference image(s) x for the adaptation."),
                io.Image.Input("measurement", optional=True,
                               tooltip="Degraded image(s) y of the references (PixelINN: reference size / scale)."),
                io.Vae.Input("vae", optional=True, tooltip="The VAE, for adapting a LatentINN."),
                DEGRADATION.Input("degradation", optional=True,
                                  tooltip="Degradation embedding of the measurement, if the INN uses one."),
            ],
            outputs=[
                REFINE.Output("refine", display_name="refine",
                              tooltip="For a guided sampler's 'refine' input."),
                INN.Output("adapted_inn", display_name="inn",
                           tooltip="The adapted INN copy (or the input INN when nothing was adapted; None when no "
                                   "INN is connected)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, schedule, start, end, every, lr, iterations, adapt_lr, inverse_weight, inn=None,
                reference=None, measurement=None, vae=None, degradation=None) -> io.NodeOutput:
        settings = RefineSettings(schedule=schedule_from(schedule, start, end, every), lr=float(lr))
        out_inn = inn
        if iterations > 0:
            missing = [n for n, v in (("inn", inn), ("reference", reference), ("measurement", measurement)) if v is None]
            if missing:
                raise ConfigError(f"INN Refine: iterations={iterations} expects inn, reference and measurement, "
                                  f"got none on {missing}")
            out_inn = adapt_inn(inn, image_to_bchw(reference, "reference"), image_to_bchw(measurement, "measurement"),
                                int(iterations), float(adapt_lr), float(inverse_weight),
                                degradation_tensor(degradation), vae, getattr(cls.hidden, "unique_id", None))
        return io.NodeOutput(settings, out_inn)
