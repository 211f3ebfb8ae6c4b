"""ONNX face models as torch modules: `graph_from_onnx` reads an ONNX graph into a JSON-able spec plus a state
dict, and `OnnxGraphNet(graph)` rebuilds the network from that spec with plain torch layers.

Why our own importer, not a general converter (onnx2torch): the result must be a static graph of plain
nn.Conv2d / BatchNorm / PReLU / Linear layers, so torch.fx can trace it, fold its BatchNorms and put the
fake quantizers in (models/quant/prepare.py), and so a quantized checkpoint can rebuild it from JSON alone
(no pickled code). Face recognition graphs use a small set of operators; anything else is refused by name.

The spec is the graph's structure only (no weights): {"format", "input", "output", "nodes": [{"op", "name",
"inputs", "output", "attrs"}], "constants": {name: shape}}. Weights live in the module's state dict under
`layers.<node name>.*` (layers) and `consts.<name>` (constant operands), so a spec plus a state dict is the model.
The batch axis is always dynamic, whatever the ONNX input declares (SFace's is fixed at 1).
"""

from __future__ import annotations

import operator
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facepipe.pipeline.errors import ModelError

FORMAT = "facepipe.onnxgraph/1"
ARCH = "onnx_graph"  # its name in the architecture registry
ELEMENTWISE = {"Add": operator.add, "Sub": operator.sub, "Mul": operator.mul, "Div": operator.truediv}
LAYER_OPS = ("Conv", "BatchNormalization", "PRelu", "Gemm", "MatMul", "MaxPool", "AveragePool",
             "GlobalAveragePool", "Relu")
PASS_THROUGH = ("Dropout", "Identity")  # inference graphs: both are the identity
SHAPE_OPS = ("Shape", "Gather", "Unsqueeze", "Concat", "Cast")  # only to compute a Reshape's (batch, ...) target
SUPPORTED_OPS = (*LAYER_OPS, *ELEMENTWISE, "Flatten", "Reshape", "Clip", *PASS_THROUGH, "Constant", *SHAPE_OPS)
BATCH = "batch"  # a symbolic shape entry: the input's batch size, whatever it is at run time


def _safe(name: str, taken: set[str]) -> str:
    """A module / buffer name from an ONNX name (no dots), unique among `taken`."""
    base = re.sub(r"\W", "_", name) or "node"
    if base[0].isdigit():
        base = "n" + base
    out, k = base, 1
    while out in taken:
        k += 1
        out = f"{base}_{k}"
    taken.add(out)
    return out


class _Reader:
    """Walks an ONNX graph once, producing the spec (nodes, constants) and the weights."""

    def __init__(self, proto, where: str):
        from onnx import numpy_helper

        self.where = where
        self.init = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        for node in proto.graph.node:  # Constant nodes are initializers in all but name
            if node.op_type == "Constant":
                self.init[node.output[0]] = self._constant_value(node)
        self.rank: dict[str, int] = {}
        self.names: dict[str, str] = {}  # ONNX value name -> spec value name
        self.taken: set[str] = set()
        self.nodes: list[dict] = []
        self.state: dict[str, torch.Tensor] = {}
        self.constants: dict[str, list[int]] = {}
        self.shapes: dict[str, list] = {}  # values computed from Shape(): lists of ints and BATCH

    def _constant_value(self, node) -> np.ndarray:
        from onnx import helper, numpy_helper

        for a in node.attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
            if a.name in ("value_float", "value_int", "value_floats", "value_ints"):
                return np.asarray(helper.get_attribute_value(a))
        raise self.error(node, "a Constant node without a tensor value")

    def error(self, node, what: str) -> ModelError:
        return ModelError(f"{self.where}: node {node.name or node.output[0]!r} ({node.op_type}): {what}; facepipe's "
                          f"ONNX importer covers {', '.join(SUPPORTED_OPS)} as face models use them")

    @staticmethod
    def attrs(node) -> dict:
        from onnx import helper

        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def value(self, name: str) -> str:
        if name not in self.names:
            raise ModelError(f"{self.where}: value {name!r} is used before any node produces it (the graph is "
                             "not in topological order, or uses an unsupported construct)")
        return self.names[name]

    def weight(self, node, idx: int) -> np.ndarray:
        if idx >= len(node.input) or not node.input[idx]:
            raise self.error(node, f"input {idx} is missing")
        name = node.input[idx]
        if name not in self.init:
            raise self.error(node, f"input {idx} ({name!r}) must be a constant (an initializer)")
        return self.init[name].astype(np.float32) if self.init[name].dtype.kind == "f" else self.init[name]

    def emit(self, node, op: str, inputs: list[str], rank: int, attrs: dict | None = None, layer: bool = False,
             params: dict[str, np.ndarray] | None = None) -> None:
        name = _safe(node.name or node.output[0], self.taken)
        out = node.output[0]
        self.names[out] = name
        self.rank[name] = rank
        self.nodes.append({"op": op, "name": name, "inputs": inputs, "output": name, "attrs": attrs or {}})
        for key, arr in (params or {}).items():
            self.state[f"layers.{name}.{key}"] = torch.from_numpy(np.ascontiguousarray(arr, np.float32))

    def operand(self, node, name: str) -> str:
        """A value produced by a node, or a constant registered as a buffer (const:<buffer>)."""
        if name in self.init and name not in self.names:
            key = _safe("c_" + name, self.taken)
            arr = np.array(self.init[name], np.float32)  # a writable copy
            self.state[f"consts.{key}"] = torch.from_numpy(arr)
            self.constants[key] = list(arr.shape)
            self.names[name] = "const:" + key
            self.rank["const:" + key] = arr.ndim
        return self.value(name)


def _pads(node, reader: _Reader, attrs: dict) -> list[int]:
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise reader.error(node, f"auto_pad={attrs['auto_pad']!r} (only explicit pads are supported)")
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if len(pads) != 4 or pads[:2] != pads[2:]:
        raise reader.error(node, f"pads {pads} (only 2-D, symmetric padding is supported)")
    return pads[:2]


def _shape_entries(node, r: _Reader, name: str) -> list:
    """A shape-valued input as a list of ints and BATCH (from Shape() arithmetic or a constant)."""
    if name in r.shapes:
        return r.shapes[name]
    if name in r.init:
        return [int(v) for v in np.asarray(r.init[name]).reshape(-1)]
    raise r.error(node, f"input {name!r} is computed from the data, not from the input's shape")


def _read_shape_op(node, r: _Reader, a: dict) -> None:
    """Shape / Gather / Unsqueeze / Concat / Cast, evaluated symbolically: torch.onnx writes x.reshape(x.size(0),
    -1) this way. Only the batch dimension of a Shape may be read (the others are not tracked)."""
    op, out = node.op_type, node.output[0]
    if op == "Shape":
        r.shapes[out] = ["shape of " + r.value(node.input[0])]
    elif op == "Gather":
        src = _shape_entries(node, r, node.input[0])
        idx = [int(v) for v in np.asarray(r.weight(node, 1)).reshape(-1)]
        if src and isinstance(src[0], str) and src[0].startswith("shape of"):
            if idx != [0]:
                raise r.error(node, f"reads dimension {idx} of a shape (only the batch dimension 0 is supported)")
            r.shapes[out] = [BATCH]
        else:
            r.shapes[out] = [src[i] for i in idx]
    elif op == "Concat":
        r.shapes[out] = [e for name in node.input for e in _shape_entries(node, r, name)]
    else:  # Unsqueeze / Cast of a shape value: the same entries
        r.shapes[out] = _shape_entries(node, r, node.input[0])


def _read_node(node, r: _Reader) -> None:  # noqa: C901 - one branch per operator, flat on purpose
    op, a = node.op_type, _Reader.attrs(node)
    if op == "Constant":
        return
    if op in SHAPE_OPS:
        if op in ("Unsqueeze", "Cast") and node.input[0] not in r.shapes and node.input[0] not in r.init:
            raise r.error(node, "on image data (only on shape values before a Reshape)")
        _read_shape_op(node, r, a)
        return
    if op in PASS_THROUGH:
        r.names[node.output[0]] = r.value(node.input[0])
        return
    if op not in SUPPORTED_OPS:
        raise r.error(node, "unsupported operator")
    x = node.input[0]
    if op == "Conv":
        w = r.weight(node, 1)
        if w.ndim != 4:
            raise r.error(node, f"a {w.ndim - 2}-D convolution (only 2-D is supported)")
        params = {"weight": w}
        if len(node.input) > 2 and node.input[2]:
            params["bias"] = r.weight(node, 2)
        attrs = {"in_channels": int(w.shape[1] * a.get("group", 1)), "out_channels": int(w.shape[0]),
                 "kernel_size": [int(k) for k in w.shape[2:]], "stride": list(a.get("strides", [1, 1])),
                 "padding": _pads(node, r, a), "dilation": list(a.get("dilations", [1, 1])),
                 "groups": int(a.get("group", 1)), "bias": "bias" in params}
        r.emit(node, "conv", [r.value(x)], 4, attrs, True, params)
    elif op == "BatchNormalization":
        gamma, beta, mean, var = (r.weight(node, i) for i in range(1, 5))
        rank = r.rank[r.value(x)]
        if rank not in (2, 4):
            raise r.error(node, f"BatchNormalization of a rank-{rank} tensor (rank 2 or 4 are supported)")
        r.emit(node, "batchnorm", [r.value(x)], rank, {"num_features": int(gamma.size), "eps": float(a.get("epsilon", 1e-5)),
               "dims": rank}, True, {"weight": gamma, "bias": beta, "running_mean": mean, "running_var": var})
    elif op == "PRelu":
        slope = r.weight(node, 1)
        flat = slope.reshape(-1)
        rank = r.rank[r.value(x)]
        # broadcast from the right, the channel axis (1) of a rank-r input is the slope's axis ndim - (r - 1)
        channel_axis = slope.ndim - (rank - 1)
        if flat.size > 1 and (channel_axis < 0 or slope.shape[channel_axis] != flat.size):
            raise r.error(node, f"a PRelu slope of shape {list(slope.shape)} on a rank-{rank} input (one slope, or "
                          "one per channel)")
        r.emit(node, "prelu", [r.value(x)], rank, {"num_parameters": int(flat.size)}, True, {"weight": flat})
    elif op == "Relu":
        r.emit(node, "relu", [r.value(x)], r.rank[r.value(x)], {}, True)
    elif op == "Clip":
        lo = float(r.weight(node, 1)) if len(node.input) > 1 and node.input[1] else a.get("min", -np.inf)
        hi = float(r.weight(node, 2)) if len(node.input) > 2 and node.input[2] else a.get("max", np.inf)
        if (lo, hi) not in ((0.0, 6.0), (0.0, np.inf)):
            raise r.error(node, f"Clip({lo}, {hi}) (only ReLU and ReLU6 clips are supported)")
        r.emit(node, "relu6" if hi == 6.0 else "relu", [r.value(x)], r.rank[r.value(x)], {}, True)
    elif op in ("Gemm", "MatMul"):
        if op == "Gemm" and a.get("transA", 0):
            raise r.error(node, "transA=1 (the input must be (batch, features))")
        if r.rank[r.value(x)] != 2:
            raise r.error(node, f"a rank-{r.rank[r.value(x)]} input (a 2-D (batch, features) input is supported)")
        b = r.weight(node, 1)
        if b.ndim != 2:
            raise r.error(node, f"a weight of rank {b.ndim} (2-D only)")
        weight = b.T if (op == "MatMul" or not a.get("transB", 0)) else b  # nn.Linear stores (out, in)
        weight = weight * float(a.get("alpha", 1.0))
        params = {"weight": weight}
        if op == "Gemm" and len(node.input) > 2 and node.input[2]:
            c = r.weight(node, 2).reshape(-1) * float(a.get("beta", 1.0))
            if c.size == 1:
                c = np.full(weight.shape[0], float(c[0]), np.float32)
            if c.size != weight.shape[0]:
                raise r.error(node, f"a bias of {c.size} values for {weight.shape[0]} outputs")
            params["bias"] = c
        r.emit(node, "linear", [r.value(x)], 2, {"in_features": int(weight.shape[1]),
               "out_features": int(weight.shape[0]), "bias": "bias" in params}, True, params)
    elif op in ("MaxPool", "AveragePool"):
        if a.get("dilations", [1, 1]) != [1, 1] or a.get("storage_order", 0):
            raise r.error(node, "dilated or column-major pooling")
        attrs = {"kernel_size": list(a["kernel_shape"]), "stride": list(a.get("strides", [1, 1])),
                 "padding": _pads(node, r, a), "ceil_mode": bool(a.get("ceil_mode", 0))}
        if op == "AveragePool":
            attrs["count_include_pad"] = bool(a.get("count_include_pad", 0))
        r.emit(node, "maxpool" if op == "MaxPool" else "avgpool", [r.value(x)], 4, attrs, True)
    elif op == "GlobalAveragePool":
        r.emit(node, "gap", [r.value(x)], 4, {}, True)
    elif op in ELEMENTWISE:
        ins = [r.operand(node, n) for n in node.input[:2]]
        if all(i.startswith("const:") for i in ins):
            raise r.error(node, "both operands are constants (fold them before export)")
        r.emit(node, op.lower(), ins, max(r.rank[i] for i in ins))
    elif op == "Flatten":
        axis = int(a.get("axis", 1))
        if axis != 1:
            raise r.error(node, f"Flatten axis={axis} (only axis=1, keeping the batch axis, is supported)")
        r.emit(node, "flatten", [r.value(x)], 2)
    elif op == "Reshape":
        shape = _shape_entries(node, r, node.input[1])
        if BATCH in shape[1:] or any(isinstance(d, str) for d in shape[1:]):
            raise r.error(node, f"target shape {shape} moves the batch axis")
        # the first dimension is the batch whatever the graph says (0: copy, -1: infer, a fixed batch, BATCH)
        r.emit(node, "reshape", [r.value(x)], len(shape), {"shape": [int(d) for d in shape[1:]]})


def graph_from_onnx(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(spec, state dict) of an ONNX face model with one image input and one embedding output."""
    import onnx

    path = Path(path)
    try:
        proto = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError, OSError, ...
        raise ModelError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    r = _Reader(proto, str(path))
    inputs = [v for v in proto.graph.input if v.name not in r.init]
    if len(inputs) != 1 or len(proto.graph.output) != 1:
        raise ModelError(f"{path}: {len(inputs)} inputs and {len(proto.graph.output)} outputs; a face model has one "
                         "image input and one embedding output")
    r.names[inputs[0].name] = "input"
    r.rank["input"] = 4
    for node in proto.graph.node:
        _read_node(node, r)
    out = r.value(proto.graph.output[0].name)
    if r.rank.get(out) != 2:
        raise ModelError(f"{path}: the output {proto.graph.output[0].name!r} has rank {r.rank.get(out)}, not 2 "
                         "(batch, embedding)")
    dim = next((n["attrs"]["out_features"] for n in reversed(r.nodes) if n["op"] == "linear"), None)
    spec = {"format": FORMAT, "source": path.name, "input": "input", "output": out, "nodes": r.nodes,
            "constants": r.constants, "embedding_size": dim}
    return spec, r.state


def _layer(node: dict) -> nn.Module:
    op, a = node["op"], node["attrs"]
    if op == "conv":
        return nn.Conv2d(a["in_channels"], a["out_channels"], tuple(a["kernel_size"]), tuple(a["stride"]),
                         tuple(a["padding"]), tuple(a["dilation"]), a["groups"], bias=a["bias"])
    if op == "batchnorm":
        return (nn.BatchNorm2d if a["dims"] == 4 else nn.BatchNorm1d)(a["num_features"], eps=a["eps"])
    if op == "prelu":
        return nn.PReLU(a["num_parameters"])
    if op == "linear":
        return nn.Linear(a["in_features"], a["out_features"], bias=a["bias"])
    if op == "maxpool":
        return nn.MaxPool2d(tuple(a["kernel_size"]), tuple(a["stride"]), tuple(a["padding"]), ceil_mode=a["ceil_mode"])
    if op == "avgpool":
        return nn.AvgPool2d(tuple(a["kernel_size"]), tuple(a["stride"]), tuple(a["padding"]),
                            ceil_mode=a["ceil_mode"], count_include_pad=a["count_include_pad"])
    return {"gap": lambda: nn.AdaptiveAvgPool2d(1), "relu": nn.ReLU, "relu6": nn.ReLU6}[op]()


class OnnxGraphNet(nn.Module):
    """The network an ONNX graph spec describes (see graph_from_onnx); load its state dict for the weights."""

    def __init__(self, graph: dict | None = None, embedding_size: int | None = None):
        super().__init__()
        if not isinstance(graph, dict) or graph.get("format") != FORMAT:
            found = graph.get("format") if isinstance(graph, dict) else type(graph).__name__
            raise ModelError(f"architecture {ARCH!r} is an imported ONNX graph and needs its spec (graph=..., "
                             f"format {FORMAT!r}; got {found!r}): import an .onnx file instead of building it by name")
        self.spec = graph
        self.embedding_size = embedding_size or graph.get("embedding_size")
        self.arch_kwargs = {"graph": graph}  # what build_model(ARCH, ...) needs to rebuild it
        self.layers = nn.ModuleDict({n["name"]: _layer(n) for n in graph["nodes"] if n["op"] in _LAYER_NAMES})
        self.consts = nn.Module()
        for key, shape in graph["constants"].items():
            self.consts.register_buffer(key, torch.zeros(shape))

    def _arg(self, env: dict, name: str):
        return getattr(self.consts, name[6:]) if name.startswith("const:") else env[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {"input": x}
        for node in self.spec["nodes"]:
            op, name = node["op"], node["name"]
            args = [self._arg(env, i) for i in node["inputs"]]
            if op in _LAYER_NAMES:
                env[name] = self.layers[name](args[0])
            elif op in _BINARY:
                env[name] = _BINARY[op](args[0], args[1])
            elif op == "flatten":
                env[name] = torch.flatten(args[0], 1)
            else:  # reshape: batch kept, 0 copies the input's dimension
                src = args[0]
                rest = [src.size(i) if d == 0 else d for i, d in enumerate(node["attrs"]["shape"], 1)]
                env[name] = src.reshape(src.size(0), *rest)
        return env[self.spec["output"]]


_LAYER_NAMES = ("conv", "batchnorm", "prelu", "linear", "maxpool", "avgpool", "gap", "relu", "relu6")
_BINARY = {k.lower(): f for k, f in ELEMENTWISE.items()}


def import_onnx(path: str | Path) -> OnnxGraphNet:
    """The ONNX model at `path` as an OnnxGraphNet (eval mode) carrying its weights."""
    spec, state = graph_from_onnx(path)
    net = OnnxGraphNet(spec)
    missing, unexpected = net.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not k.endswith("num_batches_tracked")]
    if missing or unexpected:  # a bug of the importer, not of the user's file
        raise ModelError(f"{path}: imported weights do not fit the graph (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    return net.eval()
