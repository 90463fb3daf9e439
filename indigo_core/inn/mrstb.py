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
from timm.models.swin_transformer import SwinTransformerBlock, window_partition

_MASK_CACHE: "OrderedDict[tuple[Any, ...], Optional[Tensor]]" = OrderedDict()
_MASK_CACHE_SIZE = 8
_ORDER_CACHE: "OrderedDict[tuple[Any, ...], tuple[Tensor, Tensor]]" = OrderedDict()
_ORDER_CACHE_SIZE = 16


def _window_order(h: int, w: int, window: tuple[int, int], shift: tuple[int, int], device: Any) -> tuple[Tensor, Tensor]:
    """Token order of the (shifted) window partition of an (h, w) grid, whole windows: `perm`
    lists, window after window (row-major, as timm's window_partition), the flat index h*w of each
    token after the cyclic shift by -shift; `inv` is its inverse permutation."""
    idx = torch.arange(h * w, device=device).view(1, h, w, 1)
    if any(shift):
        idx = torch.roll(idx, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    perm = window_partition(idx, window).reshape(-1)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(h * w, device=device)
    return perm, inv


def _cached_window_order(h: int, w: int, window: tuple[int, int], shift: tuple[int, int],
                         device: Any) -> tuple[Tensor, Tensor]:
    """_window_order, kept per (h, w, window, shift, device, inference mode): index tensors only,
    nothing derived from parameters."""
    if torch.compiler.is_compiling():  # (the graph builds it once, as a constant)
        return _window_order(h, w, window, shift, device)
    key = (h, w, window, shift, torch.device(device), torch.is_inference_mode_enabled())
    if key in _ORDER_CACHE:
        _ORDER_CACHE.move_to_end(key)
        return _ORDER_CACHE[key]
    order = _window_order(h, w, window, shift, device)
    _ORDER_CACHE[key] = order
    while len(_ORDER_CACHE) > _ORDER_CACHE_SIZE:
        _ORDER_CACHE.popitem(last=False)
    return order


class _TokenPermute(torch.autograd.Function):
    """x (B, L, C) -> x[:, perm] in one copy; its gradient is the same gather with the inverse
    permutation (instead of autograd's scatter-add for indexing)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, perm: Tensor, inv: Tensor) -> Tensor:
        ctx.save_for_backward(perm, inv)
        return x.index_select(1, perm)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], None, None]:
        _, inv = ctx.saved_tensors
        return grad.index_select(1, inv), None, None


class SwinLayer(SwinTransformerBlock):
    """timm's Swin layer whose shifted-window attention mask is built once per (padded size,
    window, shift, device, dtype, inference mode) and shared by all layers, instead of on every
    call (timm's dynamic_mask rebuilds it each forward: ~15 small kernels per shifted layer).

    Attention runs through torch's fused scaled_dot_product_attention (timm's own fused branch,
    which timm leaves off for Swin by default): the same result to float rounding (the bias and
    mask enter as an additive mask), without materialising the (windows, heads, N, N) attention
    probabilities for backward. Measured with one CPU thread: latent-paper INN at a 64x64 latent
    0.32 -> 0.29 s forward; pixel-paper at 512 px forward+backward 8.5 -> 6.8 s (benchmarks/README.md).
    `fused=False` keeps timm's explicit softmax path.

    On the fused path, for whole windows (MRSTB pads to them), the cyclic shift and the window
    partition are one gather of the tokens (and the window merge and the shift back another),
    instead of two rolls (two copies each) and a partition copy per direction; q, k and v are split
    off the qkv projection so that their gradients stack straight into its layout (timm's split
    needs a second copy in backward). Same operations on the same numbers as timm's fused branch."""

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

    def _attn(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        win = self.window_size
        if not self.attn.fused_attn or H % win[0] or W % win[1]:
            return super()._attn(x)
        perm, inv = _cached_window_order(H, W, win, self.shift_size, x.device)
        windows = _TokenPermute.apply(x.reshape(B, H * W, C), perm, inv).view(-1, self.window_area, C)
        mask = self.get_attn_mask(x) if any(self.shift_size) else None
        out = self._window_attention(windows, mask)  # (B * windows, N, C)
        return _TokenPermute.apply(out.view(B, H * W, C), inv, perm).view(B, H, W, C)

    def _window_attention(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        """timm's fused WindowAttention.forward with q, k, v unbound along the qkv layout's own
        axis (the same strided views)."""
        attn = self.attn
        B_, N, C = x.shape
        heads = attn.num_heads
        q, k, v = (t.transpose(1, 2) for t in attn.qkv(x).view(B_, N, 3, heads, -1).unbind(2))
        attn_mask = attn._get_rel_pos_bias()
        if mask is not None:
            num_win = mask.shape[0]
            mask = mask.view(1, num_win, 1, N, N).expand(B_ // num_win, -1, heads, -1, -1)
            attn_mask = attn_mask + mask.reshape(-1, heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=attn.attn_drop.p if self.training else 0.)
        out = out.transpose(1, 2).reshape(B_, N, -1)
        return attn.proj_drop(attn.proj(out))


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
        h = self._channels_last(x)
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


    @staticmethod
    def _channels_last(x: Tensor) -> Tensor:
        """(B,C,H,W) -> (B,H,W,C) for timm's Swin layers, copied once here instead of a LayerNorm
        copy of the first layer's input, the residual's reshape copy and their copies in backward."""
        return rearrange(x, "b c h w -> b h w c").contiguous()


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
