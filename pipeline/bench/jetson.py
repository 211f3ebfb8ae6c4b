"""Jetson facts for the bench: tegrastats sampling (RAM, GPU load, power rails), nvpmodel power mode, L4T.

tegrastats lines differ between boards and releases (Nano: POM_5V_IN 2410/2410; Xavier NX: VDD_IN 4186/4186;
Orin: VDD_IN 4578mW/4578mW, VIN_SYS_5V0 3020mW/3020mW); every "NAME current/average" field, with or without
mW, is read as a power rail in mW.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Iterator

from ..device import DEVICE_TREE_MODEL, TEGRA_RELEASE, detect_jetson
from ..io import die_with_parent
from ..errors import BackendUnavailable

_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?![\w/])")
NOT_RAILS = {"RAM", "SWAP", "IRAM", "LFB"}
# The board's total input power, in order of preference (the name depends on the module).
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0", "SYS5V")


def parse_tegrastats(line: str) -> dict:
    """One tegrastats line -> {ram_used_mb, ram_total_mb, gr3d_pct, rails_mw {name: current mW}} (keys
    present only when the line has them)."""
    out: dict = {}
    if m := _RAM.search(line):
        out["ram_used_mb"], out["ram_total_mb"] = int(m[1]), int(m[2])
    if m := _GR3D.search(line):
        out["gr3d_pct"] = int(m[1])
    rails = {m[1]: int(m[2]) for m in _RAIL.finditer(line) if m[1] not in NOT_RAILS}
    if rails:
        out["rails_mw"] = rails
    return out


def _mean_peak(values: list[float]) -> dict | None:
    return {"mean": sum(values) / len(values), "peak": max(values)} if values else None


def summarize(samples: list[dict]) -> dict:
    """Mean and peak of RAM used, GR3D % and every rail over parsed samples; `power_mw` is the total input
    rail (VDD_IN / POM_5V_IN / VIN_SYS_5V0 / SYS5V, the first present)."""
    out: dict = {"samples": len(samples)}
    out["ram_used_mb"] = _mean_peak([s["ram_used_mb"] for s in samples if "ram_used_mb" in s])
    totals = [s["ram_total_mb"] for s in samples if "ram_total_mb" in s]
    out["ram_total_mb"] = totals[-1] if totals else None
    out["gr3d_pct"] = _mean_peak([s["gr3d_pct"] for s in samples if "gr3d_pct" in s])
    names = list(dict.fromkeys(n for s in samples for n in s.get("rails_mw", {})))
    out["rails_mw"] = {n: _mean_peak([s["rails_mw"][n] for s in samples if n in s.get("rails_mw", {})])
                       for n in names}
    total = next((n for n in TOTAL_RAILS if n in out["rails_mw"]), None)
    out["power_rail"] = total
    out["power_mw"] = out["rails_mw"][total] if total else None
    return out


class Samples:
    """Lines parsed so far by a running sampler."""

    def __init__(self):
        self.items: list[dict] = []
        self.lock = threading.Lock()

    def add(self, parsed: dict) -> None:
        with self.lock:
            self.items.append(parsed)

    def summary(self) -> dict:
        with self.lock:
            return summarize(list(self.items))


class TegrastatsSampler:
    """Runs `tegrastats --interval N` in the background while a block executes."""

    def __init__(self, interval_ms: int = 100, command: str = "tegrastats"):
        exe = shutil.which(command)
        if exe is None:
            raise BackendUnavailable(f"{command} not found on PATH: it ships with L4T (Jetson Linux) in "
                                     "/usr/bin; run the bench on the Jetson itself")
        self.argv = [exe, "--interval", str(int(interval_ms))]

    @contextlib.contextmanager
    def during(self) -> Iterator[Samples]:
        samples = Samples()
        proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                preexec_fn=die_with_parent)  # never outlives the probe
        reader = threading.Thread(target=self._read, args=(proc, samples), daemon=True)
        reader.start()
        try:
            yield samples
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            reader.join(timeout=5)

    @staticmethod
    def _read(proc: subprocess.Popen, samples: Samples) -> None:
        for line in proc.stdout:
            parsed = parse_tegrastats(line)
            if parsed:
                samples.add(parsed)


def parse_nvpmodel(text: str) -> dict:
    """`nvpmodel -q` output -> {mode: "MAXN" | "15W" | ..., id: int | None}; empty dict when unparsable."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "nv power mode":
            mode_id = None
            if i + 1 < len(lines) and lines[i + 1].isdigit():
                mode_id = int(lines[i + 1])
            return {"mode": value.strip(), "id": mode_id}
    return {}


def power_mode() -> dict:
    """The current nvpmodel power mode, or {"error": why} when nvpmodel is absent or fails."""
    exe = shutil.which("nvpmodel")
    if exe is None:
        return {"error": "nvpmodel not found"}
    try:
        done = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"nvpmodel -q: {e}"}
    return parse_nvpmodel(done.stdout) or {"error": f"nvpmodel -q: unrecognised output {done.stdout[:80]!r}"}


def require_jetson(tegra_release: str | Path = TEGRA_RELEASE, device_tree_model: str | Path = DEVICE_TREE_MODEL
                   ) -> dict:
    """detect_jetson() facts plus the power mode; BackendUnavailable when this is not a Jetson."""
    info = detect_jetson(tegra_release, device_tree_model)
    if info is None:
        raise BackendUnavailable(f"--device jetson: not a Jetson: {tegra_release} not found and "
                                 f"{device_tree_model} names no Jetson; use --device cpu or cuda")
    return {**info, "power_mode": power_mode()}
