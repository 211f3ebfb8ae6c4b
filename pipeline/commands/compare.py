"""`facepipe compare`: the config's distill recipe under several loss sets and seeds (pipeline/train/compare.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .options import ConfigOpt, SetOpt, load


def compare_command(
    config: Path = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    method: Optional[list[str]] = typer.Option(None, "--method", help="A method of the table (repeatable; "
                                               "default: all). `facepipe compare --list` names them."),
    seeds: int = typer.Option(3, "--seeds", min=1, help="Seeds 0..N-1 for every method."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Optimizer steps of every run (overrides "
                                        "distill.epochs; the same for every method)."),
    prefix: str = typer.Option("compare", "--prefix", help="Runs are named PREFIX-METHOD-sSEED under run.dir; "
                               "the summary is run.dir/PREFIX.{json,md,png}."),
    list_: bool = typer.Option(False, "--list", help="Print the methods and exit."),
    no_run: bool = typer.Option(False, "--no-run", help="Only summarise the runs already finished (runs of "
                                "other code versions included; nothing is trained)."),
):
    """Train and score every (method, seed) on the config's recipe, then print mean +- std per method.

    Finished runs are skipped and an interrupted one resumes, so the command can be stopped and re-run."""
    from facepipe.pipeline.device import cpu_info
    from facepipe.pipeline.io import atomic_write_json, atomic_write_text
    from facepipe.pipeline.plots import plot_methods
    from facepipe.pipeline.progress import table_console
    from facepipe.pipeline.runner import run_pipeline
    from facepipe.pipeline.train import compare as C

    out = table_console()
    methods = C.pick_methods(method)
    if list_:
        for m in methods:
            out.print(f"{m.name}: {m.describe()}" + (f"  [{' '.join(m.overrides)}]" if m.overrides else ""),
                      markup=False)
        return
    extra = [f"distill.steps={steps}"] if steps else []
    say = lambda msg: out.print(msg, markup=False, highlight=False)  # noqa: E731
    results = []
    base = None
    for m in methods:
        res = C.MethodResult(m)
        for seed in range(seeds):
            cfg = load(config, list(set_ or []) + extra + C.run_overrides(prefix, m, seed))
            base = base or cfg
            say(f"compare: {m.name} seed {seed} -> {cfg.run_dir()}")
            if not no_run:
                run_pipeline(cfg, to="distill", log=say)
            result = C.read_result(cfg.run_dir())
            if result is not None:
                res.runs[seed] = result
        results.append(res)
    metrics = C.accuracy_metrics(results)
    rows = C.summary(results, metrics)
    d = base.distill
    recipe = (f"{d.steps or d.epochs} {'steps' if d.steps else 'epochs'}, batch {d.batch_size}, lr {d.lr} "
              f"{d.schedule}, augment {d.augment.model_dump(mode='json')}, student {d.student.arch}, "
              f"teacher {base.teacher.source}")
    cpu = cpu_info()
    caption = (f"{seeds} seed(s) per method; {recipe}; CPU {cpu.get('model', '?')} ({cpu['isa']['summary']}, "
               f"{cpu.get('usable')} cores)")
    summary_dir = base.run.dir if base.run.dir.is_absolute() else base.base_dir / base.run.dir
    atomic_write_json(summary_dir / f"{prefix}.json",
                      {"recipe": recipe, "cpu": cpu, "metrics": metrics, "rows": rows})
    atomic_write_text(summary_dir / f"{prefix}.md", C.markdown(rows, metrics, caption))
    if metrics:
        plot_methods(rows, [(m, C.metric_label(m)) for m in metrics], summary_dir / f"{prefix}.png",
                     title=f"{seeds} seed(s) per method, {d.steps or d.epochs} {'steps' if d.steps else 'epochs'} "
                           f"each: mean ± std (bar) and every seed (dots); {base.teacher.source} -> {d.student.arch}")
    out.print(C.rich_table(rows, metrics, caption))
    say(f"compare: {summary_dir / prefix}.json / .md / .png")


def register(app: typer.Typer) -> None:
    """Add `compare` to the facepipe app."""
    app.command("compare")(compare_command)
