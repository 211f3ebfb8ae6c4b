"""The parity gate: an exported artifact must give the embeddings of its reference model.

Faces are real (the first `export.parity_faces` aligned faces of the first configured benchmark) when the
data is there, else deterministic synthetic images; the report says which.
"""

from __future__ import annotations

import numpy as np

from facepipe.pipeline.embedder import Embedder, cosine_rows
from facepipe.pipeline.errors import FacepipeError, ParityError

from .formats import Format, tolerance

BATCH1_FACES = 4  # faces also run one by one: the dynamic batch axis must give the same numbers


def check_parity(reference: Embedder, candidate: Embedder, faces: np.ndarray, fmt: Format, *,
                 precision: str | None = None, atol: float | None = None, artifact: str | None = None,
                 batch_size: int = 32, cos_floor: float | None = None) -> dict:
    """Compare embeddings at `batch_size` and at batch 1; ParityError when below the format's gate
    (cos_floor overrides the format's cosine floor).

    Returns {faces, cos_min, cos_mean, max_abs, ref_norm, cos_floor, atol, batch_sizes, passed}.
    """
    floor, tol = tolerance(fmt, precision, atol)
    cos_floor = floor if cos_floor is None else float(cos_floor)
    ref = reference.embed(faces, batch_size=batch_size)
    got = candidate.embed(faces, batch_size=batch_size)
    k = min(BATCH1_FACES, len(faces))
    one = candidate.embed(faces[:k], batch_size=1)
    cos = np.concatenate([cosine_rows(ref, got), cosine_rows(ref[:k], one)])
    diff = np.concatenate([np.abs(ref - got).ravel(), np.abs(ref[:k] - one).ravel()])
    finite = bool(np.isfinite(got).all() and np.isfinite(one).all())
    result = {"faces": int(len(faces)), "cos_min": float(cos.min()) if finite else float("nan"),
              "cos_mean": float(cos.mean()) if finite else float("nan"),
              "max_abs": float(diff.max()) if finite else float("inf"),
              "ref_norm": float(np.linalg.norm(ref, axis=1).mean()), "cos_floor": cos_floor, "atol": tol,
              "batch_sizes": [int(min(batch_size, len(faces))), 1]}
    result["passed"] = finite and result["cos_min"] >= cos_floor and result["max_abs"] <= tol
    if not result["passed"]:
        what = artifact or getattr(candidate, "name", "artifact")
        found = ("non-finite embeddings" if not finite else
                 f"cosine min {result['cos_min']:.6f} (mean {result['cos_mean']:.6f}), max abs diff "
                 f"{result['max_abs']:.3g}")
        err = ParityError(f"{what} ({fmt.key}{'/' + precision if precision else ''}) does not match its reference "
                          f"{reference.name!r} on {len(faces)} faces: {found}; required cosine >= {cos_floor} and "
                          f"max abs <= {tol:g} (export.atol overrides the latter)")
        err.parity = result  # the measured numbers, for the report
        raise err
    return result


def synthetic_faces(n: int, size: int = 112, seed: int = 0) -> np.ndarray:
    """Deterministic smooth uint8 RGB images (low-frequency noise plus a little grain): not faces, but
    with the spatial statistics that keep activations in a realistic range, unlike white noise."""
    import cv2

    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        coarse = rng.uniform(30, 225, size=(7, 7, 3)).astype(np.float32)
        img = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
        img += rng.normal(0, 8, size=img.shape).astype(np.float32)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def parity_faces(cfg, n: int) -> tuple[np.ndarray, str]:
    """(faces, source description): the first `n` faces of the first benchmark in data.benchmarks, loaded by
    the benchmark loaders; synthetic faces (and the reason) when there is no such data."""
    from facepipe.pipeline.benchmarks import resolve_benchmark

    specs = list(cfg.data.benchmarks)
    if not specs:
        return synthetic_faces(n), "synthetic (data.benchmarks is empty)"
    try:
        bench = resolve_benchmark(specs[0], cfg.data_root(required=False))
        data = bench.load(on_error="skip")
    except FacepipeError as e:
        return synthetic_faces(n), f"synthetic ({specs[0]} unavailable: {str(e).splitlines()[0]})"
    images = getattr(data, "images", None)
    if not isinstance(images, np.ndarray) or images.ndim != 4 or not len(images):
        return synthetic_faces(n), f"synthetic ({bench.name} has no aligned face array)"
    faces = np.ascontiguousarray(images[:n])
    return faces, f"real: first {len(faces)} aligned faces of {bench.name} ({bench.path})"
