"""What a trained file's model card says about the models it belongs with.

The training CLI writes the card into the safetensors metadata ("model_card", JSON). A LatentINN
guides in the latent space of the autoencoder it was trained for, and an INN trained with a
degradation estimator expects that estimator's embedding (one trained without expects none).
Files without a card (other formats, other projects) record nothing: every function then answers
None and callers check nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ..errors import IndigoError

PathLike = Union[str, Path]

__all__ = ["read_card", "trained_latent_format", "latent_space_differences", "trained_with_estimator"]


def read_card(path: PathLike) -> Optional[dict]:
    """The model card of a `.safetensors` file written by the pack; None without one."""
    from .weights import read_header

    if not str(path).lower().endswith(".safetensors"):
        return None
    try:
        card = json.loads(read_header(path)[1].get("model_card") or "null")
    except (IndigoError, OSError, ValueError):
        return None
    return card if isinstance(card, dict) else None


def trained_latent_format(card: Optional[dict]) -> Optional[dict]:
    """{"file", "scale_factor", "latent_rgb_factors"} of the autoencoder a LatentINN's card names;
    None when it names none."""
    vae = card.get("vae") if isinstance(card, dict) else None
    fmt = vae.get("latent_format") if isinstance(vae, dict) else None
    if not isinstance(fmt, dict):
        return None
    return {"file": os.path.basename(str(vae.get("file", "?"))), "scale_factor": fmt.get("scale_factor"),
            "latent_rgb_factors": fmt.get("latent_rgb_factors")}


def latent_space_differences(trained: Optional[dict], scale_factor: Any,
                             latent_rgb_factors: Optional[Sequence] = None) -> list[str]:
    """How a latent format (its scale factor and latent-to-RGB factors) differs from the one a
    LatentINN was trained for: a scale factor off by more than 1e-6, factors of another shape or
    more than 1e-3 apart. Empty when they agree or either side records nothing."""
    if not trained:
        return []
    import torch

    reasons = []
    sf = trained.get("scale_factor")
    if sf is not None and scale_factor is not None and abs(float(sf) - float(scale_factor)) > 1e-6:
        reasons.append(f"scale factor {scale_factor} instead of {sf}")
    rgb = trained.get("latent_rgb_factors")
    if rgb is not None and latent_rgb_factors is not None:
        a = torch.tensor(rgb, dtype=torch.float64)
        b = torch.tensor(latent_rgb_factors, dtype=torch.float64)
        if a.shape != b.shape or float((a - b).abs().max()) > 1e-3:
            reasons.append("other latent-to-RGB factors")
    return reasons


def trained_with_estimator(card: Optional[dict]) -> Optional[tuple[bool, str]]:
    """(whether the INN was trained with a degradation estimator, that estimator's file name) from
    its card; None when the card does not say."""
    if not isinstance(card, dict) or "estimator" not in card or card.get("kind") not in ("pixel-inn", "latent-inn"):
        return None
    est = card.get("estimator")
    return (bool(est), os.path.basename(str(est)) if est else "")
