"""The prior's UNet (SD1.x layout, ComfyUI names), its files, and SD's noise schedule."""

from __future__ import annotations

import math

import pytest
import torch

from indigo_core.errors import ConfigError, ShapeError, WeightsFileError
from indigo_core.prior.schedule import DiscreteSchedule, euler_sample, sd_betas
from indigo_core.prior.train_unet import PRESETS
from indigo_core.prior.unet import EpsUNet, UNetConfig, timestep_embedding
from indigo_core.prior.weights import load_unet, read_unet_file, save_unet

TINY = PRESETS["tiny"]
SD15 = UNetConfig(model_channels=320, channel_mult=(1, 2, 4, 4), attention_depth=(1, 1, 1, 0), num_heads=8,
                  context_dim=768)


def test_sd15_config_reproduces_sd15_unet() -> None:
    """With SD1.5's settings the module is SD1.5's UNet: 859,520,964 parameters, 686 tensors, its names."""
    with torch.device("meta"):
        unet = EpsUNet(SD15)
    sd = unet.state_dict()
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    assert len(sd) == 686
    for k, shape in {
        "time_embed.0.weight": (1280, 320), "time_embed.2.weight": (1280, 1280),
        "input_blocks.0.0.weight": (320, 4, 3, 3),
        "input_blocks.1.0.in_layers.0.weight": (320,), "input_blocks.1.0.emb_layers.1.weight": (320, 1280),
        "input_blocks.1.0.out_layers.3.weight": (320, 320, 3, 3),
        "input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight": (2560, 320),
        "input_blocks.1.1.transformer_blocks.0.ff.net.2.weight": (320, 1280),
        "input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "middle_block.1.transformer_blocks.0.norm3.weight": (1280,),
        "middle_block.2.out_layers.3.weight": (1280, 1280, 3, 3),
        "output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.11.1.transformer_blocks.0.attn1.to_out.0.weight": (320, 320),
        "out.0.weight": (320,), "out.2.weight": (4, 320, 3, 3),
    }.items():
        assert tuple(sd[k].shape) == shape, k


def test_comfy_unet_config_matches_sd15_detection() -> None:
    """What ComfyUI's model_detection reports for an SD1.5 checkpoint (its SD15 + extra config)."""
    cc = SD15.to_comfy_unet_config()
    assert cc["num_res_blocks"] == [2, 2, 2, 2]
    assert cc["transformer_depth"] == [1, 1, 1, 1, 1, 1, 0, 0]
    assert cc["transformer_depth_output"] == [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    assert cc["transformer_depth_middle"] == 1 and cc["context_dim"] == 768 and cc["model_channels"] == 320
    assert not cc["use_linear_in_transformer"] and cc["use_spatial_transformer"] and not cc["legacy"]


def test_shapes_at_odd_sizes() -> None:
    torch.manual_seed(0)
    unet = EpsUNet(TINY).eval()
    for h, w in ((8, 8), (13, 17), (24, 40)):
        x = torch.randn(2, 4, h, w)
        out = unet(x, torch.tensor([0.0, 999.0]), torch.randn(2, 1, TINY.context_dim))
        assert out.shape == x.shape
    with pytest.raises(ShapeError, match="context"):
        unet(torch.randn(1, 4, 8, 8), torch.tensor([1.0]), torch.randn(1, 1, 7))
    with pytest.raises(ConfigError):
        UNetConfig(model_channels=48)
    with pytest.raises(ConfigError):
        UNetConfig(attention_depth=(1,))


def test_timestep_embedding_is_cos_then_sin() -> None:
    e = timestep_embedding(torch.tensor([0.0, 10.0]), 8)
    assert torch.equal(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert e[1, 0] == pytest.approx(math.cos(10.0)) and e[1, 4] == pytest.approx(math.sin(10.0))
    assert e[1, 1] == pytest.approx(math.cos(10.0 * 10000 ** (-1 / 4)), rel=1e-5)


def test_unet_file_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    unet = EpsUNet(TINY).eval()
    ctx = torch.randn(1, TINY.context_tokens, TINY.context_dim)
    p = save_unet(unet, ctx, tmp_path / "u.safetensors", dtype=None, extra_metadata={"autoencoder": {"file": "a"}})
    back, ctx2, meta = load_unet(p)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([5.0, 700.0])
    torch.testing.assert_close(back(x, t, ctx2.expand(2, -1, -1)), unet(x, t, ctx.expand(2, -1, -1)), rtol=0, atol=0)
    assert back.cfg == TINY and '"file": "a"' in meta["autoencoder"]
    cfg, tensors, c3, _ = read_unet_file(p)
    assert "null_context" not in tensors and set(tensors) == set(unet.state_dict())
    with pytest.raises(ConfigError):
        save_unet(unet, torch.zeros(1, 2, 3), tmp_path / "bad.safetensors")


def test_unet_file_errors(tmp_path) -> None:
    from safetensors.torch import save_file

    from indigo_core.prior.weights import AE_FORMAT

    unet = EpsUNet(TINY)
    p = save_unet(unet, torch.zeros(1, 1, TINY.context_dim), tmp_path / "u.safetensors")
    from safetensors import safe_open

    with safe_open(str(p), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors.pop("out.2.bias")
    save_file(tensors, tmp_path / "missing.safetensors", metadata=meta)
    with pytest.raises(WeightsFileError, match="missing"):
        load_unet(tmp_path / "missing.safetensors")
    save_file({"a": torch.zeros(1)}, tmp_path / "other.safetensors", metadata={**meta, "format": AE_FORMAT})
    with pytest.raises(WeightsFileError, match="expected format"):
        load_unet(tmp_path / "other.safetensors")
    save_file(tensors, tmp_path / "v.safetensors", metadata={**meta, "schedule": '{"beta_schedule": "cosine"}'})
    with pytest.raises(WeightsFileError, match="unsupported schedule"):
        load_unet(tmp_path / "v.safetensors")


def test_schedule_equals_sd() -> None:
    s = DiscreteSchedule()
    b = sd_betas()
    assert b.dtype == torch.float64 and b.shape == (1000,)
    assert b[0].item() == pytest.approx(0.00085) and b[-1].item() == pytest.approx(0.012)
    assert b[500].item() == pytest.approx(((0.00085 ** 0.5 + 500 / 999 * (0.012 ** 0.5 - 0.00085 ** 0.5)) ** 2))
    # SD1.x's well-known extremes (ComfyUI: sigma_min 0.0292, sigma_max 14.6146)
    assert s.sigmas[0].item() == pytest.approx(0.0291672, rel=1e-5)
    assert s.sigmas[-1].item() == pytest.approx(14.614642, rel=1e-6)
    assert s.alphas_cumprod[-1].item() == pytest.approx(0.0046601, rel=1e-4)
    # x_t = sqrt(ab) z + sqrt(1-ab) n  ==  (z + sigma n) / sqrt(1 + sigma^2)  (ComfyUI's EPS input)
    z, n, t = torch.randn(3, 4, 2, 2, dtype=torch.float64), torch.randn(3, 4, 2, 2, dtype=torch.float64), torch.tensor([0, 400, 999])
    sig = s.sigmas[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(s.add_noise(z, t, n), (z + sig * n) / (1 + sig ** 2).sqrt())
    assert s.timestep(s.sigmas[[3, 500, 999]].float()).tolist() == [3.0, 500.0, 999.0]


def test_euler_sampler_with_exact_denoiser() -> None:
    """A point-mass prior at m: the exact eps is (x - m)/sigma in unscaled terms; sampling must land on m."""
    s = DiscreteSchedule()
    m = torch.full((1, 4, 4, 4), 0.7)

    def eps_fn(xs, t):
        sigma = s.sigmas[t.long()].float().view(-1, 1, 1, 1)
        x = xs * (sigma ** 2 + 1).sqrt()
        return (x - m) / sigma

    out = euler_sample(eps_fn, torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)), s, steps=10)
    torch.testing.assert_close(out, m, atol=1e-3, rtol=0)
