"""Output files of the dev scripts (scripts/, tools/, benchmarks/): never replaced unasked, never
half-written.

`refuse_existing` stops a run before its work when an output it would write is already there and
--overwrite was not given. The writers go through indigo_core.io.atomic (a temporary file in the
same folder, renamed into place), so a run interrupted half-way leaves the old file or the new one,
never part of one. `partial_file` is for a log written as the run goes: it grows as <name>.part
and takes its name when the run ends, so an interrupted run keeps its partial log in the .part
file and leaves an earlier log as it was.

Only the standard library is imported up front: the benchmarks, which load the pack under another
name, use `refuse_existing` without importing indigo_core a second time.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, TextIO, Union

PathLike = Union[str, "os.PathLike[str]"]


def refuse_existing(paths: Iterable[PathLike], overwrite: bool, option: str = "--overwrite",
                    instead: str = "choose another --out") -> None:
    """SystemExit naming `option` when one of `paths` exists and `overwrite` is off."""
    if overwrite:
        return
    existing = [str(p) for p in paths if os.path.lexists(p)]
    if existing:
        one = len(existing) == 1
        raise SystemExit(f"{', '.join(existing)} already exist{'s' if one else ''}: pass {option} to replace "
                         f"{'it' if one else 'them'}" + (f", or {instead}" if instead else ""))


def part_path(path: PathLike) -> Path:
    """Where `partial_file` writes `path` until it is complete."""
    path = Path(path)
    return path.with_name(path.name + ".part")


def _atomic():
    from indigo_core.io import atomic

    return atomic


def write_text(path: PathLike, text: str) -> Path:
    return _atomic().atomic_write_text(path, text)


def copy_file(src: PathLike, dst: PathLike) -> Path:
    with open(src, "rb") as fh:
        return _atomic().atomic_write(dst, lambda out: shutil.copyfileobj(fh, out))


def save_image(image, path: PathLike, **params) -> Path:
    """PIL's ``image.save(path, **params)``, atomically (the format from the file's extension)."""
    from PIL import Image

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: no image format for the extension {path.suffix!r}")
    return _atomic().atomic_write(path, lambda fh: image.save(fh, format=fmt, **params))


@contextmanager
def partial_file(path: PathLike, newline: str | None = None) -> Iterator[TextIO]:
    """A text file written as the run goes into <path>.part and renamed to `path` when the block
    ends without an exception; otherwise the .part file keeps what was written and `path` is
    left as it was. Callers refuse an existing .part (`refuse_existing`) as they refuse `path`."""
    path, part = Path(path), part_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(part, "w", newline=newline) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(part, path)
