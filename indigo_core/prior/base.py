"""What the prior's autoencoders and configs share: the core's `Autoencoder` protocol on top of
`moments` / `decode_raw`, and reading a config dataclass from its JSON dict."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..checks import is_bchw, is_finite, is_integral, is_real, shape_or_type, spatial_at_least
from ..errors import ConfigError, ShapeError
from ..inn.inputs import check_float_input

# SD1.x's latent scale: model-space latent = VAE latent * 0.18215. The bundled autoencoders are
# normalised after training (normalise_latents) so that this same factor gives unit variance.
SD_SCALE_FACTOR = 0.18215


def int_tuple(cls_name: str, field: str, value: Any, minimum: int) -> tuple:
    """value as a tuple of integers >= minimum (a list or tuple of them; 2.0 is taken, 2.5 is not)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
        raise ConfigError(f"{cls_name}.{field}: expected a list of integers >= {minimum}, got {value!r}")
    out = []
    for v in value:
        if not is_integral(v) or v < minimum:
            raise ConfigError(f"{cls_name}.{field}: expected a list of integers >= {minimum}, got {value!r}")
        out.append(int(v))
    return tuple(out)


def check_scale_factor(cls_name: str, value: Any) -> None:
    if not is_finite(value) or not value > 0:
        raise ConfigError(f"{cls_name}.scale_factor: expected a finite number > 0, got {value!r}")


def check_dropout(cls_name: str, value: Any) -> None:
    if not is_real(value) or not 0 <= value < 1:
        raise ConfigError(f"{cls_name}.dropout: expected a probability in [0, 1), got {value!r}")


def config_from_dict(cls, d: dict):
    """`cls(**d)` for a config dataclass, refusing fields it does not have (by name)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{cls.__name__}: expected a mapping of fields, got {type(d).__name__}")
    unknown = set(d) - set(cls.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    return cls(**d)


class AutoencoderBase(nn.Module):
    """The core's `Autoencoder` protocol for an autoencoder with `cfg.in_channels`,
    `cfg.downscale`, `cfg.scale_factor`, a `latent_channels` property, `moments(x)` ((B,3,H,W) in
    [-1,1] -> (mean, logvar)) and `decode_raw(z)` (-> about [-1,1]).

    `encode(x)`: (B,3,H,W) in [0,1] -> the posterior mean in the VAE's own latent space (what
    ComfyUI's `latent_format.process_out` gives). `decode(z)`: the inverse direction, in [0,1] up
    to the decoder's small overshoot; differentiable, unclamped unless `clamp=True`.
    """

    @property
    def downscale(self) -> int:
        return self.cfg.downscale

    @property
    def scale_factor(self) -> float:
        return self.cfg.scale_factor

    def _check_image(self, x: Tensor, method: str = "encode") -> None:
        who, c = f"{type(self).__name__}.{method}", self.cfg.in_channels
        if not is_bchw(x, c):
            raise ShapeError(f"{who}: expected an image (B,{c},H,W), got {shape_or_type(x)}")
        d = self.downscale
        if x.shape[-2] % d or x.shape[-1] % d or x.shape[-2] == 0 or x.shape[-1] == 0:
            raise ShapeError(f"{who}: expected H and W multiples of {d} (and >= {d}), got {tuple(x.shape[-2:])}")
        check_float_input(x, self, who, "the image")

    def _check_latent(self, z: Tensor, method: str = "decode") -> None:
        who, c = f"{type(self).__name__}.{method}", self.latent_channels
        if not is_bchw(z, c):
            raise ShapeError(f"{who}: expected a latent (B,{c},h,w), got {shape_or_type(z)}")
        if not spatial_at_least(z):
            raise ShapeError(f"{who}: expected a latent with h and w >= 1, got {tuple(z.shape[-2:])}")
        check_float_input(z, self, who, "the latent")

    def encode(self, x: Tensor) -> Tensor:
        self._check_image(x)
        return self.moments(x * 2.0 - 1.0)[0]

    def decode(self, z: Tensor, clamp: bool = False) -> Tensor:
        self._check_latent(z)
        x = (self.decode_raw(z) + 1.0) * 0.5
        return x.clamp(0.0, 1.0) if clamp else x

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction of (B,3,H,W) in [0,1] through the posterior mean."""
        return self.decode(self.encode(x))

    def _latent_affine(self, mean, std, target_std, device) -> tuple[Tensor, Tensor]:
        """(mean_c, a_c) in float64 for `normalise_latents`' z' = a (z - mean), a = target_std / std
        (target_std defaults to 1/scale_factor); checks one mean and one positive std per channel."""
        c = self.latent_channels
        mean_t = torch.as_tensor(mean, dtype=torch.float64, device=device).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float64, device=device).reshape(-1)
        if (mean_t.numel() != c or std_t.numel() != c or not bool((std_t > 0).all())
                or not bool(torch.isfinite(mean_t).all()) or not bool(torch.isfinite(std_t).all())):
            raise ConfigError(f"normalise_latents: expected {c} finite means and {c} finite positive stds, "
                              f"got {mean_t.tolist()}, {std_t.tolist()}")
        if target_std is not None and (not is_finite(target_std) or not target_std > 0):
            raise ConfigError(f"normalise_latents: expected target_std None or a finite number > 0, got {target_std!r}")
        target = 1.0 / self.scale_factor if target_std is None else float(target_std)
        return mean_t, target / std_t
