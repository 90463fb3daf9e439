"""What the Comfy Registry and ComfyUI-Manager read: pyproject.toml, requirements.txt, CHANGELOG.md.

A ``git clone`` into custom_nodes/ plus ``pip install -r requirements.txt`` must give a working pack:
every third-party module the pack imports at run time (nodes/ and the core, lazy imports included;
training and evaluation CLIs excepted) must come from requirements.txt or from ComfyUI itself.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: import name -> distribution name, for the pack's runtime requirements.
DISTRIBUTION = {"PIL": "pillow", "pytorch_wavelets": "pytorch-wavelets", "pywt": "pywavelets", "skimage": "scikit-image"}
#: Provided by ComfyUI (its own modules, or its own requirements).
HOST = {"comfy", "comfy_api", "comfy_execution", "comfy_extras", "folder_paths", "server", "execution", "nodes",
        "node_helpers", "latent_preview", "aiohttp", "torch", "torchvision", "numpy", "PIL", "safetensors", "einops"}
#: Command-line parts whose dependencies are the optional extras (train, eval), not the node pack's.
OPTIONAL_PARTS = ("indigo_core/train/", "indigo_core/eval/", "indigo_core/prior/train", "indigo_core/metrics/fid.py",
                  "indigo_core/metrics/convert.py")


def _requirements() -> dict[str, str]:
    reqs = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0]
            reqs[name.lower()] = line
    return reqs


def _runtime_imports() -> dict[str, list[str]]:
    """{top-level module: [files]} of every absolute import in the pack's runtime code."""
    found: dict[str, list[str]] = {}
    files = [ROOT / "__init__.py", *sorted((ROOT / "nodes").glob("*.py")), *sorted((ROOT / "indigo_core").rglob("*.py"))]
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        if any(rel.startswith(p) for p in OPTIONAL_PARTS):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], []).append(rel)
    return found


def test_registry_metadata() -> None:
    project, comfy = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
    assert project["name"] == "comfyui-indigo"
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]), project["version"]
    assert project["license"] == {"file": "LICENSE"} and (ROOT / "LICENSE").is_file()
    assert project["urls"]["Repository"].startswith("https://github.com/")
    assert project["description"] and project["classifiers"]
    assert any(c.startswith("License :: ") for c in project["classifiers"])
    for key in ("PublisherId", "DisplayName", "Icon"):
        assert comfy.get(key), f"[tool.comfy] {key} is empty"
    assert re.fullmatch(r"[a-z0-9-]+", comfy["PublisherId"])
    icon = comfy["Icon"]
    assert icon.startswith("https://raw.githubusercontent.com/") and icon.endswith(".png")
    local = ROOT / icon.split("/main/", 1)[1]
    assert local.is_file(), f"the icon URL points at {local.relative_to(ROOT)}, which is not in the repository"


def test_requirements_are_loose_and_match_pyproject() -> None:
    reqs = _requirements()
    for name in ("torch", "torchvision"):
        assert reqs.get(name, name) == name, f"requirements.txt must not pin {name}: {reqs[name]}"
    declared = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower() for d in PYPROJECT["project"]["dependencies"]}
    assert declared <= set(reqs), f"in pyproject but not requirements.txt: {sorted(declared - set(reqs))}"


def test_runtime_imports_are_covered_by_requirements() -> None:
    reqs = _requirements()
    stdlib = set(sys.stdlib_module_names)
    missing = {}
    for module, files in _runtime_imports().items():
        if module in stdlib or module in HOST or module == "indigo_core":
            continue
        if DISTRIBUTION.get(module, module).lower() not in reqs:
            missing[module] = sorted(set(files))[:3]
    assert not missing, f"imported at run time but not in requirements.txt: {missing}"


def test_changelog_has_an_unreleased_or_current_section() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    version = PYPROJECT["project"]["version"]
    assert "## [Unreleased]" in text or f"## [{version}]" in text
