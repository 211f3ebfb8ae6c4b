"""Hostile input 3: an image's size is read from its header and a huge one refused before any decoder runs."""

from __future__ import annotations

import resource
import struct
import zlib

import numpy as np
import pytest

from facepipe.pipeline.data import images as I
from facepipe.pipeline.errors import DataError


def _png_header_bomb(w: int, h: int) -> bytes:
    """A tiny PNG whose IHDR claims w x h (the IDAT would inflate to w*h*3 bytes)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp"])
def test_image_size_reads_real_headers(ext, rng):
    import cv2

    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(ext, img)
    assert ok
    assert I.image_size(buf.tobytes()) == (53, 37)


def test_a_16000x16000_png_is_refused_from_its_header_without_allocating(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_bomb(16000, 16000))
    assert I.image_size(bomb.read_bytes()) == (16000, 16000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match=r"bomb\.png: image is 16000x16000 \(256 MP\), over the 40 MP"):
        I.read_image_rgb(bomb)
    assert I.read_image_rgb(bomb, on_error="skip") is None
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # ru_maxrss: KiB on Linux
    assert grown_mb < 100, f"peak memory grew {grown_mb:.0f} MB while refusing the bomb"


def test_an_ordinary_face_still_decodes(rng):
    face = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    out = I.decode_image_rgb(I.encode_jpeg(face), "face.jpg")
    assert out.shape == (112, 112, 3)
