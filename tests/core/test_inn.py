"""The INN contract: exact invertibility, shapes, gradients, embedding, validation, config."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from indigo_core import INNConfig, WaveletINN
from indigo_core.errors import ConfigError, ShapeError
from indigo_core.inn.config import PRESET_NAMES

CASES = [
    ("pixel-paper", (64, 64)),
    ("pixel-paper", (96, 80)),
    ("latent-paper", (32, 24)),
]


def tiny_config(split: str = "haar") -> INNConfig:
    """Small enough for gradcheck: 2 channels, width 4, one head, window 2."""
    return INNConfig(domain="pixel" if split != "undecimated_haar" else "latent", channels=2, split=split,
                     levels=2, pairs=1, hidden=4, n_mrstb=1, swin_layers=2, heads=1, window=2,
                     mlp_ratio=1.0, emb_dim=4)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("with_embedding", [False, True])
@pytest.mark.parametrize("preset,hw", CASES)
def test_invertibility(seed: int, preset: str, hw: tuple[int, int], with_embedding: bool,
                       dtype: torch.dtype, tol: float) -> None:
    cfg = INNConfig.preset(preset)
    inn = WaveletINN(cfg).to(dtype).eval()
    scale = 1.0 if cfg.domain == "pixel" else 4.0  # latents are roughly N(0, 1..4)
    x = torch.rand(1, cfg.channels, *hw, dtype=dtype) * scale
    gamma = torch.randn(1, 128, dtype=dtype) if with_embedding else None
    with torch.no_grad():
        coarse, details = inn(x, gamma)
        x_back = inn.inverse(coarse, details, gamma)
    assert x_back.dtype == dtype
    err = (x_back - x).abs().max().item()
    assert err <= tol, f"{preset} {hw} {dtype}: max error {err}"
    # the forward transform is far from the identity (random PM/UM really act)
    assert (coarse - x[..., :: cfg.scale, :: cfg.scale]).abs().max().item() > 1e-3


def test_coarse_shapes_follow_the_measurement(seed: int) -> None:
    pixel = WaveletINN(INNConfig.preset("pixel-small")).eval()
    x = torch.rand(2, 3, 96, 80)
    y = torch.nn.functional.interpolate(x, scale_factor=0.25, mode="bicubic")  # a x4 measurement
    with torch.no_grad():
        coarse, details = pixel(x)
    assert coarse.shape == y.shape == (2, 3, 24, 20)
    assert [tuple(d.shape) for d in details] == [(2, 9, 48, 40), (2, 9, 24, 20)]  # finest first
    assert pixel.scale == 4 and pixel.coarse_shape(96, 80) == (24, 20)

    latent = WaveletINN(INNConfig.preset("latent-small")).eval()
    z = torch.randn(2, 4, 32, 24)
    with torch.no_grad():
        zc, zd = latent(z)
    assert zc.shape == z.shape
    assert [tuple(d.shape) for d in zd] == [(2, 12, 32, 24)] * 2
    assert latent.scale == 1 and latent.coarse_shape(32, 24) == (32, 24)


@pytest.mark.parametrize("preset", ["pixel-small", "latent-small", "indigo-plus"])
def test_gradients_reach_every_parameter(seed: int, preset: str) -> None:
    cfg = INNConfig.preset(preset)
    inn = WaveletINN(cfg)
    hw = (32, 32) if cfg.domain == "pixel" else (16, 16)
    x = torch.rand(2, cfg.channels, *hw)
    gamma = torch.randn(2, 128)
    coarse, details = inn(x, gamma)
    loss = coarse.square().mean() + sum(d.square().mean() for d in details)
    loss = loss + inn.inverse(coarse, details, gamma).square().mean()
    loss.backward()
    dead = [n for n, p in inn.named_parameters() if p.grad is None or p.grad.abs().sum().item() == 0.0]
    assert not dead, f"no gradient for {dead[:5]}"


@pytest.mark.parametrize("split", ["haar", "undecimated_haar", "lazy"])
def test_gradcheck_tiny_float64(seed: int, split: str) -> None:
    inn = WaveletINN(tiny_config(split)).double().eval()
    x = torch.rand(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    gamma = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)

    def forward(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        coarse, details = inn(x, gamma)
        return torch.cat([coarse.flatten()] + [d.flatten() for d in details])

    assert torch.autograd.gradcheck(forward, (x, gamma), eps=1e-6, atol=1e-5, fast_mode=True)

    with torch.no_grad():
        coarse, details = inn(x, gamma)
    coarse = coarse.clone().requires_grad_(True)
    details = [d.clone().requires_grad_(True) for d in details]

    def inverse(coarse: torch.Tensor, d0: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
        return inn.inverse(coarse, [d0, d1], gamma.detach())

    assert torch.autograd.gradcheck(inverse, (coarse, *details), eps=1e-6, atol=1e-5, fast_mode=True)


def test_full_gradcheck_tiny_haar(seed: int) -> None:
    inn = WaveletINN(tiny_config("haar")).double().eval()
    x = torch.rand(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    gamma = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)

    def forward(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        coarse, details = inn(x, gamma)
        return torch.cat([coarse.flatten()] + [d.flatten() for d in details])

    assert torch.autograd.gradcheck(forward, (x, gamma), eps=1e-6, atol=1e-5)


def test_embedding_changes_the_output(seed: int) -> None:
    inn = WaveletINN(INNConfig.preset("pixel-small")).eval()
    x = torch.rand(1, 3, 32, 32)
    g1, g2 = torch.randn(1, 128), torch.randn(1, 128)
    with torch.no_grad():
        c1, d1 = inn(x, g1)
        c2, d2 = inn(x, g2)
        c0, _ = inn(x, None)
        c1_again, _ = inn(x, g1)
    assert torch.equal(c1, c1_again)
    assert (c1 - c2).abs().max().item() > 1e-4
    assert (d1[0] - d2[0]).abs().max().item() > 1e-4
    assert (c1 - c0).abs().max().item() > 1e-4


def test_batch_broadcast_of_embedding_and_input_untouched(seed: int) -> None:
    inn = WaveletINN(INNConfig.preset("latent-small")).eval()
    z = torch.randn(3, 4, 16, 8)
    z_copy = z.clone()
    gamma = torch.randn(1, 128)
    with torch.no_grad():
        c, d = inn(z, gamma)
        c3, _ = inn(z, gamma.expand(3, 128))
    assert torch.equal(z, z_copy)
    assert torch.allclose(c, c3)


def test_cached_attention_masks_across_sizes_and_modes(seed: int) -> None:
    inn = WaveletINN(INNConfig.preset("pixel-small")).eval()
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 48, 24)
    with torch.no_grad():
        first = inn(a)[0]
        inn(b)
        again = inn(a)[0]
    assert torch.equal(first, again)
    with torch.inference_mode():  # how the host runs nodes
        inn(a)
    x = a.clone().requires_grad_(True)  # then guidance differentiates through the same sizes
    coarse, _ = inn(x)
    coarse.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum().item() > 0


@pytest.mark.parametrize("height", [10, 13, 18, 21, 16])
def test_shifted_windows_never_see_across_the_image_edge(height: int) -> None:
    """A side that is not a multiple of the window: the last row must not reach the first through
    the shifted windows' cyclic shift (timm pads after shifting; the block pads first)."""
    from indigo_core.inn.mrstb import MRSTB

    torch.manual_seed(0)
    block = MRSTB(16, 2, 8, 2, 2.0, 128).eval()
    x = torch.randn(1, 16, height, 8)
    bumped = x.clone()
    bumped[:, :, -1] += torch.randn(16, 8)
    with torch.no_grad():
        a, b = block(x), block(bumped)
    assert a.shape == x.shape
    assert float((a[:, :, 0] - b[:, :, 0]).abs().max()) < 1e-6
    assert float((a[:, :, -1] - b[:, :, -1]).abs().max()) > 1e-3  # the bump itself is seen


def test_bad_inputs_raise_shape_errors() -> None:
    inn = WaveletINN(INNConfig.preset("pixel-small")).eval()
    with pytest.raises(ShapeError, match="3 channels"):
        inn(torch.rand(1, 4, 32, 32))
    with pytest.raises(ShapeError, match="divisible by 4"):
        inn(torch.rand(1, 3, 66, 64))
    with pytest.raises(ShapeError, match="expected x"):
        inn(torch.rand(3, 32, 32))
    with pytest.raises(ShapeError, match="degradation"):
        inn(torch.rand(1, 3, 32, 32), torch.rand(1, 64))
    with pytest.raises(ShapeError, match="batch"):
        inn(torch.rand(2, 3, 32, 32), torch.rand(3, 128))
    with torch.no_grad():
        coarse, details = inn(torch.rand(1, 3, 32, 32))
    with pytest.raises(ShapeError, match="2 detail tensors"):
        inn.inverse(coarse, details[:1])
    with pytest.raises(ShapeError, match=r"details\[0\]"):
        inn.inverse(coarse, [details[1], details[1]])
    with pytest.raises(ShapeError, match="coarse"):
        inn.inverse(coarse[:, :2], details)


def test_config_round_trip_and_presets() -> None:
    for name in PRESET_NAMES:
        cfg = INNConfig.preset(name)
        assert INNConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
        assert INNConfig.from_json(cfg.to_json()) == cfg
    pixel, latent = INNConfig.preset("pixel-paper"), INNConfig.preset("latent-paper")
    assert (pixel.domain, pixel.channels, pixel.split, pixel.levels, pixel.pairs) == ("pixel", 3, "haar", 2, 2)
    assert (pixel.n_mrstb, pixel.swin_layers, pixel.emb_dim, pixel.scale) == (2, 2, 128, 4)
    assert (latent.domain, latent.channels, latent.split, latent.scale) == ("latent", 4, "undecimated_haar", 1)
    assert INNConfig.preset("indigo-plus").scale == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        pixel.levels = 3  # type: ignore[misc]


@pytest.mark.parametrize("changes,field", [
    ({"split": "db4"}, "split"),
    ({"domain": "audio"}, "domain"),
    ({"levels": 0}, "levels"),
    ({"channels": 2.5}, "channels"),
    ({"hidden": 30, "heads": 4}, "hidden"),
    ({"kernel": 2}, "kernel"),
    ({"shared_pairs": "yes"}, "shared_pairs"),
])
def test_config_validation_names_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"INNConfig.{field}: expected .* got"):
        INNConfig.preset("pixel-small").replace(**changes)


def test_config_unknown_preset_and_field() -> None:
    with pytest.raises(ConfigError, match="pixel-paper"):
        INNConfig.preset("pixel-huge")
    with pytest.raises(ConfigError, match="unknown field"):
        INNConfig.from_dict({"channels": 3, "wavelet": "haar"})
