"""Latent Re-encode Regulariser: z0 <- E(D(z0)) on a schedule (paper Alg. 1 lines 9-10, Table IV).

As an INDIGO_REGULARISER it sets when the guided samplers re-encode their clean-latent estimate
(they use their own VAE for it). Given a LATENT (and a VAE) it also re-encodes that latent once,
right here, e.g. to pull an edited latent back onto the VAE's manifold.
"""

from __future__ import annotations

import torch

from ..indigo_core.errors import ConfigError, ShapeError
from ..indigo_core.guidance import reencode
from .common import CATEGORY
from .guidance_inputs import REGULARISER, RegulariserSpec, schedule_from, schedule_inputs
from .guidance_patch import ComfyVAEAutoencoder
from .host import io


class Regulariser(io.ComfyNode):
    """Schedule of the re-encoding regulariser; optional one-off re-encoding of a LATENT."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="INDIGO_Regulariser",
            display_name="Latent Re-encode Regulariser",
            category=CATEGORY,
            description=("The re-encoding regulariser z0 <- E(D(z0)): pulls the guided estimate back onto the VAE's "
                         "latent manifold. The paper's best: the first 15 of 50 steps (fraction 0 to 0.3); all "
                         "steps over-smooths. Connect to a guided sampler, or re-encode a LATENT directly."),
            inputs=schedule_inputs("the regulariser", 0.0, 0.3) + [
                io.Vae.Input("vae", optional=True,
                             tooltip="VAE for re-encoding the 'latent' input here. Guided samplers use their own "
                                     "VAE for the regulariser."),
                io.Latent.Input("latent", optional=True,
                                tooltip="A LATENT to re-encode once, now: E(D(latent)) (needs the vae input)."),
            ],
            outputs=[
                REGULARISER.Output("regulariser", display_name="regulariser",
                                   tooltip="The schedule, for a guided sampler's 'regulariser' input."),
                io.Latent.Output("LATENT", display_name="latent",
                                 tooltip="E(D(latent)) when a latent and a VAE are connected; otherwise the input "
                                         "latent unchanged (None when none is connected)."),
            ],
        )

    @classmethod
    def execute(cls, schedule, start, end, every, vae=None, latent=None) -> io.NodeOutput:
        spec = RegulariserSpec(schedule_from(schedule, start, end, every), vae)
        out = latent
        if latent is not None:
            if vae is None:
                raise ConfigError("vae: re-encoding the 'latent' input expects a VAE on the 'vae' input, got none")
            z = latent["samples"]
            if z.dim() != 4:
                raise ShapeError(f"latent: expected an image latent (B,C,h,w), got shape {tuple(z.shape)}")
            if z.shape[0] == 0:
                raise ShapeError(f"latent: expected at least one item, got an empty batch {tuple(z.shape)}")
            ae = ComfyVAEAutoencoder(vae, differentiable=False)
            if z.shape[1] != ae.latent_channels:
                raise ShapeError(f"latent: expected {ae.latent_channels} channels (the VAE's), got {z.shape[1]}")
            with torch.no_grad():
                r = reencode(z.detach().float().to(ae.device), ae).float()
            out = dict(latent)
            out["samples"] = r.to(z.device)
        return io.NodeOutput(spec, out)
