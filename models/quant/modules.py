"""Fake-quantized layers: weight / activation quantizers and the QConv2d / QLinear that use them.

Placement rule: the input of every Conv2d / Linear is quantized (per tensor) and its weight is quantized
(per output channel). That covers QuantFace's "after PReLU" and "after residual add" points for every
tensor that feeds a weighted layer, plus the network input and the projection outputs that a real int8
runtime quantizes too. PReLU and the residual sum run in float, as in ORT / OpenVINO / TensorRT int8
kernels, so this model computes what the exported QDQ graph computes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from facepipe.pipeline.errors import ModelError
from torch import nn

from .formulas import check_bits, dequantize, fake_quantize, quantize, scale_zero_point, tensor_range

ExportHook = Callable[[torch.Tensor], torch.Tensor]


class WeightQuantizer(nn.Module):
    """Per-output-channel (axis 0) weight quantizer; the range is the weight's min/max at every forward.

    `freeze(scale, zero_point)` pins the parameters instead (a model rebuilt from integer codes uses this,
    so re-quantizing its dequantized weights returns exactly the stored codes).
    """

    axis = 0

    def __init__(self, channels: int, bits: int = 8, symmetric: bool = True):
        super().__init__()
        self.bits = check_bits(bits, "wbits")
        self.symmetric = bool(symmetric)
        self.register_buffer("scale", torch.zeros(channels))
        self.register_buffer("zero_point", torch.zeros(channels))
        self.register_buffer("frozen", torch.tensor(False))
        self.export_hook: ExportHook | None = None
        self.enabled = True

    def qparams(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point) per output channel for weight `w`."""
        if bool(self.frozen):
            return self.scale, self.zero_point
        return scale_zero_point(*tensor_range(w, self.axis), self.bits, self.symmetric)

    def freeze(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Use these parameters from now on instead of the weight's running range."""
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)
        self.frozen.fill_(True)

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """Integer codes of `w` as int8."""
        s, z = self.qparams(w)
        return quantize(w.detach(), s, z, self.bits, self.axis).to(torch.int8)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.export_hook is not None:
            return self.export_hook(w)
        if not self.enabled:
            return w
        s, z = self.qparams(w)
        return fake_quantize(w, s, z, self.bits, self.axis)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, symmetric={self.symmetric}, axis={self.axis}"


class ActQuantizer(nn.Module):
    """Per-tensor activation quantizer with a running min/max.

    Modes: observe+quantize (`observing`, not frozen: the range follows an EMA of per-batch min/max,
    the first batch initialises it), frozen (the `frozen` buffer: the range never moves again), and
    calibration (`calibrating`: observe with equal weight per batch, pass the input through unquantized).
    """

    def __init__(self, bits: int = 8, symmetric: bool = False, momentum: float = 0.1):
        super().__init__()
        self.bits = check_bits(bits, "abits")
        self.symmetric = bool(symmetric)
        self.momentum = float(momentum)
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("frozen", torch.tensor(False))
        self.observing = True
        self.calibrating = False
        self.range_shrink = 1.0  # the factor mse_range chose (1: plain min/max)
        self.sample_size = 0  # values kept per calibration batch for the MSE range search (0: min/max only)
        self._samples: list[torch.Tensor] = []
        self._seen = 0
        self.export_hook: ExportHook | None = None
        self.name = ""  # qualified name, for error messages

    def reset(self) -> None:
        """Forget the observed range (and any calibration sample)."""
        self._samples = []
        self.min_val.zero_()
        self.max_val.zero_()
        self.initialized.fill_(False)
        self.frozen.fill_(False)
        self._seen = 0

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Fold this batch's min/max into the running range (and keep a sample for mse_range)."""
        if self.calibrating and self.sample_size:
            flat = x.detach().reshape(-1)
            g = torch.Generator().manual_seed(len(self._samples))  # the same sample on every run
            take = torch.randint(0, flat.numel(), (min(self.sample_size, flat.numel()),), generator=g)
            self._samples.append(flat[take].float().cpu())
        lo, hi = tensor_range(x)
        if not bool(self.initialized):
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
            self.initialized.fill_(True)
            self._seen = 1
            return
        self._seen += 1
        m = 1.0 / self._seen if self.calibrating else self.momentum
        self.min_val.mul_(1 - m).add_(lo * m)
        self.max_val.mul_(1 - m).add_(hi * m)

    @torch.no_grad()
    def mse_range(self, grid: int = 41, smallest: float = 0.2) -> float:
        """Shrink the observed range [min, max] by the factor c in [smallest, 1] that minimises the mean squared
        fake-quantization error on the calibration sample (clipping the tails buys resolution for the bulk: at
        6 bits min/max wastes most of the 64 levels on a few outliers); returns c. No sample: c = 1."""
        if not self._samples or not bool(self.initialized):
            return 1.0
        v = torch.cat(self._samples)
        self._samples = []
        lo, hi = self.min_val.clone(), self.max_val.clone()
        best_err, best_c = None, 1.0
        for c in torch.linspace(smallest, 1.0, grid).tolist():
            s, z = scale_zero_point(lo * c, hi * c, self.bits, self.symmetric)
            err = float((fake_quantize(v, s, z, self.bits) - v).pow(2).mean())
            if best_err is None or err < best_err:
                best_err, best_c = err, c
        self.min_val.copy_(lo * best_c)
        self.max_val.copy_(hi * best_c)
        return best_c

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point) scalars from the current range."""
        if not bool(self.initialized):
            raise ModelError(f"activation quantizer {self.name or '(unnamed)'} has no range yet: "
                             "run calibrate() on a few batches (or a forward pass while observing) first")
        return scale_zero_point(self.min_val, self.max_val, self.bits, self.symmetric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.export_hook is not None:
            return self.export_hook(x)
        if (self.observing or self.calibrating) and not bool(self.frozen):
            self.observe(x)
        if self.calibrating:
            return x
        s, z = self.qparams()
        return fake_quantize(x, s, z, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, symmetric={self.symmetric}, momentum={self.momentum}"


class QConv2d(nn.Module):
    """A (BN-folded) Conv2d whose input and weight are fake-quantized; bias stays float."""

    kind = "conv2d"

    def __init__(self, conv: nn.Conv2d, wbits: int, abits: int, weight_symmetric: bool = True,
                 act_symmetric: bool = False):
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ModelError(f"Conv2d padding_mode={conv.padding_mode!r} is not supported for quantization: "
                             "use zero padding")
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.weight = nn.Parameter(conv.weight.detach().clone())
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
        self.input_quant = ActQuantizer(abits, act_symmetric)
        self.weight_quant = WeightQuantizer(self.weight.shape[0], wbits, weight_symmetric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.input_quant(x), self.weight_quant(self.weight), self.bias,
                        self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        o, i, kh, kw = self.weight.shape
        return f"{i * self.groups}, {o}, kernel=({kh}, {kw}), stride={self.stride}, groups={self.groups}"


class QLinear(nn.Module):
    """A (BN-folded) Linear whose input and weight are fake-quantized; bias stays float."""

    kind = "linear"

    def __init__(self, linear: nn.Linear, wbits: int, abits: int, weight_symmetric: bool = True,
                 act_symmetric: bool = False):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
        self.input_quant = ActQuantizer(abits, act_symmetric)
        self.weight_quant = WeightQuantizer(self.weight.shape[0], wbits, weight_symmetric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quant(x), self.weight_quant(self.weight), self.bias)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}"


QUANT_LAYERS = (QConv2d, QLinear)


def dequantized_weight(layer: QConv2d | QLinear) -> torch.Tensor:
    """The weight the quantized layer actually uses: s * (codes + z)."""
    s, z = layer.weight_quant.qparams(layer.weight)
    return dequantize(layer.weight_quant.codes(layer.weight), s, z, WeightQuantizer.axis)
