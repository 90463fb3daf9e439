"""Shared set-up of the training tests: 8 small real-photo crops and tiny run settings.

Sizes are chosen for a shared 2-core CPU: 48x48 crops on disk, 32x32 training crops, an INN with
one MRSTB of width 16 per predict/update module, one torch thread per process.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
PHOTOS = REPO_ROOT.parent / "shared" / "data" / "photos"

TINY_INN = ["--inn-set", "hidden=16", "--inn-set", "n_mrstb=1", "--inn-set", "heads=2", "--inn-set", "window=4"]
# Blur-only degradations (sigma 1-3, x4, bicubic): noise and JPEG put a floor under the forward
# loss that 50 steps cannot approach, so they are left out of the "loss halves" runs.
LEARNABLE_DEGRADATION = ["--blur-sigma", "1", "3", "--noise", "0", "0", "--jpeg-prob", "0"]
QUIET = ["--no-progress", "--threads", "1", "--log-every", "1"]


def make_crops(folder: Path, n: int = 8, size: int = 48) -> Path:
    """Save `n` centre crops (size x size) of every 17th photo as PNGs in `folder`."""
    from PIL import Image

    files = sorted(PHOTOS.glob("*.png"))
    assert len(files) >= n * 17 // 2, f"expected the shared photos in {PHOTOS}"
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files[::17][:n]):
        with Image.open(f) as im:
            im = im.convert("RGB")
            w, h = im.size
            im.crop((w // 2 - size // 2, h // 2 - size // 2, w // 2 + size // 2, h // 2 + size // 2)).save(
                folder / f"crop{i}.png")
    return folder


def losses(out: Path, column: str = "loss") -> list[float]:
    from indigo_core.train.loop import read_csv

    return [float(r[column]) for r in read_csv(out / "train_log.csv")]


def halving_ratio(values: Sequence[float], window: int = 5) -> float:
    """mean of the last `window` logged losses / mean of the first `window`."""
    first = sum(values[:window]) / window
    last = sum(values[-window:]) / window
    assert math.isfinite(first) and math.isfinite(last)
    return last / first


def max_weight_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    return max(float((ta[k].double() - tb[k].double()).abs().max()) for k in ta)


def make_test_vae(path: Path, crops: Path) -> Path:
    """A small random-weight SD-architecture autoencoder (x8, 4 latent channels), its latents
    normalised on the crops to SD's latent scale (std 1/0.18215, as the pack's own VAE and SD's
    raw latents have), saved in the pack's autoencoder format."""
    from PIL import Image

    from indigo_core.prior.autoencoder import AutoencoderConfig, AutoencoderKL
    from indigo_core.prior.weights import save_autoencoder

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        ae = AutoencoderKL(AutoencoderConfig(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1))
    finally:
        torch.random.set_rng_state(gen_state)
    xs = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB")).copy()).permute(2, 0, 1)
                      for f in sorted(crops.glob("*.png"))]).float() / 255.0
    with torch.no_grad():
        z = ae.encode(xs[:, :, :32, :32])
        ae.normalise_latents(z.mean((0, 2, 3)).tolist(), z.std((0, 2, 3)).tolist())
    save_autoencoder(ae, path, dtype=None, overwrite=True)
    return path
