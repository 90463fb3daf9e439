"""SD1.x's discrete noise schedule and a plain Euler sampler over it.

betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2 ("scaled linear"; ComfyUI calls it "linear"),
alpha_bar_t = prod(1 - beta), sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t). Training noises
z0 as x_t = sqrt(alpha_bar) z0 + sqrt(1 - alpha_bar) n, which is ComfyUI's scaled input
(z0 + sigma n) / sqrt(1 + sigma^2): so the trained UNet runs under every ComfyUI sampler and
scheduler unchanged. Timesteps given to the UNet at sampling time are the nearest integer t of a
sigma, as ComfyUI's ModelSamplingDiscrete does.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..checks import is_bchw, is_finite, is_int, shape_or_type
from ..errors import ConfigError, ShapeError

LINEAR_START = 0.00085
LINEAR_END = 0.012
TIMESTEPS = 1000


def sd_betas(timesteps: int = TIMESTEPS, linear_start: float = LINEAR_START, linear_end: float = LINEAR_END) -> Tensor:
    """(T,) float64 betas of SD's scaled-linear schedule."""
    return torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2


def _check_float_latent(x: Tensor, who: str, name: str) -> None:
    if not is_bchw(x) or not x.is_floating_point():
        raise ShapeError(f"{who}: expected {name} as a floating-point latent (B,C,h,w), "
                         f"got {shape_or_type(x, with_dtype=True)}")


class DiscreteSchedule:
    """alpha_bar and sigma tables of a discrete DDPM schedule (float64 on the CPU; moved on use)."""

    def __init__(self, betas: Tensor | None = None):
        if betas is not None:
            if not isinstance(betas, Tensor) or betas.ndim != 1 or betas.numel() < 1 or not betas.is_floating_point():
                raise ConfigError(f"DiscreteSchedule: expected betas as a 1-D floating-point tensor (T,) with T >= 1, "
                                  f"got {shape_or_type(betas, with_dtype=True)}")
            if not bool(((betas > 0) & (betas < 1)).all()):
                raise ConfigError(f"DiscreteSchedule: expected every beta in (0, 1), got values in "
                                  f"[{float(betas.min())}, {float(betas.max())}]")
        self.betas = sd_betas() if betas is None else betas.detach().double().cpu()
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.sigmas = ((1.0 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()
        self.num_timesteps = int(self.betas.shape[0])
        self._on_device: dict = {}

    def _alphas_cumprod_on(self, device: torch.device) -> Tensor:
        # One copy per device: moving the table on every training step would stall the GPU queue.
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = self.alphas_cumprod.to(device)
        return self._on_device[key]

    def to_dict(self) -> dict:
        return {"beta_schedule": "scaled_linear", "linear_start": LINEAR_START, "linear_end": LINEAR_END,
                "timesteps": self.num_timesteps, "parameterization": "eps"}

    def add_noise(self, z0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(alpha_bar_t) z0 + sqrt(1 - alpha_bar_t) noise; t (B,) integer."""
        self._check_add_noise(z0, t, noise)
        ab = self._alphas_cumprod_on(z0.device)[t].to(z0.dtype).view(-1, 1, 1, 1)
        return ab.sqrt() * z0 + (1.0 - ab).sqrt() * noise

    def _check_add_noise(self, z0: Tensor, t: Tensor, noise: Tensor) -> None:
        # shapes and dtypes only; the range of t is checked where that needs no device sync (CPU)
        _check_float_latent(z0, "add_noise", "z0")
        if not isinstance(noise, Tensor) or noise.shape != z0.shape:
            raise ShapeError(f"add_noise: expected noise of z0's shape {tuple(z0.shape)}, got {shape_or_type(noise)}")
        b, n = z0.shape[0], self.num_timesteps
        if is_int(t):
            t = torch.tensor(t)
        if not isinstance(t, Tensor) or t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, b)):
            raise ShapeError(f"add_noise: expected t as integer timesteps of shape ({b},), (1,) or (), "
                             f"got {shape_or_type(t)}")
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ShapeError(f"add_noise: expected integer timesteps in [0, {n - 1}] (e.g. torch.randint(0, {n}, "
                             f"({b},))), got dtype {t.dtype}")
        if t.device.type == "cpu" and t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
            raise ShapeError(f"add_noise: expected timesteps in [0, {n - 1}], got values in [{int(t.min())}, {int(t.max())}]")

    def timestep(self, sigma: Tensor) -> Tensor:
        """Nearest integer timestep of each sigma (in log space), as float."""
        if not isinstance(sigma, Tensor):
            raise ShapeError(f"timestep: expected sigma as a tensor, got {type(sigma).__name__}")
        log_s = self.sigmas.log().to(sigma.device, torch.float32)
        return (sigma.float().log()[None] - log_s[:, None]).abs().argmin(dim=0).float()

    def karras_sigmas(self, steps: int, rho: float = 7.0) -> Tensor:
        """(steps+1,) decreasing sigmas from sigma_max to sigma_min, then 0 (Karras et al.)."""
        if not is_int(steps) or steps < 1:
            raise ConfigError(f"karras_sigmas: expected steps an integer >= 1, got {steps!r}")
        if not is_finite(rho) or not rho > 0:
            raise ConfigError(f"karras_sigmas: expected rho a finite number > 0, got {rho!r}")
        lo, hi = float(self.sigmas[0]) ** (1 / rho), float(self.sigmas[-1]) ** (1 / rho)
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        s = (hi + ramp * (lo - hi)) ** rho
        return torch.cat([s, s.new_zeros(1)]).float()


@torch.no_grad()
def euler_sample(eps_fn: Callable[[Tensor, Tensor], Tensor], noise: Tensor, schedule: DiscreteSchedule,
                 steps: int = 30) -> Tensor:
    """Deterministic Euler sampling in sigma space from unit noise (B,C,h,w) to a clean latent.

    eps_fn(x_scaled, t) returns predicted noise for x_scaled = x / sqrt(1 + sigma^2), t (B,).
    Returns the model-space latent (multiply by 1/scale_factor for the VAE's space).
    """
    if not isinstance(schedule, DiscreteSchedule):
        raise ConfigError(f"euler_sample: expected schedule to be a DiscreteSchedule, got {type(schedule).__name__}")
    _check_float_latent(noise, "euler_sample", "noise")
    if not is_int(steps) or steps < 1:
        raise ConfigError(f"euler_sample: expected steps an integer >= 1, got {steps!r}")
    sigmas = schedule.karras_sigmas(steps).to(noise.device)
    x = noise * sigmas[0]
    for i in range(steps):
        s = sigmas[i]
        t = schedule.timestep(s.view(1)).expand(x.shape[0]).to(noise.device)
        eps = eps_fn(x / (s ** 2 + 1.0).sqrt(), t)
        if not isinstance(eps, Tensor) or eps.shape != x.shape:
            raise ShapeError(f"euler_sample: expected eps_fn to return noise of the latent's shape {tuple(x.shape)}, "
                             f"got {shape_or_type(eps)}")
        denoised = x - s * eps
        x = denoised + (x - denoised) / s * sigmas[i + 1] if sigmas[i + 1] > 0 else denoised
    return x
