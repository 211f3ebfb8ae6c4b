"""IJB-B/C: format-exact meta files written here, readers' errors, and the template protocol by hand."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from facepipe.pipeline.data.align import ARCFACE_TEMPLATE
from facepipe.pipeline.data.ijb import (IJBSet, _segment_sum, ijb_evaluate, load_ijb, meta_files,
                                        template_features, template_pair_scores)
from facepipe.pipeline.errors import DataError

# A hand-checkable protocol with 2-d features. Rows are interleaved across templates on purpose, and
# template 3 reuses media ids 10/11 of template 1 (insightface groups medias within a template).
#          name    template media feature   detector score
ROWS = [("1.jpg", 1, 10, (4.0, 0.0), 0.5),
        ("6.jpg", 3, 10, (1.0, 0.0), 1.0),
        ("2.jpg", 1, 10, (0.0, 2.0), 1.0),
        ("4.jpg", 2, 20, (0.0, 5.0), 0.8),
        ("3.jpg", 1, 11, (3.0, 0.0), 1.0),
        ("7.jpg", 3, 10, (1.0, 0.0), 1.0),
        ("5.jpg", 2, 21, (3.0, 0.0), 1.0),
        ("8.jpg", 3, 11, (0.0, -1.0), 1.0)]
PAIRS = [(1, 2, 1), (1, 3, 0), (2, 3, 0)]


def write_ijb(root: Path, rows, pairs, which: str = "IJBC", landmarks=None, lmk_order=None) -> Path:
    """Write <root>/meta/<which>_{face_tid_mid,template_pair_label,name_5pts_score}.txt as insightface has them."""
    meta = root / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    (root / "loose_crop").mkdir(exist_ok=True)
    p = which.lower()
    (meta / f"{p}_face_tid_mid.txt").write_text("".join(f"{r[0]} {r[1]} {r[2]}\n" for r in rows))
    (meta / f"{p}_template_pair_label.txt").write_text("".join(f"{a} {b} {y}\n" for a, b, y in pairs))
    order = lmk_order if lmk_order is not None else range(len(rows))
    lines = []
    for i in order:
        lm = landmarks[i] if landmarks is not None else ARCFACE_TEMPLATE + i
        lines.append(" ".join([rows[i][0], *(f"{v:.3f}" for v in np.ravel(lm)), f"{rows[i][4]:.6f}"]) + "\n")
    (meta / f"{p}_name_5pts_score.txt").write_text("".join(lines))
    return root


@pytest.fixture
def hand_ijb(tmp_path) -> tuple[IJBSet, np.ndarray]:
    root = write_ijb(tmp_path / "IJBC", ROWS, PAIRS)
    return load_ijb(root), np.array([r[3] for r in ROWS], np.float32)


# ---------------------------------------------------------------------------------------------------------
# readers

def test_reads_meta_exactly(tmp_path):
    # The landmark file lists the faces in another order: rows are matched by image name.
    lms = [ARCFACE_TEMPLATE + 3 * i for i in range(len(ROWS))]
    root = write_ijb(tmp_path / "IJBC", ROWS, PAIRS, landmarks=lms, lmk_order=[7, 0, 3, 1, 2, 6, 4, 5])
    s = load_ijb(root, "IJBC")
    assert s.name == "ijbc" and len(s) == 8
    assert s.image_names == [r[0] for r in ROWS]
    assert s.templates.tolist() == [r[1] for r in ROWS]
    assert s.medias.tolist() == [r[2] for r in ROWS]
    np.testing.assert_allclose(s.face_scores, [r[4] for r in ROWS], atol=1e-6)
    np.testing.assert_allclose(s.landmarks, np.stack(lms), atol=1e-3)
    assert s.pairs.tolist() == [[1, 2], [1, 3], [2, 3]] and s.labels.tolist() == [True, False, False]
    assert s.image_path(2) == root / "loose_crop" / "2.jpg"


def test_ijbb_prefix(tmp_path):
    root = write_ijb(tmp_path / "IJBB", ROWS, PAIRS, which="IJBB")
    assert meta_files(root, "ijbb")["tid_mid"] == root / "meta" / "ijbb_face_tid_mid.txt"
    assert load_ijb(root, "ijbb").name == "ijbb"
    with pytest.raises(DataError, match="ijbc_face_tid_mid.txt"):
        load_ijb(root, "IJBC")
    with pytest.raises(DataError, match="IJBB, IJBC"):
        load_ijb(root, "IJBX")


def test_pairs_fast_and_line_parsers_agree(tmp_path):
    from facepipe.pipeline.data.ijb import _read_template_pairs_by_line, read_template_pairs

    path = tmp_path / "pairs.txt"
    path.write_text("1 2 1\n\n3 44 0\n 5   6 1 \n")
    for got in (read_template_pairs(path), _read_template_pairs_by_line(path)):
        assert got[0].tolist() == [[1, 2], [3, 44], [5, 6]] and got[1].tolist() == [True, False, True]


def _corrupt(root: Path, key: str, line: int, text: str) -> None:
    path = meta_files(root)[key]
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("key,line,text,match", [
    ("tid_mid", 3, "2.jpg 1", r"ijbc_face_tid_mid.txt:3: expected 3 .*got 2"),
    ("tid_mid", 2, "6.jpg 3 ten", r"ijbc_face_tid_mid.txt:2: media id must be an integer, got 'ten'"),
    ("pairs", 2, "1 3 2", r"ijbc_template_pair_label.txt:2: label must be 0 or 1, got 2"),
    ("pairs", 1, "1 x 1", r"ijbc_template_pair_label.txt:1: template id must be an integer"),
    ("pairs", 3, "2 9 0", r"ijbc_template_pair_label.txt:3: template 9 has no face in ijbc_face_tid_mid.txt"),
    ("landmarks", 4, "4.jpg 1 2 3 4 5 6 7 8 9 0.9", r"ijbc_name_5pts_score.txt:4: expected 12 .*got 11"),
    ("landmarks", 5, "3.jpg 1 2 3 4 5 6 7 8 9 nan 0.9", r"ijbc_name_5pts_score.txt:5: .*finite"),
    ("landmarks", 6, "7.jpg 1 2 3 4 5 6 7 8 9 x 0.9", r"ijbc_name_5pts_score.txt:6: .*numbers"),
    ("landmarks", 2, "1.jpg 1 2 3 4 5 6 7 8 9 10 0.9", r"ijbc_name_5pts_score.txt:2: image '1.jpg' listed again "
                                                        r"\(first on line 1\)"),
    ("landmarks", 8, "9.jpg 1 2 3 4 5 6 7 8 9 10 0.9", r"ijbc_face_tid_mid.txt:8: image '8.jpg' has no line"),
])
def test_line_numbered_errors(tmp_path, key, line, text, match):
    root = write_ijb(tmp_path / "IJBC", ROWS, PAIRS)
    _corrupt(root, key, line, text)
    with pytest.raises(DataError, match=match):
        load_ijb(root)


def test_missing_meta_file_named(tmp_path):
    root = write_ijb(tmp_path / "IJBC", ROWS, PAIRS)
    meta_files(root)["pairs"].unlink()
    with pytest.raises(DataError, match=r"ijbc_template_pair_label.txt: IJB meta file not found"):
        load_ijb(root)


# ---------------------------------------------------------------------------------------------------------
# protocol

def test_template_aggregation_by_hand(hand_ijb):
    s, feats = hand_ijb
    # With detector scores: T1 = mean(0.5*[4,0], [0,2]) + [3,0] = [4,1]; T2 = 0.8*[0,5] + [3,0] = [3,4];
    # T3 = mean([1,0], [1,0]) + [0,-1] = [1,-1].
    r = ijb_evaluate(feats, s, use_detector_score=True)
    want = [(4 * 3 + 1 * 4) / (math.sqrt(17) * 5), (4 - 1) / (math.sqrt(17) * math.sqrt(2)),
            (3 - 4) / (5 * math.sqrt(2))]
    np.testing.assert_allclose(r["scores"], want, rtol=1e-6)
    # Without: T1 = mean([4,0], [0,2]) + [3,0] = [5,1]; T2 = [3,5]; T3 = [1,-1].
    r = ijb_evaluate(feats, s, use_detector_score=False)
    want = [20 / math.sqrt(26 * 34), 4 / math.sqrt(26 * 2), -2 / math.sqrt(34 * 2)]
    np.testing.assert_allclose(r["scores"], want, rtol=1e-6)
    assert r["labels"].tolist() == [True, False, False]
    # The genuine pair scores highest: TAR 1 at every FAR, AUC 1.
    assert set(r["tar_at_far"].values()) == {1.0} and r["auc"] == 1.0
    assert (r["pairs"], r["skipped"], r["images"], r["images_skipped"]) == (3, 0, 8, 0)


def test_template_features_unit_and_sorted(hand_ijb):
    s, feats = hand_ijb
    uniq, t = template_features(feats, s.templates, s.medias)
    assert uniq.tolist() == [1, 2, 3]
    np.testing.assert_allclose(t[1], np.array([3, 5]) / math.sqrt(34), rtol=1e-6)  # [0,5] + [3,0]
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0)
    np.testing.assert_allclose(template_pair_scores(uniq, t, np.array([[3, 3]])), [1.0])
    pairs = np.array([[1, 2], [2, 3], [3, 1], [2, 2], [1, 3]])
    np.testing.assert_array_equal(template_pair_scores(uniq, t, pairs, chunk=2),
                                  np.einsum("ij,ij->i", t[pairs[:, 0] - 1], t[pairs[:, 1] - 1]))
    with pytest.raises(ValueError, match="template"):
        template_pair_scores(uniq, t, np.array([[1, 7]]))


def test_invalid_faces_left_out(hand_ijb):
    s, feats = hand_ijb
    valid = np.ones(8, bool)
    valid[0] = False  # 1.jpg: T1 becomes [0,2] + [3,0] = [3,2]
    r = ijb_evaluate(feats, s, use_detector_score=False, valid=valid)
    np.testing.assert_allclose(r["scores"][0], (9 + 10) / math.sqrt(13 * 34), rtol=1e-6)
    assert (r["images"], r["images_skipped"], r["skipped"]) == (7, 1, 0)
    valid[[3, 6]] = False  # every face of T2: its two pairs are dropped and counted
    r = ijb_evaluate(feats, s, use_detector_score=False, valid=valid)
    assert (r["pairs"], r["skipped"]) == (1, 2)
    np.testing.assert_allclose(r["scores"], [(3 - 2) / math.sqrt(13 * 2)], rtol=1e-6)


def test_feature_shape_checked(hand_ijb):
    s, feats = hand_ijb
    with pytest.raises(ValueError, match=r"\(8, D\)"):
        ijb_evaluate(feats[:5], s)


def test_segment_sum_paths_agree(rng):
    values = rng.standard_normal((500, 7)).astype(np.float32)
    rows = rng.permutation(500)[:400]
    groups = rng.integers(0, 30, 400)
    a = _segment_sum(values, rows, groups, 32, use_torch=False)
    b = _segment_sum(values, rows, groups, 32, use_torch=True, chunk=64)
    want = np.zeros((32, 7))
    for r, g in zip(rows, groups):
        want[g] += values[r]
    np.testing.assert_allclose(a, want, rtol=1e-12)
    np.testing.assert_allclose(b, want, rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# faces

def _crop(seed: int) -> np.ndarray:
    """A smooth 160x160 RGB 'loose crop' (smooth so JPEG keeps it close)."""
    yy, xx = np.mgrid[0:160, 0:160].astype(np.float32)
    r = np.random.default_rng(seed)
    f = [np.sin(xx / r.uniform(8, 20) + r.uniform(0, 6)) * np.cos(yy / r.uniform(8, 20)) for _ in range(3)]
    return np.clip(127 + 100 * np.stack(f, -1), 0, 255).astype(np.uint8)


def test_faces_are_aligned_from_landmarks(tmp_path):
    offsets = [(24, 24), (10, 30), (30, 5)]
    rows = [(f"{i + 1}.jpg", 1 + i // 2, 1, (0, 0), 0.9) for i in range(3)]
    root = write_ijb(tmp_path / "IJBC", rows, [(1, 2, 0)],
                     landmarks=[ARCFACE_TEMPLATE + np.array(o, np.float32) for o in offsets])
    for i, _ in enumerate(rows):
        cv2.imwrite(str(root / "loose_crop" / rows[i][0]), cv2.cvtColor(_crop(i), cv2.COLOR_RGB2BGR))
    s = load_ijb(root)
    idx, faces = s.faces([0, 1, 2])
    assert idx.tolist() == [0, 1, 2] and faces.shape == (3, 112, 112, 3) and faces.dtype == np.uint8
    for i, (dx, dy) in enumerate(offsets):
        # Landmarks = template + (dx, dy): alignment is a pure translation of the decoded JPEG.
        decoded = cv2.cvtColor(cv2.imread(str(s.image_path(i))), cv2.COLOR_BGR2RGB)
        diff = np.abs(faces[i].astype(int) - decoded[dy:dy + 112, dx:dx + 112].astype(int))
        assert diff.max() <= 1
    chunks = list(s.iter_faces(chunk=2))
    assert [c[0].tolist() for c in chunks] == [[0, 1], [2]]


def test_unreadable_face_fail_or_skip(tmp_path):
    rows = [(f"{i + 1}.jpg", 1 + i // 2, 1, (0, 0), 0.9) for i in range(4)]
    root = write_ijb(tmp_path / "IJBC", rows, [(1, 2, 0)],
                     landmarks=[ARCFACE_TEMPLATE + 20 for _ in rows])
    for i in (0, 1, 3):
        cv2.imwrite(str(root / "loose_crop" / rows[i][0]), cv2.cvtColor(_crop(i), cv2.COLOR_RGB2BGR))
    (root / "loose_crop" / "3.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"loose_crop/3.jpg"):
        load_ijb(root).faces([0, 1, 2, 3])
    idx, faces = load_ijb(root, on_error="skip").faces([0, 1, 2, 3])
    assert idx.tolist() == [0, 1, 3] and len(faces) == 3
