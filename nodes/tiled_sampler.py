"""Tiled INDIGO: guided sampling at any resolution (Algorithm 3).

The denoiser runs on overlapping latent tiles blended with Gaussian weights (a stackable
DIFFUSION_MODEL wrapper, tiled_patch.py); the guidance runs on the whole latent; every VAE pass
(measurement encoding, regulariser, PixelINN decoding, the output image) is tiled with the VAE's
own tile size and overlap (`vae_tile_size`, `vae_tile_overlap`; the grids coincide when they equal
the denoiser's). Returns the latent, the decoded image and the INN-inverse preview.
"""

from __future__ import annotations

from ..indigo_core.errors import ConfigError
from .common import CATEGORY
from .guidance_inputs import guidance_core_inputs, guidance_inputs, residual_ui, sampler_inputs
from .guidance_patch import bchw_to_image
from .guided_ksampler import run_guided
from .host import io
from .tiled_patch import apply_tiled_denoiser


class TiledSampler(io.ComfyNode):
    """Guided KSampler for large images: tiled denoiser, whole-latent guidance, tiled VAE."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="INDIGO_TiledSampler",
            display_name="Tiled INDIGO",
            category=CATEGORY,
            description=("Guided sampling at any resolution (paper Algorithm 3): the denoiser runs on overlapping "
                         "latent tiles merged with Gaussian weights, the INDIGO guidance on the whole latent, and "
                         "the VAE tile by tile. Outputs the latent, the decoded image and the INN preview."),
            inputs=sampler_inputs() + guidance_core_inputs() + [
                io.Boolean.Input("start_from_measurement", default=False,
                                 tooltip="Start from the VAE encoding of the upsampled measurement (use with "
                                         "denoise < 1)."),
                io.Int.Input("tile_size", default=64, min=8, max=1024, step=8,
                             tooltip="Denoiser tile side in latent pixels (64 = 512 image pixels for SD). The "
                                     "denoiser never sees more than this."),
                io.Int.Input("tile_overlap", default=16, min=0, max=512, step=8,
                             tooltip="Overlap of neighbouring tiles in latent pixels; wider hides seams better "
                                     "but costs more tiles."),
                io.Int.Input("vae_tile_size", default=64, min=8, max=1024, step=8,
                             tooltip="VAE tile side in latent pixels (x8 image pixels) for every encode/decode."),
                io.Int.Input("vae_tile_overlap", default=16, min=0, max=512, step=8,
                             tooltip="Overlap of VAE tiles in latent pixels."),
            ] + guidance_inputs(colour_fix=True) + [
                io.Image.Input("start_image", optional=True,
                               tooltip="Start from the VAE encoding (tiled) of this image instead (e.g. Stage-1 "
                                       "Restore's output), resized to the latent's size; overrides "
                                       "start_from_measurement. The guidance still works against the measurement."),
            ],
            outputs=[
                io.Latent.Output("LATENT", display_name="latent", tooltip="The guided sample."),
                io.Image.Output("IMAGE", display_name="image",
                                tooltip="The sample decoded tile by tile (colour-fixed if chosen)."),
                io.Image.Output("preview", display_name="inn_preview", tooltip="The INN-inverse preview."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, denoise,
                vae, inn, measurement, start_from_measurement, tile_size, tile_overlap, vae_tile_size,
                vae_tile_overlap, **kwargs) -> io.NodeOutput:
        tiled = apply_tiled_denoiser(model, tile_size, tile_overlap)
        if not 0 <= vae_tile_overlap < vae_tile_size:
            raise ConfigError(f"vae_tile_overlap: expected 0 <= overlap < vae_tile_size ({vae_tile_size}), "
                              f"got {vae_tile_overlap}")
        out, preview, image, summary = run_guided(
            cls.hidden, model, positive, negative, latent_image, vae, inn, measurement, seed, steps, cfg,
            sampler_name, scheduler, denoise, start_from_measurement, vae_tile=(vae_tile_size, vae_tile_overlap),
            tiled_model=tiled, decode_output=True, **kwargs)
        return io.NodeOutput(out, bchw_to_image(image), bchw_to_image(preview), ui=residual_ui(summary))
