"""BN folding (torch.fx) and the QuantizedModel: a folded network whose Conv2d / Linear are fake-quantized.

BatchNorm is folded, not kept: every deployment runtime folds it, so the weights we quantize must be the
folded ones. Rebuilding is deterministic: `prepare_quantized(build_model(arch, ...), ...)` gives the same
state-dict keys (the original module paths), so a saved QuantizedModel loads with `load_state_dict`.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterable

import torch
from facepipe.pipeline.errors import DataError, ModelError
from torch import fx, nn

from .formulas import check_bits
from .modules import QUANT_LAYERS, ActQuantizer, QConv2d, QLinear, WeightQuantizer, dequantized_weight

ACT_RANGES = ("minmax", "mse", "auto")  # quantize.act_range: how calibration sets activation ranges
MSE_SAMPLE = 16384  # activation values kept per calibration batch and quantizer for the MSE range search
PLACEMENT = ("input of every Conv2d/Linear quantized per tensor, weights per output channel; "
             "PReLU and residual add run in float")
# run in float between the quantized layers (ChannelAffine is defined below: added to the tuple there)
SUPPORTED_MODULES = (nn.Conv2d, nn.Linear, nn.PReLU, nn.ReLU, nn.ReLU6, nn.Identity, nn.Dropout, nn.Flatten,
                     nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
SUPPORTED_FUNCTIONS = {operator.add, operator.iadd, operator.mul, operator.sub, operator.truediv, operator.getitem,
                       torch.add, torch.mul, torch.sub,
                       torch.flatten, torch.reshape, torch.nn.functional.relu, torch.nn.functional.relu6}
SUPPORTED_METHODS = {"add", "add_", "mul", "flatten", "view", "reshape", "size", "contiguous"}


def _supported_text() -> str:
    mods = ", ".join(m.__name__ for m in SUPPORTED_MODULES + BATCHNORMS)
    return f"supported layers: {mods}; supported functions: add, sub, mul, div, flatten, reshape/view, relu"


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - fx raises many types (TraceError, TypeError, ...) for dynamic control flow
        raise ModelError(f"model {type(model).__name__} cannot be traced by torch.fx ({type(e).__name__}: {e}); "
                         "quantization needs a static graph: " + _supported_text()) from None


@torch.no_grad()
def _fold_into(layer: nn.Conv2d | nn.Linear, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """w' = w * g / sqrt(var + eps), b' = (b - mean) * g / sqrt(var + eps) + beta (computed in float64)."""
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    k = gamma / torch.sqrt(var + bn.eps)
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(var)
    w = layer.weight.double() * k.reshape([-1] + [1] * (layer.weight.dim() - 1))
    layer.weight.copy_(w.to(layer.weight.dtype))
    new_bias = ((bias - mean) * k + beta).to(layer.weight.dtype)
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias)
    else:
        layer.bias.copy_(new_bias)


class ChannelAffine(nn.Module):
    """A BatchNorm that has no Conv2d / Linear of its own to fold into (iresnet's pre-activation BN, SFace's BN
    after the last PReLU), as the per-channel y = x * scale + shift it computes in eval mode. It runs in float,
    as the deployment runtimes run such a BN, and QAT may fine-tune it like a PReLU slope."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.scale = nn.Parameter(scale.detach().clone())
        self.shift = nn.Parameter(shift.detach().clone())

    @classmethod
    @torch.no_grad()
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm) -> "ChannelAffine":
        var, mean = bn.running_var.double(), bn.running_mean.double()
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
        k = gamma / torch.sqrt(var + bn.eps)
        return cls(k.float(), (beta - mean * k).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.reshape(shape) + self.shift.reshape(shape)

    def extra_repr(self) -> str:
        return f"{self.scale.numel()}"


def _foldable_into(gm: fx.GraphModule, node: fx.Node, bn) -> str | None:
    """Why the BatchNorm at `node` cannot be folded into the layer before it (None: it can)."""
    prev = node.args[0] if node.args else None
    want = nn.Conv2d if isinstance(bn, nn.BatchNorm2d) else nn.Linear
    if not (isinstance(prev, fx.Node) and prev.op == "call_module"
            and isinstance(gm.get_submodule(prev.target), want)):
        src = (prev.target if prev.op == "call_module" else prev.name) if isinstance(prev, fx.Node) else prev
        return f"it follows {src!r}, not a {want.__name__}"
    if len(prev.users) != 1:
        return f"its {want.__name__} '{prev.target}' also feeds other layers"
    return None


def fold_batchnorm(model: nn.Module, *, report: list | None = None) -> fx.GraphModule:
    """A traced copy of `model` (eval semantics) with every BatchNorm folded into the Conv2d/Linear before it.

    A BatchNorm that directly follows a Conv2d (BatchNorm2d) or Linear (BatchNorm1d) with no other user is
    folded; any other becomes a ChannelAffine that runs in float (its why is appended to `report`). A BatchNorm
    without running statistics raises ModelError naming it. The input model is not modified.
    """
    model = copy.deepcopy(model).eval()
    gm = _trace(model)
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), BATCHNORMS):
            continue
        bn = gm.get_submodule(node.target)
        what = f"BatchNorm layer '{node.target}' ({type(bn).__name__})"
        if bn.running_mean is None or bn.running_var is None:
            raise ModelError(f"{what} has no running statistics (track_running_stats=False): it cannot be "
                             "folded; build it with track_running_stats=True")
        why = _foldable_into(gm, node, bn)
        if why is not None:
            parent, _, leaf = node.target.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, leaf, ChannelAffine.from_batchnorm(bn))
            if report is not None:
                report.append(f"{what} kept as a float per-channel affine: {why}")
            continue
        prev = node.args[0]
        _fold_into(gm.get_submodule(prev.target), bn)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm.eval()


SUPPORTED_MODULES = (*SUPPORTED_MODULES, ChannelAffine)


def _check_supported(gm: fx.GraphModule) -> None:
    for node in gm.graph.nodes:
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            if not isinstance(m, SUPPORTED_MODULES) or isinstance(m, BATCHNORMS):
                raise ModelError(f"layer '{node.target}' ({type(m).__name__}) is not supported for quantization; "
                                 + _supported_text())
        elif node.op == "call_function" and node.target not in SUPPORTED_FUNCTIONS:
            name = getattr(node.target, "__name__", str(node.target))
            raise ModelError(f"operation '{node.name}' ({name}) is not supported for quantization; "
                             + _supported_text())
        elif node.op == "call_method" and node.target not in SUPPORTED_METHODS:
            raise ModelError(f"operation '{node.name}' (Tensor.{node.target}) is not supported for quantization; "
                             + _supported_text())


def _infer_arch(model: nn.Module) -> str | None:
    from facepipe.models.registry import MODELS

    for name in MODELS.names():
        if MODELS.get(name) is type(model):
            return name
    return None


class QuantizedModel(nn.Module):
    """A BN-folded network with fake-quantized Conv2d/Linear layers (see modules.py for the placement)."""

    def __init__(self, net: fx.GraphModule, wbits: int, abits: int, weight_symmetric: bool, act_symmetric: bool,
                 arch: str | None = None, embedding_size: int | None = None, *,
                 layer_bits: dict[str, tuple[int, int]] | None = None, arch_kwargs: dict | None = None,
                 float_batchnorms: list[str] | None = None):
        super().__init__()
        self.net = net
        self.wbits, self.abits = wbits, abits
        self.layer_bits = {k: (int(v[0]), int(v[1])) for k, v in (layer_bits or {}).items()}
        self.arch_kwargs = arch_kwargs  # what rebuilds `arch` (an imported ONNX graph's spec), JSON-able
        self.float_batchnorms = list(float_batchnorms or [])
        self.weight_symmetric, self.act_symmetric = weight_symmetric, act_symmetric
        self.arch, self.embedding_size = arch, embedding_size
        self.preprocess: dict | None = None  # set when loaded from a checkpoint; written back on save
        for name, layer in self.quant_layers().items():
            layer.input_quant.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def quant_layers(self) -> dict[str, QConv2d | QLinear]:
        """Quantized layers by qualified name inside the folded network (e.g. 'conv1.conv')."""
        return {n: m for n, m in self.net.named_modules() if isinstance(m, QUANT_LAYERS)}

    def act_quantizers(self) -> list[ActQuantizer]:
        return [m for m in self.modules() if isinstance(m, ActQuantizer)]

    def settings(self) -> dict:
        """The quantization settings (JSON-able)."""
        return {"wbits": self.wbits, "abits": self.abits, "weight_symmetric": self.weight_symmetric,
                "act_symmetric": self.act_symmetric,
                "layer_bits": {k: list(v) for k, v in self.layer_bits.items()},
                "bn": "folded" + (f"; {len(self.float_batchnorms)} kept in float" if self.float_batchnorms else ""),
                "placement": PLACEMENT}

    def mean_weight_bits(self) -> float:
        """Weight bits averaged over the quantized weights (what mixed precision costs per weight)."""
        n = bits = 0
        for m in self.quant_layers().values():
            n += m.weight.numel()
            bits += m.weight.numel() * m.weight_quant.bits
        return bits / n if n else float(self.wbits)

    @torch.no_grad()
    def calibrate(self, batches: Iterable[torch.Tensor], reset: bool = True, act_range: str = "minmax") -> int:
        """Observe activation ranges on preprocessed float NCHW batches; returns the number of batches.

        Runs the float network (weights and activations unquantized, so no quantization noise shifts
        downstream ranges) and sets each input range to the mean of the per-batch min / max, each batch
        weighted equally. act_range="mse" then shrinks each range to the clipping that minimises the
        fake-quantization MSE on a sample of its values (ActQuantizer.mse_range); "auto" does so below 8 bits. Afterwards quantization is on and observing is off: call freeze_activations()
        for PTQ, or set_observing(True) to keep an EMA during QAT.
        """
        was_training = self.training
        self.eval()
        acts = self.act_quantizers()
        weights = [m for m in self.modules() if isinstance(m, WeightQuantizer)]
        if act_range not in ACT_RANGES:
            raise ModelError(f"act_range={act_range!r}: use one of {', '.join(ACT_RANGES)}")
        for a in acts:
            if reset and not bool(a.frozen):
                a.reset()
            a.calibrating = True
            a.sample_size = MSE_SAMPLE if act_range == "mse" or (act_range == "auto" and a.bits < 8) else 0
        for w in weights:
            w.enabled = False
        n = 0
        try:
            for batch in batches:
                if not isinstance(batch, torch.Tensor) or batch.dim() != 4 or not batch.is_floating_point():
                    raise DataError("calibration batches must be float tensors (N, C, H, W), already preprocessed; "
                                    f"got {getattr(batch, 'dtype', type(batch).__name__)} "
                                    f"{tuple(getattr(batch, 'shape', ()))}")
                self.net(batch)
                n += 1
        finally:
            for a in acts:
                a.calibrating, a.observing = False, False
                if a.sample_size and n and not bool(a.frozen):
                    a.range_shrink = a.mse_range()
                a.sample_size = 0
            for w in weights:
                w.enabled = True
            self.train(was_training)
        if n == 0:
            raise DataError("calibrate() got no batches: give it at least one preprocessed (N, 3, H, W) tensor")
        return n

    def freeze_activations(self) -> None:
        """Pin every activation range (raises ModelError if one was never observed)."""
        for a in self.act_quantizers():
            a.qparams()  # raises with the layer's name when uninitialised
            a.frozen.fill_(True)

    def set_observing(self, flag: bool) -> None:
        """Turn EMA range updates on or off for every activation quantizer (frozen ones never move)."""
        for a in self.act_quantizers():
            a.observing = bool(flag)

    def weight_codes(self) -> dict[str, torch.Tensor]:
        """Integer weight codes (int8 tensors) by layer name."""
        return {n: m.weight_quant.codes(m.weight) for n, m in self.quant_layers().items()}

    @torch.no_grad()
    def levels_per_channel(self) -> dict[str, list[int]]:
        """Distinct dequantized weight values per output channel, by layer name."""
        out = {}
        for n, m in self.quant_layers().items():
            w = dequantized_weight(m).reshape(m.weight.shape[0], -1).sort(dim=1).values
            out[n] = ((w[:, 1:] != w[:, :-1]).sum(1) + 1).tolist()
        return out

    @torch.no_grad()
    def spec(self) -> dict:
        """JSON-able description: settings and, per quantized layer, weight and input quantization params."""
        layers = []
        for name, m in self.quant_layers().items():
            wq, aq = m.weight_quant, m.input_quant
            s, z = wq.qparams(m.weight)
            flat = m.weight.detach().reshape(m.weight.shape[0], -1)
            entry = {"name": name, "kind": m.kind, "shape": list(m.weight.shape),
                     "weight": {"bits": wq.bits, "symmetric": wq.symmetric, "axis": wq.axis,
                                "scale": s.tolist(), "zero_point": [int(v) for v in z.tolist()],
                                "min": flat.amin(1).tolist(), "max": flat.amax(1).tolist()},
                     "input": {"bits": aq.bits, "symmetric": aq.symmetric, "scale": None, "zero_point": None,
                               "min": None, "max": None, "frozen": bool(aq.frozen)}}
            if bool(aq.initialized):
                a_s, a_z = aq.qparams()
                entry["input"].update(scale=float(a_s), zero_point=int(a_z), min=float(aq.min_val),
                                      max=float(aq.max_val), range_shrink=round(float(aq.range_shrink), 4))
            layers.append(entry)
        zp_rule = "q = clip(round(x / s - z)), x ~ s * (q + z); ONNX zero_point = -z"
        return {"settings": {**self.settings(), "zero_point_convention": zp_rule},
                "arch": self.arch, "embedding_size": self.embedding_size, "layers": layers}


def prepare_quantized(model: nn.Module, wbits: int, abits: int, weight_symmetric: bool = True,
                      act_symmetric: bool = False, *, arch: str | None = None,
                      embedding_size: int | None = None, layer_bits: dict | None = None,
                      arch_kwargs: dict | None = None) -> QuantizedModel:
    """Fold BN, then replace every Conv2d/Linear with QConv2d/QLinear (wbits weights, abits inputs).

    `layer_bits`: quantize.layer_bits patterns ({'first': 8, 'layers.conv_*': {'wbits': 8}}, see layer_bits.py)
    or resolved {name: (wbits, abits)}. `arch` / `embedding_size` / `arch_kwargs` (used when saving) default
    to the registry name of the model's class, its `embedding_size` and `arch_kwargs` attributes. Bits outside
    2..8 raise ConfigError; unsupported layers raise ModelError.
    """
    from .layer_bits import resolve_layer_bits

    wbits, abits = check_bits(wbits, "wbits"), check_bits(abits, "abits")
    kept: list[str] = []
    gm = fold_batchnorm(model, report=kept)
    _check_supported(gm)
    weighted = [n.target for n in gm.graph.nodes
                if n.op == "call_module" and isinstance(gm.get_submodule(n.target), (nn.Conv2d, nn.Linear))]
    resolved = resolve_layer_bits(weighted, _as_patterns(layer_bits), wbits, abits)
    for name in weighted:
        m = gm.get_submodule(name)
        cls = QConv2d if isinstance(m, nn.Conv2d) else QLinear
        w, a = resolved.get(name, (wbits, abits))
        try:
            q = cls(m, w, a, weight_symmetric, act_symmetric)
        except ModelError as e:
            raise ModelError(f"layer '{name}': {e}") from None
        parent, _, leaf = name.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, q)
    gm.recompile()
    arch = arch if arch is not None else _infer_arch(model)
    if embedding_size is None:
        embedding_size = getattr(model, "embedding_size", None)
    if arch_kwargs is None:
        arch_kwargs = getattr(model, "arch_kwargs", None)
    return QuantizedModel(gm, wbits, abits, bool(weight_symmetric), bool(act_symmetric), arch, embedding_size,
                          layer_bits=resolved, arch_kwargs=arch_kwargs, float_batchnorms=kept)


def _as_patterns(layer_bits: dict | None) -> dict | None:
    """Resolved {name: (w, a)} pairs (a saved model's settings) as the {name: {wbits, abits}} patterns they are."""
    if not layer_bits:
        return None
    return {k: ({"wbits": int(v[0]), "abits": int(v[1])} if isinstance(v, (list, tuple)) else v)
            for k, v in layer_bits.items()}
