"""Downsampling by an integer factor s, and resizing to a given size.

Modes: "bicubic" (antialiased, Keys a=-0.5 as in PyTorch/PIL, so large factors do not alias) and
"area" (mean over each s x s cell; exact block averaging when the size divides by s). The output of
`downsample` is always (H // s, W // s): trailing rows/columns that do not fill a cell are
dropped (cropped before resizing) so that every output pixel sees a whole s x s footprint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import is_int, is_integral
from ..errors import ConfigError, ShapeError
from .checks import check_image

__all__ = ["RESIZE_MODES", "downsample", "resize_to"]

RESIZE_MODES = ("bicubic", "area")


def _check_mode(mode: str) -> str:
    if mode not in RESIZE_MODES:
        raise ConfigError(f"resize mode: expected one of {RESIZE_MODES}, got {mode!r}")
    return mode


def resize_to(x: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resize x (B,C,H,W) to (B,C,*size). Bicubic is antialiased when shrinking; values are not
    clamped (bicubic may overshoot [0,1] slightly). Differentiable; dtype/device follow x."""
    check_image(x, "resize")
    _check_mode(mode)
    if not (isinstance(size, (tuple, list, torch.Size)) and len(size) == 2 and all(is_int(v) for v in size)):
        raise ShapeError(f"resize: expected size as a pair of integers (H, W), got {size!r}")
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ShapeError(f"resize: expected an output size >= 1x1, got {h}x{w}")
    if (h, w) == tuple(x.shape[-2:]):
        return x
    if mode == "area":
        return F.interpolate(x, size=(h, w), mode="area")
    if x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16):
        # torch has no half-precision antialiased bicubic kernel on the CPU: compute in float32
        out = F.interpolate(x.float(), size=(h, w), mode="bicubic", align_corners=False, antialias=True)
        return out.to(x.dtype)
    return F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True)


def downsample(x: torch.Tensor, scale: int, mode: str = "bicubic") -> torch.Tensor:
    """Downsample x (B,C,H,W) by the integer factor `scale` to exactly (B,C,H//scale,W//scale)."""
    check_image(x, "downsample")
    if not is_integral(scale) or scale < 1:
        raise ConfigError(f"downsample: expected an integer scale >= 1, got {scale!r}")
    s = int(scale)
    h, w = x.shape[-2:]
    if h < s or w < s:
        raise ShapeError(f"downsample: image {h}x{w} is smaller than the scale factor {s}")
    if s == 1:
        return x
    ho, wo = h // s, w // s
    x = x[..., : ho * s, : wo * s]
    return resize_to(x, (ho, wo), mode)
