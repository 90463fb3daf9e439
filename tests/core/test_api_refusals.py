"""The public API refuses the inputs users get wrong with an IndigoError that names the argument,
what was expected and what came, before any heavy work; and never returns a silently wrong result.

One case per mistake: wrong dtype (integer, bool, a float dtype other than the model's), a numpy
array for a tensor, zero or negative sizes, batch/length mismatches, non-finite or out-of-range
config values, the wrong object or file kind given to a save/load function. Each of these ended in
a raw torch/Python error, a misleading message or a wrong result before these checks were added
(CHANGELOG, "The core's public API refuses bad input").
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from indigo_core import INNConfig, WaveletINN, load_inn, save_inn
from indigo_core.degradations import (DegradationParams, DegradationRanges, add_gaussian_noise, blur, blur_separable,
                                      degrade, downsample, encode_jpeg, gaussian_kernel, gaussian_kernel_1d,
                                      gaussian_noise, jpeg_differentiable, jpeg_real, preset, resize_to, sample_params)
from indigo_core.errors import ConfigError, IndigoError, InputValueError, ShapeError, WeightsFileError
from indigo_core.estimator import (DegradationEstimator, DegradationTeacher, EstimatorConfig, build_estimator,
                                   load_estimator, save_estimator)
from indigo_core.prior import (AUTOENCODER_PRESETS, PLAIN_AUTOENCODER_PRESETS, AutoencoderConfig, AutoencoderKL,
                               DiscreteSchedule, EpsUNet, PlainAutoencoder, PlainAutoencoderConfig, UNetConfig,
                               euler_sample, load_autoencoder, load_unet, read_latent_format, save_autoencoder,
                               save_unet)
from indigo_core.restorer import RestorerConfig, StageOneRestorer, build_restorer, save_restorer

NAN, INF = float("nan"), float("inf")


# ---------------------------------------------------------------------- small models, built once
@functools.cache
def pixel_inn() -> WaveletINN:
    torch.manual_seed(0)
    return WaveletINN(INNConfig.preset("pixel-small")).eval()


@functools.cache
def latent_inn() -> WaveletINN:
    torch.manual_seed(0)
    return WaveletINN(INNConfig.preset("latent-small")).eval()


@functools.cache
def estimator() -> DegradationEstimator:
    return DegradationEstimator(EstimatorConfig(width=8, n_res=0)).eval()


@functools.cache
def teacher() -> DegradationTeacher:
    return DegradationTeacher(EstimatorConfig(role="teacher", width=8, n_res=0, scale=2)).eval()


@functools.cache
def restorer() -> StageOneRestorer:
    return build_restorer(RestorerConfig(scale=2, width=8, n_blocks=1)).eval()


@functools.cache
def kl_ae() -> AutoencoderKL:
    return AutoencoderKL(AUTOENCODER_PRESETS["tiny"]).eval()


@functools.cache
def plain_ae() -> PlainAutoencoder:
    return PlainAutoencoder(PLAIN_AUTOENCODER_PRESETS["lean-tiny"]).eval()


UNET_CFG = UNetConfig(model_channels=32, channel_mult=(1, 2), attention_depth=(0, 1), num_heads=2, context_dim=16)


@functools.cache
def unet() -> EpsUNet:
    return EpsUNet(UNET_CFG).eval()


def img(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0))


def inverse_inputs(inn: WaveletINN, shape=(1, 3, 16, 16)):
    with torch.no_grad():
        return inn(img(*shape))


def unet_call(x=None, t=None, ctx=None):
    x = torch.randn(2, 4, 8, 8) if x is None else x
    t = torch.tensor([10.0, 500.0]) if t is None else t
    ctx = torch.randn(2, 1, 16) if ctx is None else ctx
    with torch.no_grad():
        return unet()(x, t, ctx)


SCHED = DiscreteSchedule()
Z0 = torch.randn(2, 4, 8, 8)


def _zero_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x)


# ---------------------------------------------------------------------- the cases
# (id, call, error class, regex the message must match: the argument, what was expected, what came)
CASES = [
    # -- WaveletINN
    ("inn x float64 vs float32 model", lambda: pixel_inn()(img(1, 3, 16, 16).double()),
     ShapeError, r"WaveletINN: expected x of the model's dtype torch\.float32, got torch\.float64"),
    ("inn x float16 vs float32 model", lambda: latent_inn()(img(1, 4, 8, 8).half()),
     ShapeError, r"expected x of the model's dtype torch\.float32, got torch\.float16"),
    ("inn integer degradation", lambda: pixel_inn()(img(1, 3, 16, 16), torch.ones(1, 128, dtype=torch.long)),
     ShapeError, r"expected a floating-point degradation embedding \(B,128\).*got dtype torch\.int64"),
    ("inn bool degradation", lambda: pixel_inn()(img(1, 3, 16, 16), torch.ones(1, 128, dtype=torch.bool)),
     ShapeError, r"floating-point degradation.*got dtype torch\.bool"),
    ("inverse integer coarse", lambda: pixel_inn().inverse(inverse_inputs(pixel_inn())[0].long(),
                                                           inverse_inputs(pixel_inn())[1]),
     ShapeError, r"WaveletINN\.inverse: expected coarse as a floating-point tensor, got dtype torch\.int64"),
    ("inverse float64 coarse", lambda: pixel_inn().inverse(inverse_inputs(pixel_inn())[0].double(),
                                                           inverse_inputs(pixel_inn())[1]),
     ShapeError, r"expected coarse of the model's dtype torch\.float32, got torch\.float64"),
    ("inverse float64 details", lambda: pixel_inn().inverse(inverse_inputs(pixel_inn())[0],
                                                            [d.double() for d in inverse_inputs(pixel_inn())[1]]),
     ShapeError, r"expected details\[0\] of coarse's dtype torch\.float32, got torch\.float64"),
    ("inverse empty coarse", lambda: pixel_inn().inverse(torch.zeros(1, 3, 0, 4),
                                                         [torch.zeros(1, 9, 0, 8), torch.zeros(1, 9, 0, 4)]),
     ShapeError, r"expected coarse with h and w >= 1, got shape \(1, 3, 0, 4\)"),
    # -- INNConfig
    ("INNConfig mlp_ratio nan", lambda: INNConfig(mlp_ratio=NAN), ConfigError, r"mlp_ratio: expected a finite number, got nan"),
    ("INNConfig input_shift inf", lambda: INNConfig(input_shift=INF), ConfigError, r"input_shift: expected a finite number, got inf"),
    ("INNConfig.replace unknown field", lambda: INNConfig().replace(chanels=4), ConfigError,
     r"INNConfig\.replace: unknown field\(s\) \['chanels'\]; expected a subset of .*'channels'"),
    # -- degrade and its parameters
    ("degrade numpy image", lambda: degrade(img(1, 3, 16, 16).numpy(), "mild"), ShapeError,
     r"degrade: expected x as a torch\.Tensor of shape \(B,C,H,W\), got ndarray"),
    ("degrade 4 channels with JPEG", lambda: degrade(img(1, 4, 16, 16), "mild"), ShapeError,
     r"degrade: the JPEG stage \(jpeg='real'\) expects 1 or 3 channels, got 4"),
    ("degrade 1 channel differentiable JPEG", lambda: degrade(img(1, 1, 16, 16), "mild", jpeg="differentiable"),
     ShapeError, r"expects 3 channels, got 1"),
    ("degrade zero height", lambda: degrade(img(1, 3, 0, 16), "mild"), ShapeError,
     r"degrade: image 0x16 is smaller than the scale factor 4 \(expected H and W >= 4\)"),
    ("degrade params as dicts", lambda: degrade(img(2, 3, 16, 16), [preset("mild").to_dict()] * 2), ConfigError,
     r"expected params\[0\] to be a DegradationParams, got dict \(use DegradationParams\.from_dict\)"),
    ("degrade params as one dict", lambda: degrade(img(2, 3, 16, 16), preset("mild").to_dict()), ConfigError,
     r"expected params to be a preset name, a DegradationParams or a sequence of them.*got dict"),
    ("degrade params int", lambda: degrade(img(1, 3, 16, 16), 3), ConfigError, r"expected params to be .*got int"),
    ("degrade generator str", lambda: degrade(img(1, 3, 16, 16), "mild", generator="abc"), ConfigError,
     r"generator: expected a torch\.Generator, an integer seed or None, got 'abc'"),
    ("degrade ranges str", lambda: degrade(img(1, 3, 16, 16), None, ranges="mild"), ConfigError,
     r"degrade: expected ranges to be a DegradationRanges, got str"),
    ("params blur_theta nan", lambda: DegradationParams(4.0, 0.0, None, blur_sigma_y=2.0, blur_theta=NAN),
     ConfigError, r"blur_theta: expected a finite angle in radians, got nan"),
    ("params blur_sigma_y str", lambda: DegradationParams(4.0, 0.0, None, blur_sigma_y="2"), ConfigError,
     r"blur_sigma_y: expected None or a finite float > 0, got '2'"),
    ("params scale None", lambda: DegradationParams(4.0, 0.0, None, scale=None), ConfigError,
     r"DegradationParams\.scale: expected an integer >= 1, got None"),
    ("params jpeg_quality bool", lambda: DegradationParams(4.0, 0.0, True), ConfigError,
     r"jpeg_quality: expected None or an integer in 1\.\.100, got True"),
    ("params from_dict missing keys", lambda: DegradationParams.from_dict({"blur_sigma": 1.0}), ConfigError,
     r"missing required keys \['noise_level', 'jpeg_quality'\]; got \['blur_sigma'\]"),
    ("params from_dict list", lambda: DegradationParams.from_dict([1, 2]), ConfigError,
     r"from_dict: expected a mapping, got list"),
    ("preset unknown override", lambda: preset("mild", sigma=2.0), ConfigError,
     r"degradation preset 'mild': unknown field\(s\) \['sigma'\]; expected fields of DegradationParams"),
    ("ranges one-element pair", lambda: DegradationRanges(blur_sigma=(5.0,)), ConfigError,
     r"DegradationRanges\.blur_sigma: expected a \(low, high\) pair of finite numbers, got \(5\.0,\)"),
    ("ranges infinite noise", lambda: DegradationRanges(noise_level=(0.0, INF)), ConfigError,
     r"noise_level: expected a \(low, high\) pair of finite numbers, got \(0\.0, inf\)"),
    ("ranges fractional quality", lambda: DegradationRanges(jpeg_quality=(20.5, 90)), ConfigError,
     r"jpeg_quality: expected integer qualities, got \(20\.5, 90\)"),
    ("ranges scale 0", lambda: DegradationRanges(scale=0), ConfigError, r"DegradationRanges\.scale: expected an integer >= 1, got 0"),
    ("ranges probability str", lambda: DegradationRanges(jpeg_prob="0.5"), ConfigError,
     r"DegradationRanges\.jpeg_prob: expected a probability in \[0,1\], got '0\.5'"),
    ("sample_params fractional n", lambda: sample_params(2.5), ConfigError, r"expected n an integer >= 0, got 2\.5"),
    # -- degradation stages
    ("kernel theta nan", lambda: gaussian_kernel(2.0, 1.0, NAN), ConfigError, r"theta: expected a finite angle in radians, got nan"),
    ("kernel fractional size", lambda: gaussian_kernel(2.0, size=5.5), ConfigError,
     r"kernel size: expected an odd integer >= 1, got 5\.5"),
    ("kernel_1d fractional size", lambda: gaussian_kernel_1d(2.0, 5.5), ConfigError,
     r"kernel size: expected an odd integer >= 1, got 5\.5"),
    ("kernel_1d size None", lambda: gaussian_kernel_1d(2.0, None), ConfigError, r"kernel size: .*got None"),
    ("kernel sigma str", lambda: gaussian_kernel("a"), ConfigError, r"sigma: expected a finite blur sigma > 0 \(pixels\), got 'a'"),
    ("blur integer image", lambda: blur((img(1, 3, 8, 8) * 255).long(), gaussian_kernel(1.0)), InputValueError,
     r"blur: expected a floating-point image in \[0,1\], got dtype torch\.int64"),
    ("blur_separable integer image", lambda: blur_separable((img(1, 3, 8, 8) * 255).long(), gaussian_kernel_1d(1.0, 7),
                                                            gaussian_kernel_1d(1.0, 7)),
     InputValueError, r"blur_separable: expected a floating-point image in \[0,1\], got dtype torch\.int64"),
    ("blur zero height", lambda: blur(img(1, 3, 0, 8), gaussian_kernel(1.0)), ShapeError, r"blur: expected H and W >= 1, got 0x8"),
    ("blur numpy kernel", lambda: blur(img(1, 3, 8, 8), gaussian_kernel(1.0).numpy()), ShapeError,
     r"blur: expected kernel as a torch\.Tensor, got ndarray"),
    ("downsample integer image", lambda: downsample((img(1, 3, 8, 8) * 255).long(), 2), InputValueError,
     r"downsample: expected a floating-point image in \[0,1\], got dtype torch\.int64"),
    ("downsample scale str", lambda: downsample(img(1, 3, 8, 8), "2"), ConfigError,
     r"downsample: expected an integer scale >= 1, got '2'"),
    ("resize_to scalar size", lambda: resize_to(img(1, 3, 8, 8), 4), ShapeError,
     r"resize: expected size as a pair of integers \(H, W\), got 4"),
    ("resize_to fractional size", lambda: resize_to(img(1, 3, 8, 8), (4.5, 4)), ShapeError,
     r"expected size as a pair of integers \(H, W\), got \(4\.5, 4\)"),
    ("resize_to empty image", lambda: resize_to(img(1, 3, 0, 8), (4, 4)), ShapeError, r"resize: expected H and W >= 1, got 0x8"),
    ("noise integer image", lambda: add_gaussian_noise((img(1, 3, 8, 8) * 255).long(), 10.0, 0), InputValueError,
     r"noise: expected a floating-point image in \[0,1\], got dtype torch\.int64"),
    ("noise seed None", lambda: add_gaussian_noise(img(1, 3, 8, 8), 10.0, None), ConfigError,
     r"noise seed: expected an integer >= 0, got None"),
    ("noise seed negative", lambda: add_gaussian_noise(img(1, 3, 8, 8), 10.0, -1), ConfigError,
     r"noise seed: expected an integer >= 0, got -1"),
    ("noise level str", lambda: add_gaussian_noise(img(1, 3, 8, 8), "a", 0), ConfigError,
     r"noise level: expected a finite value >= 0 on the 0\.\.255 scale, got 'a'"),
    ("noise negative shape", lambda: gaussian_noise((2, -1), 10.0, 0), ShapeError,
     r"noise: expected a shape of integers >= 0, got \(2, -1\)"),
    ("jpeg_real 8-bit image", lambda: jpeg_real((img(1, 3, 8, 8) * 255).to(torch.uint8), 50), InputValueError,
     r"jpeg_real: expected a floating-point image in \[0,1\], got dtype torch\.uint8 \(convert 8-bit images"),
    ("jpeg_real quality None", lambda: jpeg_real(img(1, 3, 8, 8), None), ConfigError,
     r"jpeg quality: expected an integer in 1\.\.100 or one per image, got None"),
    ("jpeg_real quality str", lambda: jpeg_real(img(1, 3, 8, 8), "50"), ConfigError, r"got '50'"),
    ("jpeg_real zero height", lambda: jpeg_real(img(1, 3, 0, 8), 50), ShapeError, r"jpeg_real: expected H and W >= 1, got 0x8"),
    ("jpeg_differentiable 8-bit image", lambda: jpeg_differentiable((img(1, 3, 8, 8) * 255).to(torch.uint8), 50),
     InputValueError, r"jpeg_differentiable: expected a floating-point image in \[0,1\], got dtype torch\.uint8"),
    ("jpeg_differentiable zero height", lambda: jpeg_differentiable(img(1, 3, 0, 8), 50), ShapeError,
     r"jpeg_differentiable: expected H and W >= 1, got 0x8"),
    ("encode_jpeg 8-bit image", lambda: encode_jpeg((img(1, 3, 8, 8) * 255).to(torch.uint8), 50), InputValueError,
     r"encode_jpeg: expected a floating-point image in \[0,1\], got dtype torch\.uint8"),
    # -- estimator
    ("estimator 8-bit image", lambda: estimator()((img(1, 3, 8, 8) * 255).to(torch.uint8)), ShapeError,
     r"DegradationEstimator: expected y as a floating-point tensor, got dtype torch\.uint8"),
    ("estimator float64 image", lambda: estimator()(img(1, 3, 8, 8).double()), ShapeError,
     r"DegradationEstimator: expected y of the model's dtype torch\.float32, got torch\.float64"),
    ("estimator features integer image", lambda: estimator().features(img(1, 3, 8, 8).long()), ShapeError,
     r"expected y as a floating-point tensor, got dtype torch\.int64"),
    ("teacher integer images", lambda: teacher()(img(1, 3, 4, 4).long(), img(1, 3, 8, 8).long()), ShapeError,
     r"DegradationTeacher: expected lq as a floating-point tensor, got dtype torch\.int64"),
    ("estimator config str", lambda: DegradationEstimator("small"), ConfigError,
     r"DegradationEstimator: expected an EstimatorConfig .*got str"),
    ("student class with teacher config", lambda: DegradationEstimator(EstimatorConfig(role="teacher", width=8, n_res=0)),
     ConfigError, r"DegradationEstimator: expected a config with role 'student', got 'teacher'"),
    ("teacher config str", lambda: DegradationTeacher("kdsr-teacher"), ConfigError,
     r"DegradationTeacher: expected an EstimatorConfig .*got str"),
    ("build_estimator dict", lambda: build_estimator({"width": 8}), ConfigError,
     r"build_estimator: expected an EstimatorConfig .*got dict"),
    ("EstimatorConfig n_res -1", lambda: EstimatorConfig(n_res=-1), ConfigError,
     r"EstimatorConfig\.n_res: expected an integer >= 0, got -1"),
    # -- restorer
    ("restorer integer image", lambda: restorer()(img(1, 3, 8, 8).long()), ShapeError,
     r"restorer: expected y as a floating-point tensor, got dtype torch\.int64"),
    ("restorer float16 image", lambda: restorer().restore(img(1, 3, 8, 8).half()), ShapeError,
     r"restorer: expected y of the model's dtype torch\.float32, got torch\.float16"),
    ("restorer zero height", lambda: restorer()(img(1, 3, 0, 8)), ShapeError, r"restorer: expected y with H and W >= 1, got 0x8"),
    ("restorer numpy image", lambda: restorer()(img(1, 3, 8, 8).numpy()), ShapeError,
     r"restorer input: expected \(B,3,h,w\) RGB in \[0,1\], got ndarray"),
    ("restorer config None", lambda: StageOneRestorer(None), ConfigError, r"StageOneRestorer: expected a RestorerConfig, got NoneType"),
    ("build_restorer dict", lambda: build_restorer({"scale": 2}), ConfigError, r"expected a RestorerConfig, got dict"),
    # -- autoencoders
    ("KL encode 8-bit image", lambda: kl_ae().encode((img(1, 3, 16, 16) * 255).to(torch.uint8)), ShapeError,
     r"AutoencoderKL\.encode: expected the image as a floating-point tensor, got dtype torch\.uint8"),
    ("plain encode float64 image", lambda: plain_ae().encode(img(1, 3, 16, 16).double()), ShapeError,
     r"PlainAutoencoder\.encode: expected the image of the model's dtype torch\.float32, got torch\.float64"),
    ("KL encode zero height", lambda: kl_ae().encode(img(1, 3, 0, 16)), ShapeError,
     r"AutoencoderKL\.encode: expected H and W multiples of 8 \(and >= 8\), got \(0, 16\)"),
    ("plain encode numpy", lambda: plain_ae().encode(img(1, 3, 16, 16).numpy()), ShapeError,
     r"PlainAutoencoder\.encode: expected an image \(B,3,H,W\), got ndarray"),
    ("KL decode integer latent", lambda: kl_ae().decode(torch.zeros(1, 4, 2, 2, dtype=torch.long)), ShapeError,
     r"AutoencoderKL\.decode: expected the latent as a floating-point tensor, got dtype torch\.int64"),
    ("plain decode float64 latent", lambda: plain_ae().decode(torch.zeros(1, 4, 2, 2, dtype=torch.float64)), ShapeError,
     r"PlainAutoencoder\.decode: expected the latent of the model's dtype torch\.float32, got torch\.float64"),
    ("KL decode empty latent", lambda: kl_ae().decode(torch.zeros(1, 4, 0, 2)), ShapeError,
     r"AutoencoderKL\.decode: expected a latent with h and w >= 1, got \(0, 2\)"),
    ("KL moments not a multiple of 8", lambda: kl_ae().moments(img(1, 3, 12, 16) * 2 - 1), ShapeError,
     r"AutoencoderKL\.moments: expected H and W multiples of 8 \(and >= 8\), got \(12, 16\)"),
    ("plain moments unbatched", lambda: plain_ae().moments(img(3, 16, 16)), ShapeError,
     r"PlainAutoencoder\.moments: expected an image \(B,3,H,W\), got \(3, 16, 16\)"),
    ("plain decode_raw 3 channels", lambda: plain_ae().decode_raw(torch.zeros(1, 3, 2, 2)), ShapeError,
     r"PlainAutoencoder\.decode_raw: expected a latent \(B,4,h,w\), got \(1, 3, 2, 2\)"),
    ("normalise_latents nan mean", lambda: PlainAutoencoder(PLAIN_AUTOENCODER_PRESETS["lean-tiny"]).normalise_latents(
        [NAN] * 4, [1.0] * 4), ConfigError, r"normalise_latents: expected 4 finite means and 4 finite positive stds, got \[nan"),
    ("normalise_latents target_std 0", lambda: AutoencoderKL(AUTOENCODER_PRESETS["tiny"]).normalise_latents(
        [0.0] * 4, [1.0] * 4, 0.0), ConfigError, r"normalise_latents: expected target_std None or a finite number > 0, got 0\.0"),
    ("AutoencoderConfig ch str", lambda: AutoencoderConfig(ch="64"), ConfigError,
     r"AutoencoderConfig\.ch: expected a positive multiple of 32 \(GroupNorm\(32\)\), got '64'"),
    ("AutoencoderConfig ch_mult int", lambda: AutoencoderConfig(ch_mult=2), ConfigError,
     r"AutoencoderConfig\.ch_mult: expected a list of integers >= 1, got 2"),
    ("AutoencoderConfig fractional ch_mult", lambda: AutoencoderConfig(ch_mult=(1, 2.5)), ConfigError,
     r"ch_mult: expected a list of integers >= 1, got \(1, 2\.5\)"),
    ("AutoencoderConfig in_channels 0", lambda: AutoencoderConfig(in_channels=0), ConfigError,
     r"AutoencoderConfig\.in_channels: expected an integer >= 1, got 0"),
    ("AutoencoderConfig scale_factor inf", lambda: AutoencoderConfig(scale_factor=INF), ConfigError,
     r"AutoencoderConfig\.scale_factor: expected a finite number > 0, got inf"),
    ("AutoencoderConfig dropout 2", lambda: AutoencoderConfig(dropout=2.0), ConfigError,
     r"AutoencoderConfig\.dropout: expected a probability in \[0, 1\), got 2\.0"),
    ("AutoencoderConfig from_dict list", lambda: AutoencoderConfig.from_dict([1]), ConfigError,
     r"AutoencoderConfig: expected a mapping of fields, got list"),
    ("AutoencoderKL preset name", lambda: AutoencoderKL("tiny"), ConfigError,
     r"AutoencoderKL: expected an AutoencoderConfig .*got str"),
    ("PlainAutoencoderConfig widths int", lambda: PlainAutoencoderConfig(widths=32), ConfigError,
     r"PlainAutoencoderConfig\.widths: expected a list of integers >= 1, got 32"),
    ("PlainAutoencoderConfig scale_factor inf", lambda: PlainAutoencoderConfig(scale_factor=INF), ConfigError,
     r"PlainAutoencoderConfig\.scale_factor: expected a finite number > 0, got inf"),
    ("PlainAutoencoder preset name", lambda: PlainAutoencoder("lean"), ConfigError,
     r"PlainAutoencoder: expected a PlainAutoencoderConfig .*got str"),
    # -- UNet
    ("unet integer latent", lambda: unet_call(x=torch.zeros(2, 4, 8, 8, dtype=torch.long)), ShapeError,
     r"UNet: expected x as a floating-point tensor, got dtype torch\.int64"),
    ("unet float64 latent", lambda: unet_call(x=torch.zeros(2, 4, 8, 8, dtype=torch.float64)), ShapeError,
     r"UNet: expected x of the model's dtype torch\.float32, got torch\.float64"),
    ("unet empty latent", lambda: unet_call(x=torch.zeros(2, 4, 0, 8)), ShapeError,
     r"UNet input: expected h and w >= 1, got \(2, 4, 0, 8\)"),
    ("unet python timestep", lambda: unet_call(t=10), ShapeError,
     r"UNet timesteps: expected a tensor of shape \(2,\), \(1,\) or \(\) \(x's batch 2\), got int"),
    ("unet timesteps of another batch", lambda: unet_call(t=torch.tensor([1.0, 2.0, 3.0])), ShapeError,
     r"UNet timesteps: expected a tensor of shape \(2,\).*got \(3,\)"),
    ("unet context batch 1", lambda: unet_call(ctx=torch.randn(1, 1, 16)), ShapeError,
     r"UNet context: expected \(2,T,16\) with T >= 1 .*\.expand\(2, -1, -1\).*got \(1, 1, 16\)"),
    ("unet context None", lambda: unet()(torch.randn(2, 4, 8, 8), torch.tensor([1.0, 2.0]), None), ShapeError,
     r"UNet context: expected \(B,T,16\), got NoneType"),
    ("unet context float64", lambda: unet_call(ctx=torch.randn(2, 1, 16, dtype=torch.float64)), ShapeError,
     r"UNet context: expected x's dtype torch\.float32, got torch\.float64"),
    ("UNetConfig num_heads 0", lambda: UNetConfig(num_heads=0), ConfigError, r"UNetConfig\.num_heads: expected an integer >= 1, got 0"),
    ("UNetConfig num_heads -1", lambda: UNetConfig(num_heads=-1), ConfigError, r"num_heads: expected an integer >= 1, got -1"),
    ("UNetConfig no levels", lambda: UNetConfig(channel_mult=(), attention_depth=()), ConfigError,
     r"UNetConfig\.channel_mult: expected at least one level, got \(\)"),
    ("UNetConfig negative attention depth", lambda: UNetConfig(attention_depth=(0, -1, 1)), ConfigError,
     r"UNetConfig\.attention_depth: expected a list of integers >= 0, got \(0, -1, 1\)"),
    ("UNetConfig in_channels 0", lambda: UNetConfig(in_channels=0), ConfigError,
     r"UNetConfig\.in_channels: expected an integer >= 1, got 0"),
    ("EpsUNet config str", lambda: EpsUNet("small"), ConfigError, r"EpsUNet: expected a UNetConfig, got str"),
    # -- schedule and sampler
    ("schedule betas list", lambda: DiscreteSchedule([0.1, 0.2]), ConfigError,
     r"DiscreteSchedule: expected betas as a 1-D floating-point tensor \(T,\) with T >= 1, got list"),
    ("schedule beta 1", lambda: DiscreteSchedule(torch.full((10,), 1.0)), ConfigError,
     r"DiscreteSchedule: expected every beta in \(0, 1\), got values in \[1\.0, 1\.0\]"),
    ("schedule 2-D betas", lambda: DiscreteSchedule(torch.rand(2, 10)), ConfigError, r"1-D floating-point tensor.*got \(2, 10\)"),
    ("add_noise t 1000", lambda: SCHED.add_noise(Z0, torch.tensor([1, 1000]), torch.randn_like(Z0)), ShapeError,
     r"add_noise: expected timesteps in \[0, 999\], got values in \[1, 1000\]"),
    ("add_noise t -1", lambda: SCHED.add_noise(Z0, torch.tensor([-1, 5]), torch.randn_like(Z0)), ShapeError,
     r"add_noise: expected timesteps in \[0, 999\], got values in \[-1, 5\]"),
    ("add_noise float t", lambda: SCHED.add_noise(Z0, torch.tensor([1.0, 5.0]), torch.randn_like(Z0)), ShapeError,
     r"add_noise: expected integer timesteps in \[0, 999\].*got dtype torch\.float32"),
    ("add_noise t of another batch", lambda: SCHED.add_noise(Z0, torch.tensor([1, 2, 3]), torch.randn_like(Z0)), ShapeError,
     r"add_noise: expected t as integer timesteps of shape \(2,\), \(1,\) or \(\), got \(3,\)"),
    ("add_noise noise shape", lambda: SCHED.add_noise(Z0, torch.tensor([1, 2]), torch.randn(2, 3, 8, 8)), ShapeError,
     r"add_noise: expected noise of z0's shape \(2, 4, 8, 8\), got \(2, 3, 8, 8\)"),
    ("add_noise unbatched z0", lambda: SCHED.add_noise(Z0[0], torch.tensor([1, 2, 3, 4]), torch.randn_like(Z0[0])),
     ShapeError, r"add_noise: expected z0 as a floating-point latent \(B,C,h,w\), got \(4, 8, 8\)"),
    ("karras_sigmas 0 steps", lambda: SCHED.karras_sigmas(0), ConfigError, r"karras_sigmas: expected steps an integer >= 1, got 0"),
    ("karras_sigmas rho 0", lambda: SCHED.karras_sigmas(10, 0.0), ConfigError, r"expected rho a finite number > 0, got 0\.0"),
    ("euler_sample 0 steps", lambda: euler_sample(_zero_eps, torch.randn(1, 4, 4, 4), SCHED, 0), ConfigError,
     r"euler_sample: expected steps an integer >= 1, got 0"),
    ("euler_sample no schedule", lambda: euler_sample(_zero_eps, torch.randn(1, 4, 4, 4), None, 2), ConfigError,
     r"euler_sample: expected schedule to be a DiscreteSchedule, got NoneType"),
    ("euler_sample eps of the wrong shape", lambda: euler_sample(lambda x, t: torch.zeros(1, 3, 4, 4),
                                                                 torch.randn(1, 4, 4, 4), SCHED, 2),
     ShapeError, r"euler_sample: expected eps_fn to return noise of the latent's shape \(1, 4, 4, 4\), got \(1, 3, 4, 4\)"),
    ("schedule timestep float", lambda: SCHED.timestep(1.0), ShapeError, r"timestep: expected sigma as a tensor, got float"),
]


@pytest.mark.parametrize("call,error,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_expected_and_got(call, error, pattern) -> None:
    assert issubclass(error, IndigoError)
    with torch.no_grad(), pytest.raises(error, match=pattern):
        call()


# ---------------------------------------------------------------------- files
def _files(tmp_path):
    inn = save_inn(pixel_inn(), tmp_path / "inn.safetensors")
    (tmp_path / "folder.safetensors").mkdir()
    return inn


FILE_CASES = [
    ("load_inn dtype int64", lambda p: load_inn(p / "inn.safetensors", dtype=torch.int64), ConfigError,
     r"load_inn: expected dtype None or a floating-point torch\.dtype .*got torch\.int64"),
    ("load_inn dtype str", lambda p: load_inn(p / "inn.safetensors", dtype="float16"), ConfigError,
     r"load_inn: expected dtype None or a floating-point torch\.dtype .*got 'float16'"),
    ("load_inn path None", lambda p: load_inn(None), WeightsFileError,
     r"expected a file path \(str or os\.PathLike\), got NoneType"),
    ("load_inn a folder", lambda p: load_inn(p / "folder.safetensors"), WeightsFileError,
     r"folder\.safetensors: is a directory, not a file"),
    ("save_inn onto a folder", lambda p: save_inn(pixel_inn(), p / "folder.safetensors", overwrite=True), WeightsFileError,
     r"folder\.safetensors: is a directory; expected the path of a file to write"),
    ("save_inn reserved metadata key", lambda p: save_inn(pixel_inn(), p / "x.safetensors", extra_metadata={"format": "x"}),
     ConfigError, r"save_inn: extra_metadata may not set the reserved key 'format'"),
    ("save_inn metadata list", lambda p: save_inn(pixel_inn(), p / "x.safetensors", extra_metadata=[("a", "b")]),
     ConfigError, r"save_inn: expected extra_metadata as a mapping of str to str, got list"),
    ("save_estimator of an INN", lambda p: save_estimator(pixel_inn(), p / "e.safetensors"), ConfigError,
     r"save_estimator: expected a DegradationEstimator \(or DegradationTeacher\), got WaveletINN"),
    ("load_estimator dtype int64", lambda p: load_estimator(p / "inn.safetensors", dtype=torch.int64), ConfigError,
     r"load_estimator: expected dtype None or a floating-point torch\.dtype .*got torch\.int64"),
    ("save_restorer of an INN", lambda p: save_restorer(pixel_inn(), p / "r.safetensors"), ConfigError,
     r"save_restorer: expected a StageOneRestorer, got WaveletINN"),
    ("save_restorer dtype int64", lambda p: save_restorer(restorer(), p / "r.safetensors", dtype=torch.int64), ConfigError,
     r"save_restorer: expected dtype None or a floating-point torch\.dtype .*got torch\.int64"),
    ("save_autoencoder of an INN", lambda p: save_autoencoder(pixel_inn(), p / "a.safetensors"), ConfigError,
     r"save_autoencoder: expected an AutoencoderKL or a PlainAutoencoder, got WaveletINN"),
    ("save_autoencoder dtype int8", lambda p: save_autoencoder(plain_ae(), p / "a.safetensors", dtype=torch.int8),
     ConfigError, r"save_autoencoder: expected dtype None or a floating-point torch\.dtype .*got torch\.int8"),
    ("load_autoencoder of an INN file", lambda p: load_autoencoder(p / "inn.safetensors"), WeightsFileError,
     r"inn\.safetensors: load_autoencoder: expected an autoencoder file \(format 'indigo-prior-autoencoder'\) or an SD "
     r"VAE file, got a file of format 'indigo-inn'"),
    ("load_autoencoder dtype int64", lambda p: load_autoencoder(p / "inn.safetensors", dtype=torch.int64), ConfigError,
     r"load_autoencoder: expected dtype None or a floating-point torch\.dtype .*got torch\.int64"),
    ("read_latent_format of an INN file", lambda p: read_latent_format(p / "inn.safetensors"), WeightsFileError,
     r"inn\.safetensors: read_latent_format: expected an autoencoder file .*got a file of format 'indigo-inn'"),
    ("save_unet of an INN", lambda p: save_unet(pixel_inn(), torch.zeros(1, 1, 16), p / "u.safetensors"), ConfigError,
     r"save_unet: expected an EpsUNet, got WaveletINN"),
    ("save_unet numpy context", lambda p: save_unet(unet(), torch.zeros(1, 1, 16).numpy(), p / "u.safetensors"),
     ShapeError, r"save_unet: expected null_context as a floating-point tensor \(1,1,16\), got ndarray"),
    ("save_unet dtype int64", lambda p: save_unet(unet(), torch.zeros(1, 1, 16), p / "u.safetensors", dtype=torch.int64),
     ConfigError, r"save_unet: expected dtype None or a floating-point torch\.dtype .*got torch\.int64"),
    ("load_unet dtype int64", lambda p: load_unet(p / "inn.safetensors", dtype=torch.int64), ConfigError,
     r"load_unet: expected dtype None or a floating-point torch\.dtype .*got torch\.int64"),
]


@pytest.mark.parametrize("call,error,pattern", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_bad_file_argument_is_refused(tmp_path, call, error, pattern) -> None:
    _files(tmp_path)
    before = sorted(x.name for x in tmp_path.iterdir())
    with pytest.raises(error, match=pattern):
        call(tmp_path)
    assert sorted(x.name for x in tmp_path.iterdir()) == before  # nothing was written


# ---------------------------------------------------------------------- checks before work, and what now works
def test_degrade_refuses_a_bad_channel_count_before_any_work(monkeypatch) -> None:
    import indigo_core.degradations.pipeline as pipeline

    def fail(*args, **kwargs):
        raise AssertionError("degradation work started before the channel check")

    monkeypatch.setattr(pipeline, "_degrade_before_jpeg", fail)
    with pytest.raises(ShapeError, match="expects 1 or 3 channels, got 4"):
        degrade(img(2, 4, 16, 16), None, generator=0)


def test_sampled_degrade_is_unchanged_by_the_checks() -> None:
    """The checks draw nothing from the generator: a seeded run gives the same params as before."""
    x = img(2, 3, 16, 16)
    _, used = degrade(x, None, generator=7)
    assert used == sample_params(2, 7)


@pytest.mark.parametrize("inn", [pixel_inn, latent_inn], ids=["haar", "undecimated"])
def test_inn_takes_an_empty_batch(inn) -> None:
    model = inn()
    c = model.config.channels
    with torch.no_grad():
        coarse, details = model(torch.zeros(0, c, 16, 16), torch.zeros(0, 128))
        back = model.inverse(coarse, details)
    assert coarse.shape == (0, c, *model.coarse_shape(16, 16))
    assert [tuple(d.shape[2:]) for d in details] == model.config.detail_shapes(16, 16)
    assert back.shape == (0, c, 16, 16)


def test_unet_takes_an_empty_batch() -> None:
    with torch.no_grad():
        out = unet()(torch.zeros(0, 4, 8, 6), torch.zeros(0), torch.zeros(0, 1, 16))
    assert out.shape == (0, 4, 8, 6)


def test_jpeg_takes_an_empty_batch() -> None:
    assert jpeg_real(img(0, 3, 8, 8), 50).shape == (0, 3, 8, 8)
    assert jpeg_differentiable(img(0, 3, 8, 8), []).shape == (0, 3, 8, 8)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_bicubic_resize_works_on_the_cpu(dtype) -> None:
    x = img(1, 3, 16, 16)
    y = downsample(x.to(dtype), 4)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), downsample(x, 4), atol=1e-2, rtol=0)
    assert degrade(x.to(dtype), preset("mild", noise_seed=0))[0].dtype == dtype


def test_autocast_still_takes_inputs_of_another_dtype() -> None:
    """The model-dtype checks stand aside under autocast (torch casts the inputs itself)."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        gamma = estimator()(img(1, 3, 8, 8).bfloat16())
        coarse, _ = latent_inn()(img(1, 4, 8, 8).bfloat16())
    assert gamma.shape == (1, 128) and coarse.shape == (1, 4, 8, 8)
    assert math.isfinite(float(gamma.float().abs().sum()))


def test_objects_of_the_wrong_kind_are_pack_errors_and_type_errors(tmp_path) -> None:
    from indigo_core.errors import ConfigTypeError
    from indigo_core.inn.network import WaveletINN
    from indigo_core.io.weights import save_inn

    from indigo_core.estimator import DegradationEstimator, DegradationTeacher, build_estimator, save_estimator
    from indigo_core.prior import AutoencoderKL, EpsUNet, save_autoencoder, save_unet
    from indigo_core.prior.plain_autoencoder import PlainAutoencoder
    from indigo_core.restorer import StageOneRestorer, save_restorer

    lin, out = torch.nn.Linear(2, 2), tmp_path / "x.safetensors"
    calls = [lambda: WaveletINN({"domain": "pixel"}), lambda: save_inn(lin, out),
             lambda: DegradationEstimator({}), lambda: DegradationTeacher({}), lambda: build_estimator({}),
             lambda: save_estimator(lin, out), lambda: AutoencoderKL("small"), lambda: PlainAutoencoder("lean"),
             lambda: EpsUNet({}), lambda: save_autoencoder(lin, out), lambda: save_unet(lin, torch.zeros(1), out),
             lambda: StageOneRestorer({}), lambda: save_restorer(lin, out)]
    for k, call in enumerate(calls):
        with pytest.raises(ConfigTypeError) as info:
            call()
        assert isinstance(info.value, IndigoError) and isinstance(info.value, TypeError), k
    assert not out.exists()
