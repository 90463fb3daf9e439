"""The input checks the degradation stages share: a floating-point (B,C,H,W) image in [0,1]."""

from __future__ import annotations

from typing import Optional

import torch

from ..checks import spatial_at_least, uint8_hint
from ..errors import InputValueError, ShapeError


def check_batch(x, who: str, channels: Optional[tuple[int, ...]] = None) -> None:
    """x must be a (B,C,H,W) tensor (with C in `channels` if given); any size and dtype."""
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{who}: expected x as a torch.Tensor of shape (B,C,H,W), got {type(x).__name__}")
    if x.ndim != 4 or (channels is not None and x.shape[1] not in channels):
        want = " or ".join(f"(B,{c},H,W)" for c in channels) if channels else "(B,C,H,W)"
        raise ShapeError(f"{who}: expected x of shape {want}, got {tuple(x.shape)}")


def check_float(x: torch.Tensor, who: str, hint: bool = True) -> None:
    """x (a tensor) must be floating point; `hint` adds the advice for 8-bit images. An integer
    image is refused: the stages would round it (a blur to black, JPEG to black and white, noise to
    nothing)."""
    if not x.is_floating_point():
        raise InputValueError(f"{who}: expected a floating-point image in [0,1], got dtype {x.dtype}"
                              + (uint8_hint(x.dtype) if hint else ""))


def check_image(x, who: str, channels: Optional[tuple[int, ...]] = None) -> None:
    """x must be a floating-point (B,C,H,W) tensor with H, W >= 1 (and C in `channels` if given)."""
    check_batch(x, who, channels)
    check_float(x, who)
    if not spatial_at_least(x):
        raise ShapeError(f"{who}: expected H and W >= 1, got {x.shape[-2]}x{x.shape[-1]}")
