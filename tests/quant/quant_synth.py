"""Fixtures for the quantize tests: small students (a registered tiny network for fast QAT, a random MobileFaceNet
for inversion), face-like images and image folders."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from facepipe.models.registry import build_model
from facepipe.pipeline.train.checkpoint import STUDENT_KIND, save_checkpoint
from facepipe.pipeline.embedder import STUDENT_PREPROCESS
from facepipe.pipeline.train.data import student_input

from tiny_nets import EMB, TinyFaceNet  # noqa: F401 (re-exported for the quantize tests)

TINY = "quant_test_tiny"


def smooth_faces(n: int, seed: int = 0, size: int = 112) -> np.ndarray:
    """n uint8 RGB images: low-frequency colour blobs (closer to photos than white noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 7, 7, 3), dtype=np.uint8)
    return np.stack([cv2.resize(s, (size, size), interpolation=cv2.INTER_CUBIC) for s in small])


def tiny_student(seed: int = 0, warm: int = 3, noise: bool = False, arch: str = "mobilefacenet") -> torch.nn.Module:
    """A network of `arch` (embedding 16) whose BatchNorm running statistics are those of a few warm-up batches:
    smooth faces, or (noise=True) Gaussian noise of std 0.6 in input units (a target that inversion from
    low-amplitude noise can reach quickly, unlike a random network's reaction to face images)."""
    torch.manual_seed(seed)
    model = build_model(arch, embedding_size=EMB)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.momentum = None  # cumulative average over the warm-up batches
    model.train()
    with torch.no_grad():
        for i in range(warm):
            x = 0.6 * torch.randn(8, 3, 112, 112) if noise else \
                student_input(torch.from_numpy(smooth_faces(8, seed=100 + i)), torch.device("cpu"))
            model(x)
    for m in bns:
        m.momentum = 0.1
    return model.eval()


def write_student(path: Path, seed: int = 0, arch: str = TINY) -> Path:
    """Save tiny_student as a facepipe student.pt (what the distill stage writes)."""
    model = tiny_student(seed, arch=arch)
    return save_checkpoint(path, {"state_dict": model.state_dict(), "arch": arch, "embedding_size": EMB,
                                  "preprocess": STUDENT_PREPROCESS.to_dict(), "fingerprint": "test"},
                           kind=STUDENT_KIND)


def write_image_folder(root: Path, n: int = 12, ids: int = 3, seed: int = 0, size: int = 112) -> Path:
    """root/id<k>/<i>.png faces (an ImageFolder training set)."""
    for i, img in enumerate(smooth_faces(n, seed, size)):
        p = root / f"id{i % ids}" / f"{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), img[:, :, ::-1])
    return root
