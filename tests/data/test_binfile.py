"""insightface .bin: round trips, the restricted unpickler (formats it must accept, payloads it must refuse),
and errors that name the file and image."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from facepipe.pipeline.data.align import ARCFACE_TEMPLATE
from facepipe.pipeline.data.binfile import make_bin_from_lfw, read_bin, read_bin_raw, write_bin
from facepipe.pipeline.data.images import decode_image_rgb, encode_jpeg
from facepipe.pipeline.data.lfw import load_lfw
from facepipe.pipeline.errors import DataError
from facepipe.pipeline.eval.metrics import kfold_ids


def _faces(rng, n):
    return [encode_jpeg(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)) for _ in range(n)]


def test_write_read_round_trip(tmp_path, rng):
    jpegs = _faces(rng, 50)
    issame = rng.integers(0, 2, 25).astype(bool).tolist()
    path = write_bin(tmp_path / "x.bin", jpegs, issame)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]  # atomic: no temp left behind
    raw, flags = read_bin_raw(path)
    assert raw == jpegs and flags.tolist() == issame
    vs = read_bin(path)
    assert vs.images.shape == (50, 112, 112, 3) and vs.skipped == 0
    assert vs.pairs.tolist() == [[2 * k, 2 * k + 1] for k in range(25)]
    assert vs.issame.tolist() == issame
    for i in (0, 17, 49):
        np.testing.assert_array_equal(vs.images[i], decode_image_rgb(jpegs[i], "test"))
    assert np.bincount(vs.folds).tolist() == [3] * 5 + [2] * 5


def test_bin_folds_are_consecutive_like_kfold_without_shuffle():
    assert np.bincount(kfold_ids(6000)).tolist() == [600] * 10
    f = kfold_ids(13)
    assert f.tolist() == [0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9]


def _fake_lfw(root: Path, rng) -> None:
    (root / "images").mkdir(parents=True)
    lines = []
    for name, n in (("Ann_A", 2), ("Bob_B", 2)):
        (root / "images" / name).mkdir()
        for i in range(1, n + 1):
            img = np.full((250, 250, 3), 90, np.uint8)
            img[60:190, 70:180] = rng.integers(60, 200, 3)  # a smooth block: JPEG keeps it almost exact
            (root / "images" / name / f"{name}_{i:04d}.jpg").write_bytes(encode_jpeg(img))
            lm = ARCFACE_TEMPLATE * 1.6 + 30
            lines.append(f"images/{name}/{name}_{i:04d}.jpg\t{' '.join(f'{v:.3f}' for v in lm.reshape(-1))}\t0.9")
    (root / "landmarks.tsv").write_text("\n".join(lines) + "\n")
    (root / "pairs.txt").write_text("1\t1\nAnn_A\t1\t2\nAnn_A\t2\tBob_B\t1\n")


def test_make_bin_from_lfw_matches_the_raw_aligned_faces(tmp_path, rng):
    root = tmp_path / "lfw"
    _fake_lfw(root, rng)
    out = make_bin_from_lfw(root, tmp_path / "lfw.bin", image_format="jpeg")
    raw = load_lfw(root)
    vs = read_bin(out)
    assert vs.issame.tolist() == [True, False] and vs.pairs.shape == (2, 2)
    assert read_bin_raw(out)[0][0][:2] == b"\xff\xd8"  # JPEG, like insightface's own bins
    for (a, b), (c, d) in zip(raw.pairs, vs.pairs):
        for i, j in ((a, c), (b, d)):
            diff = np.abs(raw.images[i].astype(int) - vs.images[j].astype(int))
            assert diff.mean() < 1.5  # JPEG quality 95 of the same aligned face


def test_make_bin_png_is_lossless(tmp_path, rng):
    root = tmp_path / "lfw"
    _fake_lfw(root, rng)
    vs = read_bin(make_bin_from_lfw(root, tmp_path / "lfw.bin", image_format="png"))
    raw = load_lfw(root)
    assert read_bin_raw(tmp_path / "lfw.bin")[0][0][:4] == b"\x89PNG"
    # Repeated faces are kept once, in first-appearance order: the same array LFW's loader builds.
    np.testing.assert_array_equal(vs.images, raw.images)
    np.testing.assert_array_equal(vs.pairs, raw.pairs)
    with pytest.raises(DataError, match="image format must be"):
        make_bin_from_lfw(root, tmp_path / "x.bin", image_format="gif")


@pytest.mark.parametrize("proto", [2, 4, 5])
def test_accepts_numpy_arrays_bytearray_and_numpy_bools(tmp_path, rng, proto):
    jpegs = _faces(rng, 4)
    bins = [np.frombuffer(jpegs[0], np.uint8), bytearray(jpegs[1]), jpegs[2], np.frombuffer(jpegs[3], np.uint8)]
    p = tmp_path / "np.bin"
    p.write_bytes(pickle.dumps((bins, [np.bool_(True), np.bool_(False)]), protocol=proto))
    raw, flags = read_bin_raw(p)
    assert raw == jpegs and flags.tolist() == [True, False]
    p.write_bytes(pickle.dumps((jpegs, np.array([False, True])), protocol=proto))
    assert read_bin_raw(p)[1].tolist() == [False, True]


def test_accepts_python2_pickle(tmp_path):
    # What Python 2 insightface scripts wrote: protocol 2, images as py2 str (SHORT_BINSTRING), bool list.
    p = tmp_path / "py2.bin"
    p.write_bytes(b"\x80\x02]q\x00(U\x04\xff\xd8abq\x01U\x01xq\x02e]q\x03\x88a\x86q\x04.")
    raw, flags = read_bin_raw(p)
    assert raw == [b"\xff\xd8ab", b"x"] and flags.tolist() == [True]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Huge:
    def __reduce__(self):
        return bytes, (10 ** 12,)


@pytest.mark.parametrize("where", ["images", "issame"])
def test_malicious_pickle_refused_and_not_executed(tmp_path, where):
    marker = tmp_path / "marker"
    evil = _Evil(marker)
    obj = ([evil, b"x"], [True]) if where == "images" else ([b"x", b"y"], [evil])
    p = tmp_path / "evil.bin"
    p.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(DataError, match=r"evil.bin: refusing to unpickle global (os|posix)\.system"):
        read_bin(p)
    assert not marker.exists()


def test_refuses_dangerous_forms_of_allowed_globals(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(pickle.dumps(([_Huge(), b""], [True]), protocol=2))
    with pytest.raises(DataError, match="refusing to unpickle builtins.bytes called with unexpected"):
        read_bin_raw(p)
    p.write_bytes(pickle.dumps(([np.array([b"x"], dtype=object), b""], [True]), protocol=2))
    with pytest.raises(DataError, match="refusing to unpickle numpy dtype 'O8'"):
        read_bin_raw(p)
    p.write_bytes(pickle.dumps(([np.zeros(3, np.float64), b""], [True]), protocol=4))
    with pytest.raises(DataError, match="refusing to unpickle numpy dtype 'f8'"):
        read_bin_raw(p)


def test_truncated_and_garbled_files_name_the_file(tmp_path, rng):
    good = pickle.dumps((_faces(rng, 2), [True]), protocol=4)
    p = tmp_path / "cut.bin"
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="cut.bin: not a readable .bin pickle"):
        read_bin(p)
    p.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DataError, match="cut.bin: not a readable .bin pickle"):
        read_bin(p)
    p.write_bytes(pickle.dumps((_faces(rng, 3), [True]), protocol=4))
    with pytest.raises(DataError, match="cut.bin: 3 images for 1 pairs"):
        read_bin(p)
    with pytest.raises(DataError, match="missing.bin: .bin file not found"):
        read_bin(tmp_path / "missing.bin")


def test_corrupt_image_names_file_and_image_or_skips_pair(tmp_path, rng):
    jpegs = _faces(rng, 6)
    jpegs[3] = jpegs[3][:300]  # truncated JPEG in pair 1
    path = write_bin(tmp_path / "c.bin", jpegs, [True, False, True])
    with pytest.raises(DataError, match=r"c.bin: image 3 \(pair 1\): not a decodable image"):
        read_bin(path)
    vs = read_bin(path, on_error="skip")
    assert vs.skipped == 1 and vs.issame.tolist() == [True, True]
    assert vs.images.shape[0] == 4 and vs.pairs.tolist() == [[0, 1], [2, 3]] and vs.folds.tolist() == [0, 2]
    np.testing.assert_array_equal(vs.images[2], decode_image_rgb(jpegs[4], "test"))


def test_repeated_images_decoded_once_and_skip_remaps(tmp_path, rng):
    a, b, c = _faces(rng, 3)
    bad = b"\xff\xd8 not a jpeg"
    # pairs: (a, b) same, (a, c) diff, (bad, b) same -> a and b repeat; the bad pair is dropped in skip mode
    write_bin(tmp_path / "r.bin", [a, b, a, c, bad, b], [True, False, True])
    with pytest.raises(DataError, match="image 4"):
        read_bin(tmp_path / "r.bin")
    vs = read_bin(tmp_path / "r.bin", on_error="skip")
    assert vs.images.shape[0] == 3 and vs.skipped == 1
    assert vs.pairs.tolist() == [[0, 1], [0, 2]] and vs.issame.tolist() == [True, False]
