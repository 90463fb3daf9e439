"""Bad input is refused before sampling, with the pack's error naming what was expected and what came.

Each case runs the pack's node the way ComfyUI does (``run_node``, inference mode) and checks the
error type, its message, and that the denoiser was never called. The same errors through the
server's /prompt are in test_guidance_server.py.
"""

from __future__ import annotations

import pytest
import torch

import guidance_helpers as gh
import models as M


@pytest.fixture(scope="module")
def pixel_scene(comfy_inprocess):
    return gh.make_scene(comfy_inprocess, "pixel", latent_hw=8, seed=8)


@pytest.fixture(scope="module")
def latent_scene(comfy_inprocess):
    return gh.make_scene(comfy_inprocess, "latent", latent_hw=8, seed=9)


def _refused(host, scene, error_type, match, **kwargs):
    calls = scene.model.model.diffusion_model.calls
    calls.clear()
    with pytest.raises(error_type, match=match):
        gh.guided_ksampler(host, scene, steps=2, **kwargs)
    assert calls == [], "the denoiser ran before the input was refused"


def test_pixel_measurement_size_must_match_latent_and_inn_scale(comfy_inprocess, errors, pixel_scene):
    y = torch.rand(1, 3, 20, 20)
    _refused(comfy_inprocess, pixel_scene, errors.ShapeError,
             r"measurement: expected 16x16 pixels \(latent 8x8 -> image 64x64, PixelINN scale x4\), got 20x20",
             measurement=y)


def test_latent_measurement_aspect_ratio(comfy_inprocess, errors, latent_scene):
    _refused(comfy_inprocess, latent_scene, errors.ShapeError, r"expected the aspect ratio of the image 64x64.*got 16x40",
             measurement=torch.rand(1, 3, 16, 40))


def test_four_channel_latent_inn_with_a_sixteen_channel_model(comfy_inprocess, errors, latent_scene):
    model16 = M.gaussian_prior_model(channels=16, seed=1)
    vae16 = M.tiny_vae(latent_channels=16, seed=1)
    latent16 = {"samples": torch.zeros(1, 16, 8, 8)}
    with pytest.raises(errors.DomainError,
                       match=r"inn: expected a LatentINN with 16 channels \(the model's and VAE's latent channels\), "
                             r"got a 4-channel LatentINN"):
        gh.guided_ksampler(comfy_inprocess, latent_scene, model=model16, vae=vae16, latent=latent16, steps=2)
    assert model16.model.diffusion_model.calls == []


def test_vae_must_match_the_model(comfy_inprocess, errors, latent_scene):
    vae16 = M.tiny_vae(latent_channels=16, seed=1)
    _refused(comfy_inprocess, latent_scene, errors.DomainError,
             r"vae: expected a VAE with 4 latent channels \(the model's latent format\), got a VAE with 16", vae=vae16)
    # Apply INDIGO Guidance refuses it when patching, before any sampler exists.
    with pytest.raises(errors.DomainError, match="expected a VAE with 4 latent channels"):
        gh.apply_guidance(comfy_inprocess, latent_scene, model=latent_scene.model, vae=vae16)


def test_inn_domain_must_match_the_mode(comfy_inprocess, errors, latent_scene, pixel_scene):
    _refused(comfy_inprocess, latent_scene, errors.DomainError, r"mode 'pixel_inn' expects a pixel INN, got a latent INN",
             mode="pixel_inn")


def test_batch_of_measurements_must_match_the_latent(comfy_inprocess, errors, latent_scene):
    y2 = torch.cat([latent_scene.y, latent_scene.y])
    _refused(comfy_inprocess, latent_scene, errors.ShapeError, r"measurement: expected a batch of 3 \(one per latent\) or 1, got 2",
             measurement=y2, latent=latent_scene.latent(batch=3))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_measurement(comfy_inprocess, errors, latent_scene, bad):
    y = latent_scene.y.clone()
    y[0, 1, 2, 3] = bad
    _refused(comfy_inprocess, latent_scene, errors.InputValueError, r"measurement: expected finite pixel values.*got 1 NaN/inf",
             measurement=y)


def test_latent_with_other_channels_than_the_model(comfy_inprocess, errors, latent_scene):
    _refused(comfy_inprocess, latent_scene, errors.DomainError, r"latent: expected 4 channels \(the model's latent format\), got 16",
             latent={"samples": torch.zeros(1, 16, 8, 8)})


def test_apply_guidance_refuses_at_the_start_of_sampling(comfy_inprocess, errors, pixel_scene):
    """The patch cannot know the latent size; KSampler's run is refused before the first step."""
    host, s = comfy_inprocess, pixel_scene
    m = gh.apply_guidance(host, s, measurement=torch.rand(1, 3, 24, 24))
    s.model.model.diffusion_model.calls.clear()
    with pytest.raises(errors.ShapeError, match=r"measurement: expected 16x16 pixels.*got 24x24"):
        gh.ksampler(host, m, s, steps=2)
    assert s.model.model.diffusion_model.calls == []


def test_missing_and_broken_estimator_files(comfy_inprocess, errors):
    host = comfy_inprocess
    image = torch.rand(1, 32, 32, 3)
    with pytest.raises(errors.WeightsFileError, match=r"missing-estimator\.safetensors: not found in the 'indigo' model folders"):
        host.run_node("INDIGO_DegradationEstimate", image=image, estimator_name="missing-estimator.safetensors")
    broken = host.models_dir / "broken-estimator.safetensors"
    broken.write_bytes(b"not a safetensors file" * 4)
    with pytest.raises(errors.WeightsFileError, match=r"broken-estimator\.safetensors"):
        host.run_node("INDIGO_DegradationEstimate", image=image, estimator_name="broken-estimator.safetensors")


def test_degradation_estimate_and_synthetic_degradation_nodes(comfy_inprocess, errors):
    """The happy paths of the two small nodes, and their refusals."""
    host = comfy_inprocess
    est_mod = host.module("indigo_core.estimator")
    est = est_mod.DegradationEstimator(est_mod.EstimatorConfig.preset("small")).eval()
    path = host.models_dir / "test-estimator.safetensors"
    est_mod.save_estimator(est, path, overwrite=True)
    x = torch.rand(2, 64, 64, 3)
    y = host.run_node("INDIGO_SyntheticDegradation", image=x, preset="mild", scale=4, blur_sigma=1.0, noise_level=0.0,
                      jpeg_quality=0, seed=3)[0]
    assert y.shape == (2, 16, 16, 3) and 0 <= float(y.min()) and float(y.max()) <= 1
    again = host.run_node("INDIGO_SyntheticDegradation", image=x, preset="mild", scale=4, blur_sigma=1.0,
                          noise_level=0.0, jpeg_quality=0, seed=3)[0]
    assert torch.equal(y, again)
    custom = host.run_node("INDIGO_SyntheticDegradation", image=x, preset="custom", scale=2, blur_sigma=1.0,
                           noise_level=5.0, jpeg_quality=0, seed=3)[0]
    assert custom.shape == (2, 32, 32, 3)
    gamma = host.run_node("INDIGO_DegradationEstimate", image=y, estimator_name="test-estimator.safetensors")[0]
    assert gamma.shape == (2, est.config.emb_dim) and torch.isfinite(gamma).all()
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(errors.InputValueError, match="NaN"):
        host.run_node("INDIGO_SyntheticDegradation", image=bad, preset="mild", scale=4, blur_sigma=1.0,
                      noise_level=0.0, jpeg_quality=0, seed=3)
