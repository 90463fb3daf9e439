"""Colour fixes applied after sampling: pure functions of (result, reference).

Both take images (B,3,H,W) (any float dtype, any size >= 1x1) and a reference (B or 1,3,H',W');
the reference is resized (bicubic, clamped to [0,1]) to the result's size when they differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ShapeError


def _check(result: Tensor, reference: Tensor) -> Tensor:
    if result.dim() != 4 or reference.dim() != 4:
        raise ShapeError(f"colour fix: expected (B,C,H,W) tensors, got result {tuple(result.shape)}, "
                         f"reference {tuple(reference.shape)}")
    if reference.shape[1] != result.shape[1]:
        raise ShapeError(f"colour fix: expected a reference with {result.shape[1]} channels, "
                         f"got {reference.shape[1]}")
    if reference.shape[0] not in (1, result.shape[0]):
        raise ShapeError(f"colour fix: expected a reference batch of 1 or {result.shape[0]}, "
                         f"got {reference.shape[0]}")
    reference = reference.to(device=result.device, dtype=result.dtype)
    if reference.shape[-2:] != result.shape[-2:]:
        reference = F.interpolate(reference, size=result.shape[-2:], mode="bicubic",
                                  align_corners=False).clamp(0.0, 1.0)
    return reference.expand(result.shape[0], -1, -1, -1)


def adain_colour_fix(result: Tensor, reference: Tensor, eps: float = 1e-5) -> Tensor:
    """Give each channel of each item the reference's mean and standard deviation.

    result (B,C,H,W), reference (B|1,C,H',W') -> (B,C,H,W). Not clamped.
    """
    reference = _check(result, reference)
    dims = (-2, -1)
    mu_r, sd_r = result.mean(dims, keepdim=True), result.std(dims, keepdim=True, unbiased=False)
    mu_t, sd_t = reference.mean(dims, keepdim=True), reference.std(dims, keepdim=True, unbiased=False)
    return (result - mu_r) / (sd_r + eps) * sd_t + mu_t


def _binomial_blur(x: Tensor, dilation: int) -> Tensor:
    """3x3 binomial blur [1,2,1]^T[1,2,1]/16 with holes (a trous). Mirror padding (keeps textures
    periodic at the border); replicate padding where the image is too small to mirror."""
    c = x.shape[1]
    k1 = torch.tensor([1.0, 2.0, 1.0], device=x.device, dtype=x.dtype) / 4.0
    k = (k1[:, None] * k1[None, :]).expand(c, 1, 3, 3)
    mode = "reflect" if dilation < min(x.shape[-2:]) else "replicate"
    xp = F.pad(x, (dilation, dilation, dilation, dilation), mode=mode)
    return F.conv2d(xp, k, groups=c, dilation=dilation)


def wavelet_low_pass(x: Tensor, levels: int = 5) -> Tensor:
    """Low-frequency part of an a trous (undecimated) wavelet decomposition with `levels` levels:
    the image blurred with binomial kernels of dilation 1, 2, 4, ... (B,C,H,W) -> (B,C,H,W)."""
    low = x
    for i in range(levels):
        low = _binomial_blur(low, 2 ** i)
    return low


def wavelet_colour_fix(result: Tensor, reference: Tensor, levels: int = 5) -> Tensor:
    """Low frequencies from the reference, high frequencies from the result:
    out = (result - low(result)) + low(reference). (B,C,H,W) -> (B,C,H,W), not clamped.
    """
    reference = _check(result, reference)
    return (result - wavelet_low_pass(result, levels)) + wavelet_low_pass(reference, levels)


#: Levels of the wavelet fix: 5 as StableSR and DiffBIR; fewer take more of the reference.
DEFAULT_LEVELS = 5
MAX_LEVELS = 8


def colour_fix(result: Tensor, reference: Tensor, kind: str, levels: int = DEFAULT_LEVELS) -> Tensor:
    """Dispatch on kind: "none" (result unchanged), "wavelet" (`levels` levels, 1..8) or "adain";
    clamps to [0,1]."""
    if kind == "none":
        return result
    if kind == "wavelet":
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= MAX_LEVELS:
            from ..errors import ConfigError

            raise ConfigError(f"colour fix levels: expected an integer in 1..{MAX_LEVELS}, got {levels!r}")
        return wavelet_colour_fix(result, reference, levels).clamp(0.0, 1.0)
    if kind == "adain":
        return adain_colour_fix(result, reference).clamp(0.0, 1.0)
    from ..errors import ConfigError
    raise ConfigError(f"colour_fix: expected one of ('none', 'wavelet', 'adain'), got {kind!r}")
