"""Fixed 256x256 crops of the project's photos for measurements (shared by measure_defaults.py and
tune_guidance.py).

The train/validation split is the prior's (`indigo_core.prior.data.photo_split`, 10 % held out by
the SHA-1 of the file names), so every model of the pack is measured on photos none of them saw.
A crop is the centre of the photo; a photo whose shorter side is under the crop size is first
enlarged (bicubic) so that its shorter side equals it.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = REPO_ROOT.parent / "shared" / "data" / "photos"
CROP = 256
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from output_files import save_image  # noqa: E402  (scripts/output_files.py, beside this file)


def photo_folder(value: str) -> Path:
    """argparse type of the photo-folder options: an existing folder (the default is checked too)."""
    import argparse

    path = Path(value)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(
            f"expected the project's photo folder, got {value!r}, which is not a folder (the default is "
            f"../shared/data/photos next to the pack folder; pass --photo-dir DIR)")
    return path


def split(photos: Path) -> tuple[list[Path], list[Path]]:
    """(train, validation) photo files, as the prior was trained."""
    from indigo_core.prior.data import VAL_FRACTION, photo_split

    return photo_split(photos, VAL_FRACTION)


def centre_crop(path: Path, size: int = CROP):
    """The size x size centre crop of an image file, as a PIL RGB image."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        if min(w, h) < size:
            f = size / min(w, h)
            im = im.resize((max(size, round(w * f)), max(size, round(h * f))), Image.BICUBIC)
            w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        return im.crop((left, top, left + size, top + size))


def write_crops(files: list[Path], folder: Path, size: int = CROP) -> list[Path]:
    """Save the centre crops of `files` as <folder>/<stem>.png (existing files are kept; each is
    written atomically, so an interrupted run leaves no half-written crop to be kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        target = folder / f"{f.stem}.png"
        if not target.exists():
            save_image(centre_crop(f, size), target)
        out.append(target)
    return out
