"""Unified KD for face recognition (Mishra & Uikey, arXiv 2508.11376, IJCB 2025): ILED and RPSD.

The paper's code is not public and only its abstract/introduction were readable here; what follows is our
reading of its description ("per-sample alignment with a dynamic hard-mining weight, a rescaled softplus
of the student-teacher cosine"; "batch cosine-similarity matrices matched against a FIFO memory bank, absolute
difference, pairs mined above a threshold") with its constants. Both weights are the same "rescaled
softplus" sp_r(x) = softplus(r * x) / r (a smooth relu of sharpness r) plus a floor b, and are treated as
mining weights: computed without gradient.

ILED (r = 40, s = 0.9, b = 0.1), with c_i = cos(g(f_s,i), f_t,i) (g: identity or a learnable projection):
    w_i = sp_r(s - c_i) + b            -> ~b for aligned samples (c_i > s), grows ~linearly as c_i drops below s
    L   = mean_i  w_i * (1 - c_i)

RPSD (t = 0.05, r' = 60, b' = 1, lambda = 40), with unit rows S (student, B x Ds) and T (teacher, B x Dt)
and FIFO banks M_s, M_t of the last `bank_size` (3 x batch) student and teacher rows (student rows stored
detached; each side's similarities stay in its own space, so the sizes may differ):
    G_s = S [S; M_s]^T,  G_t = T [T; M_t]^T            (B x (B + |M|); the i = j self-pairs are excluded)
    d_ij = |G_s,ij - G_t,ij|,   mined: d_ij > t
    w_ij = sp_r'(d_ij - t) + b'
    L   = lambda * sum_{mined} w_ij * d_ij / #(all valid pairs)
Dividing by all pairs rather than the mined ones keeps the loss continuous as pairs cross the threshold and
lets it shrink as the student converges (hence the large lambda). The banks are pushed after the loss, in
training mode; lambda is kept inside the term so that the paper's recipe is weight 1 for both terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LossInputs, LossTerm, Param, l2n, make_projector
from .distributed import all_gather_rows
from .memory import FeatureQueue
from .registry import register_loss


def rescaled_softplus(x: torch.Tensor, r: float) -> torch.Tensor:
    return F.softplus(r * x) / r


@register_loss("iled")
class ILEDLoss(LossTerm):
    """Instance-level embedding distillation: 1 - cos per sample, weighted toward hard samples."""

    PARAMS = {"r": Param(40.0, positive=True), "s": Param(0.9, min=-1.0, max=1.0), "b": Param(0.1, min=0.0)}
    needs_teacher = True

    def __init__(self, **kw):
        super().__init__(**kw)
        self.proj = make_projector(self.embedding_size, self.teacher_embedding_size)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        self.check_inputs(inputs)
        cfg = self.config
        c = (l2n(self.proj(inputs.student_emb)) * l2n(inputs.teacher_emb.detach())).sum(1)
        w = (rescaled_softplus(cfg["s"] - c, cfg["r"]) + cfg["b"]).detach()
        return (w * (1 - c)).mean()


@register_loss("rpsd")
class RPSDLoss(LossTerm):
    """Relation-based pairwise similarity distillation against a memory bank, with discrepancy mining."""

    PARAMS = {
        "t": Param(0.05, min=0.0),
        "r": Param(60.0, positive=True),
        "b": Param(1.0, min=0.0),
        "lam": Param(40.0, min=0.0),
        "bank_size": Param(384, min=0),  # 3 x the default distill batch of 128: pass 3 * batch_size
    }
    needs_teacher = True

    def __init__(self, **kw):
        super().__init__(**kw)
        size = max(1, self.config["bank_size"])
        self.bank_s = FeatureQueue(size, self.embedding_size)
        self.bank_t = FeatureQueue(size, self.teacher_embedding_size)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        self.check_inputs(inputs)
        cfg = self.config
        s = l2n(inputs.student_emb)
        t = l2n(inputs.teacher_emb.detach())
        use_bank = cfg["bank_size"] > 0
        g_s = s @ torch.cat([s, self.bank_s.valid()] if use_bank else [s]).t()
        g_t = t @ torch.cat([t, self.bank_t.valid()] if use_bank else [t]).t()
        d = (g_s - g_t).abs()
        valid = torch.ones_like(d, dtype=torch.bool)
        valid[:, : len(s)].fill_diagonal_(False)
        mined = (d > cfg["t"]) & valid
        w = (rescaled_softplus(d - cfg["t"], cfg["r"]) + cfg["b"]).detach()
        loss = cfg["lam"] * (w * d * mined).sum() / valid.sum().clamp_min(1)
        if self.training and use_bank:
            (s_all, t_all), _, _ = all_gather_rows(s.detach(), t)
            self.bank_s.push(s_all)
            self.bank_t.push(t_all)
        return loss
