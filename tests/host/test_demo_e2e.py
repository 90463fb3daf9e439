"""The demo end to end: scripts/demo.py through a real ComfyUI server on a crop of a bundled
photo, with the bundled models; its files and printed table are checked against metrics recomputed
here from the written images.

The acceptance measurement over the validation split is scripts/measure_defaults.py (README,
"Results with the bundled models": both guided modes beat bicubic by at least 0.5 dB PSNR and 0.05
LPIPS there). This test asserts the same on one crop with looser margins: each restoration beats
bicubic by MIN_PSNR_GAIN in PSNR and by MIN_LPIPS_GAIN in LPIPS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "scripts" / "demo.py"
WORKFLOW = ROOT / "workflows" / "api" / "indigo_demo_restore_compare.json"
PHOTO = ROOT / "assets" / "photos" / "gcompris_chambord.png"
CROP = 256
MIN_LPIPS_GAIN = 0.08   # LPIPS below bicubic (measured on this crop: 0.188 LatentINN, 0.174 PixelINN)
MIN_PSNR_GAIN = 0.3     # dB above bicubic (measured on this crop: 0.68 LatentINN, 0.68 PixelINN)


def _image(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)[None].float() / 255.0


def _row(text: str, name: str) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if cells and cells[0] == name:
            return cells
    raise AssertionError(f"no row {name!r} in\n{text}")


def _sampler_nodes(graph: dict) -> dict[str, dict]:
    return {node["_meta"]["title"]: node["inputs"] for node in graph.values()
            if node["class_type"] == "INDIGO_GuidedKSampler"}


def test_demo_workflow_uses_the_bundled_models_and_the_restore_defaults():
    """The demo graph and `python -m indigo_core.restore` run the same settings on the same files."""
    from indigo_core.restore import bundled
    from indigo_core.restore.pipeline import default_settings

    graph = json.loads(WORKFLOW.read_text())
    names = {node["class_type"]: node["inputs"] for node in graph.values()}
    assert names["INDIGO_LoadPrior"] == {"unet_name": bundled.PRIOR_UNET, "vae_name": bundled.PRIOR_VAE}
    assert names["INDIGO_DegradationEstimate"]["estimator_name"] == bundled.ESTIMATOR
    assert names["INDIGO_Stage1Restore"]["restorer_name"] == bundled.RESTORER
    assert names["INDIGO_SyntheticDegradation"]["preset"] == "medium"
    samplers = _sampler_nodes(graph)
    for title, mode, inn_file in (("LatentINN", "latent", bundled.LATENT_INN), ("PixelINN", "pixel", bundled.PIXEL_INN)):
        s, node = default_settings(mode), samplers[title]
        assert graph[node["inn"][0]]["inputs"]["inn_name"] == inn_file
        assert (node["steps"], node["denoise"], node["seed"], node["sampler_name"], node["scheduler"]) == \
            (s.steps, s.denoise, s.seed, s.sampler, s.scheduler), title
        assert (node["zeta"], node["w_dc"], node["w_p"], node["step_size"]) == (s.zeta, s.w_dc, s.w_p, s.step_size), title
        assert node["max_step"] == (s.max_step or 0.0) and node["colour_fix"] == s.colour_fix, title
        fixes = [n["inputs"] for n in graph.values()
                 if n["class_type"] == "INDIGO_ColourFix" and n["_meta"]["title"] == f"colour fix ({title})"]
        assert len(fixes) == 1 and fixes[0]["method"] == s.colour_fix, title
        assert fixes[0]["levels"] == s.colour_levels, title
        # the prior starts from, and the colour fix refers to, the stage-1 image the CLI uses
        if s.stage1 == "restorer":
            assert graph[node["start_image"][0]]["class_type"] == "INDIGO_Stage1Restore", title
            assert graph[fixes[0]["measurement"][0]]["class_type"] == "INDIGO_Stage1Restore", title
        else:
            assert "start_image" not in node and fixes[0]["measurement"] == node["measurement"], title
        assert node["start_from_measurement"] is True and node["cfg"] == 1.0, title
        assert s.latent_iterations == 1 and s.refine_lr == 0.0, "the node has no such widget"
        reg = graph[node["regulariser"][0]]["inputs"]
        if s.regulariser_end > 0:
            assert (reg["schedule"], reg["start"], reg["end"]) == ("fraction", 0.0, s.regulariser_end), title
        else:
            assert reg["schedule"] == "off", title


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_restores_a_crop_through_comfyui(tmp_path):
    from PIL import Image

    from indigo_core.guidance import upsample_measurement
    from indigo_core.metrics import load_lpips, psnr

    sys.path.insert(0, str(ROOT / "scripts"))
    import demo

    out = tmp_path / "demo"
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, str(DEMO), "--crop", str(CROP), "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("latent_inn.png", "pixel_inn.png", "comparison.png", "degraded.png", "metrics.md"):
        assert (out / name).is_file(), name
    assert "LatentINN" in proc.stdout and "PixelINN" in proc.stdout and "LPIPS" in proc.stdout

    demo.prepare_photo(PHOTO, CROP, tmp_path / "gt.png")
    gt = _image(tmp_path / "gt.png")
    y = _image(out / "degraded.png")
    assert y.shape[-2:] == (CROP // 4, CROP // 4)
    with Image.open(out / "comparison.png") as im:
        assert im.width == 6 * CROP and im.height > CROP  # six panels with their captions below
    assert "stage-1 restorer" in proc.stdout
    lpips = load_lpips("alex")
    bicubic = upsample_measurement(y, (CROP, CROP))
    base_p, base_l = float(psnr(bicubic, gt)), float(lpips(bicubic, gt))
    table = (out / "metrics.md").read_text()
    for name, row in (("latent_inn.png", "LatentINN"), ("pixel_inn.png", "PixelINN")):
        x = _image(out / name)
        assert x.shape == gt.shape, name
        p, lp = float(psnr(x, gt)), float(lpips(x, gt))
        cells = _row(table, row)
        # the server's table (computed before 8-bit saving) agrees with the saved files
        assert abs(float(cells[1]) - p) < 0.1 and abs(float(cells[3]) - lp) < 0.01, (cells, p, lp)
        gain_p, gain_l = p - base_p, base_l - lp
        assert gain_l >= MIN_LPIPS_GAIN and gain_p >= MIN_PSNR_GAIN, \
            f"{name}: PSNR {gain_p:+.2f} dB and LPIPS {-gain_l:+.4f} against bicubic"



def test_demo_checks_its_inputs_and_claims_its_own_output_folder(tmp_path, monkeypatch):
    """Before any server starts: a missing, unreadable or too large photo and a bad --crop are
    named; an output folder holding an earlier demo or in use by a running one is left alone (the
    next free -k folder is claimed), a lock left by a demo that died is taken over."""
    from PIL import Image

    sys.path.insert(0, str(ROOT / "scripts"))
    import demo

    for photo, match in ((tmp_path / "none.png", "no such file"), (tmp_path / "x.png", "not an image"),
                         (tmp_path / "big.png", "more than the demo restores")):
        if photo.name == "x.png":
            photo.write_text("not a png")
        elif photo.name == "big.png":
            Image.new("RGB", (1600, 1200)).save(photo)
        with pytest.raises(SystemExit, match=match):
            demo.prepare_photo(photo, None, tmp_path / "in.png")
    assert demo.prepare_photo(tmp_path / "big.png", 512, tmp_path / "in.png") == (512, 512)
    with pytest.raises(SystemExit):
        demo.main(["--crop", "16"])

    out = tmp_path / "demo"
    first = demo.free_out_dir(out, overwrite=False)  # empty: taken
    assert first == out and (out / demo.LOCK).read_text() == str(os.getpid())
    second = demo.free_out_dir(out, overwrite=False)  # in use by a running demo (this process)
    assert second == tmp_path / "demo-2"
    demo.release_out_dir(first)
    (out / "metrics.md").write_text("an earlier demo")
    (tmp_path / "demo-2" / demo.LOCK).write_text("999999999")  # its demo is gone
    assert demo.free_out_dir(out, overwrite=False) == tmp_path / "demo-2"
    assert demo.free_out_dir(out, overwrite=True) == out and (out / "metrics.md").read_text() == "an earlier demo"
