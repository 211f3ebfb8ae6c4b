"""A weighted sum of named loss terms, each logged on its own."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import nn

from facepipe.pipeline.errors import ConfigError

from .base import LossInputs, LossTerm
from .registry import build_loss


class WeightedLoss(nn.Module):
    """total = sum(weight * term(inputs)); forward returns (total, {name: unweighted detached value})."""

    def __init__(self, terms: Iterable[tuple[str, float, LossTerm]]):
        super().__init__()
        self.terms = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        for name, weight, module in terms:
            if name in self.terms:
                raise ConfigError(f"loss {name!r} listed twice")
            if not float(weight) >= 0:
                raise ConfigError(f"loss {name!r}: weight must be >= 0, got {weight}")
            self.terms[name] = module
            self.weights[name] = float(weight)
        if not self.terms:
            raise ConfigError("no loss terms configured")

    @property
    def needs_labels(self) -> bool:
        return any(t.needs_labels for t in self.terms.values())

    @property
    def needs_teacher(self) -> bool:
        return any(t.needs_teacher for t in self.terms.values())

    @property
    def needs_centers(self) -> bool:
        return any(t.needs_centers for t in self.terms.values())

    def set_centers(self, centers: torch.Tensor) -> None:
        """Hand teacher class centres to every term that uses them."""
        for t in self.terms.values():
            if t.needs_centers:
                t.set_centers(centers)

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {f"{n}.{k}": v for n, t in self.terms.items() for k, v in t.extra_state().items()}

    def forward(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = None
        logs: dict[str, torch.Tensor] = {}
        for name, term in self.terms.items():
            value = term(inputs)
            logs[name] = value.detach()
            part = self.weights[name] * value
            total = part if total is None else total + part
        return total, logs


def _field(spec: Any, key: str, default: Any) -> Any:
    if isinstance(spec, Mapping):
        return spec.get(key, default)
    return getattr(spec, key, default)


def build_weighted_loss(
    specs: Iterable[Any], *, num_classes: int, embedding_size: int, teacher_embedding_size: int | None = None
) -> WeightedLoss:
    """Build from config entries with `name`, `weight` (default 1) and `params` (dict), e.g. distill.losses."""
    terms = []
    for spec in specs:
        name = _field(spec, "name", None)
        if not name:
            raise ConfigError("every loss entry needs a name")
        params = dict(_field(spec, "params", None) or {})
        module = build_loss(
            name,
            num_classes=num_classes,
            embedding_size=embedding_size,
            teacher_embedding_size=teacher_embedding_size,
            **params,
        )
        terms.append((name, _field(spec, "weight", 1.0), module))
    return WeightedLoss(terms)
