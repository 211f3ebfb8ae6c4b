"""AdaDistill (fdbtrs/AdaDistill, utils/losses.py): margin softmax against adaptive, teacher-distilled centres.

Per step, without gradient, with L2-normalised f_s, f_t and a = cos(f_s, f_t) (clamped to [-1, 1]):
    lam    = clamp(cos(w_y, f_t), 1e-6, 1)         (w_y as it is just before this row's update)
    alpha  = clamp(a * lam, 1e-6, 1)   ("hard", the paper's alpha')   or   clamp(a, 0, 1)   ("plain")
    w_y   <- alpha * w_y + (1 - alpha) * f_t
then ArcFace / CosFace of f_s against the normalised, updated centres.

Determinism: the official code writes all rows at once, so a label repeated in a batch keeps whichever
write lands last. Here rows are applied one after another in batch-index order (vectorised in rounds: the
k-th occurrence of every label in round k), so the result equals the sequential update. Under
torch.distributed the rows of all ranks are gathered first (`gather`) and every rank applies the same
ordered update (rank-major, then batch index), so the centres stay identical without any buffer all-reduce.
Updates happen only in training mode.

Choices: `alpha` defaults to "hard" (alpha', the paper's method and the fork's config); "plain" clamps a to
[0, 1] as our design notes say (the official code clamps to [1e-6, 1]). The ArcFace variant uses the
insightface form with the theta + m > pi fallback (see margin.py); the official AdaDistill ArcFace has none,
which only matters for targets more than pi - m (about 154 degrees) away.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import LossInputs, LossTerm, Param, l2n
from .distributed import all_gather_rows
from .margin import MARGINS
from .registry import register_loss

ALPHA_MODES = ("plain", "hard")


def occurrence_rank(labels: torch.Tensor) -> torch.Tensor:
    """For each row, how many earlier rows carry the same label (0 for the first occurrence)."""
    n = labels.shape[0]
    order = torch.sort(labels, stable=True).indices
    ordered = labels[order]
    idx = torch.arange(n, device=labels.device)
    starts = torch.ones(n, dtype=torch.bool, device=labels.device)
    starts[1:] = ordered[1:] != ordered[:-1]
    group_start = torch.cummax(torch.where(starts, idx, torch.zeros_like(idx)), 0).values
    rank = torch.empty_like(idx)
    rank[order] = idx - group_start
    return rank


class AdaptiveCenters(nn.Module):
    """(C, D) class centres kept as a buffer (start N(0, 0.01), no gradient) and moved toward the teacher."""

    def __init__(self, num_classes: int, dim: int, alpha: str = "hard"):
        super().__init__()
        if alpha not in ALPHA_MODES:
            raise ValueError(f"alpha must be one of {ALPHA_MODES}, got {alpha!r}")
        self.alpha_mode = alpha
        self.register_buffer("centers", torch.randn(num_classes, dim) * 0.01)

    @torch.no_grad()
    def gather(self, a: torch.Tensor, f_t: torch.Tensor, labels: torch.Tensor):
        """Rows of every rank, rank-major (a no-op without torch.distributed); also this rank's row range.

        The cosines a = cos(f_s, f_t) travel instead of f_s itself: the update needs nothing else of f_s.
        """
        (a, f_t, labels), start, end = all_gather_rows(a, f_t, labels)
        return a, f_t, labels, start, end

    @torch.no_grad()
    def update(self, a: torch.Tensor, f_t: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the ordered update for rows (a, normalised f_t, labels); return per-row (lam, alpha)."""
        lam = torch.empty_like(a)
        alpha = torch.empty_like(a)
        rank = occurrence_rank(labels)
        for r in range(int(rank.max()) + 1 if len(rank) else 0):
            rows = (rank == r).nonzero().squeeze(1)
            y = labels[rows]
            w, ft = self.centers[y], f_t[rows]
            lam_r = ((w * ft).sum(1) / (w.norm(dim=1) * ft.norm(dim=1)).clamp_min(1e-12)).clamp(1e-6, 1)
            if self.alpha_mode == "hard":
                alpha_r = (a[rows] * lam_r).clamp(1e-6, 1)
            else:
                alpha_r = a[rows].clamp(0, 1)
            self.centers[y] = alpha_r[:, None] * w + (1 - alpha_r[:, None]) * ft
            lam[rows], alpha[rows] = lam_r, alpha_r
        return lam, alpha

    @torch.no_grad()
    def step(self, f_s: torch.Tensor, f_t: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gather (if distributed), update, and return this rank's per-row a, lam and alpha."""
        a = (f_s * f_t).sum(1).clamp(-1, 1)
        a_all, ft_all, y_all, start, end = self.gather(a, f_t, labels)
        lam, alpha = self.update(a_all, ft_all, y_all)
        return {"cos_st": a, "lam": lam[start:end], "alpha": alpha[start:end]}

    @torch.no_grad()
    def lam_only(self, f_s: torch.Tensor, f_t: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Statistics without updating (evaluation mode)."""
        w = self.centers[labels]
        lam = ((w * f_t).sum(1) / (w.norm(dim=1) * f_t.norm(dim=1)).clamp_min(1e-12)).clamp(1e-6, 1)
        return {"cos_st": (f_s * f_t).sum(1).clamp(-1, 1), "lam": lam}

    def normalized(self) -> torch.Tensor:
        return l2n(self.centers)


class _AdaDistill(LossTerm):
    kind = "arc"
    needs_labels = True
    needs_teacher = True

    def __init__(self, **kw):
        super().__init__(**kw)
        self._require_same_dims()
        self.centers = AdaptiveCenters(self.num_classes, self.teacher_embedding_size, self.config["alpha"])
        self.last_stats: dict[str, torch.Tensor] = {}

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        self.check_inputs(inputs)
        f_s = l2n(inputs.student_emb)
        f_t = l2n(inputs.teacher_emb.detach())
        if self.training:
            stats = self.centers.step(f_s.detach(), f_t, inputs.labels)
        else:
            stats = self.centers.lam_only(f_s.detach(), f_t, inputs.labels)
        self.last_stats = {k: v.mean() for k, v in stats.items()}
        cos = (f_s @ self.centers.normalized().t()).clamp(-1, 1)
        logits = MARGINS[self.kind](cos, inputs.labels, self.config["s"], self.config["m"])
        return F.cross_entropy(logits, inputs.labels)


@register_loss("ada_arc_distill")
class AdaArcDistillLoss(_AdaDistill):
    """AdaDistill with ArcFace (s=64, m=0.45) on the adaptive centres."""

    kind = "arc"
    PARAMS = {
        "s": Param(64.0, positive=True),
        "m": Param(0.45, min=0.0, max=math.pi),
        "alpha": Param("hard", choices=ALPHA_MODES),
    }


@register_loss("ada_cos_distill")
class AdaCosDistillLoss(_AdaDistill):
    """AdaDistill with CosFace (s=64, m=0.35) on the adaptive centres."""

    kind = "cos"
    PARAMS = {
        "s": Param(64.0, positive=True),
        "m": Param(0.35, min=0.0),
        "alpha": Param("hard", choices=ALPHA_MODES),
    }
