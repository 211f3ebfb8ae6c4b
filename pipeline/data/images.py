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


# Faces are small; a larger image is refused from its header, before a decoder allocates it (a 730 KB PNG of
# 16000 x 16000 costs 768 MB as RGB, more inside the decoder).
MAX_PIXELS = 40_000_000
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, BMP, GIF or WebP header without decoding; None when unknown."""
    b = data
    if b.startswith(b"\x89PNG\r\n\x1a\n") and len(b) >= 24:
        return int.from_bytes(b[16:20], "big"), int.from_bytes(b[20:24], "big")
    if b.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 <= len(b):
            if b[i] != 0xFF:
                return None
            marker = b[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
                i += 2
                continue
            length = int.from_bytes(b[i + 2:i + 4], "big")
            if marker in _JPEG_SOF:
                return int.from_bytes(b[i + 7:i + 9], "big"), int.from_bytes(b[i + 5:i + 7], "big")
            i += 2 + length
        return None
    if b.startswith(b"BM") and len(b) >= 26:
        w, h = (int.from_bytes(b[k:k + 4], "little", signed=True) for k in (18, 22))
        return abs(w), abs(h)  # a negative height means top-down rows
    if b[:6] in (b"GIF87a", b"GIF89a") and len(b) >= 10:
        return int.from_bytes(b[6:8], "little"), int.from_bytes(b[8:10], "little")
    if b.startswith(b"RIFF") and b[8:12] == b"WEBP" and len(b) >= 30:
        chunk = b[12:16]
        if chunk == b"VP8X":
            return 1 + int.from_bytes(b[24:27], "little"), 1 + int.from_bytes(b[27:30], "little")
        if chunk == b"VP8L":
            bits = int.from_bytes(b[21:25], "little")
            return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        if chunk == b"VP8 ":
            return int.from_bytes(b[26:28], "little") & 0x3FFF, int.from_bytes(b[28:30], "little") & 0x3FFF
    return None


def _too_large(data: bytes) -> tuple[int, int] | None:
    size = image_size(data)
    return size if size is not None and size[0] * size[1] > MAX_PIXELS else None


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
    data = bytes(data)
    big = _too_large(data)
    if big is not None:
        if on_error == "skip":
            return None
        raise DataError(f"{where}: image is {big[0]}x{big[1]} ({big[0] * big[1] / 1e6:.0f} MP), over the "
                        f"{MAX_PIXELS / 1e6:.0f} MP facepipe decodes, refused from its header; {_FIX}")
    img = _decode(data)
    if img is None:
        if on_error == "skip":
            return None
        raise DataError(f"{where}: not a decodable image ({len(data)} bytes: corrupt, truncated or unsupported "
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
