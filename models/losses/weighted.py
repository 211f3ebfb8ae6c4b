"""A weighted sum of named loss terms, each logged on its own."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn

from facepipe.pipeline.errors import ConfigError

from .base import LossInputs, LossTerm
from .distributed import is_distributed
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
        # Some rows may carry no identity (label UNLABELLED = -1, distill.generated_faces): terms that need
        # labels then see only the labelled rows, the others every row. Set for the whole run, on every rank.
        self.partial_labels = False

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
        labelled = labelled_rows(inputs) if self.partial_labels and self.needs_labels else inputs
        total = None
        logs: dict[str, torch.Tensor] = {}
        for name, term in self.terms.items():
            if not term.needs_labels or labelled is inputs:
                value = term(inputs)
            elif labelled is not None:
                value = term(labelled)
            else:  # no labelled row in this step (on some rank): the term sits it out, its parameters get zeros
                value = inputs.student_emb.sum() * 0.0 + sum((p.sum() * 0.0 for p in term.parameters()), 0.0)
            logs[name] = value.detach()
            part = self.weights[name] * value
            total = part if total is None else total + part
        return total, logs


def labelled_rows(inputs: LossInputs) -> LossInputs | None:
    """`inputs` restricted to the rows with a label (>= 0); None when some rank has none this step (decided
    jointly, so every rank skips the label terms together and their collectives stay matched)."""
    keep = inputs.labels >= 0
    count = keep.sum()
    if is_distributed():
        dist.all_reduce(count, op=dist.ReduceOp.MIN)
    if int(count) == 0:
        return None

    def rows(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[keep]

    return LossInputs(student_emb=inputs.student_emb[keep], teacher_emb=rows(inputs.teacher_emb),
                      labels=inputs.labels[keep], epoch_float=inputs.epoch_float,
                      student_logits=rows(inputs.student_logits), teacher_logits=rows(inputs.teacher_logits))


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
