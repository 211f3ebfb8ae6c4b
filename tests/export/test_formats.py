"""The FORMATS table: consistent rows, did-you-mean, suffix -> format, GPU / module checks before work."""

from __future__ import annotations

import importlib.util

import pytest

from facepipe.export.artifacts import format_for_path, loader_for
from facepipe.export.formats import FAMILIES
from facepipe.export.formats import FORMATS, available, check_formats, get_format, tolerance
from facepipe.pipeline.embedder import EMBEDDER_BACKENDS
from facepipe.pipeline.errors import BackendUnavailable, ConfigError, ModelError

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def test_every_format_has_a_suffix_a_loader_and_a_registered_runtime():
    assert set(FORMATS) >= {"torch", "onnx", "onnx_int8", "openvino", "openvino_int8", "tensorrt", "torch_tensorrt"}
    assert {f.family for f in FORMATS.values()} <= set(FAMILIES.names())  # every row has its module
    for key, f in FORMATS.items():
        assert f.key == key and f.suffix.startswith(".")
        assert f.runtime in EMBEDDER_BACKENDS, key
        assert f.precision in ("fp32", "fp16", "int8") and f.source in ("fp32", "quantized")
        assert 0.99 <= f.cos_floor < 1 and f.atol >= 0 and f.description
        assert callable(loader_for(key))
    assert FORMATS["onnx"].cos_floor == 0.9999 and FORMATS["onnx_int8"].cos_floor == 0.999
    assert [k for k, f in FORMATS.items() if f.needs_gpu] == ["tensorrt", "torch_tensorrt"]


def test_get_format_did_you_mean():
    assert get_format("openvino").suffix == ".xml"
    with pytest.raises(ConfigError, match="did you mean 'onnx'"):
        get_format("onx")


@pytest.mark.parametrize("name, key", [("m.onnx", "onnx"), ("m.int8.onnx", "onnx_int8"), ("m.xml", "openvino"),
                                       ("m.INT8.xml", "openvino_int8"), ("m.engine", "tensorrt"),
                                       ("m.ts", "torch_tensorrt"), ("qstudent.pt", "torch_int8")])
def test_format_for_path_longest_suffix(name, key, tmp_path):
    assert format_for_path(tmp_path / name).key == key


def test_format_for_path_unknown_suffix(tmp_path):
    with pytest.raises(ModelError, match=r"m\.tflite: unknown artifact type .*\.int8\.onnx"):
        format_for_path(tmp_path / "m.tflite")


def test_gpu_format_on_cpu_is_refused_before_work():
    assert [f.key for f in check_formats(["onnx", "openvino"], "cpu")] == ["onnx", "openvino"]
    with pytest.raises(BackendUnavailable, match="tensorrt needs an NVIDIA GPU but the device is 'cpu'"):
        check_formats(["onnx", "tensorrt"], "cpu")
    with pytest.raises(ConfigError, match="unknown export format"):
        check_formats(["onnx", "tensorrtt"], "cpu")


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_missing_module_is_named():
    assert available("onnx") and not available("tensorrt")
    with pytest.raises(BackendUnavailable, match="tensorrt needs the Python module.*pip install tensorrt"):
        check_formats(["tensorrt"], "cuda:0")


def test_tolerance_by_precision_and_override():
    trt = get_format("tensorrt")
    assert tolerance(trt) == (trt.cos_floor, trt.atol)
    assert tolerance(trt, "fp32") == (0.9999, 1e-3)
    assert tolerance(get_format("onnx"), atol=0.5) == (0.9999, 0.5)
