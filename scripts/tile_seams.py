"""How far tiled VAE decoding is from decoding whole, per blending window.

    .venv/bin/python scripts/tile_seams.py [--photos 3] [--size 384] [--tile 16] [--overlap 8]

Encodes validation photos (photo_crops.py: the prior's split) with the bundled prior's autoencoder,
decodes each latent whole and tile by tile (`tiled_apply`, tile/overlap in latent pixels) with the
Gaussian window of the given widths and with the feathered window the VAE tiles use, and prints
the largest and mean absolute difference and the PSNR of the tiled against the whole decode.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photo_crops import DEFAULT_PHOTOS, REPO_ROOT, centre_crop, split, photo_folder  # noqa: E402


def main(argv=None) -> int:
    import torch

    from indigo_core.guidance import tiled_apply
    from indigo_core.prior.weights import load_autoencoder

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=3)
    ap.add_argument("--photo-dir", type=photo_folder, default=str(DEFAULT_PHOTOS))
    ap.add_argument("--size", type=int, default=384, help="crop size in pixels (a multiple of 8)")
    ap.add_argument("--tile", type=int, default=16)
    ap.add_argument("--overlap", type=int, default=8)
    ap.add_argument("--sigmas", type=float, nargs="*", default=[0.25, 0.15])
    args = ap.parse_args(argv)
    ae = load_autoencoder(REPO_ROOT / "models" / "prior" / "indigo-prior-vae.safetensors").eval()
    windows = [(f"gaussian {s}", dict(sigma_fraction=s)) for s in args.sigmas] + [("feather", dict(window="feather"))]
    stats = {name: [] for name, _ in windows}
    import numpy as np

    with torch.no_grad():
        for path in split(args.photo_dir)[1][:args.photos]:
            x = torch.from_numpy(np.array(centre_crop(path, args.size))).permute(2, 0, 1)[None].float() / 255
            z = ae.encode(x)
            whole = ae.decode(z).clamp(0, 1)
            for name, kw in windows:
                tiled = tiled_apply(lambda t, _r: ae.decode(t), z, args.tile, args.overlap, out_scale=ae.downscale,
                                    **kw).clamp(0, 1)
                d = (tiled - whole).abs()
                mse = float(d.pow(2).mean())
                stats[name].append((float(d.max()), float(d.mean()), 10 * torch.log10(torch.tensor(1 / max(mse, 1e-30)))))
    print(f"{args.photos} validation photos, {args.size}px, tile {args.tile} / overlap {args.overlap} latent pixels")
    print("window | max abs diff | mean abs diff | PSNR vs whole (dB)")
    print("--- | --- | --- | ---")
    for name, rows in stats.items():
        print(f"{name} | {max(r[0] for r in rows):.4f} | {sum(r[1] for r in rows) / len(rows):.6f} | "
              f"{min(float(r[2]) for r in rows):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
