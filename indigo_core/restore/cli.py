"""`python -m indigo_core.restore INPUT --out DIR [options]`: restore a file or a folder of images.

    python -m indigo_core.restore photo.png --out restored/                       # LatentINN, bundled models
    python -m indigo_core.restore lq_folder/ --out restored/ --mode pixel --steps 20
    python -m indigo_core.restore lq/ --out out/ --inn my_latent_inn.safetensors \\
        --prior-vae my_vae.safetensors --prior-unet my_unet.safetensors
    torchrun --nproc_per_node 4 -m indigo_core.restore lq_folder/ --out restored/   # sharded

Outputs are PNGs named after the inputs (sub-folders kept), `scale` times larger. An existing
output file is never replaced unless --overwrite. Under torchrun (RANK / WORLD_SIZE) rank r
restores every WORLD_SIZE-th file of the sorted list; rank 0 prints the summary. Every image uses
the same --seed, so a file's result does not depend on how the folder was sharded.
Exit status: 0 done, 2 a clear error (message printed), 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..device import resolve_device
from ..errors import ConfigError, DatasetError, IndigoError
from .pipeline import (MODES, SAMPLING_MODES, STAGE1, RestoreSettings, default_settings, load_models, needs_restorer,
                       needs_restorer_message, restore_image)
from .sampler import SAMPLERS, SCHEDULERS

log = logging.getLogger("indigo_core.restore")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
#: Options that fill RestoreSettings fields (None: the mode's default).
SETTING_OPTIONS = ("steps", "denoise", "seed", "sampler", "scheduler", "scale", "zeta", "latent_iterations",
                   "step_size", "w_dc", "w_p", "max_step", "regulariser_end", "refine_lr", "colour_fix", "colour_levels",
                   "stage1")


class OutputExistsError(IndigoError, FileExistsError):
    """An output image exists and --overwrite was not given."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m indigo_core.restore", description=__doc__.split("\n\n")[0],
                                epilog=_defaults_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", type=Path, help="a degraded image, or a folder of them (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument("--mode", choices=MODES, default="latent",
                   help="latent: LatentINN guidance (Alg. 2); pixel: PixelINN guidance (Alg. 1); the others "
                        "are baselines: unguided sampling, bicubic, the stage-1 restorer alone, the autoencoder "
                        "alone, the INN inverse with zero details")
    g = p.add_argument_group("models (default: the files bundled with the pack)")
    g.add_argument("--inn", help="INN file (.safetensors, the pack's format): a LatentINN for --mode latent, "
                                 "a PixelINN for --mode pixel")
    g.add_argument("--estimator", default="bundled",
                   help="degradation estimator file, 'bundled', or 'none' (INN without the embedding)")
    g.add_argument("--prior-vae", help="the prior's autoencoder (the pack's file or an SD VAE file)")
    g.add_argument("--prior-unet", help="the prior's UNet (the pack's format)")
    g.add_argument("--restorer", default="bundled",
                   help="stage-1 restorer file, 'bundled', or 'none' (no restorer: the sampling modes then need "
                        "--stage1 bicubic)")
    g = p.add_argument_group("sampling")
    g.add_argument("--steps", type=int, default=None, help="sampler steps run")
    g.add_argument("--denoise", type=float, default=None,
                   help="strength: start from E(r), r the stage-1 image (--stage1), noised to this fraction of the "
                        "schedule (1: from noise)")
    g.add_argument("--seed", type=int, default=None, help="noise seed (the same for every image)")
    g.add_argument("--sampler", choices=SAMPLERS, default=None)
    g.add_argument("--scheduler", choices=SCHEDULERS, default=None)
    g.add_argument("--scale", type=int, default=None, help="upscaling factor (the INNs' x4)")
    g = p.add_argument_group("guidance")
    g.add_argument("--zeta", type=float, default=None, help="LatentINN interpolation strength")
    g.add_argument("--latent-iterations", type=int, default=None,
                   help="LatentINN updates per step")
    g.add_argument("--step-size", type=float, default=None, help="PixelINN step (Polyak fraction)")
    g.add_argument("--w-dc", type=float, default=None, help="PixelINN data-consistency weight")
    g.add_argument("--w-p", type=float, default=None,
                   help="PixelINN LPIPS weight (needs the LPIPS weights; 0 to guide without)")
    g.add_argument("--max-step", type=float, default=None, help="PixelINN trust region")
    g.add_argument("--regulariser-end", type=float, default=None,
                   help="fraction of the steps with the E(D(z0)) regulariser (0: off)")
    g.add_argument("--refine-lr", type=float, default=None,
                   help="test-time INN refinement learning rate, first half of the steps (0: off)")
    g.add_argument("--colour-fix", choices=("none", "wavelet", "adain"), default=None,
                   help="colour fix of the result against the stage-1 image")
    g.add_argument("--colour-levels", type=int, default=None,
                   help="levels of the wavelet colour fix (1-8; fewer take more of the stage-1 image)")
    g.add_argument("--stage1", choices=STAGE1, default=None,
                   help="what the prior starts from and the colour fix refers to: the stage-1 restorer's "
                        "R(y), or bicubic up(y)")
    g = p.add_argument_group("run")
    g.add_argument("--overwrite", action="store_true", help="replace existing output images")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda:LOCAL_RANK if available)")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _defaults_text() -> str:
    """The epilog: every sampling and guidance option's default, per mode."""
    lines = ["sampling and guidance options left out take these defaults:"]
    for mode in ("latent", "pixel"):
        d = default_settings(mode)
        lines.append(f"  --mode {mode}: " + ", ".join(f"--{k.replace('_', '-')} {getattr(d, k)}" for k in SETTING_OPTIONS))
    lines.append("  --mode unguided: those of --mode latent (the same sampling, without guidance)")
    return "\n".join(lines)


def plan(input_path: Path, out: Path) -> list[tuple[Path, Path]]:
    """[(input file, output PNG)] sorted by the input's relative path; DatasetError on a bad input,
    ConfigError if an output would land on an input image."""
    if input_path.is_file():
        if input_path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DatasetError(f"{input_path}: expected an image ({', '.join(IMAGE_EXTENSIONS)}), got {input_path.suffix!r}")
        return _refuse_outputs_onto_inputs([(input_path, out / f"{input_path.stem}.png")])
    if not input_path.is_dir():
        raise DatasetError(f"{input_path}: no such file or folder")
    files = sorted((p for p in input_path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                    and not any(part.startswith(".") for part in p.relative_to(input_path).parts)),
                   key=lambda p: p.relative_to(input_path).as_posix())
    if not files:
        raise DatasetError(f"{input_path}: holds no images ({', '.join(IMAGE_EXTENSIONS)}, searched recursively)")
    pairs, seen = [], {}
    for f in files:
        target = out / f.relative_to(input_path).with_suffix(".png")
        if target in seen:
            raise DatasetError(f"{seen[target]} and {f} would both be written to {target}; rename one")
        seen[target] = f
        pairs.append((f, target))
    return _refuse_outputs_onto_inputs(pairs)


def _refuse_outputs_onto_inputs(pairs: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """ConfigError if a planned output is one of the input images (it would be replaced, even with
    --overwrite: --overwrite is for earlier outputs, never for the images being restored)."""
    inputs = {src.resolve(): src for src, _ in pairs}
    for src, dst in pairs:
        hit = inputs.get(dst.resolve())
        if hit is not None:
            raise ConfigError(f"--out: expected outputs that are not input images, got {dst} for {src}, "
                              f"which is the input {hit}; choose another --out folder")
    return pairs


def shard(items: list, rank: int, world_size: int) -> list:
    """Rank `rank`'s share: every world_size-th item starting at rank."""
    return items[rank::world_size]


def _read(path: Path) -> torch.Tensor:
    from ..eval.folders import load_image

    return load_image(path)


def _write(x: torch.Tensor, path: Path) -> None:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (x[0].detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    tmp = path.with_name(path.name + ".part")
    Image.fromarray(arr).save(tmp, format="PNG")
    tmp.replace(path)


def settings_from_args(args: argparse.Namespace) -> RestoreSettings:
    """The mode's defaults, overridden by every option given on the command line."""
    return default_settings(args.mode, **{k: getattr(args, k) for k in SETTING_OPTIONS})


def run(argv: Optional[Sequence[str]] = None) -> dict:
    """Parse, restore this rank's files, and return the summary (rank 0: every rank's records)."""
    from ..eval.distributed import init_distributed

    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    settings = settings_from_args(args)
    estimator = None if args.estimator.lower() == "none" else args.estimator
    restorer = None if args.restorer.lower() == "none" else args.restorer
    if restorer is None and needs_restorer(settings):
        raise ConfigError(f"--restorer none: {needs_restorer_message(settings)}")
    pairs = plan(args.input, args.out)
    if args.input.resolve() == args.out.resolve():
        raise ConfigError("--out: expected a folder other than the input folder")
    existing = [str(o) for _, o in pairs if o.exists()]
    if existing and not args.overwrite:
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise OutputExistsError(f"output exists: {', '.join(existing[:3])}{more}; pass --overwrite to replace")

    ctx = init_distributed()
    try:
        device = resolve_device(args.device, ctx.local_rank)
        mine = shard(pairs, ctx.rank, ctx.world_size)
        models = load_models(settings.mode, inn=args.inn, prior_vae=args.prior_vae, prior_unet=args.prior_unet,
                             estimator=estimator, device=device, restorer=restorer)
        records = _restore_files(mine, models, settings, device, ctx.rank, progress=not args.no_progress)
        gathered = ctx.gather(records)
        summary = {"settings": settings, "files": models.files, "world_size": ctx.world_size}
        if ctx.is_main:
            summary["records"] = [r for part in gathered for r in part]
            _log_summary(summary)
        else:
            summary["records"] = records
        return summary
    finally:
        ctx.close()


def _restore_files(pairs, models, settings, device, rank: int, progress: bool) -> list[dict]:
    from tqdm import tqdm

    records = []
    files_bar = tqdm(pairs, desc=f"restore [rank {rank}]", unit="image", disable=not progress or len(pairs) < 2,
                     position=0, dynamic_ncols=True)
    for src, dst in files_bar:
        t0 = time.perf_counter()
        y = _read(src).to(device)
        steps_bar = tqdm(total=settings.steps, desc=src.name, unit="step", leave=False, dynamic_ncols=True,
                         disable=not progress or settings.mode not in ("latent", "pixel", "unguided"))
        x = restore_image(y, models, settings, callback=lambda i, n: steps_bar.update(1))
        steps_bar.close()
        _write(x, dst)
        records.append({"input": str(src), "output": str(dst), "rank": rank,
                        "size": [int(x.shape[-2]), int(x.shape[-1])], "seconds": time.perf_counter() - t0})
    return records


def _log_summary(summary: dict) -> None:
    recs = summary["records"]
    total = sum(r["seconds"] for r in recs)
    s = summary["settings"]
    how = f" ({s.steps} steps, denoise {s.denoise:.2f}, seed {s.seed})" if s.mode in SAMPLING_MODES else ""
    log.info("restored %d image(s) with mode %s%s on %d process(es); %.1f s of compute, %.2f s per image",
             len(recs), s.mode, how, summary["world_size"], total, total / max(len(recs), 1))
    for name, path in summary["files"].items():
        log.info("  %s: %s", name, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        run(argv)
    except IndigoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
