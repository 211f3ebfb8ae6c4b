"""Run one distillation job: in this process (1 device) or as a torchrun worker (`python -m` this module JOB).

A job is a JSON-able dict: {"setup": "module:function", "out_dir", "result", "resume", "device", "backend",
"timeout_min", ...}. On every rank `setup(job, env, device)` builds the Trainer; after training rank 0
writes student.pt, metrics.json and the result JSON the launcher reads. A FacepipeError on any rank is
written to error.rank<r>.json beside the result, so the launching process can re-raise it unchanged.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path
from statistics import median

from facepipe.pipeline.errors import ConfigError, FacepipeError
from facepipe.pipeline.io import atomic_write_json

from . import dist as D

STUDENT = "student.pt"
METRICS = "metrics.json"


def import_callable(spec: str):
    module, _, name = str(spec).partition(":")
    if not module or not name:
        raise ConfigError(f"job setup {spec!r}: expected 'package.module:function'")
    return getattr(importlib.import_module(module), name)


def finish(trainer, result, job: dict, seconds: float) -> dict:
    """Rank 0: student.pt (final weights), metrics.json (final evaluation), and the result summary."""
    out = Path(job["out_dir"])
    trainer.save_weights(out / STUDENT, final=True, metrics=result.metrics, best=result.best)
    steps_run = result.step - (result.resumed_from or 0)
    rates = [r["img_per_s"] for r in result.history if r.get("img_per_s")]
    train = {"steps": result.step, "epochs": round(result.epoch, 4), "total_steps": trainer.total_steps,
             "steps_per_epoch": trainer.steps_per_epoch, "global_batch": trainer.plan.global_batch,
             "world_size": trainer.env.world, "resumed_from": result.resumed_from, "seconds": round(seconds, 3),
             "steps_per_s": round(steps_run / seconds, 4) if seconds > 0 and steps_run else None,
             "median_img_per_s": median(rates) if rates else None, "final_losses": result.losses,
             "fingerprint": trainer.fingerprint, **getattr(trainer, "info", {})}
    summaries = trainer.summaries  # the last evaluation's, also when this run resumed after it
    atomic_write_json(out / METRICS, {"metrics": result.metrics, "best": result.best, "train": train,
                                      "benchmarks": {s["name"]: s for s in summaries}})
    summary = {"step": result.step, "metrics": result.metrics, "best": result.best, "train": train,
               "checkpoint": str(result.checkpoint)}
    atomic_write_json(job["result"], summary)
    return summary


def run_job(job: dict, env: D.DistEnv | None = None) -> dict | None:
    """Build, train, finish. Returns rank 0's summary (None on other ranks)."""
    env = env or D.DistEnv.from_environ()
    device = D.worker_device(job.get("device", "cpu"), env)
    D.init_process_group(env, device, job.get("backend", "auto"), job.get("timeout_min", 60.0))
    try:
        trainer = import_callable(job["setup"])(job, env, device)
        t0 = time.perf_counter()
        result = trainer.fit(job.get("resume", "auto"))
        seconds = time.perf_counter() - t0
        return finish(trainer, result, job, seconds) if env.is_main else None
    finally:
        D.shutdown()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m facepipe.pipeline.train.worker JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text())
    env = D.DistEnv.from_environ()
    try:
        run_job(job, env)
    except FacepipeError as e:
        from .launch import error_path

        atomic_write_json(error_path(job, env.rank), {"type": type(e).__name__, "message": str(e), "rank": env.rank})
        print(f"error (rank {env.rank}): {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover - the torchrun entry point
    sys.exit(main())
