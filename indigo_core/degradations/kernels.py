"""Gaussian blur kernels k of the degradation model y = JPEG_q((x * k) downsampled by s + n).

A kernel is a (k, k) float tensor that sums to 1. Isotropic kernels have one sigma; anisotropic
kernels have a sigma along each principal axis and a rotation angle theta (radians, counter-
clockwise from the x axis), i.e. the covariance R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T.
Sigmas are in pixels of the high-resolution image x.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..checks import is_finite, is_integral
from ..errors import ConfigError, ShapeError
from .checks import check_image

__all__ = ["default_kernel_size", "gaussian_kernel", "gaussian_kernel_1d", "isotropic_gaussian_kernel",
           "anisotropic_gaussian_kernel", "blur", "blur_separable"]


def default_kernel_size(sigma: float, sigma_y: float | None = None) -> int:
    """Smallest odd size that holds +-3 sigma of the wider axis: 2 * ceil(3 * max(sigma)) + 1 (>= 3)."""
    s = max(float(sigma), float(sigma_y) if sigma_y is not None else 0.0)
    return max(3, 2 * math.ceil(3.0 * s) + 1)


def _check_sigma(name: str, value: float) -> float:
    if not is_finite(value) or value <= 0:
        raise ConfigError(f"{name}: expected a finite blur sigma > 0 (pixels), got {value!r}")
    return float(value)


def _check_size(size) -> int:
    if not is_integral(size) or size < 1 or size % 2 == 0:
        raise ConfigError(f"kernel size: expected an odd integer >= 1, got {size!r}")
    return int(size)


def _check_kernel(k, who: str, name: str) -> None:
    if not isinstance(k, torch.Tensor):
        raise ShapeError(f"{who}: expected {name} as a torch.Tensor, got {type(k).__name__}")


def gaussian_kernel(sigma: float, sigma_y: float | None = None, theta: float = 0.0,
                    size: int | None = None, *, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """A normalised Gaussian kernel, (size, size), sum 1.

    sigma: std along the first principal axis (pixels); sigma_y: along the second (None ->
    isotropic, equal to sigma); theta: rotation in radians; size: odd side (None ->
    `default_kernel_size`). Computed in float64 and cast to `dtype`, so the values do not depend
    on the requested dtype beyond that final rounding.
    """
    sx = _check_sigma("sigma", sigma)
    sy = sx if sigma_y is None else _check_sigma("sigma_y", sigma_y)
    if not is_finite(theta):
        raise ConfigError(f"theta: expected a finite angle in radians, got {theta!r}")
    size = default_kernel_size(sx, sy) if size is None else _check_size(size)
    r = (size - 1) / 2.0
    ax = torch.arange(size, dtype=torch.float64) - r
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    c, s = math.cos(theta), math.sin(theta)
    # coordinates in the kernel's principal frame
    u = c * xx + s * yy
    v = -s * xx + c * yy
    k = torch.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    k = k / k.sum()
    return k.to(dtype=dtype, device=device)


def gaussian_kernel_1d(sigma: float, size: int, *, dtype: torch.dtype = torch.float32,
                       device: torch.device | str | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian (size,), sum 1. The outer product of the kernels for sigma_x and
    sigma_y equals `gaussian_kernel(sigma_x, sigma_y, 0, size)` up to float rounding."""
    s = _check_sigma("sigma", sigma)
    size = _check_size(size)
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    k = torch.exp(-0.5 * (ax / s) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def isotropic_gaussian_kernel(sigma: float, size: int | None = None, **kw) -> torch.Tensor:
    """Isotropic Gaussian kernel (size, size), sum 1; see `gaussian_kernel`."""
    return gaussian_kernel(sigma, None, 0.0, size, **kw)


def anisotropic_gaussian_kernel(sigma_x: float, sigma_y: float, theta: float,
                                size: int | None = None, **kw) -> torch.Tensor:
    """Anisotropic Gaussian kernel (size, size), sum 1; see `gaussian_kernel`."""
    return gaussian_kernel(sigma_x, sigma_y, theta, size, **kw)


def _pad_mode(r: int, h: int, w: int) -> str:
    return "reflect" if r < min(h, w) else "replicate"


def blur_separable(x: torch.Tensor, kernel_x: torch.Tensor, kernel_y: torch.Tensor) -> torch.Tensor:
    """Blur x (B,C,H,W) with the separable kernel outer(kernel_y, kernel_x) (1-D, odd, same size),
    as two 1-D passes: O(k) per pixel instead of O(k^2). Borders as in `blur`."""
    check_image(x, "blur_separable")
    _check_kernel(kernel_x, "blur_separable", "kernel_x")
    _check_kernel(kernel_y, "blur_separable", "kernel_y")
    if kernel_x.ndim != 1 or kernel_x.shape != kernel_y.shape or kernel_x.shape[0] % 2 == 0:
        raise ShapeError(f"blur_separable: expected two odd 1-D kernels of one size, got "
                         f"{tuple(kernel_x.shape)} and {tuple(kernel_y.shape)}")
    b, c, h, w = x.shape
    r = kernel_x.shape[0] // 2
    y = x.reshape(b * c, 1, h, w)
    if r > 0:
        y = F.pad(y, (r, r, r, r), mode=_pad_mode(r, h, w))
    kx = kernel_x.to(dtype=x.dtype, device=x.device).flip(0)
    ky = kernel_y.to(dtype=x.dtype, device=x.device).flip(0)
    y = F.conv2d(y, kx.view(1, 1, 1, -1))
    y = F.conv2d(y, ky.view(1, 1, -1, 1))
    return y.reshape(b, c, h, w)


def blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve every channel of x (B,C,H,W) with one kernel (k,k); same size out.

    Borders are reflected (like OpenCV's default BORDER_REFLECT_101); when the kernel radius
    reaches the image size, reflection is impossible and the border is replicated instead.
    Differentiable w.r.t. x and kernel; dtype and device follow x.
    """
    check_image(x, "blur")
    _check_kernel(kernel, "blur", "kernel")
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0:
        raise ShapeError(f"blur: expected an odd square kernel (k,k), got {tuple(kernel.shape)}")
    b, c, h, w = x.shape
    r = kernel.shape[0] // 2
    xp = F.pad(x.reshape(b * c, 1, h, w), (r, r, r, r), mode=_pad_mode(r, h, w)) if r > 0 else x.reshape(b * c, 1, h, w)
    weight = kernel.to(dtype=x.dtype, device=x.device)[None, None]
    # conv2d is a correlation: flip so that this is a true convolution (matters for rotated kernels only)
    out = F.conv2d(xp, weight.flip(-1, -2))
    return out.reshape(b, c, h, w)
