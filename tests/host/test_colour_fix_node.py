"""Colour Fix: the node equals the core's colour fix against the bicubic-upsampled measurement,
removes a colour cast, keeps the image's details, and refuses bad inputs before any work."""

from __future__ import annotations

import pytest
import torch


def _scene():
    g = torch.Generator().manual_seed(0)
    clean = 0.2 + 0.6 * torch.rand(2, 64, 48, 3, generator=g)                # (B,H,W,C)
    y = torch.nn.functional.avg_pool2d(clean.movedim(-1, 1), 4).movedim(1, -1)  # a x4 measurement
    cast = (clean * torch.tensor([1.15, 0.95, 0.8]) + 0.03).clamp(0, 1)      # a colour shift
    return clean, y, cast


@pytest.mark.parametrize("method", ["wavelet", "adain"])
def test_colour_fix_matches_the_core_and_removes_a_cast(comfy_inprocess, method) -> None:
    clean, y, cast = _scene()
    (out,) = comfy_inprocess.run_node("INDIGO_ColourFix", image=cast, measurement=y, method=method).outputs
    assert out.shape == cast.shape
    core = comfy_inprocess.core
    ref = core.guidance.upsample_measurement(y.movedim(-1, 1), (64, 48))
    want = core.guidance.colour.colour_fix(cast.movedim(-1, 1), ref, method).movedim(1, -1)
    assert torch.allclose(out, want, atol=1e-6)
    # the per-channel mean error of the cast (up to 0.1) is mostly gone
    before = (cast.mean((1, 2)) - clean.mean((1, 2))).abs().max()
    after = (out.mean((1, 2)) - clean.mean((1, 2))).abs().max()
    assert before > 0.05 and after < 0.3 * before, (float(before), float(after))


def test_colour_fix_one_measurement_for_a_batch(comfy_inprocess) -> None:
    clean, y, cast = _scene()
    (both,) = comfy_inprocess.run_node("INDIGO_ColourFix", image=cast, measurement=y[:1].clone(),
                                       method="wavelet").outputs
    (first,) = comfy_inprocess.run_node("INDIGO_ColourFix", image=cast[:1].clone(), measurement=y[:1].clone(),
                                        method="wavelet").outputs
    assert torch.equal(both[:1], first)


def test_colour_fix_refuses_bad_inputs(comfy_inprocess) -> None:
    clean, y, cast = _scene()
    errors = comfy_inprocess.core.errors
    with pytest.raises(errors.ShapeError, match="expected 1 or 2 images"):
        comfy_inprocess.run_node("INDIGO_ColourFix", image=cast, measurement=torch.cat([y, y]), method="wavelet")
    with pytest.raises(errors.ShapeError, match="at most the image's size"):
        comfy_inprocess.run_node("INDIGO_ColourFix", image=y, measurement=cast, method="wavelet")
    bad = cast.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(errors.InputValueError, match="NaN"):
        comfy_inprocess.run_node("INDIGO_ColourFix", image=bad, measurement=y, method="adain")


def test_colour_fix_levels_follow_the_core_and_are_checked(comfy_inprocess) -> None:
    clean, y, cast = _scene()
    core = comfy_inprocess.core
    ref = core.guidance.upsample_measurement(y.movedim(-1, 1), (64, 48))
    outs = {}
    for levels in (2, 5):
        (outs[levels],) = comfy_inprocess.run_node("INDIGO_ColourFix", image=cast, measurement=y, method="wavelet",
                                                   levels=levels).outputs
        want = core.guidance.colour.colour_fix(cast.movedim(-1, 1), ref, "wavelet", levels).movedim(1, -1)
        assert torch.allclose(outs[levels], want, atol=1e-6)
    assert not torch.allclose(outs[2], outs[5], atol=1e-3)
    (default,) = comfy_inprocess.run_node("INDIGO_ColourFix", image=cast, measurement=y, method="wavelet").outputs
    assert torch.equal(default, outs[5])
    with pytest.raises(core.errors.ConfigError, match="levels"):
        comfy_inprocess.run_node("INDIGO_ColourFix", image=cast, measurement=y, method="wavelet", levels=0)
