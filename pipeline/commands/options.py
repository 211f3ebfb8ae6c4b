"""Options and config loading shared by every command (the commands import this, never pipeline/cli.py, so
cli -> commands is the only direction)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

ConfigOpt = typer.Option(Path("pipeline.yaml"), "--config", "-c", help="Pipeline config file.")
SetOpt = typer.Option(None, "--set", help="Override a config key, e.g. --set distill.lr=0.05 (repeatable).")
PresetOpt = typer.Option(None, "--preset", help="Named overrides applied before --set: smoke (the whole chain "
                         "in a few minutes, for CI).")


def load(config: Path, overrides: Optional[list[str]], preset: Optional[str] = None):
    """Load the config for a command (defaults when the default pipeline.yaml is absent)."""
    from ..config import load_config

    if config == Path("pipeline.yaml") and not config.exists():
        return load_config(None, overrides or [], preset)
    return load_config(config, overrides or [], preset)
