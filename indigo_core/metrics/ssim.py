"""SSIM (Wang et al. 2004) that reproduces `skimage.metrics.structural_similarity`.

Settings (defaults = Wang et al. = skimage with gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range given):
  window="gaussian": a Gaussian of std `sigma`, truncated at radius int(3.5*sigma + 0.5) (11 taps for
    1.5), as scipy.ndimage.gaussian_filter; population covariance.
  window="uniform": a win_size x win_size box (default 7); sample covariance (N/(N-1)), which is
    skimage's default when gaussian_weights=False.
skimage filters with reflected borders and then drops a border of (window-1)/2 before averaging,
so only windows wholly inside the image count: that is exactly a 'valid' convolution, used here.
Colour images: the mean of the per-channel SSIMs (skimage's channel_axis behaviour); or
`y_channel=True` for SSIM on BT.601 luma. Computed in float64 (except on devices without it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError, InputValueError, ShapeError
from .psnr import check_pair, rgb_to_y

__all__ = ["ssim"]


def _window_1d(window: str, win_size: int | None, sigma: float, dtype, device) -> torch.Tensor:
    if window == "gaussian":
        if sigma <= 0:
            raise ConfigError(f"ssim: expected sigma > 0, got {sigma}")
        r = int(3.5 * sigma + 0.5)
        ax = torch.arange(-r, r + 1, dtype=torch.float64)
        g = torch.exp(-0.5 * (ax / sigma) ** 2)
        return (g / g.sum()).to(dtype=dtype, device=device)
    if window == "uniform":
        n = 7 if win_size is None else int(win_size)
        if n < 1 or n % 2 == 0:
            raise ConfigError(f"ssim: expected an odd win_size >= 1, got {win_size}")
        return torch.full((n,), 1.0 / n, dtype=dtype, device=device)
    raise ConfigError(f"ssim: window expected 'gaussian' or 'uniform', got {window!r}")


def _filter(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    x = F.conv2d(x, w.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, w.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ssim(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0, window: str = "gaussian",
         sigma: float = 1.5, win_size: int | None = None, K1: float = 0.01, K2: float = 0.03,
         use_sample_covariance: bool | None = None, y_channel: bool = False,
         differentiable: bool = False) -> torch.Tensor:
    """Mean SSIM per image. x, y: (B,C,H,W) in [0, data_range], C = 1 or 3 (3 for y_channel).

    use_sample_covariance: None -> False for the Gaussian window, True for the uniform one (as
    skimage). differentiable=False detaches and computes in float64; True keeps the graph and the
    input dtype (a loss). Returns (B,) in [-1, 1].
    """
    check_pair(x, y, "ssim", (3,) if y_channel else (1, 3))
    if not data_range > 0:
        raise InputValueError(f"ssim: expected data_range > 0, got {data_range}")
    if not differentiable:
        dt = torch.float32 if x.device.type == "mps" else torch.float64
        x, y = x.detach().to(dt), y.detach().to(dt)
    if y_channel:
        x, y = rgb_to_y(x, data_range), rgb_to_y(y, data_range)
    w = _window_1d(window, win_size, sigma, x.dtype, x.device)
    n = w.shape[0]
    if min(x.shape[-2:]) < n:
        raise ShapeError(f"ssim: the {n}x{n} window exceeds the {x.shape[-2]}x{x.shape[-1]} image")
    if use_sample_covariance is None:
        use_sample_covariance = window == "uniform"
    cov_norm = n * n / (n * n - 1.0) if use_sample_covariance else 1.0
    ux, uy = _filter(x, w), _filter(y, w)
    uxx, uyy, uxy = _filter(x * x, w), _filter(y * y, w), _filter(x * y, w)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(2, 3)).mean(dim=1)
