"""One bench of real tiny artifacts (torch + ONNX, a missing and a GPU-only format) on a tiny .bin: rows,
accuracy through each runtime, reports, floors; and the standalone command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facepipe.pipeline.bench import gate
from facepipe.pipeline.bench.suite import MISSING, BenchSettings, bench_artifacts, stage_metrics
from facepipe.pipeline.errors import ConfigError


@pytest.fixture(scope="module")
def outcome(tiny_artifacts, pairs_bin, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    items = {"torch": tiny_artifacts["torch"], "onnx": tiny_artifacts["onnx"], "onnx_int8": None,
             "tensorrt": out / "student.engine"}
    settings = BenchSettings(benchmarks=[str(pairs_bin)], batch_sizes=[1, 4], warmup=1, runs=3, threads=1,
                             cache_dir=out / "cache", cosine_faces=8)
    return bench_artifacts(items, settings, out, command="facepipe bench --test"), out


def test_rows(outcome):
    result, _ = outcome
    rows = {r["format"]: r for r in result.rows}
    assert list(rows) == ["torch", "onnx", "onnx_int8", "tensorrt"]  # the requested order
    assert rows["torch"]["status"] == rows["onnx"]["status"] == "ok"
    assert rows["onnx_int8"]["status"] == MISSING
    assert rows["tensorrt"]["status"].startswith("skipped: needs an NVIDIA GPU")
    assert rows["onnx"]["size_mb"] > 1 and rows["onnx"]["latency"]["4"]["p50_ms"] > 0
    assert rows["onnx"]["cosine_to_torch"] > 0.9999 and rows["torch"]["cosine_to_torch"] == pytest.approx(1.0)
    metrics = stage_metrics(result.rows, [1, 4])
    assert set(metrics) == {"torch_tiny_accuracy", "onnx_tiny_accuracy", "torch_p50_ms_b1", "onnx_p50_ms_b1"}


def test_accuracy_through_onnxruntime_equals_torch(outcome):
    rows = {r["format"]: r for r in outcome[0].rows}
    a_torch, a_ort = rows["torch"]["accuracy"]["tiny"], rows["onnx"]["accuracy"]["tiny"]
    assert 0.6 < a_torch < 1.0
    assert abs(a_torch - a_ort) <= 1 / 20 + 1e-9  # at most one pair of 20 flips on a float rounding


def test_cache_keys_differ_by_runtime(tiny_artifacts):
    from facepipe.pipeline.bench.accuracy import ArtifactSource

    fp = lambda fmt, rt, dev="cpu": ArtifactSource(tiny_artifacts[fmt], fmt, rt, dev).fingerprint()  # noqa: E731
    assert len({fp("onnx", "onnxruntime"), fp("onnx", "openvino"), fp("torch", "torch"),
                fp("onnx", "onnxruntime", "cuda:0")}) == 4
    assert fp("onnx", "onnxruntime") == fp("onnx", "onnxruntime")


def test_reports_written(outcome):
    result, out = outcome
    doc = json.loads((out / "bench.json").read_text())
    assert doc["command"] == "facepipe bench --test" and "packages" in doc["environment"]
    assert [r["format"] for r in doc["artifacts"]] == ["torch", "onnx", "onnx_int8", "tensorrt"]
    md = (out / "report.md").read_text()
    assert "| format | status | size MB | tiny acc % | b1 ms p50/p90/p99 |" in md
    assert "| onnx_int8 | missing (not exported" in md and "facepipe bench --test" in md
    assert "(accuracy_vs_latency.png)" in md and "(roc.png)" in md  # the figures are embedded, not just beside
    import matplotlib.image

    for name in ("accuracy_vs_latency.png", "roc.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = matplotlib.image.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 100 and np.ptp(img) > 0
    assert result.files["markdown"] == out / "report.md"


def test_floors_gate(outcome):
    rows = outcome[0].rows
    acc = {r["format"]: r["accuracy"]["tiny"] for r in rows if r["accuracy"]}
    assert gate.floor_misses(rows, {"tiny": min(acc.values())}) == []
    misses = gate.floor_misses(rows, {"tiny": 1.0})
    assert [m.split(":")[0] for m in misses] == ["torch", "onnx"] and "< floor 1.0000" in misses[0]
    with pytest.raises(gate.FloorMissed, match="onnx: tiny accuracy"):
        gate.enforce(misses, "report.md")
    broken = [{"format": "onnx", "status": "error: child killed by SIGSEGV", "accuracy": {}}]
    assert gate.floor_misses(broken, {"tiny": 0.5}) == ["onnx: tiny not measured (error: child killed by SIGSEGV), "
                                                        "floor 0.5000"]


def test_floor_validation():
    assert gate.parse_floor("lfw=0.99") == ("lfw", 0.99)
    for bad in ("lfw", "lfw=x", "=0.9", "lfw=99", "lfw=0"):
        with pytest.raises(ConfigError):
            gate.parse_floor(bad)
    with pytest.raises(ConfigError, match="as a fraction: 0.99"):
        gate.parse_floor("lfw=99")
    with pytest.raises(ConfigError, match="benchmark 'cfp_fp' is not evaluated"):
        gate.validate_floors({"cfp_fp": 0.9}, ["lfw"])


def test_unknown_floor_benchmark_fails_before_any_work(tiny_artifacts, pairs_bin, tmp_path):
    settings = BenchSettings(benchmarks=[str(pairs_bin)], floors={"lfw": 0.99})
    with pytest.raises(ConfigError, match="bench.floors.lfw"):
        bench_artifacts({"onnx": tiny_artifacts["onnx"]}, settings, tmp_path)
    assert not any(tmp_path.iterdir())


def test_cli_standalone_artifact_with_floor(tiny_artifacts, pairs_bin, tmp_path, monkeypatch, capsys):
    from facepipe.pipeline.cli import main

    monkeypatch.setenv("FACEPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    rc = main(["bench", "--artifact", str(tiny_artifacts["onnx"]), "--benchmarks", str(pairs_bin), "--runs", "2",
               "--warmup", "0", "--batch-sizes", "1", "--floor", "tiny=1.0", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "accuracy floor missed: onnx: tiny accuracy" in err
    doc = json.loads((out / "bench.json").read_text())  # written before the gate
    assert doc["floors"]["passed"] is False and doc["settings"]["batch_sizes"] == [1]
    assert (out / "report.md").is_file() and (out / "roc.png").is_file()


def test_cli_rejects_a_bad_floor(capsys):
    from facepipe.pipeline.cli import main

    assert main(["bench", "--floor", "lfw=99", "--benchmarks", "none"]) == 2
    assert "accuracy floors are fractions" in capsys.readouterr().err
