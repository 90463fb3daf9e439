"""Training of the prior's autoencoder (`python -m indigo_core.prior.train autoencoder`).

Two families (`--preset`): SD's AutoencoderKL at several widths, and the plain autoencoder
(`plain_autoencoder`, presets lean / lean-tiny), which has a deterministic latent and no KL term.

Loss per batch of random crops x in [0,1], with z sampled from the posterior:
    |D(z) - x|_1 + w_mse |D(z) - x|^2 + w_ssim (1 - SSIM(D(z), x)) + w_kl KL(q(z|x) || N(0,I)) / (3 H W)
(the KL is summed over latent elements and divided by the image's element count, so `w_kl`
plays the role of SD's 1e-6 on a summed reconstruction loss). No adversarial or perceptual term:
the goal is a faithful reconstruction (PSNR) for restoration, not sharper hallucination.

After training the per-channel latent statistics are folded into quant_conv/post_quant_conv
(`AutoencoderKL.normalise_latents`; the plain autoencoder's 1x1 latent convs likewise): then SD1's latent format (x 0.18215) gives unit-variance
latents, and ComfyUI's SD sampling applies to this autoencoder as to SD's own.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Union

import torch

from ..argtypes import non_negative, positive, positive_int
from ..errors import ConfigError
from ..metrics import psnr, ssim
from .autoencoder import PRESETS as KL_PRESETS
from .autoencoder import AutoencoderKL, count_parameters, latent_rgb_factors
from .plain_autoencoder import PRESETS as PLAIN_PRESETS
from .plain_autoencoder import PlainAutoencoder
from .data import CropSampler, center_crop, load_images, save_grid, to_float, write_json
from .trainutil import (Budget, CsvLog, autocast, check_out_dir, command_line, hardware, load_checkpoint,
                        files_digest, log, now_utc, pick_device, random_state, restore_random_state,
                        run_signature, save_checkpoint, setup_torch, sha256)
from .weights import load_autoencoder, save_autoencoder

VAE_FILE = "indigo-prior-vae.safetensors"
VAE_CARD = "indigo-prior-vae.card.json"
LOG_FILE = "autoencoder_log.csv"
CKPT_FILE = "autoencoder_ckpt.pt"
RECON_FILE = "autoencoder_val_recon.png"
PRESETS = {**KL_PRESETS, **PLAIN_PRESETS}
Autoencoder = Union[AutoencoderKL, PlainAutoencoder]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default="small",
                   help="architecture (default small): sd, base, small, tiny are SD's AutoencoderKL at several "
                        "widths (ComfyUI builds them itself); lean, lean-tiny the plain autoencoder (no norms, "
                        "a few times cheaper per pixel to train; the pack's loader wraps it for ComfyUI)")
    p.add_argument("--crop", type=positive_int, default=256, help="training crop size (default 256)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--lr", type=positive, default=5e-4, help="peak learning rate (AdamW, default 5e-4)")
    p.add_argument("--ssim-weight", type=non_negative, default=0.2)
    p.add_argument("--mse-weight", type=non_negative, default=0.0,
                   help="weight of a squared-error term added to the L1 (default 0); PSNR is a squared error")
    p.add_argument("--kl-weight", type=non_negative, default=1e-6)
    p.add_argument("--init-logvar", type=float, default=-8.0,
                   help="initial posterior log-variance (default -8: std 0.018). At 0, as in a default "
                        "init, the decoder starts from latents drowned in unit noise and short runs stay blurry")
    p.add_argument("--init", default=None, help="start from the weights of an exported autoencoder file "
                   "(fresh optimizer; e.g. to continue a GPU run on another machine)")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="with --init: train only the decoder side (post_quant_conv and decoder). The encoder, "
                        "its quant_conv and so the latent space stay bit-identical to the --init file, so a "
                        "UNet or LatentINN trained on those latents stays valid")
    p.add_argument("--channels-last", action="store_true",
                   help="keep weights and batches in channels-last memory format (faster convolutions under "
                        "bf16 autocast on recent GPUs; the exported file is the same either way)")
    p.add_argument("--stats-crops", type=positive_int, default=256,
                   help="training crops encoded to measure the latent statistics (default 256)")


@torch.no_grad()
def evaluate(ae: Autoencoder, crops: torch.Tensor, batch: int = 8) -> dict:
    """PSNR / SSIM of clamped reconstructions of (N,3,S,S) crops in [0,1], float32."""
    ae.eval()
    recs = []
    for i in range(0, crops.shape[0], batch):
        recs.append(ae.decode(ae.encode(crops[i:i + batch]), clamp=True).float())
    rec = torch.cat(recs)
    p = psnr(rec, crops)
    s = ssim(rec, crops)
    return {"psnr": float(p.mean()), "ssim": float(s.mean()), "psnr_per_image": [round(float(v), 3) for v in p],
            "recon": rec}


@torch.no_grad()
def latent_stats(ae: Autoencoder, sampler: CropSampler, n: int, batch: int = 16) -> tuple[list, list]:
    """Per-channel mean and std of posterior means over `n` random training crops."""
    ae.eval()
    zs = []
    for i in range(0, n, batch):
        zs.append(ae.encode(sampler(min(batch, n - i))).float())
    z = torch.cat(zs).transpose(0, 1).reshape(ae.latent_channels, -1).double()
    return z.mean(1).tolist(), z.std(1).tolist()


def run(args: argparse.Namespace, train_files, val_files, split: dict) -> dict:
    device = pick_device(args.device)
    setup_torch(device, args.threads)
    out = Path(args.out)
    check_out_dir(out, [VAE_FILE, VAE_CARD], args.overwrite, run_files=[CKPT_FILE, LOG_FILE, RECON_FILE],
                  log_file=LOG_FILE, resume=args.resume, ckpt_file=CKPT_FILE)
    torch.manual_seed(args.seed)

    images = load_images(train_files, args.crop, device)
    val_images = load_images(val_files, args.val_size, device)
    val_crops = torch.stack([to_float(center_crop(v, args.val_size)) for v in val_images])
    sampler = CropSampler(images, args.crop, seed=args.seed)
    log.info("autoencoder: %d training and %d validation photos on %s", len(images), len(val_images), device)

    cfg = PRESETS[args.preset]
    variational = args.preset in KL_PRESETS
    ae = (AutoencoderKL(cfg) if variational else PlainAutoencoder(cfg)).to(device)
    if variational:
        with torch.no_grad():
            ae.quant_conv.weight[cfg.embed_dim:].zero_()
            ae.quant_conv.bias[cfg.embed_dim:].fill_(args.init_logvar)
    if args.init:
        init = load_autoencoder(args.init, map_location=device)
        if init.cfg != cfg:
            raise ConfigError(f"--init {args.init}: its architecture {init.cfg.to_dict()} is not preset {args.preset!r}")
        ae.load_state_dict(init.state_dict())
        log.info("initialised from %s", args.init)
    if args.channels_last:
        ae = ae.to(memory_format=torch.channels_last)
    if args.freeze_encoder and not args.init:
        raise ConfigError("--freeze-encoder needs --init: the exported autoencoder whose encoder is kept")
    encoder_side = [ae.encoder, ae.quant_conv] if variational else [ae.encoder]
    if args.freeze_encoder:
        for m in encoder_side:
            m.requires_grad_(False)
    trainable = [p for p in ae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0,
                            fused=device.type == "cuda")
    step = 0
    signature = run_signature(kind="autoencoder", preset=args.preset, crop=args.crop, ssim_weight=args.ssim_weight,
                              mse_weight=args.mse_weight, kl_weight=args.kl_weight, freeze_encoder=args.freeze_encoder,
                              data=files_digest(train_files))
    if args.resume:
        ck = load_checkpoint(Path(args.resume), device, signature)
        ae.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step = int(ck["step"])
        restore_random_state(ck, sampler)  # go on with new crops and posterior noise, not the first ones again
        log.info("resumed from %s at step %d (fresh time budget, learning rate restarts)", args.resume, step)
    n_params = count_parameters(ae)
    log.info("autoencoder %s: %s, %.2f M parameters", args.preset, cfg.to_dict(), n_params / 1e6)

    csv_log = CsvLog(out / LOG_FILE, ["step", "elapsed_s", "lr", "loss", "l1", "ssim_loss", "kl", "val_psnr", "val_ssim"],
                     resume_step=step if args.resume else None)
    budget = Budget(args.max_minutes, args.max_steps, warmup=args.warmup)
    first_step = step
    next_val = args.val_minutes * 60.0
    next_ckpt = args.ckpt_minutes * 60.0
    hw = 3 * args.crop * args.crop
    acc, n_acc = None, 0
    while not budget.done(step - first_step):
        ae.train()
        if args.freeze_encoder:
            for m in encoder_side:
                m.eval()
        lr = budget.lr(step - first_step, args.lr)
        for g in opt.param_groups:
            g["lr"] = lr
        x = sampler(args.batch_size)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, args.amp):
            with torch.set_grad_enabled(not args.freeze_encoder):
                mean, logvar = ae.moments(x * 2.0 - 1.0)
            z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if variational else mean
            y = ae.decode_raw(z)
        rec = (y.float() + 1.0) * 0.5
        l1 = (rec - x).abs().mean()
        mse = (rec - x).pow(2).mean() if args.mse_weight > 0 else rec.new_zeros(())
        ssim_loss = (1.0 - ssim(rec, x, differentiable=True).mean()) if args.ssim_weight > 0 else rec.new_zeros(())
        mean, logvar = mean.float(), logvar.float()
        kl = (0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3)).mean() / hw
              if variational else mean.new_zeros(()))
        loss = l1 + args.mse_weight * mse + args.ssim_weight * ssim_loss + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        step += 1
        # Summed on the device and read back only when logging: no host sync on every step.
        terms = torch.stack([loss.detach(), l1.detach(), ssim_loss.detach(), kl.detach()])
        acc = terms if acc is None else acc + terms
        n_acc += 1
        val_due = budget.elapsed() >= next_val
        if step % args.log_every == 0 or val_due:
            loss_v, l1_v, ssim_v, kl_v = (acc / n_acc).tolist()
            acc, n_acc = None, 0
            if not math.isfinite(loss_v):
                raise FloatingPointError(f"autoencoder loss is {loss_v} around step {step}")
            row = dict(step=step, elapsed_s=budget.elapsed(), lr=lr, loss=loss_v, l1=l1_v, ssim_loss=ssim_v, kl=kl_v)
            if val_due:
                next_val += args.val_minutes * 60.0
                ev = evaluate(ae, val_crops)
                row.update(val_psnr=ev["psnr"], val_ssim=ev["ssim"])
            csv_log.row(**row)
            log.info("ae step %d  %.0fs  lr %.2e  l1 %.4f  1-ssim %.4f%s", step, row["elapsed_s"], lr, l1_v, ssim_v,
                     f"  val PSNR {row['val_psnr']:.2f} dB" if "val_psnr" in row else "")
        if budget.elapsed() >= next_ckpt:
            next_ckpt += args.ckpt_minutes * 60.0
            save_checkpoint(out / CKPT_FILE, model=ae.state_dict(), optimizer=opt.state_dict(), step=step,
                            signature=signature, random=random_state(sampler))
    train_seconds = budget.elapsed()
    save_checkpoint(out / CKPT_FILE, model=ae.state_dict(), optimizer=opt.state_dict(), step=step,
                            signature=signature, random=random_state(sampler))

    # Fold the latent statistics into the 1x1 convs: SD1's 0.18215 then gives unit variance.
    # A frozen encoder keeps the --init file's (already folded) latent space: nothing to fold.
    mean_c, std_c = latent_stats(ae, sampler, args.stats_crops)
    before = evaluate(ae, val_crops)
    if not args.freeze_encoder:
        ae.normalise_latents(mean_c, std_c)
    factors, bias = latent_rgb_factors(ae, sampler(min(32, args.stats_crops)))
    check_mean, check_std = latent_stats(ae, sampler, min(64, args.stats_crops))

    out_file = out / VAE_FILE
    save_autoencoder(ae, out_file, dtype=torch.float16, overwrite=True,
                     latent_format={"latent_rgb_factors": factors, "latent_rgb_factors_bias": bias})
    exported = load_autoencoder(out_file, map_location=device)
    final = evaluate(exported, val_crops)
    save_grid(torch.stack([t for pair in zip(val_crops[:8], final["recon"][:8]) for t in pair]), out / RECON_FILE, nrow=4)
    card = {
        "name": "indigo-prior-vae",
        "file": VAE_FILE, "sha256": sha256(out_file), "file_bytes": out_file.stat().st_size, "dtype": "float16",
        "format": ("indigo-prior-autoencoder v1 (safetensors, ldm/ComfyUI AutoencoderKL key names)" if variational
                   else "indigo-prior-autoencoder v1 (safetensors, plain autoencoder; config family 'plain')"),
        "architecture": {"preset": args.preset, "config": cfg.to_dict(), "parameters": n_params,
                         **({"family": "Stable Diffusion AutoencoderKL (KL-f8, 4 latent channels)",
                             "comfy_vae_config": cfg.to_comfy_config()} if variational else
                            {"family": "plain convolutional autoencoder (f8, 4 latent channels, deterministic latent; "
                                       "indigo_core.prior.plain_autoencoder)",
                             "comfyui": "wrapped as a comfy.sd.VAE by the pack's Load INDIGO Prior node"})},
        "latent_format": {"scale_factor": cfg.scale_factor, "normalised": True,
                          "encoder": ("frozen: identical to the --init file's" if args.freeze_encoder else "trained"),
                          "raw_mean_before": [round(v, 4) for v in mean_c], "raw_std_before": [round(v, 4) for v in std_c],
                          "scaled_mean_after": [round(v * cfg.scale_factor, 4) for v in check_mean],
                          "scaled_std_after": [round(v * cfg.scale_factor, 4) for v in check_std],
                          "latent_rgb_factors": factors, "latent_rgb_factors_bias": bias},
        "data": {"train_images": len(images), "val_images": len(val_images), "split": split,
                 "augmentation": f"random {args.crop}x{args.crop} crops (area-weighted image choice), horizontal flips",
                 "small_images": f"shorter sides below {args.crop} upscaled (bicubic) to {args.crop}"},
        "training": {"steps": step, "init": args.init, "init_sha256": sha256(Path(args.init)) if args.init else None,
                     "trained_parts": "decoder side only" if args.freeze_encoder else "all",
                     "init_logvar": args.init_logvar if variational else None, "batch_size": args.batch_size, "crop": args.crop, "peak_lr": args.lr,
                     "channels_last": args.channels_last,
                     "optimizer": "AdamW(0.9, 0.99), grad-norm clip 1, warm-up then cosine over the time budget",
                     "loss": (f"L1 + {args.mse_weight} MSE + {args.ssim_weight} (1 - SSIM)"
                              + (f" + {args.kl_weight} KL/(3HW); z sampled from the posterior" if variational
                                 else "; deterministic latent")),
                     "amp": "bf16" if (args.amp and device.type == "cuda") else "float32",
                     "duration_s": round(train_seconds, 1), "max_minutes": args.max_minutes, "seed": args.seed,
                     "command": command_line(), "hardware": hardware(device), "finished": now_utc()},
        "quality": {"val_crop": f"center {args.val_size}x{args.val_size} crop of each validation photo "
                                 f"(shorter sides below {args.val_size} upscaled first)",
                    "val_psnr_db": round(final["psnr"], 3), "val_ssim": round(final["ssim"], 4),
                    "val_psnr_before_normalisation_fp32": round(before["psnr"], 3),
                    "val_psnr_per_image": final["psnr_per_image"],
                    "target": "val PSNR >= 25 dB", "meets_target": final["psnr"] >= 25.0},
    }
    write_json(out / VAE_CARD, card)
    csv_log.close()
    log.info("autoencoder: %d steps in %.0f s; validation PSNR %.2f dB, SSIM %.4f -> %s", step, train_seconds,
             final["psnr"], final["ssim"], out_file)
    return card
