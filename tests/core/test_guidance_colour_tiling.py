"""Colour fixes and the tiling math of Algorithm 3 (pure functions)."""

from __future__ import annotations

import pytest
import torch

from indigo_core.errors import ConfigError, ShapeError
from indigo_core.guidance import (LinearTestAutoencoder, adain_colour_fix, colour_fix, gaussian_weights,
                                  tile_grid, tiled_apply, tiled_decode, tiled_encode, wavelet_colour_fix)
from indigo_core.guidance.colour import wavelet_low_pass


# ---------------------------------------------------------------- colour
def test_adain_matches_reference_statistics():
    g = torch.Generator().manual_seed(0)
    result = torch.rand(2, 3, 20, 24, generator=g) * 0.5
    reference = torch.rand(2, 3, 10, 12, generator=g) * 0.3 + 0.6
    out = adain_colour_fix(result, reference)
    ref_up = torch.nn.functional.interpolate(reference, size=(20, 24), mode="bicubic").clamp(0, 1)
    torch.testing.assert_close(out.mean((-2, -1)), ref_up.mean((-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std((-2, -1), unbiased=False), ref_up.std((-2, -1), unbiased=False),
                               atol=1e-4, rtol=1e-3)
    # the structure (per-channel correlation with the input) is kept
    c = torch.corrcoef(torch.stack([out[0, 0].flatten(), result[0, 0].flatten()]))[0, 1]
    assert c > 0.999


def test_wavelet_keeps_result_high_frequency():
    h, w = 32, 40
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    texture = 0.1 * ((yy + xx) % 2 * 2 - 1).float()  # Nyquist checkerboard: pure high frequency
    a = torch.tensor([0.7, 0.3, 0.5]).view(1, 3, 1, 1)  # reference colour
    b = torch.tensor([0.2, 0.6, 0.4]).view(1, 3, 1, 1)  # the result's (shifted) colour
    result = (b + texture).expand(1, 3, h, w)
    reference = a.expand(1, 3, h // 4, w // 4)
    out = wavelet_colour_fix(result, reference)
    torch.testing.assert_close(out, (a + texture).expand(1, 3, h, w), atol=1e-5, rtol=0)
    # high frequencies of out are the result's
    torch.testing.assert_close(out - wavelet_low_pass(out), result - wavelet_low_pass(result), atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (7, 2), (65, 33)])
def test_colour_fixes_any_size(size):
    x = torch.rand(1, 3, *size)
    r = torch.rand(1, 3, max(size[0] // 2, 1), max(size[1] // 2, 1))
    for kind in ("wavelet", "adain"):
        out = colour_fix(x, r, kind)
        assert out.shape == x.shape and torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert colour_fix(x, r, "none") is x
    with pytest.raises(ShapeError, match="expected"):
        adain_colour_fix(x, torch.rand(3, 3, 4, 4))
    with pytest.raises(ConfigError, match="expected"):
        colour_fix(x, r, "histogram")


# ---------------------------------------------------------------- tiling
@pytest.mark.parametrize("hw,tile,overlap", [((40, 56), 16, 4), ((17, 9), 8, 3), ((6, 5), 16, 4),
                                             ((33, 64), (16, 32), (8, 0))])
def test_grid_covers_and_stays_inside(hw, tile, overlap):
    h, w = hw
    regions = tile_grid(h, w, tile, overlap)
    cover = torch.zeros(h, w, dtype=torch.int64)
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    for r in regions:
        assert r.top >= 0 and r.left >= 0 and r.top + r.height <= h and r.left + r.width <= w
        assert r.height == min(th, h) and r.width == min(tw, w)
        rs, cs = r.slices()
        cover[rs, cs] += 1
    assert cover.min() >= 1
    if h <= th and w <= tw:  # a latent smaller than a tile: one tile, the whole latent
        assert len(regions) == 1


def test_grid_validation():
    with pytest.raises(ConfigError, match="overlap"):
        tile_grid(32, 32, 8, 8)
    with pytest.raises(ConfigError, match="tile"):
        tile_grid(32, 32, 0, 0)


def test_gaussian_weights_cached_and_peaked():
    w1 = gaussian_weights(16, 24)
    assert w1 is gaussian_weights(16, 24)  # cached per size/device/dtype
    assert w1.shape == (16, 24) and float(w1.max()) == pytest.approx(1.0)
    assert w1[8, 12] > w1[0, 0] > 0
    assert gaussian_weights(16, 24, dtype=torch.float64).dtype == torch.float64


def test_tiled_apply_identity_and_pointwise():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 40, 52, generator=g)
    calls = []

    def ident(t, region):
        calls.append((tuple(t.shape[-2:]), region))
        return t.clone()

    out = tiled_apply(ident, z, 16, 4)
    torch.testing.assert_close(out, z, atol=1e-6, rtol=1e-6)
    assert all(s[0] <= 16 and s[1] <= 16 for s, _ in calls)  # never more than a tile's worth
    assert len(calls) == len(tile_grid(40, 52, 16, 4))
    f = lambda t: torch.tanh(2 * t) + t ** 2  # noqa: E731
    torch.testing.assert_close(tiled_apply(lambda t, r: f(t), z, 16, 4), f(z), atol=1e-5, rtol=1e-5)
    # weights sum-normalised: a constant stays that constant
    torch.testing.assert_close(tiled_apply(lambda t, r: torch.full_like(t, 3.0), z, (16, 12), (5, 3)),
                               torch.full_like(z, 3.0), atol=1e-6, rtol=0)
    # smaller than a tile: one call on the whole tensor
    small = torch.randn(1, 4, 6, 7, generator=g)
    n = []
    torch.testing.assert_close(tiled_apply(lambda t, r: (n.append(1), t)[1], small, 16, 4), small)
    assert len(n) == 1


def _local_net(out_scale: int):
    """A fixed random function of reach 2 grid pixels (3x3 conv, tanh, 3x3 conv, zero padding at
    its input's border), then a nearest upsampling by out_scale: a stand-in for a decoder."""
    g = torch.Generator().manual_seed(5)
    w1, w2 = torch.randn(6, 4, 3, 3, generator=g) * 0.4, torch.randn(3, 6, 3, 3, generator=g) * 0.4
    F = torch.nn.functional

    def f(t):
        y = F.conv2d(torch.tanh(F.conv2d(t, w1, padding=1)), w2, padding=1)
        return F.interpolate(y, scale_factor=out_scale, mode="nearest") if out_scale > 1 else y
    return f


@pytest.mark.parametrize("out_scale,size,tile,overlap", [(1, (64, 64), 24, 8), (4, (37, 50), 16, 9), (1, (20, 90), (20, 32), (0, 12))])
def test_feathered_tiles_reproduce_a_local_function_exactly(out_scale, size, tile, overlap):
    """A function whose reach is under a quarter of the overlap: the feathered window gives the
    untiled result (the edge pixels that see padding get no weight); the Gaussian one leaves seams."""
    g = torch.Generator().manual_seed(2)
    z = torch.randn(1, 4, *size, generator=g)
    f = _local_net(out_scale)
    full = f(z)
    feathered = tiled_apply(lambda t, r: f(t), z, tile, overlap, out_scale=out_scale, window="feather")
    assert float((feathered - full).abs().max()) < 1e-5
    if out_scale == 1 and size == (64, 64):
        seams = tiled_apply(lambda t, r: f(t), z, tile, overlap, sigma_fraction=0.25)
        assert float((seams - full).abs().max()) > 0.02  # what the wide Gaussian window used to leave
    # identity and constants are kept by either window
    for window in ("gaussian", "feather"):
        torch.testing.assert_close(tiled_apply(lambda t, r: t, z, tile, overlap, window=window), z, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(tiled_apply(lambda t, r: torch.full_like(t, 3.0), z, tile, overlap, window=window),
                                   torch.full_like(z, 3.0), atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="window"):
        tiled_apply(lambda t, r: t, z, tile, overlap, window="hann")


@pytest.mark.parametrize("window", ["gaussian", "feather"])
def test_tile_weights_first_built_under_inference_mode_still_serve_autograd(window):
    """The windows are cached: one first built inside inference mode (a ComfyUI run) must not make a
    later differentiable run (grad_wrt="zt" through the tiled denoiser) fail."""
    from indigo_core.guidance import tiling

    tiling._gaussian_cached.cache_clear()
    tiling._feather_cached.cache_clear()
    z = torch.randn(1, 2, 20, 20)
    with torch.inference_mode():
        tiled_apply(lambda t, r: t * 2, z, 8, 2, window=window)
    x = z.clone().requires_grad_(True)
    tiled_apply(lambda t, r: t * 2, x, 8, 2, window=window).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.0))


def test_tiled_vae_matches_full():
    ae = LinearTestAutoencoder(4, 8)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 8 * 20, 8 * 27, generator=g)
    z_full = ae.encode(x)
    z_tiled = tiled_encode(ae, x, tile=8, overlap=3)
    torch.testing.assert_close(z_tiled, z_full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tiled_decode(ae, z_full, tile=8, overlap=3), ae.decode(z_full), atol=1e-5, rtol=1e-5)
    with pytest.raises(ShapeError, match="multiples"):
        tiled_encode(ae, x[..., :-3], tile=8, overlap=3)
