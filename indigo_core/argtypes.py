"""argparse value types shared by the command-line tools: out-of-range values are refused while the
command line is parsed (exit status 2, the flag named by argparse), before any work starts."""

from __future__ import annotations

import argparse
import math
from typing import Callable


def ranged(kind: type, ok: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    """An argparse type: `text` parsed as `kind` (int or float, finite) and accepted when ok(value)."""
    what = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


positive_int = ranged(int, lambda v: v >= 1, "an integer >= 1")
non_negative_int = ranged(int, lambda v: v >= 0, "an integer >= 0")
positive = ranged(float, lambda v: v > 0, "a number > 0")
non_negative = ranged(float, lambda v: v >= 0, "a number >= 0")
fraction = ranged(float, lambda v: 0 < v < 1, "a number between 0 and 1")
