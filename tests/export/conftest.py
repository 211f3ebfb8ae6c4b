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

    from facepipe.export.parity import synthetic_faces
    from facepipe.pipeline.embedder import Preprocess

    from sanity import assert_not_collapsed

    torch.manual_seed(0)
    model = build_model("mobilefacenet", embedding_size=128)
    # BN statistics of real activations (one train-mode pass over images unlike the parity faces), then a
    # random perturbation: a fresh net has identity BNs, which hides exporter mistakes there, and identity
    # statistics on these inputs map every face to one vector (a parity check on it cannot fail)
    x = torch.from_numpy(Preprocess()(synthetic_faces(32, seed=99)))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    with torch.no_grad():
        model.train()(x)
    g = torch.Generator().manual_seed(1)
    for m in bns:
        m.momentum = 0.1
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.add_(torch.randn(m.num_features, generator=g) * 0.05)
            m.running_var.mul_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
    model.eval()
    with torch.no_grad():
        assert_not_collapsed(model(torch.from_numpy(Preprocess()(synthetic_faces(12)))).numpy(), "export test net")
    return model


@pytest.fixture(scope="session")
def student(mfn, tmp_path_factory) -> Path:
    return save_student(mfn, tmp_path_factory.mktemp("student") / "student.pt")


@pytest.fixture(scope="session")
def faces() -> np.ndarray:
    from facepipe.export.parity import synthetic_faces

    return synthetic_faces(12)
