"""Image-folder listing (sub-folders or identities.tsv), training-set auto-detection and the FaceSource
interface over folders and RecordIO."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from facepipe.pipeline.data.imagefolder import (FaceSource, FolderSource, RecSource, load_training_set,
                                                open_face_source, read_image_folder)
from facepipe.pipeline.data.images import decode_image_rgb, encode_jpeg
from facepipe.pipeline.data.recordio import write_rec_from_folder
from facepipe.pipeline.errors import DataError


def _make(root, rng, ids=("10", "9", "2"), per=2):
    data = {}
    for ident in ids:
        (root / ident).mkdir(parents=True)
        for i in range(per):
            b = encode_jpeg(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
            (root / ident / f"img{i}.jpg").write_bytes(b)
            data[f"{ident}/img{i}.jpg"] = b
    (root / ".hidden").mkdir()
    (root / ids[-1] / "notes.txt").write_text("not an image")
    return data


def test_folder_labels_follow_sorted_identities(tmp_path, rng):
    _make(tmp_path, rng)
    faces = read_image_folder(tmp_path)
    assert faces.class_names == ["2", "9", "10"]  # numeric identities sort as numbers
    assert faces.items == ["2/img0.jpg", "2/img1.jpg", "9/img0.jpg", "9/img1.jpg", "10/img0.jpg", "10/img1.jpg"]
    assert faces.labels.tolist() == [0, 0, 1, 1, 2, 2] and faces.num_classes == 3
    assert faces.source == str(tmp_path)


def test_identities_tsv_overrides_folders(tmp_path, rng):
    _make(tmp_path, rng, ids=("a", "b"))
    (tmp_path / "identities.tsv").write_text("b/img1.jpg\tbob\na/img0.jpg\tann\nb/img0.jpg\tann\n")
    faces = read_image_folder(tmp_path)
    assert faces.class_names == ["ann", "bob"]
    assert faces.items == ["a/img0.jpg", "b/img0.jpg", "b/img1.jpg"] and faces.labels.tolist() == [0, 0, 1]


def test_missing_listed_image_names_tsv_line_or_skips(tmp_path, rng):
    _make(tmp_path, rng, ids=("a",))
    (tmp_path / "identities.tsv").write_text("a/img0.jpg\t1\na/gone.jpg\t1\na/img1.jpg\t2\n")
    with pytest.raises(DataError, match=r"identities.tsv line 2: image .*a/gone.jpg not found"):
        read_image_folder(tmp_path)
    faces = read_image_folder(tmp_path, on_error="skip")
    assert faces.skipped == 1 and faces.items == ["a/img0.jpg", "a/img1.jpg"]
    (tmp_path / "identities.tsv").write_text("a/img0.jpg 1\n")
    with pytest.raises(DataError, match=r"identities.tsv line 1: expected 'relpath<TAB>identity'"):
        read_image_folder(tmp_path)


def test_empty_or_missing_folder_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no images found"):
        read_image_folder(tmp_path)
    with pytest.raises(DataError, match="training set not found"):
        load_training_set(tmp_path / "nope")


def test_face_sources_agree_across_formats(tmp_path, rng):
    data = _make(tmp_path / "folder", rng)
    write_rec_from_folder(tmp_path / "folder", tmp_path / "rec" / "train")
    folder = open_face_source(tmp_path / "folder")
    rec = open_face_source(tmp_path / "rec")
    assert isinstance(folder, FolderSource) and isinstance(rec, RecSource)
    assert isinstance(folder, FaceSource) and isinstance(rec, FaceSource)
    assert len(folder) == len(rec) == 6 and folder.num_classes == rec.num_classes == 3
    for i in range(6):
        assert folder.label(i) == rec.label(i)
        img = folder.image(i)
        assert img.shape == (112, 112, 3) and img.dtype == np.uint8
        np.testing.assert_array_equal(img, rec.image(i))
        np.testing.assert_array_equal(img, decode_image_rgb(data[folder.faces.items[i]], "test"))
    # a source survives pickling (DataLoader workers) and still reads
    clone = pickle.loads(pickle.dumps(rec))
    np.testing.assert_array_equal(clone.image(5), rec.image(5))


def test_content_hash_is_stable_and_tracks_the_listing(tmp_path, rng):
    _make(tmp_path / "f", rng)
    h = open_face_source(tmp_path / "f").content_hash()
    assert h == open_face_source(tmp_path / "f").content_hash()
    (tmp_path / "f" / "identities.tsv").write_text("".join(
        f"{i}/img{k}.jpg\t{'x' if i == '9' else i}\n" for i in ("10", "9", "2") for k in (0, 1)))
    assert open_face_source(tmp_path / "f").content_hash() != h  # same files, different labels
    write_rec_from_folder(tmp_path / "f", tmp_path / "r1")
    write_rec_from_folder(tmp_path / "f", tmp_path / "r2")
    assert open_face_source(tmp_path / "r1.rec").content_hash() == open_face_source(tmp_path / "r2.rec").content_hash()


def test_source_image_errors(tmp_path, rng):
    _make(tmp_path, rng, ids=("a",))
    (tmp_path / "a" / "img0.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "a" / "img1.jpg").write_bytes(encode_jpeg(np.zeros((250, 250, 3), np.uint8)))
    src = open_face_source(tmp_path)
    with pytest.raises(DataError, match=r"a/img0.jpg: not a decodable image"):
        src.image(0)
    with pytest.raises(DataError, match=r"a/img1.jpg: image is 250x250, not an aligned 112x112 face"):
        src.image(1)
    lenient = open_face_source(tmp_path, on_error="skip")
    assert lenient.image(0) is None and lenient.image(1) is None


def test_real_celeba_train_listing(celeba_root):
    src = open_face_source(celeba_root)
    assert len(src) == 5066 and src.num_classes == 240  # the counts its README states
    assert src.class_names[0] == "7201" and src.label(0) == 0 and src.label(len(src) - 1) == 239
    for i in (0, 2500, 5065):
        img = src.image(i)
        assert img.shape == (112, 112, 3) and img.dtype == np.uint8 and img.std() > 10
    assert isinstance(src.content_hash(), str) and len(src.content_hash()) == 64
