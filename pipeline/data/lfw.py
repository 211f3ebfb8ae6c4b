"""LFW: pairs.txt, landmarks.tsv and the aligned verification set."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io import inside
from .images import check_on_error
from .types import VerificationSet


@dataclass(frozen=True)
class LfwPair:
    """One line of pairs.txt: two images (person name, 1-based image number), same person or not, fold."""

    name_a: str
    num_a: int
    name_b: str
    num_b: int
    issame: bool
    fold: int
    line: int  # 1-based line number in pairs.txt


def _int_field(value: str, where: str, what: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise DataError(f"{where}: {what} {value!r} is not an integer") from None
    if n < 1:
        raise DataError(f"{where}: {what} {n} must be >= 1")
    return n


def read_pairs(path: str | os.PathLike) -> list[LfwPair]:
    """Parse an LFW pairs file: header "folds<TAB>n" (or just "n" for one fold), then per fold n matched
    lines "Name i j" and n mismatched lines "NameA i NameB j"."""
    from .pairset import read_list_lines

    path = Path(path)
    lines = read_list_lines(path, "pairs file", "; check the LFW root and the pairs file name")
    name = path.name
    if not lines or not lines[0].strip():
        raise DataError(f"{name} line 1: empty header; expected 'folds<TAB>pairs_per_half', e.g. '10<TAB>300'")
    head = lines[0].split()
    if len(head) not in (1, 2):
        raise DataError(f"{name} line 1: header {lines[0]!r} should be 'folds<TAB>pairs_per_half' or 'pairs'")
    nums = [_int_field(h, f"{name} line 1", "header value") for h in head]
    folds, per_half = (1, nums[0]) if len(nums) == 1 else (nums[0], nums[1])
    body = [(i + 2, ln) for i, ln in enumerate(lines[1:]) if ln.strip()]
    if len(body) != folds * 2 * per_half:
        raise DataError(f"{name}: header promises {folds} folds x 2 x {per_half} = {folds * 2 * per_half} pairs "
                        f"but the file has {len(body)} pair lines; is it truncated?")
    pairs = []
    for k, (lineno, ln) in enumerate(body):
        f = ln.split()
        where = f"{name} line {lineno}"
        for person in (f[0], f[2]) if len(f) == 4 else f[:1]:
            inside(path.parent, person, where)  # a name is a folder below the image root, nothing else
        if len(f) == 3:
            a, b = _int_field(f[1], where, "image number"), _int_field(f[2], where, "image number")
            pairs.append(LfwPair(f[0], a, f[0], b, True, k // (2 * per_half), lineno))
        elif len(f) == 4:
            a, b = _int_field(f[1], where, "image number"), _int_field(f[3], where, "image number")
            pairs.append(LfwPair(f[0], a, f[2], b, False, k // (2 * per_half), lineno))
        else:
            raise DataError(f"{where}: expected 'Name<TAB>i<TAB>j' or 'NameA<TAB>i<TAB>NameB<TAB>j', "
                            f"got {len(f)} fields: {ln.strip()!r}")
    return pairs


def read_landmarks(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Parse landmarks.tsv ("relpath<TAB>x1 y1 ... x5 y5<TAB>score"): relpath -> float32 (5, 2).

    Lines whose landmarks are '-' (no detection) are left out of the mapping.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: landmarks file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read landmarks file ({e})") from None
    out: dict[str, np.ndarray] = {}
    for lineno, ln in enumerate(text.splitlines(), 1):
        if not ln.strip() or ln.startswith("#"):
            continue
        f = ln.rstrip("\n").split("\t")
        where = f"{path.name} line {lineno}"
        if len(f) < 2:
            raise DataError(f"{where}: expected 'path<TAB>x1 y1 ... x5 y5<TAB>score', got {ln.strip()!r}")
        if f[1].strip() == "-":
            continue
        try:
            lm = np.array([float(v) for v in f[1].split()], dtype=np.float32)
        except ValueError:
            raise DataError(f"{where}: landmarks {f[1]!r} are not numbers") from None
        if lm.size != 10 or not np.isfinite(lm).all():
            raise DataError(f"{where}: expected 10 finite coordinates, got {f[1]!r}")
        out[f[0]] = lm.reshape(5, 2)
    return out


def lfw_image_dir(root: str | os.PathLike) -> Path:
    """The folder holding <Name>/<Name>_NNNN.jpg: root/images when present (this workplace), else root."""
    root = Path(root)
    return root / "images" if (root / "images").is_dir() else root


def lfw_image_path(root: str | os.PathLike, name: str, num: int) -> Path:
    """Path of LFW image `num` (1-based) of person `name`."""
    return lfw_image_dir(root) / name / f"{name}_{num:04d}.jpg"


def load_lfw(root: str | os.PathLike, pairs_file: str = "pairs.txt", on_error: str = "fail",
             landmarks: str | os.PathLike | None = "landmarks.tsv", workers: int = 2,
             max_folds: int | None = None) -> VerificationSet:
    """Aligned LFW verification set: each distinct image of the pairs read once and aligned.

    max_folds: read only the pairs (and images) of the first N folds.
    landmarks: a landmarks.tsv (relative to root) or None to detect every face with YuNet. When the default
    file is absent the faces are detected. A pair whose image is missing, unreadable or faceless raises a
    DataError naming the pairs line (on_error="fail") or is dropped and counted in `skipped` ("skip").
    """
    from .pairset import FaceReader, PairRef, load_pair_set, open_landmarks

    check_on_error(on_error)
    root = Path(root)
    pairs_path = root / pairs_file
    pairs = read_pairs(pairs_path)
    if max_folds is not None:  # only the first folds' images are read
        first = sorted({p.fold for p in pairs})[:max_folds]
        pairs = [p for p in pairs if p.fold in first]
    lm, lm_base = open_landmarks(None if landmarks is None else root / landmarks,
                                 default=str(landmarks) == "landmarks.tsv")
    refs = [PairRef(lfw_image_path(root, p.name_a, p.num_a), lfw_image_path(root, p.name_b, p.num_b), p.issame,
                    p.fold, f"{pairs_path.name} line {p.line}") for p in pairs]
    return load_pair_set(refs, "lfw", str(pairs_path), FaceReader(lm_base or root, lm), on_error, workers)
