"""Compare Images: the side-by-side layout and the metrics it prints, against hand-computed values."""

from __future__ import annotations

import re

import torch


def _row(text: str, name: str) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if cells and cells[0].startswith(name):
            return cells
    raise AssertionError(f"no row {name!r} in\n{text}")


def test_compare_images_layout_and_metrics(comfy_inprocess) -> None:
    g = torch.Generator().manual_seed(0)
    ref = 0.1 + 0.7 * torch.rand(2, 32, 48, 3, generator=g)  # (B,H,W,C) in [0.1, 0.8]
    offset = ref + 0.1  # MSE exactly 0.01 -> PSNR 20 dB
    small = ref[:, ::2, ::2, :]  # 16x24: compared after bicubic upsampling
    out = comfy_inprocess.run_node("INDIGO_CompareImages", reference=ref, image_1=small, image_2=offset,
                                   image_3=ref.clone(), labels="half size, offset", lpips="off")
    comparison, text = out.outputs
    assert out.ui["text"] == [text]
    caption = comfy_inprocess.module("nodes.compare_images").CAPTION_HEIGHT
    assert comparison.shape == (2, 32 + caption, 48 * 4, 3)
    # panels in order (images, then the reference), exact up to 8-bit rounding
    assert torch.allclose(comparison[:, :32, 48:96], offset, atol=0.5 / 255 + 1e-6)
    assert torch.allclose(comparison[:, :32, 144:192], ref, atol=0.5 / 255 + 1e-6)

    assert _row(text, "offset")[1] == "20.00"
    same = _row(text, "image 3")  # no label given: named by its slot
    assert same[1] == "inf" and same[2] == "1.0000"
    core = comfy_inprocess.core
    from_core = core.metrics.psnr(
        comfy_inprocess.module("indigo_core.degradations.resize").resize_to(
            small.movedim(-1, 1), (32, 48), "bicubic").clamp(0, 1), ref.movedim(-1, 1)).mean()
    half = _row(text, "half size (bicubic-upsampled)")
    assert half[1] == f"{float(from_core):.2f}"
    assert re.search(r"LPIPS: off", text)
    assert all(r[3] == "n/a" for r in (half, same, _row(text, "offset")))
