"""PixelINN training (paper Sec. III-B2, Eq. 9-13).

For a clean crop x (B,3,H,W) and its measurement y = JPEG_q((x * k) downsampled by s + n)
(B,3,H/s,W/s), with gamma = F(y) from a frozen degradation estimator (optional):

    [x_c, x_d] = g(x, gamma)                         (Eq. 9)
    x_inv      = g^-1(y, x_d, gamma)                 (Eq. 10)
    L_fwd = ||x_c - y||,  L_inv = ||x_inv - x||      (Eq. 11, 12; L1 or L2, mean over elements)
    L     = L_fwd + lambda L_inv                     (Eq. 13)

The norm and lambda were lost from the paper's extracted text: L1 and lambda = 1 are our defaults.
Validation (fixed crops, fixed degradation): forward error |x_c - y|, PSNR of x_c against y, PSNR
of the inverse with the true details g^-1(y, x_d) and with zero details g^-1(y, 0) against x, and
the PSNR of bicubic upsampling of y (the baseline the inverse must beat).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..inn.network import WaveletINN
from .common import (add_inn_arguments, autocast_lift_nets, build_inn, file_fingerprint, load_frozen_estimator,
                     mask_inert_key_bias, save_inn_export)
from .data import TrainCrops, ValCrops, check_crop, collate, degraders, image_sets, shard
from .losses import capped, inn_loss, psnr_per_image, reconstruction_loss
from .loop import DistInfo, Task

PRESETS: dict[str, dict[str, Any]] = {
    # Fits a 2-core CPU in hours or one GPU in minutes.
    "pixel-small": dict(inn_preset="pixel-small", crop=128, batch_size=8, lr=2e-4, steps=20000, val_every=1000),
    # The paper's architecture; batch, crop, LR and steps are our choice (lost in the paper's text).
    "pixel-paper": dict(inn_preset="pixel-paper", crop=256, batch_size=16, lr=1e-4, steps=100000, val_every=5000),
}
DEFAULTS: dict[str, Any] = dict(loss="l1", lambda_inv=1.0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_inn_arguments(p, "pixel")


class PixelINNObjective(nn.Module):
    """forward(batch) -> {"loss", "fwd", "inv"}; batch holds x (B,3,H,W), y (B,3,H/s,W/s) in [0,1].

    The estimator (frozen) is held outside the module's parameters so DDP ignores it."""

    def __init__(self, inn: WaveletINN, norm: str, lambda_inv: float, estimator: Optional[nn.Module],
                 amp: Optional[torch.dtype]) -> None:
        super().__init__()
        self.inn = inn
        self.norm = norm
        self.lambda_inv = lambda_inv
        self._frozen = (estimator,)
        self.amp = amp

    def gamma(self, y: Tensor) -> Optional[Tensor]:
        est = self._frozen[0]
        if est is None:
            return None
        with torch.no_grad(), torch.autocast(y.device.type, dtype=self.amp or torch.float32,
                                             enabled=self.amp is not None):
            return est(y).float()

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x, y = batch["x"], batch["y"]
        gamma = self.gamma(y)
        coarse, details = self.inn(x, gamma)
        x_inv = self.inn.inverse(y, details, gamma)
        fwd = reconstruction_loss(coarse, y, self.norm)
        inv = reconstruction_loss(x_inv, x, self.norm)
        return {"loss": inn_loss(fwd, inv, self.lambda_inv), "fwd": fwd, "inv": inv}


class PixelINNTask(Task):
    kind = "pixel-inn"
    loss_names = ("loss", "fwd", "inv")
    val_names = ("fwd_l1", "fwd_psnr", "inv_psnr", "inv0_psnr", "bicubic_psnr")

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.inn = build_inn(args.inn_preset, args.inn_set, args.inn_config, args.init, "pixel")
        cfg = self.inn.config
        if cfg.channels != 3:
            raise ConfigError(f"a PixelINN works on RGB images: expected channels=3, got {cfg.channels}")
        s = cfg.scale
        if args.scale not in (None, s):
            raise ConfigError(f"--scale {args.scale} does not match the INN: its coarse part is x{s} smaller "
                              f"({cfg.split}, {cfg.levels} levels)")
        self.scale = s
        check_crop(args.crop, s, "the INN's scale")
        self.images = image_sets(args, s)
        self.degrader, self.val_degrader = degraders(args, s, self.images)
        self.estimator: Optional[nn.Module] = None
        self.amp: Optional[torch.dtype] = None

    def setup(self, info: DistInfo, amp: Optional[torch.dtype], out: Path) -> None:
        self.amp = amp
        self.device = info.device
        self.estimator = load_frozen_estimator(self.args.estimator, info.device)

    def objective(self) -> nn.Module:
        autocast_lift_nets(self.inn, self.device.type, self.amp)
        mask_inert_key_bias(self.inn)
        return PixelINNObjective(self.inn, self.args.loss, self.args.lambda_inv, self.estimator, self.amp)

    def train_dataset(self):
        return TrainCrops(self.images.train, self.args.crop, self.args.seed, self.args.flips, self.degrader)

    def validate(self, model: nn.Module, info: DistInfo) -> dict[str, float]:
        if self.images.val is None:
            return {}
        ds = ValCrops(self.images.val, self.args.crop, self.args.seed, self.val_degrader)
        idx = shard(len(ds), info.rank, info.world)
        sums = torch.zeros(len(self.val_names) + 1, dtype=torch.float64, device=info.device)
        bs = self.args.batch_size
        for i in range(0, len(idx), bs):
            batch = collate([ds[j] for j in idx[i:i + bs]])
            x, y = batch["x"].to(info.device), batch["y"].to(info.device)
            gamma = model.gamma(y)
            coarse, details = model.inn(x, gamma)
            x_inv = model.inn.inverse(y, details, gamma)
            x_inv0 = model.inn.inverse(y, [torch.zeros_like(d) for d in details], gamma)
            bic = F.interpolate(y, size=x.shape[-2:], mode="bicubic", align_corners=False)
            per = torch.stack([
                (coarse.float() - y).abs().flatten(1).mean(1),
                capped(psnr_per_image(coarse, y)),
                capped(psnr_per_image(x_inv, x)),
                capped(psnr_per_image(x_inv0, x)),
                capped(psnr_per_image(bic, x)),
            ]).double()
            sums[:-1] += per.sum(dim=1)
            sums[-1] += x.shape[0]
        sums = info.all_sum(sums)
        n = max(1.0, float(sums[-1]))
        return {k: float(v) / n for k, v in zip(self.val_names, sums[:-1])}

    def has_unused_parameters(self) -> bool:
        # Without an estimator gamma is None and the MRSTBs' channel-scale layers are not used.
        return self.args.estimator is None

    def export(self, model: nn.Module, out: Path, name: str, card: dict, overwrite: bool) -> list[Path]:
        return [save_inn_export(model.inn, out / f"{name}.safetensors", card, overwrite)]

    def output_files(self, out: Path, name: str) -> list[Path]:
        return [out / f"{name}.safetensors"]

    def signature(self) -> dict[str, Any]:
        a = self.args
        return {"inn": self.inn.config.to_dict(), "init": file_fingerprint(a.init), "loss": a.loss,
                "lambda_inv": a.lambda_inv, "crop": a.crop, "flips": a.flips,
                "degradation": self.degrader.describe(), "estimator": file_fingerprint(a.estimator),
                "data": self.images.fingerprint(), "val_degradation": a.val_degradation}

    def card(self) -> dict[str, Any]:
        a = self.args
        return {
            "preset": a.preset,
            "data": self.images.card(),
            "crop": a.crop,
            "flips": a.flips,
            "inn_config": self.inn.config.to_dict(),
            "inn_parameters": sum(p.numel() for p in self.inn.parameters()),
            "init": a.init,
            "loss": {"norm": a.loss, "lambda_inv": a.lambda_inv, "form": "L_fwd + lambda * L_inv (Eq. 13)"},
            "estimator": a.estimator,
            "degradation": {"train": self.degrader.describe(), "validation": self.val_degrader.describe()},
        }


DEFAULT_NAME = "pixel_inn"
DEFAULT_PRESET = "pixel-small"


def run(args: argparse.Namespace, opts, info: DistInfo, argv) -> dict:
    """Train a PixelINN with the shared loop."""
    from .loop import train

    return train(PixelINNTask(args), opts, info, argv)
