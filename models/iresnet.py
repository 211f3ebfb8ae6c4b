"""Improved ResNets (iresnet18/34/50/100) as in insightface recognition/arcface_torch/backbones/iresnet.py.

Parameter and buffer names match insightface (conv1, bn1, prelu, layer1..4, bn2, dropout, fc, features), so
arcface_torch `.pth` state dicts load with `load_state_dict(strict=True)`. Input: aligned (N, 3, 112, 112),
output: (N, embedding_size), unnormalised. The fp16 autocast flag of the original is not carried over.
"""

from __future__ import annotations

import torch
from torch import nn

DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3 (stride) -> BN, plus (downsampled) identity."""

    def __init__(self, c_in: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, eps=1e-5)
        self.conv1 = _conv3x3(c_in, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """insightface IResNet body + BN/flatten/dropout/FC/BN1d embedding head for 112x112 inputs."""

    input_size = 112
    fc_scale = 7 * 7  # 112 / 2**4 = 7: four stride-2 stages

    def __init__(self, layers: tuple[int, int, int, int], embedding_size: int = 512, dropout: float = 0.0,
                 zero_init_residual: bool = False):
        super().__init__()
        if embedding_size < 1:
            raise ValueError(f"embedding_size must be positive, got {embedding_size}")
        self.embedding_size = embedding_size
        self._inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, 1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(512 * self.fc_scale, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False  # as in arcface_torch: the final BN scale is frozen at 1

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        # Every stage halves the resolution in its first block, so it always needs a projection shortcut.
        downsample = nn.Sequential(nn.Conv2d(self._inplanes, planes, 1, 2, bias=False),
                                   nn.BatchNorm2d(planes, eps=1e-5))
        layers = [IBasicBlock(self._inplanes, planes, 2, downsample)]
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        self._inplanes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def iresnet(depth_name: str, embedding_size: int = 512, **kwargs) -> IResNet:
    """Build `iresnet18|34|50|100` with the given embedding size (kwargs: dropout, zero_init_residual)."""
    return IResNet(DEPTHS[depth_name], embedding_size=embedding_size, **kwargs)


def iresnet18(embedding_size: int = 512, **kwargs) -> IResNet:
    return iresnet("iresnet18", embedding_size, **kwargs)


def iresnet34(embedding_size: int = 512, **kwargs) -> IResNet:
    return iresnet("iresnet34", embedding_size, **kwargs)


def iresnet50(embedding_size: int = 512, **kwargs) -> IResNet:
    return iresnet("iresnet50", embedding_size, **kwargs)


def iresnet100(embedding_size: int = 512, **kwargs) -> IResNet:
    return iresnet("iresnet100", embedding_size, **kwargs)
