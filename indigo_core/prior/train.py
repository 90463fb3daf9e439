"""`python -m indigo_core.prior.train {autoencoder,unet,split,stage} ...`: the prior's trainings.

    autoencoder  train the KL autoencoder on random crops; exports indigo-prior-vae.safetensors
    unet         train the eps UNet on the autoencoder's latents; exports indigo-prior-unet.safetensors
    split        write the train/validation split of a photo folder as JSON
    stage        copy a photo folder, split, into a compact folder for a machine without the photos
                 (training photos as JPEG quality 95 4:4:4, validation photos unchanged)

Every training is bounded by --max-minutes and/or --max-steps; the learning rate decays over that
budget. Outputs (weights in fp16, model card JSON, CSV log, a PNG) go to --out.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..argtypes import fraction, non_negative, non_negative_int, positive, positive_int
from ..errors import DatasetError, IndigoError, TrainingError
from .data import VAL_FRACTION, photo_split, split_record, write_json

log = logging.getLogger("indigo_core.prior.train")

#: What `stage` writes into its --out.
STAGED = ("train", "val", "split.json")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="photo folder (split by file-name hash unless --val-data is given)")
    p.add_argument("--val-data", default=None, help="validation photo folder (then all of --data trains)")
    p.add_argument("--val-fraction", type=fraction, default=VAL_FRACTION, help="share of --data held out (default 0.1)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-minutes", type=positive, default=None, help="wall-time budget of the training loop")
    p.add_argument("--max-steps", type=positive_int, default=None, help="step budget of the training loop")
    p.add_argument("--warmup", type=non_negative_int, default=200, help="learning-rate warm-up steps")
    p.add_argument("--val-size", type=positive_int, default=256, help="validation centre-crop size (default 256)")
    p.add_argument("--val-minutes", type=non_negative, default=1.0, help="validate every N minutes")
    p.add_argument("--ckpt-minutes", type=positive, default=5.0, help="write a resumable checkpoint every N minutes")
    p.add_argument("--log-every", type=positive_int, default=50, help="CSV/log row every N steps")
    p.add_argument("--resume", default=None, help="checkpoint to continue from (fresh time budget)")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast on CUDA")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace earlier outputs in --out")


def build_parser() -> argparse.ArgumentParser:
    from . import train_ae, train_unet

    parser = argparse.ArgumentParser(prog="python -m indigo_core.prior.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("autoencoder", help="train the autoencoder")
    _common(p)
    train_ae.add_arguments(p)
    p = sub.add_parser("unet", help="train the UNet on a trained autoencoder's latents")
    _common(p)
    train_unet.add_arguments(p)
    p = sub.add_parser("split", help="write the split of a photo folder as JSON")
    p.add_argument("--data", required=True)
    p.add_argument("--val-fraction", type=fraction, default=VAL_FRACTION)
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p = sub.add_parser("stage", help="copy a photo folder, split, into train/ (JPEG q95) and val/ (as is)")
    p.add_argument("--data", required=True)
    p.add_argument("--val-fraction", type=fraction, default=VAL_FRACTION)
    p.add_argument("--out", required=True, help="folder to create (train/, val/, split.json)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality of the training copies")
    p.add_argument("--overwrite", action="store_true",
                   help="stage again into an --out that holds an earlier staging (its train/, val/ and "
                        "split.json are removed first, so no photo of the old split stays behind)")
    return parser


def resolve_data(args: argparse.Namespace):
    """(train files, val files, split record) from --data / --val-data / --val-fraction."""
    if args.val_data:
        from ..train.data import list_images

        train = list_images(args.data)
        val = list_images(args.val_data)
        record = {"rule": f"given: training photos in {args.data}, validation photos in {args.val_data}",
                  "n_train": len(train), "n_val": len(val),
                  "val": [p.relative_to(Path(args.val_data)).as_posix() for p in val]}
        staged = Path(args.data).parent / "split.json"
        if staged.is_file():  # a staged copy carries the split it was made from
            import json

            record["source_split"] = json.loads(staged.read_text())
        return train, val, record
    train, val = photo_split(args.data, args.val_fraction)
    return train, val, split_record(args.data, train, val, args.val_fraction)


def stage(args: argparse.Namespace) -> dict:
    from PIL import Image

    out = Path(args.out)
    train, val = photo_split(args.data, args.val_fraction)
    record = split_record(args.data, train, val, args.val_fraction)
    root = Path(args.data)
    # The copies are flat (train/STEM.jpg, val/NAME): two photos that would land on one file are
    # refused before anything is written, not copied over each other.
    targets: dict[str, list[str]] = {}
    for sub, files, name in (("train", train, lambda f: f.stem + ".jpg"), ("val", val, lambda f: f.name)):
        for f in files:
            targets.setdefault(f"{sub}/{name(f)}", []).append(f.relative_to(root).as_posix())
    clash = {t: srcs for t, srcs in targets.items() if len(srcs) > 1}
    if clash:
        detail = "; ".join(f"{', '.join(srcs)} -> {t}" for t, srcs in list(clash.items())[:5])
        raise DatasetError(f"stage: photos of {args.data} would be copied onto one file ({detail}); "
                           f"expected distinct file stems, rename them")
    # Staging into an earlier staging would leave its copies behind: a photo now held out for
    # validation could stay in train/ from a split with another --val-fraction.
    earlier = [n for n in STAGED if (out / n).exists()]
    if earlier and not args.overwrite:
        raise TrainingError(f"stage: {out} already holds {earlier}; pass --overwrite to stage again (they are "
                            f"removed first) or choose another --out")
    for n in earlier:
        shutil.rmtree(out / n) if (out / n).is_dir() else (out / n).unlink()
    for sub in ("train", "val"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for f in train:
        with Image.open(f) as im:
            im.convert("RGB").save(out / "train" / (f.stem + ".jpg"), "JPEG", quality=args.quality, subsampling=0)
    for f in val:
        shutil.copyfile(f, out / "val" / f.relative_to(root).name)
    record["staged"] = {"train": f"JPEG quality {args.quality}, 4:4:4", "val": "original files"}
    write_json(out / "split.json", record)
    log.info("staged %d training and %d validation photos in %s", len(train), len(val), out)
    return record


def run(argv: Optional[Sequence[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.command == "split":
        if Path(args.out).exists() and not args.overwrite:
            raise TrainingError(f"split: {args.out} exists; pass --overwrite to replace it or choose another --out")
        train, val = photo_split(args.data, args.val_fraction)
        record = split_record(args.data, train, val, args.val_fraction)
        write_json(Path(args.out), record)
        return record
    if args.command == "stage":
        return stage(args)
    train, val, record = resolve_data(args)
    if args.command == "autoencoder":
        from .train_ae import run as run_ae

        return run_ae(args, train, val, record)
    from .train_unet import run as run_unet

    return run_unet(args, train, val, record)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        run(argv)
    except IndigoError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
