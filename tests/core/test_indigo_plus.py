"""INDIGO+ compatibility: a state dict with the documented key layout loads strictly through the
restricted reader, computes what the documented layout computes, and is invertible."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from indigo_core.errors import UnsafePickleError, WeightsFileError
from indigo_core.inn.indigo_plus import load_indigo_plus_pth, load_indigo_plus_state_dict, to_indigo_plus_key

LIFTS, BLOCKS, WIDTH = 4, 2, 32


def documented_state_dict(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """transform_net.inn.lifts.{k}.{p,u}.net.{convin,blocks.{j}.{conv1,conv2,fc.0,fc.2},convout}."""

    def t(*shape: int, std: float = 0.05) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    sd: dict[str, torch.Tensor] = {}
    for k in range(LIFTS):
        for role, cin, cout in (("p", 3, 9), ("u", 9, 3)):
            pre = f"transform_net.inn.lifts.{k}.{role}.net."
            sd[pre + "convin.weight"] = t(WIDTH, cin, 3, 3)
            for j in range(BLOCKS):
                b = f"{pre}blocks.{j}."
                sd[b + "conv1.weight"], sd[b + "conv1.bias"] = t(WIDTH, WIDTH, 3, 3), t(WIDTH)
                sd[b + "conv2.weight"], sd[b + "conv2.bias"] = t(WIDTH, WIDTH, 3, 3), t(WIDTH)
                sd[b + "fc.0.weight"], sd[b + "fc.0.bias"] = t(64, 128, std=0.1), t(64)
                sd[b + "fc.2.weight"], sd[b + "fc.2.bias"] = t(WIDTH, 64, std=0.1), t(WIDTH)
            sd[pre + "convout.weight"] = t(cout, WIDTH, 3, 3)
    return sd


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, gamma: torch.Tensor, levels: int = 2):
    """The documented INDIGO+ computation, written out from the layout description."""

    def net(prefix: str, h: torch.Tensor) -> torch.Tensor:
        h = F.conv2d(h, sd[prefix + "convin.weight"], padding=1)
        for j in range(BLOCKS):
            b = f"{prefix}blocks.{j}."
            r = F.conv2d(h, sd[b + "conv1.weight"], sd[b + "conv1.bias"], padding=1)
            r = F.conv2d(F.relu(r), sd[b + "conv2.weight"], sd[b + "conv2.bias"], padding=1)
            s = F.linear(F.relu(F.linear(gamma, sd[b + "fc.0.weight"], sd[b + "fc.0.bias"])),
                         sd[b + "fc.2.weight"], sd[b + "fc.2.bias"])
            h = h + r * s[:, :, None, None]
        return F.conv2d(h, sd[prefix + "convout.weight"], padding=1)

    c = x - 0.5
    details = []
    for _ in range(levels):
        c, d = c[..., ::2, ::2], [c[..., 1::2, ::2], c[..., ::2, 1::2], c[..., 1::2, 1::2]]
        for k in range(LIFTS):
            p = net(f"transform_net.inn.lifts.{k}.p.net.", c)
            d = [d[i] + p[:, i:i + 3] for i in range(3)]  # the overlapping-slice quirk
            c = c + net(f"transform_net.inn.lifts.{k}.u.net.", torch.cat(d, dim=1))
        details.append(torch.cat(d, dim=1))
    return c + 0.5, details


@pytest.fixture
def state(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return documented_state_dict(gen)


def test_loads_documented_layout_strictly_and_matches_reference(tmp_path: Path, state: dict) -> None:
    path = tmp_path / "INN.pth"
    torch.save({"params": state}, path)
    inn = load_indigo_plus_pth(path)
    assert not inn.training
    ours = inn.state_dict()
    assert len(ours) == len(state) == LIFTS * 2 * (2 + BLOCKS * 8)
    for key, value in ours.items():
        assert torch.equal(value, state[to_indigo_plus_key(key)]), key
    assert sum(v.numel() for v in state.values()) == 488960  # "about 0.49 M parameters"

    x = torch.rand(2, 3, 32, 24)
    gamma = torch.randn(2, 128)
    with torch.no_grad():
        coarse, details = inn(x, gamma)
        ref_c, ref_d = reference_forward(state, x, gamma)
        back = inn.inverse(coarse, details, gamma)
    assert coarse.shape == (2, 3, 8, 6)
    assert torch.allclose(coarse, ref_c, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(details, ref_d))
    assert (back - x).abs().max().item() <= 1e-5


def test_raw_state_dict_file_and_float64_invertibility(tmp_path: Path, state: dict) -> None:
    path = tmp_path / "raw.pth"
    torch.save(state, path)  # no {"params": ...} wrapper
    inn = load_indigo_plus_pth(path).double()
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    gamma = torch.randn(1, 128, dtype=torch.float64)
    with torch.no_grad():
        c, d = inn(x, gamma)
        assert (inn.inverse(c, d, gamma) - x).abs().max().item() <= 1e-10


def test_strict_key_matching(tmp_path: Path, state: dict) -> None:
    missing = dict(state)
    del missing["transform_net.inn.lifts.3.u.net.convout.weight"]
    with pytest.raises(WeightsFileError, match=r"missing.pth: .*1 missing tensor.*transform_net\.inn\.lifts\.3\.u\.net\.convout\.weight"):
        load_indigo_plus_state_dict(missing, "missing.pth")
    extra = dict(state, **{"transform_net.inn.lifts.0.p.net.convin.bias": torch.zeros(32)})
    with pytest.raises(WeightsFileError, match="unexpected.*convin.bias"):
        load_indigo_plus_state_dict(extra, "extra.pth")
    foreign = dict(state, **{"net_kdsr.E.0.weight": torch.zeros(1)})
    with pytest.raises(WeightsFileError, match="foreign.pth.*net_kdsr.E.0.weight"):
        load_indigo_plus_state_dict(foreign, "foreign.pth")
    shaped = dict(state, **{"transform_net.inn.lifts.0.p.net.convout.weight": torch.zeros(3, 32, 3, 3)})
    with pytest.raises(WeightsFileError, match=r"mis-shaped.*lifts\.0\.p\.net\.convout\.weight: file \(3, 32, 3, 3\), expected \(9, 32, 3, 3\)"):
        load_indigo_plus_state_dict(shaped, "shaped.pth")


def test_pth_goes_through_the_restricted_reader(tmp_path: Path, state: dict) -> None:
    path = tmp_path / "INN.pth"
    torch.save({"params": state, "extra": torch.nn.Identity()}, path)
    with pytest.raises(UnsafePickleError, match="INN.pth"):
        load_indigo_plus_pth(path)
