"""How much PSNR the INN's data consistency can hold beyond the stage-1 restorer: the INN inverse
given the measurement and the details of a chosen image.

    .venv/bin/python scripts/guidance_ceiling.py [--part val] [--photos 14] [--no-pixel]

For each photo (photo_crops.py's split, 256x256 centre crops, x4 medium preset, seed = photo
index) and each detail source s, the data-consistent reconstruction the guidance pulls towards:
    LatentINN: D(g^-1(z_y, g_d(E(s)))), z_y = E(up(y))      (Algorithm 2's target)
    PixelINN:  g^-1(y, g_d(s))                              (Algorithm 1's back-projection)
with s = the ground truth x (an oracle: what a prior with perfect details would reach), R(y) (the
stage-1 restorer's output), up(y) (bicubic) and zero details. Printed next to bicubic, R(y) and
D(E(R(y))) as a markdown table of mean PSNR / LPIPS (LPIPS when its weights are found).

The guidance can only lift the sampled result above R(y) if the INN, given the details the prior
makes, reconstructs better than R(y) does; the row "details of R(y)" shows what it does with the
stage-1 image's own details.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photo_crops import DEFAULT_PHOTOS, photo_folder  # noqa: E402
from tune_guidance import load_set  # noqa: E402


def _targets(models, y, x, up, r) -> dict:
    """{label: image} of the INN's data-consistent reconstructions for each detail source."""
    from indigo_core.restore.pipeline import _degradation, _inn_zero

    inn, gamma = models.inn, _degradation(models, y)
    out = {}
    if inn.config.domain == "latent":
        ae = models.autoencoder
        z_y = ae.encode(up)
        for label, z in {"x (oracle)": ae.encode(x), "R(y)": ae.encode(r), "up(y)": z_y}.items():
            _, details = inn(z, gamma)
            out[f"details of {label}"] = ae.decode(inn.inverse(z_y, details, gamma))
    else:
        for label, s in {"x (oracle)": x, "R(y)": r, "up(y)": up}.items():
            _, details = inn(s, gamma)
            out[f"details of {label}"] = inn.inverse(y, details, gamma)
    out["zero details"] = _inn_zero(y, up, models)  # the restore CLI's latent-inn-zero / pixel-inn-zero
    return out


def main(argv=None) -> int:
    import torch

    from indigo_core.guidance.latent_inn import upsample_measurement
    from indigo_core.metrics import load_lpips, psnr
    from indigo_core.restore.pipeline import load_models

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("val", "train"), default="val", help="which photos of the split")
    ap.add_argument("--photos", type=int, default=14, help="how many photos")
    ap.add_argument("--photo-dir", type=photo_folder, default=str(DEFAULT_PHOTOS))
    ap.add_argument("--no-pixel", action="store_true", help="LatentINN only")
    ap.add_argument("--no-lpips", action="store_true", help="PSNR only")
    args = ap.parse_args(argv)
    data = load_set(args.photo_dir, args.photos, part=args.part)
    lpips = None
    if not args.no_lpips:
        try:
            lpips = load_lpips()
        except Exception as exc:  # weights not found: PSNR only, said so
            print(f"LPIPS off: {exc}")
    modes = ["latent"] + ([] if args.no_pixel else ["pixel"])
    models = {mode: load_models(mode) for mode in modes}
    rows: dict[str, list[tuple[float, float]]] = {}

    def score(label: str, image, x) -> None:
        image = image.float().clamp(0.0, 1.0)
        p = float(psnr(image, x))
        lp = float(lpips(image, x).mean()) if lpips is not None else float("nan")
        rows.setdefault(label, []).append((p, lp))

    with torch.no_grad():
        for _name, x, y in data:
            x, y = x.float(), y.float()
            up = upsample_measurement(y, x.shape[-2:])
            base = models["latent"]
            r = base.restorer.restore(y)
            score("bicubic up(y)", up, x)
            score("stage-1 restorer R(y)", r, x)
            score("D(E(R(y)))", base.autoencoder.decode(base.autoencoder.encode(r)), x)
            for mode in modes:
                name = "LatentINN" if mode == "latent" else "PixelINN"
                for label, image in _targets(models[mode], y, x, up, r).items():
                    score(f"{name}, {label}", image, x)
    print(f"{len(data)} {args.part} photos, x4 medium, 256x256 crops: mean PSNR (dB) / LPIPS")
    print("reconstruction | PSNR dB | LPIPS")
    print("--- | --- | ---")
    for label, values in rows.items():
        p = sum(v[0] for v in values) / len(values)
        lp = sum(v[1] for v in values) / len(values)
        print(f"{label} | {p:.2f} | {lp:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
