"""Inputs that cannot work are refused with the pack's error before any heavy work (no VAE pass, no
denoiser call): empty batches, a degradation embedding of the wrong size, missing LPIPS weights,
images Compare Images would have to shrink or stretch, INN Refine's adaptation inputs. And where the
LPIPS weights are looked for: the indigo model folders first, for the guidance as for Compare Images.
"""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

import guidance_helpers as gh
from test_bundled_models import RESTORER


@pytest.fixture(scope="module")
def scenes(comfy_inprocess):
    """A LatentINN and a PixelINN scene (guidance_helpers.make_scene), by INN domain."""
    return {domain: gh.make_scene(comfy_inprocess, domain, latent_hw=8, seed=21 + k)
            for k, domain in enumerate(("latent", "pixel"))}


@pytest.fixture()
def vae_passes(monkeypatch):
    """Counts the VAE's encode and decode calls of a scene (instance attributes, undone after)."""
    def watch(scene):
        calls = []
        for name in ("encode", "decode", "encode_tiled", "decode_tiled"):
            original = getattr(scene.vae, name)

            def counted(*a, _name=name, _original=original, **k):
                calls.append(_name)
                return _original(*a, **k)

            monkeypatch.setattr(scene.vae, name, counted)
        return calls
    return watch


def _refused_before_work(host, scene, vae_passes, error_type, match, **kwargs):
    passes = vae_passes(scene)
    denoiser = scene.model.model.diffusion_model.calls
    denoiser.clear()
    with pytest.raises(error_type, match=match):
        gh.guided_ksampler(host, scene, steps=2, start_from_measurement=True, denoise=0.5, **kwargs)
    assert passes == [], "the VAE ran before the input was refused"
    assert denoiser == [], "the denoiser ran before the input was refused"


def test_empty_batches_are_refused(comfy_inprocess, errors, scenes, vae_passes):
    host, s = comfy_inprocess, scenes["latent"]
    _refused_before_work(host, s, vae_passes, errors.ShapeError, r"latent: expected at least one item, got an empty batch",
                         latent={"samples": torch.zeros(0, 4, 8, 8)})
    _refused_before_work(host, s, vae_passes, errors.ShapeError, r"measurement: expected at least one image, got an empty batch",
                         measurement=torch.rand(0, 3, 16, 16))
    empty = torch.rand(0, 16, 16, 3)
    with pytest.raises(errors.ShapeError, match=r"image: expected at least one image"):
        host.run_node("INDIGO_Stage1Restore", image=empty, restorer_name=RESTORER)
    with pytest.raises(errors.ShapeError, match=r"reference: expected at least one image"):
        host.run_node("INDIGO_CompareImages", reference=empty, image_1=torch.rand(1, 16, 16, 3), labels="", lpips="off")
    with pytest.raises(errors.ShapeError, match=r"latent: expected at least one item"):
        host.run_node("INDIGO_Regulariser", schedule="all", start=0.0, end=1.0, every=1, vae=s.vae,
                      latent={"samples": torch.zeros(0, 4, 8, 8)})


def test_degradation_of_the_wrong_width_is_refused_before_the_start_image_is_encoded(
        comfy_inprocess, errors, scenes, vae_passes):
    emb = scenes["latent"].inn.config.emb_dim
    _refused_before_work(comfy_inprocess, scenes["latent"], vae_passes, errors.ShapeError,
                         rf"degradation: expected \(1, {emb}\) \(the INN's degradation embedding\), got \(1, 64\)",
                         degradation=torch.zeros(1, 64))


def test_lpips_weights_are_looked_for_in_the_indigo_model_folders_first(comfy_inprocess, errors, scenes,
                                                                        vae_passes, monkeypatch):
    host, s = comfy_inprocess, scenes["pixel"]
    W = host.module("indigo_core.metrics.weights")
    converted = W.locate_backbone("alex")  # the suite's converted weights (INDIGO_METRICS_DIR)
    # the core's own search finds nothing from here on
    monkeypatch.delenv("INDIGO_METRICS_DIR", raising=False)
    monkeypatch.delenv("INDIGO_MODELS_DIR", raising=False)
    monkeypatch.setattr(W, "PACK_ROOT", host.models_dir / "no-pack")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(host.models_dir / "no-hub"))
    _refused_before_work(host, s, vae_passes, errors.ConfigError,
                         r"w_p=1.0: the LPIPS term needs offline backbone weights.*not found in \[.*" + str(host.models_dir),
                         w_p=1.0)
    target = host.models_dir / "metrics" / converted.name
    target.parent.mkdir(exist_ok=True)
    shutil.copy(converted, target)
    try:
        out = gh.guided_ksampler(host, s, steps=2, w_p=1.0)
        assert torch.isfinite(out.outputs[0]["samples"]).all()
        compared = host.run_node("INDIGO_CompareImages", reference=gh.to_image(s.x_star),
                                 image_1=gh.to_image(s.x_star.flip(-1)), labels="flipped", lpips="alex")
        assert "n/a" not in compared.outputs[1].split("flipped")[1].splitlines()[0]
    finally:
        target.unlink()


def test_compare_images_refuses_to_shrink_or_stretch(comfy_inprocess, errors):
    host = comfy_inprocess
    ref = torch.rand(1, 64, 64, 3)
    with pytest.raises(errors.ShapeError, match=r"image_1: expected at most the reference's size 64x64.*got 256x64"):
        host.run_node("INDIGO_CompareImages", reference=ref, image_1=torch.rand(1, 256, 64, 3), labels="", lpips="off")
    with pytest.raises(errors.ShapeError, match=r"image_2: expected the aspect ratio of the reference 64x64.*got 16x48"):
        host.run_node("INDIGO_CompareImages", reference=ref, image_1=ref, image_2=torch.rand(1, 16, 48, 3),
                      labels="", lpips="off")
    # a measurement whose size was rounded down (63 / 4 -> 15) is still a measurement
    ok = host.run_node("INDIGO_CompareImages", reference=torch.rand(1, 63, 64, 3), image_1=torch.rand(1, 15, 16, 3),
                       labels="y", lpips="off")
    assert "y (bicubic-upsampled)" in ok.outputs[1]


def test_inn_refine_adaptation_inputs_are_checked(comfy_inprocess, errors, scenes):
    host = comfy_inprocess
    common = dict(schedule="all", start=0.0, end=1.0, every=1, lr=1e-3, iterations=2, adapt_lr=1e-3, inverse_weight=1.0)
    ref3 = gh.to_image(scenes["pixel"].x_star.expand(3, -1, -1, -1))
    y3 = gh.to_image(scenes["pixel"].y.expand(3, -1, -1, -1))
    emb = scenes["pixel"].inn.config.emb_dim
    with pytest.raises(errors.ShapeError, match=rf"degradation: expected \(3 or 1, {emb}\).*got \(2, {emb}\)"):
        host.run_node("INDIGO_INNRefine", inn=scenes["pixel"].inn, reference=ref3, measurement=y3,
                      degradation=torch.zeros(2, emb), **common)
    with pytest.raises(errors.ShapeError, match=r"measurement: expected the aspect ratio of the reference 64x64.*got 16x48"):
        host.run_node("INDIGO_INNRefine", inn=scenes["latent"].inn, reference=gh.to_image(scenes["latent"].x_star),
                      measurement=torch.rand(1, 16, 48, 3), vae=scenes["latent"].vae, **common)
    info = host.object_info("INDIGO_INNRefine")["input"]["required"]
    assert info["lr"][1]["min"] > 0 and info["adapt_lr"][1]["min"] > 0


def test_refine_or_degradation_a_mode_cannot_use_is_reported(comfy_inprocess, scenes, caplog):
    host = comfy_inprocess
    refine = host.run_node("INDIGO_INNRefine", schedule="all", start=0.0, end=1.0, every=1, lr=1e-3, iterations=0,
                           adapt_lr=1e-4, inverse_weight=1.0)[0]
    with caplog.at_level(logging.WARNING, logger="comfyui_indigo"):
        gh.guided_ksampler(host, scenes["latent"], steps=2, mode="none", refine=refine,
                           degradation=torch.zeros(1, scenes["latent"].inn.config.emb_dim))
    text = caplog.text
    assert "mode 'none' has no INN to refine" in text and "mode 'none' uses no INN" in text


def test_a_latent_inn_used_with_another_latent_space_is_reported(comfy_inprocess, caplog):
    """The bundled LatentINN records the bundled autoencoder's latent format: with the bundled prior
    nothing is said; with an SD1.5-format model the log says the guidance targets other latents."""
    import models as M

    host = comfy_inprocess
    inn = host.run_node("INDIGO_LoadINN", inn_name="indigo-latent-inn.safetensors")[0]
    assert inn.trained_latent_format["file"] == "indigo-prior-vae.safetensors"
    prior = host.run_node("INDIGO_LoadPrior", unet_name="indigo-prior-unet.safetensors",
                          vae_name="indigo-prior-vae.safetensors").outputs[0]
    warn = host.module("nodes.guidance_inputs").warn_other_latent_space
    with caplog.at_level(logging.WARNING, logger="comfyui_indigo"):
        assert warn(inn, prior) is None
        message = warn(inn, M.gaussian_prior_model(seed=1))  # SD1.5's latent format
    assert message and "other latent-to-RGB factors" in message and "indigo-prior-vae.safetensors" in caplog.text
    pixel = host.run_node("INDIGO_LoadINN", inn_name="indigo-pixel-inn-x4.safetensors")[0]
    assert warn(pixel, M.gaussian_prior_model(seed=1)) is None  # a PixelINN works in pixels


def test_an_inn_run_without_the_estimator_it_was_trained_with_is_reported(comfy_inprocess, caplog):
    """The bundled INNs were trained with the bundled estimator (their model cards say so): guiding
    with one and no degradation connected is reported, as is a degradation given to an INN trained
    without an estimator; the matching pairings say nothing."""
    import types

    host = comfy_inprocess
    warn = host.module("nodes.guidance_inputs").warn_estimator_pairing
    gamma = torch.zeros(1, 128)
    for name in ("indigo-latent-inn.safetensors", "indigo-pixel-inn-x4.safetensors"):
        inn = host.run_node("INDIGO_LoadINN", inn_name=name)[0]
        assert inn.trained_estimator == (True, "indigo-estimator.safetensors"), name
        with caplog.at_level(logging.WARNING, logger="comfyui_indigo"):
            caplog.clear()
            assert warn(inn, gamma) is None
            message = warn(inn, None)
        assert message and "indigo-estimator.safetensors" in message and "Degradation Estimate" in caplog.text
    # INN Refine adapts the INN with the same pairing, so it says the same
    pixel = host.run_node("INDIGO_LoadINN", inn_name="indigo-pixel-inn-x4.safetensors")[0]
    x = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="comfyui_indigo"):
        host.run_node("INDIGO_INNRefine", schedule="fraction", start=0.0, end=0.5, every=1, lr=5e-5, iterations=1,
                      adapt_lr=1e-4, inverse_weight=1.0, inn=pixel, reference=x, measurement=x[:, ::4, ::4, :])
    assert "trained with a degradation estimator (indigo-estimator.safetensors)" in caplog.text
    without = types.SimpleNamespace(trained_estimator=(False, ""))
    assert "Leave the degradation input unconnected" in warn(without, gamma)
    assert warn(without, None) is None
    assert warn(types.SimpleNamespace(trained_estimator=None), None) is None  # no card: nothing known
