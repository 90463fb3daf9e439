"""The shared training loop and the trainers under failure: a diverged run never replaces its last
good checkpoint, a finished run resumed (after a failed export) does not log its final validation
twice, and settings that would fail late (after a teacher's training, after loading the VAE) or
destroy a file are refused up front. Tiny restorer runs keep this fast."""

from __future__ import annotations

import shutil

import pytest
import torch

from _train_helpers import QUIET, TINY_INN, make_crops, make_test_vae
from indigo_core.errors import ConfigError, TrainingError
from indigo_core.train import restorer, run
from indigo_core.train.loop import read_csv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    return make_crops(tmp_path_factory.mktemp("crops"))


def restorer_argv(data, out, *extra):
    return ["restorer", "--data", str(data), "--val-count", "0", "--out", str(out), "--crop", "32",
            "--batch-size", "2", "--width", "8", "--n-blocks", "1", "--val-every", "0", *QUIET, *extra]


def test_a_diverged_run_keeps_its_last_finite_checkpoint(crops, tmp_path, monkeypatch):
    """The loss is checked at logging steps; a checkpoint between two of them must not store NaN weights."""
    real = restorer.reconstruction_loss
    calls = [0]

    def nan_from_step_5(pred, target, norm):
        calls[0] += 1
        loss = real(pred, target, norm)
        return loss * float("nan") if calls[0] >= 5 else loss

    monkeypatch.setattr(restorer, "reconstruction_loss", nan_from_step_5)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="not finite"):
        run(restorer_argv(crops, out, "--steps", "20", "--log-every", "10", "--ckpt-every", "3"))
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 3
    assert all(bool(torch.isfinite(v).all()) for v in ckpt["model"].values())
    assert not (out / "restorer.safetensors").exists()


def test_resuming_a_finished_run_does_not_validate_and_log_again(crops, tmp_path, monkeypatch):
    """The final checkpoint is written before the export: a run whose export failed is resumed, and
    its validation log must still read as one run (one row per validation)."""
    from indigo_core import restorer as restorer_io

    out = tmp_path / "run"
    args = restorer_argv(crops, out, "--steps", "4", "--val-count", "2", "--val-every", "2")

    def disk_full(*_a, **_k):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(restorer_io, "save_restorer", disk_full)
        with pytest.raises(OSError, match="No space"):
            run(args)
    assert (out / "checkpoints" / "last.pt").is_file() and not (out / "restorer.safetensors").exists()
    assert [r["step"] for r in read_csv(out / "val_log.csv")] == ["0", "2", "4"]
    summary = run([*args, "--resume"])
    assert summary["step"] == 4 and (out / "restorer.safetensors").is_file()
    assert [r["step"] for r in read_csv(out / "val_log.csv")] == ["0", "2", "4"]
    assert set(summary["metrics"]) == {"psnr", "bicubic_psnr"}


@pytest.mark.parametrize("flag,value", [("--temperature", "0"), ("--gamma-weight", "-1"),
                                        ("--teacher-steps", "0"), ("--teacher-lr", "0")])
def test_estimator_settings_are_checked_before_the_teacher_trains(crops, tmp_path, flag, value):
    out = tmp_path / "est"
    with pytest.raises(TrainingError, match=f"{flag}: expected"):
        run(["estimator", "--data", str(crops), "--val-count", "0", "--out", str(out), "--crop", "32",
             "--batch-size", "2", "--teacher-steps", "2", "--steps", "2", *QUIET, flag, value])
    assert not out.exists()


def test_latent_inn_refuses_a_foreign_cache_file_and_a_zero_encode_batch(crops, tmp_path):
    vae = make_test_vae(tmp_path / "vae.safetensors", crops)
    precious = tmp_path / "precious.safetensors"
    shutil.copy(vae, precious)
    before = precious.read_bytes()
    base = ["latent-inn", "--data", str(crops), "--val-count", "0", "--crop", "32", "--batch-size", "2",
            "--steps", "1", "--crops-per-image", "1", "--vae", str(vae), *TINY_INN, *QUIET]
    with pytest.raises(ConfigError, match=r"--latent-cache .*precious.safetensors: expected a latent cache"):
        run([*base, "--out", str(tmp_path / "a"), "--latent-cache", str(precious)])
    assert precious.read_bytes() == before
    with pytest.raises(ConfigError, match="--encode-batch: expected >= 1, got 0"):
        run([*base, "--out", str(tmp_path / "b"), "--encode-batch", "0"])
    # a cache of this trainer made with other settings is still re-encoded and replaced
    cache = tmp_path / "cache.safetensors"
    run([*base, "--out", str(tmp_path / "c"), "--latent-cache", str(cache)])
    run([*base, "--out", str(tmp_path / "d"), "--latent-cache", str(cache), "--seed", "1"])
    from indigo_core.io.weights import read_weights_file

    assert read_weights_file(cache, "indigo-latent-cache")[0]["z"].shape[0] == 8
