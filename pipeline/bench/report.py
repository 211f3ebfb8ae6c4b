"""Bench reports: a Rich table, bench.json, report.md, accuracy_vs_latency.png and roc.png.

Every row is a dict (see suite.bench_row): format, status, path, size_mb, runtime, precision, accuracy
{benchmark: fraction}, latency {batch: latency_stats}, threads, peak_rss_mb, model_rss_mb, cosine_to_torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..io import atomic_path, atomic_write_json, atomic_write_text


def _num(value, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def table_cells(rows: Sequence[dict], benchmarks: Sequence[str], batch_sizes: Sequence[int]
                ) -> tuple[list[str], list[list[str]]]:
    """(headers, cells): the one table layout shared by the terminal and the Markdown report."""
    headers = ["format", "status", "size MB", *(f"{b} acc %" for b in benchmarks)]
    for bs in batch_sizes:
        headers += [f"b{bs} ms p50/p90/p99", f"b{bs} img/s"]
    headers += ["threads", "peak RSS MB " + "/".join(f"b{bs}" for bs in batch_sizes), "cos vs torch"]
    cells = []
    for r in rows:
        acc = r.get("accuracy") or {}
        line = [r["format"], r["status"], _num(r.get("size_mb"), ".2f"),
                *(_num(acc[b] * 100 if acc.get(b) is not None else None, ".2f") for b in benchmarks)]
        for bs in batch_sizes:
            lat = (r.get("latency") or {}).get(str(bs))
            line += [f"{lat['p50_ms']:.2f}/{lat['p90_ms']:.2f}/{lat['p99_ms']:.2f}" if lat else "-",
                     _num(lat["img_per_s"] if lat else None)]
        peaks = [((r.get("latency") or {}).get(str(bs)) or {}).get("peak_rss_mb") for bs in batch_sizes]
        rss = "/".join(_num(p, ".0f") for p in peaks)
        line += [_num(r.get("threads"), "d"), rss, _num(r.get("cosine_to_torch"), ".5f")]
        cells.append(line)
    return headers, cells


def rich_table(rows: Sequence[dict], benchmarks: Sequence[str], batch_sizes: Sequence[int], title: str):
    from rich.table import Table
    from rich.text import Text

    headers, cells = table_cells(rows, benchmarks, batch_sizes)
    t = Table(title=title)
    for i, h in enumerate(headers):
        t.add_column(h, justify="left" if i < 2 else "right", overflow="fold")
    for line in cells:
        style = "green" if line[1] == "ok" else "red" if line[1].startswith("error") else "dim"
        t.add_row(line[0], Text(line[1], style=style), *line[2:])
    return t


def markdown_table(rows: Sequence[dict], benchmarks: Sequence[str], batch_sizes: Sequence[int]) -> str:
    headers, cells = table_cells(rows, benchmarks, batch_sizes)
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in line) + " |" for line in cells]
    return "\n".join(lines)


def _p50(row: dict, bs: int) -> float | None:
    lat = (row.get("latency") or {}).get(str(bs))
    return lat["p50_ms"] if lat else None


def int8_note(rows: Sequence[dict], benchmark: str | None, bs: int) -> str | None:
    """Speed-up of the fastest int8 artifact over PyTorch eager fp32 at batch `bs`, with its accuracy delta."""
    torch_row = next((r for r in rows if r["format"] == "torch" and _p50(r, bs)), None)
    int8 = [r for r in rows if r.get("precision") == "int8" and _p50(r, bs)]
    if torch_row is None or not int8:
        return None
    best = min(int8, key=lambda r: _p50(r, bs))
    note = (f"fastest int8 ({best['format']}) vs PyTorch eager fp32 at batch {bs}: {_p50(best, bs):.2f} ms vs "
            f"{_p50(torch_row, bs):.2f} ms p50, {_p50(torch_row, bs) / _p50(best, bs):.2f}x")
    a, b = (best.get("accuracy") or {}).get(benchmark), (torch_row.get("accuracy") or {}).get(benchmark)
    if benchmark and a is not None and b is not None:
        note += f"; {benchmark} accuracy {a * 100:.2f}% vs {b * 100:.2f}% ({(a - b) * 100:+.2f} points)"
    return note


def environment_lines(env: dict) -> list[str]:
    cpu = env.get("cpu", {})
    pk = env.get("packages", {})
    lines = [f"- facepipe {env.get('facepipe')}, Python {env.get('python')}, {env.get('platform')}",
             f"- CPU: {cpu.get('model')}, {(cpu.get('isa') or {}).get('summary', 'ISA unknown')} ({cpu.get('usable')} of "
             f"{cpu.get('count')} cores usable), load average "
             f"before the bench {env.get('loadavg_before') or '-'} (1/5/15 min)",
             "- " + ", ".join(f"{k} {pk[k]}" for k in ("torch", "onnxruntime", "openvino", "tensorrt") if k in pk)]
    for d in (env.get("cuda") or {}).get("devices", []):
        lines.append(f"- cuda:{d['index']}: {d['name']} ({d['memory_mib']} MiB)")
    jetson = env.get("jetson")
    if jetson:
        mode = (jetson.get("power_mode") or {}).get("mode", "unknown")
        lines.append(f"- Jetson {jetson.get('model')}: L4T {jetson.get('l4t')}, JetPack {jetson.get('jetpack')}, "
                     f"power mode {mode}")
    return lines


def write_markdown(path: Path, rows: Sequence[dict], benchmarks: Sequence[str], batch_sizes: Sequence[int],
                   env: dict, command: str, notes: Sequence[str], figures: dict[str, Path] | None = None) -> Path:
    """report.md: the table, notes, `figures` ({caption: PNG beside the report}), environment and command."""
    figs = [f"![{caption}]({Path(png).name})" for caption, png in (figures or {}).items()]
    text = "\n".join(["# facepipe bench", "", markdown_table(rows, benchmarks, batch_sizes), "",
                      *(["## Figures", "", *figs, ""] if figs else []),
                      "## Notes", "", *(f"- {n}" for n in notes), "", "## Environment", "",
                      *environment_lines(env), "", "## Command", "", "```", command, "```", ""])
    return atomic_write_text(path, text)


def write_json(path: Path, report: dict) -> Path:
    return atomic_write_json(path, report)


def plot_accuracy_vs_latency(rows: Sequence[dict], benchmark: str | None, bs: int, path: Path) -> Path:
    """One labelled point per artifact: p50 ms at batch `bs` against accuracy on `benchmark`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r["format"], _p50(r, bs), (r.get("accuracy") or {}).get(benchmark)) for r in rows]
    points = [(f, x, y * 100) for f, x, y in points if x is not None and y is not None]
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    for label, x, y in points:
        ax.scatter([x], [y], s=36)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if not points:
        ax.text(0.5, 0.5, "no artifact has both latency and accuracy", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel(f"p50 latency at batch {bs} (ms)")
    ax.set_ylabel(f"{benchmark or 'benchmark'} accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.set_title("accuracy vs latency")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def plot_roc_or_empty(curves: list, path: Path, title: str) -> Path:
    """plot_roc, or a figure saying there is nothing to plot (the stage always writes roc.png)."""
    if curves:
        from ..plots import plot_roc

        return plot_roc(curves, path, title=title)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    ax.text(0.5, 0.5, "no ROC: no artifact was scored on a pair benchmark", ha="center", va="center")
    ax.set_axis_off()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
