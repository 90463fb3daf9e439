"""The pack's small latent-diffusion prior: an autoencoder with SD's latent geometry (SD's KL
architecture, or the plain one that trains several times faster per pixel) and an SD1-layout
epsilon UNet, with SD's noise schedule, in plain torch (no ComfyUI).

The UNet's and the KL autoencoder's state dicts use ldm / ComfyUI key names, so ComfyUI's own
classes load the same weights; the plain autoencoder is wrapped as a ComfyUI VAE by the pack's
loader node. Training: `python -m indigo_core.prior.train`.
"""

from .autoencoder import PRESETS as AUTOENCODER_PRESETS
from .autoencoder import AutoencoderConfig, AutoencoderKL
from .plain_autoencoder import PRESETS as PLAIN_AUTOENCODER_PRESETS
from .plain_autoencoder import PlainAutoencoder, PlainAutoencoderConfig
from .schedule import DiscreteSchedule, euler_sample
from .unet import EpsUNet, UNetConfig
from .weights import load_autoencoder, load_unet, read_latent_format, save_autoencoder, save_unet

__all__ = ["AutoencoderConfig", "AutoencoderKL", "AUTOENCODER_PRESETS", "PlainAutoencoder", "PlainAutoencoderConfig",
           "PLAIN_AUTOENCODER_PRESETS", "EpsUNet", "UNetConfig", "DiscreteSchedule",
           "euler_sample", "load_autoencoder", "save_autoencoder", "load_unet", "save_unet", "read_latent_format"]
