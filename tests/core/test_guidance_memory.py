"""Running out of memory: guidance retries with the VAE in tiles, or stops naming what to change.

The out-of-memory conditions are simulated: an autoencoder whose passes raise the allocator's
error above a given latent size (what a GPU does when a whole-image decode does not fit, and what
the tiled passes then avoid). The test autoencoder works per latent pixel, so its tiled passes
give the whole-image results and the guided outputs can be compared exactly.
"""

from __future__ import annotations

import logging

import pytest
import torch

from indigo_core.errors import IndigoError
from indigo_core.guidance import (GuidanceMemoryError, GuidanceRun, GuidanceSettings, LinearTestAutoencoder,
                                  RefineSettings, Schedule, is_out_of_memory)
from indigo_core.guidance.memory import OutOfMemoryGuard

from _guidance_toy import pixel_small_inn, tiny_latent_inn


class OOMAutoencoder(LinearTestAutoencoder):
    """Raises `error()` for latents wider than `limit` (decode) or images wider than limit * d
    (encode); counts the calls that failed."""

    def __init__(self, limit: int, error=lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate "
                                                                         "4.00 GiB"), **kwargs) -> None:
        super().__init__(4, 8, **kwargs)
        self.limit, self.error, self.failures = limit, error, 0

    def _check(self, side: int) -> None:
        if side > self.limit:
            self.failures += 1
            raise self.error()

    def decode(self, z):
        self._check(max(z.shape[-2:]))
        return super().decode(z)

    def encode(self, x):
        self._check(max(x.shape[-2:]) // self.downscale)
        return super().encode(x)


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def _pixel_run(ae, h=16, free_cache=None, refine=True, regulariser=True):
    inn = pixel_small_inn()
    y = torch.rand(1, 3, h * 2, h * 2, generator=torch.Generator().manual_seed(1))  # x4 of a 8h image
    # max_step None: no measurement encoding at set-up, so the first whole-image pass is the step's
    s = GuidanceSettings(mode="pixel_inn", w_p=0.0, max_step=None,
                         refine=RefineSettings(schedule=Schedule.all_steps(), lr=1e-3) if refine else None,
                         regulariser=Schedule.all_steps() if regulariser else Schedule.off())
    return GuidanceRun(s, measurement=y, latent_shape=(1, 4, h, h), autoencoder=ae, inn=inn,
                       free_cache=free_cache, fallback_tile=(8, 2))


def _steps(run, n=2, h=16):
    z = torch.randn(1, 4, h, h, generator=torch.Generator().manual_seed(2))
    for i in range(n):
        z = run.step(z, i, 4)
    return z


def test_gradient_step_falls_back_to_tiles_with_the_same_result(caplog):
    free = Counter()
    ae = OOMAutoencoder(limit=8)
    with caplog.at_level(logging.WARNING):
        run = _pixel_run(ae, free_cache=free)
        out = _steps(run)
    ref_run = _pixel_run(LinearTestAutoencoder(4, 8))
    ref = _steps(ref_run)
    assert ae.failures == 1  # the first whole-image pass failed; the rest of the run stayed tiled
    assert free.calls == 1 and run._oom.tiled and run._oom.fallbacks == 1
    assert all(m.checkpoint for m in run.inn.modules() if hasattr(m, "checkpoint"))  # INN checkpointed too
    assert "ran out of memory" in caplog.text and "tiles of 8 latent pixels" in caplog.text
    assert float((out - ref).abs().max()) < 1e-5
    # the retried step refined the INN once, not twice (a second Adam step would move parameters
    # by ~lr = 1e-3), and left its parameters frozen
    for p, q in zip(run.inn.parameters(), ref_run.inn.parameters()):
        assert float((p - q).abs().max()) < 1e-4
        assert not p.requires_grad
    assert [r.refined for r in run.records] == [True, True]


def test_out_of_memory_after_the_gradient_never_refines_twice(monkeypatch):
    """The latent update comes before the refinement's optimiser step: running out of memory while
    computing it retries the step with the INN refined once (it used to take two Adam steps)."""
    import indigo_core.guidance.run as run_mod

    real, failed = run_mod.descent_update, []

    def once(*args, **kwargs):
        if not failed:
            failed.append(1)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(*args, **kwargs)

    ref_run = _pixel_run(LinearTestAutoencoder(4, 8), regulariser=False)
    ref = _steps(ref_run)
    monkeypatch.setattr(run_mod, "descent_update", once)
    run = _pixel_run(LinearTestAutoencoder(4, 8), regulariser=False)
    out = _steps(run)
    assert failed and run._oom.fallbacks == 1
    steps = [st["step"] for st in run.optimizer.state.values()]
    assert steps and all(int(v) == 2 for v in steps)  # two steps run, two Adam steps
    assert float((out - ref).abs().max()) < 1e-5
    for p, q in zip(run.inn.parameters(), ref_run.inn.parameters()):  # a second Adam step moves ~lr = 1e-3
        assert float((p - q).abs().max()) < 1e-4


def test_the_output_decode_falls_back_to_tiles():
    ae = OOMAutoencoder(limit=8)
    run = _pixel_run(ae, refine=False, regulariser=False)
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    x = run.decode(z)
    assert ae.failures == 1 and run._oom.tiled and x.shape == (1, 3, 128, 128)
    ref = LinearTestAutoencoder(4, 8).decode(z).clamp(0, 1)
    assert float((x - ref).abs().max()) < 1e-5


def test_measurement_encoding_and_regulariser_fall_back():
    free = Counter()
    inn = tiny_latent_inn()
    y = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    s = GuidanceSettings(mode="latent_inn", regulariser=Schedule.all_steps())
    ae = OOMAutoencoder(limit=8)
    run = GuidanceRun(s, measurement=y, latent_shape=(1, 4, 16, 16), autoencoder=ae, inn=inn, free_cache=free,
                      fallback_tile=(8, 2))
    assert ae.failures == 1 and free.calls == 1  # z_y = E(up(y)) at set-up
    ref = GuidanceRun(s, measurement=y, latent_shape=(1, 4, 16, 16), autoencoder=LinearTestAutoencoder(4, 8),
                      inn=inn)
    assert float((run.z_y - ref.z_y).abs().max()) < 1e-5
    assert float((_steps(run) - _steps(ref)).abs().max()) < 1e-5  # guidance + regulariser, tiled
    assert ae.failures == 1


def test_regulariser_only_run_falls_back():
    s = GuidanceSettings(mode="none", regulariser=Schedule.all_steps())
    ae = OOMAutoencoder(limit=8)
    run = GuidanceRun(s, measurement=None, latent_shape=(1, 4, 16, 16), autoencoder=ae, fallback_tile=(8, 2))
    ref = GuidanceRun(s, measurement=None, latent_shape=(1, 4, 16, 16), autoencoder=LinearTestAutoencoder(4, 8))
    z = 0.3 * torch.randn(1, 4, 16, 16)
    assert float((run.step(z, 0, 4) - ref.step(z, 0, 4)).abs().max()) < 1e-5
    assert ae.failures == 1 and run._oom.tiled


def test_still_out_of_memory_stops_with_the_settings_to_change():
    free = Counter()
    ae = OOMAutoencoder(limit=4)  # even the 8-pixel fallback tiles do not fit
    run = _pixel_run(ae, free_cache=free, refine=False, regulariser=False)
    with pytest.raises(GuidanceMemoryError) as info:
        _steps(run, n=1)
    err = info.value
    # an OOM error to hosts (ComfyUI then unloads its models as for any OOM) and one of ours
    assert isinstance(err, torch.OutOfMemoryError) and isinstance(err, IndigoError)
    text = str(err)
    for hint in ("Tiled INDIGO", "vae_tile_size", "fp16", "INN checkpointed", "latent_inn", "latent 16x16",
                 "tiles of 8 latent pixels", "Tried to allocate"):
        assert hint in text, hint
    # the advice fits the action that failed: nothing about the model's gradient or the refinement
    assert "grad_wrt" not in text and "INN Refine" not in text
    assert err.__cause__ is None and err.__context__ is None  # no traceback holding the failed tensors
    assert free.calls == 2 and ae.failures == 2


@pytest.mark.parametrize("kind,wanted,unwanted", [
    ("inn", "INN Refine", "vae_tile_size"),
    ("denoiser_gradient", "grad_wrt 'z0'", "INN Refine"),
    ("gradient", "latent_inn", "grad_wrt"),
    ("reencode", "regulariser input", "grad_wrt"),
    ("vae", "vae_tile_size", "regulariser"),
])
def test_the_final_advice_names_what_helps_the_action_that_failed(kind, wanted, unwanted):
    def fail():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(GuidanceMemoryError) as info:
        OutOfMemoryGuard().run("doing it", (1, 4, 64, 64), fail, kind=kind)
    text = str(info.value)
    assert "doing it" in text and "latent 64x64" in text and wanted in text and unwanted not in text
    assert "INN checkpointed" in text
    with pytest.raises(GuidanceMemoryError) as info:  # a run without an INN does not claim one
        OutOfMemoryGuard(has_inn=False).run("doing it", (1, 4, 64, 64), fail, kind=kind)
    assert "INN checkpointed" not in str(info.value)


def test_every_guarded_action_of_a_run_names_its_kind():
    """Each action GuidanceRun guards passes the kind its advice is looked up by."""
    import inspect

    from indigo_core.guidance import run as run_module
    from indigo_core.guidance.memory import ADVICE

    source = inspect.getsource(run_module)
    kinds = __import__("re").findall(r'kind="(\w+)"', source)
    assert set(kinds) == set(ADVICE) - {"vae"}  # "vae" is the default of the plain VAE passes



def test_runtime_error_out_of_memory_is_handled_other_errors_propagate():
    cpu_oom = lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "  # noqa: E731
                                   "memory: you tried to allocate 68719476736 bytes.")
    run = _pixel_run(OOMAutoencoder(limit=8, error=cpu_oom), refine=False, regulariser=False)
    _steps(run, n=1)
    assert run._oom.tiled

    free = Counter()
    bug = OOMAutoencoder(limit=8, error=lambda: RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    run = _pixel_run(bug, free_cache=free, refine=False, regulariser=False)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as info:
        _steps(run, n=1)
    assert not isinstance(info.value, GuidanceMemoryError) and free.calls == 0 and not run._oom.tiled


def test_is_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert not is_out_of_memory(RuntimeError("expected scalar type Float"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_a_finished_run_is_freed_without_waiting_for_the_garbage_collector():
    """No reference cycle through the memory guard: dropping a run frees its tensors at once."""
    import gc
    import weakref

    gc.disable()
    try:
        run = _pixel_run(LinearTestAutoencoder(4, 8), refine=True, regulariser=True)
        _steps(run, n=1)
        ref = weakref.ref(run)
        del run
        assert ref() is None
    finally:
        gc.enable()
