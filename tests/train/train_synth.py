"""Synthetic training fixtures for the trainer tests: a tiny network (registered nowhere), labelled random
112x112 faces, fixed teacher embeddings, and a job `setup` usable in-process and by torchrun workers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from torch import nn

from facepipe.models.losses import build_weighted_loss
from facepipe.pipeline.config import DistillConfig
from facepipe.pipeline.data.binfile import write_bin
from facepipe.pipeline.io import sha256_json
from facepipe.pipeline.train.targets import CachedTargets, teacher_class_centers
from facepipe.pipeline.train.trainer import Trainer, seed_everything


class TinyNet(nn.Module):
    """(N, 3, 112, 112) -> (N, D): strided conv, PReLU, pooled, linear; `bn` adds a BatchNorm (buffers)."""

    def __init__(self, embedding_size: int = 16, bn: bool = False):
        super().__init__()
        self.embedding_size = embedding_size
        self.conv = nn.Conv2d(3, 8, 8, stride=8)
        self.norm = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.act = nn.PReLU(8)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, embedding_size)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.act(self.norm(self.conv(x)))), 1))


class SynthFaces:
    """n labelled faces (label i % num_classes), pixels drawn from a per-index seed; `bad` overrides labels."""

    def __init__(self, n: int = 64, num_classes: int = 5, seed: int = 0, bad: dict[int, int] | None = None):
        self.n, self.num_classes, self.seed, self.bad = n, num_classes, seed, dict(bad or {})

    def __len__(self) -> int:
        return self.n

    def label(self, i: int) -> int:
        return self.bad.get(i, i % self.num_classes)

    def image(self, i: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, i])
        base = np.full((112, 112, 3), (37 * (i % self.num_classes)) % 190, np.int32)
        return np.clip(base + rng.integers(0, 60, (112, 112, 3)), 0, 255).astype(np.uint8)

    def content_hash(self) -> str:
        return sha256_json({"synth": [self.n, self.num_classes, self.seed, sorted(self.bad.items())]})


def teacher_embeddings(n: int, dim: int, num_classes: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim))
    emb = centres[np.arange(n) % num_classes] + 0.3 * rng.normal(size=(n, dim))
    flipped = emb + 0.05 * rng.normal(size=(n, dim))
    return emb.astype(np.float32), flipped.astype(np.float32)


def make_trainer(out_dir: Path, *, env=None, device="cpu", n=64, num_classes=5, dim=16, teacher_dim=None,
                 bn=False, losses=None, callbacks=(), source=None, targets="cache", seed=0, **distill) -> Trainer:
    """A Trainer on synthetic data; `distill` overrides DistillConfig fields."""
    settings = {"batch_size": 8, "epochs": 2, "lr": 0.05, "num_workers": 0, "save_every": 0, "log_every": 1,
                "tensorboard": False, "schedule": "constant", "augment": {"flip": True},
                "losses": losses or [{"name": "ada_arc_distill"}], **distill}
    cfg = DistillConfig(**settings)
    source = source if source is not None else SynthFaces(n, num_classes)
    emb, flipped = teacher_embeddings(len(source), teacher_dim or dim, num_classes)
    tgt = CachedTargets(emb, flipped) if targets == "cache" else targets
    seed_everything(seed)
    student = TinyNet(dim, bn=bn)
    loss = build_weighted_loss(cfg.losses, num_classes=num_classes, embedding_size=dim,
                               teacher_embedding_size=teacher_dim or dim)
    if loss.needs_centers:
        labels = np.arange(len(source)) % num_classes
        loss.set_centers(teacher_class_centers(emb, labels, num_classes))
    identity = {"distill": cfg.model_dump(mode="json"), "seed": seed, "data": source.content_hash()}
    return Trainer(cfg, student, loss, source, out_dir=Path(out_dir), identity=identity, seed=seed, targets=tgt,
                   env=env, device=device, callbacks=callbacks, log=lambda m: None, show_progress=False)


def dump_state(trainer: Trainer, step: int) -> None:
    """Callback: after the last step, save this rank's loss state and student weights."""
    if step == trainer.total_steps:
        torch.save({"loss": trainer.loss.state_dict(), "model": trainer.student.state_dict()},
                   trainer.out_dir / f"state.rank{trainer.env.rank}.pt")


def setup(job: dict, env, device) -> Trainer:
    """Job `setup` for run_job / torchrun workers: job["params"] are make_trainer keyword arguments."""
    torch.set_num_threads(1)
    return make_trainer(Path(job["out_dir"]), env=env, device=device, callbacks=[dump_state], **job["params"])


def write_project(root: Path, ids: int = 4, per_id: int = 6, labels_tsv: dict | None = None, **distill) -> Path:
    """A tiny project in root: an image folder of ids x per_id synthetic faces, a generated .bin benchmark
    (tiny.bin), a TorchScript TinyNet teacher and pipeline.yaml (3 distill steps); `distill` overrides keys."""
    faces = SynthFaces(ids * per_id, ids)
    data = root / "data"
    for i in range(len(faces)):
        p = data / "train" / f"id{i % ids}" / f"{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), cv2.cvtColor(faces.image(i), cv2.COLOR_RGB2BGR))
    bench = SynthFaces(80, 8, seed=7)
    jpeg = lambda img: cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes()  # noqa: E731
    write_bin(data / "tiny.bin", [jpeg(bench.image(i)) for i in range(80)], [k % 2 == 0 for k in range(40)])
    torch.manual_seed(0)
    torch.jit.save(torch.jit.trace(TinyNet(16).eval(), torch.zeros(1, 3, 112, 112)), str(root / "teacher.pt"),
                   _extra_files={"facepipe.json": '{"preprocess": {"size": 112}}'})
    cfg = {"run": {"name": "t", "dir": "runs", "seed": 0},
           "data": {"root": "data", "train": "train", "benchmarks": ["tiny.bin"], "batch_size": 16},
           "teacher": {"source": "teacher.pt", "kind": "torchscript", "embedding_size": 16, "flip": True,
                       "check": []},
           "distill": {"student": {"arch": "mobilefacenet", "embedding_size": 16}, "batch_size": 4, "steps": 3,
                       "losses": [{"name": "ada_arc_distill"}, {"name": "arc_distill", "weight": 0.5}],
                       "eval_every": 0, "best_metric": "tiny_accuracy", "save_every": 2, "num_workers": 0,
                       "log_every": 1, "tensorboard": False, **distill}}
    (root / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    return root / "pipeline.yaml"
