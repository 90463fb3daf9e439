"""The small input tests the core's entry points share: what counts as a real number, a finite
number, an integer; whether a tensor is a (B,C,H,W) batch with a non-empty plane; what to print
for a value that should have been a tensor.

Each entry point keeps its own message (the messages are part of the API and say, in the words of
that entry point, what was expected): these helpers answer a question and the caller raises.
`check_int` is the one exception, for the wording "NAME: expected an integer >= N, got VALUE"
that several configs share.

Two notions are kept apart on purpose. `is_real` / `is_int` take any numeric type (numpy scalars
too); `is_py_int` takes only a Python int, for fields written to JSON as they are. bool is never a
number here. The tensor helpers read metadata only (type, ndim, shape): no reduction over the
data and no device sync, so the per-step paths can call them.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional

import torch

from .errors import ConfigError

__all__ = ["is_real", "is_finite", "is_int", "is_py_int", "is_integral", "check_int", "shape_or_type",
           "is_bchw", "spatial_at_least", "uint8_hint"]


def is_real(v: Any) -> bool:
    """A real number of any numeric type (int, float, numpy scalar), not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def is_finite(v: Any) -> bool:
    """A real number (see `is_real`) that is neither inf nor NaN."""
    return is_real(v) and math.isfinite(v)


def is_int(v: Any) -> bool:
    """An integer of any integer type (int, numpy integer), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_py_int(v: Any) -> bool:
    """A Python int, not a bool (numpy integers are refused: the value goes to JSON as it is)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_integral(v: Any) -> bool:
    """A finite real number (see `is_finite`) with an integer value: 2 and 2.0 count; 2.5, inf and
    NaN do not."""
    return is_finite(v) and int(v) == v


def check_int(name: str, value: Any, minimum: int, *, python_int: bool = False) -> None:
    """ConfigError "NAME: expected an integer >= MINIMUM, got VALUE" unless value is an integer
    (`is_int`, or `is_py_int` with python_int=True) >= minimum."""
    if not (is_py_int(value) if python_int else is_int(value)) or value < minimum:
        raise ConfigError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def shape_or_type(x: Any, with_dtype: bool = False):
    """What a message prints as "got": a tensor's shape tuple (followed by its dtype if asked),
    else the value's type name."""
    if not isinstance(x, torch.Tensor):
        return type(x).__name__
    return f"{tuple(x.shape)} {x.dtype}" if with_dtype else tuple(x.shape)


def is_bchw(x: Any, channels: Optional[int] = None) -> bool:
    """A 4-D tensor (B,C,H,W), with C == channels when channels is given. Any H and W (see
    `spatial_at_least`) and any dtype."""
    return isinstance(x, torch.Tensor) and x.ndim == 4 and (channels is None or x.shape[1] == channels)


def spatial_at_least(x: torch.Tensor, n: int = 1) -> bool:
    """The last two dimensions (H, W) of a tensor of ndim >= 2 are both >= n."""
    return x.shape[-2] >= n and x.shape[-1] >= n


def uint8_hint(dtype: torch.dtype) -> str:
    """The advice appended when an 8-bit image is given where a float one was expected."""
    return " (convert 8-bit images with x.float() / 255)" if dtype == torch.uint8 else ""
