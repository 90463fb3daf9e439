"""Load INDIGO Prior: the pack's small latent-diffusion prior -> MODEL, VAE, CONDITIONING.

The files are the core's (`indigo_core.prior`): a UNet in ComfyUI's openaimodel names plus its
learned "empty prompt" context, and an autoencoder with SD's latent geometry: SD's KL architecture
in ldm names, or the core's plain autoencoder. ComfyUI's own classes are built from them (through
``host``): an SD1.x ``BaseModel`` (epsilon, SD's schedule and latent format) and a ``comfy.sd.VAE``
(for the plain autoencoder, a ``comfy.sd.VAE`` that runs the core's module). So KSampler, every sampler and scheduler, VAE Encode/Decode
and the pack's guidance nodes treat the prior exactly like an SD1.5 checkpoint.

Files: ``models/indigo/prior/*.safetensors`` (listed as ``prior/<name>``) and the files bundled with
the pack in ``<pack>/models/prior/`` (listed by bare name; the bundled ones are the defaults).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..indigo_core.errors import IndigoError, WeightsFileError
from ..indigo_core.prior.plain_autoencoder import PlainAutoencoder
from .bundled import file_key
from .common import CATEGORY
from .host import find_model, io, list_models, model_folders, sd1_eps_model, sd_vae, wrapped_vae

log = logging.getLogger("comfyui_indigo")

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "models" / "prior"
USER_PREFIX = "prior/"
DEFAULT_UNET = "indigo-prior-unet.safetensors"
DEFAULT_VAE = "indigo-prior-vae.safetensors"


def _format_of(path: str) -> str | None:
    from ..indigo_core.io.weights import read_header

    try:
        return read_header(path)[1].get("format")
    except (IndigoError, OSError):
        return None


def _candidates() -> list[tuple[str, str]]:
    """(listed name, full path) of every prior file: bundled first, then the user's."""
    found = []
    if BUNDLED_DIR.is_dir():
        found += [(p.name, str(p)) for p in sorted(BUNDLED_DIR.glob("*.safetensors"))]
    for name in list_models():
        if name.replace("\\", "/").startswith(USER_PREFIX) and name.endswith(".safetensors"):
            path = find_model(name)
            if path:
                found.append((name.replace("\\", "/"), path))
    return found


def list_prior_files(kind: str) -> list[str]:
    """Listed names of the prior's UNet (kind "unet") or autoencoder ("vae") files, defaults first."""
    from ..indigo_core.prior.weights import AE_FORMAT, UNET_FORMAT

    want = UNET_FORMAT if kind == "unet" else AE_FORMAT
    names = [name for name, path in _candidates() if _format_of(path) == want]
    default = DEFAULT_UNET if kind == "unet" else DEFAULT_VAE
    return sorted(names, key=lambda n: (n != default, n))


def resolve_prior_file(name: str) -> str:
    for listed, path in _candidates():
        if listed == name:
            return path
    raise WeightsFileError(name, f"not found among the bundled prior files ({BUNDLED_DIR}) or in "
                                 f"'{USER_PREFIX}' of the model folders {model_folders()}")


def load_prior(unet_path: str, vae_path: str):
    """(MODEL, VAE, CONDITIONING) from a UNet file and an autoencoder file (see module doc)."""
    from ..indigo_core.prior.weights import load_autoencoder, read_latent_format, read_unet_file

    # Normal (not inference-mode) weights, so guidance can differentiate through the decoder.
    with torch.inference_mode(False):
        cfg, unet_sd, null_context, meta = read_unet_file(unet_path)
        ae = load_autoencoder(vae_path, dtype=None)
        latent_format = read_latent_format(vae_path)
        try:
            paired = json.loads(meta.get("autoencoder", "{}")).get("file")
        except (ValueError, AttributeError):
            paired = None
        if paired and paired != os.path.basename(vae_path):
            log.warning("comfyui-indigo: %s was trained on the latents of %s, not of %s; samples may be poor",
                        os.path.basename(unet_path), paired, os.path.basename(vae_path))
        try:
            model = sd1_eps_model(cfg.to_comfy_unet_config(), unet_sd, latent_format)
            vae = (wrapped_vae(ae) if isinstance(ae, PlainAutoencoder)
                   else sd_vae(ae.state_dict(), ae.cfg.to_comfy_config()))
        except (RuntimeError, ValueError) as exc:
            raise WeightsFileError(unet_path, f"ComfyUI could not build the prior from these files ({exc})") from exc
    conditioning = [[null_context.float().clone(), {}]]
    return model, vae, conditioning


class LoadPrior(io.ComfyNode):
    """Loads the pack's small unconditional latent-diffusion prior as MODEL, VAE and CONDITIONING."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="INDIGO_LoadPrior",
            display_name="Load INDIGO Prior",
            category=CATEGORY,
            description=(
                "Loads the pack's small latent-diffusion prior (an SD1-layout epsilon UNet and an "
                "autoencoder with SD's latent geometry, trained on photos) as a MODEL, a VAE and the empty-prompt "
                "CONDITIONING. It samples and decodes like an SD1.5 checkpoint, with no download."
            ),
            inputs=[
                io.Combo.Input(
                    "unet_name", options=list_prior_files("unet"),
                    tooltip=("The prior's UNet: the bundled indigo-prior-unet.safetensors, or a file in "
                             "models/indigo/prior/. Press R after adding files to refresh the list."),
                ),
                io.Combo.Input(
                    "vae_name", options=list_prior_files("vae"),
                    tooltip=("The autoencoder the UNet was trained with (the bundled "
                             "indigo-prior-vae.safetensors by default). Another one gives poor samples."),
                ),
            ],
            outputs=[
                io.Model.Output("model", display_name="MODEL",
                                tooltip="The denoiser for KSampler and the INDIGO guidance nodes (SD1 latent format, epsilon, SD's noise schedule)."),
                io.Vae.Output("vae", display_name="VAE",
                              tooltip="The prior's autoencoder (4 latent channels, x8 downsampling) for VAE Encode / VAE Decode and the guidance."),
                io.Conditioning.Output("conditioning", display_name="CONDITIONING",
                                       tooltip="The unconditional prior's learned empty prompt: use it as both positive and negative (cfg 1)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, unet_name: str, vae_name: str) -> bool | str:
        for name in (unet_name, vae_name):
            try:
                resolve_prior_file(name)
            except WeightsFileError as exc:
                return str(exc)
        return True

    @classmethod
    def fingerprint_inputs(cls, unet_name: str, vae_name: str) -> Any:
        # A file replaced under the same name must be loaded again.
        keys = []
        for name in (unet_name, vae_name):
            try:
                keys.append(file_key(resolve_prior_file(name)))
            except (WeightsFileError, OSError):
                keys.append(name)
        return tuple(keys)

    @classmethod
    def execute(cls, unet_name: str, vae_name: str) -> io.NodeOutput:
        model, vae, conditioning = load_prior(resolve_prior_file(unet_name), resolve_prior_file(vae_name))
        return io.NodeOutput(model, vae, conditioning)
