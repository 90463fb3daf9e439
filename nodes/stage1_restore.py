"""Stage-1 Restore: the measurement y -> R(y), the stage-1 restorer's clean estimate at the target size.

DiffBIR, which the paper's LatentINDIGO runs on, first removes the degradation with a restoration
network and lets the diffusion prior start from that image; this node is that stage for the pack's
prior (or any SD prior). Wire its IMAGE to VAE Encode (the sampler's start latent) and to Colour
Fix (the reference); the guided sampler keeps the original y as its measurement.
Files: the pack's bundled indigo-restorer-x4.safetensors, or restorer files in models/indigo/.
"""

from __future__ import annotations

import torch

from ..indigo_core.errors import ShapeError
from .bundled import FileCache, fingerprint_listed, list_with_bundled, require_with_bundled, validate_listed
from .common import CATEGORY
from .guidance_patch import bchw_to_image, image_to_bchw
from .host import io

RESTORER_FORMAT = "indigo-restorer"
_cache = FileCache(2)


def _read_restorer(path: str):
    from ..indigo_core.errors import WeightsFileError
    from ..indigo_core.restorer import load_restorer

    if not path.lower().endswith(".safetensors"):
        raise WeightsFileError(path, "expected a stage-1 restorer .safetensors file (python -m indigo_core.train "
                                     "restorer writes them); other files cannot be one")
    with torch.inference_mode(False):
        return load_restorer(path)


class Stage1Restore(io.ComfyNode):
    """Removes blur, noise and compression from the measurement before the prior adds detail."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="INDIGO_Stage1Restore",
            display_name="Stage-1 Restore",
            category=CATEGORY,
            description=("Upscales the degraded image with the stage-1 restoration network (DiffBIR's degradation "
                         "removal): a clean, smooth estimate for the prior to start from (VAE Encode) and for "
                         "Colour Fix to take its low frequencies from. The guided sampler still gets the original "
                         "image as its measurement."),
            inputs=[
                io.Image.Input("image", tooltip="The degraded image y at its native size."),
                io.Combo.Input("restorer_name", options=list_with_bundled(RESTORER_FORMAT),
                               tooltip="Restorer file: the pack's bundled indigo-restorer-x4.safetensors (listed "
                                       "first) or a file in models/indigo/ trained with "
                                       "`python -m indigo_core.train restorer`. Press R after adding files."),
            ],
            outputs=[io.Image.Output("IMAGE", display_name="image",
                                     tooltip="R(y): the restored image, the restorer's scale times y's size.")],
        )

    @classmethod
    def validate_inputs(cls, restorer_name: str) -> "bool | str":
        return validate_listed(restorer_name, RESTORER_FORMAT, "stage-1 restorer")

    @classmethod
    def fingerprint_inputs(cls, restorer_name: str, **_):
        return fingerprint_listed(restorer_name, RESTORER_FORMAT)

    @classmethod
    def execute(cls, image, restorer_name) -> io.NodeOutput:
        path = require_with_bundled(restorer_name, RESTORER_FORMAT)
        y = image_to_bchw(image, "image")
        if min(y.shape[-2:]) < 2:
            raise ShapeError(f"image: expected at least 2x2 pixels, got {y.shape[-1]}x{y.shape[-2]}")
        net = _cache.get(path, _read_restorer)
        with torch.inference_mode(False), torch.no_grad():
            p = next(net.parameters())
            out = torch.cat([net.restore(y[i:i + 1].to(p.device, p.dtype)).float().cpu()
                             for i in range(y.shape[0])])
        return io.NodeOutput(bchw_to_image(out))
