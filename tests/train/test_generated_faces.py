"""distill.generated_faces: extra faces without labels. The mixed source, and the loss that gives label terms
only the labelled rows while label-free terms see every row (models/losses/weighted.py)."""

from __future__ import annotations

import pytest
import torch

from facepipe.models.losses import build_weighted_loss
from facepipe.models.losses.base import LossInputs
from facepipe.pipeline.data.unlabelled import UNLABELLED, WithUnlabelled

from train_synth import SynthFaces

SPECS = [{"name": "arcface"}, {"name": "feature_kd", "weight": 5.0}]


def test_generated_faces_follow_the_labelled_ones_without_labels():
    real, extra = SynthFaces(6, 3), SynthFaces(4, 4, seed=9)
    mixed = WithUnlabelled(real, extra)
    assert len(mixed) == 10 and mixed.num_classes == 3
    assert mixed.labels.tolist() == [0, 1, 2, 0, 1, 2] + [UNLABELLED] * 4
    assert (mixed.image(2) == real.image(2)).all() and (mixed.image(7) == extra.image(1)).all()
    assert not (mixed.image(7) == real.image(1)).all()  # the extra faces are other pixels
    assert mixed.content_hash() not in (real.content_hash(), WithUnlabelled(real, SynthFaces(5, 4)).content_hash())


def _inputs(labels, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(len(labels), 16, generator=g, requires_grad=True)
    return LossInputs(student_emb=s, teacher_emb=torch.randn(len(labels), 16, generator=g),
                      labels=torch.tensor(labels))


def _loss():
    torch.manual_seed(0)
    return build_weighted_loss(SPECS, num_classes=3, embedding_size=16)


def test_label_terms_see_the_labelled_rows_and_label_free_terms_every_row():
    loss = _loss()
    loss.partial_labels = True
    inputs = _inputs([0, UNLABELLED, 2, 1, UNLABELLED])
    total, logs = loss(inputs)
    keep = inputs.labels >= 0
    assert keep.sum() == 3
    arc = loss.terms["arcface"](LossInputs(student_emb=inputs.student_emb[keep],
                                           teacher_emb=inputs.teacher_emb[keep], labels=inputs.labels[keep]))
    fkd = loss.terms["feature_kd"](inputs)
    fkd_labelled = loss.terms["feature_kd"](LossInputs(student_emb=inputs.student_emb[keep],
                                                       teacher_emb=inputs.teacher_emb[keep]))
    assert torch.isclose(logs["arcface"], arc) and torch.isclose(logs["feature_kd"], fkd)
    assert not torch.isclose(fkd, fkd_labelled)  # the unlabelled rows changed the label-free term
    assert torch.isclose(total, arc + 5.0 * fkd)
    total.backward()
    grad = inputs.student_emb.grad
    assert grad[~keep].abs().sum() > 0  # the generated faces are trained on (by feature_kd)


def test_a_step_without_labelled_rows_keeps_the_label_terms_out_with_zero_gradients():
    loss = _loss()
    loss.partial_labels = True
    inputs = _inputs([UNLABELLED] * 4)
    total, logs = loss(inputs)
    assert logs["arcface"] == 0 and torch.isfinite(total)
    assert torch.isclose(total, 5.0 * loss.terms["feature_kd"](inputs))
    total.backward()
    head = [p for p in loss.terms["arcface"].parameters()]
    assert head and all(p.grad is not None and (p.grad == 0).all() for p in head)
    assert torch.isfinite(inputs.student_emb.grad).all()


def test_without_generated_faces_every_term_sees_the_whole_batch():
    loss = _loss()
    assert loss.partial_labels is False
    inputs = _inputs([0, 1, 2, 1])
    total, logs = loss(inputs)
    assert torch.isclose(logs["arcface"], loss.terms["arcface"](inputs))
    with pytest.raises((IndexError, RuntimeError)):  # a -1 label reaches the classifier only in this mode
        loss(_inputs([0, UNLABELLED]))
