"""Photos for the prior's training: the split, images held in memory, random crops on the device.

The split is the training CLI's (`indigo_core.train.data.split_files`: the files whose SHA-1 of
the relative path sorts first are held out), so the prior and the INNs share validation photos.
The whole photo set is small (141 photos, ~42 M pixels), so every image is decoded once and kept
as a uint8 tensor on the training device; crops are slices of those, with no loader processes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..io.atomic import atomic_write_text
from ..errors import DatasetError
from ..train.data import list_images, split_files

log = logging.getLogger(__name__)

VAL_FRACTION = 0.1


def photo_split(folder: str | Path, val_fraction: float = VAL_FRACTION) -> tuple[list[Path], list[Path]]:
    """(train, val) files of an image folder, split deterministically by file name hash."""
    files = list_images(folder)
    return split_files(files, folder, val_fraction=val_fraction)


def split_record(folder: str | Path, train: Sequence[Path], val: Sequence[Path], val_fraction: float) -> dict:
    """A JSON-ready description of a split (rule, counts, the validation files)."""
    root = Path(folder)
    return {
        "rule": ("indigo_core.train.data.split_files: the files whose SHA-1 of the relative path "
                 f"(UTF-8, '/' separators) sorts first are held out; round({val_fraction} * n) of them"),
        "val_fraction": val_fraction,
        "n_train": len(train), "n_val": len(val),
        "val": [p.relative_to(root).as_posix() for p in val],
    }


def read_image(path: Path) -> Tensor:
    """(3,H,W) uint8 RGB of an image file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except OSError as exc:
        raise DatasetError(f"cannot read image {str(path)!r} ({exc})") from exc
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def resize_short_side(img: Tensor, short: int) -> Tensor:
    """Upscale (bicubic, PIL) a (3,H,W) uint8 image whose shorter side is below `short`."""
    from PIL import Image

    h, w = img.shape[-2:]
    if min(h, w) >= short:
        return img
    f = short / min(h, w)
    size = (max(short, round(w * f)), max(short, round(h * f)))
    pil = Image.fromarray(img.permute(1, 2, 0).numpy()).resize(size, Image.BICUBIC)
    return torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def load_images(files: Sequence[Path], min_side: int, device: torch.device | str = "cpu") -> list[Tensor]:
    """Decode every file to (3,H,W) uint8 on `device`; shorter sides below `min_side` are upscaled."""
    if not files:
        raise DatasetError("no images to load")
    out = []
    for f in files:
        img = read_image(f)
        if min(img.shape[-2:]) < min_side:
            log.info("%s: %dx%d upscaled to a shorter side of %d", f.name, img.shape[2], img.shape[1], min_side)
            img = resize_short_side(img, min_side)
        out.append(img.to(device))
    return out


def to_float(img: Tensor) -> Tensor:
    return img.float().div_(255.0)


class CropSampler:
    """Random `size` x `size` crops of in-memory images, with horizontal flips.

    Images are drawn with probability proportional to their area (so every pixel of the set is
    about equally likely to be seen); positions and flips from a seeded CPU generator.
    """

    def __init__(self, images: Sequence[Tensor], size: int, seed: int = 0, flip: bool = True):
        for i, img in enumerate(images):
            if min(img.shape[-2:]) < size:
                raise DatasetError(f"image {i} ({tuple(img.shape)}) is smaller than the crop {size}")
        self.images = list(images)
        self.size = size
        self.flip = flip
        area = torch.tensor([float(img.shape[-2] * img.shape[-1]) for img in images], dtype=torch.float64)
        self.weights = area / area.sum()
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, n: int) -> Tensor:
        """(n,C,size,size) crops, dtype of the images (uint8 images -> float in [0,1])."""
        idx = torch.multinomial(self.weights, n, replacement=True, generator=self.gen).tolist()
        u = torch.rand(n, 3, generator=self.gen).tolist()
        crops = []
        for i, (uy, ux, uf) in zip(idx, u):
            img = self.images[i]
            h, w = img.shape[-2:]
            y, x = int(uy * (h - self.size + 1)), int(ux * (w - self.size + 1))
            c = img[:, y:y + self.size, x:x + self.size]
            if self.flip and uf < 0.5:
                c = c.flip(-1)
            crops.append(c)
        batch = torch.stack(crops)
        return to_float(batch) if batch.dtype == torch.uint8 else batch


def center_crop(img: Tensor, size: int) -> Tensor:
    h, w = img.shape[-2:]
    y, x = (h - size) // 2, (w - size) // 2
    return img[..., y:y + size, x:x + size]


def crop_to_multiple(img: Tensor, m: int = 8) -> Tensor:
    h, w = img.shape[-2:]
    return img[..., : h - h % m, : w - w % m]


def rescale(img: Tensor, factor: float) -> Tensor:
    """Antialiased bicubic downscale of a (3,H,W) uint8 image (on its device)."""
    h, w = img.shape[-2:]
    size = (max(8, round(h * factor)), max(8, round(w * factor)))
    x = F.interpolate(img[None].float(), size=size, mode="bicubic", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)[0]


def write_json(path: Path, obj: dict) -> None:
    """`obj` as indented JSON, written whole or not at all."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def save_grid(images: Tensor, path: Path, nrow: Optional[int] = None) -> None:
    """Save (N,3,H,W) in [0,1] as one PNG grid (row-major, `nrow` per row)."""
    from PIL import Image

    n, c, h, w = images.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / nrow))
    grid = torch.ones(c, rows * h, nrow * w)
    for i in range(n):
        r, k = divmod(i, nrow)
        grid[:, r * h:(r + 1) * h, k * w:(k + 1) * w] = images[i].detach().float().cpu().clamp(0, 1)
    arr = (grid.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
