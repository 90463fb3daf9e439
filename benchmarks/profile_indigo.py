"""Where the time of a guidance call goes: torch.profiler top entries and a phase breakdown.

    nice -n 10 python -m benchmarks.profile_indigo --into benchmarks/results/cpu-<date>.json

Profiles the calls whose ratio misses its target in the benchmark (bench_indigo.py), on the same
models and the same pack code, at one size (default 512): the PixelINN call (z0 mode, as the
benchmark runs it), the LatentINN call and the LatentINN call with refinement. Besides the
profiler's top operators, each call is split into phases timed on their own (decoder forward and
backward; INN forward and backward; INN inverse + LPIPS), which is what the gap is made of.
Adds a "profiles" section to the benchmark's JSON (`--into`), or writes its own JSON (`--out`);
both are checked before the profiling: a "profiles" section already there, or an existing --out
file, is refused unless --overwrite. The file is replaced atomically.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_guidance import import_host, module  # noqa: E402
from benchmarks.bench_indigo import Setup  # noqa: E402
from benchmarks.inns import INN_CHOICES  # noqa: E402
from output_files import refuse_existing  # noqa: E402  (scripts/output_files.py, on sys.path by bench_guidance)

log = logging.getLogger("profile_indigo")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--top", type=int, default=15, help="profiler entries kept per call")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-lpips", action="store_true")
    p.add_argument("--inn", choices=INN_CHOICES, default="paper", help="INN architectures (benchmarks/inns.py)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--comfyui", default=None)
    p.add_argument("--into", default=None, help="benchmark JSON to add a 'profiles' section to")
    p.add_argument("--out", default=None, help="JSON to write instead")
    p.add_argument("--overwrite", action="store_true", help="replace --into's profiles or an existing --out file")
    return p.parse_args(argv)


def check_target(args) -> None:
    """Before the profiling: --into is a benchmark JSON without profiles, --out a new file (unless
    --overwrite). SystemExit saying what is wrong."""
    if args.into:
        try:
            data = json.loads(Path(args.into).read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"--into {args.into}: expected the benchmark's JSON ({exc})")
        if not isinstance(data, dict):
            raise SystemExit(f"--into {args.into}: expected the benchmark's JSON object")
        if "profiles" in data and not args.overwrite:
            raise SystemExit(f"--into {args.into} already holds profiles: pass --overwrite to replace them")
    elif args.out:
        refuse_existing([args.out], args.overwrite)


def top_ops(prof, n: int, cuda: bool) -> list:
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = list(prof.key_averages())
    rows = sorted(events, key=lambda e: getattr(e, key, 0), reverse=True)
    total = sum(getattr(e, key, 0) for e in events) or 1.0
    return [{"op": e.key, "self_s": round(getattr(e, key) / 1e6, 4), "share": round(getattr(e, key) / total, 4),
             "calls": e.count} for e in rows[:n]]


def timed(fn, cuda: bool) -> float:
    import torch

    if cuda:
        torch.cuda.synchronize()
    t0 = time.process_time() if not cuda else time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.process_time() if not cuda else time.perf_counter()) - t0


def main(argv=None) -> dict:
    args = parse_args(argv)
    check_target(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    cuda = import_host(args)
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(args.threads)
    S = Setup(args, cuda)
    G = S.G
    size, N = args.size, 10 ** 6
    z0 = S.z(size)
    out: dict = {"size": size, "threads": torch.get_num_threads(), "w_p": S.w_p,
                 "clock": "wall" if cuda else "process cpu", "calls": {}}
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])

    runs = {
        "call:pixel": S.run(S.spec(S.settings("pixel_inn"), size), size),
        "call:latent": S.run(S.spec(S.settings("latent_inn"), size), size),
        "call:latent+refine": S.run(S.spec(S.settings(
            "latent_inn", refine=G.RefineSettings(schedule=G.Schedule.all_steps())), size), size),
    }
    for name, run in runs.items():
        run.step(z0, S.next_step(), N)  # warm-up
        with profile(activities=acts) as prof:
            run.step(z0, S.next_step(), N)
        out["calls"][name] = {"seconds": round(timed(lambda: run.step(z0, S.next_step(), N), cuda), 3),
                              "top": top_ops(prof, args.top, cuda)}
        log.info("%s: %.2f s; top: %s", name, out["calls"][name]["seconds"],
                 ", ".join(f"{t['op']} {t['share']:.0%}" for t in out["calls"][name]["top"][:6]))

    # Phases of the PixelINN call, each timed on its own (backward() rather than autograd.grad,
    # so that the FLOP counter below can follow them).
    run = runs["call:pixel"]
    ae, inn, y, gamma = run.autoencoder, run.g, run.y, run.degradation
    phases = {}

    def decoder_fwd_bwd():
        with torch.inference_mode(False), torch.enable_grad():
            zz = z0.clone().requires_grad_(True)
            ae.decode(zz.to(ae.dtype or torch.float32)).float().square().mean().backward()

    with torch.inference_mode(False), torch.no_grad():
        x0 = ae.decode(z0.to(ae.dtype or torch.float32)).float()

    def inn_fwd_bwd():
        with torch.inference_mode(False), torch.enable_grad():
            xx = x0.clone().requires_grad_(True)
            c, _ = inn(xx, gamma)
            (y - c).square().mean().backward()

    def inverse_lpips_fwd_bwd():
        if run.perceptual is None:
            return
        with torch.inference_mode(False), torch.enable_grad():
            xx = x0.clone().requires_grad_(True)
            _, d = inn(xx, gamma)
            x_inv = inn.inverse(y, d, gamma)
            run.perceptual(x_inv, xx).sum().backward()

    def refine_fwd_bwd():  # the refinement's extra work on a LatentINN step
        rr = runs["call:latent+refine"]
        params = list(rr.inn.parameters())
        with torch.inference_mode(False), torch.enable_grad():
            for p in params:
                p.requires_grad_(True)
            c, _ = rr.inn(z0, rr.degradation)
            torch.nn.functional.mse_loss(c, rr.z_y).backward()
            for p in params:
                p.requires_grad_(False)
                p.grad = None

    for name, fn in (("decoder_fwd_bwd", decoder_fwd_bwd), ("inn_fwd_bwd_coarse_term", inn_fwd_bwd),
                     ("inn_fwd_inverse_lpips_fwd_bwd", inverse_lpips_fwd_bwd),
                     ("whole_call", lambda: run.step(z0, S.next_step(), N))):
        phases[name] = round(timed(fn, cuda), 3)
        log.info("pixel phase %-32s %.2f s", name, phases[name])
    out["pixel_phases_s"] = phases

    # FLOPs (matmul, convolution, attention; torch.utils.flop_counter) of the same calls and of
    # their floors: what the ratios would be if every part ran at the same arithmetic rate.
    from torch.utils.flop_counter import FlopCounterMode

    def flops(fn) -> float:
        with FlopCounterMode(display=False) as counter:
            fn()
        return float(counter.get_total_flops())

    base = S.model.model
    sigma = torch.tensor([7.0], device=S.device)
    cond = S.cond[0][0].to(S.device, S.unet_dtype)

    def unet():
        with torch.inference_mode():
            base.apply_model(S.fmt.process_in(z0).to(S.unet_dtype), sigma, c_crossattn=cond)

    f = {"unet_eval": flops(unet), "decoder_fwd_bwd": flops(decoder_fwd_bwd),
         "call:latent": flops(lambda: runs["call:latent"].step(z0, S.next_step(), N)),
         "refine_inn_fwd_bwd": flops(refine_fwd_bwd),
         "pixel_inn_fwd_bwd_coarse_term": flops(inn_fwd_bwd),
         "pixel_inn_fwd_inverse_lpips_fwd_bwd": flops(inverse_lpips_fwd_bwd)}
    # the PixelINN call = decoder fwd+bwd + the INN's two terms (sharing one INN forward)
    with torch.inference_mode(False), torch.no_grad():
        inn_fwd = flops(lambda: inn(x0, gamma))
        rr = runs["call:latent+refine"]
        latent_fwd = flops(lambda: rr.inn(z0, rr.degradation))
    f["call:pixel (sum of phases)"] = (f["decoder_fwd_bwd"] + f["pixel_inn_fwd_bwd_coarse_term"]
                                       + f["pixel_inn_fwd_inverse_lpips_fwd_bwd"] - inn_fwd)
    out["gflops"] = {k: round(v / 1e9, 2) for k, v in f.items()}
    out["flop_ratios"] = {
        "latent_over_unguided": (f["unet_eval"] + f["call:latent"]) / f["unet_eval"],
        "pixel_over_floor": (f["unet_eval"] + f["call:pixel (sum of phases)"]) / (f["unet_eval"] + f["decoder_fwd_bwd"]),
        # the refinement's forward is the guidance's own (with grad), so its extra is the backward
        "refine_overhead": (f["refine_inn_fwd_bwd"] - latent_fwd) / (f["unet_eval"] + f["call:latent"]),
    }
    log.info("GFLOPs %s; FLOP ratios %s", out["gflops"], {k: round(v, 4) for k, v in out["flop_ratios"].items()})

    write = module("indigo_core.io.atomic").atomic_write_text
    if args.into:
        path = Path(args.into)
        data = json.loads(path.read_text())
        data["profiles"] = out
        write(path, json.dumps(data, indent=2, default=float) + "\n")
        log.info("added profiles to %s", path)
    elif args.out:
        write(args.out, json.dumps(out, indent=2, default=float) + "\n")
    return out


if __name__ == "__main__":
    main()
