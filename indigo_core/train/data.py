"""Training data: any folder of images, random crops and flips, sampled by global sample index.

Every random choice made for a training sample (which image, where to crop, which flips, and the
degradation drawn for it) is a pure function of (run seed, global sample index). The global sample
indices of optimisation step t are t*G ... t*G + G - 1 (G = global batch = per-rank batch x world
size); rank r takes the r-th slice of b = G / world consecutive indices. Hence:

* a run on N processes sees exactly the samples of a 1-process run with the same global batch;
* resuming at step t only needs t (no sampler or worker state to save);
* DataLoader workers may run in any order.

Images are visited epoch by epoch: epoch e = index // n_images walks a permutation of the images
drawn from (seed, e).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from ..errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
SMALL_IMAGE_MODES = ("skip", "resize", "error")
FLIP_MODES = ("none", "h", "hv")

# Independent random streams derived from the one run seed.
STREAM_ORDER = 1
STREAM_CROP = 2
STREAM_DEGRADE = 3
STREAM_VAL = 4
STREAM_POOL = 5


def derived_seed(seed: int, stream: int, index: int) -> int:
    """A well-mixed 63-bit seed for (run seed, stream, index); all ints >= 0."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32, stream, int(index)])
    return int(state.generate_state(2, np.uint64)[0] >> np.uint64(1))


def generator_for(seed: int, stream: int, index: int) -> torch.Generator:
    """A CPU torch.Generator seeded by :func:`derived_seed`."""
    g = torch.Generator()
    g.manual_seed(derived_seed(seed, stream, index))
    return g


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursive; png/jpg/jpeg/webp, any case), sorted by relative path.

    Raises DatasetError when the folder is missing or holds no image files. Hidden files and
    folders (names starting with ".") are ignored.
    """
    root = Path(folder)
    if not root.exists():
        raise DatasetError(f"image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise DatasetError(f"{str(root)!r} is not a folder; expected a folder of images")
    files = [
        p for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    if not files:
        raise DatasetError(
            f"image folder {str(root)!r} holds no images; expected files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)} (searched recursively)"
        )
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def split_files(files: Sequence[Path], root: str | Path, val_fraction: float = 0.0,
                val_count: Optional[int] = None) -> tuple[list[Path], list[Path]]:
    """Deterministic train/validation split by a hash of each file's relative path.

    The files whose SHA-1(relative path) sort first go to validation: `val_count` files if given,
    else round(val_fraction * n) (at least 1 when val_fraction > 0). The split depends on names
    only, so adding files moves few others. Returns (train, val), each in sorted order.
    """
    root = Path(root)
    n = len(files)
    if val_count is None:
        if not 0.0 <= val_fraction < 1.0:
            raise DatasetError(f"validation fraction must be in [0, 1), got {val_fraction}")
        val_count = 0 if val_fraction == 0 else max(1, round(val_fraction * n))
    if val_count < 0 or val_count >= n:
        raise DatasetError(f"cannot hold out {val_count} of {n} images for validation; "
                           f"at least one must remain for training")

    def key(p: Path) -> str:
        return hashlib.sha1(p.relative_to(root).as_posix().encode("utf-8")).hexdigest()

    val = set(sorted(files, key=key)[:val_count])
    ordered = sorted(files, key=lambda p: p.relative_to(root).as_posix())
    return [f for f in ordered if f not in val], [f for f in ordered if f in val]


def _read_rgb(path: Path) -> np.ndarray:
    """(H,W,3) uint8 RGB, EXIF orientation applied. Raises OSError/ValueError on bad files."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit greyscale: keep the 8 most significant bits rather than PIL's clipping.
            arr = np.asarray(im, dtype=np.uint32) >> 8
            return np.repeat(arr.astype(np.uint8)[..., None], 3, axis=2)
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _resize_short_side(img: np.ndarray, short: int) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    f = short / min(h, w)
    size = (max(short, round(w * f)), max(short, round(h * f)))
    return np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC), dtype=np.uint8).copy()


class ImageFolder:
    """The readable images of a folder (or a given file list) that can give `crop` x `crop` crops.

    small: what to do with images whose shorter side is below `crop`: "skip" (default, logged),
        "resize" (bicubic upscaling of the shorter side to `crop`; blurrier ground truth), or
        "error".
    cache: keep decoded images in memory (each DataLoader worker holds its own copy).
    Unreadable files are skipped with a warning; DatasetError if nothing usable remains.
    """

    def __init__(self, files: Sequence[Path], crop: int, small: str = "skip", cache: bool = False,
                 root: Optional[str | Path] = None) -> None:
        from PIL import Image, UnidentifiedImageError

        if small not in SMALL_IMAGE_MODES:
            raise DatasetError(f"small-image mode: expected one of {SMALL_IMAGE_MODES}, got {small!r}")
        if crop < 1:
            raise DatasetError(f"crop size must be >= 1, got {crop}")
        self.crop = crop
        self.small = small
        self.cache = cache
        self._cached: dict[int, np.ndarray] = {}
        where = str(root) if root is not None else "the given files"
        keep: list[Path] = []
        sizes: list[tuple[int, int]] = []
        bad: list[str] = []
        too_small: list[str] = []
        for path in files:
            try:
                with Image.open(path) as im:
                    w, h = im.size
                    if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                        w, h = h, w
            except (OSError, ValueError, UnidentifiedImageError) as exc:
                bad.append(f"{path.name} ({exc.__class__.__name__})")
                continue
            if min(h, w) < crop:
                if small == "error":
                    raise DatasetError(f"{path}: {w}x{h} is smaller than the {crop}x{crop} crop")
                if small == "skip":
                    too_small.append(f"{path.name} ({w}x{h})")
                    continue
            keep.append(path)
            sizes.append((h, w))
        if bad:
            log.warning("skipping %d unreadable file(s) in %s: %s", len(bad), where, ", ".join(bad[:10]))
        if too_small:
            log.warning("skipping %d image(s) smaller than the %dx%d crop in %s: %s (use a smaller "
                        "crop or --small-images resize)", len(too_small), crop, crop, where,
                        ", ".join(too_small[:10]))
        if not keep:
            detail = []
            if bad:
                detail.append(f"{len(bad)} unreadable ({', '.join(bad[:5])})")
            if too_small:
                detail.append(f"{len(too_small)} smaller than {crop}x{crop} ({', '.join(too_small[:5])})")
            raise DatasetError(f"no usable images in {where}: " + "; ".join(detail or ["no files"]))
        self.files = keep
        self.sizes = sizes

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int) -> np.ndarray:
        """Image i as (H,W,3) uint8, upscaled to the crop size when it is smaller and small == "resize"."""
        if i in self._cached:
            return self._cached[i]
        path = self.files[i]
        try:
            img = _read_rgb(path)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{path}: cannot be read during training ({exc})") from exc
        if min(img.shape[:2]) < self.crop:
            img = _resize_short_side(img, self.crop)
        if self.cache:
            self._cached[i] = img
        return img


def _epoch_order(seed: int, epoch: int, n: int) -> Tensor:
    return torch.randperm(n, generator=generator_for(seed, STREAM_ORDER, epoch))


def crop_and_flip(img: np.ndarray, crop: int, flips: str, g: torch.Generator) -> Tensor:
    """A random `crop` x `crop` window of img (H,W,3) uint8 with random flips -> (3,crop,crop) uint8."""
    h, w = img.shape[:2]
    top = int(torch.randint(0, h - crop + 1, (1,), generator=g))
    left = int(torch.randint(0, w - crop + 1, (1,), generator=g))
    t = torch.from_numpy(np.ascontiguousarray(img[top:top + crop, left:left + crop])).permute(2, 0, 1)
    coins = torch.rand(2, generator=g)  # drawn always, so the stream does not depend on `flips`
    if flips in ("h", "hv") and coins[0] < 0.5:
        t = t.flip(-1)
    if flips == "hv" and coins[1] < 0.5:
        t = t.flip(-2)
    return t.contiguous()


def center_crop(img: np.ndarray, crop: int) -> Tensor:
    """The central `crop` x `crop` window of img (H,W,3) uint8 -> (3,crop,crop) uint8."""
    h, w = img.shape[:2]
    top, left = (h - crop) // 2, (w - crop) // 2
    return torch.from_numpy(np.ascontiguousarray(img[top:top + crop, left:left + crop])).permute(2, 0, 1).contiguous()


Degrade = Callable[[Tensor, torch.Generator], tuple[Tensor, dict]]
"""degrade(x (1,3,H,W) float in [0,1], generator) -> (y (1,3,H/s,W/s) in [0,1], params dict of
floats). Must draw all its randomness from the generator."""


@dataclass
class Sample:
    """What the datasets return per index (collated by :func:`collate`)."""

    x: Tensor  # (3,crop,crop) float32 in [0,1]
    y: Tensor  # (3,crop/s,crop/s) float32 in [0,1]
    params: Tensor  # (P,) float32 degradation parameters (order: the task's param names)
    index: int


class TrainCrops(Dataset):
    """Dataset indexed by *global sample index* (unbounded): crop, flips and degradation of sample
    i depend only on (seed, i). `degrade` may be None (then y is an empty tensor)."""

    def __init__(self, images: ImageFolder, crop: int, seed: int, flips: str = "h",
                 degrade: Optional[Degrade] = None, param_names: Sequence[str] = ()) -> None:
        if flips not in FLIP_MODES:
            raise DatasetError(f"flips: expected one of {FLIP_MODES}, got {flips!r}")
        self.images = images
        self.crop = crop
        self.seed = seed
        self.flips = flips
        self.degrade = degrade
        self.param_names = tuple(param_names)

    def __len__(self) -> int:  # one epoch; indices beyond it are valid too
        return len(self.images)

    def image_index(self, index: int) -> int:
        n = len(self.images)
        return int(_epoch_order(self.seed, index // n, n)[index % n])

    def __getitem__(self, index: int) -> Sample:
        img = self.images.load(self.image_index(index))
        x8 = crop_and_flip(img, self.crop, self.flips, generator_for(self.seed, STREAM_CROP, index))
        x = x8.float().div_(255.0)
        return _degraded(x, self.degrade, self.param_names, generator_for(self.seed, STREAM_DEGRADE, index), index)


class ValCrops(Dataset):
    """Fixed validation samples: the centre crop of each image, degraded with a per-image fixed
    seed (stream STREAM_VAL), so every validation sees the same pairs."""

    def __init__(self, images: ImageFolder, crop: int, seed: int, degrade: Optional[Degrade] = None,
                 param_names: Sequence[str] = ()) -> None:
        self.images = images
        self.crop = crop
        self.seed = seed
        self.degrade = degrade
        self.param_names = tuple(param_names)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        x = center_crop(self.images.load(index), self.crop).float().div_(255.0)
        return _degraded(x, self.degrade, self.param_names, generator_for(self.seed, STREAM_VAL, index), index)


def _degraded(x: Tensor, degrade: Optional[Degrade], names: Sequence[str], g: torch.Generator,
              index: int) -> Sample:
    if degrade is None:
        return Sample(x=x, y=torch.empty(0), params=torch.empty(0), index=index)
    y, params = degrade(x.unsqueeze(0), g)
    vec = torch.tensor([float(params[k]) for k in names], dtype=torch.float32)
    return Sample(x=x, y=y.squeeze(0).float().contiguous(), params=vec, index=index)


def collate(samples: Sequence[Sample]) -> dict[str, Tensor]:
    """Stack samples -> {"x": (B,3,H,W), "y": (B,3,h,w), "params": (B,P), "index": (B,)}."""
    return {
        "x": torch.stack([s.x for s in samples]),
        "y": torch.stack([s.y for s in samples]),
        "params": torch.stack([s.params for s in samples]),
        "index": torch.tensor([s.index for s in samples], dtype=torch.long),
    }


class StepBatchSampler(Sampler[list[int]]):
    """Yields, for steps start_step .. total_steps-1, this rank's slice of each step's global batch:
    indices [t*G + rank*b, t*G + (rank+1)*b) with G = b * world."""

    def __init__(self, batch_per_rank: int, rank: int, world: int, start_step: int, total_steps: int) -> None:
        self.b = batch_per_rank
        self.rank = rank
        self.world = world
        self.start = start_step
        self.total = total_steps

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        g = self.b * self.world
        for t in range(self.start, self.total):
            base = t * g + self.rank * self.b
            yield list(range(base, base + self.b))


def shard(n: int, rank: int, world: int) -> list[int]:
    """Indices of n items this rank handles (strided: rank, rank+world, ...)."""
    return list(range(rank, n, world))


# ---------------------------------------------------------------------- degradations and splits
PARAM_NAMES = ("blur_sigma", "blur_sigma_y", "noise_level", "jpeg_quality")
"""Degradation parameters recorded per sample (estimator targets): sigma along each kernel axis
(equal for isotropic kernels), noise level on 0..255, JPEG quality (100 when the JPEG stage is
skipped)."""


class Degrader:
    """`degrade(x, g)` for the datasets: the paper's pipeline with parameters drawn from `ranges`
    (training) or a fixed preset such as "medium" (validation). Picklable for DataLoader workers."""

    def __init__(self, ranges=None, preset: Optional[str] = None, jpeg: str = "real") -> None:
        self.ranges = ranges
        self.preset = preset
        self.jpeg = jpeg

    def __call__(self, x: Tensor, g: torch.Generator) -> tuple[Tensor, dict]:
        from ..degradations import TRAINING_RANGES, degrade

        y, used = degrade(x, self.preset, generator=g, ranges=self.ranges or TRAINING_RANGES, jpeg=self.jpeg)
        p = used[0]
        return y, {
            "blur_sigma": float(p.blur_sigma),
            "blur_sigma_y": float(p.blur_sigma if p.blur_sigma_y is None else p.blur_sigma_y),
            "noise_level": float(p.noise_level),
            "jpeg_quality": float(100 if p.jpeg_quality is None else p.jpeg_quality),
        }

    def describe(self) -> dict:
        if self.preset is not None:
            from ..degradations import preset as get_preset

            return {"preset": self.preset, **get_preset(self.preset).to_dict()}
        from ..degradations import TRAINING_RANGES

        r = self.ranges or TRAINING_RANGES
        return {"ranges": dataclasses.asdict(r), "jpeg": self.jpeg}


@dataclass
class ImageSets:
    """Training and validation images of a run, and how they were chosen."""

    train: ImageFolder
    val: Optional[ImageFolder]
    root: Path
    split: str  # human-readable description for the model card

    def card(self) -> dict:
        return {
            "folder": str(self.root.resolve()),
            "train_images": len(self.train),
            "val_images": len(self.val) if self.val is not None else 0,
            "split": self.split,
            "val_files": [p.relative_to(self.root).as_posix() if p.is_relative_to(self.root) else str(p)
                          for p in (self.val.files if self.val is not None else [])],
        }

    def fingerprint(self) -> str:
        """SHA-1 of the training files' relative paths and sizes (resume check)."""
        h = hashlib.sha1()
        for p, (hh, ww) in zip(self.train.files, self.train.sizes):
            h.update(f"{p.relative_to(self.root).as_posix() if p.is_relative_to(self.root) else p}:{hh}x{ww};".encode())
        return h.hexdigest()


def build_image_sets(data: str | Path, crop: int, val_data: Optional[str | Path] = None,
                     val_fraction: float = 0.05, val_count: Optional[int] = None, small: str = "skip",
                     cache: bool = False, val_crop: Optional[int] = None) -> ImageSets:
    """Scan `data` (and `val_data`), hold out a deterministic validation split when no separate
    validation folder is given, and index the images usable at the crop sizes."""
    root = Path(data)
    files = list_images(root)
    if val_data is not None:
        train_files, val_files = files, list_images(val_data)
        split = f"validation folder {Path(val_data).resolve()}"
    else:
        if len(files) == 1 and (val_count or val_fraction):
            train_files, val_files = files, []
            split = "single image: no validation split"
        else:
            train_files, val_files = split_files(files, root, val_fraction, val_count)
            split = (f"{len(val_files)} of {len(files)} images held out for validation: the first by "
                     f"SHA-1 of the relative path")
    train = ImageFolder(train_files, crop, small, cache, root)
    val = None
    if val_files:
        try:
            val = ImageFolder(val_files, val_crop or crop, small, cache, val_data or root)
        except DatasetError as exc:
            if val_data is not None:
                raise
            log.warning("no validation: none of the %d held-out images is usable (%s)", len(val_files), exc)
            split += " (none usable: no validation)"
    return ImageSets(train=train, val=val, root=root, split=split)


def ranges_from_args(args, scale: int):
    """DegradationRanges from the CLI's --blur-sigma/--noise/--jpeg/... options at factor `scale`."""
    from ..degradations import DegradationRanges

    q = tuple(int(v) for v in args.jpeg)
    return DegradationRanges(
        blur_sigma=tuple(args.blur_sigma), noise_level=tuple(args.noise), jpeg_quality=q, scale=scale,
        anisotropic_prob=args.anisotropic_prob, jpeg_prob=args.jpeg_prob, resize_modes=tuple(args.resize_modes),
    )
