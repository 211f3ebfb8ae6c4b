"""`facepipe eval`: accuracy of any model (a teacher name or a model file) on the face benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .options import ConfigOpt, SetOpt, load
from ..errors import ConfigError
from ..progress import table_console


def eval_command(
    model: str = typer.Option(..., "--model", "-m", help="Teacher name (sface), model file (.onnx/.pt/.ts), "
                              "model-pack folder or hf:<org>/<repo>."),
    benchmarks: Optional[str] = typer.Option(None, "--benchmarks", "-b", help="Comma-separated names under the "
                                             "data root (lfw, cfp_fp, cfp_ff, agedb_30, calfw, cplfw, ijbb, ijbc), "
                                             ".bin / folder paths, or a pairs file with options, e.g. "
                                             "'my_faces/pairs.txt?aligned'. Default: data.benchmarks."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON."),
    kind: str = typer.Option("auto", "--kind", help="Model kind: auto (from the source) or a "
                            "teacher kind (package, checkpoint, torchscript, onnx, insightface, hf, ...)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Architecture of a plain state-dict checkpoint."),
    flip: Optional[bool] = typer.Option(None, "--flip/--no-flip", help="Fuse each face with its mirror "
                                        "(default: teacher.flip)."),
    metric: str = typer.Option("euclidean", "--metric", help="euclidean (insightface) or cosine."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse cached embeddings of the benchmark."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write ROC curves to this PNG."),
    config: Path = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
):
    """Evaluate a model on face-verification benchmarks (10-fold accuracy, VAL@FAR, TAR@FAR)."""

    from ..eval.evaluate import embeddings_cache_dir, evaluate_model, results_table, roc_curves
    from ..io import atomic_write_json
    from ..teachers import resolve_teacher

    from ..teachers import TEACHER_SOURCES

    if kind != "auto" and kind not in TEACHER_SOURCES.names():
        raise ConfigError(f"--kind {kind!r}: choose auto or one of {', '.join(TEACHER_SOURCES.names())}")
    if metric not in ("euclidean", "cosine"):
        raise ConfigError(f"--metric {metric!r}: choose euclidean or cosine")
    cfg = load(config, set_)
    tcfg = cfg.teacher.model_copy(update={"source": model, "kind": kind, "arch": arch or cfg.teacher.arch})
    source = resolve_teacher(tcfg, cfg.base_dir)
    if source.warning():
        typer.secho(source.warning(), fg="yellow", err=True)
    embedder = source.load()
    specs = [s.strip() for s in benchmarks.split(",") if s.strip()] if benchmarks else list(cfg.data.benchmarks)
    if not specs:
        raise ConfigError("no benchmarks: pass --benchmarks lfw[,...] or set data.benchmarks")
    use_flip = cfg.teacher.flip if flip is None else flip
    results = evaluate_model(source, embedder, specs, cfg.data_root(required=False), flip=use_flip,
                             batch_size=batch_size or cfg.data.batch_size, on_error=cfg.data.on_error,
                             metric=metric, cache_dir=embeddings_cache_dir() if cache else None)
    table_console().print(results_table(results, title=f"{embedder.name} ({embedder.runtime}, flip={use_flip})"))
    if json_out:
        atomic_write_json(json_out, {"model": source.describe(), "runtime": embedder.runtime, "flip": use_flip,
                                     "metric": metric,
                                     "benchmarks": {r.summary["name"]: r.summary for r in results}})
        typer.echo(f"wrote {json_out}")
    if plot:
        from ..plots import plot_roc

        plot_roc(roc_curves(results, embedder.name), plot, title=f"ROC: {embedder.name}")
        typer.echo(f"wrote {plot}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
