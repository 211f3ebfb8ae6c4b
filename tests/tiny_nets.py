"""A small network with the layer kinds of MobileFaceNet, shared by the quantization tests: cheap, and shallow
enough that one rounding difference between runtimes does not cascade into a different embedding (a random
50-layer MobileFaceNet does: w8a8 min cosine ~0.96 to fp32, ORT vs torch ~0.99)."""

from __future__ import annotations

import torch
from torch import nn

EMB = 16


class TinyFaceNet(nn.Module):
    """112x112 -> embedding with the layer kinds MobileFaceNet uses (strided, depthwise and 1x1 convs with BN
    and PReLU, a residual add, a global depthwise conv, Linear + BatchNorm1d), ~100x cheaper."""

    def __init__(self, embedding_size: int = EMB):
        super().__init__()
        self.embedding_size = embedding_size
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 4, 4, bias=False), nn.BatchNorm2d(8), nn.PReLU(8))
        self.down = nn.Sequential(nn.Conv2d(8, 16, 4, 4, bias=False), nn.BatchNorm2d(16), nn.PReLU(16))
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.PReLU(16))
        self.pw = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.gdc = nn.Sequential(nn.Conv2d(16, 16, 7, groups=16, bias=False), nn.BatchNorm2d(16))
        self.linear = nn.Linear(16, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size, affine=False)

    def forward(self, x):
        x = self.down(self.stem(x))
        x = x + self.pw(self.dw(x))
        return self.bn(self.linear(torch.flatten(self.gdc(x), 1)))


def warmed_tiny_facenet(images: torch.Tensor, seed: int = 0) -> TinyFaceNet:
    """A TinyFaceNet (eval) whose BatchNorm statistics are those of `images` (preprocessed NCHW)."""
    torch.manual_seed(seed)
    model = TinyFaceNet()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    with torch.no_grad():
        model.train()(images)
    return model.eval()


class FaceNetLike(nn.Module):
    """A FaceNet-shaped stand-in (Inception-ResNet-v1's conventions, not its size): 160x160 input expected
    per-image standardised, a residual block, global average pooling, a linear embedding, L2-normalised."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 5, 4, 2, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                   nn.Conv2d(16, 16, 3, 1, 1))
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
        self.pool_bn = nn.BatchNorm1d(32)
        self.linear = nn.Linear(32, dim)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + 0.3 * self.block(x))
        x = self.pool_bn(self.down(x).mean(dim=(2, 3)))
        return nn.functional.normalize(self.linear(x), dim=1)
