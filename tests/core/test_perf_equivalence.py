"""The speed and memory options change nothing but speed and memory (fp32, tiny models).

Each optimisation is compared with the plain computation it replaces: fused window attention vs
timm's explicit softmax, decoder checkpointing vs plain autograd (gradients and whole guided
runs, refinement included), tiled+checkpointed decoding vs tiled decoding, and the INN's
compiled-form wrapper (off, or failing to compile) vs the module itself. Tolerance 1e-3 is the
acceptance bound; the measured differences are float rounding (~1e-6).
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from indigo_core import INNConfig, WaveletINN
from indigo_core.guidance import (CompiledINN, GuidanceRun, GuidanceSettings, LinearTestAutoencoder, RefineSettings,
                                  Schedule, decode_for_grad, latent_inn_guide)
from indigo_core.guidance.memory import tiled_decode_for_grad
from indigo_core.guidance.refine import private_inn_copy

from _guidance_toy import pixel_small_inn, tiny_latent_inn

TOL = 1e-3


class ConvTestAutoencoder(nn.Module):
    """A small non-linear conv autoencoder (x4) with GroupNorm/SiLU like an SD decoder's blocks."""

    latent_channels = 4
    downscale = 4

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.enc = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.SiLU(), nn.Conv2d(16, 16, 4, stride=4),
                                 nn.GroupNorm(4, 16), nn.SiLU(), nn.Conv2d(16, 4, 1))
        self.dec = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.SiLU(),
                                 nn.Upsample(scale_factor=4, mode="nearest"), nn.Conv2d(16, 16, 3, padding=1),
                                 nn.SiLU(), nn.Conv2d(16, 3, 3, padding=1), nn.Sigmoid())
        self.requires_grad_(False)

    def encode(self, x):
        return self.enc(x)

    def decode(self, z):
        return self.dec(z)


def _max_diff(a, b) -> float:
    return float((a - b).detach().abs().max())


def _set_fused(inn: nn.Module, fused: bool) -> None:
    for m in inn.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused


@pytest.mark.parametrize("preset,shape", [("latent-small", (2, 4, 12, 20)), ("pixel-small", (1, 3, 24, 40))])
def test_fused_window_attention_matches_timm_softmax(preset, shape):
    """SwinLayer's fused attention vs timm's explicit path: forward, inverse and input gradients,
    at sizes that need padding and shifted-window masks."""
    torch.manual_seed(0)
    fused = WaveletINN(INNConfig.preset(preset)).eval()
    plain = WaveletINN(INNConfig.preset(preset)).eval()
    plain.load_state_dict(fused.state_dict())
    _set_fused(plain, False)
    flags = [m.fused_attn for m in fused.modules() if hasattr(m, "fused_attn")]
    assert flags and all(flags)  # the INN has window attentions, all on the fused path
    assert not any(m.fused_attn for m in plain.modules() if hasattr(m, "fused_attn"))
    x = torch.rand(shape)
    gamma = torch.randn(shape[0], 128)
    outs = []
    for inn in (fused, plain):
        xx = x.clone().requires_grad_(True)
        c, d = inn(xx, gamma)
        (g,) = torch.autograd.grad(c.square().sum() + sum(t.square().sum() for t in d), xx)
        with torch.no_grad():
            back = inn.inverse(c, d, gamma)
        outs.append((c.detach(), [t.detach() for t in d], g, back))
    (c1, d1, g1, b1), (c2, d2, g2, b2) = outs
    assert _max_diff(c1, c2) < 1e-5 and max(_max_diff(a, b) for a, b in zip(d1, d2)) < 1e-5
    assert _max_diff(g1, g2) < 1e-4 * max(1.0, float(g2.abs().max()))
    assert _max_diff(b1, x) < 1e-4 and _max_diff(b2, x) < 1e-4


def test_checkpointed_decoder_gradient_equals_plain():
    ae = ConvTestAutoencoder()
    z = torch.randn(2, 4, 8, 12)
    target = torch.rand(2, 3, 32, 48)
    grads, outs = [], []
    for ckpt in (False, True):
        zz = z.clone().requires_grad_(True)
        x = decode_for_grad(ae, zz, checkpoint_decoder=ckpt)
        (g,) = torch.autograd.grad((x - target).square().mean(), zz)
        grads.append(g)
        outs.append(x.detach())
    assert _max_diff(outs[0], outs[1]) == 0.0
    assert _max_diff(grads[0], grads[1]) < 1e-6
    assert float(grads[0].abs().max()) > 0


def test_checkpointed_inn_gradients_equal_plain():
    """WaveletINN.set_checkpointing: same outputs, input gradients and parameter gradients."""
    torch.manual_seed(0)
    inn = WaveletINN(INNConfig.preset("pixel-small")).eval()
    x = torch.rand(1, 3, 32, 48)
    gamma = torch.randn(1, 128)
    results = []
    for flag in (False, True):
        inn.set_checkpointing(flag)
        xx = x.clone().requires_grad_(True)
        c, d = inn(xx, gamma)
        loss = c.square().mean() + d[0].abs().mean()
        grads = torch.autograd.grad(loss, [xx] + list(inn.parameters()))
        results.append((c.detach(), grads))
    inn.set_checkpointing(False)
    (c1, g1), (c2, g2) = results
    assert _max_diff(c1, c2) == 0.0
    assert max(_max_diff(a, b) for a, b in zip(g1, g2)) < 1e-6


def test_tiled_checkpointed_decoding_equals_tiled_decoding():
    ae = ConvTestAutoencoder()
    z = torch.randn(1, 4, 20, 28)
    target = torch.rand(1, 3, 80, 112)
    grads = []
    for ckpt in (False, True):
        zz = z.clone().requires_grad_(True)
        x = tiled_decode_for_grad(ae, zz, (8, 2), checkpoint_tiles=ckpt)
        (g,) = torch.autograd.grad((x - target).square().mean(), zz)
        grads.append(g)
    assert _max_diff(grads[0], grads[1]) < 1e-6


def _pixel_runs(**options):
    """Three guided steps of a PixelINN run with refinement and regulariser; returns (outputs, run)."""
    ae = ConvTestAutoencoder()
    inn = pixel_small_inn()
    torch.manual_seed(3)
    y = torch.rand(1, 3, 8, 8)  # pixel-small: x4, image 32x32 = latent 8x8 (x4 autoencoder)
    s = GuidanceSettings(mode="pixel_inn", w_p=0.0, refine=RefineSettings(schedule=Schedule.all_steps(), lr=1e-3),
                         regulariser=Schedule.fraction(0.0, 0.5))
    run = GuidanceRun(s, measurement=y, latent_shape=(1, 4, 8, 8), autoencoder=ae, inn=inn, **options)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    outs = []
    for i in range(3):
        z = run.step(z, i, 4)
        outs.append(z)
    return outs, run


@pytest.mark.parametrize("options", [{"checkpoint_decoder": True}, {"checkpoint_inn": True},
                                     {"checkpoint_decoder": True, "checkpoint_inn": True}])
def test_guided_run_with_checkpointing_matches_plain(options):
    ref, run_ref = _pixel_runs()
    ck, run_ck = _pixel_runs(**options)
    assert max(_max_diff(a, b) for a, b in zip(ref, ck)) < TOL
    assert max(_max_diff(a, b) for a, b in zip(ref, ck)) < 1e-5  # in fact: rounding only
    for p, q in zip(run_ref.inn.parameters(), run_ck.inn.parameters()):
        assert _max_diff(p, q) < 1e-6  # the refinement saw the same gradients
    # ... and it did refine: the private copies moved away from the INN they started from
    start = pixel_small_inn()
    assert max(_max_diff(p, q) for p, q in zip(run_ck.inn.parameters(), start.parameters())) > 1e-4


def test_compile_off_equals_reference_latent_update():
    """compile_inn=False (the default) is the module itself and gives Alg. 2 computed by hand."""
    ae = LinearTestAutoencoder(4, 8)
    inn = tiny_latent_inn(levels=2)
    z_y = torch.randn(1, 4, 8, 8)
    s = GuidanceSettings(mode="latent_inn", zeta=0.7, regulariser=Schedule.off())
    run = GuidanceRun(s, measurement=torch.rand(1, 3, 16, 16), latent_shape=(1, 4, 8, 8), autoencoder=ae, inn=inn,
                      measurement_latent=z_y)
    assert run.g is run.inn
    z0 = torch.randn(1, 4, 8, 8)
    out = run.step(z0, 0, 10)
    ref_inn = private_inn_copy(inn)
    expected = latent_inn_guide(z0, z_y, ref_inn, None, 0.7)
    assert _max_diff(out, expected) < 1e-6


def test_compiled_inn_falls_back_to_eager_with_the_same_results(monkeypatch, caplog):
    def broken_compile(fn, **kwargs):
        def call(*args):
            raise RuntimeError("inductor: no C++ compiler found")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    inn = tiny_latent_inn(levels=1)
    wrapped = CompiledINN(inn)
    x = torch.randn(1, 4, 8, 8)
    with caplog.at_level(logging.WARNING), torch.no_grad():
        c, d = wrapped(x)
        back = wrapped.inverse(c, d)
        c_ref, d_ref = inn(x)
        back_ref = inn.inverse(c_ref, d_ref)
    assert wrapped.eager and "torch.compile of the INN failed" in caplog.text
    assert _max_diff(c, c_ref) == 0.0 and _max_diff(back, back_ref) == 0.0
    assert list(wrapped.parameters()) == list(inn.parameters())


def test_compiled_inn_never_hides_out_of_memory(monkeypatch):
    def oom_compile(fn, **kwargs):
        def call(*args):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return call

    monkeypatch.setattr(torch, "compile", oom_compile)
    wrapped = CompiledINN(tiny_latent_inn())
    with pytest.raises(torch.OutOfMemoryError):
        wrapped(torch.randn(1, 4, 8, 8))
    assert not wrapped.eager


def test_compiled_inn_keeps_compiling_after_a_bad_input_and_traces_as_one_graph():
    """A bad input is the caller's error (the eager INN refuses it too): it must not switch the run
    to eager for good; and the INN traces without graph breaks (the attention-mask cache is skipped
    while compiling)."""
    from indigo_core.errors import ShapeError

    inn = tiny_latent_inn()
    wrapped = CompiledINN(inn)
    with pytest.raises(ShapeError):
        wrapped.inverse(torch.randn(1, 4, 3, 3), [torch.randn(1, 12, 5, 5)])
    assert not wrapped.eager
    latent = WaveletINN(INNConfig.preset("latent-small")).eval()
    with torch.no_grad():
        explained = torch._dynamo.explain(latent.forward)(torch.rand(1, 4, 16, 16), None)
    assert explained.graph_break_count == 0, [str(b.reason)[:120] for b in explained.break_reasons]


def test_private_copy_keeps_the_haar_backend():
    for backend in ("builtin", "pytorch_wavelets"):
        inn = WaveletINN(INNConfig.preset("pixel-small"), haar_backend=backend)
        assert private_inn_copy(inn).split_op.backend == backend


@pytest.mark.slow
def test_compiled_inn_matches_eager_in_a_guided_run():
    """The real torch.compile (inductor; needs a C++ compiler on CPU; mostly compile time)."""
    ae = LinearTestAutoencoder(4, 8)
    inn = tiny_latent_inn(levels=1)
    z_y = torch.randn(1, 4, 8, 8)
    s = GuidanceSettings(mode="latent_inn", regulariser=Schedule.off())
    outs = []
    for compiled in (False, True):
        run = GuidanceRun(s, measurement=torch.rand(1, 3, 16, 16), latent_shape=(1, 4, 8, 8), autoencoder=ae,
                          inn=inn, measurement_latent=z_y, compile_inn=compiled)
        z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        for i in range(2):
            z = run.step(z, i, 4)
        outs.append(z)
        if compiled:
            assert not run.g.eager
    assert _max_diff(outs[0], outs[1]) < TOL
