"""Margin heads: ArcFace/CosFace, frozen teacher centres, AdaDistill, AdaFace and the geometry-aware margin.

Every expected value is re-derived here in plain Python / numpy (loops, math.acos / math.cos), not with the
code under test.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from facepipe.models.losses import LossInputs, build_loss, class_centers
from facepipe.models.losses.adadistill import AdaptiveCenters, occurrence_rank

torch.set_num_threads(1)


# ---------------------------------------------------------------- plain-Python references


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def logsumexp(z):
    top = max(z)
    return top + math.log(sum(math.exp(x - top) for x in z))


def ref_margin_ce(cos, labels, s, m, kind):
    """Mean CE of margin logits; ArcFace: cos(theta + m) if theta + m < pi else cos - m sin m."""
    total = 0.0
    for row, y in zip(cos, labels):
        z = [s * c for c in row]
        c = row[y]
        if kind == "arc":
            theta = math.acos(min(1.0, max(-1.0, c)))
            t = math.cos(theta + m) if theta + m < math.pi else c - m * math.sin(m)
        else:
            t = c - m
        z[y] = s * t
        total += logsumexp(z) - z[y]
    return total / len(labels)


def ref_adaface_ce(cos, labels, ms, s, m, eps=1e-3):
    total = 0.0
    for row, y, q in zip(cos, labels, ms):
        row = [min(1 - eps, max(-1 + eps, c)) for c in row]
        theta = math.acos(row[y])
        t = math.cos(min(math.pi - eps, max(eps, theta - m * q))) - (m + m * q)
        z = [s * c for c in row]
        z[y] = s * t
        total += logsumexp(z) - z[y]
    return total / len(labels)


def ref_adadistill(W, fs, ft, labels, mode):
    """Sequential (batch-index order) AdaDistill centre update; returns new W and per-row lam."""
    W = np.array(W, dtype=np.float64)
    fs, ft = unit(fs), unit(ft)
    lams = []
    for i, y in enumerate(labels):
        w = W[y].copy()
        lam = min(1.0, max(1e-6, float(w @ ft[i]) / float(np.linalg.norm(w))))
        a = min(1.0, max(-1.0, float(fs[i] @ ft[i])))
        alpha = min(1.0, max(1e-6, a * lam)) if mode == "hard" else min(1.0, max(0.0, a))
        W[y] = alpha * w + (1 - alpha) * ft[i]
        lams.append(lam)
    return W, lams


def t64(x):
    return torch.tensor(np.asarray(x, dtype=np.float64))


def inputs(fs, ft=None, labels=None, epoch=0.0, grad=False):
    s = t64(fs).requires_grad_(grad)
    return LossInputs(
        student_emb=s,
        teacher_emb=None if ft is None else t64(ft),
        labels=None if labels is None else torch.tensor(labels),
        epoch_float=epoch,
    )


def build(name, C, D, Dt=None, **params):
    return build_loss(name, num_classes=C, embedding_size=D, teacher_embedding_size=Dt or D, **params).double()


# ---------------------------------------------------------------- ArcFace / CosFace


def test_cosface_hand_value():
    # f = [3, 0] -> unit [1, 0]; W = I: cos = [1, 0]; s=2, m=0.5 -> logits [1, 0] -> CE = log(1 + e^-1)
    m = build("cosface", 2, 2, s=2.0, m=0.5)
    with torch.no_grad():
        m.weight.copy_(t64([[1, 0], [0, 1]]))
    loss = m(inputs([[3.0, 0.0]], labels=[0]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-12)
    assert math.log(1 + math.exp(-1)) == pytest.approx(0.31326168751822286)


def test_arcface_hand_value_and_pi_fallback():
    # target at 60 degrees: cos(pi/3 + 0.5) = 0.0235966; other class at 30 degrees: cos = sqrt(3)/2
    m = build("arcface", 2, 2, s=1.0, m=0.5)
    with torch.no_grad():
        m.weight.copy_(t64([[1, 0], [0, 1]]))
    loss = m(inputs([[0.5, math.sqrt(3) / 2]], labels=[0]))
    t = math.cos(math.pi / 3 + 0.5)
    assert t == pytest.approx(0.0235966, abs=1e-6)
    assert loss.item() == pytest.approx(math.log(math.exp(t) + math.exp(math.sqrt(3) / 2)) - t, abs=1e-12)
    # theta + m > pi (cos = -0.95, theta = 2.824 > pi - 0.5): target = cos - m sin m = -0.95 - 0.2397...
    loss = m(inputs([[-0.95, math.sqrt(1 - 0.95**2)]], labels=[0]))
    t = -0.95 - 0.5 * math.sin(0.5)
    other = math.sqrt(1 - 0.95**2)
    assert loss.item() == pytest.approx(math.log(math.exp(t) + math.exp(other)) - t, abs=1e-12)


@pytest.mark.parametrize("name, kind, m", [("arcface", "arc", 0.5), ("cosface", "cos", 0.35)])
def test_margin_heads_defaults_match_reference(name, kind, m):
    rng = np.random.default_rng(1)
    fs, W = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    labels = [0, 3, 1, 1, 2]
    head = build(name, 4, 3)
    assert head.config == {"s": 64.0, "m": m}
    with torch.no_grad():
        head.weight.copy_(t64(W))
    cos = unit(fs) @ unit(W).T
    expected = ref_margin_ce(cos.tolist(), labels, 64.0, m, kind)
    assert head(inputs(fs, labels=labels)).item() == pytest.approx(expected, rel=1e-10)


# ---------------------------------------------------------------- frozen teacher centres


def test_class_centers_hand_value():
    ft = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    c = class_centers(ft, torch.tensor([0, 0, 1]), 3)
    r = 1 / math.sqrt(2)
    assert torch.allclose(c, torch.tensor([[r, r], [r, r], [0.0, 0.0]]), atol=1e-7)


@pytest.mark.parametrize("name, kind", [("arc_distill", "arc"), ("cos_distill", "cos")])
def test_frozen_center_heads(name, kind):
    rng = np.random.default_rng(2)
    fs, centers = rng.normal(size=(4, 3)), rng.normal(size=(3, 3))
    labels = [2, 0, 1, 2]
    head = build(name, 3, 3)
    with pytest.raises(RuntimeError, match="set_centers"):
        head(inputs(fs, labels=labels))
    head.set_centers(t64(centers) * 5)  # re-normalised on the way in
    m = 0.5 if kind == "arc" else 0.35
    expected = ref_margin_ce((unit(fs) @ unit(centers).T).tolist(), labels, 64.0, m, kind)
    x = inputs(fs, labels=labels, grad=True)
    loss = head(x)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    loss.backward()
    assert x.student_emb.grad.abs().sum() > 0
    assert list(head.parameters()) == []  # the centres are frozen buffers


# ---------------------------------------------------------------- AdaDistill


def test_occurrence_rank():
    assert occurrence_rank(torch.tensor([3, 1, 3, 3, 1, 0])).tolist() == [0, 0, 1, 2, 1, 0]


def _centers(W, mode="hard"):
    c = AdaptiveCenters(len(W), len(W[0]), mode).double()
    c.centers.copy_(t64(W))
    return c


def test_adadistill_update_hand_values():
    # f_t = [1, 0], w = [1, 1] -> lam = 1/sqrt(2); a = 0.8
    fs = t64([[0.8, 0.6]])
    ft = t64([[1.0, 0.0]])
    hard = _centers([[1.0, 1.0]], "hard")
    stats = hard.step(fs, ft, torch.tensor([0]))
    # alpha' = 0.8 / sqrt(2) = 0.565685; w = alpha' [1, 1] + (1 - alpha') [1, 0] = [1, alpha']
    assert stats["lam"].item() == pytest.approx(1 / math.sqrt(2))
    assert stats["alpha"].item() == pytest.approx(0.8 / math.sqrt(2))
    assert hard.centers[0].tolist() == pytest.approx([1.0, 0.8 / math.sqrt(2)])
    plain = _centers([[1.0, 1.0]], "plain")
    plain.step(fs, ft, torch.tensor([0]))
    assert plain.centers[0].tolist() == pytest.approx([1.0, 0.8])  # alpha = a = 0.8
    # lam is clamped at 1e-6 when the centre is orthogonal to f_t: w ~ f_t afterwards
    ortho = _centers([[0.0, 2.0]], "hard")
    ortho.step(fs, ft, torch.tensor([0]))
    assert ortho.centers[0].tolist() == pytest.approx([1 - 1e-6, 2e-6], abs=1e-12)  # alpha = 1e-6


def test_adadistill_plain_alpha_clamps_negative_cosine_to_zero():
    c = _centers([[0.0, 1.0]], "plain")
    stats = c.step(t64([[-1.0, 0.0]]), t64([[1.0, 0.0]]), torch.tensor([0]))
    assert stats["alpha"].item() == 0.0
    assert c.centers[0].tolist() == pytest.approx([1.0, 0.0])  # fully replaced by f_t


def test_adadistill_repeated_labels_apply_in_index_order():
    rng = np.random.default_rng(3)
    W = rng.normal(size=(3, 4))
    fs, ft = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    labels = [1, 0, 1, 2, 1]
    batch = _centers(W)
    stats = batch.step(unit_t(fs), unit_t(ft), torch.tensor(labels))
    expected_W, expected_lam = ref_adadistill(W, fs, ft, labels, "hard")
    assert np.allclose(batch.centers.numpy(), expected_W, atol=1e-12)
    assert np.allclose(stats["lam"].numpy(), expected_lam, atol=1e-12)
    # ... the same as feeding the rows one by one, in index order
    one_by_one = _centers(W)
    for i in range(5):
        one_by_one.step(unit_t(fs[i : i + 1]), unit_t(ft[i : i + 1]), torch.tensor(labels[i : i + 1]))
    assert torch.allclose(batch.centers, one_by_one.centers, atol=1e-12)
    # ... and not what the reverse order gives (so the order is really being tested)
    reverse_W, _ = ref_adadistill(W, fs[::-1], ft[::-1], labels[::-1], "hard")
    assert not np.allclose(reverse_W[1], expected_W[1], atol=1e-6)


def unit_t(x):
    return t64(unit(x))


@pytest.mark.parametrize("name, kind, m", [("ada_arc_distill", "arc", 0.45), ("ada_cos_distill", "cos", 0.35)])
@pytest.mark.parametrize("mode", ["hard", "plain"])
def test_adadistill_loss_matches_reference(name, kind, m, mode):
    rng = np.random.default_rng(4)
    W = rng.normal(scale=0.01, size=(3, 4))
    fs, ft = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    labels = [0, 2, 0, 1, 2, 0]
    loss_fn = build(name, 3, 4, alpha=mode)
    assert loss_fn.config["m"] == m and loss_fn.config["s"] == 64.0
    loss_fn.centers.centers.copy_(t64(W))
    x = inputs(fs * 7, ft * 3, labels, grad=True)
    loss = loss_fn(x)
    W2, _ = ref_adadistill(W, fs, ft, labels, mode)
    expected = ref_margin_ce((unit(fs) @ unit(W2).T).tolist(), labels, 64.0, m, kind)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    assert np.allclose(loss_fn.centers.centers.numpy(), W2, atol=1e-12)
    loss.backward()
    assert x.student_emb.grad.abs().sum() > 0
    assert not loss_fn.centers.centers.requires_grad and list(loss_fn.parameters()) == []


def test_adadistill_eval_mode_does_not_move_centres():
    loss_fn = build("ada_arc_distill", 3, 4).eval()
    before = loss_fn.centers.centers.clone()
    rng = np.random.default_rng(5)
    loss_fn(inputs(rng.normal(size=(4, 4)), rng.normal(size=(4, 4)), [0, 1, 2, 0]))
    assert torch.equal(before, loss_fn.centers.centers)


# ---------------------------------------------------------------- AdaFace


def test_adaface_ema_update_hand_values():
    loss_fn = build("adaface", 2, 2)
    ema = loss_fn.norm_ema
    assert ema.batch_mean.item() == 20.0 and ema.batch_std.item() == 100.0
    # norms 10, 20, 30: mean 20, unbiased std 10 -> mu = 20, sigma = 0.99 * 100 + 0.01 * 10 = 99.1
    loss_fn(inputs([[10.0, 0.0], [0.0, 20.0], [30.0, 0.0]], labels=[0, 1, 0]))
    assert ema.batch_mean.item() == pytest.approx(20.0)
    assert ema.batch_std.item() == pytest.approx(99.1)
    # norms 40, 40, 200 -> clipped to 100: mean 60, std 34.641 -> mu = 0.99*20 + 0.6, sigma = 0.99*99.1 + 0.01*34.641
    loss_fn(inputs([[40.0, 0.0], [0.0, 40.0], [200.0, 0.0]], labels=[0, 1, 0]))
    assert ema.batch_mean.item() == pytest.approx(0.99 * 20 + 0.01 * 60)
    assert ema.batch_std.item() == pytest.approx(0.99 * 99.1 + 0.01 * math.sqrt(((20**2) * 2 + 40**2) / 2))
    loss_fn.eval()
    before = ema.batch_mean.clone()
    loss_fn(inputs([[1.0, 0.0], [0.0, 1.0]], labels=[0, 1]))
    assert torch.equal(before, ema.batch_mean)


def test_adaface_loss_matches_reference():
    rng = np.random.default_rng(6)
    W = rng.normal(size=(4, 3))
    fs = rng.normal(size=(5, 3)) * np.array([[1], [10], [25], [60], [300]])
    labels = [1, 0, 3, 2, 1]
    loss_fn = build("adaface", 4, 3)
    assert loss_fn.config == {"s": 64.0, "m": 0.4, "h": 0.333, "t_alpha": 0.01}
    with torch.no_grad():
        loss_fn.weight.copy_(t64(W))
    x = inputs(fs, labels=labels, grad=True)
    loss = loss_fn(x)
    norms = np.clip(np.linalg.norm(fs, axis=1), 0.001, 100)
    mu = 0.99 * 20 + 0.01 * norms.mean()
    sd = 0.99 * 100 + 0.01 * norms.std(ddof=1)
    ms = np.clip(0.333 * (norms - mu) / (sd + 1e-3), -1, 1)
    expected = ref_adaface_ce((unit(fs) @ unit(W).T).tolist(), labels, ms, 64.0, 0.4)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    loss.backward()
    assert x.student_emb.grad.abs().sum() > 0 and loss_fn.weight.grad.abs().sum() > 0


def test_adaface_sign_convention_at_the_extremes():
    # ms = -1 (low norm) -> ArcFace: cos(theta + m), no additive part; ms = +1 -> cos(theta - m) - 2m
    loss_fn = build("adaface", 2, 2, s=1.0).eval()
    loss_fn.norm_ema.batch_mean.fill_(20.0)
    loss_fn.norm_ema.batch_std.fill_(1.0)
    with torch.no_grad():
        loss_fn.weight.copy_(t64([[1, 0], [0, 1]]))
    c = 0.6
    other = math.sqrt(1 - c * c)
    for norm, target in [(1.0, math.cos(math.acos(c) + 0.4)), (50.0, math.cos(math.acos(c) - 0.4) - 0.8)]:
        loss = loss_fn(inputs([[norm * c, norm * other]], labels=[0]))
        assert loss.item() == pytest.approx(math.log(math.exp(target) + math.exp(other)) - target, abs=1e-12)


# ---------------------------------------------------------------- AdaFace + geometry-aware margin


def geom_case():
    """Two rows, labels 0 and 1, lam = 0.5 for both; cos_st = 0.2 (row 0, trailing) and 0.8 (row 1, aligned)."""
    W = [[0.5, math.sqrt(3) / 2], [math.sqrt(3) / 2, 0.5]]  # cos(w_0, [1,0]) = 0.5, cos(w_1, [0,1]) = 0.5
    ft = [[1.0, 0.0], [0.0, 1.0]]
    fs = [[0.2 * 12, math.sqrt(1 - 0.04) * 12], [math.sqrt(1 - 0.64) * 30, 0.8 * 30]]
    return W, fs, ft, [0, 1]


def ref_geom_loss(W, fs, ft, labels, epoch, k=3.0, w=1.0, warmup=1.0):
    W2, lams = ref_adadistill(W, fs, ft, labels, "hard")
    cos_st = (unit(fs) * unit(ft)).sum(1)
    geom = np.array([k * lam * max(0.0, lam - c) for lam, c in zip(lams, cos_st)])
    norms = np.clip(np.linalg.norm(fs, axis=1), 0.001, 100)
    mu = 0.99 * 20 + 0.01 * norms.mean()
    sd = 0.99 * 100 + 0.01 * norms.std(ddof=1)
    q = 0.333 * (norms - mu) / (sd + 1e-3)
    w_eff = w * min(1.0, epoch / warmup)
    ms = np.clip(q + w_eff * geom, -1, 1)
    return ref_adaface_ce((unit(fs) @ unit(W2).T).tolist(), labels, ms, 64.0, 0.4), geom


def test_adaface_geom_hand_geometry_and_reference_loss():
    W, fs, ft, labels = geom_case()
    loss_fn = build("adaface_geom", 2, 2)
    assert {k: loss_fn.config[k] for k in ("k", "w", "warmup", "alpha")} == {"k": 3.0, "w": 1.0, "warmup": 1.0, "alpha": "hard"}
    loss_fn.centers.centers.copy_(t64(W))
    loss = loss_fn(inputs(fs, ft, labels, epoch=2.0))
    expected, geom = ref_geom_loss(W, fs, ft, labels, epoch=2.0)
    # row 0: 3 * 0.5 * (0.5 - 0.2) = 0.45; row 1: cos_st 0.8 >= lam 0.5 -> 0
    assert geom.tolist() == pytest.approx([0.45, 0.0])
    assert loss_fn.last_stats["geom"].item() == pytest.approx(0.225)
    assert loss_fn.last_stats["lam"].item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_adaface_geom_is_zero_when_student_is_aligned():
    W, fs, ft, labels = geom_case()
    fs = [[0.9, math.sqrt(1 - 0.81)], fs[1]]  # both rows now have cos_st >= lam
    geo = build("adaface_geom", 2, 2)
    geo.centers.centers.copy_(t64(W))
    loss = geo(inputs(fs, ft, labels, epoch=5.0))
    assert geo.last_stats["geom"].item() == 0.0
    no_geom = build("adaface_geom", 2, 2, w=0.0)
    no_geom.centers.centers.copy_(t64(W))
    assert loss.item() == pytest.approx(no_geom(inputs(fs, ft, labels, epoch=5.0)).item(), rel=1e-12)


@pytest.mark.parametrize("epoch", [0.0, 0.25, 0.5, 1.0, 3.0])
def test_adaface_geom_warmup_ramp(epoch):
    W, fs, ft, labels = geom_case()
    loss_fn = build("adaface_geom", 2, 2)
    loss_fn.centers.centers.copy_(t64(W))
    loss = loss_fn(inputs(fs, ft, labels, epoch=epoch))
    expected, _ = ref_geom_loss(W, fs, ft, labels, epoch=epoch)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    if 0 < epoch < 1:  # the ramp really changes the loss
        full, _ = ref_geom_loss(W, fs, ft, labels, epoch=1.0)
        assert abs(expected - full) > 1e-3


def test_adaface_geom_gradient_reaches_student_only():
    W, fs, ft, labels = geom_case()
    loss_fn = build("adaface_geom", 2, 2)
    loss_fn.centers.centers.copy_(t64(W))
    x = inputs(fs, ft, labels, epoch=1.0, grad=True)
    x.teacher_emb.requires_grad_(True)
    loss_fn(x).backward()
    assert x.student_emb.grad.abs().sum() > 0
    assert x.teacher_emb.grad is None
    assert list(loss_fn.parameters()) == []


# ---------------------------------------------------------------- torch.distributed (gloo, 2 ranks)


def _dist_worker(rank, world, init_file, out_dir, W, rows):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        c = AdaptiveCenters(len(W), len(W[0])).double()
        c.centers.copy_(t64(W))
        fs, ft, labels = rows[rank]
        stats = c.step(unit_t(fs), unit_t(ft), torch.tensor(labels))
        torch.save({"centers": c.centers, "lam": stats["lam"]}, Path(out_dir) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
def test_adadistill_centres_stay_identical_across_ranks(tmp_path):
    import torch.multiprocessing as mp

    rng = np.random.default_rng(7)
    W = rng.normal(size=(3, 4)).tolist()
    rows = [  # uneven batches; label 1 appears on both ranks
        (rng.normal(size=(3, 4)).tolist(), rng.normal(size=(3, 4)).tolist(), [1, 0, 1]),
        (rng.normal(size=(2, 4)).tolist(), rng.normal(size=(2, 4)).tolist(), [1, 2]),
    ]
    # fork: the children inherit the imported torch instead of paying for a fresh interpreter each
    mp.start_processes(
        _dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path), W, rows), nprocs=2, start_method="fork"
    )
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in (0, 1))
    assert torch.equal(r0["centers"], r1["centers"])
    all_fs = rows[0][0] + rows[1][0]
    all_ft = rows[0][1] + rows[1][1]
    expected_W, lams = ref_adadistill(W, all_fs, all_ft, rows[0][2] + rows[1][2], "hard")
    assert np.allclose(r0["centers"].numpy(), expected_W, atol=1e-12)
    assert np.allclose(r0["lam"].numpy(), lams[:3]) and np.allclose(r1["lam"].numpy(), lams[3:])
