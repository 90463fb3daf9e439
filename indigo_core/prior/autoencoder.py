"""The prior's autoencoder: Stable Diffusion's AutoencoderKL architecture in plain torch.

Same blocks and the same state-dict names as the ldm / ComfyUI `AutoencoderKL`
(`encoder.conv_in`, `encoder.down.{i}.block.{j}.*`, `encoder.mid.*`, `decoder.up.{i}.*`,
`quant_conv`, `post_quant_conv`), so a file written here loads into `comfy.sd.VAE(sd, config)`
unchanged and an SD VAE file loads here. Only the widths are configurable: SD's VAE is
`AutoencoderConfig(ch=128)` (83.7 M parameters); the pack's bundled one is much narrower.

Geometry as SD's: 4 latent channels, x8 downsampling (three downsamples for a 4-level `ch_mult`).
Images are (B,3,H,W) in [0,1] at this module's boundary (`encode`/`decode`); internally, as in SD,
the networks see [-1,1]. H and W must be multiples of 8 (`ShapeError` otherwise).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_int, is_py_int
from ..errors import ConfigError, ConfigTypeError
from .base import SD_SCALE_FACTOR, AutoencoderBase, check_dropout, check_scale_factor, config_from_dict, int_tuple



@dataclass(frozen=True)
class AutoencoderConfig:
    """Widths and depth of an SD-architecture KL autoencoder (ldm `ddconfig` + `embed_dim`).

    ch: base width (a multiple of 32: every norm is GroupNorm(32)). ch_mult: width multiplier per
    level; len(ch_mult)-1 downsamples (4 levels -> x8). num_res_blocks: ResNet blocks per encoder
    level (the decoder has one more, as in ldm). attn_resolutions: feature sizes (relative to
    `resolution`) that get extra self-attention blocks; SD uses none (only the middle one).
    z_channels / embed_dim: latent channels before / after quant_conv (SD: 4 / 4).
    scale_factor: the latent format's factor (model latent = VAE latent * scale_factor).
    """

    ch: int = 128
    ch_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple = ()
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    z_channels: int = 4
    embed_dim: int = 4
    double_z: bool = True
    dropout: float = 0.0
    scale_factor: float = SD_SCALE_FACTOR

    def __post_init__(self) -> None:
        name = "AutoencoderConfig"
        object.__setattr__(self, "ch_mult", int_tuple(name, "ch_mult", self.ch_mult, 1))
        object.__setattr__(self, "attn_resolutions", int_tuple(name, "attn_resolutions", self.attn_resolutions, 1))
        for f in ("num_res_blocks", "resolution", "in_channels", "out_ch", "z_channels", "embed_dim"):
            check_int(f"{name}.{f}", getattr(self, f), 1)
        if not isinstance(self.double_z, bool):
            raise ConfigError(f"AutoencoderConfig.double_z: expected a bool, got {self.double_z!r}")
        check_dropout(name, self.dropout)
        check_scale_factor(name, self.scale_factor)
        if not is_py_int(self.ch) or self.ch <= 0 or self.ch % 32:
            raise ConfigError(f"AutoencoderConfig.ch: expected a positive multiple of 32 (GroupNorm(32)), got {self.ch!r}")
        if len(self.ch_mult) < 1 or any(m <= 0 for m in self.ch_mult):
            raise ConfigError(f"AutoencoderConfig.ch_mult: expected positive multipliers, got {self.ch_mult}")

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["attn_resolutions"] = list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AutoencoderConfig":
        return config_from_dict(cls, d)

    def to_comfy_config(self) -> dict:
        """The `config` that `comfy.sd.VAE(sd=..., config=...)` takes for this architecture."""
        return {"params": {"embed_dim": self.embed_dim, "ddconfig": {
            "double_z": self.double_z, "z_channels": self.z_channels, "resolution": self.resolution,
            "in_channels": self.in_channels, "out_ch": self.out_ch, "ch": self.ch,
            "ch_mult": list(self.ch_mult), "num_res_blocks": self.num_res_blocks,
            "attn_resolutions": list(self.attn_resolutions), "dropout": self.dropout}}}


#: "sd": Stable Diffusion's own VAE (83.7 M parameters). "small": the bundled prior's, SD's blocks
#: with widths 64, 64, 128, 128 instead of 128, 256, 512, 512 (5.6 M parameters). "tiny": tests.
PRESETS = {
    "sd": AutoencoderConfig(),
    "base": AutoencoderConfig(ch=96, ch_mult=(1, 1, 2, 2)),
    "small": AutoencoderConfig(ch=64, ch_mult=(1, 1, 2, 2)),
    "tiny": AutoencoderConfig(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1),
}


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GN-SiLU-conv twice with a residual; a 1x1 `nin_shortcut` when the width changes (ldm names)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, 1x1 convs for q, k, v and the output."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        # (B, 1, HW, C): one head whose width is the full channel count, as in ldm.
        q, k, v = (t(n).reshape(b, 1, c, h * w).transpose(2, 3) for t in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(a.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one pixel right and bottom (ldm's asymmetric padding)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(channels: int, dropout: float) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, dropout)
    mid.attn_1 = AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels, dropout)
    return mid


class Encoder(nn.Module):
    """(B,3,H,W) in [-1,1] -> (B, 2*z_channels, H/8, W/8) (mean and log-variance moments)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        widths = [cfg.ch * m for m in (1,) + cfg.ch_mult]
        res = cfg.resolution
        self.down = nn.ModuleList()
        for level in range(len(cfg.ch_mult)):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            c_in, c_out = widths[level], widths[level + 1]
            for _ in range(cfg.num_res_blocks):
                stage.block.append(ResnetBlock(c_in, c_out, cfg.dropout))
                c_in = c_out
                if res in cfg.attn_resolutions:
                    stage.attn.append(AttnBlock(c_out))
            if level != len(cfg.ch_mult) - 1:
                stage.downsample = Downsample(c_out)
                res //= 2
            self.down.append(stage)
        top = widths[-1]
        self.mid = _mid(top, cfg.dropout)
        self.norm_out = _norm(top)
        self.conv_out = nn.Conv2d(top, (2 if cfg.double_z else 1) * cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            for j, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[j](h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, z_channels, h, w) -> (B,3,8h,8w) in about [-1,1] (unclamped)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        n = len(cfg.ch_mult)
        c = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, c, 3, padding=1)
        self.mid = _mid(c, cfg.dropout)
        stages = []
        for level in reversed(range(n)):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            c_out = cfg.ch * cfg.ch_mult[level]
            for _ in range(cfg.num_res_blocks + 1):
                stage.block.append(ResnetBlock(c, c_out, cfg.dropout))
                c = c_out
                if res in cfg.attn_resolutions:
                    stage.attn.append(AttnBlock(c))
            if level != 0:
                stage.upsample = Upsample(c)
                res *= 2
            stages.insert(0, stage)  # ldm numbers `up` by resolution level, finest first
        self.up = nn.ModuleList(stages)
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, cfg.out_ch, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for stage in reversed(self.up):
            for j, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[j](h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(AutoencoderBase):
    """SD's KL autoencoder, implementing the core's `Autoencoder` protocol.

    `encode(x)`: (B,3,H,W) in [0,1] -> posterior mean (B,4,H/8,W/8) in the VAE's own latent space
    (what ComfyUI's `latent_format.process_out` gives). `decode(z)`: the inverse direction, in
    [0,1] up to the decoder's small overshoot; differentiable, unclamped unless `clamp=True`.
    `moments(x)` / `decode_raw(z)` are the training-time views in [-1,1].
    """

    def __init__(self, cfg: Optional[AutoencoderConfig] = None):
        super().__init__()
        self.cfg = AutoencoderConfig() if cfg is None else cfg
        if not isinstance(self.cfg, AutoencoderConfig):
            raise ConfigTypeError(f"AutoencoderKL: expected an AutoencoderConfig (e.g. prior.AUTOENCODER_PRESETS['small']), "
                              f"got {type(self.cfg).__name__}")
        self.encoder = Encoder(self.cfg)
        self.decoder = Decoder(self.cfg)
        zc = (2 if self.cfg.double_z else 1) * self.cfg.z_channels
        self.quant_conv = nn.Conv2d(zc, (2 if self.cfg.double_z else 1) * self.cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(self.cfg.embed_dim, self.cfg.z_channels, 1)

    # -- protocol -------------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        return self.cfg.embed_dim

    def moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B,3,H,W) in [-1,1] -> (mean, logvar) of the diagonal Gaussian posterior."""
        self._check_image(x, "moments")
        m = self.quant_conv(self.encoder(x))
        if not self.cfg.double_z:
            return m, torch.full_like(m, -30.0)
        mean, logvar = m.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode_raw(self, z: Tensor) -> Tensor:
        """(B,4,h,w) VAE latent -> (B,3,8h,8w) in about [-1,1]."""
        self._check_latent(z, "decode_raw")
        return self.decoder(self.post_quant_conv(z))

    # -- latent normalisation -------------------------------------------------------------------
    @torch.no_grad()
    def normalise_latents(self, mean: Sequence[float], std: Sequence[float], target_std: Optional[float] = None) -> None:
        """Fold a per-channel affine map into quant_conv / post_quant_conv, exactly.

        With per-channel latent statistics (mean_c, std_c) measured on data, the new latent is
        z'_c = (z_c - mean_c) * target_std / std_c, and the decoder undoes it, so reconstructions
        are unchanged. target_std defaults to 1/scale_factor: then `z' * scale_factor` (what a
        diffusion model sees under SD's latent format) has zero mean and unit variance per channel.
        """
        if not self.cfg.double_z:
            raise ConfigError("normalise_latents needs a double_z (mean, logvar) autoencoder")
        c = self.cfg.embed_dim
        mean_t, a = self._latent_affine(mean, std, target_std, self.quant_conv.weight.device)  # z' = a (z - m)
        qw, qb = self.quant_conv.weight.double(), self.quant_conv.bias.double()
        qw[:c] *= a.view(-1, 1, 1, 1)
        qb[:c] = (qb[:c] - mean_t) * a
        qb[c:] += 2.0 * torch.log(a)  # the posterior's variance scales by a^2
        self.quant_conv.weight.copy_(qw)
        self.quant_conv.bias.copy_(qb)
        pw, pb = self.post_quant_conv.weight.double(), self.post_quant_conv.bias.double()
        # post(z) = W z + b with z = z'/a + m  ->  W/a z' + (W m + b)
        pb_new = pb + (pw[:, :, 0, 0] @ mean_t)
        pw_new = pw / a.view(1, -1, 1, 1)
        self.post_quant_conv.weight.copy_(pw_new)
        self.post_quant_conv.bias.copy_(pb_new)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def latent_rgb_factors(ae: AutoencoderKL, images: Tensor) -> tuple[list, list]:
    """Least-squares linear map from model-space latents to RGB at 1/8 size, for previews.

    images: (B,3,H,W) in [0,1]. Returns (factors as 4 rows of [R,G,B], bias [R,G,B]) on the
    [-1,1] scale ComfyUI's latent2rgb preview expects.
    """
    with torch.no_grad():
        z = ae.encode(images) * ae.scale_factor
        rgb = F.avg_pool2d(images * 2.0 - 1.0, ae.downscale)
        a = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).double().cpu()
        a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], dim=1)
        b = rgb.permute(0, 2, 3, 1).reshape(-1, 3).double().cpu()
        sol = torch.linalg.lstsq(a, b).solution
    return [[round(float(v), 4) for v in row] for row in sol[:-1]], [round(float(v), 4) for v in sol[-1]]
