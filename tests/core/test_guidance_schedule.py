"""Schedules, sigma -> step mapping and settings validation (pure, no models)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from indigo_core.errors import ConfigError, InputValueError
from indigo_core.guidance import GuidanceSettings, RefineSettings, Schedule, step_index_from_sigmas

from _guidance_toy import karras_sigmas, linear_sigmas


@pytest.mark.parametrize("n", [1, 7, 10, 20, 25, 50, 100])
def test_fraction_counts(n):
    # the paper's "first 15 of 50" default; holds (rounded up) for any step count
    reg = Schedule.fraction(0.0, 0.3)
    steps = reg.steps(n)
    assert steps == list(range(len(steps)))
    assert len(steps) == -(-3 * n // 10)  # ceil(0.3 n) without float error
    half = Schedule.fraction(0.0, 0.5).steps(n)
    assert len(half) == -(-n // 2)
    if n == 50:
        assert len(steps) == 15 and len(half) == 25


def test_fraction_float_noise():
    # 0.3 * 10 == 3.0000000000000004 must not count a fourth step
    assert Schedule.fraction(0.0, 0.3).steps(10) == [0, 1, 2]
    assert Schedule.fraction(0.7, 1.0).steps(10) == [7, 8, 9]
    assert Schedule.fraction(0.2, 0.6).steps(5) == [1, 2]


def test_other_kinds():
    assert Schedule.every_k(5).steps(12) == [0, 5, 10]
    assert Schedule.all_steps().steps(4) == [0, 1, 2, 3]
    assert Schedule.off().steps(4) == []
    assert not Schedule.all_steps().active(4, 4)  # out of range
    assert Schedule.from_dict(Schedule.fraction(0.1, 0.4).to_dict()) == Schedule.fraction(0.1, 0.4)


@pytest.mark.parametrize("bad", [dict(kind="sometimes"), dict(kind="fraction", start=0.5, end=0.2),
                                 dict(kind="fraction", start=-0.1, end=0.2), dict(kind="every", every=0)])
def test_schedule_validation(bad):
    with pytest.raises(ConfigError, match="expected"):
        Schedule(**bad)


@pytest.mark.parametrize("sigmas", [karras_sigmas(12), linear_sigmas(9)])
def test_step_index_exact_and_float32(sigmas):
    n = len(sigmas) - 1
    for i in range(n):
        assert step_index_from_sigmas(float(sigmas[i]), sigmas) == (i, n)
        # float32 round trip of both sides, (B,) sigma tensors
        s32 = torch.tensor([float(sigmas[i])] * 2, dtype=torch.float32)
        assert step_index_from_sigmas(s32, sigmas.float()) == (i, n)
        assert step_index_from_sigmas(s32, [float(v) for v in sigmas]) == (i, n)


def test_step_index_intermediate_sigmas():
    sigmas = karras_sigmas(10)
    n = 10
    for i in range(n - 1):
        mid = (float(sigmas[i]) * float(sigmas[i + 1])) ** 0.5  # dpmpp_2s / uni_pc-like midpoint
        assert step_index_from_sigmas(mid, sigmas) == (i, n)
    # heun's end-of-step evaluation at sigma_{i+1} belongs to step i+1
    assert step_index_from_sigmas(float(sigmas[3]), sigmas) == (3, n)
    assert step_index_from_sigmas(1e6, sigmas) == (0, n)
    assert step_index_from_sigmas(1e-9, sigmas) == (n - 1, n)


def test_step_index_errors():
    with pytest.raises(InputValueError, match="at least 2"):
        step_index_from_sigmas(1.0, [1.0])
    with pytest.raises(InputValueError, match="finite"):
        step_index_from_sigmas(float("nan"), [1.0, 0.0])


def test_settings_defaults_and_validation():
    s = GuidanceSettings()
    assert s.mode == "latent_inn" and s.grad_wrt == "z0" and s.refine is None
    assert s.regulariser == Schedule.fraction(0.0, 0.3)
    r = RefineSettings()
    assert r.lr == 5e-5 and r.schedule == Schedule.fraction(0.0, 0.5) and r.optimizer == "adam"
    for bad, field in [(dict(mode="dps"), "mode"), (dict(zeta=1.5), "zeta"), (dict(w_p=-1), "w_p"),
                       (dict(step_rule="adam"), "step_rule"), (dict(colour_fix="hist"), "colour_fix"),
                       (dict(mode="latent_inn", grad_wrt="zt"), "grad_wrt"),
                       (dict(mode="hgs", refine=RefineSettings()), "refine"),
                       (dict(latent_iterations=0), "latent_iterations"),
                       (dict(mode="ldps", w_dc=0.0), "w_dc")]:
        with pytest.raises(ConfigError, match=f"{field}.*expected|expected.*{field}"):
            GuidanceSettings(**bad)
    with pytest.raises(ConfigError, match="lr"):
        RefineSettings(lr=0.0)
    # frozen
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.zeta = 0.1  # type: ignore[misc]
