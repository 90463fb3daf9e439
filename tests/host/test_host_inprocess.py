"""The pack inside an in-process ComfyUI 0.3.75: registration, the model folder, Load INN, INN Info."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import indigo_core
from inn_files import state_hash, write_corrupt_file, write_random_inn, write_truncated_inn

PACK_NODES = {"INDIGO_LoadINN": "Load INN", "INDIGO_INNInfo": "INN Info"}
ROOT = Path(__file__).resolve().parents[2]


def _expected_error(path: Path) -> str:
    """The pack's error text for a bad file, from the core used directly."""
    with pytest.raises(indigo_core.errors.WeightsFileError) as info:
        indigo_core.load_inn(path)
    return str(info.value)


# ----------------------------------------------------------------------------- registration


def test_pack_registers_its_nodes(comfy_inprocess) -> None:
    import nodes

    specs = comfy_inprocess.module("nodes").NODE_SPECS
    assert set(PACK_NODES) <= set(comfy_inprocess.pack_node_ids)
    assert len(comfy_inprocess.pack_node_ids) == len(specs)
    for node_id, display in PACK_NODES.items():
        assert nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id] == display
    assert nodes.EXTENSION_WEB_DIRS["comfyui-indigo"] == str(ROOT / "js") or Path(
        nodes.EXTENSION_WEB_DIRS["comfyui-indigo"]).resolve() == ROOT / "js"


def test_every_node_follows_the_conventions(comfy_inprocess) -> None:
    """Id prefix, one category, description, tooltip on every input and output, a help page."""
    problems = []
    for node_id in comfy_inprocess.pack_node_ids:
        schema = comfy_inprocess.node(node_id).GET_SCHEMA()
        if not node_id.startswith("INDIGO_"):
            problems.append(f"{node_id}: id without the INDIGO_ prefix")
        if schema.category != "INDIGO":
            problems.append(f"{node_id}: category {schema.category!r}, expected 'INDIGO'")
        if not (schema.display_name and schema.description):
            problems.append(f"{node_id}: no display name or description")
        problems += [f"{node_id}.{item.id}: no tooltip"
                     for item in [*(schema.inputs or []), *(schema.outputs or [])] if not item.tooltip]
        if not (ROOT / "js" / "docs" / f"{node_id}.md").is_file():
            problems.append(f"{node_id}: no help page js/docs/{node_id}.md")
    assert not problems, "\n".join(problems)


def test_model_folder_registered(comfy_inprocess) -> None:
    import folder_paths

    paths, extensions = folder_paths.folder_names_and_paths["indigo"]
    assert str(comfy_inprocess.models_dir) in paths
    assert set(extensions) == {".safetensors", ".pth"}
    (comfy_inprocess.models_dir / "readme.txt").write_text("not a model")
    write_random_inn(comfy_inprocess.models_dir / "listed.safetensors")
    names = folder_paths.get_filename_list("indigo")
    assert "listed.safetensors" in names and "readme.txt" not in names


def test_extra_model_paths_entry_keeps_the_filter(comfy_inprocess, tmp_path: Path) -> None:
    """An `indigo:` entry of extra_model_paths.yaml, read before or after the pack registers."""
    import folder_paths
    import utils.extra_config

    host = comfy_inprocess.module("nodes.host")
    saved = folder_paths.folder_names_and_paths["indigo"]
    extra = tmp_path / "more_inns"
    extra.mkdir()
    write_random_inn(extra / "extra.safetensors", "latent-small")
    (extra / "notes.md").write_text("x")
    yaml = tmp_path / "extra_model_paths.yaml"
    yaml.write_text(f"mine:\n    base_path: {tmp_path}\n    indigo: more_inns\n")
    try:
        # ComfyUI's order: the yaml first (creates the name with no filter), then the pack.
        del folder_paths.folder_names_and_paths["indigo"]
        utils.extra_config.load_extra_path_config(str(yaml))
        assert folder_paths.folder_names_and_paths["indigo"][1] == set()
        default = host.register_model_folder()
        host.register_model_folder()  # idempotent
        paths, extensions = folder_paths.folder_names_and_paths["indigo"]
        assert paths == [str(extra), default]
        assert set(extensions) == {".safetensors", ".pth"}
        names = host.list_models()
        assert "extra.safetensors" in names and "notes.md" not in names
        assert host.find_model("extra.safetensors") == str(extra / "extra.safetensors")
        # The other order: a yaml read after the pack registered adds a path, keeps the filter.
        folder_paths.folder_names_and_paths["indigo"] = ([default], set(host.MODEL_EXTENSIONS))
        utils.extra_config.load_extra_path_config(str(yaml))
        assert "extra.safetensors" in host.list_models() and "notes.md" not in host.list_models()
    finally:
        folder_paths.folder_names_and_paths["indigo"] = saved
        folder_paths.filename_list_cache.pop("indigo", None)


# ----------------------------------------------------------------------------- Load INN


@pytest.mark.parametrize("preset", ["pixel-small", "latent-small"])
def test_load_inn_loads_the_file(comfy_inprocess, preset: str, seed: int) -> None:
    name = f"load_{preset}.safetensors"
    saved = write_random_inn(comfy_inprocess.models_dir / name, preset, seed=seed)
    info = comfy_inprocess.object_info("INDIGO_LoadINN")
    assert name in info["input"]["required"]["inn_name"][1]["options"]

    result = comfy_inprocess.run_node("INDIGO_LoadINN", inn_name=name)
    inn = result[0]
    assert isinstance(inn, comfy_inprocess.core.WaveletINN)
    assert inn.config == comfy_inprocess.core.INNConfig.from_dict(saved.config.to_dict())
    assert state_hash(inn) == state_hash(saved)
    # Usable by later nodes: eval mode, frozen, normal (not inference-mode) tensors.
    assert not inn.training
    assert all(not p.requires_grad and not p.is_inference() for p in inn.parameters())

    cfg = saved.config
    x = torch.rand(1, cfg.channels, 32, 24, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want_c, want_d = saved(x, None)
        got_c, got_d = inn(x, None)
    assert torch.equal(want_c, got_c) and all(torch.equal(a, b) for a, b in zip(want_d, got_d))

    ui = result.ui["indigo_inn"][0]
    assert ui == {"name": name, "domain": cfg.domain, "scale": cfg.scale, "channels": cfg.channels,
                  "split": cfg.split, "levels": cfg.levels, "pairs": cfg.pairs,
                  "params": sum(p.numel() for p in saved.parameters())}
    assert ui["scale"] == (4 if preset.startswith("pixel") else 1)


def test_load_inn_caches_by_path_and_mtime(comfy_inprocess) -> None:
    path = comfy_inprocess.models_dir / "cached.safetensors"
    write_random_inn(path, seed=1)
    node = comfy_inprocess.node("INDIGO_LoadINN")
    first = comfy_inprocess.run_node("INDIGO_LoadINN", inn_name=path.name)[0]
    again = comfy_inprocess.run_node("INDIGO_LoadINN", inn_name=path.name)[0]
    assert again is first
    fingerprint = node.fingerprint_inputs(inn_name=path.name)

    write_random_inn(path, seed=2)  # replaced under the same name
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert node.fingerprint_inputs(inn_name=path.name) != fingerprint
    replaced = comfy_inprocess.run_node("INDIGO_LoadINN", inn_name=path.name)[0]
    assert replaced is not first
    assert state_hash(replaced) != state_hash(first)


def test_estimator_and_restorer_files_replaced_in_place_are_read_again(comfy_inprocess) -> None:
    """Degradation Estimate and Stage-1 Restore fingerprint their file as Load INN does, so ComfyUI
    does not reuse a cached output after the file changes, even when it is copied in with its old
    modification time and size (cp -p); unknown names are refused when the prompt is queued."""
    import shutil

    from test_bundled_models import ESTIMATOR, RESTORER

    for node_id, arg, bundled in (("INDIGO_DegradationEstimate", "estimator_name", ESTIMATOR),
                                  ("INDIGO_Stage1Restore", "restorer_name", RESTORER)):
        node = comfy_inprocess.node(node_id)
        mine = comfy_inprocess.models_dir / f"mine-{bundled}"
        shutil.copy2(Path(indigo_core.__file__).parents[1] / "models" / bundled, mine)
        before = node.fingerprint_inputs(**{arg: mine.name})
        st = mine.stat()
        data = bytearray(mine.read_bytes())
        data[-1] ^= 1  # same size, other content
        mine.write_bytes(bytes(data))
        os.utime(mine, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old modification time
        assert node.fingerprint_inputs(**{arg: mine.name}) != before, node_id
        assert node.validate_inputs(**{arg: mine.name}) is True
        assert "not found" in node.validate_inputs(**{arg: "absent.safetensors"})
        mine.unlink()


def test_inn_info_route_reads_and_checks_an_indigo_plus_pth(comfy_inprocess) -> None:
    from indigo_core.inn.config import INNConfig
    from indigo_core.inn.indigo_plus import to_indigo_plus_key

    route = comfy_inprocess.module("nodes.routes").inn_info
    torch.manual_seed(0)
    state = {to_indigo_plus_key(k): v for k, v in indigo_core.WaveletINN(INNConfig.preset("indigo-plus")).state_dict().items()}
    good, short, other = (comfy_inprocess.models_dir / n for n in ("INN.pth", "INN_short.pth", "KDSR_like.pth"))
    torch.save({"params": state}, good)
    torch.save({"params": dict(list(state.items())[1:])}, short)
    torch.save({"E_st.head.weight": torch.zeros(3, 3)}, other)
    status, body = route({"name": good.name})
    assert status == 200 and body["ok"] is True and (body["domain"], body["scale"]) == ("pixel", 4)
    for path in (short, other):
        status, body = route({"name": path.name})
        assert status == 200 and body["ok"] is False and path.name in body["error"], body
        path.unlink()
    good.unlink()


def test_nodes_never_change_the_cached_inn(comfy_inprocess) -> None:
    write_random_inn(comfy_inprocess.models_dir / "readonly.safetensors", seed=3)
    inn = comfy_inprocess.run_node("INDIGO_LoadINN", inn_name="readonly.safetensors")[0]
    before = state_hash(inn)
    info = comfy_inprocess.run_node("INDIGO_INNInfo", inn=inn)
    common = comfy_inprocess.module("nodes.common")
    private = common.private_inn_copy(inn, dtype=torch.float64, trainable=True)
    with torch.no_grad():
        for p in private.parameters():
            p.add_(1.0)
    assert all(p.requires_grad and p.dtype == torch.float64 for p in private.parameters())
    assert state_hash(inn) == before
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in inn.parameters())
    assert "pixel" in info[0] and "x4" in info[0]
    assert info.ui["text"] == [info[0]]


@pytest.mark.parametrize("make", [write_corrupt_file, write_truncated_inn], ids=["corrupt", "truncated"])
def test_load_inn_refuses_bad_files_with_the_core_error(comfy_inprocess, make) -> None:
    path = make(comfy_inprocess.models_dir / f"bad_{make.__name__}.safetensors")
    with pytest.raises(comfy_inprocess.core.errors.WeightsFileError) as info:
        comfy_inprocess.run_node("INDIGO_LoadINN", inn_name=path.name)
    assert str(info.value) == _expected_error(path)
    assert str(path) in str(info.value)


def test_load_inn_missing_and_unsafe_files(comfy_inprocess) -> None:
    errors = comfy_inprocess.core.errors
    with pytest.raises(errors.WeightsFileError, match=r"not found in the 'indigo' model folders"):
        comfy_inprocess.run_node("INDIGO_LoadINN", inn_name="no_such_file.safetensors")
    pth = comfy_inprocess.models_dir / "INN_garbage.pth"
    pth.write_bytes(b"\x80\x04not a real pickle")
    with pytest.raises(errors.WeightsFileError) as info:
        comfy_inprocess.run_node("INDIGO_LoadINN", inn_name=pth.name)
    assert str(pth) in str(info.value)


def test_prompt_in_process(comfy_inprocess) -> None:
    write_random_inn(comfy_inprocess.models_dir / "graph.safetensors", "latent-small")
    prompt = {
        "1": {"class_type": "INDIGO_LoadINN", "inputs": {"inn_name": "graph.safetensors"}},
        "2": {"class_type": "INDIGO_INNInfo", "inputs": {"inn": ["1", 0]}},
    }
    result = comfy_inprocess.run_prompt(prompt)
    assert result.ok, result.error_message
    assert result.outputs["1"]["indigo_inn"][0]["domain"] == "latent"
    assert "latent (4 channels)" in result.outputs["2"]["text"][0]
    executed = [data["node"] for event, data in result.events if event == "executed"]
    assert executed == ["1", "2"]

    write_corrupt_file(comfy_inprocess.models_dir / "graph_bad.safetensors")
    prompt["1"]["inputs"]["inn_name"] = "graph_bad.safetensors"
    failed = comfy_inprocess.run_prompt(prompt)
    assert not failed.ok
    assert failed.error["node_type"] == "INDIGO_LoadINN"
    assert _expected_error(comfy_inprocess.models_dir / "graph_bad.safetensors") in failed.error_message


def test_json_routes_answer_off_the_event_loop(comfy_inprocess, monkeypatch) -> None:
    """A route's handler runs in a worker thread: one request that waits (a slow file read) does not
    hold up another. Here request A waits until request B has been answered; served on the event
    loop itself, A would block B and never see it."""
    import asyncio
    import threading
    import types

    import server

    host_mod = comfy_inprocess.module("nodes.host")
    endpoints = {}
    routes = types.SimpleNamespace(get=lambda path: (lambda fn: endpoints.setdefault(path, fn)))
    monkeypatch.setattr(server.PromptServer, "instance", types.SimpleNamespace(routes=routes), raising=False)
    b_done = threading.Event()

    def handler(query):
        if query["who"] == "a":
            return 200, {"saw_b": b_done.wait(timeout=10)}
        b_done.set()
        return 200, {"b": True}

    assert host_mod.add_json_route("/indigo/test_route", handler)
    endpoint = endpoints["/indigo/test_route"]

    def request(who):
        return types.SimpleNamespace(rel_url=types.SimpleNamespace(query={"who": who}))

    async def both():
        return await asyncio.gather(endpoint(request("a")), endpoint(request("b")))

    a, b = asyncio.run(both())
    assert a.status == 200 and b.status == 200
    assert a.text == '{"saw_b": true}' and b_done.is_set()
