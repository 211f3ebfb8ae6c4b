"""Training faces without identity: the label UNLABELLED and a source that appends such faces to a labelled
set (distill.generated_faces: DCGAN faces for the label-free loss terms)."""

from __future__ import annotations

import numpy as np

from ..io import sha256_json

UNLABELLED = -1


class WithUnlabelled:
    """The faces of `labelled` followed by those of `unlabelled`, whose labels become UNLABELLED (-1): a
    training set with extra faces for the loss terms that need no identity (distill.generated_faces)."""

    def __init__(self, labelled, unlabelled):
        self.labelled, self.unlabelled = labelled, unlabelled
        self.split = len(labelled)
        self.num_classes, self.class_names = labelled.num_classes, list(getattr(labelled, "class_names", []))
        known = getattr(labelled, "labels", None)
        if known is None:
            known = [labelled.label(i) for i in range(self.split)]
        self.labels = np.concatenate([np.asarray(known, dtype=np.int64),
                                      np.full(len(unlabelled), UNLABELLED, dtype=np.int64)])

    def __len__(self) -> int:
        return len(self.labels)

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def _part(self, i: int):
        return (self.labelled, i) if i < self.split else (self.unlabelled, i - self.split)

    def image(self, i: int) -> np.ndarray | None:
        src, j = self._part(i)
        return src.image(j)

    def describe(self, i: int) -> str:
        src, j = self._part(i)
        return src.describe(j) if hasattr(src, "describe") else f"face {j}"

    def content_hash(self) -> str:
        return sha256_json({"labelled": self.labelled.content_hash(), "unlabelled": self.unlabelled.content_hash()})
