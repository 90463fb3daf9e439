"""The training loop shared by the three trainers.

A trainer is a :class:`Task`: it builds the trainable objective module (whose forward returns a
dict of scalar losses, "loss" being the one optimised), the training dataset (indexed by global
sample index, see `data.py`), a validation function and an export function. This module owns
everything else: distributed set-up (torchrun), the optimiser and LR schedule, AMP, resumable
checkpoints, validation cadence, progress, CSV logs, the final export and the model card.

Data parallelism: under `torchrun --nproc_per_node N` every process runs this loop on its own
device; DistributedDataParallel averages gradients. The global batch is per-rank batch x N, and
the samples of each step depend on the step only, so N processes reproduce a 1-process run with
the same global batch (up to float summation order). Rank 0 alone logs and writes files.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import logging
import math
import os
import platform
import shlex
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..errors import TrainingError
from ..io.atomic import atomic_write, atomic_write_text
from .data import StepBatchSampler, collate
from .losses import finite_or_raise

log = logging.getLogger("indigo_core.train")

CHECKPOINT_FORMAT = "indigo-train-checkpoint"
CHECKPOINT_VERSION = 1
AMP_MODES = ("auto", "off", "bf16", "fp16")
SCHEDULES = ("constant", "cosine")


# ---------------------------------------------------------------------- distributed set-up
@dataclass
class DistInfo:
    """Where this process sits in a (possibly 1-process) run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialised: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.initialised:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def all_sum(self, t: Tensor) -> Tensor:
        """Sum of t over ranks (t is returned unchanged in a 1-process run)."""
        if self.initialised:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


def init_distributed(device: str = "auto") -> DistInfo:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and start the process group:
    NCCL when training on CUDA, gloo on CPU. Without torchrun: one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda: no CUDA device is available")
        if local_rank >= torch.cuda.device_count():
            raise TrainingError(f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible; "
                                f"use --nproc_per_node <= the number of GPUs")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    elif device == "cpu":
        dev = torch.device("cpu")
    else:
        raise TrainingError(f"--device: expected auto, cpu or cuda, got {device!r}")
    info = DistInfo(rank=rank, world=world, local_rank=local_rank, local_world=local_world, device=dev)
    if world > 1:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "timeout": _dt.timedelta(minutes=30)}
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
        info.initialised = True
    return info


def shutdown_distributed(info: DistInfo) -> None:
    if info.initialised and dist.is_initialized():
        dist.destroy_process_group()
        info.initialised = False


# ---------------------------------------------------------------------- options
@dataclass
class LoopOptions:
    """Settings of the shared loop (the CLI's common arguments)."""

    out: Path
    name: str
    steps: int
    batch_size: int  # per rank
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float = 0.0
    amp: str = "auto"
    seed: int = 0
    workers: int = -1
    val_every: int = 0
    log_every: int = 10
    ckpt_every: int = 500
    keep_checkpoints: int = 0
    resume: Optional[str] = None  # "auto" or a path
    overwrite: bool = False
    stop_at: int = 0
    progress: bool = True

    def validate(self) -> None:
        def bad(msg: str) -> TrainingError:
            return TrainingError(msg)

        if self.steps < 1:
            raise bad(f"--steps: expected >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise bad(f"--batch-size: expected >= 1 (per process), got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise bad(f"--lr: expected > 0, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise bad(f"--lr-schedule: expected one of {SCHEDULES}, got {self.schedule!r}")
        if self.amp not in AMP_MODES:
            raise bad(f"--amp: expected one of {AMP_MODES}, got {self.amp!r}")
        for flag, value, least in (("--stop-at", self.stop_at, 0), ("--ckpt-every", self.ckpt_every, 0),
                                   ("--val-every", self.val_every, 0), ("--log-every", self.log_every, 1),
                                   ("--workers", self.workers, -1)):
            if value < least:
                raise bad(f"{flag}: expected >= {least}, got {value}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise bad(f"--min-lr-ratio: expected a number in [0, 1], got {self.min_lr_ratio}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise bad(f"--beta1/--beta2: expected numbers in [0, 1), got {tuple(self.betas)}")
        for flag, value in (("--weight-decay", self.weight_decay), ("--grad-clip", self.grad_clip)):
            if not (value >= 0 and math.isfinite(value)):
                raise bad(f"{flag}: expected a number >= 0, got {value}")
        for flag, value in (("--warmup-steps", self.warmup_steps), ("--keep-checkpoints", self.keep_checkpoints)):
            if value < 0:
                raise bad(f"{flag}: expected >= 0, got {value}")


def amp_dtype(mode: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for --amp on this device (None: full float32). AMP is used on CUDA only;
    "auto" picks bf16 where the GPU supports it, else fp16."""
    if mode == "off" or device.type != "cuda":
        return None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


# ---------------------------------------------------------------------- the task interface
class Task:
    """What a trainer provides to :func:`train`. Subclasses set the attributes and override the
    methods; everything is called on every rank unless noted."""

    kind: str = ""  # sub-command, e.g. "pixel-inn"
    loss_names: tuple[str, ...] = ("loss",)  # keys of the objective's output, "loss" first
    val_names: tuple[str, ...] = ()  # metric names returned by validate()
    loader_workers: Optional[int] = None  # fixed DataLoader workers (e.g. 0 for in-memory data)

    def has_unused_parameters(self) -> bool:
        """True when some trainable parameters get no gradient (DDP must then look for them)."""
        return False

    def setup(self, info: DistInfo, amp: Optional[torch.dtype], out: Path) -> None:
        """Load frozen models, build data (may use collectives, e.g. to share a latent cache)."""

    def objective(self) -> nn.Module:
        """The module to train: forward(batch dict on device) -> dict of scalar losses."""
        raise NotImplementedError

    def train_dataset(self) -> Dataset:
        """Dataset indexed by global sample index; items are collated by `collate_fn`."""
        raise NotImplementedError

    def collate_fn(self) -> Callable:
        return collate

    def validate(self, model: nn.Module, info: DistInfo) -> dict[str, float]:
        """Metrics over the validation set (each rank its shard, reduced to global means)."""
        return {}

    def export(self, model: nn.Module, out: Path, name: str, card: dict, overwrite: bool) -> list[Path]:
        """Write the final weights (rank 0 only); return the files written."""
        raise NotImplementedError

    def signature(self) -> dict[str, Any]:
        """Settings a resumed run must share with the checkpoint (JSON-serialisable)."""
        return {}

    def card(self) -> dict[str, Any]:
        """Task-specific model-card fields (data, config, degradations)."""
        return {}

    def output_files(self, out: Path, name: str) -> list[Path]:
        """Files this task writes in `out` (checked/overwritten by the output-folder rule)."""
        return []


# ---------------------------------------------------------------------- files
def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through an atomic write (temporary file, fsync, rename)."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


class CsvLog:
    """Append-only CSV with a fixed header; on resume, rows after the resumed step are dropped so
    the log reads as one uninterrupted run."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = list(columns)

    def start(self, resume_step: Optional[int]) -> None:
        if resume_step is not None and self.path.exists():
            with self.path.open(newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
            kept = [r for r in rows if int(float(r["step"])) <= resume_step]
            lines = [",".join(self.columns)]
            lines += [",".join(str(r.get(c, "")) for c in self.columns) for r in kept]
            atomic_write_text(self.path, "\n".join(lines) + "\n")
        else:
            atomic_write_text(self.path, ",".join(self.columns) + "\n")

    def write(self, row: Mapping[str, Any]) -> None:
        def fmt(v: Any) -> str:
            if isinstance(v, float):
                return repr(v)
            return str(v)

        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(",".join(fmt(row.get(c, "")) for c in self.columns) + "\n")


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a log written by :class:`CsvLog`."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------------- LR schedule
def lr_factor(step: int, opts: LoopOptions) -> float:
    """Multiplier of the base LR for the update that follows `step` completed updates: linear warm-up,
    then constant or cosine decay to min_lr_ratio at the last step."""
    if opts.warmup_steps and step < opts.warmup_steps:
        return (step + 1) / opts.warmup_steps
    if opts.schedule == "constant":
        return 1.0
    span = max(1, opts.steps - opts.warmup_steps)
    t = min(1.0, (step - opts.warmup_steps) / span)
    return opts.min_lr_ratio + (1 - opts.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


# ---------------------------------------------------------------------- helpers
def _hardware(info: DistInfo) -> dict[str, Any]:
    hw: dict[str, Any] = {
        "device": info.device.type,
        "processes": info.world,
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if info.device.type == "cuda":
        hw["gpu"] = torch.cuda.get_device_name(info.device)
        hw["gpu_memory_gib"] = round(torch.cuda.get_device_properties(info.device).total_memory / 2**30, 1)
        hw["cuda"] = torch.version.cuda
    return hw


def command_line(argv: Sequence[str], info: DistInfo) -> str:
    """The command that reproduces this run (torchrun prefix when launched with N processes)."""
    cmd = "python -m indigo_core.train " + shlex.join(argv)
    if info.world > 1:
        nodes = info.world // max(1, info.local_world)
        pre = f"torchrun --nproc_per_node {info.local_world}"
        if nodes > 1:
            pre += f" --nnodes {nodes}"
        cmd = pre + " -m indigo_core.train " + shlex.join(argv)
    return cmd


def _pack_version() -> Optional[str]:
    try:
        import tomllib

        with (Path(__file__).resolve().parents[2] / "pyproject.toml").open("rb") as fh:
            return str(tomllib.load(fh)["project"]["version"])
    except (OSError, KeyError, ValueError, ImportError):
        return None


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    nb = device.type == "cuda"
    return {k: (v.to(device, non_blocking=nb) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to checkpoint and stop at the next logging step."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. called from a notebook worker)
                pass

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("signal %d: saving a checkpoint at the next logging step, then stopping "
                    "(press Ctrl-C again to abort without saving)", signum)

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------------- output folder
def prepare_output(out: Path, opts: LoopOptions, task: Task) -> tuple[Optional[Path], list[Path]]:
    """Apply the output rule; returns (the checkpoint to resume from or None, the earlier run's
    files that --overwrite replaces). Nothing is deleted here: `clear_previous_run` does that once
    the new run has been set up without error.

    * --resume (no path, or out/checkpoints/last.pt): continue the run in out; error if missing.
    * otherwise (a fresh start, or a resume from another folder's checkpoint), if out already holds
      a run's files: error unless --overwrite, which replaces exactly those files (nothing else in
      the folder is touched).
    """
    ckpt_dir = out / "checkpoints"
    resume = None
    if opts.resume:
        resume = ckpt_dir / "last.pt" if opts.resume == "auto" else Path(opts.resume)
        if not resume.is_file():
            raise TrainingError(f"--resume: no checkpoint at {resume}")
        if resume.resolve() == (ckpt_dir / "last.pt").resolve():
            return resume, []  # this folder's own run goes on
    ours = [out / "train_log.csv", out / "val_log.csv", out / f"{opts.name}.card.json"]
    ours += task.output_files(out, opts.name)
    existing = [p for p in ours if p.exists()]
    if ckpt_dir.is_dir() and any(ckpt_dir.glob("*.pt")):
        existing.append(ckpt_dir)
    if existing and not opts.overwrite:
        how = (f"resuming from {resume} would replace it" if resume is not None else
               "pass --resume to continue it")
        raise TrainingError(
            f"output folder {out} already holds a run ({', '.join(p.name for p in existing[:4])}); "
            f"{how}; pass --overwrite to replace it, or choose another --out"
        )
    return resume, existing


def clear_previous_run(existing: list[Path], info: DistInfo) -> None:
    """Delete the earlier run's files (`prepare_output`) on rank 0, after every rank is set up."""
    info.barrier()
    if existing and info.main:
        for p in existing:
            if p.is_dir():
                for f in p.glob("*.pt"):
                    f.unlink()
            elif p.exists():
                p.unlink()
    info.barrier()


def _read_checkpoint(path: Path) -> dict:
    """A training checkpoint of this pack (weights-only load), or TrainingError naming the file."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign files: torch raises several kinds
        raise TrainingError(f"{path}: not a readable training checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path}: not a training checkpoint of this pack")
    missing = [k for k in ("signature", "model", "optimizer", "scheduler", "scaler", "rng_cpu", "step", "elapsed_s")
               if k not in ckpt]
    if missing:
        raise TrainingError(f"{path}: a training checkpoint without {missing}")
    return ckpt


# ---------------------------------------------------------------------- the loop
def train(task: Task, opts: LoopOptions, info: DistInfo, argv: Sequence[str]) -> dict[str, Any]:
    """Run (or resume) a training run to `opts.steps` updates. Returns a summary dict
    ({"step", "stopped", "metrics", "files"}). Every rank calls it."""
    opts.validate()
    started = time.time()
    out = Path(opts.out)
    created = make_output_folder(out) if info.main else []
    try:
        return _train(task, opts, info, argv, out, started)
    except BaseException:
        # A run that fails to start leaves the file system as it found it: the folders it made are
        # removed while still empty. Once started it has written its logs, so nothing goes.
        remove_if_empty(created)
        raise


def make_output_folder(out: Path) -> list[Path]:
    """Create `out` (and missing parents); returns the folders this made, deepest first."""
    made: list[Path] = []
    p = Path(os.path.abspath(out))
    while not p.exists() and not p.is_symlink() and p != p.parent:
        made.append(p)
        p = p.parent
    out.mkdir(parents=True, exist_ok=True)
    return made


def remove_if_empty(folders: Sequence[Path]) -> None:
    """Remove each folder (deepest first) while it is empty; stop at the first that is not or is gone.
    A folder holding anything is never touched (rmdir refuses it)."""
    for d in folders:
        try:
            d.rmdir()
        except OSError:
            return


def _train(task: Task, opts: LoopOptions, info: DistInfo, argv: Sequence[str], out: Path,
           started: float) -> dict[str, Any]:
    info.barrier()
    resume_path, previous_run = prepare_output(out, opts, task)
    info.barrier()

    amp = amp_dtype(opts.amp, info.device)
    if info.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    # Identical initial weights on every rank (DDP also broadcasts rank 0's at wrap time).
    torch.manual_seed(opts.seed)
    task.setup(info, amp, out)
    torch.manual_seed(opts.seed)
    model = task.objective().to(info.device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError(f"{task.kind}: the objective has no trainable parameters")
    optimizer = torch.optim.Adam(params, lr=opts.lr, betas=opts.betas, weight_decay=opts.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, opts))
    scaler = torch.amp.GradScaler(info.device.type, enabled=amp == torch.float16)

    step, elapsed_before, last_metrics, validated_at = 0, 0.0, {}, -1
    signature = {"kind": task.kind, "seed": opts.seed, "batch_size": opts.batch_size, "world": info.world,
                 "lr": opts.lr, "betas": list(opts.betas), "schedule": opts.schedule,
                 "warmup_steps": opts.warmup_steps, "min_lr_ratio": opts.min_lr_ratio,
                 "grad_clip": opts.grad_clip, "weight_decay": opts.weight_decay, **task.signature()}
    if resume_path is not None:
        ckpt = _read_checkpoint(resume_path)
        saved = ckpt["signature"]
        diff = sorted(k for k in set(saved) | set(signature) if saved.get(k) != signature.get(k))
        # A different process count is fine when the global batch is the same.
        if saved.get("world", 1) * saved.get("batch_size", 0) == info.world * opts.batch_size:
            diff = [k for k in diff if k not in ("world", "batch_size")]
        if diff:
            details = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {signature.get(k)!r}" for k in diff[:6])
            raise TrainingError(f"{resume_path}: the run's settings differ from the checkpoint's ({details})")
        _unwrap(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng_cpu"])
        if info.device.type == "cuda" and ckpt.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng_cuda"], info.device)
        step = int(ckpt["step"])
        elapsed_before = float(ckpt["elapsed_s"])
        last_metrics = dict(ckpt.get("metrics", {}))
        validated_at = int(ckpt.get("validated_at", -1))
        if ckpt.get("total_steps", opts.steps) != opts.steps and opts.schedule != "constant" and info.main:
            log.warning("--steps changed from %s to %d: the %s schedule's remaining learning rates change",
                        ckpt.get("total_steps"), opts.steps, opts.schedule)
        if step > opts.steps:
            raise TrainingError(f"{resume_path}: checkpoint is at step {step}, beyond --steps {opts.steps}")
        if info.main:
            log.info("resuming from %s at step %d", resume_path, step)

    clear_previous_run(previous_run, info)  # only now: a run that fails to start loses nothing

    if info.initialised:
        # Buffers (wavelet filters, attention masks) are identical constants on every rank: no
        # per-step buffer sync (the argument's name changed in torch 2.14).
        import inspect

        sync = ("forward_sync_buffers" if "forward_sync_buffers" in
                inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters else "broadcast_buffers")
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=task.has_unused_parameters(), **{sync: False})

    global_batch = opts.batch_size * info.world
    train_cols = ["step", "samples", "lr", *task.loss_names, "samples_per_s", "elapsed_s"]
    val_cols = ["step", *task.val_names]
    train_csv, val_csv = CsvLog(out / "train_log.csv", train_cols), CsvLog(out / "val_log.csv", val_cols)
    if info.main:
        train_csv.start(step if resume_path else None)
        val_csv.start(step if resume_path else None)

    acc = torch.zeros(len(task.loss_names), dtype=torch.float64, device=info.device)
    acc_n, window_steps = 0, 0
    if resume_path is not None and "log_window" in ckpt:
        acc.copy_(ckpt["log_window"]["sum"])
        acc_n, window_steps = int(ckpt["log_window"]["n"]), int(ckpt["log_window"]["steps"])
    saved_at: list[Any] = [None]

    def checkpoint(at: int) -> None:
        if saved_at[0] == (at, validated_at):
            return
        # The loss is checked at logging steps only: never let a diverged model replace the last good
        # checkpoint. The weights are the same on every rank, so every rank stops here alike.
        if not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            raise TrainingError(f"the weights are not finite (NaN/inf) at step {at}; the last checkpoint is kept; "
                                f"lower --lr, enable --grad-clip, or resume from it with other settings")
        saved_at[0] = (at, validated_at)
        if not info.main:
            return
        state = {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "kind": task.kind, "step": at,
            "signature": signature, "model": _unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(info.device) if info.device.type == "cuda" else None,
            "elapsed_s": elapsed_before + time.time() - started, "metrics": last_metrics,
            "validated_at": validated_at,  # a resumed finished run does not validate (and log) again
            "total_steps": opts.steps,
            # the partly filled logging window, so rows after a resume equal the uninterrupted run's
            "log_window": {"sum": acc.detach().cpu(), "n": acc_n, "steps": window_steps},
        }
        ckpt_dir = out / "checkpoints"
        atomic_torch_save(state, ckpt_dir / "last.pt")
        if opts.keep_checkpoints > 0:
            atomic_torch_save(state, ckpt_dir / f"step_{at:08d}.pt")
            snaps = sorted(ckpt_dir.glob("step_*.pt"))
            for old in snaps[:-opts.keep_checkpoints]:
                old.unlink()

    def run_validation(at: int) -> None:
        nonlocal last_metrics, validated_at
        if not task.val_names:
            return
        validated_at = at
        model.eval()
        with torch.no_grad():
            metrics = task.validate(_unwrap(model), info)
        model.train()
        last_metrics = {k: float(v) for k, v in metrics.items()}
        if info.main and last_metrics:
            val_csv.write({"step": at, **last_metrics})
            log.info("step %d validation: %s", at,
                     ", ".join(f"{k} {v:.4g}" for k, v in last_metrics.items()))

    workers = opts.workers
    if task.loader_workers is not None:
        workers = task.loader_workers
    elif workers < 0:
        workers = 0 if info.device.type == "cpu" else max(1, min(8, (os.cpu_count() or 2) // info.local_world - 1))
    end = opts.steps if not opts.stop_at else min(opts.steps, max(opts.stop_at, step))
    loader = DataLoader(
        task.train_dataset(),
        batch_sampler=StepBatchSampler(opts.batch_size, info.rank, info.world, step, end),
        num_workers=workers, collate_fn=task.collate_fn(), pin_memory=info.device.type == "cuda",
        worker_init_fn=_worker_init if workers else None, persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )

    stop = _StopFlag()
    stop.install()
    bar = None
    if info.main and opts.progress:
        from tqdm import tqdm

        bar = tqdm(total=opts.steps, initial=step, desc=f"{task.kind} {opts.name}", unit="step",
                   dynamic_ncols=True, file=sys.stderr)
    stopped_by_signal = 0
    try:
        if step == 0 and opts.val_every:
            run_validation(0)
        model.train()
        window_start = time.time()
        for batch in loader:
            batch = _to_device(batch, info.device)
            losses = model(batch)
            loss = losses["loss"]
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if opts.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            lr_now = optimizer.param_groups[0]["lr"]
            scheduler.step()
            step += 1
            acc += torch.stack([losses[k].detach().double() for k in task.loss_names])
            acc_n += 1
            window_steps += 1
            if bar is not None:
                bar.update(1)
            if step % opts.log_every == 0 or step == opts.steps:
                # One collective per logging step: global-batch means of the losses + stop flag.
                packed = torch.cat([acc / max(1, acc_n), torch.tensor([float(stop.signum)], dtype=torch.float64,
                                                              device=info.device)])
                packed = info.all_sum(packed)
                means = (packed[:-1] / info.world).tolist()
                finite_or_raise(torch.tensor(means[0]), step)
                now = time.time()
                rate = window_steps * global_batch / max(1e-9, now - window_start)
                if info.main:
                    train_csv.write({"step": step, "samples": step * global_batch, "lr": lr_now,
                                     **dict(zip(task.loss_names, means)), "samples_per_s": round(rate, 3),
                                     "elapsed_s": round(elapsed_before + now - started, 3)})
                    if bar is not None:
                        bar.set_postfix({k: f"{v:.4g}" for k, v in zip(task.loss_names, means)})
                acc.zero_()
                acc_n, window_start, window_steps = 0, now, 0
                if packed[-1].item() > 0:
                    stopped_by_signal = int(stop.signum) or signal.SIGTERM
            if opts.val_every and step % opts.val_every == 0 and step != opts.steps:
                run_validation(step)
            if (opts.ckpt_every and step % opts.ckpt_every == 0 and step != opts.steps) or stopped_by_signal:
                checkpoint(step)
            if stopped_by_signal:
                break
    finally:
        stop.restore()
        if bar is not None:
            bar.close()

    files: list[Path] = []
    finished = step >= opts.steps
    if finished and validated_at != step:
        run_validation(step)
    checkpoint(step)
    if finished and info.main:
        elapsed = elapsed_before + time.time() - started
        card = {
            "format": "indigo-model-card",
            "kind": task.kind,
            "name": opts.name,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command_line(argv, info),
            "argv": list(argv),
            "pack_version": _pack_version(),
            "steps": step,
            "global_batch": global_batch,
            "samples_seen": step * global_batch,
            "optimizer": {"name": "Adam", "lr": opts.lr, "betas": list(opts.betas),
                          "weight_decay": opts.weight_decay, "schedule": opts.schedule,
                          "warmup_steps": opts.warmup_steps, "min_lr_ratio": opts.min_lr_ratio,
                          "grad_clip": opts.grad_clip},
            "precision": "float32" if amp is None else str(amp).replace("torch.", "") + " autocast",
            "seed": opts.seed,
            "hardware": _hardware(info),
            "duration_s": round(elapsed, 2),
            "metrics": last_metrics,
            "final_train_losses": _last_row(out / "train_log.csv", task.loss_names),
            **task.card(),
        }
        files = task.export(_unwrap(model), out, opts.name, card, opts.overwrite or bool(resume_path))
        atomic_write_text(out / f"{opts.name}.card.json", json.dumps(card, indent=2, default=str) + "\n")
        files.append(out / f"{opts.name}.card.json")
        log.info("finished %d steps in %.1f s; wrote %s", step, elapsed, ", ".join(str(f) for f in files))
    elif info.main:
        log.info("stopped at step %d of %d; checkpoint %s (continue with --resume)", step, opts.steps,
                 out / "checkpoints" / "last.pt")
    info.barrier()
    return {"step": step, "stopped": not finished, "signal": stopped_by_signal, "metrics": last_metrics,
            "files": [str(f) for f in files]}


def _last_row(path: Path, names: Sequence[str]) -> dict[str, float]:
    try:
        rows = read_csv(path)
    except OSError:
        return {}
    return {k: float(rows[-1][k]) for k in names} if rows else {}
