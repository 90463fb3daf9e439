"""DegradationEstimator: KDSR student layout, strict loading of a KDSR-style checkpoint, teacher,
small variant, safetensors round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from indigo_core import DegradationEstimator
from indigo_core.errors import ShapeError, WeightsExistError, WeightsFileError
from indigo_core.estimator import DegradationTeacher, EstimatorConfig, load_estimator, save_estimator

# Width reduced from KDSR's 128 to keep the test fast; the layout (and key names) are KDSR's.
W, NRES = 16, 6


def kdsr_state_dict(gen: torch.Generator, width: int = W, n_res: int = NRES, in_ch: int = 3) -> dict:
    """KD_IDE keys: E.0 conv, E.{2..2+n_res-1}.body.{0,2} res blocks, then three convs, mlp.{0,2},
    compress.0 (LeakyReLUs and the pool hold no weights)."""

    def t(*shape: int) -> torch.Tensor:
        fan_in = shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1) if len(shape) > 1 else shape[0]
        return torch.randn(*shape, generator=gen) / fan_in ** 0.5

    sd = {"E.0.weight": t(width, in_ch, 3, 3), "E.0.bias": t(width)}
    for i in range(n_res):
        for j in (0, 2):
            sd[f"E.{2 + i}.body.{j}.weight"], sd[f"E.{2 + i}.body.{j}.bias"] = t(width, width, 3, 3), t(width)
    k = 2 + n_res
    for idx, (cin, cout) in zip((k, k + 2, k + 4), ((width, 2 * width), (2 * width, 2 * width), (2 * width, 4 * width))):
        sd[f"E.{idx}.weight"], sd[f"E.{idx}.bias"] = t(cout, cin, 3, 3), t(cout)
    for idx in (0, 2):
        sd[f"mlp.{idx}.weight"], sd[f"mlp.{idx}.bias"] = t(4 * width, 4 * width), t(4 * width)
    sd["compress.0.weight"], sd["compress.0.bias"] = t(128, 4 * width), t(128)
    return sd


def reference(sd: dict, y: torch.Tensor, n_res: int = NRES) -> tuple[torch.Tensor, torch.Tensor]:
    """KD_IDE forward written out from the layout description."""
    lrelu = lambda v: F.leaky_relu(v, 0.1)  # noqa: E731
    h = lrelu(F.conv2d(y, sd["E.0.weight"], sd["E.0.bias"], padding=1))
    for i in range(n_res):
        r = lrelu(F.conv2d(h, sd[f"E.{2 + i}.body.0.weight"], sd[f"E.{2 + i}.body.0.bias"], padding=1))
        h = h + F.conv2d(r, sd[f"E.{2 + i}.body.2.weight"], sd[f"E.{2 + i}.body.2.bias"], padding=1)
    k = 2 + n_res
    for idx in (k, k + 2, k + 4):
        h = lrelu(F.conv2d(h, sd[f"E.{idx}.weight"], sd[f"E.{idx}.bias"], padding=1))
    fea = h.mean(dim=(2, 3))
    fea = lrelu(F.linear(lrelu(F.linear(fea, sd["mlp.0.weight"], sd["mlp.0.bias"])), sd["mlp.2.weight"], sd["mlp.2.bias"]))
    return lrelu(F.linear(fea, sd["compress.0.weight"], sd["compress.0.bias"])), fea


@pytest.fixture
def student_sd(seed: int) -> dict:
    return kdsr_state_dict(torch.Generator().manual_seed(seed))


def _kdsr_checkpoint(path: Path, student: dict) -> Path:
    params = {f"E_st.{k}": v for k, v in student.items()}
    params["G.head.0.weight"] = torch.zeros(4, 3, 3, 3)  # the SR generator: not ours, ignored by prefix
    torch.save({"params_ema": params, "params": {"E_st.E.0.weight": torch.zeros(1)}}, path)
    return path


def test_default_is_kdsr_size() -> None:
    est = DegradationEstimator()
    n = sum(p.numel() for p in est.parameters())
    assert 4.3e6 < n < 4.5e6  # "about 4.4 M parameters"
    assert est.config.feature_dim == 512 and est.config.emb_dim == 128


def test_loads_kdsr_checkpoint_strictly_and_matches_layout(tmp_path: Path, student_sd: dict) -> None:
    cfg = EstimatorConfig(width=W, n_res=NRES)
    path = _kdsr_checkpoint(tmp_path / "KDSRS-GANV2.pth", student_sd)
    est = DegradationEstimator.from_kdsr_pth(path, config=cfg)
    assert not est.training
    assert set(est.state_dict()) == set(student_sd)
    y = torch.rand(2, 3, 23, 17)
    with torch.no_grad():
        gamma, fea = est(y, return_features=True)
        ref_gamma, ref_fea = reference(student_sd, y)
        assert torch.allclose(est.features(y), fea)
    assert gamma.shape == (2, 128) and fea.shape == (2, 4 * W)
    assert torch.allclose(gamma, ref_gamma, atol=1e-5) and torch.allclose(fea, ref_fea, atol=1e-5)
    with torch.no_grad():
        assert est(torch.rand(1, 3, 1, 1)).shape == (1, 128)  # any size, even 1x1
        assert est(torch.rand(1, 3, 64, 48)).shape == (1, 128)


def test_strict_mismatches_are_named(tmp_path: Path, student_sd: dict) -> None:
    cfg = EstimatorConfig(width=W, n_res=NRES)
    missing = dict(student_sd)
    del missing["mlp.2.bias"]
    path = _kdsr_checkpoint(tmp_path / "missing.pth", missing)
    with pytest.raises(WeightsFileError, match=r"missing.pth: .*1 missing tensor\(s\): mlp\.2\.bias"):
        DegradationEstimator.from_kdsr_pth(path, config=cfg)
    # a KDSR-size estimator does not accept the reduced-width file
    path = _kdsr_checkpoint(tmp_path / "narrow.pth", student_sd)
    with pytest.raises(WeightsFileError, match="narrow.pth.*mis-shaped"):
        DegradationEstimator.from_kdsr_pth(path)
    with pytest.raises(WeightsFileError, match="no tensors with prefix 'E_st.x' under 'params'"):
        DegradationEstimator.from_kdsr_pth(path, key="params", prefix="E_st.x")


def test_input_validation() -> None:
    est = DegradationEstimator(EstimatorConfig.preset("small"))
    with pytest.raises(ShapeError, match=r"\(B,3,h,w\)"):
        est(torch.rand(1, 4, 16, 16))
    with pytest.raises(ShapeError):
        est(torch.rand(3, 16, 16))


def test_teacher_takes_lq_and_unshuffled_hq(seed: int) -> None:
    cfg = EstimatorConfig(role="teacher", width=8, n_res=1)
    teacher = DegradationTeacher(cfg).eval()
    assert teacher.E[0].in_channels == 51
    lq, hq = torch.rand(2, 3, 8, 6), torch.rand(2, 3, 32, 24)
    with torch.no_grad():
        gamma, fea = teacher(lq, hq, return_features=True)
        joint = torch.cat([lq, F.pixel_unshuffle(hq, 4)], dim=1)
        assert torch.allclose(teacher.compress(teacher.mlp(teacher.E(joint).flatten(1))), gamma)
    assert gamma.shape == (2, 128) and fea.shape == (2, 32)
    with pytest.raises(ShapeError, match="x4"):
        teacher(lq, torch.rand(2, 3, 30, 24))


def test_small_variant_and_safetensors_round_trip(tmp_path: Path, seed: int) -> None:
    est = DegradationEstimator(EstimatorConfig.preset("small"))
    assert sum(p.numel() for p in est.parameters()) < 300_000
    path = save_estimator(est, tmp_path / "est.safetensors")
    back = load_estimator(path)
    assert type(back) is DegradationEstimator and back.config == est.config and not back.training
    assert all(torch.equal(a, b) for a, b in zip(est.state_dict().values(), back.state_dict().values()))
    y = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        assert torch.equal(est(y), back(y))
    with pytest.raises(WeightsExistError):
        save_estimator(est, path)
    teacher = DegradationTeacher(EstimatorConfig.preset("small-teacher"))
    assert isinstance(load_estimator(save_estimator(teacher, tmp_path / "t.safetensors")), DegradationTeacher)
    with pytest.raises(WeightsFileError, match="expected format 'indigo-estimator'"):
        from indigo_core import INNConfig, WaveletINN, save_inn

        load_estimator(save_inn(WaveletINN(INNConfig.preset("pixel-small")), tmp_path / "inn.safetensors"))
