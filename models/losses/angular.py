"""Angular-KD (june6423/Angular-KD, mdistiller/models/teacher_aug.py + diverse_loss.py): virtual teacher views.

Read from the repository: each of N views is dropout (p = 0.15, 0.20, ... per view) -> Linear(Dt, Dt) with an
orthogonal weight (QR of a Gaussian) -> BatchNorm1d, whose weight and bias start at constants drawn from
N(1 - 0.1 i, 0.1 + 0.1 i). Views are made from the detached teacher feature and trained with
  * angular diversity (Feature_intra_Loss): r_n = unit(f_t - v_n); mean over the batch of <r_n, r_m>,
    softplus, averaged over the N (N - 1) ordered pairs n != m -> pushes the views apart around f_t;
  * an anchor (contrastive part of Feature_inter_Loss): each view must pick its own sample's teacher feature
    among the batch's, cross-entropy over cos / 0.07 divided by N, where positives already within the
    margin (cos >= 1 - 0.2) are set to 1 (no gradient) -> keeps the views near the teacher.
The ensemble is fixed, not learned: weights 0.8 per view and 1.0 for the teacher feature itself, the vector
L2-normalised (weight_sum_feature). The student distils 1 - cos(g(f_s), ensemble). As in the repository the
ensemble is not detached, so the distillation term also trains the views (`detach_target` to stop that).
Weights: FEAT_INTRAWEIGHT 1.0 (diversity), FEAT_INTERWEIGHT 0.1 (anchor).
Left out: the view classifiers and logit-level losses (no logits here), and the inter loss's second
diversity term (which in the repository normalises across views instead of features).
Dropout and BatchNorm make the term depend on train()/eval() mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import LossInputs, LossTerm, Param, l2n, make_projector
from .registry import register_loss


def angular_diversity(f_t: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """views (B, N, D): mean over n != m of softplus(mean_b <unit(f_t - v_n), unit(f_t - v_m)>)."""
    n = views.shape[1]
    r = F.normalize(f_t[:, None, :] - views, p=2, dim=2)
    sim = torch.bmm(r, r.transpose(1, 2)).mean(0)
    off = 1 - torch.eye(n, dtype=sim.dtype, device=sim.device)
    return (F.softplus(sim) * off).sum() / (n * (n - 1))


def view_anchor(f_t: torch.Tensor, views: torch.Tensor, tau: float, margin: float) -> torch.Tensor:
    """Cross-entropy of each view against the batch's teacher features (its own sample is the target)."""
    b, n, d = views.shape
    sim = F.normalize(views, p=2, dim=2).reshape(b * n, d) @ l2n(f_t).t()
    target = torch.arange(b * n, device=views.device) // n
    own = F.one_hot(target, b).bool()
    sim = torch.where(own & (sim >= 1 - margin), torch.ones_like(sim), sim)
    return F.cross_entropy(sim / tau, target) / n


@register_loss("angular_kd")
class AngularKDLoss(LossTerm):
    """Student distils from an ensemble of N learnable, angularly diverse virtual views of the teacher feature."""

    PARAMS = {
        "views": Param(5, min=2, max=16),
        "diversity_weight": Param(1.0, min=0.0),
        "anchor_weight": Param(0.1, min=0.0),
        "anchor_tau": Param(0.07, positive=True),
        "anchor_margin": Param(0.2, min=0.0, max=2.0),
        "detach_target": Param(False),
    }
    needs_teacher = True

    def __init__(self, **kw):
        super().__init__(**kw)
        n, d = self.config["views"], self.teacher_embedding_size
        self.proj = make_projector(self.embedding_size, d)
        self.dropouts = nn.ModuleList(nn.Dropout(min(0.9, 0.15 + 0.05 * i)) for i in range(n))
        self.generators = nn.ModuleList(nn.Linear(d, d) for _ in range(n))
        self.norms = nn.ModuleList(nn.BatchNorm1d(d) for _ in range(n))
        q = torch.linalg.qr(torch.randn(n, d, d)).Q
        with torch.no_grad():
            for i in range(n):
                self.generators[i].weight.copy_(q[i])
                self.norms[i].weight.fill_(float(torch.normal(1.0 - 0.1 * i, 0.1 + 0.1 * i, (1,))))
                self.norms[i].bias.fill_(float(torch.normal(1.0 - 0.1 * i, 0.1 + 0.1 * i, (1,))))

    def views(self, f_t: torch.Tensor) -> torch.Tensor:
        """(B, N, Dt) virtual views of the (detached) teacher feature."""
        return torch.stack([bn(gen(drop(f_t))) for drop, gen, bn in zip(self.dropouts, self.generators, self.norms)], 1)

    def ensemble(self, f_t: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """0.8 per view and 1.0 for the teacher feature, the weight vector L2-normalised."""
        w = torch.tensor([0.8] * views.shape[1] + [1.0], dtype=views.dtype, device=views.device)
        w = w / w.norm()
        return (views * w[:-1, None]).sum(1) + w[-1] * f_t

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        self.check_inputs(inputs)
        cfg = self.config
        f_t = inputs.teacher_emb.detach()
        v = self.views(f_t)
        target = self.ensemble(f_t, v)
        if cfg["detach_target"]:
            target = target.detach()
        loss = (1 - F.cosine_similarity(self.proj(inputs.student_emb), target, dim=1)).mean()
        if cfg["diversity_weight"] > 0:
            loss = loss + cfg["diversity_weight"] * angular_diversity(f_t, v)
        if cfg["anchor_weight"] > 0:
            loss = loss + cfg["anchor_weight"] * view_anchor(f_t, v, cfg["anchor_tau"], cfg["anchor_margin"])
        return loss
