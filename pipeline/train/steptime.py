"""Step-time benchmark: the same batch trained with teacher embeddings from the cache vs the teacher online.

Used by `facepipe distill --bench-step N`. Each mode gets its own freshly built Trainer (same seed, so the
same initial student); one warm-up step, then N timed steps on one fixed batch. The teacher's share is
timed separately (cache lookup vs a forward pass of the teacher over the batch).
"""

from __future__ import annotations

import time
from statistics import median
from typing import Callable

from .data import collate


def fixed_batch(trainer) -> dict:
    """Global batch 0 of epoch 0, unflipped, as the loader would deliver it to a single process."""
    idx = trainer.plan.global_batch_indices(0, 0)
    return collate([trainer.dataset[(int(i), False, 0)] for i in idx])


def time_mode(trainer, batch: dict, steps: int, warmup: int = 1) -> dict:
    """Median ms of the teacher part and of the whole step, steps/s and img/s."""
    for _ in range(warmup):
        trainer.train_step(batch)
    teacher_ms, step_ms = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        if trainer.targets is not None:
            trainer.targets(batch)
        t1 = time.perf_counter()
        trainer.train_step(batch)
        t2 = time.perf_counter()
        teacher_ms.append((t1 - t0) * 1e3)
        step_ms.append((t2 - t1) * 1e3)
    total = median(step_ms)
    teacher = median(teacher_ms)
    n = len(batch["labels"])
    return {"mode": trainer.targets.mode if trainer.targets is not None else "none", "batch": n,
            "teacher_ms": round(teacher, 2), "student_ms": round(total - teacher, 2), "step_ms": round(total, 2),
            "steps_per_s": round(1e3 / total, 4), "img_per_s": round(n * 1e3 / total, 2)}


def bench_modes(factories: dict[str, Callable[[], object]], steps: int, warmup: int = 1) -> list[dict]:
    """Time each mode's trainer on the batch of the first mode (so every mode sees the same faces)."""
    rows, batch = [], None
    for mode, make in factories.items():
        trainer = make()
        batch = batch if batch is not None else fixed_batch(trainer)
        rows.append({**time_mode(trainer, batch, steps, warmup), "mode": mode})
    return rows


def bench_table(rows: list[dict], title: str):
    from rich.table import Table

    t = Table(title=title)
    for col in ("mode", "batch", "teacher ms", "student ms", "step ms", "steps/s", "img/s"):
        t.add_column(col, justify="left" if col == "mode" else "right")
    for r in rows:
        t.add_row(r["mode"], str(r["batch"]), f"{r['teacher_ms']:.1f}", f"{r['student_ms']:.1f}",
                  f"{r['step_ms']:.1f}", f"{r['steps_per_s']:.3f}", f"{r['img_per_s']:.1f}")
    return t
