"""Scale-out: `torchrun --nproc_per_node 2` (gloo on CPU) trains data-parallel, only rank 0 writes,
and the weights equal a 1-process run with the same global batch (2 x 2 = 1 x 4) within 1e-5."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from _train_helpers import LEARNABLE_DEGRADATION, REPO_ROOT, TINY_INN, losses, make_crops, max_weight_diff
from indigo_core.train import run

pytestmark = pytest.mark.slow

STEPS = 8


def argv(data, out, batch):
    return ["pixel-inn", "--data", str(data), "--val-count", "2", "--out", str(out), "--crop", "32",
            "--batch-size", str(batch), "--steps", str(STEPS), "--lr", "2e-3", "--warmup-steps", "2",
            "--val-every", "4", "--ckpt-every", "4", "--log-every", "1", "--no-progress", "--threads", "1",
            *TINY_INN, *LEARNABLE_DEGRADATION]


def test_two_process_gloo_run_matches_one_process(tmp_path):
    crops = make_crops(tmp_path / "crops")
    two, one = tmp_path / "two", tmp_path / "one"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "indigo_core.train", *argv(crops, two, 2), "--device", "cpu"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    n = torch.get_num_threads()
    try:
        run([*argv(crops, one, 4), "--device", "cpu"])
    finally:
        torch.set_num_threads(n)

    # Same samples, same updates: weights and the logged global-batch losses agree.
    assert max_weight_diff(one / "pixel_inn.safetensors", two / "pixel_inn.safetensors") <= 1e-5
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == STEPS
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-5

    # Rank 0 alone wrote: the same files as the 1-process run, one log row per step, one val row
    # per validation.
    def files(d):
        return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())

    assert files(two) == files(one)
    def steps(csv):
        return [line.split(",")[0] for line in csv.read_text().splitlines()[1:]]

    assert steps(two / "train_log.csv") == [str(i) for i in range(1, STEPS + 1)]
    assert steps(two / "val_log.csv") == ["0", "4", "8"]

    card = json.loads((two / "pixel_inn.card.json").read_text())
    assert card["hardware"]["processes"] == 2 and card["global_batch"] == 4
    assert card["command"].startswith("torchrun --nproc_per_node 2 -m indigo_core.train pixel-inn ")
    assert card["metrics"] == pytest.approx(json.loads((one / "pixel_inn.card.json").read_text())["metrics"],
                                            abs=1e-4)
