"""MXNet RecordIO (.rec + .idx), read and written directly: mxnet itself is retired.

Record framing (dmlc-core): uint32 magic 0xced7230a, uint32 lrecord = cflag << 29 | length, payload padded
to 4 bytes. A payload holding the magic at a 4-byte aligned offset is split into parts (cflag 1 = first,
2 = middle, 3 = last) with that magic dropped; the reader joins the parts and puts it back.
Image records start with an IRHeader struct '<IfQQ' (flag, label, id, id2); flag > 0 means `flag`
float32 labels follow the header. insightface's train.rec: record 0 has flag 2 and label (a, b): image
records are 1..a-1, records a..b-1 describe identities with label (first, end) image id ranges.
"""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import DataError
from .types import LabelledFaces

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_IR = struct.Struct("<IfQQ")
_HEAD = struct.Struct("<II")


class IRHeader(NamedTuple):
    """Image record header: flag (number of extra float32 labels), label (float or float32 array), ids."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def pack(header: IRHeader, payload: bytes = b"") -> bytes:
    """Serialise a header (scalar label, or an array label stored after the struct) and its payload."""
    label = header.label
    if isinstance(label, (int, float, np.integer, np.floating)):
        return _IR.pack(0, float(label), header.id, header.id2) + bytes(payload)
    arr = np.asarray(label, dtype="<f4").reshape(-1)
    return _IR.pack(len(arr), 0.0, header.id, header.id2) + arr.tobytes() + bytes(payload)


def unpack(record: bytes, where: str = "record") -> tuple[IRHeader, bytes]:
    """Split a record into its IRHeader and payload (the inverse of `pack`)."""
    if len(record) < _IR.size:
        raise DataError(f"{where}: {len(record)} bytes, too short for an image record header ({_IR.size} bytes)")
    flag, label, id1, id2 = _IR.unpack_from(record)
    rest = record[_IR.size:]
    if flag > 0:
        if len(rest) < 4 * flag:
            raise DataError(f"{where}: header announces {flag} labels but the record ends first")
        label = np.frombuffer(rest, dtype="<f4", count=flag).astype(np.float32)
        rest = rest[4 * flag:]
    return IRHeader(flag, label, id1, id2), rest


def _label_of(header: IRHeader) -> float:
    return float(header.label) if header.flag == 0 else float(header.label[0])


class RecordIOReader:
    """Random access to a .rec file through its .idx (or a scan of the .rec when there is no .idx).

    Reads use os.pread, so one reader can be shared by forked DataLoader workers; it re-opens itself
    after pickling (spawned workers).
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise DataError(f"{self.rec_path}: RecordIO file not found")
        self.size = self.rec_path.stat().st_size
        if idx_path is None and self.rec_path.with_suffix(".idx").is_file():
            idx_path = self.rec_path.with_suffix(".idx")
        self.idx_path = Path(idx_path) if idx_path is not None else None
        self._offsets = self._read_idx() if self.idx_path is not None else self._scan()
        self._fd: int | None = None

    def _read_idx(self) -> dict[int, int]:
        try:
            text = self.idx_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"{self.idx_path}: index file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{self.idx_path}: cannot read index ({e})") from None
        offsets: dict[int, int] = {}
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            f = line.split("\t")
            try:
                key, off = int(f[0]), int(f[1])
            except (ValueError, IndexError):
                raise DataError(f"{self.idx_path} line {lineno}: expected 'key<TAB>offset', got {line!r}") from None
            if not 0 <= off < self.size:
                raise DataError(f"{self.idx_path} line {lineno}: offset {off} of record {key} lies outside "
                                f"{self.rec_path.name} ({self.size} bytes); index and .rec do not match")
            offsets[key] = off
        return offsets

    def _scan(self) -> dict[int, int]:
        # Without an index, records are numbered 0, 1, 2, ... in file order (as mxnet's MXRecordIO reads them).
        offsets: dict[int, int] = {}
        pos = 0
        with open(self.rec_path, "rb") as f:
            while pos < self.size:
                key = len(offsets)
                offsets[key] = pos
                pos = self._walk(lambda n, at: _pread(f.fileno(), n, at), key, pos)[1]
        return offsets

    def _where(self, key: int, offset: int) -> str:
        return f"{self.rec_path}: record {key} at offset {offset}"

    def _walk(self, read, key: int, offset: int) -> tuple[bytes, int]:
        """Read the (possibly multi-part) record at offset: (payload, offset after it)."""
        parts: list[bytes] = []
        pos = offset
        while True:
            head = read(_HEAD.size, pos)
            if len(head) < _HEAD.size:
                raise DataError(f"{self._where(key, offset)}: truncated (file ends inside a record header); "
                                f"the .rec is incomplete, re-download or rebuild it")
            magic, lrec = _HEAD.unpack(head)
            if magic != MAGIC:
                raise DataError(f"{self._where(key, offset)}: bad magic 0x{magic:08x} at byte {pos} (expected "
                                f"0x{MAGIC:08x}); not a RecordIO file, or the .idx belongs to another .rec")
            cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
            data = read(length, pos + _HEAD.size)
            if len(data) < length:
                raise DataError(f"{self._where(key, offset)}: truncated (header says {length} bytes, the file "
                                f"holds {len(data)}); the .rec is incomplete, re-download or rebuild it")
            expected = (0, 1) if not parts else (2, 3)
            if cflag not in expected:
                raise DataError(f"{self._where(key, offset)}: unexpected part flag {cflag} at byte {pos}; "
                                f"the .rec is corrupt")
            parts.append(data)
            pos += _HEAD.size + ((length + 3) & ~3)
            if cflag in (0, 3):
                return _MAGIC_BYTES.join(parts), pos

    def _read_at(self, n: int, offset: int) -> bytes:
        if self._fd is None:
            self._fd = os.open(self.rec_path, os.O_RDONLY)
        return _pread(self._fd, n, offset)

    def keys(self) -> list[int]:
        """Record keys in index order."""
        return list(self._offsets)

    def __len__(self) -> int:
        return len(self._offsets)

    def __contains__(self, key: int) -> bool:
        return key in self._offsets

    def read_raw(self, key: int) -> bytes:
        """The whole record `key` (header + payload) as stored."""
        try:
            offset = self._offsets[key]
        except KeyError:
            raise DataError(f"{self.rec_path}: no record {key} in the index") from None
        return self._walk(self._read_at, key, offset)[0]

    def read(self, key: int) -> tuple[IRHeader, bytes]:
        """Record `key` as (IRHeader, payload bytes)."""
        return unpack(self.read_raw(key), self._where(key, self._offsets.get(key, -1)))

    def read_header(self, key: int) -> IRHeader:
        """Only the IRHeader of record `key`, without reading a single-part payload."""
        offset = self._offsets.get(key)
        if offset is not None:
            head = self._read_at(_HEAD.size + _IR.size, offset)
            if len(head) == _HEAD.size + _IR.size:
                magic, lrec = _HEAD.unpack_from(head)
                flag, label, id1, id2 = _IR.unpack_from(head, _HEAD.size)
                length = lrec & ((1 << 29) - 1)
                if magic == MAGIC and lrec >> 29 == 0 and length >= _IR.size + 4 * flag:
                    if flag == 0:
                        return IRHeader(flag, label, id1, id2)
                    extra = self._read_at(4 * flag, offset + _HEAD.size + _IR.size)
                    if len(extra) == 4 * flag:
                        return IRHeader(flag, np.frombuffer(extra, "<f4").astype(np.float32), id1, id2)
        return self.read(key)[0]  # multi-part, damaged or unknown key: the careful path raises the right error

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RecordIOReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fd"] = None
        return state


def _pread(fd: int, n: int, offset: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        b = os.pread(fd, n - got, offset + got)
        if not b:
            break
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


class RecordIOWriter:
    """Write an indexed RecordIO pair atomically: both files appear (renamed from temps) at close().

    Use as a context manager; on an exception nothing is left behind.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike):
        from ..io import atomic_path

        self.rec_path, self.idx_path = Path(rec_path), Path(idx_path)
        self._stack = contextlib.ExitStack()
        # Entered idx first so that the .rec, unwound last-in first-out, is renamed into place first.
        tmp_idx = self._stack.enter_context(atomic_path(self.idx_path))
        tmp_rec = self._stack.enter_context(atomic_path(self.rec_path))
        self._rec = open(tmp_rec, "wb")
        self._idx = open(tmp_idx, "w", encoding="utf-8", newline="\n")
        self._keys: set[int] = set()
        self._closed = False

    def write(self, key: int, record: bytes) -> None:
        """Append a raw record under an integer key (split around aligned magic words, as dmlc does)."""
        key = int(key)
        if key in self._keys:
            raise ValueError(f"record key {key} written twice")
        self._keys.add(key)
        self._idx.write(f"{key}\t{self._rec.tell()}\n")
        data = bytes(record)
        if len(data) >= 1 << 29:
            raise ValueError(f"record {key} is {len(data)} bytes; RecordIO records are limited to 512 MiB")
        start = 0
        aligned_end = len(data) & ~3
        for i in range(0, aligned_end, 4):
            if data[i:i + 4] == _MAGIC_BYTES:
                self._frame(1 if start == 0 else 2, data[start:i])
                start = i + 4
        self._frame(3 if start else 0, data[start:])

    def _frame(self, cflag: int, part: bytes) -> None:
        self._rec.write(_HEAD.pack(MAGIC, (cflag << 29) | len(part)))
        self._rec.write(part)
        self._rec.write(b"\0" * (-len(part) % 4))

    def write_record(self, key: int, header: IRHeader, payload: bytes = b"") -> None:
        """Append `pack(header, payload)` under `key`."""
        self.write(key, pack(header, payload))

    def _finish(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._rec.close()
        self._idx.close()
        if exc is None:
            self._stack.close()
        else:
            self._stack.__exit__(type(exc), exc, exc.__traceback__)

    def close(self) -> None:
        """Finish both files and rename them into place."""
        self._finish(None)

    def __enter__(self) -> "RecordIOWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._finish(exc if exc is not None else None)


def _find_pair(rec_path: str | os.PathLike) -> tuple[Path, Path | None]:
    p = Path(rec_path)
    if p.is_dir():
        p = p / "train.rec"
    if p.suffix == ".idx":
        p = p.with_suffix(".rec")
    idx = p.with_suffix(".idx")
    return p, idx if idx.is_file() else None


def image_keys(reader: RecordIOReader) -> list[int]:
    """Keys of the image records: 1..a-1 after an insightface header record 0, else every key."""
    if 0 in reader:
        h0, payload = reader.read(0)
        # insightface only tests flag > 0; an image record 0 with several labels would pass that, but an image
        # always has a payload and a header record never does.
        if h0.flag >= 2 and not payload and 1 <= h0.label[0] <= h0.label[1]:
            return [k for k in range(1, int(h0.label[0])) if k in reader]
    return reader.keys()


def read_rec_dataset(rec_path: str | os.PathLike) -> LabelledFaces:
    """Labelled faces of a .rec (a file, its .idx, or a folder holding train.rec).

    Labels are those of the image headers (label, or label[0] when several), like arcface_torch reads
    them, remapped to 0..C-1 in sorted order; class_names keeps the original label values.
    """
    from ..progress import progress

    rec, idx = _find_pair(rec_path)
    reader = RecordIOReader(rec, idx)
    keys = image_keys(reader)
    if not keys:
        raise DataError(f"{rec}: no image records")
    raw = np.empty(len(keys), np.float64)
    with progress("rec") as bar:
        task = bar.add_task(f"headers {rec.name}", total=len(keys))
        for i, k in enumerate(keys):
            raw[i] = _label_of(reader.read_header(k))
            bar.advance(task)
    reader.close()
    classes, labels = np.unique(raw, return_inverse=True)
    names = [str(int(c)) if float(c).is_integer() else str(c) for c in classes]
    return LabelledFaces(name=rec.stem, items=keys, labels=labels.astype(np.int64), num_classes=len(classes),
                         class_names=names, source=str(rec))


def write_rec_from_folder(src: str | os.PathLike, out_prefix: str | os.PathLike,
                          on_error: str = "fail") -> LabelledFaces:
    """Pack an aligned image folder into OUT_PREFIX.rec/.idx in insightface's train.rec layout.

    Records 1..N hold the original image bytes (grouped by label, IRHeader label = class index), records
    N+1..N+C the identities' (first, end) image id ranges, record 0 the header (N+1, N+1+C). Every image
    is decoded first and must be an aligned 112x112 face; with on_error="skip" bad ones are left out
    (identities left empty are dropped). Returns the listing as written.
    """
    from ..progress import progress
    from .imagefolder import FACE_SIZE, read_image_folder
    from .images import SKIP_HINT, check_on_error, read_image_rgb

    check_on_error(on_error)
    faces = read_image_folder(src, on_error)
    root = Path(faces.source)
    keep: list[int] = []
    skipped = faces.skipped
    with progress("img") as bar:
        task = bar.add_task(f"check {root.name}", total=len(faces.items))
        for i, rel in enumerate(faces.items):
            path = root / rel
            img = read_image_rgb(path, on_error)
            if img is not None and img.shape[:2] != (FACE_SIZE, FACE_SIZE):
                if on_error == "fail":
                    raise DataError(f"{path}: {img.shape[1]}x{img.shape[0]}, not an aligned {FACE_SIZE}x{FACE_SIZE} "
                                    f"face; run `facepipe data align` first, or set {SKIP_HINT}")
                img = None
            if img is None:
                skipped += 1
            else:
                keep.append(i)
            bar.advance(task)
    if not keep:
        raise DataError(f"{root}: no usable images to pack")
    old_labels = faces.labels[keep]
    present, labels = np.unique(old_labels, return_inverse=True)
    n, c = len(keep), len(present)
    rec_path, idx_path = Path(f"{out_prefix}.rec"), Path(f"{out_prefix}.idx")
    with RecordIOWriter(rec_path, idx_path) as w, progress("img") as bar:
        task = bar.add_task(f"pack {rec_path.name}", total=n)
        w.write_record(0, IRHeader(2, np.array([n + 1, n + 1 + c], np.float32), 0, 0))
        for key, (i, label) in enumerate(zip(keep, labels), 1):
            w.write_record(key, IRHeader(0, float(label), key, 0), (root / faces.items[i]).read_bytes())
            bar.advance(task)
        starts = np.searchsorted(labels, np.arange(c + 1)) + 1  # labels are grouped in order
        for k in range(c):
            w.write_record(n + 1 + k, IRHeader(2, np.array([starts[k], starts[k + 1]], np.float32), 0, 0))
    return LabelledFaces(name=rec_path.stem, items=list(range(1, n + 1)), labels=labels.astype(np.int64),
                         num_classes=c, class_names=[faces.class_names[j] for j in present],
                         source=str(rec_path), skipped=skipped)
