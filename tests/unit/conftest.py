"""Fixtures shared by the unit tests of embedders and teachers."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def mfn():
    """A seeded MobileFaceNet (embedding 128) in eval mode: the reference network for parity checks."""
    from facepipe.models.registry import build_model

    torch.manual_seed(0)
    return build_model("mobilefacenet", embedding_size=128).eval()
