"""The prior's training CLI end to end on a few synthetic photos (tiny presets, two steps each),
its split and staging, and the time budget."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indigo_core.errors import TrainingError
from indigo_core.prior.data import CropSampler, photo_split
from indigo_core.prior.train import run
from indigo_core.prior.trainutil import Budget
from indigo_core.prior.weights import load_autoencoder, load_unet


@pytest.fixture()
def photos(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        h, w = (72, 96) if i % 2 else (100, 64)
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(np.sin(xx / (3 + i)) + np.cos(yy / (5 + c))) for c in range(3)], -1)
        img = (img - img.min()) / (np.ptp(img) + 1e-9) * 200 + rng.integers(0, 40, (h, w, 3))
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"p{i:02d}.png")
    return d


def tiny_autoencoder_args(photos) -> list[str]:
    """A tiny autoencoder run on `photos`, logged every step (add --out and --max-steps)."""
    return ["--data", str(photos), "--val-fraction", "0.2", "--log-every", "1", "--device", "cpu", "--val-minutes",
            "0", "--preset", "tiny", "--crop", "32", "--val-size", "32", "--batch-size", "2", "--stats-crops", "2"]


def test_split_is_deterministic_and_shared(photos, tmp_path) -> None:
    train, val = photo_split(photos, 0.1)
    assert len(val) == 1 and len(train) == 9
    assert photo_split(photos, 0.1) == (train, val)
    rec = run(["split", "--data", str(photos), "--out", str(tmp_path / "split.json")])
    assert json.loads((tmp_path / "split.json").read_text())["val"] == [val[0].name] == rec["val"]
    run(["stage", "--data", str(photos), "--out", str(tmp_path / "staged")])
    assert sorted(p.name for p in (tmp_path / "staged" / "val").iterdir()) == [val[0].name]
    assert len(list((tmp_path / "staged" / "train").glob("*.jpg"))) == 9


def test_train_autoencoder_then_unet(photos, tmp_path) -> None:
    out = tmp_path / "run"
    common = ["--data", str(photos), "--val-fraction", "0.2", "--out", str(out), "--max-steps", "2",
              "--log-every", "1", "--device", "cpu", "--val-minutes", "0"]
    card = run(["autoencoder", *common, "--preset", "tiny", "--crop", "64", "--val-size", "64", "--batch-size", "2",
                "--stats-crops", "4"])
    assert card["training"]["steps"] == 2 and card["data"]["val_images"] == 2
    assert card["latent_format"]["scale_factor"] == pytest.approx(0.18215)
    assert {"val_psnr_db", "val_ssim", "meets_target"} <= set(card["quality"])
    ae_file = out / "indigo-prior-vae.safetensors"
    ae = load_autoencoder(ae_file)
    assert ae.cfg.ch == 32
    rows = (out / "autoencoder_log.csv").read_text().splitlines()
    assert rows[0].startswith("step,elapsed_s,lr,loss") and len(rows) == 3
    assert (out / "autoencoder_val_recon.png").is_file()
    with pytest.raises(TrainingError, match="overwrite"):
        run(["autoencoder", *common, "--preset", "tiny"])

    # Decoder-only fine-tuning keeps the latent space: encoder-side tensors bit-identical (here in
    # channels-last memory format, as on a GPU; the exported file is an ordinary one).
    tuned = tmp_path / "tuned"
    tcommon = [c if c != str(out) else str(tuned) for c in common]
    card_t = run(["autoencoder", *tcommon, "--preset", "tiny", "--crop", "64", "--val-size", "64", "--batch-size", "2",
                  "--stats-crops", "4", "--init", str(ae_file), "--freeze-encoder", "--lr", "1e-2", "--channels-last"])
    assert card_t["training"]["trained_parts"] == "decoder side only" and card_t["training"]["channels_last"] is True
    before, after = ae.state_dict(), load_autoencoder(tuned / "indigo-prior-vae.safetensors").state_dict()
    enc = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    dec = [k for k in before if k.startswith(("decoder.", "post_quant_conv."))]
    assert enc and dec and all(torch.equal(before[k], after[k]) for k in enc)
    assert any(not torch.equal(before[k], after[k]) for k in dec)
    with pytest.raises(Exception, match="--init"):
        run(["autoencoder", *tcommon, "--preset", "tiny", "--freeze-encoder", "--overwrite"])

    card = run(["unet", *common, "--autoencoder", str(ae_file), "--preset", "tiny", "--latent-size", "8",
                "--batch-size", "4", "--scales", "1", "--no-mirror", "--samples", "2", "--sample-steps", "2"])
    assert card["training"]["steps"] == 2 and card["autoencoder"]["file"] == ae_file.name
    assert card["schedule"]["beta_schedule"] == "scaled_linear" and card["quality"]["val_eps_mse"] > 0
    unet, ctx, meta = load_unet(out / "indigo-prior-unet.safetensors")
    assert ctx.shape == (1, 1, 32) and json.loads(meta["autoencoder"])["sha256"] == card["autoencoder"]["sha256"]
    assert Image.open(out / "unet_samples.png").size == (128, 64)  # two 64 px samples side by side


def test_an_interrupted_runs_checkpoint_and_log_are_not_overwritten(tmp_path) -> None:
    """A new run in the folder of an interrupted one (checkpoint and log, no final weights) is refused;
    resuming from that checkpoint continues its log; --overwrite starts a fresh log."""
    from indigo_core.prior.trainutil import check_out_dir

    out = tmp_path / "run"
    out.mkdir()
    (out / "unet_ckpt.pt").write_bytes(b"resume point")
    (out / "unet_log.csv").write_text("step\n1\n")
    kw = dict(run_files=["unet_ckpt.pt", "unet_log.csv", "unet_samples.png"], log_file="unet_log.csv",
              ckpt_file="unet_ckpt.pt")
    with pytest.raises(TrainingError, match=r"unet_ckpt.pt.*--resume"):
        check_out_dir(out, ["indigo-prior-unet.safetensors"], False, **kw)
    with pytest.raises(TrainingError, match="unet_log.csv"):  # resuming from a checkpoint elsewhere
        check_out_dir(out, ["indigo-prior-unet.safetensors"], False, resume=str(tmp_path / "other.pt"), **kw)
    check_out_dir(out, ["indigo-prior-unet.safetensors"], False, resume=str(out / "unet_ckpt.pt"), **kw)
    assert (out / "unet_log.csv").read_text() == "step\n1\n" and (out / "unet_ckpt.pt").is_file()
    check_out_dir(out, ["indigo-prior-unet.safetensors"], True, **kw)
    assert not (out / "unet_log.csv").exists()


def test_prior_resume_checks_the_checkpoints_settings_and_bad_values_are_refused(photos, tmp_path) -> None:
    out = tmp_path / "run"
    common = ["--out", str(out), *tiny_autoencoder_args(photos)]
    run(["autoencoder", *common, "--max-steps", "1"])
    ckpt = str(out / "autoencoder_ckpt.pt")
    with pytest.raises(TrainingError, match=r"settings differ.*crop: checkpoint 32, now 48.*ssim_weight: checkpoint 0.2, now 5.0"):
        run(["autoencoder", *[c if c != "32" else "48" for c in common], "--max-steps", "2", "--resume", ckpt,
             "--ssim-weight", "5", "--overwrite"])
    broken = tmp_path / "broken.pt"
    broken.write_bytes(Path(ckpt).read_bytes()[:200])
    with pytest.raises(TrainingError, match="broken.pt: not a readable checkpoint"):
        run(["autoencoder", *common, "--max-steps", "2", "--resume", str(broken), "--overwrite"])
    resumed = run(["autoencoder", *common, "--max-steps", "2", "--resume", ckpt, "--overwrite"])
    assert resumed["training"]["steps"] == 3  # 1 before, then a fresh budget of 2
    for flag, value in (("--max-steps", "-5"), ("--log-every", "0"), ("--batch-size", "0"), ("--max-minutes", "-1")):
        with pytest.raises(SystemExit):
            run(["autoencoder", *common, flag, value, "--overwrite"] + (["--max-steps", "1"] if flag != "--max-steps" else []))


def test_budget_bounds_and_schedule() -> None:
    with pytest.raises(TrainingError):
        Budget(None, None)
    b = Budget(None, 100, warmup=10)
    assert b.lr(0, 1.0) == pytest.approx(0.1)
    assert b.lr(50, 1.0) == pytest.approx(0.05 + 0.95 * 0.5, rel=1e-6)
    assert not b.done(99) and b.done(100)
    t = Budget(0.001, None)  # 60 ms
    time.sleep(0.08)
    assert t.done(0) and t.lr(1000, 1.0) == pytest.approx(0.05)


def test_crop_sampler_is_seeded_and_in_bounds() -> None:
    imgs = [torch.randint(0, 255, (3, 40, 50), dtype=torch.uint8), torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)]
    a, b = CropSampler(imgs, 32, seed=3)(8), CropSampler(imgs, 32, seed=3)(8)
    assert torch.equal(a, b) and a.shape == (8, 3, 32, 32) and a.dtype == torch.float32
    assert 0 <= a.min() and a.max() <= 1


def test_gpu_train_script_keeps_the_best_autoencoder_variant(photos, tmp_path) -> None:
    """tools/gpu_train.sh (the script that trained the bundled prior), shrunk to a CPU check: two
    autoencoder variants side by side (one plain, one AutoencoderKL), the better one exported, the
    UNet trained on its latents."""
    import hashlib
    import os
    import subprocess
    import sys
    import tarfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    staged, out, work = tmp_path / "staged", tmp_path / "out", tmp_path / "work"
    run(["stage", "--data", str(photos), "--out", str(staged), "--val-fraction", "0.2"])
    cpu = "--device cpu --threads 1"
    env = dict(os.environ, OUT=str(out), WORK=str(work), PYTHON=sys.executable, AE_MINUTES="0.5",
               UNET_MINUTES="0.5", TOTAL_MINUTES="4", AE_VARIANTS="lean-tiny:2e-3 tiny:1e-6",
               AE_ARGS=f"{cpu} --crop 64 --val-size 64 --batch-size 2 --stats-crops 4 --max-steps 4 --warmup 1",
               UNET_ARGS=f"{cpu} --preset tiny --latent-size 8 --batch-size 2 --scales 1 --no-mirror --samples 2 "
                         "--sample-steps 2 --max-steps 2 --val-size 64")
    proc = subprocess.run(["bash", str(root / "tools" / "gpu_train.sh"), str(staged)], env=env, cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["indigo-prior-vae.safetensors", "indigo-prior-vae.card.json", "indigo-prior-unet.safetensors",
         "indigo-prior-unet.card.json", "run.log", "logs.tar.gz"])
    variants = {d.name: json.loads((d / "indigo-prior-vae.card.json").read_text())
                for d in (work / "ae_lean-tiny_2e-3", work / "ae_tiny_1e-6")}
    assert {c["training"]["peak_lr"] for c in variants.values()} == {2e-3, 1e-6}
    assert variants["ae_lean-tiny_2e-3"]["architecture"]["config"]["family"] == "plain"
    assert "family" not in variants["ae_tiny_1e-6"]["architecture"]["config"]
    best = max(variants.values(), key=lambda c: c["quality"]["val_psnr_db"])
    shipped = json.loads((out / "indigo-prior-vae.card.json").read_text())
    assert shipped["sha256"] == best["sha256"] == hashlib.sha256((out / "indigo-prior-vae.safetensors").read_bytes()).hexdigest()
    unet = json.loads((out / "indigo-prior-unet.card.json").read_text())
    assert unet["autoencoder"]["sha256"] == best["sha256"]
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = tar.getnames()
    assert sum(n.endswith("autoencoder_log.csv") for n in names) == 2 and any(n.endswith("unet_log.csv") for n in names)


def test_split_and_stage_never_write_over_an_earlier_one_unasked(photos, tmp_path) -> None:
    """Staging again with another --val-fraction used to leave the old split's copies in train/:
    a photo now held out for validation stayed among the training photos."""
    staged = tmp_path / "staged"
    run(["stage", "--data", str(photos), "--out", str(staged), "--val-fraction", "0.1"])
    with pytest.raises(TrainingError, match=r"stage: .*staged already holds \['train', 'val', 'split.json'\]; "
                                            r"pass --overwrite"):
        run(["stage", "--data", str(photos), "--out", str(staged), "--val-fraction", "0.3"])
    assert len(list((staged / "train").iterdir())) == 9  # untouched
    (staged / "notes.txt").write_text("mine")
    run(["stage", "--data", str(photos), "--out", str(staged), "--val-fraction", "0.3", "--overwrite"])
    train, val = photo_split(photos, 0.3)
    assert sorted(p.name for p in (staged / "val").iterdir()) == sorted(p.name for p in val)
    assert sorted(p.stem for p in (staged / "train").iterdir()) == sorted(p.stem for p in train)
    assert not {p.stem for p in val} & {p.stem for p in (staged / "train").iterdir()}
    assert (staged / "notes.txt").read_text() == "mine"  # only what staging writes is replaced
    split = tmp_path / "split.json"
    split.write_text("{}")
    with pytest.raises(TrainingError, match=r"split: .*split.json exists; pass --overwrite"):
        run(["split", "--data", str(photos), "--out", str(split)])
    assert split.read_text() == "{}"
    run(["split", "--data", str(photos), "--out", str(split), "--overwrite"])
    assert json.loads(split.read_text())["n_val"] == 1


def test_stage_refuses_photos_that_would_be_copied_onto_one_file(tmp_path) -> None:
    d = tmp_path / "photos"
    for sub in ("a", "b"):  # six photos, one held out: at least two same-named pairs train
        (d / sub).mkdir(parents=True)
        for name in ("p.png", "q.png", "r.png"):
            Image.fromarray(np.full((40, 40, 3), 100, np.uint8)).save(d / sub / name)
    from indigo_core.errors import DatasetError

    with pytest.raises(DatasetError, match=r"a/([pqr]).png, b/\1.png -> train/\1.jpg"):
        run(["stage", "--data", str(d), "--out", str(tmp_path / "staged"), "--val-fraction", "0.2"])
    assert not (tmp_path / "staged").exists()


def test_a_failed_checkpoint_write_keeps_the_previous_one_and_leaves_no_partial_file(tmp_path, monkeypatch) -> None:
    from indigo_core.prior.trainutil import save_checkpoint

    path = tmp_path / "ckpt" / "unet_ckpt.pt"
    save_checkpoint(path, step=1)
    real_save = torch.save

    def disk_full(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, step=2)
    monkeypatch.undo()
    assert [p.name for p in path.parent.iterdir()] == ["unet_ckpt.pt"]
    assert torch.load(path, weights_only=True)["step"] == 1


def test_resume_continues_the_random_streams_and_the_unet_ema(photos, tmp_path, monkeypatch) -> None:
    """A resumed run draws new crops and noise (not the first steps' again), and the UNet's exported
    EMA goes on averaging from the checkpoint's, not from the raw weights."""
    seen: list[torch.Tensor] = []
    real_call = CropSampler.__call__

    def recording(self, n):
        batch = real_call(self, n)
        seen.append(batch.clone())
        return batch

    common = tiny_autoencoder_args(photos)
    straight, split = tmp_path / "straight", tmp_path / "split"
    monkeypatch.setattr(CropSampler, "__call__", recording)
    run(["autoencoder", *common, "--out", str(straight), "--max-steps", "2"])
    second_batch = seen[1]
    run(["autoencoder", *common, "--out", str(split), "--max-steps", "1"])
    seen.clear()
    run(["autoencoder", *common, "--out", str(split), "--max-steps", "1", "--overwrite",
         "--resume", str(split / "autoencoder_ckpt.pt")])
    assert torch.equal(seen[0], second_batch)
    monkeypatch.undo()

    ae_file = straight / "indigo-prior-vae.safetensors"
    ucommon = ["--data", str(photos), "--val-fraction", "0.2", "--log-every", "1", "--device", "cpu",
               "--val-minutes", "0", "--autoencoder", str(ae_file), "--preset", "tiny", "--latent-size", "4",
               "--batch-size", "2", "--scales", "1", "--no-mirror", "--samples", "1", "--sample-steps", "1",
               "--out", str(tmp_path / "unet")]
    run(["unet", *ucommon, "--max-steps", "1"])
    ckpt_path = tmp_path / "unet" / "unet_ckpt.pt"
    ck = torch.load(ckpt_path, weights_only=True)
    assert ck["ema"]["unet"]["n"] == 1
    # A long-settled average of zeros: after one more step the export is 0.999 x 0 + 0.001 x weights.
    for part in ("unet", "context"):
        ck["ema"][part]["n"] = 10**6
        ck["ema"][part]["shadow"] = {k: torch.zeros_like(v) for k, v in ck["ema"][part]["shadow"].items()}
    torch.save(ck, ckpt_path)
    run(["unet", *ucommon, "--max-steps", "1", "--overwrite", "--resume", str(ckpt_path)])
    unet, ctx, _ = load_unet(tmp_path / "unet" / "indigo-prior-unet.safetensors")
    weights = [v for v in unet.state_dict().values() if v.is_floating_point()]
    assert max(float(w.abs().max()) for w in weights) < 0.01 and float(ctx.abs().max()) < 0.01
    assert torch.load(ckpt_path, weights_only=True)["ema"]["unet"]["n"] == 10**6 + 1


def test_a_resumed_run_drops_the_log_rows_logged_after_its_checkpoint(photos, tmp_path) -> None:
    out = tmp_path / "run"
    common = ["--out", str(out), *tiny_autoencoder_args(photos)]
    run(["autoencoder", *common, "--max-steps", "2"])
    log_file = out / "autoencoder_log.csv"
    # The interrupted run went on logging after its checkpoint (step 2), the last row half written.
    log_file.write_text(log_file.read_text() + "3,9,0.1,999,999,0,0,,\n4,9,0.1,99")
    run(["autoencoder", *common, "--max-steps", "1", "--overwrite", "--resume", str(out / "autoencoder_ckpt.pt")])
    rows = log_file.read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["step", "1", "2", "3"] and "999" not in rows[-1]
