"""`facepipe quantize`: PTQ / QAT of the student, through the stage runner or standalone (--student/--out)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .options import ConfigOpt, SetOpt, load
from ..errors import ConfigError

BITS = range(2, 9)  # what the fake quantizers support; 8 and 6 are the measured settings

HELP = "\n\n".join([
    "Quantize the distilled student (the quantize section of pipeline.yaml): PTQ, then optional QAT against "
    "the fp32 student on real, synthetic (DCGAN / a folder) or data-free (DeepInversion) faces.",
    "By default runs the pipeline up to the quantize stage (teacher and distill first when stale) and writes "
    "runs/RUN/quantize/. With --student PATH --out DIR it quantizes any student.pt on its own, without the "
    "runner. An unfinished QAT run of the same configuration resumes from its checkpoint; --restart discards it.",
])


def _check_bits(option: str, value: Optional[int]) -> None:
    if value is not None and value not in BITS:
        raise ConfigError(f"{option} {value}: unsupported bit width; use {BITS.start}..{BITS.stop - 1} "
                          "(8 and 6 are the tested settings)")


def _overrides(set_: Optional[list[str]], bits, wbits, abits, mode, data, data_path, steps, backend) -> list[str]:
    """The command's options as --set overrides (so config errors name them the same way)."""
    for option, value in (("--bits", bits), ("--wbits", wbits), ("--abits", abits)):
        _check_bits(option, value)
    out = list(set_ or [])
    for key, value in (("quantize.wbits", bits), ("quantize.abits", bits), ("quantize.wbits", wbits),
                       ("quantize.abits", abits), ("quantize.mode", mode), ("quantize.data", data),
                       ("quantize.steps", steps), ("quantize.backend", backend)):
        if value is not None:
            out.append(f"{key}={value}")
    if data_path is not None:
        out.append(f"quantize.data_path={str(data_path)!r}")  # quoted: a path is a YAML string
    return out


def _layer_bits(items: Optional[list[str]]) -> list[str]:
    """--layer-bits LAYER=BITS (repeatable) as one quantize.layer_bits override (it replaces the config's)."""
    import json

    if not items:
        return []
    table = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        if not sep or not name.strip() or not value.strip().isdigit():
            raise ConfigError(f"--layer-bits {item!r}: expected LAYER=BITS, e.g. first=8 or 'layers.conv_1*'=8")
        _check_bits("--layer-bits", int(value))
        table[name.strip()] = int(value)
    return [f"quantize.layer_bits={json.dumps(table)}"]  # JSON is YAML: layer names may hold dots


def quantize_command(
    config: Path = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    bits: Optional[int] = typer.Option(None, "--bits", help="Weight and activation bits (8 or 6)."),
    wbits: Optional[int] = typer.Option(None, "--wbits", help="Weight bits (overrides --bits)."),
    abits: Optional[int] = typer.Option(None, "--abits", help="Activation bits (overrides --bits)."),
    mode: Optional[str] = typer.Option(None, "--mode", help="ptq | qat."),
    data: Optional[str] = typer.Option(None, "--data", help="real | synthetic | inversion."),
    data_path: Optional[Path] = typer.Option(None, "--data-path", help="Folder of face images (real or "
                                             "synthetic); synthetic without it uses the packaged DCGAN."),
    steps: Optional[int] = typer.Option(None, "--steps", min=0, help="QAT optimizer steps."),
    backend: Optional[str] = typer.Option(None, "--backend", help="own (any bits) | nncf (8-bit, needs nncf)."),
    model: Optional[str] = typer.Option(None, "--model", help="Quantize this model instead of the distilled "
                                        "student (quantize.model): an .onnx, an insightface pack, sface, a "
                                        "checkpoint. ONNX is imported into torch and checked against ONNX Runtime."),
    layer_bits: Optional[list[str]] = typer.Option(None, "--layer-bits", help="Per-layer bits LAYER=BITS "
                                                   "(repeatable; quantize.layer_bits), e.g. first=8 last=8."),
    student: Optional[Path] = typer.Option(None, "--student", help="Standalone: the student.pt to quantize."),
    out: Optional[Path] = typer.Option(None, "--out", help="Standalone: output folder (with --student or --model)."),
    restart: bool = typer.Option(False, "--restart", help="Discard an unfinished QAT checkpoint and start over."),
):
    from rich.console import Console

    from ..quant.job import CHECKPOINT, check_config

    over = _overrides(set_, bits, wbits, abits, mode, data, data_path, steps, backend)
    if model is not None:
        over.append(f"quantize.model={model!r}")
    over += _layer_bits(layer_bits)
    cfg = load(config, over)
    console = Console()
    say = lambda msg: console.print(msg, markup=False, highlight=False)  # noqa: E731
    if student is not None and model is not None:
        raise ConfigError("--student and --model both name the model to quantize: give one")
    if out is not None and student is None and model is None:
        raise ConfigError("--out needs --student PATH or --model MODEL (the model to quantize standalone)")
    if model is not None and out is not None:
        from ..quant.job import load_configured_model, quantize_model
        from ..quant.plan import QuantPlan

        if restart:
            (out / CHECKPOINT).unlink(missing_ok=True)
        plan = QuantPlan.from_config(cfg)
        check_config(plan)
        quantize_model(plan, load_configured_model(plan, model, say=say), out, say=say)
        say(f"quantize: wrote {out}")
        return
    if student is not None and out is None:
        raise ConfigError("--student and --out go together: --student PATH --out DIR quantizes one student.pt "
                          "without the pipeline")
    if student is not None:
        from ..quant.job import CHECKPOINT, quantize_student

        if restart:
            (out / CHECKPOINT).unlink(missing_ok=True)
        from ..quant.plan import QuantPlan

        quantize_student(QuantPlan.from_config(cfg), student, out, say=say)
        say(f"quantize: wrote {out}")
        return
    from ..quant.plan import QuantPlan
    from ..runner import outcomes_table, run_pipeline

    if not cfg.quantize.enabled:
        raise ConfigError("quantize.enabled is false: set it to true (--set quantize.enabled=true) to quantize")
    check_config(QuantPlan.from_config(cfg))
    if restart:
        (cfg.run_dir() / "quantize" / CHECKPOINT).unlink(missing_ok=True)
    record: list = []
    try:  # a given model (quantize.model) needs no teacher or distill stage
        run_pipeline(cfg, from_="quantize" if cfg.quantize.model else None, to="quantize",
                     force=("quantize",) if restart else (), record=record, log=say)
    finally:
        if record:
            console.print(outcomes_table(record, title="facepipe quantize"))
    for o in record:
        if o.name == "quantize" and o.status == "skipped":
            say("quantize is fresh: nothing to do (--restart quantizes again)")


quantize_command.__doc__ = HELP


def register(app: typer.Typer) -> None:
    """Add `quantize` to the facepipe app."""
    app.command("quantize", help=HELP)(quantize_command)
