"""When a guidance action runs: schedules over a sampling run's own steps.

A schedule is expressed in fractions of the run's steps (or "every k steps"), so the same setting
holds for any step count, sampler and scheduler. The step index comes from the sampler's own
sigma schedule (`step_index_from_sigmas`), never from a call counter, so samplers that evaluate
the model more than once per step (heun, dpmpp_2s_ancestral, dpmpp_sde, ...) still map every
evaluation to the step it belongs to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

from torch import Tensor

from ..errors import ConfigError, InputValueError

KINDS = ("fraction", "every", "all", "off")

# Guard against 0.3 * 10 == 3.0000000000000004 counting one step too many.
_EPS = 1e-9


@dataclass(frozen=True)
class Schedule:
    """Which of a run's steps an action runs on.

    kind:
        "fraction": steps i with ceil(start*n) <= i < ceil(end*n), i.e. the window [start, end) of
            the run's n steps (start=0, end=0.3 with 50 steps -> steps 0..14, the paper's 15 of 50;
            with 7 steps -> 0..2).
        "every": steps 0, k, 2k, ... (the paper's Table IV "every 5 steps").
        "all": every step.  "off": none.
    """

    kind: str = "all"
    start: float = 0.0
    end: float = 1.0
    every: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"Schedule.kind: expected one of {KINDS}, got {self.kind!r}")
        if self.kind == "fraction":
            for name in ("start", "end"):
                v = getattr(self, name)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                    raise ConfigError(f"Schedule.{name}: expected a number in [0, 1], got {v!r}")
            if self.start > self.end:
                raise ConfigError(
                    f"Schedule: expected start <= end, got start={self.start!r}, end={self.end!r}")
        if self.kind == "every":
            if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
                raise ConfigError(f"Schedule.every: expected an integer >= 1, got {self.every!r}")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def fraction(cls, start: float, end: float) -> "Schedule":
        """The window [start, end) of the run's steps, as fractions in [0, 1]."""
        return cls(kind="fraction", start=float(start), end=float(end))

    @classmethod
    def every_k(cls, k: int) -> "Schedule":
        """Steps 0, k, 2k, ..."""
        return cls(kind="every", every=k)

    @classmethod
    def all_steps(cls) -> "Schedule":
        return cls(kind="all")

    @classmethod
    def off(cls) -> "Schedule":
        return cls(kind="off")

    # ------------------------------------------------------------------ queries
    def active(self, step_index: int, n_steps: int) -> bool:
        """Whether step `step_index` (0-based) of a run of `n_steps` steps is scheduled."""
        if n_steps < 1 or not 0 <= step_index < n_steps:
            return False
        if self.kind == "all":
            return True
        if self.kind == "off":
            return False
        if self.kind == "every":
            return step_index % self.every == 0
        lo = math.ceil(self.start * n_steps - _EPS)
        hi = math.ceil(self.end * n_steps - _EPS)
        return lo <= step_index < hi

    def steps(self, n_steps: int) -> list[int]:
        """All scheduled step indices of a run of `n_steps` steps (what tests count against)."""
        return [i for i in range(n_steps) if self.active(i, n_steps)]

    def describe(self) -> str:
        if self.kind == "fraction":
            return f"steps in [{self.start:g}, {self.end:g}) of the run"
        if self.kind == "every":
            return f"every {self.every} steps"
        return {"all": "every step", "off": "never"}[self.kind]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "start": self.start, "end": self.end, "every": self.every}

    @classmethod
    def from_dict(cls, data: dict) -> "Schedule":
        return cls(**dict(data))


SigmaLike = Union[float, Tensor]


def _as_float(sigma: SigmaLike) -> float:
    if isinstance(sigma, Tensor):
        # One scalar read per model evaluation (host side; the guidance step itself never syncs).
        # A batch shares one sigma in k-diffusion samplers: take the largest.
        return float(sigma.detach().reshape(-1).max()) if sigma.numel() else float("nan")
    return float(sigma)


def step_index_from_sigmas(sigma: SigmaLike, sample_sigmas: Union[Sequence[float], Tensor]) -> tuple[int, int]:
    """Map the sigma of a model evaluation to (step_index, n_steps) of the run.

    sample_sigmas: the run's sigma schedule, decreasing, n_steps + 1 values (usually ending with 0;
        ComfyUI: `transformer_options["sample_sigmas"]`). With denoise < 1 it is the shortened
        schedule, so fractions refer to the steps actually run.
    sigma: the sigma the model is evaluated at (scalar, or (B,) tensor sharing one value).

    Step i owns the interval sigma_i >= sigma > sigma_{i+1}. A sigma equal to a schedule value (to
    a relative tolerance of 1e-4, robust to float32/float64 round trips) maps to that value's step.
    So intermediate evaluations (heun's or dpmpp_2s's midpoints, uni_pc's corrector) map to the
    step whose interval contains them, and heun's end-of-step evaluation at sigma_{i+1} maps to
    step i+1. Callers that must act once per step (the regulariser and the refinement) remember
    the last step they acted on (see `GuidanceRun`). Sigmas above sigma_0 map to step 0, sigmas
    at or below the last positive sigma to the last step.

    Returns (step_index, n_steps) with n_steps = len(sample_sigmas) - 1.
    """
    if isinstance(sample_sigmas, Tensor):
        values = [float(v) for v in sample_sigmas.detach().reshape(-1).cpu().tolist()]
    else:
        values = [float(v) for v in sample_sigmas]
    n_steps = len(values) - 1
    if n_steps < 1:
        raise InputValueError(
            f"sample_sigmas: expected at least 2 values (n_steps + 1), got {len(values)}")
    s = _as_float(sigma)
    if not math.isfinite(s):
        raise InputValueError(f"sigma: expected a finite number, got {s!r}")
    for i, v in enumerate(values[:n_steps]):
        if abs(s - v) <= 1e-4 * max(abs(v), 1e-8):
            return i, n_steps
    if s > values[0]:
        return 0, n_steps
    for i in range(n_steps):
        if values[i] >= s > values[i + 1]:
            return i, n_steps
    return n_steps - 1, n_steps
