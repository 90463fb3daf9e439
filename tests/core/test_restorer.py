"""The stage-1 restorer R: an untrained R is exactly bicubic; its file round-trips (fp16 too) and bad
files are refused; training on real crops beats bicubic; the restore pipeline starts the prior from
R(y), colour-fixes guided and unguided runs alike against it, and says what is missing."""

from __future__ import annotations

import json

import pytest
import torch

from _train_helpers import QUIET, make_crops
from indigo_core.errors import ConfigError, ShapeError, WeightsFileError
from indigo_core.guidance import upsample_measurement
from indigo_core.restorer import RestorerConfig, build_restorer, load_restorer, save_restorer


def _trained_like(seed: int = 0):
    """A restorer with random (non-zero) weights everywhere, so R(y) differs from bicubic."""
    torch.manual_seed(seed)
    net = build_restorer(RestorerConfig(width=8, n_blocks=1))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def test_untrained_restorer_is_bicubic_and_sizes_follow_the_scale():
    y = torch.rand(2, 3, 9, 13, generator=torch.Generator().manual_seed(0))
    net = build_restorer(RestorerConfig(width=8, n_blocks=2))
    out = net(y)
    assert out.shape == (2, 3, 36, 52)
    bic = torch.nn.functional.interpolate(y, scale_factor=4, mode="bicubic", align_corners=False)
    assert torch.allclose(out, bic, atol=1e-6)
    assert torch.allclose(net.restore(y), upsample_measurement(y, (36, 52)), atol=1e-6)
    assert build_restorer(RestorerConfig(scale=2, width=4, n_blocks=1))(y).shape == (2, 3, 18, 26)
    with pytest.raises(ShapeError, match=r"\(B,3,h,w\)"):
        net(torch.rand(1, 1, 8, 8))
    with pytest.raises(ConfigError, match="width"):
        RestorerConfig(width=0)


def test_file_round_trip_fp16_and_bad_files(tmp_path):
    net = _trained_like()
    y = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    save_restorer(net, tmp_path / "r.safetensors")
    back = load_restorer(tmp_path / "r.safetensors")
    assert back.config == net.config and not any(p.requires_grad for p in back.parameters())
    assert torch.equal(back(y), net(y))
    save_restorer(net, tmp_path / "r16.safetensors", dtype=torch.float16)
    half = load_restorer(tmp_path / "r16.safetensors")
    assert next(half.parameters()).dtype == torch.float32
    assert (half(y) - net(y)).abs().max() < 2e-3
    with pytest.raises(WeightsFileError, match="exists"):
        save_restorer(net, tmp_path / "r.safetensors")
    from indigo_core.io.weights import save_inn
    from indigo_core.inn.config import INNConfig
    from indigo_core.inn.network import WaveletINN

    save_inn(WaveletINN(INNConfig.preset("pixel-small").replace(hidden=8, heads=2, window=4)), tmp_path / "inn.safetensors")
    with pytest.raises(WeightsFileError, match="indigo-restorer"):
        load_restorer(tmp_path / "inn.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "r.safetensors").read_bytes()[:100])
    with pytest.raises(WeightsFileError):
        load_restorer(tmp_path / "cut.safetensors")


@pytest.mark.slow
def test_training_on_real_crops_beats_bicubic_and_exports_a_card(tmp_path):
    from indigo_core.train import run

    crops = make_crops(tmp_path / "crops", n=8, size=64)
    out = tmp_path / "run"
    summary = run(["restorer", "--data", str(crops), "--val-data", str(crops), "--out", str(out), "--crop", "64",
                   "--batch-size", "8", "--steps", "150", "--lr", "2e-3", "--warmup-steps", "10", "--val-every", "0",
                   "--width", "16", "--n-blocks", "2", "--blur-sigma", "1", "2", "--noise", "5", "10",
                   "--jpeg-prob", "0", "--val-degradation", "train", "--ckpt-every", "0", *QUIET])
    val = summary["metrics"]
    assert val["psnr"] > val["bicubic_psnr"] + 0.3, val
    net = load_restorer(out / "restorer.safetensors")
    assert net.config == RestorerConfig(scale=4, width=16, n_blocks=2)
    card = json.loads((out / "restorer.card.json").read_text())
    assert card["kind"] == "restorer" and card["steps"] == 150 and card["parameters"] == sum(
        p.numel() for p in net.parameters())
