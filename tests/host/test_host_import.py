"""The pack loads in a fresh interpreter the way ComfyUI loads it, even when pytorch_wavelets
cannot be imported (e.g. a ComfyUI venv whose setuptools no longer ships pkg_resources)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inn_files import write_random_inn

HARNESS = Path(__file__).resolve().parent / "host_harness.py"
PACK_NODES = {"INDIGO_LoadINN", "INDIGO_INNInfo"}


def _load_pack(base: Path, comfyui_path: Path, block: list[str], load: list[str]) -> dict:
    cmd = [sys.executable, str(HARNESS), "load-pack", "--base", str(base)]
    cmd += [a for name in block for a in ("--block", name)]
    cmd += [a for name in load for a in ("--load", name)]
    env = dict(os.environ, COMFYUI_PATH=str(comfyui_path))
    env.pop("PYTHONPATH", None)  # the repo root must not be importable: the pack stands alone
    proc = subprocess.run(cmd, cwd=str(base), env=env, capture_output=True, text=True, timeout=240)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("REPORT "):])


@pytest.mark.timeout(300)
def test_pack_imports_without_pytorch_wavelets(comfyui_path: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    (base / "models" / "indigo").mkdir(parents=True)
    write_random_inn(base / "models" / "indigo" / "pix.safetensors", "pixel-small")
    write_random_inn(base / "models" / "indigo" / "lat.safetensors", "latent-small")

    report = _load_pack(base, comfyui_path, block=["pytorch_wavelets", "pkg_resources"],
                        load=["pix.safetensors", "lat.safetensors"])

    assert report["loaded"], "\n".join(report["log"])
    assert PACK_NODES <= set(report["node_ids"]), "\n".join(report["log"])
    assert report["blocked_importable"] == {"pytorch_wavelets": False, "pkg_resources": False}
    failures = [l for l in report["log"] if "comfyui-indigo" in l and ("fail" in l.lower() or "error" in l.lower())]
    assert not failures, failures
    # Load INN still works: the core falls back to its own Haar transform.
    assert report["inns"]["pix.safetensors"].get("domain") == "pixel", report["inns"]
    assert report["inns"]["pix.safetensors"]["scale"] == 4
    assert report["inns"]["lat.safetensors"].get("domain") == "latent", report["inns"]
