"""Accuracy floors: `--floor lfw=0.99` turns the bench into a gate (checked after every report is written)."""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

from ..errors import ConfigError, StageError


class FloorMissed(StageError):
    """At least one artifact scored below an accuracy floor (or could not be scored)."""


def parse_floor(text: str) -> tuple[str, float]:
    """"lfw=0.99" -> ("lfw", 0.99). Floors are accuracies as fractions in (0, 1]."""
    name, sep, raw = text.partition("=")
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not sep or not name.strip() or not math.isfinite(value):
        raise ConfigError(f"--floor {text!r}: expected BENCHMARK=FRACTION, e.g. --floor lfw=0.99")
    return name.strip(), check_floor(name.strip(), value, f"--floor {text}")


def check_floor(name: str, value: float, where: str) -> float:
    if not 0 < value <= 1:
        hint = f" (as a fraction: {value / 100:g})" if 1 < value <= 100 else ""
        raise ConfigError(f"{where}: accuracy floors are fractions in (0, 1], got {value:g}{hint}")
    return float(value)


def validate_floors(floors: Mapping[str, float], evaluated: Sequence[str], where: str = "bench.floors") -> None:
    """ConfigError when a floor names a benchmark that is not evaluated, or is not a fraction."""
    for name, value in floors.items():
        check_floor(name, value, f"{where}.{name}")
        if name not in evaluated:
            have = ", ".join(evaluated) or "none (no benchmarks)"
            raise ConfigError(f"{where}.{name}: benchmark {name!r} is not evaluated (evaluated: {have}); add it "
                              "to --benchmarks / bench.benchmarks or drop the floor")


def floor_misses(rows: Iterable[dict], floors: Mapping[str, float]) -> list[str]:
    """One line per (artifact, benchmark) below its floor. Rows that ran but were not scored (an error)
    miss too: a gate must not pass on a model that was never measured. Missing / skipped rows do not."""
    misses = []
    for row in rows:
        if row["status"].startswith(("missing", "skipped")):
            continue
        acc = row.get("accuracy") or {}
        for name, floor in floors.items():
            got = acc.get(name)
            if got is None:
                misses.append(f"{row['format']}: {name} not measured ({row['status']}), floor {floor:.4f}")
            elif got < floor:
                misses.append(f"{row['format']}: {name} accuracy {got:.4f} < floor {floor:.4f}")
    return misses


def enforce(misses: Sequence[str], report: str) -> None:
    """Raise FloorMissed naming every miss (after the reports are written)."""
    if misses:
        raise FloorMissed(f"accuracy floor missed: {'; '.join(misses)} (report: {report})")
