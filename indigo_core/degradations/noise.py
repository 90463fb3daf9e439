"""Additive white Gaussian noise n with its level given on the 0..255 scale.

For images in [0,1] the noise std is level / 255. The noise is drawn on the CPU from a generator
seeded with an explicit integer seed and then moved to x's device, so the same seed gives the same
noise on every device. Noise is independent per pixel and per channel (colour noise).
"""

from __future__ import annotations

import torch

from ..checks import check_int, is_finite, is_int
from ..errors import ConfigError, ShapeError
from .checks import check_float

__all__ = ["gaussian_noise", "add_gaussian_noise"]


def _check_level(level) -> None:
    if not is_finite(level) or level < 0:
        raise ConfigError(f"noise level: expected a finite value >= 0 on the 0..255 scale, got {level!r}")


def gaussian_noise(shape: tuple[int, ...], level: float, seed: int, *,
                   dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Noise of std level/255 and the given shape; deterministic in `seed` (an int >= 0)."""
    _check_level(level)
    level = float(level)
    check_int("noise seed", seed, 0)
    if not (isinstance(shape, (tuple, list, torch.Size)) and all(is_int(d) and d >= 0 for d in shape)):
        raise ShapeError(f"noise: expected a shape of integers >= 0, got {shape!r}")
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    n = torch.randn(shape, generator=g, dtype=torch.float32)
    return (n * (level / 255.0)).to(dtype=dtype, device=device)


def add_gaussian_noise(x: torch.Tensor, level: float, seed: int) -> torch.Tensor:
    """x + n, n ~ N(0, (level/255)^2) per element; x is (..., H, W) in [0,1]. No clamping here.
    A level of 0 returns x unchanged."""
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"noise: expected x as a torch.Tensor (..., H, W), got {type(x).__name__}")
    if x.ndim < 2:
        raise ShapeError(f"noise: expected an image tensor (..., H, W), got {tuple(x.shape)}")
    # noise cast to an integer dtype would round to zero: x would come back unchanged
    check_float(x, "noise", hint=False)
    _check_level(level)
    if float(level) == 0.0:
        return x
    return x + gaussian_noise(tuple(x.shape), level, seed, dtype=x.dtype, device=x.device)
