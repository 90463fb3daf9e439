"""Tiled INDIGO (Algorithm 3) inside ComfyUI: the denoiser only ever sees tiles, the tiles blend
without seams, guidance still runs on the whole latent, and the wrapper stacks with others."""

from __future__ import annotations

import pytest
import torch

import guidance_helpers as gh

TILE, OVERLAP = 16, 4  # latent pixels
LATENT = 32  # 4x the tile area


@pytest.fixture(scope="module")
def scene(comfy_inprocess):
    # The paper's shift-invariant (undecimated) LatentINN: a decimated Haar split would itself leave
    # 4-pixel block edges exactly where these tiles meet, and the seam test would measure those.
    return gh.make_scene(comfy_inprocess, "latent", latent_hw=LATENT, split="undecimated_haar", seed=6)


def tiled(host, s, latent=None, seed=0, steps=8, **widgets):
    w = dict(gh.DEFAULT_WIDGETS)
    w.update(zeta=0.5)
    w.update(widgets)
    return host.run_node(
        "INDIGO_TiledSampler", model=s.model, positive=s.positive, negative=s.negative,
        latent_image=latent if latent is not None else s.latent(), seed=seed, steps=steps, cfg=1.0,
        sampler_name="euler", scheduler="normal", denoise=1.0, vae=s.vae, inn=s.inn, measurement=gh.to_image(s.y),
        start_from_measurement=False, tile_size=TILE, tile_overlap=OVERLAP, vae_tile_size=TILE,
        vae_tile_overlap=OVERLAP, colour_fix="none", **w)


def starts(size: int) -> list[int]:
    """Tile starts along one axis: stride TILE - OVERLAP, the last tile aligned to the end."""
    stride = TILE - OVERLAP
    return [i * stride for i in range((size - TILE + stride - 1) // stride)] + [size - TILE]


def tile_edges(size: int) -> list[int]:
    """Positions p (0 < p < size) where a tile starts or ends: the seams a bad blend would show."""
    edges = set(starts(size)) | {s + TILE for s in starts(size)}
    return sorted(e for e in edges if 0 < e < size)


def test_denoiser_never_sees_more_than_a_tile(comfy_inprocess, scene):
    host, s = comfy_inprocess, scene
    denoiser = s.model.model.diffusion_model
    denoiser.calls.clear()
    steps = 8
    res = tiled(host, s, steps=steps)
    shapes = list(denoiser.calls)
    assert shapes, "the denoiser was never called"
    assert max(h * w for (_, _, h, w) in shapes) <= TILE * TILE, f"calls larger than a tile: {set(shapes)}"
    n_tiles = len(starts(LATENT))  # tiles per axis
    assert len(shapes) == steps * n_tiles ** 2, f"expected {steps} x {n_tiles ** 2} tile calls, got {len(shapes)}"
    # The guidance saw the whole latent: one record per step, and it pulled towards the measurement.
    rec = res.ui["indigo_run"][0]
    assert len(rec["residual"]) == steps
    assert rec["residual"][-1][1][0] < rec["residual"][0][1][0]
    z, image, preview = res[0]["samples"], res[1], res[2]
    assert z.shape == (1, 4, LATENT, LATENT)
    assert image.shape == preview.shape == (1, LATENT * 8, LATENT * 8, 3)
    # Untiled guided sampling of the same problem lands on a comparable residual.
    untiled = gh.guided_ksampler(host, s, steps=steps, zeta=0.5)[0]["samples"]
    assert s.residual(z) < 2 * s.residual(untiled) + 1e-3


def test_no_seams_at_tile_borders(comfy_inprocess, scene):
    """Mean gradient magnitude across tile borders within 10% of that everywhere else."""
    host, s = comfy_inprocess, scene
    z = tiled(host, s, latent=s.latent(batch=4), seed=21)[0]["samples"].float()
    gx = (z[..., :, 1:] - z[..., :, :-1]).abs().mean(dim=(0, 1, 2))  # (W-1,): between columns p-1 and p
    gy = (z[..., 1:, :] - z[..., :-1, :]).abs().mean(dim=(0, 1, 3))
    edges = [p - 1 for p in tile_edges(LATENT)]
    mask = torch.zeros(LATENT - 1, dtype=torch.bool)
    mask[edges] = True
    border = torch.cat([gx[mask], gy[mask]]).mean()
    elsewhere = torch.cat([gx[~mask], gy[~mask]]).mean()
    assert abs(float(border / elsewhere) - 1.0) <= 0.10, \
        f"gradient at tile borders {float(border):.4f} vs elsewhere {float(elsewhere):.4f}"


def test_tiled_wrapper_stacks_with_other_diffusion_model_wrappers(comfy_inprocess, scene):
    """Another pack's DIFFUSION_MODEL wrapper added before ours still runs, on the whole input."""
    import comfy.patcher_extension as pe

    host, s = comfy_inprocess, scene
    seen = []

    def other_pack(executor, x, *args, **kwargs):
        seen.append(tuple(x.shape))
        return executor(x, *args, **kwargs)

    m = s.model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "other_pack", other_pack)
    base = s.model.model.diffusion_model
    base.calls.clear()
    w = dict(gh.DEFAULT_WIDGETS, zeta=0.5)
    host.run_node(
        "INDIGO_TiledSampler", model=m, positive=s.positive, negative=s.negative, latent_image=s.latent(), seed=0,
        steps=2, cfg=1.0, sampler_name="euler", scheduler="normal", denoise=1.0, vae=s.vae, inn=s.inn,
        measurement=gh.to_image(s.y), start_from_measurement=False, tile_size=TILE, tile_overlap=OVERLAP,
        vae_tile_size=TILE, vae_tile_overlap=OVERLAP, colour_fix="none", **w)
    assert seen == [(1, 4, LATENT, LATENT)] * 2
    assert max(h * w for (_, _, h, w) in base.calls) <= TILE * TILE
    assert "indigo_tiles" not in str(s.model.model_options)  # the input MODEL is untouched


def test_controlnet_residuals_are_cut_to_the_tile(comfy_inprocess):
    tp = comfy_inprocess.module("nodes.tiled_patch")
    core = comfy_inprocess.core
    from importlib import import_module

    tiling = import_module(core.__name__ + ".guidance.tiling")
    region = tiling.TileRegion(8, 16, 16, 16)
    control = {"input": [torch.arange(32 * 32.).view(1, 1, 32, 32), torch.arange(8 * 8.).view(1, 1, 8, 8)],
               "middle": [None]}
    cut = tp._slice_control(control, region, 32, 32)
    assert torch.equal(cut["input"][0], control["input"][0][..., 8:24, 16:32])
    assert torch.equal(cut["input"][1], control["input"][1][..., 2:6, 4:8])
    assert cut["middle"] == [None]
    with pytest.raises(core.errors.ConfigError, match="multiples of 8"):
        tp._slice_control(control, tiling.TileRegion(3, 0, 16, 16), 32, 32)


def test_start_image_sets_the_start_latent(comfy_inprocess, scene):
    """With denoise 0 nothing is sampled: the output latent is the start, E(start_image) with the
    tiled VAE, which differs from E(up(y)) (start_from_measurement) for a different image."""
    host, s = comfy_inprocess, scene
    image = torch.rand(1, LATENT * 8, LATENT * 8, 3, generator=torch.Generator().manual_seed(3))
    w = dict(gh.DEFAULT_WIDGETS)
    w.update(zeta=0.5)
    common = dict(model=s.model, positive=s.positive, negative=s.negative, latent_image=s.latent(), seed=0,
                  steps=4, cfg=1.0, sampler_name="euler", scheduler="normal", denoise=0.0, vae=s.vae, inn=s.inn,
                  measurement=gh.to_image(s.y), tile_size=TILE, tile_overlap=OVERLAP, vae_tile_size=TILE,
                  vae_tile_overlap=OVERLAP, colour_fix="none", **w)
    from_image = host.run_node("INDIGO_TiledSampler", start_from_measurement=False, start_image=image, **common)
    from_y = host.run_node("INDIGO_TiledSampler", start_from_measurement=True, **common)
    a, b = from_image.outputs[0]["samples"], from_y.outputs[0]["samples"]
    assert a.shape == b.shape == s.latent()["samples"].shape
    assert not torch.allclose(a, b, atol=1e-3)
    # the output latent is E(start_image), encoded tile by tile with the VAE tile size and overlap
    gp = host.module("nodes.guidance_patch")
    tiled_vae = gp.TiledAutoencoder(gp.ComfyVAEAutoencoder(s.vae, differentiable=False), TILE, OVERLAP)
    with torch.no_grad():
        want = tiled_vae.encode(image.movedim(-1, 1)).float()
    torch.testing.assert_close(a.float(), want, atol=1e-4, rtol=1e-4)
    # decoding the start gives back (roughly) the start image: the latent is E(image), not E(up(y))
    decoded = from_image.outputs[1]
    err_image = float((decoded - image).abs().mean())
    err_y = float((from_y.outputs[1] - image).abs().mean())
    assert err_image < err_y, (err_image, err_y)
