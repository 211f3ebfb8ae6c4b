"""The whole chain on real data: `facepipe run --preset smoke` (teacher -> distill -> quantize -> export ->
bench) through the console script, then a second run that finds every stage fresh.

The smoke preset is small on purpose (LFW's first fold, a short distillation, a short QAT); this test checks
that every stage hands real artifacts to the next and that the report measures them through their runtimes,
and that the student has learned enough (LFW fold 1 >= 60 %, distinct faces spread apart) for the parity and
quantization checks downstream to be able to fail. It runs in the default test run (~3 min on 2 cores): the
one test that proves the README's main command end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

STAGES = ("teacher", "distill", "quantize", "export", "bench")


@pytest.fixture(scope="module")
def smoke_run(smoke_preset, lfw_root, celeba_root):
    work, rerun, res = smoke_preset(lfw_root.parent)
    assert res.returncode == 0, f"stdout:\n{res.stdout[-4000:]}\nstderr:\n{res.stderr[-4000:]}"
    return work, rerun


def _manifest(work: Path, stage: str) -> dict:
    return json.loads((work / "runs" / "smoke" / stage / "manifest.json").read_text())


def test_every_stage_ran_and_wrote_a_complete_manifest(smoke_run):
    work, _ = smoke_run
    for stage in STAGES:
        m = _manifest(work, stage)
        assert m["status"] == "complete", stage
        for role, rec in m["outputs"].items():
            assert (work / "runs" / "smoke" / stage / rec["path"]).exists(), (stage, role)


def test_the_smoke_student_has_learned_something(smoke_run, lfw_root):
    """Every check downstream compares this student with its exports and quantized copies: on a collapsed
    student (every face one vector) they would pass whatever the code does."""
    from facepipe.export.artifacts import load_artifact
    from facepipe.pipeline.eval.datasets import resolve_benchmark

    from sanity import assert_not_collapsed

    work, _ = smoke_run
    acc = _manifest(work, "distill")["metrics"]["lfw@1_accuracy"]
    assert acc >= 60.0, f"smoke student scores {acc}% on LFW fold 1"
    faces = resolve_benchmark("lfw@1", lfw_root.parent).load(on_error="skip").images[:40]
    student = load_artifact(work / "runs" / "smoke" / "distill" / "student.pt")
    spread = assert_not_collapsed(student.embed(faces), "smoke student on 40 LFW faces", min_std=0.03)
    assert spread["cos_mean"] < 0.97, spread
    export = json.loads((work / "runs" / "smoke" / "export" / "export.json").read_text())
    for key, rec in export["formats"].items():
        if rec.get("parity"):
            assert not rec["parity"]["reference_spread"]["collapsed"], key


def test_bench_report_measures_every_format_through_its_runtime(smoke_run, lfw_root):
    work, _ = smoke_run
    bench_dir = work / "runs" / "smoke" / "bench"
    report = json.loads((bench_dir / "bench.json").read_text())
    rows = {r["format"]: r for r in report["artifacts"]}
    assert set(rows) >= {"torch", "onnx", "onnx_int8", "openvino", "openvino_int8"}
    for fmt, row in rows.items():
        assert row["status"] == "ok", (fmt, row["status"])
        acc = row["accuracy"]["lfw@1"]
        assert 0.5 <= acc <= 1.0, (fmt, acc)
        assert row["latency"]["1"]["p50_ms"] > 0 and row["size_mb"] > 0
    # fp32 runtimes agree with PyTorch on the benchmark: the same accuracy within one pair in 600
    for fmt in ("onnx", "openvino"):
        assert abs(rows[fmt]["accuracy"]["lfw@1"] - rows["torch"]["accuracy"]["lfw@1"]) <= 1 / 600 + 1e-9
    md = (bench_dir / "report.md").read_text()
    assert "openvino_int8" in md and "accuracy_vs_latency.png" in md
    assert (bench_dir / "accuracy_vs_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_run_finds_every_stage_fresh(smoke_run):
    _, rerun = smoke_run
    res = rerun()
    assert res.returncode == 0, res.stderr[-3000:]
    assert "every stage is fresh" in res.stdout
