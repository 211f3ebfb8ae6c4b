"""The loss registry (`LOSSES`) and `build_loss`."""

from __future__ import annotations

from typing import Callable

from facepipe.pipeline.errors import ConfigError, FacepipeError
from facepipe.pipeline.registry import Registry

from .base import LossTerm

LOSSES: Registry[type[LossTerm]] = Registry("loss")


def register_loss(name: str) -> Callable[[type[LossTerm]], type[LossTerm]]:
    """Class decorator: set `cls.name` and register the class under it."""

    def add(cls: type[LossTerm]) -> type[LossTerm]:
        cls.name = name
        return LOSSES.register(name, cls)

    return add


def build_loss(
    name: str, *, num_classes: int, embedding_size: int, teacher_embedding_size: int | None = None, **params
) -> LossTerm:
    """Build a registered loss term; unknown names (with did-you-mean), params or values raise ConfigError."""
    try:
        cls = LOSSES.get(name)
    except FacepipeError as e:
        raise ConfigError(str(e)) from None
    return cls(
        num_classes=num_classes,
        embedding_size=embedding_size,
        teacher_embedding_size=teacher_embedding_size,
        **params,
    )


def list_losses() -> list[str]:
    """Registered loss names, in registration order."""
    return LOSSES.names()
