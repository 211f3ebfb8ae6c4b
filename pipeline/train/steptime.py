"""Step-time benchmark of the training loop: img/s, where a step's time goes, and how far from the FLOP floor.

Used by `facepipe distill --bench-step N`. Each setting gets its own freshly built Trainer (same seed, so the
same initial student and the same batches in the same order) and runs its real loader: `warmup` steps (a
compiled student compiles here), then N timed steps, each split into
  data       waiting for the loader's next batch (decode or memmap gather, augmentation)
  teacher    teacher targets (cache lookup, or the teacher online) and the student's input tensor
  forward    student forward and the loss
  backward   backward (and the gradient all-reduce of the loss head)
  optimizer  gradient clipping and the optimizer step
The floor is the machine's measured sgemm speed over the student's FLOPs per image (floor.py).
"""

from __future__ import annotations

import time
from statistics import mean
from typing import Callable

PARTS = ("data", "teacher", "forward", "backward", "optimizer")

# The settings before issue 17 (JPEG decoding in 2 loader workers, eager fp32 student), kept as the
# reference row of --bench-step.
LEGACY = {"data": "files", "num_workers": 2, "compile": "off"}


def time_loop(trainer, steps: int, warmup: int = 2) -> dict:
    """Mean ms per part and per step (the parts add up to the step) over `steps` timed steps of the
    trainer's own loader."""
    trainer.wrap_model()
    trainer.student.train()
    trainer.loss.train()
    it = iter(trainer.loader(warmup + steps))
    t0 = time.perf_counter()
    for _ in range(warmup):
        trainer.train_step(next(it))
    warm_s = time.perf_counter() - t0
    parts: dict[str, list[float]] = {p: [] for p in PARTS}
    totals, n = [], 0
    for _ in range(steps):
        trainer.marks = []
        t_wait = time.perf_counter()
        batch = next(it)
        trainer.train_step(batch)
        marks = dict(trainer.marks)
        trainer.marks = None
        n = len(batch["labels"])
        parts["data"].append(marks["start"] - t_wait)
        for part, begin in zip(PARTS[1:], ("start", "teacher", "forward", "backward")):
            parts[part].append(marks[part] - marks[begin])
        totals.append(marks["optimizer"] - t_wait)
    step_ms = mean(totals) * 1e3
    return {"batch": n, "step_ms": round(step_ms, 1), "img_per_s": round(n * 1e3 / step_ms, 2),
            **{f"{p}_ms": round(mean(v) * 1e3, 1) for p, v in parts.items()},
            "warmup_s": round(warm_s, 1), "compiled": bool(trainer.compiled),
            "data_mode": trainer.cfg.data, "num_workers": trainer.cfg.num_workers}


def bench_settings(factories: dict[str, Callable[[], object]], steps: int, warmup: int = 2) -> list[dict]:
    """Time each setting's trainer in turn (each on the same batches)."""
    return [{"setting": name, **time_loop(make(), steps, warmup)} for name, make in factories.items()]


def add_floor(rows: list[dict], floor_img_s: float) -> list[dict]:
    for r in rows:
        r["floor_fraction"] = round(r["img_per_s"] / floor_img_s, 4)
    return rows


def bench_table(rows: list[dict], title: str, caption: str | None = None):
    from rich.table import Table

    t = Table(title=title, caption=caption)
    cols = ("setting", "batch", *(f"{p} ms" for p in PARTS), "step ms", "img/s", "of floor", "speed-up", "warm-up s")
    for col in cols:
        t.add_column(col, justify="left" if col == "setting" else "right")
    base = rows[0]["img_per_s"] if rows else 1.0
    for r in rows:
        t.add_row(r["setting"], str(r["batch"]), *(f"{r[f'{p}_ms']:.1f}" for p in PARTS), f"{r['step_ms']:.1f}",
                  f"{r['img_per_s']:.1f}", f"{100 * r['floor_fraction']:.1f}%" if "floor_fraction" in r else "-",
                  f"{r['img_per_s'] / base:.2f}x", f"{r['warmup_s']:.1f}")
    return t
