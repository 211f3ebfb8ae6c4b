"""Training batches: labelled uint8 faces from a FaceSource, augmented deterministically per (seed, epoch, index).

The loader hands over uint8 RGB faces (so an online teacher can apply its own preprocessing); the student's
input is made on the training device by `student_input` (RGB, (x - 127.5) / 127.5, NCHW).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from facepipe.pipeline.embedder import STUDENT_PREPROCESS, Preprocess, resize_faces
from facepipe.pipeline.errors import DataError



class FaceSource(Protocol):
    """What training needs from a reader (facepipe.pipeline.data.imagefolder.FaceSource)."""

    num_classes: int

    def __len__(self) -> int: ...

    def label(self, i: int) -> int: ...

    def image(self, i: int) -> np.ndarray: ...

    def content_hash(self) -> str: ...


def read_labels(source: FaceSource, where: str = "training set") -> np.ndarray:
    """All labels as int64, checked to lie in 0 .. num_classes - 1 (DataError naming the record otherwise)."""
    n = len(source)
    if n == 0:
        raise DataError(f"{where} is empty: no labelled faces to train on")
    num_classes = int(source.num_classes)
    if num_classes < 1:
        raise DataError(f"{where} declares {num_classes} classes")
    listed = getattr(source, "labels", None)  # readers keep the whole label array; else ask per record
    if isinstance(listed, np.ndarray) and listed.shape == (n,):
        labels = listed.astype(np.int64, copy=False)
    else:
        labels = np.fromiter((int(source.label(i)) for i in range(n)), dtype=np.int64, count=n)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{where}: record {i} has label {int(labels[i])}, outside 0..{num_classes - 1} "
                        f"(num_classes={num_classes}; {len(bad)} bad record(s) in all)")
    return labels


def augment_face(img: np.ndarray, flip: bool, shift: int, color: float, rng_key: tuple[int, ...]) -> np.ndarray:
    """Mirror, then translate by up to `shift` px (edges replicated) and jitter brightness / contrast."""
    if flip:
        img = img[:, ::-1]
    if shift or color:
        rng = np.random.default_rng(rng_key)
        if shift:
            dy, dx = rng.integers(-shift, shift + 1, size=2)
            h, w = img.shape[:2]
            padded = np.pad(img, ((shift, shift), (shift, shift), (0, 0)), mode="edge")
            img = padded[shift + dy: shift + dy + h, shift + dx: shift + dx + w]
        if color:
            contrast, brightness = rng.uniform(1 - color, 1 + color, size=2)
            x = img.astype(np.float32)
            mean = x.mean()
            img = np.clip((x - mean) * contrast + mean * brightness, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


class FaceDataset(torch.utils.data.Dataset):
    """Indexed by (sample index, flip, epoch) keys from sampler.EpochBatches."""

    def __init__(self, source: FaceSource, labels: np.ndarray, *, size: int = 112, shift: int = 0,
                 color: float = 0.0, seed: int = 0):
        self.source, self.labels, self.size = source, labels, size
        self.shift, self.color, self.seed = shift, color, seed

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, bool, int]) -> tuple[np.ndarray, int, int, bool]:
        i, flip, epoch = key
        img = self.source.image(i)
        where = self.source.describe(i) if hasattr(self.source, "describe") else f"training record {i}"
        if img is None:
            raise DataError(f"{where} could not be read (data.on_error=skip does not apply to training: remove "
                            "it from the training set, then re-run the teacher stage)")
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise DataError(f"{where}: expected a uint8 RGB HxWx3 face, got "
                            f"{getattr(img, 'dtype', type(img).__name__)} {getattr(img, 'shape', '')}")
        if img.shape[:2] != (self.size, self.size):
            img = resize_faces(img[None], self.size)[0]
        img = augment_face(img, flip, self.shift, self.color, (self.seed, epoch, i, 0xA06))
        return img, int(self.labels[i]), int(i), bool(flip)


def collate(items: list[tuple[np.ndarray, int, int, bool]]) -> dict[str, Any]:
    faces, labels, index, flip = zip(*items)
    return {"faces": torch.from_numpy(np.stack(faces)), "labels": torch.tensor(labels, dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64), "flip": torch.tensor(flip, dtype=torch.bool)}


def student_input(faces: torch.Tensor, device: torch.device, pre: Preprocess = STUDENT_PREPROCESS) -> torch.Tensor:
    """uint8 (B, H, W, 3) RGB -> float32 (B, 3, H, W) normalised as `pre` says, on `device`."""
    x = faces.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    if pre.color == "BGR":
        x = x.flip(1)
    mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    if pre.standardize:
        from ..embedder import standardize_images

        x = standardize_images(x)
    return x.contiguous()
