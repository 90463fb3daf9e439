"""Cheap checks of a model's tensor inputs (type, dtype, size), shared by the core's networks.

Only metadata is compared (no reductions over the data), so the checks cost nothing measurable on
the hot path. A dtype that differs from the model's is refused only outside autocast: under
autocast torch casts the inputs itself, and a mismatch there is intended.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..checks import uint8_hint
from ..errors import ShapeError


def model_dtype(module: nn.Module) -> Optional[torch.dtype]:
    """dtype of the module's first floating-point parameter (None when it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def autocast_on(device_type: str) -> bool:
    """Whether autocast is on for `device_type` ("cuda", "cpu", ...). torch before 2.4 has no
    device argument: its per-device queries are used there."""
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch < 2.4
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return bool(torch.is_autocast_enabled())


def check_float_input(x: Tensor, module: nn.Module, who: str, what: str) -> None:
    """x must be floating point and, outside autocast, of the module's dtype (the conv/linear
    layers would otherwise fail with torch's "Input type ... and bias type ..." error)."""
    if not x.is_floating_point():
        raise ShapeError(f"{who}: expected {what} as a floating-point tensor, got dtype {x.dtype}"
                         + uint8_hint(x.dtype))
    want = model_dtype(module)
    if want is not None and x.dtype != want and not autocast_on(x.device.type):
        raise ShapeError(f"{who}: expected {what} of the model's dtype {want}, got {x.dtype} "
                         f"(convert the input with .to({want}) or the model with .to({x.dtype}))")


def check_spatial(x: Tensor, who: str, what: str) -> None:
    """H and W (the last two dimensions) must both be >= 1."""
    h, w = x.shape[-2:]
    if h < 1 or w < 1:
        raise ShapeError(f"{who}: expected {what} with H and W >= 1, got {h}x{w} (shape {tuple(x.shape)})")
