"""Verification metrics shared by every benchmark and runtime (insightface conventions, numpy only).

- `verification_10fold`: insightface eval/verification.py (LFW-style 10-fold accuracy and VAL@FAR).
- `roc_curve`, `auc`, `tar_at_far`: the IJB-B/C 1:1 convention of insightface's ijb_11.py / eval_ijbc.py,
  which call sklearn's roc_curve (drop_intermediate=True) and read the TPR at the point nearest each FAR.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

IJB_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)

# insightface's threshold grids on the squared L2 distance of unit vectors (range [0, 4]).
ACC_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)

METRICS = ("euclidean", "cosine")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float64; zero rows stay zero (sklearn.preprocessing.normalize)."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.sqrt(np.einsum("ij,ij->i", x, x))
    norm[norm == 0] = 1.0
    return x / norm[:, None]


# Pairwise cosine std below which a model is taken as collapsed (every input the same direction). Distinct
# real faces under a working face model spread with std ~0.1-0.2; the collapsed smoke student gave ~1e-6.
COLLAPSE_STD = 0.01


def embedding_spread(emb: np.ndarray) -> dict:
    """Pairwise cosine statistics over a set of embeddings (one row per input): how far apart distinct
    inputs land. {n, pairs, cos_mean, cos_std, cos_min, cos_max, collapsed}.

    A check that compares two models passes whatever the code does when every input gives the same vector;
    guard such checks with `collapsed`: every pair closer than 1 - COLLAPSE_STD in cosine, a pairwise std
    below COLLAPSE_STD (with 3+ pairs: one pair has no spread), or a non-finite embedding."""
    e = np.asarray(emb, dtype=np.float64)
    if e.ndim != 2 or len(e) < 2:
        raise ValueError(f"embedding_spread needs at least 2 embeddings as rows, got shape {e.shape}")
    finite = bool(np.isfinite(e).all())
    cos = (l2_normalize(e) @ l2_normalize(e).T)[np.triu_indices(len(e), 1)] if finite else np.full(1, np.nan)
    std, lo = float(cos.std()), float(cos.min())
    # every input within a few degrees of every other, or (with enough pairs to tell) no spread at all
    collapsed = not finite or not (1.0 - lo >= COLLAPSE_STD) or (len(cos) >= 3 and not std >= COLLAPSE_STD)
    return {"n": int(len(e)), "pairs": int(len(cos)), "cos_mean": float(cos.mean()), "cos_std": std,
            "cos_min": lo, "cos_max": float(cos.max()), "collapsed": bool(collapsed)}


def kfold_ids(n: int, n_folds: int = 10) -> np.ndarray:
    """Fold id per item for consecutive, unshuffled folds (sklearn KFold(n_folds, shuffle=False) sizes; with
    fewer items than folds, the last folds are empty)."""
    sizes = np.full(n_folds, n // n_folds)
    sizes[: n % n_folds] += 1
    return np.repeat(np.arange(n_folds), sizes)


def stratified_kfold_ids(issame: np.ndarray, n_folds: int = 10) -> np.ndarray:
    """Fold id per pair: the genuine pairs and the impostor pairs each cut into `n_folds` consecutive chunks.

    For a pairs list without official folds. Consecutive folds over a list sorted by label (LFW's View 1,
    or one official fold: 300 genuine then 300 impostor pairs) give single-class test folds, whose
    thresholds are tuned on the opposite imbalance - a weak model then scores near 0%.
    """
    issame = np.asarray(issame, dtype=bool)
    folds = np.empty(len(issame), dtype=np.int64)
    for label in (True, False):
        idx = np.flatnonzero(issame == label)
        if len(idx) < n_folds:
            raise ValueError(f"need at least {n_folds} {'genuine' if label else 'impostor'} pairs for "
                             f"{n_folds} stratified folds, got {len(idx)}")
        folds[idx] = kfold_ids(len(idx), n_folds)
    return folds


def pair_scores(emb_a: np.ndarray, emb_b: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """Similarity per pair after L2 normalisation: -squared L2 distance ("euclidean") or cosine.

    Higher is always more similar, so one ROC code path serves both metrics.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    a, b = l2_normalize(emb_a), l2_normalize(emb_b)
    if a.shape != b.shape:
        raise ValueError(f"embedding shapes differ: {a.shape} vs {b.shape}")
    if metric == "cosine":
        return np.einsum("ij,ij->i", a, b)
    return -np.sum(np.square(a - b), axis=1)


def _grid(metric: str, thresholds: np.ndarray) -> np.ndarray:
    """Distance thresholds mapped into score space, in insightface's search order (loosest last).

    A pair is accepted when score > grid value; for euclidean that is exactly dist < threshold, and the
    cosine grid is the same set of thresholds since dist = 2 - 2 cos for unit vectors.
    """
    return -thresholds if metric == "euclidean" else 1.0 - thresholds / 2.0


def _from_grid(metric: str, value: float) -> float:
    return float(-value if metric == "euclidean" else value)


def _accepted(sorted_scores: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """How many of the (ascending) scores are strictly above each grid value."""
    return len(sorted_scores) - np.searchsorted(sorted_scores, grid, side="right")


def _interp_threshold(far: np.ndarray, grid: np.ndarray, target: float) -> float:
    """The grid value where the (non-decreasing) train FAR reaches `target`, linearly interpolated.

    Reproduces insightface's `interp1d(far, thresholds, kind='slinear')` as scipy <= 1.8 evaluated it
    (newer scipy refuses the repeated FAR values, insightface issue #2290): a degree-1 B-spline with knots
    (far[0], far..., far[-1]). On a run of FARs equal to the target it takes the run's last threshold; a
    target equal to a repeated maximum FAR lands on a zero-length knot span, which evaluates to threshold
    0 (accept nothing), i.e. grid[0].
    """
    n = len(far)
    b = max(int(np.searchsorted(far, target, side="right")) - 1, 0)  # last index with far <= target
    if b >= n - 1:
        b = n - 2
        if far[b] == far[b + 1]:
            return float(grid[0])
    x0, x1 = far[b], far[b + 1]
    return float(grid[b] + (target - x0) / (x1 - x0) * (grid[b + 1] - grid[b]))


def verification_10fold(emb_a: np.ndarray, emb_b: np.ndarray, issame: np.ndarray,
                        folds: np.ndarray | None = None, metric: str = "euclidean",
                        far_target: float = 1e-3) -> dict:
    """insightface 10-fold verification of pairs (emb_a[i], emb_b[i]).

    Per test fold: the best-accuracy threshold on the other folds (grid 0..4 step 0.01 on squared L2
    distance, first maximum), accuracy on the test fold; VAL at `far_target` with the threshold
    interpolated on the train folds (grid step 0.001). `folds` gives each pair's fold id (default: 10
    consecutive chunks). Returns accuracy and std in percent, threshold (mean best, in distance units or
    cosine), val, val_std, far (fractions), fold_accuracies (percent), folds, pairs.
    """
    issame = np.asarray(issame, dtype=bool)
    scores = pair_scores(emb_a, emb_b, metric)
    if scores.shape != issame.shape:
        raise ValueError(f"{len(scores)} pairs but {len(issame)} labels")
    folds = kfold_ids(len(issame)) if folds is None else np.asarray(folds)
    if folds.shape != issame.shape:
        raise ValueError(f"{len(folds)} fold ids for {len(issame)} pairs")
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise ValueError("need at least two folds")
    acc_grid, val_grid = _grid(metric, ACC_THRESHOLDS), _grid(metric, VAL_THRESHOLDS)

    accuracy, best, val, far = (np.zeros(len(fold_ids)) for _ in range(4))
    for k, fold in enumerate(fold_ids):
        test = folds == fold
        train = ~test
        pos = np.sort(scores[train & issame])
        neg = np.sort(scores[train & ~issame])
        correct = _accepted(pos, acc_grid) + (len(neg) - _accepted(neg, acc_grid))
        thr = acc_grid[int(np.argmax(correct))]
        best[k] = thr
        pred = scores[test] > thr
        accuracy[k] = np.mean(pred == issame[test])

        far_train = _accepted(neg, val_grid) / len(neg) if len(neg) else np.zeros(len(val_grid))
        # insightface: a train FAR that never reaches the target falls back to threshold 0 (accept none).
        vthr = _interp_threshold(far_train, val_grid, far_target) if far_train.max() >= far_target \
            else val_grid[0]
        pred = scores[test] > vthr
        n_same, n_diff = issame[test].sum(), (~issame[test]).sum()
        val[k] = (pred & issame[test]).sum() / n_same if n_same else np.nan
        far[k] = (pred & ~issame[test]).sum() / n_diff if n_diff else np.nan

    return {
        "accuracy": float(np.mean(accuracy) * 100),
        "std": float(np.std(accuracy) * 100),
        "threshold": _from_grid(metric, float(np.mean(best))),
        "val": float(np.mean(val)),
        "val_std": float(np.std(val)),
        "far": float(np.mean(far)),
        "far_target": far_target,
        "fold_accuracies": [float(a * 100) for a in accuracy],
        "fold_thresholds": [_from_grid(metric, t) for t in best],
        "metric": metric,
        "folds": int(len(fold_ids)),
        "pairs": int(len(issame)),
    }


def roc_curve(scores: np.ndarray, labels: np.ndarray, drop_intermediate: bool = True
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC of scores (higher = positive) against 0/1 labels: (fpr, tpr, thresholds), fpr ascending.

    Same points as sklearn.metrics.roc_curve: one per distinct score, collinear points dropped, a first
    point (0, 0) at threshold +inf. NaN rates when a class is absent.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    order = np.argsort(scores, kind="stable")[::-1]
    s, y = scores[order], labels[order].astype(np.float64)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each distinct score
    tps = np.cumsum(y)[last]
    fps = 1 + last - tps
    thr = s[last]
    if drop_intermediate and len(fps) > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        tps, fps, thr = tps[keep], fps[keep], thr[keep]
    tps, fps, thr = np.r_[0.0, tps], np.r_[0.0, fps], np.r_[np.inf, thr]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, thr


def auc(x: np.ndarray, y: np.ndarray) -> float:
    """Area under a curve by the trapezoid rule; x must be monotonic (either direction)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    dx = np.diff(x)
    if np.any(dx < 0) and np.any(dx > 0):
        raise ValueError("x is neither increasing nor decreasing")
    area = float(np.trapezoid(y, x))
    return -area if np.all(dx <= 0) and np.any(dx < 0) else area


def tar_at_far(scores: np.ndarray, labels: np.ndarray, fars: Sequence[float] = IJB_FARS) -> dict[float, float]:
    """TAR (fraction) at each target FAR, as insightface's IJB evaluation reads it off the ROC.

    For each target: the TPR at the ROC point whose FPR is nearest the target; among equally near points
    the one with the highest TPR (insightface flips the curve and takes the first minimum).
    """
    fpr, tpr, _ = roc_curve(scores, labels)
    return tar_from_roc(fpr, tpr, fars)


def tar_from_roc(fpr: np.ndarray, tpr: np.ndarray, fars: Sequence[float] = IJB_FARS) -> dict[float, float]:
    """`tar_at_far` on an ROC already computed by `roc_curve`."""
    out = {}
    for target in fars:
        d = np.abs(fpr - target)
        idx = len(d) - 1 - int(np.argmin(d[::-1]))  # last minimum in ascending-FPR order
        out[float(target)] = float(tpr[idx])
    return out
