"""comfyui-indigo core: LatentINDIGO's invertible networks, degradation estimator and guidance.

Host-agnostic: nothing here imports ComfyUI.

Public API::

    from indigo_core import INNConfig, WaveletINN, save_inn, load_inn, DegradationEstimator
"""

from .estimator import DegradationEstimator
from .inn import INNConfig, WaveletINN
from .io import load_inn, save_inn

__all__ = ["INNConfig", "WaveletINN", "save_inn", "load_inn", "DegradationEstimator"]
