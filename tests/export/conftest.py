"""Fixtures for the export tests: a small random-init MobileFaceNet saved as a facepipe student.pt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

PRE = {"size": 112, "color": "RGB", "mean": [127.5] * 3, "std": [127.5] * 3}


def save_student(module, path: Path, **meta) -> Path:
    """Write `module` the way the distill stage writes student.pt."""
    ckpt = {"format": 1, "kind": "facepipe.student", "state_dict": module.state_dict(), "arch": "mobilefacenet",
            "embedding_size": 128, "preprocess": PRE, "fingerprint": "f" * 64}
    ckpt.update(meta)
    ckpt = {k: v for k, v in ckpt.items() if v is not None}
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="session")
def make_student():
    """save_student(module, path, **meta overrides; None drops a key)."""
    return save_student


@pytest.fixture(scope="session")
def mfn():
    from facepipe.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("mobilefacenet", embedding_size=128).eval()
    # random BN statistics: a freshly initialised net has identity BNs, which hides exporter mistakes there
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


@pytest.fixture(scope="session")
def student(mfn, tmp_path_factory) -> Path:
    return save_student(mfn, tmp_path_factory.mktemp("student") / "student.pt")


@pytest.fixture(scope="session")
def faces() -> np.ndarray:
    from facepipe.export.parity import synthetic_faces

    return synthetic_faces(12)
