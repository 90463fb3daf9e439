"""python -m indigo_core.eval: PSNR (RGB, Y), SSIM, LPIPS, DISTS and FID of result folders.

  python -m indigo_core.eval --gt GT_DIR --results NAME=DIR [NAME=DIR ...] [--input LQ_DIR]
         [--level medium] [--out runs/eval] [--metrics psnr,ssim,lpips,dists,fid] [--overwrite]
  python -m indigo_core.eval --gt GT_DIR --level medium --make-inputs \\
         --restore "bicubic=python my_restore.py --in {input} --out {output}" --out runs/eval
  python -m indigo_core.eval --from-csv runs/eval/mild/results.csv runs/eval/medium/results.csv --out runs/eval
  torchrun --nproc_per_node 4 -m indigo_core.eval --gt ... --results ...     (sharded; rank 0 writes)

Writes <out>/<level>/results.csv, table.md and grid.png; never replaces existing files unless
--overwrite. LPIPS/DISTS need the converted weights (python -m indigo_core.metrics.convert); FID
needs Inception-V3 weights and at least --fid-min-images images, and says why when it cannot run.
Exit status: 0 done, 2 a clear error (printed), 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import ConfigError, IndigoError
from .run import ALL_METRICS, EvalOptions, evaluate, rebuild_table

log = logging.getLogger("indigo_core.eval")


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values or []:
        # a bare results folder whose path holds "=" (e.g. runs/lr=1e-4) is that folder, unless
        # splitting at the first "=" also names an existing folder
        after = v.partition("=")[2]
        bare_dir = what == "results" and Path(v).is_dir() and not (after and Path(after).is_dir())
        if "=" in v and not bare_dir:
            name, _, val = v.partition("=")
        elif what == "results":
            name, val = Path(v).name, v
        else:
            raise ConfigError(f"--{what}: expected NAME=VALUE, got {v!r}")
        name = name.strip()
        if not name or name in out:
            raise ConfigError(f"--{what}: expected distinct non-empty names, got {name!r} in {v!r}")
        out[name] = val
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m indigo_core.eval", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gt", type=Path, help="folder of ground-truth images")
    ap.add_argument("--results", nargs="+", default=[], metavar="NAME=DIR",
                    help="result folders, one per method (file names match the ground truths')")
    ap.add_argument("--input", type=Path, help="folder of the degraded inputs (grid column; restore commands)")
    ap.add_argument("--level", default="custom", help="row label; a preset (mild|medium|severe) for --make-inputs")
    ap.add_argument("--make-inputs", action="store_true", help="degrade the ground truths with the --level preset")
    ap.add_argument("--seed", type=int, default=0, help="seed of --make-inputs (default 0)")
    ap.add_argument("--restore", nargs="+", default=[], metavar="NAME=COMMAND",
                    help="a command per method run as COMMAND with {input} and {output} folders replaced")
    ap.add_argument("--out", type=Path, default=Path("runs/eval"), help="output root (default runs/eval)")
    ap.add_argument("--metrics", default=",".join(ALL_METRICS), help=f"subset of {','.join(ALL_METRICS)}")
    ap.add_argument("--lpips-net", default="alex", choices=("alex", "vgg"))
    ap.add_argument("--weights-dir", type=Path, help="models folder with metrics/ (see indigo_core.metrics.weights)")
    ap.add_argument("--crop-border", type=int, default=0, help="pixels dropped at each border for PSNR/SSIM")
    ap.add_argument("--fid-min-images", type=int, default=50)
    ap.add_argument("--inception-weights", type=Path, help="torchvision inception_v3_google-0cc3c7bd.pth")
    ap.add_argument("--device", help="default: cuda:LOCAL_RANK if available, else cpu")
    ap.add_argument("--grid-rows", type=int, default=4)
    ap.add_argument("--grid-cell", type=int, default=160, help="grid cell height in pixels")
    ap.add_argument("--from-csv", nargs="+", type=Path, metavar="CSV",
                    help="rebuild the markdown table from saved results CSVs into <out>/table.md")
    ap.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.from_csv:
            print(rebuild_table(args.from_csv, args.out, args.overwrite), end="")
            return 0
        if args.gt is None:
            raise ConfigError("--gt is required (or --from-csv)")
        opts = EvalOptions(
            gt=args.gt, out=args.out, results={k: Path(v) for k, v in _pairs(args.results, "results").items()},
            inputs=args.input, level=args.level,
            metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()),
            lpips_net=args.lpips_net, weights_dir=args.weights_dir, crop_border=args.crop_border,
            fid_min_images=args.fid_min_images, inception_weights=args.inception_weights, device=args.device,
            grid_rows=args.grid_rows, grid_cell=args.grid_cell, overwrite=args.overwrite,
            make_inputs=args.make_inputs, seed=args.seed, restore=_pairs(args.restore, "restore"))
        outcome = evaluate(opts)
        if outcome is not None:
            print(outcome.table, end="")
        return 0
    except IndigoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
