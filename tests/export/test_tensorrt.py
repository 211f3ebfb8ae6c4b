"""TensorRT without TensorRT: the typed error, the engine/machine sidecar check and its rebuild-or-refuse rule,
the symmetric-QDQ check. The real engine build needs a GPU and is skipped here."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from facepipe.export import tensorrt as trt_mod
from facepipe.export.metadata import ArtifactMeta
from facepipe.pipeline.embedder import Preprocess
from facepipe.pipeline.errors import BackendUnavailable, ModelError
from facepipe.pipeline.io import atomic_write_json, sha256_file

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
BUILT_ON = {"tensorrt": "10.3.0", "gpu": "NVIDIA Orin", "compute_capability": "8.7"}


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_absent_tensorrt_is_a_clear_typed_error(tmp_path):
    with pytest.raises(BackendUnavailable, match=r"TensorRT is not installed .*pip install tensorrt.* NVIDIA GPU; "
                                                 r"the other formats were exported"):
        trt_mod.import_tensorrt()
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    atomic_write_json(trt_mod.sidecar_path(engine), {"facepipe": {"preprocess": Preprocess().to_dict(),
                                                                  "embedding_size": 128}})
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        trt_mod.TensorRTEmbedder(engine)


@pytest.fixture
def engine(tmp_path):
    """An 'engine' with its sidecar and its source ONNX (contents do not matter to the sidecar logic)."""
    onnx_path = tmp_path / "student.onnx"
    onnx_path.write_bytes(b"onnx bytes")
    path = tmp_path / "student.engine"
    path.write_bytes(b"plan")
    meta = ArtifactMeta(Preprocess(), 128, "f" * 64, "tensorrt")
    sidecar = {"device": dict(BUILT_ON), "settings": {"precision": "fp16", "max_batch": 32},
               "source_onnx": {"path": "student.onnx", "sha256": sha256_file(onnx_path)}, "facepipe": meta.to_dict()}
    atomic_write_json(trt_mod.sidecar_path(path), sidecar)
    return path, sidecar, onnx_path


def test_matching_engine_is_used_as_is(engine):
    path, sidecar, _ = engine
    assert trt_mod.compatibility_problems(sidecar, BUILT_ON) == []
    assert trt_mod.ensure_compatible(path, sidecar, BUILT_ON, rebuild=pytest.fail) == "ok"


def test_mismatch_rebuilds_from_the_source_onnx(engine):
    path, sidecar, onnx_path = engine
    here = {**BUILT_ON, "tensorrt": "10.4.0", "gpu": "NVIDIA RTX 4090", "compute_capability": "8.9"}
    problems = trt_mod.compatibility_problems(sidecar, here)
    assert problems == ["TensorRT 10.3.0 (engine) vs 10.4.0 (here)",
                        "GPU NVIDIA Orin (engine) vs NVIDIA RTX 4090 (here)",
                        "compute capability 8.7 (engine) vs 8.9 (here)"]
    calls = []
    status = trt_mod.ensure_compatible(path, sidecar, here, rebuild=lambda *a: calls.append(a))
    assert status == "rebuilt"
    (src, dst, settings, meta), = calls
    assert src == onnx_path and dst == path and settings.precision == "fp16" and settings.max_batch == 32
    assert meta.embedding_size == 128 and meta.fingerprint == "f" * 64


def test_mismatch_without_source_onnx_is_refused(engine):
    path, sidecar, onnx_path = engine
    here = {**BUILT_ON, "tensorrt": "10.4.0"}
    onnx_path.write_bytes(b"changed")
    with pytest.raises(ModelError, match=r"built for another TensorRT / GPU \(TensorRT 10\.3\.0 \(engine\) vs "
                                         r"10\.4\.0 \(here\)\) and its source ONNX .*has changed"):
        trt_mod.ensure_compatible(path, sidecar, here, rebuild=pytest.fail)
    onnx_path.unlink()
    with pytest.raises(ModelError, match="is not available to rebuild it: re-export with `facepipe export --trt`"):
        trt_mod.ensure_compatible(path, sidecar, here, rebuild=pytest.fail)


def test_embedder_refuses_mismatched_engine_with_current_device_patched(engine, monkeypatch):
    """The embedder's own path up to deserialisation: a fake tensorrt module and a patched current device."""
    import sys
    import types

    path, _, onnx_path = engine
    onnx_path.unlink()
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setattr(trt_mod, "current_device", lambda device="cuda:0": {**BUILT_ON, "gpu": "Tesla T4"})
    with pytest.raises(ModelError, match=r"GPU NVIDIA Orin \(engine\) vs Tesla T4 \(here\)"):
        trt_mod.TensorRTEmbedder(path)


def test_missing_sidecar_is_refused(tmp_path):
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(ModelError, match=r"x\.engine: its sidecar x\.engine\.json .* is missing"):
        trt_mod.TensorRTEmbedder(engine)


def _qdq_model(path, zero_point: int):
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zp = numpy_helper.from_array(np.array(zero_point, np.int8), "zp")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q_act"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"], name="dq_act"),
             helper.make_node("MatMul", ["dq", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w, scale, zp])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_asymmetric_qdq_is_detected(tmp_path):
    assert trt_mod.asymmetric_qdq(_qdq_model(tmp_path / "sym.onnx", 0)) == []
    assert trt_mod.asymmetric_qdq(_qdq_model(tmp_path / "asym.onnx", 3)) == ["q_act", "dq_act"]


def test_build_settings_checks():
    from facepipe.pipeline.config import TensorRTConfig
    from facepipe.pipeline.errors import ConfigError

    s = trt_mod.BuildSettings.from_config(TensorRTConfig())
    assert (s.precision, s.min_batch, s.opt_batch, s.max_batch) == ("fp16", 1, 8, 32)
    assert s.timing_cache_path().name == "timing.cache"
    with pytest.raises(ConfigError, match="min_batch <= opt_batch <= max_batch"):
        trt_mod.BuildSettings(opt_batch=64)


@pytest.mark.skipif(not HAS_TRT, reason="no GPU / TensorRT here")
def test_real_engine_build(mfn, tmp_path, faces):  # pragma: no cover - needs an NVIDIA GPU
    from facepipe.export.artifacts import load_artifact
    from facepipe.export.formats import get_format
    from facepipe.export.onnx import export_onnx
    from facepipe.export.parity import check_parity
    from facepipe.pipeline.embedder import TorchEmbedder

    onnx_path = export_onnx(mfn, tmp_path / "m.onnx", Preprocess(), 128, "f")
    meta = ArtifactMeta(Preprocess(), 128, "f", "tensorrt")
    engine = trt_mod.build_engine(onnx_path, tmp_path / "m.engine", trt_mod.BuildSettings(
        timing_cache=str(tmp_path / "t.cache")), meta)
    emb = load_artifact(engine, device="cuda:0")
    check_parity(TorchEmbedder(mfn, Preprocess()), emb, faces, get_format("tensorrt"), precision="fp16")
