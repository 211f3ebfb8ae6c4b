"""The quantization formulas: codes, ranges, zero points, per-channel scales, the clipped STE, ONNX convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from facepipe.models.quant import formulas as F
from facepipe.pipeline.errors import ConfigError


def test_4bit_symmetric_codes_match_the_lecture():
    # float64 stands in for the lecture's exact arithmetic: +-1 / (2/15) = +-7.5 is a tie, half to even
    x = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=torch.float64)
    s, z = F.scale_zero_point(*F.tensor_range(x), bits=4, symmetric=True)
    assert s.item() == pytest.approx(2 / 15) and z.item() == 0
    assert torch.round(x / s - z).tolist() == [-8, -4, 0, 4, 8]  # before the clip
    assert F.quantize(x, s, z, 4).tolist() == [-8, -4, 0, 4, 7]
    assert torch.allclose(F.fake_quantize(x, s, z, 4), s * torch.tensor([-8.0, -4, 0, 4, 7], dtype=torch.float64))


def test_4bit_ties_in_float32_follow_the_float32_scale():
    # float32(2/15) rounds up, so +-1 / s = +-7.4999995 -> +-7: what ORT / OpenVINO compute with that scale
    x = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])
    s, z = F.scale_zero_point(*F.tensor_range(x), bits=4, symmetric=True)
    assert s.dtype == torch.float32
    assert F.quantize(x, s, z, 4).tolist() == [-7, -4, 0, 4, 7]
    scale, _ = F.to_onnx_qparams(s, z)
    assert np.rint(x.numpy() / scale).tolist() == [-7, -4, 0, 4, 7]


def test_round_is_half_to_even():
    s, z = torch.tensor(1.0), torch.tensor(0.0)
    assert F.quantize(torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5]), s, z, 8).tolist() == [0, 2, 2, 0, -2]


def test_asymmetric_range_includes_zero_and_beta_maps_to_qmin():
    for lo, hi in [(0.5, 2.0), (-3.0, -1.0), (-0.7, 5.3)]:
        s, z = F.scale_zero_point(torch.tensor(lo), torch.tensor(hi), bits=6, symmetric=False)
        beta, alpha = min(lo, 0.0), max(hi, 0.0)
        assert s.item() == pytest.approx((alpha - beta) / 63)
        assert z.item() == round(z.item())  # integer zero point
        assert F.quantize(torch.tensor([beta]), s, z, 6).item() == -32
        assert F.quantize(torch.tensor([alpha]), s, z, 6).item() in (30, 31)
        zero = F.fake_quantize(torch.tensor([0.0]), s, z, 6)
        assert zero.item() == 0.0  # zero is exactly representable (padding, ReLU outputs)


def test_zero_range_gets_a_positive_scale():
    x = torch.zeros(4)
    for sym in (True, False):
        s, z = F.scale_zero_point(*F.tensor_range(x), bits=8, symmetric=sym)
        assert s.item() > 0
        assert torch.equal(F.fake_quantize(x, s, z, 8), x)


def test_per_channel_ranges_give_each_channel_its_own_scale():
    w = torch.stack([torch.linspace(-1, 1, 9), torch.linspace(-0.01, 0.02, 9), torch.linspace(-4, 3, 9)])
    w = w.reshape(3, 1, 3, 3)
    lo, hi = F.tensor_range(w, axis=0)
    assert lo.shape == (3,) and torch.allclose(hi, torch.tensor([1.0, 0.02, 3.0]))
    s, z = F.scale_zero_point(lo, hi, bits=8, symmetric=True)
    assert torch.allclose(s, torch.tensor([1.0, 0.02, 4.0]) * 2 / 255)
    q = F.quantize(w, s, z, 8, axis=0).reshape(3, -1)
    assert all(v >= 127 for v in q.abs().amax(1).tolist())  # every channel uses its full range
    err = (F.fake_quantize(w, s, z, 8, axis=0) - w).reshape(3, -1).abs().amax(1)
    assert torch.all(err <= s * 0.5 + 1e-7)


def test_clipped_straight_through_estimator():
    s, z = torch.tensor(0.1), torch.tensor(0.0)
    x = torch.tensor([-2.0, -0.8, -0.05, 0.0, 0.33, 0.7, 0.9], requires_grad=True)
    F.fake_quantize(x, s, z, 4).sum().backward()  # representable range [-0.8, 0.7]
    assert x.grad.tolist() == [0, 1, 1, 1, 1, 1, 0]


def test_ste_per_channel_and_weight_gradient_flows():
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    s, z = F.scale_zero_point(*F.tensor_range(w, 0), 4, True)
    F.fake_quantize(w, s, z, 4, axis=0).pow(2).sum().backward()
    assert w.grad.shape == w.shape and torch.count_nonzero(w.grad) > w.numel() // 2


def test_onnx_convention_is_the_same_codes():
    x = torch.randn(1000) * 3 + 1
    s, z = F.scale_zero_point(*F.tensor_range(x), bits=8, symmetric=False)
    scale, zp = F.to_onnx_qparams(s, z)
    assert zp.dtype == np.int8 and int(zp) == -int(z)
    onnx_q = np.clip(np.rint(x.numpy() / scale) + zp, -128, 127)  # QuantizeLinear, int8
    ours = F.quantize(x, s, z, 8).numpy()
    assert np.array_equal(onnx_q, ours)
    assert np.allclose((onnx_q - zp) * scale, F.dequantize(torch.from_numpy(ours), s, z).numpy())


@pytest.mark.parametrize("bits", [1, 9, 16, 2.5, True])
def test_bad_bits_name_the_key(bits):
    with pytest.raises(ConfigError, match=rf"wbits={bits!r} is not supported: use 2\.\.8"):
        F.check_bits(bits, "wbits")
