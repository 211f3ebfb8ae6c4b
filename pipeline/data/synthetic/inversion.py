"""Data-free calibration faces, DeepInversion style: optimise a batch of images so that the statistics every
BatchNorm layer of the fp32 model sees match its running statistics, with total-variation and L2 priors.

Pixels live in the model's normalised input space and are clamped to the valid 0..255 range after each
Adam step; random jitter (circular shift) and horizontal flips are applied before every forward pass, so
the images must explain the statistics under small shifts as DeepInversion does. Everything is seeded by
quantize.inversion.seed (initial noise and augmentation), so a run is reproducible.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ...config import InversionConfig
from ...embedder import Preprocess
from ...errors import ModelError

JITTER = 8  # maximum circular shift in pixels (DeepInversion uses 30 at 224 px)
INIT_STD = 0.2  # initial noise (normalised units): white noise at std 1 starts orders of magnitude off


@dataclass
class InversionReport:
    """Per batch: the BN-statistics loss at the first and last iteration (and the full curve of batch 0)."""

    first: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    curve: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        return {"batches": len(self.first), "bn_loss_first": float(np.mean(self.first)) if self.first else None,
                "bn_loss_last": float(np.mean(self.last)) if self.last else None}


class BNStatLoss:
    """Forward hooks on every BatchNorm with running stats: sum over layers of
    ||batch mean - running mean||_2 + ||batch var - running var||_2, measured on the layer's input."""

    def __init__(self, model: nn.Module):
        self.terms: list[torch.Tensor] = []
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules()
                        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
                        and m.running_mean is not None]
        if not self.handles:
            raise ModelError("data-free inversion needs a model with BatchNorm layers (running statistics); "
                             "this model has none: use quantize.data=real or synthetic")

    def _hook(self, module, inputs, _output) -> None:
        x = inputs[0]
        dims = [0] + list(range(2, x.dim()))  # all but the channel dimension
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        self.terms.append(torch.linalg.vector_norm(mean - module.running_mean)
                          + torch.linalg.vector_norm(var - module.running_var))

    def pop(self) -> torch.Tensor:
        total = torch.stack(self.terms).sum()
        self.terms = []
        return total

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of horizontal plus vertical neighbour differences (DeepInversion's smoothness prior)."""
    return torch.linalg.vector_norm(x[..., 1:, :] - x[..., :-1, :]) + \
        torch.linalg.vector_norm(x[..., :, 1:] - x[..., :, :-1])


def _to_uint8(x: torch.Tensor, pre: Preprocess) -> np.ndarray:
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    img = (x.detach() * std + mean).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.ascontiguousarray(img[..., ::-1] if pre.color == "BGR" else img)


def invert_batch(model: nn.Module, losses: BNStatLoss, n: int, icfg: InversionConfig, pre: Preprocess,
                 seed: int, on_step=None) -> tuple[np.ndarray, list[float]]:
    """Optimise n images; returns uint8 RGB (n, S, S, 3) and the BN loss at each iteration."""
    if pre.standardize:
        raise ModelError("DeepInversion needs an invertible input mapping; per-image standardisation is not one: "
                         "use quantize.data=synthetic or real")
    s = pre.size
    gen = torch.Generator().manual_seed(seed)
    rnd = random.Random(seed)
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    lo, hi = (0 - mean) / std, (255 - mean) / std
    x = (INIT_STD * torch.randn(n, 3, s, s, generator=gen)).clamp_(lo, hi).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=icfg.lr)
    curve = []
    for it in range(icfg.iterations):
        dx, dy = rnd.randint(-JITTER, JITTER), rnd.randint(-JITTER, JITTER)
        xj = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        if rnd.random() < 0.5:
            xj = xj.flip(3)
        opt.zero_grad(set_to_none=True)
        model(xj)
        bn = losses.pop()
        loss = bn + icfg.tv_weight * total_variation(x) + icfg.l2_weight * torch.linalg.vector_norm(x)
        if not torch.isfinite(loss):
            raise ModelError(f"inversion iteration {it + 1}: loss is {loss.item()}; lower quantize.inversion.lr")
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.copy_(torch.maximum(torch.minimum(x, hi), lo))
        curve.append(float(bn.detach()))
        if on_step is not None:
            on_step()
    return _to_uint8(x, pre), curve


def invert_faces(model: nn.Module, icfg: InversionConfig, batch_size: int, pre: Preprocess,
                 show_progress: bool | None = None) -> tuple[np.ndarray, InversionReport]:
    """icfg.images faces synthesised from `model` (left untouched) in batches of batch_size; uint8 RGB."""
    from ...progress import progress

    net = copy.deepcopy(model).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    losses = BNStatLoss(net)
    n = icfg.images
    batches = [(i, min(batch_size, n - i)) for i in range(0, n, batch_size)]
    out = np.empty((n, pre.size, pre.size, 3), np.uint8)
    report = InversionReport()
    bar = progress("it", disable=None if show_progress is None else not show_progress)
    try:
        with bar:
            task = bar.add_task("inversion", total=len(batches) * icfg.iterations)
            for b, (start, k) in enumerate(batches):
                faces, curve = invert_batch(net, losses, k, icfg, pre, seed=icfg.seed * 100003 + b,
                                            on_step=lambda: bar.advance(task))
                out[start:start + k] = faces
                report.first.append(curve[0])
                report.last.append(curve[-1])
                if b == 0:
                    report.curve = curve
    finally:
        losses.remove()
    return out, report
