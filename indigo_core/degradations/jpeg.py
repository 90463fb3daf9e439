"""JPEG compression JPEG_q: a real codec (libjpeg through Pillow) and a differentiable one (kornia).

`jpeg_real` quantises to 8 bits, encodes each image with Pillow at its quality (4:2:0 chroma
subsampling, Pillow's standard tables, no optimisation pass), and decodes it: exactly what a user's
JPEG file would hold. It has no gradient. `jpeg_differentiable` uses
`kornia.enhance.jpeg_codec_differentiable` (same standard tables, a smooth rounding
approximation) where gradients through the degradation are needed; the two agree closely but not
bit for bit.
"""

from __future__ import annotations

import io
import numbers
from collections.abc import Sequence

import numpy as np
import torch

from ..checks import is_integral
from ..errors import ConfigError, ShapeError
from .checks import check_image

__all__ = ["jpeg_real", "jpeg_differentiable", "encode_jpeg", "to_uint8", "from_uint8"]


def _qualities(quality, n: int) -> list[int]:
    if isinstance(quality, torch.Tensor):
        quality = quality.flatten().tolist()
    if isinstance(quality, numbers.Real):
        quality = [quality] * n
    if isinstance(quality, (str, bytes)) or not isinstance(quality, Sequence):
        raise ConfigError(f"jpeg quality: expected an integer in 1..100 or one per image, got {quality!r}")
    quality = list(quality)
    if len(quality) != n:
        raise ShapeError(f"jpeg: expected {n} qualities (one per image), got {len(quality)}")
    out = []
    for q in quality:
        if not is_integral(q) or not 1 <= int(q) <= 100:
            raise ConfigError(f"jpeg quality: expected an integer in 1..100, got {q!r}")
        out.append(int(q))
    return out


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) float in [0,1] -> uint8 with clamping and round-half-to-even (torch.round)."""
    return (x.detach().clamp(0, 1) * 255.0).round().to(torch.uint8)


def from_uint8(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 -> float in [0,1] of `dtype`."""
    return x.to(dtype) / 255.0


def encode_jpeg(x: torch.Tensor, quality: int | Sequence[int] | torch.Tensor) -> list[bytes]:
    """JPEG files (bytes) of each image. x: (B,C,H,W) float in [0,1], C = 1 or 3; quality: one
    int in 1..100 or one per image. Pillow/libjpeg, 4:2:0 chroma subsampling, standard tables."""
    from PIL import Image

    check_image(x, "encode_jpeg", (1, 3))
    qs = _qualities(quality, x.shape[0])
    out = []
    for img, q in zip(to_uint8(x).cpu(), qs):
        arr = img.permute(1, 2, 0).numpy()
        pil = Image.fromarray(arr[..., 0], mode="L") if arr.shape[-1] == 1 else Image.fromarray(arr, mode="RGB")
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=q, subsampling=2, optimize=False)
        out.append(buf.getvalue())
    return out


def jpeg_real(x: torch.Tensor, quality: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Real JPEG round trip of each image. x: (B,C,H,W) float in [0,1] (C = 1 or 3);
    quality: one int in 1..100 or one per image. Returns (B,C,H,W) float in [0,1] with values
    k/255, dtype/device of x. Not differentiable (the output is detached)."""
    from PIL import Image

    check_image(x, "jpeg_real", (1, 3))
    if x.shape[0] == 0:
        _qualities(quality, 0)
        return x.detach().clone()
    gray = x.shape[1] == 1
    outs = []
    for data in encode_jpeg(x, quality):
        with Image.open(io.BytesIO(data)) as dec:
            arr = np.asarray(dec.convert("L" if gray else "RGB"), dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[..., None]
        outs.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
    return from_uint8(torch.stack(outs), x.dtype).to(x.device)


def jpeg_differentiable(x: torch.Tensor, quality: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Differentiable JPEG approximation (kornia). x: (B,3,H,W) float in [0,1], any H, W;
    quality: one int in 1..100 or one per image. Gradients flow to x."""
    from kornia.enhance import jpeg_codec_differentiable

    check_image(x, "jpeg_differentiable", (3,))
    qs = _qualities(quality, x.shape[0])
    if x.shape[0] == 0:
        return x.clamp(0, 1)
    q = torch.tensor(qs, dtype=x.dtype if x.dtype.is_floating_point else torch.float32, device=x.device)
    return jpeg_codec_differentiable(x.clamp(0, 1), q)
