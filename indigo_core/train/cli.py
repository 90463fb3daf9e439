"""`python -m indigo_core.train {pixel-inn,latent-inn,estimator,restorer} ...`: argument parsing, presets,
and the hand-off to the shared loop. See docs/TRAINING.md for the commands."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ..errors import IndigoError, TrainingError
from .loop import AMP_MODES, SCHEDULES, LoopOptions, init_distributed, shutdown_distributed

log = logging.getLogger("indigo_core.train")

# Loop settings a preset may set, with their values when neither the command nor a preset does.
COMMON_DEFAULTS: dict[str, Any] = dict(crop=128, batch_size=8, lr=2e-4, steps=20000, val_every=1000)
KINDS = ("pixel-inn", "latent-inn", "estimator", "restorer")


def degradation_defaults() -> dict[str, Any]:
    """The degradation options' values when not given. They are filled in after parsing, so that
    giving one explicitly can be told from leaving it out (--lq-data refuses them)."""
    from ..degradations import TRAINING_RANGES as R

    return dict(blur_sigma=list(R.blur_sigma), noise=list(R.noise_level), jpeg=list(R.jpeg_quality),
                jpeg_prob=R.jpeg_prob, anisotropic_prob=R.anisotropic_prob, resize_modes=list(R.resize_modes),
                val_degradation="medium")


def _task_module(kind: str):
    from . import estimator, latent_inn, pixel_inn, restorer

    return {"pixel-inn": pixel_inn, "latent-inn": latent_inn, "estimator": estimator, "restorer": restorer}[kind]


def _add_common(p: argparse.ArgumentParser, kind: str) -> None:
    mod = _task_module(kind)
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="folder of training images (recursive; png, jpg, webp)")
    g.add_argument("--val-data", default=None, help="folder of validation images (default: hold out "
                   "--val-fraction of --data, chosen by a hash of the file names)")
    g.add_argument("--val-fraction", type=float, default=0.05, help="share of --data held out")
    g.add_argument("--val-count", type=int, default=None,
                   help="hold out exactly this many images instead (default: unset; --val-fraction decides)")
    g.add_argument("--crop", type=int, default=None, help="training crop side in pixels")
    g.add_argument("--flips", choices=("none", "h", "hv"), default="h",
                   help="random flips: none, h (horizontal) or hv (horizontal and vertical)")
    g.add_argument("--small-images", choices=("skip", "resize", "error"), default="skip",
                   help="images smaller than the crop: skip them, resize (upscale) them, or stop with an error")
    g.add_argument("--cache-images", action="store_true", help="keep decoded images in memory")
    g.add_argument("--lq-data", default=None, metavar="DIR",
                   help="degraded images y paired with --data by relative path without extension, each "
                        "exactly the ground truth's size / s; trains on them instead of synthesised degradations "
                        "(default: none, y is synthesised from the ranges below)" if kind != "estimator" else
                        "refused: the estimator learns degradation parameters, which given pairs do not carry "
                        "(default: none)")
    g.add_argument("--val-lq-data", default=None, metavar="DIR",
                   help="the pairs of --val-data's images; required with --lq-data and --val-data (default: none; "
                        "held-out images take their pairs from --lq-data)")

    g = p.add_argument_group("degradations (y = JPEG_q((x * k) downsampled by s + n))")
    g.add_argument("--scale", type=int, default=None, help="s; must match the INN (default: the INN's)"
                   if kind not in ("estimator", "restorer") else "s (default: 4)")
    g.add_argument("--blur-sigma", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="blur sigma range, pixels of x")
    g.add_argument("--noise", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="noise level range on 0..255")
    g.add_argument("--jpeg", type=int, nargs=2, default=None, metavar=("LO", "HI"), help="JPEG quality range")
    g.add_argument("--jpeg-prob", type=float, default=None, help="probability of the JPEG stage")
    g.add_argument("--anisotropic-prob", type=float, default=None, help="probability of an anisotropic blur kernel")
    g.add_argument("--resize-modes", nargs="+", choices=("bicubic", "area"), default=None,
                   help="downsampling kernels drawn from")
    g.add_argument("--val-degradation", choices=("mild", "medium", "severe", "train"), default=None,
                   help="validation degradation: a paper level (mild, medium, severe) or fixed draws from the "
                        "training ranges (train)")

    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="output folder: weights, model card, logs, checkpoints")
    g.add_argument("--name", default=None, help=f"file name stem of the exported model (default: {mod.DEFAULT_NAME})")
    g.add_argument("--preset", choices=sorted(mod.PRESETS), default=None,
                   help=f"size preset; options given explicitly override its values (default: {mod.DEFAULT_PRESET})")
    g.add_argument("--steps", type=int, default=None, help="optimiser updates")
    g.add_argument("--batch-size", type=int, default=None,
                   help="crops per process and step; global batch = this x processes")
    g.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    g.add_argument("--beta1", type=float, default=0.9, help="Adam beta1")
    g.add_argument("--beta2", type=float, default=0.999, help="Adam beta2")
    g.add_argument("--weight-decay", type=float, default=0.0, help="Adam (L2) weight decay")
    g.add_argument("--lr-schedule", choices=SCHEDULES, default="cosine",
                   help="constant, or cosine decay to --min-lr-ratio x lr at the last step")
    g.add_argument("--warmup-steps", type=int, default=0,
                   help="linear learning-rate warm-up over the first N steps (0: none)")
    g.add_argument("--min-lr-ratio", type=float, default=0.1,
                   help="final learning rate of the cosine schedule, as a fraction of --lr")
    g.add_argument("--grad-clip", type=float, default=0.0, help="clip the global gradient norm (0: off)")
    g.add_argument("--amp", choices=AMP_MODES, default="auto",
                   help="mixed precision on CUDA: auto (bf16 if supported, else fp16), bf16, fp16, off; "
                        "the CPU always trains in float32")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to train: auto (CUDA if available), cpu or cuda")
    g.add_argument("--workers", type=int, default=-1, help="DataLoader workers per process (-1: auto, "
                   "0 on CPU)")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's own choice)")
    g.add_argument("--seed", type=int, default=0, help="seed of the initial weights, crops and degradations")
    g.add_argument("--val-every", type=int, default=None, help="validate every N steps (0: only at the end)")
    g.add_argument("--log-every", type=int, default=10, help="CSV/progress row every N steps")
    g.add_argument("--ckpt-every", type=int, default=500, help="checkpoint every N steps (0: only at the end)")
    g.add_argument("--keep-checkpoints", type=int, default=0,
                   help="also keep the last K numbered checkpoints (besides checkpoints/last.pt)")
    g.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue from OUT/checkpoints/last.pt (or the given checkpoint) "
                        "(default: off, a fresh run)")
    g.add_argument("--overwrite", action="store_true", help="replace a previous run's files in --out")
    g.add_argument("--stop-at", type=int, default=0,
                   help="stop after this step with a checkpoint, as a time-limited job would (0: off)")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    g.add_argument("-v", "--verbose", action="store_true", help="log at debug level")


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return " ".join(_fmt(v) for v in value) if value else "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _state_defaults(p: argparse.ArgumentParser, kind: str) -> None:
    """End every option's help with its default, once: the preset's values for the options a preset
    fills, else the trainer's or the common default, else argparse's. A help that names its default
    itself (the word "default") is left as written; required options have none."""
    mod = _task_module(kind)
    filled = {key for preset in mod.PRESETS.values() for key in preset}
    fallback = {**COMMON_DEFAULTS, **degradation_defaults(), **mod.DEFAULTS}
    for action in p._actions:
        if (not action.option_strings or action.required or action.help == argparse.SUPPRESS
                or isinstance(action, argparse._HelpAction) or "default" in (action.help or "").lower()):
            continue
        if action.dest in filled:
            values = ", ".join(f"{_fmt(preset.get(action.dest, fallback.get(action.dest)))} for {name}"
                               for name, preset in mod.PRESETS.items())
            note = f"default from --preset: {values}"
        elif action.dest in fallback:
            note = f"default: {_fmt(fallback[action.dest])}"
        elif action.default is not None:
            note = f"default: {_fmt(action.default)}"
        else:  # the help must say what an unset option means (tests/core/test_train_cli.py checks)
            continue
        action.help = f"{action.help} ({note})" if action.help else f"({note})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m indigo_core.train",
        description="Train LatentINDIGO's PixelINN, LatentINN, degradation estimator or stage-1 restorer on a folder of "
                    "images. The same command runs data-parallel under torchrun --nproc_per_node N.",
    )
    sub = parser.add_subparsers(dest="kind", required=True, metavar="{pixel-inn,latent-inn,estimator,restorer}")
    helps = {"pixel-inn": "PixelINN (paper Eq. 11-13)", "latent-inn": "LatentINN for a VAE (Eq. 19-21)",
             "estimator": "KDSR-style teacher, then the distilled student estimator F",
             "restorer": "stage-1 restoration module R (degradation removal before the prior)"}
    for kind in KINDS:
        p = sub.add_parser(kind, help=helps[kind], description=helps[kind])
        _task_module(kind).add_arguments(p)
        _add_common(p, kind)
        _state_defaults(p, kind)
    return parser


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill options left unset: the preset's value, else the trainer's default, else the common one."""
    mod = _task_module(args.kind)
    args.preset = args.preset or mod.DEFAULT_PRESET
    preset = mod.PRESETS[args.preset]
    for source in (preset, mod.DEFAULTS, COMMON_DEFAULTS, degradation_defaults()):
        for key, value in source.items():
            if getattr(args, key, None) is None:
                setattr(args, key, value)
    if args.name is None:
        args.name = mod.DEFAULT_NAME
    return args


def check_pairs(args: argparse.Namespace) -> None:
    """Refuse, before any work, what does not go with given pairs (call before `resolve_defaults`:
    a degradation option is then None unless given)."""
    if args.lq_data is None:
        if args.val_lq_data is not None:
            raise TrainingError("--val-lq-data: expected together with --lq-data (the training pairs), got it alone")
        return
    if args.kind == "estimator":
        raise TrainingError("estimator: --lq-data cannot train it: the teacher regresses the degradation parameters "
                            "of each y (blur sigma, noise level, JPEG quality), which given pairs do not carry; "
                            "train it on synthesised degradations and pass it to the INNs trained on your pairs "
                            "with --estimator (it then runs on the given y)")
    given = ["--" + key.replace("_", "-") for key in degradation_defaults() if getattr(args, key) is not None]
    if given:
        raise TrainingError(f"--lq-data: the given pairs are the degradation; expected no degradation option, got "
                            f"{', '.join(given)} (it would be ignored)")
    if (args.val_data is None) != (args.val_lq_data is None):
        raise TrainingError("--lq-data with --val-data: expected --val-lq-data with the validation pairs, got none"
                            if args.val_lq_data is None else
                            "--val-lq-data: expected together with --val-data (its ground truths), got no --val-data; "
                            "held-out images take their pairs from --lq-data")
    if args.small_images == "resize":
        raise TrainingError("--small-images resize: upscaling a ground truth would break its alignment with its "
                            "pair; expected skip or error with --lq-data")


def run(argv: Optional[Sequence[str]] = None) -> dict:
    """Parse `argv` and train; returns the loop's summary. Raises IndigoError on bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    check_pairs(args)
    args = resolve_defaults(args)
    # "0: the default" must not turn a wrong value into a run with other settings
    for flag, value, least in (("--threads", args.threads, 0), ("--scale", args.scale, 1)):
        if value is not None and value < least:
            raise TrainingError(f"{flag}: expected an integer >= {least}, got {value}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    info = init_distributed(args.device)
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level if info.main else logging.WARNING,
                        format=f"%(asctime)s [rank {info.rank}] %(levelname)s %(message)s")
    try:
        opts = LoopOptions(
            out=Path(args.out), name=args.name, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
            betas=(args.beta1, args.beta2), weight_decay=args.weight_decay, schedule=args.lr_schedule,
            warmup_steps=args.warmup_steps, min_lr_ratio=args.min_lr_ratio, grad_clip=args.grad_clip,
            amp=args.amp, seed=args.seed, workers=args.workers, val_every=args.val_every,
            log_every=args.log_every, ckpt_every=args.ckpt_every, keep_checkpoints=args.keep_checkpoints,
            resume=args.resume, overwrite=args.overwrite, stop_at=args.stop_at, progress=not args.no_progress,
        )
        opts.validate()
        # The task builds its networks: seed first so that every rank and every rerun starts equal.
        torch.manual_seed(args.seed)
        return _task_module(args.kind).run(args, opts, info, argv)
    finally:
        shutdown_distributed(info)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point: exit status 0 on success, 2 on a bad input or set-up (message logged),
    128 + signal number when stopped by SIGINT/SIGTERM after saving a checkpoint."""
    try:
        summary = run(argv)
    except IndigoError as exc:
        logging.basicConfig(level=logging.INFO)
        log.error("%s: %s", type(exc).__name__, exc)
        return 2
    return 128 + summary["signal"] if summary.get("signal") else 0
