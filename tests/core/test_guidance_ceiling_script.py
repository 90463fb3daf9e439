"""scripts/guidance_ceiling.py on one validation photo with the bundled models: the INNs hold the
measurement (given the ground truth's details they reconstruct far above bicubic), and what they
reconstruct follows the quality of the details they are given."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ceiling(script):
    return script("guidance_ceiling")


def test_inn_reconstruction_follows_the_details_it_is_given(ceiling, capsys) -> None:
    assert ceiling.main(["--photos", "1", "--no-lpips"]) == 0
    rows = {line.split(" | ")[0]: float(line.split(" | ")[1])
            for line in capsys.readouterr().out.splitlines() if line.count(" | ") == 2 and "PSNR" not in line
            and not line.startswith("---")}
    bicubic, restorer = rows["bicubic up(y)"], rows["stage-1 restorer R(y)"]
    assert restorer > bicubic + 0.5
    for inn in ("LatentINN", "PixelINN"):
        oracle, stage1, up, zero = (rows[f"{inn}, {k}"] for k in
                                    ("details of x (oracle)", "details of R(y)", "details of up(y)", "zero details"))
        assert oracle > restorer + 3.0, inn  # the measurement plus true details: far above R(y)
        assert oracle > stage1 > up > zero, inn
        assert abs(up - bicubic) < 1.0, inn  # bicubic's own details give bicubic back, about


def test_a_missing_photo_folder_is_a_usage_error(ceiling, script, tmp_path, capsys) -> None:
    for name in ("guidance_ceiling", "guidance_margin", "measure_defaults", "tile_seams", "tune_guidance"):
        with pytest.raises(SystemExit) as info:
            script(name).main(["--photo-dir", str(tmp_path / "nope")])
        assert info.value.code == 2, name
        assert "is not a folder" in capsys.readouterr().err, name
