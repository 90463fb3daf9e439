"""Guidance settings: frozen, validated dataclasses with documented defaults.

Where a default comes from (paper = LatentINDIGO, arXiv 2505.12935; INDIGO+ = the authors' earlier
pixel-diffusion code; ours = our choice where the paper's value was not recoverable or does not
apply to this implementation):

=================  =====================  ========================================================
setting            default                source
=================  =====================  ========================================================
mode               "latent_inn"           ours (the paper's cheaper variant, Alg. 2)
zeta               0.5                    ours: the paper reports "smaller is better up to an
                                          optimum" but its value was lost in extraction
latent_iterations  1                      paper (one INN forward + inverse per step); more
                                          repeats Alg. 2 lines 4-6 within a step
w_dc, w_p          2.5, 1.0               ratio from INDIGO+ ([2.5, 1], synthetic degradations);
                                          the terms here are normalised (see below), so the
                                          absolute meaning is ours
step_size          0.5                    ours (fraction of a Polyak step, see `step_rule`)
step_rule          "polyak"               ours; "gradient" is the raw DPS/INDIGO+ rule
max_step           0.5                    ours: trust region, rms change of z0 per step <=
                                          max_step * rms(E(up(y))) (per item)
grad_wrt           "z0"                   ours (decoder-only gradient; the cost-saving choice);
                                          "zt" is the DPS-style gradient INDIGO+ used
schedule           all steps              paper (guidance at every step)
regulariser        fraction [0, 0.3)      paper: first 15 of 50 steps (Table IV best)
refine             None (off)             ours (the paper refines in the first half; the
                                          refine node turns it on with RefineSettings())
refine.schedule    fraction [0, 0.5)      paper: first half of the steps
refine.lr          5e-5                   INDIGO+ (one Adam step per diffusion step)
colour_fix         "none"                 ours (a colour fix changes PSNR; users opt in)
=================  =====================  ========================================================

These are the Python API's defaults. The ComfyUI nodes start from their own (zeta 0.3, max_step
0.1, the rest as here; their help pages list them), and the restore CLI from the values tuned for
the bundled models (`indigo_core.restore.pipeline.default_settings`, docs/RESTORE.md).

Loss normalisation (gradient modes). Per batch item i the guidance objective is a norm-like
quantity that is zero at data consistency:

    h_i = w_dc * rms(y_i - A(x0_i)) + w_p * LPIPS(x_inv_i, x0_i)

(rms = root-mean-square over the item's elements, so weights do not depend on resolution; the
LPIPS term only for "pixel_inn"). The update is applied per item, so items never interact:

* "polyak": z0_i <- z0_i - step_size * h_i / ||grad_i||^2 * grad_i. step_size 1 is the step that
  zeroes the linearised h_i (for a linear operator and w_p = 0 it removes the residual's
  component in the gradient's range in one step); smaller values leave room to the prior.
  Invariant to a common scale of (w_dc, w_p) and to resolution.
* "gradient": z0_i <- z0_i - step_size * grad_i (DPS / INDIGO+), here with the rms-normalised h.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from ..checks import is_py_int
from ..errors import ConfigError
from .schedule import Schedule

MODES = ("latent_inn", "pixel_inn", "ldps", "hgs", "pgdiff", "none")
# Modes that take a gradient through the decoder.
GRADIENT_MODES = ("pixel_inn", "ldps", "hgs", "pgdiff")
# Modes that use an INN (and so can refine it), with the INN domain each needs.
INN_DOMAIN = {"latent_inn": "latent", "pixel_inn": "pixel", "ldps": "pixel"}
GRAD_WRT = ("z0", "zt")
STEP_RULES = ("polyak", "gradient")
COLOUR_FIXES = ("none", "wavelet", "adain")
OPTIMIZERS = ("adam",)


def _number(owner: str, name: str, value: Any, lo: float, hi: Optional[float] = None,
            lo_open: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok:
        ok = (value > lo) if lo_open else (value >= lo)
        if hi is not None:
            ok = ok and value <= hi
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]" if hi is not None else \
            (f"> {lo:g}" if lo_open else f">= {lo:g}")
        raise ConfigError(f"{owner}.{name}: expected a number {rng}, got {value!r}")


def _choice(owner: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{owner}.{name}: expected one of {choices}, got {value!r}")


def _schedule(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, Schedule):
        raise ConfigError(f"{owner}.{name}: expected a Schedule, got {type(value).__name__}")


@dataclass(frozen=True)
class RefineSettings:
    """Test-time refinement of a private copy of the INN (paper Eq. 16, Alg. 1 line 11).

    One optimiser step per scheduled sampling step minimising mean((y - g_c(x0))^2) (pixel INN)
    or mean((z_y - g_c(z0))^2) (latent INN), x0/z0 detached. The copy is made fresh for every run,
    so the refinement is reset at every run and never touches the user's INN.
    """

    schedule: Schedule = field(default_factory=lambda: Schedule.fraction(0.0, 0.5))
    lr: float = 5e-5
    optimizer: str = "adam"
    betas: tuple = (0.9, 0.999)

    def __post_init__(self) -> None:
        _schedule("RefineSettings", "schedule", self.schedule)
        _number("RefineSettings", "lr", self.lr, 0.0, 1.0, lo_open=True)
        _choice("RefineSettings", "optimizer", self.optimizer, OPTIMIZERS)
        if (not isinstance(self.betas, tuple) or len(self.betas) != 2
                or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas)):
            raise ConfigError(f"RefineSettings.betas: expected two numbers in [0, 1), got {self.betas!r}")

    def replace(self, **changes: Any) -> "RefineSettings":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class GuidanceSettings:
    """Everything that decides what a guidance run does (see the module docstring for defaults).

    mode: "latent_inn" (Alg. 2), "pixel_inn" (Alg. 1), "ldps" (||y - g_c(D(z0))|| only), "hgs"
        (Sobel high-pass of up(y) vs of D(z0)), "pgdiff" (MSE to a given restoration), "none".
    zeta: LatentINN interpolation strength, z0 + zeta (z_inv - z0), in [0, 1].
    latent_iterations: how many times Alg. 2 lines 4-6 run per step (1 = the paper). With the
        redundant (undecimated) split, g^-1 merges by least squares, so one update only partly
        restores data consistency (it is one Landweber step on the coarse residual); repeating it
        pulls harder at one INN forward + inverse each.
    w_dc, w_p: weights of the data-consistency and perceptual terms (gradient modes).
    step_size: scale of the gradient update (see step_rule).
    step_rule: "polyak" or "gradient" (module docstring).
    max_step: cap on the rms change of z0 per guidance step, as a fraction of the rms of the
        measurement's latent E(up(y)) (per item; computed once per run); None for no cap.
    grad_wrt: "z0" (decoder-only gradient) or "zt" (through the denoiser, `GuidanceRun.step_zt`).
    schedule: steps on which the guidance update runs.
    regulariser: steps on which z0 <- E(D(z0)) runs (after the guidance update).
    refine: RefineSettings, or None for no refinement.
    colour_fix: "none", "wavelet" or "adain", applied by `GuidanceRun.finish`.
    """

    mode: str = "latent_inn"
    zeta: float = 0.5
    latent_iterations: int = 1
    w_dc: float = 2.5
    w_p: float = 1.0
    step_size: float = 0.5
    step_rule: str = "polyak"
    max_step: Optional[float] = 0.5
    grad_wrt: str = "z0"
    schedule: Schedule = field(default_factory=Schedule.all_steps)
    regulariser: Schedule = field(default_factory=lambda: Schedule.fraction(0.0, 0.3))
    refine: Optional[RefineSettings] = None
    colour_fix: str = "none"

    def __post_init__(self) -> None:
        o = "GuidanceSettings"
        _choice(o, "mode", self.mode, MODES)
        _number(o, "zeta", self.zeta, 0.0, 1.0)
        if not is_py_int(self.latent_iterations) or not 1 <= self.latent_iterations <= 100:
            raise ConfigError(f"{o}.latent_iterations: expected an integer in [1, 100], got {self.latent_iterations!r}")
        _number(o, "w_dc", self.w_dc, 0.0)
        _number(o, "w_p", self.w_p, 0.0)
        _number(o, "step_size", self.step_size, 0.0)
        _choice(o, "step_rule", self.step_rule, STEP_RULES)
        if self.max_step is not None:
            _number(o, "max_step", self.max_step, 0.0, lo_open=True)
        _choice(o, "grad_wrt", self.grad_wrt, GRAD_WRT)
        _schedule(o, "schedule", self.schedule)
        _schedule(o, "regulariser", self.regulariser)
        _choice(o, "colour_fix", self.colour_fix, COLOUR_FIXES)
        if self.refine is not None and not isinstance(self.refine, RefineSettings):
            raise ConfigError(f"{o}.refine: expected RefineSettings or None, got {type(self.refine).__name__}")
        if self.refine is not None and self.mode not in INN_DOMAIN:
            raise ConfigError(
                f"{o}.refine: expected None for mode={self.mode!r} (refinement needs a mode with an INN: "
                f"{tuple(INN_DOMAIN)}), got RefineSettings")
        if self.grad_wrt == "zt" and self.mode not in GRADIENT_MODES:
            raise ConfigError(
                f"{o}.grad_wrt: expected 'z0' for mode={self.mode!r} ('zt' applies to the gradient modes "
                f"{GRADIENT_MODES}), got 'zt'")
        if self.mode in GRADIENT_MODES and self.w_dc == 0 and not (self.mode == "pixel_inn" and self.w_p > 0):
            raise ConfigError(f"{o}.w_dc: expected > 0 for mode={self.mode!r} (nothing to guide by), got 0")

    @property
    def uses_inn(self) -> bool:
        return self.mode in INN_DOMAIN

    @property
    def inn_domain(self) -> Optional[str]:
        """"latent" or "pixel" for the INN modes, None otherwise."""
        return INN_DOMAIN.get(self.mode)

    @property
    def needs_perceptual(self) -> bool:
        return self.mode == "pixel_inn" and self.w_p > 0

    def replace(self, **changes: Any) -> "GuidanceSettings":
        return dataclasses.replace(self, **changes)
