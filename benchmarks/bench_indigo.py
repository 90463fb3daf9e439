"""INDIGO's cost against the floor physics sets: per-step time and peak memory at several sizes.

    nice -n 10 python -m benchmarks.bench_indigo --out benchmarks/results/cpu-<date>.json
    python -m benchmarks.bench_indigo --quick          # smoke run (256 px, a few minutes on a CPU)
                                                       # (--overwrite: replace the committed results file)

Models are ComfyUI 0.3.75's own classes in SD1.5's exact layouts with seeded random weights
(tests/host/models.py: UNet with model_channels 320, SD VAE ch 128), loaded under inference mode
as the server loads them; the INNs are the core's "latent-paper" and "pixel-paper" presets; the
guidance goes through the pack's own ComfyUI adapter (nodes/guidance_patch.py, tiled_patch.py).

What one step costs, per size (all in one process, one run):
- unguided: a step of ComfyUI's sampler (euler, cfg 1), timed between sampler callbacks;
- each guidance action, timed as the call the pack's post-CFG hook makes (GuidanceRun.step on the
  run the pack builds): LatentINN, LatentINN + refinement, the regulariser alone, PixelINN (z0);
  a guided step = unguided step + that call. Timing the call itself, rather than subtracting two
  whole steps, keeps the UNet's run-to-run noise out of a few-percent overhead. A real guided
  sampling run at the first size checks the sum (`sampler_check`).
- PixelINN z_t mode: the whole step (UNet forward and backward inside the call);
- the floors: one decode, one encode, one decoder forward+backward (the VAE module itself);
- Tiled INDIGO: a real sampling step with the tiled denoiser and LatentINN guidance.

Time is process CPU time on a CPU (the machine may be shared; wall time is recorded too) and
wall time around synchronisations on CUDA. Peak memory: CPU peak RSS (VmHWM, reset per
measurement), CUDA max_memory_allocated; both include the weights. The JSON holds the tables,
the machine, and the ratios under fixed keys (see RATIO_KEYS); anything not measured says why.
Not a test: numbers depend on the machine and its load. An existing --out file (or the default
one) is refused before the run unless --overwrite.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import logging
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_guidance import PAPER_PIXEL_OVER_LATENT, import_host, module, out_path  # noqa: E402
from benchmarks.inns import INN_CHOICES, inn_configs  # noqa: E402
from output_files import refuse_existing  # noqa: E402  (scripts/output_files.py, on sys.path by bench_guidance)

log = logging.getLogger("bench_indigo")

TARGETS = {"latent_over_unguided": 1.05, "pixel_over_floor": 1.10, "regulariser_over_floor": 1.10,
           "refine_overhead": 0.10, "tiled_2048_mem_over_untiled_512": 1.3}
RATIO_KEYS = tuple(TARGETS)
GB = 2 ** 30


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="image sides (default 512 1024)")
    p.add_argument("--pixel-sizes", type=int, nargs="*", default=None,
                   help="sizes with the PixelINN and decoder-gradient measurements (default: CPU up to 512, CUDA all)")
    p.add_argument("--zt-sizes", type=int, nargs="*", default=None,
                   help="sizes with the PixelINN z_t step (default: CPU 256, CUDA all); sizes outside --sizes get "
                        "their own unguided step and floor")
    p.add_argument("--tiled-sizes", type=int, nargs="*", default=None,
                   help="sizes with a Tiled INDIGO step (default 1024 2048); the key needs the largest = 4x the first")
    p.add_argument("--tile", type=int, default=64, help="denoiser tile (latent px), Tiled INDIGO's default 64")
    p.add_argument("--overlap", type=int, default=16, help="denoiser tile overlap (latent px), default 16")
    p.add_argument("--repeats", type=int, default=None, help="repeats of costly measurements (default 2; --quick 1)")
    p.add_argument("--cheap-repeats", type=int, default=5, help="repeats of measurements under ~5 s (default 5)")
    p.add_argument("--unguided-steps", type=int, default=3, help="sampler steps of the unguided run at the first size")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (CPU default 1: on a shared machine threads that wait for each other slow "
                        "the INN's many small ops far more than the UNet's large ones)")
    p.add_argument("--clock", choices=("auto", "cpu", "wall"), default="auto",
                   help="time basis of the ratios (auto: CPU time on a CPU, wall on CUDA)")
    p.add_argument("--no-lpips", action="store_true", help="PixelINN without its LPIPS term (w_p = 0)")
    p.add_argument("--no-optimisations", action="store_true", help="skip the before/after optimisation section")
    p.add_argument("--opt-size", type=int, default=None, help="size of the optimisation section (CPU 256, CUDA 512)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the INN (minutes on a CPU)")
    p.add_argument("--optimisations-only", action="store_true", help="only the before/after optimisation section")
    p.add_argument("--quick", action="store_true", help="smoke run: 256 px, tiled 256/512, one repeat")
    p.add_argument("--inn", choices=INN_CHOICES, default="paper",
                   help="INN architectures: the paper's sizes (default) or the shipped default INNs' (benchmarks/inns.py)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI 0.3.75 checkout")
    p.add_argument("--out", default=None, help="JSON file (default benchmarks/results/bench_indigo_<device>.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    a = p.parse_args(argv)
    if a.quick:
        a.sizes = a.sizes or [256]
        a.tiled_sizes = [512] if a.tiled_sizes is None else a.tiled_sizes
        a.repeats = a.repeats or 1
        a.cheap_repeats = min(a.cheap_repeats, 2)
        a.unguided_steps = min(a.unguided_steps, 2)
        a.opt_size = a.opt_size or 128
    a.sizes = a.sizes or [512, 1024]
    a.tiled_sizes = [1024, 2048] if a.tiled_sizes is None else a.tiled_sizes
    a.repeats = a.repeats or 2
    return a


# =========================================================================== measuring


def _libc():
    with contextlib.suppress(OSError):
        return ctypes.CDLL("libc.so.6")
    return None


_LIBC = _libc()


def release_freed_heap() -> None:
    """Before each measurement: collect garbage, and hand freed heap back to the OS (glibc keeps
    freed blocks below its mmap threshold, so RSS would carry one measurement's garbage into the
    next one's baseline; forcing every allocation through mmap instead doubles the INN's time in
    page faults)."""
    gc.collect()
    if _LIBC is not None:
        with contextlib.suppress(AttributeError):
            _LIBC.malloc_trim(0)


class Memory:
    """Peak memory since the last reset: CUDA max allocated; CPU VmHWM (reset through
    /proc/self/clear_refs), or an RSS-sampling thread where that is not allowed."""

    def __init__(self, cuda: bool) -> None:
        import torch

        self.torch, self.cuda = torch, cuda
        self.kind = "cuda_max_allocated" if cuda else "rss_vmhwm"
        self._peak, self._thread = 0, None
        if not cuda:
            try:
                self._clear()
            except OSError:
                self.kind = "rss_sampled_5ms"
                import psutil

                self._proc = psutil.Process()
                self._peak = self._proc.memory_info().rss
                self._thread = threading.Thread(target=self._poll, daemon=True)
                self._thread.start()

    @staticmethod
    def _clear() -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def _poll(self) -> None:
        while True:
            self._peak = max(self._peak, self._proc.memory_info().rss)
            time.sleep(0.005)

    def current(self) -> int:
        if self.cuda:
            return self.torch.cuda.memory_allocated()
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def peak_and_reset(self) -> int:
        if self.cuda:
            peak = self.torch.cuda.max_memory_allocated()
            self.torch.cuda.reset_peak_memory_stats()
            return peak
        if self._thread is not None:
            peak, self._peak = self._peak, self._proc.memory_info().rss
            return peak
        with open("/proc/self/status") as f:
            peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
        self._clear()
        return peak


class Clock:
    """Stamps (wall, cpu) after synchronising the device; `clock` picks the basis of the ratios."""

    def __init__(self, cuda: bool, clock: str) -> None:
        import torch

        self.torch, self.cuda = torch, cuda
        self.basis = ("wall" if cuda else "cpu") if clock == "auto" else clock

    def stamp(self) -> tuple[float, float]:
        if self.cuda:
            self.torch.cuda.synchronize()
        return time.perf_counter(), time.process_time()


class Bench:
    """Measurements and their records (self.rows: name -> row dict)."""

    def __init__(self, cuda: bool, clock: str) -> None:
        self.mem = Memory(cuda)
        self.clock = Clock(cuda, clock)
        self.rows: dict[str, dict] = {}
        self.skipped: dict[str, str] = {}

    def _row(self, name: str, walls, cpus, peaks, bases, note: str = "") -> dict:
        basis = walls if self.clock.basis == "wall" else cpus
        row = {"seconds": statistics.median(basis), "wall_s": statistics.median(walls),
               "cpu_s": statistics.median(cpus), "n": len(basis), "all_s": [round(v, 4) for v in basis],
               "peak_bytes": max(peaks), "work_bytes": max(p - b for p, b in zip(peaks, bases))}
        if note:
            row["note"] = note
        self.rows[name] = row
        log.info("%-34s %9.3f s  (wall %8.2f s)  peak %6.2f GB  (+%5.2f GB)  n=%d %s", name, row["seconds"],
                 row["wall_s"], row["peak_bytes"] / GB, row["work_bytes"] / GB, row["n"], note)
        return row

    def _once(self, fn) -> tuple:
        release_freed_heap()
        base = self.mem.current()
        self.mem.peak_and_reset()
        w0, c0 = self.clock.stamp()
        fn()
        w1, c1 = self.clock.stamp()
        return w1 - w0, c1 - c0, self.mem.peak_and_reset(), base

    def repeat(self, name: str, fn, n: int, note: str = "") -> dict:
        """Time `fn()` n times; median time, largest peak."""
        runs = [self._once(fn) for _ in range(max(1, n))]
        return self._row(name, *zip(*runs), note=note)

    def compare(self, names: dict, n: int) -> dict:
        """Several variants {row name: fn}, round-robin n times (a busy machine slows all alike)."""
        runs: dict = {k: [] for k in names}
        for _ in range(max(1, n)):
            for k, fn in names.items():
                runs[k].append(self._once(fn))
        return {k: self._row(k, *zip(*v)) for k, v in runs.items()}

    def steps(self, name: str, stamps: list, note: str = "") -> dict:
        """A row from sampler stamps [(wall, cpu, peak since previous stamp, memory at stamp)]."""
        walls = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])]
        cpus = [b[1] - a[1] for a, b in zip(stamps, stamps[1:])]
        peaks = [b[2] for b in stamps[1:]]
        bases = [a[3] for a in stamps[:-1]]
        return self._row(name, walls, cpus, peaks, bases, note)

    def skip(self, name: str, why: str) -> None:
        self.skipped[name] = why
        log.info("%-34s not measured: %s", name, why)


# =========================================================================== the benchmark


class Setup:
    """Models, INNs, inputs and the pack's modules, built once."""

    def __init__(self, args, cuda: bool) -> None:
        import torch

        import comfy.model_management as mm
        import models as M  # tests/host/models.py

        self.torch, self.mm, self.cuda, self.args = torch, mm, cuda, args
        self.gp = module("nodes.guidance_patch")
        self.tp = module("nodes.tiled_patch")
        self.host = module("nodes.host")
        self.G = module("indigo_core.guidance")
        core = module("indigo_core")
        self.device = mm.get_torch_device()
        self.unet_dtype = torch.float16 if cuda else torch.float32
        with torch.inference_mode():  # as the server loads weights: inference tensors
            self.model = M.sd15_unet_model(seed=0, dtype=self.unet_dtype, device=self.device if cuda else None)
            self.vae = M.sd_vae(seed=1)
        self.sd_vae = M.sd_vae
        mm.load_models_gpu([self.model])
        torch.manual_seed(2)
        inns = inn_configs(module, args.inn)
        self.inn_labels = {d: label for d, (_, label) in inns.items()}
        self.latent_inn = core.WaveletINN(inns["latent"][0]).eval().requires_grad_(False)
        self.pixel_inn = core.WaveletINN(inns["pixel"][0]).eval().requires_grad_(False)
        gen = torch.Generator().manual_seed(3)
        self.cond = [[torch.randn(1, 77, 768, generator=gen) * 0.1, {}]]
        self.degradation = torch.randn(1, 128, generator=gen)
        self.w_p = 0.0
        if not args.no_lpips:
            cached = Path(os.environ.get("INDIGO_CACHE", Path.home() / ".cache" / "comfyui-indigo")) / "metrics"
            if "INDIGO_METRICS_DIR" not in os.environ and cached.is_dir():  # where the test set-up converts them
                os.environ["INDIGO_METRICS_DIR"] = str(cached)
            try:
                module("indigo_core.metrics.lpips").load_lpips("alex")
                self.w_p = 1.0
            except Exception as exc:  # report and go on without the term
                log.warning("LPIPS unavailable (%s: %s): PixelINN runs with w_p = 0", type(exc).__name__, exc)
        self.fmt = self.model.model.latent_format
        self._steps = 0

    # ------------------------------------------------------------------ inputs
    def y(self, size: int, scale: int = 4):
        g = self.torch.Generator().manual_seed(size)
        return self.torch.rand(1, 3, size // scale, size // scale, generator=g)

    def z(self, size: int, seed: int = 5):
        g = self.torch.Generator().manual_seed(seed)
        return (self.torch.randn(1, 4, size // 8, size // 8, generator=g) * 2.0).to(self.device)

    def next_step(self) -> int:
        """A fresh step index for each call, so per-step actions (regulariser, refine) always run."""
        self._steps += 1
        return self._steps

    # ------------------------------------------------------------------ specs and runs
    def settings(self, mode: str, **kw):
        G = self.G
        kw.setdefault("regulariser", G.Schedule.off())
        if mode == "pixel_inn":
            kw.setdefault("w_p", self.w_p)
        return G.GuidanceSettings(mode=mode, **kw)

    def spec(self, settings, size: int, vae=None, **kw):
        """The pack's GuidanceSpec for `settings` at image size `size` (x4 measurement)."""
        inn = {"latent": self.latent_inn, "pixel": self.pixel_inn}.get(settings.inn_domain)
        y = None if settings.mode == "none" else self.y(size, 4)
        deg = self.degradation if inn is not None else None
        return self.gp.GuidanceSpec(settings, inn=inn, measurement=y, vae=vae or self.vae, degradation=deg, **kw)

    def run(self, spec, size: int):
        return spec.new_run((1, 4, size // 8, size // 8), device=self.device)

    # ------------------------------------------------------------------ sampling with stamps
    def sample(self, bench: Bench, m, size: int, steps: int) -> list:
        """One sampling run; returns stamps (start of step 0, then after each step)."""
        import comfy.sample

        torch = self.torch
        stamps: list = []

        def mark(*_a):
            w, c = bench.clock.stamp()
            stamps.append((w, c, bench.mem.peak_and_reset(), bench.mem.current()))

        class Start:  # innermost OUTER_SAMPLE wrapper: after the pack's per-run set-up
            def __call__(self, executor, *a, **k):
                mark()
                return executor(*a, **k)

            def __deepcopy__(self, memo):
                return self

        mm = m.clone()
        mm.add_wrapper_with_key(self.host.WrappersMP.OUTER_SAMPLE, "indigo_bench", Start())
        release_freed_heap()
        latent = torch.zeros(1, 4, size // 8, size // 8)
        noise = comfy.sample.prepare_noise(latent, 0)
        with torch.inference_mode():
            comfy.sample.sample(mm, noise, steps, 1.0, "euler", "normal", self.cond, self.cond, latent,
                                disable_pbar=True, seed=0, callback=lambda step, x0, x, total: mark())
        return stamps


def measure_size(S: Setup, bench: Bench, size: int, first: bool, args) -> None:
    torch, G, gp = S.torch, S.G, S.gp
    R, RC = (args.repeats if first else 1), args.cheap_repeats
    h = size // 8
    tag = f"{size}"
    N = 10 ** 6  # n_steps given to the calls: every call is a scheduled step of a long run
    avail = lambda: __import__("psutil").virtual_memory().available  # noqa: E731

    # --- unguided sampler steps
    steps = args.unguided_steps if first else 1
    bench.steps(f"unguided@{tag}", S.sample(bench, S.model, size, steps))

    # --- guidance calls on the runs the pack builds (set-up timed too: it runs once per run)
    z0 = S.z(size)
    # LatentINN with refinement on even steps: odd steps are plain LatentINN calls, so both are
    # timed on one run, alternately.
    holder: dict = {}
    latent = S.settings("latent_inn", refine=G.RefineSettings(schedule=G.Schedule.every_k(2)))
    bench.repeat(f"setup:latent@{tag}", lambda: holder.__setitem__("run", S.run(S.spec(latent, size), size)), 1)
    run = holder.pop("run")

    def latent_call(refine: bool):
        i = S.next_step()
        if (i % 2 == 0) != refine:
            i = S.next_step()
        run.step(z0, i, N)
        assert run.records[-1].refined == refine

    bench.compare({f"call:latent@{tag}": lambda: latent_call(False),
                   f"call:latent+refine@{tag}": lambda: latent_call(True)}, RC)
    del run
    run = S.run(S.spec(S.settings("none", regulariser=G.Schedule.all_steps()), size), size)
    regularise = lambda: run.step(z0, S.next_step(), N)  # noqa: E731

    # --- floors: the VAE module itself (what any implementation must run)
    ae = gp.ComfyVAEAutoencoder(S.vae, device=S.device)  # differentiable: the module, as the gradient modes use it
    with torch.inference_mode(False), torch.no_grad():
        x = ae.decode(z0.to(ae.dtype)).float().clamp(0, 1)
    holder = {}

    def decode():
        with torch.inference_mode(False), torch.no_grad():
            holder["x"] = ae.decode(z0.to(ae.dtype))

    def encode():
        with torch.inference_mode(False), torch.no_grad():
            ae.encode(x.to(ae.dtype))

    if first:  # the regulariser and its floor, interleaved
        bench.compare({f"call:regulariser@{tag}": regularise, f"floor:decode@{tag}": decode,
                       f"floor:encode@{tag}": encode}, R)
        holder.clear()
    else:
        bench.repeat(f"call:regulariser@{tag}", regularise, R)
        bench.skip(f"floor:decode+encode@{tag}", "measured at the first size only (time budget)")
    del run, regularise

    if size in pixel_sizes(S, args):
        measure_pixel(S, bench, size, R, ae, z0, zt=size in zt_sizes(S, args))
    else:
        for k in ("floor:decoder_fwd_bwd", "call:pixel", "step:pixel_zt"):
            bench.skip(f"{k}@{tag}", "not in --pixel-sizes (a whole-image decoder gradient at this size "
                                     "is too slow / too large for this machine; see --pixel-sizes)")
    del ae, x

    # --- a real guided sampling run: checks unguided + call, and gives the guided step's peak memory
    if first:
        sampler_check(S, bench, size, args)
    log.info("free memory now %.1f GB", avail() / GB)


def sampler_check(S: Setup, bench: Bench, size: int, args) -> None:
    """A real LatentINN-guided sampling run, with the pack's post-CFG hook timed inside each step:
    the step's peak memory (the untiled baseline of the tiled key), and the guidance's share of
    each step measured at the same moment as the step itself (a busy machine slows both alike)."""
    gp = S.gp
    spec = S.spec(S.settings("latent_inn"), size)
    m = gp.apply_guidance(S.model, spec)
    hook_times: list = []
    hooks = m.model_options["sampler_post_cfg_function"]

    class Timed:
        def __init__(self, fn):
            self.fn = fn

        def __call__(self, a):
            w0, c0 = bench.clock.stamp()
            out = self.fn(a)
            w1, c1 = bench.clock.stamp()
            hook_times.append((w1 - w0, c1 - c0))
            return out

        def __deepcopy__(self, memo):
            return self

    m.model_options["sampler_post_cfg_function"] = [Timed(f) if isinstance(f, gp._PostCFG) else f for f in hooks]
    stamps = S.sample(bench, m, size, args.unguided_steps)
    row = bench.steps(f"sampler_check:latent@{size}", stamps, note="real sampler, LatentINN-guided")
    steps_w = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])]
    steps_c = [b[1] - a[1] for a, b in zip(stamps, stamps[1:])]
    use = steps_w if bench.clock.basis == "wall" else steps_c
    hooks_t = [h[0] if bench.clock.basis == "wall" else h[1] for h in hook_times]
    if len(hooks_t) == len(use):
        row["hook_s"] = [round(v, 4) for v in hooks_t]
        row["step_over_step_minus_hook"] = statistics.median(t / (t - k) for t, k in zip(use, hooks_t))
        log.info("in-run LatentINN step / (step - guidance call): %.4f (hook %s s)", row["step_over_step_minus_hook"],
                 ", ".join(f"{v:.3f}" for v in hooks_t))


def pixel_sizes(S: Setup, args) -> list:
    return args.pixel_sizes if args.pixel_sizes is not None else [s for s in args.sizes if S.cuda or s <= 512]


def zt_sizes(S: Setup, args) -> list:
    return args.zt_sizes if args.zt_sizes is not None else (args.sizes if S.cuda else [256])


def measure_pixel(S: Setup, bench: Bench, size: int, R: int, ae, z0, zt: bool, both: bool = False) -> None:
    """The decoder-gradient floor, the PixelINN z0 call and (if `zt`) the z_t step at `size`.

    The call runs with default settings when its memory (scaled from a smaller size) fits what
    this machine has free, else with the INN checkpointed (checkpoint_inn, several GB less; noted
    in the row). `both`: measure the two configurations (at a small size, for that scaling)."""
    torch = S.torch
    tag = f"{size}"

    def fwd_bwd():
        with torch.inference_mode(False), torch.enable_grad():
            zz = z0.clone().to(ae.dtype).requires_grad_(True)
            out = ae.decode(zz)
            torch.autograd.grad(out.float().square().mean(), zz)

    free = __import__("psutil").virtual_memory().available
    need = scaled_need(bench, "call:pixel", size, 15 * GB * (size / 512) ** 2)
    need_ckpt = scaled_need(bench, "call:pixel+checkpoint_inn", size, 8 * GB * (size / 512) ** 2)
    fits = S.cuda or free > need + 2 * GB
    if not fits and free < need_ckpt + 2 * GB:
        for k in ("floor:decoder_fwd_bwd", "call:pixel", "step:pixel_zt"):
            bench.skip(f"{k}@{tag}", f"needs about {need_ckpt / GB:.0f} GB more even with checkpoint_inn, "
                                     f"{free / GB:.0f} GB free")
        return
    settings = S.settings("pixel_inn")
    configs = {"call:pixel": {}, "call:pixel+checkpoint_inn": {"checkpoint_inn": True}}
    if not both:
        configs = {"call:pixel": configs["call:pixel" if fits else "call:pixel+checkpoint_inn"]}
    variants = {f"floor:decoder_fwd_bwd@{tag}": fwd_bwd}
    for name, options in configs.items():
        holder: dict = {}
        spec = S.spec(settings, size)
        spec.run_options = dict(options)
        bench.repeat(f"setup:pixel@{tag}", lambda: holder.__setitem__("run", S.run(spec, size)), 1)
        variants[f"{name}@{tag}"] = (lambda r=holder.pop("run"): r.step(z0, S.next_step(), 10 ** 6))
    bench.compare(variants, R)
    for name, options in configs.items():
        note = f"z0 mode, w_p={settings.w_p:g}"
        if options:
            note += ", checkpoint_inn"
        if not both and not fits:
            note += (f" (default settings need about {need / GB:.0f} GB more than the weights; "
                     f"{free / GB:.0f} GB were free)")
        bench.rows[f"{name}@{tag}"]["note"] = note
    del variants
    if zt:
        measure_zt(S, bench, size)
    else:
        bench.skip(f"step:pixel_zt@{tag}", "not in --zt-sizes (on a CPU the UNet's backward at this size needs "
                                           "more memory than this machine has free; see the smaller size)")


def scaled_need(bench: Bench, prefix: str, size: int, default: float) -> float:
    """Working memory of `prefix` at `size`, scaled (x pixels) from the largest smaller size measured."""
    done = [(int(k.split("@")[1]), r["work_bytes"]) for k, r in bench.rows.items() if k.startswith(prefix + "@")]
    done = [(s, w) for s, w in done if s < size]
    return max(done)[1] * (size / max(done)[0]) ** 2 if done else default


def measure_small(S: Setup, bench: Bench, size: int, args) -> None:
    """A size outside --sizes for the z_t mode: unguided step, floor, z0 call, z_t step."""
    bench.steps(f"unguided@{size}", S.sample(bench, S.model, size, 2))
    ae = S.gp.ComfyVAEAutoencoder(S.vae, device=S.device)
    measure_pixel(S, bench, size, 1, ae, S.z(size), zt=True, both=True)


def measure_zt(S: Setup, bench: Bench, size: int) -> None:
    """PixelINN z_t mode: the whole step runs inside the call (UNet forward and backward)."""
    torch, gp = S.torch, S.gp
    tag = f"{size}"
    base = S.model.model
    params = sum(p.numel() * p.element_size() for p in base.diffusion_model.parameters())
    need = params + scaled_need(bench, "step:pixel_zt", size, 4 * GB * (size / 256) ** 2)  # + a private UNet copy
    free = __import__("psutil").virtual_memory().available
    if not S.cuda and free < need + 2 * GB:
        bench.skip(f"step:pixel_zt@{tag}", f"needs about {need / GB:.0f} GB, {free / GB:.0f} GB free")
        return
    settings = S.settings("pixel_inn", grad_wrt="zt")
    run = S.run(S.spec(settings, size), size)
    # As the pack's DIFFUSION_MODEL wrapper does: differentiate through a normal (non-inference) copy.
    private = gp.private_frozen_module(base.diffusion_model)
    original = base.diffusion_model
    sigma = torch.tensor([7.0], device=S.device)
    cond = S.cond[0][0].to(S.device, S.unet_dtype)
    fmt = S.fmt

    def denoise(z_t):
        x = fmt.process_in(z_t).to(S.unet_dtype)
        return fmt.process_out(base.apply_model(x, sigma, c_crossattn=cond).float())

    z_t = S.z(size, seed=6) * 2.0
    base.diffusion_model = private
    try:
        with torch.inference_mode(False):
            bench.repeat(f"step:pixel_zt@{tag}", lambda: run.step_zt(z_t, denoise, S.next_step(), 10 ** 6), 1,
                         note=f"whole step: UNet fwd+bwd, w_p={settings.w_p:g}")
    finally:
        base.diffusion_model = original
        del private


def measure_tiled(S: Setup, bench: Bench, size: int, args) -> None:
    """One real Tiled INDIGO sampling step (tiled denoiser, whole-latent LatentINN, tiled VAE)."""
    torch = S.torch
    tiled = S.tp.apply_tiled_denoiser(S.model, args.tile, args.overlap)
    spec = S.spec(S.settings("latent_inn"), size, vae_tile=(64, 16))
    # The measurement's latent z_y = E(up(y)) is per-run set-up (tile by tile at this size), not
    # part of a step: a stand-in of the right shape skips it.
    h = size // 8
    spec.run_options = {"measurement_latent": torch.randn(1, 4, h, h, generator=torch.Generator().manual_seed(7))}
    n_tiles = len(S.G.tile_grid(h, h, args.tile, args.overlap))
    bench.steps(f"tiled_step:latent@{size}", S.sample(bench, S.gp.apply_guidance(tiled, spec), size, 1),
                note=f"{n_tiles} tiles of {args.tile} (overlap {args.overlap})")


# =========================================================================== optimisations


def measure_optimisations(S: Setup, bench: Bench, args) -> dict:
    """Before/after of each optimisation, variants interleaved (same process, same machine)."""
    torch, G = S.torch, S.G
    size = args.opt_size or (512 if S.cuda else 256)
    R, RC = args.repeats, args.cheap_repeats
    out: dict = {"size": size}
    z0 = S.z(size)
    N = 10 ** 6
    mrstb = module("indigo_core.inn.mrstb")
    zl = torch.randn(1, 4, 64, 64, device=S.device)
    xp = torch.rand(1, 3, 512, 512, device=S.device)
    linn = S.latent_inn.to(S.device)
    pinn = S.pixel_inn.to(S.device)

    def fused(flag: bool):
        for inn in (linn, pinn):
            for m in inn.modules():
                if hasattr(m, "fused_attn"):
                    m.fused_attn = flag

    def latent_fwd_inv():
        with torch.no_grad():
            c, d = linn(zl, S.degradation.to(S.device))
            linn.inverse(c, d, S.degradation.to(S.device))

    def pixel_fwd_bwd():
        xx = xp.clone().requires_grad_(True)
        c, d = pinn(xx, S.degradation.to(S.device))
        torch.autograd.grad(c.square().sum() + sum(t.square().sum() for t in d), xx)

    def with_fused(flag, fn):
        def call():
            fused(flag)
            try:
                fn()
            finally:
                fused(True)
        return call

    # Fused window attention (SwinLayer) vs timm's explicit softmax.
    bench.compare({"opt:fused_attention:before:latent_inn_fwd_inv@512": with_fused(False, latent_fwd_inv),
                   "opt:fused_attention:after:latent_inn_fwd_inv@512": with_fused(True, latent_fwd_inv)}, RC)
    bench.compare({"opt:fused_attention:before:pixel_inn_fwd_bwd@512": with_fused(False, pixel_fwd_bwd),
                   "opt:fused_attention:after:pixel_inn_fwd_bwd@512": with_fused(True, pixel_fwd_bwd)}, R)

    # Cached shifted-window masks vs timm's rebuild on every call.
    cached_mask = mrstb.SwinLayer.get_attn_mask

    def rebuilt_masks():
        mrstb.SwinLayer.get_attn_mask = lambda self, x=None, device=None, dtype=None: \
            mrstb.SwinTransformerBlock.get_attn_mask(self, x, device=device, dtype=dtype)
        try:
            latent_fwd_inv()
        finally:
            mrstb.SwinLayer.get_attn_mask = cached_mask

    bench.compare({"opt:mask_cache:before:latent_inn_fwd_inv@512": rebuilt_masks,
                   "opt:mask_cache:after:latent_inn_fwd_inv@512": latent_fwd_inv}, RC)

    # Decode once per step: the step as run vs decoding again for the refinement (per use).
    s_ref = S.settings("pixel_inn", refine=G.RefineSettings(schedule=G.Schedule.all_steps()))
    run = S.run(S.spec(s_ref, size), size)

    def per_use():  # the same step plus the refinement's own decode and INN forward
        run.step(z0, S.next_step(), N)
        with torch.inference_mode(False), torch.no_grad():
            x = run.autoencoder.decode(z0.to(run.autoencoder.dtype or torch.float32)).float()
            run.g(x, run.degradation)

    bench.compare({f"opt:decode_once:before:pixel+refine@{size}": per_use,
                   f"opt:decode_once:after:pixel+refine@{size}": lambda: run.step(z0, S.next_step(), N)}, R)
    del run

    # Decoder checkpointing and the half-precision VAE (INN in fp32), on the PixelINN call.
    s_pix = S.settings("pixel_inn")
    runs = {}
    for label, kw, half in (("plain_fp32", {}, False), ("checkpoint_decoder", {"checkpoint_decoder": True}, False),
                            ("checkpoint_inn", {"checkpoint_inn": True}, False),
                            ("checkpoint_both", {"checkpoint_decoder": True, "checkpoint_inn": True}, False),
                            ("bf16_vae", {}, True)):
        spec = S.spec(s_pix, size, vae=S.sd_vae(seed=1, dtype=torch.bfloat16) if half else None)
        spec.run_options = dict(kw)
        runs[f"opt:vae:{label}:pixel@{size}"] = S.run(spec, size)
    bench.compare({k: (lambda r=r: r.step(z0, S.next_step(), N)) for k, r in runs.items()}, R)
    del runs

    # Guidance state built once per run: what rebuilding it every step would add to each step.
    for name in ("latent", "pixel"):
        row = bench.rows.get(f"setup:{name}@{args.sizes[0]}")
        if row:
            out[f"state_once_saves_per_step_s:{name}@{args.sizes[0]}"] = row["seconds"]

    if args.compile:
        cinn = G.CompiledINN(linn)

        def compiled_fwd_inv():
            with torch.no_grad():
                c, d = cinn(zl, S.degradation.to(S.device))
                cinn.inverse(c, d, S.degradation.to(S.device))

        bench.repeat("opt:compile:first_call_incl_compile:latent_inn_fwd_inv@512", compiled_fwd_inv, 1)
        bench.compare({"opt:compile:before:latent_inn_fwd_inv@512": latent_fwd_inv,
                       "opt:compile:after:latent_inn_fwd_inv@512": compiled_fwd_inv}, RC)
        out["compile_fell_back_to_eager"] = cinn.eager
    else:
        bench.skip("opt:compile", "pass --compile (inductor compile takes minutes on a CPU)")
    return out


# =========================================================================== report


def machine(args, cuda: bool) -> dict:
    import psutil
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    d = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
         "cpu": cpu, "cpu_count": os.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / GB, 1),
         "threads": torch.get_num_threads(),
         "device": torch.cuda.get_device_name(0) if cuda else "cpu"}
    return d


def ratios(bench: Bench, args, basis: str) -> tuple[dict, dict]:
    """The target ratios from the rows (time basis `basis`: 'seconds', 'wall_s' or 'cpu_s')."""
    r, why = {}, {}
    rows = bench.rows
    s0 = args.sizes[0]

    def t(name):
        return rows[name][basis] if name in rows else None

    u, lat, ref = t(f"unguided@{s0}"), t(f"call:latent@{s0}"), t(f"call:latent+refine@{s0}")
    check = rows.get(f"sampler_check:latent@{s0}", {})
    if basis == "seconds" and "step_over_step_minus_hook" in check:
        # measured inside each real guided step (robust to the machine's load changing between runs)
        r["latent_over_unguided"] = check["step_over_step_minus_hook"]
        if u and lat is not None:
            r["latent_over_unguided_composed"] = (u + lat) / u
    elif u and lat is not None:
        r["latent_over_unguided"] = (u + lat) / u
    if u and lat is not None and ref is not None:
        r["refine_overhead"] = (ref - lat) / (u + lat)
    dec, enc, reg = t(f"floor:decode@{s0}"), t(f"floor:encode@{s0}"), t(f"call:regulariser@{s0}")
    if dec and enc and reg is not None:
        r["regulariser_over_floor"] = reg / (dec + enc)
    fb, pix = t(f"floor:decoder_fwd_bwd@{s0}"), t(f"call:pixel@{s0}")
    if u and fb and pix is not None:
        r["pixel_over_floor"] = (u + pix) / (u + fb)
    if u and lat is not None and pix is not None:
        # a whole run with guidance on every step (no regulariser, no refinement), per step
        r["pixel_over_latent_run"] = (u + pix) / (u + lat)
    else:
        why["pixel_over_floor"] = f"PixelINN not measured at {s0}"
    big = max(args.tiled_sizes) if args.tiled_sizes else None
    base = rows.get(f"sampler_check:latent@{s0}")
    tiled = rows.get(f"tiled_step:latent@{big}") if big else None
    if base and tiled:
        key = "tiled_2048_mem_over_untiled_512"
        r[key] = tiled["peak_bytes"] / base["peak_bytes"]
        if (big, s0) != (2048, 512):
            why[key] = f"measured as tiled {big} / untiled {s0} (sizes given on the command line)"
    else:
        why["tiled_2048_mem_over_untiled_512"] = "needs --tiled-sizes with 4x the first size"
    for k in RATIO_KEYS:
        if k not in r and k not in why:
            why[k] = "inputs not measured"
    return r, why


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    cuda = import_host(args)
    out = out_path(args, cuda, "bench_indigo")
    refuse_existing([out], args.overwrite)  # before the run: it takes minutes to hours
    import torch

    if not cuda:
        torch.set_num_threads(args.threads or 1)
    elif args.threads:
        torch.set_num_threads(args.threads)
    t_start, load_start = time.perf_counter(), os.getloadavg()
    bench = Bench(cuda, args.clock)
    S = Setup(args, cuda)
    log.info("device %s, torch %s, threads %d, clock %s, sizes %s, tiled %s, w_p %g", S.device, torch.__version__,
             torch.get_num_threads(), bench.clock.basis, args.sizes, args.tiled_sizes, S.w_p)

    # Warm-up at a small size: kernels, lazy imports, allocator (not recorded).
    warm = Bench(cuda, args.clock)
    S.sample(warm, S.model, 128, 1)
    for settings in (S.settings("latent_inn"), S.settings("pixel_inn")):
        S.run(S.spec(settings, 128), 128).step(S.z(128), 0, 10)

    if not args.optimisations_only:
        for size in zt_sizes(S, args):  # first: their memory tells the larger sizes what to expect
            if size not in args.sizes:
                measure_small(S, bench, size, args)
        for i, size in enumerate(args.sizes):
            measure_size(S, bench, size, i == 0, args)
        for size in args.tiled_sizes:
            measure_tiled(S, bench, size, args)
    opt = {} if args.no_optimisations else measure_optimisations(S, bench, args)

    main_ratios, why = ratios(bench, args, "seconds")
    wall_ratios, _ = ratios(bench, args, "wall_s")
    results = {
        "machine": machine(args, cuda),
        "command": "python -m benchmarks.bench_indigo " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {"sizes": args.sizes, "tiled_sizes": args.tiled_sizes, "tile": args.tile,
                     "overlap": args.overlap, "repeats": args.repeats, "cheap_repeats": args.cheap_repeats,
                     "clock": bench.clock.basis, "unet_dtype": str(S.unet_dtype), "vae_dtype": str(S.vae.vae_dtype),
                     "w_p": S.w_p, "sampler": "euler", "cfg": 1.0,
                     "inn": args.inn, "inn_presets": S.inn_labels},
        "memory_kind": bench.mem.kind,
        **{k: round(v, 4) for k, v in main_ratios.items()},
        "ratios_wall_time": {k: round(v, 4) for k, v in wall_ratios.items()},
        "not_measured": {**why, **bench.skipped},
        "targets": TARGETS,
        "met": {k: (main_ratios[k] <= TARGETS[k]) for k in RATIO_KEYS if k in main_ratios},
        "rows": bench.rows,
        "optimisations": opt,
    }
    results.update(cuda_keys(bench, args) if cuda else {})
    results["machine"]["load_average_start"] = load_start
    results["machine"]["load_average_end"] = os.getloadavg()
    results["machine"]["total_wall_s"] = round(time.perf_counter() - t_start, 1)
    print_table(results)
    module("indigo_core.io.atomic").atomic_write_text(
        out, json.dumps(results, indent=2, sort_keys=False, default=float) + "\n")
    log.info("wrote %s", out)
    return results


def cuda_keys(bench: Bench, args) -> dict:
    """CUDA-only checks of the issue (unverified on this project's CPU machines): peak memory of a
    PixelINN step at 512 with an fp16 VAE and of a LatentINN step at 1024, against 8 GB."""
    rows, keys = bench.rows, {}
    pix = rows.get("opt:vae:bf16_vae:pixel@512")
    lat = rows.get("call:latent@1024")
    unguided = rows.get("unguided@1024")
    if pix:
        keys["cuda_pixel512_half_vae_peak_gb"] = round(pix["peak_bytes"] / GB, 3)
        keys["cuda_pixel512_half_vae_under_8gb"] = pix["peak_bytes"] < 8 * GB
    if lat and unguided:
        peak = max(lat["peak_bytes"], unguided["peak_bytes"])
        keys["cuda_latent1024_peak_gb"] = round(peak / GB, 3)
        keys["cuda_latent1024_under_8gb"] = peak < 8 * GB
    return keys


def print_table(res: dict) -> None:
    log.info("\n%-40s %10s %10s %9s %9s", "measurement", "time s", "wall s", "peak GB", "+work GB")
    for name, r in res["rows"].items():
        log.info("%-40s %10.3f %10.2f %9.2f %9.2f", name, r["seconds"], r["wall_s"], r["peak_bytes"] / GB,
                 r["work_bytes"] / GB)
    log.info("\n%-34s %9s %9s %8s", "ratio", "measured", "target", "met")
    for k in RATIO_KEYS:
        if k in res:
            log.info("%-34s %9.3f %9.2f %8s", k, res[k], res["targets"][k], "yes" if res["met"][k] else "NO")
        else:
            log.info("%-34s %9s %9.2f   (%s)", k, "-", res["targets"][k], res["not_measured"].get(k, ""))
    if "pixel_over_latent_run" in res:
        log.info("%-34s %9.3f %9.2f   (the paper's PixelINN/LatentINN run time, Table VI)", "pixel_over_latent_run",
                 res["pixel_over_latent_run"], PAPER_PIXEL_OVER_LATENT)


if __name__ == "__main__":
    main()
