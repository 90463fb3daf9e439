"""The pack's node list.

Adding a node: write ``nodes/<module>.py`` with a V3 ``io.ComfyNode`` class (conventions in
``nodes/common.py``), then add one line ``("<module>", "<ClassName>"),`` to ``NODE_SPECS``.
Node ids and input names are part of saved workflows: never rename one, deprecate instead.

Each module is imported on its own: one that fails (e.g. a missing optional dependency) is logged
with its traceback and its nodes are left out, and the rest of the pack still loads, as ComfyUI
does for whole packs.
"""

from __future__ import annotations

import importlib
import logging

from .host import ComfyExtension, io

log = logging.getLogger("comfyui_indigo")

#: (module in nodes/, node class), in the order the nodes appear in the "Add Node" menu.
NODE_SPECS: tuple[tuple[str, str], ...] = (
    ("load_inn", "LoadINN"),
    ("inn_info", "INNInfo"),
    ("load_prior", "LoadPrior"),
    ("guided_ksampler", "GuidedKSampler"),
    ("apply_guidance", "ApplyGuidance"),
    ("tiled_sampler", "TiledSampler"),
    ("degradation_estimate", "DegradationEstimate"),
    ("stage1_restore", "Stage1Restore"),
    ("inn_refine", "INNRefine"),
    ("regulariser", "Regulariser"),
    ("synthetic_degradation", "SyntheticDegradation"),
    ("colour_fix", "ColourFix"),
    ("compare_images", "CompareImages"),
)


def node_list() -> list[type[io.ComfyNode]]:
    """The node classes of ``NODE_SPECS`` whose modules import."""
    nodes: list[type[io.ComfyNode]] = []
    failed: dict[str, str] = {}
    for module_name, class_name in NODE_SPECS:
        if module_name in failed:
            continue
        try:
            module = importlib.import_module(f".{module_name}", __name__)
        except Exception as exc:  # isolate one broken module, as ComfyUI isolates packs
            failed[module_name] = f"{type(exc).__name__}: {exc}"
            log.exception("comfyui-indigo: nodes/%s.py failed to import; its nodes are unavailable", module_name)
            continue
        nodes.append(getattr(module, class_name))
    if failed:
        log.error("comfyui-indigo: %d node module(s) failed to import: %s", len(failed), failed)
    return nodes


def register_routes() -> None:
    """The frontend extension's small HTTP routes (nodes/routes.py); a failure there costs only
    the extension's pre-run badges and size warnings, never the nodes."""
    try:
        from . import routes

        routes.register()
    except Exception:  # the nodes must load even if the web part cannot
        log.exception("comfyui-indigo: the frontend routes could not be registered")


class IndigoExtension(ComfyExtension):
    """The pack as ComfyUI's V3 loader sees it."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # ComfyUI 0.3.75 never calls ComfyExtension.on_load: routes are added here, while custom
        # nodes load and before the server adds its routes.
        register_routes()
        return node_list()
