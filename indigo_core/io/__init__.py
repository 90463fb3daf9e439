"""Weights files: safetensors (ours) and a restricted reader for users' legacy .pth checkpoints."""

from .safe_pickle import load_state_dict_file, safe_load
from .weights import load_inn, read_inn_config, save_inn

__all__ = ["load_inn", "save_inn", "read_inn_config", "safe_load", "load_state_dict_file"]
