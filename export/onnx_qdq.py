"""QDQ ONNX export of a QuantizedModel: every quantizer becomes QuantizeLinear -> DequantizeLinear.

Activations: per tensor, preceded by a Clip to the b-bit range when b < 8 so the runtime keeps exactly 2^b
levels. 8-bit activations use an int8 zero point (-z); sub-8-bit ones a small even uint8 zero point (the b-bit
codes at the bottom of the uint8 range; same values in ORT, better OpenVINO parity: see _act_zero_point).
Weights: per output channel (axis 0); after export each weight's QuantizeLinear on a constant is replaced by an
int8 initializer (the codes, computed with numpy) feeding DequantizeLinear. Symmetric weights have zero point 0
(s8 weights, as TensorRT requires). Biases stay float: quantizing them to int32 would round them and break
parity with the torch model.

Known OpenVINO limitation (2026.4, CPU): its FakeQuantize computes round(x * isc + ish) with
isc = (levels - 1) / (input_high - input_low) derived from the bounds, not round(x / s). The product differs from
torch's x / s in the last float32 bit, so inputs lying exactly on a rounding boundary (x / s = k + 1/2) can round
the other way; no choice of ONNX scale / zero point reproduces torch on every such value. Real face images
preprocessed as (p - 127.5) / 127.5 hit such ties for a few pixel values (4 bits: p = 136 + 17k when the input
range is [-1, 1]), so at 4 bits OpenVINO still disagrees with torch on real images (min cosine ~0.91 on a
MobileFaceNet student) while it agrees on tie-free inputs (~0.97 min / 0.996 mean); 6 and 8 bits are close.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from facepipe.pipeline.errors import ConfigError, ModelError
from facepipe.pipeline.io import atomic_path
from onnx import numpy_helper

from facepipe.models.quant.formulas import qrange, to_onnx_qparams
from facepipe.models.quant.prepare import QuantizedModel

MIN_OPSET = 13  # per-channel QuantizeLinear / DequantizeLinear (axis attribute)


def _clip_bounds(scale: np.ndarray, zp: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Float bounds s * (qmin - zp), s * (qmax - zp) of the b-bit code range (float32 like the torch model)."""
    lo, hi = qrange(bits)
    z = -zp.astype(np.float32)
    return scale * (np.float32(lo) + z), scale * (np.float32(hi) + z)


def _act_zero_point(zp: int, bits: int) -> np.ndarray:
    """uint8 zero point for a sub-8-bit activation whose int8 (ONNX) zero point is `zp`.

    Same values as the int8 form (ORT output is unchanged: the Clip in front keeps the codes in a 2^b range),
    but expressed so OpenVINO rounds much closer to torch. Why: OpenVINO turns Q -> DQ into a
    FakeQuantize with levels=256 over [s*(qmin8 - zp), s*(qmax8 - zp)] and the CPU plugin evaluates it as
    round(x * isc + ish) (fused into the previous int8 Convolution as a oneDNN quantization post-op, the Clip
    merged into its crop bounds), with ish = -input_low * isc = (zero point of the u8 code range). With int8
    zero points ish = 128 + zp ~ 120..136, so x * isc + ish is computed with float32 spacing ulp(128) ~ 1.5e-5
    of a step, 16x coarser than torch's round(x / s): values within ~1e-5 step of a rounding boundary land on
    the other side. At 8 bits such a flip is a 1/255 error and harmless; at 4 bits it is 1/15 of the range and
    the flips cascade through ~50 quantized layers (per-layer flip rate grows from ~1e-4 at the input to ~40%
    of the final activations on a MobileFaceNet), so OpenVINO drifts far from torch although every single
    layer in isolation matches. With a uint8 zero point zu = zp - qmin (codes 0 .. 2^b - 1) ish is a small
    integer (< 2^b + 1) and the FakeQuantize argument keeps float32 precision comparable to x / s. zu is also
    made even, because the rounding is half-to-even on x * isc + zu: an odd offset would flip the parity
    of exact ties (x / s = k + 1/2, which real pixels hit at the network input). That halves, but does not
    remove, the tie mismatches (see the module docstring). The b-bit codes then start at uint8 code 0 or 1 and
    stay within 0..255 (zu <= 2^b <= 128).
    """
    lo, _ = qrange(bits)
    zu = zp - lo
    zu += zu % 2
    return np.asarray(zu, np.uint8)


class _QDQ(torch.autograd.Function):
    """Fake quantization whose ONNX symbolic is [Clip | Min/Max] -> QuantizeLinear -> DequantizeLinear."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, bits, axis, rank):
        lo, hi = qrange(bits)
        shape = [1] * x.dim()
        if axis is not None:
            shape[axis] = -1
        with warnings.catch_warnings():  # the parameters are constants of the trace, as intended
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            s = torch.tensor(np.asarray(scale, np.float32)).reshape(shape if axis is not None else [])
            z = -torch.tensor(np.asarray(zero_point, np.float32)).reshape(s.shape)
        return s * (torch.clamp(torch.round(x / s) - z, lo, hi) + z)

    @staticmethod
    def symbolic(g, x, scale, zero_point, bits, axis, rank):
        s = np.asarray(scale, np.float32)
        zp = np.asarray(zero_point, np.int8)
        const = lambda a: g.op("Constant", value_t=torch.from_numpy(np.ascontiguousarray(a)))
        if bits < 8:
            lo, hi = _clip_bounds(s, zp, bits)
            if axis is None:
                x = g.op("Clip", x, const(lo), const(hi))
            else:  # Clip takes scalar bounds only: per-channel bounds need Min / Max
                bshape = [-1] + [1] * (rank - 1)
                x = g.op("Max", g.op("Min", x, const(hi.reshape(bshape))), const(lo.reshape(bshape)))
        kw = {} if axis is None else {"axis_i": axis}
        if axis is None and bits < 8:
            zp = _act_zero_point(int(zp), bits)
        q = g.op("QuantizeLinear", x, const(s), const(zp), **kw)
        return g.op("DequantizeLinear", q, const(s), const(zp), **kw)


def _act_hook(aq):
    s, zp = to_onnx_qparams(*aq.qparams())
    return lambda x: _QDQ.apply(x, float(s), int(zp), aq.bits, None, 0)


def _weight_hook(wq, weight: torch.Tensor):
    s, zp = to_onnx_qparams(*wq.qparams(weight))
    return lambda w: _QDQ.apply(w, tuple(s.tolist()), tuple(int(v) for v in zp), wq.bits, wq.axis, weight.dim())


@contextlib.contextmanager
def export_mode(qmodel: QuantizedModel) -> Iterator[QuantizedModel]:
    """Inside this block every quantizer traces to QDQ nodes with its current (frozen) parameters."""
    layers = qmodel.quant_layers()
    try:
        with torch.no_grad():
            for layer in layers.values():
                layer.input_quant.export_hook = _act_hook(layer.input_quant)
                layer.weight_quant.export_hook = _weight_hook(layer.weight_quant, layer.weight)
        yield qmodel
    finally:
        for layer in layers.values():
            layer.input_quant.export_hook = None
            layer.weight_quant.export_hook = None


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return consts


def _const_value(name: str, consts: dict, producers: dict, chain: list) -> np.ndarray | None:
    """Evaluate `name` if it is a constant, or Min / Max / Clip of constants (recording those nodes)."""
    if name in consts:
        return consts[name]
    node = producers.get(name)
    if node is None or node.op_type not in ("Min", "Max", "Clip"):
        return None
    args = [_const_value(i, consts, producers, chain) if i else None for i in node.input]
    if args[0] is None or any(a is None for i, a in zip(node.input, args) if i):
        return None
    chain.append(node)
    if node.op_type == "Min":
        return np.minimum(args[0], args[1])
    if node.op_type == "Max":
        return np.maximum(args[0], args[1])
    lo = args[1] if len(args) > 1 and args[1] is not None else -np.inf
    hi = args[2] if len(args) > 2 and args[2] is not None else np.inf
    return np.clip(args[0], lo, hi).astype(args[0].dtype)


def fold_weight_quantizers(model: onnx.ModelProto) -> int:
    """Replace each QuantizeLinear of a constant by an int8 initializer of its codes; returns how many."""
    consts = _constants(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    dead, new_inits = [], []
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        chain: list = []
        w = _const_value(node.input[0], consts, producers, chain)
        if w is None:
            continue
        s = consts[node.input[1]].astype(np.float32)
        zp = consts[node.input[2]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * w.ndim
        if s.ndim:
            shape[axis] = -1
        zp_b = zp.astype(np.float32).reshape(shape if s.ndim else [])
        codes = np.rint(w.astype(np.float32) / s.reshape(shape)) + zp_b
        codes = np.clip(codes, -128, 127).astype(np.int8)
        root = chain[0].input[0] if chain else node.input[0]  # chain[0] is the innermost Min/Clip
        name = (root if root in consts else node.output[0]) + "_quantized"
        new_inits.append(numpy_helper.from_array(codes, name))
        for user in model.graph.node:
            user.input[:] = [name if i == node.output[0] else i for i in user.input]
        dead.append(node)
        dead.extend(chain)
    for n in dead:
        model.graph.node.remove(n)
    model.graph.initializer.extend(new_inits)
    _drop_unused(model)
    return len(new_inits)


def _drop_unused(model: onnx.ModelProto) -> None:
    """Remove initializers and Constant nodes that nothing reads any more."""
    while True:
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        consts = [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] not in used]
        inits = [t for t in model.graph.initializer if t.name not in used]
        if not consts and not inits:
            return
        for n in consts:
            model.graph.node.remove(n)
        for t in inits:
            model.graph.initializer.remove(t)


def export_qdq_onnx(qmodel: QuantizedModel, path: str | Path, opset: int = 17, size: int = 112) -> Path:
    """Export `qmodel` as a QDQ ONNX graph (input 'input' (N, 3, size, size), output 'embedding', dynamic N).

    Activation ranges must have been observed (calibrate / QAT). The file is written atomically.
    """
    if not isinstance(qmodel, QuantizedModel):
        raise ModelError("export_qdq_onnx needs a QuantizedModel (from prepare_quantized), "
                         f"got {type(qmodel).__name__}")
    if opset < MIN_OPSET:
        raise ConfigError(f"opset={opset} is not supported for QDQ export: use {MIN_OPSET} or newer")
    path = Path(path)
    was_training = qmodel.training
    qmodel.eval()
    dummy = torch.zeros(1, 3, size, size)
    try:
        with atomic_path(path) as tmp, export_mode(qmodel), warnings.catch_warnings():
            # the TorchScript exporter is deprecated but is the one that honours autograd symbolic()
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(qmodel, (dummy,), str(tmp), input_names=["input"], output_names=["embedding"],
                              dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
                              opset_version=opset, dynamo=False, do_constant_folding=True)
            model = onnx.load(str(tmp))
            fold_weight_quantizers(model)
            onnx.checker.check_model(model)
            onnx.save(model, str(tmp))
    finally:
        qmodel.train(was_training)
    return path
