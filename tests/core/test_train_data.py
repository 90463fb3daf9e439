"""Training data: folder scanning, errors, small images, deterministic index-based sampling."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from indigo_core.errors import DatasetError
from indigo_core.train.data import (Degrader, ImageFolder, StepBatchSampler, TrainCrops, ValCrops, build_image_sets,
                                    collate, list_images, split_files)


def _png(path, w, h, seed=0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_list_images_recursive_extensions_and_hidden(tmp_path):
    _png(tmp_path / "a.png", 40, 40)
    _png(tmp_path / "sub" / "deeper" / "b.PNG", 40, 40)
    Image.new("RGB", (40, 40)).save(tmp_path / "sub" / "c.JPG")
    Image.new("RGB", (40, 40)).save(tmp_path / "d.webp")
    (tmp_path / "notes.txt").write_text("not an image")
    _png(tmp_path / ".hidden" / "e.png", 40, 40)
    names = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert names == ["a.png", "d.webp", "sub/c.JPG", "sub/deeper/b.PNG"]


def test_missing_and_empty_folders_raise(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(DatasetError, match="holds no images"):
        list_images(tmp_path / "empty")


def test_unreadable_files_are_skipped_or_reported(tmp_path, caplog):
    good = _png(tmp_path / "good.png", 40, 40)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with caplog.at_level(logging.WARNING):
        folder = ImageFolder([bad, good], crop=32)
    assert folder.files == [good]
    assert "broken.png" in caplog.text
    with pytest.raises(DatasetError, match="unreadable"):
        ImageFolder([bad], crop=32, root=tmp_path)


def test_small_images_skip_resize_error(tmp_path):
    small = _png(tmp_path / "small.png", 20, 50)
    big = _png(tmp_path / "big.png", 64, 48)
    assert ImageFolder([small, big], crop=32).files == [big]
    with pytest.raises(DatasetError, match="smaller than the 32x32 crop"):
        ImageFolder([small, big], crop=32, small="error")
    with pytest.raises(DatasetError, match="smaller than 32x32"):
        ImageFolder([small], crop=32)
    resized = ImageFolder([small], crop=32, small="resize")
    img = resized.load(0)
    assert min(img.shape[:2]) == 32 and img.shape[2] == 3 and img.dtype == np.uint8


def test_split_is_deterministic_disjoint_and_name_based(tmp_path):
    files = [_png(tmp_path / f"im{i:02d}.png", 33, 33, i) for i in range(20)]
    tr1, va1 = split_files(files, tmp_path, val_fraction=0.2)
    tr2, va2 = split_files(list(reversed(files)), tmp_path, val_fraction=0.2)
    assert va1 == va2 and len(va1) == 4 and sorted(tr1 + va1) == sorted(files)
    assert set(tr1).isdisjoint(va1)
    _, va3 = split_files(files, tmp_path, val_count=3)
    assert len(va3) == 3 and set(va3) <= set(va1)  # the same hash order, fewer taken
    with pytest.raises(DatasetError):
        split_files(files[:1], tmp_path, val_count=1)


def test_samples_depend_only_on_seed_and_global_index(tmp_path):
    for i in range(5):
        _png(tmp_path / f"im{i}.png", 48, 40, i)
    sets = build_image_sets(tmp_path, 32, val_count=1)
    assert len(sets.train) == 4 and sets.val is not None and len(sets.val) == 1
    deg = Degrader()  # the default training ranges
    ds = TrainCrops(sets.train, 32, seed=7, flips="hv", degrade=deg, param_names=("blur_sigma", "jpeg_quality"))
    a, b = ds[13], ds[13]
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.params, b.params)
    assert a.x.shape == (3, 32, 32) and a.y.shape == (3, 8, 8) and a.params.shape == (2,)
    other = TrainCrops(sets.train, 32, seed=8, flips="hv", degrade=deg, param_names=("blur_sigma", "jpeg_quality"))
    assert not torch.equal(other[13].y, a.y)
    # each epoch visits every training image once
    seen = [ds.image_index(i) for i in range(8)]
    assert sorted(seen[:4]) == [0, 1, 2, 3] and sorted(seen[4:]) == [0, 1, 2, 3]
    # validation samples are fixed
    val = ValCrops(sets.val, 32, seed=7, degrade=Degrader(preset="medium"))
    assert torch.equal(val[0].y, val[0].y)
    again = ValCrops(sets.val, 32, seed=7, degrade=Degrader(preset="medium"))  # a later validation pass
    assert torch.equal(again[0].x, val[0].x) and torch.equal(again[0].y, val[0].y)
    batch = collate([ds[i] for i in range(3)])
    assert batch["x"].shape == (3, 3, 32, 32) and batch["index"].tolist() == [0, 1, 2]


def test_step_batches_split_the_global_batch_across_ranks():
    one = list(StepBatchSampler(4, rank=0, world=1, start_step=0, total_steps=3))
    r0 = list(StepBatchSampler(2, rank=0, world=2, start_step=0, total_steps=3))
    r1 = list(StepBatchSampler(2, rank=1, world=2, start_step=0, total_steps=3))
    assert one == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert [a + b for a, b in zip(r0, r1)] == one
    assert list(StepBatchSampler(4, 0, 1, start_step=2, total_steps=3)) == [[8, 9, 10, 11]]


def test_cli_stops_with_status_2_and_a_clear_message_on_a_bad_folder(tmp_path, caplog):
    from indigo_core.train import main

    (tmp_path / "empty").mkdir()
    n = torch.get_num_threads()
    with caplog.at_level(logging.ERROR):
        rc = main(["pixel-inn", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "out"), "--no-progress"])
    torch.set_num_threads(n)
    assert rc == 2
    assert "DatasetError" in caplog.text and "holds no images" in caplog.text
    assert not (tmp_path / "out").exists()
