"""The common loss interface: `LossInputs`, the `LossTerm` base class and its declarative parameters."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from facepipe.pipeline.errors import ConfigError


@dataclass
class LossInputs:
    """What the trainer hands every loss term for one step.

    student_emb: (B, Ds) raw (un-normalised) student embeddings, with gradient.
    teacher_emb: (B, Dt) teacher embeddings or None; never receives gradient.
    labels: (B,) int64 identity labels or None.
    epoch_float: fractional epoch (epoch + step / steps_per_epoch), for warm-ups.
    student_logits / teacher_logits: optional (B, C) logits for logit KD.
    """

    student_emb: torch.Tensor
    teacher_emb: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    epoch_float: float = 0.0
    student_logits: torch.Tensor | None = None
    teacher_logits: torch.Tensor | None = None


@dataclass(frozen=True)
class Param:
    """One loss parameter: its default (whose type the value is coerced to) and its allowed range."""

    default: Any
    choices: tuple | None = None
    min: float | None = None  # inclusive
    max: float | None = None  # inclusive
    positive: bool = False  # strictly > 0

    def coerce(self, loss: str, name: str, value: Any) -> Any:
        kind = type(self.default)
        try:
            value = _coerce(kind, value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"loss {loss!r}: parameter {name!r} must be {kind.__name__}, got {value!r}"
            ) from None
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"loss {loss!r}: parameter {name!r} must be one of {list(self.choices)}, got {value!r}")
        if self.positive and not value > 0:
            raise ConfigError(f"loss {loss!r}: parameter {name!r} must be > 0, got {value!r}")
        if self.min is not None and value < self.min:
            raise ConfigError(f"loss {loss!r}: parameter {name!r} must be >= {self.min}, got {value!r}")
        if self.max is not None and value > self.max:
            raise ConfigError(f"loss {loss!r}: parameter {name!r} must be <= {self.max}, got {value!r}")
        return value


def _coerce(kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise TypeError
    if isinstance(value, bool):  # bool is an int subclass: refuse it for numbers
        raise TypeError
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return int(value)
    if kind is float:
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    raise TypeError


def resolve_params(loss: str, spec: Mapping[str, Param], given: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with `given`; unknown names and bad values raise ConfigError naming loss and param."""
    for key in given:
        if key not in spec:
            hint = difflib.get_close_matches(key, list(spec), n=1)
            known = ", ".join(spec) or "none"
            extra = f" (did you mean {hint[0]!r}?)" if hint else f"; known parameters: {known}"
            raise ConfigError(f"loss {loss!r}: unknown parameter {key!r}{extra}")
    return {k: p.coerce(loss, k, given.get(k, p.default)) for k, p in spec.items()}


class LossTerm(nn.Module):
    """Base of every registered loss: `forward(LossInputs) -> scalar tensor`.

    State that must survive a checkpoint (centres, EMA statistics, queues, their pointers) lives in
    registered buffers; trainable heads and projections are parameters of the term.
    """

    name: ClassVar[str] = ""
    PARAMS: ClassVar[dict[str, Param]] = {}
    needs_labels: bool = False
    needs_teacher: bool = False
    needs_centers: bool = False  # the trainer must call set_centers() with teacher class centres

    def __init__(self, *, num_classes: int, embedding_size: int, teacher_embedding_size: int | None = None, **params):
        super().__init__()
        for what, v in (("num_classes", num_classes), ("embedding_size", embedding_size)):
            if int(v) < 1:
                raise ConfigError(f"loss {self.name!r}: {what} must be a positive integer, got {v}")
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)
        self.teacher_embedding_size = int(teacher_embedding_size or embedding_size)
        self.config = resolve_params(self.name, self.PARAMS, params)

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Copies of the non-trainable state (buffers) that a checkpoint must keep."""
        return {k: v.detach().clone() for k, v in self.named_buffers()}

    def check_inputs(self, inputs: LossInputs) -> None:
        if self.needs_labels and inputs.labels is None:
            raise ValueError(f"loss {self.name!r} needs labels")
        if self.needs_teacher and inputs.teacher_emb is None:
            raise ValueError(f"loss {self.name!r} needs teacher embeddings")

    def _require_same_dims(self) -> None:
        if self.embedding_size != self.teacher_embedding_size:
            raise ConfigError(
                f"loss {self.name!r}: the student embedding size ({self.embedding_size}) must equal the "
                f"teacher's ({self.teacher_embedding_size}): it classifies the student against teacher-space centres"
            )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())


def l2n(x: torch.Tensor) -> torch.Tensor:
    """Row-wise L2 normalisation."""
    return F.normalize(x, p=2, dim=1)


def make_projector(d_in: int, d_out: int) -> nn.Module:
    """Identity when the sizes match, else a learnable bias-free linear map student -> teacher space."""
    return nn.Identity() if d_in == d_out else nn.Linear(d_in, d_out, bias=False)


class TeacherCenters:
    """Mixin for terms that use frozen (C, Dt) teacher class centres installed by the trainer."""

    def _init_centers(self) -> None:
        self.register_buffer("centers", torch.zeros(self.num_classes, self.teacher_embedding_size))
        self.register_buffer("has_centers", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def set_centers(self, centers: torch.Tensor) -> None:
        """Install (C, Dt) teacher class centres (e.g. from `class_centers`); they are re-normalised here."""
        if tuple(centers.shape) != tuple(self.centers.shape):
            raise ValueError(f"loss {self.name!r}: centres must be {tuple(self.centers.shape)}, "
                             f"got {tuple(centers.shape)}")
        self.centers.copy_(l2n(centers.to(self.centers)))
        self.has_centers.fill_(True)
