"""SD VAE state dicts from elsewhere: wrapper prefixes, the diffusers layout, config inference.

The target is always the ldm / ComfyUI key layout of `autoencoder.AutoencoderKL`.
"""

from __future__ import annotations

from ..errors import ConfigError
from .autoencoder import SD_SCALE_FACTOR, AutoencoderConfig

_DROP_PREFIXES = ("loss.", "model_ema.", "lpips.")


def strip_prefixes(sd: dict) -> dict:
    """Remove the wrapper prefixes a VAE state dict may carry (full checkpoints, ComfyUI saves)."""
    for prefix in ("first_stage_model.", "vae."):
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return {k: v for k, v in sd.items() if not k.startswith(_DROP_PREFIXES)}


def is_diffusers_layout(sd: dict) -> bool:
    return any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.", "encoder.mid_block.")) for k in sd)


def _count(sd: dict, prefix: str) -> int:
    idx = set()
    for k in sd:
        if k.startswith(prefix):
            head = k[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                idx.add(int(head))
    return max(idx) + 1 if idx else 0


_RESNET_MAP = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
               "conv_shortcut": "nin_shortcut"}
# diffusers attention names (new, then the old `query/key/value/proj_attn` ones) -> ldm
_ATTN_MAP = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
             "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}


def diffusers_to_ldm(sd: dict) -> dict:
    """Rename a diffusers `AutoencoderKL` state dict to the ldm/ComfyUI layout.

    diffusers numbers decoder `up_blocks` from the coarsest level, ldm's `up` from the finest, and
    stores attention projections as linear (C,C) weights where ldm has 1x1 convs (C,C,1,1).
    """
    out: dict = {}
    n_up = _count(sd, "decoder.up_blocks.")
    for key, value in sd.items():
        parts = key.split(".")
        new = None
        if key.startswith(("quant_conv.", "post_quant_conv.")):
            new = key
        elif parts[0] in ("encoder", "decoder"):
            side, rest = parts[0], parts[1:]
            if rest[0] in ("conv_in", "conv_out"):
                new = key
            elif rest[0] == "conv_norm_out":
                new = ".".join([side, "norm_out"] + rest[1:])
            elif rest[0] in ("down_blocks", "up_blocks"):
                level = int(rest[1])
                stage = "down" if rest[0] == "down_blocks" else "up"
                if stage == "up":
                    level = n_up - 1 - level
                kind = rest[2]
                if kind == "resnets":
                    sub = ".".join(rest[4:-1])
                    new = f"{side}.{stage}.{level}.block.{rest[3]}.{_RESNET_MAP.get(sub, sub)}.{rest[-1]}"
                elif kind in ("downsamplers", "upsamplers"):
                    what = "downsample" if kind == "downsamplers" else "upsample"
                    new = f"{side}.{stage}.{level}.{what}.conv.{rest[-1]}"
                elif kind == "attentions":
                    sub = ".".join(rest[4:-1])
                    new = f"{side}.{stage}.{level}.attn.{rest[3]}.{_ATTN_MAP.get(sub, sub)}.{rest[-1]}"
            elif rest[0] == "mid_block":
                if rest[1] == "resnets":
                    sub = ".".join(rest[3:-1])
                    new = f"{side}.mid.block_{int(rest[2]) + 1}.{_RESNET_MAP.get(sub, sub)}.{rest[-1]}"
                elif rest[1] == "attentions":
                    sub = ".".join(rest[3:-1])
                    new = f"{side}.mid.attn_1.{_ATTN_MAP.get(sub, sub)}.{rest[-1]}"
        if new is None:
            raise ConfigError(f"diffusers VAE key not understood: {key!r}")
        if ".attn" in new and new.endswith(".weight") and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)
        out[new] = value
    return out


def infer_config(sd: dict, scale_factor: float = SD_SCALE_FACTOR) -> AutoencoderConfig:
    """Read an ldm-layout VAE state dict's architecture from its tensor shapes."""
    try:
        ch = sd["encoder.conv_in.weight"].shape[0]
        levels = _count(sd, "encoder.down.")
        ch_mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels))
        nrb = _count(sd, "encoder.down.0.block.")
        z_channels = sd["decoder.conv_in.weight"].shape[1]
        embed_dim = sd["post_quant_conv.weight"].shape[1]
        double_z = sd["encoder.conv_out.weight"].shape[0] == 2 * z_channels
    except KeyError as exc:
        raise ConfigError(f"not an SD/ldm-layout VAE state dict: missing {exc.args[0]!r}") from None
    resolution = 256
    attn = []
    res = resolution
    for i in range(levels):
        if any(k.startswith(f"encoder.down.{i}.attn.") for k in sd):
            attn.append(res)
        res //= 2
    return AutoencoderConfig(ch=ch, ch_mult=ch_mult, num_res_blocks=nrb, attn_resolutions=tuple(attn),
                             resolution=resolution, in_channels=sd["encoder.conv_in.weight"].shape[1],
                             out_ch=sd["decoder.conv_out.weight"].shape[0], z_channels=z_channels,
                             embed_dim=embed_dim, double_z=double_z, scale_factor=scale_factor)
