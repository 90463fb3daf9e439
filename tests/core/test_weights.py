"""Weights files (safetensors + config metadata) and the restricted .pth reader."""

from __future__ import annotations

import json
import os
import pickle
import struct
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from indigo_core import INNConfig, WaveletINN, load_inn, save_inn
from indigo_core.errors import UnsafePickleError, WeightsExistError, WeightsFileError
from indigo_core.io import read_inn_config, safe_load
from indigo_core.io.safe_pickle import load_state_dict_file


@pytest.fixture
def small_inn(seed: int) -> WaveletINN:
    return WaveletINN(INNConfig.preset("pixel-small")).eval()


def _raw_metadata(path: Path) -> dict:
    with path.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(n))["__metadata__"]


@pytest.mark.parametrize("preset", ["pixel-small", "latent-small", "indigo-plus"])
def test_round_trip_is_bit_exact(tmp_path: Path, seed: int, preset: str) -> None:
    inn = WaveletINN(INNConfig.preset(preset)).eval()
    path = save_inn(inn, tmp_path / "inn.safetensors", extra_metadata={"trained_on": "test"})
    loaded = load_inn(path)
    assert loaded.config == inn.config and not loaded.training
    a, b = inn.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(1, inn.config.channels, 32, 32)
    gamma = torch.randn(1, 128)
    with torch.no_grad():
        ca, da = inn(x, gamma)
        cb, db = loaded(x, gamma)
    assert torch.equal(ca, cb) and all(torch.equal(p, q) for p, q in zip(da, db))
    meta = _raw_metadata(path)
    assert meta["format"] == "indigo-inn" and meta["format_version"] == "1"
    assert meta["trained_on"] == "test"
    assert INNConfig.from_json(meta["config"]) == inn.config == read_inn_config(path)
    assert [p.name for p in tmp_path.iterdir()] == ["inn.safetensors"]  # no temp file left


def test_dtype_option(tmp_path: Path, small_inn: WaveletINN) -> None:
    path = save_inn(small_inn, tmp_path / "a.safetensors")
    assert all(p.dtype == torch.float64 for p in load_inn(path, dtype=torch.float64).parameters())
    kept = load_inn(save_inn(small_inn.double(), tmp_path / "b.safetensors"), dtype=None)
    assert all(p.dtype == torch.float64 for p in kept.parameters())


def test_refuses_to_overwrite(tmp_path: Path, small_inn: WaveletINN) -> None:
    path = tmp_path / "inn.safetensors"
    save_inn(small_inn, path)
    before = path.read_bytes()
    other = WaveletINN(INNConfig.preset("pixel-small"))
    with pytest.raises(WeightsExistError, match="inn.safetensors"):
        save_inn(other, path)
    assert path.read_bytes() == before
    save_inn(other, path, overwrite=True)
    assert path.read_bytes() != before
    with pytest.raises(ValueError, match="reserved"):
        save_inn(other, tmp_path / "c.safetensors", extra_metadata={"config": "{}"})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsFileError, match="nope.safetensors: file not found"):
        load_inn(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("keep", [4, 100, -50])
def test_truncated_file(tmp_path: Path, small_inn: WaveletINN, keep: int) -> None:
    path = save_inn(small_inn, tmp_path / "inn.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep > 0 else data[:keep])
    with pytest.raises(WeightsFileError, match="inn.safetensors") as info:
        load_inn(path)
    assert "truncated" in str(info.value) or "not a safetensors" in str(info.value)


def test_not_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "notes.safetensors"
    path.write_text("these are not weights, just a text file of some length\n" * 4)
    with pytest.raises(WeightsFileError, match="notes.safetensors: not a safetensors file"):
        load_inn(path)


def _write_raw(path: Path, tensors: dict, metadata: dict) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def _with_header(path: Path, good: Path, edit) -> Path:
    """A copy of safetensors file `good` whose JSON header went through `edit(dict) -> dict`."""
    raw = good.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = edit(json.loads(raw[8:8 + n]))
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])
    return path


def test_malformed_headers_are_named(tmp_path: Path, small_inn: WaveletINN) -> None:
    good = save_inn(small_inn, tmp_path / "good.safetensors")
    first = next(k for k in json.loads(good.read_bytes()[8:8 + int.from_bytes(good.read_bytes()[:8], "little")])
                 if k != "__metadata__")
    cases = {
        "offsets_text": lambda h: {**h, first: {**h[first], "data_offsets": ["x", "y"]}},
        "offsets_null": lambda h: {**h, first: {**h[first], "data_offsets": [0, None]}},
        "offsets_reversed": lambda h: {**h, first: {**h[first], "data_offsets": [8, 4]}},
        "metadata_list": lambda h: {**h, "__metadata__": [1, 2]},
    }
    for name, edit in cases.items():
        with pytest.raises(WeightsFileError, match=f"{name}.safetensors: not a safetensors file"):
            load_inn(_with_header(tmp_path / f"{name}.safetensors", good, edit))


def test_unknown_format_version_and_format(tmp_path: Path, small_inn: WaveletINN) -> None:
    sd = small_inn.state_dict()
    cfg = small_inn.config.to_json()
    v99 = _write_raw(tmp_path / "v99.safetensors", sd, {"format": "indigo-inn", "format_version": "99", "config": cfg})
    with pytest.raises(WeightsFileError, match="v99.safetensors: unknown format version '99'"):
        load_inn(v99)
    other = _write_raw(tmp_path / "other.safetensors", sd, {"format": "something-else", "format_version": "1"})
    with pytest.raises(WeightsFileError, match="expected format 'indigo-inn'"):
        load_inn(other)
    plain = _write_raw(tmp_path / "plain.safetensors", sd, {})
    with pytest.raises(WeightsFileError, match="plain.safetensors"):
        load_inn(plain)
    bad_cfg = _write_raw(tmp_path / "badcfg.safetensors", sd,
                         {"format": "indigo-inn", "format_version": "1", "config": '{"split": "db4"}'})
    with pytest.raises(WeightsFileError, match="badcfg.safetensors: invalid config.*split"):
        load_inn(bad_cfg)


def test_tensors_that_do_not_match_the_config(tmp_path: Path, small_inn: WaveletINN) -> None:
    meta = {"format": "indigo-inn", "format_version": "1", "config": small_inn.config.to_json()}
    sd = dict(small_inn.state_dict())
    missing_key = "lifts.1.1.update.convout.weight"
    missing = dict(sd)
    del missing[missing_key]
    with pytest.raises(WeightsFileError, match=f"missing.safetensors.*1 missing tensor.*{missing_key}"):
        load_inn(_write_raw(tmp_path / "missing.safetensors", missing, meta))
    extra = dict(sd, **{"lifts.9.0.predict.convin.weight": torch.zeros(3)})
    with pytest.raises(WeightsFileError, match="1 unexpected tensor.*lifts.9.0.predict.convin.weight"):
        load_inn(_write_raw(tmp_path / "extra.safetensors", extra, meta))
    # integers where weights are floating point (loaded silently before)
    key = "lifts.0.0.predict.convin.weight"
    ints = dict(sd, **{key: sd[key].round().to(torch.int64)})
    with pytest.raises(WeightsFileError, match=f"ints.safetensors.*1 mis-typed tensor.*{key}: file int64, expected floating point"):
        load_inn(_write_raw(tmp_path / "ints.safetensors", ints, meta))
    # a latent-small file's tensors under a pixel-small config: 4 vs 3 channels
    latent = WaveletINN(INNConfig.preset("latent-small")).state_dict()
    with pytest.raises(WeightsFileError, match="shaped.safetensors.*mis-shaped.*convin.weight"):
        load_inn(_write_raw(tmp_path / "shaped.safetensors", latent, meta))


# ---------------------------------------------------------------------- restricted unpickler
class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[override]
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"params": OrderedDict(w=torch.zeros(2)), "x": _Evil(marker)}, path)
    with pytest.raises(UnsafePickleError, match=r"evil.pth: refused to load global '(posix|os)\.system'"):
        safe_load(path)
    assert not marker.exists()
    # a plain pickle file (not a torch archive) is refused before unpickling
    raw = tmp_path / "evil2.pth"
    raw.write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(WeightsFileError, match="evil2.pth"):
        safe_load(raw)
    assert not marker.exists()


class _ResizingTensor:
    """Pickles as a tensor followed by BUILD with a (storage, offset, size, stride) state, which
    Tensor.__setstate__ would apply with set_ (resizing an empty storage to any size)."""

    def __reduce__(self):  # type: ignore[override]
        empty = torch.zeros(0).untyped_storage()
        typed = torch.storage.TypedStorage(wrap_storage=empty, dtype=torch.float32, _internal=True)
        return (torch._utils._rebuild_tensor_v2, (typed, 0, (0,), (1,), False, OrderedDict()),
                (typed, 0, (50_000_000,), (1,)))


class _OddState:
    def __reduce__(self):  # type: ignore[override]
        return (OrderedDict, (), ("not", "a dict"))


def test_build_is_limited_to_a_state_dicts_metadata(tmp_path: Path) -> None:
    """BUILD (an object's __setstate__) only sets an OrderedDict's attributes, as state_dict()'s
    _metadata needs; on a tensor it could resize storage or set requires_grad and is refused."""
    state = torch.nn.Linear(2, 3).state_dict()
    path = tmp_path / "sd.pth"
    torch.save(state, path)
    got = safe_load(path)
    assert got._metadata == state._metadata and all(torch.equal(got[k], state[k]) for k in state)
    for name, obj, what in (("resize.pth", _ResizingTensor(), "Tensor"), ("odd.pth", _OddState(), "OrderedDict")):
        torch.save({"w": obj}, tmp_path / name)
        with pytest.raises(UnsafePickleError, match=rf"{name}: refused to set the state of a {what} from a tuple"):
            safe_load(tmp_path / name)


def test_non_tensor_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "module.pth"
    torch.save({"net": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(UnsafePickleError, match="module.pth: refused to load global 'torch.nn"):
        safe_load(path)


def test_safe_load_reads_tensors_and_containers(tmp_path: Path, seed: int) -> None:
    base = torch.randn(4, 6)
    state = OrderedDict(
        a=torch.randn(3, 3),
        half=torch.randn(5).half(),
        bf=torch.randn(2, 2).bfloat16(),
        long=torch.arange(7),
        flag=torch.tensor([True, False]),
        view=base[1:3, ::2],  # non-contiguous view sharing a storage
        base=base,
        scalar=torch.tensor(2.5, dtype=torch.float64),
        empty=torch.zeros(0, 3),
        param=torch.nn.Parameter(torch.ones(2)),
    )
    path = tmp_path / "ok.pth"
    torch.save({"params_ema": state, "iter": 10, "name": "x", "list": [1, 2.0, None], "tuple": (1, "a")}, path)
    obj = safe_load(path)
    assert obj["iter"] == 10 and obj["list"] == [1, 2.0, None] and obj["tuple"] == (1, "a")
    got = obj["params_ema"]
    assert isinstance(got, OrderedDict) and list(got) == list(state)
    for k, v in state.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v.detach()), k
    flat = load_state_dict_file(path, key="params_ema", prefix="")
    assert set(flat) == set(state)
    with pytest.raises(WeightsFileError, match="expected a top-level key 'params'"):
        load_state_dict_file(path, key="params")


def test_legacy_and_corrupt_pth(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(WeightsFileError, match="legacy.pth: not a zip-format"):
        safe_load(legacy)
    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(1000)}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:-300])
    with pytest.raises(WeightsFileError, match="cut.pth"):
        safe_load(cut)
    with pytest.raises(WeightsFileError, match="file not found"):
        safe_load(tmp_path / "absent.pth")
