"""Method comparison: the same distillation recipe under several loss sets and seeds, scored on the benchmarks,
summarised as mean +- sample std per method (`facepipe compare`).

Every (method, seed) is an ordinary pipeline run named compare-<method>-s<seed>: the stage runner skips the
ones already complete and resumes an interrupted one, so a long comparison can be stopped and continued.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from facepipe.pipeline.errors import ConfigError


@dataclass(frozen=True)
class Method:
    """A row of the comparison: its loss terms (name, weight, params) and any further config overrides."""

    name: str
    losses: tuple[tuple[str, float, dict], ...]
    overrides: tuple[str, ...] = ()
    note: str = ""

    def loss_override(self) -> str:
        """distill.losses as one --set value (flow-style YAML)."""
        terms = []
        for name, weight, params in self.losses:
            extra = f", params: {json.dumps(params)}" if params else ""
            terms.append(f"{{name: {name}, weight: {weight}{extra}}}")
        return f"distill.losses=[{', '.join(terms)}]"

    def describe(self) -> str:
        text = " + ".join(f"{n}" if w == 1 else f"{n} x{w:g}" for n, w, _ in self.losses)
        return text + (f" ({self.note})" if self.note else "")


# The issue-17 table. Every distillation method keeps a label loss beside its KD term except the AdaDistill
# family, whose margin loss is itself the distillation (its class centres live in teacher space).
# rpsd's bank holds 3 batches (its paper's ratio) of the default batch of 64.
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("arcface", (("arcface", 1.0, {}),), note="no KD"),
    Method("feature_kd", (("arcface", 1.0, {}), ("feature_kd", 5.0, {}))),
    Method("ada_arc_distill", (("ada_arc_distill", 1.0, {"alpha": "hard"}),), note="alpha'"),
    Method("adaface_geom", (("adaface_geom", 1.0, {}),)),
    Method("iled_rpsd", (("arcface", 1.0, {}), ("iled", 1.0, {}), ("rpsd", 1.0, {"bank_size": 192}))),
    Method("adaface_geom_fkd", (("adaface_geom", 1.0, {}), ("feature_kd", 5.0, {})), note="the demo recipe"),
    Method("adaface_geom_fkd_dcgan", (("adaface_geom", 1.0, {}), ("feature_kd", 5.0, {})),
           overrides=("distill.generated_faces=1024",),
           note="+ 1024 DCGAN faces for the label-free term"),
)}


def pick_methods(names: Iterable[str] | None) -> list[Method]:
    """The named methods (all when names is empty), in table order; an unknown name is a ConfigError."""
    names = list(names or [])
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ConfigError(f"--method {unknown[0]!r}: unknown; known methods: {', '.join(METHODS)}")
    return [m for m in METHODS.values() if not names or m.name in names]


def run_name(prefix: str, method: Method, seed: int) -> str:
    return f"{prefix}-{method.name}-s{seed}"


def run_overrides(prefix: str, method: Method, seed: int) -> list[str]:
    """What turns the base config into this (method, seed) run. teacher.check is emptied: the teacher is
    scored once by the main pipeline, not in every comparison run."""
    return [f"run.name={run_name(prefix, method, seed)}", f"run.seed={seed}", "teacher.check=[]",
            method.loss_override(), *method.overrides]


@dataclass
class MethodResult:
    method: Method
    runs: dict[int, dict] = field(default_factory=dict)  # seed -> distill metrics.json

    def values(self, metric: str) -> list[float]:
        return [r["metrics"][metric] for r in self.runs.values() if metric in r.get("metrics", {})]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var)


def read_result(run_dir: Path) -> dict | None:
    """A finished run's distill metrics.json, or None."""
    path = run_dir / "distill" / "metrics.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def accuracy_metrics(results: list[MethodResult]) -> list[str]:
    """The `<benchmark>_accuracy` keys the finished runs report, in their order (lfw_accuracy, ...)."""
    keys: list[str] = []
    for res in results:
        for run in res.runs.values():
            keys += [k for k in run.get("metrics", {}) if k.endswith("_accuracy") and k not in keys]
    return keys


def summary(results: list[MethodResult], metrics: list[str]) -> list[dict]:
    """One row per method: n seeds, and mean / std / per-seed values of each metric; the distill stage's
    seconds (training, compiling and the final evaluation) and median img/s, averaged over the seeds."""
    rows = []
    for res in results:
        row: dict = {"method": res.method.name, "losses": res.method.describe(), "seeds": sorted(res.runs)}
        for metric in metrics:
            vals = res.values(metric)
            if vals:
                mean, std = mean_std(vals)
                row[metric] = {"mean": mean, "std": std, "values": vals}
        trains = [r.get("train", {}) for r in res.runs.values()]
        if trains:
            row["train_seconds"] = sum(t.get("seconds", 0.0) for t in trains) / len(trains)
            row["median_img_per_s"] = sum(t.get("median_img_per_s", 0.0) for t in trains) / len(trains)
            row["steps"] = trains[0].get("steps")
        rows.append(row)
    return rows


def _cell(row: dict, metric: str) -> str:
    m = row.get(metric)
    return f"{m['mean']:.2f} ± {m['std']:.2f}" if m else "—"


def metric_label(metric: str) -> str:
    """lfw_accuracy -> LFW, cfp_fp_accuracy -> CFP-FP (the benchmark's usual name)."""
    return metric.removesuffix("_accuracy").upper().replace("_", "-")


def markdown(rows: list[dict], metrics: list[str], caption: str) -> str:
    """The summary as a Markdown table (for the README)."""
    head = ["method", "losses", "seeds", *map(metric_label, metrics), "distill s / run"]
    lines = [caption, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], r["losses"], str(len(r["seeds"])), *(_cell(r, m) for m in metrics),
                 f"{r.get('train_seconds', 0):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rich_table(rows: list[dict], metrics: list[str], caption: str):
    from rich.table import Table

    t = Table(title="facepipe compare", caption=caption)
    for col in ("method", "losses", "seeds", *map(metric_label, metrics), "distill s", "img/s"):
        t.add_column(col, justify="left" if col in ("method", "losses") else "right")
    for r in rows:
        t.add_row(r["method"], r["losses"], ",".join(map(str, r["seeds"])), *(_cell(r, m) for m in metrics),
                  f"{r.get('train_seconds', 0):.0f}", f"{r.get('median_img_per_s', 0):.1f}")
    return t
