"""Verification pair sets of image files: one loader for LFW, CFP and any user's folder + pairs list.

A pairs list is read into `PairRef`s (two image paths, same or not, fold, the line that named them); then
`load_pair_set` reads every distinct image once and brings it onto the 112x112 ArcFace template: taken as
it is when declared aligned, else aligned from a landmarks file or with YuNet.

`read_pair_list` reads the common forms, each line on its own (tab-separated, or whitespace without tabs):
  Name<TAB>a<TAB>b               same person; a, b image stems under <root>/Name/ (or LFW's numbers)
  NameA<TAB>a<TAB>NameB<TAB>b    different people
  pathA<TAB>pathB<TAB>label      paths under the image root, label 1 (same) or 0 (different)
An optional LFW header ("folds<TAB>n" or "n") gives LFW's folds; without one every pair is in fold 0 and
scoring uses 10 folds stratified by label.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io import inside
from ..progress import console, progress
from .images import SKIP_HINT, check_on_error, read_image_rgb
from .types import VerificationSet

ALIGNED_SIZE = 112
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_LABELS = {"1": True, "0": False, "true": True, "false": False, "same": True, "diff": False}


@dataclass(frozen=True)
class PairRef:
    """Two image files of a pairs list, whether they show one person, their fold, and where they were named."""

    a: Path
    b: Path
    issame: bool
    fold: int
    where: str  # "pairs.txt line 12": named in every error about this pair


def _is_path_like(field: str) -> bool:
    return "/" in field or "\\" in field or field.lower().endswith(IMAGE_SUFFIXES)


def resolve_stem(root: Path, person: str, stem: str, where: str) -> Path:
    """The image `stem` of `person` under root: <person>/<stem> if it has a suffix, else the first existing
    <person>/<stem>.<ext>, then LFW's <person>/<person>_<NNNN>.<ext> for a number; the first candidate
    when none exists (reported as missing by the loader, naming the line)."""
    inside(root, person, where)
    if stem.lower().endswith(IMAGE_SUFFIXES):
        return inside(root, f"{person}/{stem}", where)
    names = [f"{stem}{ext}" for ext in IMAGE_SUFFIXES]
    if stem.isdigit():
        names += [f"{person}_{int(stem):04d}{ext}" for ext in IMAGE_SUFFIXES]
    candidates = [inside(root, f"{person}/{n}", where) for n in names]
    if stem.isdigit():  # LFW's own naming first when both could apply: <Name>_0001.jpg is the common case
        candidates = candidates[len(IMAGE_SUFFIXES):] + candidates[:len(IMAGE_SUFFIXES)]
    return next((c for c in candidates if c.is_file()), candidates[0])


def _header(first: str) -> tuple[int, int] | None:
    """(folds, pairs per half) of an LFW header line, or None when the line is a pair."""
    f = first.split()
    if len(f) in (1, 2) and all(x.isdigit() for x in f):
        n = [int(x) for x in f]
        return (1, n[0]) if len(n) == 1 else (n[0], n[1])
    return None


def read_list_lines(path: Path, what: str, hint: str = "") -> list[str]:
    """The lines of a list file (pairs, CFP lists); a missing or unreadable one is a DataError naming it."""
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found{hint}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read {what} ({e})") from None


def read_pair_list(pairs_file: str | os.PathLike, root: str | os.PathLike) -> list[PairRef]:
    """Parse a pairs list in any of the module's forms; image paths resolved under `root` (escapes refused)."""
    pairs_file, root = Path(pairs_file), Path(root)
    lines = read_list_lines(pairs_file, "pairs file")
    body = [(i + 1, ln) for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith("#")]
    if not body:
        raise DataError(f"{pairs_file}: no pairs in it")
    head = _header(body[0][1])
    if head is not None:
        body = body[1:]
        folds, per_half = head
        if len(body) != folds * 2 * per_half:
            raise DataError(f"{pairs_file.name}: header promises {folds} folds x 2 x {per_half} = "
                            f"{folds * 2 * per_half} pairs but the file has {len(body)} pair lines; is it truncated?")
    out = []
    for k, (lineno, ln) in enumerate(body):
        where = f"{pairs_file.name} line {lineno}"
        f = ln.strip().split("\t") if "\t" in ln else ln.split()
        f = [x.strip() for x in f]
        fold = k // (2 * head[1]) if head else 0
        if len(f) == 3 and f[2].lower() in _LABELS and (_is_path_like(f[0]) or _is_path_like(f[1])):
            out.append(PairRef(inside(root, f[0], where), inside(root, f[1], where), _LABELS[f[2].lower()],
                               fold, where))
        elif len(f) == 3:
            out.append(PairRef(resolve_stem(root, f[0], f[1], where), resolve_stem(root, f[0], f[2], where),
                               True, fold, where))
        elif len(f) == 4:
            out.append(PairRef(resolve_stem(root, f[0], f[1], where), resolve_stem(root, f[2], f[3], where),
                               False, fold, where))
        else:
            raise DataError(f"{where}: expected 'Name<TAB>a<TAB>b', 'NameA<TAB>a<TAB>NameB<TAB>b' or "
                            f"'pathA<TAB>pathB<TAB>label (1 same, 0 different)', got {len(f)} fields: {ln.strip()!r}")
    return out


class FaceReader:
    """Reads one image and returns its 112x112 aligned face, or (None, why).

    aligned=True: the file is an aligned crop (a square one of another size is resized to 112);
    aligned=None: 112x112 files are taken as aligned, others aligned (CFP's crops, or its raw images);
    aligned=False: always aligned, from `landmarks` (keys relative to `base`) or YuNet.
    """

    def __init__(self, base: Path, landmarks: dict[str, np.ndarray] | None, aligned: bool | None = False):
        self.base, self.landmarks, self.aligned = base, landmarks, aligned

    def __call__(self, path: Path) -> tuple[np.ndarray | None, str]:
        try:
            img = read_image_rgb(path, on_error="fail")
        except DataError as e:  # the reader's own reason ("image not found", "image is 16000x16000 ..."), no advice
            msg = str(e)
            return None, (msg[len(f"{path}: "):] if msg.startswith(f"{path}: ") else msg).split("; ")[0]
        h, w = img.shape[:2]
        if self.aligned is None and (h, w) == (ALIGNED_SIZE, ALIGNED_SIZE):
            return img, ""
        if self.aligned:
            if h != w:
                return None, (f"declared aligned but {w}x{h}, not a square crop; drop 'aligned' to align it from "
                              "landmarks or YuNet")
            if h != ALIGNED_SIZE:
                from ..embedder import resize_faces

                img = resize_faces(img[None], ALIGNED_SIZE)[0]
            return img, ""
        return self._align(path, img)

    def _align(self, path: Path, img: np.ndarray) -> tuple[np.ndarray | None, str]:
        from .align import align_face

        lm = None
        if self.landmarks is not None:
            lm = self.landmarks.get(Path(os.path.relpath(path, self.base)).as_posix())
        if lm is None:
            from .detect import detect_landmarks

            found = detect_landmarks(img, select="center")
            if found is None:
                return None, "no face detected (no landmarks for it and YuNet found none)"
            lm = found[0]
        try:
            return align_face(img, lm), ""
        except ValueError as e:
            return None, f"cannot align it ({e})"


def load_pair_set(pairs: list[PairRef], name: str, source: str, reader: FaceReader, on_error: str = "fail",
                  workers: int = 2) -> VerificationSet:
    """Read and align each distinct image of `pairs` once. A pair whose image is missing, unreadable or
    faceless raises a DataError naming its line (on_error="fail") or is dropped and counted ("skip")."""
    check_on_error(on_error)
    if not pairs:
        raise DataError(f"{source}: no pairs to verify")
    index: dict[Path, int] = {}
    first: dict[Path, str] = {}
    for p in pairs:
        for path in (p.a, p.b):
            if path not in index:
                index[path], first[path] = len(index), p.where
    paths = list(index)
    if on_error == "fail":  # cheap existence check first, so the error comes before minutes of decoding
        for path in paths:
            if not path.is_file():
                raise DataError(f"{first[path]}: image {path} not found; check the image root, or set {SKIP_HINT} "
                                "to drop the pairs that use it")
    images = np.zeros((len(paths), ALIGNED_SIZE, ALIGNED_SIZE, 3), np.uint8)
    ok = np.ones(len(paths), bool)
    pool = ThreadPoolExecutor(max(1, workers))
    try:
        with progress("img") as bar:
            task = bar.add_task(f"{name} images", total=len(paths))
            for i, (face, why) in enumerate(pool.map(reader, paths)):
                if face is None:
                    if on_error == "fail":
                        raise DataError(f"{first[paths[i]]}: image {paths[i]}: {why}; replace it, or set "
                                        f"{SKIP_HINT} to drop the pairs that use it")
                    ok[i] = False
                else:
                    images[i] = face
                bar.advance(task)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on an error, do not finish aligning the rest first
    keep = [p for p in pairs if ok[index[p.a]] and ok[index[p.b]]]
    kept = np.array([(index[p.a], index[p.b]) for p in keep], np.int64).reshape(-1, 2)
    used = np.zeros(len(paths), bool)
    used[kept.reshape(-1)] = True
    if not used.all():  # drop images that only dropped pairs used, and renumber
        images, kept = images[used], (np.cumsum(used) - 1)[kept]
    return VerificationSet(name=name, images=images, pairs=kept, issame=np.array([p.issame for p in keep], bool),
                           folds=np.array([p.fold for p in keep], np.int64), skipped=len(pairs) - len(keep),
                           source=source)


def open_landmarks(path: Path | None, default: bool = False) -> tuple[dict[str, np.ndarray] | None, Path | None]:
    """(landmarks by relative path, their base folder) of a landmarks.tsv; a missing default file means
    'detect with YuNet' (said once), a missing named file is a DataError."""
    from .lfw import read_landmarks

    if path is None:
        return None, None
    if path.is_file() or not default:
        return read_landmarks(path), path.parent
    console.print(f"[yellow]{path} not found: detecting landmarks with YuNet[/]")
    return None, None
