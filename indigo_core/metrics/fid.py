"""FID (Heusel et al. 2017): Frechet distance between Gaussian fits of deep features of two sets.

The standard feature network is Inception-V3's 2048-d pool features. No registry package ships
those weights, so FID is computed only when they are on disk: torchvision's ImageNet Inception-V3
(`inception_v3_google-0cc3c7bd.pth`) in torch's hub cache or at a path given. Otherwise, and when a
set has fewer images than `min_images`, the result says "not available: <why>" instead of a number.
With torchvision's weights the values are close to, but not identical with, the TF-Inception FID
of pytorch-fid/clean-fid (different weights port and resizing): compare them only with each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ShapeError

__all__ = ["FIDResult", "frechet_distance", "fid_from_features", "InceptionFeatures", "find_inception_weights",
           "INCEPTION_FILE", "DEFAULT_MIN_IMAGES"]

INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"
DEFAULT_MIN_IMAGES = 50


@dataclass(frozen=True)
class FIDResult:
    """value: the FID, or None when not computed; reason: why not ("" when computed)."""

    value: float | None
    reason: str
    n_real: int
    n_fake: int
    feature_net: str

    @property
    def available(self) -> bool:
        return self.value is not None

    def describe(self) -> str:
        return f"{self.value:.4f}" if self.available else f"not available: {self.reason}"


def _stats(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(f, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) for covariance matrices S1, S2 (d,d).

    tr((S1 S2)^(1/2)) is computed as the sum of square roots of the eigenvalues of
    S1^(1/2) S2 S1^(1/2), a symmetric PSD matrix, which is stable without complex arithmetic."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
        raise ShapeError(f"frechet_distance: expected means (d,) and covariances (d,d), got {mu1.shape}, "
                         f"{s1.shape}, {mu2.shape}, {s2.shape}")
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(ev, 0, None)).sum())
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def fid_from_features(real: np.ndarray, fake: np.ndarray, *, min_images: int = DEFAULT_MIN_IMAGES,
                      feature_net: str = "inception-v3") -> FIDResult:
    """FID of two feature sets (N,d) and (M,d); 'not available' when either has < min_images rows."""
    real, fake = np.asarray(real), np.asarray(fake)
    n, m = len(real), len(fake)
    need = max(2, int(min_images))
    if n < need or m < need:
        return FIDResult(None, f"{min(n, m)} images < {need} needed (--fid-min-images)", n, m, feature_net)
    mu1, s1 = _stats(real)
    mu2, s2 = _stats(fake)
    return FIDResult(frechet_distance(mu1, s1, mu2, s2), "", n, m, feature_net)


def find_inception_weights(path: str | Path | None = None) -> tuple[Path | None, str]:
    """(path, "") when Inception-V3 weights exist, else (None, why)."""
    candidates = [Path(path)] if path else []
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE)
    for c in candidates:
        if c.is_file():
            return c, ""
    return None, ("Inception-V3 weights not found (looked for " + ", ".join(str(c) for c in candidates)
                  + "); no package ships them, so FID needs torchvision's file from a machine with internet")


class InceptionFeatures(torch.nn.Module):
    """torchvision Inception-V3 pool features. forward(x): (B,3,H,W) in [0,1] -> (B,2048).
    Inputs are resized to 299x299 (bilinear, antialiased) and ImageNet-normalised."""

    def __init__(self, weights_path: str | Path):
        super().__init__()
        import torchvision

        from ..io.safe_pickle import load_state_dict_file

        net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False,
                                              transform_input=True)
        net.load_state_dict(load_state_dict_file(weights_path))
        net.fc = torch.nn.Identity()
        self.net = net.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False, antialias=True)
        return self.net((x - self.mean) / self.std)
