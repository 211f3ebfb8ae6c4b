"""Image decoding and encoding with errors that name the file or record (OpenCV underneath, RGB out)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError

ON_ERROR = ("fail", "skip")

SKIP_HINT = "data.on_error=skip (--set data.on_error=skip; the `facepipe data` commands: --on-error skip)"
_FIX = f"re-download or remove it, or set {SKIP_HINT} to leave it out"


def check_on_error(on_error: str) -> str:
    """Validate an on_error value ("fail" or "skip")."""
    if on_error not in ON_ERROR:
        raise DataError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    return on_error


def _truncated_jpeg(data: bytes) -> bool:
    # libjpeg decodes a truncated JPEG into a half-grey image with only a warning. Entropy-coded data can
    # never contain FF D9 (FF is byte-stuffed), so a complete file has an EOI marker after its last SOS.
    if not data.startswith(b"\xff\xd8"):
        return False
    sos = data.rfind(b"\xff\xda")
    return sos < 0 or data.find(b"\xff\xd9", sos) < 0


def _decode(data: bytes) -> np.ndarray | None:
    import cv2

    if not data or _truncated_jpeg(data):
        return None
    buf = np.frombuffer(data, dtype=np.uint8)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.size == 0:
        return None
    return np.ascontiguousarray(bgr[:, :, ::-1])


def decode_image_rgb(data: bytes | bytearray | memoryview, where: str, on_error: str = "fail") -> np.ndarray | None:
    """Decode encoded image bytes to uint8 RGB HxWx3; `where` names the record in the error message."""
    check_on_error(on_error)
    img = _decode(bytes(data))
    if img is None:
        if on_error == "skip":
            return None
        raise DataError(f"{where}: not a decodable image ({len(data)} bytes; corrupt, truncated or unsupported "
                        f"format); {_FIX}")
    return img


def read_image_rgb(path: str | os.PathLike, on_error: str = "fail") -> np.ndarray | None:
    """Read an image file as uint8 RGB HxWx3; missing/corrupt -> DataError, or None when on_error="skip"."""
    check_on_error(on_error)
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if on_error == "skip":
            return None
        raise DataError(f"{path}: image not found; check the data root, or set {SKIP_HINT}") from None
    except OSError as e:
        if on_error == "skip":
            return None
        raise DataError(f"{path}: cannot read image ({e.strerror or e}); check its permissions") from None
    return decode_image_rgb(data, str(path), on_error)


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """Encode a uint8 RGB image as JPEG bytes (OpenCV, as cv2.imwrite would write it)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def encode_png(rgb: np.ndarray) -> bytes:
    """Encode a uint8 RGB image as lossless PNG bytes."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()
