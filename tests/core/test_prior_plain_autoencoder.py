"""The plain autoencoder: geometry, the Autoencoder protocol, files, exact latent normalisation,
and its preset in the training CLI."""

from __future__ import annotations

import pytest
import torch

from indigo_core.errors import ConfigError, ShapeError, WeightsFileError
from indigo_core.guidance.autoencoder import Autoencoder
from indigo_core.prior.autoencoder import count_parameters
from indigo_core.prior.plain_autoencoder import PRESETS, PlainAutoencoder, PlainAutoencoderConfig
from indigo_core.prior.weights import load_autoencoder, read_latent_format, save_autoencoder

SMALL = PlainAutoencoderConfig(widths=(8, 16, 16, 32), blocks=(1, 1, 0, 2))


@pytest.fixture()
def ae() -> PlainAutoencoder:
    torch.manual_seed(0)
    return PlainAutoencoder(SMALL).eval()


def test_lean_preset_size_and_names() -> None:
    lean = PlainAutoencoder(PRESETS["lean"])
    assert 5.5e6 < count_parameters(lean) < 6.0e6  # about 11.7 MB in fp16
    keys = set(lean.state_dict())
    assert {"encoder.conv_in.weight", "encoder.down.2.weight", "encoder.levels.3.1.conv2.bias", "encoder.conv_out.weight",
            "decoder.conv_in.weight", "decoder.up.0.0.weight", "decoder.levels.3.0.conv1.weight",
            "decoder.conv_out.bias"} <= keys
    assert tuple(lean.state_dict()["encoder.conv_out.weight"].shape) == (4, 256, 1, 1)


def test_geometry_and_protocol(ae: PlainAutoencoder) -> None:
    x = torch.rand(2, 3, 48, 40)
    z = ae.encode(x)
    assert z.shape == (2, 4, 6, 5) and ae.latent_channels == 4 and ae.downscale == 8
    assert isinstance(ae, Autoencoder)
    y = ae.decode(z)
    assert y.shape == x.shape
    clamped = ae.decode(z, clamp=True)
    assert clamped.min() >= 0 and clamped.max() <= 1
    mean, logvar = ae.moments(x * 2 - 1)
    assert torch.equal(mean, z) and bool((logvar == -30).all())  # deterministic latent
    z = z.detach().requires_grad_(True)
    ae.decode(z).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    with pytest.raises(ShapeError, match="multiples of 8"):
        ae.encode(torch.rand(1, 3, 30, 32))
    with pytest.raises(ShapeError, match=r"\(B,4,h,w\)"):
        ae.decode(torch.rand(1, 3, 4, 4))


@pytest.mark.parametrize("cfg", [PRESETS["lean"], PRESETS["lean-tiny"],
                                 PlainAutoencoderConfig(widths=(16, 64, 256, 512), blocks=(1, 2, 2, 2)),
                                 PlainAutoencoderConfig(widths=(64, 64, 64, 64), blocks=(2, 0, 0, 1))],
                         ids=["lean", "lean-tiny", "deep-levels", "flat"])
def test_peak_activation_bound_holds_and_is_tight(cfg) -> None:
    """The per-pixel bound a host sizes its VAE batches with: never below what an inference
    encode or decode really keeps alive, and not far above it."""
    from _live_memory import PeakLiveBytes

    ae = PlainAutoencoder(cfg).eval()
    side = 64
    x = torch.rand(1, 3, side, side)
    with torch.no_grad():
        with PeakLiveBytes() as enc:
            z = ae.encode(x)
        with PeakLiveBytes() as dec:
            ae.decode(z)
    measured = [p.peak / x.element_size() / side ** 2 for p in (enc, dec)]
    bound = ae.peak_activations_per_pixel()
    assert min(measured) > 10, measured  # the probe saw the activations
    assert max(measured) <= bound <= 1.8 * max(measured), (measured, bound)


def test_config_validation_and_round_trip() -> None:
    assert PlainAutoencoderConfig.from_dict(SMALL.to_dict()) == SMALL
    with pytest.raises(ConfigError, match="blocks"):
        PlainAutoencoderConfig(widths=(8, 8), blocks=(1,))
    with pytest.raises(ConfigError, match="family"):
        PlainAutoencoderConfig(family="kl")
    with pytest.raises(ConfigError, match="unknown fields"):
        PlainAutoencoderConfig.from_dict({**SMALL.to_dict(), "ch": 32})


def test_normalise_latents_is_exact(ae: PlainAutoencoder) -> None:
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        rec0 = ae(x)
        z = ae.encode(x).transpose(0, 1).reshape(4, -1)
        ae.normalise_latents(z.mean(1).tolist(), z.std(1).tolist())
        flat = (ae.encode(x) * 0.18215).transpose(0, 1).reshape(4, -1)
        rec1 = ae(x)
    torch.testing.assert_close(flat.mean(1), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(flat.std(1), torch.ones(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(rec1, rec0, atol=1e-4, rtol=0)
    with pytest.raises(ConfigError):
        ae.normalise_latents([0.0] * 4, [1.0, 1.0, 0.0, 1.0])


def test_save_load_round_trip(ae: PlainAutoencoder, tmp_path) -> None:
    path = save_autoencoder(ae, tmp_path / "plain.safetensors", dtype=None,
                            latent_format={"latent_rgb_factors": [[0.1, 0.2, 0.3]] * 4})
    back = load_autoencoder(path)
    assert isinstance(back, PlainAutoencoder) and back.cfg == SMALL
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back(x), ae(x))
    assert read_latent_format(path)["latent_rgb_factors"][0] == [0.1, 0.2, 0.3]
    # a file whose tensors do not fit its config is refused with the file named
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    sd = load_file(str(path))
    sd.pop("decoder.conv_out.bias")
    save_file(sd, tmp_path / "partial.safetensors", metadata=meta)
    with pytest.raises(WeightsFileError, match="partial.safetensors"):
        load_autoencoder(tmp_path / "partial.safetensors")


def test_training_cli_builds_the_plain_autoencoder(tmp_path) -> None:
    from PIL import Image

    from indigo_core.prior.train import run

    photos = tmp_path / "photos"
    photos.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(5):
        img = (torch.rand(72, 80, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(img).save(photos / f"p{i}.png")
    out = tmp_path / "run"
    card = run(["autoencoder", "--data", str(photos), "--val-fraction", "0.2", "--out", str(out), "--max-steps", "3",
                "--device", "cpu", "--val-minutes", "0", "--preset", "lean-tiny", "--crop", "64", "--val-size", "64",
                "--batch-size", "2", "--stats-crops", "4", "--mse-weight", "1", "--ssim-weight", "0"])
    assert card["architecture"]["config"]["family"] == "plain" and "comfy_vae_config" not in card["architecture"]
    assert card["training"]["loss"].startswith("L1 + 1.0 MSE") and card["training"]["init_logvar"] is None
    loaded = load_autoencoder(out / "indigo-prior-vae.safetensors")
    assert isinstance(loaded, PlainAutoencoder) and loaded.cfg == PRESETS["lean-tiny"]
    rows = (out / "autoencoder_log.csv").read_text().splitlines()
    assert len(rows) == 4 and all(float(r.split(",")[6]) == 0 for r in rows[1:])  # no KL term
