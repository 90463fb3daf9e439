"""The input check every degradation stage shares: a floating-point (B,C,H,W) image in [0,1]."""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import InputValueError, ShapeError


def check_image(x, who: str, channels: Optional[tuple[int, ...]] = None) -> None:
    """x must be a floating-point (B,C,H,W) tensor with H, W >= 1 (and C in `channels` if given).
    An integer image is refused: the stages would round it (a blur to black, JPEG to black and
    white, noise to nothing)."""
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{who}: expected x as a torch.Tensor of shape (B,C,H,W), got {type(x).__name__}")
    if x.ndim != 4 or (channels is not None and x.shape[1] not in channels):
        want = " or ".join(f"(B,{c},H,W)" for c in channels) if channels else "(B,C,H,W)"
        raise ShapeError(f"{who}: expected x of shape {want}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputValueError(f"{who}: expected a floating-point image in [0,1], got dtype {x.dtype}"
                              + (" (convert 8-bit images with x.float() / 255)" if x.dtype == torch.uint8 else ""))
    if x.shape[-2] < 1 or x.shape[-1] < 1:
        raise ShapeError(f"{who}: expected H and W >= 1, got {x.shape[-2]}x{x.shape[-1]}")
