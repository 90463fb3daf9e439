"""Shape checks shared by the guidance, the refinement and the host adapters."""

from __future__ import annotations

from typing import Sequence

from ..errors import ShapeError


def check_aspect(name: str, got: Sequence[int], target: Sequence[int], what: str) -> None:
    """ShapeError unless an image of size `got` (h, w) has the aspect ratio of `target` (H, W), up to
    the rounding of a resize (one pixel plus 1 %). `what` names the target in the message."""
    hy, wy = int(got[0]), int(got[1])
    ht, wt = int(target[0]), int(target[1])
    tol = 1.0 + 0.01 * max(hy, wy)
    if abs(wy - hy * wt / ht) > tol and abs(hy - wy * ht / wt) > tol:
        raise ShapeError(f"{name}: expected the aspect ratio of {what} {ht}x{wt} "
                         f"(e.g. {ht // 4}x{wt // 4} for x4), got {hy}x{wy}")
