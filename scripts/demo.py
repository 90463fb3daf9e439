"""The demo: restore a bundled photo end to end through a real ComfyUI, with nothing downloaded.

    ./scripts/demo.sh [--photo FILE] [--crop N] [--out DIR]

Starts ComfyUI headless on 127.0.0.1 with the pack in its custom_nodes (tests/host/host_harness.py's
server), queues workflows/api/indigo_demo_restore_compare.json on the photo (degraded there with
the x4 medium preset) and writes into --out:

    latent_inn.png   the LatentINN restoration      pixel_inn.png  the PixelINN restoration
    degraded.png     the measurement y              comparison.png degraded input, bicubic, stage-1
    metrics.md       the printed table                             restorer, LatentINN, PixelINN,
                                                                   ground truth (PSNR, LPIPS)

Run it through scripts/demo.sh, which prepares the environment first (scripts/setup_env.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "host"))
import host_harness  # noqa: E402  (the server runner the host tests use)
sys.path.insert(0, str(REPO_ROOT))
from indigo_core.argtypes import positive, positive_int, ranged  # noqa: E402
from output_files import copy_file, write_text  # noqa: E402  (scripts/output_files.py)

WORKFLOW = REPO_ROOT / "workflows" / "api" / "indigo_demo_restore_compare.json"
DEFAULT_PHOTO = REPO_ROOT / "assets" / "photos" / "gcompris_chambord.png"
INPUT_NAME = "indigo_demo_photo.png"
#: SaveImage node of each output file, and the CompareImages node with the metrics text.
SAVED = {"latent_inn.png": "16", "pixel_inn.png": "17", "comparison.png": "18", "degraded.png": "20"}
COMPARE_NODE = "15"
REQUIRED_MODELS = ("models/indigo-latent-inn.safetensors", "models/indigo-pixel-inn-x4.safetensors",
                   "models/indigo-estimator.safetensors", "models/indigo-restorer-x4.safetensors", "models/prior/indigo-prior-unet.safetensors",
                   "models/prior/indigo-prior-vae.safetensors")


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def load_workflow(steps: int | None = None) -> dict:
    graph = json.loads(WORKFLOW.read_text())
    if steps is not None:
        for node in graph.values():
            if node["class_type"] == "INDIGO_GuidedKSampler":
                node["inputs"]["steps"] = int(steps)
    return graph


def restore_defaults(mode: str):
    """indigo_core.restore.pipeline.default_settings(mode): the settings the demo graph must hold."""
    from indigo_core.restore.pipeline import default_settings

    return default_settings(mode)


def sampler_widgets(s) -> dict:
    """A RestoreSettings as INDIGO Guided KSampler widget values (the restore CLI and the node
    take the same settings); also used by tools/make_workflows.py."""
    return dict(steps=s.steps, denoise=s.denoise, seed=s.seed, sampler_name=s.sampler, scheduler=s.scheduler,
                zeta=s.zeta, w_dc=s.w_dc, w_p=s.w_p, step_size=s.step_size, max_step=s.max_step or 0.0,
                colour_fix=s.colour_fix)


def regulariser_widgets(s) -> dict:
    """A RestoreSettings' regulariser as INDIGO Regulariser widget values."""
    on = s.regulariser_end > 0
    return {"schedule": "fraction" if on else "off", "start": 0.0, "end": s.regulariser_end if on else 0.3}


#: The demo graph's Stage-1 Restore node.
STAGE1_NODE = "23"


def sync_workflow_defaults() -> bool:
    """Write the restore CLI's per-mode defaults into the demo workflow: the two samplers, their
    Colour Fix nodes and their regularisers, and the stage-1 image: with stage1 "restorer" the
    samplers start from Stage-1 Restore's output (`start_image`) and the Colour Fix nodes refer to
    it; with "bicubic" both use the measurement. True if the file changed."""
    graph = json.loads(WORKFLOW.read_text())
    before = json.dumps(graph, sort_keys=True)
    for node in graph.values():
        if node["class_type"] != "INDIGO_GuidedKSampler":
            continue
        title = node["_meta"]["title"]
        s = restore_defaults({"LatentINN": "latent", "PixelINN": "pixel"}[title])
        node["inputs"].update(sampler_widgets(s))
        node["inputs"]["start_from_measurement"] = True
        reference = [STAGE1_NODE, 0] if s.stage1 == "restorer" else node["inputs"]["measurement"]
        if s.stage1 == "restorer":
            node["inputs"]["start_image"] = [STAGE1_NODE, 0]
        else:
            node["inputs"].pop("start_image", None)
        for fix in graph.values():  # the Colour Fix after this sampler's VAE Decode
            if fix["class_type"] == "INDIGO_ColourFix" and fix["_meta"]["title"] == f"colour fix ({title})":
                fix["inputs"]["method"] = s.colour_fix
                fix["inputs"]["levels"] = s.colour_levels
                fix["inputs"]["measurement"] = reference
        graph[node["inputs"]["regulariser"][0]]["inputs"].update(regulariser_widgets(s))
    if json.dumps(graph, sort_keys=True) == before:
        return False
    write_text(WORKFLOW, json.dumps(graph, indent=2) + "\n")
    return True


LOCK = ".indigo-demo.lock"


def _claim(folder: Path) -> bool:
    """Take `folder` for this run: create it and its lock file atomically (a lock left by a demo
    that is no longer running is taken over). False when another running demo holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(lock.read_text().strip() or "0"), 0)
                return False  # a running demo writes here
            except (ValueError, ProcessLookupError, OSError):
                lock.unlink(missing_ok=True)  # stale: its demo is gone
                continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return True
    return False


def free_out_dir(out: Path, overwrite: bool) -> Path:
    """`out`, or (when it already holds demo outputs and overwrite is off, or another demo is
    writing there) the first free `out`-2, `out`-3, ..., claimed for this run (`_claim`): an earlier
    demo's files are never replaced silently, and two demos at once never share a folder."""
    names = list(SAVED) + ["metrics.md"]
    k, candidate = 1, out
    while True:
        if (overwrite and k == 1) or not any((candidate / n).exists() for n in names):
            if _claim(candidate):
                break
        k += 1
        candidate = out.with_name(f"{out.name}-{k}")
    if candidate != out:
        say(f"{out} holds an earlier demo's files or is in use (kept; --overwrite replaces them): writing to {candidate}")
    return candidate


def release_out_dir(out: Path) -> None:
    (out / LOCK).unlink(missing_ok=True)


#: The largest image the demo restores (pixels): a CPU run of more takes long and much memory.
MAX_PIXELS = 1024 * 1024


def prepare_photo(photo: Path, crop: int | None, target: Path) -> tuple[int, int]:
    """Copy the photo (its centre crop x crop if given; sides cut to multiples of 32) to `target`.
    SystemExit with the reason for a missing or unreadable file, a photo under 32x32 pixels, or
    one over MAX_PIXELS without --crop."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(photo)
        im.load()
    except FileNotFoundError:
        raise SystemExit(f"--photo {photo}: no such file")
    except (UnidentifiedImageError, OSError) as exc:
        raise SystemExit(f"--photo {photo}: not an image PIL can read ({exc})")
    with im:
        im = im.convert("RGB")
        w, h = im.size
        cw, ch = (crop, crop) if crop else (w, h)
        cw, ch = min(cw, w) // 32 * 32, min(ch, h) // 32 * 32
        if cw < 32 or ch < 32:
            raise SystemExit(f"--photo {photo}: expected at least 32x32 pixels, got {w}x{h}")
        if cw * ch > MAX_PIXELS:
            raise SystemExit(f"--photo {photo}: {cw}x{ch} pixels is more than the demo restores on a CPU "
                             f"({MAX_PIXELS // (1 << 20)} megapixel); pass --crop N (e.g. --crop 512) for its centre")
        left, top = (w - cw) // 2, (h - ch) // 2
        im.crop((left, top, left + cw, top + ch)).save(target)
    return cw, ch


#: --crop: at least one 32-pixel block.
_crop_size = ranged(int, lambda v: v >= 32, "a crop of at least 32 pixels")


def lpips_weights_missing() -> str | None:
    """Why the workflow's LPIPS terms cannot run (weights not converted), or None."""
    from indigo_core.metrics.weights import PerceptualWeightsMissing, locate_backbone

    try:
        locate_backbone("alex")
    except PerceptualWeightsMissing as exc:
        return str(exc)
    return None


async def _follow(server, graph: dict, timeout: float) -> str:
    """Queue `graph` and show its progress from the server's websocket; returns the prompt id."""
    import aiohttp
    from tqdm import tqdm

    client_id = str(uuid.uuid4())
    titles = {k: v.get("_meta", {}).get("title", v["class_type"]) for k, v in graph.items()}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://127.0.0.1:{server.port}/ws?clientId={client_id}") as ws:
            status, body = server.queue(graph, client_id)
            if status != 200 or (isinstance(body, dict) and body.get("node_errors")):
                raise SystemExit(f"ComfyUI refused the workflow (HTTP {status}):\n{json.dumps(body, indent=1)}")
            prompt_id = body["prompt_id"]
            bar, t0 = None, time.monotonic()
            while True:
                left = timeout - (time.monotonic() - t0)
                if left <= 0:
                    server.post("/interrupt", {})
                    raise SystemExit(f"the workflow did not finish within {timeout:.0f} s")
                try:
                    msg = await ws.receive(timeout=left)
                except (asyncio.TimeoutError, TimeoutError):
                    server.post("/interrupt", {})
                    raise SystemExit(f"the workflow did not finish within {timeout:.0f} s (--timeout)")
                if msg.type != aiohttp.WSMsgType.TEXT:
                    if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        if bar is not None:
                            bar.close()
                        raise SystemExit("\nlost the connection to ComfyUI\n" + server.log_tail(30))
                    continue  # binary preview images
                event = json.loads(msg.data)
                data = event.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                kind = event.get("type")
                if kind == "executing":
                    if bar is not None:
                        bar.close()
                        bar = None
                    if data.get("node") is None:
                        return prompt_id
                    say(f"running {titles.get(data['node'], data['node'])}")
                elif kind == "progress":
                    if bar is None or bar.total != data["max"]:
                        if bar is not None:
                            bar.close()
                        bar = tqdm(total=data["max"], desc="  steps", unit="step", leave=False)
                    bar.n = data["value"]
                    bar.refresh()
                elif kind == "execution_error":
                    raise SystemExit("the workflow failed: " + host_harness.error_text(data))
                elif kind == "execution_success":
                    return prompt_id


def collect(server, prompt_id: str, out: Path) -> str:
    """Copy the saved images into `out`; returns the CompareImages metrics text."""
    # The websocket's last "executing" event comes before the server files the prompt's history.
    entry, t0 = None, time.monotonic()
    while time.monotonic() - t0 < 30.0:
        entry = server.history(prompt_id)
        if entry is not None and entry.get("status", {}).get("completed") is not None:
            break
        time.sleep(0.1)
    if entry is None or entry.get("status", {}).get("status_str") != "success":
        raise SystemExit(f"the workflow did not succeed: {host_harness.history_error(entry or {})}")
    outputs = entry["outputs"]
    out.mkdir(parents=True, exist_ok=True)
    for name, node in SAVED.items():
        img = outputs[node]["images"][0]
        src = server.base_dir / "output" / img.get("subfolder", "") / img["filename"]
        copy_file(src, out / name)
    text = outputs[COMPARE_NODE]["text"]
    return text[0] if isinstance(text, list) else str(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photo", type=Path, default=DEFAULT_PHOTO, help="ground-truth photo (default: a bundled one)")
    ap.add_argument("--crop", type=_crop_size, default=None,
                    help="use the centre crop of this size, >= 32 (default: the whole photo, up to 1 megapixel)")
    ap.add_argument("--steps", type=positive_int, default=None, help="sampler steps (default: the workflow's)")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "demo", help="output folder")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier demo's files in --out")
    ap.add_argument("--sync-workflow", action="store_true",
                    help="only write the restore CLI's defaults into the demo workflow file, then exit")
    ap.add_argument("--timeout", type=positive, default=600.0, help="seconds allowed for the workflow")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the ComfyUI process (default 1: on a small CPU shared with other "
                         "work, several threads of one process wait for each other and run many times slower; "
                         "0 leaves torch's default)")
    args = ap.parse_args(argv)

    if args.sync_workflow:
        say(f"{WORKFLOW.name}: " + ("updated" if sync_workflow_defaults() else "already in sync"))
        return 0
    t_start = time.monotonic()
    missing = [m for m in REQUIRED_MODELS if not (REPO_ROOT / m).is_file()]
    if missing:
        raise SystemExit(f"the pack's bundled models are missing: {missing}")
    why = lpips_weights_missing()
    if why:
        raise SystemExit(f"the LPIPS weights the workflow uses are missing ({why}); run ./scripts/demo.sh once "
                         "with network access to convert them")
    if args.threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read by the ComfyUI process's torch
    # a kill or a closed terminal ends the run like Ctrl-C: the server is stopped, the folders tidied
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    base = Path(tempfile.mkdtemp(prefix="indigo-demo-"))
    photo = base / INPUT_NAME
    try:  # the photo is read and checked before ComfyUI starts and before an output folder is taken
        w, h = prepare_photo(args.photo, args.crop, photo)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    server = None
    args.out = free_out_dir(args.out, args.overwrite)
    try:
        say("starting ComfyUI (headless, 127.0.0.1, CPU) with the pack")
        server = host_harness.ComfyServer(host_harness.comfyui_path(), base / "comfy")
        say(f"ComfyUI ready on {server.url} after {server.boot_seconds:.1f} s")
        shutil.copyfile(photo, server.base_dir / "input" / INPUT_NAME)
        say(f"restoring {args.photo.name} ({w}x{h}; degraded x4 with the medium preset inside the workflow)")
        t0 = time.monotonic()
        prompt_id = asyncio.run(_follow(server, load_workflow(args.steps), args.timeout))
        run_s = time.monotonic() - t0
        table = collect(server, prompt_id, args.out)
        total = time.monotonic() - t_start
        header = (f"# comfyui-indigo demo: {args.photo.name}, {w}x{h}, x4 medium degradation\n\n"
                  "Small bundled prior and INNs (trained on a CPU); see README for real-model quality.\n\n")
        write_text(args.out / "metrics.md", header + table + "\n")
    except host_harness.HostSetupError as exc:
        raise SystemExit(str(exc)) from exc
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)
        release_out_dir(args.out)
        try:
            args.out.rmdir()  # only when empty: a run that wrote nothing leaves no folder
        except OSError:
            pass
    print()
    print(table)
    print()
    say(f"workflow {run_s:.1f} s, demo {total:.1f} s in all")
    for name in list(SAVED) + ["metrics.md"]:
        say(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
