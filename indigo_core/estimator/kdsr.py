"""Implicit degradation estimator F (paper: gamma = F(y)), in KDSR's student layout ("KD_IDE").

Layout (Xia et al., ICLR 2023), all 3x3 convolutions with stride 1 and padding 1:
    E:        conv(in -> w) + LeakyReLU(0.1), n_res residual blocks (conv, LeakyReLU, conv, + x),
              conv(w -> 2w) + LReLU, conv(2w -> 2w) + LReLU, conv(2w -> 4w) + LReLU, global mean
    mlp:      Linear(4w, 4w) + LReLU, Linear(4w, 4w) + LReLU  -> the 4w-d feature (distillation)
    compress: Linear(4w, emb) + LReLU                         -> gamma (B, emb)
With w = 128, emb = 128 and 6 residual blocks this matches a KDSRS-GANV2.pth `params_ema` with the
prefix "E_st.", so a user's file loads with strict key matching. The teacher takes the LQ image
and the pixel-unshuffled HQ image (3 + 3*s*s channels, 51 at x4).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_int, is_bchw, shape_or_type, spatial_at_least
from ..errors import ConfigError, ConfigTypeError, ShapeError, WeightsFileError
from ..inn.inputs import check_float_input
from ..io.safe_pickle import load_state_dict_file
from ..io.weights import check_float_dtype, format_metadata, load_state_strict, read_weights_file, write_weights_file

PathLike = Union[str, "os.PathLike[str]"]
ESTIMATOR_FORMAT = "indigo-estimator"
ROLES = ("student", "teacher")


@dataclass(frozen=True)
class EstimatorConfig:
    """Size of a degradation estimator.

    role: "student" (input: LQ image, 3 channels) or "teacher" (LQ + pixel-unshuffled HQ).
    width: w, the first feature width (KDSR: 128); features are 4w wide.
    n_res: residual blocks (KDSR: 6).
    emb_dim: size of gamma (128: what the INN's FC layers expect).
    scale: HQ/LQ size ratio the teacher is built for (teacher input channels 3 + 3*scale**2).
    """

    role: str = "student"
    width: int = 128
    n_res: int = 6
    emb_dim: int = 128
    scale: int = 4

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"EstimatorConfig.role: expected one of {ROLES}, got {self.role!r}")
        for f in ("width", "n_res", "emb_dim", "scale"):
            check_int(f"EstimatorConfig.{f}", getattr(self, f), 0 if f == "n_res" else 1, python_int=True)

    @property
    def in_channels(self) -> int:
        return 3 if self.role == "student" else 3 + 3 * self.scale ** 2

    @property
    def feature_dim(self) -> int:
        return 4 * self.width

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EstimatorConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, Mapping) or set(data) - names:
            raise ConfigError(f"EstimatorConfig: expected a mapping with keys from {sorted(names)}, got {data!r}")
        return cls(**dict(data))

    @classmethod
    def preset(cls, name: str) -> "EstimatorConfig":
        """"kdsr" / "kdsr-teacher" (KDSR sizes) or "small" / "small-teacher" (w=32, 2 blocks)."""
        presets = {
            "kdsr": cls(),
            "kdsr-teacher": cls(role="teacher"),
            "small": cls(width=32, n_res=2),
            "small-teacher": cls(role="teacher", width=32, n_res=2),
        }
        if name not in presets:
            raise ConfigError(f"EstimatorConfig.preset: expected one of {sorted(presets)}, got {name!r}")
        return presets[name]


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1)


class _ResBlock(nn.Module):
    """x + conv(LReLU(conv(x))); keys body.0 / body.2 as in KDSR."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(width, width), nn.LeakyReLU(0.1), _conv(width, width))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class DegradationEstimator(nn.Module):
    """gamma = F(y): `est(y)` maps an LQ image (B,3,h,w) in [0,1], any size, to (B,emb_dim).

    `est.features(y)` gives the (B,4w) feature used for distillation;
    `est(y, return_features=True)` returns both.
    """

    def __init__(self, config: Optional[EstimatorConfig] = None) -> None:
        super().__init__()
        cfg = EstimatorConfig() if config is None else config
        if not isinstance(cfg, EstimatorConfig):
            raise ConfigTypeError(f"{type(self).__name__}: expected an EstimatorConfig (e.g. EstimatorConfig.preset('kdsr')), "
                              f"got {type(cfg).__name__}")
        if cfg.role == "teacher" and not isinstance(self, DegradationTeacher):
            raise ConfigError("DegradationEstimator: expected a config with role 'student', got 'teacher' "
                              "(build the teacher with DegradationTeacher(config) or build_estimator(config))")
        self.config = cfg
        w = cfg.width
        layers: list[nn.Module] = [_conv(cfg.in_channels, w), nn.LeakyReLU(0.1)]
        layers += [_ResBlock(w) for _ in range(cfg.n_res)]
        layers += [_conv(w, 2 * w), nn.LeakyReLU(0.1), _conv(2 * w, 2 * w), nn.LeakyReLU(0.1),
                   _conv(2 * w, 4 * w), nn.LeakyReLU(0.1), nn.AdaptiveAvgPool2d(1)]
        self.E = nn.Sequential(*layers)
        self.mlp = nn.Sequential(nn.Linear(4 * w, 4 * w), nn.LeakyReLU(0.1), nn.Linear(4 * w, 4 * w), nn.LeakyReLU(0.1))
        self.compress = nn.Sequential(nn.Linear(4 * w, cfg.emb_dim), nn.LeakyReLU(0.1))

    def _check(self, y: Tensor, what: str = "y", channels: int = 3) -> None:
        if not is_bchw(y, channels) or not spatial_at_least(y):
            raise ShapeError(f"DegradationEstimator: expected {what} of shape (B,{channels},h,w), got {shape_or_type(y)}")
        check_float_input(y, self, type(self).__name__, what)

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        fea = self.mlp(self.E(x).flatten(1))
        return self.compress(fea), fea

    def features(self, y: Tensor) -> Tensor:
        """(B,3,h,w) in [0,1] -> (B,4w) distillation feature."""
        self._check(y)
        return self._encode(y)[1]

    def forward(self, y: Tensor, return_features: bool = False) -> Union[Tensor, tuple[Tensor, Tensor]]:
        """(B,3,h,w) in [0,1] -> gamma (B,emb_dim) [, feature (B,4w)]."""
        self._check(y)
        gamma, fea = self._encode(y)
        return (gamma, fea) if return_features else gamma

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_kdsr_pth(cls, path: PathLike, key: str = "params_ema", prefix: str = "E_st.",
                      config: Optional[EstimatorConfig] = None) -> "DegradationEstimator":
        """Load a KDSR checkpoint (e.g. KDSRS-GANV2.pth) through the restricted unpickler, strict
        key matching; eval mode. For a teacher (BlindSR_TA) use the teacher class, prefix "E."."""
        est = cls(config)
        state = load_state_dict_file(path, key=key, prefix=prefix)
        load_state_strict(path, est, state)
        return est.eval()


class DegradationTeacher(DegradationEstimator):
    """KDSR teacher: `teacher(lq, hq)` with lq (B,3,h,w), hq (B,3,h*s,w*s), both in [0,1]."""

    def __init__(self, config: Optional[EstimatorConfig] = None) -> None:
        cfg = EstimatorConfig(role="teacher") if config is None else config
        if not isinstance(cfg, EstimatorConfig):
            raise ConfigTypeError(f"DegradationTeacher: expected an EstimatorConfig (e.g. EstimatorConfig.preset("
                              f"'kdsr-teacher')), got {type(cfg).__name__}")
        if cfg.role != "teacher":
            raise ConfigError(f"DegradationTeacher: expected a config with role 'teacher', got {cfg.role!r}")
        super().__init__(cfg)

    def _joint(self, lq: Tensor, hq: Tensor) -> Tensor:
        s = self.config.scale
        self._check(lq, "lq")
        self._check(hq, "hq")
        if tuple(hq.shape[-2:]) != (lq.shape[-2] * s, lq.shape[-1] * s) or hq.shape[0] != lq.shape[0]:
            raise ShapeError(
                f"DegradationTeacher: expected hq of shape {(lq.shape[0], 3, lq.shape[-2] * s, lq.shape[-1] * s)} "
                f"(x{s} the lq), got {tuple(hq.shape)}"
            )
        return torch.cat([lq, F.pixel_unshuffle(hq, s)], dim=1)

    def features(self, lq: Tensor, hq: Tensor) -> Tensor:  # type: ignore[override]
        return self._encode(self._joint(lq, hq))[1]

    def forward(self, lq: Tensor, hq: Tensor, return_features: bool = False):  # type: ignore[override]
        gamma, fea = self._encode(self._joint(lq, hq))
        return (gamma, fea) if return_features else gamma


def build_estimator(config: EstimatorConfig) -> DegradationEstimator:
    """The student or teacher class for `config.role`."""
    if not isinstance(config, EstimatorConfig):
        raise ConfigTypeError(f"build_estimator: expected an EstimatorConfig (e.g. EstimatorConfig.preset('kdsr')), "
                          f"got {type(config).__name__}")
    return DegradationTeacher(config) if config.role == "teacher" else DegradationEstimator(config)


def save_estimator(est: DegradationEstimator, path: PathLike, overwrite: bool = False,
                   extra_metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Save as safetensors with {"format": "indigo-estimator", "format_version", "config"}."""
    if not isinstance(est, DegradationEstimator):
        raise ConfigTypeError(f"save_estimator: expected a DegradationEstimator (or DegradationTeacher), "
                          f"got {type(est).__name__}")
    metadata = format_metadata(ESTIMATOR_FORMAT, json.dumps(est.config.to_dict(), sort_keys=True), extra_metadata,
                               "save_estimator")
    return write_weights_file(path, est.state_dict(), metadata, overwrite=overwrite)


def load_estimator(path: PathLike, map_location: Union[str, torch.device, None] = "cpu",
                   dtype: Optional[torch.dtype] = torch.float32) -> DegradationEstimator:
    """Load a file written by :func:`save_estimator` (eval mode); bad files raise WeightsFileError."""
    check_float_dtype(dtype, "load_estimator")
    tensors, metadata = read_weights_file(path, ESTIMATOR_FORMAT)
    try:
        cfg = EstimatorConfig.from_dict(json.loads(metadata.get("config", "")))
    except (json.JSONDecodeError, ConfigError) as exc:
        raise WeightsFileError(path, f"invalid estimator config in the metadata ({exc})") from exc
    est = build_estimator(cfg)
    load_state_strict(path, est, tensors)
    return est.to(device=map_location, dtype=dtype).eval()
