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
