"""What the INN guidance adds in PSNR over the same run without it, across colour fixes and denoise.

    .venv/bin/python scripts/guidance_margin.py [--photos 6] [--out runs/margin] [--no-pixel] [--overwrite]

On N training photos (as tune_guidance.py: x4 medium, 256x256 centre crops, seed = photo index)
every (colour fix, denoise) pair runs three times from the same start E(R(y)) and seed, with the
restore CLI's other defaults: "unguided" (no guidance), LatentINN and PixelINN. Printed and written
to <out>/margin.csv and <out>/margin.md: PSNR and LPIPS of each, the guided runs' margin over the
unguided one, and their margin over bicubic. A colour fix of L levels takes the frequencies below
about 2^L pixels from R(y), for the guided and the unguided run alike: the fewer the levels, the
more of the measured band it hands to both, so the guidance has less PSNR left to add.
An earlier run's margin.csv or margin.md in <out> is refused before any work unless --overwrite.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photo_crops import DEFAULT_PHOTOS, REPO_ROOT, photo_folder  # noqa: E402
from output_files import refuse_existing, write_text  # noqa: E402
from tune_guidance import Scorer, load_set  # noqa: E402

FIXES = ["none", "wavelet-5", "wavelet-4", "wavelet-3"]
DENOISE = [0.3, 0.5, 0.7, 1.0]


def fix_fields(fix: str) -> dict:
    """'none', 'adain' or 'wavelet-L' -> RestoreSettings fields; ValueError otherwise."""
    if fix in ("none", "adain"):
        return {"colour_fix": fix}
    kind, _, levels = fix.partition("-")
    if kind != "wavelet" or not levels.isdigit():
        raise ValueError(fix)
    return {"colour_fix": kind, "colour_levels": int(levels)}


def _number_or_text(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def main(argv=None) -> int:
    import torch

    from indigo_core.metrics import load_lpips
    from indigo_core.restore.pipeline import RestoreSettings, default_settings

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=6, help="how many training photos")
    ap.add_argument("--photo-dir", type=photo_folder, default=str(DEFAULT_PHOTOS))
    ap.add_argument("--fixes", nargs="*", default=FIXES, help="'none', 'adain' or 'wavelet-L' (L levels)")
    ap.add_argument("--denoise", nargs="*", type=float, default=DENOISE)
    ap.add_argument("--no-pixel", action="store_true", help="skip the PixelINN runs (the slow ones)")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="override a RestoreSettings field for every run (e.g. w_p=0 step_size=0.5)")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "margin")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an earlier run's margin.csv and margin.md in --out")
    args = ap.parse_args(argv)
    for fix in args.fixes:
        try:
            fix_fields(fix)
        except ValueError:
            ap.error(f"--fixes: expected 'none', 'adain' or 'wavelet-L', got {fix!r}")
    overrides = {}
    for item in args.set:
        field, _, value = item.partition("=")
        if field not in {f.name for f in dataclasses.fields(RestoreSettings)} or not value:
            ap.error(f"--set: expected FIELD=VALUE with a RestoreSettings field, got {item!r}")
        overrides[field] = _number_or_text(value)
    outputs = [args.out / "margin.csv", args.out / "margin.md"]
    refuse_existing(outputs, args.overwrite)
    torch.set_num_threads(args.threads)

    data = load_set(args.photo_dir, args.photos)
    lpips = load_lpips("alex")
    modes = ["latent"] + ([] if args.no_pixel else ["pixel"])
    scorers = {m: Scorer(data, m, lpips, {"inn": None, "prior_vae": None, "prior_unet": None}) for m in modes}
    bic_psnr, bic_lpips = scorers["latent"].base
    print(f"{len(data)} training photos {[d[0] for d in data]}; bicubic {bic_psnr:.2f} dB, LPIPS {bic_lpips:.4f}",
          flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    head = ["colour fix", "denoise", "unguided PSNR", "unguided LPIPS"]
    for m in modes:
        head += [f"{m} PSNR", f"{m} LPIPS", f"{m} - unguided dB", f"{m} - bicubic dB"]
    rows = []
    for fix in args.fixes:
        for dn in args.denoise:
            t0 = time.perf_counter()
            lat = default_settings("latent", denoise=dn, **fix_fields(fix), **overrides)
            _, pu, lu = scorers["latent"](dataclasses.replace(lat, mode="unguided"))
            row = [fix, f"{dn:g}", f"{pu:.2f}", f"{lu:.4f}"]
            for m in modes:
                _, p, lp = scorers[m](default_settings(m, denoise=dn, **fix_fields(fix), **overrides))
                row += [f"{p:.2f}", f"{lp:.4f}", f"{p - pu:+.2f}", f"{p - bic_psnr:+.2f}"]
            rows.append(row)
            print(" | ".join(row) + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    table = io.StringIO(newline="")
    csv.writer(table).writerows([head] + rows)
    write_text(outputs[0], table.getvalue())
    md = [f"{len(data)} training photos, x4 medium, 256x256; overrides {overrides or 'none'}; bicubic {bic_psnr:.2f} dB / LPIPS {bic_lpips:.4f}", "",
          " | ".join(head), " | ".join("---" for _ in head)] + [" | ".join(r) for r in rows]
    write_text(outputs[1], "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
