"""The bench stage: artifacts from the upstream roles, a requested format that was not exported, outputs."""

from __future__ import annotations

import json

import pytest

from facepipe.pipeline.config import load_config
from facepipe.pipeline.runner import StageContext


def _cfg(tmp_path, pairs_bin):
    return load_config(None, [f"run.dir={tmp_path / 'runs'}", "bench.formats=[torch, onnx, openvino]",
                              f"bench.benchmarks=['{pairs_bin}']", "bench.batch_sizes=[1]", "bench.runs=2",
                              "bench.warmup=0"])


def test_stage_maps_upstream_roles(tiny_artifacts, pairs_bin, tmp_path):
    from facepipe.stages import bench

    cfg = _cfg(tmp_path, pairs_bin)
    inputs = {"distill.student": tiny_artifacts["torch"], "export.onnx": tiny_artifacts["onnx"],
              "export.report": tmp_path / "export.json"}
    assert bench.artifact_inputs(cfg, inputs) == {"torch": tiny_artifacts["torch"], "onnx": tiny_artifacts["onnx"],
                                                  "openvino": None}
    assert set(bench.external_inputs(cfg)) == {"bench.tiny.tiny.bin"}
    assert bench.SPEC.after == ("distill", "quantize", "export")
    assert bench.SPEC.upstream(cfg) == ("distill", "export")  # quantize.model: ("quantize", "export")
    assert bench.SPEC.sections == ("bench", "data.benchmarks", "data.root", "data.on_error")


def test_an_errored_artifact_fails_the_stage_and_the_cli(tiny_artifacts, pairs_bin, tmp_path, monkeypatch):
    """A garbage ONNX gives an error row: the stage raises (no complete manifest, so never fresh) after writing
    the report, and `facepipe bench --artifact` exits 2 instead of 0 with floors.passed."""
    from facepipe.pipeline.cli import main
    from facepipe.pipeline.errors import StageError
    from facepipe.stages import bench

    monkeypatch.setenv("FACEPIPE_CACHE", str(tmp_path / "cache"))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model")
    cfg = _cfg(tmp_path, pairs_bin)
    cfg.bench.formats = ["onnx"]
    stage_dir = cfg.run_dir() / "bench"
    with pytest.raises(StageError, match=r"bench: onnx .*garbage\.onnx.*error"):
        bench.run(StageContext(cfg, "bench", cfg.run_dir(), stage_dir, {"export.onnx": garbage}))
    assert (stage_dir / "bench.json").is_file() and not (stage_dir / "manifest.json").exists()
    out = tmp_path / "standalone"
    rc = main(["bench", "--artifact", str(garbage), "--out", str(out), "--set", "bench.runs=2",
               "--set", "bench.warmup=0", "--set", f"bench.benchmarks=['{pairs_bin}']"])
    assert rc == 2 and (out / "report.md").is_file()


@pytest.mark.slow
def test_stage_run_writes_outputs_and_metrics(tiny_artifacts, pairs_bin, tmp_path, monkeypatch):
    from facepipe.stages import bench

    monkeypatch.setenv("FACEPIPE_CACHE", str(tmp_path / "cache"))
    cfg = _cfg(tmp_path, pairs_bin)
    cfg.bench.formats = ["onnx", "openvino"]
    stage_dir = cfg.run_dir() / "bench"
    result = bench.run(StageContext(cfg, "bench", cfg.run_dir(), stage_dir, {"export.onnx": tiny_artifacts["onnx"]}))
    assert set(result.outputs) == {"report", "markdown", "plot", "roc"}
    assert all(p.is_file() and p.parent == stage_dir for p in result.outputs.values())
    assert set(result.metrics) == {"onnx_tiny_accuracy", "onnx_p50_ms_b1"}
    rows = json.loads((stage_dir / "bench.json").read_text())["artifacts"]
    assert [(r["format"], r["status"]) for r in rows] == [
        ("onnx", "ok"), ("openvino", "missing (not exported: add it to export.formats)")]
