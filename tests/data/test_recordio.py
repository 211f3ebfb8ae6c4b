"""MXNet RecordIO read/write without mxnet: framing byte for byte, multi-part records, insightface's header
record, errors that name the record, atomic writes."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from facepipe.pipeline.data.images import encode_jpeg
from facepipe.pipeline.data.recordio import (MAGIC, IRHeader, RecordIOReader, RecordIOWriter, image_keys, pack,
                                             read_rec_dataset, unpack, write_rec_from_folder)
from facepipe.pipeline.errors import DataError

M = struct.pack("<I", MAGIC)


def test_pack_unpack_scalar_and_array_labels():
    rec = pack(IRHeader(0, 7.0, 3, 0), b"jpeg")
    assert rec == struct.pack("<IfQQ", 0, 7.0, 3, 0) + b"jpeg"
    h, payload = unpack(rec)
    assert (h.flag, h.label, h.id, h.id2, payload) == (0, 7.0, 3, 0, b"jpeg")
    rec = pack(IRHeader(0, np.array([5, 9], np.float32), 0, 0))
    assert rec == struct.pack("<IfQQ", 2, 0.0, 0, 0) + np.array([5, 9], "<f4").tobytes()
    h, payload = unpack(rec)
    assert h.flag == 2 and h.label.tolist() == [5.0, 9.0] and payload == b""


def test_framing_is_dmlc_recordio(tmp_path):
    with RecordIOWriter(tmp_path / "a.rec", tmp_path / "a.idx") as w:
        w.write(0, b"ab")
        w.write(5, b"wxyz")
    data = (tmp_path / "a.rec").read_bytes()
    assert data == M + struct.pack("<I", 2) + b"ab\0\0" + M + struct.pack("<I", 4) + b"wxyz"
    assert (tmp_path / "a.idx").read_text() == "0\t0\n5\t12\n"


def test_magic_inside_payload_is_split_and_rejoined(tmp_path):
    aligned = b"abcd" + M + b"efgh" + M + b"ij"  # magic at offsets 4 and 12: a 3-part record
    unaligned = b"a" + M + b"bc"  # magic at offset 1: stored whole
    with RecordIOWriter(tmp_path / "m.rec", tmp_path / "m.idx") as w:
        w.write(1, aligned)
        w.write(2, unaligned)
    data = (tmp_path / "m.rec").read_bytes()
    first = (M + struct.pack("<I", (1 << 29) | 4) + b"abcd" + M + struct.pack("<I", (2 << 29) | 4) + b"efgh"
             + M + struct.pack("<I", (3 << 29) | 2) + b"ij\0\0")
    assert data.startswith(first)
    for idx in (tmp_path / "m.idx", None):
        if idx is None:
            (tmp_path / "m.idx").unlink()  # without an index, keys are 0, 1, ... in file order
        r = RecordIOReader(tmp_path / "m.rec")
        keys = r.keys()
        assert len(r) == 2 and r.read_raw(keys[0]) == aligned and r.read_raw(keys[1]) == unaligned
        assert keys == ([1, 2] if idx is not None else [0, 1])
        r.close()


def test_writer_is_atomic(tmp_path):
    with pytest.raises(RuntimeError):
        with RecordIOWriter(tmp_path / "x.rec", tmp_path / "x.idx") as w:
            w.write(0, b"data")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def _write_plain(tmp_path, n=6):
    payloads = [bytes([i]) * (10 + i) for i in range(n)]
    with RecordIOWriter(tmp_path / "p.rec", tmp_path / "p.idx") as w:
        for i, p in enumerate(payloads):
            w.write_record(i, IRHeader(0, np.array([i % 3, 0.5], np.float32), i, 0), p)
    return payloads


def test_plain_file_without_header_record(tmp_path):
    payloads = _write_plain(tmp_path)
    r = RecordIOReader(tmp_path / "p.rec")
    assert image_keys(r) == list(range(6))  # record 0 is an image here, not a header
    h, payload = r.read(4)
    assert payload == payloads[4] and h.label.tolist() == [1.0, 0.5]
    assert r.read_header(4).label.tolist() == [1.0, 0.5]
    faces = read_rec_dataset(tmp_path / "p.rec")
    assert faces.items == list(range(6)) and faces.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert faces.num_classes == 3 and faces.class_names == ["0", "1", "2"]


def test_truncated_record_names_record_and_offset(tmp_path):
    _write_plain(tmp_path)
    rec = tmp_path / "p.rec"
    offsets = dict(line.split("\t") for line in (tmp_path / "p.idx").read_text().splitlines())
    data = rec.read_bytes()
    rec.write_bytes(data[: int(offsets["5"]) + 20])
    r = RecordIOReader(rec)
    assert r.read(4)[1] == bytes([4]) * 14  # records before the cut still read
    with pytest.raises(DataError, match=rf"p.rec: record 5 at offset {offsets['5']}: truncated"):
        r.read(5)
    (tmp_path / "p.idx").unlink()
    with pytest.raises(DataError, match=rf"p.rec: record 5 at offset {offsets['5']}: truncated"):
        RecordIOReader(rec)  # the scan of an index-less file stops at the damage too


def test_bad_magic_and_bad_index_name_the_problem(tmp_path):
    _write_plain(tmp_path)
    (tmp_path / "p.idx").write_text("0\t0\n1\t6\n")
    r = RecordIOReader(tmp_path / "p.rec")
    with pytest.raises(DataError, match=r"p.rec: record 1 at offset 6: bad magic"):
        r.read(1)
    with pytest.raises(DataError, match=r"no record 7"):
        r.read(7)
    (tmp_path / "p.idx").write_text("0\t0\nzz\n")
    with pytest.raises(DataError, match=r"p.idx line 2: expected 'key<TAB>offset'"):
        RecordIOReader(tmp_path / "p.rec")
    (tmp_path / "p.idx").write_text("0\t999999\n")
    with pytest.raises(DataError, match=r"p.idx line 1: offset 999999 of record 0 lies outside"):
        RecordIOReader(tmp_path / "p.rec")


def _folder(root, rng, counts=(3, 1, 2)):
    files = {}
    for c, n in enumerate(counts):
        (root / f"id{c}").mkdir(parents=True)
        for i in range(n):
            data = encode_jpeg(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
            (root / f"id{c}" / f"{i}.jpg").write_bytes(data)
            files[f"id{c}/{i}.jpg"] = (data, c)
    return files


def test_folder_to_insightface_rec_and_back(tmp_path, rng):
    files = _folder(tmp_path / "src", rng)
    written = write_rec_from_folder(tmp_path / "src", tmp_path / "out" / "train")
    assert written.items == [1, 2, 3, 4, 5, 6] and written.num_classes == 3
    r = RecordIOReader(tmp_path / "out" / "train.rec")
    h0, _ = r.read(0)
    assert h0.flag == 2 and h0.label.tolist() == [7.0, 10.0]  # images 1..6, identities 7..9
    assert [r.read(k)[0].label.tolist() for k in (7, 8, 9)] == [[1, 4], [4, 5], [5, 7]]
    faces = read_rec_dataset(tmp_path / "out")  # a folder holding train.rec
    assert faces.items == [1, 2, 3, 4, 5, 6] and faces.labels.tolist() == [0, 0, 0, 1, 2, 2]
    expected = [files[k] for k in sorted(files)]
    for key, (data, label) in zip(faces.items, expected):
        h, payload = r.read(key)
        assert payload == data and h.label == label and h.id == key
    r.close()


def test_make_rec_rejects_unaligned_or_skips(tmp_path, rng):
    _folder(tmp_path / "src", rng, counts=(2, 1))
    big = tmp_path / "src" / "id1" / "0.jpg"
    big.write_bytes(encode_jpeg(np.zeros((250, 250, 3), np.uint8)))
    with pytest.raises(DataError, match=r"id1/0.jpg: 250x250, not an aligned 112x112 face"):
        write_rec_from_folder(tmp_path / "src", tmp_path / "bad")
    assert not (tmp_path / "bad.rec").exists()
    faces = write_rec_from_folder(tmp_path / "src", tmp_path / "ok", on_error="skip")
    assert faces.skipped == 1 and faces.num_classes == 1 and len(faces.items) == 2  # id1 lost its only image
    assert read_rec_dataset(tmp_path / "ok.rec").labels.tolist() == [0, 0]
