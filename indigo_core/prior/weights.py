"""Files of the prior: the pack's own autoencoder and UNet, and SD VAE files from elsewhere.

Own files are safetensors written with the generic helpers of `indigo_core.io.weights`:
    autoencoder: tensors in ldm/ComfyUI names; metadata {"format": "indigo-prior-autoencoder",
        "format_version": "1", "config": <AutoencoderConfig JSON>, "latent_format": <JSON>, ...}
    UNet: tensors in ComfyUI openaimodel names plus "null_context" (1,T,context_dim); metadata
        {"format": "indigo-prior-unet", "format_version": "1", "config": <UNetConfig JSON>,
         "schedule": <JSON>, "autoencoder": <JSON naming the autoencoder it was trained on>, ...}
`load_autoencoder` also reads SD VAE files: ldm/ComfyUI layout (bare, or inside a full checkpoint
under "first_stage_model."), diffusers layout, as .safetensors or (restricted unpickler) .ckpt/.pt/.pth.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from torch import Tensor

from ..errors import ConfigError, ConfigTypeError, ShapeError, WeightsFileError
from ..io.weights import check_float_dtype, check_state_dict, read_header, read_weights_file, write_weights_file
from .autoencoder import AutoencoderConfig, AutoencoderKL
from .plain_autoencoder import FAMILY as PLAIN_FAMILY
from .plain_autoencoder import PlainAutoencoder, PlainAutoencoderConfig
from .convert import diffusers_to_ldm, infer_config, is_diffusers_layout, strip_prefixes
from .schedule import DiscreteSchedule
from .unet import EpsUNet, UNetConfig

AE_FORMAT = "indigo-prior-autoencoder"
UNET_FORMAT = "indigo-prior-unet"
FORMAT_VERSION = "1"
_RESERVED = ("format", "format_version", "config")

PathLike = Union[str, Path]


def _metadata(fmt: str, config_json: str, extra: Optional[Mapping[str, str]]) -> dict:
    meta = {"format": fmt, "format_version": FORMAT_VERSION, "config": config_json}
    for k, v in (extra or {}).items():
        if k in _RESERVED:
            raise ConfigError(f"extra metadata may not set the reserved key {k!r}")
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    return meta


def _other_pack_format(path: PathLike, metadata: Mapping[str, str], who: str) -> None:
    """Refuse a file of another of the pack's formats (an INN, estimator, restorer or UNet file): its
    tensors would only be reported as "not an SD VAE" otherwise."""
    fmt = metadata.get("format")
    if isinstance(fmt, str) and fmt.startswith("indigo-") and fmt != AE_FORMAT:
        raise WeightsFileError(path, f"{who}: expected an autoencoder file (format {AE_FORMAT!r}) or an SD VAE file, "
                                     f"got a file of format {fmt!r}")


def _cast(sd: Mapping[str, Tensor], dtype: Optional[torch.dtype]) -> dict:
    return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in sd.items()}


def _json(path: PathLike, metadata: Mapping[str, str], key: str) -> dict:
    text = metadata.get(key)
    if text is None:
        raise WeightsFileError(path, f"no {key!r} in the metadata")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WeightsFileError(path, f"metadata {key!r} is not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise WeightsFileError(path, f"metadata {key!r}: expected a JSON object, got {type(value).__name__}")
    return value


# ------------------------------------------------------------------------------ autoencoder
def save_autoencoder(ae: Union[AutoencoderKL, PlainAutoencoder], path: PathLike, extra_metadata: Optional[Mapping] = None,
                     dtype: Optional[torch.dtype] = torch.float16, overwrite: bool = False,
                     latent_format: Optional[dict] = None) -> Path:
    """Write `ae` (ldm names, `dtype` floats; None keeps them) with its config and latent format."""
    if not isinstance(ae, (AutoencoderKL, PlainAutoencoder)):
        raise ConfigTypeError(f"save_autoencoder: expected an AutoencoderKL or a PlainAutoencoder, got {type(ae).__name__}")
    check_float_dtype(dtype, "save_autoencoder")
    lf = {"scale_factor": ae.cfg.scale_factor, "shift_factor": 0.0}
    lf.update(latent_format or {})
    meta = _metadata(AE_FORMAT, json.dumps(ae.cfg.to_dict()), {"latent_format": json.dumps(lf), **(extra_metadata or {})})
    return write_weights_file(path, _cast(ae.state_dict(), dtype), meta, overwrite=overwrite)


def read_foreign_vae_state_dict(path: PathLike) -> dict:
    """An SD VAE's tensors in ldm names from a file of another origin (see the module doc)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        read_header(path)  # clear errors for missing / truncated / non-safetensors files
        sd = load_file(str(path), device="cpu")
    elif path.suffix in (".ckpt", ".pt", ".pth", ".bin"):
        from ..io.safe_pickle import extract_state_dict, safe_load

        obj = safe_load(path)
        key = "state_dict" if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping) else None
        sd = extract_state_dict(obj, path, key=key)
    else:
        raise WeightsFileError(path, f"unknown VAE file type {path.suffix!r} (expected .safetensors, .ckpt, .pt, .pth)")
    sd = strip_prefixes(sd)
    if is_diffusers_layout(sd):
        try:
            sd = diffusers_to_ldm(sd)
        except ConfigError as exc:
            raise WeightsFileError(path, str(exc)) from exc
    return sd


def load_autoencoder(path: PathLike, map_location: Union[str, torch.device, None] = "cpu",
                     dtype: Optional[torch.dtype] = torch.float32) -> Union[AutoencoderKL, PlainAutoencoder]:
    """Load the pack's autoencoder file or an SD VAE file, in eval mode with gradients off.

    The pack's files carry their config (an `AutoencoderKL`'s, or a `PlainAutoencoder`'s with
    "family": "plain"); others get one inferred from tensor shapes (SD's own VAE comes out as
    `AutoencoderConfig()`, scale factor 0.18215). Missing, surplus or mis-shaped tensors raise
    WeightsFileError naming the file.
    """
    check_float_dtype(dtype, "load_autoencoder")
    path = Path(path)
    header_meta = read_header(path)[1] if path.suffix == ".safetensors" else {}
    _other_pack_format(path, header_meta, "load_autoencoder")
    if header_meta.get("format") == AE_FORMAT:
        tensors, metadata = read_weights_file(path, AE_FORMAT)
        config = _json(path, metadata, "config")
        try:
            cfg = (PlainAutoencoderConfig.from_dict(config) if config.get("family") == PLAIN_FAMILY
                   else AutoencoderConfig.from_dict(config))
        except (ConfigError, TypeError) as exc:
            raise WeightsFileError(path, f"invalid config in the metadata ({exc})") from exc
    else:
        tensors = read_foreign_vae_state_dict(path)
        try:
            cfg = infer_config(tensors)
        except (ConfigError, IndexError) as exc:
            raise WeightsFileError(path, f"not an SD-architecture VAE ({exc})") from exc
    ae = PlainAutoencoder(cfg) if isinstance(cfg, PlainAutoencoderConfig) else AutoencoderKL(cfg)
    check_state_dict(path, ae, tensors)
    ae.load_state_dict(tensors, strict=True)
    ae.to(device=map_location, dtype=dtype).eval().requires_grad_(False)
    return ae


def read_latent_format(path: PathLike) -> dict:
    """The latent format ({"scale_factor", "shift_factor", optional latent_rgb_factors...}) of a
    pack autoencoder file; SD's 0.18215 for other VAE files."""
    _, metadata = read_header(path)
    _other_pack_format(path, metadata, "read_latent_format")
    if metadata.get("format") != AE_FORMAT:
        return {"scale_factor": 0.18215, "shift_factor": 0.0}
    return _json(path, metadata, "latent_format")


# ------------------------------------------------------------------------------ UNet
def save_unet(unet: EpsUNet, null_context: Tensor, path: PathLike, extra_metadata: Optional[Mapping] = None,
              dtype: Optional[torch.dtype] = torch.float16, overwrite: bool = False) -> Path:
    """Write the UNet (ComfyUI names) and its learned null context (1, T, context_dim)."""
    if not isinstance(unet, EpsUNet):
        raise ConfigTypeError(f"save_unet: expected an EpsUNet, got {type(unet).__name__}")
    check_float_dtype(dtype, "save_unet")
    cfg = unet.cfg
    if not isinstance(null_context, Tensor) or not null_context.is_floating_point():
        got = null_context.dtype if isinstance(null_context, Tensor) else type(null_context).__name__
        raise ShapeError(f"save_unet: expected null_context as a floating-point tensor "
                         f"(1,{cfg.context_tokens},{cfg.context_dim}), got {got}")
    if tuple(null_context.shape) != (1, cfg.context_tokens, cfg.context_dim):
        raise ConfigError(f"save_unet: null_context must be (1,{cfg.context_tokens},{cfg.context_dim}), got {tuple(null_context.shape)}")
    tensors = _cast(unet.state_dict(), dtype)
    tensors["null_context"] = null_context.detach().to(dtype or null_context.dtype)
    extra = {"schedule": json.dumps(DiscreteSchedule().to_dict()), **(extra_metadata or {})}
    return write_weights_file(path, tensors, _metadata(UNET_FORMAT, json.dumps(cfg.to_dict()), extra), overwrite=overwrite)


def read_unet_file(path: PathLike) -> tuple[UNetConfig, dict[str, Tensor], Tensor, dict]:
    """(config, UNet tensors in ComfyUI names, null context (1,T,Cc), metadata) of a UNet file,
    checked against the config; for hosts that build their own network from it."""
    tensors, metadata = read_weights_file(path, UNET_FORMAT)
    try:
        cfg = UNetConfig.from_dict(_json(path, metadata, "config"))
    except (ConfigError, TypeError) as exc:
        raise WeightsFileError(path, f"invalid config in the metadata ({exc})") from exc
    schedule = _json(path, metadata, "schedule")
    if schedule.get("beta_schedule") != "scaled_linear" or schedule.get("parameterization") != "eps":
        raise WeightsFileError(path, f"unsupported schedule {schedule} (this pack reads SD's scaled-linear eps models)")
    context = tensors.pop("null_context", None)
    if context is None or tuple(context.shape) != (1, cfg.context_tokens, cfg.context_dim):
        got = None if context is None else tuple(context.shape)
        raise WeightsFileError(path, f"expected tensor 'null_context' of shape (1,{cfg.context_tokens},{cfg.context_dim}), got {got}")
    check_state_dict(path, EpsUNet(cfg), tensors)
    return cfg, tensors, context, dict(metadata)


def load_unet(path: PathLike, map_location: Union[str, torch.device, None] = "cpu",
              dtype: Optional[torch.dtype] = torch.float32) -> tuple[EpsUNet, Tensor, dict]:
    """Load a UNet file: (EpsUNet in eval mode with gradients off, null context (1,T,Cc), metadata)."""
    check_float_dtype(dtype, "load_unet")
    cfg, tensors, context, metadata = read_unet_file(path)
    unet = EpsUNet(cfg)
    unet.load_state_dict(tensors, strict=True)
    unet.to(device=map_location, dtype=dtype).eval().requires_grad_(False)
    return unet, context.to(device=map_location, dtype=dtype or context.dtype), metadata
