"""The pack's small latent-diffusion prior: an SD-architecture KL autoencoder and an SD1-layout
epsilon UNet, with SD's noise schedule, in plain torch (no ComfyUI).

Their state dicts use ldm / ComfyUI key names, so ComfyUI's own classes load the same weights
(the pack's loader node does this). Training: `python -m indigo_core.prior.train`.
"""

from .autoencoder import PRESETS as AUTOENCODER_PRESETS
from .autoencoder import AutoencoderConfig, AutoencoderKL
from .schedule import DiscreteSchedule, euler_sample
from .unet import EpsUNet, UNetConfig
from .weights import load_autoencoder, load_unet, read_latent_format, save_autoencoder, save_unet

__all__ = ["AutoencoderConfig", "AutoencoderKL", "AUTOENCODER_PRESETS", "EpsUNet", "UNetConfig", "DiscreteSchedule",
           "euler_sample", "load_autoencoder", "save_autoencoder", "load_unet", "save_unet", "read_latent_format"]
