"""Batched face augmentation: translation, scale and brightness / contrast as tensor ops on a uint8 batch.

One renderer serves both kinds of augmentation:
- online random augmentation: fresh parameters per (seed, epoch, sample); the teacher must then run online;
- cached views: `views` fixed augmented copies of every face, parameters per (view, sample) drawn from a fixed
  key, so the teacher stage renders the very same pixels and caches their embeddings (and their mirrors'),
  and distillation picks a cached view per sample and epoch with no teacher in the loop.
Parameters are drawn per sample from a key (not from a running RNG), so a face's view never depends on the
batch it lands in, the number of processes or a resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

VIEW_SEED = 0x51E7  # cached views are drawn from this key, not run.seed: every training seed shares one cache


@dataclass(frozen=True)
class ViewSpec:
    """The augmentation distribution: shift in px, scale as a fraction (1 +- scale), colour factor c."""

    shift: int = 0
    scale: float = 0.0
    color: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.shift or self.scale or self.color)

    def to_dict(self) -> dict:
        return {"shift": int(self.shift), "scale": float(self.scale), "color": float(self.color)}

    @classmethod
    def of(cls, augment) -> "ViewSpec":
        """The spec of a distill.augment section."""
        return cls(int(augment.shift), float(getattr(augment, "scale", 0.0)), float(augment.color))


def draw_params(spec: ViewSpec, keys: list[tuple[int, ...]]) -> np.ndarray:
    """(B, 5) float64 rows dx, dy, scale, contrast, brightness: one row per key (one RNG per key)."""
    out = np.zeros((len(keys), 5))
    out[:, 2:] = 1.0
    for row, key in zip(out, keys):
        rng = np.random.default_rng(key)
        if spec.shift:
            row[0:2] = rng.integers(-spec.shift, spec.shift + 1, size=2)
        if spec.scale:
            row[2] = rng.uniform(1 - spec.scale, 1 + spec.scale)
        if spec.color:
            row[3:5] = rng.uniform(1 - spec.color, 1 + spec.color, size=2)
    return out


def view_params(spec: ViewSpec, index: np.ndarray, view: np.ndarray) -> np.ndarray:
    """Parameters of cached view `view[j]` (1..V) of face `index[j]`."""
    return draw_params(spec, [(VIEW_SEED, int(v), int(i)) for i, v in zip(index, view)])


def random_params(spec: ViewSpec, seed: int, epoch: int, index: np.ndarray) -> np.ndarray:
    """Parameters of the online random augmentation of face `index[j]` in `epoch`."""
    return draw_params(spec, [(int(seed), int(epoch), int(i), 0xA06) for i in index])


def render(faces: torch.Tensor, params: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) faces moved by (dx, dy) px, scaled about the centre (edges replicated) and
    colour-jittered: y = (x - mean) * contrast + mean * brightness, per image; uint8 out."""
    if len(faces) == 0:
        return faces
    b, h, w, _ = faces.shape
    p = torch.as_tensor(params, dtype=torch.float32)
    x = faces.permute(0, 3, 1, 2).float()
    geometric = bool((p[:, 0:2] != 0).any() or (p[:, 2] != 1).any())
    if geometric:
        # output pixel u samples the input at u / s - d (normalised coordinates, align_corners=False)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1 / p[:, 2]
        theta[:, 0, 2] = -2 * p[:, 0] / w
        theta[:, 1, 2] = -2 * p[:, 1] / h
        grid = F.affine_grid(theta, [b, 3, h, w], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if bool((p[:, 3:5] != 1).any()):
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * p[:, 3].view(b, 1, 1, 1) + mean * p[:, 4].view(b, 1, 1, 1)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def mirror(faces: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """The faces with rows where `flip` is true mirrored left-right (uint8 (B, H, W, 3))."""
    if not bool(flip.any()):
        return faces
    out = faces.clone()
    out[flip] = faces[flip].flip(2)
    return out


def augment_batch(faces: torch.Tensor, index: np.ndarray, flip: torch.Tensor, view: np.ndarray, spec: ViewSpec,
                  online: tuple[int, int] | None = None) -> torch.Tensor:
    """A training batch's pixels: cached view `view[j]` of each face (0: the face itself), or with
    `online=(seed, epoch)` a fresh random augmentation of every face; then the mirror where `flip`."""
    if online is not None and spec.active:
        faces = render(faces, random_params(spec, online[0], online[1], index))
    elif spec.active and (view > 0).any():
        rows = np.flatnonzero(view > 0)
        faces = faces.clone()
        faces[rows] = render(faces[rows], view_params(spec, index[rows], view[rows]))
    return mirror(faces, flip)


def cached_views(augment) -> dict | None:
    """What the teacher cache must hold for a distill.augment section: {"count", "spec"}, or None (no views)."""
    spec = ViewSpec.of(augment)
    count = int(getattr(augment, "views", 0) or 0)
    return {"count": count, "spec": spec.to_dict()} if count and spec.active else None


def cache_flip(cfg) -> bool:
    """Whether the teacher cache holds mirrored faces' embeddings: for flip-fused evaluation (teacher.flip) or
    for flip augmentation (distill.augment.flip), which needs them without fusing every evaluation."""
    return bool(cfg.teacher.flip or cfg.distill.augment.flip)
