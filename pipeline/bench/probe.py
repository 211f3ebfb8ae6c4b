"""Child process of the latency bench: load ONE artifact, time it, write JSON.

    python -m facepipe.pipeline.bench.probe JOB.json OUT.json

JOB: {path, format, device, threads, batch_sizes, warmup, runs, jetson}. Only the runtime's forward
(`Embedder._forward` on an already preprocessed float32 batch) is timed: preprocessing is excluded, host <->
device copies of GPU runtimes are included. Runs alone in its process so that runtimes share neither RSS
nor thread pools; torch is imported only when the artifact's runtime needs it (its import alone costs
~150 MB of RSS).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

from .latency import current_rss_mb, latency_stats, peak_rss_mb


def _cuda_peak_mb(embedder, device: str) -> tuple[float | None, str]:
    """torch.cuda.max_memory_allocated for torch on CUDA; what is (not) measured otherwise."""
    if not device.startswith("cuda"):
        return None, "cpu: see peak RSS"
    if embedder.runtime == "torch" and "torch" in sys.modules:
        import torch

        return torch.cuda.max_memory_allocated() / 2**20, "torch.cuda.max_memory_allocated (tensors only)"
    return None, (f"{embedder.runtime} allocates GPU memory outside torch: not measured here (on Jetson the "
                  "GPU shares RAM: see tegrastats RAM)")


def _time_batch(embedder, x, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        embedder._forward(x)
        times.append(time.perf_counter() - t0)
    return times


def probe(job: dict) -> dict:
    """Load, warm up and time one artifact at each batch size; the result dict (status "ok")."""
    import numpy as np

    from facepipe.export.artifacts import load_artifact

    out: dict = {"rss_before_load_mb": current_rss_mb()}
    t0 = time.perf_counter()
    embedder = load_artifact(job["path"], device=job["device"], threads=job["threads"], fmt=job["format"])
    out["load_s"] = time.perf_counter() - t0
    if "torch" in sys.modules:  # torch's pool is process-wide: load_artifact leaves it to the caller
        import torch

        torch.set_num_threads(job["threads"])
    out["runtime"] = embedder.runtime
    out["rss_after_load_mb"] = current_rss_mb()
    if job["device"].startswith("cuda") and "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    sampler = None
    if job.get("jetson"):
        from .jetson import TegrastatsSampler

        sampler = TegrastatsSampler()
    rng = np.random.default_rng(0)
    size = embedder.preprocess.size
    out["latency"], out["jetson"] = {}, {}
    for bs in sorted(job["batch_sizes"]):  # ascending: the running peak RSS after each is that batch's peak
        x = embedder.preprocess(rng.integers(0, 256, (bs, size, size, 3), dtype=np.uint8))
        for _ in range(job["warmup"]):
            embedder._forward(x)
        if sampler is None:
            times = _time_batch(embedder, x, job["runs"])
        else:
            with sampler.during() as samples:
                times = _time_batch(embedder, x, job["runs"])
            out["jetson"][str(bs)] = samples.summary()
        out["latency"][str(bs)] = {**latency_stats(times, bs), "peak_rss_mb": peak_rss_mb()}
    out["peak_rss_mb"] = peak_rss_mb()
    out["model_rss_mb"] = out["peak_rss_mb"] - out["rss_before_load_mb"]
    out["cuda_max_allocated_mb"], out["gpu_memory"] = _cuda_peak_mb(embedder, job["device"])
    out["status"] = "ok"
    return out


def main(argv: list[str]) -> int:
    job_path, out_path = Path(argv[0]), Path(argv[1])
    job = json.loads(job_path.read_text())
    try:
        result = probe(job)
        code = 0
    except Exception as e:  # any failure becomes this artifact's status, never the parent's crash
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        result = {"status": f"error: {type(e).__name__}: {msg}"[:300], "traceback": traceback.format_exc()[-2000:]}
        code = 1
    out_path.write_text(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
