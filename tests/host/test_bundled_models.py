"""The INNs and the estimator that ship in the pack's models/ folder: small fp16 files with model
cards, listed first by Load INN / Degradation Estimate and loadable from there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
INNS = {"indigo-latent-inn.safetensors": ("latent", 4), "indigo-pixel-inn-x4.safetensors": ("pixel", 3)}
ESTIMATOR = "indigo-estimator.safetensors"
RESTORER = "indigo-restorer-x4.safetensors"
CARD_KEYS = ("command", "steps", "global_batch", "hardware", "duration_s", "metrics", "data", "bundled")


@pytest.mark.parametrize("name", [*INNS, ESTIMATOR, RESTORER])
def test_bundled_file_is_small_fp16_with_a_model_card(name):
    from safetensors.torch import load_file

    path = MODELS / name
    assert path.is_file(), f"{path} is missing"
    assert path.stat().st_size < 2_000_000
    floats = {t.dtype for t in load_file(str(path)).values() if t.is_floating_point()}
    assert floats == {torch.float16}
    card = json.loads(path.with_name(name.replace(".safetensors", ".card.json")).read_text())
    for key in CARD_KEYS:
        assert card.get(key), f"{name}: the card has no {key!r}"
    val = set(card["data"]["val_files"])
    split = json.loads((MODELS / "prior" / "split.json").read_text())
    assert val == set(split["val"]), "the model was not validated on the prior's validation photos"
    assert card["hardware"]["device"] and card["duration_s"] > 0


def test_bundled_latent_inn_belongs_to_the_bundled_autoencoder():
    import hashlib

    card = json.loads((MODELS / "indigo-latent-inn.card.json").read_text())
    vae = MODELS / "prior" / "indigo-prior-vae.safetensors"
    assert card["bundled"]["for_autoencoder"]["sha256"] == hashlib.sha256(vae.read_bytes()).hexdigest(), (
        "the bundled LatentINN was trained for another autoencoder than the bundled prior's")


def test_load_inn_lists_the_bundled_inns_first_and_loads_them(comfy_inprocess):
    options = comfy_inprocess.object_info("INDIGO_LoadINN")["input"]["required"]["inn_name"][1]["options"]
    assert sorted(options[: len(INNS)]) == sorted(INNS), options
    assert ESTIMATOR not in options  # an estimator is not an INN
    for name, (domain, channels) in INNS.items():
        res = comfy_inprocess.run_node("INDIGO_LoadINN", inn_name=name)
        cfg = res[0].config
        assert (cfg.domain, cfg.channels) == (domain, channels)


def test_degradation_estimate_lists_and_runs_the_bundled_estimator(comfy_inprocess):
    options = comfy_inprocess.object_info("INDIGO_DegradationEstimate")["input"]["required"]["estimator_name"][1]["options"]
    assert options[0] == ESTIMATOR and not set(INNS) & set(options[:1])
    image = torch.rand(1, 32, 32, 3)
    gamma = comfy_inprocess.run_node("INDIGO_DegradationEstimate", image=image, estimator_name=ESTIMATOR)[0]
    assert gamma.shape == (1, 128) and bool(torch.isfinite(gamma).all())
