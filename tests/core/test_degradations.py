"""Degradation model y = JPEG_q((x * k) downsampled by s + n): presets, sampling, determinism,
batch consistency, each stage checked against an independent computation."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from indigo_core.degradations import (
    PRESETS,
    TRAINING_RANGES,
    DegradationParams,
    DegradationRanges,
    blur,
    blur_separable,
    default_kernel_size,
    degrade,
    downsample,
    encode_jpeg,
    gaussian_kernel,
    gaussian_kernel_1d,
    gaussian_noise,
    jpeg_differentiable,
    jpeg_real,
    preset,
    resize_to,
    sample_params,
)
from indigo_core.errors import ConfigError, InputValueError, ShapeError

PAPER_LEVELS = {"mild": (4.0, 15.0, 70), "medium": (6.0, 25.0, 50), "severe": (8.0, 35.0, 30)}

# IJG/libjpeg base luminance table (JPEG standard, Annex K), row-major
_STD_LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
             14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
             49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]


def _ijg_luma_table(q: int) -> list[int]:
    scale = 5000 // q if q < 50 else 200 - 2 * q
    return [min(255, max(1, (v * scale + 50) // 100)) for v in _STD_LUMA]


def _sigma_from_kernel(k: torch.Tensor) -> tuple[float, float]:
    """Sigmas along x and y recovered from the ratio of the centre tap to its neighbour."""
    c = k.shape[0] // 2
    kx = k[c, c + 1] / k[c, c]
    ky = k[c + 1, c] / k[c, c]
    return math.sqrt(-1 / (2 * math.log(kx))), math.sqrt(-1 / (2 * math.log(ky)))


@pytest.fixture
def img():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(2, 3, 12, 16, generator=g)
    # smooth-ish content so JPEG and blur behave as on photos
    return F.interpolate(base, size=(67, 93), mode="bilinear", align_corners=False).clamp(0, 1)


@pytest.mark.parametrize("name", sorted(PAPER_LEVELS))
def test_presets_are_the_papers_levels(name):
    sigma, noise, q = PAPER_LEVELS[name]
    p = preset(name)
    assert (p.blur_sigma, p.noise_level, p.jpeg_quality, p.scale) == (sigma, noise, q, 4)
    assert p.isotropic and p.resize == "bicubic"
    assert PRESETS[name] is p


@pytest.mark.parametrize("name", sorted(PAPER_LEVELS))
def test_preset_produces_exactly_its_parameters(name, img):
    sigma, noise, q = PAPER_LEVELS[name]
    y, used = degrade(img, name, generator=7)
    # output size: exactly (H // 4, W // 4) for a size not divisible by 4
    assert y.shape == (2, 3, 67 // 4, 93 // 4)
    assert len(used) == 2
    for p in used:
        assert (p.blur_sigma, p.noise_level, p.jpeg_quality, p.scale) == (sigma, noise, q, 4)
        assert p.kernel_size == 2 * math.ceil(3 * sigma) + 1
        # the kernel is a Gaussian of exactly this sigma (from tap ratios), sums to 1
        k = p.kernel(dtype=torch.float64)
        sx, sy = _sigma_from_kernel(k)
        assert sx == pytest.approx(sigma, rel=1e-9) and sy == pytest.approx(sigma, rel=1e-9)
        assert k.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert used[0].noise_seed != used[1].noise_seed

    # rebuild the pipeline by hand, stage by stage, with the used params
    for i, p in enumerate(used):
        x = img[i:i + 1]
        pre = F.conv2d(F.pad(x.reshape(3, 1, 67, 93), [p.kernel_size // 2] * 4, mode="reflect"),
                       p.kernel(dtype=torch.float32)[None, None]).reshape(1, 3, 67, 93)
        pre = F.interpolate(pre[..., :64, :92], size=(16, 23), mode="bicubic", antialias=True, align_corners=False)
        n = gaussian_noise(tuple(pre.shape), noise, p.noise_seed)
        assert n.std().item() == pytest.approx(noise / 255, rel=0.1)  # ~1100 samples
        pre = (pre + n).clamp(0, 1)
        u8 = (pre * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(u8).save(buf, format="JPEG", quality=q, subsampling=2)
        ref = torch.from_numpy(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).copy())
        got = (y[i] * 255).round().to(torch.uint8).permute(1, 2, 0)
        # float rounding of blur/resize may move a rare pixel by one 8-bit step before the codec
        assert (got.int() - ref.int()).abs().float().mean().item() < 0.05


@pytest.mark.parametrize("q", [30, 50, 70])
def test_jpeg_uses_the_requested_quality(q, img):
    data = encode_jpeg(img[:1], q)[0]
    with Image.open(io.BytesIO(data)) as im:
        luma = list(im.quantization[0])
    assert luma == _ijg_luma_table(q)  # Pillow reports the tables in natural (row-major) order


def test_noise_level_is_on_the_255_scale():
    x = torch.full((1, 3, 256, 256), 0.5)
    p = DegradationParams(blur_sigma=1.0, noise_level=25.0, jpeg_quality=None, scale=1, noise_seed=3)
    y, _ = degrade(x, p, clamp=False)
    assert (y - 0.5).std().item() == pytest.approx(25 / 255, rel=0.01)
    assert (y - 0.5).mean().abs().item() < 1e-3
    # the noise is exactly gaussian_noise(seed): blur of a constant image is that constant
    torch.testing.assert_close(y - 0.5, gaussian_noise((1, 3, 256, 256), 25.0, 3), atol=1e-6, rtol=0)


def test_same_seed_same_output_and_other_seed_differs(img):
    a, pa = degrade(img, "medium", generator=123)
    b, pb = degrade(img, "medium", generator=123)
    c, _ = degrade(img, "medium", generator=124)
    assert torch.equal(a, b) and pa == pb
    assert not torch.equal(a, c)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    s1, q1 = degrade(img, generator=g1)
    s2, q2 = degrade(img, generator=g2)
    assert torch.equal(s1, s2) and q1 == q2


@pytest.mark.parametrize("jpeg", ["real", "differentiable"])
def test_a_batch_equals_its_items_one_by_one(img, jpeg):
    batch = torch.cat([img, img.flip(-1)], 0)
    ranges = DegradationRanges(jpeg_prob=0.7)
    y, used = degrade(batch, generator=1, jpeg=jpeg, ranges=ranges)  # sampled params, each item its own
    assert len({(p.blur_sigma, p.noise_level, p.jpeg_quality) for p in used}) == 4
    assert None in [p.jpeg_quality for p in used] and len({p.jpeg_quality for p in used}) > 2
    for i, p in enumerate(used):
        yi, pi = degrade(batch[i:i + 1], p, jpeg=jpeg)
        assert pi == [p]
        if jpeg == "real":
            assert torch.equal(yi[0], y[i])
        else:  # kornia's codec runs on the whole batch at once: equal up to float rounding
            torch.testing.assert_close(yi[0], y[i], atol=1e-6, rtol=0)


def test_mixed_params_per_item(img):
    plist = [preset("mild", noise_seed=1), preset("severe", noise_seed=2)]
    y, used = degrade(img, plist)
    assert [u.jpeg_quality for u in used] == [70, 30]
    assert torch.equal(degrade(img[1:], plist[1])[0][0], y[1])


def test_sampled_params_stay_in_the_documented_ranges():
    ps = sample_params(400, generator=0)
    r = TRAINING_RANGES
    sig = [p.blur_sigma for p in ps]
    noi = [p.noise_level for p in ps]
    qs = [p.jpeg_quality for p in ps]
    assert r.blur_sigma == (0.1, 10.0) and r.noise_level == (0.0, 40.0) and r.jpeg_quality == (20, 95)
    assert min(sig) >= 0.1 and max(sig) <= 10.0 and max(sig) - min(sig) > 9
    assert min(noi) >= 0 and max(noi) <= 40 and max(noi) - min(noi) > 38
    assert min(qs) >= 20 and max(qs) <= 95 and all(isinstance(q, int) for q in qs)
    assert all(p.scale == 4 and p.isotropic and p.noise_seed is not None for p in ps)
    # the three evaluation levels lie inside the training ranges
    for s, n, q in PAPER_LEVELS.values():
        assert r.blur_sigma[0] <= s <= r.blur_sigma[1] and r.noise_level[0] <= n <= r.noise_level[1]
        assert r.jpeg_quality[0] <= q <= r.jpeg_quality[1]
    assert sample_params(5, generator=3) == sample_params(5, generator=3)


def test_anisotropic_sampling_and_kernel_covariance():
    ps = sample_params(50, generator=1, ranges=DegradationRanges(anisotropic_prob=1.0, jpeg_prob=0.5))
    assert all(not p.isotropic for p in ps)
    assert any(p.jpeg_quality is None for p in ps) and any(p.jpeg_quality is not None for p in ps)
    sx, sy, theta = 3.0, 1.5, 0.6
    k = gaussian_kernel(sx, sy, theta, size=61, dtype=torch.float64)
    ax = torch.arange(61, dtype=torch.float64) - 30
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    cov = torch.tensor([[(k * xx * xx).sum(), (k * xx * yy).sum()], [(k * xx * yy).sum(), (k * yy * yy).sum()]])
    rot = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64)
    want = rot @ torch.diag(torch.tensor([sx * sx, sy * sy], dtype=torch.float64)) @ rot.T
    torch.testing.assert_close(cov, want, atol=1e-6, rtol=1e-6)


def test_rotated_kernel_goes_through_the_full_2d_path(img):
    p = DegradationParams(blur_sigma=3.0, blur_sigma_y=1.0, blur_theta=0.7, noise_level=0, jpeg_quality=None, scale=1)
    y, used = degrade(img, p)
    torch.testing.assert_close(y, blur(img, used[0].kernel()).clamp(0, 1), atol=1e-6, rtol=0)


def test_separable_blur_equals_2d_blur(img):
    k2 = gaussian_kernel(2.5, 1.2, 0.0, 17)
    sep = blur_separable(img, gaussian_kernel_1d(2.5, 17), gaussian_kernel_1d(1.2, 17))
    torch.testing.assert_close(sep, blur(img, k2), atol=2e-6, rtol=0)
    # a kernel larger than the image still works (replicated borders)
    small = img[..., :8, :8]
    assert blur(small, gaussian_kernel(8.0)).shape == small.shape


def test_blur_is_a_true_convolution():
    # an impulse reproduces the (asymmetric) kernel itself, not its mirror image
    k = torch.zeros(5, 5)
    k[1, 3] = 1.0
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0
    out = blur(x, k)
    assert out[0, 0, 3, 5] == 1.0


def test_resize_modes(img):
    x = img[..., :64, :92]
    torch.testing.assert_close(downsample(x, 4, "area"), F.avg_pool2d(x, 4), atol=1e-6, rtol=0)
    const = torch.full((1, 3, 40, 44), 0.3)
    torch.testing.assert_close(downsample(const, 4, "bicubic"), torch.full((1, 3, 10, 11), 0.3), atol=1e-6, rtol=0)
    assert downsample(img, 3).shape[-2:] == (67 // 3, 93 // 3)
    assert resize_to(img, (20, 30)).shape[-2:] == (20, 30)
    assert downsample(img, 1) is img


def test_differentiable_jpeg_has_gradients_and_tracks_real_jpeg(img):
    x = img.clone().requires_grad_(True)
    y, _ = degrade(x, "mild", generator=0, jpeg="differentiable")
    y.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    real, _ = degrade(img, "mild", generator=0, jpeg="real")
    assert (y.detach() - real).abs().mean().item() < 0.02
    assert jpeg_real(img, 50).requires_grad is False
    assert jpeg_differentiable(img, [50, 60]).shape == img.shape


def test_params_round_trip_and_validation():
    p = preset("severe", noise_seed=4).resolved()
    assert DegradationParams.from_dict(p.to_dict()) == p
    assert default_kernel_size(8.0) == 49
    with pytest.raises(ConfigError, match="expected one of"):
        preset("extreme")
    with pytest.raises(ConfigError, match="jpeg_quality"):
        DegradationParams(blur_sigma=1, noise_level=0, jpeg_quality=101)
    with pytest.raises(ConfigError, match="blur_sigma"):
        DegradationParams(blur_sigma=0, noise_level=0, jpeg_quality=50)
    with pytest.raises(ConfigError, match="unknown keys"):
        DegradationParams.from_dict({**p.to_dict(), "gamma": 1})


def test_bad_inputs_get_specific_errors(img):
    with pytest.raises(ShapeError, match=r"expected 2 DegradationParams"):
        degrade(img, [preset("mild")])
    with pytest.raises(ShapeError, match=r"\(B,C,H,W\)"):
        degrade(img[0], "mild")
    with pytest.raises(InputValueError, match=r"\[0,1\]"):
        degrade(img * 255, "mild")
    with pytest.raises(ConfigError, match="jpeg"):
        degrade(img, "mild", jpeg="fast")
    with pytest.raises(ConfigError, match="share the scale"):
        degrade(img, [preset("mild"), preset("mild", scale=2)])
    with pytest.raises(ShapeError, match="smaller than the scale"):
        degrade(img[..., :3, :3], "mild")
