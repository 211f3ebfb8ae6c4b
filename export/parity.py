"""The parity gate: an exported artifact must give the embeddings of its reference model.

Faces are real (the first `export.parity_faces` aligned faces of the first configured benchmark) when the
data is there, else deterministic synthetic images; the report says which.
"""

from __future__ import annotations

import os

import numpy as np

from facepipe.pipeline.embedder import Embedder, cosine_rows
from facepipe.pipeline.errors import FacepipeError, ParityError, first_line
from facepipe.pipeline.eval.metrics import embedding_spread

from .formats import Format, tolerance

BATCH1_FACES = 4  # faces also run one by one: the dynamic batch axis must give the same numbers


def check_parity(reference: Embedder, candidate: Embedder, faces: np.ndarray, fmt: Format, *,
                 precision: str | None = None, atol: float | None = None, artifact: str | None = None,
                 batch_size: int = 32, cos_floor: float | None = None) -> dict:
    """Compare embeddings at `batch_size` and at batch 1; ParityError when below the format's gate
    (cos_floor overrides the format's cosine floor).

    Returns {faces, cos_min, cos_mean, max_abs, ref_norm, reference_spread, cos_floor, atol, batch_sizes,
    passed}. A collapsed reference (every face one direction) is a ParityError: nothing can be checked on it.
    """
    floor, tol = tolerance(fmt, precision, atol)
    cos_floor = floor if cos_floor is None else float(cos_floor)
    ref = reference.embed(faces, batch_size=batch_size)
    spread = embedding_spread(ref) if len(ref) > 1 else None
    if spread is not None and spread["collapsed"]:
        # Any artifact "matches" a model that maps every face to one vector: refuse to vouch for it.
        err = ParityError(f"the reference {reference.name!r} maps the {len(faces)} parity faces to one direction "
                          f"(pairwise cosine mean {spread['cos_mean']:.5f}, std {spread['cos_std']:.1e}): it is "
                          "collapsed, so no export of it can be checked; train it longer or with a higher lr, "
                          "or check the checkpoint, before exporting")
        err.parity = {"faces": int(len(faces)), "reference_spread": spread, "passed": False}
        raise err
    got = candidate.embed(faces, batch_size=batch_size)
    k = min(BATCH1_FACES, len(faces))
    one = candidate.embed(faces[:k], batch_size=1)
    cos = np.concatenate([cosine_rows(ref, got), cosine_rows(ref[:k], one)])
    diff = np.concatenate([np.abs(ref - got).ravel(), np.abs(ref[:k] - one).ravel()])
    finite = bool(np.isfinite(got).all() and np.isfinite(one).all())
    result = {"faces": int(len(faces)), "cos_min": float(cos.min()) if finite else float("nan"),
              "cos_mean": float(cos.mean()) if finite else float("nan"),
              "max_abs": float(diff.max()) if finite else float("inf"),
              "ref_norm": float(np.linalg.norm(ref, axis=1).mean()), "reference_spread": spread,
              "cos_floor": cos_floor, "atol": tol,
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


def int8_weight_max(qdq_onnx) -> int | None:
    """The largest |int8 weight code| in a QDQ ONNX (conv / gemm weights), None when it holds none."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(qdq_onnx), load_external_data=False)
    codes = [np.abs(numpy_helper.to_array(t).astype(np.int16)).max() for t in proto.graph.initializer
             if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    return int(max(codes)) if codes else None


def overflow_hint(qdq_onnx, isa: dict | None = None) -> str | None:
    """Why an int8 artifact may miss its reference on this CPU, and what to do: full-range 8-bit weights on an
    x86 CPU without VNNI (models/quant/overflow.py). None when that is not the case here."""
    from facepipe.pipeline.device import cpu_info, x86_without_vnni

    isa = cpu_info()["isa"] if isa is None else isa
    if not x86_without_vnni(isa):
        return None
    top = int8_weight_max(qdq_onnx)
    if top is None or top <= 64:
        return None
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    where = f"oneDNN capped at {cap} by ONEDNN_MAX_CPU_ISA" if cap and isa.get("vnni") else isa.get("summary")
    return (f"this CPU ({where}, no VNNI) adds pairs of u8 x s8 products in saturating 16-bit sums, "
            f"and {qdq_onnx} uses full-range 8-bit weights (|code| up to {top}): re-quantize with 7-bit weights "
            "(quantize.overflow_fix=true; the default 'auto' does it when quantizing on such a CPU), or deploy on a CPU with VNNI")


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


def parity_faces_origin(cfg) -> str:
    """Where `parity_faces` will take its faces from, without reading them: "real: <benchmark> <path>" or
    "synthetic (<why>)". Part of the export stage's fingerprint: an artifact gated on synthetic faces is
    re-checked once real data appears."""
    from facepipe.pipeline.eval.datasets import resolve_benchmark

    specs = list(cfg.data.benchmarks)
    if not specs:
        return "synthetic (data.benchmarks is empty)"
    try:
        bench = resolve_benchmark(specs[0], cfg.data_root(required=False))
    except FacepipeError as e:
        return f"synthetic ({specs[0]} unavailable: {first_line(e)})"
    return f"real: {bench.name} ({bench.path})"


def parity_faces(cfg, n: int) -> tuple[np.ndarray, str]:
    """(faces, source description): the first `n` faces of the first benchmark in data.benchmarks, loaded by
    the benchmark loaders; synthetic faces (and the reason) when there is no such data."""
    return benchmark_faces(list(cfg.data.benchmarks), cfg.data_root(required=False), n)


def benchmark_faces(specs: list[str], root, n: int) -> tuple[np.ndarray, str]:
    """parity_faces for benchmark specs and a data root (None: unset) instead of a config."""
    from facepipe.pipeline.eval.datasets import resolve_benchmark

    if not specs:
        return synthetic_faces(n), "synthetic (data.benchmarks is empty)"
    try:
        bench = resolve_benchmark(specs[0], root)
        data = bench.load(on_error="skip")
    except FacepipeError as e:
        return synthetic_faces(n), f"synthetic ({specs[0]} unavailable: {first_line(e)})"
    images = getattr(data, "images", None)
    if not isinstance(images, np.ndarray) or images.ndim != 4 or not len(images):
        return synthetic_faces(n), f"synthetic ({bench.name} has no aligned face array)"
    faces = np.ascontiguousarray(images[:n])
    return faces, f"real: first {len(faces)} aligned faces of {bench.name} ({bench.path})"
