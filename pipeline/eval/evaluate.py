"""Score any model on any benchmarks through one path: resolve, load, embed (cached), measure, report.

Used by `facepipe eval`, the teacher stage and (later) the bench stage, so every runtime is measured by
the same metrics code (pipeline/eval/metrics.py through pipeline/eval/datasets.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .datasets import Benchmark, BenchmarkResult, evaluate_benchmark, evaluate_embeddings, resolve_benchmark


def embeddings_cache_dir() -> Path:
    """Shared cache of benchmark embeddings ($FACEPIPE_CACHE/embeddings), keyed by model and data content."""
    from ..assets import cache_dir

    return cache_dir().parent / "embeddings"


def benchmark_inputs(bench: Benchmark) -> dict[str, Path]:
    """Files and folders whose content identifies a benchmark (folders of images include their images)."""
    files = {f"{bench.name}.{p.name}": p for p in bench.input_files()}
    root = bench.image_root()
    if root is not None:
        files[f"{bench.name}.images"] = root
    return files


def faces_fingerprint(images: np.ndarray) -> str:
    """Content hash of a face array: the same faces in the same order (an LFW folder, or the lossless .bin
    made from it) share cached embeddings, and any change in reading or alignment changes the key."""
    import hashlib

    h = hashlib.sha256(repr((images.shape, str(images.dtype))).encode())
    h.update(np.ascontiguousarray(images).data)
    return h.hexdigest()


@dataclass
class _Faces:
    """A loaded benchmark's images seen as a face source (what the embedding cache consumes)."""

    images: np.ndarray
    key: str

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> np.ndarray:
        return self.images[i]

    def content_hash(self) -> str:
        return self.key


def embed_cached(model_source, embedder, images: np.ndarray, data_key: str, flip: bool, batch_size: int,
                 cache_dir: Path) -> tuple[np.ndarray, bool]:
    """(embeddings, reused): flip-summed when `flip`, cached by model fingerprint, face content, flip, the
    decoding / alignment / preprocessing code and the runtime (pipeline/eval/cache.py: cache_key)."""
    from .cache import TeacherCache, cache_key, embedder_device

    faces = _Faces(images, data_key)
    key = cache_key(model_source, faces, flip, device=embedder_device(embedder))
    cache = TeacherCache.open(cache_dir, key)
    reused = cache is not None
    if cache is None:
        cache = TeacherCache.build(embedder, faces, cache_dir, key, flip=flip, batch_size=batch_size)
    emb = np.asarray(cache.embeddings, dtype=np.float32)
    if flip:
        emb = emb + np.asarray(cache.flipped, dtype=np.float32)
    return emb, reused


def evaluate_model(model_source, embedder, specs: Sequence[str], data_root: Path | None, *, flip: bool,
                   batch_size: int, on_error: str, metric: str = "euclidean",
                   cache_dir: Path | None = None) -> list[BenchmarkResult]:
    """Evaluate `embedder` (built from `model_source`) on each benchmark spec.

    Every spec is resolved before any work starts, so a missing benchmark fails fast. With `cache_dir`,
    pair-benchmark embeddings are cached per (model fingerprint, face content, flip).
    """
    benches = [resolve_benchmark(s, data_root) for s in specs]
    results = []
    for bench in benches:
        t0 = time.perf_counter()
        data = bench.load(on_error)
        load_s = time.perf_counter() - t0
        if cache_dir is not None and bench.kind == "pairs":
            t1 = time.perf_counter()
            emb, reused = embed_cached(model_source, embedder, data.images, faces_fingerprint(data.images), flip,
                                       batch_size, cache_dir)
            result = evaluate_embeddings(emb, data, name=bench.name, metric=metric,
                                         seconds=time.perf_counter() - t1)
            result.summary["embeddings_cached"] = reused
        else:
            result = evaluate_benchmark(embedder, bench, data=data, flip=flip, batch_size=batch_size,
                                        on_error=on_error, metric=metric)
            result.summary["embeddings_cached"] = False
        result.summary["load_seconds"] = load_s
        result.summary["flip"] = flip
        results.append(result)
    return results


def results_table(results: Sequence[BenchmarkResult], title: str):
    """Rich table: benchmark, pairs, accuracy ± std, threshold, VAL@FAR, TAR at the lowest FAR, seconds."""
    from rich.table import Table

    t = Table(title=title)
    for col in ("benchmark", "pairs", "accuracy %", "threshold", "VAL@FAR", "TAR@FAR (lowest measurable) %", "load s",
                "embed+score s"):
        t.add_column(col, justify="right" if col != "benchmark" else "left")
    for r in results:
        s = r.summary
        acc = f"{s['accuracy']:.2f} ± {s['std']:.2f}" if s.get("accuracy") is not None else "-"
        val = f"{s['val'] * 100:.2f} @ {s['far']:.0e}" if s.get("val") is not None and s.get("far") else "-"
        tars = s.get("tar_at_far") or {}
        low = min(tars, key=float) if tars else None
        t.add_row(s["name"], f"{s['pairs']}" + (f" ({s['skipped']} skipped)" if s.get("skipped") else ""), acc,
                  f"{s['threshold']:.3f}" if s.get("threshold") is not None else "-", val,
                  f"{tars[low]:.2f} @ {low}" if low else "-", f"{s.get('load_seconds', 0):.1f}",
                  f"{s['seconds']:.1f}" + (" (cached)" if s.get("embeddings_cached") else ""))
    return t


def roc_curves(results: Sequence[BenchmarkResult], label: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    return [(f"{label} {r.summary['name']}", r.roc[0], r.roc[1]) for r in results]
