"""Training on given pairs (--lq-data): ground truths and their degraded images, matched by relative
path without extension, made here by a degradation the synthetic pipeline does not model (a 4 x 4 box
average, a colour shift, then quantisation to 16 levels per channel). Crops stay aligned and are a
function of (seed, sample index); a PixelINN learns the degradation; runs repeat and resume exactly;
what cannot work is refused before any file is written; the card records the pairs."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from _train_helpers import QUIET, TINY_INN, make_crops, make_test_vae, max_weight_diff
from indigo_core.errors import ConfigError, DatasetError, TrainingError
from indigo_core.train import run
from indigo_core.train.data import TrainCrops, ValCrops, build_image_sets
from indigo_core.train.loop import read_csv

pytestmark = pytest.mark.slow

S = 4
LEVEL = 17  # quantisation step on 0..255: 16 levels


def degrade(img: np.ndarray, s: int = S) -> np.ndarray:
    """(H,W,3) uint8 -> (H/s,W/s,3) uint8: s x s box average, colour shift, quantisation."""
    h, w = img.shape[:2]
    avg = img.astype(np.float64).reshape(h // s, s, w // s, s, 3).mean((1, 3))
    shifted = np.clip(avg * 0.75 + np.array([40.0, 10.0, -20.0]), 0, 255)
    return (np.round(shifted / LEVEL) * LEVEL).astype(np.uint8)


def make_pairs(crops, gt, lq, s: int = S):
    """Ground truths in nested folders as .png/.jpg, their pairs as .webp (lossless)/.png."""
    for i, f in enumerate(sorted(crops.glob("*.png"))):
        sub = f"set{i % 2}/part{i % 3}"
        (gt / sub).mkdir(parents=True, exist_ok=True)
        (lq / sub).mkdir(parents=True, exist_ok=True)
        g = gt / sub / (f.stem + (".jpg" if i % 2 else ".png"))
        Image.open(f).save(g, quality=95)
        x = np.asarray(Image.open(g).convert("RGB"))
        Image.fromarray(degrade(x, s)).save(lq / sub / (f.stem + (".png" if i % 2 else ".webp")), lossless=True)
    return gt, lq


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    return make_pairs(make_crops(root / "crops"), root / "gt", root / "lq")


def pixel_argv(gt, lq, out, *extra):
    return ["pixel-inn", "--data", str(gt), "--lq-data", str(lq), "--val-count", "2", "--out", str(out),
            "--crop", "32", "--batch-size", "4", "--steps", "20", "--lr", "2e-3", "--warmup-steps", "5",
            "--val-every", "0", *TINY_INN, *QUIET, *extra]


def as_uint8(t: torch.Tensor) -> np.ndarray:
    return (t * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_crops_of_a_pair_stay_aligned_and_depend_on_seed_and_index_only(pairs):
    gt, lq = pairs
    sets = build_image_sets(gt, 32, val_count=2, lq_data=lq, scale=S)
    assert len(sets.train) == 6 and len(sets.val) == 2
    ds = TrainCrops(sets.train, 32, seed=5, flips="hv")
    samples = [ds[i] for i in range(24)]
    for smp in samples:  # the given y is the degradation of exactly this window, flipped alike
        assert smp.x.shape == (3, 32, 32) and smp.y.shape == (3, 8, 8)
        assert np.array_equal(as_uint8(smp.y), degrade(as_uint8(smp.x)))
    # a fresh copy (another process or DataLoader worker) reading in another order sees the same samples
    again = build_image_sets(gt, 32, val_count=2, lq_data=lq, scale=S, cache=True)
    other = TrainCrops(again.train, 32, seed=5, flips="hv")
    for i in reversed(range(24)):
        assert torch.equal(other[i].x, samples[i].x) and torch.equal(other[i].y, samples[i].y)
    assert not all(torch.equal(a.x, b.x) for a, b in zip(samples, (TrainCrops(sets.train, 32, 6, "hv")[i]
                                                                    for i in range(24))))
    val = ValCrops(sets.val, 32, seed=5)
    for i in range(2):
        assert np.array_equal(as_uint8(val[i].y), degrade(as_uint8(val[i].x)))


def test_x1_pairs_and_measurements_without_a_ground_truth(pairs, tmp_path, caplog):
    """Pairs of the ground truth's own size train a x1 run; an extra degraded image is left out with a warning."""
    gt, _ = pairs
    lq1 = tmp_path / "lq1"
    for f in gt.rglob("*.*"):
        q = lq1 / f.relative_to(gt).with_suffix(".png")
        q.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(degrade(np.asarray(Image.open(f).convert("RGB")), 1)).save(q)
    Image.new("RGB", (12, 12)).save(lq1 / "set0" / "stray.png")
    with caplog.at_level(logging.WARNING):
        sets = build_image_sets(gt, 32, val_count=0, lq_data=lq1, scale=1)
    assert "1 image(s)" in caplog.text and "set0/stray.png" in caplog.text and "not used" in caplog.text
    smp = TrainCrops(sets.train, 32, seed=0)[3]
    assert smp.y.shape == (3, 32, 32) and np.array_equal(as_uint8(smp.y), degrade(as_uint8(smp.x), 1))
    out = tmp_path / "x1"
    run(["restorer", "--data", str(gt), "--lq-data", str(lq1), "--scale", "1", "--val-count", "0", "--out", str(out),
         "--crop", "32", "--batch-size", "2", "--steps", "2", "--width", "8", "--n-blocks", "1", *QUIET])
    assert json.loads((out / "restorer.card.json").read_text())["restorer_config"]["scale"] == 1


def test_a_pixel_inn_learns_the_given_degradation_and_the_card_records_the_pairs(pairs, tmp_path):
    gt, lq = pairs
    out = tmp_path / "fit"
    run(pixel_argv(gt, lq, out, "--val-every", "20"))
    rows = read_csv(out / "val_log.csv")
    assert [r["step"] for r in rows] == ["0", "20"]
    before, after = float(rows[0]["fwd_l1"]), float(rows[-1]["fwd_l1"])
    # |x_c - y| on the two held-out pairs' centre crops; the plain 4 x 4 average of x (what the
    # untrained Haar coarse part is close to) misses the colour shift by more than the trained INN
    sets = build_image_sets(gt, 32, val_count=2, lq_data=lq, scale=S)
    val = [ValCrops(sets.val, 32, seed=0)[i] for i in range(2)]
    box = sum(float((torch.nn.functional.avg_pool2d(v.x[None], S)[0] - v.y).abs().mean()) for v in val) / len(val)
    assert after < 0.3 * before and after < 0.5 * box, (before, after, box)

    card = json.loads((out / "pixel_inn.card.json").read_text())
    assert card["data"]["lq_folders"] == [str(lq.resolve())] and card["data"]["pairs"] == 8
    assert card["data"]["train_images"] == 6 and card["data"]["val_images"] == 2
    for part, n in (("train", 6), ("validation", 2)):
        assert card["degradation"][part]["source"] == "given pairs" and card["degradation"][part]["pairs"] == n
    assert "ranges" not in json.dumps(card["degradation"])


def test_runs_repeat_bit_for_bit_resume_exactly_and_refuse_other_pairs(pairs, tmp_path):
    gt, lq = pairs
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run(pixel_argv(gt, lq, a, "--steps", "10"))
    run(pixel_argv(gt, lq, b, "--steps", "10"))
    assert max_weight_diff(a / "pixel_inn.safetensors", b / "pixel_inn.safetensors") == 0.0

    first = run(pixel_argv(gt, lq, c, "--steps", "10", "--stop-at", "5"))
    assert first["stopped"] and first["step"] == 5
    # the same names and sizes, another degradation (one pair changed): refused
    other = tmp_path / "lq_other"
    shutil.copytree(lq, other)
    victim = next(other.rglob("*.png"))
    Image.fromarray(255 - np.asarray(Image.open(victim).convert("RGB"))).save(victim)
    with pytest.raises(TrainingError, match=r"settings differ from the checkpoint's \(degradation: "):
        run(pixel_argv(gt, other, c, "--steps", "10", "--resume"))
    run(pixel_argv(gt, lq, c, "--steps", "10", "--resume"))
    assert max_weight_diff(a / "pixel_inn.safetensors", c / "pixel_inn.safetensors") == 0.0


def _broken(pairs, tmp_path, case):
    """A copy of the pairs' lq folder with one problem."""
    gt, lq = pairs
    bad = tmp_path / "lq_bad"
    shutil.copytree(lq, bad)
    first = sorted(bad.rglob("*.*"))[0]
    if case == "missing":
        first.unlink()
    elif case == "size":
        Image.new("RGB", (13, 12)).save(first)
    elif case == "twice":
        shutil.copy(first, first.with_suffix(".jpeg"))
    return gt, bad


@pytest.mark.parametrize("case, error, message", [
    ("missing", DatasetError, r"--lq-data .*lq_bad: 1 ground truth\(s\) without a pair \(expected the same relative "
                              r"path with any of \.png, \.jpg, \.jpeg, \.webp\): set0/part0/crop0\.png$"),
    ("size", DatasetError, r"--lq-data .*lq_bad: 1 pair\(s\) of the wrong size for x4: set0/part0/crop0\.webp is "
                           r"13x12, expected 12x12 \(ground truth 48x48 / 4\)$"),
    ("twice", DatasetError, r"--lq-data: expected one image per name in .*lq_bad .* found 1 name\(s\) twice: "
                            r"set0/part0/crop0\.(jpeg and set0/part0/crop0\.webp|webp and set0/part0/crop0\.jpeg)$"),
])
def test_pairs_that_do_not_fit_are_refused_before_any_file_is_written(pairs, tmp_path, case, error, message):
    gt, bad = _broken(pairs, tmp_path, case)
    out = tmp_path / "out"
    for kind in ("pixel-inn", "restorer"):
        argv = pixel_argv(gt, bad, out) if kind == "pixel-inn" else \
            ["restorer", "--data", str(gt), "--lq-data", str(bad), "--out", str(out), "--crop", "32", *QUIET]
        with pytest.raises(error, match=message):
            run(argv)
        assert not out.exists()


@pytest.mark.parametrize("extra, error, message", [
    *[([flag, *values], TrainingError, rf"^--lq-data: the given pairs are the degradation; expected no degradation "
                                       rf"option, got {flag} \(it would be ignored\)$")
      for flag, values in (("--blur-sigma", ["0.1", "10"]), ("--noise", ["0", "40"]), ("--jpeg", ["20", "95"]),
                           ("--jpeg-prob", ["1"]), ("--anisotropic-prob", ["0"]), ("--resize-modes", ["bicubic"]),
                           ("--val-degradation", ["medium"]))],  # their default values, given explicitly
    (["--crop", "30"], ConfigError, r"^--crop 30 must be a multiple of the INN's scale 4$"),
    (["--val-data", "VAL"], TrainingError, r"^--lq-data with --val-data: expected --val-lq-data"),
    (["--val-lq-data", "LQ"], TrainingError, r"^--val-lq-data: expected together with --val-data"),
    (["--small-images", "resize"], TrainingError, r"^--small-images resize: upscaling a ground truth would break"),
])
def test_options_that_do_not_go_with_pairs_are_refused_by_name(pairs, tmp_path, extra, error, message):
    gt, lq = pairs
    out = tmp_path / "out"
    extra = [{"VAL": str(gt), "LQ": str(lq)}.get(v, v) for v in extra]
    with pytest.raises(error, match=message):
        run(pixel_argv(gt, lq, out, *extra))
    assert not out.exists()


def test_the_estimator_and_a_lone_val_lq_data_are_refused(pairs, tmp_path):
    gt, lq = pairs
    out = tmp_path / "out"
    with pytest.raises(TrainingError, match=r"^estimator: --lq-data cannot train it: the teacher regresses the "
                                            r"degradation parameters"):
        run(["estimator", "--data", str(gt), "--lq-data", str(lq), "--out", str(out), *QUIET])
    with pytest.raises(TrainingError, match=r"^--val-lq-data: expected together with --lq-data"):
        run(["restorer", "--data", str(gt), "--val-data", str(gt), "--val-lq-data", str(lq), "--out", str(out), *QUIET])
    assert not out.exists()


def test_an_estimator_conditioned_inn_runs_the_estimator_on_the_given_y(pairs, tmp_path, monkeypatch):
    from indigo_core.estimator import DegradationEstimator, EstimatorConfig, save_estimator

    gt, lq = pairs
    est = tmp_path / "est.safetensors"
    torch.manual_seed(0)
    save_estimator(DegradationEstimator(EstimatorConfig.preset("small")), est)
    seen = []
    forward = DegradationEstimator.forward

    def recording(self, y, *args, **kwargs):
        seen.append(y.detach().clone())
        return forward(self, y, *args, **kwargs)

    monkeypatch.setattr(DegradationEstimator, "forward", recording)
    out = tmp_path / "cond"
    run(pixel_argv(gt, lq, out, "--steps", "2", "--estimator", str(est)))
    assert len(seen) == 2 + 1  # two training batches, one validation batch
    for y in seen:  # every value on the pairs' 16-level grid: the given y, not a synthesised one
        assert y.shape[-2:] == (8, 8)
        assert torch.allclose(y * 255 / LEVEL, (y * 255 / LEVEL).round(), atol=1e-4)
    assert json.loads((out / "pixel_inn.card.json").read_text())["estimator"] == str(est)


def test_restorer_and_latent_inn_train_on_pairs(pairs, tmp_path):
    gt, lq = pairs
    # separate validation folders: two of the pairs
    val_gt, val_lq = tmp_path / "val_gt", tmp_path / "val_lq"
    for f in sorted(gt.rglob("*.*"))[:2]:
        rel = f.relative_to(gt)
        (val_gt / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, val_gt / rel)
        q = next((lq / rel.parent).glob(f.stem + ".*"))
        (val_lq / rel.parent).mkdir(parents=True, exist_ok=True)
        shutil.copy(q, val_lq / rel.parent / q.name)
    out = tmp_path / "restorer"
    run(["restorer", "--data", str(gt), "--lq-data", str(lq), "--val-data", str(val_gt), "--val-lq-data", str(val_lq),
         "--out", str(out), "--crop", "32", "--batch-size", "4", "--steps", "30", "--width", "8", "--n-blocks", "1",
         "--lr", "3e-3", "--val-every", "30", *QUIET])
    rows = read_csv(out / "val_log.csv")
    assert float(rows[-1]["psnr"]) > float(rows[0]["psnr"]) + 3, rows  # step 0 is bicubic up(y)
    card = json.loads((out / "restorer.card.json").read_text())
    assert card["data"]["lq_folders"] == [str(lq.resolve()), str(val_lq.resolve())] and card["data"]["pairs"] == 10
    assert card["degradation"]["validation"]["pairs"] == 2

    from indigo_core.io.weights import read_weights_file
    from indigo_core.prior.weights import load_autoencoder
    from indigo_core.train.latent_inn import upsample_measurement

    vae = make_test_vae(tmp_path / "vae.safetensors", make_crops(tmp_path / "vae_crops"))
    out = tmp_path / "latent"
    run(["latent-inn", "--vae", str(vae), "--data", str(gt), "--lq-data", str(lq), "--val-count", "2", "--out",
         str(out), "--crop", "32", "--crops-per-image", "2", "--batch-size", "4", "--steps", "3", "--lr", "5e-3",
         "--val-every", "0", *TINY_INN, *QUIET])
    card = json.loads((out / "latent_inn.card.json").read_text())
    assert card["latent_pool"]["crops"] == 12 and card["degradation"]["train"]["source"] == "given pairs"
    # every pooled z_y is E(up(y)) of the given y of its crop (the crop's aligned pair)
    pool, _ = read_weights_file(out / "latents.safetensors", "indigo-latent-cache")
    ys = torch.stack([torch.from_numpy(degrade(x.permute(1, 2, 0).numpy())).permute(2, 0, 1) for x in pool["x"]])
    with torch.no_grad():
        zy = load_autoencoder(vae).encode(upsample_measurement(ys.float() / 255, (32, 32)))
    assert torch.allclose(zy, pool["zy"], atol=1e-4), float((zy - pool["zy"]).abs().max())


def _pair(gt, lq, name, lq_name=None, size=48, s=S, seed=0):
    """A random ground truth `gt/name` of size x size and its pair lq/`lq_name` (default: the same
    name), every s-th pixel of it."""
    x = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    for path, img in ((gt / name, x), (lq / (lq_name or name), x[::s, ::s])):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
    return x


def test_a_folder_of_pairs_inside_the_ground_truths_is_not_taken_for_ground_truths(tmp_path, caplog):
    """--data photos --lq-data photos/lr: the lr images are pairs only (not ground truths, nor held
    out); the same folder for both is refused, also at x1 where every image would pair with itself."""
    photos = tmp_path / "photos"
    for i, name in enumerate("abcdef"):
        _pair(photos, photos / "lr", f"{name}.png", size=128, seed=i)  # pairs of 32x32: not skipped as small
    sets = build_image_sets(photos, 32, val_count=2, lq_data=photos / "lr", scale=S)
    assert len(sets.train) == 4 and len(sets.val) == 2
    assert all(p.parent == photos for p in sets.train.files + sets.val.files)
    assert all(q.parent == photos / "lr" for q in sets.train.lq + sets.val.lq)
    # and the other way round: ground truths inside the folder of pairs are not pairs without a ground truth
    lr = tmp_path / "lr"
    _pair(lr / "hr", lr, "a.png")
    with caplog.at_level(logging.WARNING):
        sets = build_image_sets(lr / "hr", 32, val_count=0, lq_data=lr, scale=S)
    assert sets.train.lq == [lr / "a.png"] and "not used" not in caplog.text
    out = tmp_path / "out"
    for folder in (photos, photos / "lr"):
        with pytest.raises(DatasetError, match=r"^--lq-data: expected a folder of pairs apart from the ground "
                                               r"truths, got their folder .* itself"):
            run(["restorer", "--data", str(folder), "--lq-data", str(folder) + "/", "--scale", "1", "--out", str(out),
                 "--crop", "32", *QUIET])
    assert not out.exists()


def test_refusals_name_what_was_found_in_place_of_a_pair(tmp_path):
    gt, lq = tmp_path / "gt", tmp_path / "lq"
    _pair(gt, lq, "Sub/A.png", "sub/a.png")  # names compared as they are, case included
    _pair(gt, lq, "b.png", "b.bmp")  # not an image extension read
    _pair(gt, lq, "c.png")
    (lq / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    _pair(gt, lq, "d.jpg", size=96)
    Image.new("RGB", (16, 24)).save(lq / "d.jpg")  # 24 tall instead of 24 wide
    _pair(gt, lq, "e.png")
    with pytest.raises(DatasetError) as err:
        build_image_sets(gt, 32, val_count=0, lq_data=lq, scale=S)
    assert str(err.value) == (
        f"--lq-data {lq}: 2 ground truth(s) without a pair (expected the same relative path with any of .png, .jpg, "
        f".jpeg, .webp): Sub/A.png (found sub/a.png), b.png (found b.bmp); 1 pair(s) of the wrong size for x4: d.jpg "
        f"is 16x24, expected 24x24 (ground truth 96x96 / 4); 1 pair(s) not readable as images: c.png "
        f"(UnidentifiedImageError)")
    # two ground truths of one name: the message names the folder's own option
    shutil.copy(gt / "e.png", gt / "e.jpg")
    with pytest.raises(DatasetError, match=r"^--data: expected one image per name in .*gt .*: e\.jpg and e\.png$"):
        build_image_sets(gt, 32, val_count=0, lq_data=lq, scale=S)


def test_exif_orientation_is_applied_alike_to_sizes_and_pixels_on_both_sides(tmp_path):
    """A camera JPEG stored 64 wide x 48 tall with orientation 6 (shown 48 x 64) pairs with a PNG of
    the shown image; a pair made from the stored pixels (16 x 12) is refused as turned."""
    gt, lq, raw = tmp_path / "gt", tmp_path / "lq", tmp_path / "raw"
    for d in (gt, lq, raw):
        d.mkdir()
    stored = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(gt / "cam.jpg", exif=exif, quality=100)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(gt / "cam.jpg")).convert("RGB"))
    assert shown.shape == (64, 48, 3)
    # the pair as a PNG with no orientation, and as a PNG stored turned with orientation 6 itself
    Image.fromarray(shown[::S, ::S]).save(lq / "cam.png")
    Image.fromarray(shown[::S, ::S]).transpose(Image.Transpose.ROTATE_90).save(raw / "cam.png", exif=exif)
    for folder in (lq, raw):
        sets = build_image_sets(gt, 32, val_count=0, lq_data=folder, scale=S)
        assert sets.train.sizes == [(64, 48)]
        assert np.array_equal(sets.train.load(0), shown) and np.array_equal(sets.train.load_lq(0), shown[::S, ::S])
    Image.fromarray(stored[::S, ::S]).save(raw / "cam.png")
    with pytest.raises(DatasetError, match=r"cam\.png is 16x12, expected 12x16 \(ground truth 48x64 / 4\) \(turned by "
                                           r"a quarter: an EXIF orientation ignored on one side\?\)$"):
        build_image_sets(gt, 32, val_count=0, lq_data=raw, scale=S)


def test_symlinked_folders_are_not_entered_on_either_side_and_say_so(tmp_path, caplog):
    """Symlinked files and a symlinked --lq-data are read; a symlinked subfolder is not entered (on
    both sides alike), with a warning naming it: a pair "missing" there is explained."""
    gt, lq, store = tmp_path / "gt", tmp_path / "lq", tmp_path / "store"
    _pair(gt, lq, "a.png")
    _pair(gt, store, "sub/b.png")
    (lq / "sub").symlink_to(store / "sub", target_is_directory=True)
    (tmp_path / "lq_link").symlink_to(lq, target_is_directory=True)
    _pair(gt, store, "c.png", seed=1)
    (lq / "c.png").symlink_to(store / "c.png")
    with caplog.at_level(logging.WARNING), pytest.raises(DatasetError, match=r"without a pair .*: sub/b\.png$"):
        build_image_sets(gt, 32, val_count=0, lq_data=tmp_path / "lq_link", scale=S)
    assert "lq_link: 1 symlinked folder(s) not entered: sub" in caplog.text
    (gt / "sub").rename(tmp_path / "gt_sub")
    (gt / "sub").symlink_to(tmp_path / "gt_sub", target_is_directory=True)
    sets = build_image_sets(gt, 32, val_count=0, lq_data=tmp_path / "lq_link", scale=S)
    assert [p.name for p in sets.train.files] == ["a.png", "c.png"]
    assert np.array_equal(sets.train.load_lq(1), np.asarray(Image.open(store / "c.png")))


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "I;16"])
def test_measurements_in_any_mode_read_as_rgb(tmp_path, mode):
    """Grey, palette, RGBA (alpha dropped) and 16-bit grey pairs (the high byte) of an RGB ground truth."""
    gt, lq = tmp_path / "gt", tmp_path / "lq"
    x = _pair(gt, lq, "a.png")
    grey = x[::S, ::S, 1]
    img = {"L": lambda: Image.fromarray(grey), "P": lambda: Image.fromarray(grey).convert("P"),
           "RGBA": lambda: Image.fromarray(np.dstack([x[::S, ::S], np.zeros_like(grey)])),
           "I;16": lambda: Image.fromarray(grey.astype(np.uint16) * 256 + 255)}[mode]()
    img.save(lq / "a.png")
    want = x[::S, ::S] if mode == "RGBA" else np.repeat(grey[..., None], 3, axis=2)
    if mode == "P":  # the palette of a grey image holds its grey levels
        want = np.asarray(img.convert("RGB"))
    smp = TrainCrops(build_image_sets(gt, 32, val_count=0, lq_data=lq, scale=S).train, 48, seed=0, flips="none")[0]
    assert np.array_equal(as_uint8(smp.y), want)


def test_one_lq_folder_for_training_and_validation_pairs_warns_only_of_strays(tmp_path, caplog):
    """--lq-data L --val-lq-data L: each side's pairs used to be reported "not used" by the other."""
    gt, val, lq = tmp_path / "gt", tmp_path / "val", tmp_path / "lq"
    for i, name in enumerate(("a.png", "b.png")):
        _pair(gt, lq, name, seed=i)
    _pair(val, lq, "c.png", seed=2)
    with caplog.at_level(logging.WARNING):
        sets = build_image_sets(gt, 32, val_data=val, lq_data=lq, val_lq_data=lq, scale=S)
    assert [p.name for p in sets.train.lq] == ["a.png", "b.png"] and [p.name for p in sets.val.lq] == ["c.png"]
    assert "not used" not in caplog.text
    _pair(tmp_path / "elsewhere", lq, "stray.png", seed=3)  # a pair of neither side is still reported
    with caplog.at_level(logging.WARNING):
        build_image_sets(gt, 32, val_data=val, lq_data=lq, val_lq_data=lq, scale=S)
    assert caplog.text.count("stray.png") == 2 and "c.png" not in caplog.text and "a.png" not in caplog.text
