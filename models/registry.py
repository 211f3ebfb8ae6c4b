"""The architecture registry: a name -> builder(embedding_size, **kwargs) table for every network we train."""

from __future__ import annotations

from typing import Callable

from torch import nn

from facepipe.pipeline.errors import FacepipeError, ModelError
from facepipe.pipeline.registry import Registry

from . import iresnet
from .mobilefacenet import MobileFaceNet
from .onnx_graph import ARCH as ONNX_GRAPH, OnnxGraphNet

MODELS: Registry[Callable[..., nn.Module]] = Registry("architecture")

MODELS.register("mobilefacenet", MobileFaceNet)
for _name in iresnet.DEPTHS:
    MODELS.register(_name, getattr(iresnet, _name))
MODELS.register(ONNX_GRAPH, OnnxGraphNet)  # an imported ONNX graph: built from its spec (arch_kwargs graph=...)


def build_model(arch: str, embedding_size: int = 512, **kwargs) -> nn.Module:
    """Build a registered architecture with a fresh initialisation; unknown names raise ModelError."""
    try:
        builder = MODELS.get(arch)
    except FacepipeError as e:
        raise ModelError(str(e)) from None
    if embedding_size < 1:
        raise ModelError(f"embedding size must be a positive integer, got {embedding_size}")
    return builder(embedding_size=embedding_size, **kwargs)


def list_models() -> list[str]:
    """Registered architecture names, in registration order."""
    return MODELS.names()
