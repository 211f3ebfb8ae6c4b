"""Margin-softmax heads: ArcFace / CosFace with learnable weights, and with frozen teacher class centres.

ArcFace follows insightface arcface_torch `ArcFace`: the target logit becomes cos(theta + m) while
theta + m <= pi (cos(theta) > cos(pi - m)), and cos(theta) - m * sin(m) beyond, where cos(theta + m) would
start to *increase* again with theta. No easy margin.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import LossInputs, LossTerm, Param, TeacherCenters, l2n
from .registry import register_loss

# Keeps sqrt(1 - cos^2) and its gradient finite at cos = +-1.
_COS_EPS = 1e-7


def arcface_logits(cos: torch.Tensor, labels: torch.Tensor, s: float, m: float) -> torch.Tensor:
    """s * cosines with the additive angular margin on each row's target class."""
    target = cos.gather(1, labels[:, None]).squeeze(1)
    t = target.clamp(-1 + _COS_EPS, 1 - _COS_EPS)
    with_margin = t * math.cos(m) - torch.sqrt(1 - t * t) * math.sin(m)
    final = torch.where(target > math.cos(math.pi - m), with_margin, target - m * math.sin(m))
    return s * cos.scatter(1, labels[:, None], final[:, None])


def cosface_logits(cos: torch.Tensor, labels: torch.Tensor, s: float, m: float) -> torch.Tensor:
    """s * cosines with the additive cosine margin m subtracted on each row's target class."""
    return s * (cos - m * F.one_hot(labels, cos.shape[1]).to(cos.dtype))


MARGINS = {"arc": arcface_logits, "cos": cosface_logits}


def class_centers(teacher_emb: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, Dt) normalised mean of the normalised teacher embeddings of each class (zero rows for unseen classes)."""
    emb = l2n(teacher_emb.detach().to(torch.float64))
    sums = torch.zeros(num_classes, emb.shape[1], dtype=emb.dtype, device=emb.device)
    sums.index_add_(0, labels, emb)
    return l2n(sums).to(teacher_emb.dtype)


class _LearnableMarginHead(LossTerm):
    kind = "arc"
    needs_labels = True

    def __init__(self, **kw):
        super().__init__(**kw)
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        self.check_inputs(inputs)
        cos = l2n(inputs.student_emb) @ l2n(self.weight).t()
        logits = MARGINS[self.kind](cos, inputs.labels, self.config["s"], self.config["m"])
        return F.cross_entropy(logits, inputs.labels)


@register_loss("arcface")
class ArcFaceLoss(_LearnableMarginHead):
    """ArcFace softmax with its own learnable (C, Ds) class weights."""

    kind = "arc"
    PARAMS = {"s": Param(64.0, positive=True), "m": Param(0.5, min=0.0, max=math.pi)}


@register_loss("cosface")
class CosFaceLoss(_LearnableMarginHead):
    """CosFace softmax with its own learnable (C, Ds) class weights."""

    kind = "cos"
    PARAMS = {"s": Param(64.0, positive=True), "m": Param(0.35, min=0.0)}


class _FrozenCenterHead(TeacherCenters, LossTerm):
    kind = "arc"
    needs_labels = True
    needs_centers = True

    def __init__(self, **kw):
        super().__init__(**kw)
        self._require_same_dims()
        self._init_centers()

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        self.check_inputs(inputs)
        if not bool(self.has_centers):
            raise RuntimeError(f"loss {self.name!r}: call set_centers() with the teacher class centres first")
        cos = l2n(inputs.student_emb) @ self.centers.t()
        logits = MARGINS[self.kind](cos, inputs.labels, self.config["s"], self.config["m"])
        return F.cross_entropy(logits, inputs.labels)


@register_loss("arc_distill")
class ArcDistillLoss(_FrozenCenterHead):
    """ArcFace on the student embedding with frozen teacher class centres as the class weights."""

    kind = "arc"
    PARAMS = ArcFaceLoss.PARAMS


@register_loss("cos_distill")
class CosDistillLoss(_FrozenCenterHead):
    """CosFace on the student embedding with frozen teacher class centres as the class weights."""

    kind = "cos"
    PARAMS = CosFaceLoss.PARAMS
