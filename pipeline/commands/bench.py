"""`facepipe bench`: run the pipeline up to the bench stage, or bench given artifact files standalone."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .options import ConfigOpt, SetOpt, load
from ..errors import ConfigError

HELP = "\n\n".join([
    "Latency, memory and accuracy of the student in every format, each through its own runtime.",
    "Runs the stale stages up to bench (bench.* in pipeline.yaml; the options below override it). Each artifact "
    "is timed in a fresh process with --threads threads; accuracy uses the same evaluation as `facepipe eval`. "
    "Writes runs/RUN/bench/: bench.json, report.md, accuracy_vs_latency.png, roc.png.",
    "--artifact PATH (repeatable) benches the given files instead (format from the file name) into --out.",
    "--floor BENCHMARK=FRACTION (repeatable) makes it a gate: exit 2 when an artifact scores below, after the "
    "reports are written.",
])


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _overrides(set_: Optional[list[str]], device, formats, benchmarks, floors, runs, warmup, threads,
               batch_sizes) -> list[str]:
    """The command's options as --set overrides (so errors name them the same way)."""
    from ..bench.gate import parse_floor

    out = list(set_ or [])
    if device is not None:
        out.append(f"bench.device={device}")
    if formats is not None:
        out.append(f"bench.formats=[{', '.join(_csv(formats))}]")
    if benchmarks is not None:
        specs = [] if benchmarks.strip().lower() == "none" else _csv(benchmarks)
        out.append(f"bench.benchmarks=[{', '.join(repr(s) for s in specs)}]")
    for text in floors or []:
        name, value = parse_floor(text)
        out.append(f"bench.floors.{name}={value}")
    if batch_sizes is not None:
        try:
            sizes = [int(b) for b in _csv(batch_sizes)]
        except ValueError:
            raise ConfigError(f"--batch-sizes {batch_sizes!r}: expected integers, e.g. 1,32") from None
        if not sizes or min(sizes) < 1:
            raise ConfigError(f"--batch-sizes {batch_sizes!r}: expected positive integers, e.g. 1,32")
        out.append(f"bench.batch_sizes={sizes}")
    for key, value in (("bench.runs", runs), ("bench.warmup", warmup), ("bench.threads", threads)):
        if value is not None:
            out.append(f"{key}={value}")
    return out


def bench_command(
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda | cuda:N | jetson (bench.device)."),
    formats: Optional[str] = typer.Option(None, "--formats", help="Comma-separated format keys (bench.formats), "
                                          "e.g. torch,onnx,openvino_int8."),
    benchmarks: Optional[str] = typer.Option(None, "--benchmarks", "-b", help="Comma-separated benchmarks for "
                                             "accuracy (bench.benchmarks; 'none': latency only)."),
    floor: Optional[list[str]] = typer.Option(None, "--floor", help="Accuracy floor BENCHMARK=FRACTION, e.g. "
                                              "lfw=0.99 (repeatable; bench.floors)."),
    runs: Optional[int] = typer.Option(None, "--runs", min=1, help="Timed runs per batch size (bench.runs)."),
    warmup: Optional[int] = typer.Option(None, "--warmup", min=0, help="Warm-up runs per batch size."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Intra-op threads of every runtime."),
    batch_sizes: Optional[str] = typer.Option(None, "--batch-sizes", help="Comma-separated, e.g. 1,32."),
    artifact: Optional[list[Path]] = typer.Option(None, "--artifact", help="Bench this file standalone (format "
                                                  "from its name; repeatable); skips the pipeline."),
    out: Path = typer.Option(Path("bench-out"), "--out", help="Report folder for --artifact."),
    config: Path = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
):
    cfg = load(config, _overrides(set_, device, formats, benchmarks, floor, runs, warmup, threads, batch_sizes))
    if cfg.bench.device.strip().lower() == "jetson":  # fail before any stage runs
        from ..bench.jetson import require_jetson

        require_jetson()
    if artifact:
        _standalone(cfg, artifact, out)
    else:
        _pipeline(cfg)


def _standalone(cfg, paths: list[Path], out: Path) -> None:
    from facepipe.export.artifacts import format_for_path

    from ..bench import gate
    from ..bench.suite import BenchSettings, bench_artifacts, invocation
    from ..errors import ModelError
    from ..eval.evaluate import embeddings_cache_dir

    items: dict[str, Path] = {}
    for p in paths:
        if not p.is_file():
            raise ModelError(f"--artifact {p}: file not found")
        key = format_for_path(p).key
        if key in items:
            raise ConfigError(f"--artifact {p}: a second {key} artifact ({items[key]}); bench one per format")
        items[key] = p.resolve()
    settings = BenchSettings.from_config(cfg, cache_dir=embeddings_cache_dir())
    outcome = bench_artifacts(items, settings, out, command=invocation())
    typer.echo(f"wrote {outcome.files['markdown']}")
    failed = [r for r in outcome.rows if r.get("status") != "ok"]
    if failed:  # the report keeps what was measured; the exit code must not call a failed artifact benched
        raise ModelError("; ".join(f"{r.get('format')} {r.get('path') or ''}: {r.get('status')}"
                                   for r in failed) + f" (report: {outcome.files['markdown']})")
    gate.enforce(outcome.misses, str(outcome.files["markdown"]))


def _pipeline(cfg) -> None:
    import json

    from rich.console import Console

    from ..runner import outcomes_table, run_pipeline

    out = Console()
    say = lambda msg: out.print(msg, markup=False, highlight=False)  # noqa: E731
    record: list = []
    try:
        run_pipeline(cfg, to="bench", record=record, log=say)
    finally:
        if record:
            out.print(outcomes_table(record, title="facepipe bench"))
    stage_dir = cfg.run_dir() / "bench"
    if any(o.name == "bench" and o.status == "skipped" for o in record):
        from ..bench.report import rich_table
        from ..progress import table_console

        doc = json.loads((stage_dir / "bench.json").read_text())
        s = doc["settings"]
        names = [n for n in dict.fromkeys(k for r in doc["artifacts"] for k in r.get("benchmarks", {}))]
        table_console().print(rich_table(doc["artifacts"], names, s["batch_sizes"], "facepipe bench (fresh, from "
                                                                                    "bench.json)"))
    say(f"report: {stage_dir / 'report.md'}")


bench_command.__doc__ = HELP


def register(app: typer.Typer) -> None:
    """Add `bench` to the facepipe app."""
    app.command("bench", help=HELP)(bench_command)
