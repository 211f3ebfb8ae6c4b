"""QDQ ONNX export: graph structure, int8 weight codes, and parity with the torch model in ORT and OpenVINO."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from facepipe.export.onnx_qdq import export_qdq_onnx
from facepipe.models.quant import prepare_quantized
from facepipe.pipeline.errors import ConfigError, ModelError
from onnx import numpy_helper

from quant_nets import one_thread, smooth_images as _images, trained_like_mfn  # noqa: F401 (one_thread: autouse fixture)
from sanity import assert_not_collapsed
from tiny_nets import warmed_tiny_facenet


@pytest.fixture(scope="module")
def net():
    return trained_like_mfn()


def _export(net, bits, tmp_path_factory):
    q = prepare_quantized(net, bits, bits)
    q.calibrate([_images(2, 2), _images(2, 3)])
    q.freeze_activations()
    q.eval()
    path = export_qdq_onnx(q, tmp_path_factory.mktemp(f"w{bits}") / "student_q.onnx")
    return q, path


@pytest.fixture(scope="module", params=[8, 6], ids=["w8a8", "w6a6"])
def exported(request, net, tmp_path_factory):
    return _export(net, request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def small_net():
    """For runtime parity: a random 50-layer MobileFaceNet turns one rounding difference between runtimes
    into a different embedding (ORT vs torch min cosine ~0.99 at w8a8), which says nothing about the export."""
    return warmed_tiny_facenet(_images(16, 1))


@pytest.fixture(scope="module", params=[8, 6], ids=["w8a8", "w6a6"])
def exported_small(request, small_net, tmp_path_factory):
    q, path = _export(small_net, request.param, tmp_path_factory)
    x = _images(8, 7)
    with torch.no_grad():
        assert_not_collapsed(q(x).numpy(), "small quantized net")
        gap = _cos(q(x).numpy(), small_net(x).numpy()).min()
    # the 0.999 gates below must be able to tell the quantized model from the float one
    assert gap < 0.999, f"fake-quant equals fp32 here (min cosine {gap}): parity could not catch fp32 weights"
    return q, path


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_graph_is_valid_qdq(exported):
    q, path = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["embedding"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 50  # activations only: weight Q nodes became int8 initializers
    assert ops.count("DequantizeLinear") == 100
    assert ops.count("Clip") == (50 if q.abits < 8 else 0)
    assert "BatchNormalization" not in ops and not model.metadata_props


def test_weight_initializers_are_the_int8_codes(exported):
    q, path = exported
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consts = {**inits, **{n.output[0]: numpy_helper.to_array(n.attribute[0].t)
                          for n in model.graph.node if n.op_type == "Constant"}}
    codes = q.weight_codes()
    lo, hi = -(2 ** (q.wbits - 1)), 2 ** (q.wbits - 1) - 1
    for name, c in codes.items():
        arr = inits[f"net.{name}.weight_quantized"]
        assert arr.dtype == np.int8 and np.array_equal(arr, c.numpy()), name
        assert arr.min() >= lo and arr.max() <= hi
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            assert [a.i for a in node.attribute if a.name == "axis"] == [0]
            assert not consts[node.input[2]].any()  # symmetric weights: zero point 0 (s8s8)


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_matches_torch(exported_small, batch):
    q, path = exported_small
    x = _images(batch, 10 + batch)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = q(x).numpy()
    assert out.shape == (batch, 16)
    assert _cos(out, ref).min() >= 0.999


def test_openvino_loads_and_matches(exported_small):
    ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install facepipe[openvino])")
    q, path = exported_small
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
    x = _images(2, 20)
    out = compiled(x.numpy())[0]
    with torch.no_grad():
        ref = q(x).numpy()
    assert _cos(out, ref).min() >= 0.999


def test_export_needs_calibrated_ranges_and_a_qdq_opset(net, tmp_path):
    q = prepare_quantized(net, 8, 8)
    with pytest.raises(ModelError, match="has no range yet"):
        export_qdq_onnx(q, tmp_path / "a.onnx")
    with pytest.raises(ConfigError, match="opset=11 is not supported"):
        export_qdq_onnx(q, tmp_path / "a.onnx", opset=11)
    assert not (tmp_path / "a.onnx").exists()
    assert all(layer.input_quant.export_hook is None for layer in q.quant_layers().values())


def test_sub8bit_activation_zero_points_are_small_even_uint8(exported):
    """b < 8: uint8 zero point zu (even, <= 2^b) so OpenVINO's FakeQuantize rounds like torch (see onnx_qdq)."""
    q, path = exported
    model = onnx.load(str(path))
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t)
              for n in model.graph.node if n.op_type == "Constant"}
    zps = [consts[n.input[2]] for n in model.graph.node
           if n.op_type == "QuantizeLinear" and consts[n.input[1]].size == 1]
    assert len(zps) == 50
    if q.abits == 8:
        assert all(z.dtype == np.int8 for z in zps)
    else:
        assert all(z.dtype == np.uint8 and int(z.ravel()[0]) % 2 == 0 and int(z.ravel()[0]) <= 2 ** q.abits
                   for z in zps)


def test_openvino_matches_torch_at_w4a4(small_net, tmp_path_factory):
    """Regression: with int8 zero points OpenVINO drifted from torch at 4 bits (min cosine ~0.985 here, 0.92 on
    a real student); the uint8 small-offset form keeps it close. 4-bit parity is chaotic (one rounding flip
    cascades), so the bound is looser than the 8-bit one."""
    ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install facepipe[openvino])")
    q, path = _export(small_net, 4, tmp_path_factory)
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
    x = torch.cat([_images(4, 20), _images(4, 21)])
    out = compiled(x.numpy())[0]
    with torch.no_grad():
        ref = q(x).numpy()
    c = _cos(out, ref)
    assert c.min() >= 0.98 and c.mean() >= 0.995, c  # margin: 4-bit parity is chaotic across CPUs
