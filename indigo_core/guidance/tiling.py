"""Algorithm 3 (any resolution): overlapping tiles merged with normalised Gaussian weights.

The denoiser runs tile by tile (the host wraps its model call with `tiled_apply`); LatentINN
guidance runs on the whole latent at once. Tiled VAE encode/decode reuse the same grid, so a
tile of the image and the tile of the latent it encodes to always correspond.

Two windows: "gaussian" (the paper's, for the denoiser: every pixel of a tile keeps some weight)
and "feather" (for the VAE tiles): zero on the outer quarter of the overlap on each side a tile
shares with a neighbour, where a tile's output sees its padding instead of the image, and a
raised-cosine cross-fade over the half in between, complementary to the neighbour's, so the
weights sum to one. A function whose reach is under a quarter of the overlap is then reproduced
exactly by the tiling; sides on the image border keep full weight.

Sizes are in latent units (one latent pixel = `downscale` image pixels) unless said otherwise.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch
from torch import Tensor

from ..errors import ConfigError, ShapeError
from .autoencoder import Autoencoder, ae_decode, ae_encode

Size2 = Union[int, Sequence[int]]

#: Standard deviation of the Gaussian window, as a fraction of the tile side. A tile's outputs are
#: least reliable at its own edges (padding, missing context), so the window must be small there:
#: with 0.15 an edge pixel weighs 0.4% of the centre (0.25 gave it 13.5%, and seams).
GAUSSIAN_SIGMA_FRACTION = 0.15
WINDOWS = ("gaussian", "feather")
#: Floor of the feathered window: a pixel no other tile covers keeps its tile's value.
_FEATHER_FLOOR = 1e-12


@dataclass(frozen=True)
class TileRegion:
    """One tile: rows [top, top+height), columns [left, left+width) of the tiled tensor."""

    top: int
    left: int
    height: int
    width: int

    def scaled(self, factor: int) -> "TileRegion":
        return TileRegion(self.top * factor, self.left * factor, self.height * factor, self.width * factor)

    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


def _pair(value: Size2, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    elif isinstance(value, Sequence) and len(value) == 2:
        pair = (value[0], value[1])
    else:
        raise ConfigError(f"{name}: expected an int or (height, width), got {value!r}")
    for v in pair:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{name}: expected integers, got {value!r}")
    return int(pair[0]), int(pair[1])


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length `tile` covering [0, size) with at least `overlap` shared.

    The stride is tile - overlap; the last tile is aligned to the end so every position is
    covered and no tile sticks out. A size <= tile gives one tile [0, size).
    """
    if tile < 1:
        raise ConfigError(f"tile: expected >= 1, got {tile}")
    if not 0 <= overlap < tile:
        raise ConfigError(f"overlap: expected 0 <= overlap < tile ({tile}), got {overlap}")
    if size < 1:
        raise ShapeError(f"tiling: expected a size >= 1, got {size}")
    if size <= tile:
        return [0]
    stride = tile - overlap
    n = math.ceil((size - tile) / stride) + 1
    starts = [i * stride for i in range(n - 1)] + [size - tile]
    return starts


def tile_grid(height: int, width: int, tile: Size2, overlap: Size2) -> list[TileRegion]:
    """All tiles over a (height, width) plane, row-major. Tiles are min(tile, size) large."""
    th, tw = _pair(tile, "tile")
    oh, ow = _pair(overlap, "overlap")
    rows = tile_starts(height, th, oh)
    cols = tile_starts(width, tw, ow)
    h, w = min(th, height), min(tw, width)
    return [TileRegion(r, c, h, w) for r in rows for c in cols]


@functools.lru_cache(maxsize=64)
def _gaussian_cached(height: int, width: int, sigma_fraction: float, device: torch.device,
                     dtype: torch.dtype) -> Tensor:
    def axis(n: int) -> Tensor:
        x = torch.arange(n, dtype=torch.float64)
        mid = (n - 1) / 2.0
        sd = max(sigma_fraction * n, 1e-6)
        return torch.exp(-0.5 * ((x - mid) / sd) ** 2)

    with torch.inference_mode(False):  # cached: must stay usable by autograd (grad_wrt="zt")
        w = axis(height)[:, None] * axis(width)[None, :]
        return (w / w.max()).to(device=device, dtype=dtype)


def gaussian_weights(height: int, width: int, device=None, dtype: torch.dtype = torch.float32,
                     sigma_fraction: float = GAUSSIAN_SIGMA_FRACTION) -> Tensor:
    """Separable Gaussian window (height, width), peak 1 at the centre, std = sigma_fraction * side.
    Cached per (size, sigma, device, dtype); treat the result as read-only."""
    return _gaussian_cached(int(height), int(width), float(sigma_fraction),
                            torch.device(device if device is not None else "cpu"), dtype)


def _feather_axis(n: int, scale: int, start_shared: bool, end_shared: bool, overlap: int) -> Tensor:
    """One axis of the feathered window over n output pixels (scale per grid unit, float64)."""
    w = torch.ones(n, dtype=torch.float64)
    if overlap <= 0:
        return w
    pos = (torch.arange(n, dtype=torch.float64) + 0.5) / scale  # grid units from the tile's start
    margin, ramp = overlap / 4.0, overlap / 2.0

    def fade(dist: Tensor) -> Tensor:
        t = ((dist - margin) / ramp).clamp(0.0, 1.0)
        return 0.5 - 0.5 * torch.cos(math.pi * t)

    if start_shared:
        w = w * fade(pos)
    if end_shared:
        w = w * fade(n / scale - pos)
    return w


@functools.lru_cache(maxsize=256)
def _feather_cached(height: int, width: int, scale: int, sides: tuple[bool, bool, bool, bool],
                    overlap: tuple[int, int], device: torch.device) -> Tensor:
    top, bottom, left, right = sides
    with torch.inference_mode(False):  # cached: must stay usable by autograd
        w = _feather_axis(height, scale, top, bottom, overlap[0])[:, None] * \
            _feather_axis(width, scale, left, right, overlap[1])[None, :]
        return w.clamp_min(_FEATHER_FLOOR).to(device=device, dtype=torch.float32)


def feather_weights(region: TileRegion, grid_hw: Sequence[int], overlap: Size2, out_scale: int = 1,
                    device=None) -> Tensor:
    """The feathered window (module docstring) of `region` of a grid of size grid_hw (grid units),
    as (region.height*out_scale, region.width*out_scale) float32. Cached; treat as read-only."""
    gh, gw = int(grid_hw[0]), int(grid_hw[1])
    sides = (region.top > 0, region.top + region.height < gh, region.left > 0, region.left + region.width < gw)
    return _feather_cached(region.height * out_scale, region.width * out_scale, int(out_scale), sides,
                           _pair(overlap, "overlap"), torch.device(device if device is not None else "cpu"))


def tiled_apply(fn: Callable[[Tensor, TileRegion], Tensor], x: Tensor, tile: Size2, overlap: Size2,
                *, in_scale: int = 1, out_scale: int = 1,
                sigma_fraction: float = GAUSSIAN_SIGMA_FRACTION, window: str = "gaussian") -> Tensor:
    """Apply `fn` tile by tile and merge the outputs with normalised weights: the Gaussian window
    (`sigma_fraction`) or the feathered one (module docstring), per `window`.

    x: (B,C,H,W). The grid is laid over (H/in_scale, W/in_scale) with `tile`/`overlap` in those
    units; each call gets the input crop of region*in_scale and the region (grid units) and must
    return (B,C',region.height*out_scale,region.width*out_scale). The result is
    (B,C',H/in_scale*out_scale,W/in_scale*out_scale) = sum_t w_t fn(x_t) / sum_t w_t, accumulated in
    float32 and returned in fn's output dtype. Identity fn -> x (to float rounding); a pointwise fn
    -> fn(x). Denoiser: in_scale = out_scale = 1; VAE encode: in_scale = 8; decode: out_scale = 8.
    """
    if window not in WINDOWS:
        raise ConfigError(f"tiled_apply: window expected one of {WINDOWS}, got {window!r}")
    if x.dim() != 4:
        raise ShapeError(f"tiled_apply: expected (B,C,H,W), got {tuple(x.shape)}")
    H, W = x.shape[-2:]
    if H % in_scale or W % in_scale:
        raise ShapeError(f"tiled_apply: expected H, W multiples of {in_scale}, got {H}x{W}")
    gh, gw = H // in_scale, W // in_scale
    regions = tile_grid(gh, gw, tile, overlap)
    out = None
    wsum = None
    out_dtype = None
    for reg in regions:
        rs, cs = reg.scaled(in_scale).slices()
        y = fn(x[:, :, rs, cs], reg)
        exp_hw = (reg.height * out_scale, reg.width * out_scale)
        if y.dim() != 4 or tuple(y.shape[-2:]) != exp_hw or y.shape[0] != x.shape[0]:
            raise ShapeError(f"tiled_apply: fn returned {tuple(y.shape)}, expected "
                             f"({x.shape[0]}, C', {exp_hw[0]}, {exp_hw[1]})")
        if out is None:
            out_dtype = y.dtype
            out = torch.zeros(y.shape[0], y.shape[1], gh * out_scale, gw * out_scale,
                              device=y.device, dtype=torch.float32)
            wsum = torch.zeros(gh * out_scale, gw * out_scale, device=y.device, dtype=torch.float32)
        if window == "gaussian":
            w = gaussian_weights(exp_hw[0], exp_hw[1], y.device, torch.float32, sigma_fraction)
        else:
            w = feather_weights(reg, (gh, gw), overlap, out_scale, y.device)
        ors, ocs = reg.scaled(out_scale).slices()
        out[:, :, ors, ocs] += y.float() * w
        wsum[ors, ocs] += w
    return (out / wsum).to(out_dtype)


def tiled_encode(ae: Autoencoder, x: Tensor, tile: Size2 = 64, overlap: Size2 = 16) -> Tensor:
    """E(x) tile by tile: x (B,3,H,W) in [0,1], H and W multiples of ae.downscale ->
    (B,C,H/d,W/d). `tile`/`overlap` in latent units (64 -> 512-pixel tiles); feathered window."""
    d = int(ae.downscale)
    return tiled_apply(lambda t, _r: ae_encode(ae, t), x, tile, overlap, in_scale=d, out_scale=1, window="feather")


def tiled_decode(ae: Autoencoder, z: Tensor, tile: Size2 = 64, overlap: Size2 = 16) -> Tensor:
    """D(z) tile by tile: z (B,C,h,w) -> (B,3,h*d,w*d). `tile`/`overlap` in latent units; feathered
    window."""
    d = int(ae.downscale)
    return tiled_apply(lambda t, _r: ae_decode(ae, t), z, tile, overlap, in_scale=1, out_scale=d, window="feather")
