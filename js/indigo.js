// comfyui-indigo frontend extension.
// - Load INN / INN Info: a badge with the INN's domain and scale once the node has run
//   (sent by the node in its UI output under "indigo_inn").
// - INN Info: a read-only text box with the INN summary (UI output "text").
// Everything here is namespaced "comfyui-indigo.*"; later parts of the pack (live guidance plots,
// size warnings) register their own handlers in this file.
import { app } from "../../scripts/app.js";

const EXTENSION = "comfyui-indigo.core";
const LOAD_INN = "INDIGO_LoadINN";
const INN_INFO = "INDIGO_INNInfo";
const BADGE_COLORS = { pixel: "#2d5c8a", latent: "#6a3d8a" };

/** Short badge text for an INN summary: "pixel x4", "latent x1". */
export function innBadgeText(info) {
  if (!info || !info.domain) return "";
  return `${info.domain} \u00d7${info.scale}`;
}

/** Show `info` (an INN summary) as a badge on `node`; one badge per node, updated in place. */
function setInnBadge(node, info) {
  node.indigoInn = info ?? null;
  const Badge = window.LGraphBadge;
  if (!Badge || !Array.isArray(node.badges)) return;
  if (!node.indigoBadgeAdded) {
    node.indigoBadgeAdded = true;
    node.badges.push(
      () =>
        new Badge({
          text: innBadgeText(node.indigoInn),
          bgColor: BADGE_COLORS[node.indigoInn?.domain] ?? "#333",
        })
    );
  }
  node.setDirtyCanvas?.(true, true);
}

/** Add a read-only, not-serialised text box to an INN Info node. */
function addSummaryBox(node) {
  const box = document.createElement("textarea");
  box.readOnly = true;
  box.className = "comfy-multiline-input";
  box.placeholder = "Run the graph to see the INN's domain, scale and size.";
  box.style.opacity = "0.85";
  const widget = node.addDOMWidget("indigo_summary", "indigo_summary", box, {
    serialize: false,
    getValue: () => box.value,
    setValue: (v) => {
      box.value = v ?? "";
    },
  });
  widget.serialize = false;
  return widget;
}

app.registerExtension({
  name: EXTENSION,

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== LOAD_INN && nodeData?.name !== INN_INFO) return;

    if (nodeData.name === INN_INFO) {
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const r = onNodeCreated?.apply(this, arguments);
        this.indigoSummary = addSummaryBox(this);
        return r;
      };
    }

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const r = onExecuted?.apply(this, arguments);
      const info = message?.indigo_inn?.[0];
      if (info) setInnBadge(this, info);
      const text = message?.text?.[0];
      if (text !== undefined && this.indigoSummary) this.indigoSummary.value = text;
      return r;
    };
  },
});
