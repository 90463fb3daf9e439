"""LatentINN training (paper Sec. III-C1, Eq. 17-21) for a given VAE (E, D).

For a clean crop x (B,3,H,W), its measurement y (B,3,H/s,W/s), z = E(x) and z_y = E(up(y))
(up: bicubic to H x W; E: the posterior mean, in the VAE's own latent space), gamma = F(y):

    [z_c, z_d] = g(z, gamma)                          (Eq. 17)
    z_inv      = g^-1(z_y, z_d, gamma)                (Eq. 18)
    L_fwd = ||z_c - z_y||                             (Eq. 19, in latent space)
    L_inv = ||D(z_inv) - x||                          (Eq. 20, on the decoded reconstruction)
    L     = L_fwd + lambda L_inv                      (Eq. 21)

Latents are computed once: a pool of `crops_per_image` fixed crops per training image (crop
position, flips and degradation drawn from the run seed) is encoded and kept in memory, and saved
to `--latent-cache` (OUT/latents.safetensors by default) so a resumed or repeated run skips the
encoding. Under torchrun the ranks encode interleaved shares of the pool and exchange them.
Training steps then draw pool entries by global sample index, epoch by epoch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..errors import ConfigError, WeightsFileError
from ..inn.network import WaveletINN
from .common import (add_inn_arguments, autocast_lift_nets, build_inn, file_fingerprint, load_frozen_estimator,
                     mask_inert_key_bias, save_inn_export)
from .data import (STREAM_DEGRADE, STREAM_POOL, STREAM_VAL, ImageFolder, _epoch_order, center_pair, check_crop,
                   crop_pair, degraders, generator_for, image_sets, measurement, shard)
from .losses import capped, inn_loss, psnr_per_image, reconstruction_loss
from .loop import DistInfo, Task

log = logging.getLogger("indigo_core.train")

PRESETS: dict[str, dict[str, Any]] = {
    "latent-small": dict(inn_preset="latent-small", crop=128, batch_size=8, lr=2e-4, steps=20000,
                         val_every=1000, crops_per_image=8),
    # The paper's architecture; the other values are our choice.
    "latent-paper": dict(inn_preset="latent-paper", crop=256, batch_size=16, lr=1e-4, steps=100000,
                         val_every=5000, crops_per_image=16),
}
DEFAULTS: dict[str, Any] = dict(loss="l1", lambda_inv=1.0)
DEFAULT_NAME = "latent_inn"
DEFAULT_PRESET = "latent-small"
CACHE_FORMAT = "indigo-latent-cache"
_STREAM_POOL_DEGRADE = STREAM_DEGRADE + 100


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("VAE")
    g.add_argument("--vae", required=True,
                   help="the VAE the LatentINN is for: an SD VAE (ComfyUI/ldm or diffusers layout, "
                        ".safetensors/.ckpt/.pt) or the pack's own autoencoder file")
    g.add_argument("--crops-per-image", type=int, default=None,
                   help="fixed crops per training image encoded into the latent pool")
    g.add_argument("--latent-cache", default=None,
                   help="file of the encoded pool; 'none': memory only (default: OUT/latents.safetensors)")
    g.add_argument("--encode-batch", type=int, default=16, help="crops per VAE encoder call")
    add_inn_arguments(p, "latent")


def upsample_measurement(y: Tensor, size: tuple[int, int]) -> Tensor:
    """up(y): (B,3,h,w) -> (B,3,H,W), bicubic (align_corners=False), clamped to [0,1]."""
    return F.interpolate(y, size=size, mode="bicubic", align_corners=False).clamp(0.0, 1.0)


class _Encoder:
    """Encodes batches of (x uint8 (B,3,H,W), y (B,3,h,w)) into z, z_y (and gamma)."""

    def __init__(self, vae: nn.Module, estimator: Optional[nn.Module], device: torch.device,
                 amp: Optional[torch.dtype]) -> None:
        self.vae, self.estimator, self.device, self.amp = vae, estimator, device, amp

    @torch.no_grad()
    def __call__(self, x8: Tensor, y: Tensor) -> dict[str, Tensor]:
        x = x8.to(self.device).float() / 255.0
        y = y.to(self.device).float()
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            z = self.vae.encode(x)
            zy = self.vae.encode(upsample_measurement(y, tuple(x.shape[-2:])))
            out = {"z": z.float().cpu(), "zy": zy.float().cpu()}
            if self.estimator is not None:
                out["gamma"] = self.estimator(y).float().cpu()
        return out


def _draw_pool_item(images: ImageFolder, j: int, crop: int, flips: str, seed: int,
                    degrader: Callable) -> tuple[Tensor, Tensor]:
    x8, y8 = crop_pair(images, j % len(images), crop, flips, generator_for(seed, STREAM_POOL, j))
    return x8, measurement(x8, y8, degrader, generator_for(seed, _STREAM_POOL_DEGRADE, j))[0]


def encode_items(indices: list[int], draw: Callable[[int], tuple[Tensor, Tensor]], encoder: _Encoder,
                 batch: int, keep_y: bool = False) -> dict[str, Tensor]:
    """Encode the items `indices` (drawn by `draw(j) -> (x uint8, y)`) in batches.
    Returns {"x": (N,3,H,W) uint8, "z", "zy": (N,C,h,w), ["gamma": (N,emb)], ["y"]}."""
    parts: dict[str, list[Tensor]] = {}
    for i in range(0, len(indices), batch):
        items = [draw(j) for j in indices[i:i + batch]]
        x8 = torch.stack([a for a, _ in items])
        y = torch.stack([b for _, b in items])
        enc = encoder(x8, y)
        enc["x"] = x8
        if keep_y:
            enc["y"] = y.float()
        for k, v in enc.items():
            parts.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in parts.items()}


def _gather_pool(local: dict[str, Tensor], n: int, info: DistInfo) -> dict[str, Tensor]:
    """Reassemble a pool whose entry j was encoded by rank j % world (all ranks get all of it)."""
    if not info.initialised:
        return local
    per = math.ceil(n / info.world)
    full: dict[str, Tensor] = {}
    for key in sorted(local):
        t = local[key]
        buf = torch.zeros((per, *t.shape[1:]), dtype=t.dtype)
        buf[: t.shape[0]] = t
        dev = info.device if info.device.type == "cuda" else torch.device("cpu")
        buf = buf.to(dev)
        if buf.dtype == torch.uint8 and dev.type == "cpu":
            buf = buf.to(torch.float32)  # gloo has no 8/16-bit integer all_gather; 0..255 are exact
        outs = [torch.empty_like(buf) for _ in range(info.world)]
        dist.all_gather(outs, buf)
        stacked = torch.stack([o.cpu().to(t.dtype) for o in outs], dim=1)  # (per, world, ...)
        full[key] = stacked.reshape(per * info.world, *t.shape[1:])[:n].contiguous()
    return full


class PoolDataset(Dataset):
    """Training samples by global sample index: entry order is a per-epoch permutation of the pool."""

    def __init__(self, pool: dict[str, Tensor], seed: int) -> None:
        self.pool = pool
        self.seed = seed
        self.n = pool["z"].shape[0]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        j = int(_epoch_order(self.seed, index // self.n, self.n)[index % self.n])
        item = {k: v[j] for k, v in self.pool.items()}
        item["x"] = item["x"].float() / 255.0
        return item


def collate_pool(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


class LatentINNObjective(nn.Module):
    """forward(batch) -> {"loss", "fwd", "inv"}; batch: x (B,3,H,W) in [0,1], z, zy (B,C,H/8,W/8),
    optional gamma (B,emb). The VAE is frozen and held outside the module's parameters."""

    def __init__(self, inn: WaveletINN, vae: nn.Module, norm: str, lambda_inv: float,
                 amp: Optional[torch.dtype]) -> None:
        super().__init__()
        self.inn = inn
        self._frozen = (vae,)
        self.norm = norm
        self.lambda_inv = lambda_inv
        self.amp = amp

    def decode(self, z: Tensor) -> Tensor:
        with torch.autocast(z.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            return self._frozen[0].decode(z).float()

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        z, zy, x = batch["z"], batch["zy"], batch["x"]
        gamma = batch.get("gamma")
        zc, zd = self.inn(z, gamma)
        z_inv = self.inn.inverse(zy, zd, gamma)
        fwd = reconstruction_loss(zc, zy, self.norm)
        inv = reconstruction_loss(self.decode(z_inv), x, self.norm)
        return {"loss": inn_loss(fwd, inv, self.lambda_inv), "fwd": fwd, "inv": inv}


class LatentINNTask(Task):
    kind = "latent-inn"
    loss_names = ("loss", "fwd", "inv")
    val_names = ("fwd_mse", "inv_psnr", "inv0_psnr", "zy_psnr", "vae_psnr", "bicubic_psnr")
    loader_workers = 0  # the pool is in memory: nothing to decode

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.inn = build_inn(args.inn_preset, args.inn_set, args.inn_config, args.init, "latent")
        cfg = self.inn.config
        if cfg.scale != 1:
            raise ConfigError(f"a LatentINN's coarse part must keep the latent's size (z_y = E(up(y)) has "
                              f"it): expected split='undecimated_haar', got {cfg.split!r} (x{cfg.scale})")
        self.scale = args.scale or 4
        check_crop(args.crop, self.scale)
        self.images = image_sets(args, self.scale)
        self.degrader, self.val_degrader = degraders(args, self.scale, self.images)
        if args.crops_per_image < 1:
            raise ConfigError(f"--crops-per-image: expected >= 1, got {args.crops_per_image}")
        if args.encode_batch < 1:
            raise ConfigError(f"--encode-batch: expected >= 1, got {args.encode_batch}")
        self.pool_size = args.crops_per_image * len(self.images.train)

    # -------------------------------------------------------------- set-up: VAE and the latent pool
    def setup(self, info: DistInfo, amp: Optional[torch.dtype], out: Path) -> None:
        from ..prior.weights import load_autoencoder

        a = self.args
        self.amp, self.device = amp, info.device
        self.vae = load_autoencoder(a.vae, map_location=info.device)
        if self.vae.latent_channels != self.inn.config.channels:
            raise ConfigError(f"the VAE's latents have {self.vae.latent_channels} channels, the INN expects "
                              f"{self.inn.config.channels}; use --inn-set channels={self.vae.latent_channels}")
        check_crop(a.crop, self.vae.downscale, "the VAE's factor")
        self.estimator = load_frozen_estimator(a.estimator, info.device)
        # The cached latents are the regression targets: encode them once in float32 (TF32 on CUDA).
        encoder = _Encoder(self.vae, self.estimator, info.device, None)

        key = json.dumps({"vae": file_fingerprint(a.vae), "seed": a.seed, "crop": a.crop, "flips": a.flips,
                          "pool": self.pool_size, "degradation": self.degrader.describe(),
                          "estimator": file_fingerprint(a.estimator), "data": self.images.fingerprint()},
                         sort_keys=True)
        self.cache_key = hashlib.sha1(key.encode()).hexdigest()
        cache_arg = a.latent_cache or str(out / "latents.safetensors")
        cache = None if cache_arg.lower() == "none" else Path(cache_arg)
        self.pool = self._load_cache(cache) if cache is not None else None
        if self.pool is None:
            draw = lambda j: _draw_pool_item(self.images.train, j, a.crop, a.flips, a.seed, self.degrader)  # noqa: E731
            mine = shard(self.pool_size, info.rank, info.world)
            if info.main:
                log.info("encoding %d training crops with the VAE (once; %d process(es))", self.pool_size, info.world)
            local = encode_items(mine, draw, encoder, a.encode_batch)
            self.pool = _gather_pool(local, self.pool_size, info)
            if cache is not None and info.main:
                from ..io.weights import FORMAT_VERSION, write_weights_file

                write_weights_file(cache, self.pool, {"format": CACHE_FORMAT, "format_version": FORMAT_VERSION,
                                                      "key": self.cache_key, "description": key}, overwrite=True)
            info.barrier()

        self.val = None
        if self.images.val is not None:
            val_images = self.images.val

            def draw_val(j: int) -> tuple[Tensor, Tensor]:
                x8, y8 = center_pair(val_images, j, a.crop)
                return x8, measurement(x8, y8, self.val_degrader, generator_for(a.seed, STREAM_VAL, j))[0]

            self.val = encode_items(shard(len(val_images), info.rank, info.world), draw_val, encoder,
                                    a.encode_batch, keep_y=True)

    def _load_cache(self, path: Path) -> Optional[dict[str, Tensor]]:
        if not path.is_file():
            return None
        from ..io.weights import read_weights_file

        try:
            tensors, meta = read_weights_file(path, CACHE_FORMAT)
        except WeightsFileError as exc:
            # Not a cache this trainer wrote (a typo in --latent-cache?): never encode over it.
            raise ConfigError(f"--latent-cache {path}: expected a latent cache of this trainer or no file, "
                              f"found another file ({exc.problem}); choose another path or remove it") from exc
        if meta.get("key") != self.cache_key:
            log.info("latent cache %s was made with other settings; encoding again", path)
            return None
        log.info("using the latent cache %s (%d crops)", path, tensors["z"].shape[0])
        return tensors

    # -------------------------------------------------------------- loop interface
    def objective(self) -> nn.Module:
        autocast_lift_nets(self.inn, self.device.type, self.amp)
        mask_inert_key_bias(self.inn)
        return LatentINNObjective(self.inn, self.vae, self.args.loss, self.args.lambda_inv, self.amp)

    def train_dataset(self):
        return PoolDataset(self.pool, self.args.seed)

    def collate_fn(self):
        return collate_pool

    def validate(self, model: nn.Module, info: DistInfo) -> dict[str, float]:
        sums = torch.zeros(len(self.val_names) + 1, dtype=torch.float64, device=info.device)
        v = self.val
        n_local = 0 if v is None or "z" not in v else v["z"].shape[0]
        bs = self.args.batch_size
        for i in range(0, n_local, bs):
            sl = slice(i, i + bs)
            z, zy = v["z"][sl].to(info.device), v["zy"][sl].to(info.device)
            x = v["x"][sl].to(info.device).float() / 255.0
            y = v["y"][sl].to(info.device)
            gamma = v["gamma"][sl].to(info.device) if "gamma" in v else None
            zc, zd = model.inn(z, gamma)
            x_inv = model.decode(model.inn.inverse(zy, zd, gamma))
            x_inv0 = model.decode(model.inn.inverse(zy, [torch.zeros_like(d) for d in zd], gamma))
            per = torch.stack([
                (zc.float() - zy).square().flatten(1).mean(1),
                capped(psnr_per_image(x_inv, x)),
                capped(psnr_per_image(x_inv0, x)),
                capped(psnr_per_image(model.decode(zy), x)),
                capped(psnr_per_image(model.decode(z), x)),
                capped(psnr_per_image(upsample_measurement(y, tuple(x.shape[-2:])), x)),
            ]).double()
            sums[:-1] += per.sum(dim=1)
            sums[-1] += x.shape[0]
        sums = info.all_sum(sums)
        if sums[-1] == 0:
            return {}
        n = float(sums[-1])
        return {k: float(s) / n for k, s in zip(self.val_names, sums[:-1])}

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
                "lambda_inv": a.lambda_inv, "crop": a.crop, "flips": a.flips, "scale": self.scale,
                "crops_per_image": a.crops_per_image, "vae": file_fingerprint(a.vae),
                "degradation": self.degrader.describe(), "estimator": file_fingerprint(a.estimator),
                "data": self.images.fingerprint(), "val_degradation": a.val_degradation}

    def card(self) -> dict[str, Any]:
        a = self.args
        from ..prior.weights import read_latent_format

        try:
            latent_format = read_latent_format(a.vae)
        except WeightsFileError:  # a .ckpt/.pt SD VAE: SD's factor
            latent_format = {"scale_factor": 0.18215, "shift_factor": 0.0}
        return {
            "preset": a.preset,
            "data": self.images.card(),
            "crop": a.crop,
            "flips": a.flips,
            "latent_pool": {"crops_per_image": a.crops_per_image, "crops": self.pool_size,
                            "z_y": "E(bicubic upsampling of y to the crop size, clamped to [0,1])",
                            "latent_space": "the VAE's own (posterior mean, before the latent format's scale)"},
            "vae": {"file": str(Path(a.vae).resolve()), "latent_channels": self.vae.latent_channels,
                    "downscale": self.vae.downscale, "latent_format": latent_format},
            "inn_config": self.inn.config.to_dict(),
            "inn_parameters": sum(p.numel() for p in self.inn.parameters()),
            "init": a.init,
            "loss": {"norm": a.loss, "lambda_inv": a.lambda_inv,
                     "form": "||g_c(z) - z_y|| + lambda * ||D(g^-1(z_y, z_d)) - x|| (Eq. 19-21)"},
            "estimator": a.estimator,
            "degradation": {"train": self.degrader.describe(), "validation": self.val_degrader.describe()},
        }


def run(args: argparse.Namespace, opts, info: DistInfo, argv) -> dict:
    """Train a LatentINN with the shared loop."""
    from .loop import train

    return train(LatentINNTask(args), opts, info, argv)
