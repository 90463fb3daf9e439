"""Synthetic degradations y = JPEG_q((x * k) downsampled by s + n) for training and evaluation.

Public API: `degrade`, `DegradationParams`, `DegradationRanges`, `PRESETS`, `preset`,
`TRAINING_RANGES`, `sample_params`, and the stages `gaussian_kernel`, `blur`, `downsample`,
`resize_to`, `add_gaussian_noise`, `jpeg_real`, `jpeg_differentiable`.
"""

from .jpeg import encode_jpeg, jpeg_differentiable, jpeg_real
from .kernels import (anisotropic_gaussian_kernel, blur, blur_separable, default_kernel_size, gaussian_kernel,
                      gaussian_kernel_1d, isotropic_gaussian_kernel)
from .noise import add_gaussian_noise, gaussian_noise
from .pipeline import (JPEG_MODES, PRESETS, TRAINING_RANGES, DegradationParams, DegradationRanges, degrade,
                       preset, sample_params)
from .resize import RESIZE_MODES, downsample, resize_to

__all__ = [
    "degrade", "DegradationParams", "DegradationRanges", "PRESETS", "preset", "TRAINING_RANGES",
    "sample_params", "JPEG_MODES", "RESIZE_MODES", "gaussian_kernel", "isotropic_gaussian_kernel",
    "anisotropic_gaussian_kernel", "gaussian_kernel_1d", "default_kernel_size", "blur", "blur_separable",
    "downsample", "resize_to", "gaussian_noise", "add_gaussian_noise", "jpeg_real", "jpeg_differentiable", "encode_jpeg",
]
