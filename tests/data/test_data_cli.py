"""`facepipe data` commands through Typer's CliRunner on a fresh app (align, make-bin, make-rec, inspect)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from facepipe.pipeline.commands.data import register
from facepipe.pipeline.data.align import ARCFACE_TEMPLATE, align_face
from facepipe.pipeline.data.binfile import read_bin
from facepipe.pipeline.data.images import encode_jpeg, encode_png, read_image_rgb
from facepipe.pipeline.data.lfw import load_lfw, read_landmarks
from facepipe.pipeline.data.recordio import RecordIOReader, read_rec_dataset
from facepipe.pipeline.errors import DataError


@pytest.fixture
def run():
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # keep `data` a sub-command group, as in the real CLI
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def _dots(rng, lm, shape=(240, 260)):
    import cv2

    img = np.full((*shape, 3), 40, np.uint8)
    img[:] = rng.integers(30, 60, 3)
    for x, y in lm:
        cv2.circle(img, (int(round(x)), int(round(y))), 3, (255, 255, 255), -1)
    return img


def _raw_tree(root, rng):
    """Raw faces (dots at known landmarks) in root/<person>/, a landmarks.tsv beside them; returns the tsv."""
    lines = []
    for person, n in (("p1", 2), ("p2", 1)):
        (root / person).mkdir(parents=True)
        for i in range(n):
            lm = ARCFACE_TEMPLATE * rng.uniform(1.4, 1.8) + rng.uniform(10, 50, 2)
            (root / person / f"{i}.png").write_bytes(encode_png(_dots(rng, lm)))
            lines.append(f"{person}/{i}.png\t{' '.join(f'{v:.3f}' for v in lm.reshape(-1))}\t0.9")
    tsv = root / "landmarks.tsv"
    tsv.write_text("# path\tlandmarks\tscore\n" + "\n".join(lines) + "\n")
    return tsv


def test_align_with_landmarks_file(run, tmp_path, rng):
    tsv = _raw_tree(tmp_path / "raw", rng)
    (tmp_path / "raw" / "identities.tsv").write_text("p1/0.png\t1\np1/1.png\t1\np2/0.png\t2\n")
    res = run("data", "align", tmp_path / "raw", tmp_path / "out", "--landmarks", tsv)
    assert res.exit_code == 0, res.output
    assert "aligned 3 images" in res.output
    assert (tmp_path / "out" / "identities.tsv").read_text() == "p1/0.jpg\t1\np1/1.jpg\t1\np2/0.jpg\t2\n"
    lms = read_landmarks(tsv)
    for rel in ("p1/0.png", "p1/1.png", "p2/0.png"):
        out = read_image_rgb(tmp_path / "out" / rel.replace(".png", ".jpg"))
        assert out.shape == (112, 112, 3)
        expected = align_face(read_image_rgb(tmp_path / "raw" / rel), lms[rel])
        assert np.abs(out.astype(int) - expected.astype(int)).mean() < 2  # JPEG 95 of the same crop
        for x, y in ARCFACE_TEMPLATE:  # the dots land on the template
            assert out[int(round(y)), int(round(x))].min() > 150


def test_align_errors_name_the_file_and_skip_counts(run, tmp_path, rng):
    tsv = _raw_tree(tmp_path / "raw", rng)
    (tmp_path / "raw" / "p2" / "0.png").write_bytes(b"garbage")
    res = run("data", "align", tmp_path / "raw", tmp_path / "out", "--landmarks", tsv)
    assert isinstance(res.exception, DataError) and "p2/0.png: not a decodable image" in str(res.exception)
    shutil.copy(tmp_path / "raw" / "p1" / "0.png", tmp_path / "raw" / "p1" / "extra.png")  # not in the tsv
    res = run("data", "align", tmp_path / "raw", tmp_path / "out", "--landmarks", tsv, "--on-error", "skip")
    assert res.exit_code == 0, res.output
    assert "aligned 2 images; skipped 1 unreadable and 1 without landmarks" in res.output
    res = run("data", "align", tmp_path / "raw", tmp_path / "out2", "--landmarks", tsv, "--on-error", "maybe")
    assert isinstance(res.exception, DataError) and "on_error must be" in str(res.exception)


def _fake_lfw(root, rng):
    tsv = _raw_tree(root / "images", rng)
    tsv.rename(root / "landmarks.tsv")  # LFW keeps it at the root, with images/... paths
    text = (root / "landmarks.tsv").read_text()
    (root / "landmarks.tsv").write_text(text.replace("p1/", "images/p1/").replace("p2/", "images/p2/"))
    for person in ("p1", "p2"):  # LFW naming: <Name>/<Name>_NNNN.jpg
        for f in sorted((root / "images" / person).iterdir()):
            f.rename(root / "images" / person / f"{person}_{int(f.stem) + 1:04d}.jpg")
    text = (root / "landmarks.tsv").read_text()
    for person, i in (("p1", 0), ("p1", 1), ("p2", 0)):
        text = text.replace(f"{person}/{i}.png", f"{person}/{person}_{i + 1:04d}.jpg")
    (root / "landmarks.tsv").write_text(text)
    (root / "pairs.txt").write_text("1\t1\np1\t1\t2\np1\t2\tp2\t1\n")


def test_make_bin_round_trip(run, tmp_path, rng):
    _fake_lfw(tmp_path / "lfw", rng)
    res = run("data", "make-bin", "--lfw-root", tmp_path / "lfw", tmp_path / "lfw.bin")
    assert res.exit_code == 0, res.output
    assert "2 pairs (1 same), 4 images" in res.output
    raw, packed = load_lfw(tmp_path / "lfw"), read_bin(tmp_path / "lfw.bin")
    assert packed.issame.tolist() == raw.issame.tolist() == [True, False]
    faces = raw.images[raw.pairs.reshape(-1)]
    packed_faces = packed.images[packed.pairs.reshape(-1)]
    assert np.abs(faces.astype(int) - packed_faces.astype(int)).mean() < 2
    res = run("data", "inspect", tmp_path / "lfw.bin")
    assert res.exit_code == 0 and "insightface .bin" in res.output and "(112, 112, 3)" in res.output
    res = run("data", "inspect", tmp_path / "lfw")
    assert res.exit_code == 0 and "LFW" in res.output and "distinct images" in res.output


def test_make_rec_round_trip_and_inspect(run, tmp_path, rng):
    src = tmp_path / "faces"
    expected = {}
    for c, n in (("7", 2), ("12", 3)):
        (src / c).mkdir(parents=True)
        for i in range(n):
            b = encode_jpeg(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
            (src / c / f"{i}.jpg").write_bytes(b)
            expected[f"{c}/{i}.jpg"] = b
    res = run("data", "make-rec", src, tmp_path / "train")
    assert res.exit_code == 0, res.output
    assert "5 images of 2 identities" in res.output
    faces = read_rec_dataset(tmp_path / "train.rec")
    assert faces.labels.tolist() == [0, 0, 1, 1, 1]
    order = ["7/0.jpg", "7/1.jpg", "12/0.jpg", "12/1.jpg", "12/2.jpg"]
    with RecordIOReader(tmp_path / "train.rec") as r:
        assert [r.read(k)[1] for k in faces.items] == [expected[k] for k in order]
    res = run("data", "inspect", tmp_path / "train.rec")
    assert res.exit_code == 0 and "MXNet RecordIO" in res.output and "insightface header record" in res.output
    res = run("data", "inspect", src)
    assert res.exit_code == 0 and "image folder" in res.output and "2 / 2.5 / 3" in res.output


def test_inspect_unknown_path(run, tmp_path):
    res = run("data", "inspect", tmp_path / "nothing")
    assert isinstance(res.exception, DataError) and "not found" in str(res.exception)


def test_align_with_yunet_on_real_lfw(run, tmp_path, lfw_root):
    from facepipe.pipeline.assets import fetch_asset
    from facepipe.pipeline.errors import FacepipeError

    try:
        fetch_asset("yunet")
    except FacepipeError as e:
        pytest.skip(f"YuNet asset unavailable: {e}")
    rels = ["images/AJ_Cook/AJ_Cook_0001.jpg", "images/Aaron_Eckhart/Aaron_Eckhart_0001.jpg"]
    for rel in rels:
        (tmp_path / "raw" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(lfw_root / rel, tmp_path / "raw" / rel)
    res = run("data", "align", tmp_path / "raw", tmp_path / "out", "--select", "center")
    assert res.exit_code == 0, res.output
    lms = read_landmarks(lfw_root / "landmarks.tsv")
    for rel in rels:
        out = read_image_rgb(tmp_path / "out" / rel)
        ref = align_face(read_image_rgb(lfw_root / rel), lms[rel])
        assert np.abs(out.astype(int) - ref.astype(int)).mean() < 2
