"""How the guidance behaves inside ComfyUI: determinism, batches, schedules, what it never changes,
interruption, cfg, the z_t mode, and the per-step record the nodes report.

All through the pack's nodes as ComfyUI loaded them (``comfy_inprocess``, inference mode on).
"""

from __future__ import annotations

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

import guidance_helpers as gh
import models as M


@pytest.fixture(scope="module")
def latent_scene(comfy_inprocess):
    return gh.make_scene(comfy_inprocess, "latent", latent_hw=16, split="haar", seed=3)


@pytest.fixture(scope="module")
def pixel_scene(comfy_inprocess):
    return gh.make_scene(comfy_inprocess, "pixel", latent_hw=8, seed=4)


def test_same_seed_and_inputs_give_bit_identical_outputs(comfy_inprocess, pixel_scene):
    host, s = comfy_inprocess, pixel_scene
    refine = host.run_node("INDIGO_INNRefine", schedule="fraction", start=0.0, end=0.5, every=1, lr=1e-3,
                           iterations=0, adapt_lr=1e-4, inverse_weight=1.0)[0]
    runs = [gh.guided_ksampler(host, s, seed=11, sampler_name="euler_ancestral", refine=refine,
                               step_size=0.7, max_step=0.0) for _ in range(2)]
    assert torch.equal(runs[0][0]["samples"], runs[1][0]["samples"])
    assert torch.equal(runs[0][1], runs[1][1])  # the INN preview too
    other = gh.guided_ksampler(host, s, seed=12, sampler_name="euler_ancestral", refine=refine,
                               step_size=0.7, max_step=0.0)
    assert not torch.equal(runs[0][0]["samples"], other[0]["samples"])


@pytest.mark.parametrize("domain", ["latent", "pixel"])
def test_swapping_measurements_in_a_batch_swaps_the_outputs(comfy_inprocess, latent_scene, pixel_scene, domain):
    host = comfy_inprocess
    s = latent_scene if domain == "latent" else pixel_scene
    y1, y2 = s.y, s.y.flip(-1).roll(2, dims=-2)
    latent = s.latent(batch=2)
    latent["batch_index"] = [0, 0]  # the same noise for both items: only the measurement differs
    widgets = dict(zeta=0.5) if domain == "latent" else dict(step_size=0.7, max_step=0.0)
    a = gh.guided_ksampler(host, s, measurement=torch.cat([y1, y2]), latent=latent, seed=5, **widgets)[0]["samples"]
    b = gh.guided_ksampler(host, s, measurement=torch.cat([y2, y1]), latent=latent, seed=5, **widgets)[0]["samples"]
    assert (a[0] - a[1]).abs().max() > 0.1  # the measurements matter
    torch.testing.assert_close(b[0], a[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(b[1], a[0], rtol=0, atol=1e-5)


class _Counter:
    def __init__(self):
        self.n = 0

    def __call__(self, *args, **kwargs):
        self.n += 1


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_regulariser_and_refinement_run_on_exactly_the_scheduled_steps(comfy_inprocess, latent_scene, sampler):
    """Counted from outside the core: VAE encoder calls (z_y once, then one per regulariser step) and
    optimiser steps (one per refinement step). heun evaluates the model twice per step: the actions
    must still run once per scheduled step."""
    host, s = comfy_inprocess, latent_scene
    steps = 10
    reg = host.run_node("INDIGO_Regulariser", schedule="every", start=0.0, end=1.0, every=3)[0]  # 0, 3, 6, 9
    refine = host.run_node("INDIGO_INNRefine", schedule="fraction", start=0.2, end=0.7, every=1, lr=1e-4,
                           iterations=0, adapt_lr=1e-4, inverse_weight=1.0)[0]  # steps 2..6
    encodes, opt_steps = _Counter(), _Counter()
    h1 = s.vae.first_stage_model.encoder.register_forward_hook(lambda *a: encodes())
    h2 = register_optimizer_step_post_hook(lambda *a: opt_steps())
    try:
        res = gh.guided_ksampler(host, s, steps=steps, sampler_name=sampler, regulariser=reg, refine=refine, zeta=0.5)
    finally:
        h1.remove()
        h2.remove()
    record = res.ui["indigo_run"][0]
    assert encodes.n == 1 + 4, f"encoder calls: expected z_y + 4 regulariser steps, got {encodes.n}"
    assert opt_steps.n == 5, f"optimiser steps: expected 5 (steps 2..6), got {opt_steps.n}"
    assert record["regularised_steps"] == [0, 3, 6, 9]
    assert record["refined_steps"] == [2, 3, 4, 5, 6]
    assert record["completed"] is True
    assert sorted({i for i, _ in record["residual"]}) == list(range(steps))


def test_loaded_weights_are_bit_identical_after_runs(comfy_inprocess):
    """MODEL (a real SD-layout UNet), VAE and INN hashed before and after guided runs that refine
    the INN, regularise, and take gradients through the decoder and through the UNet."""
    host = comfy_inprocess
    s = gh.make_scene(host, "pixel", latent_hw=8, seed=5)
    unet = M.tiny_unet_model(seed=5)
    refine = host.run_node("INDIGO_INNRefine", schedule="all", start=0.0, end=1.0, every=1, lr=1e-2,
                           iterations=0, adapt_lr=1e-4, inverse_weight=1.0)[0]
    before = (gh.state_hash(unet.model), gh.state_hash(s.vae.first_stage_model), gh.state_hash(s.inn))
    for grad_wrt in ("z0", "zt"):
        gh.guided_ksampler(host, s, model=unet, steps=4, refine=refine, grad_wrt=grad_wrt, cfg=2.0)
    adapted = host.run_node("INDIGO_INNRefine", schedule="all", start=0.0, end=1.0, every=1, lr=1e-3,
                            iterations=3, adapt_lr=1e-2, inverse_weight=1.0, inn=s.inn,
                            reference=gh.to_image(s.x_star), measurement=gh.to_image(s.y))[1]
    after = (gh.state_hash(unet.model), gh.state_hash(s.vae.first_stage_model), gh.state_hash(s.inn))
    assert before == after
    assert gh.state_hash(adapted) != before[2]  # the adaptation changed its own copy


def test_interrupted_run_then_rerun_equals_an_uninterrupted_run(comfy_inprocess, pixel_scene):
    import comfy.model_management as mm
    import comfy.patcher_extension as pe

    host, s = comfy_inprocess, pixel_scene
    refine = host.run_node("INDIGO_INNRefine", schedule="fraction", start=0.0, end=0.5, every=1, lr=1e-3,
                           iterations=0, adapt_lr=1e-4, inverse_weight=1.0)[0]
    guided = gh.apply_guidance(host, s, refine=refine, step_size=0.7, max_step=0.0)
    reference = gh.ksampler(host, guided, s, seed=9)

    calls = {"n": 0}

    def interrupt_at_call_5(executor, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            mm.interrupt_current_processing(True)  # what the Cancel button does
        return executor(*args, **kwargs)

    interrupting = guided.clone()
    interrupting.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_interrupt", interrupt_at_call_5)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            gh.ksampler(host, interrupting, s, seed=9)
    finally:
        mm.interrupt_current_processing(False)
    assert calls["n"] == 5
    rerun = gh.ksampler(host, guided, s, seed=9)
    assert torch.equal(rerun, reference)


def test_cfg_above_one_runs_the_unconditional_pass_and_still_guides(comfy_inprocess, pixel_scene):
    host, s = comfy_inprocess, pixel_scene
    unguided = gh.ksampler(host, s.model, s, seed=2, cfg=4.0)
    r1 = gh.guided_ksampler(host, s, seed=2, cfg=1.0, step_size=0.7, max_step=0.0)[0]["samples"]
    r4 = gh.guided_ksampler(host, s, seed=2, cfg=4.0, step_size=0.7, max_step=0.0)[0]["samples"]
    assert not torch.equal(r1, r4)
    assert s.residual(r4) * 2 <= s.residual(unguided)


def test_zt_mode_guides_through_the_denoiser(comfy_inprocess, pixel_scene):
    """DPS-style gradient through the (analytic) denoiser: still cuts the PixelINN residual."""
    host, s = comfy_inprocess, pixel_scene
    unguided = gh.ksampler(host, s.model, s, seed=4)
    zt = gh.guided_ksampler(host, s, seed=4, grad_wrt="zt", step_size=0.7, max_step=0.0)[0]["samples"]
    z0 = gh.guided_ksampler(host, s, seed=4, grad_wrt="z0", step_size=0.7, max_step=0.0)[0]["samples"]
    assert not torch.equal(zt, z0)
    assert s.residual(zt) * 2 <= s.residual(unguided)


def test_zt_mode_works_with_a_model_loaded_under_inference_mode(comfy_inprocess, pixel_scene):
    """The server loads weights as inference tensors, which autograd cannot save: the z_t mode must
    differentiate through a private copy, leave the loaded weights alone, and match a run with
    normal tensors."""
    host, s = comfy_inprocess, pixel_scene
    with torch.inference_mode():
        loaded = M.tiny_unet_model(seed=8)
    assert all(p.is_inference() for p in loaded.model.diffusion_model.parameters())
    normal = M.tiny_unet_model(seed=8)
    before = gh.state_hash(loaded.model)
    a = gh.guided_ksampler(host, s, model=loaded, steps=3, grad_wrt="zt", cfg=2.0)[0]["samples"]
    b = gh.guided_ksampler(host, s, model=normal, steps=3, grad_wrt="zt", cfg=2.0)[0]["samples"]
    assert gh.state_hash(loaded.model) == before
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_node_reports_the_per_step_record(comfy_inprocess, latent_scene):
    host, s = comfy_inprocess, latent_scene
    res = gh.guided_ksampler(host, s, steps=6, zeta=0.5)
    rec = res.ui["indigo_run"][0]
    assert rec["mode"] == "latent_inn" and rec["completed"] is True
    residuals = [r[0] for _, r in rec["residual"]]
    assert len(residuals) == 6 and residuals[-1] < residuals[0]
    assert res[1].shape == (1, 128, 128, 3)  # the INN preview as an IMAGE
    assert 0.0 <= float(res[1].min()) and float(res[1].max()) <= 1.0


def test_start_from_measurement_with_partial_denoise(comfy_inprocess, latent_scene):
    host, s = comfy_inprocess, latent_scene
    from_noise = gh.guided_ksampler(host, s, seed=1, denoise=0.5, zeta=0.5)[0]["samples"]
    from_y = gh.guided_ksampler(host, s, seed=1, denoise=0.5, zeta=0.5, start_from_measurement=True)[0]["samples"]
    assert not torch.equal(from_noise, from_y)
    z_up = s.ae.encode(torch.nn.functional.interpolate(s.y, size=(128, 128), mode="bicubic").clamp(0, 1))
    # Starting from E(up(y)) and half the schedule stays closer to it than sampling an empty latent.
    assert (from_y - z_up).norm() < (from_noise - z_up).norm()


def test_regulariser_node_reencodes_a_latent(comfy_inprocess, latent_scene):
    host, s = comfy_inprocess, latent_scene
    z = s.z_star
    out = host.run_node("INDIGO_Regulariser", schedule="off", start=0.0, end=0.3, every=5, vae=s.vae,
                        latent={"samples": z})[1]["samples"]
    with torch.no_grad():
        expected = s.vae.encode(s.vae.decode(z))  # ComfyUI's own VAE Decode -> VAE Encode
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out, z, atol=1e-2)  # it did something


def test_apply_guidance_works_with_ksampler_advanced_and_sampler_custom_advanced(comfy_inprocess, latent_scene):
    """The patched MODEL guides ComfyUI's other sampler nodes too (same wrapper and hook)."""
    host, s = comfy_inprocess, latent_scene
    guided = gh.apply_guidance(host, s, zeta=0.5)

    def advanced(model):
        return host.run_node("KSamplerAdvanced", model=model, add_noise="enable", noise_seed=3, steps=10, cfg=1.0,
                             sampler_name="dpmpp_2m", scheduler="karras", positive=s.positive, negative=s.negative,
                             latent_image=s.latent(), start_at_step=0, end_at_step=10000,
                             return_with_leftover_noise="disable")[0]["samples"]

    def custom(model):
        guider = host.run_node("CFGGuider", model=model, positive=s.positive, negative=s.negative, cfg=1.0)[0]
        sampler = host.run_node("KSamplerSelect", sampler_name="euler_ancestral")[0]
        sigmas = host.run_node("BasicScheduler", model=model, scheduler="normal", steps=10, denoise=1.0)[0]
        noise = host.run_node("RandomNoise", noise_seed=3)[0]
        return host.run_node("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                             latent_image=s.latent())[0]["samples"]

    for run in (advanced, custom):
        ru, rg = s.residual(run(s.model)), s.residual(run(guided))
        assert rg * 3 <= ru, f"{run.__name__}: unguided {ru:.4f}, guided {rg:.4f}"


def test_inn_refine_adapts_a_copy_to_a_new_degradation(comfy_inprocess, pixel_scene):
    """INN Refine with iterations > 0: a copy of the INN learns an operator it was not built for
    (bicubic x4 instead of its own coarse part); the input INN stays as it was."""
    host, s = comfy_inprocess, pixel_scene
    y_new = torch.nn.functional.interpolate(s.x_star, scale_factor=0.25, mode="bicubic", antialias=True).clamp(0, 1)
    before = gh.state_hash(s.inn)
    refine, adapted = host.run_node("INDIGO_INNRefine", schedule="fraction", start=0.0, end=0.5, every=1, lr=5e-5,
                                    iterations=30, adapt_lr=3e-3, inverse_weight=1.0, inn=s.inn,
                                    reference=gh.to_image(s.x_star), measurement=gh.to_image(y_new)).outputs
    assert gh.state_hash(s.inn) == before
    with torch.no_grad():
        err_before = (s.inn(s.x_star)[0] - y_new).pow(2).mean()
        err_after = (adapted(s.x_star)[0] - y_new).pow(2).mean()
    assert err_after < 0.5 * err_before, f"{float(err_before):.5f} -> {float(err_after):.5f}"
    assert refine.lr == 5e-5 and refine.schedule.steps(10) == [0, 1, 2, 3, 4]
