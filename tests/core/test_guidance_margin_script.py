"""scripts/guidance_margin.py on one training photo with the bundled models: the table it writes
is the three runs' real metrics, its gain column is their difference, and bad options fail early."""

from __future__ import annotations

import csv

import pytest


@pytest.fixture(scope="module")
def margin(script):
    return script("guidance_margin")


def test_margin_table_is_guided_minus_unguided(margin, metrics_weights_dir, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("INDIGO_METRICS_DIR", str(metrics_weights_dir))
    out = tmp_path / "m"
    assert margin.main(["--photos", "1", "--fixes", "none", "--denoise", "1.0", "--no-pixel", "--threads", "1",
                        "--set", "steps=6", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "margin.csv", newline="")))
    assert len(rows) == 1 and rows[0]["colour fix"] == "none" and rows[0]["denoise"] == "1"
    r = rows[0]
    unguided, latent = float(r["unguided PSNR"]), float(r["latent PSNR"])
    assert 5.0 < unguided < 40.0 and 5.0 < latent < 40.0
    assert float(r["latent - unguided dB"]) == pytest.approx(latent - unguided, abs=0.011)
    # from pure noise with no colour fix, the LatentINN guidance is what ties the sample to y
    assert latent - unguided > 1.0
    assert "overrides {'steps': 6}" in (out / "margin.md").read_text()


@pytest.mark.parametrize("args, message", [(["--set", "nosuch=1"], "RestoreSettings field"),
                                           (["--set", "w_p"], "FIELD=VALUE"),
                                           (["--fixes", "wavelet"], "'wavelet-L'"),
                                           (["--fixes", "fancy-3"], "'wavelet-L'")])
def test_bad_options_are_named(margin, args, message, capsys) -> None:
    with pytest.raises(SystemExit):
        margin.main(args + ["--photos", "1"])
    assert message in capsys.readouterr().err
