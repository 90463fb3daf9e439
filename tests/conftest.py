"""Shared test set-up: the seed fixture and test tiers.

Tiers (markers, declared in pyproject.toml):
- tests/core/: pure-core tests, fast, no ComfyUI.
- tests/host/: against the real ComfyUI 0.3.75 (marked ``host`` automatically); see
  tests/host/conftest.py for the ``comfy_inprocess`` and ``comfy_server`` fixtures.
- ``slow``: longer tests (server boots, short trainings); ``gpu``: needs CUDA (skipped without).

Run everything with ./scripts/test.sh (sets up the venv and the host first). Do not add
``__init__.py`` files under tests/: the repository root is itself a package (the ComfyUI entry
point), and pytest would then try to import it.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The default seed of the ``seed`` fixture (INDIGO_TEST_SEED overrides it).
DEFAULT_SEED = 1234


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op torch thread for the whole session: the tests' tensors are small and the test
    machines are shared, where two threads spinning against other processes run many times slower
    than one. Results do not depend on it (float rounding aside). Restored at the end."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_configure(config: pytest.Config) -> None:
    for line in (
        "slow: longer tests (server boots, short trainings)",
        "gpu: needs CUDA",
        "host: needs the real ComfyUI host",
    ):
        config.addinivalue_line("markers", line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    host_dir = REPO_ROOT / "tests" / "host"
    cuda = None
    for item in items:
        if host_dir in item.path.parents:
            item.add_marker(pytest.mark.host)
        if item.get_closest_marker("gpu") is not None:
            if cuda is None:
                import torch

                cuda = torch.cuda.is_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs CUDA (marked gpu)"))


@pytest.fixture
def seed() -> int:
    """Seeds Python's, NumPy's and torch's generators; returns the seed (for torch.Generator etc.)."""
    value = int(os.environ.get("INDIGO_TEST_SEED", DEFAULT_SEED))
    random.seed(value)
    try:
        import numpy as np

        np.random.seed(value)
    except ImportError:
        pass
    import torch

    torch.manual_seed(value)
    return value


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the pack folder)."""
    return REPO_ROOT
