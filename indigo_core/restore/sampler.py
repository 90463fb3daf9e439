"""A small k-diffusion-style sampler for epsilon-prediction models on SD's discrete schedule.

Everything works in sigma space, as ComfyUI and k-diffusion do: a latent at noise level sigma is
x = z0 + sigma * n (model space), the network sees x / sqrt(1 + sigma^2) and the integer timestep
nearest to sigma, and predicts n. A *denoiser* is any function (x, sigma) -> z0 estimate; the
guided restoration wraps the UNet's denoiser with `GuidanceRun.step`.

Schedulers (sigma sequences, decreasing, ending with 0):
    "normal": timesteps evenly spaced from the largest to the smallest (ComfyUI's "normal");
              with the Euler sampler this is deterministic DDIM.
    "karras": Karras et al.'s rho=7 spacing between sigma_max and sigma_min.
Samplers:
    "euler": deterministic first-order step (= DDIM with eta 0).
    "euler_ancestral": Euler step down to sigma_down plus fresh noise up to sigma_next (eta 1).
Partial denoising (SDEdit / img2img, `denoise` < 1): as ComfyUI's KSampler, the schedule is made
for int(steps / denoise) steps and its last `steps` steps are run from start + sigma_0 * noise.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from ..errors import ConfigError
from ..prior.schedule import DiscreteSchedule

Denoiser = Callable[[Tensor, Tensor, int, int], Tensor]
"""denoiser(x, sigma, step_index, n_steps) -> z0 estimate; x (B,C,h,w), sigma a 0-d tensor."""

SCHEDULERS = ("normal", "karras")
SAMPLERS = ("euler", "euler_ancestral")


def _sigma_at(schedule: DiscreteSchedule, t: Tensor) -> Tensor:
    """sigma at fractional timesteps t (float64), interpolated linearly in log sigma."""
    log_s = schedule.sigmas.log()
    t = t.clamp(0, schedule.num_timesteps - 1)
    lo = t.floor().long()
    hi = (lo + 1).clamp(max=schedule.num_timesteps - 1)
    w = t - lo.double()
    return ((1 - w) * log_s[lo] + w * log_s[hi]).exp()


def make_sigmas(schedule: DiscreteSchedule, steps: int, scheduler: str = "normal") -> Tensor:
    """(steps+1,) float32 decreasing sigmas ending with 0 (see the module docstring)."""
    if steps < 1:
        raise ConfigError(f"steps: expected >= 1, got {steps}")
    if scheduler == "karras":
        return schedule.karras_sigmas(steps)
    if scheduler != "normal":
        raise ConfigError(f"scheduler: expected one of {SCHEDULERS}, got {scheduler!r}")
    t = torch.linspace(schedule.num_timesteps - 1, 0, steps, dtype=torch.float64)
    sig = _sigma_at(schedule, t)
    return torch.cat([sig, sig.new_zeros(1)]).float()


def partial_sigmas(schedule: DiscreteSchedule, steps: int, denoise: float, scheduler: str = "normal") -> Tensor:
    """The sigmas of a run of `steps` steps at strength `denoise` in (0, 1] (module docstring)."""
    if not 0.0 < denoise <= 1.0:
        raise ConfigError(f"denoise: expected a number in (0, 1], got {denoise!r}")
    if denoise >= 1.0:
        return make_sigmas(schedule, steps, scheduler)
    total = int(steps / denoise)
    return make_sigmas(schedule, total, scheduler)[-(steps + 1):]


def eps_denoiser(eps_fn: Callable[[Tensor, Tensor], Tensor], schedule: DiscreteSchedule) -> Callable[[Tensor, Tensor], Tensor]:
    """(x, sigma) -> z0 = x - sigma * eps(x / sqrt(1 + sigma^2), t(sigma)) for an eps model
    eps_fn(x_scaled, t) with t (B,) float timesteps."""

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        s = sigma.to(x.device, torch.float32)
        t = schedule.timestep(s.reshape(1)).to(x.device).expand(x.shape[0])
        eps = eps_fn(x / (s * s + 1.0).sqrt(), t)
        return x - s * eps.to(x.dtype)

    return denoise


@torch.no_grad()
def sample(denoiser: Denoiser, x: Tensor, sigmas: Tensor, sampler: str = "euler",
           generator: Optional[torch.Generator] = None,
           callback: Optional[Callable[[int, int], None]] = None) -> Tensor:
    """Integrate from x (already at noise level sigmas[0]) down to sigmas[-1].

    denoiser(x, sigma, i, n) returns the (possibly guided) z0 estimate at step i of n.
    generator: the noise of "euler_ancestral" (drawn on the CPU, so results match across devices).
    callback(i, n) after each step. Returns the final latent (x's dtype).
    """
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler: expected one of {SAMPLERS}, got {sampler!r}")
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        z0 = denoiser(x, s, i, n)
        if sampler == "euler" or float(s_next) == 0.0:
            x = z0 if float(s_next) == 0.0 else z0 + (x - z0) * (s_next / s)
        else:
            # eta = 1: sigma_up^2 = s_next^2 (s^2 - s_next^2) / s^2, sigma_down^2 = s_next^2 - sigma_up^2
            s2, n2 = float(s) ** 2, float(s_next) ** 2
            up = math.sqrt(max(n2 * (s2 - n2) / s2, 0.0))
            down = math.sqrt(max(n2 - up * up, 0.0))
            x = z0 + (x - z0) * (down / float(s))
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
            x = x + noise * up
        if callback is not None:
            callback(i, n)
    return x
