"""comfyui-indigo: LatentINDIGO (INN-guided latent diffusion for blind image restoration) for ComfyUI.

ComfyUI imports this folder as a package named after the folder, so everything here is imported
relative to it. Nodes use ComfyUI's V3 schema and are registered through ``comfy_entrypoint``
(no ``NODE_CLASS_MAPPINGS``: ComfyUI would then take the V1 path and ignore the entry point).

Importing this package imports nothing of ComfyUI: tools that only read ``WEB_DIRECTORY`` (and
test runners that import package ``__init__`` files) can import it anywhere; the nodes are
imported when ComfyUI calls the entry point.
"""

import logging

#: Frontend extension and node help pages (js/docs/<node_id>.md), served by ComfyUI.
WEB_DIRECTORY = "./js"


async def comfy_entrypoint():
    """ComfyUI's V3 entry point: the pack's ``ComfyExtension`` with its node list."""
    try:
        from .nodes import IndigoExtension
    except Exception:
        # ComfyUI logs only the message of an entry-point failure; keep the traceback.
        logging.getLogger("comfyui_indigo").exception("comfyui-indigo: the pack failed to import")
        raise
    return IndigoExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
