"""The training loop on a tiny network and synthetic faces: exact resume, checkpoint refusal, bad inputs,
divergence, evaluation / best.pt, cache vs online teacher, logs."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from facepipe.pipeline.embedder import Preprocess, TorchEmbedder
from facepipe.pipeline.errors import ConfigError, DataError, ModelError
from facepipe.pipeline.train.checkpoint import STUDENT_KIND, CheckpointError, load_checkpoint
from facepipe.pipeline.train.targets import CachedTargets, OnlineTargets
from facepipe.pipeline.train.trainer import TrainingDiverged

from train_synth import SynthFaces, TinyNet, make_trainer

torch.set_num_threads(1)

# ada_arc_distill (centres, all-gathered), arcface (a trainable head), angular_kd (dropout: uses the torch RNG)
LOSSES = [{"name": "ada_arc_distill"}, {"name": "arcface", "weight": 0.5}, {"name": "angular_kd", "weight": 0.1}]
AUG = {"flip": True, "shift": 4, "color": 0.2}


def losses_of(path):
    with open(path, newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


class Interrupt(Exception):
    pass


def stop_at(n):
    def cb(trainer, step):
        if step == n:
            raise Interrupt

    return cb


def test_interrupted_run_resumes_exactly(tmp_path):
    kw = dict(epochs=3, save_every=5, bn=True, losses=LOSSES, augment=AUG, schedule="cosine", warmup_epochs=0.5)
    full = make_trainer(tmp_path / "a", **kw).fit()
    with pytest.raises(Interrupt):
        make_trainer(tmp_path / "b", callbacks=[stop_at(13)], **kw).fit()
    assert load_checkpoint(tmp_path / "b/checkpoints/last.pt")["step"] == 10  # mid epoch 2 (8 steps/epoch)
    resumed = make_trainer(tmp_path / "b", **kw).fit()
    assert resumed.resumed_from == 10 and resumed.step == full.step == 24
    a, b = (load_checkpoint(tmp_path / d / "checkpoints/last.pt") for d in "ab")
    for part in ("model", "loss"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert losses_of(tmp_path / "a/train_log.csv") == losses_of(tmp_path / "b/train_log.csv")
    assert a["complete"] and b["complete"]


def test_checkpoint_of_another_config_is_refused_then_restart_discards_it(tmp_path):
    with pytest.raises(Interrupt):
        make_trainer(tmp_path, save_every=3, callbacks=[stop_at(4)]).fit()
    before = (tmp_path / "checkpoints/last.pt").read_bytes()
    with pytest.raises(CheckpointError, match=r"different configuration: distill.lr changed: 0.05 -> 0.01.*--restart"):
        make_trainer(tmp_path, save_every=3, lr=0.01).fit()
    assert (tmp_path / "checkpoints/last.pt").read_bytes() == before  # nothing lost
    with pytest.raises(CheckpointError, match="different configuration"):
        make_trainer(tmp_path, save_every=3, lr=0.01).fit("resume")
    r = make_trainer(tmp_path, save_every=3, lr=0.01).fit("restart")
    assert r.resumed_from is None and r.step == 16
    assert losses_of(tmp_path / "train_log.csv")[0][0] == 1 and len(losses_of(tmp_path / "train_log.csv")) == 16


def test_resume_requires_a_checkpoint_and_finished_runs_of_other_configs_are_replaced(tmp_path):
    with pytest.raises(CheckpointError, match="--resume: no checkpoint"):
        make_trainer(tmp_path).fit("resume")
    make_trainer(tmp_path, steps=3).fit()
    again = make_trainer(tmp_path, steps=3).fit()  # same config, finished: nothing left to train
    assert again.resumed_from == 3 and again.step == 3
    other = make_trainer(tmp_path, steps=4, lr=0.02).fit()  # finished run of another config: start over
    assert other.resumed_from is None and other.step == 4


def test_bad_label_empty_set_and_dimension_mismatch_fail_before_training(tmp_path):
    with pytest.raises(DataError, match=r"record 9 has label 7, outside 0..4 \(num_classes=5"):
        make_trainer(tmp_path, source=SynthFaces(64, 5, bad={9: 7})).fit()
    with pytest.raises(DataError, match="is empty"):
        make_trainer(tmp_path, source=SynthFaces(0, 5))
    with pytest.raises(ConfigError, match=r"student embedding size \(16\) must equal the teacher's \(32\)"):
        make_trainer(tmp_path, teacher_dim=32)
    emb = np.zeros((64, 32), np.float32)
    with pytest.raises(ModelError, match="expects 16-d teacher embeddings but the teacher \\(cache\\) gives 32-d"):
        make_trainer(tmp_path, targets=CachedTargets(emb, emb))
    assert not (tmp_path / "checkpoints").exists()


def test_nan_loss_stops_with_the_step_and_the_last_good_checkpoint(tmp_path):
    def poison(trainer, step):
        if step == 6:
            with torch.no_grad():
                trainer.student.fc.weight.fill_(float("nan"))

    with pytest.raises(TrainingDiverged) as err:
        make_trainer(tmp_path, save_every=4, callbacks=[poison]).fit()
    ckpt = tmp_path / "checkpoints" / "last.pt"
    assert "loss is not finite at step 7 (epoch 0, batch 7" in str(err.value)
    assert f"the last good checkpoint is {ckpt} (step 4)" in str(err.value)
    good = load_checkpoint(ckpt)
    assert good["step"] == 4 and all(torch.isfinite(v).all() for v in good["model"].values())
    assert [s for s, _ in losses_of(tmp_path / "train_log.csv")] == [1, 2, 3, 4, 5, 6]


def test_evaluation_callback_picks_best_pt(tmp_path):
    scores = iter([0.50, 0.90, 0.70, 0.80])
    modes = []

    def evaluator(model):
        model.eval()  # as TorchEmbedder does; the trainer must switch back to training
        return {"tiny_accuracy": next(scores)}

    t = make_trainer(tmp_path, steps=12, eval_every=4, callbacks=[lambda tr, step: modes.append(tr.student.training)])
    t.evaluator, t.best_metric = evaluator, "tiny_accuracy"
    r = t.fit()
    assert r.best == {"metric": "tiny_accuracy", "value": 0.9, "step": 8}
    assert r.metrics == {"tiny_accuracy": 0.7}  # evaluated at steps 4, 8 and the final 12
    assert all(modes) and len(modes) == 12
    best = load_checkpoint(tmp_path / "best.pt", STUDENT_KIND)
    assert best["step"] == 8 and best["best"]["value"] == 0.9
    assert best["state_dict"].keys() == t.student.state_dict().keys()
    with open(tmp_path / "eval_log.csv") as f:
        assert f.read().splitlines() == ["step,tiny_accuracy", "4,0.5", "8,0.9", "12,0.7"]


def test_unknown_best_metric_is_a_config_error(tmp_path):
    t = make_trainer(tmp_path, steps=2)
    t.evaluator, t.best_metric = (lambda m: {"lfw_accuracy": 1.0}), "lfw_acc"
    with pytest.raises(ConfigError, match="best_metric='lfw_acc' is not among the evaluated metrics \\(lfw_accuracy"):
        t.fit()


def test_cached_teacher_equals_the_online_teacher(tmp_path):
    """The cache serves flipped batches with the mirrored faces' embeddings: the same losses as online."""
    torch.manual_seed(5)
    teacher = TorchEmbedder(TinyNet(16), Preprocess(), name="tiny-teacher")
    src = SynthFaces(32, 4)
    faces = np.stack([src.image(i) for i in range(len(src))])
    cached = CachedTargets(teacher.embed(faces), teacher.embed(np.ascontiguousarray(faces[:, :, ::-1])))
    kw = dict(source=src, num_classes=4, steps=6, augment={"flip": True}, losses=LOSSES[:2])
    make_trainer(tmp_path / "cache", targets=cached, **kw).fit()
    make_trainer(tmp_path / "online", targets=OnlineTargets(teacher), **kw).fit()
    a, b = losses_of(tmp_path / "cache/train_log.csv"), losses_of(tmp_path / "online/train_log.csv")
    assert [s for s, _ in a] == [s for s, _ in b]
    assert np.allclose([v for _, v in a], [v for _, v in b], rtol=1e-5)


def test_every_loss_term_is_logged_and_tensorboard_written(tmp_path):
    make_trainer(tmp_path, steps=3, losses=LOSSES, tensorboard=True).fit()
    with open(tmp_path / "train_log.csv") as f:
        header = f.readline().strip().split(",")
    assert header[:7] == ["step", "epoch", "lr", "loss", "ada_arc_distill", "arcface", "angular_kd"]
    rows = list(csv.DictReader(open(tmp_path / "train_log.csv")))
    for r in rows:  # the total is the weighted sum of the logged terms
        assert float(r["loss"]) == pytest.approx(float(r["ada_arc_distill"]) + 0.5 * float(r["arcface"])
                                                 + 0.1 * float(r["angular_kd"]), rel=1e-5)
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_cpu_trains_in_fp32_whatever_amp_says(tmp_path):
    t = make_trainer(tmp_path, steps=2, amp="fp16")
    t.fit()
    assert t.scaler is None and all(p.dtype == torch.float32 for p in t.student.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: autocast bf16/fp16 and the fp16 "
                    "GradScaler only run on GPUs (this machine is CPU-only)")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_mixed_precision_trains_and_checkpoints_the_scaler(tmp_path, amp):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    t = make_trainer(tmp_path, steps=3, amp=amp, device="cuda")
    r = t.fit()
    assert np.isfinite(r.losses["loss"])
    saved = load_checkpoint(tmp_path / "checkpoints/last.pt")
    assert (saved["scaler"] is not None) == (amp == "fp16")


def test_a_bad_face_in_a_dataloader_worker_is_one_line_naming_it(tmp_path):
    """Hostile input 4 (part): a worker's DataError reached the CLI as a multi-line DataLoader traceback naming
    "record 39"; now the worker's own one line, naming the file."""

    class BadFace(SynthFaces):
        def describe(self, i):
            return f"/data/train/id{i % self.num_classes}/{i}.jpg"

        def image(self, i):
            return None if i == 3 else super().image(i)

    t = make_trainer(tmp_path, source=BadFace(16, 4), num_classes=4, num_workers=1, steps=4)
    with pytest.raises(DataError) as e:
        t.fit()
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    assert msg.startswith("/data/train/id3/3.jpg could not be read"), msg
