"""MobileFaceNet, AdaDistill / cavaface variant (GDC head), with a configurable embedding size.

Module names follow fdbtrs/AdaDistill backbones/mobilefacenet.py (conv1, conv2_dw, conv_23, conv_3.model.N,
..., conv_6_sep, output_layer.{conv_6_dw,linear,bn}) so that AdaDistill / cavaface student checkpoints load
with `load_state_dict(strict=True)`. 1,199,488 parameters at embedding 512, 1,002,880 at 128.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBN(nn.Module):
    """Conv (no bias) + BatchNorm, no activation (AdaDistill's LinearBlock)."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class ConvBNPReLU(ConvBN):
    """Conv (no bias) + BatchNorm + per-channel PReLU (AdaDistill's Conv_block)."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1):
        super().__init__(c_in, c_out, kernel, stride, padding, groups)
        self.prelu = nn.PReLU(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Expand 1x1 -> depthwise 3x3 (carries the stride) -> project 1x1; identity shortcut when residual."""

    def __init__(self, c_in: int, c_out: int, expand: int, stride: int = 1, residual: bool = False):
        super().__init__()
        if residual and (c_in != c_out or stride != 1):
            raise ValueError("a residual bottleneck needs c_in == c_out and stride 1")
        self.conv = ConvBNPReLU(c_in, expand, 1)
        self.conv_dw = ConvBNPReLU(expand, expand, 3, stride, 1, groups=expand)
        self.project = ConvBN(expand, c_out, 1)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.conv_dw(self.conv(x)))
        return x + y if self.residual else y


class ResidualStage(nn.Module):
    """`blocks` residual bottlenecks at constant width (stored as `.model` for checkpoint compatibility)."""

    def __init__(self, channels: int, blocks: int, expand: int):
        super().__init__()
        self.model = nn.Sequential(*[Bottleneck(channels, channels, expand, residual=True) for _ in range(blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class GDC(nn.Module):
    """Global depthwise conv head: depthwise 7x7 + BN, flatten, Linear (no bias), BatchNorm1d (no affine)."""

    def __init__(self, channels: int, embedding_size: int):
        super().__init__()
        self.conv_6_dw = ConvBN(channels, channels, 7, groups=channels)
        self.linear = nn.Linear(channels, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(torch.flatten(self.conv_6_dw(x), 1)))


def kaiming_init(module: nn.Module) -> None:
    """cavaface / AdaDistill / CVLFace init: kaiming-normal fan_out for conv and linear, BN at identity."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class MobileFaceNet(nn.Module):
    """MobileFaceNet for aligned 112x112 faces: (N, 3, 112, 112) -> (N, embedding_size), unnormalised."""

    input_size = 112

    def __init__(self, embedding_size: int = 512):
        super().__init__()
        if embedding_size < 1:
            raise ValueError(f"embedding_size must be positive, got {embedding_size}")
        self.embedding_size = embedding_size
        self.conv1 = ConvBNPReLU(3, 64, 3, 2, 1)
        self.conv2_dw = ConvBNPReLU(64, 64, 3, 1, 1, groups=64)
        self.conv_23 = Bottleneck(64, 64, expand=128, stride=2)
        self.conv_3 = ResidualStage(64, blocks=4, expand=128)
        self.conv_34 = Bottleneck(64, 128, expand=256, stride=2)
        self.conv_4 = ResidualStage(128, blocks=6, expand=256)
        self.conv_45 = Bottleneck(128, 128, expand=512, stride=2)
        self.conv_5 = ResidualStage(128, blocks=2, expand=256)
        self.conv_6_sep = ConvBNPReLU(128, 512, 1)
        self.output_layer = GDC(512, embedding_size)
        self._init_weights()

    def _init_weights(self) -> None:
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2_dw(self.conv1(x))
        x = self.conv_3(self.conv_23(x))
        x = self.conv_4(self.conv_34(x))
        x = self.conv_5(self.conv_45(x))
        return self.output_layer(self.conv_6_sep(x))
