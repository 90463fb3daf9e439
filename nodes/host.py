"""The pack's only door to ComfyUI.

Every import of ``comfy*``, ``comfy_api``, ``folder_paths`` and ``server`` lives in this module, so
that a change in ComfyUI's API (``comfy_api.latest`` says it is not yet stable) touches one file.
Node modules import what they need from here::

    from .host import io, ProgressBar, throw_if_interrupted

To expose another part of ComfyUI to the nodes, import it here and add it to ``__all__``.

Importing this module registers the ``indigo`` model folder (``models/indigo/`` plus any
``indigo:`` entries of ``extra_model_paths.yaml``) with ComfyUI's ``folder_paths``.
"""

from __future__ import annotations

import logging
import os

import torch

import comfy.model_management as model_management
import comfy.patcher_extension
import comfy.samplers
import comfy.utils
import folder_paths
from comfy_api.latest import ComfyExtension, io, ui

__all__ = [
    "ComfyExtension",
    "io",
    "ui",
    "folder_paths",
    "model_management",
    "ProgressBar",
    "MODEL_FOLDER",
    "MODEL_EXTENSIONS",
    "register_model_folder",
    "model_folders",
    "list_models",
    "find_model",
    "metrics_weights_dir",
    "throw_if_interrupted",
    "get_torch_device",
    "intermediate_device",
    "soft_empty_cache",
    "send_event",
    "executing_ids",
    "add_json_route",
    "WrappersMP",
    "SAMPLER_NAMES",
    "SCHEDULER_NAMES",
    "ksample",
    "frontend_connected",
    "sd1_eps_model",
    "sd_vae",
    "wrapped_vae",
]

log = logging.getLogger("comfyui_indigo")

#: Name of the pack's model folder in ``folder_paths`` and in ``extra_model_paths.yaml``.
MODEL_FOLDER = "indigo"
#: File types listed in that folder: the pack's own format and the INDIGO+ / KDSR ``.pth`` files.
MODEL_EXTENSIONS = frozenset({".safetensors", ".pth"})

#: ComfyUI's progress bar: ``pbar = ProgressBar(total); pbar.update(1)``.
ProgressBar = comfy.utils.ProgressBar


def register_model_folder() -> str:
    """Register ``<models>/indigo`` under the folder name ``indigo``; returns that default path.

    ComfyUI reads ``extra_model_paths.yaml`` before it loads custom nodes, and an ``indigo:`` entry
    there creates the folder name with no extension filter (every file would be listed). So the
    default path is added to whatever is there already and the extension filter is set to ours.
    Idempotent.
    """
    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    folder_paths.add_model_folder_path(MODEL_FOLDER, default)
    paths, extensions = folder_paths.folder_names_and_paths[MODEL_FOLDER]
    folder_paths.folder_names_and_paths[MODEL_FOLDER] = (paths, set(extensions) | set(MODEL_EXTENSIONS))
    # A listing made before the filter changed would be stale.
    folder_paths.filename_list_cache.pop(MODEL_FOLDER, None)
    try:
        os.makedirs(default, exist_ok=True)  # shows users where the files go
    except OSError as exc:  # a read-only install still works with extra_model_paths.yaml
        log.warning("comfyui-indigo: could not create %s (%s); use extra_model_paths.yaml 'indigo:'", default, exc)
    return default


def model_folders() -> list[str]:
    """Every folder searched for INDIGO model files, in search order."""
    return folder_paths.get_folder_paths(MODEL_FOLDER)


def metrics_weights_dir(net: str = "alex") -> str | None:
    """The indigo model folder to search first for the LPIPS/DISTS weights of ``net``: the first
    folder whose ``metrics/`` subfolder (or itself) holds the converted file, else the first folder
    (so that a missing-weights error names it); None without folders. The core then falls back to
    its own search order (INDIGO_METRICS_DIR, INDIGO_MODELS_DIR, the pack's models/metrics/)."""
    from ..indigo_core.metrics.weights import FILES, METRICS_SUBDIR

    folders = model_folders()
    for folder in folders:
        if any(os.path.isfile(os.path.join(folder, sub, FILES[net])) for sub in (METRICS_SUBDIR, "")):
            return folder
    return folders[0] if folders else None


def list_models() -> list[str]:
    """Names (relative paths) of the ``.safetensors`` / ``.pth`` files in the indigo folders, sorted."""
    return folder_paths.get_filename_list(MODEL_FOLDER)


def find_model(name: str) -> str | None:
    """Full path of model file ``name`` (as listed by :func:`list_models`), or None if absent."""
    return folder_paths.get_full_path(MODEL_FOLDER, name)


def throw_if_interrupted() -> None:
    """Raise ComfyUI's interruption exception if the user pressed Cancel; call between steps."""
    model_management.throw_exception_if_processing_interrupted()


def get_torch_device():
    """The device ComfyUI computes on (``cpu`` under ``--cpu``)."""
    return model_management.get_torch_device()


def intermediate_device():
    """The device ComfyUI keeps IMAGE / LATENT outputs on between nodes."""
    return model_management.intermediate_device()


def soft_empty_cache() -> None:
    """Release cached accelerator memory, as ComfyUI does between models."""
    model_management.soft_empty_cache()


def send_event(event: str, data: dict) -> None:
    """Send a message (e.g. per-step plot values) to the frontend that queued the running prompt,
    as ComfyUI sends its own progress: to every frontend only when the prompt came without a client id.

    Does nothing when ComfyUI runs without its web server (in-process use, scripts).
    """
    import server  # the web server module; imported late so scripts without it still work

    instance = getattr(server.PromptServer, "instance", None)
    if instance is not None:
        instance.send_sync(event, data, getattr(instance, "client_id", None))


def executing_ids(node_id=None) -> dict:
    """``{"prompt_id", "display_node"}`` of the node running now, as ComfyUI's own progress messages
    name them: the executing prompt's id (None outside a prompt) and the id the frontend shows the
    node under (``display_node``: a node made by node expansion is shown as the node that made it;
    a node inside a subgraph has an execution id such as ``"12:5"``, its subgraph node's id first).
    ``node_id``: the node's unique id (default: the executing node's)."""
    prompt_id = display = None
    try:
        from comfy_execution.utils import get_executing_context

        context = get_executing_context()
        if context is not None:
            prompt_id = context.prompt_id
            node_id = node_id if node_id is not None else context.node_id
    except ImportError:
        pass
    if prompt_id is None:  # as ComfyUI's progress hook falls back (main.py hijack_progress)
        import server

        prompt_id = getattr(getattr(server.PromptServer, "instance", None), "last_prompt_id", None)
    if node_id is not None:
        display = node_id
        try:
            from comfy_execution.progress import get_progress_state

            dynprompt = getattr(get_progress_state(), "dynprompt", None)
            if dynprompt is not None:
                display = dynprompt.get_display_node_id(node_id)
        except Exception:  # no progress registry (in-process use): the node's own id
            pass
    return {"prompt_id": prompt_id, "display_node": None if display is None else str(display)}


def add_json_route(path: str, handler) -> bool:
    """Serve ``GET <path>`` (and ``GET /api<path>``) from ComfyUI's web server with ``handler``.

    ``handler(query: dict[str, str]) -> (http_status, json_payload)`` is plain Python: the web
    framework stays in this module. It runs in a worker thread, so a slow answer (reading a legacy
    ``.pth`` INN whole) never holds up the server's other requests. Call this while ComfyUI loads
    custom nodes (before the server adds its routes). Returns False when ComfyUI runs without its
    web server (in-process use).
    """
    import server

    instance = getattr(server.PromptServer, "instance", None)
    if instance is None:
        return False
    from aiohttp import web  # ComfyUI's web framework

    import asyncio

    async def endpoint(request):
        query = dict(request.rel_url.query)
        status, payload = await asyncio.get_running_loop().run_in_executor(None, handler, query)
        return web.json_response(payload, status=status)

    instance.routes.get(path)(endpoint)
    return True


# ---------------------------------------------------------------- sampling (guidance nodes)

#: Names of ComfyUI's stackable wrapper slots (``model.add_wrapper_with_key(WrappersMP.X, key, fn)``).
WrappersMP = comfy.patcher_extension.WrappersMP
#: The sampler and scheduler names ComfyUI's KSampler offers (for the pack's own sampler nodes).
SAMPLER_NAMES = tuple(comfy.samplers.KSampler.SAMPLERS)
SCHEDULER_NAMES = tuple(comfy.samplers.KSampler.SCHEDULERS)


def ksample(model, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, positive, negative,
            latent: dict, denoise: float = 1.0) -> dict:
    """Sample exactly as ComfyUI's KSampler node does (noise from ``seed``, batch_index and
    noise_mask honoured, progress bar and live previews); returns the new LATENT dict."""
    import nodes as comfy_nodes  # ComfyUI's nodes.py (already imported by the host)

    return comfy_nodes.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                       latent, denoise=denoise)[0]


def frontend_connected() -> bool:
    """Whether a web server runs that :func:`send_event` messages can reach (False in scripts
    that import ComfyUI without its server)."""
    try:
        import server
    except ImportError:
        return False
    return getattr(server.PromptServer, "instance", None) is not None



def sd1_eps_model(unet_config: dict, state_dict: dict, latent_format: dict | None = None):
    """A MODEL (ModelPatcher) holding ComfyUI's own SD1.x UNetModel built from ``unet_config``.

    Epsilon prediction with SD's discrete scaled-linear schedule, as SD1.5 checkpoints get, so every
    sampler and scheduler applies. ``state_dict`` must match the layout exactly (strict load).
    ``latent_format``: {"scale_factor", optional "latent_rgb_factors", "latent_rgb_factors_bias"}
    (default: SD1's). dtype and devices are chosen as ComfyUI's own UNet loader chooses them.
    """
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SD15(dict(unet_config))
    # SD15's extra config forces 8 heads; a small UNet keeps the head count it was trained with.
    for key in ("num_heads", "num_head_channels"):
        if key in unet_config:
            config.unet_config[key] = unet_config[key]
    lf = dict(latent_format or {})
    fmt = comfy.latent_formats.SD15(scale_factor=float(lf.get("scale_factor", 0.18215)))
    if lf.get("latent_rgb_factors") is not None:
        fmt.latent_rgb_factors = lf["latent_rgb_factors"]
        fmt.latent_rgb_factors_bias = lf.get("latent_rgb_factors_bias")
    fmt.taesd_decoder_name = None  # SD's TAESD previews would show another autoencoder's colours
    config.latent_format = fmt
    load_device = model_management.get_torch_device()
    offload_device = model_management.unet_offload_device()
    params = sum(t.numel() for t in state_dict.values())
    unet_dtype = model_management.unet_dtype(model_params=params, supported_dtypes=list(config.supported_inference_dtypes))
    manual_cast = model_management.unet_manual_cast(unet_dtype, load_device, config.supported_inference_dtypes)
    config.set_inference_dtype(unet_dtype, manual_cast)
    model = config.get_model({}, "").to(offload_device)
    model.diffusion_model.load_state_dict(state_dict, strict=True)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def sd_vae(state_dict: dict, vae_config: dict):
    """A VAE: ComfyUI's ``comfy.sd.VAE`` (an ldm AutoencoderKL) built from ``vae_config``
    ({"params": {"embed_dim", "ddconfig"}}) with ``state_dict`` in ldm names."""
    import comfy.sd

    vae = comfy.sd.VAE(sd=dict(state_dict), config=vae_config)
    expected = set(vae.first_stage_model.state_dict())
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:  # comfy.sd.VAE loads non-strictly and only logs these
        raise ValueError(f"VAE tensors do not fit the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return vae


class _FirstStage(torch.nn.Module):
    """ComfyUI's first-stage interface (``encode``/``decode`` in [-1,1]) over a core autoencoder."""

    def __init__(self, ae: torch.nn.Module):
        super().__init__()
        self.ae = ae

    def encode(self, x):
        return self.ae.moments(x)[0]

    def decode(self, z):
        return self.ae.decode_raw(z)


def wrapped_vae(ae: torch.nn.Module):
    """A ``comfy.sd.VAE`` around a core autoencoder for which ComfyUI has no class of its own
    (the plain autoencoder). ComfyUI builds its VAE from a one-level stub AutoencoderKL (so every
    attribute is set as ComfyUI sets it); the stub is then replaced by ``ae`` and a new patcher,
    so VAE Encode / Decode, tiling and memory management run ``ae``."""
    import comfy.model_patcher
    import comfy.sd

    from ..indigo_core.prior.autoencoder import AutoencoderConfig, AutoencoderKL

    stub = AutoencoderKL(AutoencoderConfig(ch=32, ch_mult=(1,), num_res_blocks=1))
    vae = comfy.sd.VAE(sd=stub.state_dict(), config=stub.cfg.to_comfy_config())
    if (vae.downscale_ratio, vae.upscale_ratio, vae.latent_channels) != (ae.downscale, ae.downscale, ae.latent_channels):
        raise ValueError(f"ComfyUI's VAE expects x{vae.downscale_ratio} and {vae.latent_channels} latent channels; "
                         f"this autoencoder has x{ae.downscale} and {ae.latent_channels}")
    first = _FirstStage(ae).eval().to(vae.vae_dtype)
    vae.first_stage_model = first
    vae.patcher = comfy.model_patcher.ModelPatcher(first, load_device=vae.device,
                                                   offload_device=model_management.vae_offload_device())
    vae.size = None
    vae.model_size()
    _budget_vae_memory(vae, ae.peak_activations_per_pixel(), ae.downscale)
    return vae


#: Headroom over the autoencoder's own activation bound, for convolution workspaces and the
#: allocator's fragmentation. Ours.
VAE_MEMORY_HEADROOM = 2.0


def _budget_vae_memory(vae, elements_per_pixel: int, downscale: int) -> None:
    """ComfyUI sizes VAE batches (and frees memory for them) by ``memory_used_encode(shape, dtype)``
    (image shape, B,C,H,W) and ``memory_used_decode(shape, dtype)`` (latent shape); set both from
    the autoencoder's per-pixel bound instead of the stub AutoencoderKL's 1767 / 2178."""
    n = VAE_MEMORY_HEADROOM * elements_per_pixel
    vae.memory_used_encode = lambda shape, dtype: n * shape[2] * shape[3] * model_management.dtype_size(dtype)
    vae.memory_used_decode = lambda shape, dtype: (n * shape[2] * shape[3] * downscale * downscale
                                                   * model_management.dtype_size(dtype))


register_model_folder()
