"""A plain convolutional autoencoder with SD's latent geometry (4 channels, x8 downsampling).

No normalisation layers and no attention: a 3x3 conv in, then per level a few residual blocks
(conv-ReLU-conv plus the input); 2x2 stride-2 convs go down, 1x1 convs with a pixel shuffle go up;
1x1 convs map to and from the latent. Widths grow as the resolution falls (default 32, 64, 128,
256), so most weights work at 1/8 size and a training step costs a few times less per pixel than
SD's AutoencoderKL design of about the same parameter count (on this project's 2-core CPU, 2
threads: about 226 kpix/s for `lean` in its 42-minute run, against 59 kpix/s measured for the
5.6 M-parameter AutoencoderKL `small` on 128 px crops).

It implements the same `Autoencoder` protocol as `AutoencoderKL` (`encode`/`decode` in [0,1],
`moments`/`decode_raw` in [-1,1], `normalise_latents`), with a deterministic latent (the
"posterior" has log-variance -30). The 1x1 latent convs make the latent normalisation exact.
ComfyUI has no class for this layout; the pack's loader wraps it as a `comfy.sd.VAE`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..checks import check_int
from ..errors import ConfigError, ConfigTypeError
from .base import SD_SCALE_FACTOR, AutoencoderBase, check_scale_factor, config_from_dict, int_tuple

FAMILY = "plain"


@dataclass(frozen=True)
class PlainAutoencoderConfig:
    """widths: channels per level, finest first (len 4 -> x8). blocks: residual blocks per level,
    the same in the encoder and the decoder. latent_channels: SD's 4. scale_factor: the latent
    format's factor (model latent = VAE latent * scale_factor)."""

    widths: tuple = (32, 64, 128, 256)
    blocks: tuple = (1, 1, 1, 2)
    latent_channels: int = 4
    in_channels: int = 3
    scale_factor: float = SD_SCALE_FACTOR
    family: str = FAMILY

    def __post_init__(self) -> None:
        name = "PlainAutoencoderConfig"
        object.__setattr__(self, "widths", int_tuple(name, "widths", self.widths, 1))
        object.__setattr__(self, "blocks", int_tuple(name, "blocks", self.blocks, 0))
        check_int(f"{name}.latent_channels", self.latent_channels, 1)
        check_int(f"{name}.in_channels", self.in_channels, 1)
        check_scale_factor(name, self.scale_factor)
        if self.family != FAMILY:
            raise ConfigError(f"PlainAutoencoderConfig.family: expected {FAMILY!r}, got {self.family!r}")
        if len(self.widths) < 1 or any(w <= 0 for w in self.widths):
            raise ConfigError(f"PlainAutoencoderConfig.widths: expected positive widths, got {self.widths}")
        if len(self.blocks) != len(self.widths) or any(b < 0 for b in self.blocks):
            raise ConfigError(f"PlainAutoencoderConfig.blocks: expected {len(self.widths)} counts >= 0 "
                              f"(one per width), got {self.blocks}")

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.widths) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"], d["blocks"] = list(self.widths), list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PlainAutoencoderConfig":
        return config_from_dict(cls, d)


#: "lean": the bundled prior's autoencoder (widths 32-256, 5.85 M parameters). "lean-tiny": tests.
PRESETS = {
    "lean": PlainAutoencoderConfig(),
    "lean-tiny": PlainAutoencoderConfig(widths=(8, 8, 16, 16), blocks=(1, 0, 0, 1)),
}


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: stable without norms
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


def _blocks(channels: int, n: int) -> nn.Sequential:
    return nn.Sequential(*[ResBlock(channels) for _ in range(n)])


class PlainEncoder(nn.Module):
    def __init__(self, cfg: PlainAutoencoderConfig):
        super().__init__()
        w = cfg.widths
        self.conv_in = nn.Conv2d(cfg.in_channels, w[0], 3, padding=1)
        self.levels = nn.ModuleList([_blocks(w[0], cfg.blocks[0])])
        self.down = nn.ModuleList()
        for i in range(1, len(w)):
            self.down.append(nn.Conv2d(w[i - 1], w[i], 2, stride=2))
            self.levels.append(_blocks(w[i], cfg.blocks[i]))
        self.conv_out = nn.Conv2d(w[-1], cfg.latent_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.levels[0](self.conv_in(x))
        for down, level in zip(self.down, self.levels[1:]):
            h = level(down(h))
        return self.conv_out(h)


class PlainDecoder(nn.Module):
    def __init__(self, cfg: PlainAutoencoderConfig):
        super().__init__()
        w = cfg.widths
        self.conv_in = nn.Conv2d(cfg.latent_channels, w[-1], 1)
        self.levels = nn.ModuleList([_blocks(w[-1], cfg.blocks[-1])])
        self.up = nn.ModuleList()
        for i in range(len(w) - 1, 0, -1):
            self.up.append(nn.Sequential(nn.Conv2d(w[i], 4 * w[i - 1], 1), nn.PixelShuffle(2)))
            self.levels.append(_blocks(w[i - 1], cfg.blocks[i - 1]))
        self.conv_out = nn.Conv2d(w[0], cfg.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.levels[0](self.conv_in(z))
        for up, level in zip(self.up, self.levels[1:]):
            h = level(up(h))
        return self.conv_out(h)


class PlainAutoencoder(AutoencoderBase):
    """The plain autoencoder under the core's `Autoencoder` protocol (see the module doc)."""

    def __init__(self, cfg: Optional[PlainAutoencoderConfig] = None):
        super().__init__()
        self.cfg = PlainAutoencoderConfig() if cfg is None else cfg
        if not isinstance(self.cfg, PlainAutoencoderConfig):
            raise ConfigTypeError(f"PlainAutoencoder: expected a PlainAutoencoderConfig (e.g. "
                              f"prior.PLAIN_AUTOENCODER_PRESETS['lean']), got {type(self.cfg).__name__}")
        self.encoder = PlainEncoder(self.cfg)
        self.decoder = PlainDecoder(self.cfg)

    @property
    def latent_channels(self) -> int:
        return self.cfg.latent_channels

    def peak_activations_per_pixel(self) -> int:
        """An upper bound on the activation elements alive at once, per image pixel, in an
        inference encode or decode (no gradients): what a host needs to size its batches.

        With m = max over levels l of widths[l] / 4^l (channels per image pixel at that level):
        inside a residual block up to four tensors of its level are alive (input, first conv,
        ReLU, second conv or sum) while the caller still holds the previous level's output (at
        most m), and the image-side ends add the image and one temporary (2 x in_channels):
        5m + 2 in_channels. For `lean` that is 166 elements per pixel against 112 measured
        (decode; encode 99), where ComfyUI budgets 2178 per pixel for SD's AutoencoderKL
        (tests/core/test_prior_plain_autoencoder.py measures several layouts)."""
        m = max(w / 4 ** level for level, w in enumerate(self.cfg.widths))
        return math.ceil(5 * m + 2 * self.cfg.in_channels)

    def moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B,3,H,W) in [-1,1] -> (latent, log-variance -30): the latent is deterministic."""
        self._check_image(x, "moments")
        z = self.encoder(x)
        return z, torch.full_like(z, -30.0)

    def decode_raw(self, z: Tensor) -> Tensor:
        """(B,4,h,w) VAE latent -> (B,3,8h,8w) in about [-1,1]."""
        self._check_latent(z, "decode_raw")
        return self.decoder(z)

    @torch.no_grad()
    def normalise_latents(self, mean: Sequence[float], std: Sequence[float], target_std: Optional[float] = None) -> None:
        """Fold z' = a (z - mean) with a = target_std / std into the 1x1 latent convs, exactly
        (see `AutoencoderKL.normalise_latents`; target_std defaults to 1/scale_factor)."""
        enc, dec = self.encoder.conv_out, self.decoder.conv_in
        mean_t, a = self._latent_affine(mean, std, target_std, enc.weight.device)
        enc.weight.copy_(enc.weight.double() * a.view(-1, 1, 1, 1))
        enc.bias.copy_((enc.bias.double() - mean_t) * a)
        w = dec.weight.double()
        dec.bias.copy_(dec.bias.double() + w[:, :, 0, 0] @ mean_t)
        dec.weight.copy_(w / a.view(1, -1, 1, 1))
