"""PSNR on RGB and on the luma channel Y (ITU-R BT.601, the convention of SR papers and MATLAB's
rgb2ycbcr): Y = 16/255 + (65.481 R + 128.553 G + 24.966 B)/255 for R, G, B in [0,1], so Y lies in
[16/255, 235/255]. Y-PSNR uses the same peak (1.0, i.e. 255 on the 8-bit scale) as RGB PSNR.
For images in [0, data_range] the whole formula scales with data_range (offset 16/255 * data_range),
so Y of x * data_range is data_range * Y of x and every metric on it is the same.
"""

from __future__ import annotations

import torch

from ..errors import InputValueError, ShapeError

__all__ = ["rgb_to_y", "psnr", "psnr_y", "check_pair"]

_BT601 = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)


def check_pair(x: torch.Tensor, y: torch.Tensor, who: str, channels: tuple[int, ...] = (1, 3)) -> None:
    """Raise ShapeError unless x, y are equal-shape (B,C,H,W) with C in `channels`."""
    if x.ndim != 4 or y.ndim != 4:
        raise ShapeError(f"{who}: expected (B,C,H,W) tensors, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape != y.shape:
        raise ShapeError(f"{who}: expected images of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[1] not in channels:
        raise ShapeError(f"{who}: expected {' or '.join(map(str, channels))} channels, got {x.shape[1]}")


def rgb_to_y(x: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """BT.601 luma. x: (B,3,H,W) RGB in [0, data_range] -> (B,1,H,W) in
    [16/255, 235/255] * data_range (for data_range 255: skimage's rgb2ycbcr Y, [16, 235])."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ShapeError(f"rgb_to_y: expected (B,3,H,W) RGB, got {tuple(x.shape)}")
    w = torch.tensor(_BT601, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    # the offset is on the data_range scale too: a fixed 16/255 would shift Y of [0,255] images
    # by a different amount than Y of [0,1] images, which changes SSIM (its constants C1, C2
    # compare means against data_range); PSNR, a difference, is unaffected
    return (x * w).sum(1, keepdim=True) + 16.0 / 255.0 * data_range


def _crop(x: torch.Tensor, border: int) -> torch.Tensor:
    if border < 0:
        raise ShapeError(f"crop_border: expected >= 0, got {border}")
    if border == 0:
        return x
    if 2 * border >= min(x.shape[-2:]):
        raise ShapeError(f"crop_border {border} leaves nothing of a {x.shape[-2]}x{x.shape[-1]} image")
    return x[..., border:-border, border:-border]


def psnr(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0, crop_border: int = 0,
         y_channel: bool = False) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB.

    x, y: (B,C,H,W), values in [0, data_range] (C = 3 for y_channel). crop_border drops that many
    pixels on each side first. Computed in float64 (float32 on MPS). Returns (B,); +inf for identical images.
    """
    check_pair(x, y, "psnr", (3,) if y_channel else (1, 3))
    if data_range <= 0:
        raise InputValueError(f"psnr: expected data_range > 0, got {data_range}")
    dt = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
    x = x.detach().to(dt)
    y = y.detach().to(dt)
    if y_channel:
        x, y = rgb_to_y(x, data_range), rgb_to_y(y, data_range)
    x, y = _crop(x, crop_border), _crop(y, crop_border)
    mse = ((x - y) ** 2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(data_range ** 2 / mse)


def psnr_y(x: torch.Tensor, y: torch.Tensor, **kw) -> torch.Tensor:
    """PSNR on BT.601 Y of RGB images; see `psnr`."""
    return psnr(x, y, y_channel=True, **kw)
