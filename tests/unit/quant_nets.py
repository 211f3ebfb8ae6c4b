"""Shared inputs of the quantization tests: smooth images, a trained-like MobileFaceNet, one torch thread."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from facepipe.models.registry import build_model

from sanity import assert_not_collapsed


def smooth_images(n: int, seed: int | torch.Generator) -> torch.Tensor:
    """Smooth random images in [-1, 1] (low-frequency noise, closer to faces than white noise)."""
    g = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    z = torch.rand(n, 3, 14, 14, generator=g) * 2 - 1
    return nn.functional.interpolate(z, size=112, mode="bilinear", align_corners=False)


def trained_like_mfn() -> nn.Module:
    """MobileFaceNet-128 with real BN statistics and small residual branches, like a trained network.

    Pure random init is chaotic: one LSB of difference grows layer by layer, which says nothing about
    quantization. Trained residual nets keep their residual branches small; we scale the projection BNs.
    """
    torch.manual_seed(0)
    m = build_model("mobilefacenet", embedding_size=128)
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.momentum = None
    m.train()
    with torch.no_grad():
        m(smooth_images(8, 1))
        for name, mod in m.named_modules():
            if name.endswith("project"):
                mod.bn.weight.mul_(0.2)
                mod.bn.bias.uniform_(-0.1, 0.1)
        # statistics of the scaled network: the first pass's would map every image to one vector (collapsed,
        # so that any quantized copy would "match" it)
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.reset_running_stats()
        m(smooth_images(16, 2))
        assert_not_collapsed(m.eval()(smooth_images(12, 3)).numpy(), "trained_like_mfn")
    return m.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Each quantization test module runs on one torch thread (and restores the count)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
