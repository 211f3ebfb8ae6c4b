"""Accuracy of an artifact through the runtime under test, by the one evaluation path (evaluate_model)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..io import sha256_json


@dataclass
class ArtifactSource:
    """An artifact as a model source for the embedding cache: keyed by its content, format, runtime and
    device, so embeddings cached for one artifact or runtime are never reused for another."""

    path: Path
    fmt: str
    runtime: str
    device: str

    def fingerprint(self) -> str:
        from facepipe.export.artifacts import artifact_fingerprint

        return sha256_json({"artifact": artifact_fingerprint(self.path, self.fmt), "format": self.fmt,
                            "runtime": self.runtime, "device": self.device})

    def runtime_distributions(self) -> tuple[str, ...]:
        """The distributions whose versions the cached embeddings depend on."""
        from ..manifest import RUNTIME_OF

        return RUNTIME_OF.get(self.runtime, (self.runtime,))


def artifact_accuracy(path: str | os.PathLike, fmt: str, embedder, specs: Sequence[str], data_root: Path | None, *,
                      device: str, batch_size: int, on_error: str, flip: bool = False,
                      cache_dir: Path | None = None) -> list:
    """BenchmarkResults of `embedder` (loaded from `path`) on each benchmark spec."""
    from ..eval.evaluate import evaluate_model

    source = ArtifactSource(Path(path), fmt, embedder.runtime, device)
    return evaluate_model(source, embedder, specs, data_root, flip=flip, batch_size=batch_size, on_error=on_error,
                          cache_dir=cache_dir)
