"""The adapter's shape, checked from the source: one host-import module, the V3 entry point,
node conventions (ids, category, tooltips, help pages). No ComfyUI needed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOST_MODULES = ("comfy", "comfy_api", "comfy_execution", "comfy_extras", "folder_paths", "server",
                "execution", "nodes", "node_helpers", "latent_preview", "main")


def _imports(path: Path) -> list[tuple[str, int]]:
    """(absolute top-level module, line) of every absolute import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], node.lineno))
    return found


def _pack_python_files() -> list[Path]:
    return [ROOT / "__init__.py", *sorted((ROOT / "nodes").glob("*.py"))]


@pytest.mark.parametrize("path", [p for p in _pack_python_files() if p != ROOT / "nodes" / "host.py"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_only_host_module_imports_comfyui(path: Path) -> None:
    bad = [(m, line) for m, line in _imports(path) if m in HOST_MODULES]
    assert not bad, f"{path.relative_to(ROOT)} imports ComfyUI directly at {bad}; go through nodes/host.py"


@pytest.mark.parametrize("path", _pack_python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_pack_imports_its_core_relatively(path: Path) -> None:
    # ComfyUI imports the pack as a package named after its folder; the folder is not on sys.path.
    own = ("indigo_core",) if path.name == "host.py" else ("indigo_core", "nodes")  # host.py may use ComfyUI's nodes.py
    bad = [(m, line) for m, line in _imports(path) if m in own]
    assert not bad, f"{path.relative_to(ROOT)}: absolute import of the pack's own package at {bad}; use a relative import"


def test_entry_point_is_v3_only() -> None:
    tree = ast.parse((ROOT / "__init__.py").read_text())
    names = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    funcs = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert "comfy_entrypoint" in funcs
    assert "NODE_CLASS_MAPPINGS" not in names, "ComfyUI takes the V1 path when NODE_CLASS_MAPPINGS exists"
    web = next(n.value.value for n in tree.body if isinstance(n, ast.Assign)
               and any(isinstance(t, ast.Name) and t.id == "WEB_DIRECTORY" for t in n.targets))
    assert web == "./js"


def test_frontend_extension_is_namespaced() -> None:
    registered = 0
    for js in (ROOT / "js").glob("*.js"):
        text = js.read_text()
        for call in text.split("registerExtension(")[1:]:
            registered += 1
            name = call.split("name:", 1)[1].split(",", 1)[0].strip()
            assert name.startswith(("\"comfyui-indigo.", "'comfyui-indigo.", "EXTENSION")), f"{js.name}: {name}"
            if name.startswith("EXTENSION"):  # the constant must be defined, namespaced, in this file
                assert 'const EXTENSION = "comfyui-indigo.' in text, f"{js.name}: EXTENSION is not defined here"
        if "const EXTENSION" in text:
            assert 'const EXTENSION = "comfyui-indigo.' in text
    assert registered, "no registerExtension( call found in js/*.js"


def test_top_level_import_needs_no_comfyui(tmp_path: Path) -> None:
    """Importing the pack package (as ComfyUI does, by file) imports nothing until the entry point runs."""
    import json
    import subprocess
    import sys

    probe = tmp_path / "probe.py"
    probe.write_text(
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('pack_under_test', {str(ROOT / '__init__.py')!r})\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "sys.modules['pack_under_test'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths', 'torch'))\n"
        "print(json.dumps({'web': mod.WEB_DIRECTORY, 'entry': callable(mod.comfy_entrypoint),\n"
        "                  'mappings': hasattr(mod, 'NODE_CLASS_MAPPINGS'), 'heavy': heavy}))\n"
    )
    out = subprocess.run([sys.executable, str(probe)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"web": "./js", "entry": True, "mappings": False, "heavy": []}
