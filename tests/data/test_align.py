"""Alignment maths: the similarity fit against closed forms, and the warp against known landmark positions."""

from __future__ import annotations

import numpy as np
import pytest

from facepipe.pipeline.data.align import ARCFACE_TEMPLATE, align_face, similarity_transform


def _similarity(angle: float, scale: float, t) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, t[0]], [scale * s, scale * c, t[1]]])


def _apply(m, pts):
    return pts @ m[:, :2].T + m[:, 2]


def test_template_is_the_arcface_112_template():
    assert ARCFACE_TEMPLATE.shape == (5, 2) and ARCFACE_TEMPLATE.dtype == np.float32
    np.testing.assert_allclose(ARCFACE_TEMPLATE[0], [38.2946, 51.6963], atol=1e-4)
    np.testing.assert_allclose(ARCFACE_TEMPLATE[4], [70.7299, 92.2041], atol=1e-4)


@pytest.mark.parametrize("angle,scale,t", [(0.3, 2.5, (10.0, -4.0)), (-2.9, 0.37, (-120.5, 33.0)),
                                           (np.pi, 1.0, (0.0, 0.0))])
def test_recovers_known_rotation_scale_translation(angle, scale, t):
    src = ARCFACE_TEMPLATE.astype(np.float64) * 1.7 + 20
    m_true = _similarity(angle, scale, t)
    m = similarity_transform(src, _apply(m_true, src))
    np.testing.assert_allclose(m, m_true, atol=1e-9)


def test_noisy_fit_equals_linear_least_squares(rng):
    # In 2-D a reflection-free similarity is linear in (a, b, tx, ty): x' = a x - b y + tx, y' = b x + a y + ty,
    # so ordinary least squares gives the exact optimum to compare with.
    src = rng.uniform(0, 250, (5, 2))
    dst = _apply(_similarity(0.4, 0.6, (5, 7)), src) + rng.normal(0, 3, (5, 2))
    a_mat = np.zeros((10, 4))
    a_mat[0::2] = np.c_[src[:, 0], -src[:, 1], np.ones(5), np.zeros(5)]
    a_mat[1::2] = np.c_[src[:, 1], src[:, 0], np.zeros(5), np.ones(5)]
    a, b, tx, ty = np.linalg.lstsq(a_mat, dst.reshape(-1), rcond=None)[0]
    np.testing.assert_allclose(similarity_transform(src, dst), [[a, -b, tx], [b, a, ty]], atol=1e-8)


def test_never_returns_a_reflection():
    src = ARCFACE_TEMPLATE.astype(np.float64)
    mirrored = src * [-1, 1]  # the best orthogonal fit would be a reflection
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_rejects_degenerate_input():
    with pytest.raises(ValueError):
        similarity_transform(np.ones((5, 2)), ARCFACE_TEMPLATE)
    with pytest.raises(ValueError):
        similarity_transform(np.zeros((5, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError):
        similarity_transform(np.full((5, 2), np.nan), ARCFACE_TEMPLATE)


def test_align_face_puts_landmarks_on_the_template():
    import cv2

    # Five bright dots at a rotated, scaled, shifted copy of the template in a 300x260 image.
    m_true = _similarity(0.35, 2.1, (60.0, 20.0))
    pts = _apply(m_true, ARCFACE_TEMPLATE.astype(np.float64))
    img = np.zeros((260, 300, 3), np.uint8)
    for x, y in pts:
        cv2.circle(img, (int(round(x)), int(round(y))), 4, (255, 255, 255), -1)
    out = align_face(img, pts)
    assert out.shape == (112, 112, 3) and out.dtype == np.uint8
    n, lab = cv2.connectedComponents((out[:, :, 0] > 100).astype(np.uint8))[:2]
    centres = np.array([np.argwhere(lab == k).mean(0)[::-1] for k in range(1, n)])
    assert len(centres) == 5
    for p in ARCFACE_TEMPLATE:  # rounding the dot centres to pixels costs < 1 px in the source, /2.1 here
        assert np.min(np.linalg.norm(centres - p, axis=1)) < 0.7


def test_align_face_border_is_black():
    img = np.full((50, 50, 3), 200, np.uint8)
    # Output pixel x comes from source 4x - 100: only x in [25, 37.5] falls inside the 50x50 image.
    out = align_face(img, ARCFACE_TEMPLATE * 4.0 - 100.0)
    assert out[0, 0].tolist() == [0, 0, 0] and out[111, 111].tolist() == [0, 0, 0]
    assert out[31, 31].tolist() == [200, 200, 200]
