"""The prior against ComfyUI 0.3.75's own classes: same weights, same outputs; and Load INDIGO Prior.

- The core's AutoencoderKL and ComfyUI's comfy.sd.VAE (ldm AutoencoderKL) built from the same
  state dict encode and decode alike; the core's diffusers conversion agrees with ComfyUI's.
- The core's EpsUNet and ComfyUI's openaimodel UNetModel (built by the pack's host helper through
  supported_models.SD15 + BaseModel EPS) give the same noise prediction; ComfyUI's model detection
  reads the same unet_config from the state dict; the schedules are equal.
- The core's plain autoencoder, which ComfyUI has no class for, wrapped as a comfy.sd.VAE, encodes
  and decodes as the core does, through VAE Encode / Decode and tiled decoding.
- The loader node gives a MODEL / VAE / CONDITIONING that KSampler and VAE Decode accept, with
  either kind of autoencoder file.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

TINY_AE = dict(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1, attn_resolutions=(64,))
TINY_UNET = dict(model_channels=32, channel_mult=(1, 2), attention_depth=(1, 1), num_res_blocks=1, middle_depth=1,
                 num_heads=2, context_dim=32, context_tokens=2)


def _prior(comfy_inprocess):
    return comfy_inprocess.module("indigo_core.prior.autoencoder"), comfy_inprocess.module("indigo_core.prior.unet")


def _ae(comfy_inprocess, seed: int = 0, **cfg):
    ae_mod, _ = _prior(comfy_inprocess)
    torch.manual_seed(seed)
    with torch.inference_mode(False):
        return ae_mod.AutoencoderKL(ae_mod.AutoencoderConfig(**(cfg or TINY_AE))).eval()


def _unet(comfy_inprocess, seed: int = 0):
    _, unet_mod = _prior(comfy_inprocess)
    torch.manual_seed(seed)
    with torch.inference_mode(False):
        return _perturbed(unet_mod.EpsUNet(unet_mod.UNetConfig(**TINY_UNET)).eval())


def _perturbed(module):
    """Some layers start at or near zero; make every one matter."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return module


# ----------------------------------------------------------------------------- autoencoder


def test_vae_matches_comfy_vae(comfy_inprocess) -> None:
    host = comfy_inprocess.module("nodes.host")
    ae = _ae(comfy_inprocess)
    vae = host.sd_vae(ae.state_dict(), ae.cfg.to_comfy_config())
    x = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z_ours = ae.encode(x)
        z_comfy = vae.encode(x.movedim(1, -1))  # ComfyUI IMAGE layout (B,H,W,C); posterior mode
        torch.testing.assert_close(z_comfy.float(), z_ours, atol=1e-4, rtol=1e-4)
        img_comfy = vae.decode(z_ours)  # (B,H,W,3), clamped to [0,1]
        torch.testing.assert_close(img_comfy.float(), ae.decode(z_ours, clamp=True).movedim(1, -1), atol=1e-4, rtol=1e-4)
        # the differentiable path the guidance uses: first_stage_model.decode is our decode_raw
        torch.testing.assert_close(vae.first_stage_model.decode(z_ours), ae.decode_raw(z_ours), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="do not fit"):
        host.sd_vae({k: v for k, v in ae.state_dict().items() if "conv_out" not in k}, ae.cfg.to_comfy_config())


def _ldm_to_diffusers(sd: dict) -> dict:
    """SD-layout (4 levels, 2 res blocks) ldm names -> diffusers names; an independent test-side map."""
    out = {}
    attn = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
    for k, v in sd.items():
        n = k
        n = re.sub(r"^encoder\.down\.(\d)\.block\.(\d)\.", r"encoder.down_blocks.\1.resnets.\2.", n)
        n = re.sub(r"^encoder\.down\.(\d)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", n)
        n = re.sub(r"^decoder\.up\.(\d)\.block\.(\d)\.", lambda m: f"decoder.up_blocks.{3 - int(m[1])}.resnets.{m[2]}.", n)
        n = re.sub(r"^decoder\.up\.(\d)\.upsample\.", lambda m: f"decoder.up_blocks.{3 - int(m[1])}.upsamplers.0.", n)
        n = re.sub(r"\.mid\.block_(\d)\.", lambda m: f".mid_block.resnets.{int(m[1]) - 1}.", n)
        m = re.match(r"^(encoder|decoder)\.mid\.attn_1\.(\w+)\.(weight|bias)$", n)
        if m:
            n = f"{m[1]}.mid_block.attentions.0.{attn[m[2]]}.{m[3]}"
            if m[3] == "weight" and v.ndim == 4:
                v = v[:, :, 0, 0]
        n = n.replace(".nin_shortcut.", ".conv_shortcut.").replace(".norm_out.", ".conv_norm_out.")
        out[n] = v
    return out


def test_diffusers_conversion_agrees_with_comfy(comfy_inprocess) -> None:
    import comfy.diffusers_convert

    convert = comfy_inprocess.module("indigo_core.prior.convert")
    ae = _ae(comfy_inprocess, ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=2)  # SD's block structure
    ldm = ae.state_dict()
    diffusers = _ldm_to_diffusers(ldm)
    assert "decoder.up_blocks.0.upsamplers.0.conv.weight" in diffusers  # coarsest level first
    comfy_sd = comfy.diffusers_convert.convert_vae_state_dict(dict(diffusers))
    ours = convert.diffusers_to_ldm(diffusers)
    assert set(comfy_sd) == set(ours) == set(ldm)
    for k in ldm:
        assert torch.equal(comfy_sd[k], ldm[k]) and torch.equal(ours[k], ldm[k]), k


# ----------------------------------------------------------------------------- UNet


def test_unet_matches_comfy_unet(comfy_inprocess) -> None:
    import comfy.model_base
    import comfy.model_detection

    host = comfy_inprocess.module("nodes.host")
    schedule_mod = comfy_inprocess.module("indigo_core.prior.schedule")
    unet = _unet(comfy_inprocess)
    cfg = unet.cfg
    ours_cfg = cfg.to_comfy_unet_config()
    detected = comfy.model_detection.detect_unet_config(unet.state_dict(), "")
    for k, v in detected.items():
        assert ours_cfg[k] == v, f"{k}: ComfyUI detects {v!r}, the core says {ours_cfg[k]!r}"

    model = host.sd1_eps_model(ours_cfg, unet.state_dict(), {"scale_factor": 0.18215})
    base = model.model
    assert base.model_type == comfy.model_base.ModelType.EPS
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 16, 12, generator=g)
    ctx = torch.randn(2, cfg.context_tokens, cfg.context_dim, generator=g)
    t = torch.tensor([3.0, 640.0])
    with torch.no_grad():
        torch.testing.assert_close(base.diffusion_model(x, t, context=ctx), unet(x, t, ctx), atol=1e-4, rtol=1e-4)
        # the whole EPS model: ComfyUI's denoised x0 for sigma equals x - sigma * eps(x / sqrt(1 + sigma^2), t(sigma))
        sched = schedule_mod.DiscreteSchedule()
        torch.testing.assert_close(base.model_sampling.sigmas, sched.sigmas.float())
        sigma = torch.tensor([0.5, 7.0])
        denoised = base.apply_model(x, sigma, c_crossattn=ctx)
        s = sigma.view(-1, 1, 1, 1)
        expected = x - s * unet(x / (s ** 2 + 1).sqrt(), sched.timestep(sigma), ctx)
        torch.testing.assert_close(denoised, expected, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- loader node


def _plain_ae(comfy_inprocess, seed: int = 0):
    mod = comfy_inprocess.module("indigo_core.prior.plain_autoencoder")
    torch.manual_seed(seed)
    with torch.inference_mode(False):
        return _perturbed(mod.PlainAutoencoder(mod.PlainAutoencoderConfig(widths=(8, 16, 16, 32), blocks=(1, 1, 0, 1))).eval())


def test_plain_autoencoder_wrapped_as_comfy_vae(comfy_inprocess) -> None:
    host = comfy_inprocess.module("nodes.host")
    ae = _plain_ae(comfy_inprocess)
    vae = host.wrapped_vae(ae)
    assert vae.latent_channels == 4 and vae.spacial_compression_encode() == 8
    x = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z_ours = ae.encode(x)
        torch.testing.assert_close(vae.encode(x.movedim(1, -1)).float(), z_ours, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(vae.decode(z_ours).float(), ae.decode(z_ours, clamp=True).movedim(1, -1),
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(vae.first_stage_model.decode(z_ours), ae.decode_raw(z_ours), atol=1e-4, rtol=1e-4)
        # ComfyUI's tiled decoding (its fallback for large images) runs the same module
        tiled = vae.decode_tiled(z_ours, tile_x=4, tile_y=4, overlap=1)
        assert tiled.shape == (2, 64, 48, 3) and torch.isfinite(tiled).all()
        assert (tiled.float() - ae.decode(z_ours, clamp=True).movedim(1, -1)).abs().mean() < 0.1
    assert vae.model_size() == sum(p.numel() * p.element_size() for p in ae.parameters())
    # ComfyUI sizes batches by the autoencoder's own bound, not the stub AutoencoderKL's budget
    import comfy.model_management as mm

    per_px = host.VAE_MEMORY_HEADROOM * ae.peak_activations_per_pixel() * mm.dtype_size(torch.float16)
    assert vae.memory_used_decode((1, 4, 16, 16), torch.float16) == per_px * 128 * 128
    assert vae.memory_used_encode((1, 3, 128, 128), torch.float16) == per_px * 128 * 128
    assert vae.memory_used_decode((1, 4, 16, 16), torch.float16) < 2178 * 128 * 128 * 2 / 4
    # the guidance's differentiable path reads the wrapped module
    pg = comfy_inprocess.module("nodes.guidance_patch")
    wrapped = pg.ComfyVAEAutoencoder(vae, device="cpu", differentiable=True)
    zg = z_ours.clone().requires_grad_(True)
    wrapped.decode(zg).sum().backward()
    assert zg.grad is not None and zg.grad.abs().sum() > 0


def _write_prior(comfy_inprocess, stem: str, plain: bool = False):
    weights = comfy_inprocess.module("indigo_core.prior.weights")
    folder = comfy_inprocess.models_dir / "prior"
    folder.mkdir(parents=True, exist_ok=True)
    ae = _plain_ae(comfy_inprocess, seed=3) if plain else _ae(comfy_inprocess, seed=3)
    unet = _unet(comfy_inprocess, seed=4)
    with torch.inference_mode(False):
        ae.normalise_latents([0.1, -0.2, 0.0, 0.3], [0.5, 0.7, 1.1, 0.9])
        ctx = torch.randn(1, unet.cfg.context_tokens, unet.cfg.context_dim)
    factors = [[0.3, 0.2, 0.1], [0.0, 0.2, 0.0], [0.1, 0.1, 0.1], [-0.2, 0.0, 0.2]]
    vae_path = weights.save_autoencoder(ae, folder / f"{stem}_vae.safetensors", dtype=None, overwrite=True,
                                        latent_format={"latent_rgb_factors": factors, "latent_rgb_factors_bias": [0, 0, 0]})
    weights.save_unet(unet, ctx, folder / f"{stem}_unet.safetensors", dtype=None, overwrite=True,
                      extra_metadata={"autoencoder": {"file": vae_path.name}})
    return ae, unet, ctx, factors


@pytest.mark.parametrize("plain", [False, True], ids=["autoencoderkl", "plain"])
def test_load_prior_node_gives_model_vae_conditioning(comfy_inprocess, plain) -> None:
    import comfy.model_patcher

    stem = "hosttest_plain" if plain else "hosttest"
    ae, unet, ctx, factors = _write_prior(comfy_inprocess, stem, plain=plain)
    unet_name, vae_name = f"prior/{stem}_unet.safetensors", f"prior/{stem}_vae.safetensors"
    load_prior = comfy_inprocess.module("nodes.load_prior")
    assert unet_name in load_prior.list_prior_files("unet") and unet_name not in load_prior.list_prior_files("vae")
    assert vae_name in load_prior.list_prior_files("vae")
    info = comfy_inprocess.object_info("INDIGO_LoadPrior")
    assert unet_name in json.dumps(info["input"]["required"]["unet_name"])

    model, vae, cond = comfy_inprocess.run_node("INDIGO_LoadPrior", unet_name=unet_name, vae_name=vae_name).outputs
    assert isinstance(model, comfy.model_patcher.ModelPatcher)
    assert model.model.latent_format.scale_factor == pytest.approx(0.18215)
    assert model.model.latent_format.latent_rgb_factors == factors
    assert len(cond) == 1 and cond[0][1] == {} and torch.equal(cond[0][0], ctx)
    assert not model.model.diffusion_model.out[2].weight.is_inference()  # guidance can differentiate

    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    (out,) = comfy_inprocess.run_node("KSampler", model=model, seed=0, steps=3, cfg=1.0, sampler_name="euler",
                                      scheduler="normal", positive=cond, negative=cond, latent_image=latent,
                                      denoise=1.0).outputs
    z = out["samples"]
    assert z.shape == (1, 4, 8, 8) and torch.isfinite(z).all() and z.abs().sum() > 0
    (image,) = comfy_inprocess.run_node("VAEDecode", samples=out, vae=vae).outputs
    assert image.shape == (1, 64, 64, 3)
    with torch.no_grad():
        torch.testing.assert_close(image.float(), ae.decode(z.float(), clamp=True).movedim(1, -1), atol=1e-4, rtol=1e-4)


def test_load_prior_refuses_missing_files(comfy_inprocess) -> None:
    cls = comfy_inprocess.node("INDIGO_LoadPrior")
    msg = cls.validate_inputs(unet_name="prior/nope.safetensors", vae_name="prior/nope_vae.safetensors")
    assert isinstance(msg, str) and "nope.safetensors" in msg and "not found" in msg
