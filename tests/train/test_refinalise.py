"""Re-finalising a finished distill (the stage re-run on a complete checkpoint: nothing left to train) must
write the same student.pt bytes and keep metrics.json whole: its per-benchmark summaries and final losses."""

from __future__ import annotations

import json

import torch

from facepipe.pipeline.train.worker import METRICS, STUDENT, finish

from train_synth import make_trainer

torch.set_num_threads(1)


class Scorer:
    """An evaluator with per-benchmark summaries, as pipeline/train/evaluate.Evaluator has."""

    def __init__(self):
        self.calls = 0
        self.last_summaries: list[dict] = []

    def __call__(self, model) -> dict[str, float]:
        self.calls += 1
        self.last_summaries = [{"name": "tiny", "accuracy": 91.5, "std": 1.25, "tar_at_far": {"1e-3": 40.0}}]
        return {"tiny_accuracy": 91.5}


def _finalise(out_dir):
    trainer = make_trainer(out_dir, steps=6, eval_every=3)
    trainer.evaluator, trainer.best_metric = Scorer(), "tiny_accuracy"
    result = trainer.fit()
    finish(trainer, result, {"out_dir": str(out_dir), "result": str(out_dir / "result.json")}, seconds=1.0)
    return trainer, json.loads((out_dir / METRICS).read_text()), (out_dir / STUDENT).read_bytes()


def test_refinalising_keeps_benchmarks_and_final_losses_and_the_bytes(tmp_path):
    first, metrics1, student1 = _finalise(tmp_path)
    assert first.evaluator.calls == 2 and first.resumed_from is None
    assert metrics1["benchmarks"]["tiny"]["accuracy"] == 91.5
    assert set(metrics1["train"]["final_losses"]) >= {"loss", "lr", "grad_norm"}

    again, metrics2, student2 = _finalise(tmp_path)
    assert again.resumed_from == 6 and again.evaluator.calls == 0  # nothing trained, nothing re-evaluated
    assert metrics2["benchmarks"] == metrics1["benchmarks"]
    assert metrics2["train"]["final_losses"] == metrics1["train"]["final_losses"]
    assert metrics2["metrics"] == metrics1["metrics"] and metrics2["best"] == metrics1["best"]
    assert student2 == student1
