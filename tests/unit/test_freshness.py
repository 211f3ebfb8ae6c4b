"""A result made under other runtimes, on another CPU, or from other parity faces is never reported fresh:
export and bench fingerprint the runtime versions and the machine, export fingerprints the settings and data
it reads, and `status` names what changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from facepipe.pipeline import manifest as manifest_mod
from facepipe.pipeline.config import load_config
from facepipe.pipeline.io import atomic_write_text
from facepipe.pipeline.runner import StageResult, StageSpec, run_pipeline, stage_status


@pytest.fixture(autouse=True)
def _hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEPIPE_CACHE", str(tmp_path / "cache"))


def _measure(ctx):
    out = ctx.output_path("bench.json")
    atomic_write_text(out, "{}")
    return StageResult(outputs={"report": out})


def _toy(tmp_path: Path):
    spec = StageSpec("bench", _measure, ("bench",), derived=lambda cfg: {"runtime": manifest_mod.runtime_identity("cpu")})
    cfg = load_config(None, [f"run.dir={tmp_path / 'runs'}"])
    return cfg, {"bench": spec}


def _bench_status(cfg, stages):
    return next(s for s in stage_status(cfg, stages=stages) if s.name == "bench")


def test_a_runtime_upgrade_makes_the_measurement_stale_and_status_names_it(tmp_path, monkeypatch):
    cfg, stages = _toy(tmp_path)
    real = manifest_mod.metadata.version
    assert [o.status for o in run_pipeline(cfg, stages=stages) if o.name == "bench"] == ["ran"]
    assert _bench_status(cfg, stages).state == "fresh"
    before = real("onnxruntime")

    def upgraded(dist):
        return "9.9.9" if dist == "onnxruntime" else real(dist)

    monkeypatch.setattr(manifest_mod.metadata, "version", upgraded)
    status = _bench_status(cfg, stages)
    assert status.state != "fresh"
    assert f"runtime.onnxruntime changed: {before!r} -> '9.9.9'" in " ".join(status.reasons), status.reasons


def test_another_cpu_makes_the_measurement_stale(tmp_path, monkeypatch):
    from facepipe.pipeline import device

    cfg, stages = _toy(tmp_path)
    run_pipeline(cfg, stages=stages)
    monkeypatch.setattr(device, "cpu_flags", lambda cpuinfo=None: ["avx2", "fma"])
    status = _bench_status(cfg, stages)
    assert any("runtime.cpu_isa changed" in r and "-> 'AVX2'" in r for r in status.reasons), status.reasons


def test_export_and_bench_fingerprint_the_runtimes_and_what_export_reads(tmp_path, monkeypatch):
    from facepipe.stages import bench, export

    monkeypatch.setenv("FACEPIPE_DATA", str(tmp_path / "none"))
    cfg = load_config(None, [])
    assert {"onnxruntime", "openvino", "torch", "cpu_isa"} <= set(export.SPEC.derived(cfg)["runtime"])
    assert {"onnxruntime", "openvino", "torch", "cpu_isa"} <= set(bench.SPEC.derived(cfg)["runtime"])
    assert {"run.device", "run.threads", "data.benchmarks", "data.root"} <= set(export.SPEC.sections)
    # no data: the gate would use synthetic faces; once the data appears the origin (a fingerprint entry) changes
    assert export.SPEC.derived(cfg)["parity_faces"].startswith("synthetic")
    lfw = tmp_path / "data" / "lfw"
    lfw.mkdir(parents=True)
    (lfw / "pairs.txt").write_text("10\t300\n")
    with_data = load_config(None, [f"data.root={tmp_path / 'data'}"])
    assert export.SPEC.derived(with_data)["parity_faces"].startswith("real: lfw")
    assert "parity.lfw.pairs.txt" in export.SPEC.external_inputs(with_data)


def test_a_second_run_on_one_run_folder_is_refused_naming_the_holder(tmp_path):
    """Two `facepipe run` on one folder: the second fails at once naming the first; a killed holder's lock
    file is stale (the kernel released it) and the next run takes it over."""
    import subprocess
    import sys
    import time

    from facepipe.pipeline.io import RunLocked, run_lock

    run_dir = tmp_path / "runs" / "default"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from facepipe.pipeline.io import run_lock\n"
        f"with run_lock({str(run_dir)!r}):\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        cfg, stages = _toy(tmp_path)
        with pytest.raises(RunLocked, match=rf"in use by pid {holder.pid} on .* wait for it"):
            run_pipeline(cfg, stages=stages)
        assert not (run_dir / "bench").exists(), "the refused run must not have started a stage"
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert (run_dir / ".lock").read_text()  # left behind by the killed holder
    with run_lock(run_dir):  # stale: taken over
        pass
    assert [o.status for o in run_pipeline(cfg, stages=stages) if o.name == "bench"] == ["ran"]


# What the issue found missing from the hand-kept CODE tuples: each must be in the computed closure.
MISSING_FROM_THE_OLD_TUPLES = {
    "teacher": ["pipeline.data.synthetic.datafree", "pipeline.data.synthetic.dcgan", "models.iresnet", "models.cvlface"],
    "distill": ["models.losses.base", "models.losses.memory", "models.losses.distributed", "models.losses.registry",
                "pipeline.eval.cache", "pipeline.embedder", "pipeline.data.synthetic.datafree", "pipeline.train.launch",
                "pipeline.train.logs"],
    "export": ["export.onnx_qdq", "pipeline.quant.storage"],
    "bench": ["pipeline.device", "pipeline.plots", "export.onnx", "export.openvino", "export.tensorrt"],
}


@pytest.mark.parametrize("stage", sorted(MISSING_FROM_THE_OLD_TUPLES))
def test_a_stage_code_is_its_computed_import_closure(stage):
    import importlib

    from facepipe.pipeline.runner import stage_code

    spec = importlib.import_module(f"facepipe.stages.{stage}").SPEC
    closure = set(stage_code(spec))
    missing = [m for m in MISSING_FROM_THE_OLD_TUPLES[stage] if f"facepipe.{m}" not in closure]
    assert not missing, missing
    assert f"facepipe.stages.{stage}" in closure and "facepipe.models" in closure  # package __init__ files too


def test_editing_a_module_of_the_closure_changes_the_stage_code_version(monkeypatch):
    """The issue's case: editing l2n in models/losses/base.py quartered feature_kd while distill stayed fresh."""
    from facepipe.pipeline.codeclosure import module_file
    from facepipe.pipeline.manifest import code_version
    from facepipe.pipeline.runner import stage_code
    from facepipe.stages import distill

    modules = stage_code(distill.SPEC)
    before = code_version(modules)
    edited = module_file("facepipe.models.losses.base")
    real = manifest_mod.sha256_file
    monkeypatch.setattr(manifest_mod, "sha256_file", lambda p: "edited" if Path(p) == edited else real(p))
    assert code_version(modules) != before


def test_the_closure_follows_relative_and_function_level_imports_and_skips_type_checking(tmp_path):
    import ast

    from facepipe.pipeline.codeclosure import _imported_names

    src = ("from __future__ import annotations\nfrom typing import TYPE_CHECKING\nfrom .x import y\n"
           "from .. import sibling\nif TYPE_CHECKING:\n    from facepipe.pipeline import hidden\n"
           "def f():\n    from facepipe.export import onnx\n    import facepipe.models.registry\n")
    names = _imported_names(ast.parse(src), "facepipe.pipeline.quant.job", is_package=False)
    assert {"facepipe.pipeline.quant.x", "facepipe.pipeline.quant.x.y", "facepipe.pipeline.sibling",
            "facepipe.export.onnx", "facepipe.models.registry"} <= names
    assert "facepipe.pipeline.hidden" not in names


def test_identical_weights_give_identical_bytes(tmp_path):
    """Item 8: torch.save to a temporary file named its zip entries after it, so re-finalising a distill with the
    same weights wrote other bytes and quantize, export and bench re-ran for nothing."""
    import torch

    from facepipe.models.quant import prepare_quantized
    from facepipe.pipeline.quant.storage import save_quantized
    from facepipe.pipeline.train.checkpoint import save_checkpoint

    payload = {"state_dict": {"w": torch.arange(10.0)}, "arch": "mobilefacenet"}
    a, b = save_checkpoint(tmp_path / "a.pt", payload), save_checkpoint(tmp_path / "sub" / "b.pt", payload)
    assert a.read_bytes() == b.read_bytes()

    from tiny_nets import warmed_tiny_facenet

    net = warmed_tiny_facenet(torch.rand(8, 3, 112, 112) * 2 - 1)
    q = prepare_quantized(net, 8, 8)
    q.calibrate([torch.rand(4, 3, 112, 112) * 2 - 1])
    q.freeze_activations()
    meta = {"arch": "x", "embedding_size": 16, "preprocess": {"size": 112}}
    first = save_quantized(tmp_path / "q1" / "qstudent.pt", q.eval(), meta).read_bytes()
    assert first == save_quantized(tmp_path / "q2" / "qstudent.pt", q, meta).read_bytes()
