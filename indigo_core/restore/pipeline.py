"""One restoration: a degraded image y in, a x`scale` restoration out, with the small prior.

    models = load_models("latent")                       # the pack's bundled files
    x = restore_image(y, models, RestoreSettings())      # y (1,3,h,w) in [0,1] -> (1,3,4h,4w)

Stage 1 (as in DiffBIR, the pipeline the paper's LatentINDIGO runs on): r = R(y), the stage-1
restorer's clean estimate (settings.stage1 = "restorer"), or r = up(y), bicubic ("bicubic").
Guided modes (the paper's Algorithms 1 and 2 driven by this package's sampler):
    start: z_T = E(r) * scale_factor + sigma_0 * noise, with the schedule cut at `denoise`
    (SDEdit); every step: z0 = denoiser(z_t); z0 <- GuidanceRun.step(z0) (in the VAE's space,
    against the measurement y itself); sampler step from the guided z0; at the end x = D(z0),
    colour fix against r (optional), clamp.
Baselines with the same models and seed, for measuring what the guidance adds:
    "unguided"   the same sampling and colour fix without guidance (the prior alone, same start)
    "bicubic"    up(y)
    "restorer"   R(y): the stage-1 restorer alone
    "autoencoded"  D(E(r)): what the prior's autoencoder alone keeps of the stage-1 image
    "latent-inn-zero" / "pixel-inn-zero"   the INN inverse with zero details:
                 D(g^-1(E(up(y)), 0)) / g^-1(y, 0)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import is_bchw, is_finite, is_py_int, shape_or_type, spatial_at_least
from ..errors import ConfigError, DomainError, ShapeError
from ..guidance import GuidanceRun, GuidanceSettings, RefineSettings, Schedule, upsample_measurement
from ..guidance.colour import DEFAULT_LEVELS, MAX_LEVELS, colour_fix
from ..io.cards import latent_space_differences, read_card, trained_latent_format, trained_with_estimator
from ..prior.schedule import DiscreteSchedule
from . import bundled
from .sampler import SAMPLERS, SCHEDULERS, eps_denoiser, partial_sigmas, sample

log = logging.getLogger("indigo_core.restore")

MODES = ("latent", "pixel", "unguided", "bicubic", "restorer", "autoencoded", "latent-inn-zero", "pixel-inn-zero")
#: What the prior starts from and the colour fix takes its low frequencies from.
STAGE1 = ("restorer", "bicubic")
#: The INN domain each mode needs (None: no INN).
MODE_INN = {"latent": "latent", "pixel": "pixel", "latent-inn-zero": "latent", "pixel-inn-zero": "pixel"}
#: Modes that run the diffusion prior.
SAMPLING_MODES = ("latent", "pixel", "unguided")
#: Modes whose result depends on the stage-1 image.
STAGE1_MODES = SAMPLING_MODES + ("restorer", "autoencoded")


@dataclass(frozen=True)
class RestoreSettings:
    """How a restoration runs (defaults: the values tuned on training photos, docs/RESTORE.md).

    steps: sampler steps actually run; denoise: strength in (0, 1] (1 = from pure noise; the
    schedule is cut as ComfyUI's KSampler cuts it); seed: noise seed (the same for every image).
    zeta, latent_iterations: LatentINN update (Algorithm 2). step_size, w_dc, w_p, max_step:
    PixelINN gradient update (Algorithm 1; see indigo_core.guidance.settings). regulariser_end:
    fraction of the steps with the re-encoding regulariser E(D(z0)) (0: off). refine_lr: test-time
    refinement of a private INN copy in the first half of the steps (0: off). colour_fix and
    colour_levels: the fix of the decoded result against the stage-1 image ("wavelet" with
    colour_levels levels, "adain" or "none"). stage1: the image the
    prior starts from and the colour fix refers to: "restorer" (R(y), the stage-1 network) or
    "bicubic" (up(y)).
    """

    mode: str = "latent"
    steps: int = 20
    denoise: float = 0.5
    seed: int = 0
    sampler: str = "euler"
    scheduler: str = "normal"
    scale: int = 4
    zeta: float = 0.5
    latent_iterations: int = 1
    step_size: float = 0.5
    w_dc: float = 2.5
    w_p: float = 1.0
    max_step: Optional[float] = 0.5
    regulariser_end: float = 0.3
    refine_lr: float = 0.0
    colour_fix: str = "none"
    colour_levels: int = DEFAULT_LEVELS
    stage1: str = "bicubic"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode: expected one of {MODES}, got {self.mode!r}")
        if self.stage1 not in STAGE1:
            raise ConfigError(f"stage1: expected one of {STAGE1}, got {self.stage1!r}")
        if not is_py_int(self.colour_levels) or not 1 <= self.colour_levels <= MAX_LEVELS:
            raise ConfigError(f"colour_levels: expected an integer in 1..{MAX_LEVELS}, got {self.colour_levels!r}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler: expected one of {SAMPLERS}, got {self.sampler!r}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler: expected one of {SCHEDULERS}, got {self.scheduler!r}")
        if not is_py_int(self.steps) or self.steps < 1:
            raise ConfigError(f"steps: expected an integer >= 1, got {self.steps!r}")
        if not (is_finite(self.denoise) and 0.0 < self.denoise <= 1.0):
            raise ConfigError(f"denoise: expected a number in (0, 1], got {self.denoise!r}")
        if not is_py_int(self.scale) or self.scale < 1:
            raise ConfigError(f"scale: expected an integer >= 1, got {self.scale!r}")
        if not (is_finite(self.regulariser_end) and 0.0 <= self.regulariser_end <= 1.0):
            raise ConfigError(f"regulariser_end: expected a number in [0, 1], got {self.regulariser_end!r}")
        if not (is_finite(self.refine_lr) and self.refine_lr >= 0):
            raise ConfigError(f"refine_lr: expected >= 0, got {self.refine_lr!r}")
        self.guidance()  # validates the guidance fields

    def guidance(self) -> GuidanceSettings:
        """The GuidanceSettings of a guided mode ("none" mode for the others)."""
        mode = {"latent": "latent_inn", "pixel": "pixel_inn"}.get(self.mode, "none")
        reg = Schedule.fraction(0.0, self.regulariser_end) if self.regulariser_end > 0 else Schedule.off()
        refine = RefineSettings(lr=self.refine_lr) if self.refine_lr > 0 and mode != "none" else None
        return GuidanceSettings(mode=mode, zeta=self.zeta, latent_iterations=self.latent_iterations,
                                w_dc=self.w_dc, w_p=self.w_p, step_size=self.step_size,
                                max_step=self.max_step if self.max_step and self.max_step > 0 else None,
                                regulariser=reg if mode != "none" else Schedule.off(), refine=refine,
                                colour_fix=self.colour_fix)


#: Per-mode defaults of `default_settings` (sampling and guidance values chosen on training photos,
#: see scripts/tune_guidance.py); every other field keeps the RestoreSettings default.
MODE_DEFAULTS: dict[str, dict] = {
    "latent": dict(steps=20, denoise=0.3, zeta=0.8, regulariser_end=0.3, colour_fix="wavelet", colour_levels=3,
                   stage1="restorer"),
    "pixel": dict(steps=10, denoise=0.3, step_size=0.25, max_step=0.25, regulariser_end=0.3, colour_fix="wavelet",
                  colour_levels=3, stage1="restorer"),
}


def default_settings(mode: str = "latent", **overrides) -> RestoreSettings:
    """The settings the CLI uses for `mode`: the mode's tuned defaults, then `overrides`.

    "unguided" takes the LatentINN mode's sampling settings (so it is the same run minus the
    guidance); the baselines without sampling ignore the sampling fields.
    """
    base = dict(MODE_DEFAULTS.get("pixel" if mode == "pixel" else "latent", {}))
    base.update({k: v for k, v in overrides.items() if v is not None})
    return RestoreSettings(mode=mode, **base)


@dataclass
class RestoreModels:
    """The networks a restoration uses (frozen, eval mode, float32) and where they came from."""

    autoencoder: Optional[torch.nn.Module] = None
    unet: Optional[torch.nn.Module] = None
    context: Optional[Tensor] = None
    scale_factor: float = 0.18215
    inn: Optional[torch.nn.Module] = None
    estimator: Optional[torch.nn.Module] = None
    restorer: Optional[torch.nn.Module] = None
    files: dict = field(default_factory=dict)
    schedule: DiscreteSchedule = field(default_factory=DiscreteSchedule)

    def to(self, device) -> "RestoreModels":
        for name in ("autoencoder", "unet", "inn", "estimator", "restorer"):
            m = getattr(self, name)
            if m is not None:
                m.to(device)
        if self.context is not None:
            self.context = self.context.to(device)
        return self


def _existing(path, what: str) -> str:
    p = Path(path)
    if not p.is_file():
        from ..errors import WeightsFileError

        raise WeightsFileError(p, f"{what} file not found")
    return str(p)


def load_models(mode: str, inn: Optional[str] = None, prior_vae: Optional[str] = None,
                prior_unet: Optional[str] = None, estimator: Optional[str] = "bundled",
                device="cpu", restorer: Optional[str] = "bundled") -> RestoreModels:
    """Load what `mode` needs; None / missing arguments mean the bundled files.

    estimator: a file, "bundled" (the pack's, when the INN was trained with one) or None (no
    degradation embedding); only loaded for the modes with an INN. The INN's model card says
    whether it was trained with an estimator: "bundled" then follows it, and a file given to an INN
    trained without one (or None to an INN trained with one) is a ConfigError. A LatentINN whose
    card names another latent format than the prior autoencoder's is logged as a warning.
    restorer: the stage-1 restorer R for the modes that can start from it: a file, "bundled" (the
    pack's, when present) or None (stage 1 then has to be "bicubic").
    """
    from ..estimator import load_estimator
    from ..io.weights import load_inn
    from ..prior.weights import load_autoencoder, load_unet, read_latent_format
    from ..restorer import load_restorer

    if mode not in MODES:
        raise ConfigError(f"mode: expected one of {MODES}, got {mode!r}")
    m = RestoreModels()
    if restorer == "bundled":
        path = bundled.bundled_path(bundled.RESTORER)
        restorer = str(path) if path.is_file() else None
    if restorer and mode in STAGE1_MODES:
        m.restorer = load_restorer(_existing(restorer, "stage-1 restorer"))
        m.files["restorer"] = str(restorer)
    if mode not in ("bicubic", "restorer", "pixel-inn-zero"):
        vae_path = _existing(prior_vae or bundled.bundled_path(bundled.PRIOR_VAE), "prior autoencoder")
        m.autoencoder = load_autoencoder(vae_path)
        m.scale_factor = float(read_latent_format(vae_path).get("scale_factor", 0.18215))
        m.files["prior_vae"] = vae_path
    if mode in SAMPLING_MODES:
        unet_path = _existing(prior_unet or bundled.bundled_path(bundled.PRIOR_UNET), "prior UNet")
        m.unet, m.context, _ = load_unet(unet_path)
        m.files["prior_unet"] = unet_path
    domain = MODE_INN.get(mode)
    if domain is not None:
        default = bundled.LATENT_INN if domain == "latent" else bundled.PIXEL_INN
        inn_path = _existing(inn or bundled.bundled_path(default), f"{domain} INN")
        m.inn = load_inn(inn_path)
        m.inn.requires_grad_(False)
        cfg = m.inn.config
        if cfg.domain != domain:
            raise DomainError(f"--inn: mode {mode!r} expects a {domain} INN, got a {cfg.domain} INN ({inn_path})")
        if m.autoencoder is not None and domain == "latent" and cfg.channels != m.autoencoder.latent_channels:
            raise DomainError(f"--inn: expected a {m.autoencoder.latent_channels}-channel LatentINN for this "
                              f"autoencoder, got {cfg.channels} channels ({inn_path})")
        m.files["inn"] = inn_path
        card = read_card(inn_path)
        estimator = _estimator_for(card, estimator, inn_path)
        if domain == "latent" and m.autoencoder is not None:
            _warn_other_latent_space(card, m.files["prior_vae"], inn_path)
        if estimator:
            m.estimator = load_estimator(_existing(estimator, "degradation estimator"))
            m.files["estimator"] = str(estimator)
    return m.to(device)


def _estimator_for(card: Optional[dict], estimator: Optional[str], inn_path: str) -> Optional[str]:
    """The estimator file to load for an INN, checked against what its model card says it was
    trained with: "bundled" means the pack's estimator for an INN trained with one and none for an
    INN trained without; an explicit choice that contradicts the card is refused."""
    trained = trained_with_estimator(card)
    if estimator == "bundled":
        if trained is not None and not trained[0]:
            return None
        est_path = bundled.bundled_path(bundled.ESTIMATOR)
        return str(est_path) if est_path.is_file() else None
    if trained is not None and trained[0] and not estimator:
        raise ConfigError(f"estimator: the INN {inn_path} was trained with a degradation estimator "
                          f"({trained[1]}) and needs its embedding, got none (restore CLI: leave --estimator out "
                          "for the bundled one, or pass the estimator file)")
    if trained is not None and not trained[0] and estimator:
        raise ConfigError(f"estimator: the INN {inn_path} was trained without a degradation estimator, got "
                          f"{estimator} (restore CLI: --estimator none)")
    return estimator


def _warn_other_latent_space(card: Optional[dict], vae_path: str, inn_path: str) -> None:
    """Log when the prior's autoencoder has another latent format than the LatentINN was trained for."""
    from ..prior.weights import read_latent_format

    trained = trained_latent_format(card)
    fmt = read_latent_format(vae_path)
    reasons = latent_space_differences(trained, fmt.get("scale_factor"), fmt.get("latent_rgb_factors"))
    if reasons:
        log.warning("warning: the LatentINN %s was trained for the latents of %s, but %s has %s: the guidance "
                    "will pull towards the wrong latents; use a LatentINN trained for this autoencoder "
                    "(python -m indigo_core.train latent-inn --vae ...)", inn_path, trained.get("file"), vae_path,
                    " and ".join(reasons))


def _pad_multiple(models: RestoreModels, settings: RestoreSettings) -> int:
    """The side multiple y must have so that every network gets the sizes it needs."""
    out = 1
    if models.autoencoder is not None:
        out = models.autoencoder.downscale
        if models.unet is not None:
            out *= 2 ** (len(models.unet.cfg.channel_mult) - 1)
    if models.inn is not None and models.inn.config.domain == "pixel":
        out = math.lcm(out, models.inn.config.scale)
    return max(1, math.ceil(out / settings.scale)) if out % settings.scale == 0 else out


def _pad(y: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    h, w = y.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return y, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(y, (0, pw, 0, ph), mode=mode), (h, w)


def _check_input(y: Tensor) -> None:
    if not is_bchw(y, 3) or y.shape[0] != 1:
        raise ShapeError(f"y: expected one RGB image (1,3,h,w) in [0,1], got {shape_or_type(y)}")
    if not spatial_at_least(y, 2):
        raise ShapeError(f"y: expected at least 2x2 pixels, got {tuple(y.shape[-2:])}")


@torch.no_grad()
def _degradation(models: RestoreModels, y: Tensor) -> Optional[Tensor]:
    if models.estimator is None or models.inn is None:
        return None
    return models.estimator(y).float()


def restore_image(y: Tensor, models: RestoreModels, settings: RestoreSettings,
                  callback: Optional[Callable[[int, int], None]] = None) -> Tensor:
    """Restore y (1,3,h,w) in [0,1] -> (1,3,scale*h,scale*w) in [0,1] (float32, y's device).

    The result depends only on y, the models and the settings (seed included): the noise is drawn
    on the CPU from `settings.seed`. callback(i, n) after each sampler step.
    """
    _check_input(y)
    s = settings
    if MODE_INN.get(s.mode) == "pixel" and models.inn is not None and models.inn.config.scale != s.scale:
        raise ConfigError(f"scale: the PixelINN restores x{models.inn.config.scale}, got scale {s.scale}")
    device = y.device
    y = y.float().clamp(0.0, 1.0)
    y_pad, (h, w) = _pad(y, _pad_multiple(models, s))
    H, W = y_pad.shape[-2] * s.scale, y_pad.shape[-1] * s.scale
    up = upsample_measurement(y_pad, (H, W))
    if s.mode == "bicubic":
        out = up
    elif s.mode in ("latent-inn-zero", "pixel-inn-zero"):
        out = _inn_zero(y_pad, up, models)
    else:
        r = _stage1(y_pad, up, models, s)
        if s.mode == "restorer":
            out = r
        elif s.mode == "autoencoded":
            with torch.no_grad():
                out = models.autoencoder.decode(models.autoencoder.encode(r))
        else:
            out = _sample(y_pad, r, models, s, callback)
    return out[..., : h * s.scale, : w * s.scale].clamp(0.0, 1.0).to(device)


def needs_restorer(s: RestoreSettings) -> bool:
    """Whether a restoration with these settings runs the stage-1 restorer R."""
    return s.mode == "restorer" or (s.mode in STAGE1_MODES and s.stage1 == "restorer")


def needs_restorer_message(s: RestoreSettings) -> str:
    return (f"mode {s.mode!r} with stage 1 'restorer' needs a stage-1 restorer, got none (restore CLI: "
            f"--restorer FILE or bundled; API: load_models(..., restorer=...))"
            + ("" if s.mode == "restorer" else "; or start from the bicubic image (--stage1 bicubic)"))


@torch.no_grad()
def _stage1(y: Tensor, up: Tensor, models: RestoreModels, s: RestoreSettings) -> Tensor:
    """r: R(y) (stage1 "restorer", or mode "restorer") or up(y) (stage1 "bicubic")."""
    if s.stage1 == "bicubic" and s.mode != "restorer":
        return up
    if models.restorer is None:
        raise ConfigError(needs_restorer_message(s))
    if models.restorer.scale != s.scale:
        raise ConfigError(f"scale: the stage-1 restorer restores x{models.restorer.scale}, got scale {s.scale}")
    return models.restorer.restore(y.float()).to(up.dtype)


@torch.no_grad()
def _inn_zero(y: Tensor, up: Tensor, models: RestoreModels) -> Tensor:
    inn, gamma = models.inn, _degradation(models, y)
    if inn.config.domain == "pixel":
        _, details = inn(up, gamma)
        return inn.inverse(y, [torch.zeros_like(d) for d in details], gamma)
    ae = models.autoencoder
    z_y = ae.encode(up)
    _, details = inn(z_y, gamma)
    return ae.decode(inn.inverse(z_y, [torch.zeros_like(d) for d in details], gamma))


class _ClampedDecode:
    """The autoencoder with its decoder output clamped to [0, 1] (what ComfyUI's VAE Decode gives)."""

    def __init__(self, ae) -> None:
        self.ae = ae
        self.latent_channels, self.downscale = ae.latent_channels, ae.downscale

    def encode(self, x: Tensor) -> Tensor:
        return self.ae.encode(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.ae.decode(z, clamp=True)


def _sample(y: Tensor, r: Tensor, models: RestoreModels, s: RestoreSettings,
            callback: Optional[Callable[[int, int], None]]) -> Tensor:
    """SDEdit from E(r), guided against y (guided modes), decoded; colour fix against r."""
    ae, unet, sf = models.autoencoder, models.unet, models.scale_factor
    if ae is None or unet is None:
        raise ConfigError(f"mode {s.mode!r}: needs the prior's autoencoder and UNet")
    with torch.no_grad():
        start = ae.encode(r).float() * sf
    sigmas = partial_sigmas(models.schedule, s.steps, s.denoise, s.scheduler).to(start.device)
    gen = torch.Generator().manual_seed(int(s.seed))
    noise = torch.randn(start.shape, generator=gen, dtype=torch.float32).to(start.device)
    s0, s_max = float(sigmas[0]), float(models.schedule.sigmas[-1])
    # As ComfyUI's KSampler: a run from the top of the schedule scales the noise by sqrt(1 + sigma^2).
    x = start + noise * (math.sqrt(1.0 + s0 * s0) if math.isclose(s0, s_max, rel_tol=1e-5) or s0 > s_max else s0)
    context = models.context.expand(start.shape[0], -1, -1)
    base = eps_denoiser(lambda xs, t: unet(xs, t, context), models.schedule)

    run = None
    if s.mode in ("latent", "pixel"):
        # As the ComfyUI nodes: without a gradient to take (LatentINN), the regulariser decodes with
        # the host VAE's clamp to [0, 1]; the PixelINN gradient path decodes unclamped.
        guide_ae = ae if s.mode == "pixel" else _ClampedDecode(ae)
        run = GuidanceRun(s.guidance(), measurement=y, latent_shape=tuple(start.shape), autoencoder=guide_ae,
                          inn=models.inn, degradation=_degradation(models, y), device=start.device)

    def denoiser(x_t: Tensor, sigma: Tensor, i: int, n: int) -> Tensor:
        z0 = base(x_t, sigma)
        if run is None:
            return z0
        return run.step(z0 / sf, i, n) * sf

    z = sample(denoiser, x, sigmas, s.sampler, generator=gen, callback=callback)
    with torch.no_grad():
        image = ae.decode(z / sf).float().clamp(0.0, 1.0)
    # The same colour fix for guided and unguided runs, so "unguided" measures the guidance alone.
    return colour_fix(image, r, s.colour_fix, s.colour_levels)
