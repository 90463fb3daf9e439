"""What the dev scripts (scripts/, tools/, benchmarks/) write: an existing output is never replaced
without --overwrite (refused before the run's work, with a message naming the option), a file is
never left half-written (it only appears by a rename), and nothing outside a script's own outputs
is touched. The scripts' measurements are replaced by stand-ins here: only their files matter."""

from __future__ import annotations

import builtins
import importlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


class NotReached(AssertionError):
    """Raised by a stand-in for a script's first real work: the run should have stopped before."""


def _not_reached(*_a, **_k):
    raise NotReached("the run started its work instead of refusing its existing output")


@pytest.fixture
def direct_writes(monkeypatch) -> list[Path]:
    """The files opened for writing by name while the test runs (an atomic writer opens only its
    temporary file; the output appears by os.replace)."""
    seen: list[Path] = []
    real = builtins.open

    def spy(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            seen.append(Path(file).resolve())
        return real(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    return seen


def _old(path: Path, text: str = "an earlier run's file\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _refused(info, *paths: Path) -> str:
    message = str(info.value.code)
    assert "--overwrite" in message, message
    for p in paths:
        assert str(p) in message, message
    return message


# --------------------------------------------------------------------------- the shared helper


def test_refuse_existing_names_the_files_and_the_option(script, tmp_path) -> None:
    out = script("output_files")
    a, b = _old(tmp_path / "a.csv"), tmp_path / "b.md"
    with pytest.raises(SystemExit) as info:
        out.refuse_existing([a, b], overwrite=False)
    assert _refused(info, a).endswith("or choose another --out") and str(b) not in str(info.value.code)
    out.refuse_existing([a, b], overwrite=True)
    out.refuse_existing([b], overwrite=False)


def test_partial_file_keeps_the_old_file_when_interrupted(script, tmp_path) -> None:
    out = script("output_files")
    log = _old(tmp_path / "log.csv", "old\n")
    with pytest.raises(KeyboardInterrupt):
        with out.partial_file(log) as fh:
            fh.write("row 1\n")
            raise KeyboardInterrupt
    assert log.read_text() == "old\n" and out.part_path(log).read_text() == "row 1\n"
    with out.partial_file(log) as fh:
        fh.write("row 1\nrow 2\n")
    assert log.read_text() == "row 1\nrow 2\n" and not out.part_path(log).exists()


def test_an_interrupted_copy_leaves_the_old_file(script, tmp_path, monkeypatch) -> None:
    out = script("output_files")
    src, dst = tmp_path / "src.png", _old(tmp_path / "dst.png", "old")
    src.write_bytes(b"new" * 1000)

    def half(fsrc, fdst, *a):
        fdst.write(fsrc.read(10))
        raise KeyboardInterrupt

    monkeypatch.setattr(out.shutil, "copyfileobj", half)
    with pytest.raises(KeyboardInterrupt):
        out.copy_file(src, dst)
    assert dst.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["dst.png", "src.png"]


# --------------------------------------------------------------------------- scripts/


def test_guidance_margin_refuses_an_earlier_table_before_its_work(script, tmp_path, monkeypatch) -> None:
    margin = script("guidance_margin")
    md = _old(tmp_path / "m" / "margin.md")
    monkeypatch.setattr(margin, "load_set", _not_reached)
    with pytest.raises(SystemExit) as info:
        margin.main(["--photo-dir", str(tmp_path), "--threads", "1", "--out", str(tmp_path / "m")])
    _refused(info, md)
    assert md.read_text() == "an earlier run's file\n"


class _FakeScorer:
    """Scorer's interface with fixed numbers; after `fail_after` calls, an interruption."""

    fail_after: int | None = None

    def __init__(self, data, mode, lpips, files) -> None:
        self.base, self.calls = (20.0, 0.5), 0

    def __call__(self, s):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt
        return (0.1 * self.calls, 21.0 + 0.01 * self.calls, 0.4)


def _fake_measurement(monkeypatch, module, fail_after=None) -> None:
    import indigo_core.metrics

    scorer = type("Scorer", (_FakeScorer,), {"fail_after": fail_after})
    monkeypatch.setattr(module, "load_set", lambda *a, **k: [("photo", None, None)])
    monkeypatch.setattr(module, "Scorer", scorer)
    monkeypatch.setattr(indigo_core.metrics, "load_lpips", lambda *a, **k: None)


def test_guidance_margin_overwrite_replaces_the_table_atomically(script, tmp_path, monkeypatch,
                                                                 direct_writes) -> None:
    margin = script("guidance_margin")
    out = tmp_path / "m"
    csv_file, md = _old(out / "margin.csv"), _old(out / "margin.md")
    _fake_measurement(monkeypatch, margin)
    direct_writes.clear()
    assert margin.main(["--photo-dir", str(tmp_path), "--threads", "1", "--fixes", "none", "--denoise", "0.3",
                        "--no-pixel", "--out", str(out), "--overwrite"]) == 0
    assert csv_file.read_text().startswith("colour fix,denoise,") and "| --- |" in md.read_text()
    assert not {csv_file.resolve(), md.resolve()} & set(direct_writes)


def test_tune_guidance_refuses_an_earlier_search_log_before_its_work(script, tmp_path, monkeypatch) -> None:
    tune = script("tune_guidance")
    monkeypatch.setattr(tune, "load_set", _not_reached)
    for name in ("latent.csv", "latent.csv.part"):  # a finished search's log, an interrupted one's
        out = tmp_path / name.replace(".", "_")
        old = _old(out / name)
        with pytest.raises(SystemExit) as info:
            tune.main(["--mode", "latent", "--photo-dir", str(tmp_path), "--out", str(out)])
        _refused(info, old)
        assert old.read_text() == "an earlier run's file\n"


def test_an_interrupted_search_keeps_the_earlier_log_and_its_own_rows(script, tmp_path, monkeypatch) -> None:
    tune = script("tune_guidance")
    out = tmp_path / "tune"
    log = _old(out / "latent.csv")
    _fake_measurement(monkeypatch, tune, fail_after=3)
    args = ["--mode", "latent", "--photo-dir", str(tmp_path), "--passes", "1", "--only", "denoise", "--out", str(out),
            "--overwrite"]
    with pytest.raises(KeyboardInterrupt):
        tune.main(args)
    assert log.read_text() == "an earlier run's file\n"
    rows = (out / "latent.csv.part").read_text().splitlines()
    assert rows[0].startswith("pass,field,value") and len(rows) == 3  # the header and two settings

    _fake_measurement(monkeypatch, tune)
    assert tune.main(args) == 0
    assert len(log.read_text().splitlines()) == 4 and not (out / "latent.csv.part").exists()


def test_measure_defaults_refuses_an_earlier_acceptance_before_its_work(script, tmp_path, monkeypatch) -> None:
    measure = script("measure_defaults")
    acceptance = _old(tmp_path / "meas" / "acceptance.md")
    monkeypatch.setattr(measure, "split", _not_reached)
    with pytest.raises(SystemExit) as info:
        measure.main(["--photo-dir", str(tmp_path), "--out", str(tmp_path / "meas")])
    _refused(info, acceptance)
    assert acceptance.read_text() == "an earlier run's file\n"


def test_an_interrupted_crop_leaves_no_half_written_file(script, tmp_path, monkeypatch) -> None:
    """write_crops keeps existing crops: a half-written one would be measured on every later run."""
    crops = script("photo_crops")

    class HalfSaved:
        def save(self, fp, format=None, **params):
            fh = open(fp, "wb") if isinstance(fp, (str, os.PathLike)) else fp
            fh.write(b"\x89PNG half")
            fh.flush()
            raise KeyboardInterrupt

    monkeypatch.setattr(crops, "centre_crop", lambda path, size=256: HalfSaved())
    folder = tmp_path / "gt"
    with pytest.raises(KeyboardInterrupt):
        crops.write_crops([tmp_path / "photo.jpg"], folder)
    assert list(folder.iterdir()) == []


def test_package_models_never_writes_over_its_source(script, tmp_path) -> None:
    package = script("package_models")
    src = tmp_path / "run" / "indigo-pixel-inn-x4.safetensors"
    src.parent.mkdir()
    src.write_bytes(b"the training run's export")
    with pytest.raises(SystemExit) as info:
        package.main(["inn", str(src), "--out", str(src.parent), "--overwrite"])
    assert "source file itself" in str(info.value.code)
    assert src.read_bytes() == b"the training run's export"


def test_package_models_refuses_an_existing_card_and_writes_its_card_atomically(script, tmp_path,
                                                                                 direct_writes) -> None:
    from indigo_core import INNConfig, WaveletINN, save_inn

    package = script("package_models")
    src = tmp_path / "run" / "indigo-pixel-inn-x4.safetensors"
    save_inn(WaveletINN(INNConfig.preset("pixel-small")).eval(), src)
    (src.parent / "indigo-pixel-inn-x4.card.json").write_text(json.dumps({"training": {"steps": 1}}))
    models = tmp_path / "models"
    card = _old(models / "indigo-pixel-inn-x4.card.json")
    with pytest.raises(SystemExit) as info:  # the card alone is enough to refuse
        package.main(["inn", str(src), "--out", str(models)])
    _refused(info, card)
    assert card.read_text() == "an earlier run's file\n" and not (models / src.name).exists()

    direct_writes.clear()
    assert package.main(["inn", str(src), "--out", str(models), "--overwrite"]) == 0
    written = json.loads(card.read_text())
    assert written["training"] == {"steps": 1} and written["bundled"]["bytes"] == (models / src.name).stat().st_size
    assert card.resolve() not in direct_writes


def test_demo_copies_its_images_atomically(script, tmp_path, direct_writes) -> None:
    demo = script("demo")
    base = tmp_path / "comfy"
    (base / "output").mkdir(parents=True)
    outputs = {}
    for name, node in demo.SAVED.items():
        (base / "output" / f"{node}.png").write_bytes(b"image " + name.encode())
        outputs[node] = {"images": [{"filename": f"{node}.png", "subfolder": ""}]}
    outputs[demo.COMPARE_NODE] = {"text": ["the table"]}

    class Server:
        base_dir = base

        def history(self, prompt_id):
            return {"status": {"completed": True, "status_str": "success"}, "outputs": outputs}

    out = tmp_path / "demo"
    _old(out / "latent_inn.png", "an earlier demo's image")  # with --overwrite: replaced
    direct_writes.clear()
    assert demo.collect(Server(), "id", out) == "the table"
    for name in demo.SAVED:
        assert (out / name).read_bytes() == b"image " + name.encode()
        assert (out / name).resolve() not in direct_writes
    assert sorted(p.name for p in out.iterdir()) == sorted(demo.SAVED)


def test_demo_sync_workflow_rewrites_the_workflow_atomically(script, tmp_path, monkeypatch, direct_writes) -> None:
    demo = script("demo")
    graph = json.loads(demo.WORKFLOW.read_text())
    sampler = next(n for n in graph.values() if n["class_type"] == "INDIGO_GuidedKSampler")
    sampler["inputs"]["steps"] += 1
    workflow = tmp_path / "workflow.json"
    workflow.write_text(json.dumps(graph))
    monkeypatch.setattr(demo, "WORKFLOW", workflow)
    direct_writes.clear()
    assert demo.sync_workflow_defaults() is True
    assert workflow.resolve() not in direct_writes
    assert json.loads(workflow.read_text()) == json.loads((ROOT / "workflows/api/indigo_demo_restore_compare.json")
                                                          .read_text())


def test_setup_never_deletes_a_venv_it_did_not_make(tmp_path) -> None:
    """scripts/setup_env.sh remakes a .venv it was making when interrupted (no pip yet); a pip-less
    .venv made otherwise (uv makes them) is the user's: refused, not deleted."""
    import shutil

    for name in ("requirements.txt", "requirements-test.txt", "scripts/setup_env.sh"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    user_file = _old(tmp_path / ".venv" / "lib" / "the user's package.py")
    env = dict(os.environ, INDIGO_CACHE=str(tmp_path / "cache"), COMFYUI_PATH=str(tmp_path))
    proc = subprocess.run(["bash", "-c", ". scripts/setup_env.sh"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "was not made by this set-up" in proc.stderr, proc.stderr
    assert user_file.read_text() == "an earlier run's file\n"


# --------------------------------------------------------------------------- tools/


def test_make_workflows_writes_its_thumbnail_atomically(tmp_path, monkeypatch, direct_writes) -> None:
    from PIL import Image

    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    make_workflows = importlib.import_module("make_workflows")
    png, jpg = tmp_path / "shot.png", tmp_path / "wf.jpg"
    Image.new("RGB", (200, 120), (10, 20, 30)).save(png)
    direct_writes.clear()
    make_workflows.thumbnail(png, jpg, "a title")
    with Image.open(jpg) as im:
        assert im.format == "JPEG" and im.size == (640, 400)
    assert jpg.resolve() not in direct_writes


def test_gpu_train_refuses_an_earlier_runs_files_before_it_starts(tmp_path) -> None:
    out = tmp_path / "out"
    card = _old(out / "indigo-prior-unet.card.json")
    env = dict(os.environ, OUT=str(out), WORK=str(tmp_path / "work"), PYTHON=sys.executable)
    script = str(ROOT / "tools" / "gpu_train.sh")
    proc = subprocess.run(["bash", script, str(tmp_path / "nodata")], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and str(card) in proc.stderr and "--overwrite" in proc.stderr, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [card.name] and not (tmp_path / "work").exists()
    assert card.read_text() == "an earlier run's file\n"
    # --overwrite goes on (here to the check of the staged photos)
    proc = subprocess.run(["bash", script, "--overwrite", str(tmp_path / "nodata")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "stage the photos first" in proc.stdout, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- benchmarks/


@pytest.mark.parametrize("name", ["bench_guidance", "bench_indigo"])
def test_benchmarks_refuse_an_existing_result_before_the_run(name, tmp_path, monkeypatch) -> None:
    bench = importlib.import_module(f"benchmarks.{name}")
    monkeypatch.setattr(bench, "import_host", lambda args: False)  # a CPU; ComfyUI is not needed to refuse
    result = _old(tmp_path / "result.json", "{}")
    with pytest.raises(SystemExit) as info:
        bench.main(["--out", str(result), "--device", "cpu"])
    _refused(info, result)
    assert result.read_text() == "{}"
    committed = ROOT / "benchmarks" / "results" / f"{name}_cpu_quick.json"
    with pytest.raises(SystemExit) as info:  # the default file, committed to the repository
        bench.main(["--quick", "--device", "cpu"])
    _refused(info, committed)


def test_profile_refuses_to_replace_profiles_before_profiling(tmp_path, monkeypatch) -> None:
    profile = importlib.import_module("benchmarks.profile_indigo")
    monkeypatch.setattr(profile, "import_host", _not_reached)
    into = _old(tmp_path / "bench.json", json.dumps({"rows": {}, "profiles": {"size": 512}}))
    with pytest.raises(SystemExit) as info:
        profile.main(["--into", str(into)])
    _refused(info, into)
    with pytest.raises(SystemExit) as info:
        profile.main(["--into", str(tmp_path / "missing.json")])
    assert "missing.json" in str(info.value.code)
    out = _old(tmp_path / "profile.json", "{}")
    with pytest.raises(SystemExit) as info:
        profile.main(["--out", str(out)])
    _refused(info, out)
    assert into.read_text().startswith('{"rows"') and out.read_text() == "{}"
