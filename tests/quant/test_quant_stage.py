"""The quantize stage through the runner (behind a stand-in distill stage), `facepipe quantize` standalone and its
user errors, the NNCF backend (slow) and the real student on LFW (slow)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from facepipe.pipeline.commands import quantize as quantize_cmd
from facepipe.pipeline.config import load_config
from facepipe.pipeline.data.binfile import write_bin
from facepipe.pipeline.errors import FacepipeError
from facepipe.pipeline.manifest import read_manifest
from facepipe.pipeline.runner import StageResult, StageSpec, run_pipeline

from quant_synth import smooth_faces, write_image_folder, write_student

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEPIPE_CACHE", str(tmp_path / "fpcache"))


def fake_distill(student: Path) -> StageSpec:
    """Stands in for the distill stage: its output is a prepared student.pt."""
    def run(ctx):
        out = ctx.output_path("student.pt")
        shutil.copyfile(student, out)
        return StageResult(outputs={"student": out})

    return StageSpec("distill", run, sections=())


def write_bench(path: Path) -> Path:
    faces = smooth_faces(40, seed=11)
    jpeg = lambda img: cv2.imencode(".png", img[:, :, ::-1])[1].tobytes()  # noqa: E731
    return write_bin(path, [jpeg(f) for f in faces], [k % 2 == 0 for k in range(20)])


def stages(student: Path):
    from facepipe.stages.quantize import SPEC

    return [fake_distill(student), SPEC]


def test_stage_through_the_runner_writes_artifacts_and_metrics(tmp_path):
    from facepipe.pipeline.quant.storage import load_quantized, read_packed

    student = write_student(tmp_path / "student.pt")
    write_image_folder(tmp_path / "data" / "train", n=16)
    write_bench(tmp_path / "data" / "tiny.bin")
    sets = [f"run.dir={tmp_path / 'runs'}", "run.name=q", f"data.root={tmp_path / 'data'}", "data.train=train",
            "data.benchmarks=[tiny.bin]", "quantize.data=real", "quantize.images=16", "quantize.calib_images=8",
            "quantize.steps=3", "quantize.batch_size=4", "quantize.freeze_after=1", "quantize.wbits=6",
            "quantize.abits=8"]
    outcomes = {o.name: o for o in run_pipeline(load_config(None, sets), to="quantize", stages=stages(student))}
    assert outcomes["quantize"].status == "ran"
    out = tmp_path / "runs" / "q" / "quantize"
    m = read_manifest(out)
    assert {"qstudent", "spec", "packed", "metrics", "faces", "log"} <= set(m["outputs"])
    assert m["outputs"]["packed"]["path"].endswith("qstudent.w6.fpq")
    assert {"distill.student", "quantize.data"} <= set(m["inputs"])
    metrics = m["metrics"]
    for key in ("fp32_tiny_accuracy", "ptq_tiny_accuracy", "qat_tiny_accuracy", "qat_cos_mean", "ptq_cos_min",
                "fp32_file_bytes", "packed_file_bytes", "packed_memory_bytes"):
        assert key in metrics, key
    assert metrics["steps"] == 3 and metrics["packed_memory_bytes"] < metrics["fp32_memory_bytes"]
    full = json.loads((out / "metrics.json").read_text())
    assert full["data"]["data"] == "real" and full["models"]["qat"]["cosine"]["on"] == "tiny"
    assert not (out / "checkpoints").exists(), "a finished run leaves no checkpoint (nor its folder)"
    qmodel, meta = load_quantized(out / "qstudent.pt")
    assert (meta["wbits"], meta["abits"], meta["mode"]) == (6, 8, "qat")
    assert read_packed(out / "qstudent.w6.fpq")
    again = {o.name: o for o in run_pipeline(load_config(None, sets), to="quantize", stages=stages(student))}
    assert again["quantize"].status == "skipped"


def test_without_data_root_a_synthetic_folder_gives_cosine_only(tmp_path, monkeypatch):
    monkeypatch.delenv("FACEPIPE_DATA", raising=False)
    student = write_student(tmp_path / "student.pt")
    write_image_folder(tmp_path / "gen", n=8)
    sets = [f"run.dir={tmp_path / 'runs'}", "quantize.data=synthetic", f"quantize.data_path={tmp_path / 'gen'}",
            "quantize.mode=ptq", "quantize.batch_size=4"]
    run_pipeline(load_config(None, sets), to="quantize", stages=stages(student))
    metrics = read_manifest(tmp_path / "runs" / "default" / "quantize")["metrics"]
    assert "no data root" in metrics["accuracy_note"] and "ptq_cos_mean" in metrics
    assert not any(k.endswith("_accuracy") for k in metrics)


def cli():
    app = typer.Typer()
    quantize_cmd.register(app)

    @app.callback()
    def _root():
        pass

    return app


def test_standalone_command_quantizes_a_student_file(tmp_path):
    student = write_student(tmp_path / "student.pt")
    write_image_folder(tmp_path / "faces", n=8)
    out = tmp_path / "q"
    res = CliRunner().invoke(cli(), ["quantize", "--student", str(student), "--out", str(out), "--bits", "8",
                                     "--mode", "ptq", "--data", "real", "--data-path", str(tmp_path / "faces"),
                                     "--set", "data.benchmarks=[]", "--set", "quantize.batch_size=4"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert {"qstudent.pt", "quant_spec.json", "qstudent.w8.fpq", "metrics.json", "faces.png"} <= \
        {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["models"]["ptq"]["cosine"]["mean"] > 0.99 and "qat" not in metrics["models"]


@pytest.mark.parametrize("args, fragment", [
    (["--bits", "9"], "--bits 9: unsupported bit width"),
    (["--wbits", "1"], "--wbits 1: unsupported bit width"),
    (["--bits", "6", "--backend", "nncf", "--student", "s.pt", "--out", "o"], "nncf supports 8-bit"),
    (["--mode", "fast"], "quantize.mode"),
])
def test_bad_options_exit_2_with_one_line(tmp_path, args, fragment):
    exe = Path(sys.executable).with_name("facepipe")
    env = {**os.environ, "FACEPIPE_CACHE": str(tmp_path / ".cache"), "COLUMNS": "200"}
    res = subprocess.run([str(exe), "quantize", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2, res.stderr + res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in res.stderr, res.stderr


def test_empty_calibration_folder_is_a_clear_error(tmp_path):
    student = write_student(tmp_path / "student.pt")
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(cli(), ["quantize", "--student", str(student), "--out", str(tmp_path / "q"),
                                     "--data", "synthetic", "--data-path", str(tmp_path / "empty")])
    assert isinstance(res.exception, FacepipeError) and "no images found" in str(res.exception)


@pytest.mark.slow
def test_nncf_backend_exports_an_int8_qdq_onnx(tmp_path):
    """First use compiles NNCF's C++ extension (~80 s here)."""
    import onnx
    import onnxruntime as ort

    student = write_student(tmp_path / "student.pt", arch="mobilefacenet")  # BN statistics of real batches
    write_image_folder(tmp_path / "faces", n=8)
    out = tmp_path / "q"
    res = CliRunner().invoke(cli(), ["quantize", "--student", str(student), "--out", str(out), "--backend", "nncf",
                                     "--data", "real", "--data-path", str(tmp_path / "faces"), "--steps", "2",
                                     "--set", "data.benchmarks=[]", "--set", "quantize.batch_size=4"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    ops = {n.op_type for n in onnx.load(str(out / "qstudent.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and not any("FakeQuantize" in o for o in ops)
    sess = ort.InferenceSession(str(out / "qstudent.int8.onnx"))
    assert sess.run(None, {"input": np.zeros((2, 3, 112, 112), np.float32)})[0].shape == (2, 16)
    models = json.loads((out / "metrics.json").read_text())["models"]
    # a random network is fragile under int8 (the own backend gives it ~0.85 too); real numbers: the report
    assert models["ptq"]["cosine"]["mean"] > 0.8 and models["qat"]["cosine"]["mean"] > 0.8, models


@pytest.mark.slow
def test_real_student_w8_ptq_keeps_lfw_accuracy(tmp_path, lfw_root, celeba_root, distilled_student):
    out = tmp_path / "q"
    res = CliRunner().invoke(cli(), ["quantize", "--student", str(distilled_student), "--out", str(out), "--bits", "8",
                                     "--mode", "ptq", "--data", "real", "--set", f"data.root={lfw_root.parent}",
                                     "--set", "quantize.benchmarks=[lfw@2]", "--set", "quantize.images=128"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    m = json.loads((out / "metrics.json").read_text())["models"]
    assert abs(m["ptq"]["accuracy"]["lfw@2"] - m["fp32"]["accuracy"]["lfw@2"]) < 2.0
    assert m["ptq"]["cosine"]["mean"] > 0.98
