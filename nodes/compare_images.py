"""Compare Images: restored images side by side with the ground truth, labelled with PSNR, SSIM, LPIPS.

For judging an INN or a setting on synthetic degradations (Synthetic Degradation -> restore ->
compare). An image smaller than the reference (e.g. the measurement) is upsampled bicubically to
the reference size first, so it stands for the bicubic baseline; an image larger than the reference
or with another aspect ratio is refused. Metrics are the core's
(``indigo_core.metrics``): PSNR on RGB, SSIM on RGB (as scikit-image), LPIPS with the offline
backbone weights when they are installed (else reported as unavailable).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from ..indigo_core.errors import ShapeError
from ..indigo_core.guidance import check_aspect
from .common import CATEGORY
from .guidance_patch import bchw_to_image, image_to_bchw
from .host import io, metrics_weights_dir

LPIPS_CHOICES = ("alex", "vgg", "off")
MAX_IMAGES = 5
CAPTION_HEIGHT = 28


def _lpips_metric(net: str):
    """The LPIPS metric, or (None, why) when it is off or its weights are not installed."""
    if net == "off":
        return None, "off"
    from ..indigo_core.metrics import PerceptualWeightsMissing, load_lpips

    try:  # the indigo model folders first, then the core's own search order
        return load_lpips(net, weights_dir=metrics_weights_dir(net)), ""
    except PerceptualWeightsMissing:
        return None, "weights not installed (see the README, metrics)"


def _caption(panels: np.ndarray, texts: list[str], width: int) -> np.ndarray:
    """A strip of CAPTION_HEIGHT rows under ``panels`` (H, n*width, 3 uint8) with one text per panel."""
    from PIL import Image, ImageDraw, ImageFont

    strip = Image.new("RGB", (panels.shape[1], CAPTION_HEIGHT), (24, 24, 24))
    font = ImageFont.load_default()
    for k, text in enumerate(texts):
        cell = Image.new("RGB", (width, CAPTION_HEIGHT), (24, 24, 24))  # clips the text to its panel
        draw = ImageDraw.Draw(cell)
        for line, row in zip(text.split("\n")[:2], (2, 15)):
            draw.text((3, row), line, fill=(235, 235, 235), font=font)
        strip.paste(cell, (k * width, 0))
    return np.concatenate([panels, np.asarray(strip)], axis=0)


class CompareImages(io.ComfyNode):
    """Side-by-side comparison against a reference, with metrics as text."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        optional = [
            io.Image.Input(f"image_{k}", optional=True,
                           tooltip="Another image to compare (e.g. an unguided baseline or a second INN): the "
                                   "reference's size, or smaller with its aspect ratio (upsampled bicubically).")
            for k in range(2, MAX_IMAGES + 1)
        ]
        return io.Schema(
            node_id="INDIGO_CompareImages",
            display_name="Compare Images (PSNR / SSIM / LPIPS)",
            category=CATEGORY,
            description=("Puts up to five images side by side with the reference (ground truth), each labelled "
                         "with its PSNR, SSIM and LPIPS against the reference, and outputs the metrics as text. "
                         "Smaller images (a measurement) are upsampled bicubically first: the bicubic baseline."),
            inputs=[
                io.Image.Input("reference", tooltip="The ground truth x (the clean image the measurement was made "
                                                    "from). Its size is the comparison size."),
                io.Image.Input("image_1", tooltip="An image to judge, e.g. the restoration (VAE Decode of the guided "
                                                  "sampler) or the measurement itself (-> bicubic baseline)."),
                *optional,
                io.String.Input("labels", default="measurement, restored",
                                tooltip="Comma-separated names of image_1, image_2, ... for the captions and the "
                                        "table; missing names become 'image k'."),
                io.Combo.Input("lpips", options=list(LPIPS_CHOICES), default="alex",
                               tooltip="LPIPS backbone (alex: the paper's metric; vgg) or off. Needs the offline "
                                       "backbone weights; without them LPIPS is reported as unavailable."),
            ],
            outputs=[
                io.Image.Output("comparison", display_name="comparison",
                                tooltip="The images and then the reference side by side, captioned with their "
                                        "metrics (one row per batch item)."),
                io.String.Output("metrics", display_name="metrics",
                                 tooltip="A text table: PSNR (dB), SSIM and LPIPS of each image against the "
                                         "reference (means over the batch)."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, reference, image_1, labels: str, lpips: str, image_2=None, image_3=None,
                image_4=None, image_5=None) -> io.NodeOutput:
        from ..indigo_core.degradations.resize import resize_to
        from ..indigo_core.metrics import psnr, ssim

        ref = image_to_bchw(reference, "reference")
        B, _, H, W = ref.shape
        names = [n.strip() for n in (labels or "").split(",")]
        candidates = [image_1, image_2, image_3, image_4, image_5]
        metric, why = _lpips_metric(lpips)
        rows: list[dict[str, Any]] = []
        panels: list[torch.Tensor] = []
        for k, image in enumerate(candidates):
            if image is None:
                continue
            x = image_to_bchw(image, f"image_{k + 1}")
            if x.shape[0] not in (1, B):
                raise ShapeError(f"image_{k + 1}: expected a batch of {B} (the reference's) or 1, got {x.shape[0]}")
            x = x.expand(B, -1, -1, -1)
            h, w = int(x.shape[-2]), int(x.shape[-1])
            if h > H or w > W:
                raise ShapeError(f"image_{k + 1}: expected at most the reference's size {H}x{W} (a smaller image "
                                 f"is upsampled bicubically to it), got {h}x{w}")
            check_aspect(f"image_{k + 1}", (h, w), (H, W), "the reference")
            resized = (h, w) != (H, W)
            if resized:
                x = resize_to(x, (H, W), "bicubic").clamp(0.0, 1.0)
            name = names[k] if k < len(names) and names[k] else f"image {k + 1}"
            row = {"name": name, "psnr": psnr(x, ref), "ssim": ssim(x, ref), "lpips": None, "resized": resized}
            if metric is not None:
                row["lpips"] = metric(x.to(next(metric.parameters()).device), ref.to(next(metric.parameters()).device)).cpu()
            rows.append(row)
            panels.append(x)
        text = _table(rows, H, W, why)
        strips = []
        for b in range(B):
            tiles = [p[b] for p in panels] + [ref[b]]
            panel = (torch.cat(tiles, dim=-1).movedim(0, -1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            captions = [_row_caption(r, b) for r in rows] + ["reference\n(ground truth)"]
            strips.append(torch.from_numpy(_caption(panel, captions, W).copy()).float().div(255.0))
        comparison = torch.stack(strips).movedim(-1, 1)
        return io.NodeOutput(bchw_to_image(comparison), text, ui={"text": [text]})


def _fmt(v: Optional[float], digits: int) -> str:
    return "n/a" if v is None else ("inf" if v == float("inf") else f"{v:.{digits}f}")


def _row_caption(row: dict, b: int) -> str:
    lp = None if row["lpips"] is None else float(row["lpips"][b])
    return (f"{row['name']}\nPSNR {_fmt(float(row['psnr'][b]), 2)}  SSIM {_fmt(float(row['ssim'][b]), 3)}  "
            f"LPIPS {_fmt(lp, 3)}")


def _table(rows: list[dict], h: int, w: int, lpips_note: str) -> str:
    lines = [f"against the reference ({h}x{w}); means over the batch", "",
             "image | PSNR dB | SSIM | LPIPS", "--- | --- | --- | ---"]
    for r in rows:
        lp = None if r["lpips"] is None else float(r["lpips"].mean())
        name = r["name"] + (" (bicubic-upsampled)" if r["resized"] else "")
        lines.append(f"{name} | {_fmt(float(r['psnr'].mean()), 2)} | {_fmt(float(r['ssim'].mean()), 4)} | {_fmt(lp, 4)}")
    if lpips_note:
        lines += ["", f"LPIPS: {lpips_note}"]
    return "\n".join(lines)
