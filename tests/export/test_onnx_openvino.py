"""fp32 ONNX and OpenVINO export of a small MobileFaceNet: parity with PyTorch, dynamic batch, metadata round
trip, and the loader's refusals (no metadata, inconsistent embedding size, missing weights file)."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from facepipe.export.artifacts import artifact_fingerprint, load_artifact
from facepipe.export.formats import get_format
from facepipe.export.metadata import ArtifactMeta
from facepipe.export.onnx import export_onnx
from facepipe.export.openvino import onnx_to_ir
from facepipe.export.parity import check_parity
from facepipe.pipeline.embedder import Preprocess, TorchEmbedder, read_onnx_metadata
from facepipe.pipeline.errors import ModelError, ParityError

pytest.importorskip("openvino")
META = dict(preprocess=Preprocess(), embedding_size=128, fingerprint="f" * 64, source_sha256="a" * 64,
            arch="mobilefacenet")


@pytest.fixture(scope="module")
def exported(mfn, tmp_path_factory):
    d = tmp_path_factory.mktemp("exported")
    onnx_path = export_onnx(mfn, d / "student.onnx", Preprocess(), 128, "f" * 64, source_sha256="a" * 64,
                            arch="mobilefacenet")
    xml = onnx_to_ir(onnx_path, d / "student.xml", ArtifactMeta(**META, format="openvino"))
    return {"onnx": onnx_path, "openvino": xml}


@pytest.fixture(scope="module")
def reference(mfn):
    return TorchEmbedder(mfn, Preprocess(), name="torch")


@pytest.mark.parametrize("key", ["onnx", "openvino"])
def test_parity_and_dynamic_batch(key, exported, reference, faces):
    emb = load_artifact(exported[key])
    assert emb.runtime == get_format(key).runtime and emb.format == key and emb.dim == 128
    report = check_parity(reference, emb, faces, get_format(key), batch_size=5)
    assert report["passed"] and report["cos_min"] >= 0.9999 and report["max_abs"] < 1e-3
    one, five = emb.embed(faces[:5], batch_size=1), emb.embed(faces[:5], batch_size=5)
    np.testing.assert_allclose(one, five, atol=1e-4)


def test_onnx_graph_and_metadata_round_trip(exported):
    proto = onnx.load(str(exported["onnx"]))
    assert [i.name for i in proto.graph.input] == ["input"] and proto.graph.output[0].name == "embedding"
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert proto.opset_import[0].version == 17
    props = {p.key: p.value for p in proto.metadata_props}
    meta = ArtifactMeta.from_props(props, "x")
    assert meta == ArtifactMeta(**META, format="onnx")
    assert read_onnx_metadata(exported["onnx"])["embedding_size"] == 128


def test_openvino_rt_info_round_trip(exported):
    emb = load_artifact(exported["openvino"])
    assert emb.meta == ArtifactMeta(**META, format="openvino")
    assert emb.precision == "f32" and emb.device == "CPU"
    assert exported["openvino"].with_suffix(".bin").stat().st_size > 3_000_000  # fp32 weights, not fp16


def _rewrite(src, dst, edit):
    proto = onnx.load(str(src))
    edit(proto)
    onnx.save(proto, str(dst))
    return dst


def test_onnx_without_metadata_is_refused(exported, tmp_path):
    bare = _rewrite(exported["onnx"], tmp_path / "bare.onnx", lambda p: p.metadata_props.__delitem__(slice(None)))
    with pytest.raises(ModelError, match=r"bare\.onnx: facepipe metadata facepipe\.preprocess, "
                                         r"facepipe\.embedding_size missing"):
        load_artifact(bare)


def test_inconsistent_embedding_size_is_refused(exported, tmp_path):
    def edit(p):
        for prop in p.metadata_props:
            if prop.key == "facepipe.embedding_size":
                prop.value = "512"

    bad = _rewrite(exported["onnx"], tmp_path / "bad.onnx", edit)
    with pytest.raises(ModelError, match=r"bad\.onnx: metadata declares 512-d embeddings but the graph outputs 128-d"):
        load_artifact(bad)


def test_ir_without_weights_or_metadata_is_refused(exported, tmp_path):
    lone = tmp_path / "lone.xml"
    lone.write_bytes(exported["openvino"].read_bytes())
    with pytest.raises(ModelError, match=r"lone\.bin are missing"):
        load_artifact(lone)
    import openvino as ov

    plain = tmp_path / "plain.xml"
    ov.save_model(ov.convert_model(str(exported["onnx"])), str(plain), compress_to_fp16=False)
    with pytest.raises(ModelError, match=r"plain\.xml: facepipe metadata facepipe\.preprocess"):
        load_artifact(plain)


def test_student_checkpoint_without_preprocess_is_refused(mfn, tmp_path, make_student):
    path = make_student(mfn, tmp_path / "student.pt", preprocess=None)
    with pytest.raises(ModelError, match=r"student\.pt: checkpoint metadata preprocess missing"):
        load_artifact(path)


def test_student_checkpoint_loads_as_torch(student, reference, faces):
    emb = load_artifact(student)
    assert emb.format == "torch" and emb.fingerprint == "f" * 64
    np.testing.assert_allclose(emb.embed(faces), reference.embed(faces), atol=1e-5)


def test_perturbed_weights_fail_parity(mfn, exported, faces, tmp_path):
    other = copy.deepcopy(mfn)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = export_onnx(other, tmp_path / "perturbed.onnx", Preprocess(), 128, "x")
    with pytest.raises(ParityError, match=r"perturbed\.onnx \(onnx\) does not match its reference .*required "
                                          r"cosine >= 0\.9999"):
        check_parity(TorchEmbedder(mfn, Preprocess()), load_artifact(path), faces, get_format("onnx"),
                     artifact=str(path))


def test_artifact_fingerprint_covers_companions(exported, tmp_path):
    a = artifact_fingerprint(exported["openvino"])
    assert a == artifact_fingerprint(exported["openvino"], "openvino") != artifact_fingerprint(exported["onnx"])
    xml = tmp_path / "copy.xml"
    xml.write_bytes(exported["openvino"].read_bytes())
    bin_ = exported["openvino"].with_suffix(".bin").read_bytes()
    xml.with_suffix(".bin").write_bytes(bin_[:-1] + bytes([bin_[-1] ^ 1]))
    assert artifact_fingerprint(xml) != a
    xml.with_suffix(".bin").unlink()
    with pytest.raises(ModelError, match="copy.bin not found"):
        artifact_fingerprint(xml)
