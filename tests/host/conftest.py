"""Host tests: the pack inside the real ComfyUI (0.3.75 from scripts/setup_env.sh, or COMFYUI_PATH).

Where the host comes from
    ``COMFYUI_PATH`` (exported by scripts/setup_env.sh, or a user's own checkout). When pytest runs
    without it, the cache ``~/.cache/comfyui-indigo/ComfyUI-0.3.75`` is used if present; otherwise
    the tests fail (never skip) with a message to run ``./scripts/test.sh``.

How the pack is installed
    As users install it: a link ``<base>/custom_nodes/comfyui-indigo`` -> the repository in a fresh
    ComfyUI base directory (``--base-directory``), requirements already in the venv. ComfyUI imports
    it as a package named after that folder; inside it the core is ``<pack>.indigo_core``.

Fixtures (all session-scoped; ComfyUI is imported and the server booted once per session)

``comfy_inprocess`` -> :class:`host_harness.InProcessComfy`
    ComfyUI imported into the test process with ``--cpu`` and the pack loaded by
    ``nodes.init_extra_nodes`` (core nodes, comfy_extras and the pack; no API nodes).
    - ``.run_node("INDIGO_LoadINN", inn_name="x.safetensors")`` -> ``NodeResult(outputs, ui)``:
      one node executed as ComfyUI's executor does (V3 class clone, under inference mode unless
      ``inference_mode=False``); works for core nodes too (``run_node("KSampler", ...)``).
    - ``.run_prompt(api_prompt)`` -> ``PromptResult(status_str, outputs, messages, events, error)``:
      a whole API-format graph validated and executed by ComfyUI's own PromptExecutor; ``events``
      records every message a frontend would have received (progress, custom plot messages).
    - ``.models_dir`` (``<base>/models/indigo``: files written there appear in Load INN's list),
      ``.base_dir``, ``.node(node_id)``, ``.node_classes``, ``.pack_node_ids``,
      ``.object_info(node_id)``, ``.module("nodes.load_inn")``, ``.core`` (the pack's
      ``indigo_core``: compare classes against it, not against a separately imported copy).
    After this fixture ``import comfy...``, ``folder_paths``, ``nodes`` work in tests (e.g.
    tests/host/models.py builds tiny models from ComfyUI's classes).

``comfy_server`` -> :class:`host_harness.ComfyServer`
    ``python main.py --cpu --listen 127.0.0.1 --port <free> --base-directory <tmp>
    --database-url sqlite:///:memory: --disable-auto-launch --disable-api-nodes
    --extra-model-paths-config <tmp>/extra_model_paths.yaml`` (the yaml maps ``indigo:`` to
    ``.extra_models_dir``). Waits until /system_stats answers (90 s, INDIGO_SERVER_TIMEOUT),
    else fails with the log tail. Log: ``.log_path`` (``.log_tail()``).
    - ``.object_info(node_id=None)``, ``.queue(prompt) -> (http_status, json)``,
      ``.run(prompt, timeout) -> history entry`` (``entry["status"]["status_str"]``,
      ``["messages"]``, ``entry["outputs"]``); ``host_harness.history_error(entry)`` gives the
      exception text of a failed run; ``.get(path)``, ``.post(path, payload)``.
    - ``.url``, ``.base_dir``, ``.models_dir``, ``.extra_models_dir``.
    Only the process it started is ended at teardown.

Write model files under unique names (the folders are shared by the whole session).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import host_harness  # noqa: E402


@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    """The ComfyUI checkout under test (see module docstring)."""
    try:
        return host_harness.comfyui_path()
    except host_harness.HostSetupError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def comfy_inprocess(comfyui_path: Path, tmp_path_factory: pytest.TempPathFactory) -> host_harness.InProcessComfy:
    """ComfyUI imported into this process with the pack loaded; see module docstring."""
    try:
        return host_harness.InProcessComfy(comfyui_path, tmp_path_factory.mktemp("comfy_inprocess"))
    except host_harness.HostSetupError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def errors(comfy_inprocess):
    """The pack's error module as the loaded pack sees it (its classes are the ones raised)."""
    return comfy_inprocess.module("indigo_core.errors")


@pytest.fixture(scope="session")
def comfy_server(comfyui_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """A ComfyUI server subprocess with the pack; see module docstring."""
    timeout = float(os.environ.get("INDIGO_SERVER_TIMEOUT", "90"))
    try:
        server = host_harness.ComfyServer(comfyui_path, tmp_path_factory.mktemp("comfy_server"), boot_timeout=timeout)
    except host_harness.HostSetupError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()
