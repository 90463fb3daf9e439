"""WaveletINN: the wavelet-lifting invertible network g of LatentINDIGO (paper Fig. 3).

forward:  x -> for each level: split the current coarse part, run the level's lifting pairs ->
          (coarse, [detail_level0 (finest), ..., detail_levelL-1])
inverse:  exactly the reverse (pairs inverted in reverse order, then merge), coarsest level first.
"""

from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor, nn

from ..checks import is_bchw, shape_or_type
from ..errors import ConfigTypeError, ShapeError
from .config import INNConfig
from .inputs import autocast_on, check_float_input
from .lifting import LiftingPair, LiftNet
from .wavelets import Split, make_split


class WaveletINN(nn.Module):
    """Invertible wavelet-lifting network.

    `coarse, details = inn(x, degradation)`:
        x (B,C,H,W); pixel domain: an image in [0,1]; latent domain: a VAE latent.
        degradation: the KDSR embedding gamma (B,emb_dim) (or (1,emb_dim), broadcast), or None
        (every channel scale = 1).
        coarse: (B,C,H/scale,W/scale) (the shape of a measurement y); details: one tensor per
        level, finest first, (B,3C,h_k,w_k).
    `x = inn.inverse(coarse, details, degradation)` undoes it up to float rounding.

    H and W must be divisible by cfg.scale (haar/lazy splits); other sizes raise ShapeError rather
    than being padded (pad the image yourself and crop afterwards).
    """

    def __init__(self, config: INNConfig, haar_backend: str = "auto") -> None:
        super().__init__()
        if not isinstance(config, INNConfig):
            raise ConfigTypeError(f"WaveletINN: expected an INNConfig, got {type(config).__name__}")
        self.config = config
        self.split_op: Split = make_split(config.split, config.channels, backend=haar_backend)
        n_sets = 1 if config.shared_pairs else config.levels
        self.lifts = nn.ModuleList(
            nn.ModuleList(LiftingPair(config) for _ in range(config.pairs)) for _ in range(n_sets)
        )

    # ------------------------------------------------------------------ convenience
    @property
    def scale(self) -> int:
        """Spatial factor between x and the coarse part."""
        return self.config.scale

    @property
    def domain(self) -> str:
        return self.config.domain

    def coarse_shape(self, h: int, w: int) -> tuple[int, int]:
        """Spatial size of the coarse part (= measurement) for an input of size (h, w)."""
        return self.config.coarse_shape(h, w)

    def set_checkpointing(self, enabled: bool) -> "WaveletINN":
        """Activation checkpointing of every PM/UM block (LiftNet.checkpoint): less memory for
        backward through the INN, one more forward of its blocks. Same results. Returns self."""
        for m in self.modules():
            if isinstance(m, LiftNet):
                m.checkpoint = bool(enabled)
        return self

    def _pairs(self, level: int) -> nn.ModuleList:
        return self.lifts[0 if self.config.shared_pairs else level]  # type: ignore[return-value]

    # ------------------------------------------------------------------ validation
    def _check_x(self, x: Tensor) -> None:
        cfg = self.config
        if not is_bchw(x):
            raise ShapeError(f"WaveletINN: expected x of shape (B,{cfg.channels},H,W), got {shape_or_type(x)}")
        if x.shape[1] != cfg.channels:
            raise ShapeError(
                f"WaveletINN ({cfg.domain}): expected {cfg.channels} channels, got {x.shape[1]} "
                f"(shape {tuple(x.shape)})"
            )
        h, w = x.shape[-2:]
        s = cfg.scale
        if h == 0 or w == 0 or h % s or w % s:
            raise ShapeError(
                f"WaveletINN ({cfg.split}, {cfg.levels} levels): expected H and W divisible by {s}, "
                f"got {h}x{w}; pad to a multiple of {s} and crop afterwards"
            )
        check_float_input(x, self, "WaveletINN", "x")

    def _gamma(self, degradation: Optional[Tensor], ref: Tensor) -> Optional[Tensor]:
        if degradation is None:
            return None
        e = self.config.emb_dim
        if not isinstance(degradation, Tensor) or degradation.dim() != 2 or degradation.shape[1] != e:
            raise ShapeError(f"WaveletINN: expected degradation of shape (B,{e}), got {shape_or_type(degradation)}")
        b = ref.shape[0]
        if degradation.shape[0] not in (1, b):
            raise ShapeError(f"WaveletINN: degradation batch {degradation.shape[0]} does not match input batch {b}")
        if not degradation.is_floating_point():
            raise ShapeError(f"WaveletINN: expected a floating-point degradation embedding (B,{e}) "
                             f"(the estimator's output), got dtype {degradation.dtype}")
        gamma = degradation.to(device=ref.device, dtype=ref.dtype)
        return gamma.expand(b, e) if gamma.shape[0] != b else gamma

    # ------------------------------------------------------------------ transform
    def forward(self, x: Tensor, degradation: Optional[Tensor] = None) -> tuple[Tensor, list[Tensor]]:
        """x (B,C,H,W) -> (coarse (B,C,H/s,W/s), details finest first)."""
        self._check_x(x)
        gamma = self._gamma(degradation, x)
        if x.shape[0] == 0:  # an empty batch: empty outputs of the right shapes (timm cannot take B=0)
            b, ch, h, w = x.shape
            return (x.new_zeros((0, ch, *self.config.coarse_shape(h, w))),
                    [x.new_zeros((0, 3 * ch, *hw)) for hw in self.config.detail_shapes(h, w)])
        c = x - self.config.input_shift if self.config.input_shift else x
        details: list[Tensor] = []
        for level in range(self.config.levels):
            c, d = self.split_op.split(c, level)
            for pair in self._pairs(level):
                c, d = pair(c, d, gamma)
            details.append(d)
        if self.config.input_shift:
            c = c + self.config.input_shift
        return c, details

    def inverse(self, coarse: Tensor, details: Sequence[Tensor], degradation: Optional[Tensor] = None) -> Tensor:
        """(coarse, details finest first) -> x (B,C,H,W)."""
        self._check_inverse_inputs(coarse, details)
        gamma = self._gamma(degradation, coarse)
        if coarse.shape[0] == 0:
            _, ch, h, w = coarse.shape
            return coarse.new_zeros((0, ch, h * self.config.scale, w * self.config.scale))
        c = coarse - self.config.input_shift if self.config.input_shift else coarse
        for level in reversed(range(self.config.levels)):
            d = details[level]
            for pair in reversed(self._pairs(level)):
                c, d = pair.inverse(c, d, gamma)
            c = self.split_op.merge(c, d, level)
        if self.config.input_shift:
            c = c + self.config.input_shift
        return c

    def _check_inverse_inputs(self, coarse: Tensor, details: Sequence[Tensor]) -> None:
        cfg = self.config
        if not is_bchw(coarse, cfg.channels):
            raise ShapeError(f"WaveletINN.inverse: expected coarse of shape (B,{cfg.channels},h,w), "
                             f"got {shape_or_type(coarse)}")
        if not isinstance(details, (list, tuple)) or len(details) != cfg.levels:
            n = len(details) if isinstance(details, (list, tuple)) else type(details).__name__
            raise ShapeError(f"WaveletINN.inverse: expected a list of {cfg.levels} detail tensors, got {n}")
        b, _, h, w = coarse.shape
        if h < 1 or w < 1:
            raise ShapeError(f"WaveletINN.inverse: expected coarse with h and w >= 1, got shape {tuple(coarse.shape)}")
        check_float_input(coarse, self, "WaveletINN.inverse", "coarse")
        f = 1 if cfg.split == "undecimated_haar" else 2
        for level in range(cfg.levels):
            k = cfg.levels - level - 1  # halvings between this level's detail size and coarse
            want = (b, 3 * cfg.channels, h * f ** k, w * f ** k)
            d = details[level]
            if not isinstance(d, Tensor) or tuple(d.shape) != want:
                raise ShapeError(f"WaveletINN.inverse: expected details[{level}] of shape {want}, got {shape_or_type(d)}")
            if d.dtype != coarse.dtype and not autocast_on(d.device.type):
                raise ShapeError(f"WaveletINN.inverse: expected details[{level}] of coarse's dtype {coarse.dtype}, "
                                 f"got {d.dtype}")
