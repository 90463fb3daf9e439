"""The wavelet-lifting invertible network (paper Sec. III-B, IV-A)."""

from .config import PRESET_NAMES, INNConfig
from .network import WaveletINN

__all__ = ["INNConfig", "PRESET_NAMES", "WaveletINN"]
