"""Training batches: labelled uint8 faces from a FaceSource (or its decoded memmap), augmented per batch.

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


def checked_face(img, where: str, size: int) -> np.ndarray:
    """A decoded training face as uint8 RGB (size, size, 3), or a DataError naming `where`."""
    if img is None:
        raise DataError(f"{where} could not be read (data.on_error=skip does not apply to training: remove "
                        "it from the training set, then re-run the teacher stage)")
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise DataError(f"{where}: expected a uint8 RGB HxWx3 face, got "
                        f"{getattr(img, 'dtype', type(img).__name__)} {getattr(img, 'shape', '')}")
    return img if img.shape[:2] == (size, size) else resize_faces(img[None], size)[0]


class BatchReader(torch.utils.data.Dataset):
    """Whole training batches from sampler keys [(index, flip, epoch, view), ...]: the faces (decoded from
    the source's files, or gathered from the decoded memmap), augmented as one batch (views.augment_batch).

    Used as a DataLoader dataset with batch_size=None, so workers, when any, build whole batches.
    """

    def __init__(self, source: FaceSource, labels: np.ndarray, *, decoded: np.ndarray | None = None,
                 spec=None, online: bool = False, seed: int = 0, size: int = 112):
        from facepipe.pipeline.data.views import ViewSpec

        self.source, self.labels, self.decoded, self.size = source, labels, decoded, size
        self.spec, self.online, self.seed = spec or ViewSpec(), online, seed

    def __len__(self) -> int:
        return len(self.labels)

    def faces(self, index: np.ndarray) -> torch.Tensor:
        """uint8 (B, size, size, 3) faces at `index`, unaugmented."""
        if self.decoded is not None:
            order = np.argsort(index, kind="stable")  # a memmap gathers fastest in file order
            out = np.empty((len(index), self.size, self.size, 3), np.uint8)
            out[order] = self.decoded[index[order]]
            return torch.from_numpy(out)
        describe = getattr(self.source, "describe", lambda i: f"training record {i}")
        return torch.from_numpy(np.stack([checked_face(self.source.image(int(i)), describe(int(i)), self.size)
                                          for i in index]))

    def __getitem__(self, keys: list[tuple[int, bool, int, int]]) -> dict[str, Any]:
        from facepipe.pipeline.data.views import augment_batch

        index = np.array([k[0] for k in keys], dtype=np.int64)
        flip = torch.tensor([bool(k[1]) for k in keys], dtype=torch.bool)
        view = np.array([k[3] if len(k) > 3 else 0 for k in keys], dtype=np.int64)
        epoch = int(keys[0][2]) if keys else 0
        faces = augment_batch(self.faces(index), index, flip, view, self.spec,
                              online=(self.seed, epoch) if self.online else None)
        return {"faces": faces, "labels": torch.from_numpy(self.labels[index].astype(np.int64)),
                "index": torch.from_numpy(index), "flip": flip, "view": torch.from_numpy(view)}


def as_is(batch):
    """DataLoader collate for readers that already return whole batches."""
    return batch


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
