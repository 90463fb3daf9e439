"""The restore CLI and its sampler, with tiny random models (seeded) written to a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from indigo_core.errors import ConfigError, DatasetError, DomainError, ShapeError
from indigo_core.prior.schedule import DiscreteSchedule
from indigo_core.restore import RestoreSettings, load_models, make_sigmas, partial_sigmas, restore_image, sample
from indigo_core.restore.cli import main, plan, shard

REPO_ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict:
    """Files of a tiny prior (autoencoder + UNet), a LatentINN, a PixelINN and an estimator."""
    from indigo_core.estimator import EstimatorConfig, build_estimator, save_estimator
    from indigo_core.inn.config import INNConfig
    from indigo_core.inn.network import WaveletINN
    from indigo_core.io.weights import save_inn
    from indigo_core.prior import AUTOENCODER_PRESETS, AutoencoderKL, EpsUNet, UNetConfig, save_autoencoder, save_unet

    d = tmp_path_factory.mktemp("tiny_models")
    torch.manual_seed(0)
    ae = AutoencoderKL(AUTOENCODER_PRESETS["tiny"])
    save_autoencoder(ae, d / "vae.safetensors", dtype=None)
    ucfg = UNetConfig(model_channels=32, channel_mult=(1, 1), attention_depth=(0, 1), num_res_blocks=1,
                      num_heads=2, context_dim=16)
    save_unet(EpsUNet(ucfg), torch.randn(1, 1, 16) * 0.1, d / "unet.safetensors", dtype=None)
    small = dict(hidden=8, heads=2, window=4)
    save_inn(WaveletINN(INNConfig.preset("latent-small").replace(**small)), d / "latent.safetensors")
    save_inn(WaveletINN(INNConfig.preset("pixel-small").replace(**small)), d / "pixel.safetensors")
    save_estimator(build_estimator(EstimatorConfig(width=8, n_res=1)), d / "est.safetensors")
    return {"vae": d / "vae.safetensors", "unet": d / "unet.safetensors", "latent": d / "latent.safetensors",
            "pixel": d / "pixel.safetensors", "estimator": d / "est.safetensors"}


def _model_args(m: dict, inn: str = "latent") -> list[str]:
    return ["--prior-vae", str(m["vae"]), "--prior-unet", str(m["unet"]), "--inn", str(m[inn]),
            "--estimator", str(m["estimator"])]


@pytest.fixture()
def lq_folder(tmp_path) -> Path:
    """Three small degraded-looking images (16x16, 16x24 and a 12x20 in a sub-folder)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "lq"
    (folder / "sub").mkdir(parents=True)
    for name, (h, w) in {"a.png": (16, 16), "b.jpg": (16, 24), "sub/c.png": (12, 20)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


QUICK = ["--steps", "2", "--no-progress", "--threads", "1"]


# ----------------------------------------------------------------------------- sampler
def test_normal_schedule_spans_the_model_sigmas_and_ends_at_zero():
    sched = DiscreteSchedule()
    s = make_sigmas(sched, 10, "normal")
    assert s.shape == (11,) and float(s[-1]) == 0.0
    assert torch.all(s[:-1][1:] < s[:-1][:-1])
    assert float(s[0]) == pytest.approx(float(sched.sigmas[-1]), rel=1e-5)   # sigma_max ~ 14.6
    assert float(s[-2]) == pytest.approx(float(sched.sigmas[0]), rel=1e-5)   # sigma_min ~ 0.029
    k = make_sigmas(sched, 10, "karras")
    assert k.shape == (11,) and float(k[-1]) == 0.0


def test_partial_sigmas_are_the_tail_of_the_longer_schedule():
    sched = DiscreteSchedule()
    part = partial_sigmas(sched, 5, 0.5)
    assert torch.equal(part, make_sigmas(sched, 10)[-6:])
    assert torch.equal(partial_sigmas(sched, 5, 1.0), make_sigmas(sched, 5))
    with pytest.raises(ConfigError, match="denoise"):
        partial_sigmas(sched, 5, 0.0)


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral"])
def test_sampler_with_an_oracle_denoiser_lands_on_the_clean_latent(sampler):
    z0 = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    sigmas = make_sigmas(DiscreteSchedule(), 8)
    calls = []
    x = z0 + torch.randn(z0.shape) * sigmas[0]
    out = sample(lambda x, s, i, n: (calls.append((i, n)), z0)[1], x, sigmas, sampler,
                 generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, z0, atol=1e-6)
    assert calls == [(i, 8) for i in range(8)]


def test_euler_step_follows_the_probability_flow_line():
    # One Euler step from sigma to sigma' moves x along (x - z0) / sigma: x' = z0 + (x - z0) sigma'/sigma.
    z0, x = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2) * 3.0
    sig = torch.tensor([3.0, 1.0, 0.0])
    seen = []

    def den(xt, s, i, n):
        seen.append(xt.clone())
        return z0

    sample(den, x, sig, "euler")
    assert torch.allclose(seen[1], torch.ones(1, 1, 2, 2))


# ----------------------------------------------------------------------------- pipeline
def test_bicubic_mode_is_the_upsampled_measurement(tiny_models):
    from indigo_core.guidance import upsample_measurement

    y = torch.rand(1, 3, 10, 14, generator=torch.Generator().manual_seed(0))
    models = load_models("bicubic")
    x = restore_image(y, models, RestoreSettings(mode="bicubic"))
    assert torch.equal(x, upsample_measurement(y, (40, 56)))


def test_autoencoded_mode_is_the_autoencoders_round_trip_of_bicubic(tiny_models):
    from indigo_core.guidance import upsample_measurement

    y = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    models = load_models("autoencoded", prior_vae=str(tiny_models["vae"]))
    assert models.unet is None and models.inn is None
    x = restore_image(y, models, RestoreSettings(mode="autoencoded"))
    ae = models.autoencoder
    with torch.no_grad():
        want = ae.decode(ae.encode(upsample_measurement(y, (32, 48)))).clamp(0, 1)
    assert torch.equal(x, want)
    assert not torch.equal(x, upsample_measurement(y, (32, 48)))


@pytest.mark.parametrize("mode", ["latent", "pixel", "unguided", "latent-inn-zero", "pixel-inn-zero"])
def test_every_mode_gives_the_scaled_size_in_range_and_is_deterministic(tiny_models, mode):
    m = tiny_models
    inn = "pixel" if "pixel" in mode else "latent"
    models = load_models(mode, inn=str(m[inn]), prior_vae=str(m["vae"]), prior_unet=str(m["unet"]),
                         estimator=str(m["estimator"]))
    y = torch.rand(1, 3, 13, 10, generator=torch.Generator().manual_seed(2))   # odd sizes: padded inside
    s = RestoreSettings(mode=mode, steps=2, w_p=0.0)
    a, b = restore_image(y, models, s), restore_image(y, models, s)
    assert a.shape == (1, 3, 52, 40)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)


def test_seed_changes_sampled_results_only(tiny_models):
    m = tiny_models
    models = load_models("latent", inn=str(m["latent"]), prior_vae=str(m["vae"]), prior_unet=str(m["unet"]),
                         estimator=str(m["estimator"]))
    y = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    a = restore_image(y, models, RestoreSettings(steps=2, seed=0))
    b = restore_image(y, models, RestoreSettings(steps=2, seed=1))
    assert not torch.equal(a, b)


def test_guidance_changes_the_result_and_zeta_zero_equals_unguided(tiny_models):
    m = tiny_models
    kw = dict(inn=str(m["latent"]), prior_vae=str(m["vae"]), prior_unet=str(m["unet"]), estimator=str(m["estimator"]))
    y = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    unguided = restore_image(y, load_models("unguided", **kw), RestoreSettings(mode="unguided", steps=3))
    latent = load_models("latent", **kw)
    guided = restore_image(y, latent, RestoreSettings(steps=3, zeta=0.5, regulariser_end=0.0))
    zero = restore_image(y, latent, RestoreSettings(steps=3, zeta=0.0, regulariser_end=0.0))
    assert not torch.allclose(guided, unguided, atol=1e-3)
    assert torch.allclose(zero, unguided, atol=1e-5)


def test_wrong_inn_domain_and_bad_inputs_are_refused(tiny_models):
    m = tiny_models
    with pytest.raises(DomainError, match="latent INN"):
        load_models("latent", inn=str(m["pixel"]), prior_vae=str(m["vae"]), prior_unet=str(m["unet"]))
    models = load_models("bicubic")
    with pytest.raises(ShapeError, match=r"\(1,3,h,w\)"):
        restore_image(torch.rand(1, 1, 8, 8), models, RestoreSettings(mode="bicubic"))
    with pytest.raises(ConfigError, match="mode"):
        RestoreSettings(mode="sharp")
    with pytest.raises(ConfigError, match="denoise"):
        RestoreSettings(denoise=1.5)
    pix = load_models("pixel-inn-zero", inn=str(m["pixel"]), prior_vae=str(m["vae"]), estimator=None)
    with pytest.raises(ConfigError, match="x4"):
        restore_image(torch.rand(1, 3, 8, 8), pix, RestoreSettings(mode="pixel", scale=2))


# ----------------------------------------------------------------------------- CLI
def test_cli_restores_a_folder_keeping_names_and_refuses_to_overwrite(tiny_models, lq_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(lq_folder), "--out", str(out), *_model_args(tiny_models), *QUICK]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["a.png", "b.png", "sub/c.png"]
    assert _png(out / "b.png").shape == (64, 96, 3) and _png(out / "sub" / "c.png").shape == (48, 80, 3)
    before = {p: p.read_bytes() for p in out.rglob("*.png")}
    assert not list(out.rglob("*.part"))

    assert main([str(lq_folder), "--out", str(out), *_model_args(tiny_models), *QUICK]) == 2
    assert "exists" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*.png")} == before

    # --overwrite rewrites them, bit for bit the same (deterministic)
    assert main([str(lq_folder), "--out", str(out), *_model_args(tiny_models), *QUICK, "--overwrite"]) == 0
    assert {p: p.read_bytes() for p in out.rglob("*.png")} == before


def test_cli_single_file_and_input_errors(tiny_models, lq_folder, tmp_path, capsys):
    out = tmp_path / "single"
    assert main([str(lq_folder / "a.png"), "--out", str(out), "--mode", "bicubic", "--no-progress"]) == 0
    assert _png(out / "a.png").shape == (64, 64, 3)
    assert main([str(tmp_path / "missing"), "--out", str(out), "--no-progress"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main([str(lq_folder / "a.png"), "--out", str(tmp_path / "dev"), "--mode", "bicubic", "--device", "tpu0"]) == 2
    assert "--device: expected a torch device" in capsys.readouterr().err and not (tmp_path / "dev").exists()
    (tmp_path / "notes.txt").write_text("x")
    assert main([str(tmp_path / "notes.txt"), "--out", str(out), "--no-progress"]) == 2
    assert "expected an image" in capsys.readouterr().err
    assert main([str(lq_folder), "--out", str(tmp_path / "o2"), "--mode", "latent", "--inn", str(tmp_path / "nope.safetensors"),
                 "--prior-vae", str(tiny_models["vae"]), "--prior-unet", str(tiny_models["unet"]), *QUICK]) == 2
    assert "not found" in capsys.readouterr().err


def test_plan_refuses_two_inputs_with_one_output(tmp_path):
    from PIL import Image

    for name in ("x.png", "x.jpg"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    with pytest.raises(DatasetError, match="both be written"):
        plan(tmp_path, tmp_path / "out")


def test_an_output_never_lands_on_an_input_image_even_with_overwrite(tiny_models, tmp_path, capsys):
    from PIL import Image

    lq = tmp_path / "lq"
    (lq / "sub").mkdir(parents=True)
    Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)).save(lq / "photo.png")
    before = (lq / "photo.png").read_bytes()
    # a single file restored into its own folder would be written onto itself
    for extra in ([], ["--overwrite"]):
        assert main([str(lq / "photo.png"), "--out", str(lq), "--mode", "bicubic", "--no-progress", *extra]) == 2
        err = capsys.readouterr().err
        assert "not input images" in err and "photo.png" in err
    assert (lq / "photo.png").read_bytes() == before
    # a folder restored into its subfolder: lq/photo.png -> lq/sub/photo.png, itself an input
    (lq / "sub" / "photo.png").write_bytes(before)
    with pytest.raises(ConfigError, match="not input images"):
        plan(lq, lq / "sub")
    assert [o.relative_to(tmp_path).as_posix() for _, o in plan(lq, tmp_path / "out")] == \
        ["out/photo.png", "out/sub/photo.png"]


def test_shard_splits_every_file_exactly_once():
    items = list(range(11))
    parts = [shard(items, r, 3) for r in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(sum(parts, [])) == items


@pytest.mark.slow
def test_torchrun_two_ranks_give_the_single_process_results(tiny_models, lq_folder, tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert main([str(lq_folder), "--out", str(single), *_model_args(tiny_models), *QUICK]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "indigo_core.restore", str(lq_folder), "--out", str(sharded), *_model_args(tiny_models), *QUICK]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "restored 3 image(s)" in proc.stderr and "on 2 process(es)" in proc.stderr
    written = sorted(p.relative_to(single).as_posix() for p in single.rglob("*.png"))
    assert written == sorted(p.relative_to(sharded).as_posix() for p in sharded.rglob("*.png")) == \
        ["a.png", "b.png", "sub/c.png"]
    for name in written:
        assert np.array_equal(_png(single / name), _png(sharded / name))


# ----------------------------------------------------------------------------- stage 1
@pytest.fixture(scope="module")
def restorer_file(tmp_path_factory):
    from indigo_core.restorer import RestorerConfig, build_restorer, save_restorer

    torch.manual_seed(5)
    net = build_restorer(RestorerConfig(width=8, n_blocks=1))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return save_restorer(net, tmp_path_factory.mktemp("restorer") / "r.safetensors")


def test_restorer_mode_is_r_of_y_and_the_prior_starts_from_it(tiny_models, restorer_file):
    from indigo_core.guidance.colour import colour_fix
    from indigo_core.restorer import load_restorer

    m = tiny_models
    y = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(6))
    r = load_restorer(restorer_file).restore(y)
    models = load_models("restorer", restorer=str(restorer_file))
    assert models.autoencoder is None and models.unet is None
    assert torch.equal(restore_image(y, models, RestoreSettings(mode="restorer")), r)

    kw = dict(prior_vae=str(m["vae"]), prior_unet=str(m["unet"]), restorer=str(restorer_file))
    ung = load_models("unguided", **kw)
    ae = ung.autoencoder
    with torch.no_grad():
        want = ae.decode(ae.encode(r)).clamp(0, 1)
    auto = restore_image(y, load_models("autoencoded", **kw), RestoreSettings(mode="autoencoded", stage1="restorer"))
    assert torch.equal(auto, want)
    s = dict(mode="unguided", steps=2)
    from_r = restore_image(y, ung, RestoreSettings(stage1="restorer", **s))
    from_bic = restore_image(y, ung, RestoreSettings(stage1="bicubic", **s))
    assert not torch.allclose(from_r, from_bic, atol=1e-3)
    # the colour fix applies to unguided runs too, against the stage-1 image
    fixed = restore_image(y, ung, RestoreSettings(stage1="restorer", colour_fix="wavelet", **s))
    assert torch.allclose(fixed, colour_fix(from_r, r, "wavelet"), atol=1e-6)
    three = restore_image(y, ung, RestoreSettings(stage1="restorer", colour_fix="wavelet", colour_levels=3, **s))
    assert torch.allclose(three, colour_fix(from_r, r, "wavelet", 3), atol=1e-6)
    assert not torch.allclose(three, fixed, atol=1e-3)


def test_stage1_restorer_without_a_file_is_refused(tiny_models):
    m = tiny_models
    models = load_models("unguided", prior_vae=str(m["vae"]), prior_unet=str(m["unet"]), restorer=None)
    with pytest.raises(ConfigError, match="stage-1 restorer"):
        restore_image(torch.rand(1, 3, 8, 8), models, RestoreSettings(mode="unguided", steps=1, stage1="restorer"))
    with pytest.raises(ConfigError, match="stage1"):
        RestoreSettings(stage1="sharpen")
    with pytest.raises(ConfigError, match="colour_levels"):
        RestoreSettings(colour_levels=0)


def test_cli_restorer_none_is_refused_before_any_model_is_loaded(tiny_models, lq_folder, tmp_path, capsys):
    m = tiny_models
    args = [str(lq_folder), "--out", str(tmp_path / "o"), "--restorer", "none", "--no-progress",
            "--prior-vae", str(m["vae"]), "--prior-unet", "missing-unet.safetensors"]
    # the missing UNet would be reported if models were loaded first
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--restorer none" in err and "--stage1 bicubic" in err and "missing-unet" not in err
    assert not (tmp_path / "o").exists()
    assert main(args + ["--mode", "restorer"]) == 2
    assert "--stage1 bicubic" not in capsys.readouterr().err  # no way round it for mode restorer


def _with_card(src: Path, dst: Path, **changes) -> Path:
    """A copy of an INN file whose model card has `changes` (dotted keys reach into sub-dicts)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    card = json.loads(meta.get("model_card") or "{}")
    for key, value in changes.items():
        *path, last = key.split(".")
        node = card
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    meta["model_card"] = json.dumps(card)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def test_the_inn_card_decides_the_estimator_and_contradictions_are_refused(tiny_models, tmp_path):
    m = tiny_models
    kw = dict(prior_vae=str(m["vae"]), prior_unet=str(m["unet"]), restorer=None)
    with_est = _with_card(m["latent"], tmp_path / "with.safetensors", kind="latent-inn", estimator="runs/e.safetensors")
    without = _with_card(m["latent"], tmp_path / "without.safetensors", kind="latent-inn", estimator=None)
    # an INN trained without an estimator gets none by default, and an explicit one is refused
    assert load_models("latent", inn=str(without), **kw).estimator is None
    with pytest.raises(ConfigError, match="trained without a degradation estimator"):
        load_models("latent", inn=str(without), estimator=str(m["estimator"]), **kw)
    # an INN trained with one may not run without it
    with pytest.raises(ConfigError, match=r"trained with a degradation estimator \(e.safetensors\)"):
        load_models("latent", inn=str(with_est), estimator=None, **kw)
    assert load_models("latent", inn=str(with_est), estimator=str(m["estimator"]), **kw).estimator is not None
    # a file without a card is not checked
    assert load_models("latent", inn=str(m["latent"]), estimator=None, **kw).estimator is None


def test_a_latent_inn_for_another_latent_space_is_reported(tiny_models, tmp_path, caplog):
    from indigo_core.prior.weights import read_latent_format

    m = tiny_models
    kw = dict(prior_vae=str(m["vae"]), prior_unet=str(m["unet"]), restorer=None, estimator=None)
    fmt = read_latent_format(m["vae"])
    same = _with_card(m["latent"], tmp_path / "same.safetensors", **{"vae.file": "vae.safetensors",
                                                                    "vae.latent_format": dict(fmt)})
    other = _with_card(m["latent"], tmp_path / "other.safetensors", **{
        "vae.file": "sdxl_vae.safetensors", "vae.latent_format": dict(fmt, scale_factor=0.13025)})
    with caplog.at_level("WARNING", logger="indigo_core.restore"):
        load_models("latent", inn=str(same), **kw)
    assert "latent" not in caplog.text
    with caplog.at_level("WARNING", logger="indigo_core.restore"):
        load_models("latent", inn=str(other), **kw)
    assert "sdxl_vae.safetensors" in caplog.text and "scale factor" in caplog.text


def test_the_summary_names_sampling_settings_only_for_sampling_modes(tiny_models, lq_folder, tmp_path, caplog):
    m = tiny_models
    with caplog.at_level("INFO", logger="indigo_core.restore"):
        assert main([str(lq_folder), "--out", str(tmp_path / "b"), "--mode", "bicubic", "--no-progress"]) == 0
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("restored"))
    assert "mode bicubic on 1 process" in line and "steps" not in line
    caplog.clear()
    with caplog.at_level("INFO", logger="indigo_core.restore"):
        assert main([str(lq_folder), "--out", str(tmp_path / "u"), "--mode", "unguided", "--steps", "1",
                     "--stage1", "bicubic", "--restorer", "none", "--no-progress",
                     "--prior-vae", str(m["vae"]), "--prior-unet", str(m["unet"])]) == 0
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("restored"))
    assert "(1 steps, denoise" in line
