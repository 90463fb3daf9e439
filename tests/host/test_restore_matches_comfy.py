"""`python -m indigo_core.restore` and ComfyUI's INDIGO Guided KSampler run the same restoration.

Same prior files (loaded by Load INDIGO Prior into ComfyUI's own UNet and VAE classes), same INN,
seed, steps, denoise, sampler and scheduler: the restore CLI's sampler (indigo_core.restore) and
ComfyUI's KSampler with the pack's guidance hook must give the same image up to float rounding.
This is what lets the defaults chosen with the CLI carry over to the demo workflow. With a stage-1
restorer, the graph is Stage-1 Restore -> the sampler's start_image, VAE Decode -> Colour Fix
against the Stage-1 image, as in the demo workflow.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

STEPS, DENOISE, SEED = 4, 0.6, 7


def _files(comfy_inprocess):
    """A tiny prior in models/indigo/prior/ and random LatentINN / PixelINN files in models/indigo/."""
    ae_mod = comfy_inprocess.module("indigo_core.prior.autoencoder")
    unet_mod = comfy_inprocess.module("indigo_core.prior.unet")
    weights = comfy_inprocess.module("indigo_core.prior.weights")
    core = comfy_inprocess.core
    folder = comfy_inprocess.models_dir / "prior"
    folder.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(False):
        torch.manual_seed(11)
        ae = ae_mod.AutoencoderKL(ae_mod.AutoencoderConfig(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1))
        torch.manual_seed(12)
        unet = unet_mod.EpsUNet(unet_mod.UNetConfig(model_channels=32, channel_mult=(1, 2), attention_depth=(0, 1),
                                                    num_res_blocks=1, num_heads=2, context_dim=32))
        with torch.no_grad():
            for p in unet.parameters():
                p.add_(0.02 * torch.randn_like(p))
        ctx = 0.1 * torch.randn(1, 1, 32)
        weights.save_autoencoder(ae, folder / "restoretest_vae.safetensors", dtype=None, overwrite=True)
        weights.save_unet(unet, ctx, folder / "restoretest_unet.safetensors", dtype=None, overwrite=True)
        for name, preset in (("restoretest_latent.safetensors", "latent-small"),
                             ("restoretest_pixel.safetensors", "pixel-small")):
            torch.manual_seed(13)
            inn = core.WaveletINN(core.INNConfig.preset(preset).replace(hidden=8, heads=2, window=4))
            core.save_inn(inn, comfy_inprocess.models_dir / name, overwrite=True)
        rst = comfy_inprocess.module("indigo_core.restorer")
        torch.manual_seed(14)
        net = rst.build_restorer(rst.RestorerConfig(width=8, n_blocks=1))
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        rst.save_restorer(net, comfy_inprocess.models_dir / "restoretest_restorer.safetensors", overwrite=True)
    return {"vae": folder / "restoretest_vae.safetensors", "unet": folder / "restoretest_unet.safetensors",
            "restorer": comfy_inprocess.models_dir / "restoretest_restorer.safetensors",
            "latent": comfy_inprocess.models_dir / "restoretest_latent.safetensors",
            "pixel": comfy_inprocess.models_dir / "restoretest_pixel.safetensors"}


@pytest.mark.parametrize("mode,stage1", [("latent", "bicubic"), ("pixel", "bicubic"), ("unguided", "bicubic"),
                                         ("latent", "restorer"), ("pixel", "restorer"), ("unguided", "restorer")])
def test_restore_cli_pipeline_equals_the_guided_ksampler(comfy_inprocess, mode, stage1):
    files = _files(comfy_inprocess)
    restore = comfy_inprocess.module("indigo_core.restore.pipeline")
    inn_file = files["pixel" if mode == "pixel" else "latent"]
    colour = "wavelet" if stage1 == "restorer" else "none"
    settings = restore.RestoreSettings(mode=mode, steps=STEPS, denoise=DENOISE, seed=SEED, zeta=0.6, w_p=0.0,
                                       step_size=0.8, max_step=0.3, regulariser_end=0.3, stage1=stage1,
                                       colour_fix=colour)
    g = torch.Generator().manual_seed(5)
    y = torch.rand(1, 3, 16, 16, generator=g)                 # -> a 64x64 restoration, 8x8 latents
    with torch.inference_mode(False):
        models = restore.load_models(mode, inn=str(inn_file), prior_vae=str(files["vae"]),
                                     prior_unet=str(files["unet"]), estimator=None, restorer=str(files["restorer"]))
        ours = restore.restore_image(y, models, settings)

    model, vae, cond = comfy_inprocess.run_node("INDIGO_LoadPrior", unet_name="prior/restoretest_unet.safetensors",
                                                vae_name="prior/restoretest_vae.safetensors").outputs
    (inn,) = comfy_inprocess.run_node("INDIGO_LoadINN", inn_name=inn_file.name).outputs
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    extra = {}
    if stage1 == "restorer":
        (start,) = comfy_inprocess.run_node("INDIGO_Stage1Restore", image=y.movedim(1, -1),
                                            restorer_name=files["restorer"].name).outputs
        extra["start_image"] = start
    if mode == "unguided":  # the CLI's unguided baseline has no regulariser either
        extra["regulariser"] = comfy_inprocess.run_node("INDIGO_Regulariser", schedule="off", start=0.0, end=0.3,
                                                        every=5).outputs[0]
    widgets = dict(mode="none" if mode == "unguided" else "auto", zeta=settings.zeta, w_dc=settings.w_dc,
                   w_p=settings.w_p, step_size=settings.step_size, max_step=settings.max_step, grad_wrt="z0",
                   guidance_start=0.0, guidance_end=1.0, colour_fix="none")
    out = comfy_inprocess.run_node("INDIGO_GuidedKSampler", model=model, positive=cond, negative=cond,
                                   latent_image=latent, seed=SEED, steps=STEPS, cfg=1.0, sampler_name="euler",
                                   scheduler="normal", denoise=DENOISE, vae=vae, inn=inn,
                                   measurement=y.movedim(1, -1), start_from_measurement=True, **widgets, **extra).outputs[0]
    (image,) = comfy_inprocess.run_node("VAEDecode", samples=out, vae=vae).outputs
    if stage1 == "restorer":
        (image,) = comfy_inprocess.run_node("INDIGO_ColourFix", image=image, measurement=start, method=colour).outputs
    theirs = image.float().movedim(-1, 1)
    assert theirs.shape == ours.shape == (1, 3, 64, 64)
    diff = (theirs - ours).abs()
    assert float(diff.max()) < 1e-4, f"max |ComfyUI - restore CLI| = {float(diff.max()):.2e}"
    # not two copies of the same trivial output
    assert float(ours.std()) > 0.01
    if mode != "unguided":  # and the guidance did something: the unguided run of the same settings differs
        with torch.inference_mode(False):
            plain = restore.restore_image(y, restore.load_models(
                "unguided", prior_vae=str(files["vae"]), prior_unet=str(files["unet"]), estimator=None,
                restorer=str(files["restorer"])), dataclasses.replace(settings, mode="unguided"))
        assert float((ours - plain).abs().max()) > 1e-2, float((ours - plain).abs().max())


def test_start_image_batch_must_match_the_latent(comfy_inprocess):
    files = _files(comfy_inprocess)
    model, vae, cond = comfy_inprocess.run_node("INDIGO_LoadPrior", unet_name="prior/restoretest_unet.safetensors",
                                                vae_name="prior/restoretest_vae.safetensors").outputs
    (inn,) = comfy_inprocess.run_node("INDIGO_LoadINN", inn_name=files["latent"].name).outputs
    widgets = dict(mode="auto", zeta=0.5, w_dc=2.5, w_p=0.0, step_size=0.5, max_step=0.3, grad_wrt="z0",
                   guidance_start=0.0, guidance_end=1.0, colour_fix="none")
    errors = comfy_inprocess.core.errors
    with pytest.raises(errors.ShapeError, match=r"start_image: expected 1 or 1 images .* got 3"):
        comfy_inprocess.run_node("INDIGO_GuidedKSampler", model=model, positive=cond, negative=cond,
                                 latent_image={"samples": torch.zeros(1, 4, 8, 8)}, seed=0, steps=2, cfg=1.0,
                                 sampler_name="euler", scheduler="normal", denoise=0.5, vae=vae, inn=inn,
                                 measurement=torch.rand(1, 16, 16, 3), start_from_measurement=False,
                                 start_image=torch.rand(3, 64, 64, 3), **widgets)
