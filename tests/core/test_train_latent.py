"""LatentINN training against a VAE file: the loss halves in 50 steps on 8 crops, the latent pool
is cached and reused, the export is a latent-domain INN with the VAE named in its card."""

from __future__ import annotations

import json

import pytest

from _train_helpers import LEARNABLE_DEGRADATION, QUIET, TINY_INN, halving_ratio, losses, make_crops, make_test_vae
from indigo_core.errors import ConfigError, WeightsFileError
from indigo_core.train import main, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    crops = make_crops(tmp_path_factory.mktemp("crops"))
    vae = make_test_vae(tmp_path_factory.mktemp("vae") / "tiny_vae.safetensors", crops)
    return crops, vae


# Latents of SD-scale VAEs have std ~5.5 (1/0.18215): the INN's outputs must move further than in
# pixel space, hence a larger learning rate than the PixelINN test's.
def argv(crops, vae, out, *extra):
    return ["latent-inn", "--vae", str(vae), "--data", str(crops), "--val-count", "2", "--out", str(out),
            "--crop", "32", "--crops-per-image", "2", "--batch-size", "4", "--steps", "50", "--lr", "5e-3",
            "--warmup-steps", "5", "--val-every", "0", *TINY_INN, *LEARNABLE_DEGRADATION, *QUIET, *extra]


def test_latent_inn_loss_halves_cache_is_reused_and_export_loads(data, tmp_path, caplog):
    from indigo_core import load_inn

    crops, vae = data
    out = tmp_path / "latent"
    summary = run(argv(crops, vae, out))
    curve = losses(out)
    assert summary["step"] == 50 and len(curve) == 50
    assert halving_ratio(curve) <= 0.5, f"loss {curve[:5]} ... {curve[-5:]}"
    assert losses(out, "inv")[-1] < 1.0
    # the decoded-reconstruction term is part of the loss: L = L_fwd + lambda_inv L_inv (lambda_inv 1)
    fwd, inv = losses(out, "fwd"), losses(out, "inv")
    assert min(inv) > 0
    assert all(abs(total - (f + i)) <= 1e-5 * total for total, f, i in zip(curve, fwd, inv))

    inn = load_inn(out / "latent_inn.safetensors")
    assert inn.config.domain == "latent" and inn.config.channels == 4 and inn.config.scale == 1
    card = json.loads((out / "latent_inn.card.json").read_text())
    assert card["kind"] == "latent-inn" and card["vae"]["file"] == str(vae.resolve())
    assert card["latent_pool"]["crops"] == 12  # 6 training images x 2 crops
    assert set(card["metrics"]) >= {"fwd_mse", "inv_psnr", "bicubic_psnr", "vae_psnr"}

    cache = out / "latents.safetensors"
    assert cache.is_file()
    with caplog.at_level("INFO", logger="indigo_core.train"):
        again = run(argv(crops, vae, out, "--steps", "2", "--overwrite"))
    assert again["step"] == 2 and "using the latent cache" in caplog.text


def test_latent_inn_refuses_a_decimating_split(data, tmp_path):
    crops, vae = data
    with pytest.raises(ConfigError, match="undecimated_haar"):
        run(argv(crops, vae, tmp_path / "x", "--inn-set", "split=haar"))
    assert not (tmp_path / "x").exists()


def test_a_run_that_fails_to_start_leaves_the_file_system_as_it_found_it(tmp_path):
    """A missing --vae stops the run (status 2 from the command) before it writes anything: an --out
    it had to create (with its missing parents) is gone again; an --out that existed stays, empty or
    holding a user's file, untouched."""
    crops = make_crops(tmp_path / "crops")
    nope = tmp_path / "nope.safetensors"
    fresh = tmp_path / "new" / "run"
    with pytest.raises(WeightsFileError, match="nope.safetensors"):
        run(argv(crops, nope, fresh))
    assert not (tmp_path / "new").exists()
    assert main(argv(crops, nope, fresh)) == 2
    assert not (tmp_path / "new").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(argv(crops, nope, empty)) == 2
    assert empty.is_dir() and not any(empty.iterdir())

    kept = tmp_path / "kept"
    (kept / "notes").mkdir(parents=True)
    (kept / "notes" / "mine.txt").write_text("the user's file\n")
    before = sorted((p.relative_to(kept), p.is_dir(), p.read_bytes() if p.is_file() else b"") for p in kept.rglob("*"))
    for extra in ((), ("--overwrite",)):
        assert main(argv(crops, nope, kept, *extra)) == 2
        assert sorted((p.relative_to(kept), p.is_dir(), p.read_bytes() if p.is_file() else b"")
                      for p in kept.rglob("*")) == before
