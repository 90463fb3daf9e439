"""The prior's denoiser: a small epsilon-prediction UNet with SD1.x's block layout, in plain torch.

The modules and state-dict names are those of ComfyUI's `openaimodel.UNetModel` with
`use_spatial_transformer=True, legacy=False` (SD1.5's settings): `time_embed.{0,2}`,
`input_blocks.{i}.{0,1}`, `middle_block.{0,1,2}`, `output_blocks.{i}.{0,1,2}`, `out.{0,2}`, with
ResBlocks (`in_layers`, `emb_layers`, `out_layers`, `skip_connection`), SpatialTransformers
(`norm`, `proj_in`, `transformer_blocks.{d}.{attn1,attn2,ff,norm1..3}`, `proj_out`) and
`op` / `conv` resamplers. `UNetConfig.to_comfy_unet_config()` gives the `unet_config` under which
ComfyUI builds the same network, so the same weights give the same output there (host test).

It is trained here because the training machine has no ComfyUI; the pack's loader node gives
ComfyUI its own UNetModel with these weights.

Inputs follow ComfyUI's call: `forward(x, timesteps, context)` with x (B,4,h,w) the scaled noisy
latent x_t = (z + sigma n) / sqrt(1 + sigma^2), timesteps (B,) float in [0, 999] and context
(B, T, context_dim); output: the predicted noise n, (B,4,h,w).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_int, is_bchw, is_py_int, shape_or_type, spatial_at_least
from ..errors import ConfigError, ConfigTypeError, ShapeError
from ..inn.inputs import autocast_on, check_float_input
from .base import check_dropout, config_from_dict, int_tuple


@dataclass(frozen=True)
class UNetConfig:
    """Widths, depth and attention placement of the UNet.

    channel_mult: width multiplier per level (len-1 downsamples). attention_depth: transformer
    depth per level (0 = no attention at that level), used for every ResBlock of the level in
    both halves, as in SD1.5. middle_depth: transformer depth in the middle block (-1: none).
    num_heads: attention heads everywhere (head width = channels / num_heads).
    context_tokens: length of the learned constant context the unconditional prior is trained
    with (saved with the weights; the pack's loader returns it as the empty-prompt CONDITIONING).
    """

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 64
    channel_mult: tuple = (1, 1, 2)
    num_res_blocks: int = 2
    attention_depth: tuple = (0, 1, 1)
    middle_depth: int = 1
    num_heads: int = 2
    context_dim: int = 64
    context_tokens: int = 1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        name = "UNetConfig"
        object.__setattr__(self, "channel_mult", int_tuple(name, "channel_mult", self.channel_mult, 1))
        object.__setattr__(self, "attention_depth", int_tuple(name, "attention_depth", self.attention_depth, 0))
        if not self.channel_mult:
            raise ConfigError("UNetConfig.channel_mult: expected at least one level, got ()")
        if not is_py_int(self.model_channels) or self.model_channels <= 0 or self.model_channels % 32:
            raise ConfigError(f"UNetConfig.model_channels: expected a positive multiple of 32 (GroupNorm(32)), "
                              f"got {self.model_channels!r}")
        for f in ("in_channels", "out_channels", "num_res_blocks", "num_heads", "context_dim",
                  "context_tokens"):
            check_int(f"{name}.{f}", getattr(self, f), 1)
        if not is_py_int(self.middle_depth):
            raise ConfigError(f"UNetConfig.middle_depth: expected -1 (no attention) or an integer >= 1, "
                              f"got {self.middle_depth!r}")
        check_dropout(name, self.dropout)
        if len(self.attention_depth) != len(self.channel_mult):
            raise ConfigError(f"UNetConfig.attention_depth: expected one depth per level ({len(self.channel_mult)}), got {self.attention_depth}")
        if self.middle_depth < 1 and self.middle_depth != -1:
            raise ConfigError(f"UNetConfig.middle_depth: expected -1 (no attention) or >= 1, got {self.middle_depth}")
        for m in self.channel_mult:
            if (m * self.model_channels) % self.num_heads:
                raise ConfigError(f"UNetConfig.num_heads={self.num_heads} does not divide width {m * self.model_channels}")
        if self.num_res_blocks < 1 or self.context_dim < 1 or self.context_tokens < 1:
            raise ConfigError("UNetConfig: expected num_res_blocks, context_dim, context_tokens >= 1")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_depth"] = list(self.attention_depth)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        return config_from_dict(cls, d)

    def to_comfy_unet_config(self) -> dict:
        """ComfyUI's `unet_config` (as model_detection would produce, plus num_heads) for this net."""
        n = len(self.channel_mult)
        return {
            "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
            "adm_in_channels": None, "in_channels": self.in_channels, "out_channels": self.out_channels,
            "model_channels": self.model_channels, "num_res_blocks": [self.num_res_blocks] * n,
            "transformer_depth": [d for d in self.attention_depth for _ in range(self.num_res_blocks)],
            "transformer_depth_output": [d for d in self.attention_depth for _ in range(self.num_res_blocks + 1)],
            "channel_mult": list(self.channel_mult), "transformer_depth_middle": self.middle_depth,
            "use_linear_in_transformer": False, "context_dim": self.context_dim,
            "num_heads": self.num_heads, "num_head_channels": -1,
            "use_temporal_attention": False, "use_temporal_resblock": False,
        }


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """(B,) possibly fractional timesteps -> (B, dim) [cos | sin] features (SD's order)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """GN-SiLU-conv, add the projected time embedding, GN-SiLU-dropout-conv, plus a skip."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(nn.GroupNorm(32, out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    """Multi-head attention of x (B,N,C) over context (B,T,Cc) (or over itself when context is None)."""

    def __init__(self, query_dim: int, heads: int, context_dim: Optional[int] = None):
        super().__init__()
        self.heads = heads
        kv_dim = query_dim if context_dim is None else context_dim
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_k = nn.Linear(kv_dim, query_dim, bias=False)
        self.to_v = nn.Linear(kv_dim, query_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(query_dim, query_dim), nn.Dropout(0.0))

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        ctx = x if context is None else context
        b, n, c = x.shape
        q = self.to_q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k = self.to_k(ctx).view(b, ctx.shape[1], self.heads, -1).transpose(1, 2)
        v = self.to_v(ctx).view(b, ctx.shape[1], self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, c))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Self-attention, cross-attention to the context, gated feed-forward; pre-LayerNorm residuals."""

    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, heads, context_dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm, 1x1 conv in, `depth` transformer blocks over the H*W tokens, 1x1 conv out, residual."""

    def __init__(self, channels: int, heads: int, depth: int, context_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(channels, heads, context_dim) for _ in range(depth)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, c, h, w = x.shape
        t = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            t = block(t, context)
        return x + self.proj_out(t.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest upsampling to the size of the matching skip (handles odd sizes), then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: Optional[tuple] = None) -> Tensor:
        size = size or (x.shape[-2] * 2, x.shape[-1] * 2)
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class Stage(nn.ModuleList):
    """One `input_blocks` / `output_blocks` / `middle_block` entry: layers applied in order."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor, size: Optional[tuple] = None) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, size)
            else:
                x = layer(x)
        return x


class EpsUNet(nn.Module):
    """Predicts the noise of a scaled noisy latent: (B,4,h,w), (B,), (B,T,Cc) -> (B,4,h,w)."""

    def __init__(self, cfg: Optional[UNetConfig] = None):
        super().__init__()
        self.cfg = cfg = UNetConfig() if cfg is None else cfg
        if not isinstance(cfg, UNetConfig):
            raise ConfigTypeError(f"EpsUNet: expected a UNetConfig, got {type(cfg).__name__}")
        mc = cfg.model_channels
        emb = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))

        self.input_blocks = nn.ModuleList([Stage([nn.Conv2d(cfg.in_channels, mc, 3, padding=1)])])
        skips = [mc]
        ch = mc
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(ch, emb, mult * mc, cfg.dropout)]
                ch = mult * mc
                if cfg.attention_depth[level] > 0:
                    layers.append(SpatialTransformer(ch, cfg.num_heads, cfg.attention_depth[level], cfg.context_dim))
                self.input_blocks.append(Stage(layers))
                skips.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(Stage([Downsample(ch)]))
                skips.append(ch)

        middle = [ResBlock(ch, emb, ch, cfg.dropout)]
        if cfg.middle_depth >= 1:
            middle += [SpatialTransformer(ch, cfg.num_heads, cfg.middle_depth, cfg.context_dim),
                       ResBlock(ch, emb, ch, cfg.dropout)]
        self.middle_block = Stage(middle)

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(cfg.channel_mult))):
            mult = cfg.channel_mult[level]
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), emb, mult * mc, cfg.dropout)]
                ch = mult * mc
                if cfg.attention_depth[level] > 0:
                    layers.append(SpatialTransformer(ch, cfg.num_heads, cfg.attention_depth[level], cfg.context_dim))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(Stage(layers))
        self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(mc, cfg.out_channels, 3, padding=1))

    def forward(self, x: Tensor, timesteps: Tensor, context: Tensor) -> Tensor:
        cfg = self.cfg
        if not is_bchw(x, cfg.in_channels):
            raise ShapeError(f"UNet input: expected (B,{cfg.in_channels},h,w), got {shape_or_type(x)}")
        b = x.shape[0]
        if not spatial_at_least(x):
            raise ShapeError(f"UNet input: expected h and w >= 1, got {tuple(x.shape)}")
        check_float_input(x, self, "UNet", "x")
        if not isinstance(context, Tensor) or context.ndim != 3 or context.shape[-1] != cfg.context_dim:
            raise ShapeError(f"UNet context: expected (B,T,{cfg.context_dim}), got {shape_or_type(context)}")
        if context.shape[0] != b or context.shape[1] < 1:
            raise ShapeError(f"UNet context: expected ({b},T,{cfg.context_dim}) with T >= 1 (x's batch {b}; "
                             f"expand a (1,T,C) context with .expand({b}, -1, -1)), got {tuple(context.shape)}")
        if context.dtype != x.dtype and not autocast_on(x.device.type):
            raise ShapeError(f"UNet context: expected x's dtype {x.dtype}, got {context.dtype}")
        if not isinstance(timesteps, Tensor) or timesteps.ndim > 1 or (timesteps.ndim == 1 and timesteps.shape[0] not in (1, b)):
            raise ShapeError(f"UNet timesteps: expected a tensor of shape ({b},), (1,) or () (x's batch {b}), "
                             f"got {shape_or_type(timesteps)}")
        if timesteps.dtype == torch.bool or timesteps.is_complex():
            raise ShapeError(f"UNet timesteps: expected integer or float timesteps in [0, 999], got dtype {timesteps.dtype}")
        if b == 0:  # an empty batch: an empty output (the attention reshapes cannot take B=0)
            return x.new_zeros((0, cfg.out_channels, *x.shape[-2:]))
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, cfg.model_channels).to(x.dtype))
        hs = []
        h = x
        for stage in self.input_blocks:
            h = stage(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for stage in self.output_blocks:
            h = torch.cat([h, hs.pop()], dim=1)
            h = stage(h, emb, context, hs[-1].shape[-2:] if hs else None)
        return self.out(h)


class NullContext(nn.Module):
    """The learned constant context of the unconditional prior, (1, T, context_dim)."""

    def __init__(self, tokens: int, dim: int):
        super().__init__()
        self.context = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)

    def forward(self, batch: int) -> Tensor:
        return self.context.expand(batch, -1, -1)
