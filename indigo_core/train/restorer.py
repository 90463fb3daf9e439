"""Stage-1 restoration module R (DiffBIR's degradation removal) training.

For a clean crop x (B,3,H,W) and its measurement y (B,3,H/s,W/s) from the paper's degradations:
    L = ||R(y) - x||   (L1 or L2, mean over elements)
Validation (fixed crops, fixed degradation): PSNR of R(y) and of bicubic up(y) against x.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..restorer import RestorerConfig, build_restorer
from .data import TrainCrops, ValCrops, check_crop, collate, degraders, image_sets, shard
from .loop import DistInfo, Task
from .losses import capped, psnr_per_image, reconstruction_loss

PRESETS: dict[str, dict[str, Any]] = {
    # Minutes on a 2-core CPU: a 0.3 M-parameter network on 128x128 crops.
    "restorer-small": dict(width=48, n_blocks=6, crop=128, batch_size=16, lr=1e-3, steps=3000, val_every=500),
}
DEFAULTS: dict[str, Any] = dict(loss="l1")
DEFAULT_NAME = "restorer"
DEFAULT_PRESET = "restorer-small"


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("restorer")
    g.add_argument("--width", type=int, default=None, help="feature channels")
    g.add_argument("--n-blocks", type=int, default=None, help="residual blocks")
    g.add_argument("--loss", choices=("l1", "l2"), default=None, help="reconstruction norm")


class RestorerObjective(nn.Module):
    def __init__(self, net: nn.Module, norm: str) -> None:
        super().__init__()
        self.net = net
        self.norm = norm

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"loss": reconstruction_loss(self.net(batch["y"]), batch["x"], self.norm)}


class RestorerTask(Task):
    kind = "restorer"
    loss_names = ("loss",)
    val_names = ("psnr", "bicubic_psnr")

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.net = build_restorer(RestorerConfig(scale=args.scale or 4, width=args.width, n_blocks=args.n_blocks))
        self.scale = self.net.scale
        check_crop(args.crop, self.scale)
        self.images = image_sets(args, self.scale)
        self.degrader, self.val_degrader = degraders(args, self.scale, self.images)

    def objective(self) -> nn.Module:
        return RestorerObjective(self.net, self.args.loss)

    def train_dataset(self):
        return TrainCrops(self.images.train, self.args.crop, self.args.seed, self.args.flips, self.degrader)

    @torch.no_grad()
    def validate(self, model: nn.Module, info: DistInfo) -> dict[str, float]:
        if self.images.val is None:
            return {}
        ds = ValCrops(self.images.val, self.args.crop, self.args.seed, self.val_degrader)
        idx = shard(len(ds), info.rank, info.world)
        sums = torch.zeros(3, dtype=torch.float64, device=info.device)
        for i in range(0, len(idx), self.args.batch_size):
            batch = collate([ds[j] for j in idx[i:i + self.args.batch_size]])
            x, y = batch["x"].to(info.device), batch["y"].to(info.device)
            bic = F.interpolate(y, size=x.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
            sums[0] += capped(psnr_per_image(model.net(y).clamp(0, 1), x)).double().sum()
            sums[1] += capped(psnr_per_image(bic, x)).double().sum()
            sums[2] += x.shape[0]
        sums = info.all_sum(sums)
        n = max(1.0, float(sums[2]))
        return {"psnr": float(sums[0]) / n, "bicubic_psnr": float(sums[1]) / n}

    def export(self, model: nn.Module, out: Path, name: str, card: dict, overwrite: bool) -> list[Path]:
        from ..restorer import save_restorer

        meta = {"model_card": json.dumps(card, sort_keys=True, default=str)}
        return [save_restorer(model.net.eval(), out / f"{name}.safetensors", overwrite=overwrite,
                              extra_metadata=meta)]

    def output_files(self, out: Path, name: str) -> list[Path]:
        return [out / f"{name}.safetensors"]

    def signature(self) -> dict[str, Any]:
        a = self.args
        return {"restorer": self.net.config.to_dict(), "loss": a.loss, "crop": a.crop, "flips": a.flips,
                "degradation": self.degrader.describe(), "data": self.images.fingerprint(),
                "val_degradation": a.val_degradation}

    def card(self) -> dict[str, Any]:
        a = self.args
        return {"preset": a.preset, "data": self.images.card(), "crop": a.crop, "flips": a.flips,
                "restorer_config": self.net.config.to_dict(),
                "parameters": sum(p.numel() for p in self.net.parameters()),
                "loss": {"norm": a.loss, "form": "||R(y) - x||"},
                "degradation": {"train": self.degrader.describe(), "validation": self.val_degrader.describe()}}


def run(args: argparse.Namespace, opts, info: DistInfo, argv) -> dict:
    """Train the stage-1 restorer with the shared loop."""
    from .loop import train

    return train(RestorerTask(args), opts, info, argv)
