"""R's weights file: safetensors with {"format": "indigo-restorer", "format_version", "config"}."""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Union

import torch

from ..errors import ConfigError, ConfigTypeError, WeightsFileError
from ..io.weights import check_float_dtype, format_metadata, load_state_strict, read_weights_file, write_weights_file
from .network import RestorerConfig, StageOneRestorer, build_restorer

PathLike = Union[str, "os.PathLike[str]"]
RESTORER_FORMAT = "indigo-restorer"


def save_restorer(net: StageOneRestorer, path: PathLike, overwrite: bool = False,
                  extra_metadata: Optional[Mapping[str, str]] = None, dtype: Optional[torch.dtype] = None):
    """Write `net` (optionally cast to `dtype`, e.g. float16 for shipping); returns the path."""
    if not isinstance(net, StageOneRestorer):
        raise ConfigTypeError(f"save_restorer: expected a StageOneRestorer, got {type(net).__name__}")
    check_float_dtype(dtype, "save_restorer")
    metadata = format_metadata(RESTORER_FORMAT, json.dumps(net.config.to_dict(), sort_keys=True), extra_metadata,
                               "save_restorer")
    state = {k: (v.to(dtype) if dtype is not None else v) for k, v in net.state_dict().items()}
    return write_weights_file(path, state, metadata, overwrite=overwrite)


def load_restorer(path: PathLike, map_location: Union[str, torch.device, None] = "cpu") -> StageOneRestorer:
    """Load a file written by :func:`save_restorer` as float32, eval mode, no gradients."""
    tensors, metadata = read_weights_file(path, RESTORER_FORMAT)
    try:
        cfg = RestorerConfig.from_dict(json.loads(metadata.get("config", "")))
    except (json.JSONDecodeError, ConfigError, TypeError) as exc:
        raise WeightsFileError(path, f"invalid restorer config in the metadata ({exc})") from exc
    net = build_restorer(cfg)
    load_state_strict(path, net, {k: v.float() for k, v in tensors.items()})
    net.requires_grad_(False)
    return net.to(device=map_location, dtype=torch.float32).eval()
