"""`facepipe export`: run the pipeline up to the export stage (or export one --model standalone)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .options import ConfigOpt, PresetOpt, SetOpt, load
from ..errors import BackendUnavailable, ConfigError

HELP = "\n\n".join([
    "Export the distilled student (and the quantized one) to ONNX, OpenVINO and TensorRT, reload each artifact "
    "and check its embeddings against PyTorch (fp32) or the fake-quant model (int8) on real faces.",
    "Without format flags the export section's formats are used; --onnx / --openvino pick families (with their "
    "int8 variants when --int8, or when the config lists them); --no-int8 drops every int8 format. --trt adds a "
    "TensorRT engine: on a machine without an NVIDIA GPU or TensorRT the other formats are exported, then the "
    "command fails (exit 2) naming what is missing.",
    "--model PATH --out DIR exports one student.pt (fp32 formats) or qstudent.pt (int8 formats) without the "
    "pipeline.",
])

FAMILIES = {"onnx": ("onnx", "onnx_int8"), "openvino": ("openvino", "openvino_int8")}


def select_formats(configured: list[str], onnx: bool, openvino: bool, int8: Optional[bool]) -> list[str]:
    """The format keys the flags ask for (TensorRT is handled by the caller)."""
    picked = [f for f, on in (("onnx", onnx), ("openvino", openvino)) if on]
    if picked:
        out = []
        for fam in picked:
            fp32, q = FAMILIES[fam]
            out += [fp32] + ([q] if int8 or (int8 is None and q in configured) else [])
    else:
        out = list(configured)
        if int8:
            out += [FAMILIES[fam][1] for fam in FAMILIES if FAMILIES[fam][0] in out]
    if int8 is False:
        out = [k for k in out if not k.endswith("_int8")]
    return list(dict.fromkeys(out))


def _trt_problem(cfg) -> Optional[str]:
    """Why a TensorRT engine cannot be built here (None when it can)."""
    from facepipe.export.formats import check_formats
    from facepipe.pipeline.device import resolve_device

    try:
        check_formats(["tensorrt"], resolve_device(cfg.run.device))
    except BackendUnavailable as e:
        return str(e).removeprefix("cannot export: ")
    return None


def export_command(
    config: Path = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    preset: Optional[str] = PresetOpt,
    onnx: bool = typer.Option(False, "--onnx", help="Export ONNX (fp32; + QDQ int8 with --int8)."),
    openvino: bool = typer.Option(False, "--openvino", help="Export OpenVINO IR (fp32; + int8 with --int8)."),
    int8: Optional[bool] = typer.Option(None, "--int8/--no-int8", help="Add / drop the int8 formats (built from "
                                        "the quantize stage's model)."),
    trt: bool = typer.Option(False, "--trt", help="Also build a TensorRT engine (needs an NVIDIA GPU and TensorRT)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="TensorRT precision: fp32 | fp16 | int8."),
    atol: Optional[float] = typer.Option(None, "--atol", min=0.0, help="Max abs embedding difference allowed "
                                         "(overrides every format's own; the cosine floor stays)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Export this student.pt / qstudent.pt standalone."),
    out: Optional[Path] = typer.Option(None, "--out", help="With --model: the output folder."),
    force: bool = typer.Option(False, "--force", help="Re-run the export stage even when it is fresh."),
):
    if precision is not None and precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"--precision {precision!r}: expected fp32, fp16 or int8")
    if (model is None) != (out is None):
        raise ConfigError("--model and --out go together: --model PATH --out DIR")
    overrides = list(set_ or [])
    for key, value in (("export.tensorrt.precision", precision), ("export.atol", atol)):
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load(config, overrides, preset)
    formats = select_formats(list(cfg.export.formats), onnx, openvino, int8)
    trt_problem = _trt_problem(cfg) if trt else None
    if trt and trt_problem:  # deferred: the other formats are exported first
        formats = [k for k in formats if k not in ("tensorrt", "torch_tensorrt")]
    elif trt and "tensorrt" not in formats:
        formats.append("tensorrt")
    cfg = load(config, overrides + [f"export.formats=[{', '.join(formats)}]"], preset)
    trt_row = {"format": "tensorrt", "precision": cfg.export.tensorrt.precision, "status": "failed",
               "error": trt_problem} if trt_problem else None
    where = _standalone(cfg, model, out, trt_row) if model is not None else _pipeline(cfg, force, trt_row)
    if trt_problem:
        raise BackendUnavailable(f"tensorrt was not built: {trt_problem}; the other formats were exported to {where}")


def _pipeline(cfg, force: bool, trt_row) -> Path:
    from ..progress import table_console
    from ..runner import outcomes_table, run_pipeline

    con = table_console()
    record: list = []
    try:
        run_pipeline(cfg, to="export", force=("export",) if force else (), record=record,
                     log=lambda m: con.print(m, markup=False, highlight=False))
    finally:
        if record:
            con.print(outcomes_table(record, title="facepipe export"))
    if trt_row:
        _print_report(cfg.run_dir() / "export", trt_row, con)
    return cfg.run_dir() / "export"


def _print_report(out_dir: Path, trt_row, con) -> None:
    import json

    from facepipe.export.exporter import REPORT, report_table

    path = out_dir / REPORT
    if path.is_file():
        con.print(report_table(json.loads(path.read_text()), extra_rows=[trt_row]))


def _standalone(cfg, model: Path, out: Path, trt_row) -> Path:
    from facepipe.export.artifacts import format_for_path
    from facepipe.export.exporter import Exporter, failures, report_table
    from facepipe.export.parity import parity_faces
    from facepipe.pipeline.errors import ModelError, StageError
    from facepipe.stages.export import make_plan, plan_formats

    from ..progress import table_console

    if not model.is_file():
        raise ModelError(f"--model {model}: file not found")
    kind = format_for_path(model).key
    if kind not in ("torch", "torch_int8"):
        raise ModelError(f"--model {model}: expected a student.pt or qstudent.pt, got a {kind} artifact")
    role = "distill.student" if kind == "torch" else "quantize.qmodel"
    plan = make_plan(cfg, {role: model}, out, plan_formats(cfg))
    plan.stem = model.stem
    plan.no_qmodel_reason = "skipped: --model is an fp32 student.pt (pass a qstudent.pt for the int8 formats)"
    from facepipe.export.formats import check_formats

    check_formats(plan.formats, plan.device)
    faces, source = parity_faces(cfg, cfg.export.parity_faces)
    con = table_console()
    report = Exporter(plan, log=lambda m: con.print(m, markup=False, highlight=False)).run(faces, source)
    con.print(report_table(report, extra_rows=[trt_row] if trt_row else []))
    failed = failures(report)
    if failed:
        raise StageError(f"export: {len(failed)} format(s) failed: " +
                         "; ".join(f"{k}: {e}" for k, e in failed.items()))
    return out


export_command.__doc__ = HELP


def register(app: typer.Typer) -> None:
    """Add `export` to the facepipe app."""
    app.command("export", help=HELP)(export_command)
