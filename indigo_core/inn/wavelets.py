"""Split/merge operators of the lifting scheme: Haar (PixelINN), undecimated Haar (LatentINN) and
the lazy polyphase split (INDIGO+).

Every split maps x (B,C,H,W) to a coarse part (B,C,h,w) and one detail tensor (B,3C,h,w) holding
three bands of C channels, band-major: [horizontal-edge (rows differ), vertical-edge (columns
differ), diagonal]. Normalisation is "averaging": the coarse part is the local 2x2 mean of x, so it
stays in x's range (a [0,1] image gives a [0,1] coarse image) and can be compared with a
measurement directly. For the Haar split this is the orthonormal Haar transform divided by 2 (an
exact power-of-two scaling, undone exactly by merge).

Non-redundant Haar goes through pytorch-wavelets when it imports. pytorch-wavelets 1.3.0 imports
`pkg_resources`, which setuptools >= 81 no longer ships; in that case an equivalent built-in Haar
(grouped stride-2 convolutions with the four Haar filters) is used instead. Both give the same
numbers as PyWavelets' `dwt2(x, "haar")`.
"""

from __future__ import annotations

import importlib
import logging
import math
import warnings
from types import ModuleType
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..errors import ConfigError, ShapeError

log = logging.getLogger(__name__)

_PTW_STATE: dict[str, Optional[ModuleType]] = {}


def load_pytorch_wavelets() -> Optional[ModuleType]:
    """The `pytorch_wavelets` module, or None when it cannot be imported (logged once, debug)."""
    if "module" not in _PTW_STATE:
        try:
            with warnings.catch_warnings():
                # Its pkg_resources import warns on setuptools 80; the warning is not ours to show.
                warnings.simplefilter("ignore")
                module: Optional[ModuleType] = importlib.import_module("pytorch_wavelets")
        except ImportError as exc:
            log.debug("pytorch_wavelets unavailable (%s); using the built-in Haar transform", exc)
            module = None
        _PTW_STATE["module"] = module
    return _PTW_STATE["module"]


def _haar_filters() -> Tensor:
    """(4,1,2,2) orthonormal Haar analysis filters, PyWavelets order [LL, H, V, D]."""
    f = torch.tensor(
        [
            [[1.0, 1.0], [1.0, 1.0]],  # LL: average
            [[1.0, 1.0], [-1.0, -1.0]],  # H (pywt cH): top row minus bottom row
            [[1.0, -1.0], [1.0, -1.0]],  # V (pywt cV): left column minus right column
            [[1.0, -1.0], [-1.0, 1.0]],  # D (pywt cD): diagonal
        ],
        dtype=torch.float64,
    )
    return (0.5 * f).unsqueeze(1)


def _check_even(x: Tensor, what: str, channels: int) -> None:
    """x must be (B,channels,H,W) with H and W even and non-zero (the decimating splits)."""
    if x.dim() != 4:
        raise ShapeError(f"{what}: expected a (B,C,H,W) tensor, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % 2 or w % 2 or h == 0 or w == 0:
        raise ShapeError(f"{what}: expected even, non-zero H and W, got {h}x{w}")
    if x.shape[1] != channels:
        raise ShapeError(f"{what}: expected {channels} channels, got {x.shape[1]}")


def _bands_to_detail(bands: Tensor) -> Tensor:
    """(B,C,3,h,w) -> (B,3C,h,w), band-major."""
    return rearrange(bands, "b c k h w -> b (k c) h w")


def _detail_to_bands(detail: Tensor, channels: int) -> Tensor:
    """(B,3C,h,w) -> (B,C,3,h,w)."""
    return rearrange(detail, "b (k c) h w -> b c k h w", c=channels)


class Split(nn.Module):
    """Base class: `split(x, level) -> (coarse, detail)`, `merge(coarse, detail, level) -> x`."""

    #: spatial factor between the input and the outputs of one level
    factor: int = 2

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def split(self, x: Tensor, level: int = 0) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def merge(self, coarse: Tensor, detail: Tensor, level: int = 0) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def _check_pair(self, coarse: Tensor, detail: Tensor) -> None:
        c = self.channels
        if coarse.dim() != 4 or detail.dim() != 4:
            raise ShapeError(f"merge: expected (B,C,h,w) tensors, got {tuple(coarse.shape)} and {tuple(detail.shape)}")
        b, _, h, w = coarse.shape
        if coarse.shape[1] != c or tuple(detail.shape) != (b, 3 * c, h, w):
            raise ShapeError(
                f"merge: expected coarse (B,{c},h,w) and detail (B,{3 * c},h,w), "
                f"got {tuple(coarse.shape)} and {tuple(detail.shape)}"
            )


class HaarSplit(Split):
    """Non-redundant 2-D Haar split: (B,C,H,W), H and W even -> coarse (B,C,H/2,W/2) = 2x2 mean,
    detail (B,3C,H/2,W/2) = orthonormal Haar details / 2.

    backend: "auto" (pytorch-wavelets if importable, else built-in), "pytorch_wavelets" or
    "builtin". Filters are non-persistent buffers: they follow .to(device/dtype) and are not part
    of the state dict, so weights files do not depend on the backend.
    """

    def __init__(self, channels: int, backend: str = "auto") -> None:
        super().__init__(channels)
        if backend not in ("auto", "pytorch_wavelets", "builtin"):
            raise ConfigError(f"HaarSplit.backend: expected 'auto', 'pytorch_wavelets' or 'builtin', got {backend!r}")
        ptw = load_pytorch_wavelets() if backend != "builtin" else None
        if backend == "pytorch_wavelets" and ptw is None:
            raise ConfigError("HaarSplit.backend: 'pytorch_wavelets' requested but it cannot be imported")
        self.backend = "pytorch_wavelets" if ptw is not None else "builtin"
        if ptw is not None:
            self.dwt = ptw.DWTForward(J=1, wave="haar", mode="zero")
            self.idwt = ptw.DWTInverse(wave="haar", mode="zero")
            for mod in (self.dwt, self.idwt):
                for name, buf in list(mod._buffers.items()):
                    mod.register_buffer(name, buf, persistent=False)
            self._exact_filters()
        else:
            weight = _haar_filters().to(torch.get_default_dtype()).repeat(channels, 1, 1, 1)
            self.register_buffer("weight", weight, persistent=False)  # (4C,1,2,2)

    def _exact_filters(self) -> None:
        """Reset pytorch-wavelets' filters to +-1/sqrt(2) in their current dtype. It builds them in
        float32, so after .double() they would carry float32 rounding (merge(split(x)) off by 1e-7)."""
        if self.backend != "pytorch_wavelets":
            return
        with torch.no_grad():
            for mod in (self.dwt, self.idwt):
                for name, buf in list(mod._buffers.items()):
                    if buf is not None and torch.is_floating_point(buf):
                        exact = torch.sign(buf.to(torch.float64)) * math.sqrt(0.5)
                        mod._buffers[name] = exact.to(dtype=buf.dtype, device=buf.device)

    def _apply(self, fn, *args, **kwargs):  # type: ignore[override]
        out = super()._apply(fn, *args, **kwargs)
        self._exact_filters()
        return out

    def dwt2(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Orthonormal Haar (PyWavelets convention): (B,C,H,W) -> LL (B,C,H/2,W/2), bands (B,C,3,H/2,W/2)."""
        _check_even(x, "Haar split", self.channels)
        if self.backend == "pytorch_wavelets":
            ll, yh = self.dwt(x)
            return ll, yh[0]
        b, c, h, w = x.shape
        y = F.conv2d(x, self.weight.to(x.dtype), stride=2, groups=c).reshape(b, c, 4, h // 2, w // 2)
        return y[:, :, 0], y[:, :, 1:]

    def idwt2(self, ll: Tensor, bands: Tensor) -> Tensor:
        """Inverse of :meth:`dwt2`."""
        if self.backend == "pytorch_wavelets":
            return self.idwt((ll, [bands]))
        b, c, h, w = ll.shape
        y = torch.cat([ll.unsqueeze(2), bands], dim=2).reshape(b, 4 * c, h, w)
        return F.conv_transpose2d(y, self.weight.to(ll.dtype), stride=2, groups=c)

    def split(self, x: Tensor, level: int = 0) -> tuple[Tensor, Tensor]:
        ll, bands = self.dwt2(x)
        return 0.5 * ll, _bands_to_detail(0.5 * bands)

    def merge(self, coarse: Tensor, detail: Tensor, level: int = 0) -> Tensor:
        self._check_pair(coarse, detail)
        return self.idwt2(2.0 * coarse, _detail_to_bands(2.0 * detail, self.channels))


class UndecimatedHaarSplit(Split):
    """Redundant (a trous) Haar split with periodic boundaries: (B,C,H,W), any H, W ->
    coarse (B,C,H,W), detail (B,3C,H,W). At level j the filters are dilated by 2**j.

    coarse[i,k] = mean of x at (i,k), (i,k+s), (i+s,k), (i+s,k+s) (indices mod H, W; s = 2**j); the
    details are the matching Haar differences / 4. Written as a matrix A (4 outputs per input
    value) this frame is tight with A^T A = I, so `merge` = A^T is an exact left inverse:
    merge(split(x)) == x. When coarse or detail is replaced by something outside A's range (e.g.
    the coarse part by a measurement), merge returns the least-squares solution (the frame's
    pseudo-inverse): the average of the four reconstructions each shifted copy suggests.
    """

    factor = 1

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        m = torch.tensor([[1, 1, 1, 1], [1, 1, -1, -1], [1, -1, 1, -1], [1, -1, -1, 1]], dtype=torch.float64)
        # rows: bands [LL, H, V, D]; columns: shifted copies (0,0), (0,s), (s,0), (s,s)
        self.register_buffer("mix", (0.25 * m).to(torch.get_default_dtype()), persistent=False)

    _OFFSETS = ((0, 0), (0, 1), (1, 0), (1, 1))

    def split(self, x: Tensor, level: int = 0) -> tuple[Tensor, Tensor]:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ShapeError(f"undecimated Haar split: expected (B,{self.channels},H,W), got {tuple(x.shape)}")
        s = 2 ** level
        copies = torch.stack([torch.roll(x, (-s * i, -s * j), dims=(2, 3)) for i, j in self._OFFSETS], dim=2)
        bands = torch.einsum("bk,nckhw->ncbhw", self.mix.to(x.dtype), copies)
        return bands[:, :, 0], _bands_to_detail(bands[:, :, 1:])

    def merge(self, coarse: Tensor, detail: Tensor, level: int = 0) -> Tensor:
        self._check_pair(coarse, detail)
        s = 2 ** level
        bands = torch.cat([coarse.unsqueeze(2), _detail_to_bands(detail, self.channels)], dim=2)
        parts = torch.einsum("bk,ncbhw->nckhw", self.mix.to(coarse.dtype), bands)
        out = parts[:, :, 0]
        for k, (i, j) in enumerate(self._OFFSETS[1:], start=1):
            out = out + torch.roll(parts[:, :, k], (s * i, s * j), dims=(2, 3))
        return out


class LazySplit(Split):
    """Lazy polyphase split (INDIGO+): coarse = x[..., ::2, ::2]; detail bands =
    [x[1::2, ::2] (odd rows), x[::2, 1::2] (odd columns), x[1::2, 1::2]]. H and W must be even."""

    def split(self, x: Tensor, level: int = 0) -> tuple[Tensor, Tensor]:
        _check_even(x, "lazy split", self.channels)
        b, c, h, w = x.shape
        phases = F.pixel_unshuffle(x, 2).reshape(b, c, 4, h // 2, w // 2)  # phase = 2*row + col
        detail = torch.stack([phases[:, :, 2], phases[:, :, 1], phases[:, :, 3]], dim=2)
        return phases[:, :, 0], _bands_to_detail(detail)

    def merge(self, coarse: Tensor, detail: Tensor, level: int = 0) -> Tensor:
        self._check_pair(coarse, detail)
        b, c, h, w = coarse.shape
        bands = _detail_to_bands(detail, c)
        phases = torch.stack([coarse, bands[:, :, 1], bands[:, :, 0], bands[:, :, 2]], dim=2)
        return F.pixel_shuffle(phases.reshape(b, 4 * c, h, w), 2)


def make_split(kind: str, channels: int, backend: str = "auto") -> Split:
    """Split operator for INNConfig.split ("haar", "undecimated_haar", "lazy")."""
    if kind == "haar":
        return HaarSplit(channels, backend=backend)
    if kind == "undecimated_haar":
        return UndecimatedHaarSplit(channels)
    if kind == "lazy":
        return LazySplit(channels)
    raise ConfigError(f"split: expected 'haar', 'undecimated_haar' or 'lazy', got {kind!r}")
