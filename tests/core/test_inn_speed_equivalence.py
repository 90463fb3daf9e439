"""The INN's leaner Swin layers compute what the previous code computed (fp32).

SwinLayer's fused path now gathers the shifted windows with one token permutation (instead of two
rolls and a partition copy), splits q, k, v along the qkv projection's own axis, and MRSTB makes
its channels-last copy once. Each is compared here with a private copy of the code it replaced:
timm's `_attn` (rolls, partition, its WindowAttention's fused branch) and the former
MRSTB.forward. Forward, inverse, and gradients with respect to the input and every parameter
agree to 1e-6 relative (measured: bitwise equal), at sizes with and without padding, batch 1 and 2,
with and without a degradation embedding, for both shipped INNs too.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from einops import rearrange
from timm.models.swin_transformer import SwinTransformerBlock

from indigo_core import INNConfig, WaveletINN
from indigo_core.inn import mrstb

MODELS = Path(__file__).resolve().parents[2] / "models"
REL = 1e-6


class _OldSwinLayer(mrstb.SwinLayer):
    """The former layer: the cached mask, timm's roll / partition / fused WindowAttention."""

    def _attn(self, x):
        return SwinTransformerBlock._attn(self, x)


class _OldMRSTB(mrstb.MRSTB):
    """The former MRSTB: channels-last as a view (the layers made their own copies)."""

    @staticmethod
    def _channels_last(x):
        return rearrange(x, "b c h w -> b h w c")


def _old_copy(inn):
    old = copy.deepcopy(inn)
    swapped = 0
    for m in old.modules():
        if type(m) is mrstb.SwinLayer:
            m.__class__ = _OldSwinLayer
            swapped += 1
        elif type(m) is mrstb.MRSTB:
            m.__class__ = _OldMRSTB
    assert swapped
    return old


def _rel(a, b) -> float:
    scale = float(b.abs().max())
    return float((a - b).abs().max()) / (scale if scale > 0 else 1.0)


def _run(inn, x, gamma, y_seed=1):
    """Forward, inverse (of another coarse part), and gradients of a loss over all of them with
    respect to x and every parameter."""
    params = [p for p in inn.parameters()]
    for p in params:
        p.requires_grad_(True)
    xx = x.clone().requires_grad_(True)
    c, d = inn(xx, gamma)
    y = torch.rand(c.shape, generator=torch.Generator().manual_seed(y_seed))
    back = inn.inverse(y, d, gamma)
    loss = c.square().mean() + sum(t.abs().mean() for t in d) + (back - xx).square().mean()
    grads = torch.autograd.grad(loss, [xx] + params, allow_unused=True)  # (no embedding: FCs unused)
    return [c, *d, back], [g if g is not None else torch.zeros(()) for g in grads]


def _compare(new, x, gamma):
    old = _old_copy(new)
    outs_new, grads_new = _run(new, x, gamma)
    outs_old, grads_old = _run(old, x, gamma)
    worst_out = max(_rel(a.detach(), b.detach()) for a, b in zip(outs_new, outs_old))
    worst_grad = max(_rel(a, b) for a, b in zip(grads_new, grads_old))
    assert worst_out <= REL, worst_out
    assert worst_grad <= REL, worst_grad
    assert float(grads_new[0].abs().max()) > 0


@pytest.mark.parametrize("preset,shape,with_gamma", [
    ("pixel-small", (1, 3, 64, 96), True),     # whole windows at both levels
    ("pixel-small", (2, 3, 40, 56), True),     # padded windows, batch 2
    ("latent-small", (1, 4, 24, 40), False),   # padded, no degradation
    ("latent-small", (2, 4, 16, 16), True),
])
def test_lean_swin_layers_match_the_former_code(preset, shape, with_gamma):
    torch.manual_seed(0)
    inn = WaveletINN(INNConfig.preset(preset)).eval()
    x = torch.rand(shape)
    gamma = torch.randn(shape[0], 128) if with_gamma else None
    _compare(inn, x, gamma)


@pytest.mark.parametrize("name,shape", [("indigo-pixel-inn-x4", (1, 3, 128, 128)),
                                        ("indigo-latent-inn", (1, 4, 32, 32))])
def test_shipped_inns_match_the_former_code(name, shape):
    from indigo_core import load_inn

    inn = load_inn(MODELS / f"{name}.safetensors")
    x = torch.rand(shape, generator=torch.Generator().manual_seed(2))
    gamma = torch.randn(1, 128, generator=torch.Generator().manual_seed(3))
    _compare(inn, x, gamma)


def test_shifted_window_gather_is_the_roll_and_partition():
    """The cached token order is timm's cyclic shift followed by its window partition; its inverse
    undoes it; the gradient of the gather is the gather with the inverse order."""
    from timm.models.swin_transformer import window_partition

    for h, w, shift in ((16, 24, (4, 4)), (8, 8, (0, 0)), (24, 16, (4, 4))):
        x = torch.randn(2, h, w, 5)
        perm, inv = mrstb._cached_window_order(h, w, (8, 8), shift, x.device)
        want = window_partition(torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2)), (8, 8))
        got = x.reshape(2, h * w, 5).index_select(1, perm).view(-1, 8, 8, 5)
        assert torch.equal(got, want)
        assert torch.equal(perm[inv], torch.arange(h * w))
        xx = x.reshape(2, h * w, 5).clone().requires_grad_(True)
        g = torch.randn(2, h * w, 5)
        (grad,) = torch.autograd.grad(mrstb._TokenPermute.apply(xx, perm, inv), xx, g)
        (want_grad,) = torch.autograd.grad(xx[:, perm], xx, g)
        assert torch.equal(grad, want_grad)


def test_window_order_cache_across_inference_and_grad_modes():
    """Orders made under inference mode are not reused by autograd (an inference tensor cannot be
    saved for backward), and the reverse; each mode gives what the former code gives in it."""
    torch.manual_seed(0)
    inn = WaveletINN(INNConfig.preset("pixel-small")).eval()
    old = _old_copy(inn)
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        c0, old0 = inn(x)[0], old(x)[0]
    xx = x.clone().requires_grad_(True)
    c1, _ = inn(xx)
    c1.sum().backward()
    old1 = old(x.clone().requires_grad_(True))[0].detach()  # (with autograd, as c1: kernels may differ)
    with torch.inference_mode():
        c2 = inn(x)[0]
    assert torch.equal(c0, old0) and torch.equal(c2, old0) and torch.equal(c1.detach(), old1)
    assert xx.grad is not None and float(xx.grad.abs().max()) > 0


def test_explicit_softmax_path_is_unchanged():
    """fused=False still runs timm's explicit path (the benchmark's reference)."""
    torch.manual_seed(0)
    inn = WaveletINN(INNConfig.preset("pixel-small")).eval()
    x = torch.rand(1, 3, 32, 48)
    outs = []
    for model in (inn, _old_copy(inn)):
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = False
        with torch.no_grad():
            outs.append(model(x)[0])
    assert torch.equal(outs[0], outs[1])


def test_inn_with_autograd_traces_without_graph_breaks():
    """The token gather (an autograd.Function) and the order cache (skipped while compiling) keep
    the INN one graph with gradients recorded too (built-in Haar: pytorch-wavelets' own autograd
    functions break graphs in the former code as well)."""
    inn = WaveletINN(INNConfig.preset("pixel-small"), haar_backend="builtin").eval()

    def objective(x, y):
        c, d = inn(x, None)
        return (y - c).square().mean() + inn.inverse(y, d, None).abs().mean()

    explained = torch._dynamo.explain(objective)(torch.rand(1, 3, 32, 32, requires_grad=True), torch.rand(1, 3, 8, 8))
    assert explained.graph_break_count == 0, [str(b.reason)[:120] for b in explained.break_reasons]
