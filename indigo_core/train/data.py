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

Given pairs (--lq-data): each ground truth x (H,W) comes with its measurement y (H/s,W/s), matched
by relative path without extension. A crop of x starts at a multiple of s and y is cropped at the
same place /s, with the same flips, so the pair stays aligned; y is then read, not synthesised.
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

from ..errors import ConfigError, DatasetError
from ..io.digest import file_sha256

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


def list_images(folder: str | Path, exclude: Sequence[str | Path] = ()) -> list[Path]:
    """Image files under `folder` (recursive; png/jpg/jpeg/webp, any case), sorted by relative path.

    Raises DatasetError when the folder is missing or holds no image files. Hidden files and
    folders (names starting with ".") are ignored, and so are the folders of `exclude` that lie
    inside `folder` (the given pairs of a folder of ground truths). Symlinked files are listed;
    symlinked folders are not entered (logged).
    """
    root = Path(folder)
    if not root.exists():
        raise DatasetError(f"image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise DatasetError(f"{str(root)!r} is not a folder; expected a folder of images")
    inside = [rel.parts for rel in (_relative_to(Path(e), root) for e in exclude) if rel is not None and rel.parts]
    files, linked = [], []
    for p in root.rglob("*"):
        parts = p.relative_to(root).parts
        if any(part.startswith(".") for part in parts) or any(parts[:len(e)] == e for e in inside):
            continue
        if p.is_symlink() and p.is_dir():
            linked.append(p.relative_to(root).as_posix())
        elif p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(p)
    if linked:
        log.warning("%s: %d symlinked folder(s) not entered: %s", root, len(linked), ", ".join(sorted(linked)[:5]))
    if not files:
        raise DatasetError(
            f"image folder {str(root)!r} holds no images; expected files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)} (searched recursively"
            + "".join(f", leaving out {'/'.join(e)}/" for e in inside) + ")"
        )
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _relative_to(path: Path, root: Path) -> Optional[Path]:
    """`path` relative to `root` when it lies inside it (or is it), symlinks resolved; else None."""
    try:
        return path.resolve().relative_to(root.resolve())
    except ValueError:
        return None


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
        from PIL import UnidentifiedImageError

        if small not in SMALL_IMAGE_MODES:
            raise DatasetError(f"small-image mode: expected one of {SMALL_IMAGE_MODES}, got {small!r}")
        if crop < 1:
            raise DatasetError(f"crop size must be >= 1, got {crop}")
        self.crop = crop
        self.small = small
        self.cache = cache
        self._cached: dict[int, np.ndarray] = {}
        where = str(root) if root is not None else "the given files"
        self.lq: Optional[list[Path]] = None  # the given measurements, see `pair_with`
        self.lq_root: Optional[Path] = None
        self.scale = 1
        self._cached_lq: dict[int, np.ndarray] = {}
        keep: list[Path] = []
        sizes: list[tuple[int, int]] = []
        bad: list[str] = []
        too_small: list[str] = []
        for path in files:
            try:
                h, w = _image_size(path)
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
        return self._read(self.files[i], i, self._cached, self.crop)

    def pair_with(self, lq: Sequence[Path], lq_root: Path, scale: int) -> None:
        """Give image i the measurement lq[i] (its size already checked to be the image's / `scale`)."""
        self.lq, self.lq_root, self.scale = list(lq), Path(lq_root), scale

    def load_lq(self, i: int) -> np.ndarray:
        """The given measurement of image i as (H/s,W/s,3) uint8."""
        return self._read(self.lq[i], i, self._cached_lq, 0)

    def _read(self, path: Path, i: int, cached: dict[int, np.ndarray], short: int) -> np.ndarray:
        """`path` as (H,W,3) uint8, its shorter side upscaled to `short` when below; kept in `cached` with `cache`."""
        if i in cached:
            return cached[i]
        try:
            img = _read_rgb(path)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{path}: cannot be read during training ({exc})") from exc
        if min(img.shape[:2]) < short:
            img = _resize_short_side(img, short)
        if self.cache:
            cached[i] = img
        return img

    def lq_fingerprint(self) -> str:
        """SHA-1 of the given measurements' relative paths and contents (resume check): pairs of the
        same names and sizes made by another degradation are told apart."""
        h = hashlib.sha1()
        for p in self.lq or []:
            h.update(f"{p.relative_to(self.lq_root).as_posix()}:{file_sha256(p)};".encode())
        return h.hexdigest()


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file with its EXIF orientation applied, without decoding the pixels."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
            w, h = h, w
    return h, w


def _epoch_order(seed: int, epoch: int, n: int) -> Tensor:
    return torch.randperm(n, generator=generator_for(seed, STREAM_ORDER, epoch))


def _window(img: np.ndarray, top: int, left: int, crop: int) -> Tensor:
    """img[top:top+crop, left:left+crop] (H,W,3) uint8 -> (3,crop,crop) uint8."""
    return torch.from_numpy(np.ascontiguousarray(img[top:top + crop, left:left + crop])).permute(2, 0, 1)


def _flipped(t: Tensor, flips: str, coins: Tensor) -> Tensor:
    if flips in ("h", "hv") and coins[0] < 0.5:
        t = t.flip(-1)
    if flips == "hv" and coins[1] < 0.5:
        t = t.flip(-2)
    return t.contiguous()


def crop_and_flip(img: np.ndarray, crop: int, flips: str, g: torch.Generator,
                  lq: Optional[np.ndarray] = None, scale: int = 1) -> tuple[Tensor, Optional[Tensor]]:
    """A random `crop` x `crop` window of img (H,W,3) uint8 with random flips -> (3,crop,crop) uint8,
    and the same window of its measurement `lq` (H/s,W/s,3) -> (3,crop/s,crop/s) uint8 (None
    without one). With a measurement the window starts at a multiple of `scale`."""
    h, w = img.shape[:2]
    top = scale * int(torch.randint(0, (h - crop) // scale + 1, (1,), generator=g))
    left = scale * int(torch.randint(0, (w - crop) // scale + 1, (1,), generator=g))
    coins = torch.rand(2, generator=g)  # drawn always, so the stream does not depend on `flips`
    x = _flipped(_window(img, top, left, crop), flips, coins)
    if lq is None:
        return x, None
    return x, _flipped(_window(lq, top // scale, left // scale, crop // scale), flips, coins)


def center_crop(img: np.ndarray, crop: int, lq: Optional[np.ndarray] = None,
                scale: int = 1) -> tuple[Tensor, Optional[Tensor]]:
    """The central `crop` x `crop` window of img (H,W,3) uint8 -> (3,crop,crop) uint8, and the same
    window of its measurement `lq` (None without one), aligned as in :func:`crop_and_flip`."""
    h, w = img.shape[:2]
    top, left = scale * ((h - crop) // (2 * scale)), scale * ((w - crop) // (2 * scale))
    x = _window(img, top, left, crop).contiguous()
    return x, None if lq is None else _window(lq, top // scale, left // scale, crop // scale).contiguous()


def crop_pair(images: ImageFolder, i: int, crop: int, flips: str,
              g: torch.Generator) -> tuple[Tensor, Optional[Tensor]]:
    """A random crop of image i and of its given measurement (None when the images have none)."""
    lq = images.load_lq(i) if images.lq is not None else None
    return crop_and_flip(images.load(i), crop, flips, g, lq, images.scale)


def center_pair(images: ImageFolder, i: int, crop: int) -> tuple[Tensor, Optional[Tensor]]:
    """The centre crop of image i and of its given measurement (None when the images have none)."""
    lq = images.load_lq(i) if images.lq is not None else None
    return center_crop(images.load(i), crop, lq, images.scale)


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
        x8, y8 = crop_pair(self.images, self.image_index(index), self.crop, self.flips,
                           generator_for(self.seed, STREAM_CROP, index))
        return _sample(x8, y8, self.degrade, self.param_names, generator_for(self.seed, STREAM_DEGRADE, index), index)


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
        x8, y8 = center_pair(self.images, index, self.crop)
        return _sample(x8, y8, self.degrade, self.param_names, generator_for(self.seed, STREAM_VAL, index), index)


def measurement(x8: Tensor, y8: Optional[Tensor], degrade: Optional[Degrade],
                g: torch.Generator) -> tuple[Tensor, dict]:
    """y (3,h,w) float in [0,1] for the crop x8 (3,H,W) uint8: its given measurement y8 when there
    is one (parameters {}), else degrade(x) with the parameters drawn from g."""
    if y8 is not None:
        return y8.float().div_(255.0), {}
    y, params = degrade(x8.unsqueeze(0).float().div_(255.0), g)
    return y.squeeze(0).float().contiguous(), params


def _sample(x8: Tensor, y8: Optional[Tensor], degrade: Optional[Degrade], names: Sequence[str],
            g: torch.Generator, index: int) -> Sample:
    x = x8.float().div_(255.0)
    if degrade is None and y8 is None:
        return Sample(x=x, y=torch.empty(0), params=torch.empty(0), index=index)
    y, params = measurement(x8, y8, degrade, g)
    vec = torch.tensor([float(params[k]) for k in names], dtype=torch.float32) if params else torch.empty(0)
    return Sample(x=x, y=y, params=vec, index=index)


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


class GivenPairs:
    """The degradation of a run on given pairs: y is read from --lq-data, not synthesised. Stands
    in for a :class:`Degrader` where runs describe their degradation (card, resume signature)."""

    def __init__(self, images: Optional[ImageFolder]) -> None:
        self.images = images
        self._fingerprint: Optional[str] = None

    def describe(self) -> dict:
        if self._fingerprint is None and self.images is not None:
            self._fingerprint = self.images.lq_fingerprint()
        return {"source": "given pairs", "pairs": len(self.images) if self.images is not None else 0,
                "fingerprint": self._fingerprint}


@dataclass
class ImageSets:
    """Training and validation images of a run, and how they were chosen."""

    train: ImageFolder
    val: Optional[ImageFolder]
    root: Path
    split: str  # human-readable description for the model card
    lq_roots: tuple[Path, ...] = ()  # the folders of the given pairs (training, then validation)

    def card(self) -> dict:
        card = {
            "folder": str(self.root.resolve()),
            "train_images": len(self.train),
            "val_images": len(self.val) if self.val is not None else 0,
            "split": self.split,
            "val_files": [p.relative_to(self.root).as_posix() if p.is_relative_to(self.root) else str(p)
                          for p in (self.val.files if self.val is not None else [])],
        }
        if self.lq_roots:
            card["lq_folders"] = [str(p.resolve()) for p in dict.fromkeys(self.lq_roots)]
            card["pairs"] = card["train_images"] + card["val_images"]
        return card

    def fingerprint(self) -> str:
        """SHA-1 of the training files' relative paths and sizes (resume check)."""
        h = hashlib.sha1()
        for p, (hh, ww) in zip(self.train.files, self.train.sizes):
            h.update(f"{p.relative_to(self.root).as_posix() if p.is_relative_to(self.root) else p}:{hh}x{ww};".encode())
        return h.hexdigest()


def build_image_sets(data: str | Path, crop: int, val_data: Optional[str | Path] = None,
                     val_fraction: float = 0.05, val_count: Optional[int] = None, small: str = "skip",
                     cache: bool = False, val_crop: Optional[int] = None, lq_data: Optional[str | Path] = None,
                     val_lq_data: Optional[str | Path] = None, scale: int = 1) -> ImageSets:
    """Scan `data` (and `val_data`), hold out a deterministic validation split when no separate
    validation folder is given, and index the images usable at the crop sizes. With `lq_data`,
    every image gets its given measurement at factor `scale` (`val_lq_data` for `val_data`'s); a
    folder of pairs inside a folder of ground truths is left out of it."""
    root = Path(data)
    lq_roots = [Path(q) for q in (lq_data, val_lq_data) if q is not None]
    for gt, lq, flag in ((data, lq_data, "--lq-data"), (val_data, val_lq_data, "--val-lq-data")):
        if gt is not None and lq is not None and _relative_to(Path(lq), Path(gt)) == Path("."):
            raise DatasetError(f"{flag}: expected a folder of pairs apart from the ground truths, got their folder "
                               f"{gt} itself (each image would be its own pair)")
    files = list_images(root, exclude=lq_roots)
    if val_data is not None:
        train_files, val_files = files, list_images(val_data, exclude=lq_roots)
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
    sets = ImageSets(train=train, val=val, root=root, split=split)
    if lq_data is not None:
        if val_data is None:
            pair_images([train, val], root, files, Path(lq_data), scale, "--lq-data", "--data")
        else:
            # one folder holding the training and the validation pairs: each side uses the other's
            shared = _relative_to(Path(val_lq_data), Path(lq_data)) == Path(".")
            train_names = frozenset(_stem(p, root) for p in files) if shared else frozenset()
            val_names = frozenset(_stem(p, Path(val_data)) for p in val_files) if shared else frozenset()
            pair_images([train], root, files, Path(lq_data), scale, "--lq-data", "--data", val_names)
            pair_images([val], Path(val_data), val_files, Path(val_lq_data), scale, "--val-lq-data", "--val-data",
                        train_names)
        sets.lq_roots = (Path(lq_data), Path(val_lq_data or lq_data))
    return sets


def _stem(path: Path, root: Path) -> str:
    """The pairing key: the relative path without its extension ("a/b.png" -> "a/b")."""
    return path.relative_to(root).with_suffix("").as_posix()


def _by_stem(files: Sequence[Path], root: Path, flag: str) -> dict[str, Path]:
    found: dict[str, list[Path]] = {}
    for p in files:
        found.setdefault(_stem(p, root), []).append(p)
    twice = [" and ".join(q.relative_to(root).as_posix() for q in ps) for ps in found.values() if len(ps) > 1]
    if twice:
        raise DatasetError(f"{flag}: expected one image per name in {root} (pairs are matched by the relative "
                           f"path without extension), found {len(twice)} name(s) twice: {'; '.join(twice[:5])}")
    return {k: ps[0] for k, ps in found.items()}


def pair_images(folders: Sequence[Optional[ImageFolder]], gt_root: Path, gt_files: Sequence[Path], lq_root: Path,
                scale: int, flag: str, gt_flag: str, paired_elsewhere: frozenset[str] = frozenset()) -> None:
    """Pair every image of `folders` (ground truths found in `gt_root`, `gt_files` all of them) with
    the file of the same relative path and any image extension in `lq_root`, of exactly (H/s, W/s).
    DatasetError naming the first offenders when a ground truth has no pair or a pair has another
    size or cannot be read; measurements without a ground truth are left out with a warning, except
    `paired_elsewhere` (the names the other side of the run pairs from the same folder)."""
    lq = _by_stem(list_images(lq_root, exclude=[gt_root]), lq_root, flag)
    unused = sorted(set(lq) - set(_by_stem(gt_files, gt_root, gt_flag)) - paired_elsewhere)
    if unused:
        log.warning("%s: %d image(s) in %s have no ground truth in %s and are not used: %s", flag, len(unused),
                    lq_root, gt_root, ", ".join(lq[k].relative_to(lq_root).as_posix() for k in unused[:5]))
    missing: list[str] = []
    wrong: list[str] = []
    unreadable: list[str] = []
    for folder in filter(None, folders):
        for path, (h, w) in zip(folder.files, folder.sizes):
            q = lq.get(_stem(path, gt_root))
            if q is None:
                missing.append(path.relative_to(gt_root).as_posix())
                continue
            try:
                qh, qw = _image_size(q)
            except (OSError, ValueError) as exc:
                unreadable.append(f"{q.relative_to(lq_root).as_posix()} ({exc.__class__.__name__})")
                continue
            if (qh * scale, qw * scale) != (h, w):
                turned = (qw * scale, qh * scale) == (h, w)  # e.g. made from the unrotated camera image
                wrong.append(f"{q.relative_to(lq_root).as_posix()} is {qw}x{qh}, expected {w / scale:g}x{h / scale:g} "
                             f"(ground truth {w}x{h} / {scale})"
                             + (" (turned by a quarter: an EXIF orientation ignored on one side?)" if turned else ""))
    problems = []
    if missing:
        near = _look_alikes(lq_root, missing[:5])
        problems.append(f"{len(missing)} ground truth(s) without a pair (expected the same relative path with any of "
                        f"{', '.join(IMAGE_EXTENSIONS)}): "
                        + ", ".join(m + (f" (found {near[m]})" if m in near else "") for m in missing[:5]))
    if wrong:
        problems.append(f"{len(wrong)} pair(s) of the wrong size for x{scale}: {'; '.join(wrong[:5])}")
    if unreadable:
        problems.append(f"{len(unreadable)} pair(s) not readable as images: {', '.join(unreadable[:5])}")
    if problems:
        raise DatasetError(f"{flag} {lq_root}: " + "; ".join(problems))
    for folder in filter(None, folders):
        folder.pair_with([lq[_stem(p, gt_root)] for p in folder.files], lq_root, scale)


def _look_alikes(root: Path, names: Sequence[str]) -> dict[str, str]:
    """{name: a file of `root` whose relative path differs from `name` only in case or extension},
    for the ground truths `names` (relative paths) without a pair."""
    keys = {Path(n).with_suffix("").as_posix().lower(): n for n in names}
    found: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        n = keys.get(p.relative_to(root).with_suffix("").as_posix().lower())
        if n is not None and p.is_file():
            found.setdefault(n, p.relative_to(root).as_posix())
    return found


def image_sets(args, scale: int) -> ImageSets:
    """:func:`build_image_sets` from the CLI's data options, with the given pairs at factor `scale`."""
    return build_image_sets(args.data, args.crop, args.val_data, args.val_fraction, args.val_count, args.small_images,
                            args.cache_images, lq_data=args.lq_data, val_lq_data=args.val_lq_data, scale=scale)


def degraders(args, scale: int, images: ImageSets) -> tuple:
    """(training, validation) degradation of an INN or restorer run: the given pairs, else the paper's
    pipeline on the training ranges and the --val-degradation level (or draws from the ranges)."""
    if images.lq_roots:
        return GivenPairs(images.train), GivenPairs(images.val)
    train = Degrader(ranges=ranges_from_args(args, scale))
    return train, train if args.val_degradation == "train" else Degrader(preset=args.val_degradation)


def check_crop(crop: int, scale: int, what: str = "the scale") -> None:
    """ConfigError unless the crop is a multiple of the factor s (y must be crop/s exactly)."""
    if crop % scale:
        raise ConfigError(f"--crop {crop} must be a multiple of {what} {scale}")


def ranges_from_args(args, scale: int):
    """DegradationRanges from the CLI's --blur-sigma/--noise/--jpeg/... options at factor `scale`."""
    from ..degradations import DegradationRanges

    q = tuple(int(v) for v in args.jpeg)
    return DegradationRanges(
        blur_sigma=tuple(args.blur_sigma), noise_level=tuple(args.noise), jpeg_quality=q, scale=scale,
        anisotropic_prob=args.anisotropic_prob, jpeg_prob=args.jpeg_prob, resize_modes=tuple(args.resize_modes),
    )
