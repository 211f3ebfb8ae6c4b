"""Small real artifacts for the bench tests: a seeded MobileFaceNet as student.pt and ONNX, a tiny pairs .bin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory) -> dict[str, Path]:
    """{"torch": student.pt, "onnx": student.onnx} of one seeded MobileFaceNet (emb 128)."""
    import torch

    from facepipe.export.onnx import export_onnx
    from facepipe.models.registry import build_model
    from facepipe.pipeline.embedder import Preprocess

    out = tmp_path_factory.mktemp("artifacts")
    from facepipe.export.parity import synthetic_faces

    from sanity import assert_not_collapsed

    torch.manual_seed(0)
    model = build_model("mobilefacenet", embedding_size=128)
    pre = Preprocess()
    for m in model.modules():  # BN statistics of real activations: identity statistics collapse the embeddings
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    with torch.no_grad():
        model.train()(torch.from_numpy(pre(synthetic_faces(32, seed=8))))
        model.eval()
        assert_not_collapsed(model(torch.from_numpy(pre(synthetic_faces(12, seed=4)))).numpy(), "bench test net")
    torch.save({"format": 1, "kind": "facepipe.student", "state_dict": model.state_dict(), "arch": "mobilefacenet",
                "embedding_size": 128, "preprocess": pre.to_dict(), "fingerprint": "test"}, out / "student.pt")
    export_onnx(model, out / "student.onnx", pre, 128, "test")
    return {"torch": out / "student.pt", "onnx": out / "student.onnx"}


@pytest.fixture(scope="session")
def pairs_bin(tmp_path_factory) -> Path:
    """20 pairs (PNG, lossless): 'same' pairs are one smooth image and a slightly noisy copy, 'different'
    pairs two unrelated images, so even an untrained network scores well above chance; every 8th pair is
    mislabelled 'same' with unrelated images, so no model reaches 100%."""
    from facepipe.export.parity import synthetic_faces
    from facepipe.pipeline.data.binfile import write_bin
    from facepipe.pipeline.data.images import encode_png

    rng = np.random.default_rng(1)
    faces = synthetic_faces(40, seed=3)
    images, issame = [], []
    for k in range(20):
        same = k % 2 == 0
        a = faces[2 * k]
        b = np.clip(a.astype(int) + rng.integers(-6, 7, a.shape), 0, 255).astype(np.uint8)
        if not same or k % 8 == 6:
            b = faces[2 * k + 1]
        images += [encode_png(a), encode_png(b)]
        issame.append(same)
    return write_bin(tmp_path_factory.mktemp("data") / "tiny.bin", images, issame)
