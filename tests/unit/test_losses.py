"""The loss registry and interface: building, parameter errors, the weighted sum, gradient routing,
checkpoint round trips of every stateful term and the FIFO queue. Per-term golden values live in
test_losses_margin.py and test_losses_kd.py."""

from __future__ import annotations

import io

import pytest
import torch

from facepipe.models.losses import LOSSES, LossInputs, WeightedLoss, build_loss, build_weighted_loss, list_losses
from facepipe.models.losses.memory import FeatureQueue
from facepipe.pipeline.config import LossTerm as LossTermConfig
from facepipe.pipeline.errors import ConfigError

torch.set_num_threads(1)

ALL = [
    "arcface", "cosface", "arc_distill", "cos_distill", "ada_arc_distill", "ada_cos_distill", "adaface",
    "adaface_geom", "hinton_kd", "feature_kd", "rkd", "iled", "rpsd", "qud", "angular_kd",
]
SAME_DIMS_ONLY = {"arc_distill", "cos_distill", "ada_arc_distill", "ada_cos_distill", "adaface_geom"}
C, DS, B = 4, 6, 8


def make(name, ds=DS, dt=DS, **params):
    m = build_loss(name, num_classes=C, embedding_size=ds, teacher_embedding_size=dt, **params)
    if m.needs_centers:
        m.set_centers(torch.randn(C, dt))
    return m


def batch(step, ds=DS, dt=DS, grad=True):
    g = torch.Generator().manual_seed(100 + step)
    return LossInputs(
        student_emb=(torch.randn(B, ds, generator=g) * 5).requires_grad_(grad),
        teacher_emb=(torch.randn(B, dt, generator=g) * 3).requires_grad_(grad),
        labels=torch.tensor([0, 1, 2, 3, 0, 0, 2, 1]),
        epoch_float=0.5 * step,
    )


# ---------------------------------------------------------------- registry and parameters


def test_every_term_is_registered():
    assert list_losses() == ALL
    for name in ALL:
        cls = LOSSES.get(name)
        assert cls.name == name and cls.__doc__
        assert isinstance(cls.needs_labels, bool) and isinstance(cls.needs_teacher, bool)


def test_unknown_loss_suggests_the_closest_name():
    with pytest.raises(ConfigError, match=r"unknown loss 'arcfce' \(did you mean 'arcface'\?\)"):
        build_loss("arcfce", num_classes=2, embedding_size=4)


@pytest.mark.parametrize(
    "name, params, pattern",
    [
        ("arcface", {"margin": 0.3}, r"loss 'arcface': unknown parameter 'margin'"),
        ("ada_arc_distill", {"alhpa": "hard"}, r"loss 'ada_arc_distill': unknown parameter 'alhpa' \(did you mean 'alpha'\?\)"),
        ("ada_arc_distill", {"alpha": "soft"}, r"loss 'ada_arc_distill': parameter 'alpha' must be one of \['plain', 'hard'\]"),
        ("cosface", {"s": "big"}, r"loss 'cosface': parameter 's' must be float"),
        ("cosface", {"s": -1.0}, r"loss 'cosface': parameter 's' must be > 0"),
        ("hinton_kd", {"l": 1.5}, r"loss 'hinton_kd': parameter 'l' must be <= 1.0"),
        ("feature_kd", {"normalize": "yes"}, r"loss 'feature_kd': parameter 'normalize' must be bool"),
        ("qud", {"queue_size": 10.5}, r"loss 'qud': parameter 'queue_size' must be int"),
        ("qud", {"tau": True}, r"loss 'qud': parameter 'tau' must be float"),
    ],
)
def test_bad_parameters_name_the_loss_and_the_parameter(name, params, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_loss(name, num_classes=2, embedding_size=4, **params)


def test_parameters_are_coerced_from_config_strings_and_ints():
    m = build_loss("feature_kd", num_classes=2, embedding_size=4, normalize="false", mode="cosine")
    assert m.config == {"mode": "cosine", "normalize": False}
    m = build_loss("qud", num_classes=2, embedding_size=4, tau=1, queue_size=8.0)
    assert m.config == {"tau": 1.0, "queue_size": 8} and isinstance(m.config["tau"], float)


@pytest.mark.parametrize("name", sorted(SAME_DIMS_ONLY))
def test_teacher_space_centres_need_matching_sizes(name):
    with pytest.raises(ConfigError, match=rf"loss '{name}': the student embedding size \(6\) must equal the teacher's \(5\)"):
        build_loss(name, num_classes=2, embedding_size=6, teacher_embedding_size=5)


def test_missing_inputs_are_reported():
    with pytest.raises(ValueError, match="needs labels"):
        make("arcface")(LossInputs(torch.randn(2, DS)))
    with pytest.raises(ValueError, match="needs teacher"):
        make("feature_kd")(LossInputs(torch.randn(2, DS)))


# ---------------------------------------------------------------- weighted sum


def test_weighted_loss_sums_and_logs_each_term():
    fs = torch.tensor([[3.0, 4.0], [0.0, 2.0]], requires_grad=True)
    ft = torch.tensor([[1.0, 0.0], [0.0, 5.0]])
    kd = build_loss("feature_kd", num_classes=2, embedding_size=2)  # 0.4 (see test_losses_kd)
    cos = build_loss("feature_kd", num_classes=2, embedding_size=2, mode="cosine")  # 0.2
    total_fn = WeightedLoss([("mse", 2.0, kd), ("cos", 0.5, cos)])
    total, logs = total_fn(LossInputs(fs, ft))
    assert set(logs) == {"mse", "cos"}
    assert logs["mse"].item() == pytest.approx(0.4) and logs["cos"].item() == pytest.approx(0.2)
    assert total.item() == pytest.approx(2.0 * 0.4 + 0.5 * 0.2)
    assert not logs["mse"].requires_grad
    total.backward()
    assert fs.grad.abs().sum() > 0
    assert total_fn.needs_teacher and not total_fn.needs_labels


def test_weighted_loss_rejects_duplicates_negative_weights_and_emptiness():
    kd = build_loss("feature_kd", num_classes=2, embedding_size=2)
    with pytest.raises(ConfigError, match="listed twice"):
        WeightedLoss([("kd", 1.0, kd), ("kd", 1.0, kd)])
    with pytest.raises(ConfigError, match="weight must be >= 0"):
        WeightedLoss([("kd", -1.0, kd)])
    with pytest.raises(ConfigError, match="no loss terms"):
        WeightedLoss([])


def test_build_weighted_loss_from_config_entries_and_set_centers():
    specs = [
        LossTermConfig(name="arc_distill", weight=1.0, params={"m": 0.3}),
        {"name": "hinton_kd", "weight": 0.5},
        {"name": "rkd", "params": {"angle_weight": 0}},
    ]
    total_fn = build_weighted_loss(specs, num_classes=C, embedding_size=DS, teacher_embedding_size=DS)
    assert total_fn.weights == {"arc_distill": 1.0, "hinton_kd": 0.5, "rkd": 1.0}
    assert total_fn.terms["arc_distill"].config["m"] == 0.3
    assert total_fn.terms["rkd"].config["angle_weight"] == 0.0
    assert total_fn.needs_centers and total_fn.needs_labels
    total_fn.set_centers(torch.randn(C, DS))
    assert bool(total_fn.terms["arc_distill"].has_centers) and bool(total_fn.terms["hinton_kd"].has_centers)
    total, logs = total_fn(batch(0))
    assert torch.isfinite(total) and set(logs) == {"arc_distill", "hinton_kd", "rkd"}
    with pytest.raises(ConfigError, match="did you mean 'rkd'"):
        build_weighted_loss([{"name": "rdk"}], num_classes=C, embedding_size=DS)


# ---------------------------------------------------------------- gradient routing


TRAINED = {  # the parameters each term must train
    "arcface": ["weight"], "cosface": ["weight"], "adaface": ["weight"],
    "angular_kd": ["generators.0.weight", "norms.0.weight", "proj.weight"],
    "feature_kd": ["proj.weight"], "iled": ["proj.weight"], "qud": ["proj.weight"], "hinton_kd": ["proj.weight"],
}


@pytest.mark.parametrize("name", ALL)
def test_gradient_reaches_student_and_heads_never_teacher_or_state(name):
    torch.manual_seed(0)
    dt = DS if name in SAME_DIMS_ONLY else 5
    loss_fn = make(name, dt=dt)
    for step in range(2):  # the second step sees filled queues and moved centres
        x = batch(step, dt=dt)
        loss_fn.zero_grad()
        loss = loss_fn(x)
        assert loss.dim() == 0 and torch.isfinite(loss)
        loss.backward()
    assert x.student_emb.grad is not None and x.student_emb.grad.abs().sum() > 0
    assert x.teacher_emb.grad is None
    assert all(not b.requires_grad for b in loss_fn.buffers())
    params = dict(loss_fn.named_parameters())
    for pname in TRAINED.get(name, []):
        assert params[pname].grad is not None and params[pname].grad.abs().sum() > 0, pname
    if name not in TRAINED:
        assert params == {}


# ---------------------------------------------------------------- checkpoint round trip

STATEFUL = {
    "arc_distill": ["centers", "has_centers"],
    "hinton_kd": ["centers", "has_centers"],
    "ada_arc_distill": ["centers.centers"],
    "ada_cos_distill": ["centers.centers"],
    "adaface": ["norm_ema.batch_mean", "norm_ema.batch_std"],
    "adaface_geom": ["centers.centers", "norm_ema.batch_mean", "norm_ema.batch_std"],
    "rpsd": ["bank_s.items", "bank_s.ptr", "bank_s.count", "bank_t.items", "bank_t.ptr", "bank_t.count"],
    "qud": ["queue.items", "queue.ptr", "queue.count"],
    "angular_kd": ["norms.0.running_mean", "norms.0.running_var"],
}


def _step(loss_fn, step):
    torch.manual_seed(1000 + step)  # same dropout masks for both copies
    return loss_fn(batch(step, grad=False))


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_state_dict_round_trip_restores_the_state_exactly(name):
    params = {"bank_size": 12} if name == "rpsd" else {"queue_size": 12} if name == "qud" else {}
    torch.manual_seed(0)
    original = make(name, **params)
    for step in range(3):  # fill the queues past their size, move centres and statistics
        _step(original, step)
    state = original.extra_state()
    assert set(STATEFUL[name]) <= set(state)
    buf = io.BytesIO()
    torch.save(original.state_dict(), buf)
    buf.seek(0)

    torch.manual_seed(123)
    restored = build_loss(name, num_classes=C, embedding_size=DS, teacher_embedding_size=DS, **params)
    restored.load_state_dict(torch.load(buf), strict=True)
    for key, value in original.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key]), key
    assert torch.equal(_step(original, 3), _step(restored, 3))
    for key, value in original.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key]), key


# ---------------------------------------------------------------- FIFO queue


def test_feature_queue_fifo_wraps_around():
    q = FeatureQueue(5, 1)
    rows = lambda a, b: torch.arange(a, b, dtype=torch.float32)[:, None]  # noqa: E731
    q.push(rows(1, 4))  # 1 2 3 -> slots 0..2
    assert q.valid().flatten().tolist() == [1, 2, 3] and int(q.ptr) == 3
    q.push(rows(4, 8))  # 4 5 -> slots 3, 4; 6 7 overwrite the oldest (1, 2)
    assert q.items.flatten().tolist() == [6, 7, 3, 4, 5] and int(q.ptr) == 2 and len(q) == 5
    q.push(rows(8, 20))  # more rows than slots: only the newest five (15..19) survive, oldest at ptr
    assert q.items.flatten().tolist() == [16, 17, 18, 19, 15] and int(q.ptr) == 4
    assert q.items[int(q.ptr)].item() == 15
