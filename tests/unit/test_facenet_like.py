"""A FaceNet-like teacher (160x160, per-image standardisation, L2-normalised output) through every way a user
brings one: TorchScript and ONNX with no preprocessing in the graph, and a state dict of a class facepipe
does not know (teacher.arch: module:Class). Declared, each matches an independent reference; undeclared,
TorchScript and the unknown class are refused and ONNX gets its guess named: no silent wrong number."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from facepipe.pipeline.config import TeacherConfig
from facepipe.pipeline.errors import ModelError
from facepipe.pipeline.teachers import load_teacher, resolve_teacher
from sanity import assert_not_collapsed
from tiny_nets import FaceNetLike

DIM = 32
DECLARED = {"size": 160, "standardize": True}


def _faces(n: int = 12, seed: int = 3) -> np.ndarray:
    """Smooth face-sized images (not white noise: per-image statistics must differ from face to face)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 14, 14, 3), dtype=np.uint8)
    return np.stack([cv2.resize(s, (112, 112), interpolation=cv2.INTER_CUBIC) for s in small]) \
        // rng.integers(1, 4, (n, 1, 1, 1)).astype(np.uint8)


def reference(model, faces: np.ndarray) -> np.ndarray:
    """FaceNet's own recipe, written out here: resize the crop to 160, prewhiten each image, NCHW, forward."""
    x = np.stack([cv2.resize(f, (160, 160), interpolation=cv2.INTER_LINEAR) for f in faces]).astype(np.float64)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    std = np.maximum(x.std(axis=(1, 2, 3), keepdims=True), 1.0 / np.sqrt(x[0].size))
    x = ((x - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _cos(a, b):
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = FaceNetLike(DIM).eval()
    for m in model.modules():  # non-trivial BN statistics, as a trained network has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    # the pooled features' statistics from standardised faces, so embeddings spread as a trained model's do
    model.pool_bn.train()
    model.pool_bn.momentum = None  # cumulative average over the calibration batch
    reference(model, _faces(32, seed=4))
    return model.eval()


@pytest.fixture(scope="module")
def ref(net):
    r = reference(net, _faces())
    assert_not_collapsed(r, "FaceNet-like reference embeddings")
    return r


def _check(cfg: TeacherConfig, ref: np.ndarray) -> None:
    emb = load_teacher(cfg, threads=1).embed(_faces(), batch_size=5)
    assert _cos(emb, ref).min() > 0.9999


def test_torchscript_is_refused_undeclared_and_matches_declared(net, ref, tmp_path):
    path = tmp_path / "facenet.ts"
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 160, 160)), str(path))
    with pytest.raises(ModelError, match="no honest guess"):
        resolve_teacher(TeacherConfig(source=str(path), embedding_size=DIM))
    _check(TeacherConfig(source=str(path), embedding_size=DIM, preprocess=DECLARED), ref)  # declared in config
    (tmp_path / "facenet.facepipe.json").write_text(json.dumps({"preprocess": DECLARED}))  # or in a sidecar
    src = resolve_teacher(TeacherConfig(source=str(path), embedding_size=DIM))
    assert src.declared_by == "facenet.facepipe.json" and src.guess is None and src.warning() is None
    _check(TeacherConfig(source=str(path), embedding_size=DIM), ref)


def test_onnx_without_metadata_gets_a_named_guess_and_matches_once_declared(net, ref, tmp_path):
    path = tmp_path / "facenet.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 160, 160), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    cfg = TeacherConfig(source=str(path), embedding_size=DIM)
    guessed = resolve_teacher(cfg)
    assert guessed.guess and "insightface" in guessed.guess and guessed.preprocess.size == 160  # size: the graph
    assert "declares no preprocessing; guessed RGB 160x160" in guessed.warning()
    wrong = load_teacher(cfg, threads=1).embed(_faces(), batch_size=5)
    assert _cos(wrong, ref).min() < 0.99  # the guess is wrong for this model, and that shows
    (tmp_path / "facenet.facepipe.json").write_text(json.dumps({"preprocess": DECLARED}))
    declared = resolve_teacher(cfg)
    assert declared.guess is None and declared.preprocess.standardize
    assert declared.fingerprint() != guessed.fingerprint()  # the sidecar is part of the teacher
    _check(cfg, ref)


def test_a_state_dict_of_a_user_class_loads_by_module_path(net, ref, tmp_path):
    path = tmp_path / "facenet_state.pt"
    torch.save(net.state_dict(), path)
    arch = "tiny_nets:FaceNetLike"
    with pytest.raises(ModelError, match="no honest guess"):
        resolve_teacher(TeacherConfig(source=str(path), arch=arch, arch_kwargs={"dim": DIM}, embedding_size=DIM))
    _check(TeacherConfig(source=str(path), arch=arch, arch_kwargs={"dim": DIM}, embedding_size=DIM,
                         preprocess=DECLARED), ref)
    with pytest.raises(ModelError, match=r"size mismatch|shape"):  # wrong kwargs: the weights do not fit
        load_teacher(TeacherConfig(source=str(path), arch=arch, arch_kwargs={"dim": 8}, embedding_size=8,
                                   preprocess=DECLARED))
    from facepipe.pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot import 'no_such_pkg.nets'"):
        load_teacher(TeacherConfig(source=str(path), arch="no_such_pkg.nets:Net", embedding_size=DIM,
                                   preprocess=DECLARED))


def test_teacher_inspect_says_guessed_and_measures_the_normalisation(net, tmp_path):
    path = tmp_path / "facenet.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 160, 160), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    r = subprocess.run([sys.executable, "-m", "facepipe.pipeline.cli", "teacher", "inspect", "--set",
                        f"teacher.source={path}", "--set", f"teacher.embedding_size={DIM}",
                        "--set", "teacher.check=[]"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "GUESSED" in r.stdout and "insightface" in r.stdout
    assert "normalised:    yes" in r.stdout and "measured on 4 faces: unit norm" in r.stdout
