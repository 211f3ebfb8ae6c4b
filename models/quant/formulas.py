"""Uniform quantization formulas (the seed lecture's notation), per tensor or per channel.

    s = (alpha - beta) / (2^b - 1)
    T(x, s, z) = clip(round(x / s - z), -2^(b-1), 2^(b-1) - 1)      (round half to even)
    x_hat = s * (T + z)

Symmetric: alpha = max|x|, beta = -alpha, z = 0. Asymmetric: the range [beta, alpha] is widened to hold 0
and z = round(beta / s) + 2^(b-1), an integer, so that beta maps to -2^(b-1) and 0 is exactly representable.
ONNX writes the same thing as q = saturate(round(x / scale) + zero_point), hence onnx_zero_point = -z.
"""

from __future__ import annotations

import numpy as np
import torch
from facepipe.pipeline.errors import ConfigError

MIN_BITS, MAX_BITS = 2, 8
EPS = 1e-8  # smallest scale: an all-zero channel or tensor still gets a finite, positive step


def check_bits(bits: int, key: str = "bits") -> int:
    """Validate a bit width (2..8); anything else is a ConfigError naming `key`."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(f"{key}={bits!r} is not supported: use {MIN_BITS}..{MAX_BITS}")
    return int(bits)


def qrange(bits: int) -> tuple[int, int]:
    """The signed integer code range (-2^(b-1), 2^(b-1) - 1)."""
    bits = check_bits(bits)
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _along(t: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Reshape per-channel parameters `t` (C,) so they broadcast against `x` along `axis`."""
    if axis is None or t.dim() == 0:
        return t
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def tensor_range(x: torch.Tensor, axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of `x`: scalars per tensor, or (C,) vectors over every axis but `axis`."""
    x = x.detach()
    if axis is None:
        return x.min(), x.max()
    flat = x.movedim(axis, 0).reshape(x.shape[axis], -1)
    return flat.amin(dim=1), flat.amax(dim=1)


def scale_zero_point(min_val: torch.Tensor, max_val: torch.Tensor, bits: int,
                     symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale s and integer zero point z (as floats) from a range; works elementwise (per channel)."""
    lo, _ = qrange(bits)
    # float32 unless given float64: the model and every runtime work with a float32 scale
    min_val, max_val = torch.as_tensor(min_val), torch.as_tensor(max_val)
    dtype = torch.float64 if torch.float64 in (min_val.dtype, max_val.dtype) else torch.float32
    min_val, max_val = min_val.to(dtype), max_val.to(dtype)
    if symmetric:
        alpha = torch.maximum(min_val.abs(), max_val.abs())
        beta = -alpha
    else:
        alpha = max_val.clamp(min=0.0)
        beta = min_val.clamp(max=0.0)
    scale = ((alpha - beta) / (2 ** bits - 1)).clamp(min=EPS)
    if symmetric:
        return scale, torch.zeros_like(scale)
    return scale, torch.round(beta / scale) - lo


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int,
             axis: int | None = None) -> torch.Tensor:
    """Integer codes T(x, s, z) as a float tensor holding whole numbers in the b-bit range."""
    lo, hi = qrange(bits)
    s, z = _along(scale, x, axis), _along(zero_point, x, axis)
    # round(x/s - z) == round(x/s) - z for integer z; this order is what ONNX QuantizeLinear computes
    return torch.clamp(torch.round(x / s) - z, lo, hi)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
               axis: int | None = None) -> torch.Tensor:
    """x_hat = s * (q + z)."""
    q = q.to(scale.dtype if scale.is_floating_point() else torch.float32)
    return _along(scale, q, axis) * (q + _along(zero_point, q, axis))


class _FakeQuantize(torch.autograd.Function):
    """Quantize-dequantize with a clipped straight-through estimator."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, bits, axis):
        lo, hi = qrange(bits)
        s, z = _along(scale, x, axis), _along(zero_point, x, axis)
        r = x / s
        ctx.save_for_backward((r >= lo + z) & (r <= hi + z))  # x / s - z inside [qmin, qmax]
        return s * (torch.clamp(torch.round(r) - z, lo, hi) + z)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside.to(grad.dtype), None, None, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int,
                  axis: int | None = None) -> torch.Tensor:
    """s * (T(x, s, z) + z); gradient 1 inside the representable range [s(qmin+z), s(qmax+z)], 0 outside."""
    bits = check_bits(bits)
    if torch.is_grad_enabled() and x.requires_grad:
        return _FakeQuantize.apply(x, scale.detach(), zero_point.detach(), bits, axis)
    return _fake_quantize_inplace(x, scale, zero_point, bits, axis)


def _fake_quantize_inplace(x, scale, zero_point, bits, axis):
    """dequantize(quantize(x)) bit for bit, in four in-place passes over one buffer (the eval hot path: the
    unfused form spent 70 % of a fake-quant SFace forward in elementwise ops). Exact because q - z, the clamp
    and q + z act on small whole numbers, which float32 holds exactly: clip(round(r) - z, lo, hi) + z ==
    clip(round(r), lo + z, hi + z)."""
    lo, hi = qrange(bits)
    s, z = _along(scale, x, axis), _along(zero_point, x, axis)
    r = torch.div(x, s).round_()
    if z.dim() == 0:
        r.clamp_(lo + float(z), hi + float(z))
    else:
        r = torch.maximum(torch.minimum(r, z + hi), z + lo)
    return r.mul_(s)


def to_onnx_qparams(scale: torch.Tensor, zero_point: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(float32 scale, int8 zero point) in the ONNX convention q = saturate(round(x/scale) + zp): zp = -z."""
    s = np.asarray(torch.as_tensor(scale).detach().cpu(), dtype=np.float32)
    zp = -np.asarray(torch.as_tensor(zero_point).detach().cpu(), dtype=np.float64)
    return s, np.rint(zp).astype(np.int8)
