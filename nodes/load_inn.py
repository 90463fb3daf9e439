"""Load INN: an INN weights file from ``models/indigo/`` -> INDIGO_INN."""

from __future__ import annotations

import os
from typing import Any

import torch

from ..indigo_core.errors import IndigoError, WeightsFileError
from ..indigo_core.io import cards
from .common import CATEGORY, INN, inn_summary
from .bundled import (BUNDLED_DIR, INN_FORMAT, FileCache, find_with_bundled, fingerprint_listed, list_with_bundled,
                      validate_listed)
from .host import MODEL_FOLDER, io, model_folders

#: How many loaded INNs stay in memory (a few MB each for the paper's sizes).
CACHE_SIZE = 4

_cache = FileCache(CACHE_SIZE)


def _read_inn(path: str):
    """Build the INN stored in ``path``: the pack's safetensors format, or an INDIGO+ ``INN.pth``
    read through the core's restricted unpickler. Any failure is a WeightsFileError."""
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".safetensors":
            from ..indigo_core import load_inn

            return load_inn(path, map_location="cpu")
        if ext == ".pth":
            try:
                from ..indigo_core.inn.indigo_plus import load_indigo_plus_pth
            except ModuleNotFoundError as exc:
                if not (exc.name or "").endswith("indigo_plus"):
                    raise
                raise WeightsFileError(path, "INDIGO+ .pth files are not supported by this version of the pack") from exc
            return load_indigo_plus_pth(path)
    except IndigoError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
        # Surface anything the core did not classify as the pack's file error, cause chained.
        raise WeightsFileError(path, f"cannot be loaded as an INN ({type(exc).__name__}: {exc})") from exc
    raise WeightsFileError(path, f"expected a .safetensors or .pth file, got {ext or 'no extension'!r}")


def load_cached_inn(path: str):
    """The INN in ``path``, loaded once per (path, mtime, size) and kept in a small LRU cache.

    Loaded outside inference mode so later nodes can copy it into autograd; returned in eval mode
    with ``requires_grad`` off. The cached object is shared: callers must not change it.
    """

    def load(p: str):
        with torch.inference_mode(False):
            inn = _read_inn(p)
            inn.eval()
            inn.requires_grad_(False)
        card = cards.read_card(p)
        inn.trained_latent_format = cards.trained_latent_format(card)
        inn.trained_estimator = cards.trained_with_estimator(card)
        return inn

    return _cache.get(path, load)


def clear_cache() -> None:
    """Forget every cached INN (tests, or to free memory)."""
    _cache.clear()


def find_model(inn_name: str):
    """Full path of a listed INN name (the model folders first, then the bundled INNs), or None."""
    return find_with_bundled(inn_name, INN_FORMAT)


def resolve(inn_name: str) -> str:
    """Full path of a listed file name, or a WeightsFileError naming the folders searched."""
    path = find_model(inn_name)
    if path is None:
        raise WeightsFileError(
            inn_name, f"not found in the '{MODEL_FOLDER}' model folders {model_folders()} or among the "
                      f"pack's bundled INNs ({BUNDLED_DIR})"
        )
    return path


class LoadINN(io.ComfyNode):
    """Loads an INN file and shows its domain and scale on the node."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="INDIGO_LoadINN",
            display_name="Load INN",
            category=CATEGORY,
            description=(
                "Loads a wavelet-lifting INN (PixelINN or LatentINN) from models/indigo/. "
                "Reads the pack's .safetensors files (config stored in the file) and the "
                "authors' INDIGO+ INN.pth files."
            ),
            inputs=[
                io.Combo.Input(
                    "inn_name",
                    options=list_with_bundled(INN_FORMAT),
                    tooltip=(
                        "INN weights file: the pack's bundled INNs (listed first), or a file in "
                        "models/indigo/ (or an 'indigo:' folder of extra_model_paths.yaml): .safetensors "
                        "saved by the pack, or an INDIGO+ .pth. Press R after adding files to refresh the list."
                    ),
                ),
            ],
            outputs=[
                INN.Output(
                    "inn",
                    display_name="inn",
                    tooltip=(
                        "The loaded INN (read-only, shared). Its domain (pixel or latent) and scale "
                        "decide which measurement size the guidance nodes expect."
                    ),
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, inn_name: str) -> bool | str:
        return validate_listed(inn_name, INN_FORMAT, "INN")

    @classmethod
    def fingerprint_inputs(cls, inn_name: str, **_) -> Any:
        return fingerprint_listed(inn_name, INN_FORMAT)

    @classmethod
    def execute(cls, inn_name: str) -> io.NodeOutput:
        inn = load_cached_inn(resolve(inn_name))
        return io.NodeOutput(inn, ui={"indigo_inn": [inn_summary(inn, inn_name)]})
