"""Classic KD: Hinton's logit distillation and feature (hint) distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LossInputs, LossTerm, Param, TeacherCenters, l2n, make_projector
from .registry import register_loss


@register_loss("hinton_kd")
class HintonKDLoss(TeacherCenters, LossTerm):
    """(1 - l) * CE(z_s, y) + l * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), KL averaged over the batch.

    A face embedder has no classifier, so without student/teacher logits in the inputs the logits are
    s * cosine against the teacher class centres (`set_centers`): z_t = s cos(f_t, W), z_s = s cos(g(f_s), W),
    with g a learnable projection when the student and teacher sizes differ.
    """

    PARAMS = {
        "T": Param(4.0, positive=True),
        "l": Param(0.9, min=0.0, max=1.0),
        "s": Param(64.0, positive=True),
    }
    needs_teacher = True
    needs_centers = True

    def __init__(self, **kw):
        super().__init__(**kw)
        self.needs_labels = self.config["l"] < 1
        self.proj = make_projector(self.embedding_size, self.teacher_embedding_size)
        self._init_centers()

    def check_inputs(self, inputs: LossInputs) -> None:
        has_s, has_t = inputs.student_logits is not None, inputs.teacher_logits is not None
        if has_s != has_t:
            raise ValueError("hinton_kd: give both student and teacher logits, or neither")
        if self.needs_labels and inputs.labels is None:
            raise ValueError("hinton_kd needs labels (l < 1)")
        if not has_s and (inputs.teacher_emb is None or not bool(self.has_centers)):
            raise ValueError("hinton_kd without logits needs teacher embeddings and set_centers()")

    def logits(self, inputs: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
        if inputs.student_logits is not None:
            return inputs.student_logits, inputs.teacher_logits.detach()
        s = self.config["s"]
        z_s = s * (l2n(self.proj(inputs.student_emb)) @ self.centers.t())
        z_t = s * (l2n(inputs.teacher_emb.detach()) @ self.centers.t())
        return z_s, z_t

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        self.check_inputs(inputs)
        T, l = self.config["T"], self.config["l"]
        z_s, z_t = self.logits(inputs)
        kl = F.kl_div(F.log_softmax(z_s / T, 1), F.log_softmax(z_t / T, 1), reduction="batchmean", log_target=True)
        loss = l * T * T * kl
        if l < 1:
            loss = loss + (1 - l) * F.cross_entropy(z_s, inputs.labels)
        return loss


@register_loss("feature_kd")
class FeatureKDLoss(LossTerm):
    """mode mse: mean_i ||f_t - g(f_s)||^2 (summed over dims); mode cosine: mean_i 1 - cos(g(f_s), f_t).

    g is the identity when the sizes match, else a learnable linear projection; `normalize` (default)
    L2-normalises both sides first in mse mode (cosine is scale-free anyway).
    """

    PARAMS = {"mode": Param("mse", choices=("mse", "cosine")), "normalize": Param(True)}
    needs_teacher = True

    def __init__(self, **kw):
        super().__init__(**kw)
        self.proj = make_projector(self.embedding_size, self.teacher_embedding_size)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        self.check_inputs(inputs)
        g = self.proj(inputs.student_emb)
        t = inputs.teacher_emb.detach()
        if self.config["mode"] == "cosine":
            return (1 - F.cosine_similarity(g, t, dim=1)).mean()
        if self.config["normalize"]:
            g, t = l2n(g), l2n(t)
        return (t - g).pow(2).sum(1).mean()
