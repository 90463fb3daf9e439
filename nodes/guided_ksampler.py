"""INDIGO Guided KSampler: KSampler with LatentINDIGO guidance (Algorithms 1 and 2).

Samples exactly like ComfyUI's KSampler (same noise, progress bar, previews) on a guided clone of
the MODEL; returns the LATENT and the INN-inverse preview image.
"""

from __future__ import annotations

from typing import Any

import torch

from ..indigo_core.errors import ShapeError
from ..indigo_core.guidance import upsample_measurement
from .common import CATEGORY
from .guidance_inputs import (guidance_core_inputs, guidance_inputs, model_latent_channels, prepare_spec,
                              residual_ui, sampler_inputs, split_widgets, warn_other_latent_space)
from .guidance_patch import apply_guidance, bchw_to_image, image_to_bchw
from .host import io, ksample


def start_latent(spec, latent: dict, device=None, start_image=None) -> dict:
    """The LATENT to start from, at the input latent's size (VAE space), batch-matched: E(image)
    for a start image (e.g. Stage-1 Restore's output, resized bicubic to the latent's pixel size),
    else E(up(y)) of the measurement."""
    samples = latent["samples"]
    B, _, h, w = samples.shape
    image = spec.measurement if start_image is None else image_to_bchw(start_image, "start_image")
    if image.shape[0] not in (1, B):
        raise ShapeError(f"start_image: expected 1 or {B} images (the latent's batch), got {image.shape[0]}")
    ae = spec.autoencoder(device, differentiable=False)
    d = ae.downscale
    with torch.inference_mode(False), torch.no_grad():
        x = upsample_measurement(image.to(torch.float32), (h * d, w * d))
        z = ae.encode(x.to(device=getattr(ae, "device", x.device), dtype=ae.dtype or torch.float32)).float()
    if z.shape[0] != B:
        z = z.expand(B, -1, -1, -1)
    out = dict(latent)
    out["samples"] = z.to(samples.device).contiguous().clone()
    return out


def run_guided(cls_hidden, model, positive, negative, latent_image, vae, inn, measurement, seed, steps, cfg,
               sampler_name, scheduler, denoise, start_from_measurement, vae_tile=None, tiled_model=None,
               decode_output=False, start_image=None, **kwargs) -> tuple[dict, torch.Tensor, Any, dict]:
    """Shared by the Guided KSampler and Tiled INDIGO: validate, patch, sample, preview.

    Returns (LATENT, preview (B,3,H,W), decoded image (B,3,H,W) or None, run summary)."""
    colour = "colour_fix" in kwargs
    spec = prepare_spec(inn=inn, vae=vae, measurement=measurement, degradation=kwargs.get("degradation"),
                        restoration=kwargs.get("restoration"), node_id=getattr(cls_hidden, "unique_id", None),
                        vae_tile=vae_tile, **split_widgets(kwargs, colour_fix=colour))
    samples = latent_image["samples"]
    if samples.dim() != 4:
        raise ShapeError(f"latent_image: expected an image latent (B,C,h,w), got shape {tuple(samples.shape)}")
    spec.check(samples.shape, model_latent_channels(model))
    warn_other_latent_space(inn, model)
    outputs: dict[str, Any] = {}

    def on_finish(run, z):
        outputs["preview"] = run.finish(run.preview(z))
        if decode_output:  # under the run's out-of-memory guard, as every other decode
            outputs["image"] = run.finish(run.decode(z))

    spec.on_finish = on_finish
    guided = apply_guidance(tiled_model if tiled_model is not None else model, spec)
    start = start_from_measurement or start_image is not None
    latent = start_latent(spec, latent_image, start_image=start_image) if start else latent_image
    out = ksample(guided, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, denoise=denoise)
    if "preview" not in outputs:  # nothing sampled (e.g. denoise 0): preview of the input latent
        run = spec.new_run(out["samples"].shape)
        on_finish(run, out["samples"].float())
    return out, outputs["preview"], outputs.get("image"), spec.last_summary or {}


class GuidedKSampler(io.ComfyNode):
    """KSampler + LatentINDIGO guidance, in one node."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="INDIGO_GuidedKSampler",
            display_name="INDIGO Guided KSampler",
            category=CATEGORY,
            description=("KSampler with LatentINDIGO guidance: each step's clean-latent estimate is made "
                         "consistent with the measurement through the INN (LatentINN: Algorithm 2, PixelINN: "
                         "Algorithm 1), with optional re-encoding regulariser and test-time INN refinement."),
            inputs=sampler_inputs() + guidance_core_inputs() + [
                io.Boolean.Input("start_from_measurement", default=False,
                                 tooltip="Start from the VAE encoding of the upsampled measurement instead of "
                                         "the latent's content (use with denoise < 1, e.g. 0.6)."),
            ] + guidance_inputs(colour_fix=True) + [
                io.Image.Input("start_image", optional=True,
                               tooltip="Start from the VAE encoding of this image instead (e.g. Stage-1 Restore's "
                                       "output), resized to the latent's size; overrides start_from_measurement. "
                                       "The guidance still works against the measurement."),
            ],
            outputs=[
                io.Latent.Output("LATENT", display_name="latent", tooltip="The guided sample (decode with VAE Decode)."),
                io.Image.Output("preview", display_name="inn_preview",
                                tooltip="The INN-inverse preview: g^-1(y, g_d(x0)) for a PixelINN, D(g^-1(z_y, "
                                        "g_d(z0))) for a LatentINN (colour-fixed if chosen)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, denoise,
                vae, inn, measurement, start_from_measurement, start_image=None, **kwargs) -> io.NodeOutput:
        out, preview, _, summary = run_guided(
            cls.hidden, model, positive, negative, latent_image, vae, inn, measurement, seed, steps, cfg,
            sampler_name, scheduler, denoise, start_from_measurement, start_image=start_image, **kwargs)
        return io.NodeOutput(out, bchw_to_image(preview), ui=residual_ui(summary))
