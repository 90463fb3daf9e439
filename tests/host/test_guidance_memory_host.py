"""Out of memory inside ComfyUI's sampler (simulated): the guidance empties ComfyUI's cache through
the host module, retries with the VAE in tiles and finishes the run; when even that fails, its
error is one that ComfyUI's executor treats as out-of-memory (it then unloads its models), and its
message names the settings to change."""

from __future__ import annotations

import pytest
import torch

import guidance_helpers as gh


@pytest.fixture(scope="module")
def scene(comfy_inprocess):
    return gh.make_scene(comfy_inprocess, "pixel", latent_hw=16, seed=5)


def _sample_with_failing_decoder(host, scene, monkeypatch, limit: int):
    """Guided sampling (PixelINN, z0) whose differentiable decoder raises OOM above `limit` latent
    pixels; returns (output latent or the raised error, cache-emptying calls)."""
    gp = host.module("nodes.guidance_patch")
    G = host.module("indigo_core.guidance")
    freed = []
    monkeypatch.setattr(gp, "soft_empty_cache", lambda: freed.append(1))
    fsm = scene.vae.first_stage_model
    real = fsm.decode

    def decode(z, *args, **kwargs):
        if max(z.shape[-2:]) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real(z, *args, **kwargs)

    monkeypatch.setattr(fsm, "decode", decode)
    settings = G.GuidanceSettings(mode="pixel_inn", w_p=0.0, max_step=None, regulariser=G.Schedule.off())
    spec = gp.GuidanceSpec(settings, inn=scene.inn, measurement=scene.y, vae=scene.vae)
    spec.run_options = {"fallback_tile": (8, 2)}
    model = gp.apply_guidance(scene.model, spec)
    hostmod = host.module("nodes.host")
    try:
        with torch.inference_mode():
            out = hostmod.ksample(model, 3, 2, 1.0, "euler", "normal", scene.positive, scene.negative, scene.latent())
        return out["samples"], freed, spec
    except Exception as exc:  # returned for the assertions
        return exc, freed, spec


def test_guidance_falls_back_to_tiles_and_empties_comfys_cache(comfy_inprocess, scene, monkeypatch):
    out, freed, spec = _sample_with_failing_decoder(comfy_inprocess, scene, monkeypatch, limit=8)
    assert isinstance(out, torch.Tensor) and torch.isfinite(out).all(), out
    assert freed == [1]  # once, before the tiled retry; the rest of the run stayed tiled
    assert spec.last_summary["completed"] and spec.last_summary["guided_steps"] == [0, 1]


def test_guidance_still_out_of_memory_is_an_oom_for_comfy(comfy_inprocess, scene, monkeypatch):
    import comfy.model_management as mm

    err, freed, _ = _sample_with_failing_decoder(comfy_inprocess, scene, monkeypatch, limit=4)
    assert isinstance(err, mm.OOM_EXCEPTION), err  # ComfyUI's executor then unloads all models
    assert isinstance(err, comfy_inprocess.module("indigo_core.errors").IndigoError)
    assert "Tiled INDIGO" in str(err) and "vae_tile_size" in str(err) and "fp16" in str(err)
    assert freed == [1, 1]
