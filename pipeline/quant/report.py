"""What a quantization run reports: sizes and footprints, agreement with the fp32 student (embedding cosine),
and accuracy of fp32 / PTQ / QAT on the benchmarks, plus the Rich table.

Pair benchmarks (LFW folders, .bin) are loaded once; each model embeds the faces once, and those embeddings
are scored by `benchmarks.evaluate_embeddings` (the code `evaluate_model` runs) and compared with the fp32
embeddings for the cosine. Other kinds (IJB) go through `evaluation.evaluate_model`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from torch import nn

from ..embedder import Preprocess, TorchEmbedder


def tensor_bytes(module: nn.Module) -> int:
    """Bytes held by a module's parameters and float buffers (its in-memory weight footprint)."""
    total = sum(p.numel() * p.element_size() for p in module.parameters())
    total += sum(b.numel() * b.element_size() for n, b in module.named_buffers()
                 if b.is_floating_point() and not n.endswith("num_batches_tracked"))
    return int(total)


def packed_bytes_estimate(qmodel) -> int:
    """In-memory footprint of the deployed quantized model: every quantized weight at its own layer's bits, one
    fp32 scale and one fp32 bias per output channel (BatchNorm folded in), every other parameter (PReLU slopes,
    BatchNorms kept in float) in fp32."""
    total, covered = 0.0, set()
    for m in qmodel.quant_layers().values():
        total += m.weight.numel() * m.weight_quant.bits / 8 + 2 * 4 * m.weight.shape[0]
        covered.update(id(p) for p in m.parameters())
    total += sum(p.numel() * 4 for p in qmodel.parameters() if id(p) not in covered)
    return int(round(total))


def size_metrics(fp32_path: Path, fp32: nn.Module, qmodel, files: dict[str, Path]) -> dict:
    """Disk sizes of the fp32 model and of each written artifact, fp32 vs packed in-memory footprints, and the
    weight bits averaged over the quantized weights (mixed precision counts each layer at its own bits)."""
    out = {"fp32_file_bytes": os.path.getsize(fp32_path), "fp32_memory_bytes": tensor_bytes(fp32),
           "packed_memory_bytes": packed_bytes_estimate(qmodel),
           "mean_weight_bits": round(qmodel.mean_weight_bits(), 3)}
    for role, p in files.items():
        out[f"{role}_file_bytes"] = os.path.getsize(p)
    if "packed" in files:
        out["compression"] = round(out["fp32_file_bytes"] / max(1, out["packed_file_bytes"]), 2)
    return out


def embed(module: nn.Module, faces: np.ndarray, pre: Preprocess, name: str, batch_size: int,
          flip: bool = False, show_progress: bool = True) -> np.ndarray:
    return TorchEmbedder(module, pre, name=name).embed(faces, batch_size=batch_size, flip=flip,
                                                        show_progress=show_progress)


def cosine_stats(reference: np.ndarray, other: np.ndarray) -> dict:
    """Mean and minimum cosine similarity between matching rows."""
    a = reference / np.maximum(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12)
    b = other / np.maximum(np.linalg.norm(other, axis=1, keepdims=True), 1e-12)
    cos = (a * b).sum(1)
    return {"mean": float(cos.mean()), "min": float(cos.min()), "faces": int(len(cos))}


@dataclass(frozen=True)
class Fp32Source:
    """Identifies the fp32 student for the shared embeddings cache (evaluation.embed_cached)."""

    sha256: str

    def fingerprint(self) -> str:
        return f"facepipe.quantize.fp32:{self.sha256}"


def evaluate_models(models: dict[str, nn.Module], pre: Preprocess, specs: Sequence[str], data_root: Path | None, *,
                    flip: bool, batch_size: int, on_error: str,
                    fp32_source: Fp32Source | None = None) -> tuple[dict, dict | None]:
    """({model: {benchmark: summary}}, {model: cosine stats} on the first pair benchmark or None).

    models must hold "fp32" (the cosine reference); with fp32_source its benchmark embeddings are cached
    in the shared embeddings cache (every quantization of one student reuses them).
    """
    from ..eval.datasets import evaluate_embeddings, resolve_benchmark
    from ..eval.evaluate import embed_cached, embeddings_cache_dir, evaluate_model, faces_fingerprint

    benches = [(s, resolve_benchmark(s, data_root)) for s in specs]  # all resolved before any work
    acc: dict[str, dict] = {name: {} for name in models}
    cosines = None
    for spec, bench in benches:
        if bench.kind != "pairs":
            for name, m in models.items():
                r = evaluate_model(None, TorchEmbedder(m, pre, name=name), [spec], data_root, flip=flip,
                                   batch_size=batch_size, on_error=on_error)[0]
                acc[name][bench.name] = r.summary
            continue
        data = bench.load(on_error)
        embs = {}
        for name, m in models.items():
            if name == "fp32" and fp32_source is not None:
                embs[name] = embed_cached(fp32_source, TorchEmbedder(m, pre, name=name), data.images,
                                          faces_fingerprint(data.images), flip, batch_size, embeddings_cache_dir())[0]
            else:
                embs[name] = embed(m, data.images, pre, f"{name} {bench.name}", batch_size, flip)
        for name, e in embs.items():
            acc[name][bench.name] = evaluate_embeddings(e, data, name=bench.name).summary
        if cosines is None:
            cosines = {name: {**cosine_stats(embs["fp32"], e), "on": bench.name}
                       for name, e in embs.items() if name != "fp32"}
    return acc, cosines


def results_table(metrics: dict, title: str):
    """Rich table: one row per model (fp32, ptq, qat): bits, accuracy per benchmark, cosine, size."""
    from rich.table import Table

    rows = metrics["models"]
    benches = sorted({b for r in rows.values() for b in (r.get("accuracy") or {})})
    t = Table(title=title)
    for col in ("model", "w/a bits", *[f"{b} acc %" for b in benches], "cos mean", "cos min", "weights in memory",
                "file"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for name, r in rows.items():
        accs = [f"{r['accuracy'][b]:.2f}" if (r.get("accuracy") or {}).get(b) is not None else "-" for b in benches]
        cos = r.get("cosine") or {}
        t.add_row(name, r["bits"], *accs, f"{cos['mean']:.4f}" if cos else "-", f"{cos['min']:.4f}" if cos else "-",
                  _mb(r.get("memory_bytes")), _mb(r.get("file_bytes")))
    return t


def _mb(n) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} MB"
