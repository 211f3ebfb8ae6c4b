"""Relational KD (Park et al., CVPR 2019): match the batch's distance and angle structure.

    distance: psi_D(i, j) = ||x_i - x_j|| / mean_{k != l} ||x_k - x_l||;   smooth-L1(psi_D^s, psi_D^t) over all (i, j)
    angle:    psi_A(i, j, k) = <e_ij, e_ik>, e_ij = (x_j - x_i) / ||x_j - x_i||;  smooth-L1 over all (i, j, k)
    loss = distance_weight * L_D + angle_weight * L_A   (25 and 50, as in the paper)
Both means run over every entry (diagonal distances are 0 on both sides; degenerate triplets give e = 0),
as in the authors' code. Embeddings are L2-normalised first when `normalize` (default: faces are compared
by angle); the structure is dimension-free, so student and teacher sizes may differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LossInputs, LossTerm, Param, l2n
from .registry import register_loss


def pairwise_distances(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    sq = x.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * x @ x.t()).clamp_min(eps)
    d = d2.sqrt()
    return d * (1 - torch.eye(len(x), dtype=x.dtype, device=x.device))


def _normalised_distances(x: torch.Tensor) -> torch.Tensor:
    d = pairwise_distances(x)
    return d / d[d > 0].mean()


def _angles(x: torch.Tensor) -> torch.Tensor:
    e = F.normalize(x[None, :, :] - x[:, None, :], p=2, dim=2)  # e[i, j] = unit(x_j - x_i)
    return torch.bmm(e, e.transpose(1, 2))


@register_loss("rkd")
class RKDLoss(LossTerm):
    """RKD distance + angle losses between the student and teacher batch structures."""

    PARAMS = {
        "distance_weight": Param(25.0, min=0.0),
        "angle_weight": Param(50.0, min=0.0),
        "normalize": Param(True),
    }
    needs_teacher = True

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        self.check_inputs(inputs)
        s, t = inputs.student_emb, inputs.teacher_emb.detach()
        if self.config["normalize"]:
            s, t = l2n(s), l2n(t)
        if len(s) < 2:
            return s.sum() * 0
        with torch.no_grad():
            t_d, t_a = _normalised_distances(t), _angles(t)
        loss_d = F.smooth_l1_loss(_normalised_distances(s), t_d)
        loss_a = F.smooth_l1_loss(_angles(s), t_a)
        return self.config["distance_weight"] * loss_d + self.config["angle_weight"] * loss_a
