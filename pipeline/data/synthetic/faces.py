"""Bring generated or foreign face images to the ArcFace-aligned 112x112 layout the student was trained on.

An image that is already 112x112 is taken as aligned. Any other image is upscaled (small generator output
such as 64x64 is too small for YuNet's anchors), YuNet finds five landmarks (the face nearest the centre),
and the image is warped onto the ArcFace template (pipeline/data/align.py). The warp reads from an
edge-replicated copy, so a tight generated crop does not leave black corners. When no face is found the
fallback is a centre square crop resized to 112x112 (counted as `centre_crop` in the summary).
"""

from __future__ import annotations

import numpy as np

FACE = 112
MIN_DETECT_SIDE = 128  # upscale smaller images to this side before detection
PAD = 0.5  # edge-replicated border (fraction of the side) that the warp may read from


def centre_crop(image: np.ndarray, size: int = FACE) -> np.ndarray:
    """The centre square of an image resized to size x size (the fallback when no face is detected)."""
    import cv2

    h, w = image.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    crop = image[y:y + s, x:x + s]
    interp = cv2.INTER_AREA if s > size else cv2.INTER_CUBIC
    return cv2.resize(crop, (size, size), interpolation=interp)


def align_image(image: np.ndarray) -> tuple[np.ndarray, str]:
    """(uint8 RGB 112x112 face, how) with how in {"as_is", "landmarks", "centre_crop"}."""
    import cv2

    from ..align import align_face
    from ..detect import detect_landmarks

    if image.shape[:2] == (FACE, FACE):
        return image, "as_is"
    h, w = image.shape[:2]
    scale = max(1.0, MIN_DETECT_SIDE / min(h, w))
    big = image if scale == 1.0 else cv2.resize(image, (round(w * scale), round(h * scale)),
                                                 interpolation=cv2.INTER_CUBIC)
    found = detect_landmarks(big, select="center")
    if found is None:
        return centre_crop(image), "centre_crop"
    pad = int(PAD * max(big.shape[:2]))
    padded = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    return align_face(padded, found[0] + pad), "landmarks"


def align_generated(images: np.ndarray | list[np.ndarray]) -> tuple[np.ndarray, dict]:
    """Align a batch (or list) of uint8 RGB images; returns (N, 112, 112, 3) and counts per method."""
    out = np.empty((len(images), FACE, FACE, 3), np.uint8)
    counts = {"as_is": 0, "landmarks": 0, "centre_crop": 0}
    for i, img in enumerate(images):
        out[i], how = align_image(np.ascontiguousarray(img))
        counts[how] += 1
    return out, counts


def save_grid(faces: np.ndarray, path, n: int = 64) -> None:
    """Write up to n faces as a square PNG grid (a look at what calibrated the model); atomic."""
    import cv2

    from ...io import atomic_path

    k = min(n, len(faces))
    cols = int(np.ceil(np.sqrt(k)))
    rows = int(np.ceil(k / cols))
    h, w = faces.shape[1:3]
    grid = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i in range(k):
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = faces[i]
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(grid[:, :, ::-1])):
            raise OSError(f"cannot write {path}")
