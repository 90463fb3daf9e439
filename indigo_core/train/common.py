"""Pieces the INN trainers share: building the INN from a preset and overrides, the frozen
degradation estimator, mixed precision limited to the predict/update networks, and export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..argtypes import non_negative
from ..inn.config import INNConfig
from ..inn.network import WaveletINN
from ..io.digest import file_sha256


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """["hidden=8", "n_mrstb=1", "split=haar"] -> {"hidden": 8, "n_mrstb": 1, "split": "haar"}
    (values parsed as JSON when they are JSON, else kept as strings)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--inn-set: expected field=value, got {item!r}")
        key, text = item.split("=", 1)
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out[key.strip()] = value
    return out


def build_inn(preset: str, overrides: Sequence[str] = (), config_json: Optional[str] = None,
              init: Optional[str] = None, domain: str = "pixel") -> WaveletINN:
    """A fresh WaveletINN from `config_json` (a file or inline JSON) or an INN preset, with
    `field=value` overrides; or, with `init`, the weights and config of an existing INN file."""
    if init:
        from ..io.weights import load_inn

        if overrides or config_json:
            raise ConfigError("--init takes the architecture from the file; drop --inn-set/--inn-config")
        inn = load_inn(init)
        inn.train()
    else:
        if config_json:
            p = Path(config_json)
            cfg = INNConfig.from_json(p.read_text(encoding="utf-8") if p.is_file() else config_json)
        else:
            cfg = INNConfig.preset(preset)
        extra = parse_overrides(overrides)
        if extra:
            names = set(cfg.to_dict())
            unknown = sorted(set(extra) - names)
            if unknown:
                raise ConfigError(f"--inn-set: unknown INNConfig field(s) {unknown}; expected some of {sorted(names)}")
            cfg = cfg.replace(**extra)
        inn = WaveletINN(cfg)
    if inn.config.domain != domain:
        raise ConfigError(f"a {domain} INN is trained here, but the configuration has domain "
                          f"{inn.config.domain!r}; use a {domain}-* preset or --inn-set domain={domain}")
    return inn


def load_frozen_estimator(path: Optional[str], device: torch.device) -> Optional[nn.Module]:
    """The degradation estimator F from a file (the pack's safetensors format, or a KDSR .pth),
    frozen, in eval mode, on `device`; None when no file is given (INN trained without gamma)."""
    if not path:
        return None
    from ..estimator import DegradationEstimator, load_estimator

    if str(path).endswith((".pth", ".pt", ".ckpt")):
        est = DegradationEstimator.from_kdsr_pth(path)
    else:
        est = load_estimator(path)
    est = est.to(device).eval()
    for p in est.parameters():
        p.requires_grad_(False)
    return est


def file_fingerprint(path: Optional[str]) -> Optional[str]:
    """"name:sha256-prefix" of a file, for resume checks and caches: a file replaced by another of
    the same name and size is told apart."""
    if not path:
        return None
    p = Path(path)
    return f"{p.name}:{file_sha256(p)[:16]}" if p.is_file() else str(p)


class _AutocastScope:
    """Forward pre/post hooks that run one module under autocast and return float32 outputs."""

    def __init__(self, device_type: str, dtype: torch.dtype) -> None:
        self.device_type = device_type
        self.dtype = dtype
        self.stack: list[Any] = []

    def pre(self, module: nn.Module, args: Any) -> None:
        ctx = torch.autocast(self.device_type, dtype=self.dtype)
        ctx.__enter__()
        self.stack.append(ctx)

    def post(self, module: nn.Module, args: Any, output: Tensor) -> Tensor:
        self.stack.pop().__exit__(None, None, None)
        return output.float()


def autocast_lift_nets(inn: WaveletINN, device_type: str, dtype: Optional[torch.dtype]) -> list[Any]:
    """Run only the predict/update networks of `inn` under autocast(dtype).

    The lifting additions (d + P(c), c + U(d)) and the wavelet split/merge stay in float32, which
    keeps the forward/inverse pair exact up to float32 rounding; the Swin layers, the bulk of the
    compute, get the mixed-precision speed-up. Returns the hook handles (remove() to undo)."""
    if dtype is None:
        return []
    from ..inn.lifting import LiftNet

    handles = []
    for m in inn.modules():
        if isinstance(m, LiftNet):
            scope = _AutocastScope(device_type, dtype)
            handles.append(m.register_forward_pre_hook(scope.pre))
            handles.append(m.register_forward_hook(scope.post))
    return handles


def save_inn_export(inn: WaveletINN, path: Path, card: dict, overwrite: bool) -> Path:
    """Write the INN in the pack's format with the model card in the metadata ("model_card")."""
    from ..io.weights import save_inn

    inn = inn.eval()
    meta = {"model_card": json.dumps(card, sort_keys=True, default=str)}
    return save_inn(inn, path, extra_metadata=meta, overwrite=overwrite)


def add_inn_arguments(p, domain: str) -> None:
    """Arguments the PixelINN and LatentINN trainers share."""
    g = p.add_argument_group("INN")
    g.add_argument("--inn-preset", default=None,
                   help=f"INNConfig preset (default from --preset: {domain}-small or {domain}-paper)")
    g.add_argument("--inn-set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one INNConfig field, e.g. --inn-set hidden=32 (repeatable)")
    g.add_argument("--inn-config", default=None,
                   help="INNConfig as a JSON file or inline JSON, in place of --inn-preset (default: none)")
    g.add_argument("--init", default=None,
                   help="start from this INN file (fine-tuning) (default: none, fresh weights)")
    g.add_argument("--estimator", default=None,
                   help="degradation estimator file (pack safetensors or KDSR .pth); gamma = F(y) "
                        "conditions the INN (default: none, and the INN is trained unconditioned: gamma = None)")
    g.add_argument("--loss", choices=("l1", "l2"), default=None, help="norm of L_fwd and L_inv")
    g.add_argument("--lambda-inv", type=non_negative, default=None, help="weight of L_inv")


def mask_inert_key_bias(model: nn.Module) -> int:
    """Zero the gradient of the key part of every attention layer's qkv bias; returns how many.

    In softmax attention the key bias b_k adds q . b_k to every logit of a query's row, which the
    softmax removes: the bias has no effect on any output and its exact gradient is zero. The
    computed gradient is float rounding noise, which Adam divides by its own tiny running scale and
    turns into learning-rate-sized random steps. Zeroing it changes no function the network
    computes, keeps those weights put, and makes runs reproducible across batch splits (a 1-process
    and an N-process run agree to float rounding)."""
    try:
        from timm.models.swin_transformer import WindowAttention
    except ImportError:  # timm is a dependency of the INN; nothing to do without it
        return 0
    count = 0
    for m in model.modules():
        if isinstance(m, WindowAttention) and getattr(m.qkv, "bias", None) is not None:
            dim = m.qkv.bias.shape[0] // 3
            keep = torch.ones_like(m.qkv.bias)
            keep[dim:2 * dim] = 0
            m.qkv.bias.register_hook(lambda g, keep=keep: g * keep.to(g.device, g.dtype))
            count += 1
    return count
