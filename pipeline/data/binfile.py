"""insightface verification `.bin` files: a pickle of (list of encoded images, list of bool issame).

Images 2k and 2k+1 form pair k. They are read through a restricted unpickler: only bytes, bytearray,
the latin-1 `_codecs.encode` that Python 3 uses for bytes in protocol-2 pickles, and inert stand-ins for
the numpy globals of 1-byte arrays/scalars (dumps made with `cv2.imencode` arrays or numpy bools) are
allowed. numpy's own reconstructors are never called on file data; the stand-ins are turned into arrays by
`np.frombuffer` after loading.
"""

from __future__ import annotations

import io
import math
import os
import pickle
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..eval.metrics import kfold_ids
from ..progress import progress
from .images import check_on_error, decode_image_rgb, encode_jpeg, encode_png
from .types import VerificationSet

_SIZE = 112
_DTYPES = {"u1": np.uint8, "i1": np.int8, "b1": np.bool_, "|u1": np.uint8, "|i1": np.int8, "|b1": np.bool_}


class _Refused(Exception):
    pass


def _text(v) -> str:
    return v.decode("latin-1") if isinstance(v, (bytes, bytearray)) else str(v)


class _Global:
    """What find_class hands out: a callable that refuses pickle BUILD, so a file cannot patch it."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        if self.fn is None:
            raise _Refused("a call of numpy.ndarray")
        return self.fn(*args)

    def __setstate__(self, state):
        raise _Refused("state set on an allowed global")


_NDARRAY = _Global(None)  # numpy.ndarray: only ever an argument of _reconstruct


class _Dtype:
    """Stands in for a numpy.dtype: records the type code; only 1-byte types are accepted."""

    def __init__(self, code):
        code = _text(code)
        if code not in _DTYPES:
            raise _Refused(f"numpy dtype {code!r} (only 1-byte uint8/int8/bool arrays are accepted)")
        self.dtype = np.dtype(_DTYPES[code])

    def __setstate__(self, state):
        pass  # byte order and flags are irrelevant for 1-byte types


class _Array:
    """Stands in for an ndarray under reconstruction; filled by __setstate__ (pickle BUILD)."""

    def __init__(self):
        self.value: np.ndarray | None = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused("ndarray state of an unexpected form")
        shape, dtype, _fortran, raw = state[-4:]
        if not isinstance(dtype, _Dtype) or not isinstance(raw, (bytes, bytearray, str)):
            raise _Refused("ndarray state with an unsupported dtype or data")
        raw = raw.encode("latin-1") if isinstance(raw, str) else bytes(raw)
        shape = tuple(int(n) for n in shape)
        if any(n < 0 for n in shape) or math.prod(shape) != len(raw):
            raise _Refused(f"ndarray of shape {shape} with {len(raw)} data bytes")
        self.value = np.frombuffer(raw, dtype=dtype.dtype).reshape(shape).copy()


def _dtype(code, align=False, copy=True):
    return _Dtype(code)


def _reconstruct(cls, shape, typecode):
    if cls is not _NDARRAY:
        raise _Refused("numpy _reconstruct of a class other than numpy.ndarray")
    return _Array()


def _scalar(dtype, data=b""):
    if not isinstance(dtype, _Dtype) or not isinstance(data, (bytes, str)):
        raise _Refused("numpy scalar of an unsupported form")
    data = data.encode("latin-1") if isinstance(data, str) else data
    if len(data) != 1:
        raise _Refused(f"numpy scalar with {len(data)} data bytes")
    return np.frombuffer(data, dtype=dtype.dtype, count=1)[0].item()  # a plain Python bool/int


def _frombuffer(buf, dtype, shape, order):
    if not isinstance(buf, (bytes, bytearray)):
        raise _Refused("numpy _frombuffer of something other than in-band bytes")
    arr = _Array()
    arr.__setstate__((tuple(shape), dtype, order == "F", bytes(buf)))
    return arr


def _latin1(encoding) -> bool:
    return str(encoding).lower().replace("-", "").replace("_", "") == "latin1"


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    if not isinstance(obj, str) or not _latin1(encoding):
        raise _Refused("_codecs.encode other than latin-1 text to bytes")
    return obj.encode("latin-1")


def _bytes_like(cls):
    # Only the forms pickle itself emits; never an int, which would allocate that many bytes.
    def make(*args):
        if not args:
            return cls()
        if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
            return cls(args[0])
        if len(args) == 2 and isinstance(args[0], str) and _latin1(args[1]):
            return cls(args[0].encode("latin-1"))
        raise _Refused(f"builtins.{cls.__name__} called with unexpected arguments")

    return make


_ALLOWED = {
    ("builtins", "bytes"): _Global(_bytes_like(bytes)),
    ("builtins", "bytearray"): _Global(_bytes_like(bytearray)),
    ("_codecs", "encode"): _Global(_codecs_encode),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Global(_dtype),
}
for _mod in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_mod}.multiarray", "_reconstruct")] = _Global(_reconstruct)
    _ALLOWED[(f"{_mod}.multiarray", "scalar")] = _Global(_scalar)
    _ALLOWED[(f"{_mod}.numeric", "_frombuffer")] = _Global(_frombuffer)


class _BinUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "__builtin__":  # Python 2 pickles (the overridden find_class skips fix_imports)
            module = "builtins"
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"global {module}.{name}") from None

    def persistent_load(self, pid):
        raise _Refused("persistent id")


def _as_bytes(obj) -> bytes | None:
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj)
    if isinstance(obj, str):  # a py2 str unpickled as text
        return obj.encode("latin-1")
    if isinstance(obj, _Array) and obj.value is not None and obj.value.dtype == np.uint8:
        return obj.value.tobytes()
    return None


def _as_bool_list(obj) -> list[bool] | None:
    if isinstance(obj, _Array):
        obj = obj.value
    if isinstance(obj, np.ndarray):
        obj = obj.reshape(-1).tolist()
    if not isinstance(obj, (list, tuple)):
        return None
    out = []
    for v in obj:
        if isinstance(v, _Array) and v.value is not None and v.value.size == 1:
            v = v.value.reshape(-1)[0]
        if isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and v in (0, 1)):
            out.append(bool(v))
        else:
            return None
    return out


def read_bin_raw(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """The encoded images and the issame flags of a .bin file (nothing decoded), safely unpickled."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: .bin file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read .bin file ({e.strerror or e})") from None
    try:
        # encoding="bytes": Python 2 str (the JPEG data of insightface's own bins) stays bytes
        obj = _BinUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Refused as e:
        raise DataError(f"{path}: refusing to unpickle {e}; an insightface .bin holds only image bytes and "
                        f"bools; do not use this file") from None
    except Exception as e:  # truncated / garbled pickles raise many different exception types
        raise DataError(f"{path}: not a readable .bin pickle ({type(e).__name__}: {e}); the file is truncated "
                        f"or corrupt, re-download or rebuild it") from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataError(f"{path}: expected a pickled (images, issame) pair, got {type(obj).__name__}")
    bins_obj, issame_obj = obj
    if not isinstance(bins_obj, (list, tuple)):
        raise DataError(f"{path}: the images entry is a {type(bins_obj).__name__}, expected a list of bytes")
    bins = []
    for i, b in enumerate(bins_obj):
        raw = _as_bytes(b)
        if raw is None:
            raise DataError(f"{path}: image {i} is a {type(b).__name__}, expected encoded image bytes")
        bins.append(raw)
    issame = _as_bool_list(issame_obj)
    if issame is None:
        raise DataError(f"{path}: the issame entry is not a list of booleans")
    if len(bins) != 2 * len(issame):
        raise DataError(f"{path}: {len(bins)} images for {len(issame)} pairs; expected exactly two images per pair")
    return bins, np.array(issame, dtype=bool)


def _to_face(img: np.ndarray) -> np.ndarray:
    import cv2

    if img.shape[:2] != (_SIZE, _SIZE):  # insightface resizes off-size bin images too
        img = cv2.resize(img, (_SIZE, _SIZE), interpolation=cv2.INTER_LINEAR)
    return img


def read_bin(path: str | os.PathLike, on_error: str = "fail") -> VerificationSet:
    """Load an insightface .bin as a VerificationSet (10 consecutive folds, as insightface's KFold).

    Byte-identical images (LFW's 12,000 pair slots hold 7,701 distinct faces) are decoded and kept once, in
    order of first appearance, so they are embedded once. An undecodable image raises a DataError naming
    the file and image (on_error="fail"), or its pairs are dropped and counted in `skipped` ("skip").
    """
    check_on_error(on_error)
    path = Path(path)
    bins, issame = read_bin_raw(path)
    first: dict[bytes, int] = {}
    slot_to_unique = np.array([first.setdefault(b, len(first)) for b in bins], dtype=np.int64)
    unique = list(first)
    faces = np.zeros((len(unique), _SIZE, _SIZE, 3), np.uint8)
    ok = np.ones(len(unique), bool)
    slot_of = {u: i for i, u in reversed(list(enumerate(slot_to_unique.tolist())))}  # first slot per image
    with progress("img") as bar:
        task = bar.add_task(f"decode {path.name}", total=len(unique))
        for u, b in enumerate(unique):
            i = slot_of[u]
            img = decode_image_rgb(b, f"{path}: image {i} (pair {i // 2})", on_error)
            if img is None:
                ok[u] = False
            else:
                faces[u] = _to_face(img)
            bar.advance(task)
    folds = kfold_ids(len(issame))
    pairs = slot_to_unique.reshape(-1, 2)
    pair_ok = ok[pairs[:, 0]] & ok[pairs[:, 1]]
    pairs = pairs[pair_ok]
    used = np.unique(pairs)  # images of dropped pairs go too; keep first-appearance order
    if len(used) < len(unique):
        order = np.sort(used)
        remap = np.full(len(unique), -1, np.int64)
        remap[order] = np.arange(len(order))
        faces, pairs = faces[order], remap[pairs]
    return VerificationSet(name=path.stem, images=faces, pairs=pairs, issame=issame[pair_ok],
                           folds=folds[pair_ok], skipped=int((~pair_ok).sum()), source=str(path))


def write_bin(path: str | os.PathLike, images: list[bytes], issame: list[bool]) -> Path:
    """Write an insightface .bin (pickle protocol 4 of (list of bytes, list of bool)) atomically."""
    from ..io import atomic_write_bytes

    images = [bytes(b) for b in images]
    issame = [bool(s) for s in issame]
    if len(images) != 2 * len(issame):
        raise ValueError(f"{len(images)} images for {len(issame)} pairs: need two images per pair")
    return atomic_write_bytes(path, pickle.dumps((images, issame), protocol=4))


def make_bin(data: VerificationSet, out: str | os.PathLike, image_format: str = "png", quality: int = 95) -> Path:
    """Write a loaded verification set as an insightface .bin, pairs in fold order.

    Readers split a .bin into 10 consecutive folds, so the pairs are written fold by fold; a set with one
    fold (a plain pairs list) is first given 10 label-stratified folds, the ones it would be scored with.
    The default "png" is lossless: the .bin holds bit-identical faces, so it scores exactly what the raw
    images score. "jpeg" (quality 95) is what insightface's own bins hold; with SFace on the 6000 LFW
    pairs it scored 99.48% against 99.42% for the raw aligned faces (no loss, but not the same number).
    """
    from ..eval.metrics import stratified_kfold_ids

    if image_format not in ("jpeg", "png"):
        raise DataError(f"image format must be 'jpeg' or 'png', got {image_format!r}")
    issame = np.asarray(data.issame, bool)
    order = np.arange(len(issame))
    if len(np.unique(data.folds)) >= 2:
        order = np.argsort(data.folds, kind="stable")
    elif min(issame.sum(), (~issame).sum()) >= 10:  # fewer cannot be stratified; such a set is kept as listed
        order = np.argsort(stratified_kfold_ids(issame), kind="stable")
    encoded = [encode_jpeg(img, quality) if image_format == "jpeg" else encode_png(img) for img in data.images]
    images = [encoded[j] for a, b in data.pairs[order] for j in (a, b)]
    return write_bin(out, images, issame[order].tolist())


def make_bin_from_lfw(lfw_root: str | os.PathLike, out: str | os.PathLike, pairs_file: str = "pairs.txt",
                      on_error: str = "fail", image_format: str = "png", quality: int = 95) -> Path:
    """Align LFW's pairs and write them as a .bin of faces (see make_bin)."""
    from .lfw import load_lfw

    if image_format not in ("jpeg", "png"):
        raise DataError(f"image format must be 'jpeg' or 'png', got {image_format!r}")
    return make_bin(load_lfw(lfw_root, pairs_file=pairs_file, on_error=on_error), out, image_format, quality)
