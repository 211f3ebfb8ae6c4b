"""Training logs on rank 0: CSV files (one row per logged step, each loss term in its own column) and
TensorBoard scalars. A resumed run first drops the rows written after its checkpoint, so the logs read as
one uninterrupted run."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Mapping

from facepipe.pipeline.io import atomic_write_text

TRAIN_CSV = "train_log.csv"
EVAL_CSV = "eval_log.csv"


def _fmt(v) -> str:
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    return str(v)


class CsvLog:
    """An append-only CSV with a fixed header, truncated to rows with step <= keep_until on open."""

    def __init__(self, path: Path, columns: list[str], keep_until: int | None = None):
        self.path, self.columns = Path(path), list(columns)
        kept: list[list[str]] = []
        if keep_until is not None and self.path.is_file():
            rows = list(csv.reader(io.StringIO(self.path.read_text())))
            if rows and rows[0] == self.columns:
                kept = [r for r in rows[1:] if r and int(r[0]) <= keep_until]
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(self.columns)
        w.writerows(kept)
        atomic_write_text(self.path, buf.getvalue())
        self._f = open(self.path, "a", newline="")
        self._w = csv.writer(self._f)

    def write(self, values: Mapping[str, object]) -> None:
        self._w.writerow([_fmt(values.get(c, "")) for c in self.columns])
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class TrainLog:
    """CSV + TensorBoard writer; a disabled instance (non-zero ranks) does nothing."""

    def __init__(self, out_dir: Path, terms: list[str], *, enabled: bool = True, tensorboard: bool = True,
                 resume_step: int | None = None, warn=print):
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self.columns = ["step", "epoch", "lr", "loss", *terms, "grad_norm", "img_per_s", "elapsed_s"]
        self.resume_step = resume_step
        self._eval: CsvLog | None = None
        self._tb = None
        if not enabled:
            return
        self.train = CsvLog(self.out_dir / TRAIN_CSV, self.columns, resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional (dev) dependency
                warn("tensorboard is not installed: logging to CSV only (pip install tensorboard)")
            else:
                purge = resume_step + 1 if resume_step is not None else None
                self._tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=purge)

    def step(self, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        self.train.write({"step": step, **values})
        if self._tb is not None:
            for k, v in values.items():
                if k not in ("step", "epoch", "elapsed_s") and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"train/{k}", v, step)

    def evaluation(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        if self._eval is None:
            self._eval = CsvLog(self.out_dir / EVAL_CSV, ["step", *sorted(metrics)], self.resume_step)
        self._eval.write({"step": step, **metrics})
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(f"eval/{k}", v, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self.train.close()
        if self._eval is not None:
            self._eval.close()
        if self._tb is not None:
            self._tb.close()
