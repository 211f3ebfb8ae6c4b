"""Data-free mode: when no face data is configured, the pipeline still does real work.

The teacher stage draws faces from the DCGAN generator of the `gan-face-generate` wheel (dcgan.py here,
aligned to the ArcFace template), writes them as an image folder in which every face is its own identity,
and caches the teacher's embeddings of them; the distill stage trains on that folder (instance-level
distillation: the AdaDistill class centre of each "identity" is its teacher embedding) and scores the student
by its *agreement with the teacher* on held-out generated faces: mean and worst embedding cosine, and how
often the student's nearest neighbour among the held-out faces is the teacher's. No verification accuracy
is measured in this mode, and every report says so.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

NOTE = ("data-free run: no face data configured (data.root is null and $FACEPIPE_DATA is empty). Training faces "
        "are DCGAN-generated (gan-face-generate); the student is scored by agreement with the teacher on held-out "
        "generated faces, not by verification accuracy. Set FACEPIPE_DATA to a folder with lfw/ and celeba-train/ "
        "for real numbers.")
TRAIN_DIR = "generated/train"
EVAL_FACES = "generated/eval_faces.npy"
EVAL_TEACHER = "generated/eval_teacher.npy"
METRICS = ("agreement_cosine", "agreement_cosine_min", "agreement_top1")


def write_generated_set(dest: Path, n: int, seed: int) -> dict:
    """n DCGAN faces as an image folder (face_00000/0.png, ...; one identity per face), written to a temporary
    folder and renamed, so a killed run leaves no half set. Returns how the faces were aligned."""
    import cv2

    from .dcgan import dcgan_faces

    faces, counts = dcgan_faces(n, seed=seed)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for i, face in enumerate(faces):
        d = tmp / f"face_{i:05d}"
        d.mkdir(parents=True)
        cv2.imwrite(str(d / "0.png"), face[..., ::-1])
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return {"faces": n, "seed": seed, "alignment": counts}


def agreement(student: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    """Agreement of student and teacher embeddings of the same faces (rows): cosine (mean, min) and the
    fraction of faces whose nearest other face is the same under both models."""
    from ...embedder import cosine_rows, l2_normalize

    if student.shape != teacher.shape:
        raise ValueError(f"student embeddings {student.shape} and teacher embeddings {teacher.shape} differ")
    cos = cosine_rows(student, teacher)
    s, t = l2_normalize(student), l2_normalize(teacher)
    sim_s, sim_t = s @ s.T, t @ t.T
    np.fill_diagonal(sim_s, -np.inf)
    np.fill_diagonal(sim_t, -np.inf)
    top1 = float(np.mean(sim_s.argmax(1) == sim_t.argmax(1)))
    return {"agreement_cosine": float(cos.mean()), "agreement_cosine_min": float(cos.min()), "agreement_top1": top1}


class AgreementEvaluator:
    """Distillation's evaluation callback in data-free mode: Callable(model) -> agreement metrics."""

    names = ["agreement"]

    def __init__(self, faces: np.ndarray, teacher_embeddings: np.ndarray, batch_size: int = 64,
                 device: str = "cpu"):
        self.faces, self.teacher = faces, teacher_embeddings
        self.batch_size, self.device = batch_size, device
        self.last_summaries: list[dict] = []

    def __call__(self, model) -> dict[str, float]:
        from ...embedder import TorchEmbedder
        from ...embedder import STUDENT_PREPROCESS

        was_training = model.training
        try:
            emb = TorchEmbedder(model, STUDENT_PREPROCESS, name="student", device=self.device)
            out = agreement(emb.embed(self.faces, batch_size=self.batch_size), self.teacher)
        finally:
            model.train(was_training)
        self.last_summaries = [{"name": "agreement", "faces": len(self.faces), **out, "note": NOTE}]
        return out
