"""Hostile input 1: a list file (pairs.txt, identities.tsv) cannot make facepipe open a file outside its folder."""

from __future__ import annotations

import pytest

from facepipe.pipeline.data.imagefolder import open_face_source
from facepipe.pipeline.data.images import encode_jpeg
from facepipe.pipeline.data.lfw import read_pairs
from facepipe.pipeline.errors import DataError
from facepipe.pipeline.io import inside


@pytest.mark.parametrize("rel", ["../../../outside/Sec", "/etc/passwd", "a/../../b", "..\\..\\windows", "C:\\x.jpg"])
def test_inside_refuses_escapes(tmp_path, rel):
    with pytest.raises(DataError, match=r"list\.txt line 3: path .* points outside"):
        inside(tmp_path, rel, "list.txt line 3")


def test_inside_keeps_ordinary_relative_paths(tmp_path):
    assert inside(tmp_path, "7201/001085.jpg", "x") == tmp_path / "7201" / "001085.jpg"


def test_pairs_naming_a_folder_outside_the_root_are_refused_with_the_line(tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1\t1\nAnn\t1\t2\n../../../outside/Sec\t1\tAnn\t2\n")
    with pytest.raises(DataError, match=r"pairs\.txt line 3: path '\.\./\.\./\.\./outside/Sec' points outside"):
        read_pairs(pairs)


def test_identities_tsv_naming_etc_passwd_is_refused_with_the_line(tmp_path, rng):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "0.jpg").write_bytes(encode_jpeg(rng.integers(0, 256, (112, 112, 3), dtype="uint8")))
    (tmp_path / "identities.tsv").write_text("a/0.jpg\ta\n/etc/passwd\tx\n")
    for on_error in ("fail", "skip"):  # never skipped quietly: a hostile list is not a missing image
        with pytest.raises(DataError, match=r"identities\.tsv line 2: path '/etc/passwd' points outside"):
            open_face_source(tmp_path, on_error=on_error)
