"""What both prior trainings share: a time budget that also drives the learning rate, CSV logs,
EMA weights, checkpoints, hardware facts and model cards."""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from torch import nn

from ..device import resolve_device
from ..errors import TrainingError
from ..io.atomic import atomic_write
from ..io.digest import file_sha256

log = logging.getLogger("indigo_core.prior.train")


class Budget:
    """Stops a run at `max_minutes` of wall time or `max_steps` steps, whichever comes first.

    The learning rate follows the same clock: linear warm-up over `warmup` steps, then a cosine from
    the peak down to `floor` x peak as the used share of the budget goes from 0 to 1. So a run cut
    short by its time limit still ends with a decayed learning rate, on any hardware.
    """

    def __init__(self, max_minutes: Optional[float], max_steps: Optional[int], warmup: int = 200):
        if not max_minutes and not max_steps:
            raise TrainingError("give --max-minutes or --max-steps (a run must be bounded)")
        if (max_minutes is not None and not max_minutes > 0) or (max_steps is not None and max_steps < 0):
            raise TrainingError(f"expected --max-minutes > 0 and --max-steps >= 1, got {max_minutes} and {max_steps}")
        self.seconds = float(max_minutes) * 60.0 if max_minutes else math.inf
        self.max_steps = int(max_steps) if max_steps else None
        self.warmup = max(1, int(warmup))
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def fraction(self, step: int) -> float:
        f = self.elapsed() / self.seconds
        if self.max_steps:
            f = max(f, step / self.max_steps)
        return min(1.0, f)

    def done(self, step: int) -> bool:
        return self.fraction(step) >= 1.0

    def lr(self, step: int, peak: float, floor: float = 0.05) -> float:
        warm = min(1.0, (step + 1) / self.warmup)
        cos = 0.5 * (1.0 + math.cos(math.pi * self.fraction(step)))
        return peak * warm * (floor + (1.0 - floor) * cos)


class CsvLog:
    """Append rows to a CSV file (header written once); values are rounded for readability.

    resume_step: the step of the checkpoint a run resumes from: the rows an interrupted run logged
    after it are dropped, so the log does not repeat those steps."""

    def __init__(self, path: Path, fields: Iterable[str], resume_step: Optional[int] = None):
        self.path = Path(path)
        self.fields = list(fields)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            with self.path.open(newline="") as fh:
                lines = fh.read().splitlines(keepends=True)
            kept = lines[:1] + [ln for ln in lines[1:] if _leading_int(ln) is not None and _leading_int(ln) <= resume_step]
            atomic_write(self.path, lambda fh: fh.write("".join(kept).encode()))
        new = not self.path.exists()
        self._fh = self.path.open("a", newline="")
        self._w = csv.DictWriter(self._fh, fieldnames=self.fields, extrasaction="ignore")
        if new:
            self._w.writeheader()

    def row(self, **values: Any) -> None:
        self._w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in values.items()})
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _leading_int(line: str) -> Optional[int]:
    """The step (first field) of a log row; None for a partly written one."""
    try:
        return int(line.split(",", 1)[0]) if line.endswith("\n") else None
    except ValueError:
        return None


class EMA:
    """Exponential moving average of a module's floating-point state (decay warmed up as 1+n / 10+n)."""

    def __init__(self, module: nn.Module, decay: float = 0.999):
        self.decay = decay
        self.n = 0
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.n += 1
        d = min(self.decay, (1.0 + self.n) / (10.0 + self.n))
        names = list(self.shadow)
        state = module.state_dict()
        shadow = [self.shadow[k] for k in names]
        current = [state[k].float() for k in names]
        torch._foreach_mul_(shadow, d)
        torch._foreach_add_(shadow, current, alpha=1.0 - d)

    def state_dict(self) -> dict:
        return {"n": self.n, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        """Continue the average of a checkpoint (`state_dict`); its tensors must be this module's."""
        if set(state["shadow"]) != set(self.shadow):
            raise TrainingError("the checkpoint's EMA weights do not match the model's")
        self.n = int(state["n"])
        self.shadow = {k: state["shadow"][k].to(v.device, torch.float32) for k, v in self.shadow.items()}

    def copy_to(self, module: nn.Module) -> None:
        state = module.state_dict()
        for k, v in self.shadow.items():
            state[k].copy_(v.to(state[k].dtype))


def pick_device(name: Optional[str]) -> torch.device:
    """--device, checked (ConfigError for an unknown or absent device); default CUDA, else the CPU."""
    return resolve_device(name)


def setup_torch(device: torch.device, threads: Optional[int] = None) -> None:
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled; a no-op context otherwise."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def hardware(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads(),
            "host_cpus": os.cpu_count()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def command_line() -> str:
    return "python -m indigo_core.prior.train " + " ".join(sys.argv[1:])


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file (for model cards)."""
    return file_sha256(path)


def save_checkpoint(path: Path, **state: Any) -> None:
    """torch.save of plain state (tensors, numbers, strings) through an atomic write (temporary
    file, fsync, rename; a failed write leaves the previous checkpoint and no partial file); read
    back with `torch.load(weights_only=True)`."""
    atomic_write(path, lambda fh: torch.save(state, fh))


def random_state(sampler: Any) -> dict:
    """The random streams a resumed run continues: the crop sampler's and torch's (CPU, CUDA)."""
    return {"sampler": sampler.gen.get_state(), "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_random_state(ck: dict, sampler: Any) -> None:
    """Continue the streams saved by `random_state` (a checkpoint without them starts over, warned)."""
    state = ck.get("random")
    if state is None:
        log.warning("the checkpoint records no random state (written by an earlier version): the crops and "
                    "noise of the first steps are drawn again")
        return
    sampler.gen.set_state(state["sampler"].cpu())
    torch.set_rng_state(state["cpu"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def run_signature(**settings: Any) -> dict:
    """What a resumed run must share with its checkpoint (architecture, losses, data, frozen parts);
    the time budget and the learning rate may change (a resume starts a fresh budget)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()}


def files_digest(files: Iterable[Path]) -> str:
    """A short digest of a list of photo file names (which photos a run trains on)."""
    return hashlib.sha256("\n".join(sorted(Path(f).name for f in files)).encode()).hexdigest()[:16]


def load_checkpoint(path: Path, device: torch.device, signature: Optional[dict] = None) -> dict:
    """A checkpoint written by `save_checkpoint`, its settings compared with `signature` (those of
    this run): TrainingError names the file and every difference, or a file that is not one."""
    if not Path(path).is_file():
        raise TrainingError(f"--resume {path}: no such checkpoint")
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # truncated or foreign files: torch raises several kinds
        raise TrainingError(f"--resume {path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ck, dict) or not {"model", "optimizer", "step"} <= set(ck):
        raise TrainingError(f"--resume {path}: not a checkpoint of the prior trainer")
    saved = ck.get("signature")
    if signature is not None and saved is not None:
        diff = sorted(k for k in set(saved) | set(signature) if saved.get(k) != signature.get(k))
        if diff:
            details = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {signature.get(k)!r}" for k in diff[:6])
            raise TrainingError(f"--resume {path}: the run's settings differ from the checkpoint's ({details})")
    elif signature is not None:
        log.warning("--resume %s: the checkpoint records no settings (written by an earlier version); not checked", path)
    return ck


def check_out_dir(out: Path, names: Iterable[str], overwrite: bool, run_files: Iterable[str] = (),
                  log_file: Optional[str] = None, resume: Optional[str] = None, ckpt_file: Optional[str] = None) -> None:
    """Refuse to overwrite earlier results unless asked.

    names: the run's final files. run_files: what a run writes on its way (its checkpoint, log,
    images): an interrupted run's checkpoint is its only resume point, so these are guarded too,
    unless this run resumes from `out`/`ckpt_file` itself (then they are its own, and the log goes
    on). With --overwrite and a fresh start the old `log_file` is removed, so two runs never mix in
    one log."""
    in_place = resume is not None and ckpt_file is not None and Path(resume).resolve() == (out / ckpt_file).resolve()
    guarded = list(names) + ([] if in_place else list(run_files))
    clash = [n for n in guarded if (out / n).exists()]
    if clash and not overwrite:
        raise TrainingError(f"{out}: would overwrite {clash}; pass --overwrite, resume with --resume "
                            f"{out / ckpt_file if ckpt_file else '<checkpoint>'}, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if log_file is not None and not in_place and (out / log_file).exists():
        (out / log_file).unlink()
