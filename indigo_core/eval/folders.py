"""Image folders of an evaluation: listing, matching results to ground truths, loading.

Files match by name without extension (a result `0001.png` matches a ground truth `0001.jpg`).
Every problem is a DatasetError naming the folder and the files concerned.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError

__all__ = ["IMAGE_EXTENSIONS", "list_images", "match_folders", "load_image", "image_size"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

log = logging.getLogger("indigo_core.eval")

_ORIENTATION = 0x0112  # the EXIF orientation tag

# Pillow has no 16-bit colour mode: it decodes 16-bit-per-channel RGB(A) PNGs and TIFFs to 8-bit
# RGB, keeping the high byte of each sample. Such files are read at 8 bits, with a warning.
_warned_8bit: set[str] = set()


def _few(names, n: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f" (and {len(names) - n} more)" if len(names) > n else "")


def list_images(folder: str | Path, role: str = "folder") -> dict[str, Path]:
    """{stem: path} of the images directly in `folder` (not recursive)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{role} {folder}: not a folder")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            if p.stem in found:
                raise DatasetError(f"{role} {folder}: two images share the name {p.stem!r}: {found[p.stem].name}, {p.name}")
            found[p.stem] = p
    if not found:
        raise DatasetError(f"{role} {folder}: empty (no {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} images)")
    return found


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            # shown turned by a quarter (EXIF orientations 5-8), as load_image reads it
            return (h, w) if im.getexif().get(_ORIENTATION) in (5, 6, 7, 8) else (w, h)
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from exc


def match_folders(gt: str | Path, results: dict[str, str | Path], inputs: str | Path | None = None
                  ) -> tuple[list[str], dict[str, Path], dict[str, dict[str, Path]], dict[str, Path] | None]:
    """Check that every results folder holds exactly the ground truths' names at the same sizes.

    Returns (sorted names, gt {name: path}, {method: {name: path}}, inputs {name: path} or None).
    Input (degraded) images may be smaller than the ground truths but must cover every name."""
    gt_files = list_images(gt, "ground-truth folder")
    res_files: dict[str, dict[str, Path]] = {}
    for method, folder in results.items():
        files = list_images(folder, f"results folder {method!r}")
        missing = set(gt_files) - set(files)
        extra = set(files) - set(gt_files)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} ground-truth names: {_few(missing)}")
            if extra:
                parts.append(f"{len(extra)} names not among the ground truths: {_few(extra)}")
            raise DatasetError(f"results folder {method!r} ({folder}) does not match the ground truths ({gt}): "
                               + "; ".join(parts))
        res_files[method] = files
    sizes = {name: image_size(p) for name, p in gt_files.items()}
    for method, files in res_files.items():
        bad = []
        for name, p in files.items():
            got = image_size(p)
            if got != sizes[name]:
                bad.append(f"{p.name} is {got[0]}x{got[1]}, ground truth {gt_files[name].name} is "
                           f"{sizes[name][0]}x{sizes[name][1]}")
        if bad:
            raise DatasetError(f"results folder {method!r}: {len(bad)} image(s) differ in size from the ground "
                               f"truth: " + "; ".join(sorted(bad)[:5]))
    in_files = None
    if inputs is not None:
        in_files = list_images(inputs, "input folder")
        missing = set(gt_files) - set(in_files)
        if missing:
            raise DatasetError(f"input folder {inputs}: missing {len(missing)} ground-truth names: {_few(missing)}")
    return sorted(gt_files), gt_files, res_files, in_files


def _is_wide_colour(im) -> bool:
    """Whether Pillow reads `im` (a colour image) from 16 bits per sample (its raw decoder mode)."""
    for tile in im.tile or []:
        args = tile[3]
        mode = args[0] if isinstance(args, tuple) and args else args
        if isinstance(mode, str) and ";16" in mode:
            return True
    return False


def load_image(path: Path) -> torch.Tensor:
    """(1,3,H,W) float32 RGB in [0,1] (grey and RGBA images are converted; alpha dropped), turned
    as its EXIF orientation says. 16-bit grey images are scaled from 0..65535; 16-bit colour images are read at 8 bits per channel
    (Pillow keeps the high byte), with a warning."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            wide = _is_wide_colour(im)  # (read from the file's decoder before any copy)
            im = ImageOps.exif_transpose(im)  # as the image is shown (and as ComfyUI's Load Image reads it)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64) / 65535.0
                arr = np.repeat(arr[..., None], 3, axis=-1)
                return torch.from_numpy(arr).permute(2, 0, 1)[None].float().clamp(0, 1)
            if wide and str(Path(path).parent) not in _warned_8bit:
                _warned_8bit.add(str(Path(path).parent))
                log.warning("%s: a 16-bit-per-channel colour image, read at 8 bits per channel (the low byte is "
                            "lost: the PSNR of near-lossless results comes out low); so are the other such files "
                            "in %s. Convert them to 8 bits (or to 16-bit grey) to score them exactly.",
                            path, Path(path).parent)
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255.0
