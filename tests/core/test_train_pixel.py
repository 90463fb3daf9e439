"""PixelINN training: the loss halves in 50 steps on 8 real crops; the export loads as an INN with a
model card; a stopped and resumed run equals an uninterrupted one; outputs are not overwritten."""

from __future__ import annotations

import json

import pytest
import torch

from _train_helpers import LEARNABLE_DEGRADATION, QUIET, TINY_INN, halving_ratio, losses, make_crops, max_weight_diff
from indigo_core.errors import TrainingError
from indigo_core.train import run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    return make_crops(tmp_path_factory.mktemp("crops"))


def argv(data, out, *extra):
    return ["pixel-inn", "--data", str(data), "--val-count", "0", "--out", str(out), "--crop", "32",
            "--batch-size", "4", "--steps", "50", "--lr", "2e-3", "--warmup-steps", "15", "--val-every", "0",
            *TINY_INN, *LEARNABLE_DEGRADATION, *QUIET, *extra]


@pytest.fixture(scope="module")
def full_run(crops, tmp_path_factory):
    """One uninterrupted 50-step run, shared by the tests below."""
    out = tmp_path_factory.mktemp("pixel_full")
    n = torch.get_num_threads()
    try:
        summary = run(argv(crops, out, "--ckpt-every", "0"))
    finally:
        torch.set_num_threads(n)
    return out, summary


def test_loss_halves_and_export_is_an_inn_with_a_card(full_run, crops):
    from indigo_core import load_inn

    out, summary = full_run
    curve = losses(out)
    assert len(curve) == 50 and summary["step"] == 50 and not summary["stopped"]
    assert halving_ratio(curve) <= 0.5, f"loss {curve[:5]} ... {curve[-5:]}"

    inn = load_inn(out / "pixel_inn.safetensors")
    assert inn.config.hidden == 16 and inn.config.n_mrstb == 1 and inn.config.domain == "pixel"
    x = torch.rand(1, 3, 32, 32)
    coarse, details = inn(x)
    assert coarse.shape == (1, 3, 8, 8)
    assert torch.allclose(inn.inverse(coarse, details), x, atol=1e-5)

    card = json.loads((out / "pixel_inn.card.json").read_text())
    assert card["kind"] == "pixel-inn" and card["steps"] == 50 and card["global_batch"] == 4
    assert card["command"].startswith("python -m indigo_core.train pixel-inn --data ")
    assert card["data"]["train_images"] == 8 and card["data"]["folder"] == str(crops.resolve())
    assert card["hardware"]["device"] == "cpu" and card["duration_s"] > 0
    assert card["loss"]["norm"] == "l1" and card["loss"]["lambda_inv"] == 1.0
    assert abs(card["final_train_losses"]["loss"] - curve[-1]) < 1e-12
    from safetensors import safe_open

    with safe_open(str(out / "pixel_inn.safetensors"), "pt") as fh:
        assert json.loads(fh.metadata()["model_card"])["steps"] == 50


def test_stop_and_resume_equals_uninterrupted(full_run, crops, tmp_path):
    ref, _ = full_run
    out = tmp_path / "resumed"
    first = run(argv(crops, out, "--stop-at", "20", "--ckpt-every", "7"))
    assert first["stopped"] and first["step"] == 20
    assert (out / "checkpoints" / "last.pt").is_file() and not (out / "pixel_inn.safetensors").exists()
    with pytest.raises(TrainingError, match="already holds a run"):
        run(argv(crops, out))
    second = run(argv(crops, out, "--resume", "--ckpt-every", "7"))
    assert second["step"] == 50 and not second["stopped"]

    a, b = losses(ref), losses(out)
    assert len(b) == 50
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-6
    assert max_weight_diff(ref / "pixel_inn.safetensors", out / "pixel_inn.safetensors") <= 1e-6


def test_resume_refuses_other_settings_and_overwrite_replaces(crops, tmp_path):
    out = tmp_path / "run"
    run(argv(crops, out, "--steps", "3", "--stop-at", "2", "--log-every", "1"))
    with pytest.raises(TrainingError, match="lr"):
        run(argv(crops, out, "--steps", "3", "--resume", "--lr", "1e-3"))
    done = run(argv(crops, out, "--steps", "2", "--overwrite"))
    assert done["step"] == 2 and (out / "pixel_inn.safetensors").is_file()
    assert len(losses(out)) == 2


def test_a_run_that_fails_to_start_or_resumes_another_folders_run_loses_nothing(crops, tmp_path):
    """--overwrite replaces the earlier run only once the new one is set up; a checkpoint of another
    folder does not resume into a folder holding a run; a broken checkpoint and out-of-range options
    are named."""
    a, b = tmp_path / "a", tmp_path / "b"
    run(argv(crops, a, "--steps", "2", "--stop-at", "1"))
    run(argv(crops, b, "--steps", "2"))
    kept = {p.relative_to(b): p.read_bytes() for p in b.rglob("*") if p.is_file()}
    with pytest.raises(Exception, match="nope.safetensors"):
        run(argv(crops, b, "--steps", "2", "--overwrite", "--estimator", str(tmp_path / "nope.safetensors")))
    with pytest.raises(TrainingError, match=r"already holds a run.*resuming from .*a/checkpoints/last.pt would replace it"):
        run(argv(crops, b, "--steps", "2", "--resume", str(a / "checkpoints" / "last.pt")))
    for bad, flag in ((["--min-lr-ratio", "-1"], "--min-lr-ratio"), (["--beta1", "1.5"], "--beta1"),
                      (["--weight-decay", "-1"], "--weight-decay"), (["--overwrite", "--grad-clip", "-2"], "--grad-clip")):
        with pytest.raises(TrainingError, match=flag):
            run(argv(crops, b, "--steps", "2", *bad))
    assert {p.relative_to(b): p.read_bytes() for p in b.rglob("*") if p.is_file()} == kept
    with pytest.raises(SystemExit):
        run(argv(crops, tmp_path / "c", "--lambda-inv", "-1"))
    broken = tmp_path / "broken.pt"
    broken.write_bytes((a / "checkpoints" / "last.pt").read_bytes()[:300])
    with pytest.raises(TrainingError, match=r"broken.pt: not a readable training checkpoint"):
        run(argv(crops, tmp_path / "d", "--steps", "2", "--resume", str(broken)))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(TrainingError, match=r"list.pt: not a training checkpoint of this pack"):
        run(argv(crops, tmp_path / "e", "--steps", "2", "--resume", str(tmp_path / "list.pt")))
