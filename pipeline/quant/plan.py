"""QuantPlan: what one quantization run reads from the pipeline config, and nothing more (as ExportPlan and
BenchSettings are for export and bench), so the quantization code depends on a narrow plan, not the config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import PipelineConfig, QuantizeConfig


@dataclass(frozen=True)
class QuantPlan:
    q: QuantizeConfig  # the quantize section
    seed: int  # run.seed: picks the faces and the QAT batches
    threads: int | None  # run.threads
    base_dir: Path  # relative paths are against the config's folder
    data_root: Path | None  # data.root / $FACEPIPE_DATA, None when unset
    train: str  # data.train (quantize.data=real without data_path)
    benchmarks: tuple[str, ...]  # quantize.benchmarks, else data.benchmarks
    data_benchmarks: tuple[str, ...]  # data.benchmarks: the first one's faces check an imported model
    flip: bool  # teacher.flip: how benchmarks are scored (as in distill)
    batch_size: int  # data.batch_size, for scoring
    on_error: str  # data.on_error

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> "QuantPlan":
        q = cfg.quantize
        return cls(q=q, seed=cfg.run.seed, threads=cfg.run.threads, base_dir=Path(cfg.base_dir),
                   data_root=cfg.data_root(required=False), train=str(cfg.data.train),
                   benchmarks=tuple(cfg.data.benchmarks if q.benchmarks is None else q.benchmarks),
                   data_benchmarks=tuple(cfg.data.benchmarks),
                   flip=cfg.teacher.flip, batch_size=cfg.data.batch_size, on_error=cfg.data.on_error)

    def section(self) -> dict:
        """The quantize section as JSON (what a QAT checkpoint's identity covers)."""
        return self.q.model_dump(mode="json")
