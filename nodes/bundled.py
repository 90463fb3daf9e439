"""The model files that ship with the pack (``<pack>/models/*.safetensors``) next to the user's.

Load INN and Degradation Estimate list the bundled files of their kind first (by bare file name),
then every file of ``models/indigo/`` (and ``indigo:`` folders of extra_model_paths.yaml). A user
file with the same name as a bundled one takes precedence when loading.
The prior's files (``<pack>/models/prior/``) are Load INDIGO Prior's, see load_prior.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .host import find_model, list_models

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "models"
INN_FORMAT = "indigo-inn"
ESTIMATOR_FORMAT = "indigo-estimator"


def _format_of(path: Path) -> Optional[str]:
    from ..indigo_core.errors import IndigoError
    from ..indigo_core.io.weights import read_header

    try:
        return read_header(path)[1].get("format")
    except (IndigoError, OSError):
        return None


def bundled_models(fmt: str) -> dict[str, str]:
    """{file name: full path} of the bundled files whose header says format ``fmt``."""
    if not BUNDLED_DIR.is_dir():
        return {}
    return {p.name: str(p) for p in sorted(BUNDLED_DIR.glob("*.safetensors")) if _format_of(p) == fmt}


def list_with_bundled(fmt: str) -> list[str]:
    """Bundled files of format ``fmt`` first, then the model folders' files (no duplicates)."""
    bundled = list(bundled_models(fmt))
    return bundled + [name for name in list_models() if name not in bundled]


def find_with_bundled(name: str, fmt: str) -> Optional[str]:
    """Full path of a listed name: the model folders' file, else the bundled one, else None."""
    return find_model(name) or bundled_models(fmt).get(name)


def require_with_bundled(name: str, fmt: str) -> str:
    """find_with_bundled, or a WeightsFileError naming the folders searched."""
    path = find_with_bundled(name, fmt)
    if path is None:
        from ..indigo_core.errors import WeightsFileError
        from .host import MODEL_FOLDER, model_folders

        raise WeightsFileError(name, f"not found in the '{MODEL_FOLDER}' model folders {model_folders()}")
    return path


def file_key(path: str) -> tuple[str, int, int, int, int]:
    """(real path, inode, mtime in ns, ctime in ns, size): a replaced or rewritten file gets a new key,
    even one copied in with its old modification time (cp -p, rsync -a, an unpacked archive): its
    inode or change time differs (OSError if unreadable)."""
    import os

    real = os.path.realpath(path)
    st = os.stat(real)
    return real, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size


def validate_listed(name: str, fmt: str, what: str) -> "bool | str":
    """A node's validate_inputs for a file combo: ComfyUI 0.3.75 does not check V3 combo values,
    so a name that is neither in the model folders nor bundled is refused when the prompt is queued."""
    if find_with_bundled(name, fmt) is None:
        from .host import MODEL_FOLDER, model_folders

        return (f"{what} file {name!r} not found in the '{MODEL_FOLDER}' model folders {model_folders()} "
                f"or among the pack's bundled ones")
    return True


def fingerprint_listed(name: str, fmt: str):
    """A node's fingerprint_inputs for a file combo: the file's key, so that a file replaced under
    the same name is read again instead of ComfyUI reusing the cached output."""
    path = find_with_bundled(name, fmt)
    if path is None:
        return name
    try:
        return file_key(path)
    except OSError:
        return name


class FileCache:
    """The last few models loaded from files, keyed by (real path, mtime, size): a file changed on
    disk is loaded again. ``get(path, load)`` returns the cached model or ``load(path)``'s."""

    def __init__(self, size: int = 2) -> None:
        import threading
        from collections import OrderedDict

        self.size = size
        self._items: "OrderedDict[tuple, object]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str, load):
        from ..indigo_core.errors import WeightsFileError

        try:
            key = file_key(path)
        except OSError as exc:
            raise WeightsFileError(path, f"cannot be read ({exc.strerror or exc})") from exc
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        model = load(path)
        with self._lock:
            self._items[key] = model
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return model

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
