"""INNConfig: the typed description of a wavelet-lifting INN, saved with its weights (JSON).

Paper (Sec. III-B, IV-A): two levels ("InvBlocks"), each a split followed by two predict/update
(PM/UM) pairs; each PM/UM = conv -> 2 MRSTBs (2 Swin layers each) -> conv. The paper does not give
the feature width, head count, window or MLP ratio: the values of the "-paper" presets are our
choice (SwinIR-like: width 64, 4 heads, window 8, MLP ratio 2).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ConfigError

DOMAINS = ("pixel", "latent")
SPLITS = ("haar", "undecimated_haar", "lazy")
BLOCKS = ("mrstb", "resblock")


@dataclass(frozen=True)
class INNConfig:
    """Architecture of a :class:`~indigo_core.inn.network.WaveletINN`.

    Fields:
        domain: "pixel" (images in [0,1]) or "latent" (VAE latents).
        channels: C, channels of the input x (3 for RGB, 4 for SD latents).
        split: "haar" (non-redundant, coarse halves each level), "undecimated_haar" (redundant,
            a trous, coarse keeps the input size) or "lazy" (polyphase, INDIGO+).
        levels: number of split + lifting levels (InvBlocks).
        pairs: predict/update pairs per level.
        shared_pairs: one set of pairs used by every level (INDIGO+) instead of one set per level.
        block: "mrstb" (paper: Swin layers + degradation scale) or "resblock" (INDIGO+).
        hidden: feature width inside PM/UM.
        n_mrstb: blocks per PM/UM (MRSTBs, or residual blocks when block == "resblock").
        swin_layers: Swin layers per MRSTB (ignored for "resblock").
        heads: attention heads per Swin layer; hidden must be divisible by heads.
        window: Swin window size; layers alternate shift 0 and window // 2.
        mlp_ratio: Swin MLP width / hidden.
        emb_dim: size of the degradation embedding (KDSR: 128).
        mod_hidden: 0 -> the channel scale is one FC layer emb_dim -> hidden (paper);
            > 0 -> FC(emb_dim -> mod_hidden) -> ReLU -> FC(-> hidden) (INDIGO+: 64).
        kernel: kernel size of the PM/UM input/output convolutions (and residual blocks).
        conv_bias: whether the PM/UM input/output convolutions have a bias (INDIGO+: no).
        overlap_slices: INDIGO+ quirk: the predictor's 3C outputs are applied to the three detail
            bands as the overlapping slices [0:C], [1:C+1], [2:C+2].
        input_shift: subtracted from x before the transform and added back to the coarse part
            (INDIGO+: 0.5, i.e. images centred on 0).
    """

    domain: str = "pixel"
    channels: int = 3
    split: str = "haar"
    levels: int = 2
    pairs: int = 2
    shared_pairs: bool = False
    block: str = "mrstb"
    hidden: int = 64
    n_mrstb: int = 2
    swin_layers: int = 2
    heads: int = 4
    window: int = 8
    mlp_ratio: float = 2.0
    emb_dim: int = 128
    mod_hidden: int = 0
    kernel: int = 3
    conv_bias: bool = True
    overlap_slices: bool = False
    input_shift: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ConfigError naming the field, what is expected and what came."""

        def bad(field: str, expected: str) -> ConfigError:
            return ConfigError(f"INNConfig.{field}: expected {expected}, got {getattr(self, field)!r}")

        def pos_int(field: str, minimum: int = 1) -> None:
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise bad(field, f"an integer >= {minimum}")

        if self.domain not in DOMAINS:
            raise bad("domain", f"one of {DOMAINS}")
        if self.split not in SPLITS:
            raise bad("split", f"one of {SPLITS}")
        if self.block not in BLOCKS:
            raise bad("block", f"one of {BLOCKS}")
        for f in ("channels", "levels", "pairs", "hidden", "n_mrstb", "swin_layers", "heads",
                  "window", "emb_dim", "kernel"):
            pos_int(f)
        pos_int("mod_hidden", 0)
        if self.kernel % 2 != 1:
            raise bad("kernel", "an odd integer")
        for f in ("shared_pairs", "conv_bias", "overlap_slices"):
            if not isinstance(getattr(self, f), bool):
                raise bad(f, "a bool")
        for f in ("mlp_ratio", "input_shift"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(f, "a finite number")
        if self.mlp_ratio <= 0:
            raise bad("mlp_ratio", "a number > 0")
        if self.block == "mrstb" and self.hidden % self.heads != 0:
            raise bad("hidden", f"a multiple of heads={self.heads}")

    # ------------------------------------------------------------------ derived sizes
    @property
    def scale(self) -> int:
        """Spatial factor between x and the coarse part (haar/lazy: 2**levels; undecimated: 1)."""
        return 1 if self.split == "undecimated_haar" else 2 ** self.levels

    @property
    def detail_channels(self) -> int:
        """Channels of each level's detail tensor (three bands of C channels)."""
        return 3 * self.channels

    def coarse_shape(self, h: int, w: int) -> tuple[int, int]:
        """(h, w) the coarse part (= the measurement y) has for an input of size (h, w)."""
        return h // self.scale, w // self.scale

    def detail_shapes(self, h: int, w: int) -> list[tuple[int, int]]:
        """Spatial size of each level's detail tensor, finest first."""
        if self.split == "undecimated_haar":
            return [(h, w)] * self.levels
        return [(h // 2 ** (k + 1), w // 2 ** (k + 1)) for k in range(self.levels)]

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all fields (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Compact, key-sorted JSON of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "INNConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ConfigError, missing keys take defaults."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"INNConfig: expected a mapping, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"INNConfig: unknown field(s) {unknown}; expected a subset of {sorted(names)}")
        return cls(**dict(data))

    @classmethod
    def from_json(cls, text: str) -> "INNConfig":
        """Inverse of :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"INNConfig: not valid JSON ({exc})") from exc
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> "INNConfig":
        """A copy with some fields changed (validated)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(f"INNConfig.replace: unknown field(s) {unknown}; expected a subset of {sorted(names)}")
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str) -> "INNConfig":
        """One of :data:`PRESET_NAMES`: "pixel-paper", "latent-paper", "pixel-small",
        "latent-small", "indigo-plus"."""
        try:
            fields = _PRESETS[name]
        except KeyError:
            raise ConfigError(f"INNConfig.preset: expected one of {PRESET_NAMES}, got {name!r}") from None
        return cls(**fields)


_PAPER: dict[str, Any] = dict(levels=2, pairs=2, shared_pairs=False, block="mrstb", hidden=64,
                              n_mrstb=2, swin_layers=2, heads=4, window=8, mlp_ratio=2.0)
# Small enough to train on a 2-core CPU: one MRSTB of two Swin layers per PM/UM, width 24.
_SMALL: dict[str, Any] = dict(_PAPER, hidden=24, n_mrstb=1, heads=2)

_PRESETS: dict[str, dict[str, Any]] = {
    "pixel-paper": dict(_PAPER, domain="pixel", channels=3, split="haar"),
    "latent-paper": dict(_PAPER, domain="latent", channels=4, split="undecimated_haar"),
    "pixel-small": dict(_SMALL, domain="pixel", channels=3, split="haar"),
    "latent-small": dict(_SMALL, domain="latent", channels=4, split="undecimated_haar"),
    # The authors' earlier RWNN (INDIGO+): lazy split, 4 pairs shared by both levels, residual
    # blocks scaled by FC(128->64->32), bias-free input/output convs, x - 0.5.
    "indigo-plus": dict(domain="pixel", channels=3, split="lazy", levels=2, pairs=4,
                        shared_pairs=True, block="resblock", hidden=32, n_mrstb=2, mod_hidden=64,
                        conv_bias=False, overlap_slices=True, input_shift=0.5),
}

PRESET_NAMES: tuple[str, ...] = tuple(_PRESETS)
