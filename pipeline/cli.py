"""The `facepipe` command line. Thin: every command imports its heavy libraries when it runs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from typer import Abort as _Abort, Exit as _Exit  # typer's own classes since 0.26, click's re-exported before

try:  # typer >= 0.26 vendors click as typer._click (click itself may well be absent)
    from typer._click.exceptions import ClickException as _ClickException
except ImportError:  # pragma: no cover - older typer depends on click and raises its exceptions
    from click import ClickException as _ClickException

from .commands.options import ConfigOpt, PresetOpt, SetOpt, load
from .errors import FacepipeError

app = typer.Typer(help="facepipe: distil, quantize, export and benchmark face-recognition models.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

config_app = typer.Typer(help="Show or validate pipeline.yaml.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(config: Path = ConfigOpt, set_: Optional[list[str]] = SetOpt, preset: Optional[str] = PresetOpt):
    """Print the resolved config (file + preset + overrides + defaults) as YAML."""
    from .config import dump_config

    typer.echo(dump_config(load(config, set_, preset)), nl=False)


@config_app.command("validate")
def config_validate(config_arg: Optional[Path] = typer.Argument(None, metavar="[CONFIG]",
                                                                help="Config file to check (or -c)."),
                    config: Path = ConfigOpt, set_: Optional[list[str]] = SetOpt):
    """Check a config file as `run` would: keys and types, registered names, and every stage's inputs
    (a dry run); exit 2 naming the first problem."""
    from .config import load_config
    from .runner import run_pipeline

    path = config_arg or config
    cfg = load_config(path, set_ or [])
    check_registered_names(cfg, path)
    plan = run_pipeline(cfg, dry_run=True, log=lambda _m: None)
    runs = [o.name for o in plan if o.status == "would run"]
    typer.echo(f"{path}: ok" + (f" (would run: {', '.join(runs)})" if runs else " (every stage fresh)"))


def check_registered_names(cfg, where) -> None:
    """Names the config picks from a registry (teacher.kind, distill.losses[].name) exist there."""
    from facepipe.models.losses import LOSSES

    from .errors import ConfigError
    from .teachers import TEACHER_SOURCES

    if cfg.teacher.kind != "auto" and cfg.teacher.kind not in TEACHER_SOURCES.names():
        raise ConfigError(f"{where}: teacher.kind={cfg.teacher.kind!r}: choose auto or one of "
                          f"{', '.join(TEACHER_SOURCES.names())}")
    for i, term in enumerate(cfg.distill.losses):
        if term.name not in LOSSES.names():
            raise ConfigError(f"{where}: distill.losses[{i}].name={term.name!r} is not a registered loss "
                              f"(known: {', '.join(LOSSES.names())})")


@app.command("env")
def env_cmd(json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON.")):
    """Versions, devices (CPU, CUDA, Jetson/Tegra) and which optional backends import."""
    from .device import environment_report, print_environment

    report = environment_report()
    print_environment(report)
    if json_out:
        from .io import atomic_write_json

        atomic_write_json(json_out, report)


def _add_command_modules() -> None:
    from .commands import bench as bench_cmds
    from .commands import compare as compare_cmds
    from .commands import data as data_cmds
    from .commands import distill as distill_cmds
    from .commands import eval as eval_cmds
    from .commands import export as export_cmds
    from .commands import models as models_cmds
    from .commands import quantize as quantize_cmds
    from .commands import run as run_cmds
    from .commands import teacher as teacher_cmds

    for mod in (run_cmds, data_cmds, teacher_cmds, distill_cmds, quantize_cmds, export_cmds, eval_cmds, models_cmds,
                bench_cmds, compare_cmds):
        mod.register(app)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: user errors become one line on stderr and exit code 2."""
    _add_command_modules()
    try:
        rc = app(args=argv, standalone_mode=False)
    except FacepipeError as e:
        typer.secho(f"error: {e}", err=True, fg="red")
        return e.exit_code
    except _Exit as e:
        return e.exit_code
    except _Abort:
        typer.echo("aborted", err=True)
        return 130
    except _ClickException as e:
        e.show()
        return e.exit_code
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
