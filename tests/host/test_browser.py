"""What users see: the pack in ComfyUI 0.3.75's real frontend, in a real browser (chromium + Playwright).

One server (the session's ``comfy_server``: the pack linked into custom_nodes/ as users install
it) and one browser page for the whole module. Checked:

- the Templates browser lists every workflow of workflows/ (``GET /api/workflow_templates``, the
  files and thumbnails it serves, and the dialog itself);
- every node has a help page and every input a tooltip (``/object_info`` and the served docs);
- every workflow loads in the page with no missing node types and no console errors, and the
  frontend turns it into a prompt whose nodes and inputs all exist on the server;
- the bundled-prior workflow, queued from the page with the Run button at a tiny size, completes,
  its output image appears, the Load INN badge shows the INN, and the live plot got one value per
  sampling step;
- a graph whose INN and measurement sizes cannot match gets a warning before queueing (and a
  matching one does not).

Model files the workflows name but the pack does not ship yet are made here with the pack's own
save functions (small random networks); input images likewise. Screenshots go to
test-artifacts/browser/.
"""

from __future__ import annotations

import json
import time
import urllib.request
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


@pytest.fixture(scope="module")
def files(comfy_server) -> dict:
    """Every model and input file the workflows name, made where the pack does not ship it."""
    from indigo_core.estimator import EstimatorConfig, build_estimator, save_estimator

    def options(node_id: str, name: str) -> set:
        return set(comfy_server.object_info(node_id)["input"]["required"][name][1]["options"])

    inns, estimators = options("INDIGO_LoadINN", "inn_name"), options("INDIGO_DegradationEstimate", "estimator_name")
    made: dict = {"inns": {}, "prior": None}
    for wf in WORKFLOWS.values():
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
    wanted = _widget_values(WORKFLOWS[RUN_WORKFLOW], "INDIGO_LoadPrior") | \
        _widget_values(WORKFLOWS[RUN_WORKFLOW], "INDIGO_LoadPrior", 1)
    if not all((BUNDLED_PRIOR / n).is_file() for n in wanted):
        made["prior"] = _write_test_prior(comfy_server.models_dir / "prior")
    # measurements for the tiny run and the size checks (PixelINN x4 at 64x64 needs 16x16)
    for w, h in ((16, 16), (20, 12), (64, 64)):
        _png(comfy_server.base_dir / "input" / f"indigo_test_{w}x{h}.png", w, h, seed=w)
    return made


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


def test_bundled_prior_workflow_runs_from_the_page(ui, comfy_server, files) -> None:
    mark = len(ui.console)
    _load(ui, RUN_WORKFLOW)
    if files["prior"]:  # the bundled prior is not in models/prior yet: a small random one
        _set_widgets(ui, "INDIGO_LoadPrior", {"unet_name": files["prior"][0], "vae_name": files["prior"][1]})
    _set_widgets(ui, "EmptyLatentImage", {"width": RUN_SIZE, "height": RUN_SIZE})
    _set_widgets(ui, "LoadImage", {"image": "indigo_test_16x16.png"})
    _set_widgets(ui, "INDIGO_GuidedKSampler", {"steps": RUN_STEPS})
    inn_name = _widget_values(WORKFLOWS[RUN_WORKFLOW], "INDIGO_LoadINN").pop()
    load_inn = _node_id(ui, "INDIGO_LoadINN")
    # the badge comes from the file's header before anything runs
    ui.page.wait_for_function("(id) => app.graph.getNodeById(id).indigoInn?.domain === 'latent'", arg=load_inn,
                              timeout=15000)
    ui.js("""() => {
      window.__indigoRun = { success: false, error: null };
      app.api.addEventListener('execution_success', () => { window.__indigoRun.success = true; });
      app.api.addEventListener('execution_error', (e) => { window.__indigoRun.error = e.detail; });
    }""")
    t0 = time.monotonic()
    ui.page.locator('[data-testid="queue-button"]').first.click()
    ui.page.wait_for_function("() => window.__indigoRun.success || window.__indigoRun.error", timeout=240000)
    run_seconds = time.monotonic() - t0
    error = ui.js("() => window.__indigoRun.error")
    assert error is None, f"the run failed: {error}\n{comfy_server.log_tail()}"
    save = _node_id(ui, "SaveImage")
    ui.page.wait_for_function("(id) => { const n = app.graph.getNodeById(id); "
                              "return n.imgs?.length && n.imgs[0].complete && n.imgs[0].naturalWidth > 0; }",
                              arg=save, timeout=30000)
    size = ui.js("(id) => { const i = app.graph.getNodeById(id).imgs[0]; return [i.naturalWidth, i.naturalHeight]; }",
                 save)
    assert size == [RUN_SIZE, RUN_SIZE]
    sampler = _node_id(ui, "INDIGO_GuidedKSampler")
    plot = ui.js("""(id) => { const p = app.graph.getNodeById(id).indigoPlot;
      return { steps: p.steps, events: p.events, done: p.done, residual: Array.from(p.residual, (v) => v ?? null) }; }""",
                 sampler)
    assert plot["done"] and plot["steps"] == RUN_STEPS, plot
    assert plot["events"] == RUN_STEPS, f"expected one live message per step, got {plot['events']}"
    assert len(plot["residual"]) == RUN_STEPS and all(v is not None and np.isfinite(v) and v >= 0
                                                     for v in plot["residual"]), plot
    inn = ui.js("(id) => app.graph.getNodeById(id).indigoInn", load_inn)
    assert inn["name"] == inn_name and inn["domain"] == "latent" and inn["scale"] == 1 and inn["params"] > 0, inn
    ui.js(bh.FIT_VIEW_JS)
    ui.page.wait_for_timeout(300)
    ui.screenshot("run_latent_inn_bundled_prior")
    assert ui.errors(mark) == []
    print(f"tiny run from the page: {run_seconds:.1f} s; plot {plot['residual']}")


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
