"""BN folding, QuantizedModel (levels, calibration, spec, rebuild) and the errors for unsupported models."""

from __future__ import annotations

import json

import pytest
import torch
from facepipe.models.quant import ActQuantizer, QConv2d, QLinear, QuantizedModel, fold_batchnorm, prepare_quantized
from facepipe.models.registry import build_model
from facepipe.pipeline.errors import ConfigError, DataError, ModelError
from torch import nn

from quant_nets import one_thread, smooth_images as _images, trained_like_mfn  # noqa: F401 (one_thread: autouse fixture)


@pytest.fixture(scope="module")
def net():
    return trained_like_mfn()


@pytest.fixture(scope="module")
def batches():
    g = torch.Generator().manual_seed(2)
    return [_images(2, g) for _ in range(2)]


def _calibrated(net, batches, wbits, abits):
    q = prepare_quantized(net, wbits, abits)
    q.calibrate(batches)
    q.freeze_activations()
    return q.eval()


@pytest.fixture(scope="module")
def q6(net, batches):
    return _calibrated(net, batches, 6, 6)


def _cos(a, b):
    return nn.functional.cosine_similarity(a, b, dim=1)


def test_folded_graph_matches_the_unfolded_eval_model(net):
    gm = fold_batchnorm(net)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in gm.modules())
    assert any(isinstance(m, nn.BatchNorm1d) for m in net.modules())  # the input model is untouched
    x = _images(2, torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(gm(x), net(x), atol=1e-4)


def test_w6a6_holds_at_most_64_levels_everywhere(q6, batches):
    assert len(q6.quant_layers()) == 50
    levels = q6.levels_per_channel()
    assert max(max(v) for v in levels.values()) <= 64
    assert max(levels["conv_6_sep.conv"]) > 32  # 1x1 convs with 128 inputs do use most of the levels
    for name, codes in q6.weight_codes().items():
        assert codes.dtype == torch.int8 and codes.min() >= -32 and codes.max() <= 31, name
    outs = []
    hooks = [a.register_forward_hook(lambda m, i, o: outs.append(o)) for a in q6.act_quantizers()]
    with torch.no_grad():
        q6(batches[0])
    for h in hooks:
        h.remove()
    assert len(outs) == 50
    assert all(torch.unique(o).numel() <= 64 for o in outs)


def test_w8a8_error_is_a_fraction_of_w6a6(net, batches):
    """Two more bits quarter the rounding step, so 1 - cosine (~ squared error) falls ~16x in theory; a random
    50-layer net amplifies rounding (w8a8 min cosine ~0.96 here, 0.9998 on a trained student), so >= 4x."""
    x = _images(4, torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = net(x)
        err8 = 1 - _cos(_calibrated(net, batches, 8, 8)(x), ref).mean()
        err6 = 1 - _cos(_calibrated(net, batches, 6, 6)(x), ref).mean()
    assert err8 < 0.1 and err8 * 4 < err6, (err8, err6)


def test_calibration_averages_batches_and_freezing_holds_the_range():
    a = ActQuantizer(8)
    a.calibrating = True
    for lo, hi in [(-1.0, 1.0), (-3.0, 2.0), (-2.0, 6.0)]:
        assert torch.equal(a(torch.tensor([lo, hi])), torch.tensor([lo, hi]))  # observe only
    assert a.min_val.item() == pytest.approx(-2.0) and a.max_val.item() == pytest.approx(3.0)
    a.calibrating = False
    a(torch.tensor([-100.0, 100.0]))  # observing: EMA with momentum 0.1
    assert a.max_val.item() == pytest.approx(0.9 * 3 + 0.1 * 100)
    a.frozen.fill_(True)
    y = a(torch.tensor([-1000.0, 1000.0]))
    assert a.max_val.item() == pytest.approx(12.7) and y.max().item() <= 12.7 + 1e-5


def test_calibrate_leaves_quantization_on_and_observing_off(net, batches):
    q = prepare_quantized(net, 8, 8)
    assert q.calibrate(iter(batches[:1])) == 1
    x = batches[1][:1] * 10
    before = [a.max_val.clone() for a in q.act_quantizers()]
    with torch.no_grad():
        q(x)
    assert all(torch.equal(b, a.max_val) for b, a in zip(before, q.act_quantizers()))
    assert not any(bool(a.frozen) for a in q.act_quantizers())
    q.set_observing(True)
    with torch.no_grad():
        q(x)
    assert not torch.equal(before[0], q.act_quantizers()[0].max_val)


def test_calibrate_and_freeze_errors(net):
    q = prepare_quantized(net, 8, 8)
    with pytest.raises(ModelError, match="conv1.conv has no range yet"):
        q.freeze_activations()
    with pytest.raises(DataError, match="no batches"):
        q.calibrate([])
    with pytest.raises(DataError, match=r"float tensors \(N, C, H, W\)"):
        q.calibrate([torch.zeros(3, 112, 112, dtype=torch.uint8)])


def test_spec_is_json_and_complete(q6):
    spec = json.loads(json.dumps(q6.spec()))
    settings = spec["settings"]
    assert {k: settings[k] for k in ("wbits", "abits", "weight_symmetric", "act_symmetric", "bn")} == \
        {"wbits": 6, "abits": 6, "weight_symmetric": True, "act_symmetric": False, "bn": "folded"}
    assert "PReLU" in settings["placement"] and spec["arch"] == "mobilefacenet"
    first = spec["layers"][0]
    assert first["name"] == "conv1.conv" and first["kind"] == "conv2d"
    assert len(first["weight"]["scale"]) == 64 and set(first["weight"]["zero_point"]) == {0}
    assert first["weight"]["axis"] == 0 and len(first["weight"]["min"]) == 64
    assert first["input"]["frozen"] is True and -32 <= -first["input"]["zero_point"] <= 31
    assert spec["layers"][-1]["kind"] == "linear"


def test_rebuild_from_registry_and_state_dict(q6, batches):
    fresh = prepare_quantized(build_model("mobilefacenet", embedding_size=128), 6, 6)
    fresh.load_state_dict(q6.state_dict(), strict=True)
    fresh.eval()
    x = batches[1][:1]
    with torch.no_grad():
        assert torch.equal(fresh(x), q6(x))


def test_qat_gradients_reach_weights_and_ranges_follow_an_ema():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.PReLU(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    q = prepare_quantized(m.eval(), 4, 8, act_symmetric=True).train()
    x = torch.randn(4, 3, 8, 8)
    q(x).pow(2).sum().backward()  # observing by default: the first batch initialises the ranges
    assert all(layer.weight.grad is not None for layer in q.quant_layers().values())
    first = q.act_quantizers()[0]
    assert first.max_val.item() == pytest.approx(x.max().item())
    q(x * 2)
    assert first.max_val.item() == pytest.approx(1.1 * x.max().item())
    assert q.spec()["layers"][0]["input"]["zero_point"] == 0  # symmetric activations


def test_bits_outside_2_to_8_are_config_errors(net):
    with pytest.raises(ConfigError, match=r"wbits=9 is not supported: use 2\.\.8"):
        prepare_quantized(net, 9, 8)
    with pytest.raises(ConfigError, match=r"abits=1 is not supported"):
        prepare_quantized(net, 8, 1)


class _WithLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.rnn = nn.LSTM(4, 4)

    def forward(self, x):
        return self.rnn(self.fc(x))[0]


class _BNAfterAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(x) + x)


class _Dynamic(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else x


def test_unsupported_layer_is_named_with_the_supported_list():
    with pytest.raises(ModelError, match=r"layer 'rnn' \(LSTM\) is not supported.*supported layers: Conv2d"):
        prepare_quantized(_WithLSTM(), 8, 8)


def _with_stats(m: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine terms on every BatchNorm (a fresh one is the identity)."""
    g = torch.Generator().manual_seed(3)
    for bn in m.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            c = bn.num_features
            bn.running_mean.copy_(torch.randn(c, generator=g))
            bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            bn.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            bn.bias.data.copy_(torch.randn(c, generator=g))
    return m.eval()


def test_batchnorm_after_add_runs_in_float_as_a_channel_affine():
    from facepipe.models.quant.prepare import ChannelAffine

    m = _with_stats(_BNAfterAdd())
    kept: list = []
    gm = fold_batchnorm(m, report=kept)
    assert isinstance(gm.get_submodule("bn"), ChannelAffine)
    assert len(kept) == 1 and "BatchNorm layer 'bn' (BatchNorm2d) kept as a float per-channel affine: it follows 'add'" in kept[0]
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        assert torch.allclose(gm(x), m(x), atol=1e-5)


def test_untraceable_model_is_a_model_error():
    with pytest.raises(ModelError, match="cannot be traced by torch.fx"):
        prepare_quantized(_Dynamic(), 8, 8)


def test_iresnet_prebn_stays_in_float_and_the_rest_is_quantized():
    net = _with_stats(build_model("iresnet18", embedding_size=8))
    q = prepare_quantized(net, 8, 8)
    assert q.float_batchnorms and all("kept as a float per-channel affine" in w for w in q.float_batchnorms)
    assert "kept in float" in q.settings()["bn"]
    x = torch.randn(2, 3, 112, 112)
    q.calibrate([x])
    q.freeze_activations()
    with torch.no_grad():
        ref, got = net(x), q(x)
    assert torch.nn.functional.cosine_similarity(ref, got).min() > 0.98  # 8-bit, every conv quantized


def test_small_custom_model_gets_quantized_layers():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5),
                      nn.BatchNorm1d(5, affine=False)).eval()
    q = prepare_quantized(m, 8, 8)
    assert isinstance(q, QuantizedModel) and q.arch is None
    kinds = [type(layer) for layer in q.quant_layers().values()]
    assert kinds == [QConv2d, QLinear]
    x = torch.randn(4, 3, 8, 8)
    q.calibrate([x])
    with torch.no_grad():
        assert _cos(q(x), m(x)).min() > 0.99


def test_mse_range_clips_a_long_tail_and_lowers_the_error():
    from facepipe.models.quant.formulas import fake_quantize

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(20000, generator=g), torch.tensor([40.0, -30.0])])  # two outliers
    aq = ActQuantizer(6)
    aq.calibrating, aq.sample_size = True, 50000
    aq(x)
    wide = [t.clone() for t in aq.qparams()]
    c = aq.mse_range()
    assert 0.2 <= c < 0.5  # the outliers are clipped, the bulk gets the levels
    tight = aq.qparams()
    err = lambda sz: float((fake_quantize(x[:-2], *sz, 6) - x[:-2]).pow(2).mean())  # noqa: E731
    assert err(tight) < 0.25 * err(wide)
    assert ActQuantizer(6).mse_range() == 1.0  # nothing observed: nothing to choose


def test_act_range_auto_searches_below_8_bits_only(net, batches):
    for bits, searched in ((6, True), (8, False)):
        q = prepare_quantized(net, bits, bits)
        q.calibrate(batches, act_range="auto")
        shrinks = [a.range_shrink for a in q.act_quantizers()]
        assert any(s < 1.0 for s in shrinks) is searched, shrinks
        again = prepare_quantized(net, bits, bits)
        again.calibrate(batches, act_range="auto")
        assert [a.range_shrink for a in again.act_quantizers()] == shrinks  # deterministic sample
    with pytest.raises(ModelError, match="act_range='p99': use one of minmax, mse, auto"):
        prepare_quantized(net, 8, 8).calibrate(batches, act_range="p99")


@pytest.mark.parametrize("bits", [8, 6, 4])
@pytest.mark.parametrize("axis", [None, 0])
@pytest.mark.parametrize("symmetric", [True, False])
def test_the_inplace_eval_fake_quant_is_the_formula_bit_for_bit(bits, axis, symmetric):
    from facepipe.models.quant.formulas import dequantize, fake_quantize, quantize, scale_zero_point, tensor_range

    x = torch.randn(6, 8, 5, 5, generator=torch.Generator().manual_seed(bits)) * 3
    s, z = scale_zero_point(*tensor_range(x, axis), bits, symmetric)
    expected = dequantize(quantize(x, s, z, bits, axis), s, z, axis)
    with torch.no_grad():
        got = fake_quantize(x, s, z, bits, axis)
    assert torch.equal(got, expected) and not torch.equal(got, x)
