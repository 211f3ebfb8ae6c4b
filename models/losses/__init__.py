"""Margin heads and knowledge-distillation losses, in one registry (`LOSSES`).

Every term is an nn.Module built by `build_loss(name, num_classes=..., embedding_size=...,
teacher_embedding_size=..., **params)`, called with a `LossInputs` and returning a scalar; `WeightedLoss`
sums named terms and reports each one.
"""

from .base import LossInputs, LossTerm, Param
from .registry import LOSSES, build_loss, list_losses, register_loss

# Importing the term modules registers them (order = registry order).
from .margin import ArcDistillLoss, ArcFaceLoss, CosDistillLoss, CosFaceLoss, class_centers  # noqa: E402
from .adadistill import AdaArcDistillLoss, AdaCosDistillLoss, AdaptiveCenters  # noqa: E402
from .adaface import AdaFaceLoss  # noqa: E402
from .adaface_geom import AdaFaceGeomLoss  # noqa: E402
from .kd import FeatureKDLoss, HintonKDLoss  # noqa: E402
from .relational import RKDLoss  # noqa: E402
from .unified import ILEDLoss, RPSDLoss  # noqa: E402
from .contrastive import QUDLoss  # noqa: E402
from .angular import AngularKDLoss  # noqa: E402
from .weighted import WeightedLoss, build_weighted_loss  # noqa: E402

__all__ = [
    "LOSSES",
    "LossInputs",
    "LossTerm",
    "Param",
    "WeightedLoss",
    "build_loss",
    "build_weighted_loss",
    "class_centers",
    "list_losses",
    "register_loss",
    "AdaptiveCenters",
    "ArcFaceLoss",
    "CosFaceLoss",
    "ArcDistillLoss",
    "CosDistillLoss",
    "AdaArcDistillLoss",
    "AdaCosDistillLoss",
    "AdaFaceLoss",
    "AdaFaceGeomLoss",
    "HintonKDLoss",
    "FeatureKDLoss",
    "RKDLoss",
    "ILEDLoss",
    "RPSDLoss",
    "QUDLoss",
    "AngularKDLoss",
]
