"""Runs the real ComfyUI host with this pack installed, in-process or as a server subprocess.

Used by tests/host/conftest.py (fixtures ``comfy_inprocess``, ``comfy_server``); see that file for
how tests use them. Also a small command line for checks that need a fresh interpreter::

    python tests/host/host_harness.py load-pack --block pytorch_wavelets --base <dir>

The pack is installed the way users install it: a link named ``PACK_NAME`` to the repository in
``<base>/custom_nodes/``; its requirements are already in the test venv.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Folder name of the pack in custom_nodes/ (what ComfyUI-Manager's git clone gives).
PACK_NAME = "comfyui-indigo"
#: Where scripts/setup_env.sh extracts ComfyUI 0.3.75.
DEFAULT_COMFYUI = Path(os.environ.get("INDIGO_CACHE", Path.home() / ".cache" / "comfyui-indigo")) / "ComfyUI-0.3.75"
#: Top-level module names of ComfyUI's folder that must come from ComfyUI, not from elsewhere
#: (the pack's own ``nodes/`` package is one such name when the repo root is on sys.path).
COMFY_TOP_LEVEL = ("nodes", "server", "execution", "folder_paths", "utils", "app", "comfy", "comfy_api",
                   "comfy_execution", "comfy_extras")


class HostSetupError(RuntimeError):
    """The ComfyUI host cannot be found or started; the message says what to do."""


def comfyui_path() -> Path:
    """The ComfyUI checkout to test against.

    ``COMFYUI_PATH`` (exported by scripts/setup_env.sh, or a user's own checkout); if unset, the
    cache that scripts/setup_env.sh fills. Anything else is an error, never a skip.
    """
    env = os.environ.get("COMFYUI_PATH")
    if env:
        path = Path(env).expanduser().resolve()
        if not (path / "main.py").is_file():
            raise HostSetupError(f"COMFYUI_PATH={env} is not a ComfyUI checkout (expected {path / 'main.py'})")
        return path
    if (DEFAULT_COMFYUI / "main.py").is_file() and (DEFAULT_COMFYUI / ".indigo-complete").exists():
        return DEFAULT_COMFYUI.resolve()
    raise HostSetupError(
        "No ComfyUI host: COMFYUI_PATH is not set and the cached ComfyUI 0.3.75 "
        f"({DEFAULT_COMFYUI}) does not exist. Run ./scripts/test.sh (it sets up the host and runs "
        "pytest), or set COMFYUI_PATH to a ComfyUI checkout."
    )


def make_base_dir(base: Path, extra_dirs: tuple[str, ...] = ()) -> Path:
    """A ComfyUI ``--base-directory``: custom_nodes/<PACK_NAME> -> the repo, models/indigo/, ..."""
    base = Path(base)
    for sub in ("custom_nodes", "models/indigo", "input", "output", "temp", "user", *extra_dirs):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_NAME
    if not link.exists():
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    return base


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# =========================================================================== in-process host


@dataclasses.dataclass
class NodeResult:
    """What one node execution returned: its outputs (tuple, in schema order) and UI dict."""

    outputs: tuple
    ui: Optional[dict]

    def __getitem__(self, i: int) -> Any:
        return self.outputs[i]


@dataclasses.dataclass
class PromptResult:
    """An in-process prompt run: the history-like record the server would store.

    status_str: "success" or "error"; outputs: {node_id: ui dict}; messages: [(event, data)] as in
    the history's status; events: every message the run sent to the (recording) frontend;
    error: the execution_error data or the validation error, else None.
    """

    prompt_id: str
    status_str: str
    outputs: dict
    messages: list
    events: list
    error: Optional[dict]

    @property
    def ok(self) -> bool:
        return self.status_str == "success"

    @property
    def error_message(self) -> str:
        """The exception message of a failed run ("" when it succeeded)."""
        return error_text(self.error)


def error_text(error: Optional[dict]) -> str:
    """Human text of an execution_error / validation error dict."""
    if not error:
        return ""
    if "exception_message" in error:
        return str(error["exception_message"])
    parts = [str(error.get("message", "")), str(error.get("details", ""))]
    return " ".join(p for p in parts if p)


class _RecordingServer:
    """Stands in for ComfyUI's PromptServer during in-process prompt runs: records messages."""

    def __init__(self) -> None:
        self.client_id: Optional[str] = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata: dict = {}
        self.events: list[tuple[str, Any]] = []

    def send_sync(self, event, data, sid=None) -> None:
        self.events.append((event, data))

    def queue_updated(self) -> None:
        pass


class InProcessComfy:
    """ComfyUI 0.3.75 imported into this process, with the pack loaded like the server loads it.

    Attributes:
        comfy_path: the ComfyUI checkout; base_dir: the ``--base-directory`` equivalent;
        models_dir: ``<base_dir>/models/indigo`` (files written there appear in Load INN's list);
        pack: the pack's top-level module as ComfyUI imported it; pack_node_ids: its node ids;
        node_classes: ComfyUI's NODE_CLASS_MAPPINGS (core nodes, comfy_extras, the pack).
    """

    def __init__(self, comfy_path: Path, base_dir: Path) -> None:
        self.comfy_path = Path(comfy_path)
        self.base_dir = make_base_dir(base_dir)
        self.models_dir = self.base_dir / "models" / "indigo"
        self.load_log: list[str] = []
        self._boot()

    # ------------------------------------------------------------------ start-up
    def _boot(self) -> None:
        comfy_dir = str(self.comfy_path)
        for name in COMFY_TOP_LEVEL:
            mod = sys.modules.get(name)
            origin = getattr(mod, "__file__", None) or ""
            if mod is not None and not os.path.realpath(origin).startswith(os.path.realpath(comfy_dir)):
                raise HostSetupError(
                    f"module {name!r} was imported from {origin or mod!r} before ComfyUI "
                    f"({comfy_dir}); the in-process host must be set up first"
                )
        if comfy_dir in sys.path:
            sys.path.remove(comfy_dir)
        sys.path.insert(0, comfy_dir)  # before the repo root, whose nodes/ would shadow ComfyUI's nodes.py

        import comfy.options  # noqa: F401  (args parsing stays off: pytest's argv is not ComfyUI's)
        from comfy.cli_args import args

        args.cpu = True  # before comfy.model_management is imported
        args.base_directory = str(self.base_dir)
        args.disable_auto_launch = True
        args.disable_api_nodes = True
        if "folder_paths" in sys.modules:
            raise HostSetupError("folder_paths was imported before the in-process host set its base directory")
        import folder_paths

        if Path(folder_paths.base_path) != self.base_dir:
            raise HostSetupError(f"folder_paths base is {folder_paths.base_path}, expected {self.base_dir}")
        # main.py imports utils.extra_config first; nodes.py then puts comfy/ at the front of sys.path,
        # where comfy/utils.py would shadow ComfyUI's utils/ package for anything imported later.
        import utils.extra_config  # noqa: F401
        import comfy.model_management  # noqa: F401
        import comfy.utils  # noqa: F401
        import execution  # noqa: F401
        import server  # noqa: F401  (custom nodes may import PromptServer)
        import nodes

        capture = _ListHandler(self.load_log)
        root = logging.getLogger()
        root.addHandler(capture)
        try:
            asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        finally:
            root.removeHandler(capture)

        self.nodes_module = nodes
        self.node_classes = nodes.NODE_CLASS_MAPPINGS
        pack_dir = str(self.base_dir / "custom_nodes" / PACK_NAME)
        self.pack = sys.modules.get(pack_dir.replace(".", "_x_"))
        if self.pack is None or PACK_NAME not in nodes.LOADED_MODULE_DIRS:
            raise HostSetupError(
                f"ComfyUI did not load the pack from {pack_dir}. Log:\n" + "\n".join(self.load_log[-40:])
            )
        specs = self.module("nodes").NODE_SPECS
        self.pack_node_ids = [
            nid for nid, cls in self.node_classes.items() if getattr(cls, "RELATIVE_PYTHON_MODULE", "") == f"custom_nodes.{PACK_NAME}"
        ]
        if len(self.pack_node_ids) != len(specs):
            raise HostSetupError(
                f"the pack registered {self.pack_node_ids}, expected {len(specs)} nodes from NODE_SPECS "
                f"{list(specs)}. Log:\n" + "\n".join(self.load_log[-40:])
            )

    # ------------------------------------------------------------------ access
    def module(self, relative: str):
        """A module of the pack as ComfyUI imported it, e.g. ``module("nodes.load_inn")`` or
        ``module("indigo_core")`` (the pack's own copy of the core: use it, not a separately
        imported ``indigo_core``, when a test compares classes with what nodes return)."""
        import importlib

        return importlib.import_module(f"{self.pack.__name__}.{relative}")

    @property
    def core(self):
        """The pack's ``indigo_core`` package (see :meth:`module`)."""
        return self.module("indigo_core")

    def node(self, node_id: str):
        """The registered class of ``node_id`` (pack or core ComfyUI node)."""
        try:
            return self.node_classes[node_id]
        except KeyError:
            raise KeyError(f"node {node_id!r} is not registered; the pack has {self.pack_node_ids}") from None

    def object_info(self, node_id: str) -> dict:
        """The /object_info entry of a pack (V3) node, without a server."""
        cls = self.node(node_id)
        if not hasattr(cls, "GET_NODE_INFO_V1"):
            raise TypeError(f"{node_id} is not a V3 node; ask the server (comfy_server.object_info)")
        return cls.GET_NODE_INFO_V1()

    # ------------------------------------------------------------------ execution
    def run_node(self, node_id: str, /, *, inference_mode: bool = True, unique_id: str = "1", **inputs) -> NodeResult:
        """Execute one node the way ComfyUI's executor calls it and return its outputs and UI.

        V3 nodes go through a prepared class clone and EXECUTE_NORMALIZED (hidden inputs empty,
        UNIQUE_ID = ``unique_id``); V1 nodes through their FUNCTION. Runs under
        ``torch.inference_mode()`` like the server, unless ``inference_mode=False``.
        """
        import torch
        from comfy_api.internal import _ComfyNodeInternal, make_locked_method_func
        from comfy_execution.utils import CurrentNodeContext

        cls = self.node(node_id)
        with torch.inference_mode(inference_mode), CurrentNodeContext("inprocess", unique_id, 0):
            if isinstance(cls, type) and issubclass(cls, _ComfyNodeInternal):
                cls.VALIDATE_CLASS()
                clone = cls.PREPARE_CLASS_CLONE({"UNIQUE_ID": unique_id})
                fn = make_locked_method_func(cls, cls.FUNCTION, clone)
                out = fn(**inputs)
                if asyncio.iscoroutine(out):
                    out = asyncio.run(out)
                return NodeResult(tuple(out.args), _ui_dict(out.ui))
            out = getattr(cls(), cls.FUNCTION)(**inputs)
            if isinstance(out, dict):
                return NodeResult(tuple(out.get("result", ())), out.get("ui"))
            return NodeResult(tuple(out), None)

    def run_prompt(self, prompt: dict, client_id: str = "inprocess") -> PromptResult:
        """Validate and execute an API-format prompt like the server's queue worker does.

        A prompt the server would refuse (HTTP 400) comes back with status "error" and the
        validation error. Each call uses a fresh executor (nothing cached between calls).
        """
        import execution

        prompt_id = str(uuid.uuid4())
        valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        if not valid[0]:
            return PromptResult(prompt_id, "error", {}, [], [], {**valid[1], "node_errors": valid[3]})
        fake = _RecordingServer()
        executor = execution.PromptExecutor(fake, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0})
        executor.execute(prompt, prompt_id, {"client_id": client_id}, valid[2])
        messages = list(executor.status_messages)
        error = next((data for event, data in messages if event == "execution_error"), None)
        outputs = dict(executor.history_result.get("outputs", {}))
        return PromptResult(prompt_id, "success" if executor.success else "error", outputs, messages, fake.events, error)


def _ui_dict(ui) -> Optional[dict]:
    if ui is None or isinstance(ui, dict):
        return ui
    return ui.as_dict()


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.INFO)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


# =========================================================================== server subprocess


#: Requests to the local server never go through an http(s)_proxy from the environment.
_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _stop_with_parent() -> None:
    """In the server process before exec: on Linux, SIGTERM it when the process that started it
    dies (PR_SET_PDEATHSIG), so a killed demo or test run leaves no server behind."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        except OSError:
            pass


class ComfyServer:
    """A real ComfyUI server (``python main.py``) on 127.0.0.1 with the pack in its custom_nodes.

    Attributes: url, port, base_dir, models_dir (``<base>/models/indigo``), extra_models_dir (the
    ``indigo:`` folder given through extra_model_paths.yaml), log_path, process.
    """

    def __init__(self, comfy_path: Path, base_dir: Path, python: str = sys.executable,
                 boot_timeout: float = 90.0, extra_args: tuple[str, ...] = ()) -> None:
        self.comfy_path = Path(comfy_path)
        self.base_dir = make_base_dir(base_dir, extra_dirs=("extra/indigo",))
        self.models_dir = self.base_dir / "models" / "indigo"
        self.extra_models_dir = self.base_dir / "extra" / "indigo"
        self.log_path = self.base_dir / "comfyui.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        yaml_path = self.base_dir / "extra_model_paths.yaml"
        yaml_path.write_text(
            "indigo_tests:\n"
            f"    base_path: {self.base_dir / 'extra'}\n"
            "    indigo: indigo\n"
        )
        cmd = [
            python, str(self.comfy_path / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base_dir), "--database-url", "sqlite:///:memory:",
            "--disable-auto-launch", "--disable-api-nodes", "--extra-model-paths-config", str(yaml_path),
            *extra_args,
        ]
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)  # the pack must load from custom_nodes/ alone, as for users
        env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DO_NOT_TRACK="1")
        self._log = open(self.log_path, "wb")
        # Its own session (a Ctrl-C meant for the caller does not hit it mid-request; the caller's
        # stop() ends it), and on Linux it is told to stop when the caller dies, however it dies.
        self.process = subprocess.Popen(cmd, cwd=str(self.base_dir), stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True, preexec_fn=_stop_with_parent)
        self._wait_ready(boot_timeout)

    # ------------------------------------------------------------------ life cycle
    def _wait_ready(self, timeout: float) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.process.poll() is not None:
                raise HostSetupError(f"ComfyUI exited with code {self.process.returncode} while starting.\n{self.log_tail()}")
            try:
                status, _ = self.get("/system_stats", timeout=2)
                if status == 200:
                    self.boot_seconds = time.monotonic() - t0
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise HostSetupError(f"ComfyUI did not answer on {self.url} within {timeout:.0f} s.\n{self.log_tail()}")

    def stop(self) -> None:
        """End the server process this object started (and only it)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        if not self._log.closed:
            self._log.close()

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the server's log (stdout and stderr)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "---- ComfyUI log (tail) ----\n" + "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------ HTTP
    def request(self, method: str, path: str, payload: Any = None, timeout: float = 30) -> tuple[int, Any]:
        """(HTTP status, decoded JSON or text) of one request; HTTP errors are returned, not raised."""
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with _LOOPBACK.open(req, timeout=timeout) as resp:
                return resp.status, _decode(resp.read(), resp.headers.get_content_type())
        except urllib.error.HTTPError as err:
            return err.code, _decode(err.read(), err.headers.get_content_type() if err.headers else "")

    def get(self, path: str, timeout: float = 30) -> tuple[int, Any]:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, payload: Any, timeout: float = 30) -> tuple[int, Any]:
        return self.request("POST", path, payload, timeout=timeout)

    def object_info(self, node_id: Optional[str] = None) -> dict:
        """GET /object_info (all nodes) or /object_info/<node_id> (that node's entry, unwrapped)."""
        status, body = self.get("/object_info" if node_id is None else f"/object_info/{node_id}")
        if status != 200:
            raise AssertionError(f"GET /object_info: expected HTTP 200, got {status}: {body}")
        if node_id is not None:
            if node_id not in body:
                raise AssertionError(f"/object_info has no {node_id!r}.\n{self.log_tail()}")
            return body[node_id]
        return body

    def queue(self, prompt: dict, client_id: Optional[str] = None) -> tuple[int, dict]:
        """POST /prompt. Returns (HTTP status, JSON): 200 with prompt_id, or 400 with the error."""
        return self.post("/prompt", {"prompt": prompt, "client_id": client_id or str(uuid.uuid4())})

    def history(self, prompt_id: str) -> Optional[dict]:
        """The history entry of a finished prompt, or None while it is queued or running."""
        status, body = self.get(f"/history/{prompt_id}")
        if status != 200:
            raise AssertionError(f"GET /history/{prompt_id}: expected HTTP 200, got {status}: {body}")
        return body.get(prompt_id)

    def run(self, prompt: dict, timeout: float = 120) -> dict:
        """Queue ``prompt`` and wait for it to finish; returns the history entry
        (``outputs``, ``status``: {status_str, completed, messages}), whether it succeeded or not.
        A prompt refused at validation raises AssertionError with the server's error JSON."""
        status, body = self.queue(prompt)
        if status != 200:
            raise AssertionError(f"POST /prompt refused the prompt (HTTP {status}): {json.dumps(body, indent=1)}")
        prompt_id = body["prompt_id"]
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            entry = self.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            if self.process.poll() is not None:
                raise AssertionError(f"ComfyUI died while running the prompt.\n{self.log_tail()}")
            time.sleep(0.2)
        self.post("/interrupt", {})
        raise AssertionError(f"prompt {prompt_id} did not finish within {timeout:.0f} s.\n{self.log_tail()}")


def history_error(entry: dict) -> str:
    """The exception message of a failed history entry ("" if there is none)."""
    for event, data in entry.get("status", {}).get("messages", []):
        if event == "execution_error":
            return error_text(data)
    return ""


def _decode(raw: bytes, content_type: str) -> Any:
    text = raw.decode("utf-8", errors="replace")
    if "json" in (content_type or "") or text[:1] in "{[":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


# =========================================================================== command line


def _cmd_load_pack(ns: argparse.Namespace) -> int:
    """Import ComfyUI and load only this pack in a fresh interpreter, with some modules made
    unimportable (``--block``); print a JSON report: loaded, node ids, log lines."""
    for name in ns.block:
        sys.modules[name] = None  # makes `import name` raise ImportError
    base_dir = make_base_dir(Path(ns.base))
    sys.path.insert(0, str(comfyui_path()))
    from comfy.cli_args import args

    args.cpu = True
    args.base_directory = str(base_dir)
    import folder_paths  # noqa: F401
    import utils.extra_config  # noqa: F401
    import nodes

    log: list[str] = []
    logging.getLogger().addHandler(_ListHandler(log))
    module_path = str(base_dir / "custom_nodes" / PACK_NAME)
    loaded = asyncio.run(nodes.load_custom_node(module_path, set(), module_parent="custom_nodes"))
    loaded_inns = {}
    for name in ns.load:
        cls = nodes.NODE_CLASS_MAPPINGS["INDIGO_LoadINN"]
        try:
            out = cls.execute(inn_name=name)
            loaded_inns[name] = out.ui["indigo_inn"][0]
        except Exception as exc:  # reported, the test decides
            loaded_inns[name] = {"error": f"{type(exc).__name__}: {exc}"}
    report = {
        "loaded": bool(loaded),
        "inns": loaded_inns,
        "node_ids": sorted(k for k, v in nodes.NODE_CLASS_MAPPINGS.items()
                           if getattr(v, "RELATIVE_PYTHON_MODULE", "") == f"custom_nodes.{PACK_NAME}"),
        "blocked_importable": {name: sys.modules.get(name) is not None for name in ns.block},
        "log": log,
    }
    print("REPORT " + json.dumps(report))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    lp = sub.add_parser("load-pack", help="load the pack into ComfyUI in this interpreter and report")
    lp.add_argument("--base", required=True, help="base directory to create")
    lp.add_argument("--block", action="append", default=[], help="module to make unimportable")
    lp.add_argument("--load", action="append", default=[], help="then run Load INN on this file name")
    ns = parser.parse_args(argv)
    return {"load-pack": _cmd_load_pack}[ns.command](ns)


if __name__ == "__main__":
    sys.exit(main())
