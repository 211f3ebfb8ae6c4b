"""Export a set of formats from a student (and its quantized twin), reload each artifact through
`load_artifact`, gate it on parity, and report per format. Used by the export stage and `facepipe export
--model`. A format that fails is recorded and the others still run; the caller decides the exit."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from facepipe.pipeline.embedder import Embedder
from facepipe.pipeline.errors import FacepipeError
from facepipe.pipeline.io import atomic_write_json, sha256_file

from .artifacts import artifact_files, load_artifact
from .torchfile import load_quantized_student, load_student
from .formats import FORMATS, INT8_VS_FP32_COS, Format, check_formats, family_of
from .metadata import ArtifactMeta
from .parity import check_parity, overflow_hint
from .tensorrt import BuildSettings

REPORT = "export.json"


@dataclass
class ExportPlan:
    """What to export, from what, to where."""

    formats: list[str]
    out_dir: Path
    student: Path | None = None  # fp32 student.pt
    qmodel: Path | None = None  # quantized qstudent.pt
    onnx_int8: Path | None = None  # an int8 ONNX made by the quantize stage (NNCF), used instead of our QDQ export
    no_qmodel_reason: str = "no quantized model was given"
    opset: int = 17
    atol: float | None = None
    int8_cos_floor: float | None = None  # replaces the int8 formats' cosine floor vs the fake-quant model
    trt: BuildSettings = field(default_factory=BuildSettings)
    device: str = "cpu"
    threads: int | None = None
    stem: str = "student"


@dataclass
class _Source:
    """A loaded model to export: its PyTorch embedder (the parity reference) and its metadata."""

    path: Path
    reference: Embedder
    meta_base: dict
    qmodel: object = None
    vs_fp32: bool = False  # an NNCF int8 ONNX without a fake-quant model: gated against the fp32 student

    def meta(self, key: str) -> ArtifactMeta:
        return ArtifactMeta(**{**self.meta_base, "format": key})


def _load_source(path: Path, quantized: bool) -> _Source:
    ref = (load_quantized_student if quantized else load_student)(path, "cpu")
    base = {"preprocess": ref.preprocess, "embedding_size": ref.dim, "fingerprint": str(ref.fingerprint or ""),
            "source_sha256": sha256_file(path), "arch": getattr(ref, "arch", "")}
    return _Source(path, ref, base, ref.module if quantized else None)


class Exporter:
    """Runs an ExportPlan; `run(faces, faces_source)` returns the report (also written to export.json)."""

    def __init__(self, plan: ExportPlan, log: Callable[[str], None] | None = None):
        self.plan = plan
        self.say = log or (lambda _m: None)
        self._sources: dict[str, _Source] = {}
        self._onnx: dict[str, Path] = {}  # source kind -> ONNX written for it
        self.outputs: dict[str, Path] = {}  # role -> file (the stage's outputs)

    # --- sources and intermediate files ---------------------------------------------------------------
    def source(self, kind: str) -> _Source:
        if kind not in self._sources:
            plan = self.plan
            if kind == "quantized" and plan.qmodel is None:  # NNCF: only its int8 ONNX exists
                fp32 = self.source("fp32")
                self._sources[kind] = _Source(plan.onnx_int8, fp32.reference, {
                    **fp32.meta_base, "source_sha256": sha256_file(plan.onnx_int8)}, vs_fp32=True)
            else:
                self._sources[kind] = _load_source(plan.student if kind == "fp32" else plan.qmodel,
                                                   kind == "quantized")
        return self._sources[kind]

    def path_for(self, fmt: Format) -> Path:
        return self.plan.out_dir / f"{self.plan.stem}{fmt.suffix}"

    def onnx_for(self, kind: str) -> Path:
        """The (QDQ) ONNX of a source, written once: the onnx / onnx_int8 artifact and the input of OpenVINO
        and TensorRT (kept beside the engine so that it can be rebuilt on another GPU)."""
        if kind in self._onnx:
            return self._onnx[kind]
        key = "onnx" if kind == "fp32" else "onnx_int8"
        src, path = self.source(kind), self.path_for(FORMATS[key])
        if kind == "fp32":
            from .onnx import export_onnx

            m = src.meta(key)
            export_onnx(src.reference.module, path, m.preprocess, m.embedding_size, m.fingerprint, self.plan.opset,
                        source_sha256=m.source_sha256, arch=m.arch, fmt=key)
        elif self.plan.onnx_int8 is not None:
            from .onnx import stamp_onnx_file

            stamp_onnx_file(self.plan.onnx_int8, path, src.meta(key))
        else:
            from .onnx import export_qdq

            export_qdq(src.qmodel, path, src.meta(key), self.plan.opset)
        self._onnx[kind] = path
        self.outputs[key] = path
        return path

    # --- one format -----------------------------------------------------------------------------------
    def kind(self, fmt: Format) -> str:
        """Which source a format is built from: TensorRT int8 comes from the quantized model's QDQ ONNX."""
        gpu_int8 = fmt.needs_gpu and self.plan.trt.precision == "int8"
        return "quantized" if fmt.source == "quantized" or gpu_int8 else "fp32"

    def _build(self, fmt: Format) -> Path:
        return family_of(fmt).build(self, fmt, self.kind(fmt))

    def _one(self, fmt: Format, faces: np.ndarray) -> dict:
        t0 = time.perf_counter()
        kind = self.kind(fmt)
        gpu = fmt.needs_gpu  # built at export.tensorrt.precision
        rec: dict = {"format": fmt.key, "runtime": fmt.runtime, "source": kind,
                     "precision": self.plan.trt.precision if gpu else fmt.precision}
        if kind == "quantized" and self.plan.qmodel is None:
            if self.plan.onnx_int8 is None:
                return {**rec, "status": "skipped", "note": self.plan.no_qmodel_reason}
            if not fmt.from_int8_onnx:
                return {**rec, "status": "skipped", "note": "the quantize stage (NNCF) saved an int8 ONNX only"}
        if kind == "fp32" and self.plan.student is None:
            return {**rec, "status": "skipped", "note": "needs the fp32 student.pt (a quantized model was given)"}
        try:
            self.say(f"export: {fmt.key}")
            path = self._build(fmt)
            files = artifact_files(path, fmt)
            rec.update(path=str(path), files=[str(p) for p in files], bytes=sum(p.stat().st_size for p in files),
                       sha256=sha256_file(path))
            if fmt.reference:
                rec.update(parity=None, note="the parity reference itself")
            else:
                emb = load_artifact(path, device=self.plan.device, threads=self.plan.threads, fmt=fmt.key)
                src = self.source(kind)
                rec["reference"] = "fp32 student (no fake-quant model)" if src.vs_fp32 else \
                    ("fake-quant model" if kind == "quantized" else "PyTorch fp32 student")
                result = check_parity(src.reference, emb, faces, fmt, precision=rec["precision"],
                                      atol=self.plan.atol, artifact=str(path),
                                      cos_floor=INT8_VS_FP32_COS if src.vs_fp32 else
                                      self.plan.int8_cos_floor if kind == "quantized" else None)
                rec["parity"] = {**result, "reference": rec["reference"]}
                for i, p in enumerate(files):
                    self.outputs[fmt.key if i == 0 else f"{fmt.key}_{p.suffix.lstrip('.')}"] = p
            rec["status"] = "ok"
        except FacepipeError as e:
            rec.update(status="failed", error=str(e), error_type=type(e).__name__)
            if getattr(e, "parity", None):  # a failed gate still reports what it measured
                rec["parity"] = {**e.parity, "reference": rec.get("reference")}
                hint = overflow_hint(self._onnx["quantized"]) if fmt.precision == "int8" and \
                    "quantized" in self._onnx and self.plan.device == "cpu" else None
                if hint:
                    rec.update(error=f"{rec['error']}; likely cause: {hint}", hint=hint)
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        return rec

    # --- all of them ---------------------------------------------------------------------------------
    def run(self, faces: np.ndarray, faces_source: str) -> dict:
        """Export every planned format (GPU / module checks first, before any work); write export.json
        (without the wall times, which are only in the returned report)."""
        plan = self.plan
        check_formats(plan.formats, plan.device)
        plan.out_dir.mkdir(parents=True, exist_ok=True)
        records = {k: self._one(FORMATS[k], faces) for k in plan.formats}
        extra = [k for k in self._onnx_keys() if k not in records]  # intermediates another format needed
        report = {"formats": records, "intermediate": {k: str(self.outputs[k]) for k in extra},
                  "parity_faces": {"count": int(len(faces)), "source": faces_source},
                  "device": plan.device, "opset": plan.opset, "atol_override": plan.atol,
                  "student": str(plan.student) if plan.student else None,
                  "qmodel": str(plan.qmodel) if plan.qmodel else None}
        # Wall times stay out of the file (they are in the returned report and the stage metrics): a
        # re-export of identical artifacts then writes identical bytes, and bench is not re-run for nothing.
        on_disk = {**report, "formats": {k: {f: v for f, v in r.items() if f != "seconds"}
                                         for k, r in records.items()}}
        path = atomic_write_json(plan.out_dir / REPORT, on_disk)
        self.outputs["report"] = path
        return report

    def _onnx_keys(self) -> list[str]:
        return ["onnx" if k == "fp32" else "onnx_int8" for k in self._onnx]


def failures(report: dict) -> dict[str, str]:
    """format -> error of every failed format in a report."""
    return {k: r.get("error", "") for k, r in report["formats"].items() if r["status"] == "failed"}


def report_table(report: dict, title: str = "facepipe export", extra_rows: list[dict] = ()):
    """Rich table: format, status, size, parity (cosine min / max abs vs the gate), file or reason."""
    from rich.table import Table
    from rich.text import Text

    styles = {"ok": "green", "failed": "bold red", "skipped": "yellow"}
    t = Table(title=f"{title} (parity faces: {report['parity_faces']['source']})")
    for col in ("format", "precision", "status", "MB", "cos min", "max abs", "s"):
        t.add_column(col, no_wrap=True, justify="right" if col in ("MB", "cos min", "max abs", "s") else "left")
    t.add_column("file / reason", overflow="fold")
    for r in [*report["formats"].values(), *extra_rows]:
        p = r.get("parity") or {}
        mb = f"{r['bytes'] / 2**20:.2f}" if r.get("bytes") else ""
        cos = f"{p['cos_min']:.6f}" if "cos_min" in p else ""
        mx = f"{p['max_abs']:.2e}" if "max_abs" in p else ""
        why = r.get("error") or r.get("note") or ""
        what = r.get("path", "") + (f"  ({why})" if why and r.get("path") and r["status"] == "ok" else "")
        t.add_row(r["format"], r.get("precision", ""), Text(r["status"], style=styles.get(r["status"], "")), mb,
                  cos, mx, f"{r['seconds']:.1f}" if r.get("seconds") is not None else "",
                  Text(what if r["status"] == "ok" else why))
    return t


__all__ = ["ExportPlan", "Exporter", "REPORT", "failures", "report_table"]
