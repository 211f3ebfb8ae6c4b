"""Trainer building blocks: schedules, sharding, teacher targets, checkpoints, logs, launch commands."""

from __future__ import annotations

import math
import pickle
import random

import numpy as np
import pytest
import torch

from facepipe.models.losses import class_centers
from facepipe.pipeline.config import AugmentConfig, DistillConfig, LaunchConfig
from facepipe.pipeline.errors import ConfigError, DataError
from facepipe.pipeline.train.checkpoint import (CheckpointError, check_matches, fingerprint_of, load_checkpoint,
                                                rng_state, save_checkpoint, set_rng_state)
from facepipe.pipeline.train.data import read_labels, student_input
from facepipe.pipeline.train.dist import DistEnv, choose_backend
from facepipe.pipeline.train.launch import parse_endpoint, torchrun_command
from facepipe.pipeline.train.logs import CsvLog, read_csv
from facepipe.pipeline.train.sampler import ShardPlan
from facepipe.pipeline.train.schedule import Schedule, build_schedule
from facepipe.pipeline.train.targets import CachedTargets, choose_teacher_mode, teacher_class_centers

from train_synth import SynthFaces

torch.set_num_threads(1)


# --- schedules -----------------------------------------------------------------------------------------
def test_step_schedule_milestones_and_warmup():
    s = Schedule("step", lr=0.1, total=100, warmup=4, milestones=(10, 20), gamma=0.1)
    assert [s(i) for i in range(4)] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert s(9) == pytest.approx(0.1) and s(10) == pytest.approx(0.01) and s(19) == pytest.approx(0.01)
    assert s(20) == pytest.approx(0.001) and s(99) == pytest.approx(0.001)


def test_poly_and_cosine_schedules():
    poly = Schedule("poly", lr=1.0, total=12, warmup=2, power=2.0, min_lr=0.0)
    assert poly(1) == pytest.approx(1.0) and poly(2) == pytest.approx(1.0)
    assert poly(7) == pytest.approx((1 - 5 / 10) ** 2) and poly(12) == pytest.approx(0.0)
    cos = Schedule("cosine", lr=0.2, total=10, min_lr=0.02)
    assert cos(0) == pytest.approx(0.2) and cos(5) == pytest.approx(0.11) and cos(10) == pytest.approx(0.02)
    assert all(cos(i) >= cos(i + 1) for i in range(10))


def test_schedule_from_config_converts_epochs_to_steps():
    cfg = DistillConfig(schedule="step", lr=0.1, warmup_epochs=0.5, milestones=[1, 2.5])
    s = build_schedule(cfg, total_steps=40, steps_per_epoch=10)
    assert (s.warmup, s.milestones, s.total) == (5, (10, 25), 40)
    assert s.state_dict()["milestones"] == [10, 25]


# --- sharding ------------------------------------------------------------------------------------------
def keys(batches):
    return [[k[0] for k in b] for b in batches]


def test_two_ranks_split_the_single_process_global_batches():
    one = ShardPlan(n=50, global_batch=8, world=1, rank=0, seed=3, flip=True)
    r0, r1 = (ShardPlan(n=50, global_batch=8, world=2, rank=r, seed=3, flip=True) for r in (0, 1))
    for epoch in (0, 1):
        whole, a, b = list(one.batches(epoch)), list(r0.batches(epoch)), list(r1.batches(epoch))
        assert len(whole) == len(a) == len(b) == one.steps_per_epoch == 6
        assert [x + y for x, y in zip(a, b)] == whole  # rank-major halves, flips included
    assert keys(one.batches(0)) != keys(one.batches(1))  # a new permutation each epoch
    assert sorted(sum(keys(one.batches(0)), [])) == sorted(set(sum(keys(one.batches(0)), [])))


def test_resume_position_skips_exactly_the_consumed_batches():
    p = ShardPlan(n=40, global_batch=4, seed=1)
    assert list(p.batches(2, start=3)) == list(p.batches(2))[3:]


def test_one_stream_crosses_epochs_like_consecutive_epochs():
    p = ShardPlan(n=40, global_batch=4, seed=1, flip=True)
    expected = list(p.batches(1, start=7)) + list(p.batches(2)) + list(p.batches(3))[:2]
    stream = p.stream(1, 7, count=15)
    assert len(stream) == 15 and list(stream) == expected


def test_sharding_errors():
    with pytest.raises(ConfigError, match="batch_size=6 must be divisible by the number of processes \\(4\\)"):
        ShardPlan(n=40, global_batch=6, world=4)
    with pytest.raises(DataError, match="training set is empty"):
        ShardPlan(n=0, global_batch=4)
    with pytest.raises(DataError, match="has 3 images, fewer than one batch \\(distill.batch_size=4\\)"):
        ShardPlan(n=3, global_batch=4)


# --- data ----------------------------------------------------------------------------------------------
def test_labels_checked_against_the_class_count():
    assert read_labels(SynthFaces(10, 3)).tolist() == [i % 3 for i in range(10)]
    with pytest.raises(DataError, match=r"record 7 has label 9, outside 0..2 \(num_classes=3; 2 bad"):
        read_labels(SynthFaces(10, 3, bad={7: 9, 8: -1}))
    with pytest.raises(DataError, match="is empty"):
        read_labels(SynthFaces(0, 3))


def test_student_input_matches_the_embedder_preprocessing():
    from facepipe.pipeline.embedder import Preprocess

    faces = SynthFaces(3, 2)
    batch = np.stack([faces.image(i) for i in range(3)])
    got = student_input(torch.from_numpy(batch), torch.device("cpu"))
    assert np.allclose(got.numpy(), Preprocess()(batch), atol=1e-6)


# --- teacher targets -----------------------------------------------------------------------------------
def test_cache_rows_follow_index_and_flip():
    emb, flipped = np.arange(12, dtype=np.float32).reshape(6, 2), -np.arange(12, dtype=np.float32).reshape(6, 2)
    t = CachedTargets(emb, flipped)
    batch = {"index": torch.tensor([4, 1, 2]), "flip": torch.tensor([False, True, False])}
    assert t(batch).tolist() == [[8, 9], [-2, -3], [4, 5]]
    with pytest.raises(ConfigError, match="no mirrored-face embeddings.*re-run the teacher stage"):
        CachedTargets(emb)(batch)


@pytest.mark.parametrize("mode,aug,cache,flipc,expect", [
    ("auto", {"flip": True}, True, True, "cache"),
    ("auto", {"flip": True}, True, False, "online"),
    ("auto", {"flip": False}, True, False, "cache"),
    ("auto", {"flip": False, "shift": 4}, True, True, "online"),
    ("auto", {"flip": False}, False, False, "online"),
    ("online", {"flip": False}, True, True, "online"),
])
def test_teacher_mode_choice(mode, aug, cache, flipc, expect):
    assert choose_teacher_mode(mode, AugmentConfig(**aug), cache, flipc).mode == expect


def test_cache_mode_refused_when_augmentation_needs_the_teacher():
    with pytest.raises(ConfigError, match="teacher_mode=cache cannot be used: random augmentation beyond flips"):
        choose_teacher_mode("cache", AugmentConfig(flip=False, color=0.2), True, True)


def test_chunked_class_centres_equal_the_loss_library_ones():
    rng = np.random.default_rng(0)
    emb, labels = rng.normal(size=(50, 8)).astype(np.float32), rng.integers(0, 5, 50)
    got = teacher_class_centers(emb, labels, 6, chunk=7)
    ref = class_centers(torch.from_numpy(emb), torch.from_numpy(labels), 6)
    assert torch.allclose(got, ref, atol=1e-6) and got[5].abs().sum() == 0  # class 5 has no sample


# --- checkpoints ---------------------------------------------------------------------------------------
def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_hostile_or_foreign_checkpoints_are_refused(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"kind": "facepipe.distill.checkpoint", "x": Evil()}, evil)
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(evil)
    assert "pwned" not in capsys.readouterr().out
    (tmp_path / "junk.pt").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a facepipe distill checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_mismatch_message_names_the_changed_keys(tmp_path):
    old = {"distill": {"lr": 0.1, "batch_size": 8}, "seed": 0}
    ckpt = {"fingerprint": fingerprint_of(old), "identity": old, "world_size": 1}
    check_matches(ckpt, old, 1, tmp_path / "last.pt")
    new = {"distill": {"lr": 0.05, "batch_size": 8}, "seed": 0}
    with pytest.raises(CheckpointError, match=r"distill.lr changed: 0.1 -> 0.05.*--restart"):
        check_matches(ckpt, new, 1, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="written by 1 process\\(es\\), this run has 2"):
        check_matches(ckpt, old, 2, tmp_path / "last.pt")


# --- logs ----------------------------------------------------------------------------------------------
def test_csv_log_drops_rows_after_the_resumed_step(tmp_path):
    log = CsvLog(tmp_path / "l.csv", ["step", "loss"])
    for s in range(1, 6):
        log.write({"step": s, "loss": s / 10})
    log.close()
    log = CsvLog(tmp_path / "l.csv", ["step", "loss"], keep_until=3)
    log.write({"step": 4, "loss": 9.0})
    log.close()
    assert [(r["step"], r["loss"]) for r in read_csv(tmp_path / "l.csv")] == \
        [("1", "0.1"), ("2", "0.2"), ("3", "0.3"), ("4", "9.0")]


# --- launching -----------------------------------------------------------------------------------------
def test_environment_ranks():
    assert DistEnv.from_environ({}) == DistEnv(0, 1, 0)
    assert DistEnv.from_environ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == DistEnv(3, 4, 1)
    with pytest.raises(ConfigError, match="RANK=4 WORLD_SIZE=4"):
        DistEnv.from_environ({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ConfigError, match="WORLD_SIZE='two'"):
        DistEnv.from_environ({"WORLD_SIZE": "two"})


def test_backend_choice():
    assert choose_backend(torch.device("cpu")) == "gloo"
    with pytest.raises(ConfigError, match="nccl needs CUDA"):
        choose_backend(torch.device("cpu"), "nccl")


def test_torchrun_command_single_and_multi_node(tmp_path):
    one = torchrun_command(tmp_path / "job.json", 2, LaunchConfig())
    assert one[1:] == ["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "--nnodes=1", "-m",
                       "facepipe.pipeline.train.worker", str(tmp_path / "job.json")]
    multi = torchrun_command(tmp_path / "j", 4, LaunchConfig(nnodes=2, node_rank=1, rdzv_endpoint="10.0.0.1:29500"))
    assert {"--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1", "--master_port=29500"} <= set(multi)
    with pytest.raises(ConfigError, match="needs --rdzv-endpoint"):
        torchrun_command(tmp_path / "j", 4, LaunchConfig(nnodes=2))
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        parse_endpoint("node0")
    assert math.isfinite(parse_endpoint("[::1]:29500")[1])
