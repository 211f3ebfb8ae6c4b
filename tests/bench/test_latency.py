"""Latency probe: one artifact per child process; failures of any kind become an error status."""

from __future__ import annotations

import sys

import pytest

from facepipe.pipeline.bench import latency
from facepipe.pipeline.bench.latency import latency_stats, measure_latency


def _check_ok(res: dict, batch_sizes) -> None:
    assert res["status"] == "ok", res["status"]
    for bs in batch_sizes:
        lat = res["latency"][str(bs)]
        assert 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
        assert lat["runs"] == 4 and lat["img_per_s"] > 0 and lat["ms_per_image"] == pytest.approx(lat["p50_ms"] / bs)
        assert lat["peak_rss_mb"] > 0
    assert res["peak_rss_mb"] >= res["rss_after_load_mb"] > res["rss_before_load_mb"] > 0
    assert res["threads"] == 1 and res["cuda_max_allocated_mb"] is None


@pytest.mark.parametrize("fmt", ["onnx", pytest.param("torch", marks=pytest.mark.slow)])  # torch: also in test_suite
def test_probe_measures_a_real_artifact(tiny_artifacts, fmt):
    res = measure_latency(tiny_artifacts[fmt], fmt, threads=1, batch_sizes=[2, 1], warmup=1, runs=4)
    _check_ok(res, [1, 2])
    assert res["runtime"] == {"onnx": "onnxruntime", "torch": "torch"}[fmt]
    # ascending batch order: the larger batch's running peak includes the smaller one's
    assert res["latency"]["2"]["peak_rss_mb"] >= res["latency"]["1"]["peak_rss_mb"]


def test_child_peak_rss_is_its_own(tiny_artifacts):
    """Linux carries ru_maxrss over fork + exec: a big parent must not inflate the child's peak."""
    import numpy as np

    ballast = np.ones(400 * 2**20, np.uint8)  # 400 MB resident in this process
    res = measure_latency(tiny_artifacts["onnx"], "onnx", batch_sizes=[1], warmup=0, runs=1)
    assert ballast.sum() > 0 and res["status"] == "ok"
    assert res["peak_rss_mb"] < 300, res["peak_rss_mb"]


def test_latency_stats_percentiles():
    s = latency_stats([0.001 * i for i in range(1, 101)], batch_size=4)
    assert s["p50_ms"] == pytest.approx(50.5) and s["p90_ms"] == pytest.approx(90.1)
    assert s["p99_ms"] == pytest.approx(99.01) and s["img_per_s"] == pytest.approx(4000 / 50.5)


def test_broken_artifact_gives_an_error_status(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx model")
    res = measure_latency(bad, "onnx", batch_sizes=[1], warmup=0, runs=1)
    # the child's exception, one line (export's loader currently lets onnx's DecodeError through)
    assert res["status"].startswith("error: ") and "\n" not in res["status"]


def test_crashing_child_gives_an_error_status(tmp_path, monkeypatch):
    crash = "import os, sys; sys.stderr.write('boom\\n'); os.abort()"
    monkeypatch.setattr(latency, "probe_command", lambda job, out: [sys.executable, "-c", crash])
    res = measure_latency(tmp_path / "x.onnx", "onnx", batch_sizes=[1], runs=1)
    assert res["status"] == "error: child killed by SIGABRT (boom)"


def test_hanging_child_times_out(tmp_path, monkeypatch):
    hang = "import time; time.sleep(60)"
    monkeypatch.setattr(latency, "probe_command", lambda job, out: [sys.executable, "-c", hang])
    res = measure_latency(tmp_path / "x.onnx", "onnx", batch_sizes=[1], runs=1, timeout_s=0.5)
    assert res["status"] == "error: timed out after 0.5 s"


def test_child_threads_are_pinned():
    env = latency.child_env(3)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
