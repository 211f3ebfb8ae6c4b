"""Parameter, FLOP/MAC and memory-footprint accounting (seed-lecture formulas, measured with forward hooks).

What `profile` counts, per sample, for one forward pass in eval mode:
- Conv2d: MACs = h_out*w_out*d_out*k_h*k_w*(d_in/groups); FLOPs = 2*h_out*w_out*d_out*(k_h*k_w*d_in/groups + b)
  with b = 1 when the conv has a bias, else 0 (the seed formula `conv_flops` is the b = 1 case).
- Linear: MACs = d_in*d_out per output row; FLOPs = 2*d_out*(d_in + b) per row, same convention.
- BatchNorm1d/2d: 0 MACs, 2 FLOPs per output element (at inference it is one scale and one shift).
- PReLU: 0 MACs, 1 FLOP per output element (the negative-side multiply).
Residual additions, pooling, flatten and dropout are not counted. MACs therefore means "conv + linear
multiply-accumulates", the figure papers quote (MobileFaceNet: 221.2M at 112x112).
Parameters are every `nn.Parameter` of the model, trainable or frozen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

BITS_PER_PARAM: dict[str, int] = {"fp32": 32, "fp16": 16, "int8": 8, "int6": 6}
BYTES_PER_PARAM: dict[str, float] = {k: v / 8 for k, v in BITS_PER_PARAM.items()}  # 4, 2, 1, 0.75


def conv_params(k: int, d_in: int, d_out: int, bias: bool = True, groups: int = 1) -> int:
    """Parameters of a k x k conv: (k*k*d_in/groups + bias) * d_out; the seed form is (k*k*d_in + 1)*d_out."""
    if d_in % groups or d_out % groups:
        raise ValueError(f"channels ({d_in} -> {d_out}) must be divisible by groups={groups}")
    return (k * k * (d_in // groups) + int(bias)) * d_out


def conv_macs(h_out: int, w_out: int, k: int, d_in: int, d_out: int, groups: int = 1) -> int:
    """Multiply-accumulates of a k x k conv: each output element reads k*k*d_in/groups inputs."""
    if d_in % groups or d_out % groups:
        raise ValueError(f"channels ({d_in} -> {d_out}) must be divisible by groups={groups}")
    return h_out * w_out * d_out * k * k * (d_in // groups)


def conv_flops(h_out: int, w_out: int, k: int, d_in: int, d_out: int, bias: bool = True, groups: int = 1) -> int:
    """FLOPs of a k x k conv, seed formula 2*h_out*w_out*d_out*(k*k*d_in + 1) with d_in per group."""
    if d_in % groups or d_out % groups:
        raise ValueError(f"channels ({d_in} -> {d_out}) must be divisible by groups={groups}")
    return 2 * h_out * w_out * d_out * (k * k * (d_in // groups) + int(bias))


@dataclass
class LayerComplexity:
    """One hooked module: qualified name, type, output shape (without batch), own params, MACs, FLOPs."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    flops: int


@dataclass
class Complexity:
    """Whole-model totals for one sample at `input_size`, plus the per-layer breakdown."""

    params: int
    flops: int
    macs: int
    input_size: tuple[int, int]
    layers: list[LayerComplexity] = field(default_factory=list)

    def to_dict(self, layers: bool = False) -> dict:
        d = asdict(self)
        if not layers:
            d.pop("layers")
        return d


def _counted_types():
    from torch import nn

    return nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.PReLU


def _layer_cost(module, out) -> tuple[int, int]:
    """(MACs, FLOPs) per sample of one forward call of a counted module type."""
    from torch import nn

    batch = out.shape[0]
    per_sample = out.numel() // batch
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        d_in_g = module.in_channels // module.groups
        bias = int(module.bias is not None)
        macs = per_sample * kh * kw * d_in_g
        return macs, 2 * per_sample * (kh * kw * d_in_g + bias)
    if isinstance(module, nn.Linear):
        bias = int(module.bias is not None)
        return per_sample * module.in_features, 2 * per_sample * (module.in_features + bias)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return 0, 2 * per_sample
    if isinstance(module, nn.PReLU):
        return 0, per_sample
    raise TypeError(f"no cost model for {type(module).__name__}")


def profile(model, input_size: int | tuple[int, int] = 112, in_channels: int = 3) -> Complexity:
    """Count params, MACs and FLOPs of `model` on one (1, in_channels, H, W) input with forward hooks."""
    import torch

    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    names = {m: n for n, m in model.named_modules()}
    layers: list[LayerComplexity] = []

    def hook(module, inp, out):
        own = sum(p.numel() for p in module.parameters(recurse=False))
        layers.append(LayerComplexity(names.get(module, "?"), type(module).__name__, tuple(out.shape[1:]),
                                      own, *_layer_cost(module, out)))

    # Selected by type, not by being a leaf: wrapped convs (e.g. with fake-quant children) still count.
    counted = _counted_types()
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, counted)]
    was_training = model.training
    try:
        model.eval()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            model(torch.zeros(1, in_channels, h, w, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return Complexity(params=sum(p.numel() for p in model.parameters()),
                      flops=sum(layer.flops for layer in layers), macs=sum(layer.macs for layer in layers),
                      input_size=(h, w), layers=layers)


def memory_footprint(num_params: int) -> dict[str, dict[str, int | float]]:
    """Weight storage per dtype (fp32, fp16, int8, int6): {"bytes", "mb" (10**6 bytes), "mib" (2**20 bytes)}.

    Weights only (no activations, no file-format overhead); int6 assumes dense 6-bit packing, rounded up to
    whole bytes.
    """
    if num_params < 0:
        raise ValueError(f"num_params must be >= 0, got {num_params}")
    out = {}
    for dtype, bits in BITS_PER_PARAM.items():
        total = -(-num_params * bits // 8)  # ceil without float rounding
        out[dtype] = {"bytes": total, "mb": total / 1e6, "mib": total / 2**20}
    return out


def human_count(n: float) -> str:
    """1199488 -> '1.20M', 221200000 -> '221.20M'."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:g}"
