"""LPIPS (Zhang et al. 2018), computed through the `lpips` package with offline backbones.

`lpips.LPIPS(net, pretrained=True, pnet_rand=True)` builds without network access: its linear
heads load from the package, its backbone starts random. The ImageNet backbone is then loaded from
the converted safetensors file (see `indigo_core.metrics.convert`) or torchvision's cache; the
search order is in `indigo_core.metrics.weights`.

    from indigo_core.metrics.lpips import load_lpips
    lp = load_lpips("alex", device="cuda")   # cached per (net, device, weights file)
    d = lp(x, y)                             # x, y: (B,3,H,W) in [0,1] -> (B,), differentiable in x, y
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, ShapeError
from .weights import load_backbone_state

__all__ = ["LPIPS", "load_lpips", "build_lpips", "load_backbone_into", "MIN_SIZE"]

NETS = ("alex", "vgg")
MIN_SIZE = {"alex": 31, "vgg": 16}  # smallest side the backbone's pooling chain accepts

_cache: dict[tuple, "LPIPS"] = {}
_lock = threading.Lock()


def load_backbone_into(model: nn.Module, state: dict[str, torch.Tensor], net: str) -> None:
    """Copy a torchvision-`features`-layout state dict ("<index>.weight"/"<index>.bias") into an
    `lpips.LPIPS` model's backbone (`model.net.slice1..5`, which keep torchvision's indices).
    Every backbone parameter must be set exactly once (ShapeError otherwise)."""
    targets: dict[str, torch.Tensor] = {}
    for sname, sl in model.net.named_children():
        if sname.startswith("slice"):
            for k, v in sl.state_dict().items():
                targets[k] = v
    missing = sorted(set(targets) - set(state))
    unknown = sorted(set(state) - set(targets))
    if missing or unknown:
        raise ShapeError(f"LPIPS-{net} backbone: keys do not match torchvision's layout "
                         f"(missing {missing[:6]}, unexpected {unknown[:6]})")
    with torch.no_grad():
        for k, dst in targets.items():
            src = state[k]
            if tuple(src.shape) != tuple(dst.shape):
                raise ShapeError(f"LPIPS-{net} backbone {k}: expected shape {tuple(dst.shape)}, got {tuple(src.shape)}")
            dst.copy_(src.to(dst.dtype))


def build_lpips(net: str = "alex"):
    """An `lpips.LPIPS` model with the package's linear heads and a random backbone (offline)."""
    import lpips

    with warnings.catch_warnings():
        # torchvision's notice about the deprecated `pretrained` argument lpips passes
        warnings.simplefilter("ignore", UserWarning)
        return lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)


class LPIPS(nn.Module):
    """LPIPS distance for images in [0,1]. forward(x, y): x, y (B,3,H,W), H, W >= MIN_SIZE[net]
    -> (B,) distances (>= 0, lower = more similar). The [-1,1] scaling happens inside.
    Differentiable w.r.t. the inputs; its own parameters are frozen (requires_grad False)."""

    def __init__(self, model: nn.Module, net: str, source: str):
        super().__init__()
        self.model = model
        self.net = net
        self.source = source
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        # dropout in the heads must stay off: the metric is deterministic
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape != y.shape or x.shape[1] != 3:
            raise ShapeError(f"LPIPS: expected two (B,3,H,W) images of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        if min(x.shape[-2:]) < MIN_SIZE[self.net]:
            raise ShapeError(f"LPIPS-{self.net}: expected H, W >= {MIN_SIZE[self.net]}, got {x.shape[-2]}x{x.shape[-1]}")
        p = next(self.model.parameters())
        d = self.model(x.to(p.dtype), y.to(p.dtype), normalize=True)
        return d.reshape(x.shape[0])


def load_lpips(net: str = "alex", weights_dir: str | Path | None = None,
               device: torch.device | str | None = None) -> LPIPS:
    """The LPIPS metric with ImageNet backbone `net` ("alex" | "vgg") on `device` (default CPU).

    Cached per (net, device, weights file): repeated calls return the same frozen module (share
    it, do not modify it). Raises `PerceptualWeightsMissing` (naming the missing file and the
    converter command) when no converted backbone and no torchvision cache exist."""
    if net not in NETS:
        raise ConfigError(f"LPIPS net: expected one of {NETS}, got {net!r}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    with torch.inference_mode(False):
        state, source = load_backbone_state(net, weights_dir)  # raises when missing, before any heavy work
    key = (net, str(dev), source)
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            return hit
        # built outside inference mode: a module of inference tensors could never be backpropagated
        # through (guidance differentiates LPIPS), even when the caller runs under inference_mode
        with torch.inference_mode(False):
            model = build_lpips(net)
            load_backbone_into(model, state, net)
            metric = LPIPS(model, net, source).to(dev)
        _cache[key] = metric
        return metric
