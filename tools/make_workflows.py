"""Regenerate the example workflows in workflows/ (UI format) and their .jpg thumbnails.

    .venv/bin/python tools/make_workflows.py            # all of them
    .venv/bin/python tools/make_workflows.py --only indigo_inn_info

Each graph is described below in a compact form (nodes with widget values by name, links by
output and input name), built in ComfyUI's real frontend (a headless chromium on a temporary
ComfyUI server with the pack, as tests/host/test_browser.py runs it) and saved with the frontend's
own serialisation, so the files are exactly what the graph editor writes. The thumbnail is the
graph as the editor draws it, with the workflow's title. Needs the test set-up (./scripts/test.sh
once: .venv, ComfyUI 0.3.75, chromium, playwright). Model and image names are the defaults users
get; the files themselves are not needed to build the graphs. Regenerating them is what the tool is
for: it replaces the files in workflows/ (tracked by git), each atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "host"))
sys.path.insert(0, str(ROOT / "scripts"))

import browser_helpers as bh  # noqa: E402
import demo  # noqa: E402  (scripts/demo.py: the restore defaults as node widgets)
import host_harness  # noqa: E402
from output_files import save_image, write_text  # noqa: E402  (scripts/output_files.py)

OUT = ROOT / "workflows"

# Default file names the workflows select (models/indigo/ and ComfyUI's input/ folder).
PRIOR_UNET = "indigo-prior-unet.safetensors"
PRIOR_VAE = "indigo-prior-vae.safetensors"
LATENT_INN = "indigo-latent-inn.safetensors"
PIXEL_INN = "indigo-pixel-inn-x4.safetensors"
ESTIMATOR = "indigo-estimator.safetensors"
RESTORER = "indigo-restorer-x4.safetensors"
SD15_CKPT = "v1-5-pruned-emaonly.safetensors"
MEASUREMENT = "indigo_measurement.png"  # a degraded, low-resolution photo (e.g. 128x128)
CLEAN_PHOTO = "indigo_photo.png"  # a clean photo (e.g. 512x512) for synthetic tests

GREEN, BLUE, PURPLE = "#232", "#223", "#323"
NOTE_SIZE = [380, 260]


def note(text: str, pos=(-420, 0), size=None) -> list:
    return ["note", "MarkdownNote", list(pos), {"text": text.strip()}, {"size": size or NOTE_SIZE}]


def sampler_widgets(**over) -> dict:
    w = {"seed": 0, "control_after_generate": "fixed", "steps": 30, "cfg": 1.0, "sampler_name": "euler",
         "scheduler": "normal", "denoise": 0.7, "start_from_measurement": True, "mode": "auto", "zeta": 0.3,
         "w_dc": 2.5, "w_p": 0.0, "step_size": 0.5, "max_step": 0.1, "grad_wrt": "z0", "guidance_start": 0.0,
         "guidance_end": 1.0}
    w.update(over)
    return w


IMAGE_NODE = {"size": [330, 380]}


def prior_nodes(y0: int = 420) -> list:
    return [["prior", "INDIGO_LoadPrior", [0, y0], {"unet_name": PRIOR_UNET, "vae_name": PRIOR_VAE}, {}]]


def prior_links(sampler: str, decoders=("dec",)) -> list:
    links = [["prior", "MODEL", sampler, "model"], ["prior", "CONDITIONING", sampler, "positive"],
             ["prior", "CONDITIONING", sampler, "negative"], ["prior", "VAE", sampler, "vae"]]
    links += [["prior", "VAE", d, "vae"] for d in decoders]
    return links


WORKFLOWS: dict[str, dict] = {}



def bundled_widgets(mode: str) -> dict:
    """The restore CLI's defaults for the bundled models as Guided KSampler widgets (scripts/demo.py
    maps them for the demo graph too). w_p stays 0 in these graphs: the LPIPS term needs the offline
    weights (see the pixel graph's note)."""
    return {**demo.sampler_widgets(demo.restore_defaults(mode)), "w_p": 0.0}


def bundled_fix(mode: str) -> dict:
    """The restore CLI's colour fix for `mode` as Colour Fix widgets."""
    s = demo.restore_defaults(mode)
    return {"method": s.colour_fix, "levels": s.colour_levels}


def bundled_regulariser(mode: str) -> dict:
    return demo.regulariser_widgets(demo.restore_defaults(mode))


BUNDLED_LATENT, BUNDLED_PIXEL = bundled_widgets("latent"), bundled_widgets("pixel")


def settings_text(mode: str) -> str:
    """The restore defaults of `mode` in words, for the notes (the graphs hold the same values)."""
    s = demo.restore_defaults(mode)
    guide = f"`zeta` {s.zeta:g}" if mode == "latent" else f"gradient steps of {s.step_size:g} (max {s.max_step:g})"
    reg = (f"regulariser in the first {round(100 * s.regulariser_end)}% of the steps" if s.regulariser_end > 0
           else "regulariser off")
    return f"{s.steps} steps, `denoise` {s.denoise:g}, {guide}, {reg}, wavelet Colour Fix with {s.colour_levels} levels"


def stage1_graph(mode: str, pos) -> tuple[list, list]:
    """(nodes, links) of the stage-1 image for the restore defaults of `mode`: Stage-1 Restore of
    the measurement into the sampler's start_image and the Colour Fix reference, or (stage1
    "bicubic") the measurement itself as the reference."""
    if demo.restore_defaults(mode).stage1 != "restorer":
        return [], [["img", "IMAGE", "fix", "measurement"]]
    return ([["s1", "INDIGO_Stage1Restore", list(pos), {"restorer_name": RESTORER}, {"color": GREEN}]],
            [["img", "IMAGE", "s1", "image"], ["s1", "image", "sam", "start_image"],
             ["s1", "image", "fix", "measurement"]])


S1_LATENT, S1_PIXEL = stage1_graph("latent", (360, 600)), stage1_graph("pixel", (360, 740))

WORKFLOWS["indigo_latent_inn_bundled_prior"] = {
    "title": "LatentINN restoration, bundled prior",
    "nodes": [
        note("""
### LatentINN restoration with the bundled prior
Restores a degraded photo x4 with **LatentINDIGO (Algorithm 2)**: every step, the prior's clean-latent
estimate is pulled towards the LatentINN's answer for the measurement (`zeta`).

1. **Load Image**: your degraded photo (any size; the output below is 512x512, so use a square one
   or change the latent's aspect to match).
2. Run. The guided sampler plots its data-consistency residual per step.

**Stage-1 Restore** first removes blur, noise and JPEG (DiffBIR's first stage): the sampler starts
from its encoding (`start_image`) and **Colour Fix** takes its low frequencies, while the guidance
works against the measurement itself. The settings are the ones measured best for the small bundled
prior (""" + settings_text("latent") + """); with your own SD model start from the
node defaults (the paper's). Nothing to download.
"""),
        ["img", "LoadImage", [0, 0], {"image": MEASUREMENT}, {**IMAGE_NODE, "title": "Load Image (measurement)"}],
        *prior_nodes(),
        ["inn", "INDIGO_LoadINN", [0, 580], {"inn_name": LATENT_INN}, {"color": PURPLE}],
        ["est", "INDIGO_DegradationEstimate", [0, 690], {"estimator_name": ESTIMATOR}, {}],
        ["reg", "INDIGO_Regulariser", [360, 420], bundled_regulariser("latent"), {}],
        ["lat", "EmptyLatentImage", [360, 240], {"width": 512, "height": 512, "batch_size": 1}, {}],
        ["sam", "INDIGO_GuidedKSampler", [720, 0], sampler_widgets(**BUNDLED_LATENT), {"color": GREEN}],
        ["dec", "VAEDecode", [1080, 0], {}, {}],
        ["fix", "INDIGO_ColourFix", [1080, 100], bundled_fix("latent"), {}],
        ["save", "SaveImage", [1080, 220], {"filename_prefix": "indigo/latent_inn"}, {"size": [420, 460]}],
        ["prev", "PreviewImage", [1080, 720], {}, {"title": "INN-inverse preview", "size": [420, 380]}],
        *S1_LATENT[0],
    ],
    "links": [
        ["img", "IMAGE", "sam", "measurement"], ["img", "IMAGE", "est", "image"],
        *prior_links("sam"), ["inn", "inn", "sam", "inn"], ["est", "degradation", "sam", "degradation"],
        ["reg", "regulariser", "sam", "regulariser"], ["lat", "LATENT", "sam", "latent_image"],
        ["sam", "latent", "dec", "samples"], ["dec", "IMAGE", "fix", "image"], *S1_LATENT[1],
        ["fix", "image", "save", "images"], ["sam", "inn_preview", "prev", "images"],
    ],
}

WORKFLOWS["indigo_pixel_inn_bundled_prior"] = {
    "title": "PixelINN x4 restoration, bundled prior",
    "nodes": [
        note("""
### PixelINN x4 restoration with the bundled prior
**LatentINDIGO (Algorithm 1)**: every step the estimate is decoded, split by the PixelINN into a
coarse part (compared with the measurement) and details, and corrected by a gradient step.
**INN Refine** adapts a private copy of the INN during the first half of the steps.

- The measurement must be exactly **output size / 4**: 128x128 for this 512x512 latent. A wrong size
  is flagged on the sampler before you queue.
- `w_p` (LPIPS term) is 0 here: it needs the offline LPIPS weights (README, "Metrics"). Set it to 1
  once they are installed, as in the paper.
- **Stage-1 Restore** cleans the measurement first; the sampler starts from it (`start_image`) and
  **Colour Fix** refers to it. Settings measured best for the small bundled prior:
  """ + settings_text("pixel") + """.
"""),
        ["img", "LoadImage", [0, 0], {"image": MEASUREMENT}, {**IMAGE_NODE, "title": "Load Image (measurement, 128x128)"}],
        *prior_nodes(),
        ["inn", "INDIGO_LoadINN", [0, 580], {"inn_name": PIXEL_INN}, {"color": BLUE}],
        ["est", "INDIGO_DegradationEstimate", [0, 690], {"estimator_name": ESTIMATOR}, {}],
        ["lat", "EmptyLatentImage", [360, 0], {"width": 512, "height": 512, "batch_size": 1}, {}],
        ["ref", "INDIGO_INNRefine", [360, 180], {"schedule": "fraction", "start": 0.0, "end": 0.5, "lr": 5e-5}, {}],
        ["reg", "INDIGO_Regulariser", [360, 600], bundled_regulariser("pixel"), {}],
        ["sam", "INDIGO_GuidedKSampler", [720, 0], sampler_widgets(**BUNDLED_PIXEL), {"color": GREEN}],
        ["dec", "VAEDecode", [1080, 0], {}, {}],
        ["fix", "INDIGO_ColourFix", [1080, 100], bundled_fix("pixel"), {}],
        ["save", "SaveImage", [1080, 220], {"filename_prefix": "indigo/pixel_inn"}, {"size": [420, 460]}],
        ["prev", "PreviewImage", [1080, 720], {}, {"title": "INN-inverse preview", "size": [420, 380]}],
        *S1_PIXEL[0],
    ],
    "links": [
        ["img", "IMAGE", "sam", "measurement"], ["img", "IMAGE", "est", "image"],
        *prior_links("sam"), ["inn", "inn", "sam", "inn"], ["est", "degradation", "sam", "degradation"],
        ["ref", "refine", "sam", "refine"], ["reg", "regulariser", "sam", "regulariser"],
        ["lat", "LATENT", "sam", "latent_image"], ["sam", "latent", "dec", "samples"],
        ["dec", "IMAGE", "fix", "image"], *S1_PIXEL[1],
        ["fix", "image", "save", "images"], ["sam", "inn_preview", "prev", "images"],
    ],
}

WORKFLOWS["indigo_sd15_checkpoint_apply_guidance"] = {
    "title": "Your SD1.5 checkpoint + INN (Apply INDIGO Guidance)",
    "nodes": [
        note("""
### Your SD1.5-family checkpoint with an INN
**Apply INDIGO Guidance** patches a clone of the checkpoint's MODEL; ComfyUI's own **KSampler** then
samples with the guidance (any sampler and scheduler; SamplerCustomAdvanced works too).

- **Load Checkpoint**: any SD1.5-family model (a restoration fine-tune works best).
- A **PixelINN** works with any VAE. A LatentINN must have been trained for this VAE's latents.
- The measurement is upscaled x4 and encoded to start from (`denoise` 0.6); its size must be output / 4.
- **Degradation Estimate** gives the INN the embedding of the measurement's degradation that the
  bundled INNs were trained with (an INN trained without an estimator: leave it out).
- Prompts help an SD model: describe the photo, keep negatives for blur and noise.
""", size=[400, 340]),
        ["ckpt", "CheckpointLoaderSimple", [0, 0], {"ckpt_name": SD15_CKPT}, {}],
        ["pos", "CLIPTextEncode", [360, 0], {"text": "a sharp, detailed, high quality photo"}, {"size": [380, 140]}],
        ["neg", "CLIPTextEncode", [360, 190], {"text": "blurry, noisy, jpeg artifacts, low quality"},
         {"size": [380, 140]}],
        ["img", "LoadImage", [0, 200], {"image": MEASUREMENT}, {**IMAGE_NODE, "title": "Load Image (measurement, 128x128)"}],
        ["inn", "INDIGO_LoadINN", [0, 640], {"inn_name": PIXEL_INN}, {"color": BLUE}],
        ["est", "INDIGO_DegradationEstimate", [0, 750], {"estimator_name": ESTIMATOR}, {}],
        ["up", "ImageScale", [360, 380], {"upscale_method": "bicubic", "width": 512, "height": 512, "crop": "disabled"}, {}],
        ["enc", "VAEEncode", [360, 560], {}, {}],
        ["guide", "INDIGO_ApplyGuidance", [780, 0],
         {k: v for k, v in sampler_widgets().items() if k in (
             "mode", "zeta", "w_dc", "w_p", "step_size", "max_step", "grad_wrt", "guidance_start", "guidance_end")},
         {"color": GREEN}],
        ["ks", "KSampler", [1140, 0], {"seed": 0, "control_after_generate": "fixed", "steps": 30, "cfg": 5.0,
                                       "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 0.6}, {}],
        ["dec", "VAEDecode", [1140, 330], {}, {}],
        ["save", "SaveImage", [1480, 0], {"filename_prefix": "indigo/sd15"}, {"size": [420, 460]}],
    ],
    "links": [
        ["ckpt", "MODEL", "guide", "model"], ["ckpt", "CLIP", "pos", "clip"], ["ckpt", "CLIP", "neg", "clip"],
        ["ckpt", "VAE", "guide", "vae"], ["ckpt", "VAE", "enc", "vae"], ["ckpt", "VAE", "dec", "vae"],
        ["img", "IMAGE", "guide", "measurement"], ["img", "IMAGE", "up", "image"], ["up", "IMAGE", "enc", "pixels"],
        ["inn", "inn", "guide", "inn"], ["img", "IMAGE", "est", "image"],
        ["est", "degradation", "guide", "degradation"], ["guide", "model", "ks", "model"],
        ["pos", "CONDITIONING", "ks", "positive"], ["neg", "CONDITIONING", "ks", "negative"],
        ["enc", "LATENT", "ks", "latent_image"],
        ["ks", "LATENT", "dec", "samples"], ["dec", "IMAGE", "save", "images"],
    ],
}

WORKFLOWS["indigo_tiled_large_image"] = {
    "title": "Tiled INDIGO: a large image",
    "nodes": [
        note("""
### Tiled INDIGO: restoring a large image
**Algorithm 3**: the denoiser runs on overlapping 64x64 latent tiles (512 px) merged with Gaussian
weights, the LatentINN guidance on the whole latent at once, and every VAE pass tile by tile.
Memory stays that of one tile, whatever the output size (here 1024x1024 from a 256x256 photo).

- Larger `tile_overlap` hides seams better but costs more tiles.
- Out of memory? Lower `vae_tile_size` first.
- `colour_fix` wavelet keeps the colours of the measurement.
""", size=[400, 280]),
        ["img", "LoadImage", [0, 0], {"image": MEASUREMENT}, {**IMAGE_NODE, "title": "Load Image (measurement, e.g. 256x256)"}],
        *prior_nodes(),
        ["inn", "INDIGO_LoadINN", [0, 580], {"inn_name": LATENT_INN}, {"color": PURPLE}],
        ["est", "INDIGO_DegradationEstimate", [0, 690], {"estimator_name": ESTIMATOR}, {}],
        ["lat", "EmptyLatentImage", [360, 240], {"width": 1024, "height": 1024, "batch_size": 1}, {}],
        ["til", "INDIGO_TiledSampler", [720, 0],
         {**sampler_widgets(colour_fix="wavelet"), "tile_size": 64, "tile_overlap": 16, "vae_tile_size": 64,
          "vae_tile_overlap": 16}, {"color": GREEN}],
        ["save", "SaveImage", [1080, 0], {"filename_prefix": "indigo/tiled"}, {"size": [460, 500]}],
        ["prev", "PreviewImage", [1080, 560], {}, {"title": "INN-inverse preview", "size": [420, 380]}],
    ],
    "links": [
        ["img", "IMAGE", "til", "measurement"], ["img", "IMAGE", "est", "image"], *prior_links("til", ()),
        ["inn", "inn", "til", "inn"], ["est", "degradation", "til", "degradation"],
        ["lat", "LATENT", "til", "latent_image"], ["til", "image", "save", "images"],
        ["til", "inn_preview", "prev", "images"],
    ],
}

WORKFLOWS["indigo_synthetic_compare"] = {
    "title": "Judge an INN: synthetic degradation, restore, compare",
    "nodes": [
        note("""
### Judge an INN on a synthetic degradation
A clean photo is degraded with the paper's **medium** level (blur, x4 downsampling, noise, JPEG), then
restored twice from the same prior and seed: without guidance (`mode` none) and with the LatentINN.
**Compare Images** shows bicubic upsampling, the unguided and the guided result next to the ground
truth, with PSNR, SSIM and LPIPS (LPIPS needs the offline weights, see the README).

Swap the INN (or the preset) to compare INNs on the same footing.
""", size=[400, 260]),
        ["img", "LoadImage", [0, 0], {"image": CLEAN_PHOTO}, {**IMAGE_NODE, "title": "Load Image (clean photo, 512x512)"}],
        ["deg", "INDIGO_SyntheticDegradation", [0, 420], {"preset": "medium", "scale": 4, "seed": 0}, {}],
        *prior_nodes(700),
        ["inn", "INDIGO_LoadINN", [0, 860], {"inn_name": LATENT_INN}, {"color": PURPLE}],
        ["est", "INDIGO_DegradationEstimate", [360, 0], {"estimator_name": ESTIMATOR}, {}],
        ["lat", "EmptyLatentImage", [360, 160], {"width": 512, "height": 512, "batch_size": 1}, {}],
        ["sam", "INDIGO_GuidedKSampler", [720, 0], sampler_widgets(), {"title": "INDIGO (LatentINN)",
                                                                        "color": GREEN}],
        ["base", "INDIGO_GuidedKSampler", [1080, 0], sampler_widgets(mode="none"),
         {"title": "Unguided baseline (mode none)"}],
        ["dec", "VAEDecode", [1440, 0], {}, {}],
        ["dec2", "VAEDecode", [1440, 110], {}, {}],
        ["cmp", "INDIGO_CompareImages", [1440, 220],
         {"labels": "measurement, unguided, INDIGO LatentINN", "lpips": "alex"}, {"size": [380, 330]}],
        ["save", "SaveImage", [1860, 0], {"filename_prefix": "indigo/compare"}, {"size": [700, 320]}],
    ],
    "links": [
        ["img", "IMAGE", "deg", "image"], ["img", "IMAGE", "cmp", "reference"],
        ["deg", "degraded", "sam", "measurement"], ["deg", "degraded", "base", "measurement"],
        ["deg", "degraded", "est", "image"], ["deg", "degraded", "cmp", "image_1"],
        *prior_links("sam", ("dec", "dec2")), ["prior", "MODEL", "base", "model"],
        ["prior", "CONDITIONING", "base", "positive"], ["prior", "CONDITIONING", "base", "negative"],
        ["prior", "VAE", "base", "vae"], ["inn", "inn", "sam", "inn"], ["inn", "inn", "base", "inn"],
        ["est", "degradation", "sam", "degradation"], ["lat", "LATENT", "sam", "latent_image"],
        ["lat", "LATENT", "base", "latent_image"], ["sam", "latent", "dec", "samples"],
        ["base", "latent", "dec2", "samples"], ["dec2", "IMAGE", "cmp", "image_2"],
        ["dec", "IMAGE", "cmp", "image_3"], ["cmp", "comparison", "save", "images"],
    ],
}

WORKFLOWS["indigo_inn_info"] = {
    "title": "Check an INN file",
    "nodes": [
        note("""
### What is in an INN file?
**Load INN** shows a badge with the INN's domain and scale as soon as a file is chosen;
**INN Info** lists its wavelet split, levels, lifting pairs and size after a run. Use it to check a
downloaded or trained file before wiring it into a sampler.
""", size=[380, 180]),
        ["inn", "INDIGO_LoadINN", [0, 0], {"inn_name": LATENT_INN}, {"color": PURPLE}],
        ["info", "INDIGO_INNInfo", [360, 0], {}, {"size": [420, 220]}],
    ],
    "links": [["inn", "inn", "info", "inn"]],
}


def thumbnail(png: Path, jpg: Path, title: str) -> None:
    """The screenshot of the graph, cropped to a 16:10 frame, with the title; 640x400 JPEG."""
    from PIL import Image, ImageDraw, ImageFont

    shot = Image.open(png).convert("RGB")
    w, h = 640, 400
    bar = 34
    scale = min(w / shot.width, (h - bar) / shot.height)
    shot = shot.resize((max(1, int(shot.width * scale)), max(1, int(shot.height * scale))), Image.LANCZOS)
    canvas = Image.new("RGB", (w, h), (32, 32, 36))
    canvas.paste(shot, ((w - shot.width) // 2, bar + (h - bar - shot.height) // 2))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, 0, w, bar], fill=(20, 24, 48))
    try:
        font = ImageFont.load_default(size=18)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        font = ImageFont.load_default()
    draw.text((12, 7), f"INDIGO · {title}", fill=(235, 235, 245), font=font)
    save_image(canvas, jpg, quality=88, optimize=True)


def _placeholder_image(path: Path, size: int) -> None:
    """A smooth colour field as a stand-in photo (the graphs only need the file to exist)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    rgb = np.stack([0.3 + 0.5 * x, 0.25 + 0.4 * y, 0.6 - 0.3 * x * y], axis=-1)
    Image.fromarray((rgb * 255).astype("uint8")).save(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="workflow name (repeatable)")
    args = parser.parse_args(argv)
    names = args.only or list(WORKFLOWS)
    unknown = sorted(set(names) - set(WORKFLOWS))
    if unknown:
        parser.error(f"unknown workflows {unknown}; known: {sorted(WORKFLOWS)}")
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="indigo-wf-") as tmp:
        server = host_harness.ComfyServer(host_harness.comfyui_path(), Path(tmp) / "base")
        try:
            bh.prepare_user_dir(server.base_dir)
            for image, size in ((MEASUREMENT, 128), (CLEAN_PHOTO, 512)):  # so Load Image has its previews
                _placeholder_image(server.base_dir / "input" / image, size)
            sys.path.insert(0, str(ROOT))
            from inn_files import write_random_inn  # stand-ins, so Load INN shows its badge

            for inn, preset in ((LATENT_INN, "latent-small"), (PIXEL_INN, "pixel-small")):
                write_random_inn(server.models_dir / inn, preset)
            browser = bh.Browser(server.url, viewport={"width": 2000, "height": 1250})
            try:
                browser.open()
                for name in names:
                    spec = WORKFLOWS[name]
                    graph = browser.js(bh.BUILD_GRAPH_JS, {"nodes": spec["nodes"], "links": spec["links"]})
                    graph.setdefault("extra", {})["indigo"] = {"title": spec["title"]}
                    graph["extra"].pop("ds", None)  # the view of the session that built it
                    write_text(OUT / f"{name}.json", json.dumps(graph, indent=1) + "\n")
                    browser.js(bh.FIT_VIEW_JS, True)
                    browser.page.wait_for_timeout(500)
                    clip = browser.js(bh.FIT_VIEW_JS, True)  # again: the view has settled
                    browser.page.wait_for_timeout(300)
                    png = Path(tmp) / f"{name}.png"
                    browser.page.screenshot(path=str(png), clip=clip)
                    thumbnail(png, OUT / f"{name}.jpg", spec["title"])
                    print(f"wrote workflows/{name}.json and .jpg ({len(graph['nodes'])} nodes)")
                errors = browser.errors()
                if errors:
                    print("page errors:", *errors, sep="\n  ", file=sys.stderr)
                    return 1
            finally:
                browser.close()
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
