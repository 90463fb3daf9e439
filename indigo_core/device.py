"""The device a command-line tool runs on: one parser for every CLI's --device."""

from __future__ import annotations

from typing import Optional

import torch

from .errors import ConfigError


def resolve_device(name: Optional[str], local_rank: int = 0, flag: str = "--device") -> torch.device:
    """`name` ("cpu", "cuda", "cuda:1", "mps", ...) as a torch.device, checked to exist here; None or
    "" picks cuda:<local_rank> when CUDA is available, else the CPU. ConfigError names the flag."""
    if not name:
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"{flag}: expected a torch device such as 'cpu', 'cuda' or 'cuda:1', got {name!r}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{flag} {name}: CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{flag} {name}: MPS is not available here")
    return dev
