"""`facepipe run` and `facepipe status`: the stage pipeline and why each stage is fresh or stale."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .options import ConfigOpt, PresetOpt, SetOpt, load
from ..progress import table_console


def run_cmd(config: Path = ConfigOpt, set_: Optional[list[str]] = SetOpt, preset: Optional[str] = PresetOpt,
            from_: Optional[str] = typer.Option(None, "--from", help="Start here; forces this stage and every "
                                                "later one up to --to."),
            to: Optional[str] = typer.Option(None, "--to", help="Stop after this stage."),
            force: Optional[list[str]] = typer.Option(None, "--force", help="Re-run this stage even if fresh "
                                                      "(repeatable); dependents re-run only if its outputs change."),
            dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (run/skip and why); run nothing.")):
    """Run the pipeline: stale stages run, fresh ones are skipped."""

    from ..runner import outcomes_table, run_pipeline

    cfg = load(config, set_, preset)
    out = table_console()
    record: list = []
    try:
        run_pipeline(cfg, from_, to, tuple(force or ()), dry_run, record=record,
                     log=lambda msg: out.print(msg, markup=False, highlight=False))
    finally:
        if record:
            out.print(outcomes_table(record, title="facepipe run --dry-run" if dry_run else "facepipe run"))
    if dry_run:
        n = sum(o.status == "would run" for o in record)
        out.print(f"dry run: {n} stage(s) would run; nothing was executed", markup=False)
    elif not any(o.status == "ran" for o in record):
        out.print("every stage is fresh: nothing to do", markup=False)


def status_cmd(config: Path = ConfigOpt, set_: Optional[list[str]] = SetOpt, preset: Optional[str] = PresetOpt,
               json_out: bool = typer.Option(False, "--json", help="Print the status as JSON.")):
    """Show each stage's state (fresh / stale / never-run / disabled / unavailable) and why."""
    import json


    from ..runner import stage_status, status_table

    states = stage_status(load(config, set_, preset))
    if json_out:
        typer.echo(json.dumps([s.to_json() for s in states], indent=2))
    else:
        table_console().print(status_table(states))


def register(app: typer.Typer) -> None:
    """Add `run` and `status` to the facepipe app."""
    app.command("run")(run_cmd)
    app.command("status")(status_cmd)
