"""`facepipe models list|info`: registered architectures with their parameters, MACs/FLOPs and footprint."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError, first_line
from ..progress import table_console


def register(app: typer.Typer) -> None:
    """Add the `models` sub-command group to `app`."""
    models_app = typer.Typer(help="Registered architectures, their size and cost.", no_args_is_help=True)
    models_app.command("list")(models_list)
    models_app.command("info")(models_info)
    app.add_typer(models_app, name="models")


def _measure(arch: str, embedding_size: int, input_size: int):
    """Build `arch` on the CPU and profile one forward pass at input_size x input_size."""
    import torch

    from facepipe.models.complexity import profile
    from facepipe.models.registry import build_model

    # The meta device would skip weight init, but its one-time warm-up (~4 s) costs more than it saves.
    torch.set_num_threads(1)
    model = build_model(arch, embedding_size=embedding_size)
    try:
        return profile(model, input_size)
    except RuntimeError as e:  # e.g. an input size the head's fixed 7x7 kernel / FC cannot take
        raise ConfigError(f"--input-size {input_size} does not fit {arch}: {first_line(e)}") from None


def models_list(input_size: int = typer.Option(112, "--input-size", help="Square input side in pixels.")) -> None:
    """Table of registered architectures with parameters and MACs at the default embedding size (512)."""
    from rich.table import Table

    from facepipe.models.complexity import human_count
    from facepipe.models.registry import list_models

    table = Table(title=f"architectures (embedding 512, {input_size}x{input_size})")
    for col in ("architecture", "params", "MACs", "FLOPs"):
        table.add_column(col, justify="left" if col == "architecture" else "right")
    for name in list_models():
        c = _measure(name, 512, input_size)
        table.add_row(name, f"{c.params:,}", human_count(c.macs), human_count(c.flops))
    table_console().print(table)


def models_info(arch: str = typer.Argument(..., help="Architecture name (see `facepipe models list`)."),
                embedding_size: int = typer.Option(512, "--embedding-size", "-e", help="Embedding dimension."),
                input_size: int = typer.Option(112, "--input-size", help="Square input side in pixels."),
                json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the numbers as JSON."),
                layers: bool = typer.Option(False, "--layers", help="Also print the per-layer breakdown.")) -> None:
    """Parameters, FLOPs, MACs and weight footprint per dtype of one architecture."""
    from rich.table import Table

    from facepipe.models.complexity import human_count, memory_footprint

    if embedding_size < 1:
        raise ConfigError(f"--embedding-size must be a positive integer, got {embedding_size}")
    if input_size < 1:
        raise ConfigError(f"--input-size must be a positive integer, got {input_size}")
    c = _measure(arch, embedding_size, input_size)
    footprint = memory_footprint(c.params)

    console = table_console()
    summary = Table(title=f"{arch} (embedding {embedding_size}, {input_size}x{input_size})", show_header=False)
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    summary.add_row("parameters", f"{c.params:,}")
    summary.add_row("MACs", f"{c.macs:,} ({human_count(c.macs)})")
    summary.add_row("FLOPs", f"{c.flops:,} ({human_count(c.flops)})")
    console.print(summary)

    sizes = Table(title="weight footprint")
    for col in ("dtype", "bytes", "MB", "MiB"):
        sizes.add_column(col, justify="left" if col == "dtype" else "right")
    for dtype, f in footprint.items():
        sizes.add_row(dtype, f"{f['bytes']:,}", f"{f['mb']:.2f}", f"{f['mib']:.2f}")
    console.print(sizes)

    if layers:
        per_layer = Table(title="layers")
        for col in ("layer", "type", "output", "params", "MACs", "FLOPs"):
            per_layer.add_column(col)
        for layer in c.layers:
            per_layer.add_row(layer.name, layer.kind, "x".join(map(str, layer.output_shape)), f"{layer.params:,}",
                              f"{layer.macs:,}", f"{layer.flops:,}")
        console.print(per_layer)

    if json_out:
        from ..io import atomic_write_json

        atomic_write_json(json_out, {"architecture": arch, "embedding_size": embedding_size,
                                     **c.to_dict(layers=layers), "footprint": footprint})
