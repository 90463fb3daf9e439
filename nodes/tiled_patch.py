"""Algorithm 3 in ComfyUI: the denoiser on overlapping latent tiles, merged with Gaussian weights.

A ``WrappersMP.DIFFUSION_MODEL`` wrapper (stackable; other packs' wrappers keep working) splits
the diffusion model's input into tiles of at most ``tile`` x ``tile`` latent pixels, calls the
rest of the wrapper chain on each tile, and blends the outputs with the core's normalised
Gaussian weights (``indigo_core.guidance.tiled_apply``). Everything around the diffusion model is
unchanged: CFG, the sampler, and the guidance, which therefore runs on the whole latent at once
(its post-CFG hook sees the merged estimate).

ControlNet residuals (computed by ComfyUI on the whole latent) are cut to each tile when the tile
lands on whole pixels of every residual's resolution, which holds when tile size, overlap and the
latent size are multiples of 8; otherwise the node refuses with a message saying so.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..indigo_core.errors import ConfigError
from ..indigo_core.guidance import tiled_apply
from ..indigo_core.guidance.tiling import GAUSSIAN_SIGMA_FRACTION
from .host import WrappersMP

TILE_KEY = "indigo_tiles"

#: Std of the Gaussian blending window as a fraction of the denoiser tile side (the core's default).
#: A tile's outputs are least reliable at its own edges (padding, missing context), so the window
#: must be small there: with 0.15 an edge pixel weighs 0.4% of the centre, and the seam test (mean
#: gradient across tile borders vs elsewhere, analytic prior, tile 16, overlap 4) measured +0-2%;
#: with 0.25, +5-9%.
DENOISER_SIGMA_FRACTION = GAUSSIAN_SIGMA_FRACTION


def _slice_control(control: Any, region, h: int, w: int) -> Any:
    """ControlNet residuals cut to ``region`` (latent units of an h x w latent)."""
    if control is None:
        return None
    if isinstance(control, Tensor):
        ch, cw = control.shape[-2:]
        if h % ch or w % cw:
            raise ConfigError(f"tiled denoising with ControlNet: a residual of {ch}x{cw} does not divide the latent "
                              f"{h}x{w}; use a latent size that is a multiple of 8")
        fy, fx = h // ch, w // cw
        if region.top % fy or region.left % fx or region.height % fy or region.width % fx:
            raise ConfigError(f"tiled denoising with ControlNet: tile {region.height}x{region.width} at "
                              f"({region.top},{region.left}) does not fall on the {ch}x{cw} residual grid; use "
                              "tile size, overlap and latent size that are multiples of 8")
        return control[..., region.top // fy:(region.top + region.height) // fy,
                       region.left // fx:(region.left + region.width) // fx]
    if isinstance(control, dict):
        return {k: _slice_control(v, region, h, w) for k, v in control.items()}
    if isinstance(control, (list, tuple)):
        return type(control)(_slice_control(v, region, h, w) for v in control)
    return control


class TiledDenoiser:
    """DIFFUSION_MODEL wrapper: the diffusion model on overlapping tiles (Gaussian-blended).

    tile, overlap: latent pixels. Inputs no larger than a tile pass through unchanged.
    """

    def __init__(self, tile: int, overlap: int) -> None:
        tile, overlap = int(tile), int(overlap)
        if tile < 8:
            raise ConfigError(f"tile_size: expected at least 8 latent pixels, got {tile}")
        if not 0 <= overlap < tile:
            raise ConfigError(f"tile_overlap: expected 0 <= overlap < tile_size ({tile}), got {overlap}")
        self.tile, self.overlap = tile, overlap

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, x, *args, **kwargs):
        h, w = x.shape[-2:]
        if h <= self.tile and w <= self.tile:
            return executor(x, *args, **kwargs)
        # UNetModel's signature: (x, timesteps, context, y, control, transformer_options, **kw).
        args = list(args)
        control = kwargs.get("control", args[3] if len(args) > 3 else None)

        def one_tile(xt: Tensor, region) -> Tensor:
            a = list(args)
            kw = dict(kwargs)
            if control is not None:
                cut = _slice_control(control, region, h, w)
                if "control" in kw:
                    kw["control"] = cut
                else:
                    a[3] = cut
            return executor(xt, *a, **kw)

        return tiled_apply(one_tile, x, self.tile, self.overlap, sigma_fraction=DENOISER_SIGMA_FRACTION)


def apply_tiled_denoiser(model: Any, tile: int, overlap: int) -> Any:
    """A clone of ``model`` whose diffusion model runs on tiles (Algorithm 3)."""
    m = model.clone()
    m.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, TILE_KEY, TiledDenoiser(tile, overlap))
    return m
