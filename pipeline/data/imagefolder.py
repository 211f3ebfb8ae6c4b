"""Labelled training faces: image folders (root/identity/img.jpg or identities.tsv) and RecordIO, behind one
small FaceSource interface that the trainer and the teacher-embedding cache read from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import DataError
from ..io import inside, sha256_json
from .images import SKIP_HINT, check_on_error, decode_image_rgb, read_image_rgb
from .types import LabelledFaces

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
FACE_SIZE = 112


def _sorted_identities(names) -> list[str]:
    names = set(names)
    if all(n.isdigit() for n in names):  # CelebA-style numeric identities: 9 before 10
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def _read_identities_tsv(root: Path, tsv: Path, on_error: str) -> tuple[list[str], list[str], int]:
    try:
        text = tsv.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{tsv}: cannot read ({e})") from None
    rels, ids, seen, skipped = [], [], set(), 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        f = line.split("\t")
        if len(f) != 2 or not f[0].strip() or not f[1].strip():
            raise DataError(f"{tsv.name} line {lineno}: expected 'relpath<TAB>identity', got {line!r}")
        rel, ident = f[0].strip(), f[1].strip()
        inside(root, rel, f"{tsv.name} line {lineno}")
        if rel in seen:
            raise DataError(f"{tsv.name} line {lineno}: {rel} is listed twice")
        seen.add(rel)
        if not (root / rel).is_file():
            if on_error == "skip":
                skipped += 1
                continue
            raise DataError(f"{tsv.name} line {lineno}: image {root / rel} not found; fix the list, or set "
                            f"{SKIP_HINT} to leave it out")
        rels.append(rel)
        ids.append(ident)
    return rels, ids, skipped


def _scan_folders(root: Path) -> tuple[list[str], list[str]]:
    rels, ids = [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(d.iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS:
                rels.append(f"{d.name}/{f.name}")
                ids.append(d.name)
    return rels, ids


def read_image_folder(root: str | os.PathLike, on_error: str = "fail") -> LabelledFaces:
    """List root/<identity>/<image> (or root/identities.tsv: relpath<TAB>identity) as labelled faces.

    Labels are 0..C-1 in sorted identity order (numeric when every identity is a number); items are paths
    relative to root, grouped by label. Images are not decoded here.
    """
    check_on_error(on_error)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: training folder not found")
    tsv = root / "identities.tsv"
    skipped = 0
    if tsv.is_file():
        rels, ids, skipped = _read_identities_tsv(root, tsv, on_error)
    else:
        rels, ids = _scan_folders(root)
    if not rels:
        raise DataError(f"{root}: no images found; expected {root}/<identity>/<image>.jpg or an identities.tsv "
                        f"of 'relpath<TAB>identity' lines")
    names = _sorted_identities(ids)
    label_of = {n: i for i, n in enumerate(names)}
    labels = np.array([label_of[i] for i in ids], dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    return LabelledFaces(name=root.name, items=[rels[i] for i in order], labels=labels[order],
                         num_classes=len(names), class_names=names, source=str(root), skipped=skipped)


def _is_rec(path: Path) -> bool:
    return path.suffix in (".rec", ".idx") or (path.is_dir() and (path / "train.rec").is_file()
                                               and not (path / "identities.tsv").is_file())


def load_training_set(path: str | os.PathLike, on_error: str = "fail") -> LabelledFaces:
    """Labelled faces of an image folder or a RecordIO set (.rec/.idx, or a folder holding train.rec)."""
    from .recordio import read_rec_dataset

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: training set not found; set data.train to an image folder or a .rec file")
    return read_rec_dataset(path) if _is_rec(path) else read_image_folder(path, on_error)


@runtime_checkable
class FaceSource(Protocol):
    """Indexed aligned training faces, whatever the storage."""

    num_classes: int
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int: ...

    def label(self, i: int) -> int: ...

    def image(self, i: int) -> np.ndarray | None:
        """uint8 RGB (112, 112, 3); None only when on_error="skip" and the image cannot be used."""
        ...

    def content_hash(self) -> str:
        """Stable hash of what the source lists (items, labels), for cache keys; reads no pixels."""
        ...


class _SourceBase:
    def __init__(self, faces: LabelledFaces, on_error: str):
        self.faces = faces
        self.on_error = check_on_error(on_error)
        self.num_classes = faces.num_classes
        self.labels = faces.labels
        self.class_names = faces.class_names
        self._hash: str | None = None

    def __len__(self) -> int:
        return len(self.faces.items)

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def _checked(self, img: np.ndarray | None, where: str) -> np.ndarray | None:
        if img is None or img.shape[:2] == (FACE_SIZE, FACE_SIZE):
            return img
        if self.on_error == "skip":
            return None
        raise DataError(f"{where}: image is {img.shape[1]}x{img.shape[0]}, not an aligned {FACE_SIZE}x{FACE_SIZE} "
                        f"face; align the set first (`facepipe data align`)")


class FolderSource(_SourceBase):
    """Faces stored as image files under a root folder."""

    def __init__(self, faces: LabelledFaces, on_error: str = "fail"):
        super().__init__(faces, on_error)
        self.root = Path(faces.source)

    def describe(self, i: int) -> str:
        """Where face i comes from, for messages: its file."""
        return str(self.root / self.faces.items[i])

    def image(self, i: int) -> np.ndarray | None:
        path = self.root / self.faces.items[i]
        return self._checked(read_image_rgb(path, self.on_error), str(path))

    def content_hash(self) -> str:
        """Hash of the listing and of every image's bytes (memoised by stat in the hash cache, so a file
        replaced by another of the same size is seen; a missing one hashes as None)."""
        if self._hash is None:
            from ..manifest import hash_files

            files = []
            for rel in self.faces.items:
                p = os.path.join(self.root, rel)
                try:
                    files.append((p, os.stat(p)))
                except OSError:
                    files.append((p, None))
            digests = hash_files(files, label=f"training images in {self.root.name}")
            self._hash = sha256_json({"format": "folder", "items": self.faces.items, "sha256": digests,
                                      "labels": self.labels.tolist(), "classes": self.class_names})
        return self._hash


class RecSource(_SourceBase):
    """Faces stored as JPEG records of an indexed RecordIO file."""

    def __init__(self, faces: LabelledFaces, on_error: str = "fail"):
        from .recordio import RecordIOReader

        super().__init__(faces, on_error)
        self.reader = RecordIOReader(faces.source)

    def describe(self, i: int) -> str:
        """Where face i comes from, for messages: the .rec file and the record."""
        return f"{self.reader.rec_path}: record {self.faces.items[i]}"

    def image(self, i: int) -> np.ndarray | None:
        key = self.faces.items[i]
        where = f"{self.reader.rec_path}: record {key}"
        _, payload = self.reader.read(key)
        return self._checked(decode_image_rgb(payload, where, self.on_error), where)

    def content_hash(self) -> str:
        """Hash of the listing and of the .rec and .idx bytes (memoised by stat in the hash cache)."""
        if self._hash is None:
            from ..manifest import hash_files

            idx = self.reader.idx_path
            files = [(str(p), os.stat(p)) for p in (self.reader.rec_path, idx) if p is not None]
            digests = hash_files(files, label=Path(self.reader.rec_path).name)
            self._hash = sha256_json({"format": "rec", "items": self.faces.items, "labels": self.labels.tolist(),
                                      "classes": self.class_names, "rec": digests[0],
                                      "idx": digests[1] if idx is not None else None})
        return self._hash


class SubsetSource:
    """The faces of `base` at `keep` (sorted indices), renumbered 0..len(keep)-1: a training set without the
    faces an earlier stage could not read."""

    def __init__(self, base, keep: np.ndarray):
        self.base, self.keep = base, np.asarray(keep, dtype=np.int64)
        self.num_classes, self.class_names = base.num_classes, base.class_names
        self.labels = np.asarray(base.labels)[self.keep]

    def __len__(self) -> int:
        return len(self.keep)

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def image(self, i: int) -> np.ndarray | None:
        return self.base.image(int(self.keep[i]))

    def describe(self, i: int) -> str:
        return self.base.describe(int(self.keep[i]))

    def content_hash(self) -> str:
        return sha256_json({"base": self.base.content_hash(), "keep": self.keep.tolist()})


def open_face_source(path: str | os.PathLike, on_error: str = "fail") -> FaceSource:
    """A FaceSource over an image folder or a RecordIO set, picked from the path."""
    faces = load_training_set(path, on_error)
    return RecSource(faces, on_error) if _is_rec(Path(path)) else FolderSource(faces, on_error)
