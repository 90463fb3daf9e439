"""The wavelet-lifting invertible network (paper Sec. III-B, IV-A).

The INDIGO+ layout and its .pth loader live in :mod:`indigo_core.inn.indigo_plus` (not imported
here: it depends on :mod:`indigo_core.io`, which depends on this package)."""

from .config import PRESET_NAMES, INNConfig
from .network import WaveletINN

__all__ = ["INNConfig", "PRESET_NAMES", "WaveletINN"]
