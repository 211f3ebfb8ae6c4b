"""Cached embeddings are keyed by content, code and runtime, never by names and sizes:
- item 1: a training image replaced by another of the same byte size (and mtime) is re-embedded; a RecordIO
  set likewise;
- item 2: an ONNX model's external weights file is part of its identity (teacher, eval cache, artifacts);
- item 4: the benchmark-embedding and bench-accuracy caches change key with the code that decodes, aligns
  and preprocesses, and with the runtime that computes them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from facepipe.pipeline import manifest as manifest_mod
from facepipe.pipeline.eval.cache import cache_key, open_or_build
from facepipe.pipeline.config import TeacherConfig
from facepipe.pipeline.data.images import encode_jpeg
from facepipe.pipeline.data.imagefolder import open_face_source
from facepipe.pipeline.teachers import resolve_teacher

from sanity import assert_not_collapsed
from tiny_nets import EMB, TinyFaceNet

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.* deprecation notices


@pytest.fixture(autouse=True)
def _own_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEPIPE_CACHE", str(tmp_path / "fpcache"))


def _faces(n: int, seed: int) -> np.ndarray:
    """Smooth random faces-sized images (blocks of colour), different per seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 7, 7, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, 16, axis=1), 16, axis=2)


def _same_size_jpegs(a: np.ndarray, b: np.ndarray) -> tuple[bytes, bytes]:
    """Two JPEGs of different faces padded (after the end-of-image marker, which decoders ignore) to one size."""
    ja, jb = encode_jpeg(a), encode_jpeg(b)
    size = max(len(ja), len(jb))
    return ja + b"\0" * (size - len(ja)), jb + b"\0" * (size - len(jb))


@pytest.fixture
def teacher(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "teacher.pt"
    torch.jit.save(torch.jit.trace(TinyFaceNet().eval(), torch.zeros(1, 3, 112, 112)), str(path),
                   _extra_files={"facepipe.json": '{"preprocess": {"size": 112}}'})
    return resolve_teacher(TeacherConfig(source=str(path), embedding_size=EMB))


def _cos(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_an_image_replaced_by_one_of_the_same_size_and_mtime_is_re_embedded(tmp_path, teacher):
    faces = _faces(5, seed=1)
    other = _faces(1, seed=2)[0]
    original, replacement = _same_size_jpegs(faces[0], other)
    root = tmp_path / "train"
    for i, img in enumerate(faces):
        (root / f"id{i % 2}").mkdir(parents=True, exist_ok=True)
        (root / f"id{i % 2}" / f"{i}.jpg").write_bytes(original if i == 0 else encode_jpeg(img))
    target = root / "id0" / "0.jpg"
    embedder = teacher.load()

    cache, reused = open_or_build(teacher, open_face_source(root), tmp_path / "cache", embedder=embedder,
                                  show_progress=False)
    assert not reused
    assert_not_collapsed(np.asarray(cache.embeddings), "teacher embeddings of the training faces")
    st = target.stat()
    target.write_bytes(replacement)  # a careful user's swap: same byte size, mtime set back
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns

    source = open_face_source(root)
    row = source.faces.items.index("id0/0.jpg")
    truth = embedder.embed(source.image(row)[None])[0]
    assert _cos(truth, cache.embeddings[row]) < 0.99  # the swap matters: the old row is wrong now
    rebuilt, reused = open_or_build(teacher, source, tmp_path / "cache", embedder=embedder, show_progress=False)
    assert not reused, "the cache vouched for the replaced image's old embedding"
    assert _cos(truth, rebuilt.embeddings[row]) > 0.9999


def test_a_recordio_set_is_keyed_by_its_bytes_not_its_size(tmp_path):
    from facepipe.pipeline.data.recordio import write_rec_from_folder

    faces = _faces(4, seed=3)
    original, replacement = _same_size_jpegs(faces[0], _faces(1, seed=4)[0])
    for name, first in (("a", original), ("b", replacement)):
        for i, img in enumerate(faces):
            d = tmp_path / name / f"id{i % 2}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{i}.jpg").write_bytes(first if i == 0 else encode_jpeg(img))
        write_rec_from_folder(tmp_path / name, tmp_path / f"{name}")
    a, b = tmp_path / "a.rec", tmp_path / "b.rec"
    assert a.stat().st_size == b.stat().st_size
    assert (tmp_path / "a.idx").read_bytes() == (tmp_path / "b.idx").read_bytes()
    h_a = open_face_source(a).content_hash()
    os.replace(b, a)  # same size, same index, one record's face differs
    assert open_face_source(a).content_hash() != h_a


# --- item 2: ONNX external data ----------------------------------------------------------------------
def _onnx_with_external_weights(folder: Path, seed: int) -> Path:
    """(N, 3, 112, 112) -> GlobalAveragePool -> Flatten -> MatMul(3 x 8): weights in weights.bin."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).normal(size=(3, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("MatMul", ["f", "w"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    return path


def test_onnx_external_weights_are_part_of_the_model_identity(tmp_path):
    from facepipe.export.artifacts import artifact_files
    from facepipe.pipeline.eval.evaluate import embed_cached
    from facepipe.stages.teacher import external_inputs
    from facepipe.pipeline.config import load_config

    path = _onnx_with_external_weights(tmp_path / "m", seed=0)
    cfg = TeacherConfig(source=str(path), kind="onnx", embedding_size=8)
    src = resolve_teacher(cfg)
    assert [p.name for p in src.files] == ["ext.onnx", "weights.bin"]
    assert [p.name for p in artifact_files(path, "onnx")] == ["ext.onnx", "weights.bin"]
    pipeline_cfg = load_config(None, [f"teacher.source={path}", "teacher.kind=onnx", "teacher.embedding_size=8",
                                      "teacher.check=[]", "teacher.cache=false"])
    assert any(p.name == "weights.bin" for p in external_inputs(pipeline_cfg).values())

    images = _faces(6, seed=5)
    emb_old, reused = embed_cached(src, src.load(), images, "six-faces", False, 4, tmp_path / "cache")
    assert not reused
    assert_not_collapsed(emb_old, "the ONNX model's embeddings")
    fp_old = src.fingerprint()

    new_weights = _onnx_with_external_weights(tmp_path / "n", seed=1).with_name("weights.bin").read_bytes()
    (tmp_path / "m" / "weights.bin").write_bytes(new_weights)  # same size, other weights; ext.onnx untouched
    changed = resolve_teacher(cfg)
    assert changed.fingerprint() != fp_old
    emb_new, reused = embed_cached(changed, changed.load(), images, "six-faces", False, 4, tmp_path / "cache")
    assert not reused, "eval would report the old weights' accuracy as (cached)"
    assert np.abs(emb_new - emb_old).max() > 1e-3


def test_a_missing_or_escaping_external_data_file_is_refused(tmp_path):
    from facepipe.pipeline.errors import ModelError

    path = _onnx_with_external_weights(tmp_path / "m", seed=0)
    (tmp_path / "m" / "weights.bin").unlink()
    with pytest.raises(ModelError, match="weights.bin"):
        resolve_teacher(TeacherConfig(source=str(path), kind="onnx", embedding_size=8))


# --- item 4: code and runtime in the embedding caches ------------------------------------------------
class _Faces:
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def image(self, i):
        return self.images[i]

    def content_hash(self):
        return "same-faces"


def _edited(monkeypatch, module: str):
    real = manifest_mod.module_source_hash
    monkeypatch.setattr(manifest_mod, "module_source_hash", lambda m: "edited" if m == module else real(m))


@pytest.mark.parametrize("module", ["facepipe.pipeline.embedder",  # preprocessing (resize, colour, mean / std)
                                    "facepipe.pipeline.data.lfw",  # reading LFW and its pairs
                                    "facepipe.pipeline.data.align",  # five-point alignment
                                    "facepipe.pipeline.data.images"])  # decoding
def test_the_benchmark_embedding_key_follows_the_decode_align_preprocess_code(teacher, monkeypatch, module):
    from facepipe.pipeline.eval.evaluate import _Faces as BenchmarkFaces

    faces = BenchmarkFaces(np.zeros((2, 112, 112, 3), np.uint8), "lfw-content")
    before = cache_key(teacher, faces, False)
    assert cache_key(teacher, faces, False) == before  # deterministic
    _edited(monkeypatch, module)
    assert cache_key(teacher, faces, False) != before


def test_the_embedding_key_follows_the_runtime_and_the_cpu(teacher, monkeypatch):
    from facepipe.pipeline import device

    faces = _Faces(np.zeros((2, 112, 112, 3), np.uint8))
    before = cache_key(teacher, faces, False)
    real = manifest_mod.metadata.version
    monkeypatch.setattr(manifest_mod.metadata, "version", lambda d: "9.9.9" if d == "torch" else real(d))
    assert cache_key(teacher, faces, False) != before
    monkeypatch.setattr(manifest_mod.metadata, "version", real)
    assert cache_key(teacher, faces, False) == before
    monkeypatch.setattr(device, "cpu_flags", lambda cpuinfo=None: ["avx2", "fma"])
    assert cache_key(teacher, faces, False) != before


def test_bench_accuracy_keys_follow_their_own_runtime_only(tmp_path, monkeypatch):
    from facepipe.pipeline.bench.accuracy import ArtifactSource

    path = _onnx_with_external_weights(tmp_path / "m", seed=0)
    ov = ArtifactSource(path, "onnx", "openvino", "cpu")  # the key is what matters here, not the format
    ort = ArtifactSource(path, "onnx", "onnxruntime", "cpu")
    faces = _Faces(np.zeros((2, 112, 112, 3), np.uint8))
    keys = {s.runtime: cache_key(s, faces, False) for s in (ov, ort)}
    real = manifest_mod.metadata.version
    monkeypatch.setattr(manifest_mod.metadata, "version", lambda d: "9.9.9" if d == "openvino" else real(d))
    assert cache_key(ov, faces, False) != keys["openvino"]
    assert cache_key(ort, faces, False) == keys["onnxruntime"]  # an OpenVINO upgrade leaves ORT's cache alone
    _edited(monkeypatch, "facepipe.pipeline.data.images")
    assert cache_key(ort, faces, False) != keys["onnxruntime"]
