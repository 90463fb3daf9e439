"""Degradation Estimate: IMAGE -> INDIGO_DEGRADATION, the 128-d embedding gamma = F(y) (KDSR student).

The embedding conditions every MRSTB of the INN through a channel-wise scale (paper Sec. III-B).
Estimator files live in models/indigo/: the pack's .safetensors (indigo-estimator format) or a
KDSR checkpoint such as KDSRS-GANV2.pth (read through the core's restricted unpickler).
"""

from __future__ import annotations

import os

import torch

from ..indigo_core.errors import IndigoError, WeightsFileError
from .common import CATEGORY
from .guidance_inputs import DEGRADATION
from .guidance_patch import image_to_bchw
from .bundled import (ESTIMATOR_FORMAT, FileCache, fingerprint_listed, list_with_bundled, require_with_bundled,
                      validate_listed)
from .host import io

CACHE_SIZE = 2
_cache = FileCache(CACHE_SIZE)


def _read_estimator(path: str) -> torch.nn.Module:
    from ..indigo_core.estimator import DegradationEstimator, load_estimator

    ext = os.path.splitext(path)[1].lower()
    with torch.inference_mode(False):
        try:
            if ext == ".safetensors":
                est = load_estimator(path)
            elif ext == ".pth":
                est = DegradationEstimator.from_kdsr_pth(path)
            else:
                raise WeightsFileError(path, f"expected a .safetensors or .pth estimator file, got {ext or 'no extension'!r}")
        except IndigoError:
            raise
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise WeightsFileError(path, f"cannot be loaded as a degradation estimator ({type(exc).__name__}: {exc})") from exc
        est.eval().requires_grad_(False)
    return est


def load_estimator_file(path: str) -> torch.nn.Module:
    """The estimator in ``path`` (cached per path, mtime and size), eval mode, normal tensors."""
    return _cache.get(path, _read_estimator)


class DegradationEstimate(io.ComfyNode):
    """Estimates the degradation embedding of the measurement."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="INDIGO_DegradationEstimate",
            display_name="Degradation Estimate",
            category=CATEGORY,
            description=("Estimates the implicit degradation embedding gamma = F(y) of the measurement with a "
                         "KDSR-style estimator; the INN uses it to adapt to the blur, noise and compression of y."),
            inputs=[
                io.Image.Input("image", tooltip="The degraded image y at its native size (what the guidance gets as "
                                                "measurement). One embedding per batch item."),
                io.Combo.Input("estimator_name", options=list_with_bundled(ESTIMATOR_FORMAT),
                               tooltip="Estimator file: the pack's bundled indigo-estimator.safetensors (listed "
                                       "first), or a file in models/indigo/: the pack's .safetensors or a KDSR "
                                       "checkpoint (e.g. KDSRS-GANV2.pth). Press R after adding files."),
            ],
            outputs=[DEGRADATION.Output("degradation", display_name="degradation",
                                        tooltip="(B,128) embedding for the guidance nodes' 'degradation' input.")],
        )

    @classmethod
    def validate_inputs(cls, estimator_name: str) -> "bool | str":
        return validate_listed(estimator_name, ESTIMATOR_FORMAT, "estimator")

    @classmethod
    def fingerprint_inputs(cls, estimator_name: str, **_):
        return fingerprint_listed(estimator_name, ESTIMATOR_FORMAT)

    @classmethod
    def execute(cls, image, estimator_name) -> io.NodeOutput:
        path = require_with_bundled(estimator_name, ESTIMATOR_FORMAT)
        y = image_to_bchw(image, "image")
        est = load_estimator_file(path)
        with torch.inference_mode(False), torch.no_grad():
            p = next(est.parameters())
            gamma = est(y.detach().clone().to(p.device, p.dtype)).float().cpu()
        return io.NodeOutput(gamma)
