"""Complexity accounting: seed-lecture formulas, grouped convs, hook-based profile, memory footprint."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from facepipe.models.complexity import (conv_flops, conv_macs, conv_params, human_count, memory_footprint,
                                        profile)
from facepipe.models.mobilefacenet import MobileFaceNet

torch.set_num_threads(1)


def test_seed_example_formulas():
    # 5x5x1 input, three 3x3 kernels, no padding -> 3x3x3 output.
    assert conv_params(3, 1, 3) == 30
    assert conv_flops(3, 3, 3, 1, 3) == 540
    assert conv_macs(3, 3, 3, 1, 3) == 243


def test_seed_example_measured_by_hooks():
    c = profile(nn.Conv2d(1, 3, 3), input_size=5, in_channels=1)
    assert (c.params, c.flops, c.macs) == (30, 540, 243)
    assert c.layers[0].output_shape == (3, 3, 3)


def test_bias_free_conv_drops_the_plus_one():
    assert conv_params(3, 1, 3, bias=False) == 27
    assert conv_flops(3, 3, 3, 1, 3, bias=False) == 486
    c = profile(nn.Conv2d(1, 3, 3, bias=False), input_size=5, in_channels=1)
    assert (c.params, c.flops) == (27, 486)


def test_depthwise_counts_input_channels_per_group():
    assert conv_params(3, 64, 64, bias=False, groups=64) == 576
    assert conv_macs(56, 56, 3, 64, 64, groups=64) == 56 * 56 * 64 * 9
    dense = conv_macs(56, 56, 3, 64, 64)
    assert dense == 64 * conv_macs(56, 56, 3, 64, 64, groups=64)
    c = profile(nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False), input_size=56, in_channels=64)
    assert c.params == 576
    assert c.macs == 56 * 56 * 64 * 9
    assert c.flops == conv_flops(56, 56, 3, 64, 64, bias=False, groups=64)
    # grouped (not depthwise): 4 groups of 16 input channels
    c = profile(nn.Conv2d(64, 32, 1, groups=4), input_size=7, in_channels=64)
    assert c.params == conv_params(1, 64, 32, groups=4) == (16 + 1) * 32
    assert c.flops == conv_flops(7, 7, 1, 64, 32, groups=4)


def test_groups_must_divide_channels():
    with pytest.raises(ValueError, match="groups"):
        conv_params(3, 10, 12, groups=4)
    with pytest.raises(ValueError, match="groups"):
        conv_flops(3, 3, 3, 10, 12, groups=4)


def test_linear_batchnorm_prelu_costs():
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), nn.PReLU(4), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 5), nn.BatchNorm1d(5, affine=False))
    c = profile(model, input_size=8)
    kinds = [layer.kind for layer in c.layers]
    assert kinds == ["Conv2d", "BatchNorm2d", "PReLU", "Linear", "BatchNorm1d"]
    conv, bn, prelu, fc, bn1d = c.layers
    assert (conv.macs, conv.flops) == (8 * 8 * 4 * 3, 2 * 8 * 8 * 4 * 3)
    assert (bn.macs, bn.flops, bn.params) == (0, 2 * 256, 8)
    assert (prelu.flops, prelu.params) == (256, 4)
    assert (fc.macs, fc.flops) == (256 * 5, 2 * 5 * (256 + 1))
    assert bn1d.flops == 10
    assert c.macs == conv.macs + fc.macs
    assert c.flops == sum(layer.flops for layer in c.layers)
    assert c.params == 12 + 8 + 4 + 256 * 5 + 5


def test_mobilefacenet_macs_match_published_figure():
    model = MobileFaceNet().train()
    c = profile(model)
    assert c.params == 1_199_488
    assert abs(c.macs - 221.2e6) / 221.2e6 < 0.01, c.macs
    assert c.flops > 2 * c.macs  # BN and PReLU add elementwise FLOPs on top of 2 x MACs
    assert model.training  # mode restored
    assert all(not m._forward_hooks for m in model.modules())  # hooks removed
    assert c.to_dict()["input_size"] == (112, 112) and "layers" not in c.to_dict()


def test_memory_footprint_bytes_and_mb():
    f = memory_footprint(1_199_488)
    assert [f[d]["bytes"] for d in ("fp32", "fp16", "int8", "int6")] == [4_797_952, 2_398_976, 1_199_488, 899_616]
    assert f["fp32"]["mb"] == pytest.approx(4.797952)
    assert f["int8"]["mib"] == pytest.approx(1_199_488 / 2**20)
    assert memory_footprint(3)["int6"]["bytes"] == 3  # 18 bits round up to 3 bytes
    with pytest.raises(ValueError):
        memory_footprint(-1)


def test_human_count():
    assert human_count(1_199_488) == "1.20M"
    assert human_count(12_089_606_144) == "12.09G"
    assert human_count(540) == "540"
