// comfyui-indigo frontend extension ("comfyui-indigo.ui").
//
// 1. Live guidance plot. The guidance sends one "indigo.progress" message per guided sampler call
//    ({node, display_node, prompt_id, step, steps, residual: [rms per batch item], refine_loss,
//    regularised}); only the prompt this page follows is drawn (see `followed`), on the node its
//    execution id (display_node: "12:5" inside subgraphs) names; the INDIGO
//    sampler nodes (Guided KSampler, Tiled INDIGO, Apply INDIGO Guidance) draw the per-step
//    data-consistency residual (batch mean) and, when refinement is on, the refinement loss. When a
//    sampler node finishes, its UI output "indigo_run" (the whole run) replaces the live values.
// 2. INN badges. Load INN shows "pixel ×4" / "latent ×1": from the file's header as soon as a file
//    is chosen (GET /indigo/inn_info, nodes/routes.py), then from the node's own UI output
//    ("indigo_inn") once it has run. INN Info and Compare Images show their text output.
// 3. Size warnings. Whenever the graph changes, and again before queueing, the sizes a guidance
//    node will see are worked out from the graph (Load Image files, Empty Latent Image, scaling
//    nodes, Synthetic Degradation, VAE Encode...). When an INN and a measurement cannot match
//    (a PixelINN needs exactly output size / scale; a LatentINN the output's aspect ratio), the
//    node gets a red badge and outline and a warning toast says what is expected. Nothing is
//    blocked: sizes that cannot be worked out are never guessed, and the check before queueing
//    waits at most CHECK_WAIT_MS for sizes still loading (a stalled request never holds up Run).
// 4. File names as text. The pack's combos list the files of models/indigo/; this frontend's
//    LiteGraph menus put each entry in with innerHTML, so a file named "<img src=x onerror=...>"
//    would run as script when the list is opened. Combo menus show their entries as text.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EXTENSION = "comfyui-indigo.ui";
const PROGRESS_EVENT = "indigo.progress";
const LOAD_INN = "INDIGO_LoadINN";
const INN_INFO = "INDIGO_INNInfo";
const COMPARE = "INDIGO_CompareImages";
const INN_REFINE = "INDIGO_INNRefine";
const SAMPLERS = ["INDIGO_GuidedKSampler", "INDIGO_TiledSampler"];
const GUIDED = [...SAMPLERS, "INDIGO_ApplyGuidance"];
const VAE_FACTOR = 8; // SD-family autoencoders and the bundled prior: latent = image / 8
const BADGE_COLORS = { pixel: "#2d5c8a", latent: "#6a3d8a", warn: "#b3261e" };
const PLOT_HEIGHT = 120;
const CHECK_INTERVAL_MS = 1000;
const INFO_TTL_MS = 15000;
const CHECK_WAIT_MS = 2500; // most a size check waits for image sizes / INN facts still loading
const MAX_PLOT_STEPS = 100000; // progress steps beyond this are not plotted (ComfyUI's samplers stop at 10000)

// ------------------------------------------------------------------------------------ helpers

/** Short badge text for an INN summary: "pixel ×4", "latent ×1". */
export function innBadgeText(info) {
  if (!info || !info.domain) return "";
  return `${info.domain} \u00d7${info.scale}`;
}

/** `table[key]` for the table's own keys only ("constructor", "__proto__" are not entries). */
function own(table, key) {
  return typeof key === "string" && Object.hasOwn(table, key) ? table[key] : undefined;
}

function widgetValue(node, name) {
  return node?.widgets?.find((w) => w.name === name)?.value;
}

function toast(severity, summary, detail, life = 8000) {
  const t = app.extensionManager?.toast;
  if (t?.add) t.add({ severity, summary, detail, life });
  else console.warn(`[comfyui-indigo] ${summary}: ${detail}`);
}

function graphLink(graph, id) {
  if (id == null || !graph) return null;
  const links = graph.links;
  return (links?.get ? links.get(id) : links?.[id]) ?? graph._links?.get?.(id) ?? null;
}

/** The node and output slot feeding input `name` of `node` (legacy Reroute nodes are followed). */
function source(node, name, depth = 0) {
  const graph = node?.graph ?? app.graph;
  const input = node?.inputs?.find((i) => i.name === name);
  if (!input || input.link == null || depth > 32) return null;
  const link = graph.getLink?.(input.link) ?? graphLink(graph, input.link);
  if (!link) return null;
  const origin = graph.getNodeById(link.origin_id);
  if (!origin) return null;
  if (origin.type === "Reroute") return source(origin, origin.inputs?.[0]?.name, depth + 1);
  return { node: origin, slot: link.origin_slot };
}

/** Nodes fed by output `slot` of `node`, with the input names they use. */
function targets(node, slot) {
  const graph = node?.graph ?? app.graph;
  const out = [];
  for (const id of node?.outputs?.[slot]?.links ?? []) {
    const link = graph.getLink?.(id) ?? graphLink(graph, id);
    const target = link && graph.getNodeById(link.target_id);
    if (target) out.push({ node: target, input: target.inputs?.[link.target_slot]?.name });
  }
  return out;
}

/** The node an execution id names in the root graph: "7", or "12:5" for node 5 inside the subgraph
 * of node 12 (ComfyUI's execution ids / display_node: the subgraph nodes' ids from the root, then
 * the node's own). Null when any part does not name a node there. */
function findNode(id) {
  if (id == null) return null;
  const parts = String(id).split(":");
  let graph = app.rootGraph ?? app.graph;
  let node = null;
  for (const [k, part] of parts.entries()) {
    if (!graph || part === "") return null;
    node = graph.getNodeById(part) ?? (/^\d+$/.test(part) ? graph.getNodeById(Number(part)) : null);
    if (!node) return null;
    if (k < parts.length - 1) graph = node.subgraph ?? null; // a subgraph node: go inside
  }
  return node;
}

// ---------------------------------------------------------------------------- 1. live plot

function newPlot(promptId = null) {
  return { promptId, steps: 0, residual: [], refine: [], regularised: new Set(), events: 0, done: false };
}

const mean = (values) => (values.length ? values.reduce((a, b) => a + b, 0) / values.length : NaN);

function fmt(v) {
  if (v == null || !Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e4) ? v.toExponential(2) : v.toPrecision(3);
}

function drawSeries(ctx, values, box, color, dashed) {
  const pts = values.map((v, i) => [i, v]).filter(([, v]) => v != null && Number.isFinite(v));
  if (!pts.length) return;
  let lo = Math.min(...pts.map((p) => p[1]));
  let hi = Math.max(...pts.map((p) => p[1]));
  if (hi - lo < 1e-12) {
    hi += 0.5 * Math.abs(hi || 1);
    lo -= 0.5 * Math.abs(lo || 1);
  }
  const n = Math.max(box.steps - 1, 1);
  const X = (i) => box.x + (box.w * i) / n;
  const Y = (v) => box.y + box.h - (box.h * (v - lo)) / (hi - lo);
  ctx.save();
  ctx.strokeStyle = color;
  ctx.fillStyle = color;
  ctx.lineWidth = 1.5;
  if (dashed) ctx.setLineDash([4, 3]);
  ctx.beginPath();
  pts.forEach(([i, v], k) => (k ? ctx.lineTo(X(i), Y(v)) : ctx.moveTo(X(i), Y(v))));
  ctx.stroke();
  ctx.setLineDash([]);
  for (const [i, v] of pts) ctx.fillRect(X(i) - 1.5, Y(v) - 1.5, 3, 3);
  ctx.restore();
}

function drawPlot(canvas, plot) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(canvas.clientWidth, 50);
  const h = Math.max(canvas.clientHeight, 40);
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = "#1b1b1f";
  ctx.fillRect(0, 0, w, h);
  ctx.font = "11px sans-serif";
  const box = { x: 8, y: 18, w: w - 16, h: h - 30, steps: Math.max(plot.steps, plot.residual.length, 2) };
  ctx.strokeStyle = "#444";
  ctx.strokeRect(box.x, box.y, box.w, box.h);
  const nRes = plot.residual.filter((v) => v != null).length;
  if (!nRes && !plot.refine.some((v) => v != null)) {
    ctx.fillStyle = "#999";
    ctx.fillText("guidance residual: appears while sampling", box.x + 4, box.y + box.h / 2 + 4);
    return;
  }
  // regulariser steps as faint bands
  ctx.fillStyle = "rgba(120, 200, 120, 0.12)";
  for (const s of plot.regularised) {
    const n = Math.max(box.steps - 1, 1);
    ctx.fillRect(box.x + (box.w * s) / n - 2, box.y, 4, box.h);
  }
  drawSeries(ctx, plot.residual, box, "#4fc3f7", false);
  drawSeries(ctx, plot.refine, box, "#ffb74d", true);
  const last = (arr) => [...arr].reverse().find((v) => v != null);
  ctx.fillStyle = "#4fc3f7";
  ctx.fillText(`residual ${fmt(last(plot.residual))}`, box.x, 12);
  if (plot.refine.some((v) => v != null)) {
    ctx.fillStyle = "#ffb74d";
    ctx.fillText(`refine loss ${fmt(last(plot.refine))}`, box.x + 110, 12);
  }
  ctx.fillStyle = "#aaa";
  const label = `step ${nRes}/${plot.steps || "?"}${plot.done ? " ✓" : ""}`;
  ctx.fillText(label, box.x + box.w - ctx.measureText(label).width, 12);
  ctx.fillText("0", box.x, h - 2);
  const end = String(box.steps - 1);
  ctx.fillText(end, box.x + box.w - ctx.measureText(end).width, h - 2);
}

function addPlotWidget(node) {
  const canvas = document.createElement("canvas");
  canvas.className = "indigo-plot";
  canvas.style.width = "100%";
  canvas.style.height = `${PLOT_HEIGHT}px`;
  canvas.title = "INDIGO guidance: data-consistency residual per step (blue), refinement loss (orange, dashed)";
  node.indigoPlot = newPlot();
  node.indigoPlotCanvas = canvas;
  const widget = node.addDOMWidget("indigo_plot", "indigo_plot", canvas, {
    serialize: false,
    hideOnZoom: false,
    getValue: () => undefined,
    setValue: () => {},
    getMinHeight: () => PLOT_HEIGHT + 6,
    getMaxHeight: () => PLOT_HEIGHT + 6,
  });
  widget.serialize = false;
  new ResizeObserver(() => drawPlot(canvas, node.indigoPlot)).observe(canvas);
  drawPlot(canvas, node.indigoPlot);
  return widget;
}

function redraw(node) {
  if (node.indigoPlotCanvas) drawPlot(node.indigoPlotCanvas, node.indigoPlot);
  node.setDirtyCanvas?.(true, false);
}

// The prompt whose progress is drawn, chosen as ComfyUI's own frontend chooses the prompt whose
// progress it shows: the one whose "execution_start" this page got (ComfyUI sends it to the client
// that queued the prompt only; a prompt queued without a client id, e.g. by an API script, sends
// none, though its progress reaches every page). Prompts this page queued are followed too, and are
// drawn only while the workflow they were queued from is the one open.
let currentPrompt = null;
const queuedPrompts = new Map(); // prompt id -> the workflow (ComfyWorkflow) it was queued from
const MAX_QUEUED = 200;

function activeWorkflow() {
  return app.extensionManager?.workflow?.activeWorkflow ?? null;
}

/** Remember the prompts this page queues (api.queuePrompt, as the frontend's own storePrompt does). */
function wrapApiQueue() {
  const original = api.queuePrompt;
  if (typeof original !== "function" || original.indigoWrapped) return;
  const wrapped = async function (...args) {
    const workflow = activeWorkflow();
    const res = await original.apply(this, args);
    if (res?.prompt_id != null) {
      queuedPrompts.set(String(res.prompt_id), workflow);
      while (queuedPrompts.size > MAX_QUEUED) queuedPrompts.delete(queuedPrompts.keys().next().value);
    }
    return res;
  };
  wrapped.indigoWrapped = true;
  api.queuePrompt = wrapped;
}

/** Whether progress of prompt `promptId` is to be drawn on the open graph. */
function followed(promptId) {
  if (promptId == null) return false; // not said which prompt it is from: it cannot be placed
  const id = String(promptId);
  if (id !== currentPrompt && !queuedPrompts.has(id)) return false;
  const from = queuedPrompts.get(id); // unknown for a prompt only seen starting: the open graph
  return !from || !activeWorkflow() || from === activeWorkflow();
}

function onProgress(event) {
  const d = event.detail ?? {};
  if (!followed(d.prompt_id)) return;
  const node = findNode(d.display_node ?? d.node);
  if (!node || !node.indigoPlot) return;
  const promptId = String(d.prompt_id);
  if (node.indigoPlot.promptId !== promptId || node.indigoPlot.done) node.indigoPlot = newPlot(promptId);
  const plot = node.indigoPlot;
  const step = Number(d.step);
  if (!Number.isInteger(step) || step < 0 || step >= MAX_PLOT_STEPS) return; // not a step: nothing kept
  plot.events += 1;
  const steps = Number(d.steps);
  if (Number.isInteger(steps) && steps > 0 && steps <= MAX_PLOT_STEPS) plot.steps = steps;
  if (Array.isArray(d.residual) && d.residual.length) plot.residual[step] = mean(d.residual.map(Number));
  if (d.refine_loss != null) plot.refine[step] = Number(d.refine_loss);
  if (d.regularised) plot.regularised.add(step);
  redraw(node);
}

/** The sampler node's own record of the run (UI output "indigo_run") replaces the live values. */
function onRunRecord(node, run) {
  const plot = newPlot(currentPrompt);
  plot.events = node.indigoPlot?.events ?? 0;
  plot.steps = node.indigoPlot?.steps || 0;
  const entries = (list) => (Array.isArray(list) ? list : []).filter(
    (e) => Array.isArray(e) && Number.isInteger(e[0]) && e[0] >= 0 && e[0] < MAX_PLOT_STEPS);
  for (const [i, r] of entries(run.residual)) plot.residual[i] = Array.isArray(r) ? mean(r.map(Number)) : Number(r);
  for (const [i, v] of entries(run.refine_loss)) plot.refine[i] = Number(v);
  for (const s of Array.isArray(run.regularised_steps) ? run.regularised_steps : []) plot.regularised.add(s);
  plot.steps = Math.max(plot.steps, plot.residual.length, plot.refine.length);
  plot.done = run.completed !== false;
  plot.final = run;
  node.indigoPlot = plot;
  redraw(node);
}

// ---------------------------------------------------------------------------- 2. INN badges

const innInfoCache = new Map(); // name -> {time, promise}

/** Facts of an INN file from the server (header only), cached for a few seconds. */
function fetchInnInfo(name) {
  if (!name) return Promise.resolve(null);
  const hit = innInfoCache.get(name);
  if (hit && Date.now() - hit.time < INFO_TTL_MS) return hit.promise;
  const promise = api
    .fetchApi(`/indigo/inn_info?name=${encodeURIComponent(name)}`)
    .then(async (r) => (r.ok ? await r.json() : { ok: false, error: `HTTP ${r.status}` }))
    .catch((e) => ({ ok: false, error: String(e) }));
  innInfoCache.set(name, { time: Date.now(), promise, value: undefined });
  promise.then((v) => {
    const entry = innInfoCache.get(name);
    if (entry?.promise === promise) entry.value = v;
  });
  return promise;
}

function cachedInnInfo(name) {
  return innInfoCache.get(name)?.value;
}

function addBadge(node, key, make) {
  node.indigoBadges ??= new Set();
  if (node.indigoBadges.has(key) || !Array.isArray(node.badges) || !window.LGraphBadge) return;
  node.indigoBadges.add(key);
  node.badges.push(make);
}

/** Show `info` (an INN summary) as a badge on `node`; one badge per node, updated in place. */
function setInnBadge(node, info) {
  node.indigoInn = info ?? null;
  addBadge(node, "inn", () => {
    const text = innBadgeText(node.indigoInn);
    return new window.LGraphBadge({ text, bgColor: text ? own(BADGE_COLORS, node.indigoInn?.domain) ?? "#333" : "transparent" });
  });
  node.setDirtyCanvas?.(true, true);
}

/** The INN facts of a Load INN node: its last run if that was the file selected now, else the header. */
function loadInnFacts(node) {
  const name = widgetValue(node, "inn_name");
  if (node.indigoInn && (node.indigoInn.name == null || node.indigoInn.name === name)) return node.indigoInn;
  const info = cachedInnInfo(name);
  return info?.ok ? info : null;
}

function refreshLoadInnBadge(node) {
  const name = widgetValue(node, "inn_name");
  if (node.indigoInn?.name === name) return;
  fetchInnInfo(name).then((info) => {
    if (widgetValue(node, "inn_name") !== name) return;
    if (info?.ok) setInnBadge(node, info);
    else setInnBadge(node, null);
  });
}

/** Add a read-only, not-serialised text box (INN Info summary, Compare Images metrics). */
function addTextBox(node, placeholder) {
  const box = document.createElement("textarea");
  box.readOnly = true;
  box.className = "comfy-multiline-input";
  box.placeholder = placeholder;
  box.style.opacity = "0.85";
  const widget = node.addDOMWidget("indigo_text", "indigo_text", box, {
    serialize: false,
    getValue: () => box.value,
    setValue: (v) => {
      box.value = v ?? "";
    },
  });
  widget.serialize = false;
  node.indigoText = box;
  return widget;
}

// ------------------------------------------------------------------------- 3. size warnings

const imageDims = new Map(); // "/view?..." -> {w, h} | null (failed) ; pending: Promise

function loadImageDims(url) {
  if (imageDims.has(url)) return imageDims.get(url);
  const pending = new Promise((resolve) => {
    const img = new Image();
    img.onload = () => {
      imageDims.set(url, { w: img.naturalWidth, h: img.naturalHeight });
      resolve();
    };
    img.onerror = () => {
      imageDims.set(url, null);
      resolve();
    };
    img.src = url;
  });
  imageDims.set(url, pending);
  return pending;
}

/** Size {w, h} of a Load Image file, or null (unknown yet: the load is started, ctx.pending gets it). */
function loadImageSize(node, ctx) {
  const widget = node.widgets?.find((w) => w.name === "image");
  let value = widget?.value;
  if (!value || typeof value !== "string") return null;
  const listed = widget.options?.values;
  if (Array.isArray(listed) && !listed.includes(value)) return null; // not on the server: nothing to measure
  const shown = node.imgs?.[0]; // the preview the frontend loaded, if it is of this file
  if (shown?.complete && shown.naturalWidth > 0) {
    const params = new URL(shown.src, window.location.href).searchParams;
    if (params.get("filename") === value.replace(/ \[(input|output|temp)\]$/, "").split("/").pop()) {
      return { w: shown.naturalWidth, h: shown.naturalHeight };
    }
  }
  let type = "input";
  const m = value.match(/^(.*) \[(input|output|temp)\]$/);
  if (m) [, value, type] = m;
  const cut = value.lastIndexOf("/");
  const subfolder = cut >= 0 ? value.slice(0, cut) : "";
  const filename = cut >= 0 ? value.slice(cut + 1) : value;
  const params = new URLSearchParams({ filename, type, subfolder });
  const url = api.apiURL(`/view?${params}`);
  const known = imageDims.get(url);
  if (known === undefined || known instanceof Promise) {
    ctx.pending.push(loadImageDims(url));
    return null;
  }
  return known;
}

function scaled(size, width, height) {
  if (!size && (!width || !height)) return null;
  if (width && height) return { w: width, h: height };
  if (!size) return null;
  if (!width && !height) return size;
  if (!width) return { w: Math.max(1, Math.round((size.w * height) / size.h)), h: height };
  return { w: width, h: Math.max(1, Math.round((size.h * width) / size.w)) };
}

const PASS_IMAGE = new Set(["ImageInvert", "ImageBlur", "ImageSharpen", "ImageQuantize", "RepeatImageBatch",
  "ImageFromBatch", "ImageBatch", "ImageCompositeMasked"]);
const PASS_LATENT = { RepeatLatentBatch: "samples", LatentFromBatch: "samples", SetLatentNoiseMask: "samples",
  LatentBatch: "samples1", KSampler: "latent_image", KSamplerAdvanced: "latent_image",
  SamplerCustom: "latent_image", SamplerCustomAdvanced: "latent_image", INDIGO_GuidedKSampler: "latent_image",
  INDIGO_TiledSampler: "latent_image", INDIGO_Regulariser: "latent" };

/** Image size {w, h} (pixels) of IMAGE output `slot` of `node`, or null when unknown. */
function imageSize(src, ctx, depth = 0) {
  if (!src || depth > 32) return null;
  const { node } = src;
  const up = (name) => imageSize(source(node, name), ctx, depth + 1);
  switch (node.type) {
    case "LoadImage":
      return loadImageSize(node, ctx);
    case "ImageScale":
      return scaled(up("image"), widgetValue(node, "width"), widgetValue(node, "height"));
    case "ImageScaleBy": {
      const s = up("image");
      const k = Number(widgetValue(node, "scale_by"));
      return s && k ? { w: Math.round(s.w * k), h: Math.round(s.h * k) } : null;
    }
    case "ImageCrop": {
      const s = up("image");
      if (!s) return null;
      const x = Math.min(widgetValue(node, "x") ?? 0, s.w - 1);
      const y = Math.min(widgetValue(node, "y") ?? 0, s.h - 1);
      return { w: Math.min(widgetValue(node, "width"), s.w - x), h: Math.min(widgetValue(node, "height"), s.h - y) };
    }
    case "INDIGO_SyntheticDegradation": {
      const s = up("image");
      const k = Number(widgetValue(node, "scale"));
      return s && k ? { w: Math.floor(s.w / k), h: Math.floor(s.h / k) } : null;
    }
    case "VAEDecode":
    case "VAEDecodeTiled":
      return latentSize(source(node, "samples"), ctx, depth + 1);
    case "INDIGO_GuidedKSampler":
    case "INDIGO_TiledSampler":
      return latentSize(source(node, "latent_image"), ctx, depth + 1);
    default:
      if (PASS_IMAGE.has(node.type)) return up(node.inputs?.find((i) => i.type === "IMAGE")?.name);
      return null;
  }
}

/** Image-space size {w, h} of LATENT output `slot` of `node` (latent size × 8), or null. */
function latentSize(src, ctx, depth = 0) {
  if (!src || depth > 32) return null;
  const { node } = src;
  const f = VAE_FACTOR;
  switch (node.type) {
    case "EmptyLatentImage": {
      const w = Number(widgetValue(node, "width"));
      const h = Number(widgetValue(node, "height"));
      return w && h ? { w: Math.floor(w / f) * f, h: Math.floor(h / f) * f } : null;
    }
    case "VAEEncode":
    case "VAEEncodeTiled":
    case "VAEEncodeForInpaint": {
      const s = imageSize(source(node, "pixels"), ctx, depth + 1);
      return s ? { w: Math.floor(s.w / f) * f, h: Math.floor(s.h / f) * f } : null;
    }
    case "LatentUpscale": {
      const s = scaled(latentSize(source(node, "samples"), ctx, depth + 1),
        widgetValue(node, "width"), widgetValue(node, "height"));
      return s ? { w: Math.floor(s.w / f) * f, h: Math.floor(s.h / f) * f } : null;
    }
    case "LatentUpscaleBy": {
      const s = latentSize(source(node, "samples"), ctx, depth + 1);
      const k = Number(widgetValue(node, "scale_by"));
      return s && k ? { w: Math.round((s.w / f) * k) * f, h: Math.round((s.h / f) * k) * f } : null;
    }
    default:
      if (own(PASS_LATENT, node.type)) return latentSize(source(node, own(PASS_LATENT, node.type)), ctx, depth + 1);
      return null;
  }
}

/** INN facts {domain, scale, channels} reaching an INDIGO_INN input, or null. */
function innFacts(src, ctx, depth = 0) {
  if (!src || depth > 32) return null;
  const { node, slot } = src;
  if (node.type === LOAD_INN) {
    const facts = loadInnFacts(node);
    if (!facts) {
      const name = widgetValue(node, "inn_name");
      if (name && cachedInnInfo(name) === undefined) ctx.pending.push(fetchInnInfo(name));
    }
    return facts;
  }
  if (node.type === INN_REFINE && slot === 1) return innFacts(source(node, "inn"), ctx, depth + 1);
  return null;
}

/** Latent (image-space) sizes a guidance node's MODEL will be sampled at. */
function guidedLatentSizes(node, ctx) {
  if (SAMPLERS.includes(node.type)) return [latentSize(source(node, "latent_image"), ctx)];
  const found = [];
  const seen = new Set();
  const walk = (n, depth) => {
    if (depth > 6 || seen.has(n.id)) return;
    seen.add(n.id);
    n.outputs?.forEach((out, slot) => {
      if (!["MODEL", "GUIDER", "*"].includes(out.type)) return;
      for (const t of targets(n, slot)) {
        if (t.node.inputs?.some((i) => i.name === "latent_image")) found.push(latentSize(source(t.node, "latent_image"), ctx));
        else walk(t.node, depth + 1);
      }
    });
  };
  walk(node, 0);
  return found;
}

const MODE_DOMAIN = { latent_inn: "latent", pixel_inn: "pixel", ldps: "pixel" };

/** The size problem of one guidance node, as a sentence, or null. */
export function checkGuidanceNode(node, ctx) {
  const inn = innFacts(source(node, "inn"), ctx);
  if (!inn) return null;
  const mode = widgetValue(node, "mode") ?? "auto";
  const domain = mode === "auto" ? inn.domain : own(MODE_DOMAIN, mode);
  if (!domain) return null; // modes that do not use the INN
  if (domain !== inn.domain) {
    return `mode '${mode}' needs a ${domain} INN, but the INN is a ${inn.domain} INN (${innBadgeText(inn)}).`;
  }
  const y = imageSize(source(node, "measurement"), ctx);
  if (!y) return null;
  for (const out of guidedLatentSizes(node, ctx)) {
    if (!out) continue;
    const lat = `${out.w / VAE_FACTOR}×${out.h / VAE_FACTOR}`;
    if (inn.domain === "pixel") {
      const want = { w: Math.floor(out.w / inn.scale), h: Math.floor(out.h / inn.scale) };
      if (want.w !== y.w || want.h !== y.h) {
        return `measurement is ${y.w}×${y.h} px, but a PixelINN ×${inn.scale} with a ${out.w}×${out.h} output ` +
          `(latent ${lat}) needs exactly ${want.w}×${want.h} (width×height). Resize the measurement or the latent.`;
      }
    } else {
      const tol = 1 + 0.01 * Math.max(y.w, y.h);
      if (Math.abs(y.w - (y.h * out.w) / out.h) > tol && Math.abs(y.h - (y.w * out.h) / out.w) > tol) {
        return `measurement is ${y.w}×${y.h} px, but the output is ${out.w}×${out.h} (latent ${lat}): a LatentINN ` +
          `needs the same aspect ratio, e.g. ${Math.round(out.w / 4)}×${Math.round(out.h / 4)}.`;
      }
    }
  }
  return null;
}

/** Check every guidance node; returns [{node, message}] and marks the nodes. */
function checkGraph(ctx) {
  const found = [];
  for (const node of app.graph?.nodes ?? []) {
    if (!GUIDED.includes(node.type) || node.mode === 2 || node.mode === 4) continue; // muted / bypassed
    let message = null;
    try {
      message = checkGuidanceNode(node, ctx);
    } catch (e) {
      console.debug("[comfyui-indigo] size check skipped:", e);
    }
    if (message) found.push({ node, message });
    setWarning(node, message);
  }
  return found;
}

function setWarning(node, message) {
  if ((node.indigoWarning ?? null) === message) return;
  node.indigoWarning = message;
  addBadge(node, "warn", () =>
    new window.LGraphBadge({
      text: node.indigoWarning ? "⚠ size mismatch" : "",
      bgColor: node.indigoWarning ? BADGE_COLORS.warn : "transparent",
    })
  );
  node.setDirtyCanvas?.(true, true);
}

const announced = new Set(); // "<node id>|<message>" already shown in a toast

function announce(found, always) {
  for (const { node, message } of found) {
    const key = `${node.id}|${message}`;
    if (!always && announced.has(key)) continue;
    announced.add(key);
    toast("warn", `INDIGO: sizes cannot match (${node.title || node.type} #${node.id})`, message, 10000);
  }
}

/** Wait for `pending` (promises that never reject) until `deadline` (Date.now() value) at most. */
function settle(pending, deadline) {
  let timer;
  const late = new Promise((resolve) => {
    timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
  });
  return Promise.race([Promise.allSettled(pending), late]).finally(() => clearTimeout(timer));
}

/** Full check: waits (CHECK_WAIT_MS at most) for image sizes and INN facts still loading, then
 * checks again; what is still unknown then is left unchecked. */
export async function checkSizes({ announceAll = false } = {}) {
  const deadline = Date.now() + CHECK_WAIT_MS;
  let ctx = { pending: [] };
  let found = checkGraph(ctx);
  for (let round = 0; round < 3 && ctx.pending.length && Date.now() < deadline; round++) {
    await settle(ctx.pending, deadline);
    ctx = { pending: [] };
    found = checkGraph(ctx);
  }
  announce(found, announceAll);
  return found.map(({ node, message }) => ({ node: node.id, message }));
}

/** What the size check sees for guidance node `id`: {inn, measurement, outputs} (null = unknown). */
export async function sizesOf(id) {
  const node = findNode(id);
  if (!node) return null;
  let ctx = { pending: [] };
  const read = () => ({
    inn: innFacts(source(node, "inn"), ctx),
    measurement: imageSize(source(node, "measurement"), ctx),
    outputs: guidedLatentSizes(node, ctx),
  });
  const deadline = Date.now() + CHECK_WAIT_MS;
  let seen = read();
  for (let round = 0; round < 3 && ctx.pending.length && Date.now() < deadline; round++) {
    await settle(ctx.pending, deadline);
    ctx = { pending: [] };
    seen = read();
  }
  return seen;
}

function startWatcher() {
  let busy = false;
  setInterval(async () => {
    if (busy || !app.graph?.nodes?.some((n) => GUIDED.includes(n.type))) return;
    busy = true;
    try {
      await checkSizes();
    } finally {
      busy = false;
    }
  }, CHECK_INTERVAL_MS);
}

function wrapQueue() {
  const original = app.queuePrompt;
  if (typeof original !== "function" || original.indigoWrapped) return;
  const wrapped = async function (...args) {
    try {
      await checkSizes({ announceAll: true });
    } catch (e) {
      console.debug("[comfyui-indigo] size check failed:", e);
    }
    return original.apply(this, args);
  };
  wrapped.indigoWrapped = true;
  app.queuePrompt = wrapped;
}

function drawWarningOutline(node, ctx) {
  if (!node.indigoWarning || node.flags?.collapsed) return;
  const title = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  ctx.save();
  ctx.strokeStyle = BADGE_COLORS.warn;
  ctx.lineWidth = 3;
  ctx.setLineDash([8, 4]);
  ctx.strokeRect(-3, -title - 3, node.size[0] + 6, node.size[1] + title + 6);
  ctx.restore();
}

// -------------------------------------------------------------------- 4. combo menus as text

let comboMenuDepth = 0; // > 0 while a combo widget builds its menu

/** Menu entries added while a combo widget opens its list are shown as text, not parsed as HTML
 * (LiteGraph's ContextMenu.addItem sets innerHTML). Entries without "<" or "&" are left to the
 * original code: for them text and HTML are the same. */
function patchContextMenu() {
  const proto = window.LiteGraph?.ContextMenu?.prototype;
  if (!proto || typeof proto.addItem !== "function" || proto.addItem.indigoAsText) return;
  const addItem = proto.addItem;
  const asText = function (name, value, options) {
    if (comboMenuDepth > 0 && typeof name === "string" && /[<&]/.test(name) &&
        (typeof value === "string" || typeof value === "number")) {
      const element = addItem.call(this, "", value, options);
      if (element instanceof Element) element.textContent = name;
      return element;
    }
    return addItem.apply(this, arguments);
  };
  asText.indigoAsText = true;
  proto.addItem = asText;
}

/** Mark the menus of every combo widget (the widget class `widget` is one of). */
function patchComboWidgets(widget) {
  const proto = widget ? Object.getPrototypeOf(widget) : null;
  if (!proto || proto === Object.prototype || !Object.hasOwn(proto, "onClick")) return false;
  if (typeof proto.onClick !== "function" || proto.onClick.indigoAsText) return true;
  const onClick = proto.onClick;
  const marked = function (...args) {
    comboMenuDepth += 1;
    try {
      return onClick.apply(this, args);
    } finally {
      comboMenuDepth -= 1;
    }
  };
  marked.indigoAsText = true;
  proto.onClick = marked;
  return true;
}

let comboWidgetsPatched = false;

// ---------------------------------------------------------------------------- registration

app.registerExtension({
  name: EXTENSION,

  async setup() {
    patchContextMenu();
    api.addEventListener(PROGRESS_EVENT, onProgress);
    api.addEventListener("execution_start", (e) => {
      const id = e.detail?.prompt_id;
      currentPrompt = id == null ? null : String(id);
    });
    wrapQueue();
    wrapApiQueue();
    startWatcher();
    // For scripts and tests: the same checks the UI runs.
    window.comfyIndigo = { checkSizes, sizesOf, innBadgeText, version: 1 };
  },

  nodeCreated(node) {
    if (!comboWidgetsPatched) {
      try {
        comboWidgetsPatched = patchComboWidgets(node.widgets?.find((w) => w.type === "combo"));
      } catch (e) {
        console.debug("[comfyui-indigo] combo menus not marked:", e);
      }
    }
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    const name = nodeData?.name;
    if (![LOAD_INN, INN_INFO, COMPARE, ...GUIDED].includes(name)) return;
    const proto = nodeType.prototype;

    const onNodeCreated = proto.onNodeCreated;
    proto.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      if (name === INN_INFO) addTextBox(this, "Run the graph to see the INN's domain, scale and size.");
      if (name === COMPARE) addTextBox(this, "Run the graph to see PSNR, SSIM and LPIPS against the reference.");
      if (GUIDED.includes(name)) addPlotWidget(this);
      if (name !== LOAD_INN) {
        // grow the node to hold the widget just added (its size was computed before)
        const [w, h] = this.computeSize?.() ?? this.size;
        this.setSize?.([Math.max(this.size[0], w), Math.max(this.size[1], h)]);
      }
      if (name === LOAD_INN) {
        const w = this.widgets?.find((x) => x.name === "inn_name");
        if (w) {
          const cb = w.callback;
          w.callback = (...a) => {
            const out = cb?.apply(w, a);
            refreshLoadInnBadge(this);
            return out;
          };
        }
        queueMicrotask(() => refreshLoadInnBadge(this));
      }
      return r;
    };

    if (name === LOAD_INN) {
      const onConfigure = proto.onConfigure;
      proto.onConfigure = function () {
        const r = onConfigure?.apply(this, arguments);
        refreshLoadInnBadge(this);
        return r;
      };
    }

    if (GUIDED.includes(name)) {
      const onDrawForeground = proto.onDrawForeground;
      proto.onDrawForeground = function (ctx) {
        const r = onDrawForeground?.apply(this, arguments);
        drawWarningOutline(this, ctx);
        return r;
      };
    }

    const onExecuted = proto.onExecuted;
    proto.onExecuted = function (message) {
      const r = onExecuted?.apply(this, arguments);
      try {
        const info = message?.indigo_inn?.[0];
        if (info && typeof info === "object") setInnBadge(this, info);
        const text = message?.text?.[0];
        if (text !== undefined && this.indigoText) this.indigoText.value = String(text ?? "");
        const run = message?.indigo_run?.[0];
        if (run && typeof run === "object" && this.indigoPlot) onRunRecord(this, run);
      } catch (e) {
        console.warn("[comfyui-indigo] could not show the node's output:", e);
      }
      return r;
    };
  },
});
