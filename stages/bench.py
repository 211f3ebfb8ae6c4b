"""Bench stage: latency, memory and accuracy of the student in every bench.formats format, each through its
own runtime, on bench.device.

Artifacts: torch -> the distill stage's student.pt, every other format -> the export stage's output of that
role; a requested format that was not exported gets a "missing" row. Outputs (runs/<run>/bench/): bench.json,
report.md, accuracy_vs_latency.png, roc.png. Floors (bench.floors) are checked after the reports are
written; a miss, or an artifact whose row is an error, fails the stage (no manifest), so the next run
measures again.
"""

from __future__ import annotations

from pathlib import Path

from facepipe.pipeline.config import PipelineConfig
from facepipe.pipeline.runner import StageContext, StageResult, StageSpec, register_stage


def artifact_inputs(cfg: PipelineConfig, inputs: dict[str, Path]) -> dict[str, Path | None]:
    """bench.formats key -> its artifact among the stage inputs (None when it was not produced)."""
    fp32 = "quantize.fp32" if cfg.quantize.model else "distill.student"
    return {key: inputs.get(fp32 if key == "torch" else f"export.{key}") for key in cfg.bench.formats}


def external_inputs(cfg: PipelineConfig) -> dict[str, Path]:
    """The benchmarks' files (the artifacts come from the upstream manifests)."""
    from facepipe.pipeline.eval.datasets import resolve_benchmark
    from facepipe.pipeline.eval.evaluate import benchmark_inputs

    from facepipe.pipeline.bench.suite import bench_specs

    specs = bench_specs(cfg)
    root = cfg.data_root(required=False) if specs else None
    inputs: dict[str, Path] = {}
    for spec in specs:
        inputs.update({f"bench.{k}": v for k, v in benchmark_inputs(resolve_benchmark(spec, root)).items()})
    return inputs


def run(ctx: StageContext) -> StageResult:
    from facepipe.pipeline.bench import gate
    from facepipe.pipeline.bench.suite import BenchSettings, bench_artifacts, invocation, stage_metrics
    from facepipe.pipeline.eval.evaluate import embeddings_cache_dir

    cfg = ctx.config
    settings = BenchSettings.from_config(cfg, cache_dir=embeddings_cache_dir())
    outcome = bench_artifacts(artifact_inputs(cfg, ctx.inputs), settings, ctx.stage_dir, command=invocation())
    errored = [r for r in outcome.rows if str(r.get("status", "")).startswith("error")]
    if errored:  # the report keeps what was measured, but an errored row must not become a fresh result
        from facepipe.pipeline.errors import StageError

        raise StageError("bench: " + "; ".join(f"{r['format']} ({r.get('path')}): {r['status']}" for r in errored)
                         + f" (report: {outcome.files['markdown']}; no manifest, so the next run measures again)")
    gate.enforce(outcome.misses, str(outcome.files["markdown"]))
    return StageResult(outputs=dict(outcome.files), metrics=stage_metrics(outcome.rows, settings.batch_sizes))


def derived(cfg: PipelineConfig) -> dict:
    """Runtime versions and the CPU / GPU the latencies and accuracies are measured on."""
    from facepipe.pipeline.manifest import runtime_identity

    return {"runtime": runtime_identity(cfg.bench.device)}


SPEC = register_stage(StageSpec(
    name="bench", run=run, sections=("bench", "data.benchmarks", "data.root", "data.on_error"),
    after=("distill", "quantize", "export"),
    upstream=lambda cfg: ("quantize", "export") if cfg.quantize.model else ("distill", "export"),
    external_inputs=external_inputs, derived=derived))
