"""IJB-B / IJB-C 1:1 verification: the meta files of insightface's IJB release and the template protocol.

Layout (insightface recognition/_evaluation_/ijb, arcface_torch/eval_ijbc.py), `x` = ijbb or ijbc:
    <root>/meta/x_face_tid_mid.txt          image_name template_id media_id
    <root>/meta/x_template_pair_label.txt   template_id_1 template_id_2 label(0/1)
    <root>/meta/x_name_5pts_score.txt       image_name x1 y1 ... x5 y5 detector_score
    <root>/loose_crop/<image_name>
Faces are read and aligned on demand (`iter_faces`): IJB-C has 469k crops, 17 GB once aligned.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import DataError
from ..eval.metrics import IJB_FARS, auc, l2_normalize, roc_curve, tar_from_roc

TARGETS = ("IJBB", "IJBC")


def meta_files(root: str | Path, which: str = "IJBC") -> dict[str, Path]:
    """The three meta files insightface reads for `which` (IJBB or IJBC) under `root`."""
    prefix = _which(which).lower()
    meta = Path(root) / "meta"
    return {"tid_mid": meta / f"{prefix}_face_tid_mid.txt",
            "pairs": meta / f"{prefix}_template_pair_label.txt",
            "landmarks": meta / f"{prefix}_name_5pts_score.txt"}


def _which(which: str) -> str:
    w = str(which).upper()
    if w not in TARGETS:
        raise DataError(f"IJB target must be one of {', '.join(TARGETS)}, got {which!r}")
    return w


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, space-separated fields) of each non-blank line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: IJB meta file not found; extract insightface's IJB release so that "
                        f"{path.parent} holds the meta files") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read IJB meta file ({e})") from None
    for no, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if fields:
            yield no, fields


def _int(value: str, path: Path, no: int, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{path}:{no}: {what} must be an integer, got {value!r}") from None


def _expect(fields: list[str], n: int, path: Path, no: int, layout: str) -> None:
    if len(fields) != n:
        raise DataError(f"{path}:{no}: expected {n} space-separated fields ({layout}), got {len(fields)}")


def read_template_media(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """x_face_tid_mid.txt -> (image names, template ids, media ids), one row per face."""
    path = Path(path)
    names, tids, mids = [], [], []
    for no, f in _lines(path):
        _expect(f, 3, path, no, "image_name template_id media_id")
        names.append(f[0])
        tids.append(_int(f[1], path, no, "template id"))
        mids.append(_int(f[2], path, no, "media id"))
    if not names:
        raise DataError(f"{path}: no faces listed")
    return names, np.asarray(tids, np.int64), np.asarray(mids, np.int64)


def read_template_pairs(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """x_template_pair_label.txt -> (template id pairs (P, 2), labels bool (P,))."""
    path = Path(path)
    arr = None
    if path.is_file():
        try:  # numpy's C parser: IJB-C lists 15.7M pairs, too many for a Python loop over lines
            arr = np.loadtxt(path, dtype=np.int64, ndmin=2, comments=None)
        except ValueError:
            arr = None
    if arr is not None and arr.shape[0] > 0 and arr.shape[1] == 3 and np.isin(arr[:, 2], (0, 1)).all():
        return np.ascontiguousarray(arr[:, :2]), arr[:, 2].astype(bool)
    return _read_template_pairs_by_line(path)  # slow, but names the offending line


def _read_template_pairs_by_line(path: Path) -> tuple[np.ndarray, np.ndarray]:
    pairs, labels = [], []
    for no, f in _lines(path):
        _expect(f, 3, path, no, "template_id_1 template_id_2 label")
        label = _int(f[2], path, no, "label")
        if label not in (0, 1):
            raise DataError(f"{path}:{no}: label must be 0 or 1, got {label}")
        pairs.append((_int(f[0], path, no, "template id"), _int(f[1], path, no, "template id")))
        labels.append(bool(label))
    if not pairs:
        raise DataError(f"{path}: no template pairs listed")
    return np.asarray(pairs, np.int64).reshape(-1, 2), np.asarray(labels, bool)


def read_landmarks_scores(path: str | Path) -> dict[str, tuple[np.ndarray, float, int]]:
    """x_name_5pts_score.txt -> {image name: (landmarks (5, 2) float32, detector score, line number)}."""
    path = Path(path)
    out: dict[str, tuple[np.ndarray, float, int]] = {}
    for no, f in _lines(path):
        _expect(f, 12, path, no, "image_name, 10 landmark coordinates, detector_score")
        try:
            nums = np.asarray([float(v) for v in f[1:]], np.float64)
        except ValueError:
            raise DataError(f"{path}:{no}: landmarks and score must be numbers, got {' '.join(f[1:])!r}") from None
        if not np.isfinite(nums).all():
            raise DataError(f"{path}:{no}: landmarks and score must be finite")
        if f[0] in out:
            raise DataError(f"{path}:{no}: image {f[0]!r} listed again (first on line {out[f[0]][2]})")
        out[f[0]] = (nums[:10].reshape(5, 2).astype(np.float32), float(nums[10]), no)
    return out


@dataclass
class IJBSet:
    """One IJB-B/C 1:1 protocol: per-face metadata, template pairs; faces are loaded by `iter_faces`.

    Row i of images/templates/medias/landmarks/face_scores is line i of x_face_tid_mid.txt.
    """

    name: str
    root: Path
    image_names: list[str]
    templates: np.ndarray  # int64 (N,)
    medias: np.ndarray  # int64 (N,)
    landmarks: np.ndarray  # float32 (N, 5, 2) in loose-crop pixels
    face_scores: np.ndarray  # float32 (N,) detector score
    pairs: np.ndarray  # int64 (P, 2) template ids
    labels: np.ndarray  # bool (P,)
    on_error: str = "fail"

    def __len__(self) -> int:
        return len(self.image_names)

    def image_path(self, i: int) -> Path:
        return self.root / "loose_crop" / self.image_names[i]

    def _face(self, i: int) -> np.ndarray | None:
        from .align import align_face
        from .images import read_image_rgb

        img = read_image_rgb(self.image_path(i), on_error=self.on_error)
        if img is None:
            return None
        try:
            return align_face(img, self.landmarks[i])
        except ValueError as e:
            if self.on_error == "skip":
                return None
            raise DataError(f"{self.image_path(i)}: cannot align with its landmarks ({e})") from None

    def faces(self, indices, workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """Read and align faces `indices`: (indices read, uint8 (n, 112, 112, 3) RGB).

        With on_error="skip" unreadable images are left out of both arrays.
        """
        from concurrent.futures import ThreadPoolExecutor

        idx = [int(i) for i in np.asarray(indices, dtype=np.int64).ravel()]
        with ThreadPoolExecutor(max(1, workers)) as pool:  # OpenCV decodes and warps without the GIL
            got = list(pool.map(self._face, idx))
        kept = [i for i, f in zip(idx, got) if f is not None]
        faces = np.stack([f for f in got if f is not None]) if kept else np.zeros((0, 112, 112, 3), np.uint8)
        return np.asarray(kept, np.int64), faces

    def iter_faces(self, chunk: int = 1024, workers: int = 2) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (indices, aligned faces) for consecutive chunks of rows."""
        for start in range(0, len(self), chunk):
            yield self.faces(np.arange(start, min(start + chunk, len(self))), workers)


def load_ijb(root: str | Path, which: str = "IJBC", on_error: str = "fail") -> IJBSet:
    """Read an IJB-B/C folder's meta files (images are read later, by IJBSet.faces / iter_faces).

    Every face of x_face_tid_mid.txt needs a line in x_name_5pts_score.txt (matched by image name) and
    every template of a pair needs at least one face; violations are DataErrors naming file and line.
    """
    from .images import check_on_error

    check_on_error(on_error)
    which = _which(which)
    root = Path(root)
    files = meta_files(root, which)
    names, templates, medias = read_template_media(files["tid_mid"])
    pairs, labels = read_template_pairs(files["pairs"])
    lmk = read_landmarks_scores(files["landmarks"])

    landmarks = np.zeros((len(names), 5, 2), np.float32)
    scores = np.zeros(len(names), np.float32)
    for i, name in enumerate(names):
        try:
            landmarks[i], scores[i], _ = lmk[name]
        except KeyError:
            raise DataError(f"{files['tid_mid']}:{i + 1}: image {name!r} has no line in "
                            f"{files['landmarks'].name}; both files must come from the same IJB release") from None

    known = np.isin(pairs, np.unique(templates))
    if not known.all():
        row = int(np.nonzero(~known.all(axis=1))[0][0])
        bad = pairs[row][~known[row]][0]
        no = [n for n, _ in _lines(files["pairs"])][row]  # error path only: recover the line number
        raise DataError(f"{files['pairs']}:{no}: template {bad} has no face in {files['tid_mid'].name}")
    return IJBSet(name=which.lower(), root=root, image_names=names, templates=templates, medias=medias,
                  landmarks=landmarks, face_scores=scores, pairs=pairs, labels=labels, on_error=on_error)


def template_features(features: np.ndarray, templates: np.ndarray, medias: np.ndarray,
                      valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """insightface image2template_feature: mean of the faces of each media, sum of the medias of each
    template, L2-normalised. Returns (unique template ids ascending, features (T, D) float64).

    Rows with valid=False (images that could not be read) are left out; a template without any valid
    face gets a zero feature.
    """
    features = np.asarray(features)
    templates, medias = np.asarray(templates), np.asarray(medias)
    if not (len(features) == len(templates) == len(medias)):
        raise ValueError(f"{len(features)} features for {len(templates)} faces")
    uniq_t, t_idx = np.unique(templates, return_inverse=True)
    keep = np.ones(len(templates), bool) if valid is None else np.asarray(valid, bool)
    if not keep.any():
        return uniq_t, np.zeros((len(uniq_t), features.shape[1]))
    # One group per (template, media): media ids are only unique within a template.
    groups, g_idx = np.unique(np.stack([t_idx[keep], medias[keep]], axis=1), axis=0, return_inverse=True)
    g_idx = g_idx.ravel()
    media_mean = _segment_sum(features, np.flatnonzero(keep), g_idx, len(groups))
    media_mean /= np.bincount(g_idx, minlength=len(groups))[:, None]
    template_sum = _segment_sum(media_mean, np.arange(len(groups)), groups[:, 0], len(uniq_t))
    return uniq_t, l2_normalize(template_sum)


def _segment_sum(values: np.ndarray, rows: np.ndarray, groups: np.ndarray, n: int,
                 use_torch: bool | None = None, chunk: int = 1 << 16) -> np.ndarray:
    """float64 (n, D) sums of values[rows[i]] into groups[i].

    Large inputs go through torch's index_add_ (numpy's add.at / reduceat are ~20x slower on IJB-C's
    469k x 512 features); small ones stay in numpy and skip torch's import time.
    """
    if use_torch is None:
        use_torch = len(rows) * values.shape[1] > 1_000_000
    if not use_torch:
        out = np.zeros((n, values.shape[1]))
        np.add.at(out, groups, np.asarray(values[rows], np.float64))
        return out
    import torch

    out_t = torch.zeros((n, values.shape[1]), dtype=torch.float64)
    for start in range(0, len(rows), chunk):
        r = rows[start:start + chunk]
        out_t.index_add_(0, torch.from_numpy(np.ascontiguousarray(groups[start:start + chunk], np.int64)),
                         torch.from_numpy(np.asarray(values[r], np.float64)))
    return out_t.numpy()


def template_pair_scores(uniq_templates: np.ndarray, template_feats: np.ndarray, pairs: np.ndarray,
                         chunk: int = 50_000) -> np.ndarray:
    """Cosine similarity of each template pair (features already unit length), in chunks of pairs:
    IJB-C's 15.7M pairs x 512 dims would not fit in memory at once."""
    pairs = np.asarray(pairs)
    pos = np.searchsorted(uniq_templates, pairs)
    if np.any(pos >= len(uniq_templates)) or np.any(uniq_templates[np.minimum(pos, len(uniq_templates) - 1)]
                                                    != pairs):
        raise ValueError("a pair uses a template without features")
    out = np.empty(len(pairs))
    for start in range(0, len(pairs), chunk):
        p = pos[start:start + chunk]
        out[start:start + len(p)] = np.einsum("ij,ij->i", template_feats[p[:, 0]], template_feats[p[:, 1]])
    return out


def ijb_evaluate(features: np.ndarray, ijbset: IJBSet, use_detector_score: bool = True,
                 valid: np.ndarray | None = None, fars=IJB_FARS) -> dict:
    """insightface IJB 1:1: per-face features (flip-summed, not normalised) -> TAR at each FAR.

    Features are weighted by the detector score (use_detector_score), aggregated per template
    (`template_features`), scored by cosine per template pair. Pairs whose template has no valid face
    are dropped and counted in `skipped`. Returns tar_at_far ({far: TAR fraction}), auc, pairs, skipped,
    images, images_skipped, seconds, and scores / labels / roc arrays for plots.
    """
    t0 = time.perf_counter()
    features = np.asarray(features)  # kept in its dtype: IJB-C float32 features are ~1 GB already
    if features.ndim != 2 or len(features) != len(ijbset):
        raise ValueError(f"need features of shape ({len(ijbset)}, D) for the IJB faces, got {features.shape}")
    mask = np.ones(len(ijbset), bool) if valid is None else np.asarray(valid, bool)
    if use_detector_score:
        features = features * ijbset.face_scores[:, None]
    uniq_t, feats = template_features(features, ijbset.templates, ijbset.medias, valid)
    if not np.isin(ijbset.pairs, uniq_t).all():
        raise ValueError("a template pair uses a template id that no face belongs to")
    has_face = np.isin(uniq_t, np.unique(ijbset.templates[mask]))
    usable = has_face[np.searchsorted(uniq_t, ijbset.pairs)].all(axis=1)
    if not usable.any():
        raise DataError(f"{ijbset.root}: no template pair has a readable face")
    pairs, labels = ijbset.pairs[usable], ijbset.labels[usable]
    scores = template_pair_scores(uniq_t, feats, pairs)
    fpr, tpr, _ = roc_curve(scores, labels)
    return {
        "tar_at_far": tar_from_roc(fpr, tpr, fars),
        "auc": auc(fpr, tpr),
        "pairs": int(usable.sum()),
        "skipped": int((~usable).sum()),
        "images": int(mask.sum()),
        "images_skipped": int((~mask).sum()),
        "seconds": time.perf_counter() - t0,
        "scores": scores,
        "labels": labels,
        "roc": (fpr, tpr),
    }
