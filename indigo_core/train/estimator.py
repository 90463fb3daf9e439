"""Degradation-estimator training: a KDSR-style teacher, then the distilled student F.

Stage 1, teacher (sees the measurement y (B,3,h,w) and the pixel-unshuffled clean crop x
(B,3*s*s,h,w), 3 + 3 s^2 input channels). KDSR trains its teacher end to end through a
super-resolution network; we have none, so the teacher is trained to *regress the degradation
parameters* that made y: a linear head on its embedding gamma_T (B,128) predicts
(blur sigma_x, blur sigma_y, noise level, JPEG quality), each normalised to [0,1] by the training
ranges, with an MSE loss. This is our choice: it makes gamma_T an explicit description of the
degradation, which is what the INN's channel scales are conditioned on.

Stage 2, student (sees y only; KDSR's KD_IDE layout, the width of the teacher): distilled on the
(B,4w) = (B,512) features with KL(softmax(f_T/T) || softmax(f_S/T)) at T = 0.15 (KDSR). KDSR's
student also receives gradients through its SR network; without one, the 128-d embedding is tied
to the teacher's by an extra MSE term (weight --gamma-weight, 1.0 by default) and the student's
compress layer starts as a copy of the teacher's. The student is exported as a
`DegradationEstimator` in the pack's safetensors format.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, TrainingError
from .common import file_fingerprint
from .data import PARAM_NAMES, Degrader, TrainCrops, ValCrops, check_crop, collate, image_sets, ranges_from_args, shard
from .losses import distillation_kl
from .loop import DistInfo, LoopOptions, Task, train

PRESETS: dict[str, dict[str, Any]] = {
    # width 32, 2 residual blocks (~0.3 M parameters): trains on a CPU.
    "estimator-small": dict(estimator_preset="small", crop=128, batch_size=16, lr=2e-4, steps=5000,
                            teacher_steps=5000, val_every=500),
    # KDSR's sizes (width 128, 6 blocks, ~4.4 M parameters); HR crops of 256 (LR 64 at x4) as KDSR.
    "estimator-kdsr": dict(estimator_preset="kdsr", crop=256, batch_size=16, lr=1e-4, steps=50000,
                           teacher_steps=50000, val_every=2500),
}
DEFAULTS: dict[str, Any] = dict(temperature=0.15, gamma_weight=1.0)
DEFAULT_NAME = "estimator"
DEFAULT_PRESET = "estimator-small"
HEAD_FORMAT = "indigo-estimator-head"


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("estimator")
    g.add_argument("--stage", choices=("both", "teacher", "student"), default="both",
                   help="train the teacher (OUT/teacher/), the student (needs a teacher), or both in turn")
    g.add_argument("--estimator-preset", default=None, choices=("small", "kdsr"),
                   help="network size: small (width 32, 2 blocks) or kdsr (width 128, 6 blocks)")
    g.add_argument("--teacher", default=None, help="teacher file for --stage student "
                   "(default: OUT/teacher/NAME_teacher.safetensors)")
    g.add_argument("--teacher-steps", type=int, default=None, help="teacher updates")
    g.add_argument("--teacher-lr", type=float, default=None, help="teacher learning rate (default: --lr)")
    g.add_argument("--temperature", type=float, default=None, help="KDSR-style distillation temperature")
    g.add_argument("--gamma-weight", type=float, default=None,
                   help="weight of the MSE between student and teacher embeddings")


class ParamNormaliser:
    """Maps degradation parameters (B,4) in PARAM_NAMES order to [0,1] by the training ranges."""

    def __init__(self, ranges) -> None:
        lo = [ranges.blur_sigma[0], ranges.blur_sigma[0], ranges.noise_level[0], ranges.jpeg_quality[0]]
        hi = [ranges.blur_sigma[1], ranges.blur_sigma[1], ranges.noise_level[1],
              100 if ranges.jpeg_prob < 1 else ranges.jpeg_quality[1]]
        self.lo = torch.tensor(lo, dtype=torch.float32)
        self.span = torch.tensor([max(h - l, 1e-6) for l, h in zip(lo, hi)], dtype=torch.float32)

    def normalise(self, p: Tensor) -> Tensor:
        return (p - self.lo.to(p.device)) / self.span.to(p.device)

    def denormalise(self, q: Tensor) -> Tensor:
        return q * self.span.to(q.device) + self.lo.to(q.device)


class TeacherObjective(nn.Module):
    """forward(batch) -> {"loss"}: MSE between head(gamma_T(y, x)) and the normalised parameters."""

    def __init__(self, teacher: nn.Module, head: nn.Linear, norm: ParamNormaliser, amp: Optional[torch.dtype]) -> None:
        super().__init__()
        self.teacher = teacher
        self.head = head
        self.norm = norm
        self.amp = amp

    def predict(self, y: Tensor, x: Tensor) -> Tensor:
        """(B,4) normalised parameter estimates."""
        with torch.autocast(y.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            gamma = self.teacher(y, x)
        return self.head(gamma.float())

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        pred = self.predict(batch["y"], batch["x"])
        return {"loss": F.mse_loss(pred, self.norm.normalise(batch["params"]))}


class StudentObjective(nn.Module):
    """forward(batch) -> {"loss", "kl", "gamma"}: KL at temperature T on the 4w-d features plus
    gamma_weight x MSE between the embeddings; the teacher is frozen and held outside the module."""

    def __init__(self, student: nn.Module, teacher: nn.Module, temperature: float, gamma_weight: float,
                 amp: Optional[torch.dtype]) -> None:
        super().__init__()
        self.student = student
        self._frozen = (teacher,)
        self.temperature = temperature
        self.gamma_weight = gamma_weight
        self.amp = amp

    def _ac(self, t: Tensor):
        return torch.autocast(t.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None)

    def teacher_out(self, y: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad(), self._ac(y):
            g, f = self._frozen[0](y, x, return_features=True)
        return g.float(), f.float()

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        y, x = batch["y"], batch["x"]
        g_t, f_t = self.teacher_out(y, x)
        with self._ac(y):
            g_s, f_s = self.student(y, return_features=True)
        kl = distillation_kl(f_s.float(), f_t, self.temperature)
        gm = F.mse_loss(g_s.float(), g_t)
        return {"loss": kl + self.gamma_weight * gm, "kl": kl, "gamma": gm}


class _EstimatorTaskBase(Task):
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.scale = args.scale or 4
        check_crop(args.crop, self.scale)
        self.images = image_sets(args, self.scale)
        self.ranges = ranges_from_args(args, self.scale)
        self.degrader = Degrader(ranges=self.ranges)
        # The estimator must tell degradations apart: validate on draws from the training ranges.
        self.val_degrader = Degrader(ranges=self.ranges)
        self.norm = ParamNormaliser(self.ranges)
        self.amp: Optional[torch.dtype] = None

    def setup(self, info: DistInfo, amp: Optional[torch.dtype], out: Path) -> None:
        self.amp = amp
        self.device = info.device

    def train_dataset(self):
        return TrainCrops(self.images.train, self.args.crop, self.args.seed, self.args.flips, self.degrader,
                          PARAM_NAMES)

    def _val_batches(self, info: DistInfo):
        if self.images.val is None:
            return
        ds = ValCrops(self.images.val, self.args.crop, self.args.seed, self.val_degrader, PARAM_NAMES)
        idx = shard(len(ds), info.rank, info.world)
        for i in range(0, len(idx), self.args.batch_size):
            b = collate([ds[j] for j in idx[i:i + self.args.batch_size]])
            yield {k: v.to(info.device) for k, v in b.items()}

    def _param_errors(self, pred_norm: Tensor, params: Tensor) -> Tensor:
        """(3,B): |error| of blur sigma (mean of both axes), noise level, JPEG quality."""
        err = (self.norm.denormalise(pred_norm) - params).abs()
        return torch.stack([err[:, :2].mean(1), err[:, 2], err[:, 3]])

    def base_signature(self) -> dict[str, Any]:
        a = self.args
        return {"estimator_preset": a.estimator_preset, "crop": a.crop, "flips": a.flips, "scale": self.scale,
                "degradation": self.degrader.describe(), "data": self.images.fingerprint()}

    def base_card(self) -> dict[str, Any]:
        return {"preset": self.args.preset, "data": self.images.card(), "crop": self.args.crop, "scale": self.scale,
                "degradation": {"train": self.degrader.describe(), "validation": "fixed draws from the "
                                "training ranges (one seed per validation image)"},
                "targets": list(PARAM_NAMES)}


class TeacherTask(_EstimatorTaskBase):
    kind = "estimator"
    loss_names = ("loss",)
    val_names = ("param_mse", "sigma_mae", "noise_mae", "jpeg_mae")

    def objective(self) -> nn.Module:
        from ..estimator import DegradationTeacher, EstimatorConfig

        base = EstimatorConfig.preset(self.args.estimator_preset)
        cfg = dataclasses.replace(base, role="teacher", scale=self.scale)
        self.teacher = DegradationTeacher(cfg)
        head = nn.Linear(cfg.emb_dim, len(PARAM_NAMES))
        return TeacherObjective(self.teacher, head, self.norm, self.amp)

    def validate(self, model: nn.Module, info: DistInfo) -> dict[str, float]:
        sums = torch.zeros(5, dtype=torch.float64, device=info.device)
        for b in self._val_batches(info):
            pred = model.predict(b["y"], b["x"])
            sums[0] += F.mse_loss(pred, self.norm.normalise(b["params"]), reduction="none").mean(1).sum().double()
            sums[1:4] += self._param_errors(pred, b["params"]).sum(1).double()
            sums[4] += b["x"].shape[0]
        sums = info.all_sum(sums)
        n = max(1.0, float(sums[4]))
        return {k: float(v) / n for k, v in zip(self.val_names, sums[:4])} if sums[4] > 0 else {}

    def export(self, model: nn.Module, out: Path, name: str, card: dict, overwrite: bool) -> list[Path]:
        from ..estimator import save_estimator
        from ..io.weights import FORMAT_VERSION, write_weights_file

        meta = {"model_card": json.dumps(card, sort_keys=True, default=str)}
        path = save_estimator(model.teacher.eval(), out / f"{name}.safetensors", overwrite=overwrite,
                              extra_metadata=meta)
        head_meta = {"format": HEAD_FORMAT, "format_version": FORMAT_VERSION,
                     "config": json.dumps({"targets": list(PARAM_NAMES), "lo": self.norm.lo.tolist(),
                                           "span": self.norm.span.tolist()})}
        head = write_weights_file(out / f"{name}.head.safetensors", model.head.state_dict(), head_meta,
                                  overwrite=overwrite)
        return [path, head]

    def output_files(self, out: Path, name: str) -> list[Path]:
        return [out / f"{name}.safetensors", out / f"{name}.head.safetensors"]

    def signature(self) -> dict[str, Any]:
        return {"stage": "teacher", **self.base_signature()}

    def card(self) -> dict[str, Any]:
        return {"stage": "teacher", "target": "regression of the normalised degradation parameters (MSE)",
                **self.base_card()}


class StudentTask(_EstimatorTaskBase):
    kind = "estimator"
    loss_names = ("loss", "kl", "gamma")
    val_names = ("kl", "gamma_mse", "gamma_cos", "sigma_mae", "noise_mae", "jpeg_mae")

    def __init__(self, args: argparse.Namespace, teacher_path: Path) -> None:
        super().__init__(args)
        self.teacher_path = Path(teacher_path)
        if not self.teacher_path.is_file():
            raise TrainingError(f"student distillation needs a trained teacher: {self.teacher_path} not found "
                                f"(run --stage teacher first, or pass --teacher FILE)")

    def setup(self, info: DistInfo, amp: Optional[torch.dtype], out: Path) -> None:
        super().setup(info, amp, out)
        from ..estimator import load_estimator
        from ..io.weights import read_weights_file

        teacher = load_estimator(self.teacher_path, map_location=info.device)
        if teacher.config.role != "teacher":
            raise ConfigError(f"{self.teacher_path}: expected a teacher estimator, got role {teacher.config.role!r}")
        if teacher.config.scale != self.scale:
            raise ConfigError(f"{self.teacher_path}: teacher built for x{teacher.config.scale}, run is x{self.scale}")
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher
        self.head: Optional[nn.Linear] = None
        head_path = self.teacher_path.with_name(self.teacher_path.name.replace(".safetensors", ".head.safetensors"))
        if head_path.is_file():
            tensors, _ = read_weights_file(head_path, HEAD_FORMAT)
            self.head = nn.Linear(teacher.config.emb_dim, len(PARAM_NAMES)).to(info.device)
            self.head.load_state_dict(tensors)
            self.head.requires_grad_(False)

    def objective(self) -> nn.Module:
        from ..estimator import DegradationEstimator

        cfg = dataclasses.replace(self.teacher.config, role="student")
        student = DegradationEstimator(cfg)
        student.compress.load_state_dict(self.teacher.compress.state_dict())
        return StudentObjective(student, self.teacher, self.args.temperature, self.args.gamma_weight, self.amp)

    def validate(self, model: nn.Module, info: DistInfo) -> dict[str, float]:
        sums = torch.zeros(7, dtype=torch.float64, device=info.device)
        for b in self._val_batches(info):
            g_t, f_t = model.teacher_out(b["y"], b["x"])
            g_s, f_s = model.student(b["y"], return_features=True)
            sums[0] += distillation_kl(f_s, f_t, model.temperature).double() * b["x"].shape[0]
            sums[1] += (g_s - g_t).square().mean(1).sum().double()
            sums[2] += F.cosine_similarity(g_s, g_t, dim=1).sum().double()
            if self.head is not None:
                sums[3:6] += self._param_errors(self.head(g_s), b["params"]).sum(1).double()
            sums[6] += b["x"].shape[0]
        sums = info.all_sum(sums)
        if sums[6] == 0:
            return {}
        n = float(sums[6])
        names = self.val_names if self.head is not None else self.val_names[:3]
        return {k: float(v) / n for k, v in zip(names, sums[:len(names)])}

    def export(self, model: nn.Module, out: Path, name: str, card: dict, overwrite: bool) -> list[Path]:
        from ..estimator import save_estimator

        meta = {"model_card": json.dumps(card, sort_keys=True, default=str)}
        return [save_estimator(model.student.eval(), out / f"{name}.safetensors", overwrite=overwrite,
                               extra_metadata=meta)]

    def output_files(self, out: Path, name: str) -> list[Path]:
        return [out / f"{name}.safetensors"]

    def signature(self) -> dict[str, Any]:
        return {"stage": "student", "teacher": file_fingerprint(str(self.teacher_path)),
                "temperature": self.args.temperature, "gamma_weight": self.args.gamma_weight,
                **self.base_signature()}

    def card(self) -> dict[str, Any]:
        teacher_card = self.teacher_path.with_name(self.teacher_path.name.replace(".safetensors", ".card.json"))
        tc = json.loads(teacher_card.read_text(encoding="utf-8")) if teacher_card.is_file() else None
        return {"stage": "student", "teacher_file": str(self.teacher_path),
                "distillation": {"loss": "KL(softmax(f_T/T) || softmax(f_S/T)) on the 4w-d features "
                                 "+ gamma_weight * MSE(gamma_S, gamma_T)",
                                 "temperature": self.args.temperature, "gamma_weight": self.args.gamma_weight},
                "estimator_config": self.teacher.config.to_dict() | {"role": "student"},
                "teacher_card": {k: tc.get(k) for k in ("steps", "duration_s", "metrics", "command")} if tc else None,
                **self.base_card()}


def run(args: argparse.Namespace, opts: LoopOptions, info: DistInfo, argv) -> dict:
    """Teacher, then student (or one of them): two runs of the shared loop.

    The teacher lives in OUT/teacher/ (NAME_teacher.safetensors, its log and checkpoints); the
    student in OUT/ (NAME.safetensors). --stop-at counts teacher steps, then student steps. With
    --resume, a finished teacher is reused and each stage continues from its own checkpoint."""
    if args.teacher_lr is None:
        args.teacher_lr = args.lr
    # Checked here, not at the student's first step: a wrong value must not cost a teacher's training.
    for flag, value, ok, expected in (
            ("--temperature", args.temperature, args.temperature > 0, "a number > 0"),
            ("--gamma-weight", args.gamma_weight, args.gamma_weight >= 0, "a number >= 0"),
            ("--teacher-lr", args.teacher_lr, args.teacher_lr > 0, "a number > 0"),
            ("--teacher-steps", args.teacher_steps, args.teacher_steps >= 1, "an integer >= 1")):
        if not (ok and math.isfinite(value)):
            raise TrainingError(f"{flag}: expected {expected}, got {value}")
    out = Path(opts.out)
    t_out = out / "teacher"
    t_name = f"{opts.name}_teacher"
    teacher_file = t_out / f"{t_name}.safetensors"
    summary: dict = {}
    stop_left = opts.stop_at
    if args.stage == "both" and not opts.resume and not opts.overwrite:
        # Refuse before the teacher trains, not after.
        clash = [p for p in (out / f"{opts.name}.safetensors", out / "train_log.csv", out / "checkpoints" / "last.pt",
                             teacher_file, t_out / "checkpoints" / "last.pt") if p.exists()]
        if clash:
            raise TrainingError(f"output folder {out} already holds a run ({', '.join(str(p) for p in clash[:3])}); "
                                f"pass --resume to continue it, --overwrite to replace it, or choose another --out")
    if args.stage in ("teacher", "both"):
        t_done = args.stage == "both" and opts.resume and teacher_file.is_file()
        if not t_done:
            resume = opts.resume if (t_out / "checkpoints" / "last.pt").is_file() or args.stage == "teacher" else None
            t_stop = min(stop_left, args.teacher_steps) if stop_left else 0
            t_opts = dataclasses.replace(opts, out=t_out, name=t_name, steps=args.teacher_steps, lr=args.teacher_lr,
                                         resume=resume, stop_at=t_stop)
            summary = train(TeacherTask(args), t_opts, info, argv)
            if summary["stopped"] or args.stage == "teacher":
                return summary
        if stop_left:
            stop_left = max(0, stop_left - args.teacher_steps)
            if stop_left == 0:
                return {"step": 0, "stopped": True, "signal": 0, "metrics": {}, "files": []}
    teacher_path = Path(args.teacher) if args.teacher else teacher_file
    resume = opts.resume
    if args.stage == "both" and resume and not (out / "checkpoints" / "last.pt").is_file():
        resume = None
    s_opts = dataclasses.replace(opts, resume=resume, stop_at=stop_left)
    torch.manual_seed(args.seed)
    return train(StudentTask(args, teacher_path), s_opts, info, argv)
