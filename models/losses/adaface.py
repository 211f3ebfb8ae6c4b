"""AdaFace (mk-minchul/AdaFace head.py): a margin that adapts to the embedding norm (an image-quality proxy).

    norms   = clip(||z||, 0.001, 100), detached            (z: the raw student embedding)
    mu, sd <- t_alpha * (batch mean, batch std) + (1 - t_alpha) * (mu, sd)     (buffers, start 20 and 100)
    ms      = clip(h * (norms - mu) / (sd + eps), -1, 1)   (with the EMA already updated, as head.py does)
    target  = cos(clip(theta - m * ms, eps, pi - eps)) - (m + m * ms)      (g_angular = -m*ms, g_add = m + m*ms)
    others  = cos, every cosine clamped to [-1 + eps, 1 - eps]; logits = s * (...), eps = 1e-3.
So a low-norm (hard) sample gets ArcFace's angular margin (ms = -1: theta + m, no additive part) and a
high-norm one CosFace's additive margin (ms = +1: theta - m, then - 2m). The batch std is the unbiased one
(torch.std), and the EMA moves only in training mode (head.py moves it on every call).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import LossInputs, LossTerm, Param, l2n
from .registry import register_loss

EPS = 1e-3

ADAFACE_PARAMS = {
    "s": Param(64.0, positive=True),
    "m": Param(0.4, min=0.0),
    "h": Param(0.333, min=0.0),
    "t_alpha": Param(0.01, min=0.0, max=1.0),
}


class NormEMA(nn.Module):
    """Running mean / std of the clipped embedding norms (buffers batch_mean, batch_std)."""

    def __init__(self, t_alpha: float = 0.01, mean: float = 20.0, std: float = 100.0):
        super().__init__()
        self.t_alpha = t_alpha
        self.register_buffer("batch_mean", torch.full((1,), mean))
        self.register_buffer("batch_std", torch.full((1,), std))

    @torch.no_grad()
    def update(self, norms: torch.Tensor) -> None:
        a = self.t_alpha
        self.batch_mean.mul_(1 - a).add_(a * norms.mean())
        if norms.numel() > 1:  # a single row has no std; keep the running value
            self.batch_std.mul_(1 - a).add_(a * norms.std())

    def scaler(self, norms: torch.Tensor, h: float) -> torch.Tensor:
        """The unclipped quality term h * (norm - mu) / (sigma + eps)."""
        return h * (norms - self.batch_mean) / (self.batch_std + EPS)


def safe_norms(emb: torch.Tensor) -> torch.Tensor:
    return emb.detach().norm(dim=1).clamp(0.001, 100)


def adaface_logits(cos: torch.Tensor, labels: torch.Tensor, ms: torch.Tensor, s: float, m: float) -> torch.Tensor:
    """s * cosines (clamped to +-(1 - eps)) with the AdaFace margin on each row's target, for scaler ms."""
    cos = cos.clamp(-1 + EPS, 1 - EPS)
    theta = torch.acos(cos.gather(1, labels[:, None]).squeeze(1))
    target = torch.cos((theta - m * ms).clamp(EPS, math.pi - EPS)) - (m + m * ms)
    return s * cos.scatter(1, labels[:, None], target[:, None])


@register_loss("adaface")
class AdaFaceLoss(LossTerm):
    """AdaFace softmax with its own learnable (C, Ds) class weights."""

    PARAMS = ADAFACE_PARAMS
    needs_labels = True

    def __init__(self, **kw):
        super().__init__(**kw)
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.embedding_size))
        nn.init.normal_(self.weight, std=0.01)
        self.norm_ema = NormEMA(self.config["t_alpha"])

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        self.check_inputs(inputs)
        norms = safe_norms(inputs.student_emb)
        if self.training:
            self.norm_ema.update(norms)
        ms = self.norm_ema.scaler(norms, self.config["h"]).clamp(-1, 1)
        cos = l2n(inputs.student_emb) @ l2n(self.weight).t()
        logits = adaface_logits(cos, inputs.labels, ms, self.config["s"], self.config["m"])
        return F.cross_entropy(logits, inputs.labels)
