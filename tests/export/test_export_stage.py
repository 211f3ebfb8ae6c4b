"""The export stage through the runner and the `facepipe export` command: outputs and report, int8 formats
skipped without the quantize stage, GPU-only formats refused before any work, --trt on a CPU machine."""

from __future__ import annotations

import json
import shutil

import pytest

from facepipe.pipeline.config import load_config
from facepipe.pipeline.errors import BackendUnavailable
from facepipe.pipeline.runner import StageResult, StageSpec, run_pipeline

pytest.importorskip("openvino")


@pytest.fixture
def config(tmp_path, student):
    def make(*overrides):
        return load_config(None, [f"run.dir={tmp_path / 'runs'}", "data.benchmarks=[]", "quantize.enabled=false",
                                  "export.parity_faces=8", *overrides])

    def fake_distill(ctx):
        out = ctx.output_path("student.pt")
        shutil.copyfile(student, out)
        return StageResult({"student": out})

    from facepipe.stages.export import SPEC

    stages = [StageSpec("distill", fake_distill, sections=("distill",)), SPEC]
    return make, stages


def test_stage_exports_reloads_and_reports(config):
    make, stages = config
    cfg = make("export.formats=[onnx, onnx_int8, openvino]")
    outcomes = run_pipeline(cfg, stages=stages)
    statuses = {o.name: o.status for o in outcomes}
    assert statuses["distill"] == statuses["export"] == "ran"
    d = cfg.run_dir() / "export"
    manifest = json.loads((d / "manifest.json").read_text())
    assert set(manifest["outputs"]) == {"onnx", "openvino", "openvino_bin", "report"}
    report = json.loads((d / "export.json").read_text())
    assert report["parity_faces"]["source"].startswith("synthetic")
    recs = report["formats"]
    assert recs["onnx"]["status"] == recs["openvino"]["status"] == "ok"
    assert recs["onnx"]["parity"]["cos_min"] >= 0.9999 and recs["onnx"]["bytes"] > 3_000_000
    assert recs["onnx_int8"]["status"] == "skipped" and "quantize.enabled is false" in recs["onnx_int8"]["note"]
    m = manifest["metrics"]
    assert m["ok"] == 2 and m["skipped"] == 1 and m["openvino_cos_min"] >= 0.9999
    again = {o.name: o.status for o in run_pipeline(cfg, stages=stages)}
    assert again["distill"] == again["export"] == "skipped"  # fresh


def test_gpu_format_on_cpu_fails_before_any_work(config):
    make, stages = config
    cfg = make("export.formats=[onnx, tensorrt]")
    with pytest.raises(BackendUnavailable, match="tensorrt needs an NVIDIA GPU but the device is 'cpu'"):
        run_pipeline(cfg, stages=stages)
    d = cfg.run_dir() / "export"
    assert not d.exists() or not any(d.iterdir())


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    from facepipe.pipeline.cli import main

    monkeypatch.delenv("FACEPIPE_DATA", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text("data:\n  benchmarks: []\nexport:\n  parity_faces: 8\n")

    def run(*args):
        rc = main(["export", "-c", str(cfg), *args])
        return rc, capsys.readouterr()

    return run


def test_cli_trt_on_cpu_exports_the_rest_then_exits_2(cli, student, tmp_path):
    out = tmp_path / "out"
    rc, io = cli("--model", str(student), "--out", str(out), "--onnx", "--no-int8", "--trt")
    assert rc == 2
    err = io.err.strip().splitlines()
    assert len(err) == 1 and "tensorrt was not built: tensorrt needs an NVIDIA GPU" in err[0]
    assert f"the other formats were exported to {out}" in err[0]
    assert (out / "student.onnx").is_file() and not (out / "student.engine").exists()
    report = json.loads((out / "export.json").read_text())
    assert list(report["formats"]) == ["onnx"] and report["formats"]["onnx"]["status"] == "ok"
    assert "tensorrt" in io.out and "failed" in io.out


def test_cli_configured_gpu_format_fails_fast(cli, student, tmp_path):
    out = tmp_path / "out2"
    rc, io = cli("--model", str(student), "--out", str(out), "--set", "export.formats=[onnx, tensorrt]")
    assert rc == 2 and "cannot export: tensorrt needs an NVIDIA GPU" in io.err
    assert not out.exists()


def test_cli_usage_errors(cli, student):
    rc, io = cli("--model", str(student))
    assert rc == 2 and "--model and --out go together" in io.err
    rc, io = cli("--precision", "int4")
    assert rc == 2 and "--precision 'int4'" in io.err


def test_select_formats():
    from facepipe.pipeline.commands.export import select_formats

    conf = ["onnx", "onnx_int8", "openvino", "openvino_int8"]
    assert select_formats(conf, False, False, None) == conf
    assert select_formats(conf, True, False, None) == ["onnx", "onnx_int8"]
    assert select_formats(conf, False, True, False) == ["openvino"]
    assert select_formats(["onnx"], True, True, True) == conf
    assert select_formats(["onnx", "openvino"], False, False, True) == [
        "onnx", "openvino", "onnx_int8", "openvino_int8"]


def test_a_forced_re_export_writes_identical_bytes_so_bench_stays_fresh(config):
    """Item 8 of the freshness issue: export.json held wall times, so every re-export changed the bench stage's
    inputs and bench measured again for nothing. Identical artifacts now give identical outputs."""
    make, stages = config
    cfg = make("export.formats=[onnx, openvino]")
    run_pipeline(cfg, stages=stages)
    d = cfg.run_dir() / "export"
    first = json.loads((d / "manifest.json").read_text())
    assert first["metrics"]["onnx_seconds"] > 0  # the timings live in the manifest's metrics
    assert "seconds" not in json.loads((d / "export.json").read_text())["formats"]["onnx"]
    outcomes = {o.name: o.status for o in run_pipeline(cfg, stages=stages, force=["export"])}
    assert outcomes["export"] == "ran"
    second = json.loads((d / "manifest.json").read_text())
    assert {r: o["sha256"] for r, o in second["outputs"].items()} == \
        {r: o["sha256"] for r, o in first["outputs"].items()}
