"""The demo end to end: scripts/demo.py through a real ComfyUI server on a small crop of a bundled
photo, with the bundled models, and the first acceptance point checked on its outputs.

The acceptance itself (14 validation photos, 256x256, +0.5 dB PSNR and -0.05 LPIPS against bicubic)
is scripts/measure_defaults.py; one 128x128 crop varies more than a mean over 14 photos, so the
margins here are looser (MIN_PSNR_GAIN, MIN_LPIPS_GAIN).
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
CROP = 128
MIN_PSNR_GAIN = 0.25    # dB over bicubic (acceptance: 0.5 on the validation mean)
MIN_LPIPS_GAIN = 0.025  # LPIPS below bicubic (acceptance: 0.05 on the validation mean)


def _image(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)[None].float() / 255.0


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
    assert names["INDIGO_SyntheticDegradation"]["preset"] == "medium"
    samplers = _sampler_nodes(graph)
    for title, mode, inn_file in (("LatentINN", "latent", bundled.LATENT_INN), ("PixelINN", "pixel", bundled.PIXEL_INN)):
        s, node = default_settings(mode), samplers[title]
        assert graph[node["inn"][0]]["inputs"]["inn_name"] == inn_file
        assert (node["steps"], node["denoise"], node["seed"], node["sampler_name"], node["scheduler"]) == \
            (s.steps, s.denoise, s.seed, s.sampler, s.scheduler), title
        assert (node["zeta"], node["w_dc"], node["w_p"], node["step_size"]) == (s.zeta, s.w_dc, s.w_p, s.step_size), title
        assert node["max_step"] == (s.max_step or 0.0) and node["colour_fix"] == s.colour_fix, title
        assert node["start_from_measurement"] is True and node["cfg"] == 1.0, title
        assert s.latent_iterations == 1 and s.refine_lr == 0.0, "the node has no such widget"
        reg = graph[node["regulariser"][0]]["inputs"]
        if s.regulariser_end > 0:
            assert (reg["schedule"], reg["start"], reg["end"]) == ("fraction", 0.0, s.regulariser_end), title
        else:
            assert reg["schedule"] == "off", title


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_restores_a_crop_better_than_bicubic(tmp_path):
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
        assert im.width == 5 * CROP and im.height > CROP  # five panels with their captions below
    lpips = load_lpips("alex")
    bicubic = upsample_measurement(y, (CROP, CROP))
    base_p, base_l = float(psnr(bicubic, gt)), float(lpips(bicubic, gt))
    for name in ("latent_inn.png", "pixel_inn.png"):
        x = _image(out / name)
        assert x.shape == gt.shape, name
        gain_p, gain_l = float(psnr(x, gt)) - base_p, base_l - float(lpips(x, gt))
        assert gain_p >= MIN_PSNR_GAIN and gain_l >= MIN_LPIPS_GAIN, \
            f"{name}: PSNR {gain_p:+.2f} dB and LPIPS {-gain_l:+.4f} against bicubic"

