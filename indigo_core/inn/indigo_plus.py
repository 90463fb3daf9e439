"""INDIGO+ (the authors' earlier pixel-diffusion method): its INN ("RWNN") as the "indigo-plus"
preset, and loading a user's INN.pth into it.

Layout (learned from the public fork of the authors' code): x - 0.5 -> per level: lazy polyphase
split -> 4 lifting pairs shared by both levels -> coarse + 0.5. Each P/U = bias-free conv (-> 32)
-> 2 residual blocks scaled per channel by FC(128 -> 64 -> 32) of the KDSR embedding -> bias-free
conv (P: 9 channels applied as the overlapping slices [0:3], [1:4], [2:5]; U: 3 channels).
Checkpoint keys:
    transform_net.inn.lifts.{k}.{p,u}.net.{convin,blocks.{j}.{conv1,conv2,fc.0,fc.2},convout}.{weight,bias}
(convin/convout have weights only). Their details are ordered coarsest level first; ours are
finest first (reverse the list when mixing the two codes).
"""

from __future__ import annotations

import re
import os
from typing import Mapping, Optional, Union

from torch import Tensor

from ..errors import WeightsFileError
from ..io.safe_pickle import extract_state_dict, safe_load
from ..io.weights import check_state_dict
from .config import INNConfig
from .network import WaveletINN

PathLike = Union[str, "os.PathLike[str]"]

_OURS = re.compile(r"^lifts\.0\.(\d+)\.(predict|update)\.(.+)$")
_THEIRS = re.compile(r"^transform_net\.inn\.lifts\.(\d+)\.([pu])\.net\.(.+)$")
_CONTAINER_KEYS = ("params", "params_ema", "state_dict")


def indigo_plus_inn() -> WaveletINN:
    """A randomly initialised INN with the INDIGO+ layout."""
    return WaveletINN(INNConfig.preset("indigo-plus"))


def to_indigo_plus_key(key: str) -> str:
    """Our state-dict key -> the INDIGO+ checkpoint key."""
    m = _OURS.match(key)
    if m is None:
        raise KeyError(f"not an indigo-plus INN key: {key!r}")
    k, role, rest = m.groups()
    return f"transform_net.inn.lifts.{k}.{'p' if role == 'predict' else 'u'}.net.{rest}"


def from_indigo_plus_key(key: str) -> Optional[str]:
    """INDIGO+ checkpoint key -> our key (None when the key is not part of the INN)."""
    m = _THEIRS.match(key)
    if m is None:
        return None
    k, role, rest = m.groups()
    return f"lifts.0.{k}.{'predict' if role == 'p' else 'update'}.{rest}"


def _strip_module_prefix(state: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def convert_indigo_plus_state_dict(state: Mapping[str, Tensor], path: PathLike = "<state dict>",
                                   reference: Optional[WaveletINN] = None) -> dict[str, Tensor]:
    """Check an INDIGO+ RWNN state dict against the layout (strict: missing, unexpected and
    mis-shaped keys raise WeightsFileError, named as in the file) and rename it to our keys."""
    state = _strip_module_prefix(state)
    reference = reference if reference is not None else indigo_plus_inn()
    expected = {to_indigo_plus_key(k): tuple(v.shape) for k, v in reference.state_dict().items()}
    check_state_dict(path, expected, state)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        ours = from_indigo_plus_key(key)
        if ours is None:  # pragma: no cover - check_state_dict refused it already
            raise WeightsFileError(path, f"unexpected key {key!r}")
        out[ours] = value
    return out


def load_indigo_plus_state_dict(state: Mapping[str, Tensor], path: PathLike = "<state dict>") -> WaveletINN:
    """An eval-mode "indigo-plus" WaveletINN holding `state` (INDIGO+ keys), strict key matching."""
    inn = indigo_plus_inn()
    ours = convert_indigo_plus_state_dict(state, path, reference=inn)
    inn.load_state_dict(ours, strict=True)
    return inn.eval()


def load_indigo_plus_pth(path: PathLike, key: Optional[str] = None) -> WaveletINN:
    """Load a user's INDIGO+ INN.pth through the restricted unpickler (no code can run).

    key: entry holding the state dict; None tries "params", "params_ema", "state_dict", then the
    top level (basicsr saves {"params": ...})."""
    obj = safe_load(path)
    if key is None:
        key = next((k for k in _CONTAINER_KEYS if isinstance(obj, Mapping) and k in obj), None)
    state = extract_state_dict(obj, path, key=key)
    return load_indigo_plus_state_dict(state, path)
