"""Shared fixtures: the real-data root (skips cleanly when absent), a real distilled student, and small
synthetic faces."""

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


@pytest.fixture(scope="session")
def distilled_student(tmp_path_factory, lfw_root, celeba_root) -> Path:
    """A real MobileFaceNet distilled from SFace: $FACEPIPE_STUDENT, else the default run's student.pt (after
    `make demo`), else one trained here by the smoke preset's teacher + distill stages (~1 min)."""
    import shutil
    import subprocess
    import sys

    for candidate in (os.environ.get("FACEPIPE_STUDENT"), REPO / "runs" / "default" / "distill" / "student.pt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    from facepipe.pipeline.assets import fetch_asset
    from facepipe.pipeline.errors import BackendUnavailable

    try:
        fetch_asset("sface")
    except BackendUnavailable as e:
        pytest.skip(f"no distilled student and the SFace teacher is unavailable: {e}")
    work = tmp_path_factory.mktemp("student")
    shutil.copy(REPO / "pipeline.yaml", work / "pipeline.yaml")
    exe = Path(sys.executable).with_name("facepipe")
    env = {**os.environ, "FACEPIPE_DATA": str(lfw_root.parent)}
    res = subprocess.run([str(exe), "run", "-c", "pipeline.yaml", "--preset", "smoke", "--to", "distill"], cwd=work,
                         env=env, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    return work / "runs" / "smoke" / "distill" / "student.pt"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def fake_faces(rng) -> np.ndarray:
    """Eight random uint8 RGB 112x112 'faces' (for shape and parity checks, not accuracy)."""
    return rng.integers(0, 256, size=(8, 112, 112, 3), dtype=np.uint8)
