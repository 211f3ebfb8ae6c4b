"""Data containers shared by every reader, metric and runtime."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class VerificationSet:
    """Aligned faces and the pairs to verify.

    images: uint8 (N, 112, 112, 3) RGB aligned faces (each distinct image once).
    pairs:  int64 (P, 2) indices into images.
    issame: bool (P,) whether each pair shows the same person.
    folds:  int (P,) fold id of each pair (LFW's 10 folds; insightface's consecutive split for .bin).
    """

    name: str
    images: np.ndarray
    pairs: np.ndarray
    issame: np.ndarray
    folds: np.ndarray
    skipped: int = 0  # pairs dropped because an image could not be read (data.on_error=skip)
    source: str = ""

    def __post_init__(self):
        assert self.images.ndim == 4 and self.images.shape[-1] == 3 and self.images.dtype == np.uint8
        assert self.pairs.shape == (len(self.issame), 2)


@dataclass
class LabelledFaces:
    """A labelled training set: paths (or record ids) and integer class labels 0..num_classes-1."""

    name: str
    items: list  # paths or record keys, readable by `load`
    labels: np.ndarray
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    source: str = ""  # the folder or .rec the items belong to (folder items are paths relative to it)
    skipped: int = 0  # listed images left out because they are missing (data.on_error=skip)
