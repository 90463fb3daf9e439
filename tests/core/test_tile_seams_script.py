"""scripts/tile_seams.py on one validation photo with the bundled autoencoder: the feathered window
the VAE tiles use reproduces the whole decode far more closely than the wide Gaussian one did."""

from __future__ import annotations


import pytest


@pytest.fixture(scope="module")
def seams(script):
    return script("tile_seams")


def test_feathered_vae_tiles_match_the_whole_decode(seams, capsys) -> None:
    assert seams.main(["--photos", "1", "--size", "192", "--tile", "8", "--overlap", "4", "--sigmas", "0.25"]) == 0
    rows = {line.split(" | ")[0]: [float(v) for v in line.split(" | ")[1:]]
            for line in capsys.readouterr().out.splitlines() if line.startswith(("gaussian", "feather"))}
    assert set(rows) == {"gaussian 0.25", "feather"}
    assert rows["feather"][2] > rows["gaussian 0.25"][2] + 20  # PSNR against the whole decode, dB
    assert rows["feather"][1] < 1e-3 <= rows["gaussian 0.25"][0]
