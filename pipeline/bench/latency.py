"""Latency and memory of one artifact, measured in a fresh child process (probe.py).

A child per artifact keeps runtimes from sharing RSS or thread pools; a child that crashes, fails or times
out gives that artifact an "error: ..." status instead of stopping the bench.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import die_with_parent, remove_orphans

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
DEFAULT_TIMEOUT_S = 1800.0


def latency_stats(seconds: Sequence[float], batch_size: int) -> dict:
    """p50/p90/p99/mean/min ms per batch, ms per image and images per second (from the median)."""
    ms = np.asarray(seconds, dtype=float) * 1000.0
    p50, p90, p99 = (float(np.percentile(ms, q)) for q in (50, 90, 99))
    return {"batch_size": int(batch_size), "runs": int(ms.size), "p50_ms": p50, "p90_ms": p90, "p99_ms": p99,
            "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "ms_per_image": p50 / batch_size,
            "img_per_s": batch_size * 1000.0 / p50 if p50 > 0 else float("inf")}


def _proc_status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def current_rss_mb() -> float:
    """This process's resident set now (VmRSS), in MB; the peak so far when /proc is absent."""
    rss = _proc_status_mb("VmRSS")
    return peak_rss_mb() if rss is None else rss


def peak_rss_mb() -> float:
    """Peak resident set of this process, in MB: VmHWM where /proc exists, else getrusage ru_maxrss.

    Linux keeps ru_maxrss across fork + exec, so a child started by a 400 MB parent would report at least
    400 MB; VmHWM belongs to the new address space and starts afresh at exec.
    """
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, KiB on Linux


PROBE_PREFIX = "facepipe-probe-"  # + <pid of the bench>-<random>: a temp folder per probe run


def _probe_pid(name: str) -> int | None:
    head = name[len(PROBE_PREFIX):].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def probe_command(job_file: Path, out_file: Path) -> list[str]:
    return [sys.executable, "-m", "facepipe.pipeline.bench.probe", str(job_file), str(out_file)]


def child_env(threads: int) -> dict[str, str]:
    """The parent's environment with every thread-pool size pinned to `threads`."""
    env = dict(os.environ)
    env.update({k: str(threads) for k in THREAD_ENV})
    return env


def measure_latency(path: str | os.PathLike, fmt: str, *, device: str = "cpu", threads: int = 1,
                    batch_sizes: Sequence[int] = (1, 32), warmup: int = 10, runs: int = 50, jetson: bool = False,
                    timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """Run probe.py on one artifact; its result dict, whose "status" is "ok" or "error: ...".

    Keys when ok: latency {batch: latency_stats}, rss_before_load_mb, rss_after_load_mb, peak_rss_mb,
    model_rss_mb (peak - before load: the runtime's libraries, the weights and the activations),
    cuda_max_allocated_mb, gpu_memory (what was measured), jetson {batch: tegrastats summary}, load_s.
    """
    job = {"path": str(path), "format": fmt, "device": device, "threads": int(threads),
           "batch_sizes": [int(b) for b in batch_sizes], "warmup": int(warmup), "runs": int(runs),
           "jetson": bool(jetson)}
    remove_orphans(tempfile.gettempdir(), f"{PROBE_PREFIX}*", _probe_pid)  # left by a bench killed with -9
    with tempfile.TemporaryDirectory(prefix=f"{PROBE_PREFIX}{os.getpid()}-") as tmp:
        job_file, out_file = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_file.write_text(json.dumps(job))
        # own session: on timeout the whole group (the child and any tegrastats it started) is killed
        # and it dies with this process, even when this one is killed with -9 (no orphan keeps timing)
        proc = subprocess.Popen(probe_command(job_file, out_file), env=child_env(threads), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=die_with_parent)
        try:
            _, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {"status": f"error: timed out after {timeout_s:g} s"}
        result = _read_result(out_file)
    if result is not None:
        result["threads"] = int(threads)
        return result
    return {"status": f"error: {_exit_reason(proc.returncode)}{_last_line(stderr)}"}


def _read_result(out_file: Path) -> dict | None:
    try:
        result = json.loads(out_file.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return result if isinstance(result, dict) and "status" in result else None


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"child killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"child killed by signal {-code}"
    return f"child exited with code {code}"


def _last_line(stderr: str | None) -> str:
    lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip()]
    return f" ({lines[-1][:200]})" if lines else ""
