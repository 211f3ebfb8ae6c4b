"""Guards for checks that compare models: a comparison of collapsed embeddings (every face the same vector)
passes whatever the code under test does, so each such test first asserts that its input spreads."""

from __future__ import annotations

import numpy as np

from facepipe.pipeline.eval.metrics import COLLAPSE_STD, embedding_spread


def assert_not_collapsed(emb: np.ndarray, what: str, min_std: float | None = None) -> dict:
    """Assert that the rows of `emb` are not one direction (pairwise cosine std >= min_std, default the
    product's COLLAPSE_STD); returns the spread statistics."""
    spread = embedding_spread(emb)
    floor = COLLAPSE_STD if min_std is None else min_std
    assert spread["cos_std"] >= floor and not spread["collapsed"], (
        f"{what}: embeddings are collapsed (pairwise cosine mean {spread['cos_mean']:.5f}, std "
        f"{spread['cos_std']:.2e} over {spread['n']} inputs): a comparison on them cannot fail")
    return spread
