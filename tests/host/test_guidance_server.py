"""Full graphs through a real ComfyUI server's /prompt: Guided KSampler, Apply INDIGO Guidance +
core KSampler, Tiled INDIGO; and every bad-input case comes back as the pack's own error.

Models are files loaded by ComfyUI's own loaders, as a user's would be: a tiny UNet in SD's layout
that UNETLoader detects as SD2.x (models/diffusion_models/), a TAESD-layout VAE (models/vae/),
LotusConditioning (a core node) for the CONDITIONING, small random INNs in models/indigo/, and the
measurements as PNGs through LoadImage. (NaN/inf images cannot be built from core nodes; that case
runs the same node code in-process in test_guidance_errors.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import guidance_helpers as gh
import models as M
from host_harness import history_error

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

UNET = "indigo-guidance-test-unet.safetensors"
VAE4 = "indigo-guidance-test-taesd.safetensors"
VAE16 = "indigo-guidance-test-taesd16.safetensors"
INN_LATENT = "guidance-server-latent.safetensors"
INN_PIXEL = "guidance-server-pixel.safetensors"
INN_LATENT16 = "guidance-server-latent16.safetensors"
ESTIMATOR_BROKEN = "guidance-server-broken-estimator.safetensors"


@pytest.fixture(scope="module")
def files(comfy_server, comfy_inprocess):
    """Model files and measurement images in the server's folders (built with ComfyUI's classes)."""
    base = comfy_server.base_dir
    (base / "models" / "diffusion_models").mkdir(parents=True, exist_ok=True)
    (base / "models" / "vae").mkdir(parents=True, exist_ok=True)
    M.write_tiny_unet_file(base / "models" / "diffusion_models" / UNET)
    M.write_tiny_taesd_file(base / "models" / "vae" / VAE4)
    M.write_tiny_taesd_file(base / "models" / "vae" / VAE16, latent_channels=16)
    core = comfy_inprocess.core
    for name, domain, channels in ((INN_LATENT, "latent", 4), (INN_PIXEL, "pixel", 3), (INN_LATENT16, "latent", 16)):
        inn = gh.tiny_inn(comfy_inprocess, domain, channels=channels)
        core.save_inn(inn, comfy_server.models_dir / name, overwrite=True)
    (comfy_server.models_dir / ESTIMATOR_BROKEN).write_bytes(b"not an estimator" * 8)
    rng = np.random.default_rng(0)
    for name, size in (("y16.png", 16), ("y20.png", 20)):
        pixels = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(base / "input" / name)
    return base


def _graph(sampler: str, *, inn=INN_LATENT, image="y16.png", vae=VAE4, size=64, batch=1, repeat=1,
           extra: dict | None = None) -> dict:
    """An API-format graph: loaders -> one of the pack's samplers (or Apply Guidance + KSampler)."""
    g = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": UNET, "weight_dtype": "default"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": vae}},
        "cond": {"class_type": "LotusConditioning", "inputs": {}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}},
        "inn": {"class_type": "INDIGO_LoadINN", "inputs": {"inn_name": inn}},
        "y": {"class_type": "LoadImage", "inputs": {"image": image}},
    }
    y_ref = ["y", 0]
    if repeat > 1:
        g["yb"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["y", 0], "amount": repeat}}
        y_ref = ["yb", 0]
    widgets = dict(gh.DEFAULT_WIDGETS)
    widgets.update(extra or {})
    sampling = {"seed": 1, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
                "positive": ["cond", 0], "negative": ["cond", 0], "latent_image": ["latent", 0]}
    guidance = {"vae": ["vae", 0], "inn": ["inn", 0], "measurement": y_ref, **widgets}
    if sampler == "guided":
        g["s"] = {"class_type": "INDIGO_GuidedKSampler",
                  "inputs": {"model": ["unet", 0], **sampling, **guidance, "start_from_measurement": False,
                             "colour_fix": "none"}}
        latent_out, preview = ["s", 0], ["s", 1]
    elif sampler == "apply":
        g["patch"] = {"class_type": "INDIGO_ApplyGuidance", "inputs": {"model": ["unet", 0], **guidance}}
        g["s"] = {"class_type": "KSampler", "inputs": {"model": ["patch", 0], **sampling}}
        latent_out, preview = ["s", 0], None
    elif sampler == "tiled":
        g["s"] = {"class_type": "INDIGO_TiledSampler",
                  "inputs": {"model": ["unet", 0], **sampling, **guidance, "start_from_measurement": True,
                             "tile_size": 8, "tile_overlap": 4, "vae_tile_size": 8, "vae_tile_overlap": 4,
                             "colour_fix": "wavelet"}}
        g["s"]["inputs"]["denoise"] = 0.7
        latent_out, preview = ["s", 0], ["s", 2]
        g["show_image"] = {"class_type": "PreviewImage", "inputs": {"images": ["s", 1]}}
    else:
        raise ValueError(sampler)
    g["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": latent_out, "vae": ["vae", 0]}}
    g["show"] = {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}}
    if preview is not None:
        g["show_preview"] = {"class_type": "PreviewImage", "inputs": {"images": preview}}
    return g


def _ok(server, graph):
    entry = server.run(graph, timeout=240)
    assert entry["status"]["status_str"] == "success", history_error(entry) + "\n" + server.log_tail()
    return entry


def test_guided_ksampler_graph(comfy_server, files):
    entry = _ok(comfy_server, _graph("guided"))
    outs = entry["outputs"]
    assert outs["show"]["images"] and outs["show_preview"]["images"]
    record = outs["s"]["indigo_run"][0]  # the node's per-step record reaches the history / frontend
    assert record["mode"] == "latent_inn" and record["completed"] is True and len(record["residual"]) == 2


def test_apply_guidance_with_core_ksampler_graph(comfy_server, files):
    entry = _ok(comfy_server, _graph("apply", inn=INN_PIXEL, extra={"max_step": 0.0}))
    assert entry["outputs"]["show"]["images"]


def test_tiled_indigo_graph(comfy_server, files):
    entry = _ok(comfy_server, _graph("tiled", size=96))  # latent 12x12: 2x2 tiles of 8 overlapping by 4
    outs = entry["outputs"]
    assert outs["show"]["images"] and outs["show_image"]["images"] and outs["show_preview"]["images"]
    assert outs["s"]["indigo_run"][0]["completed"] is True


BAD_INPUTS = {
    "measurement size vs latent and INN scale": (
        dict(sampler="guided", inn=INN_PIXEL, image="y20.png"),
        "ShapeError", "measurement: expected 16x16 pixels (latent 8x8 -> image 64x64, PixelINN scale x4), got 20x20"),
    "4-channel model with a 16-channel LatentINN": (
        dict(sampler="guided", inn=INN_LATENT16),
        "DomainError", "inn: expected a LatentINN with 4 channels (the model's and VAE's latent channels), "
                       "got a 16-channel LatentINN"),
    "INN domain vs mode": (
        dict(sampler="guided", inn=INN_PIXEL, extra={"mode": "latent_inn"}),
        "DomainError", "inn: mode 'latent_inn' expects a latent INN, got a pixel INN"),
    "VAE vs model (INN/VAE mismatch)": (
        dict(sampler="apply", vae=VAE16),
        "DomainError", "vae: expected a VAE with 4 latent channels (the model's latent format), got a VAE with 16"),
    "batch mismatch": (
        dict(sampler="tiled", batch=3, repeat=2),
        "ShapeError", "measurement: expected a batch of 3 (one per latent) or 1, got 2"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_returns_the_packs_error(comfy_server, files, case):
    kwargs, error_type, message = BAD_INPUTS[case]
    entry = comfy_server.run(_graph(kwargs.pop("sampler"), **kwargs), timeout=240)
    assert entry["status"]["status_str"] == "error"
    data = next(d for e, d in entry["status"]["messages"] if e == "execution_error")
    assert data["exception_type"].endswith(error_type), data["exception_type"]
    assert message in history_error(entry)


def test_broken_estimator_file_returns_the_packs_error(comfy_server, files):
    full = _graph("guided")  # the estimate feeds a guided sampler (a graph needs an output node)
    full["est"] = {"class_type": "INDIGO_DegradationEstimate",
                   "inputs": {"image": ["y", 0], "estimator_name": ESTIMATOR_BROKEN}}
    full["s"]["inputs"]["degradation"] = ["est", 0]
    entry = comfy_server.run(full, timeout=240)
    assert entry["status"]["status_str"] == "error"
    data = next(d for e, d in entry["status"]["messages"] if e == "execution_error")
    assert data["exception_type"].endswith("WeightsFileError") and data["node_id"] == "est"
    assert ESTIMATOR_BROKEN in history_error(entry)


def test_per_step_values_reach_the_frontend(comfy_server, files):
    """The Guided KSampler sends one 'indigo.progress' message per step over the websocket, to the
    frontend that queued the prompt only (as ComfyUI's own progress): another one gets none."""
    import asyncio
    import json
    import uuid

    import aiohttp

    client_id = str(uuid.uuid4())
    graph = _graph("guided", inn=INN_PIXEL, extra={"max_step": 0.0})
    graph["s"]["inputs"]["steps"] = 3

    async def drain(ws) -> list:
        got = []
        while True:
            try:
                msg = await asyncio.wait_for(ws.receive(), timeout=1.0)
            except asyncio.TimeoutError:
                return got
            if msg.type == aiohttp.WSMsgType.TEXT:
                got.append(json.loads(msg.data)["type"])
            elif msg.type != aiohttp.WSMsgType.BINARY:
                return got

    async def collect():
        events = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{comfy_server.url}/ws?clientId={client_id}") as ws, \
                    session.ws_connect(f"{comfy_server.url}/ws?clientId={uuid.uuid4()}") as bystander:
                async with session.post(f"{comfy_server.url}/prompt",
                                        json={"prompt": graph, "client_id": client_id}) as resp:
                    assert resp.status == 200, await resp.text()
                    prompt_id = (await resp.json())["prompt_id"]
                while True:
                    msg = await asyncio.wait_for(ws.receive(), timeout=240)
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue  # binary previews
                    data = json.loads(msg.data)
                    events.append(data)
                    done = data["type"] in ("execution_success", "execution_error") and \
                        data["data"].get("prompt_id") == prompt_id
                    if done:
                        return events, await drain(bystander), prompt_id

    events, seen_by_bystander, prompt_id = asyncio.run(collect())
    assert "status" in seen_by_bystander and "indigo.progress" not in seen_by_bystander, seen_by_bystander
    assert events[-1]["type"] == "execution_success", events[-1]
    ours = [e["data"] for e in events if e["type"] == "indigo.progress"]
    assert [e["step"] for e in ours] == [0, 1, 2]
    assert all(e["node"] == "s" and e["steps"] == 3 and len(e["residual"]) == 1 for e in ours)
    # which prompt's node it is, as ComfyUI's own progress messages say it (the frontend draws only
    # the prompt it follows, on the node the display id names)
    assert all(e["prompt_id"] == prompt_id and e["display_node"] == "s" for e in ours), ours
    progress = [e["data"] for e in events if e["type"] == "progress" and e["data"]["node"] == "s"]
    assert progress and all(p["prompt_id"] == prompt_id for p in progress), progress
