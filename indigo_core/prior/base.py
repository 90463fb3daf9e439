"""What the prior's autoencoders and configs share: the core's `Autoencoder` protocol on top of
`moments` / `decode_raw`, and reading a config dataclass from its JSON dict."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError, ShapeError

# SD1.x's latent scale: model-space latent = VAE latent * 0.18215. The bundled autoencoders are
# normalised after training (normalise_latents) so that this same factor gives unit variance.
SD_SCALE_FACTOR = 0.18215


def config_from_dict(cls, d: dict):
    """`cls(**d)` for a config dataclass, refusing fields it does not have (by name)."""
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

    def _check_image(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise ShapeError(f"autoencoder input: expected (B,{self.cfg.in_channels},H,W), got {tuple(x.shape)}")
        d = self.downscale
        if x.shape[-2] % d or x.shape[-1] % d:
            raise ShapeError(f"autoencoder input: expected H and W multiples of {d}, got {tuple(x.shape[-2:])}")

    def encode(self, x: Tensor) -> Tensor:
        self._check_image(x)
        return self.moments(x * 2.0 - 1.0)[0]

    def decode(self, z: Tensor, clamp: bool = False) -> Tensor:
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ShapeError(f"autoencoder latent: expected (B,{self.latent_channels},h,w), got {tuple(z.shape)}")
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
        if mean_t.numel() != c or std_t.numel() != c or not bool((std_t > 0).all()):
            raise ConfigError(f"normalise_latents: expected {c} means and {c} positive stds, got {mean_t.tolist()}, {std_t.tolist()}")
        target = 1.0 / self.scale_factor if target_std is None else float(target_std)
        return mean_t, target / std_t
