"""The evaluation callback: score the student on the configured benchmarks (rank 0), through the same
`Embedder` + benchmarks path as every other model (a TorchEmbedder with the student's preprocessing)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from facepipe.pipeline.errors import ConfigError

from ..embedder import STUDENT_PREPROCESS

SCALARS = ("accuracy", "val", "auc")


def flatten_metrics(summaries: Sequence[dict]) -> dict[str, float]:
    """{name}_{accuracy|val|auc} and {name}_tar@{far} from benchmark summaries (numbers only)."""
    out: dict[str, float] = {}
    for s in summaries:
        for key in SCALARS:
            if isinstance(s.get(key), (int, float)):
                out[f"{s['name']}_{key}"] = float(s[key])
        for far, tar in (s.get("tar_at_far") or {}).items():
            out[f"{s['name']}_tar@{far}"] = float(tar)
    return out


def metric_names(specs: Sequence[str]) -> list[str]:
    """Metric names a best_metric may use before anything was evaluated (pair benchmarks; IJB: tar@...)."""
    return [f"{Path(str(s)).stem}_{k}" for s in specs for k in SCALARS]


class StudentEvaluator:
    """Callable(model) -> flat metrics; benchmark specs resolved at construction (a missing one fails fast).

    Pair benchmarks stay loaded after their first use, so periodic evaluation decodes their images once.
    """

    def __init__(self, specs: Sequence[str], data_root: Path | None, *, flip: bool = False, batch_size: int = 64,
                 on_error: str = "fail", device: str = "cpu"):
        from facepipe.pipeline.eval.datasets import resolve_benchmark

        if not specs:
            raise ConfigError("no evaluation benchmarks configured (distill.benchmarks / data.benchmarks)")
        self.benches = [resolve_benchmark(s, data_root) for s in specs]
        self.flip, self.batch_size, self.on_error, self.device = flip, batch_size, on_error, device
        self._loaded: dict[str, object] = {}
        self.last_summaries: list[dict] = []

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.benches]

    def _data(self, bench):
        if bench.kind != "pairs":
            return None  # IJB sets stream their faces
        if bench.name not in self._loaded:
            self._loaded[bench.name] = bench.load(self.on_error)
        return self._loaded[bench.name]

    def __call__(self, model) -> dict[str, float]:
        from facepipe.pipeline.eval.datasets import evaluate_benchmark
        from facepipe.pipeline.embedder import TorchEmbedder

        was_training = model.training
        try:
            emb = TorchEmbedder(model, STUDENT_PREPROCESS, name="student", device=self.device)
            results = [evaluate_benchmark(emb, b, data=self._data(b), flip=self.flip, batch_size=self.batch_size,
                                          on_error=self.on_error) for b in self.benches]
        finally:
            model.train(was_training)
        self.last_summaries = [r.summary for r in results]
        return flatten_metrics(self.last_summaries)
