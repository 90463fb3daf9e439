"""INN files for host tests: small random INNs saved with the core's own writer, and broken files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from indigo_core import INNConfig, WaveletINN, save_inn


def write_random_inn(path: Path, preset: str = "pixel-small", seed: int = 0) -> WaveletINN:
    """Save a seeded random INN of ``preset`` at ``path`` (replacing it); returns the INN."""
    torch.manual_seed(seed)
    inn = WaveletINN(INNConfig.preset(preset)).eval()
    with torch.no_grad():
        for p in inn.parameters():  # non-trivial everywhere (some layers start at zero)
            p.add_(0.01 * torch.randn_like(p))
    save_inn(inn, path, overwrite=True)
    return inn


def write_corrupt_file(path: Path) -> Path:
    """A file with an INN's name that is not a safetensors file."""
    path.write_bytes(b"this is not a safetensors file" * 8)
    return path


def write_truncated_inn(path: Path, preset: str = "pixel-small") -> Path:
    """A real INN file cut in half."""
    write_random_inn(path, preset)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def state_hash(module: torch.nn.Module) -> str:
    """SHA-256 of every tensor of the state dict (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
