"""MRSTB (Modulated Residual Swin Transformer Block, paper Fig. 4) and the INDIGO+ residual block.

Both map features (B,hidden,H,W) to the same shape, with a residual connection and a channel-wise
scale computed from the degradation embedding gamma (B,emb_dim). gamma None means scale 1.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from timm.models.swin_transformer import SwinTransformerBlock

_MASK_CACHE: "OrderedDict[tuple[Any, ...], Optional[Tensor]]" = OrderedDict()
_MASK_CACHE_SIZE = 8


class SwinLayer(SwinTransformerBlock):
    """timm's Swin layer whose shifted-window attention mask is built once per (padded size,
    window, shift, device, dtype, inference mode) and shared by all layers, instead of on every
    call (timm's dynamic_mask rebuilds it each forward: ~15 small kernels per shifted layer).

    Attention runs through torch's fused scaled_dot_product_attention (timm's own fused branch,
    which timm leaves off for Swin by default): the same result to float rounding (the bias and
    mask enter as an additive mask), without materialising the (windows, heads, N, N) attention
    probabilities for backward. Measured with one CPU thread: latent-paper INN at a 64x64 latent
    0.32 -> 0.29 s forward; pixel-paper at 512 px forward+backward 8.5 -> 6.8 s (benchmarks/README.md).
    `fused=False` keeps timm's explicit softmax path."""

    def __init__(self, *args: Any, fused: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.attn.fused_attn = bool(fused)

    def get_attn_mask(self, x: Optional[Tensor] = None, device: Any = None, dtype: Any = None) -> Optional[Tensor]:
        if x is None or torch.compiler.is_compiling():
            # (compiled: the cache key's inference-mode query cannot be traced; the graph holds the mask)
            return super().get_attn_mask(x, device=device, dtype=dtype)
        key = (x.shape[1], x.shape[2], self.window_size, self.shift_size, x.device, x.dtype,
               torch.is_inference_mode_enabled())
        if key in _MASK_CACHE:
            _MASK_CACHE.move_to_end(key)
            return _MASK_CACHE[key]
        with torch.no_grad():
            mask = super().get_attn_mask(x)
        _MASK_CACHE[key] = mask
        while len(_MASK_CACHE) > _MASK_CACHE_SIZE:
            _MASK_CACHE.popitem(last=False)
        return mask


def make_channel_scale(emb_dim: int, hidden: int, mod_hidden: int) -> nn.Module:
    """FC(emb_dim -> hidden) (paper) or FC(emb_dim -> mod_hidden) -> ReLU -> FC(-> hidden) (INDIGO+)."""
    if mod_hidden == 0:
        return nn.Linear(emb_dim, hidden)
    return nn.Sequential(nn.Linear(emb_dim, mod_hidden), nn.ReLU(), nn.Linear(mod_hidden, hidden))


class MRSTB(nn.Module):
    """K Swin layers (window attention with relative position bias; shifts alternate 0 and
    window // 2) -> channel scale FC(gamma) -> + input.

    Any H, W: each layer gets its input zero-padded at the bottom and right to whole windows and
    its output cropped back (always_partition=True keeps the configured window and shift whatever
    the nominal resolution). timm's own padding comes after the cyclic shift, so its mask would let
    the shifted windows see across the image edge (the last rows next to the first ones) whenever a
    side is not a multiple of the window; padding first keeps the edge masked."""

    def __init__(self, hidden: int, heads: int, window: int, layers: int, mlp_ratio: float,
                 emb_dim: int, mod_hidden: int = 0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            SwinLayer(
                dim=hidden,
                input_resolution=(window, window),
                num_heads=heads,
                window_size=window,
                shift_size=0 if k % 2 == 0 else window // 2,
                mlp_ratio=mlp_ratio,
                always_partition=True,
                dynamic_mask=True,
            )
            for k in range(layers)
        )
        self.fc = make_channel_scale(emb_dim, hidden, mod_hidden)

    def forward(self, x: Tensor, gamma: Optional[Tensor] = None) -> Tensor:
        """x (B,hidden,H,W), gamma (B,emb_dim) or None -> (B,hidden,H,W)."""
        h = rearrange(x, "b c h w -> b h w c")  # timm Swin layers are channels-last
        H, W = h.shape[1], h.shape[2]
        win = self.layers[0].window_size
        ph, pw = (-H) % win[0], (-W) % win[1]
        for layer in self.layers:
            if ph or pw:
                h = layer(F.pad(h, (0, 0, 0, pw, 0, ph)))[:, :H, :W]
            else:
                h = layer(h)
        h = rearrange(h, "b h w c -> b c h w")
        if gamma is not None:
            h = h * self.fc(gamma)[:, :, None, None]
        return x + h


class ScaledResBlock(nn.Module):
    """INDIGO+ block: x + conv2(ReLU(conv1(x))) * FC(gamma), 3x3 convs with bias."""

    def __init__(self, hidden: int, kernel: int, emb_dim: int, mod_hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(hidden, hidden, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv2d(hidden, hidden, kernel, padding=kernel // 2)
        self.act = nn.ReLU()
        self.fc = make_channel_scale(emb_dim, hidden, mod_hidden)

    def forward(self, x: Tensor, gamma: Optional[Tensor] = None) -> Tensor:
        """x (B,hidden,H,W), gamma (B,emb_dim) or None -> (B,hidden,H,W)."""
        out = self.conv2(self.act(self.conv1(x)))
        if gamma is not None:
            out = out * self.fc(gamma)[:, :, None, None]
        return x + out
