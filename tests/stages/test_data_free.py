"""Data-free mode: with no face data configured, teacher -> distill still runs on DCGAN faces and scores
the student by agreement with the teacher (pipeline/data/synthetic/datafree.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facepipe.pipeline.data.synthetic.datafree import agreement

REPO = Path(__file__).resolve().parents[2]


def test_agreement_is_perfect_for_the_teacher_itself_and_low_for_noise(rng):
    t = rng.normal(size=(40, 16)).astype(np.float32)
    same = agreement(t * 3.0, t)  # scale does not matter: cosine and nearest neighbours
    assert same["agreement_cosine"] == pytest.approx(1.0, abs=1e-6) and same["agreement_top1"] == 1.0
    noise = agreement(rng.normal(size=(40, 16)).astype(np.float32), t)
    assert abs(noise["agreement_cosine"]) < 0.2 and noise["agreement_top1"] < 0.3


def test_agreement_rejects_mismatched_shapes(rng):
    with pytest.raises(ValueError, match="differ"):
        agreement(np.zeros((3, 4), np.float32), np.zeros((3, 5), np.float32))


def test_run_without_data_distils_on_generated_faces(tmp_path, data_free_config):
    from facepipe.pipeline.config import load_config
    from facepipe.pipeline.runner import run_pipeline

    cfg = load_config(data_free_config, [
        "data.generated=16", "data.generated_eval=16", "distill.steps=2", "distill.batch_size=8",
        "distill.num_workers=0", "distill.tensorboard=false", "run.name=free"])
    assert cfg.data_free()
    run_pipeline(cfg, to="distill")
    run = tmp_path / "runs" / "free"
    teacher = json.loads((run / "teacher" / "manifest.json").read_text())
    assert teacher["metrics"]["data_free"] is True
    assert len(list((run / "teacher" / "generated" / "train").iterdir())) == 16  # one identity per face
    assert np.load(run / "teacher" / "generated" / "eval_teacher.npy").shape == (16, 128)
    metrics = json.loads((run / "distill" / "metrics.json").read_text())
    assert set(metrics["metrics"]) >= {"agreement_cosine", "agreement_cosine_min", "agreement_top1"}
    assert -1.0 <= metrics["metrics"]["agreement_cosine"] <= 1.0
    assert "no face data configured" in metrics["benchmarks"]["agreement"]["note"]
