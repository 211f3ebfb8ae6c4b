"""Distill stage: train the student (MobileFaceNet by default) from the teacher's embeddings.

Inputs: the teacher stage's outputs (teacher.card, and teacher.cache + teacher.cache_meta when cached), the
training set (data.train) and the evaluation benchmarks. Outputs in runs/<run>/distill/: student.pt (final
weights + arch, embedding_size, preprocess, fingerprint), best.pt (best by distill.best_metric), metrics.json
(final evaluation), train_log.csv (+ eval_log.csv, tensorboard/), and checkpoints/last.pt for --resume.
With distill.devices * launch.nnodes > 1 the training runs in torchrun workers (pipeline/train/launch.py);
this process waits for them and reports rank 0's result.
"""

from __future__ import annotations

from pathlib import Path

from facepipe.pipeline.config import PipelineConfig
from facepipe.pipeline.runner import StageContext, StageResult, StageSpec, register_stage
from facepipe.pipeline.train.setup import eval_specs

RESULT = ".launch/result.json"


def world_size(cfg: PipelineConfig) -> int:
    return cfg.distill.devices * cfg.distill.launch.nnodes


def external_inputs(cfg: PipelineConfig) -> dict[str, Path]:
    """The training set and the evaluation benchmarks' files."""
    from facepipe.pipeline.eval.datasets import resolve_benchmark
    from facepipe.pipeline.eval.evaluate import benchmark_inputs

    if cfg.data_free():  # training and held-out faces come from the teacher stage (pipeline/data/synthetic/datafree.py)
        init = cfg.student_init_path()
        return {"distill.student.init": init} if init is not None else {}
    inputs = {"data.train": cfg.train_path()}
    if cfg.student_init_path() is not None:  # pretrained weights: their content is part of what is trained
        inputs["distill.student.init"] = cfg.student_init_path()
    specs = eval_specs(cfg)
    root = cfg.data_root(required=False) if specs else None
    for spec in specs:
        inputs.update({f"bench.{k}": v for k, v in benchmark_inputs(resolve_benchmark(spec, root)).items()})
    return inputs


def stage_inputs(cfg: PipelineConfig) -> dict[str, Path]:
    """This stage's inputs outside the runner (bench, nodes > 0): the teacher manifest's outputs + external."""
    from facepipe.pipeline.errors import StageError
    from facepipe.pipeline.manifest import COMPLETE, read_manifest, resolve_stored

    teacher_dir = cfg.run_dir() / "teacher"
    m = read_manifest(teacher_dir)
    if m is None or m.get("status") != COMPLETE:
        raise StageError(f"the teacher stage has no complete manifest in {teacher_dir}: run `facepipe run --to "
                         "teacher` first (on every node, or on a filesystem they share)")
    inputs = {f"teacher.{r}": resolve_stored(teacher_dir, rec.get("path", "")) for r, rec in m["outputs"].items()}
    return {**inputs, **external_inputs(cfg)}


def make_job(ctx: StageContext) -> dict:
    """Everything a worker needs to rebuild this stage's training on its own (JSON-able)."""
    from facepipe.pipeline.train.setup import build_trainer

    cfg = ctx.config
    return {"setup": f"{build_trainer.__module__}:{build_trainer.__name__}", "config": cfg.model_dump(mode="json"),
            "base_dir": str(cfg.base_dir), "resume": cfg.distill.resume, "out_dir": str(ctx.stage_dir),
            "result": str(ctx.stage_dir / RESULT), "inputs": {r: str(p) for r, p in ctx.inputs.items()},
            "device": cfg.run.device, "backend": cfg.distill.launch.backend,
            "timeout_min": cfg.distill.launch.timeout_min}


def run(ctx: StageContext) -> StageResult:
    """Train in this process (one device) or through torchrun; then report the outputs and metrics."""
    from facepipe.pipeline.train.dist import DistEnv
    from facepipe.pipeline.train.launch import launch
    from facepipe.pipeline.train.worker import METRICS, STUDENT, run_job

    cfg = ctx.config
    job = make_job(ctx)
    if world_size(cfg) == 1:
        summary = run_job(job, DistEnv())
    else:
        summary = launch(job, cfg.distill.devices, cfg.distill.launch)
    outputs = {"student": ctx.stage_dir / STUDENT, "best": ctx.stage_dir / "best.pt",
               "metrics": ctx.stage_dir / METRICS, "log": ctx.stage_dir / "train_log.csv"}
    if (ctx.stage_dir / "eval_log.csv").is_file():
        outputs["eval_log"] = ctx.stage_dir / "eval_log.csv"
    train = summary["train"]
    metrics = {**summary["metrics"], "steps": train["steps"], "epochs": train["epochs"],
               "steps_per_s": train["steps_per_s"], "teacher_mode": train.get("teacher_mode"),
               "skipped_images": train.get("skipped_images", 0)}
    if summary["best"].get("value") is not None:
        metrics["best_" + summary["best"]["metric"]] = summary["best"]["value"]
    return StageResult(outputs=outputs, metrics=metrics)


SPEC = register_stage(StageSpec(
    name="distill", run=run, after=("teacher",),
    sections=("distill", "data.train", "data.on_error", "data.root", "data.benchmarks", "data.batch_size",
              "data.generated", "data.generated_eval",
              "teacher", "run.seed", "run.device"),
    external_inputs=external_inputs))
