"""Training of the prior's UNet (`python -m indigo_core.prior.train unet`).

Data: the trained autoencoder encodes every training photo whole (posterior mean), also mirrored
and downscaled (x0.75, x0.5 while the shorter side stays >= the crop), once; the UNet then sees
random 32x32 crops of those model-space latents (VAE latent x scale_factor), i.e. 256x256 photo
crops. Objective: SD's epsilon MSE at uniform integer timesteps of the scaled-linear schedule, with
the learned constant context (the unconditional prior's "empty prompt"). EMA weights are exported.
Validation: eps-MSE of the EMA weights on the validation photos' centre crops at fixed timesteps
and noise; a grid of samples (Euler, 30 steps) decoded by the autoencoder.
"""

from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..argtypes import positive, positive_int
from ..errors import ConfigError
from .data import CropSampler, center_crop, load_images, rescale, save_grid, to_float, write_json
from .schedule import DiscreteSchedule, euler_sample
from .trainutil import (EMA, Budget, CsvLog, autocast, check_out_dir, command_line, hardware, load_checkpoint,
                        files_digest, log, now_utc, pick_device, random_state, restore_random_state,
                        run_signature, save_checkpoint, setup_torch, sha256)
from .unet import EpsUNet, NullContext, UNetConfig
from .weights import load_autoencoder, load_unet, read_latent_format, save_unet

UNET_FILE = "indigo-prior-unet.safetensors"
UNET_CARD = "indigo-prior-unet.card.json"
LOG_FILE = "unet_log.csv"
CKPT_FILE = "unet_ckpt.pt"
SAMPLES_FILE = "unet_samples.png"
VAL_TIMESTEPS = (25, 100, 250, 400, 550, 700, 850, 975)

PRESETS = {
    "small": UNetConfig(),
    "tiny": UNetConfig(model_channels=32, channel_mult=(1, 2), attention_depth=(0, 1), num_res_blocks=1,
                       context_dim=32),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--autoencoder", required=True, help="the trained autoencoder file (.safetensors)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="small", help="architecture (default small)")
    p.add_argument("--latent-size", type=positive_int, default=32, help="latent crop size (default 32 = 256 px)")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=positive, default=3e-4, help="peak learning rate (AdamW)")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--scales", default="1,0.75,0.5", help="photo scales encoded for the latent bank")
    p.add_argument("--no-mirror", action="store_true", help="do not also encode mirrored photos")
    p.add_argument("--init", default=None, help="start from the weights of an exported UNet file (fresh optimizer)")
    p.add_argument("--samples", type=positive_int, default=16, help="samples in the final grid (default 16)")
    p.add_argument("--sample-steps", type=positive_int, default=30)


@torch.no_grad()
def latent_bank(ae, images, scales, mirror: bool, min_side: int, scale_factor: float) -> list[torch.Tensor]:
    """Model-space latents (4,h,w) of every photo at every scale (and mirrored)."""
    bank = []
    for img in images:
        for s in scales:
            if min(img.shape[-2:]) * s < min_side:
                continue
            im = img if s == 1.0 else rescale(img, s)
            h, w = im.shape[-2:]
            x = to_float(im[:, : h - h % 8, : w - w % 8])[None]
            for flip in ((False, True) if mirror else (False,)):
                z = ae.encode(x.flip(-1) if flip else x)[0].float() * scale_factor
                bank.append(z)
    return bank


@torch.no_grad()
def eps_mse(unet: EpsUNet, context: torch.Tensor, latents: torch.Tensor, schedule: DiscreteSchedule,
            seed: int = 1234, batch: int = 64) -> float:
    """Mean eps-MSE over latents x VAL_TIMESTEPS with fixed noise (comparable across runs)."""
    unet.eval()
    g = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for t_val in VAL_TIMESTEPS:
        noise = torch.randn(latents.shape, generator=g).to(latents.device)
        for i in range(0, latents.shape[0], batch):
            z0, n = latents[i:i + batch], noise[i:i + batch]
            t = torch.full((z0.shape[0],), t_val, device=z0.device, dtype=torch.long)
            pred = unet(schedule.add_noise(z0, t, n), t.float(), context.expand(z0.shape[0], -1, -1))
            total += float(F.mse_loss(pred.float(), n, reduction="sum"))
            count += n.numel()
    return total / count


def run(args: argparse.Namespace, train_files, val_files, split: dict) -> dict:
    device = pick_device(args.device)
    setup_torch(device, args.threads)
    out = Path(args.out)
    check_out_dir(out, [UNET_FILE, UNET_CARD], args.overwrite, run_files=[CKPT_FILE, LOG_FILE, SAMPLES_FILE],
                  log_file=LOG_FILE, resume=args.resume, ckpt_file=CKPT_FILE)
    torch.manual_seed(args.seed)
    ae_path = Path(args.autoencoder)
    ae = load_autoencoder(ae_path, map_location=device)
    scale_factor = float(read_latent_format(ae_path)["scale_factor"])
    crop_px = args.latent_size * ae.downscale

    images = load_images(train_files, crop_px, device)
    scales = [float(s) for s in args.scales.split(",") if s.strip()]
    bank = latent_bank(ae, images, scales, not args.no_mirror, crop_px, scale_factor)
    del images
    val_images = load_images(val_files, crop_px, device)
    with torch.no_grad():
        val_lat = torch.cat([ae.encode(to_float(center_crop(v, crop_px))[None]).float() for v in val_images]) * scale_factor
    flat = torch.cat([b.flatten(1) for b in bank], dim=1)
    log.info("unet: latent bank of %d latents (%d values), per-channel std %s, mean %s", len(bank), flat.shape[1],
             [round(v, 3) for v in flat.std(1).tolist()], [round(v, 3) for v in flat.mean(1).tolist()])
    sampler = CropSampler(bank, args.latent_size, seed=args.seed, flip=False)

    cfg: UNetConfig = PRESETS[args.preset]
    unet = EpsUNet(cfg).to(device)
    ctx = NullContext(cfg.context_tokens, cfg.context_dim).to(device)
    if args.init:
        init, init_ctx, _ = load_unet(args.init, map_location=device)
        if init.cfg != cfg:
            raise ConfigError(f"--init {args.init}: its architecture {init.cfg.to_dict()} is not preset {args.preset!r}")
        unet.load_state_dict(init.state_dict())
        with torch.no_grad():
            ctx.context.copy_(init_ctx)
        log.info("initialised from %s", args.init)
    params = list(unet.parameters()) + list(ctx.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0, fused=device.type == "cuda")
    step = 0
    signature = run_signature(kind="unet", preset=args.preset, latent_size=args.latent_size, scales=scales,
                              mirror=not args.no_mirror, autoencoder=sha256(ae_path)[:16],
                              data=files_digest(train_files))
    if args.resume:
        ck = load_checkpoint(Path(args.resume), device, signature)
        unet.load_state_dict(ck["model"])
        ctx.load_state_dict(ck["context"])
        opt.load_state_dict(ck["optimizer"])
        step = int(ck["step"])
        restore_random_state(ck, sampler)  # go on with new crops, timesteps and noise, not the first ones again
    ema_unet, ema_ctx = EMA(unet, args.ema_decay), EMA(ctx, args.ema_decay)
    if args.resume:
        if "ema" in ck:  # the exported weights are the EMA: it goes on averaging, not from the raw weights
            ema_unet.load_state_dict(ck["ema"]["unet"])
            ema_ctx.load_state_dict(ck["ema"]["context"])
        else:
            log.warning("--resume %s: the checkpoint records no EMA weights (an earlier version); the average "
                        "starts again from its raw weights", args.resume)
    n_params = sum(p.numel() for p in unet.parameters())
    log.info("unet %s: %s, %.2f M parameters", args.preset, cfg.to_dict(), n_params / 1e6)
    schedule = DiscreteSchedule()
    ema_model, ema_context = copy.deepcopy(unet), copy.deepcopy(ctx)

    def ema_weights():
        ema_unet.copy_to(ema_model)
        ema_ctx.copy_to(ema_context)
        return ema_model.eval(), ema_context.context.detach()

    csv_log = CsvLog(out / LOG_FILE, ["step", "elapsed_s", "lr", "loss", "val_eps_mse"],
                     resume_step=step if args.resume else None)
    budget = Budget(args.max_minutes, args.max_steps, warmup=args.warmup)
    first = step
    next_val, next_ckpt = args.val_minutes * 60.0, args.ckpt_minutes * 60.0
    acc, n_acc = None, 0
    while not budget.done(step - first):
        unet.train()
        lr = budget.lr(step - first, args.lr)
        for g in opt.param_groups:
            g["lr"] = lr
        z0 = sampler(args.batch_size)
        t = torch.randint(0, schedule.num_timesteps, (z0.shape[0],), device=device)
        noise = torch.randn_like(z0)
        with autocast(device, args.amp):
            pred = unet(schedule.add_noise(z0, t, noise), t.float(), ctx(z0.shape[0]))
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_unet.update(unet)
        ema_ctx.update(ctx)
        step += 1
        acc = loss.detach() if acc is None else acc + loss.detach()  # read back only when logging
        n_acc += 1
        val_due = budget.elapsed() >= next_val
        if step % args.log_every == 0 or val_due:
            loss_v = float(acc) / n_acc
            acc, n_acc = None, 0
            if not math.isfinite(loss_v):
                raise FloatingPointError(f"unet loss is {loss_v} around step {step}")
            row = dict(step=step, elapsed_s=budget.elapsed(), lr=lr, loss=loss_v)
            if val_due:
                next_val += args.val_minutes * 60.0
                m, c = ema_weights()
                row["val_eps_mse"] = eps_mse(m, c, val_lat, schedule)
            csv_log.row(**row)
            log.info("unet step %d  %.0fs  lr %.2e  loss %.4f%s", step, row["elapsed_s"], lr, loss_v,
                     f"  val eps-MSE (EMA) {row['val_eps_mse']:.4f}" if "val_eps_mse" in row else "")
        if budget.elapsed() >= next_ckpt:
            next_ckpt += args.ckpt_minutes * 60.0
            save_checkpoint(out / CKPT_FILE, model=unet.state_dict(), context=ctx.state_dict(),
                            optimizer=opt.state_dict(), step=step, signature=signature,
                            ema={"unet": ema_unet.state_dict(), "context": ema_ctx.state_dict()},
                            random=random_state(sampler))
    train_seconds = budget.elapsed()
    save_checkpoint(out / CKPT_FILE, model=unet.state_dict(), context=ctx.state_dict(), optimizer=opt.state_dict(),
                    step=step, signature=signature,
                    ema={"unet": ema_unet.state_dict(), "context": ema_ctx.state_dict()}, random=random_state(sampler))

    model, context = ema_weights()
    raw_mse = eps_mse(unet, ctx.context.detach(), val_lat, schedule)
    out_file = out / UNET_FILE
    ae_info = {"file": ae_path.name, "sha256": sha256(ae_path), "scale_factor": scale_factor}
    save_unet(model, context, out_file, dtype=torch.float16, overwrite=True,
              extra_metadata={"autoencoder": ae_info})
    exported, exp_ctx, _ = load_unet(out_file, map_location=device)
    val_mse = eps_mse(exported, exp_ctx, val_lat, schedule)
    g = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(args.samples, cfg.in_channels, args.latent_size, args.latent_size, generator=g).to(device)
    z = euler_sample(lambda x, t: exported(x, t, exp_ctx.expand(x.shape[0], -1, -1)), noise, schedule, args.sample_steps)
    with torch.no_grad():
        imgs = torch.cat([ae.decode(z[i:i + 8] / scale_factor, clamp=True) for i in range(0, z.shape[0], 8)])
    save_grid(imgs, out / SAMPLES_FILE)
    card = {
        "name": "indigo-prior-unet",
        "file": UNET_FILE, "sha256": sha256(out_file), "file_bytes": out_file.stat().st_size, "dtype": "float16",
        "format": "indigo-prior-unet v1 (safetensors, ComfyUI openaimodel UNetModel key names + 'null_context')",
        "architecture": {"family": "SD1.x UNet layout (ResBlocks + SpatialTransformers), epsilon prediction",
                         "preset": args.preset, "config": cfg.to_dict(), "parameters": n_params,
                         "comfy_unet_config": cfg.to_comfy_unet_config()},
        "schedule": schedule.to_dict(),
        "autoencoder": ae_info,
        "data": {"train_images": len(train_files), "val_images": len(val_files), "split": split,
                 "latent_bank": {"latents": len(bank), "scales": scales, "mirrored": not args.no_mirror,
                                 "channel_std": [round(v, 4) for v in flat.std(1).tolist()],
                                 "channel_mean": [round(v, 4) for v in flat.mean(1).tolist()]},
                 "crops": f"random {args.latent_size}x{args.latent_size} latent crops ({crop_px} px)"},
        "training": {"steps": step, "init": args.init,
                     "init_sha256": sha256(Path(args.init)) if args.init else None, "batch_size": args.batch_size, "peak_lr": args.lr, "ema_decay": args.ema_decay,
                     "optimizer": "AdamW(0.9, 0.99), grad-norm clip 1, warm-up then cosine over the time budget",
                     "amp": "bf16" if (args.amp and device.type == "cuda") else "float32",
                     "duration_s": round(train_seconds, 1), "max_minutes": args.max_minutes, "seed": args.seed,
                     "command": command_line(), "hardware": hardware(device), "finished": now_utc()},
        "quality": {"val_eps_mse": round(val_mse, 5), "val_eps_mse_raw_weights": round(raw_mse, 5),
                    "val_eps_mse_timesteps": list(VAL_TIMESTEPS),
                    "val_set": f"centre {crop_px}x{crop_px} crops of the validation photos, fixed noise (seed 1234)",
                    "samples": f"{SAMPLES_FILE}: {args.samples} samples, Euler {args.sample_steps} steps (Karras sigmas), seed {args.seed}"},
    }
    write_json(out / UNET_CARD, card)
    csv_log.close()
    log.info("unet: %d steps in %.0f s; validation eps-MSE %.4f (EMA, fp16 export) -> %s", step, train_seconds, val_mse, out_file)
    return card
