"""Bench a set of artifacts: latency (child processes), accuracy and cosine to torch (this process), then
every report, then the floors gate. Used by the bench stage and by `facepipe bench --artifact`."""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import ConfigError, FacepipeError
from ..progress import console, table_console

MISSING = "missing (not exported: add it to export.formats)"
COSINE_FACES = 64
ENV_PACKAGES = ("torch", "numpy", "onnx", "onnxruntime", "openvino", "tensorrt", "torch_tensorrt", "cv2")


def bench_specs(cfg) -> list[str]:
    """bench.benchmarks, else data.benchmarks - none in data-free mode, where no benchmark data exists (the bench
    then measures latency and size, and the cosine to the PyTorch student on synthetic faces)."""
    if cfg.bench.benchmarks is not None:
        return list(cfg.bench.benchmarks)
    return [] if cfg.data_free() else list(cfg.data.benchmarks)


@dataclass
class BenchSettings:
    """Everything a bench run needs besides the artifacts (bench config section + data settings)."""

    device: str = "cpu"  # cpu | cuda | cuda:N | jetson
    benchmarks: list[str] = field(default_factory=list)
    data_root: Path | None = None
    on_error: str = "fail"
    batch_sizes: list[int] = field(default_factory=lambda: [1, 32])
    warmup: int = 10
    runs: int = 50
    threads: int = 1
    floors: dict[str, float] = field(default_factory=dict)
    flip: bool = False
    cache_dir: Path | None = None
    timeout_s: float = 1800.0
    cosine_faces: int = COSINE_FACES

    @classmethod
    def from_config(cls, cfg, cache_dir: Path | None = None) -> "BenchSettings":
        b = cfg.bench
        specs = bench_specs(cfg)
        return cls(device=b.device, benchmarks=specs, data_root=cfg.data_root(required=False) if specs else None,
                   on_error=cfg.data.on_error, batch_sizes=list(b.batch_sizes), warmup=b.warmup, runs=b.runs,
                   threads=b.threads, floors=dict(b.floors), cache_dir=cache_dir)


@dataclass
class BenchOutcome:
    rows: list[dict]
    files: dict[str, Path]
    misses: list[str]
    report: dict


def invocation() -> str:
    """The command line that started this process (for the report)."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name == "facepipe":
        argv[0] = "facepipe"
    return shlex.join(argv)


def resolve_runtime_device(spec: str) -> tuple[str, dict | None]:
    """(device string for the runtimes, Jetson facts or None); BackendUnavailable when absent."""
    from ..device import resolve_device

    jetson = None
    if spec.strip().lower() == "jetson":
        from .jetson import require_jetson

        jetson = require_jetson()
    return resolve_device(spec), jetson


def bench_artifacts(items: Mapping[str, Path | None], settings: BenchSettings, out_dir: Path,
                    command: str = "") -> BenchOutcome:
    """Bench each (format -> artifact path or None when not exported) and write the reports in out_dir.

    Floors are validated before any work (ConfigError) and enforced after the reports (FloorMissed).
    """
    from ..eval.datasets import resolve_benchmark
    from ..embedder import cosine_rows
    from . import gate

    device, jetson = resolve_runtime_device(settings.device)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None  # other work skews latency: record it
    benches = [resolve_benchmark(s, settings.data_root) for s in settings.benchmarks]
    names = [b.name for b in benches]
    gate.validate_floors(settings.floors, names)
    check_format_keys(items)
    faces, faces_what = _reference_faces(benches, settings.on_error, settings.cosine_faces) if "torch" in items \
        else (None, "-")
    rows, curves, reference = [], [], None
    # torch first: it is the reference the others' cosine is measured against
    for key in sorted(items, key=lambda k: k != "torch"):
        row, embedder, results = _bench_one(key, items[key], settings, device, jetson is not None)
        curves += [(f"{key} {r.summary['name']}", r.roc[0], r.roc[1]) for r in results]
        if embedder is not None and faces is not None:
            emb = embedder.embed(faces, batch_size=max(settings.batch_sizes))
            reference = emb if key == "torch" else reference
            if reference is not None:
                row["cosine_to_torch"] = float(cosine_rows(emb, reference).mean())
        rows.append(row)
        del embedder
    rows.sort(key=lambda r: list(items).index(r["format"]))
    return _write_reports(rows, curves, names, settings, device, jetson, out_dir, command, faces_what, load_before)


def _reference_faces(benches, on_error: str, n: int) -> tuple[np.ndarray, str]:
    """n faces spread over the first pair benchmark (synthetic faces without one), and what they are."""
    pairs = [b for b in benches if b.kind == "pairs"]
    if not pairs:
        from facepipe.export.parity import synthetic_faces

        return synthetic_faces(n), f"{n} synthetic faces"
    images = pairs[0].load(on_error).images
    idx = np.linspace(0, len(images) - 1, min(n, len(images))).astype(int)
    return np.ascontiguousarray(images[idx]), f"{len(idx)} faces of {pairs[0].name}"


def check_format_keys(keys) -> None:
    """ConfigError naming bench.formats when a key is not in FORMATS."""
    from facepipe.export.formats import get_format

    for key in keys:
        try:
            get_format(key)
        except ConfigError as e:
            raise ConfigError(f"bench.formats: {e}") from None


def unavailable_reason(key: str, device: str) -> str | None:
    """Why a format cannot run here (GPU-only on a CPU, runtime not installed), or None."""
    from facepipe.export.formats import get_format, install_hint, is_gpu_device

    f = get_format(key)
    if f.needs_gpu and not is_gpu_device(device):
        return f"needs an NVIDIA GPU (device {device})"
    missing = f.missing_modules()
    hint = install_hint(f)
    return f"needs {', '.join(missing)}, not installed{f': {hint}' if hint else ''}" if missing else None


def _base_row(key: str, path: Path | None) -> dict:
    from facepipe.export.artifacts import artifact_files
    from facepipe.export.formats import get_format

    f = get_format(key)
    row = {"format": key, "status": "ok", "path": str(path) if path else None, "runtime": f.runtime,
           "precision": f.precision, "size_mb": None, "accuracy": {}, "benchmarks": {}, "latency": {}}
    if path is not None:
        try:
            files = artifact_files(path, key)
        except FacepipeError:  # unreadable: its load fails below and gives the row its error
            files = [Path(path)]
        row["size_mb"] = sum(p.stat().st_size for p in files if p.is_file()) / 1e6
    return row


def _bench_one(key: str, path: Path | None, s: BenchSettings, device: str, jetson: bool):
    """(row, embedder or None, benchmark results) for one format."""
    from facepipe.export.artifacts import load_artifact

    from .accuracy import artifact_accuracy
    from .latency import measure_latency

    row = _base_row(key, path)
    if path is None:
        row["status"] = MISSING
        return row, None, []
    why = unavailable_reason(key, device)
    if why:
        row["status"] = f"skipped: {why}"
        return row, None, []
    say = lambda msg: console.print(f"bench {key}: {msg}", markup=False, highlight=False)  # noqa: E731
    say(f"latency in a child process ({s.threads} thread(s), batch {s.batch_sizes}, {s.runs} runs)")
    lat = measure_latency(path, key, device=device, threads=s.threads, batch_sizes=s.batch_sizes,
                          warmup=s.warmup, runs=s.runs, jetson=jetson, timeout_s=s.timeout_s)
    lat.pop("traceback", None)
    row.update({k: v for k, v in lat.items() if k != "status"})
    if lat["status"] != "ok":  # not loaded here as well: what crashed the child could crash this process
        row["status"] = lat["status"]
        return row, None, []
    embedder, results = None, []
    try:
        embedder = load_artifact(path, device=device, fmt=key)
        if s.benchmarks:
            say(f"accuracy on {', '.join(s.benchmarks)} through {embedder.runtime}")
            t0 = time.perf_counter()
            results = artifact_accuracy(path, key, embedder, s.benchmarks, s.data_root, device=device,
                                        batch_size=max(s.batch_sizes), on_error=s.on_error, flip=s.flip,
                                        cache_dir=s.cache_dir)
            row["accuracy_s"] = time.perf_counter() - t0
    except Exception as e:  # a runtime failing on real data is this row's finding, not the bench's end
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        row["status"] = f"error: accuracy: {type(e).__name__}: {msg}"[:300]
    for r in results:
        row["benchmarks"][r.summary["name"]] = r.summary
        if r.summary.get("accuracy") is not None:
            row["accuracy"][r.summary["name"]] = r.summary["accuracy"] / 100.0
    return row, embedder, results


def _notes(rows: Sequence[dict], names: Sequence[str], s: BenchSettings, ref_what: str) -> list[str]:
    from .report import int8_note

    notes = [f"latency: the runtime's forward only (preprocessing excluded; host-device copies included on GPU), "
             f"{s.threads} thread(s), {s.warmup} warm-up + {s.runs} timed runs per batch size, each artifact in "
             "a fresh process; img/s from the p50",
             "peak RSS: VmHWM (ru_maxrss without /proc) of that process after each batch size (ascending); "
             "bench.json also has the RSS before loading: model_rss_mb = runtime libraries + weights + activations",
             f"accuracy: the same evaluation path for every runtime (10-fold, flip={s.flip}); embeddings cached per "
             "artifact, runtime and device",
             f"cos vs torch: mean cosine of each artifact's embeddings to the torch fp32 model's on {ref_what}"]
    bs = min(s.batch_sizes)
    note = int8_note(rows, names[0] if names else None, bs)
    if note:
        notes.append(note)
    notes += [f"{r['format']}: {r['status']}" for r in rows if r["status"] != "ok"]
    return notes


def _write_reports(rows, curves, names, s: BenchSettings, device, jetson, out_dir: Path, command: str,
                   ref_what: str, load_before) -> BenchOutcome:
    from ..device import environment_report
    from . import gate, report

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment_report(packages=ENV_PACKAGES)
    if jetson is not None:
        env["jetson"] = jetson
    env["loadavg_before"] = list(load_before) if load_before else None
    notes = _notes(rows, names, s, ref_what)
    misses = gate.floor_misses(rows, s.floors)
    settings = {"device": s.device, "runtime_device": device, "benchmarks": s.benchmarks,
                "batch_sizes": s.batch_sizes, "warmup": s.warmup, "runs": s.runs, "threads": s.threads,
                "flip": s.flip, "floors": s.floors}
    doc = {"command": command, "settings": settings, "artifacts": rows, "notes": notes,
           "floors": {"floors": s.floors, "passed": not misses, "misses": misses}, "environment": env}
    title = f"facepipe bench ({device}, {s.threads} thread(s))"
    table_console().print(report.rich_table(rows, names, s.batch_sizes, title))
    bs = min(s.batch_sizes)
    plot = report.plot_accuracy_vs_latency(rows, names[0] if names else None, bs, out_dir / "accuracy_vs_latency.png")
    roc = report.plot_roc_or_empty(curves, out_dir / "roc.png", title="ROC by artifact")
    figures = {f"accuracy vs latency at batch {bs}": plot, "ROC by artifact": roc}
    files = {"report": report.write_json(out_dir / "bench.json", doc),
             "markdown": report.write_markdown(out_dir / "report.md", rows, names, s.batch_sizes, env, command,
                                               notes, figures),
             "plot": plot, "roc": roc}
    return BenchOutcome(rows, files, misses, doc)


def stage_metrics(rows: Sequence[dict], batch_sizes: Sequence[int]) -> dict:
    """Flat metrics: <format>_<benchmark>_accuracy (fraction) and <format>_p50_ms_b<smallest batch>."""
    bs = str(min(batch_sizes))
    out: dict = {}
    for r in rows:
        for name, acc in (r.get("accuracy") or {}).items():
            out[f"{r['format']}_{name}_accuracy"] = acc
        lat = (r.get("latency") or {}).get(bs)
        if lat:
            out[f"{r['format']}_p50_ms_b{bs}"] = lat["p50_ms"]
    return out
