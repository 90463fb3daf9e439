"""What INDIGO guidance costs on top of sampling: per-step time and peak memory, one run.

    python -m benchmarks.bench_guidance            # 512x512, SD1.5-size UNet + SD VAE
    python -m benchmarks.bench_guidance --quick    # a short CPU-friendly run (smaller, fewer repeats)
                                                   # (--overwrite: replace the committed results file)

Models are ComfyUI 0.3.75's own classes in SD1.5's exact layouts with seeded random weights
(tests/host/models.py): the UNet (BaseModel EPS, model_channels 320, ~860M parameters) and the SD
VAE (AutoencoderKL ch=128), loaded under inference mode as the server loads them; INNs are the
core's "latent-paper" and "pixel-paper" presets. Sampling goes through ComfyUI's own sampler
(comfy.sample.sample, euler, cfg 1) on a MODEL patched by the pack's Apply Guidance code.

Measured, all in one process:
- per-step time of unguided, LatentINN-guided and PixelINN-guided sampling: the time between
  successive sampler callbacks (so per-run set-up such as private copies and z_y = E(up(y)) is
  not counted), median over the steps of all repeats after a warm-up run; guidance only
  (regulariser and refinement off);
- one decoder forward + backward at the same size (the autograd PixelINN cannot avoid);
- peak memory of each (CUDA: max allocated; CPU: peak RSS sampled every 5 ms);
- whole runs with the paper's schedules (regulariser in the first 30% of the steps, refinement in
  the first half) for both INNs, whose ratio PixelINN/LatentINN is printed beside the paper's 1.88
  (Table VI: 18.37 s vs 9.76 s).

Writes JSON (default benchmarks/results/bench_guidance_<device>[_quick].json; an existing file is
refused before the run unless --overwrite) with, among others,
latent_over_unguided (target <= 1.10) and pixel_over_floor = PixelINN step / (unguided step +
decoder forward+backward) (target <= 1.25). The perceptual (LPIPS) term is off (w_p = 0) unless
--lpips is given and its offline weights are installed. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.inns import INN_CHOICES, inn_configs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from output_files import refuse_existing  # noqa: E402  (scripts/output_files.py)

PACK_ALIAS = "comfyui_indigo_bench"
PAPER_PIXEL_OVER_LATENT = 18.37 / 9.76  # Table VI


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short run: 256x256, 3 steps, one repeat")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default 512; --quick 256)")
    p.add_argument("--steps", type=int, default=None, help="steps of each timed run (default 8; --quick 3)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 3)")
    p.add_argument("--whole-steps", type=int, default=None, help="steps of the whole-run comparison (default 20)")
    p.add_argument("--inn", choices=INN_CHOICES, default="paper",
                   help="INN architectures: the paper's sizes (default) or the shipped default INNs' (benchmarks/inns.py)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--lpips", action="store_true", help="include the LPIPS term (w_p = 1) if its weights exist")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (CPU). On a shared machine 1 avoids threads spinning against "
                        "other processes, which slows small ops (the INN's) far more than large ones (the UNet's)")
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"),
                   help="ComfyUI 0.3.75 checkout (default: $COMFYUI_PATH or the test cache)")
    p.add_argument("--out", default=None, help="JSON file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    a = p.parse_args(argv)
    a.size = a.size or (256 if a.quick else 512)
    a.steps = a.steps or (3 if a.quick else 8)
    a.repeats = a.repeats or (1 if a.quick else 3)
    a.whole_steps = a.whole_steps or (4 if a.quick else 20)
    return a


# =========================================================================== set-up


def import_host(args):
    """ComfyUI on sys.path (before the repo root, whose nodes/ would shadow nodes.py), --cpu if
    there is no GPU, and the pack imported as a package the way ComfyUI imports it."""
    import torch

    comfy_path = Path(args.comfyui or Path.home() / ".cache" / "comfyui-indigo" / "ComfyUI-0.3.75").resolve()
    if not (comfy_path / "comfy").is_dir():
        sys.exit(f"no ComfyUI at {comfy_path}: pass --comfyui or set COMFYUI_PATH")
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    sys.path.insert(0, str(comfy_path))
    sys.path.insert(1, str(ROOT / "tests" / "host"))
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    import comfy.options  # noqa: F401
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = not use_cuda
    spec = importlib.util.spec_from_file_location(PACK_ALIAS, ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK_ALIAS] = pack
    spec.loader.exec_module(pack)
    return use_cuda


def module(name: str):
    return importlib.import_module(f"{PACK_ALIAS}.{name}")


class PeakMemory:
    """Peak memory during a block: CUDA max allocated, or peak RSS sampled by a thread (CPU)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.peak = 0

    def __enter__(self):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil

            proc = psutil.Process()
            self._stop = threading.Event()
            self.peak = proc.memory_info().rss

            def poll():
                while not self._stop.is_set():
                    self.peak = max(self.peak, proc.memory_info().rss)
                    time.sleep(0.005)

            self._thread = threading.Thread(target=poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
        return False


def timed(fn, cuda: bool) -> float:
    import torch

    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


# =========================================================================== the benchmark


def out_path(args, cuda: bool, name: str = "bench_guidance") -> Path:
    """--out, or the default results file of this device (and --quick)."""
    return Path(args.out) if args.out else \
        ROOT / "benchmarks" / "results" / f"{name}_{'cuda' if cuda else 'cpu'}{'_quick' if args.quick else ''}.json"


def main(argv=None) -> dict:
    args = parse_args(argv)
    cuda = import_host(args)
    out = out_path(args, cuda)
    refuse_existing([out], args.overwrite)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    import comfy.model_management as mm
    import comfy.sample
    import models as M  # tests/host/models.py: ComfyUI classes in SD layouts, seeded weights

    gp = module("nodes.guidance_patch")
    core = module("indigo_core")
    G = module("indigo_core.guidance")
    device = mm.get_torch_device()
    unet_dtype = torch.float16 if cuda else torch.float32
    log = lambda *a: print(*a, flush=True)  # noqa: E731

    log(f"device {device}, torch {torch.__version__}, size {args.size}, steps {args.steps}, repeats {args.repeats}")
    t0 = time.perf_counter()
    with torch.inference_mode():  # as the server loads weights: inference tensors
        model = M.sd15_unet_model(seed=0, dtype=unet_dtype, device=device if cuda else None)
        vae = M.sd_vae(seed=1)
    gen = torch.Generator().manual_seed(2)
    inns = inn_configs(module, args.inn)
    latent_inn = core.WaveletINN(inns["latent"][0]).eval().requires_grad_(False)
    pixel_inn = core.WaveletINN(inns["pixel"][0]).eval().requires_grad_(False)
    h = args.size // 8
    cond = [[torch.randn(1, 77, 768, generator=gen) * 0.1, {}]]
    y_pixel = torch.rand(1, 3, args.size // pixel_inn.config.scale, args.size // pixel_inn.config.scale, generator=gen)
    y_latent = torch.rand(1, 3, args.size // 4, args.size // 4, generator=gen)
    latent = torch.zeros(1, 4, h, h)
    log(f"models built in {time.perf_counter() - t0:.1f} s (UNet {unet_dtype}, VAE {vae.vae_dtype})")

    w_p = 0.0
    if args.lpips:
        try:
            module("indigo_core.metrics.lpips").load_lpips("alex")
            w_p = 1.0
        except Exception as exc:  # report and go on without the term
            log(f"LPIPS unavailable ({type(exc).__name__}: {exc}); w_p = 0")
    off = G.Schedule.off()
    settings = {
        "latent": G.GuidanceSettings(mode="latent_inn", regulariser=off),
        "pixel": G.GuidanceSettings(mode="pixel_inn", w_p=w_p, regulariser=off),
    }
    paper = {  # the paper's schedules: regulariser first 30%, refinement first half
        "latent": G.GuidanceSettings(mode="latent_inn", refine=G.RefineSettings()),
        "pixel": G.GuidanceSettings(mode="pixel_inn", w_p=w_p, refine=G.RefineSettings()),
    }
    inns = {"latent": (latent_inn, y_latent), "pixel": (pixel_inn, y_pixel)}

    def patched(kind, s):
        if kind == "unguided":
            return model
        inn, y = inns[kind]
        return gp.apply_guidance(model, gp.GuidanceSpec(s, inn=inn, measurement=y, vae=vae))

    def sample(m, steps, stamps=None):
        """One sampling run; with `stamps`, appends the time of each step's end (the callback)."""
        noise = comfy.sample.prepare_noise(latent, 0)

        def callback(step, x0, x, total):
            if stamps is not None:
                if cuda:
                    torch.cuda.synchronize()
                stamps.append(time.perf_counter())

        with torch.inference_mode():
            comfy.sample.sample(m, noise, steps, 1.0, "euler", "normal", cond, cond, latent, disable_pbar=True,
                                seed=0, callback=callback)

    results: dict = {
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__, "size": args.size, "latent": h, "unet_dtype": str(unet_dtype),
        "vae_dtype": str(vae.vae_dtype), "steps": args.steps, "repeats": args.repeats, "quick": args.quick,
        "sampler": "euler", "cfg": 1.0, "w_p": w_p, "inn": args.inn,
        "inn_presets": {d: label for d, (_, label) in inns.items()},
        "threads": torch.get_num_threads(),
    }
    kinds = ("unguided", "latent", "pixel")
    patched_models = {k: patched(k, settings.get(k)) for k in kinds}
    for k in kinds:
        sample(patched_models[k], 2)  # warm-up: loads weights, builds kernels and caches
    # Round-robin over the modes, so that a busy machine slows all of them alike.
    per_step = {k: [] for k in kinds}
    peak = {k: 0 for k in kinds}
    for _ in range(args.repeats):
        for k in kinds:
            stamps: list = []
            with PeakMemory(cuda) as mem:
                sample(patched_models[k], args.steps, stamps)
            peak[k] = max(peak[k], mem.peak)
            per_step[k] += [b - a for a, b in zip(stamps, stamps[1:])]
    step_s = {}
    for k in kinds:
        step_s[k] = statistics.median(per_step[k])
        log(f"{k:9s} {step_s[k] * 1e3:9.1f} ms/step  peak {peak[k] / 2**20:8.0f} MiB  "
            f"(steps: {', '.join(f'{v * 1e3:.0f}' for v in per_step[k])} ms)")

    # One decoder forward + backward at the same size, as the PixelINN step does it.
    ae = gp.ComfyVAEAutoencoder(vae)
    z = torch.randn(1, 4, h, h, generator=gen).to(ae.device)

    def fwd_bwd():
        with torch.inference_mode(False), torch.enable_grad():
            zz = z.clone().to(ae.dtype).requires_grad_(True)
            x = ae.decode(zz)
            (g,) = torch.autograd.grad(x.float().square().mean(), zz)
        return g

    fwd_bwd()
    dec = []
    with PeakMemory(cuda) as mem:
        for _ in range(max(args.repeats, 2)):
            dec.append(timed(fwd_bwd, cuda))
    step_s["decoder_fwd_bwd"] = statistics.median(dec)
    peak["decoder_fwd_bwd"] = mem.peak
    log(f"decoder fwd+bwd {step_s['decoder_fwd_bwd'] * 1e3:9.1f} ms  peak {mem.peak / 2**20:8.0f} MiB")

    # Whole runs with the paper's schedules.
    paper_models = {k: patched(k, paper.get(k)) for k in kinds}
    runs = {k: [] for k in kinds}
    for _ in range(max(1, args.repeats - 1)):
        for k in kinds:
            runs[k].append(timed(lambda: sample(paper_models[k], args.whole_steps), cuda))
    whole = {k: statistics.median(runs[k]) for k in kinds}
    for k in kinds:
        log(f"whole run {k:9s} {whole[k]:8.2f} s ({args.whole_steps} steps)")

    results.update({
        "step_seconds": step_s,
        "peak_memory_bytes": peak,
        "peak_memory_kind": "cuda_max_allocated" if cuda else "process_rss",
        "latent_over_unguided": step_s["latent"] / step_s["unguided"],
        "pixel_over_floor": step_s["pixel"] / (step_s["unguided"] + step_s["decoder_fwd_bwd"]),
        "pixel_over_unguided": step_s["pixel"] / step_s["unguided"],
        "whole_run_steps": args.whole_steps,
        "whole_run_seconds": whole,
        "whole_run_pixel_over_latent": whole["pixel"] / whole["latent"],
        "paper_pixel_over_latent": PAPER_PIXEL_OVER_LATENT,
        "targets": {"latent_over_unguided": 1.10, "pixel_over_floor": 1.25},
    })
    log(f"latent_over_unguided {results['latent_over_unguided']:.3f} (target <= 1.10)")
    log(f"pixel_over_floor     {results['pixel_over_floor']:.3f} (target <= 1.25)")
    log(f"whole run PixelINN / LatentINN {results['whole_run_pixel_over_latent']:.2f} "
        f"(paper: {PAPER_PIXEL_OVER_LATENT:.2f})")
    module("indigo_core.io.atomic").atomic_write_text(out, json.dumps(results, indent=2, sort_keys=True) + "\n")
    log(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
