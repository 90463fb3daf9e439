"""Split/merge operators against PyWavelets, hand-computed values and their own inverses."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pywt
import torch

from indigo_core.errors import ShapeError
from indigo_core.inn import wavelets
from indigo_core.inn.wavelets import HaarSplit, LazySplit, UndecimatedHaarSplit, load_pytorch_wavelets

REPO = Path(__file__).resolve().parents[2]
#: pytorch-wavelets is a runtime requirement (requirements.txt; test requirements pin setuptools<81 for
#: its pkg_resources import): its backend is tested, never skipped.
BACKENDS = ["builtin", "pytorch_wavelets"]


def _require_pytorch_wavelets() -> None:
    assert load_pytorch_wavelets() is not None, (
        "pytorch_wavelets is not importable, though requirements.txt lists pytorch-wavelets "
        "(setuptools>=81 has no pkg_resources; requirements-test.txt pins setuptools<81)")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hw", [(8, 6), (16, 16), (10, 4)])
def test_haar_matches_pywavelets(backend: str, hw: tuple[int, int]) -> None:
    if backend == "pytorch_wavelets":
        _require_pytorch_wavelets()
    x = torch.rand(2, 3, *hw, dtype=torch.float64)
    split = HaarSplit(3, backend=backend).double()
    ll, bands = split.dwt2(x)
    ca, (ch, cv, cd) = pywt.dwt2(x.numpy(), "haar", axes=(-2, -1))
    np.testing.assert_allclose(ll.numpy(), ca, atol=1e-6, rtol=0)
    for k, ref in enumerate((ch, cv, cd)):
        np.testing.assert_allclose(bands[:, :, k].numpy(), ref, atol=1e-6, rtol=0)
    # the split itself is the averaging-normalised transform (coarse = 2x2 mean)
    coarse, detail = split.split(x)
    np.testing.assert_allclose(coarse.numpy(), ca / 2, atol=1e-12, rtol=0)
    np.testing.assert_allclose(detail[:, 3:6].numpy(), cv / 2, atol=1e-12, rtol=0)  # band-major
    back = split.merge(coarse, detail)
    assert (back - x).abs().max().item() <= 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_haar_hand_computed_2x2(backend: str) -> None:
    if backend == "pytorch_wavelets":
        _require_pytorch_wavelets()
    # [[a, b], [c, d]] = [[1, 2], [3, 5]]: LL=(a+b+c+d)/2, H=(a+b-c-d)/2, V=(a-b+c-d)/2, D=(a-b-c+d)/2
    x = torch.tensor([[[[1.0, 2.0], [3.0, 5.0]]]])
    split = HaarSplit(1, backend=backend)
    ll, bands = split.dwt2(x)
    assert ll.flatten().tolist() == pytest.approx([5.5])
    assert bands.flatten().tolist() == pytest.approx([-2.5, -1.5, 0.5])
    coarse, detail = split.split(x)
    assert coarse.item() == pytest.approx(2.75)  # the mean of the block
    assert detail.flatten().tolist() == pytest.approx([-1.25, -0.75, 0.25])
    assert torch.allclose(split.merge(coarse, detail), x, atol=1e-6)


def test_haar_backends_agree_in_float32() -> None:
    _require_pytorch_wavelets()
    x = torch.rand(2, 4, 12, 20)
    a = HaarSplit(4, backend="builtin").split(x)
    b = HaarSplit(4, backend="pytorch_wavelets").split(x)
    assert torch.allclose(a[0], b[0], atol=1e-6) and torch.allclose(a[1], b[1], atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 3, 7, 8), (1, 3, 8, 5), (3, 8, 8)])
def test_haar_refuses_sizes_it_cannot_take(shape: tuple[int, ...]) -> None:
    with pytest.raises(ShapeError):
        HaarSplit(3, backend="builtin").split(torch.rand(*shape))


def test_haar_filters_are_cached_buffers_following_dtype() -> None:
    split = HaarSplit(3, backend="builtin")
    assert split.state_dict() == {}  # not saved with the weights
    assert split.weight.dtype == torch.float32
    assert split.double().weight.dtype == torch.float64
    _require_pytorch_wavelets()
    ptw = HaarSplit(3, backend="pytorch_wavelets").double()
    assert ptw.state_dict() == {}
    assert all(b.dtype == torch.float64 for b in ptw.buffers())
    # exact 1/sqrt(2) in float64, not float32 rounding carried over
    assert ptw.dwt.h0_row.abs().max().item() == pytest.approx(2 ** -0.5, abs=1e-16)


def test_fallback_when_import_fails(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def refuse(name: str, *a: object, **k: object) -> object:
        raise ImportError(f"No module named 'pkg_resources' (simulated, importing {name})")

    monkeypatch.setattr(wavelets, "_PTW_STATE", {})
    monkeypatch.setattr(wavelets.importlib, "import_module", refuse)
    with caplog.at_level(logging.DEBUG, logger=wavelets.__name__):
        assert load_pytorch_wavelets() is None
        assert load_pytorch_wavelets() is None
        split = HaarSplit(3)  # "auto"
    assert split.backend == "builtin"
    assert sum("pytorch_wavelets unavailable" in r.getMessage() for r in caplog.records) == 1


def test_pack_works_without_pkg_resources_in_fresh_interpreter() -> None:
    # setuptools >= 81 has no pkg_resources, so `import pytorch_wavelets` fails there.
    code = (
        "import sys; sys.modules['pkg_resources'] = None\n"
        "import torch\n"
        "from indigo_core import INNConfig, WaveletINN\n"
        "inn = WaveletINN(INNConfig.preset('pixel-small')).eval()\n"
        "x = torch.rand(1, 3, 16, 16)\n"
        "with torch.no_grad():\n"
        "    c, d = inn(x)\n"
        "    err = (inn.inverse(c, d) - x).abs().max().item()\n"
        "print(inn.split_op.backend, err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    backend, err = out.stdout.split()
    assert backend == "builtin" and float(err) <= 1e-5


@pytest.mark.parametrize("hw", [(32, 24), (7, 5), (3, 3)])
@pytest.mark.parametrize("level", [0, 1, 2])
def test_undecimated_haar_exact_left_inverse(hw: tuple[int, int], level: int) -> None:
    split = UndecimatedHaarSplit(4).double()
    x = torch.randn(2, 4, *hw, dtype=torch.float64)
    coarse, detail = split.split(x, level)
    assert coarse.shape == x.shape and detail.shape == (2, 12, *hw)
    assert (split.merge(coarse, detail, level) - x).abs().max().item() <= 1e-12
    # tight frame with bound 1 (A^T A = I): energy is preserved, so merge is the pseudo-inverse
    energy = coarse.square().sum() + detail.square().sum()
    assert energy.item() == pytest.approx(x.square().sum().item(), rel=1e-12)


def test_undecimated_haar_values() -> None:
    split = UndecimatedHaarSplit(1).double()
    x = torch.rand(1, 1, 8, 6, dtype=torch.float64)
    coarse, detail = split.split(x, 0)
    # at even positions the level-0 undecimated split equals the non-redundant Haar split
    ca, (ch, cv, cd) = pywt.dwt2(x.numpy()[0, 0], "haar")
    np.testing.assert_allclose(coarse[0, 0, ::2, ::2].numpy(), ca / 2, atol=1e-12)
    np.testing.assert_allclose(detail[0, 0, ::2, ::2].numpy(), ch / 2, atol=1e-12)
    np.testing.assert_allclose(detail[0, 2, ::2, ::2].numpy(), cd / 2, atol=1e-12)
    # periodic boundary and dilation 2 at level 1: mean of (i,j), (i,j+2), (i+2,j), (i+2,j+2) mod size
    c1, _ = split.split(x, 1)
    xn = x[0, 0].numpy()
    i, j = 7, 5
    want = (xn[i, j] + xn[i, (j + 2) % 6] + xn[(i + 2) % 8, j] + xn[(i + 2) % 8, (j + 2) % 6]) / 4
    assert c1[0, 0, i, j].item() == pytest.approx(want, abs=1e-14)


def test_undecimated_merge_of_replaced_coarse_is_least_squares() -> None:
    split = UndecimatedHaarSplit(2).double()
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    _, detail = split.split(x)
    y = torch.randn(1, 2, 8, 8, dtype=torch.float64)  # a coarse part not produced by split
    x_hat = split.merge(y, detail).requires_grad_(True)
    c, d = split.split(x_hat)
    residual = (c - y).square().sum() + (d - detail).square().sum()
    (grad,) = torch.autograd.grad(residual, x_hat)
    assert grad.abs().max().item() <= 1e-12  # stationary point of ||A x - b||^2


def test_lazy_split_layout_and_inverse() -> None:
    split = LazySplit(3)
    x = torch.rand(2, 3, 8, 6)
    coarse, detail = split.split(x)
    assert torch.equal(coarse, x[..., ::2, ::2])
    assert torch.equal(detail[:, 0:3], x[..., 1::2, ::2])  # odd rows, even columns
    assert torch.equal(detail[:, 3:6], x[..., ::2, 1::2])  # even rows, odd columns
    assert torch.equal(detail[:, 6:9], x[..., 1::2, 1::2])
    assert torch.equal(split.merge(coarse, detail), x)
    with pytest.raises(ShapeError):
        split.split(torch.rand(1, 3, 7, 6))
    with pytest.raises(ShapeError):
        split.merge(coarse, detail[:, :6])
