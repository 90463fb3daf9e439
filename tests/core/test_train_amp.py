"""Mixed precision inside the INN trainers: only the predict/update networks run under autocast
(checked with CPU bf16 autocast, the same hooks CUDA uses); the lifting and wavelet steps stay
float32, so forward-then-inverse stays exact to float32 rounding and gradients flow. And the
inert attention key bias is held fixed."""

from __future__ import annotations

import torch

from indigo_core.inn.config import INNConfig
from indigo_core.inn.lifting import LiftNet
from indigo_core.inn.network import WaveletINN
from indigo_core.train.common import autocast_lift_nets, mask_inert_key_bias


def _tiny() -> WaveletINN:
    torch.manual_seed(0)
    return WaveletINN(INNConfig.preset("pixel-small").replace(hidden=8, heads=2, window=4, n_mrstb=1))


def test_lift_nets_run_in_bf16_and_the_transform_stays_exact():
    inn = _tiny()
    seen = []
    for m in inn.modules():
        if isinstance(m, LiftNet):
            m.convin.register_forward_hook(lambda mod, a, out: seen.append(out.dtype))
    handles = autocast_lift_nets(inn, "cpu", torch.bfloat16)
    assert len(handles) == 2 * 2 * 2 * 2  # levels x pairs x (predict, update) x (pre, post)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    gamma = torch.randn(2, 128)
    coarse, details = inn(x, gamma)
    assert seen and all(dt == torch.bfloat16 for dt in seen)  # the PM/UM convolutions ran in bf16
    assert coarse.dtype == torch.float32 and all(d.dtype == torch.float32 for d in details)
    back = inn.inverse(coarse, details, gamma)
    assert back.dtype == torch.float32
    assert (back - x).abs().max() < 1e-5  # exact up to float32 rounding despite bf16 PM/UM
    (coarse.square().mean() + back.mean()).backward()
    grads = [p.grad for p in inn.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() and g.dtype == torch.float32 for g in grads)

    for h in handles:
        h.remove()
    seen.clear()
    inn(x, gamma)
    assert all(dt == torch.float32 for dt in seen)


def test_attention_key_bias_gets_no_update():
    inn = _tiny()
    n = mask_inert_key_bias(inn)
    assert n == 2 * 2 * 2 * 1 * 2  # levels x pairs x (PM, UM) x MRSTBs x Swin layers
    from timm.models.swin_transformer import WindowAttention

    attn = next(m for m in inn.modules() if isinstance(m, WindowAttention))
    before = attn.qkv.bias.detach().clone()
    opt = torch.optim.Adam(inn.parameters(), lr=1e-2)
    x = torch.rand(2, 3, 32, 32)
    for _ in range(3):
        coarse, details = inn(x)
        loss = coarse.square().mean() + sum(d.square().mean() for d in details)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dim = before.shape[0] // 3
    after = attn.qkv.bias.detach()
    assert torch.equal(after[dim:2 * dim], before[dim:2 * dim])  # keys: untouched
    assert not torch.equal(after[:dim], before[:dim])  # queries still learn
