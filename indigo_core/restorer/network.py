"""R: a residual CNN at the measurement's resolution with a pixel-shuffle output.

    R(y) = up(y) + PixelShuffle_s(tail(body(head(y))))     y (B,3,h,w) in [0,1] -> (B,3,s*h,s*w)

head: conv3x3 (3 -> width); body: n_blocks residual blocks (conv3x3, ReLU, conv3x3, + input) and a
conv3x3; tail: conv3x3 (width -> 3*s*s). up is the bicubic resize every guided mode uses, so an
untrained tail (zero-initialised) gives exactly the bicubic baseline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, ConfigTypeError, ShapeError
from ..inn.inputs import check_float_input, check_spatial


@dataclass(frozen=True)
class RestorerConfig:
    """scale: output/input size ratio; width: feature channels; n_blocks: residual blocks."""

    scale: int = 4
    width: int = 48
    n_blocks: int = 6

    def __post_init__(self) -> None:
        for f in ("scale", "width", "n_blocks"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"RestorerConfig.{f}: expected a positive integer, got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RestorerConfig":
        if not isinstance(d, Mapping):
            raise ConfigError(f"RestorerConfig: expected a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - {"scale", "width", "n_blocks"})
        if unknown:
            raise ConfigError(f"RestorerConfig: unknown fields {unknown}")
        return cls(**d)


class _ResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class StageOneRestorer(nn.Module):
    def __init__(self, config: RestorerConfig) -> None:
        super().__init__()
        if not isinstance(config, RestorerConfig):
            raise ConfigTypeError(f"StageOneRestorer: expected a RestorerConfig, got {type(config).__name__}")
        self.config = config
        w, s = config.width, config.scale
        self.head = nn.Conv2d(3, w, 3, padding=1)
        self.body = nn.Sequential(*[_ResBlock(w) for _ in range(config.n_blocks)], nn.Conv2d(w, w, 3, padding=1))
        self.tail = nn.Conv2d(w, 3 * s * s, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)
        self.shuffle = nn.PixelShuffle(s)

    @property
    def scale(self) -> int:
        return self.config.scale

    def forward(self, y: Tensor) -> Tensor:
        """y (B,3,h,w) in [0,1] -> (B,3,s*h,s*w), not clamped (training); see `restore`."""
        if not isinstance(y, Tensor) or y.dim() != 4 or y.shape[1] != 3:
            got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ShapeError(f"restorer input: expected (B,3,h,w) RGB in [0,1], got {got}")
        check_spatial(y, "restorer", "y")
        check_float_input(y, self, "restorer", "y")
        s = self.config.scale
        up = F.interpolate(y, scale_factor=s, mode="bicubic", align_corners=False)
        f = self.head(y)
        return up + self.shuffle(self.tail(f + self.body(f)))

    def restore(self, y: Tensor) -> Tensor:
        """R(y) clamped to [0, 1] (what the pipeline and the node use)."""
        return self.forward(y).clamp(0.0, 1.0)


def build_restorer(config: RestorerConfig | None = None) -> StageOneRestorer:
    return StageOneRestorer(RestorerConfig() if config is None else config)
