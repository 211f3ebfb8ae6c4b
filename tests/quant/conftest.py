"""The quantize tests' tiny architecture is registered only while these tests run (the registry is global)."""

from __future__ import annotations

import pytest

from facepipe.models.registry import MODELS

from quant_synth import TINY, TinyFaceNet


@pytest.fixture(scope="module", autouse=True)
def tiny_arch():
    MODELS._items[TINY] = TinyFaceNet
    yield TINY
    MODELS._items.pop(TINY, None)
