"""Training losses (paper Eq. 11-13 and 19-21) and the KDSR distillation loss.

All reductions are means over every element of the batch, so that the mean of per-rank losses
over a data-parallel run equals the loss of the same global batch in one process.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, ShapeError

NORMS = ("l1", "l2")


def reconstruction_loss(pred: Tensor, target: Tensor, norm: str = "l1") -> Tensor:
    """Mean |pred - target| ("l1") or mean (pred - target)^2 ("l2"), computed in float32.

    pred, target: same shape (B,C,H,W). Returns a scalar.
    """
    if norm not in NORMS:
        raise ConfigError(f"loss norm: expected one of {NORMS}, got {norm!r}")
    if pred.shape != target.shape:
        raise ShapeError(f"loss: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    diff = pred.float() - target.float()
    return diff.abs().mean() if norm == "l1" else diff.square().mean()


def inn_loss(fwd: Tensor, inv: Tensor, weight: float) -> Tensor:
    """L = L_fwd + lambda * L_inv (paper Eq. 13 and 21)."""
    return fwd + weight * inv


def distillation_kl(student: Tensor, teacher: Tensor, temperature: float = 0.15) -> Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)), summed over features, mean over the batch.

    student, teacher: (B,D) features (KDSR: D = 512, T = 0.15). The teacher is detached. This is the
    usual knowledge-distillation direction (the student matches the teacher's distribution)."""
    if student.shape != teacher.shape or student.dim() != 2:
        raise ShapeError(f"distillation: expected two (B,D) tensors of one shape, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    if temperature <= 0:
        raise ConfigError(f"distillation temperature must be > 0, got {temperature}")
    log_p_student = F.log_softmax(student.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher.detach().float() / temperature, dim=1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)
    return kl.mean()


def psnr_per_image(pred: Tensor, target: Tensor, peak: float = 1.0) -> Tensor:
    """PSNR in dB of each image of (B,C,H,W) tensors in [0, peak] (pred is clamped) -> (B,).

    Identical images give +inf; callers averaging PSNRs cap it (see :func:`capped`)."""
    if pred.shape != target.shape:
        raise ShapeError(f"psnr: {tuple(pred.shape)} vs {tuple(target.shape)}")
    mse = (pred.float().clamp(0, peak) - target.float()).square().flatten(1).mean(dim=1)
    return 10.0 * torch.log10(peak * peak / mse)


def capped(values: Tensor, cap: float = 100.0) -> Tensor:
    """Replace +inf (identical images) by `cap` dB so means stay finite."""
    return torch.where(torch.isinf(values), torch.full_like(values, cap), values)


def finite_or_raise(loss: Tensor, step: int) -> None:
    """Stop a run whose loss became NaN/inf, naming the step (the last checkpoint stays intact)."""
    v = float(loss.detach())
    if not math.isfinite(v):
        from ..errors import TrainingError

        raise TrainingError(f"training loss is {v} at step {step}; lower --lr, enable --grad-clip, "
                            f"or resume from the last checkpoint with other settings")
