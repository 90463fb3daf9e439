"""Weights files: safetensors with a self-describing JSON config in the metadata.

Metadata of an INN file:
    {"format": "indigo-inn", "format_version": "1", "config": <INNConfig JSON>, ...extra}
The generic helpers (`write_weights_file`, `read_weights_file`) serve other formats too (the
degradation estimator uses "indigo-estimator"). Nothing here unpickles anything.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor, nn

from .atomic import atomic_write_bytes
from ..errors import ConfigError, ConfigTypeError, WeightsExistError, WeightsFileError
from ..inn.config import INNConfig
from ..inn.network import WaveletINN

PathLike = Union[str, "os.PathLike[str]"]

INN_FORMAT = "indigo-inn"
FORMAT_VERSION = "1"
SUPPORTED_VERSIONS = ("1",)
_RESERVED = ("format", "format_version", "config")
_MAX_HEADER = 100 * 1024 * 1024


# ---------------------------------------------------------------------- generic file helpers
def check_float_dtype(dtype: Optional[torch.dtype], who: str) -> None:
    """A load or save function's `dtype`: None (keep the stored one) or a floating-point torch.dtype."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ConfigError(f"{who}: expected dtype None or a floating-point torch.dtype (e.g. torch.float32), "
                          f"got {dtype!r}")


def format_metadata(fmt: str, config_json: str, extra: Optional[Mapping[str, str]], who: str) -> dict[str, str]:
    """{"format", "format_version", "config"} plus `extra`, which may not set those keys."""
    metadata = {"format": fmt, "format_version": FORMAT_VERSION, "config": config_json}
    if extra is not None and not isinstance(extra, Mapping):
        raise ConfigError(f"{who}: expected extra_metadata as a mapping of str to str, got {type(extra).__name__}")
    for k, v in (extra or {}).items():
        if k in _RESERVED:
            raise ConfigError(f"{who}: extra_metadata may not set the reserved key {k!r}")
        metadata[k] = v
    return metadata


def write_weights_file(
    path: PathLike,
    tensors: Mapping[str, Tensor],
    metadata: Mapping[str, str],
    overwrite: bool = False,
) -> Path:
    """Write tensors + string metadata as safetensors, atomically (temp file, then os.replace).

    Raises WeightsExistError when `path` exists and overwrite is False.
    """
    path = _as_path(path)
    if path.is_dir():
        raise WeightsFileError(path, "is a directory; expected the path of a file to write")
    if path.exists() and not overwrite:
        raise WeightsExistError(path, "file exists; pass overwrite=True to replace it")
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise WeightsFileError(path, f"metadata must map str to str, got {k!r}: {type(v).__name__}")
    cpu = {k: t.detach().to("cpu").contiguous() for k, t in tensors.items()}
    atomic_write_bytes(path, save(cpu, metadata=dict(metadata)))
    return path


def _as_path(path: PathLike) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise WeightsFileError(repr(path), f"expected a file path (str or os.PathLike), got {type(path).__name__}")
    return Path(path)


def read_header(path: PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """Parse and check a safetensors header without loading tensors.

    Returns (tensor entries {name: {"dtype", "shape", "data_offsets"}}, metadata). Raises
    WeightsFileError for a missing file, a file that is not safetensors, or a truncated file.
    """
    path = _as_path(path)
    if not path.is_file():
        raise WeightsFileError(path, "is a directory, not a file" if path.is_dir() else "file not found")
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise WeightsFileError(path, f"not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER:
            raise WeightsFileError(path, f"not a safetensors file (header length {n} is implausible)")
        if 8 + n > size:
            raise WeightsFileError(path, f"truncated: header needs {8 + n} bytes, file has {size}")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsFileError(path, f"not a safetensors file (header is not JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise WeightsFileError(path, "not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not (isinstance(metadata, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise WeightsFileError(path, "not a safetensors file (__metadata__ is not a mapping of strings)")
    data_len = 0
    for name, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
                and offsets[0] <= offsets[1]):
            raise WeightsFileError(path, f"not a safetensors file (bad entry for {name!r})")
        data_len = max(data_len, offsets[1])
    if 8 + n + data_len > size:
        raise WeightsFileError(path, f"truncated: tensor data needs {8 + n + data_len} bytes, file has {size}")
    return header, metadata


def read_weights_file(path: PathLike, expected_format: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a weights file of the given format. Returns (tensors on CPU, metadata).

    Raises WeightsFileError naming the file: missing, truncated, not safetensors, another format,
    or an unknown format version.
    """
    _, metadata = read_header(path)
    fmt = metadata.get("format")
    if fmt != expected_format:
        raise WeightsFileError(path, f"expected format {expected_format!r} in the metadata, got {fmt!r}")
    version = metadata.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        raise WeightsFileError(
            path, f"unknown format version {version!r}; this version of the pack reads {list(SUPPORTED_VERSIONS)}"
        )
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsFileError(path, f"cannot read tensors ({exc})") from exc
    return tensors, metadata


def check_state_dict(
    path: PathLike, expected: Union[nn.Module, Mapping[str, tuple[int, ...]]], tensors: Mapping[str, Tensor]
) -> None:
    """Raise WeightsFileError listing missing, unexpected and mis-shaped tensors.

    expected: a module (its state dict; then the kind of dtype is checked too: a floating-point
    weight must be stored as floating point, an integer buffer as integers) or a mapping {key: shape}."""
    floating: dict[str, bool] = {}
    if isinstance(expected, nn.Module):
        state = expected.state_dict()
        floating = {k: v.is_floating_point() for k, v in state.items()}
        expected = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    misshaped = sorted(
        f"{k}: file {tuple(tensors[k].shape)}, expected {tuple(expected[k])}"
        for k in set(expected) & set(tensors)
        if tuple(tensors[k].shape) != tuple(expected[k])
    )
    mistyped = sorted(
        f"{k}: file {str(tensors[k].dtype).replace('torch.', '')}, expected {'floating point' if floating[k] else 'integers'}"
        for k in set(floating) & set(tensors)
        if tensors[k].is_floating_point() != floating[k]
    )
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped),
                         ("mis-typed", mistyped)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            problems.append(f"{len(items)} {label} tensor(s): {', '.join(items[:5])}{more}")
    if problems:
        raise WeightsFileError(path, "tensors do not match the expected layout: " + "; ".join(problems))


def load_state_strict(path: PathLike, model: nn.Module, tensors: Mapping[str, Tensor]) -> None:
    """:func:`check_state_dict`, then load_state_dict(strict=True) (values cast to the model's dtype)."""
    check_state_dict(path, model, tensors)
    model.load_state_dict(dict(tensors), strict=True)


def _finish(model: nn.Module, dtype: Optional[torch.dtype], device: Optional[Union[str, torch.device]]) -> None:
    model.to(device=device, dtype=dtype)
    model.eval()


# ---------------------------------------------------------------------- INN
def save_inn(
    inn: WaveletINN,
    path: PathLike,
    extra_metadata: Optional[Mapping[str, str]] = None,
    overwrite: bool = False,
) -> Path:
    """Save `inn` as safetensors with its config; refuses to replace a file unless overwrite=True."""
    if not isinstance(inn, WaveletINN):
        raise ConfigTypeError(f"save_inn: expected a WaveletINN, got {type(inn).__name__}")
    metadata = format_metadata(INN_FORMAT, inn.config.to_json(), extra_metadata, "save_inn")
    return write_weights_file(path, inn.state_dict(), metadata, overwrite=overwrite)


def read_inn_config(path: PathLike) -> INNConfig:
    """The INNConfig stored in an INN file (header only; no tensors are read)."""
    _, metadata = read_header(path)
    if metadata.get("format") != INN_FORMAT:
        raise WeightsFileError(path, f"expected format {INN_FORMAT!r} in the metadata, got {metadata.get('format')!r}")
    return _config_from(path, metadata)


def _config_from(path: PathLike, metadata: Mapping[str, str]) -> INNConfig:
    text = metadata.get("config")
    if text is None:
        raise WeightsFileError(path, "no 'config' in the metadata")
    try:
        return INNConfig.from_json(text)
    except ConfigError as exc:
        raise WeightsFileError(path, f"invalid config in the metadata ({exc})") from exc


def load_inn(
    path: PathLike,
    map_location: Union[str, torch.device, None] = "cpu",
    dtype: Optional[torch.dtype] = torch.float32,
) -> WaveletINN:
    """Load a WaveletINN saved by :func:`save_inn`, in eval mode, on `map_location`, in `dtype`
    (None keeps the stored dtype). Bad files raise WeightsFileError naming the file and problem."""
    check_float_dtype(dtype, "load_inn")
    tensors, metadata = read_weights_file(path, INN_FORMAT)
    cfg = _config_from(path, metadata)
    inn = WaveletINN(cfg)
    check_state_dict(path, inn, tensors)
    if dtype is None:
        dtypes = {t.dtype for t in tensors.values()}
        if len(dtypes) == 1:
            inn.to(dtypes.pop())
    inn.load_state_dict(tensors, strict=True)
    _finish(inn, dtype, map_location)
    return inn
