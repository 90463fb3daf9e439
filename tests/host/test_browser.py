"""What users see: the pack in ComfyUI 0.3.75's real frontend, in a real browser (chromium + Playwright).

One server (the session's ``comfy_server``: the pack linked into custom_nodes/ as users install
it) and one browser page for the whole module. Checked:

- the Templates browser lists every workflow of workflows/ (``GET /api/workflow_templates``, the
  files and thumbnails it serves, and the dialog itself);
- every node has a help page and every input a tooltip (``/object_info`` and the served docs);
- every workflow loads in the page with no missing node types and no console errors, and the
  frontend turns it into a prompt whose nodes and inputs all exist on the server;
- every workflow runs end to end as a user runs it after opening it from the Templates browser:
  loaded in the page, turned into a prompt by the frontend, queued with the Run button, executed by
  the server without errors, its output images written (checked on disk through /api/view and shown
  on the page) at the expected sizes. Each run shrinks the saved graph only through its declared
  overrides (``RUNS``: fewer steps, smaller images), applied to the prompt the frontend converted,
  on its way to the server; the saved widget values are never edited;
- for the bundled-prior workflow also: the Load INN badge shows the INN and the live plot got one
  value per sampling step;
- a graph whose INN and measurement sizes cannot match gets a warning before queueing (and a
  matching one does not).

Model files the workflows name but the pack does not ship yet are made here with the pack's own
save functions (small random networks); an SD1.5 checkpoint the SD1.5 workflow names is a stand-in
that ComfyUI detects as SD1.5 (see ``_write_sd15_standin``); input images likewise. Screenshots go
to test-artifacts/browser/.
"""

from __future__ import annotations

import copy
import io
import json
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import browser_helpers as bh
from inn_files import write_random_inn

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
PACK = "comfyui-indigo"
WORKFLOW_DIR = ROOT / "workflows"
WORKFLOWS = {p.stem: json.loads(p.read_text()) for p in sorted(WORKFLOW_DIR.glob("*.json"))}
ARTIFACTS = ROOT / "test-artifacts" / "browser"
BUNDLED_PRIOR = ROOT / "models" / "prior"
RUN_WORKFLOW = "indigo_latent_inn_bundled_prior"
PIXEL_WORKFLOW = "indigo_pixel_inn_bundled_prior"
#: Inputs that list files (their values are the user's file names, not fixed options).
FILE_INPUTS = {"inn_name", "estimator_name", "unet_name", "vae_name", "ckpt_name", "image"}
TEST_PRIOR = ("indigo-browsertest-unet.safetensors", "indigo-browsertest-vae.safetensors")
RUN_SIZE, RUN_STEPS = 64, 4
#: Test inputs the runs use instead of the saved graphs' photos (made by the ``files`` fixture).
RUN_MEASUREMENT = "indigo_test_16x16.png"  # RUN_SIZE / 4: what a x4 PixelINN needs for a RUN_SIZE output
RUN_PHOTO = "indigo_test_64x64.png"  # a clean RUN_SIZE photo, and the tiled graph's measurement
#: Caption strip under Compare Images' panels (nodes/compare_images.py CAPTION_HEIGHT).
COMPARE_CAPTION = 28
#: Most seconds one run may take from the Run button to its end (they take 1-45 s on 2 CPU cores).
RUN_TIMEOUT_S = 240


@dataclass(frozen=True)
class RunSpec:
    """How a workflow of workflows/ is run from the page (``_run_from_page``).

    overrides: {node type: {input: value}}, applied to every node of that type in the prompt the
      frontend converted from the saved graph, before it reaches the server (the saved graph is not
      touched). Every type and input named must be in the prompt, so a stale override fails.
    images: {node title or type: (width, height)} of every image-output node (SaveImage,
      PreviewImage); every image-output node of the prompt must be listed, and every entry used.
    texts: {node type: text its UI text output must contain} for the text-output nodes.
    """

    overrides: dict
    images: dict
    texts: dict = field(default_factory=dict)


_SAMPLE = {"steps": RUN_STEPS}
_SMALL_LATENT = {"width": RUN_SIZE, "height": RUN_SIZE}
_SMALL = (RUN_SIZE, RUN_SIZE)
#: The documented per-workflow overrides (why, per workflow):
#: - the bundled-prior graphs: 512x512 output and 20/10 steps -> RUN_SIZE and RUN_STEPS; the
#:   measurement RUN_SIZE/4 (PixelINN x4 needs exactly output/4; the LatentINN any size of the
#:   output's aspect ratio);
#: - SD1.5 + Apply Guidance: the measurement upscaled to 512 -> RUN_SIZE (ImageScale), 30 KSampler
#:   steps -> RUN_STEPS; the stand-in checkpoint has SD1.5's full-size VAE and text encoder, whose
#:   PixelINN guidance (a VAE decode and its gradient per step) costs ~1 s a step on 2 cores;
#: - synthetic compare: the clean 512 photo -> a RUN_SIZE one and the latent with it (Compare
#:   Images wants the restorations no larger than the reference), 30 steps -> RUN_STEPS in both
#:   samplers;
#: - tiled: 1024 from a 256 measurement with 64/16 latent tiles -> 256 from a 64 measurement with
#:   16/8 tiles (the same 3x3 tile grid, a quarter the size) and RUN_STEPS;
#: - INN info: nothing (it only reads the INN's header and weights).
RUNS: dict[str, RunSpec] = {
    "indigo_inn_info": RunSpec({}, {}, {"INDIGO_INNInfo": "domain: latent"}),
    "indigo_latent_inn_bundled_prior": RunSpec(
        {"EmptyLatentImage": _SMALL_LATENT, "LoadImage": {"image": RUN_MEASUREMENT}, "INDIGO_GuidedKSampler": _SAMPLE},
        {"SaveImage": _SMALL, "INN-inverse preview": _SMALL}),
    "indigo_pixel_inn_bundled_prior": RunSpec(
        {"EmptyLatentImage": _SMALL_LATENT, "LoadImage": {"image": RUN_MEASUREMENT}, "INDIGO_GuidedKSampler": _SAMPLE},
        {"SaveImage": _SMALL, "INN-inverse preview": _SMALL}),
    "indigo_sd15_checkpoint_apply_guidance": RunSpec(
        {"ImageScale": _SMALL_LATENT, "LoadImage": {"image": RUN_MEASUREMENT}, "KSampler": _SAMPLE},
        {"SaveImage": _SMALL}),
    "indigo_synthetic_compare": RunSpec(
        {"EmptyLatentImage": _SMALL_LATENT, "LoadImage": {"image": RUN_PHOTO}, "INDIGO_GuidedKSampler": _SAMPLE},
        # bicubic measurement, unguided, guided and the reference side by side, captions below
        {"SaveImage": (4 * RUN_SIZE, RUN_SIZE + COMPARE_CAPTION)},
        {"INDIGO_CompareImages": "INDIGO LatentINN |"}),
    "indigo_tiled_large_image": RunSpec(
        {"EmptyLatentImage": {"width": 4 * RUN_SIZE, "height": 4 * RUN_SIZE}, "LoadImage": {"image": RUN_PHOTO},
         "INDIGO_TiledSampler": {**_SAMPLE, "tile_size": 16, "tile_overlap": 8, "vae_tile_size": 16,
                                 "vae_tile_overlap": 8}},
        {"SaveImage": (4 * RUN_SIZE, 4 * RUN_SIZE), "INN-inverse preview": (4 * RUN_SIZE, 4 * RUN_SIZE)}),
}


def _doc_rows(page: str) -> dict[str, str]:
    """{input name: default cell} of a help page's inputs table (rows "| `name` | type | default | ...")."""
    rows = {}
    section = page.split("## Inputs", 1)[-1].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and cells[0].startswith("`") and cells[0].endswith("`"):
            rows[cells[0].strip("`")] = cells[2]
    return rows


def _same_default(cell: str, default) -> bool:
    text = cell.strip("`")
    if isinstance(default, bool):
        return text == str(default).lower()
    if isinstance(default, (int, float)):
        try:
            return float(text) == float(default)
        except ValueError:
            return False
    return text == str(default)


def _nodes_of(workflow: dict, node_type: str) -> list[dict]:
    return [n for n in workflow["nodes"] if n["type"] == node_type]


def _widget_values(workflow: dict, node_type: str, index: int = 0) -> set:
    return {n["widgets_values"][index] for n in _nodes_of(workflow, node_type)}


def _png(path: Path, width: int, height: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), 0.5 + 0 * x], -1)
    rgb = np.clip(rgb + 0.05 * rng.standard_normal(rgb.shape), 0, 1)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(path)


def _write_test_prior(folder: Path) -> tuple[str, str]:
    """A tiny random prior (SD-layout UNet + x8 autoencoder) saved with the pack's prior writers."""
    from indigo_core.prior.autoencoder import AutoencoderConfig, AutoencoderKL
    from indigo_core.prior.unet import EpsUNet, UNetConfig
    from indigo_core.prior.weights import save_autoencoder, save_unet

    folder.mkdir(parents=True, exist_ok=True)
    unet_name, vae_name = TEST_PRIOR
    torch.manual_seed(0)
    ae = AutoencoderKL(AutoencoderConfig(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1)).eval()
    cfg = UNetConfig(model_channels=32, channel_mult=(1, 2), attention_depth=(1, 1), num_res_blocks=1,
                     middle_depth=1, num_heads=2, context_dim=32, context_tokens=2)
    unet = EpsUNet(cfg).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_autoencoder(ae, folder / vae_name, overwrite=True)
    save_unet(unet, 0.1 * torch.randn(1, cfg.context_tokens, cfg.context_dim), folder / unet_name,
              extra_metadata={"autoencoder": json.dumps({"file": vae_name})}, overwrite=True)
    return f"prior/{unet_name}", f"prior/{vae_name}"


def _write_sd15_standin(path: Path) -> int:
    """A checkpoint that ComfyUI 0.3.75's CheckpointLoaderSimple detects and loads as SD1.5, with
    seeded random weights; returns its size in bytes.

    Detection fixes most of it: the UNet has SD1.5's widths (model_channels 320, context 768,
    conv projections) but one level and one res block (26M parameters instead of 860M); the VAE
    (84M) and the CLIP-L text encoder (124M) have the exact layouts ComfyUI builds for SD1.5, as
    it reads only their weights from the file. fp16, about 470 MB; written in ~6 s. Needs ComfyUI
    imported (the ``comfy_inprocess`` fixture)."""
    import comfy.clip_model
    import comfy.ldm.models.autoencoder
    import comfy.ldm.modules.diffusionmodules.openaimodel as oai
    import comfy.ops
    import comfy.sd1_clip
    import models as host_models
    from safetensors.torch import save_file

    sd: dict = {}

    def add(prefix: str, module: torch.nn.Module) -> None:
        sd.update({prefix + k: v.detach().to(torch.float16).contiguous() for k, v in module.state_dict().items()})

    cfg = dict(host_models.SD15_UNET_CONFIG)
    cfg.update(num_res_blocks=[1], channel_mult=[1], transformer_depth=[1], transformer_depth_output=[1, 1],
               num_heads=8, num_head_channels=-1)
    add("model.diffusion_model.",
        host_models.seeded_init_(oai.UNetModel(**cfg, operations=comfy.ops.disable_weight_init), 0, gain=0.5))
    vae = comfy.ldm.models.autoencoder.AutoencoderKL(embed_dim=4, ddconfig=dict(host_models.SD_VAE_DDCONFIG))
    add("first_stage_model.", host_models.smooth_autoencoder_init_(vae, 1))
    del vae
    clip_config = json.loads((Path(comfy.sd1_clip.__file__).parent / "sd1_clip_config.json").read_text())
    clip = comfy.clip_model.CLIPTextModel(clip_config, torch.float32, "cpu", comfy.ops.disable_weight_init)
    add("cond_stage_model.transformer.", host_models.seeded_init_(clip, 2))
    del clip
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path.stat().st_size


def _options(comfy_server, node_id: str, name: str) -> set:
    """The file names a node's combo offers now (V3 nodes: {"options": [...]}; V1: the list itself)."""
    spec = comfy_server.object_info(node_id)["input"]["required"][name]
    return set(spec[1]["options"] if spec[0] == "COMBO" else spec[0])


@pytest.fixture(scope="module")
def files(comfy_server, comfy_inprocess) -> dict:
    """Every model and input file the workflows name, made where the pack does not ship it."""
    from indigo_core.estimator import EstimatorConfig, build_estimator, save_estimator

    def options(node_id: str, name: str) -> set:
        return _options(comfy_server, node_id, name)

    inns, estimators = options("INDIGO_LoadINN", "inn_name"), options("INDIGO_DegradationEstimate", "estimator_name")
    checkpoints = options("CheckpointLoaderSimple", "ckpt_name")
    made: dict = {"inns": {}, "prior": None, "checkpoints": {}}
    for wf in WORKFLOWS.values():
        for name in _widget_values(wf, "CheckpointLoaderSimple") - checkpoints:
            path = comfy_server.base_dir / "models" / "checkpoints" / name
            made["checkpoints"][name] = (path, _write_sd15_standin(path))
            checkpoints.add(name)
        for name in _widget_values(wf, "INDIGO_LoadINN") - inns:
            preset = "pixel-small" if "pixel" in name else "latent-small"
            write_random_inn(comfy_server.models_dir / name, preset)
            made["inns"][name] = preset
            inns.add(name)
        for name in _widget_values(wf, "INDIGO_DegradationEstimate") - estimators:
            torch.manual_seed(0)
            save_estimator(build_estimator(EstimatorConfig.preset("small")).eval(), comfy_server.models_dir / name,
                           overwrite=True)
            estimators.add(name)
        for name in _widget_values(wf, "LoadImage"):
            _png(comfy_server.base_dir / "input" / name, 128, 128)
    wanted = set().union(*(_widget_values(wf, "INDIGO_LoadPrior", k) for wf in WORKFLOWS.values() for k in (0, 1)))
    if not all((BUNDLED_PRIOR / n).is_file() for n in wanted):
        made["prior"] = _write_test_prior(comfy_server.models_dir / "prior")
    # measurements for the tiny runs and the size checks (PixelINN x4 at 64x64 needs 16x16)
    for w, h in ((16, 16), (20, 12), (64, 64)):
        _png(comfy_server.base_dir / "input" / f"indigo_test_{w}x{h}.png", w, h, seed=w)
    yield made
    for path, _ in made["checkpoints"].values():  # the stand-ins are large: not left in pytest's temp folders
        path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def ui(comfy_server, files):
    """The app open in chromium (one page for the module)."""
    bh.prepare_user_dir(comfy_server.base_dir)
    try:
        browser = bh.Browser(comfy_server.url, artifacts=ARTIFACTS)
    except bh.BrowserSetupError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        browser.open()
        yield browser
    finally:
        browser.close()


def _load(ui, name: str, workflow: dict | None = None) -> dict:
    return ui.js(bh.LOAD_WORKFLOW_JS, [workflow or WORKFLOWS[name], name])


def _set_widgets(ui, node_type: str, values: dict, title: str | None = None) -> None:
    ui.js("""([type, values, title]) => {
      const nodes = app.graph.nodes.filter((n) => n.type === type && (!title || n.title === title));
      if (!nodes.length) throw new Error(`no ${type} node`);
      for (const n of nodes) for (const [k, v] of Object.entries(values)) {
        const w = n.widgets.find((x) => x.name === k);
        if (!w) throw new Error(`${type} has no widget ${k}`);
        w.value = v; w.callback?.(v);
      }
    }""", [node_type, values, title])


def _node_id(ui, node_type: str) -> int:
    return ui.js("(t) => app.graph.nodes.find((n) => n.type === t).id", node_type)


#: Records, per prompt id, how each run the page hears of ends and which nodes sent it results.
WATCH_RUNS_JS = """() => {
  if (window.__indigoRuns) return;
  window.__indigoRuns = {};
  const run = (id) => (window.__indigoRuns[id] ??= { success: false, error: null, interrupted: false, executed: [] });
  app.api.addEventListener('execution_success', (e) => { run(e.detail.prompt_id).success = true; });
  app.api.addEventListener('execution_error', (e) => { run(e.detail.prompt_id).error = e.detail; });
  app.api.addEventListener('execution_interrupted', (e) => { run(e.detail.prompt_id).interrupted = true; });
  app.api.addEventListener('executed', (e) => { run(e.detail.prompt_id).executed.push(String(e.detail.node)); });
}"""

_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _apply_overrides(prompt: dict, overrides: dict) -> None:
    """Set ``overrides`` ({node type: {input: value}}) on every node of that type in an API prompt;
    a type not in the prompt, or an input that is not a widget value there, is an error."""
    for node_type, values in overrides.items():
        nodes = [n for n in prompt.values() if n["class_type"] == node_type]
        if not nodes:
            raise KeyError(f"override for {node_type}: no such node in the prompt")
        for node in nodes:
            for key, value in values.items():
                if key not in node["inputs"] or isinstance(node["inputs"][key], list):
                    raise KeyError(f"override {node_type}.{key}: not a widget input of the converted prompt "
                                   f"(inputs {sorted(node['inputs'])})")
                node["inputs"][key] = value


def _served_image(comfy_server, image: dict) -> Image.Image:
    """An output image as the page gets it (GET /api/view), checked against the file on disk."""
    on_disk = comfy_server.base_dir / image["type"] / image.get("subfolder", "") / image["filename"]
    assert on_disk.is_file() and on_disk.stat().st_size > 0, f"{on_disk} was not written"
    query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
    with _LOOPBACK.open(f"{comfy_server.url}/api/view?{query}", timeout=30) as r:
        assert r.status == 200, (image, r.status)
        data = r.read()
    assert data == on_disk.read_bytes(), f"/api/view served another file than {on_disk}"
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def _history(comfy_server, prompt_id: str, timeout: float = 30) -> dict:
    """The finished prompt's history entry (written just after the page hears of the end)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        entry = comfy_server.history(prompt_id)
        if entry is not None and entry.get("status", {}).get("completed") is not None:
            return entry
        time.sleep(0.2)
    raise AssertionError(f"no history for prompt {prompt_id} after {timeout:.0f} s\n{comfy_server.log_tail()}")


def _close_dialogs(ui) -> None:
    """Close the page's open dialogs, if any (Escape, as a user would)."""
    for _ in range(3):
        if not ui.js("() => !!document.querySelector('.p-dialog')"):
            return
        ui.page.keyboard.press("Escape")
        ui.page.wait_for_timeout(300)
    assert not ui.js("() => !!document.querySelector('.p-dialog')"), "a dialog stays open on the page"


def _run_from_page(ui, comfy_server, files: dict, name: str, before_run=None) -> dict:
    """Run workflow ``name`` as a user does after opening it from the Templates browser: load it in
    the page, press Run (the frontend converts the graph and queues the prompt), wait for the end.
    On its way to the server the converted prompt gets the workflow's declared overrides
    (``RUNS[name]``) and no other change. Checks that the server ran it to success, that every
    output node produced its result (images on disk, served, of the expected size, not blank, and
    shown on the page; texts on the page) and that the page logged no error. ``before_run()`` is
    called with the workflow loaded, before Run. Returns what was sent, the history entry, the
    seconds from Run to the end and the page's record of the run."""
    spec = RUNS.get(name)
    assert spec is not None, f"{name}: no entry in RUNS (test_browser.py): declare how to run it small"
    overrides = {k: dict(v) for k, v in spec.overrides.items()}
    if files["prior"] and _nodes_of(WORKFLOWS[name], "INDIGO_LoadPrior"):  # the bundled prior is not there
        overrides["INDIGO_LoadPrior"] = {"unet_name": files["prior"][0], "vae_name": files["prior"][1]}
    _close_dialogs(ui)  # e.g. the error dialog of a failed run before: it would take the Run button's clicks
    mark = len(ui.console)
    report = _load(ui, name)
    assert report["unregistered"] == [] and report["errors"] == [], report
    ui.js(WATCH_RUNS_JS)
    # the saved graph with the test's stand-in photos (those of its notes' sizes) is consistent
    warnings = ui.js("async () => (await window.comfyIndigo.checkSizes()).map((f) => f.message)")
    assert warnings == [], f"{name}: the page flags the saved graph: {warnings}"
    if before_run is not None:
        before_run()

    url = f"{comfy_server.url}/api/prompt"
    sent: dict = {}

    def on_prompt(route) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        try:
            body = json.loads(route.request.post_data)
            sent["converted"] = copy.deepcopy(body["prompt"])
            _apply_overrides(body["prompt"], overrides)
            sent["queued"] = body["prompt"]
        except Exception as exc:  # reported below; the server never sees this prompt
            sent["error"] = f"{type(exc).__name__}: {exc}"
            route.fulfill(status=400, content_type="application/json", body=json.dumps({"error": sent["error"]}))
            return
        route.continue_(post_data=json.dumps(body))

    ui.page.route(url, on_prompt)
    log_start = comfy_server.log_path.stat().st_size
    try:
        with ui.page.expect_response(lambda r: r.url == url and r.request.method == "POST", timeout=60000) as resp:
            t0 = time.monotonic()
            ui.page.locator('[data-testid="queue-button"]').first.click()
        assert "error" not in sent, f"{name}: the overrides do not fit the converted prompt: {sent['error']}"
        assert resp.value.status == 200, f"{name}: the server refused the prompt: {resp.value.text()}"
        prompt_id = resp.value.json()["prompt_id"]
        try:
            ui.page.wait_for_function(
                "(id) => { const r = window.__indigoRuns[id]; return r && (r.success || r.error || r.interrupted); }",
                arg=prompt_id, timeout=RUN_TIMEOUT_S * 1000)
        except Exception:
            comfy_server.post("/interrupt", {})
            raise AssertionError(f"{name}: no end of the run after {RUN_TIMEOUT_S} s\n{comfy_server.log_tail()}")
        seconds = time.monotonic() - t0
    finally:
        ui.page.unroute(url, on_prompt)
    run = ui.js("(id) => window.__indigoRuns[id]", prompt_id)
    assert run["error"] is None and not run["interrupted"] and run["success"], \
        f"{name}: the run failed: {json.dumps(run['error'], indent=1)}\n{comfy_server.log_tail()}"
    entry = _history(comfy_server, prompt_id)
    status = entry["status"]
    assert status["status_str"] == "success" and status["completed"] is True, (name, status)
    assert not [m for m, _ in status["messages"] if m in ("execution_error", "execution_interrupted")], status
    # the pack's warnings about a graph that runs but not as meant (an INN without the degradation
    # embedding it was trained with, a LatentINN of another latent space, an input that is not used...)
    with open(comfy_server.log_path, "rb") as log:
        log.seek(log_start)
        warned = [ln for ln in log.read().decode(errors="replace").splitlines() if "comfyui-indigo:" in ln]
    assert not warned, f"{name}: the pack warned while running it:\n" + "\n".join(warned)

    queued, info = sent["queued"], comfy_server.object_info()
    outputs = sorted(nid for nid, n in queued.items() if info[n["class_type"]].get("output_node"))
    assert outputs, f"{name}: no output node"
    missing = [nid for nid in outputs if nid not in entry["outputs"] or nid not in run["executed"]]
    assert not missing, f"{name}: output nodes without results {missing}: {entry['outputs']}, page {run['executed']}"
    used: set = set()
    for nid in outputs:
        node, out = queued[nid], entry["outputs"][nid]
        label = f"{name} #{nid} {node['class_type']}"
        key = next((k for k in (node.get("_meta", {}).get("title"), node["class_type"]) if k in spec.images), None)
        if key is not None:
            used.add(key)
            images = out.get("images") or []
            assert len(images) == 1, f"{label}: expected one image, got {images}"
            im = _served_image(comfy_server, images[0])
            assert im.format == "PNG" and im.size == tuple(spec.images[key]), (label, im.format, im.size)
            assert float(np.asarray(im.convert("RGB"), dtype=np.float32).std()) > 1.0, f"{label}: a blank image"
            shown = ui.page.wait_for_function(
                "(id) => { const n = app.graph.getNodeById(id); const i = n?.imgs?.[0];"
                " return i && i.complete && i.naturalWidth > 0 && [i.naturalWidth, i.naturalHeight]; }",
                arg=int(nid), timeout=30000).json_value()
            assert tuple(shown) == im.size, f"{label}: the page shows a {shown} image"
        elif node["class_type"] in spec.texts:
            text = (out.get("text") or [""])[0]
            assert spec.texts[node["class_type"]] in text, f"{label}: {text!r}"
            ui.page.wait_for_function("([id, text]) => app.graph.getNodeById(id).indigoText?.value === text",
                                      arg=[int(nid), text], timeout=10000)
        else:
            raise AssertionError(f"{label}: an output node RUNS[{name!r}] says nothing about: {out}")
    assert used == set(spec.images), f"{name}: RUNS images {sorted(set(spec.images) - used)} matched no node"
    ui.js(bh.FIT_VIEW_JS)
    ui.page.wait_for_timeout(300)
    ui.screenshot(f"run_{name}")
    assert ui.errors(mark) == [], f"{name}: console errors"
    return {"prompt_id": prompt_id, "seconds": seconds, "converted": sent["converted"], "queued": queued,
            "entry": entry, "run": run}


# =========================================================================== served files


def test_workflows_are_complete_and_have_thumbnails() -> None:
    assert len(WORKFLOWS) >= 5, sorted(WORKFLOWS)
    for name, wf in WORKFLOWS.items():
        thumb = WORKFLOW_DIR / f"{name}.jpg"
        assert thumb.is_file(), f"{name}.json has no thumbnail {thumb.name}"
        with Image.open(thumb) as im:
            assert im.format == "JPEG" and im.width >= 256 and im.height >= 160, (name, im.format, im.size)
        assert wf["nodes"] and "links" in wf, name
    used = {n["type"] for wf in WORKFLOWS.values() for n in wf["nodes"]}
    for node_type in ("INDIGO_LoadPrior", "CheckpointLoaderSimple", "INDIGO_TiledSampler",
                      "INDIGO_SyntheticDegradation", "INDIGO_CompareImages", "INDIGO_ApplyGuidance"):
        assert node_type in used, f"no workflow uses {node_type}"


def test_template_api_lists_and_serves_the_workflows(comfy_server) -> None:
    status, listing = comfy_server.get("/api/workflow_templates")
    assert status == 200
    assert sorted(listing.get(PACK, [])) == sorted(WORKFLOWS), listing
    for name, wf in WORKFLOWS.items():
        status, served = comfy_server.get(f"/api/workflow_templates/{PACK}/{name}.json")
        assert status == 200 and served == wf, name
        with urllib.request.urlopen(f"{comfy_server.url}/api/workflow_templates/{PACK}/{name}.jpg", timeout=30) as r:
            assert r.status == 200 and r.read(3) == b"\xff\xd8\xff", name


def test_every_node_has_help_page_and_tooltips(comfy_server) -> None:
    info = comfy_server.object_info()
    ours = {k: v for k, v in info.items() if v.get("python_module") == f"custom_nodes.{PACK}"}
    assert len(ours) >= 11, sorted(ours)
    problems = []
    for node_id, node in sorted(ours.items()):
        if not node.get("description"):
            problems.append(f"{node_id}: no description")
        inputs = {**node["input"].get("required", {}), **node["input"].get("optional", {})}
        for name, spec in inputs.items():
            if not (len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("tooltip")):
                problems.append(f"{node_id}.{name}: no tooltip")
        tips = node.get("output_tooltips") or []
        if len(tips) != len(node["output"]) or not all(tips):
            problems.append(f"{node_id}: outputs without tooltips {node['output_name']}")
        status, page = comfy_server.get(f"/extensions/{PACK}/docs/{node_id}.md")
        if status != 200:
            problems.append(f"{node_id}: no help page (HTTP {status})")
            continue
        for section in ("## Inputs", "## Outputs"):
            if section not in page:
                problems.append(f"{node_id}.md: no '{section}' section")
        if "| Input | Type | Default | Default from | What it is |" not in page:
            problems.append(f"{node_id}.md: the inputs table lacks the common columns")
        rows = _doc_rows(page)
        for name, spec in inputs.items():
            if name not in rows:
                problems.append(f"{node_id}.md: input `{name}` not in the inputs table")
                continue
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if "default" in opts and not _same_default(rows[name], opts["default"]):
                problems.append(f"{node_id}.md: `{name}` default {rows[name]!r}, the node's is {opts['default']!r}")
        for name in node["output_name"]:
            if f"`{name}`" not in page:
                problems.append(f"{node_id}.md: output `{name}` not described")
    assert not problems, "\n".join(problems)


def test_inn_info_route(comfy_server) -> None:
    write_random_inn(comfy_server.models_dir / "route_pixel.safetensors", "pixel-small")
    (comfy_server.models_dir / "route_broken.safetensors").write_bytes(b"not a safetensors file" * 4)
    status, body = comfy_server.get("/api/indigo/inn_info?name=route_pixel.safetensors")
    assert status == 200 and body["ok"] is True
    assert (body["domain"], body["scale"], body["channels"], body["split"]) == ("pixel", 4, 3, "haar")
    status, body = comfy_server.get("/api/indigo/inn_info?name=no_such_inn.safetensors")
    assert status == 200 and body["ok"] is False and "no_such_inn.safetensors" in body["error"]
    status, body = comfy_server.get("/api/indigo/inn_info?name=route_broken.safetensors")
    assert status == 200 and body["ok"] is False and "route_broken" in body["error"]
    status, body = comfy_server.get("/api/indigo/inn_info")
    assert status == 400 and body["ok"] is False


# =========================================================================== in the browser


def test_page_opens_with_the_extension(ui) -> None:
    # (opening the page is bounded by Browser.open's timeout; its duration is not asserted)
    assert ui.js("() => app.extensions.filter((e) => e.name.startsWith('comfyui-indigo')).map((e) => e.name)") == \
        ["comfyui-indigo.ui"]
    assert ui.js("() => app.queuePrompt.indigoWrapped === true")
    assert ui.errors() == []


def test_template_browser_shows_the_workflows(ui) -> None:
    mark = len(ui.console)
    ui.js("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    ui.page.wait_for_function("() => document.querySelector('.p-dialog')?.innerText.includes('comfyui-indigo')",
                              timeout=30000)
    ui.page.get_by_text(PACK, exact=True).first.click()
    ui.page.wait_for_timeout(800)
    text = ui.js("() => document.querySelector('.p-dialog').innerText")
    ui.screenshot("templates_dialog")
    for name in WORKFLOWS:
        assert name in text, f"{name} not in the Templates dialog"
    ui.page.locator(".p-dialog button.right-6").first.click()  # the dialog's close button
    ui.page.wait_for_function("() => !document.querySelector('.p-dialog')", timeout=10000)
    assert ui.errors(mark) == []


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_workflow_loads_cleanly(ui, comfy_server, name) -> None:
    mark = len(ui.console)
    report = _load(ui, name)
    assert report["unregistered"] == [], f"{name}: missing node types {report['unregistered']}"
    assert report["errors"] == [] and report["count"] == len(WORKFLOWS[name]["nodes"]), report
    assert report["toasts"] == [], f"{name}: the frontend complained while loading it: {report['toasts']}"
    ui.page.wait_for_timeout(600)  # previews, INN badges
    ui.js(bh.FIT_VIEW_JS)
    ui.screenshot(f"workflow_{name}")
    prompt = ui.js("async () => (await app.graphToPrompt()).output")
    info = comfy_server.object_info()
    for node_id, node in prompt.items():
        spec = info.get(node["class_type"])
        assert spec, f"{name}: node type {node['class_type']} is unknown to the server"
        allowed = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
        unknown = set(node["inputs"]) - set(allowed)
        missing = set(spec["input"].get("required", {})) - set(node["inputs"])
        assert not unknown and not missing, f"{name} #{node_id} {node['class_type']}: unknown {unknown}, missing {missing}"
        for key, value in node["inputs"].items():
            if isinstance(value, list):
                assert value[0] in prompt, f"{name} #{node_id}.{key} links to a node not in the prompt"
            elif key not in FILE_INPUTS and allowed[key][0] == "COMBO":
                assert value in allowed[key][1]["options"], f"{name} #{node_id}.{key} = {value!r} is not an option"
    # the file itself is current: every socket input the node has now is saved in it (the editor
    # adds missing ones back on load, but a shared file should be what the editor writes today)
    widget_types = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
    for node in WORKFLOWS[name]["nodes"]:
        spec = info.get(node["type"])
        if spec is None:
            continue  # frontend-only nodes (notes)
        inputs = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
        sockets = {k for k, v in inputs.items() if isinstance(v[0], str) and v[0] not in widget_types}
        saved = {i["name"] for i in node.get("inputs", [])}
        assert sockets <= saved, (f"{name} #{node['id']} {node['type']}: saved without the inputs {sockets - saved}; "
                                  "rerun tools/make_workflows.py")
    assert ui.errors(mark) == [], f"{name}: console errors"


def test_every_workflow_has_a_run_spec() -> None:
    assert set(RUNS) == set(WORKFLOWS), "RUNS must say how to run each workflow of workflows/ (and no other)"


def test_bundled_prior_workflow_runs_from_the_page(ui, comfy_server, files) -> None:
    inn_name = _widget_values(WORKFLOWS[RUN_WORKFLOW], "INDIGO_LoadINN").pop()

    def badge_before_running() -> None:  # the badge comes from the file's header before anything runs
        ui.page.wait_for_function("(id) => app.graph.getNodeById(id).indigoInn?.domain === 'latent'",
                                  arg=_node_id(ui, "INDIGO_LoadINN"), timeout=15000)

    result = _run_from_page(ui, comfy_server, files, RUN_WORKFLOW, before_run=badge_before_running)
    sampler = _node_id(ui, "INDIGO_GuidedKSampler")
    plot = ui.js("""(id) => { const p = app.graph.getNodeById(id).indigoPlot;
      return { steps: p.steps, events: p.events, done: p.done, residual: Array.from(p.residual, (v) => v ?? null) }; }""",
                 sampler)
    assert plot["done"] and plot["steps"] == RUN_STEPS, plot
    assert plot["events"] == RUN_STEPS, f"expected one live message per step, got {plot['events']}"
    assert len(plot["residual"]) == RUN_STEPS and all(v is not None and np.isfinite(v) and v >= 0
                                                     for v in plot["residual"]), plot
    inn = ui.js("(id) => app.graph.getNodeById(id).indigoInn", _node_id(ui, "INDIGO_LoadINN"))
    assert inn["name"] == inn_name and inn["domain"] == "latent" and inn["scale"] == 1 and inn["params"] > 0, inn
    print(f"tiny run from the page: {result['seconds']:.1f} s; plot {plot['residual']}")


@pytest.mark.parametrize("name", sorted(set(WORKFLOWS) - {RUN_WORKFLOW}))
def test_workflow_runs_from_the_page(ui, comfy_server, files, name) -> None:
    result = _run_from_page(ui, comfy_server, files, name)
    print(f"{name}: ran from the page in {result['seconds']:.1f} s with overrides {RUNS[name].overrides}")


def _warning(ui, node_type: str):
    return ui.js("(t) => app.graph.nodes.find((n) => n.type === t).indigoWarning ?? null", node_type)


def _wait_warning(ui, node_type: str, present: bool) -> None:
    ui.page.wait_for_function(
        "([t, want]) => { const n = app.graph.nodes.find((x) => x.type === t); return !!n.indigoWarning === want; }",
        arg=[node_type, present], timeout=15000)


def test_size_mismatch_is_flagged_before_queueing(ui) -> None:
    mark = len(ui.console)
    sampler = "INDIGO_GuidedKSampler"
    # PixelINN x4 with a 64x64 output needs a 16x16 measurement
    _load(ui, PIXEL_WORKFLOW)
    _set_widgets(ui, "EmptyLatentImage", {"width": RUN_SIZE, "height": RUN_SIZE})
    _set_widgets(ui, "LoadImage", {"image": "indigo_test_16x16.png"})
    ui.page.wait_for_timeout(2500)  # a few rounds of the background check
    assert _warning(ui, sampler) is None, "a matching graph was flagged"
    assert ui.js("() => window.comfyIndigo.checkSizes()") == []
    seen = ui.js("(id) => window.comfyIndigo.sizesOf(id)", _node_id(ui, sampler))  # the check saw every size
    assert seen["measurement"] == {"w": 16, "h": 16} and seen["outputs"] == [{"w": RUN_SIZE, "h": RUN_SIZE}], seen
    assert (seen["inn"]["domain"], seen["inn"]["scale"]) == ("pixel", 4), seen
    _set_widgets(ui, "LoadImage", {"image": "indigo_test_20x12.png"})
    _wait_warning(ui, sampler, True)
    message = _warning(ui, sampler)
    assert "20×12" in message and "16×16" in message and "PixelINN ×4" in message, message
    ui.page.wait_for_function("() => [...document.querySelectorAll('.p-toast-message')]"
                              ".some((t) => t.innerText.includes('sizes cannot match'))", timeout=10000)
    found = ui.js("() => window.comfyIndigo.checkSizes({announceAll: true})")
    assert [f["message"] for f in found] == [message]
    ui.js(bh.FIT_VIEW_JS)
    ui.page.wait_for_timeout(300)
    ui.screenshot("size_mismatch_pixel_inn")
    _set_widgets(ui, "LoadImage", {"image": "indigo_test_16x16.png"})
    _wait_warning(ui, sampler, False)

    # LatentINN: any size with the output's aspect ratio; 20x12 against a square output is not
    _load(ui, RUN_WORKFLOW)
    _set_widgets(ui, "EmptyLatentImage", {"width": RUN_SIZE, "height": RUN_SIZE})
    _set_widgets(ui, "LoadImage", {"image": "indigo_test_64x64.png"})
    ui.page.wait_for_timeout(2500)
    assert _warning(ui, sampler) is None
    seen = ui.js("(id) => window.comfyIndigo.sizesOf(id)", _node_id(ui, sampler))
    assert seen["measurement"] == {"w": 64, "h": 64} and seen["inn"]["domain"] == "latent", seen
    _set_widgets(ui, "LoadImage", {"image": "indigo_test_20x12.png"})
    _wait_warning(ui, sampler, True)
    assert "aspect ratio" in _warning(ui, sampler)
    ui.screenshot("size_mismatch_latent_inn")

    # Apply INDIGO Guidance: the output size is found downstream (KSampler <- VAE Encode <- Upscale Image)
    guide = "INDIGO_ApplyGuidance"
    _load(ui, "indigo_sd15_checkpoint_apply_guidance")
    _set_widgets(ui, "LoadImage", {"image": "indigo_test_16x16.png"})
    _set_widgets(ui, "ImageScale", {"width": RUN_SIZE, "height": RUN_SIZE})
    seen = ui.js("(id) => window.comfyIndigo.sizesOf(id)", _node_id(ui, guide))
    assert seen["outputs"] == [{"w": RUN_SIZE, "h": RUN_SIZE}] and seen["measurement"] == {"w": 16, "h": 16}, seen
    ui.page.wait_for_timeout(1500)
    assert _warning(ui, guide) is None
    _set_widgets(ui, "ImageScale", {"width": 80, "height": RUN_SIZE})
    _wait_warning(ui, guide, True)
    assert "needs exactly 20×16" in _warning(ui, guide), _warning(ui, guide)
    assert ui.errors(mark) == []


# =========================================================================== hostile names and messages
#
# What the page shows from files and messages it does not control: file names in the models folder,
# node titles, the nodes' text outputs, the server's progress messages. A payload that would run sets
# window.__indigoXss; it must stay unset and the text must appear as written.

XSS_FLAG = "window.__indigoXss"
HOSTILE_INN = "<img src=x onerror=window.__indigoXss=1>.safetensors"
ENTITY_INN = "a&lt;b&amp;c.safetensors"  # shown as written, not as "a<b&c"
HOSTILE_TITLE = "<img src=x onerror=window.__indigoXss=2> sampler"

#: Click the middle of widget `name` of node `id` as a user does (the canvas reset to 1:1 first).
CLICK_WIDGET_JS = """([id, name]) => {
  const node = app.graph.getNodeById(id);
  const w = node.widgets.find((x) => x.name === name);
  app.canvas.ds.offset = [0, 0]; app.canvas.ds.scale = 1;
  app.canvas.setDirty(true, true); app.canvas.draw(true, true);
  const el = app.canvas.canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const x = node.pos[0] + node.size[0] / 2, y = node.pos[1] + (w.y ?? w.last_y) + 10;
  return [el.left + x / dpr, el.top + y / dpr];
}"""


def _refresh_combos(ui) -> None:
    """Let the page fetch the node definitions again (new files in the combos), as the R key does."""
    ui.js("async () => { await app.refreshComboInNodes(); app.extensionManager.toast.removeAll(); }")


def _menu_entries(ui) -> list:
    return ui.js("() => [...document.querySelectorAll('.litemenu-entry')].map((e) => ({text: e.textContent,"
                 " elements: e.querySelectorAll('*').length, value: e.dataset.value}))")


def _close_menus(ui) -> None:
    ui.js("() => document.querySelectorAll('.litecontextmenu').forEach((m) => m.remove())")


def test_hostile_file_names_show_as_text(ui, comfy_server) -> None:
    """An INN file named like HTML in models/indigo/: listed, opened, chosen and run, never parsed.

    LiteGraph's combo menu (frontend 1.32.9) puts entries in with innerHTML; without the pack's
    guard, opening Load INN's list runs the file name's onerror handler."""
    mark = len(ui.console)
    paths = [comfy_server.models_dir / HOSTILE_INN, comfy_server.models_dir / ENTITY_INN]
    write_random_inn(paths[0], "pixel-small")
    write_random_inn(paths[1], "latent-small")
    try:
        _refresh_combos(ui)
        ui.js(bh.BUILD_GRAPH_JS, {"nodes": [
            ["inn", "INDIGO_LoadINN", [120, 160], {}, {"size": [420, 80]}],
            ["info", "INDIGO_INNInfo", [620, 160], {}, {}],
            ["est", "INDIGO_DegradationEstimate", [120, 420], {}, {"size": [420, 120]}],
        ], "links": [["inn", "INDIGO_INN", "info", "inn"]]})
        inn_id = _node_id(ui, "INDIGO_LoadINN")
        for node_type, widget in (("INDIGO_LoadINN", "inn_name"), ("INDIGO_DegradationEstimate", "estimator_name")):
            ui.page.mouse.click(*ui.js(CLICK_WIDGET_JS, [_node_id(ui, node_type), widget]))
            ui.page.wait_for_selector(".litemenu-entry", timeout=10000)
            ui.page.wait_for_timeout(500)  # an <img src=x> would have failed to load by now
            entries = {e["text"]: e for e in _menu_entries(ui)}
            assert ui.js(f"() => {XSS_FLAG} ?? null") is None, f"{node_type}: opening the list ran a file name"
            for name in (HOSTILE_INN, ENTITY_INN):
                assert name in entries, f"{node_type}: {name!r} not listed as text: {sorted(entries)}"
                assert entries[name]["elements"] == 0 and entries[name]["value"] == name, entries[name]
            if node_type == "INDIGO_LoadINN":  # choose it: the widget gets the file's real name
                ui.page.locator(".litemenu-entry", has_text="onerror").first.click()
                assert ui.js("(id) => app.graph.getNodeById(id).widgets[0].value", inn_id) == HOSTILE_INN
            _close_menus(ui)
        # the badge is fetched for that name (encoded in the URL) and shows the file's facts
        ui.page.wait_for_function("([id, name]) => app.graph.getNodeById(id).indigoInn?.name === name",
                                  arg=[inn_id, HOSTILE_INN], timeout=15000)
        assert ui.js("(id) => app.graph.getNodeById(id).indigoInn.domain", inn_id) == "pixel"
        # run it: the file loads under its name; Load INN's output (which names it) sets the badge
        ui.js("async () => { await app.queuePrompt(0, 1); }")
        ui.page.wait_for_function("(id) => (app.graph.getNodeById(id).indigoText?.value ?? '').includes('domain: pixel')",
                                  arg=_node_id(ui, "INDIGO_INNInfo"), timeout=60000)
        ui.page.wait_for_function("([id, name]) => { const i = app.graph.getNodeById(id).indigoInn;"
                                  " return i?.name === name && i.params > 0; }", arg=[inn_id, HOSTILE_INN], timeout=30000)

        # a size warning's toast quotes the node's title (typed by a user): text, not HTML
        _load(ui, PIXEL_WORKFLOW)
        _set_widgets(ui, "EmptyLatentImage", {"width": RUN_SIZE, "height": RUN_SIZE})
        _set_widgets(ui, "INDIGO_LoadINN", {"inn_name": HOSTILE_INN})
        _set_widgets(ui, "LoadImage", {"image": "indigo_test_20x12.png"})
        ui.js("(t) => { app.graph.nodes.find((n) => n.type === 'INDIGO_GuidedKSampler').title = t; }", HOSTILE_TITLE)
        found = ui.js("() => window.comfyIndigo.checkSizes({announceAll: true})")
        assert len(found) == 1 and "PixelINN ×4" in found[0]["message"], found
        ui.page.wait_for_function("(t) => [...document.querySelectorAll('.p-toast-message')]"
                                  ".some((m) => m.textContent.includes(t))", arg=HOSTILE_TITLE, timeout=10000)
        ui.page.wait_for_timeout(500)
        assert ui.js("() => document.querySelectorAll('.p-toast-message img').length") == 0
        assert ui.js(f"() => {XSS_FLAG} ?? null") is None
    finally:
        _close_menus(ui)
        ui.js("() => app.extensionManager.toast.removeAll()")
        for path in paths:
            path.unlink(missing_ok=True)
        _refresh_combos(ui)
    assert ui.js(f"() => {XSS_FLAG} ?? null") is None
    assert ui.errors(mark) == []  # (an <img src=x> put in the page would also log a 404 for /x)


def test_stalled_request_does_not_hold_up_run(ui, comfy_server) -> None:
    """The size check before queueing waits a bounded time for INN facts: an /indigo/inn_info
    request that never answers must not keep the Run button from queueing the prompt."""
    name = "stall_probe.safetensors"  # a name the page has not asked about yet
    write_random_inn(comfy_server.models_dir / name, "pixel-small")
    held: list = []
    ui.page.route("**/indigo/inn_info*", lambda route: held.append(route))
    prompt_url = f"{comfy_server.url}/api/prompt"

    def fake_queue(route) -> None:  # the prompt reaches the server's door; nothing runs
        if route.request.method != "POST":
            route.continue_()
            return
        route.fulfill(status=200, content_type="application/json",
                      body=json.dumps({"prompt_id": "indigo-stall-test", "number": 0, "node_errors": {}}))

    try:
        _refresh_combos(ui)
        _load(ui, PIXEL_WORKFLOW)
        _set_widgets(ui, "INDIGO_LoadINN", {"inn_name": name})
        ui.page.wait_for_timeout(300)
        assert held, "the badge did not ask the route about the new file"
        waited = ui.js("""async () => { const t0 = Date.now();
          const r = await Promise.race([window.comfyIndigo.checkSizes({announceAll: true}).then(() => 'done'),
                                        new Promise((ok) => setTimeout(() => ok('stuck'), 12000))]);
          return [r, Date.now() - t0]; }""")
        assert waited[0] == "done" and waited[1] < 6000, f"the size check waits on a stalled request: {waited}"
        ui.page.route(prompt_url, fake_queue)
        with ui.page.expect_request(lambda r: r.url == prompt_url and r.method == "POST", timeout=10000):
            ui.page.locator('[data-testid="queue-button"]').first.click()
    finally:
        ui.page.unroute(prompt_url, fake_queue)
        ui.page.unroute("**/indigo/inn_info*")
        for route in held:  # answered by the server now
            route.continue_()
        ui.page.wait_for_timeout(500)
        (comfy_server.models_dir / name).unlink(missing_ok=True)
        _refresh_combos(ui)
        ui.js("() => app.extensionManager.toast.removeAll()")


def test_malformed_messages_are_contained(ui) -> None:
    """Progress messages and UI outputs the extension cannot use are dropped without an error, and
    workflow values that are names of Object's own properties are not taken for table entries."""
    mark = len(ui.console)
    _load(ui, PIXEL_WORKFLOW)
    sampler = _node_id(ui, "INDIGO_GuidedKSampler")
    _follow(ui, "indigo-malformed-test")
    plot = ui.js("""(id) => {
      const send = (d) => app.api.dispatchCustomEvent('indigo.progress',
                                                      { node: String(id), prompt_id: 'indigo-malformed-test', ...d });
      send({ step: 0, steps: 4, residual: [0.5] });
      send({ step: 5000000, steps: 4, residual: [0.25] });  // no such step: not kept
      send({ step: 1, steps: 1e12, residual: [0.25] });     // absurd step count: not taken
      const p = app.graph.getNodeById(id).indigoPlot;
      return { length: p.residual.length, steps: p.steps, events: p.events };
    }""", sampler)
    _follow(ui, None)
    assert plot == {"length": 2, "steps": 4, "events": 2}, plot
    # a run record the plot cannot use, and a text output with markup, as a node's UI output
    ui.js("""(id) => app.graph.getNodeById(id).onExecuted({ indigo_run: [{ residual: 5, refine_loss: {},
                                                                          regularised_steps: 'x' }] })""", sampler)
    ui.js(bh.BUILD_GRAPH_JS, {"nodes": [["info", "INDIGO_INNInfo", [40, 60], {}, {}]], "links": []})
    info = _node_id(ui, "INDIGO_INNInfo")
    ui.js("(id) => app.graph.getNodeById(id).onExecuted({ text: ['<img src=x onerror=window.__indigoXss=3>'] })", info)
    ui.page.wait_for_timeout(500)
    assert ui.js("(id) => app.graph.getNodeById(id).indigoText.value", info) == \
        "<img src=x onerror=window.__indigoXss=3>"
    assert ui.js(f"() => {XSS_FLAG} ?? null") is None
    # a mode value the node does not offer, named like one of Object's properties (a hand-edited workflow)
    _load(ui, PIXEL_WORKFLOW)
    _set_widgets(ui, "EmptyLatentImage", {"width": RUN_SIZE, "height": RUN_SIZE})
    _set_widgets(ui, "LoadImage", {"image": "indigo_test_16x16.png"})
    seen = ui.js("(id) => window.comfyIndigo.sizesOf(id)", _node_id(ui, "INDIGO_GuidedKSampler"))
    assert seen["inn"]["domain"] == "pixel" and seen["measurement"] == {"w": 16, "h": 16}, seen  # all sizes known
    for mode in ("constructor", "__proto__", "toString"):
        ui.js("(m) => { app.graph.nodes.find((n) => n.type === 'INDIGO_GuidedKSampler').widgets"
              ".find((w) => w.name === 'mode').value = m; }", mode)
        found = ui.js("() => window.comfyIndigo.checkSizes()")
        assert found == [], f"mode {mode!r}: {found}"
    ui.js("() => app.extensionManager.toast.removeAll()")
    assert ui.errors(mark) == []


def _follow(ui, prompt_id) -> None:
    """Make the page follow prompt ``prompt_id`` as when the server starts a prompt it queued
    ("execution_start" goes to the queuing client only); None: the prompt ends ("executing" null)."""
    if prompt_id is None:
        ui.js("() => app.api.dispatchCustomEvent('executing', null)")
    else:
        ui.js("(id) => app.api.dispatchCustomEvent('execution_start', { prompt_id: id, timestamp: Date.now() })",
              prompt_id)


#: Send one synthetic "indigo.progress" message; returns the plot state of the root graph's node `id`
#: (or, with `inner`, of node `inner` inside the subgraph of node `id`).
PROGRESS_JS = """([id, inner, detail]) => {
  app.api.dispatchCustomEvent('indigo.progress', detail);
  const outer = app.graph.getNodeById(id);
  const node = inner == null ? outer : outer.subgraph.getNodeById(inner);
  const p = node.indigoPlot;
  return { events: p.events, promptId: p.promptId, residual: Array.from(p.residual, (v) => v ?? null) };
}"""


def test_progress_of_other_prompts_is_not_drawn(ui) -> None:
    """A progress message is drawn only when it comes from the prompt the page follows (the one
    whose execution_start it got), on the node its execution id names: progress of a prompt queued
    without a client id reaches every page, and a node of the open graph may have the same id."""
    mark = len(ui.console)
    _load(ui, PIXEL_WORKFLOW)
    sampler = _node_id(ui, "INDIGO_GuidedKSampler")
    ours, other = "indigo-followed-prompt", "indigo-api-script-prompt"
    _follow(ui, ours)
    try:
        step = lambda pid, k, node=str(sampler), **extra: {  # noqa: E731
            "node": node, "display_node": node, "step": k, "steps": 4, "residual": [0.5 + k], **extra,
            **({} if pid is None else {"prompt_id": pid})}
        drawn = ui.js(PROGRESS_JS, [sampler, None, step(other, 0)])
        assert drawn["events"] == 0 and drawn["residual"] == [], f"another prompt's progress was drawn: {drawn}"
        drawn = ui.js(PROGRESS_JS, [sampler, None, step(None, 0)])
        assert drawn["events"] == 0 and drawn["residual"] == [], f"progress of no prompt was drawn: {drawn}"
        drawn = ui.js(PROGRESS_JS, [sampler, None, step(ours, 0)])
        assert drawn == {"events": 1, "promptId": ours, "residual": [0.5]}, drawn
        drawn = ui.js(PROGRESS_JS, [sampler, None, step(other, 1)])
        assert drawn == {"events": 1, "promptId": ours, "residual": [0.5]}, f"the plot took another prompt's: {drawn}"
        drawn = ui.js(PROGRESS_JS, [sampler, None, step(ours, 1)])
        assert drawn == {"events": 2, "promptId": ours, "residual": [0.5, 1.5]}, drawn

        # A sampler inside a subgraph: its execution id is "<subgraph node id>:<its id in the subgraph>".
        ids = ui.js("""(id) => {
          const { node } = app.graph.convertToSubgraph(new Set([app.graph.getNodeById(id)]));
          const inner = node.subgraph.nodes.find((n) => n.type === 'INDIGO_GuidedKSampler');
          const plain = app.graph.nodes.find((n) => !n.subgraph && n.id !== node.id);
          return { outer: node.id, inner: inner.id, plain: plain.id };
        }""", sampler)
        outer, inner = ids["outer"], ids["inner"]
        for wrong in (str(inner), f"{ids['plain']}:{inner}"):  # not the subgraph's execution id
            drawn = ui.js(PROGRESS_JS, [outer, inner, step(ours, 0, node=wrong)])
            assert drawn["events"] == 0, f"{wrong!r} was drawn on node {inner} of subgraph node {outer}: {drawn}"
        drawn = ui.js(PROGRESS_JS, [outer, inner, step(other, 0, node=f"{outer}:{inner}")])
        assert drawn["events"] == 0, f"another prompt's progress was drawn in the subgraph: {drawn}"
        drawn = ui.js(PROGRESS_JS, [outer, inner, step(ours, 0, node=f"{outer}:{inner}")])
        assert drawn["events"] == 1 and drawn["residual"] == [0.5], drawn
    finally:
        _follow(ui, None)
    assert ui.errors(mark) == []
