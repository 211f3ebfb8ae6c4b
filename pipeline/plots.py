"""Plots people would rather look at than read: ROC curves (and, later, accuracy vs latency)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .io import atomic_path


def plot_roc(curves: Iterable[tuple[str, object, object]], path: Path, title: str = "ROC") -> Path:
    """Write a log-FPR ROC plot of (label, fpr, tpr) curves to a PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    for label, fpr, tpr in curves:
        fpr = np.asarray(fpr, dtype=float)
        keep = fpr > 0
        ax.plot(fpr[keep], np.asarray(tpr, dtype=float)[keep], label=label, lw=1.5)
    ax.set_xscale("log")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_ylim(0.5, 1.0)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def plot_methods(rows: list[dict], metrics: Iterable[tuple[str, str]], path: Path, title: str) -> Path:
    """Per method, each seed's score (dots) and the mean +- std (bar), one panel per (metric key, label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(metrics)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 0.45 * len(rows) + 1.8), dpi=110,
                             squeeze=False)
    names = [r["method"] for r in rows]
    for ax, (key, label) in zip(axes[0], metrics):
        for y, r in enumerate(rows):
            m = r.get(key)
            if not m:
                continue
            ax.errorbar(m["mean"], y, xerr=m["std"], fmt="o", color="C0", capsize=3)
            ax.scatter(m["values"], [y] * len(m["values"]), s=10, color="C1", zorder=3)
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_xlabel(f"{label} accuracy (%)")
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
