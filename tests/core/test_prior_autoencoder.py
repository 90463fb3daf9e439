"""The prior's autoencoder: SD's architecture and key names, conversions, files, normalisation."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from indigo_core.errors import ConfigError, ShapeError, WeightsFileError
from indigo_core.guidance.autoencoder import Autoencoder
from indigo_core.prior.autoencoder import PRESETS, AutoencoderConfig, AutoencoderKL, count_parameters, latent_rgb_factors
from indigo_core.prior.convert import diffusers_to_ldm, infer_config, strip_prefixes
from indigo_core.prior.weights import load_autoencoder, read_latent_format, save_autoencoder

TINY = AutoencoderConfig(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1, attn_resolutions=(64,))


@pytest.fixture()
def tiny_ae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(TINY).eval()


def test_sd_preset_is_sd_vae_layout() -> None:
    with torch.device("meta"):
        ae = AutoencoderKL(PRESETS["sd"])
    keys = set(ae.state_dict())
    # SD 1.x's VAE: 83,653,863 parameters, these names (ldm / ComfyUI layout).
    assert count_parameters(ae) == 83_653_863
    for k in ("encoder.conv_in.weight", "encoder.down.0.block.0.norm1.weight", "encoder.down.1.block.0.nin_shortcut.weight",
              "encoder.down.2.downsample.conv.weight", "encoder.mid.attn_1.q.weight", "encoder.mid.block_2.conv2.bias",
              "encoder.norm_out.weight", "encoder.conv_out.weight", "quant_conv.weight", "post_quant_conv.weight",
              "decoder.conv_in.weight", "decoder.mid.attn_1.proj_out.weight", "decoder.up.3.upsample.conv.weight",
              "decoder.up.0.block.2.conv2.weight", "decoder.up.1.block.0.nin_shortcut.weight", "decoder.conv_out.bias"):
        assert k in keys, k
    assert "encoder.down.3.downsample.conv.weight" not in keys and "decoder.up.0.upsample.conv.weight" not in keys
    assert tuple(ae.state_dict()["encoder.mid.attn_1.q.weight"].shape) == (512, 512, 1, 1)
    assert tuple(ae.state_dict()["quant_conv.weight"].shape) == (8, 8, 1, 1)


def test_small_preset_size() -> None:
    n = count_parameters(AutoencoderKL(PRESETS["small"]))
    assert 5.0e6 < n < 6.0e6  # ~11 MB in fp16


def test_geometry_and_protocol(tiny_ae: AutoencoderKL) -> None:
    x = torch.rand(2, 3, 48, 40)
    z = tiny_ae.encode(x)
    assert z.shape == (2, 4, 6, 5)
    assert tiny_ae.latent_channels == 4 and tiny_ae.downscale == 8
    assert isinstance(tiny_ae, Autoencoder)  # the guidance's protocol
    y = tiny_ae.decode(z)
    assert y.shape == x.shape
    assert tiny_ae.decode(z, clamp=True).min() >= 0 and tiny_ae.decode(z, clamp=True).max() <= 1
    z = z.detach().requires_grad_(True)
    tiny_ae.decode(z).sum().backward()  # differentiable decoder (guidance needs it)
    assert z.grad is not None and z.grad.abs().sum() > 0
    with pytest.raises(ShapeError, match="multiples of 8"):
        tiny_ae.encode(torch.rand(1, 3, 30, 32))
    with pytest.raises(ShapeError):
        tiny_ae.decode(torch.rand(1, 3, 4, 4))


def test_config_validation_and_round_trip() -> None:
    with pytest.raises(ConfigError, match="multiple of 32"):
        AutoencoderConfig(ch=48)
    with pytest.raises(ConfigError, match="unknown fields"):
        AutoencoderConfig.from_dict({"ch": 32, "bogus": 1})
    assert AutoencoderConfig.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY
    cc = PRESETS["sd"].to_comfy_config()
    assert cc["params"]["embed_dim"] == 4 and cc["params"]["ddconfig"]["ch_mult"] == [1, 2, 4, 4]


def test_infer_config_recovers_architecture(tiny_ae: AutoencoderKL) -> None:
    assert infer_config(tiny_ae.state_dict()) == TINY
    with torch.device("meta"):
        sd = AutoencoderKL(PRESETS["sd"]).state_dict()
    assert infer_config(sd) == PRESETS["sd"]
    with pytest.raises(ConfigError, match="not an SD/ldm-layout"):
        infer_config({"foo": torch.zeros(1)})


def test_prefixes_are_stripped(tiny_ae: AutoencoderKL) -> None:
    sd = {f"first_stage_model.{k}": v for k, v in tiny_ae.state_dict().items()}
    sd["model.diffusion_model.out.2.weight"] = torch.zeros(1)
    sd["first_stage_model.loss.logvar"] = torch.zeros(1)
    assert set(strip_prefixes(sd)) == set(tiny_ae.state_dict())


def test_diffusers_key_conversion() -> None:
    """A few hand-checked names of diffusers' AutoencoderKL layout and their ldm counterparts."""
    w2, w4 = torch.zeros(8, 8), torch.zeros(8, 8, 1, 1)
    sd = {
        "encoder.down_blocks.1.resnets.0.conv_shortcut.weight": w4,
        "encoder.down_blocks.0.downsamplers.0.conv.bias": torch.zeros(8),
        "encoder.mid_block.attentions.0.to_q.weight": w2,
        "encoder.mid_block.attentions.0.group_norm.weight": torch.zeros(8),
        "encoder.mid_block.resnets.1.norm2.bias": torch.zeros(8),
        "encoder.conv_norm_out.weight": torch.zeros(8),
        "decoder.up_blocks.0.resnets.2.conv1.weight": w4,
        "decoder.up_blocks.0.upsamplers.0.conv.weight": w4,
        "decoder.up_blocks.3.resnets.0.norm1.weight": torch.zeros(8),
        "decoder.mid_block.attentions.0.proj_attn.weight": w2,
        "decoder.mid_block.attentions.0.to_out.0.bias": torch.zeros(8),
        "post_quant_conv.weight": w4,
    }
    out = diffusers_to_ldm(sd)
    assert set(out) == {
        "encoder.down.1.block.0.nin_shortcut.weight", "encoder.down.0.downsample.conv.bias",
        "encoder.mid.attn_1.q.weight", "encoder.mid.attn_1.norm.weight", "encoder.mid.block_2.norm2.bias",
        "encoder.norm_out.weight", "decoder.up.3.block.2.conv1.weight", "decoder.up.3.upsample.conv.weight",
        "decoder.up.0.block.0.norm1.weight", "decoder.mid.attn_1.proj_out.weight", "decoder.mid.attn_1.proj_out.bias",
        "post_quant_conv.weight"}
    assert out["encoder.mid.attn_1.q.weight"].shape == (8, 8, 1, 1)  # linear -> 1x1 conv
    with pytest.raises(ConfigError, match="not understood"):
        diffusers_to_ldm({"encoder.something_else.weight": w2})


def test_save_load_round_trip(tiny_ae: AutoencoderKL, tmp_path) -> None:
    x = torch.rand(1, 3, 32, 32)
    p = save_autoencoder(tiny_ae, tmp_path / "ae.safetensors", dtype=None,
                         latent_format={"latent_rgb_factors": [[0.1, 0.2, 0.3]] * 4}, extra_metadata={"card": {"a": 1}})
    back = load_autoencoder(p)
    assert back.cfg == TINY and not any(q.requires_grad for q in back.parameters())
    torch.testing.assert_close(back(x), tiny_ae(x), rtol=0, atol=0)
    lf = read_latent_format(p)
    assert lf["scale_factor"] == pytest.approx(0.18215) and lf["latent_rgb_factors"][0] == [0.1, 0.2, 0.3]
    half = load_autoencoder(save_autoencoder(tiny_ae, tmp_path / "ae16.safetensors"))  # fp16 on disk
    torch.testing.assert_close(half(x), tiny_ae(x), rtol=0, atol=2e-2)
    with pytest.raises(WeightsFileError, match="exists"):
        save_autoencoder(tiny_ae, p)


def test_foreign_files_load(tiny_ae: AutoencoderKL, tmp_path) -> None:
    from safetensors.torch import save_file

    x = torch.rand(1, 3, 16, 16)
    ckpt = {f"first_stage_model.{k}": v.contiguous() for k, v in tiny_ae.state_dict().items()}
    save_file(ckpt, tmp_path / "full_checkpoint.safetensors")
    torch.testing.assert_close(load_autoencoder(tmp_path / "full_checkpoint.safetensors")(x), tiny_ae(x))
    torch.save({"state_dict": tiny_ae.state_dict(), "global_step": 3}, tmp_path / "vae.ckpt")
    torch.testing.assert_close(load_autoencoder(tmp_path / "vae.ckpt")(x), tiny_ae(x))
    assert read_latent_format(tmp_path / "full_checkpoint.safetensors")["scale_factor"] == pytest.approx(0.18215)


def test_bad_files_raise_weights_file_error(tiny_ae: AutoencoderKL, tmp_path) -> None:
    from safetensors.torch import save_file

    with pytest.raises(WeightsFileError, match="not found"):
        load_autoencoder(tmp_path / "missing.safetensors")
    p = save_autoencoder(tiny_ae, tmp_path / "ae.safetensors")
    data = p.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsFileError, match="truncated"):
        load_autoencoder(tmp_path / "cut.safetensors")
    sd = {k: v for k, v in tiny_ae.state_dict().items() if k != "decoder.conv_out.bias"}
    save_file(sd, tmp_path / "partial.safetensors")
    with pytest.raises(WeightsFileError, match="missing"):
        load_autoencoder(tmp_path / "partial.safetensors")
    with pytest.raises(WeightsFileError, match="unknown VAE file type"):
        load_autoencoder(tmp_path / "x.onnx")


def test_normalise_latents_is_exact(tiny_ae: AutoencoderKL) -> None:
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        rec0 = tiny_ae(x)
        z = tiny_ae.encode(x)
        mean = z.transpose(0, 1).reshape(4, -1).mean(1)
        std = z.transpose(0, 1).reshape(4, -1).std(1)
        _, logvar0 = tiny_ae.moments(x * 2 - 1)
        tiny_ae.normalise_latents(mean.tolist(), std.tolist())
        z1 = tiny_ae.encode(x) * 0.18215
        _, logvar1 = tiny_ae.moments(x * 2 - 1)
        rec1 = tiny_ae(x)
    flat = z1.transpose(0, 1).reshape(4, -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(flat.std(1), torch.ones(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(rec1, rec0, atol=1e-4, rtol=0)
    # the posterior's std scales with its mean: logvar shifts by 2 log(a)
    a = (1 / 0.18215) / std
    torch.testing.assert_close(logvar1 - logvar0, (2 * a.log()).view(1, 4, 1, 1).expand_as(logvar0), atol=1e-4, rtol=0)
    with pytest.raises(ConfigError):
        tiny_ae.normalise_latents([0.0] * 3, [1.0] * 3)


def test_latent_rgb_factors_fit_a_linear_map(tiny_ae: AutoencoderKL) -> None:
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    factors, bias = latent_rgb_factors(tiny_ae, images)
    assert len(factors) == 4 and all(len(r) == 3 for r in factors) and len(bias) == 3
    # the least-squares fit (NumPy's solver) of model-space latents to the 1/8-size image on [-1,1]
    with torch.no_grad():
        z = (tiny_ae.encode(images) * tiny_ae.scale_factor).permute(0, 2, 3, 1).reshape(-1, 4).double().numpy()
        rgb = torch.nn.functional.avg_pool2d(images * 2 - 1, 8).permute(0, 2, 3, 1).reshape(-1, 3).double().numpy()
    design = np.concatenate([z, np.ones((len(z), 1))], axis=1)
    want = np.linalg.lstsq(design, rgb, rcond=None)[0]
    np.testing.assert_allclose(np.array(factors), want[:4], atol=6e-5, rtol=0)  # rounded to 4 decimals
    np.testing.assert_allclose(np.array(bias), want[4], atol=6e-5, rtol=0)


def test_prior_never_imports_the_host() -> None:
    code = ("import sys, indigo_core.prior.weights, indigo_core.prior.train_ae, indigo_core.prior.train_unet; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'folder_paths', 'server', 'nodes', 'comfy_api')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
