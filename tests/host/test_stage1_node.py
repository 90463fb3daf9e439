"""Stage-1 Restore: lists the bundled restorer first, equals the core's R(y) (per image of a batch),
beats bicubic on a real degraded photo, loads a user's file from models/indigo/, and refuses bad
inputs with a message naming what was expected."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_bundled_models import MODELS, RESTORER

PHOTO = MODELS.parents[1] / "shared" / "data" / "photos" / "gcompris_goat.png"


def _degraded_photo(host):
    from PIL import Image

    with Image.open(PHOTO) as im:
        im = im.convert("RGB")
        w, h = im.size
        im = im.crop((w // 2 - 96, h // 2 - 96, w // 2 + 96, h // 2 + 96))
    x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None].float() / 255
    y, _ = host.module("indigo_core.degradations").degrade(x, "medium", generator=0)
    return x, y


def test_bundled_restorer_is_listed_first_matches_the_core_and_beats_bicubic(comfy_inprocess):
    rst = comfy_inprocess.module("indigo_core.restorer")
    options = comfy_inprocess.object_info("INDIGO_Stage1Restore")["input"]["required"]["restorer_name"][1]["options"]
    assert options[0] == RESTORER
    x, y = _degraded_photo(comfy_inprocess)
    image = y.movedim(1, -1)
    (out,) = comfy_inprocess.run_node("INDIGO_Stage1Restore", image=torch.cat([image, image.flip(2)]),
                                      restorer_name=RESTORER).outputs
    assert out.shape == (2, 192, 192, 3)
    want = rst.load_restorer(MODELS / RESTORER).restore(y).movedim(1, -1)
    assert torch.allclose(out[:1], want, atol=1e-5)
    assert torch.allclose(out[1:], rst.load_restorer(MODELS / RESTORER).restore(
        y.flip(-1)).movedim(1, -1), atol=1e-5)
    bic = comfy_inprocess.module("indigo_core.guidance").upsample_measurement(y, (192, 192))
    psnr = lambda a: float(-10 * torch.log10(((a - x) ** 2).mean()))  # noqa: E731
    assert psnr(out[:1].movedim(-1, 1)) > psnr(bic) + 0.5, (psnr(out[:1].movedim(-1, 1)), psnr(bic))


def test_a_users_restorer_file_loads_and_bad_inputs_are_refused(comfy_inprocess):
    rst = comfy_inprocess.module("indigo_core.restorer")
    net = rst.build_restorer(rst.RestorerConfig(scale=2, width=8, n_blocks=1))
    rst.save_restorer(net, comfy_inprocess.models_dir / "my-restorer-x2.safetensors", overwrite=True)
    (out,) = comfy_inprocess.run_node("INDIGO_Stage1Restore", image=torch.rand(1, 10, 12, 3),
                                      restorer_name="my-restorer-x2.safetensors").outputs
    assert out.shape == (1, 20, 24, 3)
    errors = comfy_inprocess.core.errors
    with pytest.raises(errors.WeightsFileError, match="not found"):
        comfy_inprocess.run_node("INDIGO_Stage1Restore", image=torch.rand(1, 8, 8, 3), restorer_name="nope.safetensors")
    with pytest.raises(errors.ShapeError, match="at least 2x2"):
        comfy_inprocess.run_node("INDIGO_Stage1Restore", image=torch.rand(1, 1, 8, 3), restorer_name=RESTORER)
