"""Acceptance measurement of the bundled models, in one command:

    .venv/bin/python scripts/measure_defaults.py [--out runs/measure] [--overwrite]

1. the prior's validation photos (scripts/photo_crops.py: the same split as every bundled model),
   256x256 centre crops -> <out>/gt/;
2. the evaluation CLI (`python -m indigo_core.eval`) degrades them with the x4 **medium** preset
   (seed 0) and runs the restore CLI (`python -m indigo_core.restore`) once per method, all with
   the bundled models and the CLI's default settings (the same seed):
       bicubic; stage-1 restorer (R(y) alone); autoencoded (D(E(r)), r the stage-1 image: the
       autoencoder's own loss); unguided-raw (the prior alone from E(r), no colour fix);
       unguided-sdedit (the prior alone from E(up(y)): SDEdit from the upsampled measurement, no
       stage 1, no colour fix); unguided
       (the same run with the same colour fix as the guided modes: everything but the guidance);
       LatentINN; PixelINN; LatentINN-raw / PixelINN-raw (the guided runs without the colour fix);
       unguided-pixel / unguided-pixel-raw (as unguided, PixelINN's sampling settings; only if
       they differ),
       LatentINN-inv0 / PixelINN-inv0 (the INN inverse with zero details);
3. means over the split, differences and the acceptance checks -> <out>/acceptance.md (printed).
The evaluation's own outputs (results.csv, table.md, grid.png) are in <out>/eval/medium/. An
earlier measurement in <out> is refused before any work unless --overwrite (the crops in <out>/gt/
are kept and reused).
"""

from __future__ import annotations

import argparse
import csv
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photo_crops import DEFAULT_PHOTOS, REPO_ROOT, split, write_crops, photo_folder  # noqa: E402
from output_files import refuse_existing, write_text  # noqa: E402

TARGET_PSNR, TARGET_LPIPS = 0.5, 0.05
#: What this script calls "a wide margin" over unguided sampling (dB PSNR).
WIDE_MARGIN = 0.5


#: One torch thread per restore process: on a small shared CPU, several threads of one process
#: wait for each other and run many times slower (results match up to float rounding).
THREADS = "--threads 1"


def restore_command(mode: str, extra: str = "") -> str:
    return (f"{shlex.quote(sys.executable)} -m indigo_core.restore {{input}} --out {{output}} --mode {mode} "
            f"--no-progress {THREADS} {extra}").strip()


def methods() -> dict[str, str]:
    from indigo_core.restore.pipeline import default_settings

    lat, pix = default_settings("latent"), default_settings("pixel")
    out = {
        "bicubic": restore_command("bicubic"),
        "stage-1 restorer": restore_command("restorer"),
        "autoencoded": restore_command("autoencoded"),
        "unguided-raw": restore_command("unguided", "--colour-fix none"),
        "unguided-sdedit": restore_command("unguided", "--stage1 bicubic --colour-fix none"),
        "unguided": restore_command("unguided"),
        "LatentINN": restore_command("latent"),
        "PixelINN": restore_command("pixel"),
        "LatentINN-raw": restore_command("latent", "--colour-fix none"),
        "PixelINN-raw": restore_command("pixel", "--colour-fix none"),
    }
    if (pix.steps, pix.denoise, pix.sampler, pix.scheduler) != (lat.steps, lat.denoise, lat.sampler, lat.scheduler):
        sampling = f"--steps {pix.steps} --denoise {pix.denoise} --sampler {pix.sampler} --scheduler {pix.scheduler}"
        out["unguided-pixel"] = restore_command("unguided", sampling)
        out["unguided-pixel-raw"] = restore_command("unguided", f"{sampling} --colour-fix none")
    out["LatentINN-inv0"] = restore_command("latent-inn-zero")
    out["PixelINN-inv0"] = restore_command("pixel-inn-zero")
    return out


def means(results_csv: Path) -> dict[str, dict[str, float]]:
    """{method: {metric: mean over the images}} from the evaluation's results.csv."""
    sums: dict[str, dict[str, list[float]]] = {}
    with open(results_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("file") in ("*", "") or row.get("method") is None:
                continue
            for k in ("psnr", "ssim", "lpips"):
                v = row.get(k)
                if v not in (None, "", "nan"):
                    sums.setdefault(row["method"], {}).setdefault(k, []).append(float(v))
    return {m: {k: sum(v) / len(v) for k, v in d.items()} for m, d in sums.items()}


def acceptance(m: dict[str, dict[str, float]], n: int) -> str:
    b = m["bicubic"]
    lines = [f"x4 medium preset, {n} validation photos (256x256 centre crops), means; bundled models, "
             "restore CLI defaults, seed 0", "",
             "method | PSNR dB | SSIM | LPIPS | PSNR vs bicubic | LPIPS vs bicubic", "--- | --- | --- | --- | --- | ---"]
    for name, v in m.items():
        lines.append(f"{name} | {v['psnr']:.2f} | {v['ssim']:.4f} | {v['lpips']:.4f} | "
                     f"{v['psnr'] - b['psnr']:+.2f} | {v['lpips'] - b['lpips']:+.4f}")
    lines += ["", "check | result", "--- | ---"]
    for guided, unguided, inv0 in (("LatentINN", "unguided", "LatentINN-inv0"),
                                   ("PixelINN", "unguided-pixel" if "unguided-pixel" in m else "unguided",
                                    "PixelINN-inv0")):
        g = m[guided]
        dp, dl = g["psnr"] - b["psnr"], g["lpips"] - b["lpips"]
        ok = dp >= TARGET_PSNR and dl <= -TARGET_LPIPS
        lines.append(f"{guided} vs bicubic: {dp:+.2f} dB, LPIPS {dl:+.4f} (target +{TARGET_PSNR} dB and "
                     f"-{TARGET_LPIPS}) | {'PASS' if ok else 'FAIL'}")
        for base, what in ((unguided, "same prior, seed, steps and colour fix"),
                           ("unguided-raw", "the prior alone from the stage-1 image, no colour fix"),
                           ("unguided-sdedit", "the prior alone from up(y): SDEdit, no INN, no colour fix")):
            if base not in m:
                continue
            du = g["psnr"] - m[base]["psnr"]
            lines.append(f"{guided} vs {base} ({what}): {du:+.2f} dB, LPIPS {g['lpips'] - m[base]['lpips']:+.4f} "
                         f"(target +{WIDE_MARGIN} dB) | {'PASS' if du >= WIDE_MARGIN else 'FAIL'}")
        raw, base_raw = f"{guided}-raw", ("unguided-pixel-raw" if guided == "PixelINN" and "unguided-pixel-raw" in m
                                          else "unguided-raw")
        if raw in m and base_raw in m:
            du = m[raw]["psnr"] - m[base_raw]["psnr"]
            lines.append(f"{raw} vs {base_raw} (the INN guidance alone: neither colour-fixed): {du:+.2f} dB, LPIPS "
                         f"{m[raw]['lpips'] - m[base_raw]['lpips']:+.4f} (target +{WIDE_MARGIN} dB) | "
                         f"{'PASS' if du >= WIDE_MARGIN else 'FAIL'}")
        di = g["lpips"] - m[inv0]["lpips"]
        lines.append(f"{guided} vs {inv0} on LPIPS: {di:+.4f} (PSNR {g['psnr'] - m[inv0]['psnr']:+.2f} dB) | "
                     f"{'PASS' if di < 0 else 'FAIL'}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photo-dir", "--photos", dest="photos", type=photo_folder, default=str(DEFAULT_PHOTOS),
                    help="the project's photo folder (--photos is the older name)")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "measure")
    ap.add_argument("--overwrite", action="store_true", help="replace a previous measurement in --out")
    args = ap.parse_args(argv)
    refuse_existing([args.out / "acceptance.md"], args.overwrite)  # the evaluation refuses its own outputs

    _, val = split(args.photos)
    gt = args.out / "gt"
    write_crops(val, gt)
    cmd = [sys.executable, "-m", "indigo_core.eval", "--gt", str(gt), "--level", "medium", "--make-inputs",
           "--seed", "0", "--out", str(args.out / "eval"), "--metrics", "psnr,ssim,lpips", "--restore"]
    cmd += [f"{name}={command}" for name, command in methods().items()]
    if args.overwrite:
        cmd.append("--overwrite")
    print("running:", " ".join(shlex.quote(c) for c in cmd), flush=True)
    proc = subprocess.run(cmd, cwd=REPO_ROOT)
    if proc.returncode != 0:
        return proc.returncode
    text = acceptance(means(args.out / "eval" / "medium" / "results.csv"), len(val))
    write_text(args.out / "acceptance.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
