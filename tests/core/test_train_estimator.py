"""Estimator training: the KDSR-style teacher and the distilled student each halve their loss in
50 steps on 8 crops; the student is exported as a DegradationEstimator (y -> (B,128))."""

from __future__ import annotations

import json

import pytest
import torch

from _train_helpers import QUIET, TINY_INN, halving_ratio, losses, make_crops, max_weight_diff
from indigo_core.train import run

pytestmark = pytest.mark.slow


def test_teacher_then_student_and_export(tmp_path):
    from indigo_core.estimator import DegradationEstimator, load_estimator

    crops = make_crops(tmp_path / "crops")
    out = tmp_path / "est"
    summary = run(["estimator", "--data", str(crops), "--val-count", "2", "--out", str(out), "--crop", "32",
                   "--batch-size", "4", "--teacher-steps", "50", "--steps", "50", "--lr", "1e-3",
                   "--warmup-steps", "5", "--val-every", "0", "--blur-sigma", "0.5", "4", "--noise", "0", "20",
                   "--jpeg", "40", "95", *QUIET])
    assert summary["step"] == 50

    teacher_curve = losses(out / "teacher")
    student_curve = losses(out)
    assert len(teacher_curve) == 50 and len(student_curve) == 50
    assert halving_ratio(teacher_curve, 10) <= 0.5, f"teacher {teacher_curve[:10]} ... {teacher_curve[-10:]}"
    assert halving_ratio(student_curve) <= 0.5, f"student {student_curve[:5]} ... {student_curve[-5:]}"

    student = load_estimator(out / "estimator.safetensors")
    assert type(student) is DegradationEstimator and student.config.role == "student"
    gamma = student(torch.rand(2, 3, 8, 8))
    assert gamma.shape == (2, 128)
    teacher = load_estimator(out / "teacher" / "estimator_teacher.safetensors")
    assert teacher.config.role == "teacher" and teacher.config.scale == 4

    card = json.loads((out / "estimator.card.json").read_text())
    assert card["stage"] == "student" and card["distillation"]["temperature"] == 0.15
    assert card["teacher_card"]["steps"] == 50
    assert set(card["metrics"]) >= {"kl", "gamma_cos", "noise_mae", "jpeg_mae"}

    # The exported student conditions a PixelINN run (gamma = F(y) feeds the MRSTB channel scales).
    inn_out = tmp_path / "inn"
    done = run(["pixel-inn", "--data", str(crops), "--val-count", "2", "--out", str(inn_out), "--crop", "32",
                "--batch-size", "2", "--steps", "2", "--val-every", "0",
                "--estimator", str(out / "estimator.safetensors"), *TINY_INN, *QUIET])
    assert done["step"] == 2
    inn_card = json.loads((inn_out / "pixel_inn.card.json").read_text())
    assert inn_card["estimator"] == str(out / "estimator.safetensors")
    # gamma really enters the run: the same run without the estimator trains other weights
    plain_out = tmp_path / "inn_plain"
    run(["pixel-inn", "--data", str(crops), "--val-count", "2", "--out", str(plain_out), "--crop", "32",
         "--batch-size", "2", "--steps", "2", "--val-every", "0", *TINY_INN, *QUIET])
    assert max_weight_diff(inn_out / "pixel_inn.safetensors", plain_out / "pixel_inn.safetensors") > 1e-6
