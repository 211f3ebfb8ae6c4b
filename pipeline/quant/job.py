"""One quantization run, shared by the quantize stage and `facepipe quantize --student ... --out ...`:
load the fp32 student, get the faces, PTQ (+ QAT), write the artifacts, measure, report.

Outputs in out_dir (backend own): qstudent.pt (save_quantized) + quant_spec.json, qstudent.w<B>.fpq (packed
weights), metrics.json, faces.png (a grid of the calibration faces). Backend nncf: qstudent.int8.onnx (QDQ),
metrics.json, faces.png. A QAT checkpoint lives in checkpoints/last.pt until the run finishes.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .plan import QuantPlan
from ..io import atomic_write_json

SPEC_FILE = "quant_spec.json"
METRICS_FILE = "metrics.json"
CHECKPOINT = "checkpoints/last.pt"
PTQ_FILE = "ptq.pt"  # with mode=qat: the calibrated PTQ model QAT started from (qstudent.pt is the QAT one)
FP32_FILE = "fp32.pt"  # an imported model (quantize.model) in student.pt format, for `facepipe export --model`
IMPORT_PARITY_FACES = 64  # real faces an imported model must match its runtime on before it is quantized
COSINE_FACES = 512  # calibration faces compared with fp32 when no benchmark is available
NEUTRAL_KEYS = ("enabled", "benchmarks")  # quantize keys that do not change the trained weights


def check_config(plan: QuantPlan) -> None:
    """Combinations the field validators cannot see (raised before any work)."""
    q = plan.q
    if q.backend == "nncf" and q.layer_bits:
        raise ConfigError("quantize.layer_bits needs quantize.backend=own (nncf quantizes every layer at 8 bits)")
    if q.backend == "nncf" and (q.wbits, q.abits) != (8, 8):
        raise ConfigError(f"quantize.backend=nncf supports 8-bit weights and activations only (got "
                          f"wbits={q.wbits}, abits={q.abits}): use quantize.backend=own for other bit widths")


def accuracy_plan(plan: QuantPlan) -> tuple[list[str], Path | None, str | None]:
    """(benchmark specs to score, data root, note when accuracy is skipped)."""
    specs = list(plan.benchmarks)
    if not specs:
        return [], None, "no benchmark configured (quantize.benchmarks / data.benchmarks): cosine only"
    root = plan.data_root
    if root is None and all(not Path(s).expanduser().exists() for s in specs):
        return [], None, ("no data root (data.root / $FACEPIPE_DATA): benchmarks "
                          f"{', '.join(specs)} skipped, cosine to fp32 on the calibration faces only")
    return specs, root, None


def identity(plan: QuantPlan, student_sha: str, faces: np.ndarray) -> dict:
    """What a QAT checkpoint must match to be resumed."""
    from ..eval.evaluate import faces_fingerprint

    q = {k: v for k, v in plan.section().items() if k not in NEUTRAL_KEYS}
    return {"quantize": q, "student": student_sha, "faces": faces_fingerprint(faces), "seed": plan.seed,
            "weight_bits": weight_range(plan)["weight_bits"]}


def weight_range(plan: QuantPlan, isa: dict | None = None) -> dict:
    """The weight bits the quantizers use: quantize.overflow_fix resolved against this CPU (`isa`: the
    device.parse_isa dict, default this machine's), with the reason - recorded in the artifacts."""
    from facepipe.models.quant import safe_weight_bits, saturates_without_vnni

    from ..device import cpu_info, x86_without_vnni

    q = plan.q
    isa = cpu_info()["isa"] if isa is None else isa
    at_risk = saturates_without_vnni(q.wbits, q.abits)
    fix_active = q.overflow_fix is True or (q.overflow_fix == "auto" and x86_without_vnni(isa))
    on = at_risk and fix_active
    bits = safe_weight_bits(q.wbits, q.abits) if on else q.wbits
    layer_bits = {}
    for key, value in q.layer_bits.items():  # per-layer overrides get the same treatment as the model-wide bits
        w, a = (value, value) if isinstance(value, int) else (value.get("wbits", q.wbits), value.get("abits", q.abits))
        layer_bits[key] = {"wbits": safe_weight_bits(w, a) if fix_active else w, "abits": a}
    if on:
        by = "quantize.overflow_fix=true" if q.overflow_fix is True else f"this CPU: {isa.get('summary')}"
        why = (f"{q.wbits}-bit weights x {q.abits}-bit activations can saturate int8 kernels without VNNI; "
               f"weights keep to {bits} bits ({by})")
    elif not at_risk:
        why = f"w{q.wbits}a{q.abits} cannot saturate 16-bit pair sums"
    else:
        why = (f"full {q.wbits}-bit weights: " + ("quantize.overflow_fix=false" if q.overflow_fix is False else
               f"this CPU has VNNI ({isa.get('summary')})") + "; on an x86 CPU without VNNI their int8 "
               "kernels may saturate (set quantize.overflow_fix=true for such targets)")
    return {"wbits": q.wbits, "weight_bits": bits, "overflow_fix": on, "setting": q.overflow_fix,
            "cpu_isa": isa.get("summary"), "reason": why, "layer_bits": layer_bits}


def quantize_models(plan: QuantPlan, student, faces: np.ndarray, ckpt, wrange: dict) -> tuple[Any, Any, Any]:
    """(PTQ model, QAT model or None, QatReport or None) for the configured backend and mode, with the weight
    range of `weight_range`."""
    from .qat import calibrated, run_qat

    q = plan.q
    if q.backend == "nncf":
        from .nncf_backend import nncf_ptq

        ptq = nncf_ptq(student, faces, calib_images=q.calib_images, batch_size=q.batch_size,
                       overflow_fix=wrange["overflow_fix"])
        start = copy.deepcopy(ptq)
    else:
        start = calibrated(student, faces, wrange["weight_bits"], q.abits, calib_images=q.calib_images,
                           batch_size=q.batch_size, weight_symmetric=q.weight_symmetric,
                           act_symmetric=q.act_symmetric, layer_bits=wrange.get("layer_bits") or None,
                           act_range=q.act_range)
        ptq = copy.deepcopy(start)
        ptq.freeze_activations()
    if q.mode != "qat" or q.steps == 0:
        return ptq.eval(), None, None
    report = run_qat(start, student, faces, steps=q.steps, batch_size=q.batch_size, lr=q.lr,
                     weight_decay=q.weight_decay, freeze_after=q.freeze_after, seed=plan.seed, checkpoint=ckpt,
                     observers=q.backend == "own")
    return ptq.eval(), start.eval(), report


def write_artifacts(plan: QuantPlan, final, student, meta: dict, out_dir: Path) -> dict[str, Path]:
    """qstudent.pt + quant_spec.json + qstudent.w<B>.fpq (own backend), or the int8 QDQ ONNX (nncf)."""
    q = plan.q
    if q.backend == "nncf":
        from .nncf_backend import export_int8_onnx

        return {"onnx_int8": export_int8_onnx(final, out_dir / "qstudent.int8.onnx", student, meta)}
    from facepipe.pipeline.quant.storage import save_quantized, write_packed

    files = {"qstudent": save_quantized(out_dir / "qstudent.pt", final, meta), "spec": out_dir / SPEC_FILE,
             "packed": out_dir / f"qstudent.w{meta['weight_range']['weight_bits']}.fpq"}
    write_packed(files["packed"], final)
    if student.origin != "facepipe student":  # the fp32 model as a student.pt: export builds its fp32 formats
        from .fpmodel import write_fp32_checkpoint

        files["fp32"] = write_fp32_checkpoint(out_dir / FP32_FILE, student)
    return files


def measure(plan: QuantPlan, student, models: dict, faceset) -> tuple[dict, dict]:
    """(accuracy per model and benchmark, cosine to fp32 per model) - see accuracy_plan for what is scored."""
    from .report import Fp32Source, cosine_stats, embed, evaluate_models

    specs, root, _ = accuracy_plan(plan)
    accuracy, cosines = {}, None
    if specs:
        accuracy, cosines = evaluate_models(models, student.preprocess, specs, root, flip=plan.flip,
                                            batch_size=plan.batch_size, on_error=plan.on_error,
                                            fp32_source=Fp32Source(student.sha256))
    if cosines is None:  # no pair benchmark: compare on the calibration faces
        sample = faceset.faces[:COSINE_FACES]
        ref = embed(student.module, sample, student.preprocess, "fp32", plan.batch_size)
        cosines = {n: {**cosine_stats(ref, embed(m, sample, student.preprocess, n, plan.batch_size)),
                       "on": f"{faceset.kind} calibration faces"} for n, m in models.items() if n != "fp32"}
    return accuracy, cosines


def bits_label(wbits: int, abits: int, layer_bits: dict | None) -> str:
    """'6/6', or '6/6 (2 layers 8/8)' for a mixed-precision model."""
    from collections import Counter

    groups = Counter(f"{w}/{a}" for w, a in (layer_bits or {}).values())
    more = ", ".join(f"{n} layer{'s' if n > 1 else ''} {b}" for b, n in groups.items())
    return f"{wbits}/{abits}" + (f" ({more})" if more else "")


def model_rows(plan: QuantPlan, models: dict, sizes: dict, accuracy: dict, cosines: dict,
               wbits: int) -> dict:
    """Per model (fp32, ptq, qat): bits (weight bits as used), accuracy per benchmark, cosine, file and memory
    bytes."""
    q = plan.q
    quant_file = sizes.get("packed_file_bytes") or sizes.get("onnx_int8_file_bytes")
    rows = {"fp32": {"bits": "32/32", "file_bytes": sizes["fp32_file_bytes"],
                     "memory_bytes": sizes["fp32_memory_bytes"]}}
    for name in models:
        if name != "fp32":
            rows[name] = {"bits": bits_label(wbits, q.abits, getattr(models[name], "layer_bits", None)),
                          "mean_weight_bits": sizes.get("mean_weight_bits"), "cosine": cosines.get(name),
                          "file_bytes": quant_file,
                          "memory_bytes": sizes["packed_memory_bytes"]}
    for name, per_bench in accuracy.items():
        rows[name]["accuracy"] = {b: s.get("accuracy") for b, s in per_bench.items()}
    return rows


def quantize_student(plan: QuantPlan, student_path: Path, out_dir: Path, *, say=print,
                     show_table: bool = True) -> tuple[dict[str, Path], dict]:
    """Run PTQ / QAT of the student.pt at student_path into out_dir; returns (outputs by role, metrics)."""
    from .fpmodel import load_student

    check_config(plan)  # before the student is read: a bad combination is the first thing to hear about
    return quantize_model(plan, load_student(student_path), out_dir, say=say, show_table=show_table)


def load_configured_model(plan: QuantPlan, source: str, say=print):
    """quantize.model as a Student: imported ONNX models are first checked against their runtime on the
    first benchmark's real faces (synthetic ones when there is no data)."""
    from facepipe.export.parity import benchmark_faces

    from .fpmodel import load_fp_model

    faces = benchmark_faces(list(plan.data_benchmarks), plan.data_root, IMPORT_PARITY_FACES)
    return load_fp_model(source, plan.base_dir, parity=faces, say=say)


def quantize_model(plan: QuantPlan, student, out_dir: Path, *, say=print,
                   show_table: bool = True) -> tuple[dict[str, Path], dict]:
    """Run PTQ / QAT of an fp32 model (a fpmodel.Student) into out_dir; returns (outputs by role, metrics)."""
    from ..progress import table_console
    from ..data.synthetic.faces import save_grid
    from .qat import QatCheckpoint
    from .report import results_table, size_metrics
    from .sources import load_faces

    check_config(plan)
    q = plan.q
    if plan.threads:
        torch.set_num_threads(plan.threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    note = accuracy_plan(plan)[2]  # resolves the benchmarks before any work
    clock = {"start": time.perf_counter()}
    torch.manual_seed(plan.seed)

    faceset = load_faces(plan, student.module, student.preprocess)
    clock["data"] = time.perf_counter()
    say(f"quantize: {len(faceset.faces)} {faceset.kind} faces from {faceset.origin} "
        f"({clock['data'] - clock['start']:.1f} s)")
    outputs: dict[str, Path] = {"faces": out_dir / "faces.png"}
    save_grid(faceset.faces, outputs["faces"])

    ckpt = QatCheckpoint(out_dir / CHECKPOINT, identity(plan, student.sha256, faceset.faces))
    wrange = weight_range(plan)
    say(f"quantize: weight range {wrange['weight_bits']} bits ({wrange['reason']})")
    ptq, qat, qat_report = quantize_models(plan, student, faceset.faces, ckpt, wrange)
    final = qat if qat is not None else ptq
    if getattr(final, "layer_bits", None):
        say(f"quantize: per-layer bits {', '.join(f'{n}={w}/{a}' for n, (w, a) in final.layer_bits.items())} "
            f"(mean weight bits {final.mean_weight_bits():.2f})")
    clock["quantize"] = time.perf_counter()
    meta = {"arch": student.arch, "embedding_size": student.embedding_size,
            "preprocess": student.preprocess.to_dict(), "wbits": q.wbits, "abits": q.abits, "mode": q.mode,
            "data": faceset.kind, "student_sha256": student.sha256, "backend": q.backend,
            "weight_range": wrange, "model": student.origin}
    files = write_artifacts(plan, final, student, meta, out_dir)
    if qat is not None and q.backend == "own":  # the PTQ start point too: export / bench it beside the QAT model
        from .storage import save_quantized

        files["ptq"] = save_quantized(out_dir / PTQ_FILE, ptq, {**meta, "mode": "ptq"}, spec=False)
    outputs.update(files)

    models = {"fp32": student.module, "ptq": ptq, **({"qat": qat} if qat is not None else {})}
    accuracy, cosines = measure(plan, student, models, faceset)
    clock["eval"] = time.perf_counter()
    sizes = size_metrics(student.path, student.module, final,
                         {k: v for k, v in files.items() if k not in ("spec", "fp32", "ptq")})
    metrics = {"wbits": q.wbits, "abits": q.abits, "mode": q.mode, "backend": q.backend, "weight_range": wrange,
               "layer_bits": {n: list(b) for n, b in getattr(final, "layer_bits", {}).items()},
               "data": faceset.describe(), "models": model_rows(plan, models, sizes, accuracy, cosines, wrange["weight_bits"]),
               "benchmarks": accuracy, "sizes": sizes, "qat": qat_report.summary() if qat_report else {"steps": 0},
               "seconds": {"data": round(clock["data"] - clock["start"], 2),
                           "quantize": round(clock["quantize"] - clock["data"], 2),
                           "qat": round(qat_report.seconds, 2) if qat_report else 0.0,
                           "eval": round(clock["eval"] - clock["quantize"], 2),
                           "total": round(time.perf_counter() - clock["start"], 2)},
               "accuracy_note": note, "student": str(student.path), "model": student.origin,
               "import_parity": student.import_parity}
    if qat_report is not None:
        outputs["log"] = _write_loss_log(out_dir / "qat_log.csv", qat_report.losses)
    outputs["metrics"] = atomic_write_json(out_dir / METRICS_FILE, metrics)
    ckpt.remove()
    if show_table:
        title = f"quantize {student.origin} w{q.wbits}a{q.abits} {q.mode} ({faceset.kind}, {q.backend})"
        table_console(stderr=True).print(results_table(metrics, title))
        if note:
            say(f"quantize: {note}")
    return outputs, metrics


def flat_metrics(metrics: dict) -> dict:
    """Scalar metrics for the manifest: <model>_<bench>_accuracy, <model>_cos_mean/min, sizes, steps, seconds."""
    out: dict = {"wbits": metrics["wbits"], "abits": metrics["abits"], "steps": metrics["qat"]["steps"],
                 "seconds": metrics["seconds"]["total"]}
    for name, row in metrics["models"].items():
        for bench, acc in (row.get("accuracy") or {}).items():
            out[f"{name}_{bench}_accuracy"] = acc
        if row.get("cosine"):
            out[f"{name}_cos_mean"] = row["cosine"]["mean"]
            out[f"{name}_cos_min"] = row["cosine"]["min"]
    out.update({k: v for k, v in metrics["sizes"].items()})
    if metrics.get("accuracy_note"):
        out["accuracy_note"] = metrics["accuracy_note"]
    return out


def _write_loss_log(path: Path, losses: list[float]) -> Path:
    from ..io import atomic_write_text

    return atomic_write_text(path, "step,loss\n" + "".join(f"{i},{v:.8g}\n" for i, v in enumerate(losses, 1)))
