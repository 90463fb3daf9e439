"""Colour Fix: IMAGE + reference -> IMAGE whose low frequencies (wavelet) or per-channel mean and
spread (AdaIN) are taken from the reference, resized (bicubic) to the image's size: the Stage-1
Restore output, or the measurement itself.

The guided samplers return a LATENT, which the user decodes with VAE Decode: this node is the
colour correction of that decoded image, the same function as the restore CLI's `--colour-fix`.
"""

from __future__ import annotations

import torch

from ..indigo_core.errors import ConfigError, ShapeError
from ..indigo_core.guidance.colour import DEFAULT_LEVELS, MAX_LEVELS
from .common import CATEGORY
from .guidance_patch import bchw_to_image, image_to_bchw
from .host import io

METHODS = ("wavelet", "adain", "none")


class ColourFix(io.ComfyNode):
    """Colour correction of a restored image against a reference (stage-1 image or measurement)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="INDIGO_ColourFix",
            display_name="Colour Fix",
            category=CATEGORY,
            description=("Corrects the colours of a restored image against a reference (the Stage-1 Restore output "
                         "or the degraded measurement), resized (bicubic) to the image's size: 'wavelet' keeps the "
                         "reference's low frequencies and "
                         "the image's details, 'adain' matches each channel's mean and spread ('none' passes the image through)."),
            inputs=[
                io.Image.Input("image", tooltip="The restored image(s), e.g. VAE Decode of a guided sampler's LATENT."),
                io.Image.Input("measurement", tooltip="The reference: the Stage-1 Restore output (best), or the degraded "
                                                      "image y; one for the whole batch, or one per image. Any "
                                                      "size up to the image's (resized bicubic)."),
                io.Combo.Input("method", options=list(METHODS), default="wavelet",
                               tooltip="wavelet: low frequencies from the reference ('levels' levels); adain: "
                                       "per-channel mean and standard deviation from the reference; none: the image unchanged."),
                io.Int.Input("levels", default=DEFAULT_LEVELS, min=1, max=MAX_LEVELS, optional=True,
                             tooltip="wavelet only: levels of the decomposition (5 as StableSR/DiffBIR). Fewer levels "
                                     "take more of the reference: with a Stage-1 Restore reference, 3 scored best "
                                     "for the bundled models."),
            ],
            outputs=[io.Image.Output("IMAGE", display_name="image", tooltip="The colour-corrected image(s).")],
        )

    @classmethod
    def execute(cls, image, measurement, method, levels: int = DEFAULT_LEVELS) -> io.NodeOutput:
        from ..indigo_core.guidance import upsample_measurement
        from ..indigo_core.guidance.colour import colour_fix

        if method not in METHODS:
            raise ConfigError(f"method: expected one of {METHODS}, got {method!r}")
        x = image_to_bchw(image, "image")
        y = image_to_bchw(measurement, "measurement")
        if y.shape[0] not in (1, x.shape[0]):
            raise ShapeError(f"measurement: expected 1 or {x.shape[0]} images (one per image), got {y.shape[0]}")
        h, w = x.shape[-2:]
        if y.shape[-2] > h or y.shape[-1] > w:
            raise ShapeError(f"measurement: expected at most the image's size {w}x{h}, got "
                             f"{y.shape[-1]}x{y.shape[-2]}")
        with torch.inference_mode(False), torch.no_grad():
            ref = upsample_measurement(y, (h, w)).expand(x.shape[0], -1, -1, -1)
            out = colour_fix(x, ref, method, int(levels))
        return io.NodeOutput(bchw_to_image(out))
