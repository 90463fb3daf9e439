"""A real browser on ComfyUI's real frontend: Debian's chromium driven by Python Playwright.

Used by tests/host/test_browser.py and tools/make_workflows.py. ``playwright`` is a test
dependency (requirements-test.txt); its own browser downloads are never used: the system
chromium (``apt-get install chromium``, see scripts/setup_env.sh) runs with the flags below.

The page is loaded as a returning user's would be: ``prepare_user_dir`` gives the ComfyUI user
folder what a used installation has (settings with the first-run tutorial done, the workflows
and subgraphs folders, an empty user.css), so the frontend's first-run requests for missing
optional files do not end up as console errors. The two optional files the browser asks the web
root for (``/user.css``, ``/favicon.ico``) are answered empty by the page's router. The only
console errors then filtered are the environment's (see ``is_environment_console_error``): the
frontend's own calls to api.comfy.org, blocked offline by the page's Content Security Policy, and
one start-up race of frontend 1.32.9 that a bare ComfyUI logs too.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("INDIGO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
#: Settings of a user who has been through the first run: no Templates dialog over the page. The
#: LOD font size is stored as the value the frontend writes on its first start (writing it before
#: its definition is registered is a frontend 1.32.9 start-up race that logs a TypeError).
USER_SETTINGS = {"Comfy.TutorialCompleted": True, "LiteGraph.Canvas.MinFontSizeForLOD": 8}
#: Dismissed-banner flags the frontend keeps in localStorage.
LOCAL_STORAGE = {"vueNodesBannerDismissed": "true"}
VIEWPORT = {"width": 1600, "height": 1000}
APP_READY = ("() => window.app && window.app.graph && window.app.extensionManager && window.comfyIndigo"
             " && window.LiteGraph?.registered_node_types?.INDIGO_LoadINN")


class BrowserSetupError(RuntimeError):
    """The browser cannot run here; the message says what to install."""


def is_environment_console_error(text: str, during_startup: bool = False) -> bool:
    """The environment's own console errors, which a bare ComfyUI 0.3.75 (no custom nodes) with
    frontend 1.32.9 logs too:

    - the frontend calling api.comfy.org offline, blocked by the page's Content Security Policy;
    - during start-up only (before the app is ready): the frontend's settings store writing
      ``LiteGraph.Canvas.MinFontSizeForLOD`` before that setting's definition is registered, a
      race in the frontend's own start-up that logs ``TypeError: Cannot read properties of
      undefined (reading 'id') at onChange ... at Proxy.set``.
    """
    if "api.comfy.org" in text and "Content Security Policy" in text:
        return True
    return during_startup and text.startswith("TypeError: Cannot read properties of undefined (reading 'id')") \
        and "at onChange (" in text and "at Proxy.set (" in text


def prepare_user_dir(base_dir: Path, user: str = "default") -> Path:
    """A ComfyUI user folder (``<base>/user/<user>``) as a used installation has it."""
    user_dir = Path(base_dir) / "user" / user
    for sub in ("workflows", "subgraphs"):
        (user_dir / sub).mkdir(parents=True, exist_ok=True)
    settings_path = user_dir / "comfy.settings.json"
    settings = json.loads(settings_path.read_text()) if settings_path.exists() else {}
    settings.update(USER_SETTINGS)
    settings_path.write_text(json.dumps(settings, indent=1))
    for name, content in (("user.css", ""), ("comfy.templates.json", "[]")):
        if not (user_dir / name).exists():
            (user_dir / name).write_text(content)
    return user_dir


class Browser:
    """One chromium with one page on a ComfyUI server; collects console errors and failed requests.

    ``errors()`` lists what the page logged as errors (console errors, uncaught exceptions, HTTP
    errors of the page's own requests), environment errors filtered (see module doc).
    """

    def __init__(self, url: str, artifacts: Optional[Path] = None, viewport: Optional[dict] = None) -> None:
        if not Path(CHROMIUM).exists():
            raise BrowserSetupError(f"no chromium at {CHROMIUM}: run ./scripts/test.sh (it installs Debian's "
                                    "chromium) or set INDIGO_CHROMIUM")
        try:
            from playwright.sync_api import sync_playwright
        except ImportError as exc:
            raise BrowserSetupError("Python Playwright is missing: pip install -r requirements-test.txt") from exc
        self.url = url.rstrip("/")
        self.artifacts = Path(artifacts) if artifacts else None
        self.console: list[dict[str, Any]] = []
        self.ready_index = 1 << 30  # console entries before this index were logged during start-up
        self._profile = tempfile.mkdtemp(prefix="indigo-chromium-")
        self._pw = sync_playwright().start()
        try:
            self.context = self._pw.chromium.launch_persistent_context(
                self._profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
                viewport=viewport or VIEWPORT)
        except Exception:
            self._pw.stop()
            raise
        self.page = self.context.pages[0] if self.context.pages else self.context.new_page()
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda e: self.console.append({"type": "pageerror", "text": str(e)}))
        self.page.on("response", self._on_response)
        self.page.add_init_script(
            "".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)});" for k, v in LOCAL_STORAGE.items()))
        for path in ("/user.css", "/favicon.ico"):
            self.page.route(f"{self.url}{path}", lambda route: route.fulfill(status=200, body="",
                                                                             content_type="text/plain"))

    def _on_console(self, msg) -> None:
        if msg.type in ("error", "warning"):
            self.console.append({"type": msg.type, "text": msg.text, "url": (msg.location or {}).get("url", "")})

    def _on_response(self, response) -> None:
        if response.status >= 400 and response.url.startswith(self.url):
            self.console.append({"type": "http", "text": f"HTTP {response.status} {response.url}"})

    # ------------------------------------------------------------------ page
    def open(self, timeout_s: float = 90) -> float:
        """Load the app and wait until the pack's extension is up; returns the seconds it took."""
        import time

        t0 = time.monotonic()
        self.page.goto(self.url + "/", wait_until="domcontentloaded", timeout=timeout_s * 1000)
        self.page.wait_for_function(APP_READY, timeout=timeout_s * 1000)
        self.ready_index = len(self.console)
        return time.monotonic() - t0

    def errors(self, since: int = 0) -> list[dict[str, Any]]:
        """Console errors, uncaught exceptions and HTTP errors after index ``since`` (environment
        errors filtered); warnings are not errors."""
        return [e for k, e in enumerate(self.console) if k >= since
                and e["type"] in ("error", "pageerror", "http")
                and not is_environment_console_error(e["text"], during_startup=k < self.ready_index)]

    def js(self, script: str, arg: Any = None) -> Any:
        return self.page.evaluate(script, arg)

    def screenshot(self, name: str, element: Optional[str] = None) -> Optional[Path]:
        """Save ``<artifacts>/<name>.png`` (the page, or one element); None without an artifacts folder."""
        if self.artifacts is None:
            return None
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / f"{name}.png"
        if element:
            self.page.locator(element).first.screenshot(path=str(path))
        else:
            self.page.screenshot(path=str(path))
        return path

    def close(self) -> None:
        try:
            self.context.close()
        finally:
            self._pw.stop()
            shutil.rmtree(self._profile, ignore_errors=True)


# =========================================================================== graph helpers (page side)

#: Build a graph from a compact spec in the page and return the frontend's own serialisation.
#: spec: {nodes: [[key, type, [x, y], {widget: value}, {title?, size?}]], links: [[from, output, to, input]]}
#: An output is named by its name or type; widgets are set by name (also control_after_generate).
BUILD_GRAPH_JS = """
(spec) => {
  const graph = app.graph;
  graph.clear();
  const made = {};
  for (const [key, type, pos, widgets, opts] of spec.nodes) {
    const node = LiteGraph.createNode(type);
    if (!node) throw new Error(`unknown node type ${type}`);
    graph.add(node);
    node.pos = pos;
    for (const [name, value] of Object.entries(widgets || {})) {
      const w = node.widgets?.find((x) => x.name === name);
      if (!w) throw new Error(`${type} has no widget ${name}`);
      w.value = value;
      w.callback?.(value);
    }
    if (opts?.title) node.title = opts.title;
    if (opts?.color) node.color = opts.color;
    if (opts?.bgcolor) node.bgcolor = opts.bgcolor;
    if (opts?.size) node.setSize(opts.size);
    made[key] = node;
  }
  for (const [a, out, b, inp] of spec.links) {
    const from = made[a], to = made[b];
    let o = from.outputs.findIndex((s) => s.name === out);
    if (o < 0) o = from.outputs.findIndex((s) => s.type === out);
    const i = to.inputs.findIndex((s) => s.name === inp);
    if (o < 0 || i < 0) throw new Error(`cannot link ${a}.${out} -> ${b}.${inp}`);
    from.connect(o, to, i);
  }
  graph.setDirtyCanvas(true, true);
  return JSON.parse(JSON.stringify(graph.serialize()));  // as saved: undefined fields left out
}
"""

#: Load a UI-format workflow the way the Templates browser does; report what the page has then:
#: node count and types, types the frontend does not know, nodes marked with errors, and the
#: toasts (e.g. the frontend's "Invalid workflow against zod schema" alert) shown while loading.
LOAD_WORKFLOW_JS = """
async ([workflow, name]) => {
  app.extensionManager.toast.removeAll();
  await new Promise((r) => setTimeout(r, 100));
  await app.loadGraphData(workflow, true, true, name);
  await new Promise((r) => setTimeout(r, 400));
  const nodes = app.graph.nodes;
  return {
    count: nodes.length,
    types: nodes.map((n) => n.type),
    unregistered: nodes.map((n) => n.type).filter((t) => !LiteGraph.registered_node_types[t]),
    errors: nodes.filter((n) => n.has_errors).map((n) => `${n.type} #${n.id}`),
    toasts: [...document.querySelectorAll(".p-toast-message")].map((t) => t.innerText.trim()),
  };
}
"""

#: Fit the whole graph into the canvas (for screenshots and thumbnails). Argument: true for a clean
#: picture of the graph alone (focus mode, no minimap, full detail at any zoom).
FIT_VIEW_JS = """
async (clean) => {
  if (clean) {
    app.extensionManager.focusMode = true;
    await app.extensionManager.setting.set("Comfy.Minimap.Visible", false);
    app.canvas.min_font_size_for_lod = 0;
    await new Promise((r) => setTimeout(r, 200));
  }
  const nodes = app.graph.nodes;
  if (!nodes.length) return;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of nodes) {
    const t = LiteGraph.NODE_TITLE_HEIGHT || 30;
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - t);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  const pad = 40;
  const ds = app.canvas.ds;
  ds.fitToBounds([x0 - pad, y0 - pad, x1 - x0 + 2 * pad, y1 - y0 + 2 * pad], { zoom: 1 });
  app.canvas.setDirty(true, true);
  app.canvas.draw(true, true);
  // the graph's rectangle on the page (CSS pixels), e.g. to crop a screenshot to it
  const el = app.canvas.canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const toPage = (x, y) => [el.left + ((x + ds.offset[0]) * ds.scale) / dpr, el.top + ((y + ds.offset[1]) * ds.scale) / dpr];
  const [px0, py0] = toPage(x0 - pad / 2, y0 - pad / 2);
  const [px1, py1] = toPage(x1 + pad / 2, y1 + pad / 2);
  return { x: Math.max(0, px0), y: Math.max(0, py0), width: px1 - Math.max(0, px0), height: py1 - Math.max(0, py0) };
}
"""
