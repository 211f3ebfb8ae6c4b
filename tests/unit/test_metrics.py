"""Golden and reference tests for facepipe.pipeline.eval.metrics (insightface verification + IJB conventions)."""

from __future__ import annotations

import numpy as np
import pytest

from facepipe.pipeline.eval.metrics import (ACC_THRESHOLDS, auc, kfold_ids, pair_scores, roc_curve,
                                       stratified_kfold_ids, tar_at_far, verification_10fold)


# ---------------------------------------------------------------------------------------------------------
# helpers

def pairs_at_distances(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit 2-D embeddings whose squared L2 distances are exactly `d` (up to rounding)."""
    theta = np.arccos(1.0 - np.asarray(d, np.float64) / 2.0)
    a = np.stack([np.ones_like(theta), np.zeros_like(theta)], 1)
    b = np.stack([np.cos(theta), np.sin(theta)], 1)
    return a, b


def noisy_pairs(rng, n: int, dim: int = 16, noise: float = 1.1):
    """Random pairs: same = shared identity + noise, different = two identities. Accuracy ~85-95 %."""
    issame = rng.random(n) < 0.5
    ida = rng.standard_normal((n, dim))
    idb = np.where(issame[:, None], ida, rng.standard_normal((n, dim)))
    a = ida + noise * rng.standard_normal((n, dim))
    b = idb + noise * rng.standard_normal((n, dim))
    return a.astype(np.float32), b.astype(np.float32), issame


def slow_insightface(emb_a, emb_b, issame, folds, far_target=1e-3):
    """A literal, loop-per-threshold reading of insightface eval/verification.py (calculate_roc,
    calculate_val), with scipy<=1.8's interp1d(kind='slinear') written as the degree-1 B-spline it built."""
    interpolate = pytest.importorskip("scipy.interpolate")

    def normalize(x):
        x = np.asarray(x, np.float64)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    a, b = normalize(emb_a), normalize(emb_b)
    dist = np.sum(np.square(a - b), 1)
    thresholds = np.arange(0, 4, 0.01)
    accs, best = [], []
    vals, fars = [], []
    for fold in np.unique(folds):
        test, train = folds == fold, folds != fold
        acc_train = []
        for t in thresholds:
            pred = dist[train] < t
            tp = np.sum(pred & issame[train])
            tn = np.sum(~pred & ~issame[train])
            acc_train.append((tp + tn) / train.sum())
        k = int(np.argmax(acc_train))
        best.append(thresholds[k])
        pred = dist[test] < thresholds[k]
        accs.append(np.sum(pred == issame[test]) / test.sum())

        vthresholds = np.arange(0, 4, 0.001)
        far_train = np.array([np.sum((dist[train] < t) & ~issame[train]) / np.sum(~issame[train])
                              for t in vthresholds])
        if far_train.max() >= far_target:
            spline = interpolate.BSpline(np.r_[far_train[0], far_train, far_train[-1]], vthresholds, 1)
            thr = float(spline(far_target))
        else:
            thr = 0.0
        pred = dist[test] < thr
        vals.append(np.sum(pred & issame[test]) / np.sum(issame[test]))
        fars.append(np.sum(pred & ~issame[test]) / np.sum(~issame[test]))
    return {"accuracy": np.mean(accs) * 100, "std": np.std(accs) * 100, "threshold": np.mean(best),
            "fold_accuracies": [x * 100 for x in accs], "val": np.mean(vals), "val_std": np.std(vals),
            "far": np.mean(fars)}


def insightface_tar_at_far(scores, labels, fars):
    """insightface ijb_11.py step 5, verbatim in spirit: sklearn roc_curve, flipud, min over (|fpr-x|, i)."""
    metrics = pytest.importorskip("sklearn.metrics")
    fpr, tpr, _ = metrics.roc_curve(labels, scores)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    out = {}
    for x in fars:
        _, i = min(zip(abs(fpr - x), range(len(fpr))))
        out[x] = tpr[i]
    return out


# ---------------------------------------------------------------------------------------------------------
# verification_10fold

# Distances sit half-way between grid points (0.01 and 0.001 steps) so no pair is on a threshold.
FOLD0_SAME = [0.2, 0.5, 0.8, 1.1, 1.6]
FOLD0_DIFF = [1.2, 1.5, 1.9, 2.4, 3.0]
FOLD1_SAME = [0.3, 0.6, 0.9, 1.3, 2.0]
FOLD1_DIFF = [1.0, 1.7, 2.1, 2.6, 3.5]


@pytest.fixture
def golden():
    d = np.array(FOLD0_SAME + FOLD0_DIFF + FOLD1_SAME + FOLD1_DIFF) + 0.0025
    issame = np.array(([True] * 5 + [False] * 5) * 2)
    folds = np.repeat([0, 1], 10)
    a, b = pairs_at_distances(d)
    return a, b, issame, folds


def test_golden_hand_computed(golden):
    # Test fold 1 (train fold 0): 4 same below 1.1025, all 5 different above 1.2025 -> 9/10 for thresholds
    # 1.11..1.20, first is 1.11; on fold 1 it accepts 0.3, 0.6, 0.9 and the different pair at 1.0 -> 7/10.
    # Test fold 0 (train fold 1): 8/10 first reached at 0.91 (3 same accepted, all different rejected);
    # on fold 0 it accepts 0.2, 0.5, 0.8 and no different pair -> 8/10.
    a, b, issame, folds = golden
    r = verification_10fold(a, b, issame, folds=folds, far_target=0.1)
    assert r["fold_accuracies"] == pytest.approx([80.0, 70.0])
    assert r["accuracy"] == pytest.approx(75.0)
    assert r["std"] == pytest.approx(5.0)
    assert r["fold_thresholds"] == pytest.approx([0.91, 1.11])
    assert r["threshold"] == pytest.approx(1.01)
    # VAL@FAR=0.1: train FAR jumps 0 -> 0.2 at the smallest different distance (1.0025 / 1.2025), the
    # interpolated threshold is that distance; each test fold accepts 3 of 5 same pairs, FARs 0 and 0.2.
    assert r["val"] == pytest.approx(0.6)
    assert r["val_std"] == pytest.approx(0.0)
    assert r["far"] == pytest.approx(0.1)
    assert r["folds"] == 2 and r["pairs"] == 20


def test_golden_cosine_matches_euclidean(golden):
    a, b, issame, folds = golden
    r = verification_10fold(a, b, issame, folds=folds, metric="cosine", far_target=0.1)
    assert r["fold_accuracies"] == pytest.approx([80.0, 70.0])
    assert r["threshold"] == pytest.approx(1 - 1.01 / 2)  # cos = 1 - d / 2 for unit vectors
    assert r["val"] == pytest.approx(0.6) and r["far"] == pytest.approx(0.1)


def test_perfect_separation(rng):
    n = 600
    a = rng.standard_normal((n, 64))
    issame = np.arange(n) % 2 == 0
    b = np.where(issame[:, None], a + 0.05 * rng.standard_normal((n, 64)), rng.standard_normal((n, 64)))
    for metric in ("euclidean", "cosine"):
        r = verification_10fold(a, b, issame, metric=metric)
        assert r["accuracy"] == 100.0 and r["std"] == 0.0
        # The VAL threshold is interpolated into the gap before the first impostor, so a test fold can
        # accept one impostor (insightface behaves the same): FAR stays near, not at, the 1e-3 target.
        assert r["val"] == 1.0 and r["far"] < 0.01
        assert r["fold_accuracies"] == [100.0] * 10


def test_scale_invariant(rng):
    a, b, issame = noisy_pairs(rng, 300)
    r1 = verification_10fold(a, b, issame)
    r2 = verification_10fold(a * 7.5, b * 0.01, issame)
    assert r1 == r2


@pytest.mark.parametrize("n,fold_kind", [(600, "consecutive"), (607, "consecutive"), (600, "interleaved")])
def test_matches_slow_reference(rng, n, fold_kind):
    a, b, issame = noisy_pairs(rng, n)
    folds = kfold_ids(n) if fold_kind == "consecutive" else np.arange(n) % 10
    ref = slow_insightface(a, b, issame, folds)
    r = verification_10fold(a, b, issame, folds=None if fold_kind == "consecutive" else folds)
    assert 70 < r["accuracy"] < 99  # the data is neither trivial nor random
    assert r["fold_accuracies"] == pytest.approx(ref["fold_accuracies"], abs=1e-12)
    assert r["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-12)
    assert r["std"] == pytest.approx(ref["std"], abs=1e-12)
    assert r["threshold"] == pytest.approx(ref["threshold"], abs=1e-12)
    assert r["val"] == pytest.approx(ref["val"], abs=1e-12)
    assert r["val_std"] == pytest.approx(ref["val_std"], abs=1e-12)
    assert r["far"] == pytest.approx(ref["far"], abs=1e-12)


def test_golden_val_on_far_plateau(golden):
    # Target 0.2 equals a train FAR reached on a run of thresholds: the run's last threshold is taken
    # (fold 1: 1.502 -> VAL 4/5, FAR 1/5; fold 0: 1.702 -> VAL 5/5, FAR 2/5).
    a, b, issame, folds = golden
    r = verification_10fold(a, b, issame, folds=folds, far_target=0.2)
    assert (r["val"], r["far"]) == pytest.approx((0.9, 0.3))
    # Target 1.0 equals the maximum train FAR, repeated to the grid's end: scipy<=1.8 evaluated the
    # zero-length last knot span to threshold 0, which accepts nothing.
    r = verification_10fold(a, b, issame, folds=folds, far_target=1.0)
    assert (r["val"], r["far"]) == (0.0, 0.0)
    for target in (0.2, 1.0):
        ref = slow_insightface(a, b, issame, folds, far_target=target)
        r = verification_10fold(a, b, issame, folds=folds, far_target=target)
        assert (r["val"], r["far"]) == pytest.approx((ref["val"], ref["far"]), abs=1e-12)


def test_val_matches_reference_at_coarse_far(rng):
    a, b, issame = noisy_pairs(rng, 60, noise=1.4)
    folds = kfold_ids(60)
    for target in (0.05, 0.3):
        ref = slow_insightface(a, b, issame, folds, far_target=target)
        r = verification_10fold(a, b, issame, far_target=target)
        assert (r["val"], r["far"]) == pytest.approx((ref["val"], ref["far"]), abs=1e-12)


def test_distances_exactly_on_grid_points(rng):
    # Axis-aligned vectors give squared distances of exactly 0 and 2.0, both grid values: insightface
    # accepts a pair only when dist < threshold, so 2.0 is accepted from threshold 2.01 on.
    n = 200
    axes = np.array([[1.0, 0.0], [0.0, 2.0]])
    a = axes[np.zeros(n, int)]
    b = axes[rng.integers(0, 2, n)]
    far_pair = b[:, 1] != 0
    issame = np.where(far_pair, rng.random(n) < 0.8, rng.random(n) < 0.9)
    ref = slow_insightface(a, b, issame, kfold_ids(n), far_target=0.1)
    r = verification_10fold(a, b, issame, far_target=0.1)
    assert r["fold_thresholds"] == pytest.approx([2.01] * 10)
    for key in ("fold_accuracies", "threshold", "val", "far"):
        assert r[key] == pytest.approx(ref[key], abs=1e-12)


def test_cosine_equals_euclidean_on_random(rng):
    a, b, issame = noisy_pairs(rng, 1000)
    e = verification_10fold(a, b, issame)
    c = verification_10fold(a, b, issame, metric="cosine")
    assert c["fold_accuracies"] == e["fold_accuracies"]
    assert c["threshold"] == pytest.approx(1 - e["threshold"] / 2)
    assert (c["val"], c["far"]) == pytest.approx((e["val"], e["far"]))


def test_kfold_ids_like_sklearn():
    assert np.bincount(kfold_ids(605)).tolist() == [61] * 5 + [60] * 5
    assert kfold_ids(20).tolist() == np.repeat(np.arange(10), 2).tolist()
    model_selection = pytest.importorskip("sklearn.model_selection")
    ids = kfold_ids(6007)
    for k, (_, test) in enumerate(model_selection.KFold(10, shuffle=False).split(np.arange(6007))):
        assert np.flatnonzero(ids == k).tolist() == test.tolist()


def test_6000_pairs_full_size(rng):
    """The LFW-sized case runs through the vectorised path and gives sane numbers (speed lives in benchmarks)."""
    a, b, issame = noisy_pairs(rng, 6000, dim=128, noise=1.0)
    r = verification_10fold(a, b, issame)
    assert len(r["fold_accuracies"]) == 10 and 80 < r["accuracy"] <= 100


def test_input_errors(rng):
    a, b, issame = noisy_pairs(rng, 50)
    with pytest.raises(ValueError, match="metric"):
        verification_10fold(a, b, issame, metric="manhattan")
    with pytest.raises(ValueError, match="labels"):
        verification_10fold(a, b, issame[:-1])
    with pytest.raises(ValueError, match="fold"):
        verification_10fold(a, b, issame, folds=np.zeros(50))
    with pytest.raises(ValueError, match="shapes"):
        pair_scores(a, b[:, :3])


def test_threshold_grid_is_insightfaces():
    assert len(ACC_THRESHOLDS) == 400 and ACC_THRESHOLDS[0] == 0.0 and ACC_THRESHOLDS[-1] == pytest.approx(3.99)


# ---------------------------------------------------------------------------------------------------------
# ROC, AUC, TAR@FAR

HAND_SCORES = np.array([0.9, 0.8, 0.7, 0.7, 0.6, 0.5])
HAND_LABELS = np.array([1, 1, 0, 1, 0, 0])


def test_roc_hand_computed():
    # Distinct scores 0.9 0.8 0.7 0.6 0.5 -> (fp, tp) = (0,1) (0,2) (1,3) (2,3) (3,3); (2,3) is collinear
    # between (1,3) and (3,3) and dropped; (0,0) at +inf is prepended.
    fpr, tpr, thr = roc_curve(HAND_SCORES, HAND_LABELS)
    assert fpr.tolist() == pytest.approx([0, 0, 0, 1 / 3, 1])
    assert tpr.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1, 1])
    assert thr.tolist() == [np.inf, 0.9, 0.8, 0.7, 0.5]
    fpr_all, _, thr_all = roc_curve(HAND_SCORES, HAND_LABELS, drop_intermediate=False)
    assert thr_all.tolist() == [np.inf, 0.9, 0.8, 0.7, 0.6, 0.5] and fpr_all[4] == pytest.approx(2 / 3)


def test_auc_hand_computed():
    # Trapezoids: (1/3) * (2/3 + 1) / 2 + (2/3) * 1 = 17/18 = P(pos > neg) with ties counted half: 8.5 / 9.
    fpr, tpr, _ = roc_curve(HAND_SCORES, HAND_LABELS)
    assert auc(fpr, tpr) == pytest.approx(17 / 18)
    assert auc(fpr[::-1], tpr[::-1]) == pytest.approx(17 / 18)
    with pytest.raises(ValueError):
        auc([0, 1, 0.5], [0, 1, 1])


def test_tar_at_far_hand_computed():
    # FAR 0: three points have FPR 0; insightface keeps the highest TPR (2/3). FAR 0.3: nearest FPR 1/3.
    # FAR 0.7: |1/3 - 0.7| > |1 - 0.7| -> TPR 1.
    r = tar_at_far(HAND_SCORES, HAND_LABELS, fars=(0.0, 0.3, 0.7))
    assert r == pytest.approx({0.0: 2 / 3, 0.3: 1.0, 0.7: 1.0})


def test_roc_matches_sklearn(rng):
    metrics = pytest.importorskip("sklearn.metrics")
    for n, levels in ((50, 5), (2000, 40), (3000, None)):
        labels = rng.random(n) < 0.3
        s = rng.standard_normal(n) + 1.5 * labels
        if levels:  # many ties
            s = np.round(s * levels / 6) / levels
        for drop in (True, False):
            want = metrics.roc_curve(labels, s, drop_intermediate=drop)
            got = roc_curve(s, labels, drop_intermediate=drop)
            for w, g in zip(want, got):
                np.testing.assert_array_equal(g, w)
        assert auc(*roc_curve(s, labels)[:2]) == pytest.approx(metrics.roc_auc_score(labels, s), abs=1e-12)


def test_tar_at_far_matches_insightface(rng):
    fars = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 0.25)
    for n, levels in ((20000, None), (20000, 30), (300, 8)):
        labels = rng.random(n) < 0.1
        s = rng.standard_normal(n) + 2.5 * labels
        if levels:
            s = np.round(s * levels / 6) / levels
        assert tar_at_far(s, labels, fars) == insightface_tar_at_far(s, labels, fars)


def test_tar_at_far_separable_is_one():
    labels = np.r_[np.ones(100, bool), np.zeros(10000, bool)]
    s = np.r_[np.linspace(0.6, 0.9, 100), np.linspace(-0.5, 0.5, 10000)]
    assert set(tar_at_far(s, labels).values()) == {1.0}


def test_roc_degenerate_inputs():
    fpr, tpr, _ = roc_curve([0.1, 0.2], [1, 1])  # no impostors: FPR undefined, as sklearn returns it
    assert np.isnan(fpr).all() and tpr[-1] == 1.0
    with pytest.raises(ValueError, match="finite"):
        roc_curve([0.1, np.nan], [1, 0])
    with pytest.raises(ValueError, match="labels"):
        roc_curve([0.1, 0.2, 0.3], [1, 0])



def test_stratified_folds_balance_a_label_sorted_list():
    issame = np.r_[np.ones(300, bool), np.zeros(300, bool)]  # one LFW fold: genuine pairs first
    folds = stratified_kfold_ids(issame)
    for k in range(10):
        assert issame[folds == k].sum() == 30 and (~issame[folds == k]).sum() == 30
    with pytest.raises(ValueError, match="impostor"):
        stratified_kfold_ids(np.r_[np.ones(20, bool), np.zeros(5, bool)])


def test_weak_model_on_label_sorted_pairs_is_not_scored_near_zero(rng):
    """Consecutive folds of a label-sorted list leave single-class test folds whose thresholds are tuned on
    the opposite imbalance: a weakly discriminative model scores ~0%. Stratified folds measure it."""
    n = 300
    issame = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    a = rng.normal(size=(2 * n, 16))
    b = a + rng.normal(scale=np.where(issame, 3.0, 3.3)[:, None], size=a.shape)
    consecutive = verification_10fold(a, b, issame, folds=kfold_ids(2 * n))["accuracy"]
    stratified = verification_10fold(a, b, issame, folds=stratified_kfold_ids(issame))["accuracy"]
    assert consecutive < 30 and 45 <= stratified <= 75, (consecutive, stratified)


def test_embedding_spread_flags_collapsed_sets():
    from facepipe.pipeline.eval.metrics import embedding_spread

    rng = np.random.default_rng(0)
    spread = embedding_spread(rng.normal(size=(40, 128)))
    assert not spread["collapsed"] and spread["pairs"] == 780 and abs(spread["cos_mean"]) < 0.05
    one_direction = np.ones((40, 128)) + 1e-6 * rng.normal(size=(40, 128))  # the old 10-step smoke student
    assert embedding_spread(one_direction)["collapsed"]
    offset = 10.0 + 0.01 * rng.normal(size=(40, 128))  # distinct, but all within a degree of each other
    assert embedding_spread(offset)["collapsed"]
    assert not embedding_spread(np.eye(2, 8))["collapsed"]  # one orthogonal pair: spread, though std is 0
    assert embedding_spread(np.array([[1.0, 0.0], [1.0, 1e-4]]))["collapsed"]
    assert embedding_spread(np.array([[np.nan, 1.0], [1.0, 0.0]]))["collapsed"]
