"""What every node of the pack shares: the category, the custom socket types, INN helpers.

Conventions for node modules (``nodes/<one module per node>.py``):
- V3 schema (``io.ComfyNode``), ``node_id`` prefixed ``INDIGO_``, ``category=CATEGORY``, a
  ``description``, a ``tooltip`` on every input and output, a help page ``js/docs/<node_id>.md``.
- ComfyUI only through ``.host``; the core through relative imports (``from ..indigo_core import
  load_inn``): ComfyUI imports the pack as a package named after its folder and the folder is not
  on ``sys.path``. Import heavy parts of the core inside ``execute`` so one broken optional
  dependency cannot keep the pack from loading.
- Never change what comes in: clone MODELs, copy INNs (:func:`private_inn_copy`), clone tensors.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch

from .host import io

#: The one "Add Node" menu category of the pack.
CATEGORY = "INDIGO"

#: Socket type of a loaded INN. The value is an ``indigo_core`` ``WaveletINN`` in eval mode on the
#: CPU, with ``requires_grad`` off and normal (non-inference) tensors. It is shared with Load INN's
#: cache and with every other node it is wired to: treat it as read-only.
INN = io.Custom("INDIGO_INN")


def config_facts(cfg: Any, name: Optional[str] = None) -> dict[str, Any]:
    """JSON-ready facts of an INNConfig for the UI: file name, domain, scale, channels, split,
    levels, pairs per level."""
    return {
        "name": name,
        "domain": cfg.domain,
        "scale": int(cfg.scale),
        "channels": int(cfg.channels),
        "split": cfg.split,
        "levels": int(cfg.levels),
        "pairs": int(cfg.pairs),
    }


def inn_summary(inn: Any, name: Optional[str] = None) -> dict[str, Any]:
    """`config_facts` of a loaded INN plus its parameter count."""
    return {**config_facts(inn.config, name), "params": int(sum(p.numel() for p in inn.parameters()))}


def format_inn_summary(info: dict[str, Any]) -> str:
    """Multi-line text of :func:`inn_summary` for a text widget."""
    coarse = "the latent's own size" if info["scale"] == 1 else f"1/{info['scale']} of the input size"
    lines = [
        f"file: {info['name']}" if info.get("name") else None,
        f"domain: {info['domain']} ({info['channels']} channels)",
        f"scale: x{info['scale']} (the measurement is {coarse})",
        f"split: {info['split']}, {info['levels']} levels, {info['pairs']} lifting pairs per level",
        f"parameters: {info['params']:,}",
    ]
    return "\n".join(line for line in lines if line)


def private_inn_copy(
    inn: torch.nn.Module,
    device: Optional[torch.device] = None,
    dtype: Optional[torch.dtype] = None,
    trainable: bool = False,
) -> torch.nn.Module:
    """A copy of ``inn`` that a node may move, refine or otherwise change.

    Made outside inference mode (ComfyUI runs prompts under ``torch.inference_mode()``, whose
    tensors cannot take part in autograd), so gradients can flow through it. ``trainable`` turns
    ``requires_grad`` on for every parameter (test-time refinement).
    """
    with torch.inference_mode(False):
        private = copy.deepcopy(inn)
        private.to(device=device, dtype=dtype)
        private.requires_grad_(trainable)
    return private
