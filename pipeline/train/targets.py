"""Teacher embeddings for a training batch: looked up in the teacher cache, or computed online.

The cache holds the teacher's embedding of every training face (and of its mirror image when built with
teacher.flip), and of distill.augment.views fixed augmented views of it (data/views.py), so it serves
batches augmented by flips and cached views. Fresh random augmentation (shift / scale / color with views: 0)
changes the pixels the teacher must see, and the teacher runs online on the augmented batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from facepipe.pipeline.errors import ConfigError


class CachedTargets:
    """Rows of the teacher cache: embeddings[i], or flipped[i] for a mirrored sample; views[v - 1][i] (and
    views_flipped) for cached view v."""

    mode = "cache"

    def __init__(self, embeddings: np.ndarray, flipped: np.ndarray | None = None, where: str = "teacher cache",
                 views: np.ndarray | None = None, views_flipped: np.ndarray | None = None):
        self.embeddings, self.flipped, self.where = embeddings, flipped, where
        self.views, self.views_flipped = views, views_flipped

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
                                  "re-run the teacher stage (it caches mirrored faces when distill.augment.flip or teacher.flip is set) "
                                  "or set distill.augment.flip=false")
            out[flip] = self.flipped[idx[flip]]
        view = batch["view"].numpy() if "view" in batch else np.zeros(len(idx), np.int64)
        for v in np.unique(view[view > 0]):
            if self.views is None or v > len(self.views):
                raise ConfigError(f"{self.where} holds {0 if self.views is None else len(self.views)} augmented "
                                  f"views but the batch asks for view {int(v)}: re-run the teacher stage")
            for mirrored, table in ((False, self.views), (True, self.views_flipped)):
                rows = np.flatnonzero((view == v) & (flip == mirrored))
                if len(rows):
                    out[rows] = table[v - 1][idx[rows]]
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


def choose_teacher_mode(requested: str, augment, has_cache: bool, cache_has_flip: bool,
                        cache_views: int = 0) -> ModeChoice:
    """Decide cache vs online for distill.teacher_mode (auto | cache | online) and the augmentation."""
    from facepipe.pipeline.data.views import ViewSpec

    blockers = []
    views = int(getattr(augment, "views", 0) or 0)
    if not has_cache:
        blockers.append("no teacher cache (teacher.cache is false)")
    if ViewSpec.of(augment).active and not views:
        blockers.append(f"random augmentation beyond flips (distill.augment.shift={augment.shift}, "
                        f"scale={getattr(augment, 'scale', 0.0)}, color={augment.color}) with views: 0 changes the "
                        "pixels the teacher must see (set distill.augment.views to cache fixed views)")
    if views and has_cache and cache_views != views:
        blockers.append(f"distill.augment.views={views} but the cache holds {cache_views} views "
                        "(re-run the teacher stage)")
    if augment.flip and has_cache and not cache_has_flip:
        blockers.append("flip augmentation but the cache has no mirrored-face embeddings "
                        "(re-run the teacher stage: it caches them when distill.augment.flip or teacher.flip is set)")
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
