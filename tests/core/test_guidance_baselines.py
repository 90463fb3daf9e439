"""Fidelity of the guidance objectives and updates to the paper (LatentINDIGO Alg. 1, Alg. 2,
Eq. 16, Sec. IV-C1's baselines), on small random INNs and the linear test autoencoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from indigo_core.guidance import (GuidanceRun, GuidanceSettings, LinearTestAutoencoder, RefineSettings,
                                  descent_update, hgs_objective, latent_inn_guide, ldps_objective,
                                  pixel_inn_objective, rms_per_item, sobel_magnitude)

from _guidance_toy import pixel_small_inn

AE = LinearTestAutoencoder(4, 8)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _isoluminant_pair(h=16, w=16):
    """Two colours of equal BT.601 luma, left | right halves: an edge in colour only."""
    a = torch.tensor([0.8, 0.3, 0.5])
    b = torch.tensor([0.2, 0.6, 0.0])
    b[2] = ((0.299 * a[0] + 0.587 * a[1] + 0.114 * a[2]) - 0.299 * b[0] - 0.587 * b[1]) / 0.114
    assert 0.0 <= float(b[2]) <= 1.0
    x = torch.empty(1, 3, h, w)
    x[:, :, :, : w // 2] = a.view(1, 3, 1, 1)
    x[:, :, :, w // 2:] = b.view(1, 3, 1, 1)
    return x


# ---------------------------------------------------------------- HGS (PromptFix)
def test_hgs_high_pass_is_the_sobel_of_the_luma():
    # PromptFix's HGS (and the Sobel operator the paper cites) works on intensity: a colour-only
    # edge has no high-frequency component, and a luma step gives the usual Sobel response.
    x = _isoluminant_pair()
    edges = sobel_magnitude(x)
    assert edges.shape == (1, 1, 16, 16)
    assert float(edges.max()) < 1e-2, float(edges.max())  # flat: only the sqrt(eps) floor

    grey = torch.zeros(2, 3, 16, 16)
    grey[:, :, :, 8:] = 1.0  # a unit step in every channel = a unit luma step
    g = sobel_magnitude(grey)
    assert g.shape == (2, 1, 16, 16)
    # normalised Sobel kernel (sum |k| = 8): |gx| = 4/8 on each side of the step, 0 elsewhere
    assert torch.allclose(g[:, 0, :, 7:9], torch.full((2, 16, 2), 0.5), atol=1e-3)
    assert float(g[:, 0, :, :6].max()) < 1e-2 and float(g[:, 0, :, 10:].max()) < 1e-2

    # the HGS objective ignores a recolouring that keeps the luma, not a change of the luma
    flat = torch.full_like(x, float((x[0, :, 0, 0] * torch.tensor([0.299, 0.587, 0.114])).sum()))
    assert float(hgs_objective(x, sobel_magnitude(flat), 1.0).h) < 1e-2
    assert float(hgs_objective(grey[:1], sobel_magnitude(flat), 1.0).h) > 0.1

    # a grey (B,1,H,W) input is its own luma; other channel counts are refused
    assert torch.allclose(sobel_magnitude(grey[:, :1]), g)
    with pytest.raises(ValueError, match=r"expected \(B,3,H,W\)"):
        sobel_magnitude(torch.rand(1, 4, 8, 8))


def test_hgs_run_guides_by_the_luma_edges():
    x = _isoluminant_pair(32, 32)
    y = F.interpolate(x, scale_factor=0.25, mode="area")
    run = GuidanceRun(GuidanceSettings(mode="hgs"), measurement=y, latent_shape=(1, 4, 4, 4), autoencoder=AE)
    assert run.edges.shape == (1, 1, 32, 32)
    assert float(run.edges.max()) < 1e-2  # the measurement's colour-only edge is no HGS target


# ---------------------------------------------------------------- LDPS / PixelINN objectives
def test_ldps_is_the_pixel_inn_data_term_in_the_measurement_domain():
    inn = pixel_small_inn()
    x0 = torch.rand(2, 3, 32, 32, generator=_gen(0))
    y = torch.rand(2, 3, 8, 8, generator=_gen(1))
    with torch.no_grad():
        ldps = ldps_objective(x0, y, inn, None, 2.5)
        pix = pixel_inn_objective(x0, y, inn, None, 2.5, 0.0, None)
        x_c = inn(x0)[0]
    assert x_c.shape == y.shape  # compared with y in the measurement domain, not with up(y)
    assert torch.allclose(ldps.residual, rms_per_item(y - x_c))
    assert torch.allclose(ldps.h, 2.5 * ldps.residual) and torch.allclose(pix.h, ldps.h)


def test_pixel_inn_backprojection_term_is_lpips_of_x_inv_against_x0():
    inn = pixel_small_inn()
    x0 = torch.rand(1, 3, 32, 32, generator=_gen(0))
    y = torch.rand(1, 3, 8, 8, generator=_gen(1))
    seen = {}

    def perceptual(a, b):
        seen["a"], seen["b"] = a.detach(), b.detach()
        return rms_per_item(a - b)

    with torch.no_grad():
        obj = pixel_inn_objective(x0, y, inn, None, 2.0, 0.5, perceptual)
        x_c, x_d = inn(x0)
        x_inv = inn.inverse(y, x_d)
    assert torch.allclose(seen["a"], x_inv, atol=1e-6) and torch.equal(seen["b"], x0)
    assert torch.allclose(obj.h, 2.0 * rms_per_item(y - x_c) + 0.5 * rms_per_item(x_inv - x0), atol=1e-6)
    # both terms vanish at data consistency (y = g_c(x0) gives x_inv = x0)
    with torch.no_grad():
        consistent = pixel_inn_objective(x0, x_c, inn, None, 2.0, 0.5, perceptual)
    assert float(consistent.h) < 1e-4


# ---------------------------------------------------------------- Alg. 2 and the step rule
def test_latent_inn_update_interpolates_towards_the_inverse_with_the_measurement_coarse():
    inn = pixel_small_inn()  # non-redundant Haar split: g^-1 then g_c returns the coarse exactly
    z0 = torch.rand(1, 3, 32, 32, generator=_gen(0))
    z_y = torch.rand(1, 3, 8, 8, generator=_gen(1))
    with torch.no_grad():
        _, z_d = inn(z0)
        z_inv = inn.inverse(z_y, z_d)
        out = latent_inn_guide(z0, z_y, inn, None, 0.3)
        full = latent_inn_guide(z0, z_y, inn, None, 1.0)
        c_full, d_full = inn(full)
    assert torch.allclose(out, z0 + 0.3 * (z_inv - z0), atol=1e-6)
    assert torch.allclose(c_full, z_y, atol=1e-4)  # zeta 1: the measurement's coarse part
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(d_full, z_d))  # and z0's details
    assert torch.equal(latent_inn_guide(z0, z_y, inn, None, 0.0), z0)


@pytest.mark.parametrize("rule", ["polyak", "gradient"])
def test_descent_update_moves_against_the_gradient(rule):
    target = torch.randn(2, 4, 4, 4, generator=_gen(0))
    z = torch.randn(2, 4, 4, 4, generator=_gen(1)).requires_grad_(True)
    h = rms_per_item(z - target)
    (grad,) = torch.autograd.grad(h.sum(), z)
    new = descent_update(z.detach(), grad, h.detach(), (grad * grad).flatten(1).sum(1), 0.5, rule)
    assert (rms_per_item(new - target) < h.detach()).all()
    if rule == "polyak":  # half the step that zeroes the linearised h: half way to the target
        assert torch.allclose(new, z.detach() + 0.5 * (target - z.detach()), atol=1e-5)


# ---------------------------------------------------------------- Eq. 16: refinement
def test_refinement_minimises_the_forward_residual_of_the_estimate_before_the_update():
    inn = pixel_small_inn()
    zstar = torch.randn(1, 4, 4, 4, generator=_gen(1))
    with torch.no_grad():
        y = inn(AE.decode(zstar))[0] + 0.05
    z0 = torch.randn(1, 4, 4, 4, generator=_gen(2))
    st = GuidanceSettings(mode="pixel_inn", w_p=0.0, refine=RefineSettings())
    run = GuidanceRun(st, measurement=y, latent_shape=(1, 4, 4, 4), autoencoder=AE, inn=inn)
    with torch.no_grad():
        before = F.mse_loss(inn(AE.decode(z0))[0], y)
    run.step(z0, 0, 10)
    assert run.records[-1].refined
    assert torch.allclose(run.records[-1].refine_loss, before, rtol=1e-5)  # mean((y - g_c(D(z0)))^2)
    with torch.no_grad():
        after = F.mse_loss(run.inn(AE.decode(z0))[0], y)
    assert float(after) < float(before)
    run.step(z0, 5, 10)  # the second half: no refinement (paper: the first half of the steps)
    assert not run.records[-1].refined
