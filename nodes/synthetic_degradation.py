"""Synthetic Degradation: IMAGE -> y = JPEG_q((x * k) downsampled by s + n), the paper's pipeline.

For building test workflows from clean images: the paper's mild / medium / severe levels (blur
sigma 4/6/8, noise 15/25/35 on 0..255, JPEG quality 70/50/30, x4), or custom values. Seeded: the
same seed gives the same noise.
"""

from __future__ import annotations

import torch

from ..indigo_core.errors import ConfigError
from .common import CATEGORY
from .guidance_patch import bchw_to_image, image_to_bchw
from .host import io

PRESET_CHOICES = ("mild", "medium", "severe", "custom")


class SyntheticDegradation(io.ComfyNode):
    """Degrades an image with the paper's pipeline (blur, downsample, noise, JPEG)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="INDIGO_SyntheticDegradation",
            display_name="Synthetic Degradation",
            category=CATEGORY,
            description=("Makes a measurement y from a clean image with the paper's degradation model: Gaussian "
                         "blur, downsampling by the scale, Gaussian noise, JPEG. Presets are the paper's "
                         "evaluation levels; 'custom' uses the values below."),
            inputs=[
                io.Image.Input("image", tooltip="Clean image(s) in [0,1]; each side at least the scale."),
                io.Combo.Input("preset", options=list(PRESET_CHOICES), default="medium",
                               tooltip="mild (4, 15, q70), medium (6, 25, q50), severe (8, 35, q30): blur sigma, "
                                       "noise level (0..255), JPEG quality. custom: the values below."),
                io.Int.Input("scale", default=4, min=1, max=16,
                             tooltip="Downsampling factor s (output = input / s). Presets use it too."),
                io.Float.Input("blur_sigma", default=6.0, min=0.1, max=50.0, step=0.1,
                               tooltip="Gaussian blur std in input pixels (custom only)."),
                io.Float.Input("noise_level", default=25.0, min=0.0, max=255.0, step=0.5,
                               tooltip="Noise std on the 0..255 scale (custom only)."),
                io.Int.Input("jpeg_quality", default=50, min=0, max=100,
                             tooltip="JPEG quality 1..100; 0 = no JPEG (custom only)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of the noise: the same seed gives the same image."),
            ],
            outputs=[io.Image.Output("IMAGE", display_name="degraded",
                                     tooltip="The measurement y, (H/s)x(W/s), for the guidance nodes.")],
        )

    @classmethod
    def execute(cls, image, preset, scale, blur_sigma, noise_level, jpeg_quality, seed) -> io.NodeOutput:
        from ..indigo_core.degradations import DegradationParams, degrade
        from ..indigo_core.degradations import preset as preset_params

        if preset not in PRESET_CHOICES:
            raise ConfigError(f"preset: expected one of {PRESET_CHOICES}, got {preset!r}")
        x = image_to_bchw(image, "image")
        if preset == "custom":
            params = DegradationParams(blur_sigma=float(blur_sigma), noise_level=float(noise_level),
                                       jpeg_quality=int(jpeg_quality) if jpeg_quality > 0 else None, scale=int(scale))
        else:
            params = preset_params(preset, scale=int(scale))
        with torch.inference_mode(False):
            y, _ = degrade(x.detach().clone(), params, generator=int(seed) % (2 ** 62))
        return io.NodeOutput(bchw_to_image(y))
