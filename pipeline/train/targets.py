"""Teacher embeddings for a training batch: looked up in the teacher cache, or computed online.

The cache holds the teacher's embedding of every training face (and of its mirror image when built with
teacher.flip), so it can serve batches whose only augmentation is a horizontal flip. Any other random
augmentation changes the pixels the teacher must see, and the teacher runs online on the augmented batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from facepipe.pipeline.errors import ConfigError


class CachedTargets:
    """Rows of the teacher cache: embeddings[i], or flipped[i] for a mirrored sample."""

    mode = "cache"

    def __init__(self, embeddings: np.ndarray, flipped: np.ndarray | None = None, where: str = "teacher cache"):
        self.embeddings, self.flipped, self.where = embeddings, flipped, where

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def __call__(self, batch: dict) -> torch.Tensor:
        idx = batch["index"].numpy()
        flip = batch["flip"].numpy()
        out = np.array(self.embeddings[idx], dtype=np.float32)
        if flip.any():
            if self.flipped is None:
                raise ConfigError(f"{self.where} has no mirrored-face embeddings but the batch is flipped: "
                                  "set teacher.flip=true (then re-run the teacher stage) or distill.augment.flip=false")
            out[flip] = self.flipped[idx[flip]]
        return torch.from_numpy(out)


class OnlineTargets:
    """The teacher Embedder run on the (augmented) uint8 faces of the batch."""

    mode = "online"

    def __init__(self, embedder, batch_size: int = 64):
        self.embedder, self.batch_size = embedder, batch_size

    @property
    def dim(self) -> int:
        return int(self.embedder.dim)

    def __call__(self, batch: dict) -> torch.Tensor:
        faces = batch["faces"].numpy()
        return torch.from_numpy(self.embedder.embed(faces, batch_size=self.batch_size))


@dataclass(frozen=True)
class ModeChoice:
    mode: str  # "cache" or "online"
    reason: str


def choose_teacher_mode(requested: str, augment, has_cache: bool, cache_has_flip: bool) -> ModeChoice:
    """Decide cache vs online for distill.teacher_mode (auto | cache | online) and the augmentation."""
    blockers = []
    if not has_cache:
        blockers.append("no teacher cache (teacher.cache is false)")
    if augment.shift or augment.color:
        blockers.append(f"random augmentation beyond flips (distill.augment.shift={augment.shift}, "
                        f"color={augment.color}) changes the pixels the teacher must see")
    if augment.flip and has_cache and not cache_has_flip:
        blockers.append("flip augmentation but the cache has no mirrored-face embeddings "
                        "(set teacher.flip=true, or distill.augment.flip=false)")
    if requested == "online":
        return ModeChoice("online", "distill.teacher_mode=online")
    if requested == "cache":
        if blockers:
            raise ConfigError("distill.teacher_mode=cache cannot be used: " + "; ".join(blockers))
        return ModeChoice("cache", "distill.teacher_mode=cache")
    if requested != "auto":
        raise ConfigError(f"distill.teacher_mode must be auto, cache or online, got {requested!r}")
    if blockers:
        return ModeChoice("online", "auto: " + "; ".join(blockers))
    return ModeChoice("cache", "auto: the cache covers every batch")


def teacher_class_centers(embeddings: np.ndarray, labels: np.ndarray, num_classes: int,
                          chunk: int = 65536) -> torch.Tensor:
    """(C, D) float32: per class, the normalised mean of the L2-normalised teacher embeddings (chunked, so a
    memory-mapped cache of millions of rows is never loaded whole). Classes without samples get zero rows."""
    sums = torch.zeros(num_classes, embeddings.shape[1], dtype=torch.float64)
    for start in range(0, len(labels), chunk):
        e = torch.from_numpy(np.asarray(embeddings[start:start + chunk], dtype=np.float64))
        e = torch.nn.functional.normalize(e, dim=1)
        sums.index_add_(0, torch.from_numpy(np.asarray(labels[start:start + chunk], dtype=np.int64)), e)
    return torch.nn.functional.normalize(sums, dim=1).float()
