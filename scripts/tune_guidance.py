"""Choose the restore defaults on TRAINING photos (never the validation split the acceptance uses).

    .venv/bin/python scripts/tune_guidance.py --mode latent [--photos N] [--out runs/tune] [--overwrite]

Takes N training photos of the prior's split (every k-th by name, --crop centre crops), degrades
them with the x4 medium preset (seed = photo index), and searches the sampling and guidance
settings one at a time (coordinate search, two passes) from the current defaults of
`indigo_core.restore.pipeline.default_settings`. The score of a setting is the smaller of its two
margins over the acceptance target on these photos: min((dPSNR - 0.5) / 0.5, (-dLPIPS - 0.05) / 0.05)
against bicubic; ties broken by PSNR. Every evaluation goes to <out>/<mode>.csv as it is made
(<mode>.csv.part until the search ends: an interrupted search leaves its rows there); the best
settings are printed (copy them into MODE_DEFAULTS by hand). An earlier search's <mode>.csv (or
.csv.part) is refused before any work unless --overwrite.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photo_crops import DEFAULT_PHOTOS, REPO_ROOT, centre_crop, split, photo_folder  # noqa: E402
from output_files import part_path, partial_file, refuse_existing  # noqa: E402

import torch  # noqa: E402

SEARCH = {
    "latent": {"denoise": [0.3, 0.5, 0.7], "zeta": [0.0, 0.2, 0.5, 0.8, 1.0], "regulariser_end": [0.0, 0.3],
               "steps": [10, 20], "colour_fix": ["none", "wavelet", "adain"], "colour_levels": [3, 4, 5],
               "stage1": ["bicubic", "restorer"]},
    "pixel": {"denoise": [0.3, 0.5, 0.7], "step_size": [0.5, 1.0, 1.5], "w_p": [0.0, 1.0],
              "max_step": [0.25, 1.0], "regulariser_end": [0.0, 0.3], "steps": [10, 20],
              "colour_fix": ["none", "wavelet", "adain"], "colour_levels": [3, 4, 5],
               "stage1": ["bicubic", "restorer"]},
}


def load_set(photos: Path, n: int, crop: int = 256, part: str = "train") -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """[(name, x (1,3,crop,crop), y (1,3,crop/4,crop/4))] of n photos of the split's `part`
    ("train": spread over the training photos; "val": the first n validation photos)."""
    import numpy as np

    from indigo_core.degradations import degrade

    train, val = split(photos)
    pick = train[:: max(1, len(train) // n)][:n] if part == "train" else val[:n]
    out = []
    for i, f in enumerate(pick):
        arr = np.asarray(centre_crop(f, crop), dtype=np.float32) / 255.0
        x = torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()
        y, _ = degrade(x, "medium", generator=i)
        out.append((f.stem, x, (y * 255).round() / 255))  # 8-bit, as the files the CLI reads
    return out


class Scorer:
    def __init__(self, data, mode: str, lpips, files: dict) -> None:
        from indigo_core.restore import load_models, restore_image
        from indigo_core.restore.pipeline import RestoreSettings

        self.data, self.mode, self.lpips, self.restore = data, mode, lpips, restore_image
        self.models = load_models(mode, **files)
        bic = load_models("bicubic")
        self.base = self._metrics(lambda y: restore_image(y, bic, RestoreSettings(mode="bicubic")))
        self.cache: dict = {}

    def _metrics(self, fn) -> tuple[float, float]:
        from indigo_core.metrics import psnr

        ps, ls = [], []
        for _, x, y in self.data:
            r = fn(y)
            ps.append(float(psnr(r, x)))
            ls.append(float(self.lpips(r, x)))
        return sum(ps) / len(ps), sum(ls) / len(ls)

    def __call__(self, s) -> tuple[float, float, float]:
        key = dataclasses.astuple(s)
        if key not in self.cache:
            p, lp = self._metrics(lambda y: self.restore(y, self.models, s))
            dp, dl = p - self.base[0], lp - self.base[1]
            self.cache[key] = (min((dp - 0.5) / 0.5, (-dl - 0.05) / 0.05), p, lp)
        return self.cache[key]


def main(argv=None) -> int:
    from indigo_core.metrics import load_lpips
    from indigo_core.restore.pipeline import default_settings

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=sorted(SEARCH), required=True)
    ap.add_argument("--photos", type=int, default=6, help="how many training photos")
    ap.add_argument("--photo-dir", type=photo_folder, default=str(DEFAULT_PHOTOS))
    ap.add_argument("--crop", type=int, default=256, help="centre crop side (a multiple of 32)")
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=None, help="search only these fields")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "tune")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--inn", help="INN file (default: the bundled one)")
    ap.add_argument("--prior-vae", help="prior autoencoder file (default: the bundled one)")
    ap.add_argument("--prior-unet", help="prior UNet file (default: the bundled one)")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier search's <mode>.csv in --out")
    args = ap.parse_args(argv)
    log = args.out / f"{args.mode}.csv"
    refuse_existing([log, part_path(log)], args.overwrite)
    if args.threads:
        torch.set_num_threads(args.threads)

    data = load_set(args.photo_dir, args.photos, args.crop)
    print(f"tuning {args.mode} on {len(data)} training photos: {[d[0] for d in data]}", flush=True)
    files = {"inn": args.inn, "prior_vae": args.prior_vae, "prior_unet": args.prior_unet}
    scorer = Scorer(data, args.mode, load_lpips("alex"), files)
    print(f"bicubic: PSNR {scorer.base[0]:.2f} dB, LPIPS {scorer.base[1]:.4f}", flush=True)
    best = default_settings(args.mode)
    with partial_file(log, newline="") as f:
        w = csv.writer(f)
        w.writerow(["pass", "field", "value", "score", "psnr", "lpips", "d_psnr", "d_lpips", "seconds", "settings"])
        best_score = scorer(best)
        for p in range(args.passes):
            for field, values in SEARCH[args.mode].items():
                if args.only and field not in args.only:
                    continue
                for v in values:
                    cand = dataclasses.replace(best, **{field: v})
                    t0 = time.perf_counter()
                    score = scorer(cand)
                    dt = time.perf_counter() - t0
                    w.writerow([p, field, v, f"{score[0]:.4f}", f"{score[1]:.3f}", f"{score[2]:.4f}",
                                f"{score[1] - scorer.base[0]:+.3f}", f"{score[2] - scorer.base[1]:+.4f}", f"{dt:.1f}",
                                repr(cand)])
                    f.flush()
                    print(f"pass {p} {field}={v}: PSNR {score[1] - scorer.base[0]:+.2f} dB, LPIPS "
                          f"{score[2] - scorer.base[1]:+.4f}, score {score[0]:+.3f} ({dt:.0f} s)", flush=True)
                    if (score[0], score[1]) > (best_score[0], best_score[1]):
                        best, best_score = cand, score
                print(f"  -> {field} = {getattr(best, field)}", flush=True)
    print(f"best: {best}\n  PSNR {best_score[1]:.2f} dB ({best_score[1] - scorer.base[0]:+.2f}), LPIPS "
          f"{best_score[2]:.4f} ({best_score[2] - scorer.base[1]:+.4f}), score {best_score[0]:+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
