"""Export stage: the distilled student (and the quantized one) to every format in export.formats.

Inputs: distill.student, and when the quantize stage ran, quantize.qmodel (or quantize.qstudent: qstudent.pt)
or, from its NNCF backend, only quantize.onnx_int8 (gated against the fp32 student then). Each artifact is
reloaded through `load_artifact` and gated on parity (fp32 formats vs PyTorch, int8 formats vs the fake-quant
model) on real benchmark faces. Outputs in runs/<run>/export/: one role per format (its main file; companions
as <key>_bin / <key>_json) and export.json, the per-format report.
Without the quantize stage the int8 formats are skipped with the reason in the report (not an error: the
default format list has them, and turning quantization off is a deliberate choice).
A GPU-only format on a CPU device fails before any work; a format that fails its gate fails the stage
after the others are exported.
"""

from __future__ import annotations

from pathlib import Path

from facepipe.pipeline.config import PipelineConfig
from facepipe.pipeline.runner import StageContext, StageResult, StageSpec, register_stage


def plan_formats(cfg: PipelineConfig) -> list[str]:
    """export.formats, deduplicated; tensorrt means torch_tensorrt when export.tensorrt.builder says so."""
    out: list[str] = []
    for key in cfg.export.formats:
        if key == "tensorrt" and cfg.export.tensorrt.builder == "torch_tensorrt":
            key = "torch_tensorrt"
        if key not in out:
            out.append(key)
    return out


def no_qmodel_reason(cfg: PipelineConfig) -> str:
    if not cfg.quantize.enabled:
        return "skipped: quantize.enabled is false (int8 formats are built from the quantize stage's qstudent.pt)"
    return "skipped: the quantize stage is not available in this version of facepipe"


def make_plan(cfg: PipelineConfig, inputs: dict, out_dir, formats: list[str] | None = None):
    """The ExportPlan of this config and the upstream outputs in `inputs`."""
    from facepipe.export.exporter import ExportPlan
    from facepipe.export.tensorrt import BuildSettings
    from facepipe.pipeline.device import resolve_device

    return ExportPlan(formats=formats if formats is not None else plan_formats(cfg), out_dir=out_dir,
                      student=inputs.get("quantize.fp32" if cfg.quantize.model else "distill.student"),
                      qmodel=inputs.get("quantize.qmodel") or inputs.get("quantize.qstudent"),
                      onnx_int8=inputs.get("quantize.onnx_int8"), no_qmodel_reason=no_qmodel_reason(cfg),
                      opset=cfg.export.opset, atol=cfg.export.atol,
                      int8_cos_floor=cfg.export.int8_cos_floor,
                      trt=BuildSettings.from_config(cfg.export.tensorrt), device=resolve_device(cfg.run.device),
                      threads=cfg.run.threads)


def summary_metrics(report: dict) -> dict:
    """Flat metrics for the manifest: counts, then each format's parity cosine min, max abs diff and seconds."""
    recs = report["formats"].values()
    m: dict = {s: sum(r["status"] == s for r in recs) for s in ("ok", "skipped", "failed")}
    m["parity_faces"] = report["parity_faces"]["source"].split(":")[0]
    for r in recs:
        if r.get("parity"):
            m[f"{r['format']}_cos_min"] = r["parity"]["cos_min"]
            m[f"{r['format']}_max_abs"] = r["parity"]["max_abs"]
        if r.get("seconds") is not None:
            m[f"{r['format']}_seconds"] = r["seconds"]
    return m


def run(ctx: StageContext) -> StageResult:
    from facepipe.export.exporter import Exporter, failures, report_table
    from facepipe.export.formats import check_formats
    from facepipe.export.parity import parity_faces
    from facepipe.pipeline.errors import StageError
    from facepipe.pipeline.progress import table_console

    cfg = ctx.config
    plan = make_plan(cfg, ctx.inputs, ctx.stage_dir)
    check_formats(plan.formats, plan.device)  # before any work: no half-exported run for a missing GPU
    faces, source = parity_faces(cfg, cfg.export.parity_faces)
    out = table_console()
    exporter = Exporter(plan, log=lambda m: out.print(m, markup=False, highlight=False))
    report = exporter.run(faces, source)
    out.print(report_table(report))
    failed = failures(report)
    if failed:
        raise StageError(f"export: {len(failed)} format(s) failed: " + "; ".join(f"{k}: {e}" for k, e in failed.items())
                         + f" (the other formats and {exporter.outputs['report']} were written)")
    return StageResult(outputs=dict(exporter.outputs), metrics=summary_metrics(report))


def external_inputs(cfg: PipelineConfig) -> dict[str, Path]:
    """The files of the first benchmark (its first faces are the parity faces), when it resolves."""
    from facepipe.pipeline.eval.datasets import resolve_benchmark
    from facepipe.pipeline.errors import FacepipeError
    from facepipe.pipeline.eval.evaluate import benchmark_inputs

    specs = list(cfg.data.benchmarks)
    try:
        bench = resolve_benchmark(specs[0], cfg.data_root(required=False)) if specs else None
        return {f"parity.{k}": v for k, v in benchmark_inputs(bench).items()} if bench else {}
    except FacepipeError:  # no data: synthetic parity faces (derived says so)
        return {}


def derived(cfg: PipelineConfig) -> dict:
    """Runtime versions, CPU / GPU, and where the parity faces come from (real data or synthetic)."""
    from facepipe.export.parity import parity_faces_origin
    from facepipe.pipeline.device import resolve_device
    from facepipe.pipeline.manifest import runtime_identity

    return {"runtime": runtime_identity(resolve_device(cfg.run.device)), "parity_faces": parity_faces_origin(cfg)}


SPEC = register_stage(StageSpec(
    name="export", run=run, after=("distill", "quantize"),
    upstream=lambda cfg: ("quantize",) if cfg.quantize.model else ("distill", "quantize"),
    # run.device / run.threads pick the runtime's device and threads; data.* the parity faces
    sections=("export", "run.device", "run.threads", "data.benchmarks", "data.root", "data.on_error"),
    external_inputs=external_inputs, derived=derived))
