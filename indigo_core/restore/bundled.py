"""Where the models shipped with the pack live (``<pack>/models/``) and their file names."""

from __future__ import annotations

from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = PACK_ROOT / "models"
PRIOR_DIR = MODELS_DIR / "prior"

PIXEL_INN = "indigo-pixel-inn-x4.safetensors"
LATENT_INN = "indigo-latent-inn.safetensors"
ESTIMATOR = "indigo-estimator.safetensors"
RESTORER = "indigo-restorer-x4.safetensors"
PRIOR_VAE = "indigo-prior-vae.safetensors"
PRIOR_UNET = "indigo-prior-unet.safetensors"


def bundled_path(name: str) -> Path:
    """Full path of a bundled file name (the prior's files are in models/prior/)."""
    return (PRIOR_DIR if name in (PRIOR_VAE, PRIOR_UNET) else MODELS_DIR) / name
