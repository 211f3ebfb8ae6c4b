"""Quantize stage: PTQ and QAT (QuantFace-style, w8a8 / w6a6 ...) of the distilled student.

Input: the distill stage's student (distill.student), or the model quantize.model names (then distill is not
an upstream: quantizing a given model needs no training), plus the configured face folder (quantize.data_path or,
for quantize.data=real, data.train) and the benchmarks' files. Outputs in runs/<run>/quantize/ (see
pipeline/quant/job.py): qstudent.pt + quant_spec.json, qstudent.w<B>.fpq (packed), metrics.json, faces.png,
qat_log.csv; with quantize.backend=nncf the int8 QDQ ONNX instead of the .pt / .fpq pair.
"""

from __future__ import annotations

from pathlib import Path

from facepipe.pipeline.config import PipelineConfig
from facepipe.pipeline.runner import StageContext, StageResult, StageSpec, register_stage


def external_inputs(cfg: PipelineConfig) -> dict[str, Path]:
    """The face folder the source reads (if any) and the benchmarks' files."""
    from facepipe.pipeline.eval.datasets import resolve_benchmark
    from facepipe.pipeline.eval.evaluate import benchmark_inputs
    from facepipe.pipeline.quant.job import accuracy_plan
    from facepipe.pipeline.quant.plan import QuantPlan
    from facepipe.pipeline.quant.sources import data_path

    plan = QuantPlan.from_config(cfg)
    inputs: dict[str, Path] = {}
    if cfg.quantize.model:  # the model's defining files (and sidecar): a changed model re-quantizes
        from facepipe.pipeline.config import TeacherConfig
        from facepipe.pipeline.teachers import resolve_teacher

        src = resolve_teacher(TeacherConfig(source=cfg.quantize.model, kind="auto"), plan.base_dir)
        inputs.update({f"quantize.model.{i}": p for i, p in enumerate(src.files)})
    path = data_path(plan)
    if path is not None:
        inputs["quantize.data"] = path
    specs, root, _ = accuracy_plan(plan)
    for spec in specs:
        inputs.update({f"bench.{k}": v for k, v in benchmark_inputs(resolve_benchmark(spec, root)).items()})
    return inputs


def derived(cfg: PipelineConfig) -> dict:
    """The weight range quantize.overflow_fix resolves to on this CPU."""
    from facepipe.pipeline.quant.job import weight_range
    from facepipe.pipeline.quant.plan import QuantPlan

    return {"weight_bits": weight_range(QuantPlan.from_config(cfg))["weight_bits"]}


def run(ctx: StageContext) -> StageResult:
    """Quantize the distilled student into the stage folder; metrics flattened for the manifest."""
    from facepipe.pipeline.progress import console
    from facepipe.pipeline.quant.job import flat_metrics, load_configured_model, quantize_model, quantize_student
    from facepipe.pipeline.quant.plan import QuantPlan

    plan = QuantPlan.from_config(ctx.config)
    say = lambda m: console.print(m, markup=False, highlight=False)  # noqa: E731
    if ctx.config.quantize.model:
        student = load_configured_model(plan, ctx.config.quantize.model, say=say)
        outputs, metrics = quantize_model(plan, student, ctx.stage_dir, say=say)
    else:
        outputs, metrics = quantize_student(plan, ctx.inputs["distill.student"], ctx.stage_dir, say=say)
    return StageResult(outputs=outputs, metrics=flat_metrics(metrics))


def upstream(cfg: PipelineConfig) -> tuple[str, ...]:
    """The distill stage's student, unless quantize.model names the model."""
    return () if cfg.quantize.model else ("distill",)


SPEC = register_stage(StageSpec(
    name="quantize", run=run, after=("distill",), upstream=upstream,
    # run.seed picks the faces and the QAT batches; teacher.flip is how benchmarks are scored (as in distill)
    sections=("quantize", "data.train", "data.root", "data.benchmarks", "data.on_error", "run.seed",
              "teacher.flip"),
    external_inputs=external_inputs, enabled=lambda cfg: cfg.quantize.enabled, derived=derived))
