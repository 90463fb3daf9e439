"""The shared input tests of indigo_core.checks: which values each predicate takes, the wording of
check_int, and that the tensor helpers read metadata only."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from indigo_core.checks import (check_int, is_bchw, is_finite, is_int, is_integral, is_py_int, is_real, shape_or_type,
                                spatial_at_least, uint8_hint)
from indigo_core.degradations.jpeg import jpeg_real
from indigo_core.degradations.kernels import gaussian_kernel_1d
from indigo_core.degradations.resize import downsample
from indigo_core.errors import ConfigError
from indigo_core.restore.pipeline import RestoreSettings

NOT_NUMBERS = [None, "1", b"1", [1], (1,), 1 + 0j, torch.tensor(1.0), True, False]


@pytest.mark.parametrize("v", NOT_NUMBERS)
def test_non_numbers_and_bools_are_refused_by_every_scalar_predicate(v) -> None:
    for pred in (is_real, is_finite, is_int, is_py_int, is_integral):
        assert pred(v) is False, (pred.__name__, v)


def test_is_real_takes_any_real_type_including_non_finite() -> None:
    for v in (0, -3, 2.5, np.float32(0.5), np.float64(-1.0), np.int64(7), math.inf, -math.inf, math.nan):
        assert is_real(v)


def test_is_finite_refuses_inf_and_nan() -> None:
    assert is_finite(0.0) and is_finite(-2) and is_finite(np.float32(1e30))
    for v in (math.inf, -math.inf, math.nan, np.float32("inf")):
        assert not is_finite(v)


def test_is_int_takes_numpy_integers_but_no_floats() -> None:
    assert is_int(3) and is_int(-1) and is_int(np.int64(3)) and is_int(np.int32(0))
    for v in (2.0, np.float64(2.0), 2.5):
        assert not is_int(v)


def test_is_py_int_refuses_numpy_integers() -> None:
    assert is_py_int(0) and is_py_int(-5)
    for v in (np.int64(3), np.int32(0), 2.0):
        assert not is_py_int(v)


def test_is_integral_takes_integer_valued_reals() -> None:
    for v in (2, 2.0, np.float32(4.0), np.int64(3), -1.0):
        assert is_integral(v)
    for v in (2.5, np.float64(0.1), float("inf"), float("-inf"), float("nan"), np.float32("inf")):
        assert not is_integral(v)  # inf and NaN used to raise OverflowError / ValueError from int()


@pytest.mark.parametrize("call, message", [
    (lambda: gaussian_kernel_1d(1.0, float("inf")), "kernel size: expected an odd integer >= 1, got inf"),
    (lambda: downsample(torch.rand(1, 3, 8, 8), float("nan")), "downsample: expected an integer scale >= 1, got nan"),
    (lambda: jpeg_real(torch.rand(1, 3, 8, 8), float("inf")), "jpeg quality: expected an integer in 1..100, got inf"),
])
def test_non_finite_integers_get_the_entry_points_own_refusal(call, message) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        call()


@pytest.mark.parametrize("field, value, message", [
    ("refine_lr", float("nan"), "refine_lr: expected >= 0, got nan"),  # was accepted (nan < 0 is False)
    ("steps", True, "steps: expected an integer >= 1, got True"),  # bool was taken as 1
    ("scale", True, "scale: expected an integer >= 1, got True"),
    ("denoise", "0.5", "denoise: expected a number in (0, 1], got '0.5'"),  # was a bare TypeError
    ("regulariser_end", None, "regulariser_end: expected a number in [0, 1], got None"),
])
def test_restore_settings_refuse_non_numbers_bools_and_nan(field, value, message) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        RestoreSettings(**{field: value})


def test_check_int_message_and_bounds() -> None:
    check_int("Cfg.n", 1, 1)
    check_int("Cfg.n", np.int64(5), 0)
    check_int("Cfg.n", 0, 0, python_int=True)
    with pytest.raises(ConfigError, match=r"^Cfg\.n: expected an integer >= 1, got 0$"):
        check_int("Cfg.n", 0, 1)
    with pytest.raises(ConfigError, match=r"^noise seed: expected an integer >= 0, got True$"):
        check_int("noise seed", True, 0)
    with pytest.raises(ConfigError, match=r"got 2\.0$"):
        check_int("Cfg.n", 2.0, 1)
    with pytest.raises(ConfigError, match=r"got np\.int64\(3\)$|got 3$"):
        check_int("Cfg.n", np.int64(3), 1, python_int=True)


def test_shape_or_type() -> None:
    x = torch.zeros(2, 3, 4, 5, dtype=torch.float16)
    assert shape_or_type(x) == (2, 3, 4, 5)
    assert shape_or_type(x, with_dtype=True) == "(2, 3, 4, 5) torch.float16"
    assert shape_or_type(None) == "NoneType"
    assert shape_or_type(np.zeros((1, 3))) == "ndarray"
    assert shape_or_type([1, 2], with_dtype=True) == "list"


def test_is_bchw() -> None:
    x = torch.zeros(1, 3, 8, 8)
    assert is_bchw(x) and is_bchw(x, 3)
    assert not is_bchw(x, 4)
    assert is_bchw(torch.zeros(0, 3, 0, 0), 3)  # sizes are spatial_at_least's question
    assert is_bchw(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), 3)  # any dtype
    for bad in (torch.zeros(3, 8, 8), torch.zeros(1, 1, 3, 8, 8), np.zeros((1, 3, 8, 8)), None, [[1]]):
        assert not is_bchw(bad) and not is_bchw(bad, 3)


def test_spatial_at_least() -> None:
    assert spatial_at_least(torch.zeros(1, 1, 1, 1))
    assert not spatial_at_least(torch.zeros(1, 1, 0, 4))
    assert not spatial_at_least(torch.zeros(1, 1, 4, 0))
    assert spatial_at_least(torch.zeros(2, 2), 2) and not spatial_at_least(torch.zeros(1, 3, 1, 2), 2)


def test_uint8_hint() -> None:
    assert uint8_hint(torch.uint8) == " (convert 8-bit images with x.float() / 255)"
    for dt in (torch.float32, torch.int64, torch.bool, torch.int8):
        assert uint8_hint(dt) == ""


def test_tensor_helpers_read_no_data() -> None:
    # a meta tensor has no data: anything that read values (or synced a device) would fail on it
    x = torch.empty(2, 3, 4, 4, device="meta")
    assert is_bchw(x, 3) and spatial_at_least(x, 4)
    assert shape_or_type(x, with_dtype=True) == "(2, 3, 4, 4) torch.float32"
