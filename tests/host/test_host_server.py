"""The pack in a real ComfyUI 0.3.75 server on loopback: boot, /object_info, prompts, frontend files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import indigo_core
from host_harness import history_error
from inn_files import write_corrupt_file, write_random_inn

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _node_specs() -> list:
    """NODE_SPECS of nodes/__init__.py, read from the source (importing it needs ComfyUI)."""
    tree = ast.parse((Path(__file__).resolve().parents[2] / "nodes" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "NODE_SPECS":
            return list(ast.literal_eval(node.value))
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "NODE_SPECS" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError("nodes/__init__.py defines no NODE_SPECS")


def _graph(inn_name: str) -> dict:
    return {
        "1": {"class_type": "INDIGO_LoadINN", "inputs": {"inn_name": inn_name}},
        "2": {"class_type": "INDIGO_INNInfo", "inputs": {"inn": ["1", 0]}},
    }


def test_server_boots_with_the_pack(comfy_server) -> None:
    status, stats = comfy_server.get("/system_stats")
    assert status == 200 and stats["system"]["comfyui_version"]
    log = comfy_server.log_path.read_text(errors="replace").splitlines()
    signs = ("IMPORT FAILED", "failed to import", "Cannot import", "Error while calling comfy_entrypoint")
    ours = ("custom_nodes/comfyui-indigo", "comfyui-indigo: ")  # the pack's path / its own log prefix
    failures = [l for l in log if any(o in l for o in ours) and any(s in l for s in signs)]
    assert not failures, "\n".join(failures) + "\n" + comfy_server.log_tail()


def test_object_info_lists_load_inn_with_its_files(comfy_server) -> None:
    write_random_inn(comfy_server.models_dir / "listed_server.safetensors")
    info = comfy_server.object_info("INDIGO_LoadINN")
    assert info["display_name"] == "Load INN"
    assert info["category"] == "INDIGO"
    assert info["output"] == ["INDIGO_INN"]
    combo = info["input"]["required"]["inn_name"]
    assert "listed_server.safetensors" in combo[1]["options"]
    assert combo[1]["tooltip"]
    out = comfy_server.object_info("INDIGO_INNInfo")
    assert out["output_node"] is True and out["input"]["required"]["inn"][0] == "INDIGO_INN"
    everything = comfy_server.object_info()
    assert {"INDIGO_LoadINN", "INDIGO_INNInfo", "KSampler"} <= set(everything)
    ours = sorted(k for k, v in everything.items() if v.get("python_module") == "custom_nodes.comfyui-indigo")
    assert len(ours) == len(_node_specs()), f"registered {ours}, NODE_SPECS {_node_specs()}\n{comfy_server.log_tail()}"


@pytest.mark.parametrize("preset", ["pixel-small", "latent-small"])
def test_prompt_loading_an_inn_succeeds(comfy_server, preset: str) -> None:
    name = f"server_{preset}.safetensors"
    saved = write_random_inn(comfy_server.models_dir / name, preset)
    entry = comfy_server.run(_graph(name), timeout=120)
    status = entry["status"]
    assert status["status_str"] == "success", f"{history_error(entry)}\n{comfy_server.log_tail()}"
    assert status["completed"] is True
    badge = entry["outputs"]["1"]["indigo_inn"][0]
    assert badge["name"] == name
    assert badge["domain"] == saved.config.domain and badge["scale"] == saved.config.scale
    assert badge["params"] == sum(p.numel() for p in saved.parameters())
    text = entry["outputs"]["2"]["text"][0]
    assert f"x{saved.config.scale}" in text and saved.config.domain in text


def test_prompt_naming_a_corrupt_file_fails_with_the_pack_error(comfy_server) -> None:
    path = write_corrupt_file(comfy_server.models_dir / "corrupt_server.safetensors")
    with pytest.raises(indigo_core.errors.WeightsFileError) as expected:
        indigo_core.load_inn(path)
    entry = comfy_server.run(_graph(path.name), timeout=120)
    assert entry["status"]["status_str"] == "error"
    errors = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    assert len(errors) == 1, entry["status"]
    assert errors[0]["node_type"] == "INDIGO_LoadINN"
    assert errors[0]["exception_type"].endswith("WeightsFileError")
    assert str(expected.value) in errors[0]["exception_message"]
    assert "2" not in entry["outputs"]


def test_prompt_naming_an_unlisted_file_is_refused(comfy_server) -> None:
    status, body = comfy_server.queue(_graph("never_written.safetensors"))
    assert status == 400
    errors = [e for node in body["node_errors"].values() for e in node["errors"]]
    assert errors and errors[0]["type"] == "custom_validation_failed"
    assert "never_written.safetensors" in errors[0]["details"] and "not found" in errors[0]["details"]


def test_extra_model_paths_yaml_indigo_folder(comfy_server) -> None:
    """The server was started with an extra_model_paths.yaml mapping `indigo:` to extra_models_dir."""
    write_random_inn(comfy_server.extra_models_dir / "from_yaml.safetensors", "latent-small")
    (comfy_server.extra_models_dir / "notes.txt").write_text("not a model")
    options = comfy_server.object_info("INDIGO_LoadINN")["input"]["required"]["inn_name"][1]["options"]
    assert "from_yaml.safetensors" in options and "notes.txt" not in options
    entry = comfy_server.run(_graph("from_yaml.safetensors"))
    assert entry["status"]["status_str"] == "success", history_error(entry)


def test_frontend_files_are_served(comfy_server) -> None:
    status, listing = comfy_server.get("/extensions")
    assert status == 200 and "/extensions/comfyui-indigo/indigo.js" in listing
    status, js = comfy_server.get("/extensions/comfyui-indigo/indigo.js")
    assert status == 200 and '"comfyui-indigo.ui"' in js
    for node_id in ("INDIGO_LoadINN", "INDIGO_INNInfo"):
        status, page = comfy_server.get(f"/extensions/comfyui-indigo/docs/{node_id}.md")
        assert status == 200 and page.startswith("# "), node_id


def test_server_models_folder_is_in_its_base_directory(comfy_server) -> None:
    assert comfy_server.models_dir == Path(comfy_server.base_dir) / "models" / "indigo"
    assert (comfy_server.base_dir / "custom_nodes" / "comfyui-indigo").resolve() == Path(__file__).resolve().parents[2]
