"""AdaFace on AdaDistill's adaptive centres plus a geometry-aware margin (rayyichen310/adadistill_with_adaface_loss).

Read from the fork (utils/losses.py `AdaptiveAAdaFace`, train/train_AdaDistill.py, config/config.py): the
class weights are AdaDistill's adaptive centres (a kernel never given to the optimiser, updated under
no_grad: here the `AdaptiveCenters` buffer), with the hard alpha' (config.adaptive_alpha = True), and the
norms are those of the raw student embedding. Per row, with lam = clamp(cos(w_y, f_t), 1e-6, 1) taken before
that row's centre update (the same lam that sets alpha') and cos_st = cos(f_s, f_t):
    geom  = k * lam * relu(lam - cos_st)           (only when the student trails the teacher's confidence)
    w_eff = w * clip(epoch_float / warmup, 0, 1)   (w when warmup <= 0)
    ms    = clip(q + w_eff * geom, -1, 1)          (q: the AdaFace norm term, see adaface.py)
and AdaFace's margin with ms against the updated centres. k = 3, w = 1, warmup = 1 epoch (the fork's README).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .adadistill import ALPHA_MODES, AdaptiveCenters
from .adaface import ADAFACE_PARAMS, NormEMA, adaface_logits, safe_norms
from .base import LossInputs, LossTerm, Param, l2n
from .registry import register_loss


def geometry_margin(lam: torch.Tensor, cos_st: torch.Tensor, k: float) -> torch.Tensor:
    """k * lam * relu(lam - cos_st): extra margin where the teacher is confident but the student is not aligned."""
    return k * lam * (lam - cos_st).clamp_min(0)


def warmup_factor(epoch_float: float, warmup: float) -> float:
    return 1.0 if warmup <= 0 else min(1.0, max(0.0, epoch_float / warmup))


@register_loss("adaface_geom")
class AdaFaceGeomLoss(LossTerm):
    """AdaFace + geometry-aware margin on AdaDistill adaptive centres."""

    PARAMS = {
        **ADAFACE_PARAMS,
        "k": Param(3.0, min=0.0),
        "w": Param(1.0, min=0.0),
        "warmup": Param(1.0, min=0.0),
        "alpha": Param("hard", choices=ALPHA_MODES),
    }
    needs_labels = True
    needs_teacher = True

    def __init__(self, **kw):
        super().__init__(**kw)
        self._require_same_dims()
        self.centers = AdaptiveCenters(self.num_classes, self.teacher_embedding_size, self.config["alpha"])
        self.norm_ema = NormEMA(self.config["t_alpha"])
        self.last_stats: dict[str, torch.Tensor] = {}

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        self.check_inputs(inputs)
        cfg = self.config
        f_s = l2n(inputs.student_emb)
        f_t = l2n(inputs.teacher_emb.detach())
        if self.training:
            stats = self.centers.step(f_s.detach(), f_t, inputs.labels)
        else:
            stats = self.centers.lam_only(f_s.detach(), f_t, inputs.labels)
        cos = f_s @ self.centers.normalized().t()

        norms = safe_norms(inputs.student_emb)
        if self.training:
            self.norm_ema.update(norms)
        q = self.norm_ema.scaler(norms, cfg["h"])
        geom = geometry_margin(stats["lam"], stats["cos_st"], cfg["k"])
        w_eff = cfg["w"] * warmup_factor(inputs.epoch_float, cfg["warmup"])
        ms = (q + w_eff * geom).clamp(-1, 1)

        self.last_stats = {**{k: v.mean() for k, v in stats.items()}, "geom": geom.mean(), "ms": ms.mean()}
        logits = adaface_logits(cos, inputs.labels, ms, cfg["s"], cfg["m"])
        return F.cross_entropy(logits, inputs.labels)
