"""KD terms: Hinton, feature, RKD, ILED/RPSD, QUD and Angular-KD, against hand values and plain-Python references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facepipe.models.losses import LossInputs, build_loss

torch.set_num_threads(1)


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def t64(x):
    return torch.tensor(np.asarray(x, dtype=np.float64))


def softplus(x):
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def logsumexp(z):
    top = max(z)
    return top + math.log(sum(math.exp(x - top) for x in z))


def softmax(z):
    lse = logsumexp(z)
    return [math.exp(x - lse) for x in z]


def smooth_l1(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def build(name, D=2, Dt=None, C=3, **params):
    return build_loss(name, num_classes=C, embedding_size=D, teacher_embedding_size=Dt or D, **params).double()


def inputs(fs, ft=None, labels=None, grad=False, **kw):
    return LossInputs(
        student_emb=t64(fs).requires_grad_(grad),
        teacher_emb=None if ft is None else t64(ft),
        labels=None if labels is None else torch.tensor(labels),
        **kw,
    )


# ---------------------------------------------------------------- Hinton KD


def ref_hinton(zs, zt, labels, T, l):
    kl = ce = 0.0
    for a, b, y in zip(zs, zt, labels):
        ps, pt = softmax([x / T for x in a]), softmax([x / T for x in b])
        kl += sum(p * (math.log(p) - math.log(q)) for p, q in zip(pt, ps))
        ce += logsumexp(a) - a[y]
    n = len(zs)
    return l * T * T * kl / n + (1 - l) * ce / n


def test_hinton_hand_value():
    # equal uniform logits: KL = 0, CE = log 2 -> 0.1 * log 2
    loss_fn = build("hinton_kd", C=2)
    loss = loss_fn(LossInputs(torch.zeros(1, 2), labels=torch.tensor([1]), student_logits=torch.zeros(1, 2), teacher_logits=torch.zeros(1, 2)))
    assert loss.item() == pytest.approx(0.1 * math.log(2))


def test_hinton_with_logits_matches_reference():
    zs = [[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]]
    zt = [[4.0, -1.0, 0.0], [-2.0, 5.0, 1.0]]
    loss_fn = build("hinton_kd")
    assert loss_fn.config == {"T": 4.0, "l": 0.9, "s": 64.0}
    s_logits = t64(zs).requires_grad_(True)
    t_logits = t64(zt).requires_grad_(True)
    x = LossInputs(torch.zeros(2, 2, dtype=torch.float64), labels=torch.tensor([0, 2]), student_logits=s_logits, teacher_logits=t_logits)
    loss = loss_fn(x)
    assert loss.item() == pytest.approx(ref_hinton(zs, zt, [0, 2], 4.0, 0.9), rel=1e-12)
    loss.backward()
    assert s_logits.grad.abs().sum() > 0 and t_logits.grad is None


def test_hinton_without_logits_uses_scaled_cosines_to_teacher_centres():
    rng = np.random.default_rng(0)
    fs, ft, centers = rng.normal(size=(3, 2)), rng.normal(size=(3, 2)), rng.normal(size=(3, 2))
    loss_fn = build("hinton_kd", T=2.0, l=0.5, s=10.0)
    with pytest.raises(ValueError, match="set_centers"):
        loss_fn(inputs(fs, ft, [0, 1, 2]))
    loss_fn.set_centers(t64(centers))
    zs = (10 * unit(fs) @ unit(centers).T).tolist()
    zt = (10 * unit(ft) @ unit(centers).T).tolist()
    assert loss_fn(inputs(fs, ft, [0, 1, 2])).item() == pytest.approx(ref_hinton(zs, zt, [0, 1, 2], 2.0, 0.5), rel=1e-12)


def test_hinton_pure_kd_needs_no_labels():
    loss_fn = build("hinton_kd", l=1.0)
    assert not loss_fn.needs_labels
    zs, zt = [[0.0, 1.0, 2.0]], [[2.0, 1.0, 0.0]]
    x = LossInputs(torch.zeros(1, 2), student_logits=t64(zs), teacher_logits=t64(zt))
    assert loss_fn(x).item() == pytest.approx(ref_hinton(zs, zt, [0], 4.0, 1.0), rel=1e-12)


# ---------------------------------------------------------------- feature KD


def test_feature_kd_hand_values():
    fs, ft = [[3.0, 4.0], [0.0, 2.0]], [[1.0, 0.0], [0.0, 5.0]]
    # normalised: ||[1,0] - [0.6,0.8]||^2 = 0.8 and 0 -> mean 0.4
    assert build("feature_kd")(inputs(fs, ft)).item() == pytest.approx(0.4)
    # raw: ||[1,0] - [3,4]||^2 = 20, ||[0,5] - [0,2]||^2 = 9 -> 14.5
    assert build("feature_kd", normalize=False)(inputs(fs, ft)).item() == pytest.approx(14.5)
    # cosine: 1 - 0.6 and 1 - 1 -> 0.2
    assert build("feature_kd", mode="cosine")(inputs(fs, ft)).item() == pytest.approx(0.2)


def test_feature_kd_projects_when_sizes_differ():
    loss_fn = build("feature_kd", D=3, Dt=2)
    with torch.no_grad():
        loss_fn.proj.weight.copy_(t64([[1, 0, 0], [0, 1, 0]]))
    x = inputs([[3.0, 4.0, 12.0]], [[1.0, 0.0]], grad=True)
    loss = loss_fn(x)
    assert loss.item() == pytest.approx(0.8)  # g(f_s) = [3, 4]
    loss.backward()
    assert loss_fn.proj.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- RKD


def ref_rkd(s, t, wd=25.0, wa=50.0):
    s, t = unit(s), unit(t)
    n = len(s)

    def dist(x):
        d = [[float(np.linalg.norm(x[i] - x[j])) for j in range(n)] for i in range(n)]
        mean = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [[v / mean for v in row] for row in d]

    def ang(x):
        def e(i, j):
            v = x[j] - x[i]
            return v / np.linalg.norm(v) if i != j else np.zeros_like(v)

        return [[[float(e(i, j) @ e(i, k)) for k in range(n)] for j in range(n)] for i in range(n)]

    ds, dt = dist(s), dist(t)
    a_s, a_t = ang(s), ang(t)
    ld = sum(smooth_l1(ds[i][j] - dt[i][j]) for i in range(n) for j in range(n)) / n**2
    la = sum(smooth_l1(a_s[i][j][k] - a_t[i][j][k]) for i in range(n) for j in range(n) for k in range(n)) / n**3
    return wd * ld + wa * la


def test_rkd_matches_reference_and_ignores_embedding_size():
    rng = np.random.default_rng(1)
    fs, ft = rng.normal(size=(4, 3)), rng.normal(size=(4, 5))
    loss_fn = build("rkd", D=3, Dt=5)
    assert loss_fn.config == {"distance_weight": 25.0, "angle_weight": 50.0, "normalize": True}
    assert loss_fn(inputs(fs, ft)).item() == pytest.approx(ref_rkd(fs, ft), rel=1e-10)


def test_rkd_is_zero_for_the_same_structure():
    # a rotated copy has the same distances and angles
    rng = np.random.default_rng(2)
    ft = rng.normal(size=(5, 3))
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    assert build("rkd", D=3)(inputs(ft @ rot, ft)).item() == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- ILED / RPSD


def test_iled_hand_value_and_weights():
    # c = 0.9 = s: w = softplus(0) / 40 + 0.1 = log(2)/40 + 0.1; loss = w * (1 - 0.9)
    loss_fn = build("iled")
    assert loss_fn.config == {"r": 40.0, "s": 0.9, "b": 0.1}
    loss = loss_fn(inputs([[0.9 * 7, math.sqrt(0.19) * 7]], [[2.0, 0.0]]))
    assert loss.item() == pytest.approx((math.log(2) / 40 + 0.1) * 0.1)
    assert (math.log(2) / 40 + 0.1) * 0.1 == pytest.approx(0.01173287, abs=1e-8)


def test_iled_reference_and_detached_weight_gradient():
    rng = np.random.default_rng(3)
    fs, ft = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    fs[0] = ft[0] * 2 + 0.01  # an easy row: weight near the floor b
    fs[1] = -ft[1]  # the hardest row: c = -1, w = softplus(76) / 40 + 0.1 = 2.0
    c = (unit(fs) * unit(ft)).sum(1)
    w = np.array([softplus(40 * (0.9 - ci)) / 40 + 0.1 for ci in c])
    assert w[0] == pytest.approx(0.1, abs=1e-3) and w[1] == pytest.approx(2.0)
    x = inputs(fs, ft, grad=True)
    loss = build("iled", D=3)(x)
    assert loss.item() == pytest.approx(float((w * (1 - c)).mean()), rel=1e-12)
    loss.backward()
    # weight held constant: d loss / d f_s,i = -(w_i / B) * (u_t - c u_s) / ||f_s||
    us, ut = unit(fs), unit(ft)
    grad = -(w / 4)[:, None] * (ut - c[:, None] * us) / np.linalg.norm(fs, axis=1, keepdims=True)
    assert np.allclose(x.student_emb.grad.numpy(), grad, atol=1e-12)


def ref_rpsd(fs, ft, bank_s, bank_t, t=0.05, r=60.0, b=1.0, lam=40.0):
    s, tt = unit(fs), unit(ft)
    cs = np.concatenate([s, unit(bank_s)]) if len(bank_s) else s
    ct = np.concatenate([tt, unit(bank_t)]) if len(bank_t) else tt
    total, pairs = 0.0, 0
    for i in range(len(s)):
        for j in range(len(cs)):
            if j == i:
                continue
            pairs += 1
            d = abs(float(s[i] @ cs[j]) - float(tt[i] @ ct[j]))
            if d > t:
                total += (softplus(r * (d - t)) / r + b) * d
    return lam * total / pairs


def test_rpsd_hand_values_and_mining_threshold():
    # student pair cos 0, teacher pair cos 0.6: d = 0.6 on both ordered pairs;
    # w = softplus(60 * 0.55) / 60 + 1 = 1.55 (to 1e-15) -> 40 * (2 * 1.55 * 0.6) / 2 = 37.2
    loss = build("rpsd")(inputs([[1.0, 0.0], [0.0, 3.0]], [[1.0, 0.0], [0.6, 0.8]]))
    assert loss.item() == pytest.approx(37.2, abs=1e-9)
    # teacher pair cos 0.04: d = 0.04 <= t -> nothing mined
    loss = build("rpsd")(inputs([[1.0, 0.0], [0.0, 3.0]], [[1.0, 0.0], [0.04, math.sqrt(1 - 0.0016)]]))
    assert loss.item() == 0.0


def test_rpsd_uses_the_memory_bank_of_past_rows():
    rng = np.random.default_rng(4)
    loss_fn = build("rpsd", D=3, Dt=4, bank_size=5)
    assert loss_fn.config["lam"] == 40.0 and loss_fn.config["t"] == 0.05
    steps = [(rng.normal(size=(3, 3)), rng.normal(size=(3, 4))) for _ in range(3)]
    seen_s, seen_t = [], []
    for fs, ft in steps:
        bank_s, bank_t = seen_s[-5:], seen_t[-5:]  # the five newest past rows
        x = inputs(fs, ft, grad=True)
        loss = loss_fn(x)
        assert loss.item() == pytest.approx(ref_rpsd(fs, ft, bank_s, bank_t), rel=1e-10)
        loss.backward()
        assert x.student_emb.grad.abs().sum() > 0
        seen_s += list(fs)
        seen_t += list(ft)
    assert len(loss_fn.bank_s) == 5 and int(loss_fn.bank_t.ptr) == 9 % 5


def test_rpsd_is_zero_when_student_matches_teacher():
    rng = np.random.default_rng(5)
    loss_fn = build("rpsd", D=3, bank_size=4)
    for _ in range(3):
        f = rng.normal(size=(3, 3))
        assert loss_fn(inputs(f * 3, f)).item() == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- QUD


def test_qud_hand_values_and_queue_update():
    loss_fn = build("qud")
    assert loss_fn.config == {"tau": 0.1, "queue_size": 1024}
    # empty queue: only the positive -> CE = 0; then f_t = [1, 0] is queued
    assert loss_fn(inputs([[2.0, 0.0]], [[1.0, 0.0]])).item() == pytest.approx(0.0)
    assert len(loss_fn.queue) == 1
    # s = [0, 1], t = [0, 1], queue = {[1, 0]}: logits [10, 0] -> log(1 + e^-10)
    loss = loss_fn(inputs([[0.0, 5.0]], [[0.0, 3.0]]))
    assert loss.item() == pytest.approx(math.log1p(math.exp(-10)), rel=1e-12)
    assert loss_fn.queue.valid().tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_qud_matches_reference_and_wraps_fifo():
    rng = np.random.default_rng(6)
    loss_fn = build("qud", D=3, Dt=3, queue_size=4)
    b1, b2 = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    fs = rng.normal(size=(3, 3))
    loss_fn(inputs(fs, b1))
    loss = loss_fn(inputs(fs, b2))
    queue = unit(b1)
    expected = 0.0
    for s, t in zip(unit(fs), unit(b2)):
        z = [float(s @ t) / 0.1] + [float(s @ q) / 0.1 for q in queue]
        expected += logsumexp(z) - z[0]
    assert loss.item() == pytest.approx(expected / 3, rel=1e-12)
    # slots: b1 rows at 0..2, then b2 rows at 3, 0, 1 (oldest overwritten first)
    want = np.stack([unit(b2)[1], unit(b2)[2], unit(b1)[2], unit(b2)[0]])
    assert np.allclose(loss_fn.queue.items.numpy(), want)
    assert int(loss_fn.queue.ptr) == 2 and len(loss_fn.queue) == 4


# ---------------------------------------------------------------- Angular-KD


def test_angular_kd_matches_reference_in_eval_mode():
    loss_fn = build("angular_kd", views=2).eval()
    assert {k: loss_fn.config[k] for k in ("diversity_weight", "anchor_weight", "anchor_tau", "anchor_margin")} == {
        "diversity_weight": 1.0, "anchor_weight": 0.1, "anchor_tau": 0.07, "anchor_margin": 0.2,
    }
    Ws = [np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([[0.8, -0.6], [0.6, 0.8]])]
    bs = [np.array([0.1, -0.2]), np.array([0.0, 0.3])]
    gammas, betas = [1.5, 0.7], [0.2, -0.1]
    with torch.no_grad():
        for i in range(2):
            loss_fn.generators[i].weight.copy_(t64(Ws[i]))
            loss_fn.generators[i].bias.copy_(t64(bs[i]))
            loss_fn.norms[i].weight.fill_(gammas[i])
            loss_fn.norms[i].bias.fill_(betas[i])
    ft = np.array([[1.0, 0.2], [0.3, -1.0], [-0.5, 0.5]])
    fs = np.array([[0.9, 0.1], [0.2, -0.8], [0.4, 0.6]])
    loss = loss_fn(inputs(fs, ft))

    bn = 1 / math.sqrt(1 + 1e-5)  # eval BN with fresh running stats (mean 0, var 1)
    views = np.stack([gammas[n] * (ft @ Ws[n].T + bs[n]) * bn + betas[n] for n in range(2)], 1)  # (B, N, D)
    ens = (0.8 * views[:, 0] + 0.8 * views[:, 1] + ft) / math.sqrt(0.8**2 * 2 + 1)
    distill = float(np.mean(1 - (unit(fs) * unit(ens)).sum(1)))
    r = unit(ft[:, None, :] - views)
    diversity = softplus(float(np.mean((r[:, 0] * r[:, 1]).sum(1))))  # N = 2: both ordered pairs equal
    anchor = 0.0
    for b in range(3):
        for n in range(2):
            sims = [float(unit(views[b, n]) @ unit(ft[k])) for k in range(3)]
            if sims[b] >= 0.8:
                sims[b] = 1.0
            z = [x / 0.07 for x in sims]
            anchor += logsumexp(z) - z[b]
    anchor = anchor / 6 / 2
    assert loss.item() == pytest.approx(distill + diversity + 0.1 * anchor, rel=1e-10)


def test_angular_kd_training_gradients_and_detach_option():
    rng = np.random.default_rng(7)
    fs, ft = rng.normal(size=(6, 3)), rng.normal(size=(6, 4))
    torch.manual_seed(0)
    loss_fn = build("angular_kd", D=3, Dt=4)
    assert len(loss_fn.generators) == 5 and isinstance(loss_fn.proj, torch.nn.Linear)
    q = loss_fn.generators[0].weight.detach()
    assert torch.allclose(q @ q.t(), torch.eye(4, dtype=q.dtype), atol=1e-6)  # orthogonal init
    x = inputs(fs, ft, grad=True)
    x.teacher_emb.requires_grad_(True)
    loss_fn(x).backward()
    assert x.student_emb.grad.abs().sum() > 0 and x.teacher_emb.grad is None
    assert all(g.weight.grad.abs().sum() > 0 for g in loss_fn.generators)
    assert int(loss_fn.norms[0].num_batches_tracked) == 1
    # only the distillation term left and the target detached: the views get no gradient
    only = build("angular_kd", D=3, Dt=4, diversity_weight=0.0, anchor_weight=0.0, detach_target=True)
    only(inputs(fs, ft, grad=True)).backward()
    assert all(g.weight.grad is None for g in only.generators)
    assert only.proj.weight.grad.abs().sum() > 0
