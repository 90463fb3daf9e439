"""The evaluation CLI: metrics rows, tables rebuilt from the CSV, the grid, FID plumbing, bad
folders, the restore hook, and a 2-process torchrun run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indigo_core.errors import ConfigError, DatasetError
from indigo_core.eval import EvalOptions, OutputExistsError, evaluate, rebuild_table
from indigo_core.eval.__main__ import main as eval_main
from indigo_core.eval.report import read_csv
from indigo_core.metrics import psnr, ssim
from indigo_core.metrics.fid import frechet_distance

REPO = Path(__file__).resolve().parents[2]


def _save(t: torch.Tensor, path: Path) -> None:
    Image.fromarray((t[0] * 255).round().byte().permute(1, 2, 0).numpy()).save(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, photo_paths, load_photo):
    """4 ground truths (48x48 photo crops) and two 'methods': a blurred and a noisy version."""
    root = tmp_path_factory.mktemp("evaldata")
    gt, blur, noisy, lq = (root / n for n in ("gt", "blur", "noisy", "lq"))
    for d in (gt, blur, noisy, lq):
        d.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        x = load_photo(photo_paths[5 + 9 * i], 48)
        _save(x, gt / f"img{i}.png")
        _save(torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False), blur / f"img{i}.png")
        _save((x + 0.04 * torch.randn(x.shape, generator=g)).clamp(0, 1), noisy / f"img{i}.png")
        _save(torch.nn.functional.avg_pool2d(x, 4), lq / f"img{i}.png")
    return root


def _opts(folders, out, **kw):
    base = dict(gt=folders / "gt", out=out, results={"blur": folders / "blur", "noisy": folders / "noisy"},
                level="medium", metrics=("psnr", "ssim", "lpips", "dists", "fid"))
    base.update(kw)
    return EvalOptions(**base)


def _load(p: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).copy()).permute(2, 0, 1)[None].float() / 255


def test_eval_rows_tables_grid_and_rebuild(folders, tmp_path, metrics_weights_dir):
    out = tmp_path / "out"
    res = evaluate(_opts(folders, out, inputs=folders / "lq", weights_dir=metrics_weights_dir))
    files = res.files
    assert sorted(p.name for p in (out / "medium").iterdir()) == ["grid.png", "results.csv", "table.md"]
    rows = read_csv(files["results.csv"])
    per_image = [r for r in rows if r["file"] != "*"]
    assert len(per_image) == 8 and [r["method"] for r in per_image] == ["blur"] * 4 + ["noisy"] * 4
    # the numbers are those of the metric functions on the saved images
    r0 = per_image[0]
    gt0, blur0 = _load(folders / "gt" / "img0.png"), _load(folders / "blur" / "img0.png")
    assert r0["psnr"] == psnr(blur0, gt0).item() and r0["ssim"] == ssim(blur0, gt0).item()
    assert r0["psnr_y"] == psnr(blur0, gt0, y_channel=True).item()
    assert 0 < r0["lpips"] < 1 and 0 < r0["dists"] < 1
    # FID has no Inception weights here and 4 < 50 images: said, not silently dropped
    fid_rows = [r for r in rows if r["file"] == "*"]
    assert [r["fid"] for r in fid_rows] == [None, None] and all(r["note"].startswith("not available") for r in fid_rows)
    table = files["table.md"].read_text()
    assert "| Degradation | blur | noisy |" in table and "| medium |" in table
    mean_psnr = np.mean([r["psnr"] for r in per_image[:4]])
    assert f"{mean_psnr:.2f} / " in table
    assert "FID: not available" in table
    # the table rebuilt from the saved CSV is the same, byte for byte
    assert rebuild_table([files["results.csv"]]) == table
    assert eval_main(["--from-csv", str(files["results.csv"]), "--out", str(tmp_path / "rebuilt")]) == 0
    assert (tmp_path / "rebuilt" / "table.md").read_text() == table
    # the grid: input, two methods, ground truth, labelled
    grid = Image.open(files["grid.png"])
    assert grid.width > 4 * 160 and grid.height > 4 * 160
    # outputs are never replaced silently
    with pytest.raises(OutputExistsError, match="--overwrite"):
        evaluate(_opts(folders, out, metrics=("psnr",)))
    assert evaluate(_opts(folders, out, metrics=("psnr",), overwrite=True)) is not None
    assert eval_main(["--from-csv", str(files["results.csv"]), "--out", str(tmp_path / "rebuilt")]) == 2


def test_lpips_network_is_recorded_and_tables_never_mix_networks(folders, tmp_path, metrics_weights_dir):
    """LPIPS values differ by network (alex and vgg score the same pair differently); the CSV used
    not to record which one scored it, so tables rebuilt from CSVs of both averaged them silently."""
    res = {}
    for net in ("alex", "vgg"):
        res[net] = evaluate(_opts(folders, tmp_path / net, metrics=("psnr", "lpips"), lpips_net=net,
                                  weights_dir=metrics_weights_dir, grid_rows=1, results={"blur": folders / "blur"},
                                  level="medium" if net == "alex" else "severe"))
    alex, vgg = (read_csv(res[n].files["results.csv"]) for n in ("alex", "vgg"))
    assert {r["lpips_net"] for r in alex if r["file"] != "*"} == {"alex"}
    assert {r["lpips_net"] for r in vgg if r["file"] != "*"} == {"vgg"}
    assert [r["lpips"] for r in alex if r["file"] != "*"] != [r["lpips"] for r in vgg if r["file"] != "*"]
    table = res["vgg"].files["table.md"].read_text()
    assert "## PSNR (dB) / LPIPS (vgg), the paper's layout" in table and "| LPIPS (vgg) |" in table
    with pytest.raises(DatasetError, match=r"LPIPS was scored with different networks \(alex in medium/blur; "
                                           r"vgg in severe/blur\); expected one network per table"):
        rebuild_table([res["alex"].files["results.csv"], res["vgg"].files["results.csv"]])
    # a CSV written before the column existed still reads, and the header says what it knows
    old = tmp_path / "old.csv"
    lines = res["alex"].files["results.csv"].read_text().splitlines()
    old.write_text("\n".join(l.rsplit(",", 1)[0] for l in lines) + "\n")
    assert "lpips_net" not in old.read_text()
    assert "| LPIPS |" in rebuild_table([old])
    assert "LPIPS (vgg; 4 rows do not record it)" in rebuild_table([old, res["vgg"].files["results.csv"]])


def test_table_spans_levels_from_several_csvs(folders, tmp_path):
    csvs = []
    for level in ("severe", "mild"):
        res = evaluate(_opts(folders, tmp_path, level=level, metrics=("psnr",), grid_rows=1))
        csvs.append(res.files["results.csv"])
    table = rebuild_table(csvs)
    lines = table.splitlines()
    mild = next(i for i, l in enumerate(lines) if l.startswith("| mild |"))
    severe = next(i for i, l in enumerate(lines) if l.startswith("| severe |"))
    assert mild < severe  # the paper's level order, whatever the CSV order
    assert "- / -" not in table and " / -" in table  # no LPIPS column computed: shown as '-'


def test_table_from_csvs_refuses_rows_it_would_count_twice(folders, tmp_path):
    """The same CSV given twice, or two runs of one level and method, used to be merged silently:
    'Images 8' for 4 images, or the means of two different runs blended into one row."""
    a = evaluate(_opts(folders, tmp_path / "a", metrics=("psnr",), grid_rows=1)).files["results.csv"]
    b = evaluate(_opts(folders, tmp_path / "b", results={"blur": folders / "noisy"}, metrics=("psnr",),
                       grid_rows=1)).files["results.csv"]
    with pytest.raises(DatasetError, match=r"level 'medium', method 'blur', image 'img0.png' appears twice in"):
        rebuild_table([a, a])
    with pytest.raises(DatasetError, match=r"method 'blur', image 'img0.png' appears in both .*a/medium/results.csv "
                                           r"and .*b/medium/results.csv"):
        rebuild_table([a, b])
    assert eval_main(["--from-csv", str(a), str(a), "--out", str(tmp_path / "t")]) == 2
    assert not (tmp_path / "t").exists()
    # distinct levels or methods still combine
    c = evaluate(_opts(folders, tmp_path / "c", level="mild", metrics=("psnr",), grid_rows=1)).files["results.csv"]
    assert "| medium | blur | 4 |" in rebuild_table([a, c]) and "| mild | blur | 4 |" in rebuild_table([a, c])


def test_fid_is_computed_when_a_feature_net_is_given(folders, tmp_path):
    def colour_stats(x):  # a tiny stand-in feature net: per-channel means and stds
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)

    res = evaluate(_opts(folders, tmp_path, metrics=("psnr", "fid"), fid_min_images=3), fid_extractor=colour_stats)
    fid_row = next(r for r in res.rows if r["file"] == "*" and r["method"] == "noisy")
    real = np.stack([colour_stats(_load(folders / "gt" / f"img{i}.png"))[0].double().numpy() for i in range(4)])
    fake = np.stack([colour_stats(_load(folders / "noisy" / f"img{i}.png"))[0].double().numpy() for i in range(4)])
    want = frechet_distance(real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False))
    assert fid_row["fid"] == pytest.approx(want, rel=1e-9) and fid_row["note"] == ""
    res = evaluate(_opts(folders, tmp_path / "b", metrics=("fid",), fid_min_images=10), fid_extractor=colour_stats)
    assert "not available: 4 images < 10" in res.table


def test_bad_folders_get_clear_errors(folders, tmp_path, capsys, metrics_weights_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match=r"ground-truth folder .*empty.*: empty"):
        evaluate(_opts(folders, tmp_path / "o", gt=empty, metrics=("psnr",)))
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for i in range(4):
        (renamed / (f"img{i}.png" if i else "other.png")).write_bytes((folders / "blur" / f"img{i}.png").read_bytes())
    with pytest.raises(DatasetError, match=r"missing 1 ground-truth names: img0; 1 names not among the ground "
                                           r"truths: other"):
        evaluate(_opts(folders, tmp_path / "o", results={"r": renamed}, metrics=("psnr",)))
    small = tmp_path / "small"
    small.mkdir()
    for i in range(4):
        im = Image.open(folders / "blur" / f"img{i}.png")
        (im.resize((32, 32)) if i == 2 else im).save(small / f"img{i}.png")
    with pytest.raises(DatasetError, match=r"img2.png is 32x32, ground truth img2.png is 48x48"):
        evaluate(_opts(folders, tmp_path / "o", results={"s": small}, metrics=("psnr",)))
    with pytest.raises(DatasetError, match="not a folder"):
        evaluate(_opts(folders, tmp_path / "o", results={"x": tmp_path / "nope"}, metrics=("psnr",)))
    with pytest.raises(ConfigError, match="metrics"):
        evaluate(_opts(folders, tmp_path / "o", metrics=("psnr", "niqe")))
    tiny_gt, tiny_res = tmp_path / "tiny_gt", tmp_path / "tiny_res"
    for d in (tiny_gt, tiny_res):
        d.mkdir()
        Image.new("RGB", (20, 20), (90, 120, 150)).save(d / "t.png")
    with pytest.raises(DatasetError, match=r"tiny_res/t.png: LPIPS-alex: expected H, W >= 31, got 20x20"):
        evaluate(_opts(folders, tmp_path / "o", gt=tiny_gt, results={"t": tiny_res}, metrics=("lpips",),
                       weights_dir=metrics_weights_dir))
    # the CLI turns them into a message and exit status 2
    rc = eval_main(["--gt", str(empty), "--results", f"a={folders / 'blur'}", "--out", str(tmp_path / "o"),
                    "--weights-dir", str(metrics_weights_dir)])  # so the folder, not the weights lookup, fails
    assert rc == 2 and "empty" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_results_folder_whose_path_holds_an_equals_sign(folders, tmp_path, capsys):
    """--results accepts a bare folder; one named like runs/lr=1e-4 used to be split at '=' into a
    method 'runs/lr' with folder '1e-4' ('not a folder')."""
    odd = tmp_path / "sweep" / "lr=1e-4"
    odd.mkdir(parents=True)
    for p in sorted((folders / "blur").glob("*.png")):
        (odd / p.name).write_bytes(p.read_bytes())
    rc = eval_main(["--gt", str(folders / "gt"), "--results", str(odd), f"noisy={folders / 'noisy'}",
                    "--metrics", "psnr", "--grid-rows", "1", "--out", str(tmp_path / "o")])
    assert rc == 0, capsys.readouterr().err
    rows = read_csv(tmp_path / "o" / "custom" / "results.csv")
    assert [r["method"] for r in rows if r["file"] != "*"] == ["lr=1e-4"] * 4 + ["noisy"] * 4
    # NAME=DIR still splits at the first '=' when that names a folder
    rc = eval_main(["--gt", str(folders / "gt"), "--results", f"b={odd}", "--metrics", "psnr", "--grid-rows", "1",
                    "--out", str(tmp_path / "o2")])
    assert rc == 0 and {r["method"] for r in read_csv(tmp_path / "o2" / "custom" / "results.csv")} == {"b"}


def _write_png16(path: Path, arr: np.ndarray) -> None:
    """A 16-bit RGB/RGBA PNG (Pillow cannot write one); rows cycle through the five PNG filters
    (None, Sub, Up, Average, Paeth) so that the reader's unfiltering is exercised."""
    import struct
    import zlib

    h, w, c = arr.shape
    bpp = 2 * c
    prev, raw = None, b""
    for y in range(h):
        x = np.frombuffer(arr[y].astype(">u2").tobytes(), np.uint8).astype(np.int32)
        up = prev if prev is not None else np.zeros_like(x)
        left = np.concatenate([np.zeros(bpp, np.int32), x[:-bpp]])
        ul = np.concatenate([np.zeros(bpp, np.int32), up[:-bpp]])
        p = left + up - ul
        pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, ul))
        pred = (np.zeros_like(x), left, up, (left + up) // 2, paeth)[y % 5]
        raw += bytes([y % 5]) + ((x - pred) % 256).astype(np.uint8).tobytes()
        prev = x

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2 if c == 3 else 6, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def test_16_bit_colour_images_are_read_at_8_bits_and_say_so(folders, tmp_path, caplog):
    """Pillow reads 16-bit RGB(A) PNGs and TIFFs at 8 bits (the high byte): such a file loads as its
    high byte over 255, and the loss is reported once per folder (it used to be silent while the
    docstring promised 16-bit precision)."""
    import tifffile

    from indigo_core.eval.folders import load_image

    a8 = np.asarray(Image.open(folders / "gt" / "img0.png").convert("RGB")).astype(np.float64)
    rng = np.random.default_rng(0)
    a16 = np.clip(a8 * 257 + rng.uniform(-128, 128, a8.shape), 0, 65535).round().astype(np.uint16)
    high = torch.from_numpy((a16 >> 8) / 255.0).permute(2, 0, 1)[None].float()
    files = {"rgb.png": lambda f: _write_png16(f, a16),
             "rgba.png": lambda f: _write_png16(f, np.dstack([a16, a16[..., :1]])),
             "le.tif": lambda f: tifffile.imwrite(f, a16, photometric="rgb", rowsperstrip=7),
             "be.tif": lambda f: tifffile.imwrite(f, a16, photometric="rgb", byteorder=">")}
    for name, write in files.items():
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        write(folder / name)
        caplog.clear()
        with caplog.at_level("WARNING", logger="indigo_core.eval"):
            got = load_image(folder / name)
            again = load_image(folder / name)
        torch.testing.assert_close(got, high, atol=1e-7, rtol=0, msg=name)
        torch.testing.assert_close(again, got, msg=name)
        warnings = [r for r in caplog.records if "16-bit-per-channel colour image" in r.getMessage()]
        assert len(warnings) == 1 and name in warnings[0].getMessage(), name
    # an 8-bit image says nothing
    caplog.clear()
    with caplog.at_level("WARNING", logger="indigo_core.eval"):
        load_image(folders / "gt" / "img0.png")
    assert "16-bit" not in caplog.text


def test_exif_orientation_is_applied_to_sizes_and_pixels(folders, tmp_path):
    """A JPEG whose EXIF says "turned a quarter" is scored as it is shown (as ComfyUI's Load Image
    reads it): its size is the turned one and its pixels are turned, so a result made from the
    shown image matches it; it used to be read as stored."""
    from indigo_core.eval.folders import image_size, load_image

    shown = np.asarray(Image.open(folders / "gt" / "img0.png").convert("RGB"))[:, :40]  # not square
    stored = np.ascontiguousarray(np.rot90(shown, 1))  # orientation 6: turn the stored image 90 degrees clockwise to show it
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "turned.png", exif=exif)
    assert image_size(tmp_path / "turned.png") == (shown.shape[1], shown.shape[0])
    got = load_image(tmp_path / "turned.png")
    want = torch.from_numpy(shown.copy()).permute(2, 0, 1)[None].float() / 255.0
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    # an image without orientation is read as stored
    Image.fromarray(stored).save(tmp_path / "plain.png")
    assert image_size(tmp_path / "plain.png") == (stored.shape[1], stored.shape[0])


def test_make_inputs_alone_writes_the_degraded_inputs(folders, tmp_path):
    """README's first evaluation step: --make-inputs without methods only writes the inputs, and
    says so once (the printed line; not again on stderr through logging). Run as the command is,
    in a process of its own, so that its logging reaches stderr as a user sees it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "indigo_core.eval", "--gt", str(folders / "gt"), "--level", "medium",
                           "--make-inputs", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote the medium inputs" in proc.stdout
    both = proc.stdout + proc.stderr
    inputs = tmp_path / "medium" / "inputs"
    assert both.count(str(inputs)) == 1 and len(re.findall(r"wrote .*inputs", both)) == 1, both
    lq = sorted(inputs.glob("*.png"))
    assert len(lq) == 4 and Image.open(lq[0]).size == (12, 12)
    assert not (tmp_path / "medium" / "results.csv").exists()
    assert eval_main(["--gt", str(folders / "gt"), "--level", "medium", "--make-inputs", "--out", str(tmp_path)]) == 2


def test_make_inputs_and_restore_hook(folders, tmp_path):
    upscale = ("import sys, pathlib; from PIL import Image; i, o = map(pathlib.Path, sys.argv[1:]); "
               "[Image.open(p).resize((Image.open(p).width * 4, Image.open(p).height * 4), Image.BICUBIC)"
               ".save(o / p.name) for p in sorted(i.glob('*.png'))]")
    cmd = f"{sys.executable} -c \"{upscale}\" {{input}} {{output}}"
    res = evaluate(_opts(folders, tmp_path, results={}, level="mild", make_inputs=True, restore={"bicubic": cmd},
                         metrics=("psnr",)))
    lq = sorted((tmp_path / "mild" / "inputs").glob("*.png"))
    assert len(lq) == 4 and Image.open(lq[0]).size == (12, 12)
    rows = [r for r in res.rows if r["file"] != "*"]
    assert [r["method"] for r in rows] == ["bicubic"] * 4 and all(12 < r["psnr"] < 60 for r in rows), rows
    with pytest.raises(Exception, match="exited with 3"):
        evaluate(_opts(folders, tmp_path / "f", results={}, level="mild", make_inputs=True,
                       restore={"bad": f"{sys.executable} -c \"import sys; sys.exit(3)\" {{input}} {{output}}"},
                       metrics=("psnr",)))


def test_overwrite_never_scores_an_earlier_runs_images_and_bad_options_fail_first(folders, tmp_path, monkeypatch):
    """--overwrite starts the restored folder afresh (a command that writes nothing is an error, not
    the old table again); a bad device, missing weights and a bad grid size are refused before any
    input is made or command runs."""
    copy = f"{sys.executable} -c \"import shutil, sys; [shutil.copy(p, sys.argv[2]) for p in sys.argv[3:]]\" " \
           f"{{input}} {{output}} " + " ".join(str(p) for p in sorted((folders / "blur").glob("*.png")))
    evaluate(_opts(folders, tmp_path, results={}, make_inputs=True, restore={"m": copy}, metrics=("psnr",)))
    silent = f"{sys.executable} -c \"pass\" {{input}} {{output}}"
    with pytest.raises(Exception, match=r"restore command for 'm' wrote nothing"):
        evaluate(_opts(folders, tmp_path, results={}, make_inputs=True, restore={"m": silent}, metrics=("psnr",),
                       overwrite=True))
    marker = tmp_path / "ran"
    touch = f"{sys.executable} -c \"import pathlib, sys; pathlib.Path(sys.argv[3]).touch()\" {{input}} {{output}} {marker}"
    for bad, match in ((dict(device="cuda:7" if torch.cuda.is_available() else "cuda"), "--device"),
                       (dict(device="tpu0"), r"--device: expected a torch device"),
                       (dict(grid_cell=0), r"--grid-cell >= 16")):
        with pytest.raises(ConfigError, match=match):
            evaluate(_opts(folders, tmp_path / "b", results={}, make_inputs=True, restore={"t": touch},
                           metrics=("psnr",), **bad))
    monkeypatch.delenv("INDIGO_METRICS_DIR", raising=False)
    monkeypatch.delenv("INDIGO_MODELS_DIR", raising=False)
    import indigo_core.metrics.weights as W

    monkeypatch.setattr(W, "PACK_ROOT", tmp_path / "pack")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(Exception, match="lpips_alex_backbone.safetensors not found"):
        evaluate(_opts(folders, tmp_path / "b", results={}, make_inputs=True, restore={"t": touch},
                       metrics=("psnr", "lpips")))
    assert not marker.exists() and not (tmp_path / "b").exists()


def test_torchrun_two_ranks_match_one_process(folders, tmp_path):
    single = evaluate(_opts(folders, tmp_path / "one", metrics=("psnr", "ssim"), grid_rows=2))
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "indigo_core.eval",
           "--gt", str(folders / "gt"), "--results", f"blur={folders / 'blur'}", f"noisy={folders / 'noisy'}",
           "--level", "medium", "--metrics", "psnr,ssim", "--grid-rows", "2", "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("| Degradation |") == 2  # one table (two header lines), printed by rank 0 only
    two = tmp_path / "two" / "medium"
    assert sorted(p.name for p in two.iterdir()) == ["grid.png", "results.csv", "table.md"]
    assert read_csv(two / "results.csv") == read_csv(single.files["results.csv"])
    assert (two / "table.md").read_text() == single.table
