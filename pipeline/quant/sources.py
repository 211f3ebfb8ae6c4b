"""Calibration / fine-tuning faces for the quantize stage, from one of three sources (quantize.data):

- real: an image set (quantize.data_path, else data.train): the first quantize.images faces of a
  deterministic random subset (seed run.seed);
- synthetic: a folder of generated faces (quantize.data_path; images that are not 112x112 are aligned, see
  pipeline/data/synthetic/faces.py), or, when data_path is null, the DCGAN of gan-face-generate==1.1.1
  (pipeline/data/synthetic/dcgan.py);
- inversion: DeepInversion images synthesised from the fp32 model itself (pipeline/data/synthetic/inversion.py).

Every source returns uint8 RGB faces (N, 112, 112, 3).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .plan import QuantPlan

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class FaceSet:
    """Faces for calibration and QAT, with where they came from (for metrics.json)."""

    faces: np.ndarray
    kind: str
    origin: str
    info: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {"data": self.kind, "origin": self.origin, "images": int(len(self.faces)), **self.info}


def subset(total: int, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of n out of total (all of them when n >= total)."""
    if n >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))


def list_images(root: Path) -> list[Path]:
    """Image files anywhere under root, in sorted order (hidden files and folders left out)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames)
                if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return out


def _is_training_set(path: Path) -> bool:
    """A .rec file or a folder with identities.tsv / train.rec: read through open_face_source."""
    return path.suffix in (".rec", ".idx") or (path.is_dir() and ((path / "identities.tsv").is_file()
                                                                  or (path / "train.rec").is_file()))


def read_training_set(path: Path, n: int, seed: int, on_error: str) -> FaceSet:
    """n faces of a training set (ImageFolder with identities.tsv, or RecordIO) via open_face_source."""
    from ..data.imagefolder import open_face_source

    source = open_face_source(path, on_error=on_error)
    faces, skipped = [], 0
    for i in subset(len(source), n, seed):
        img = source.image(int(i))
        if img is None:
            skipped += 1
            continue
        faces.append(img)
    if not faces:
        raise DataError(f"{path}: none of the {len(source)} faces could be read (all skipped); fix the set")
    return FaceSet(np.stack(faces), "real", str(path), {"available": len(source), "skipped": skipped})


def read_folder(path: Path, n: int, seed: int, on_error: str, kind: str, key: str) -> FaceSet:
    """n faces from image files under `path` (any layout); non-112x112 images are aligned (data/synthetic/faces.py)."""
    from ..data.images import read_image_rgb
    from ..data.synthetic.faces import align_image

    files = list_images(path)
    if not files:
        raise DataError(f"{path} ({key}): no images found (looked for {', '.join(IMAGE_EXTENSIONS)} files in it and "
                        "its sub-folders); put face images there or point the key elsewhere")
    faces, skipped = [], 0
    counts = {"as_is": 0, "landmarks": 0, "centre_crop": 0}
    for i in subset(len(files), n, seed):
        img = read_image_rgb(files[i], on_error)  # DataError naming the file, or None with on_error=skip
        if img is None:
            skipped += 1
            continue
        face, how = align_image(img)
        counts[how] += 1
        faces.append(face)
    if not faces:
        raise DataError(f"{path} ({key}): none of the {len(files)} images could be read (all skipped)")
    return FaceSet(np.stack(faces), kind, str(path), {"available": len(files), "skipped": skipped,
                                                      "alignment": counts})


def _configured_path(plan: QuantPlan, value: str, key: str) -> Path:
    p = Path(os.path.expanduser(value))
    p = p if p.is_absolute() else plan.base_dir / p
    if not p.exists():
        raise ConfigError(f"{key}={value!r}: {p} does not exist; point {key} to a folder of face images")
    return p


def data_path(plan: QuantPlan) -> Path | None:
    """The image set the configured source reads (None for the DCGAN and for inversion)."""
    q = plan.q
    if q.data == "inversion":
        return None
    if q.data_path:
        return _configured_path(plan, q.data_path, "quantize.data_path")
    if q.data == "real":
        train = Path(plan.train)
        if train.is_absolute():
            return _configured_path(plan, str(train), "data.train")
        root = plan.data_root
        if root is None:
            raise ConfigError("quantize.data=real needs quantize.data_path, or data.train under a data root "
                              "(data.root / $FACEPIPE_DATA)")
        return _configured_path(plan, str(root / train), "data.train")
    return None


def load_faces(plan: QuantPlan, model=None, preprocess=None) -> FaceSet:
    """The configured faces; `model` (fp32, with BatchNorm) and its `preprocess` are needed for inversion."""
    q = plan.q
    seed = plan.seed
    if q.data == "inversion":
        from ..data.synthetic.inversion import invert_faces

        if model is None or preprocess is None:
            raise ValueError("inversion needs the fp32 model and its preprocessing")
        faces, report = invert_faces(model, q.inversion, q.batch_size, preprocess)
        return FaceSet(faces, "inversion", "deepinversion", report.summary())
    path = data_path(plan)
    if path is None:  # synthetic without a folder: the packaged DCGAN
        from ..data.synthetic.dcgan import PACKAGE, dcgan_faces

        faces, counts = dcgan_faces(q.images, seed)
        return FaceSet(faces, "synthetic", f"dcgan:{PACKAGE}", {"alignment": counts, "seed": seed})
    key = "quantize.data_path" if q.data_path else "data.train"
    if _is_training_set(path):
        found = read_training_set(path, q.images, seed, plan.on_error)
        found.kind = q.data
        return found
    if not path.is_dir():
        raise ConfigError(f"{key}: {path} is not a folder of images (nor a .rec training set)")
    return read_folder(path, q.images, seed, plan.on_error, q.data, key)
