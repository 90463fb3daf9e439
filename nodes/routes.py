"""Small read-only HTTP routes for the pack's frontend extension (js/indigo.js).

``GET /indigo/inn_info?name=<file>`` (also under ``/api``): what an INN file in the ``indigo``
model folders is (domain, scale, channels, wavelet split, levels, lifting pairs), read from the
file's header only, no tensors (an INDIGO+ ``.pth`` has no header: it is loaded and checked). The frontend shows it as a badge on Load INN before the graph
runs and uses the scale to warn about measurement sizes that cannot match before queueing.

Answers 200 with ``{"ok": true, ...facts}``, or 200 with ``{"ok": false, "error": ...}`` when the
file is not in the list or is not an INN the pack can read (a file that is missing is an ordinary
state of a shared workflow, not an HTTP error for the browser console); 400 without a name.
Handlers are plain functions of the query (``(status, payload)``); ``host.add_json_route``
serves them.
"""

from __future__ import annotations

import os
from typing import Any

from ..indigo_core.errors import IndigoError
from .common import config_facts
from .host import MODEL_FOLDER, add_json_route
from .load_inn import find_model, load_cached_inn

INN_INFO_PATH = "/indigo/inn_info"

_registered = False


def inn_facts(cfg: Any, name: str, source: str) -> dict[str, Any]:
    """JSON-ready facts of an INNConfig (``common.config_facts``) for the route's answer."""
    return {"ok": True, **config_facts(cfg, name), "source": source}


def inn_info(query: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """Handler of ``GET /indigo/inn_info``: see the module docstring."""
    name = (query.get("name") or "").strip()
    if not name:
        return 400, {"ok": False, "error": "expected a query parameter 'name' (an INN file name as Load INN lists it)"}
    path = find_model(name)
    if path is None:
        return 200, {"ok": False, "error": f"INN file {name!r} is neither in the '{MODEL_FOLDER}' model folders nor "
                                   "among the pack's bundled INNs"}
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".pth":
            # An INDIGO+ INN.pth has no header: it is read (restricted unpickler, keys checked) as
            # Load INN reads it, into Load INN's cache, so a KDSR estimator or a damaged file is not
            # announced as an INN.
            return 200, inn_facts(load_cached_inn(path).config, name, "indigo-plus .pth (read and checked)")
        from ..indigo_core.io.weights import read_inn_config

        return 200, inn_facts(read_inn_config(path), name, "file header")
    except IndigoError as exc:
        return 200, {"ok": False, "error": str(exc)}
    except (OSError, ValueError) as exc:
        return 200, {"ok": False, "error": f"{name}: cannot be read ({type(exc).__name__}: {exc})"}


def register() -> bool:
    """Add the routes to ComfyUI's server once; False when there is no server (in-process use)."""
    global _registered
    if _registered:
        return True
    _registered = add_json_route(INN_INFO_PATH, inn_info)
    return _registered
