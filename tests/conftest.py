"""Shared fixtures: the real-data root (skips cleanly when absent) and small synthetic faces."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def _data_root() -> Path | None:
    root = Path(os.environ.get("FACEPIPE_DATA") or DEFAULT_DATA)
    return root if root.is_dir() else None


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real-data root ($FACEPIPE_DATA, default ../shared/data); skips the test when absent."""
    root = _data_root()
    if root is None:
        pytest.skip("real data not found: set FACEPIPE_DATA to the folder holding lfw/ and celeba-train/")
    return root


@pytest.fixture(scope="session")
def lfw_root(data_root) -> Path:
    p = data_root / "lfw"
    if not (p / "pairs.txt").is_file():
        pytest.skip(f"LFW not found under {data_root}")
    return p


@pytest.fixture(scope="session")
def celeba_root(data_root) -> Path:
    p = data_root / "celeba-train"
    if not (p / "identities.tsv").is_file():
        pytest.skip(f"celeba-train not found under {data_root}")
    return p


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def fake_faces(rng) -> np.ndarray:
    """Eight random uint8 RGB 112x112 'faces' (for shape and parity checks, not accuracy)."""
    return rng.integers(0, 256, size=(8, 112, 112, 3), dtype=np.uint8)
