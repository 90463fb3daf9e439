"""A restricted reader for PyTorch .pth checkpoints (zip format, torch >= 1.6).

The pickle inside such a file can name any Python callable; `torch.load` of a stranger's file can
therefore run arbitrary code. This reader never calls `torch.load`: it walks the zip archive itself
and unpickles with an allow-list that can build only

  - tensors (our own rebuild function over raw little-endian storage bytes from the archive),
  - OrderedDict, and the types pickle builds natively (dict, list, tuple, str, bytes, numbers,
    bool, None).

Anything else (a class, a function such as os.system) raises UnsafePickleError naming the file and
the refused global, before anything is called. Legacy (pre-1.6, non-zip) checkpoints are refused
with a WeightsFileError.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import torch
from torch import Tensor

from ..errors import UnsafePickleError, WeightsFileError

PathLike = Union[str, "os.PathLike[str]"]

_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}


class _StorageType:
    """Stands in for torch.<X>Storage inside the pickle: only carries the dtype."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _int_tuple(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler (its opcode table can be changed, the C one's cannot) with an
    allow-list of globals, storages read from the archive, and BUILD (which would call an object's
    __setstate__, e.g. Tensor.__setstate__ -> set_/resize) limited to what state dicts need: a dict
    state on an OrderedDict (its _metadata)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, data: bytes, path: Path, read_record: Callable[[str], bytes]) -> None:
        super().__init__(io.BytesIO(data))
        self._path = path
        self._read_record = read_record
        self._storages: dict[str, Tensor] = {}
        self._allowed: dict[tuple[str, str], Any] = {
            ("collections", "OrderedDict"): OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor_v2,
            ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): self._rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): self._rebuild_parameter,
        }

    # -- globals ----------------------------------------------------------------
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise UnsafePickleError(
            self._path,
            f"refused to load global '{module}.{name}': only tensors and plain containers are allowed",
        )

    def load_build(self) -> None:
        state, target = self.stack[-1], self.stack[-2]
        if not (type(target) is OrderedDict and isinstance(state, dict)
                and all(isinstance(k, str) for k in state)):
            raise UnsafePickleError(
                self._path, f"refused to set the state of a {type(target).__name__} from a "
                            f"{type(state).__name__}: only an OrderedDict's attributes may be set")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    # -- storages ---------------------------------------------------------------
    def persistent_load(self, pid: Any) -> Tensor:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafePickleError(self._path, f"refused persistent id {str(pid)[:80]!r}")
        storage_type, key, _location, numel = pid[1], pid[2], pid[3], pid[4]
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not isinstance(numel, int):
            raise UnsafePickleError(self._path, f"refused malformed storage reference {str(pid)[:80]!r}")
        if key not in self._storages:
            raw = self._read_record(key)
            dtype = storage_type.dtype
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(raw) != numel * itemsize:
                raise WeightsFileError(
                    self._path, f"storage {key}: expected {numel * itemsize} bytes, found {len(raw)} (corrupt file)"
                )
            flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            self._storages[key] = flat
        return self._storages[key]

    # -- tensors ----------------------------------------------------------------
    def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any) -> Tensor:
        if not isinstance(storage, Tensor) or not isinstance(offset, int) or not _int_tuple(size) or not _int_tuple(stride):
            raise UnsafePickleError(self._path, "refused a tensor record with unexpected arguments")
        try:
            return torch.as_strided(storage, tuple(size), tuple(stride), offset)
        except RuntimeError as exc:
            raise WeightsFileError(self._path, f"tensor does not fit its storage ({exc})") from exc

    def _rebuild_tensor_v2(self, storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                           backward_hooks: Any = None, metadata: Any = None) -> Tensor:
        return self._rebuild_tensor(storage, offset, size, stride)

    def _rebuild_parameter(self, data: Any, requires_grad: Any = False, backward_hooks: Any = None,
                           state: Any = None) -> Tensor:
        if not isinstance(data, Tensor):
            raise UnsafePickleError(self._path, "refused a parameter record that does not hold a tensor")
        return data


def safe_load(path: PathLike) -> Any:
    """Read a zip-format .pth file allowing only tensors and plain containers (CPU tensors).

    Raises WeightsFileError (missing / not a torch zip checkpoint / corrupt) or UnsafePickleError
    (the pickle asks for anything else)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(path, "file not found")
    if not zipfile.is_zipfile(path):
        raise WeightsFileError(
            path, "not a zip-format PyTorch checkpoint (legacy pre-1.6 .pth files are not supported)"
        )
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
            if len(pkl) != 1:
                raise WeightsFileError(path, f"expected one data.pkl in the archive, found {len(pkl)}")
            prefix = pkl[0][: -len("data.pkl")]
            order = prefix + "byteorder"
            if order in names and zf.read(order).decode("ascii", "replace").strip() != "little":
                raise WeightsFileError(path, "big-endian checkpoints are not supported")

            def read_record(key: str) -> bytes:
                name = f"{prefix}data/{key}"
                if name not in names:
                    raise WeightsFileError(path, f"storage record {key!r} is missing from the archive")
                if zf.getinfo(name).compress_type != zipfile.ZIP_STORED:
                    raise WeightsFileError(path, f"storage record {key!r} is compressed (torch stores them "
                                                 "uncompressed): not a checkpoint torch wrote")
                return zf.read(name)

            return _RestrictedUnpickler(zf.read(pkl[0]), path, read_record).load()
    except WeightsFileError:
        raise
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError,
            KeyError, AttributeError, OverflowError, RecursionError, RuntimeError, MemoryError,
            struct.error) as exc:
        # a damaged pickle stream surfaces as any of these from the unpickler
        raise WeightsFileError(path, f"corrupt checkpoint ({type(exc).__name__}: {exc})") from exc


def load_state_dict_file(path: PathLike, key: Optional[str] = None, prefix: str = "") -> dict[str, Tensor]:
    """Safely read a .pth file and return its tensors as a flat state dict.

    key: take `obj[key]` first (e.g. "params_ema"); None uses the top-level object.
    prefix: keep only entries starting with it and strip it (e.g. "E_st.").
    """
    return extract_state_dict(safe_load(path), path, key=key, prefix=prefix)


def extract_state_dict(obj: Any, path: PathLike, key: Optional[str] = None, prefix: str = "") -> dict[str, Tensor]:
    """The flat tensor dict at `obj[key]` (or `obj`), filtered by and stripped of `prefix`;
    `path` only names the file in errors."""
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            found = sorted(map(str, obj))[:10] if isinstance(obj, Mapping) else type(obj).__name__
            raise WeightsFileError(path, f"expected a top-level key {key!r}, found {found}")
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise WeightsFileError(path, f"expected a state dict (mapping), got {type(obj).__name__}")
    out: dict[str, Tensor] = {}
    for name, value in obj.items():
        if not isinstance(name, str) or not name.startswith(prefix):
            continue
        if not isinstance(value, Tensor):
            raise WeightsFileError(path, f"entry {name!r} is a {type(value).__name__}, not a tensor")
        out[name[len(prefix):]] = value
    if not out:
        raise WeightsFileError(path, f"no tensors with prefix {prefix!r}" + (f" under {key!r}" if key else ""))
    return out

