"""Gradient updates of z0 shared by the gradient modes (PixelINN, LDPS, HGS, PGDiff).

All reductions are per batch item, so items never interact.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def rms_per_item(t: Tensor, eps: float = 1e-12) -> Tensor:
    """Root-mean-square over all but the batch dimension: (B,...) -> (B,). The eps keeps the
    gradient finite at an exact zero."""
    return torch.sqrt(t.float().pow(2).flatten(1).mean(1) + eps)


def dot_per_item(a: Tensor, b: Tensor) -> Tensor:
    """<a_i, b_i> for each item: (B,...), (B,...) -> (B,)."""
    return (a.float() * b.float()).flatten(1).sum(1)


def _per_item(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def descent_update(z0: Tensor, direction: Tensor, h: Tensor, slope: Tensor, step_size: float,
                   rule: str = "polyak", max_step: Optional[Tensor] = None) -> Tensor:
    """One guidance step on z0 against the objective h, per item.

    z0, direction: (B,C,h,w); direction is the gradient of h (w.r.t. z0, or w.r.t. z_t for the
        DPS-style mode). h: (B,) objective values (>= 0, zero at data consistency).
    slope: (B,) directional derivative of h along `direction` in z0 space,
        <grad_z0 h, direction> (equals ||grad||^2 when direction = grad_z0 h).
    rule "polyak": z0 - step_size * h / slope * direction, the step that zeroes the linearised h
        (items with slope <= 0, i.e. no descent in z0, are left unchanged).
    rule "gradient": z0 - step_size * direction (DPS / INDIGO+).
    max_step: optional (B,) cap on the rms of the change of each item (trust region: a Polyak
        step grows without bound where the residual is nearly orthogonal to what z0 can change).
    Returns a new tensor; inputs are not modified.
    """
    direction = direction.float()
    if rule == "polyak":
        ok = slope > 0
        alpha = torch.where(ok, h.float() / torch.where(ok, slope.float(), torch.ones_like(slope.float())),
                            torch.zeros_like(h.float()))
        delta = _per_item(alpha * step_size, direction) * direction
    elif rule == "gradient":
        delta = step_size * direction
    else:  # pragma: no cover - settings validate the rule
        raise ValueError(rule)
    if max_step is not None:
        size = rms_per_item(delta, eps=0.0)
        factor = torch.where(size > max_step, max_step / size.clamp_min(1e-30), torch.ones_like(size))
        delta = delta * _per_item(factor, delta)
    delta = torch.nan_to_num(delta, nan=0.0, posinf=0.0, neginf=0.0)
    return (z0.float() - delta).to(z0.dtype)
