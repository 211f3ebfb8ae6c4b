"""2 CPU processes (gloo, real process group) vs 1 process with the same global batch: the same loss curve,
the same weights, and AdaDistill centres identical on both ranks."""

from __future__ import annotations

import csv
import socket

import pytest
import torch
import torch.multiprocessing as mp

from facepipe.pipeline.train.dist import DistEnv
from facepipe.pipeline.train.worker import run_job

torch.set_num_threads(1)

# no BatchNorm in the tiny net: per-process batch statistics are the one thing DDP does not make global
PARAMS = dict(steps=4, batch_size=8, losses=[{"name": "ada_arc_distill"}, {"name": "arcface", "weight": 0.5}])
CENTRES = "terms.ada_arc_distill.centers.centers"


def job(out, params=PARAMS):
    return {"setup": "train_synth:setup", "out_dir": str(out), "result": str(out / ".launch/result.json"),
            "params": params}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, spec: dict) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    run_job(spec, DistEnv.from_environ())


def losses(out):
    with open(out / "train_log.csv", newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.mark.dist
def test_two_gloo_processes_match_one_process(tmp_path):
    run_job(job(tmp_path / "one"), DistEnv())
    mp.start_processes(_worker, args=(2, free_port(), job(tmp_path / "two")), nprocs=2, join=True,
                       start_method="spawn")
    single, double = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(single) == len(double) == 4
    assert double == pytest.approx(single, rel=1e-5)

    one = torch.load(tmp_path / "one/state.rank0.pt", weights_only=True)
    r0, r1 = (torch.load(tmp_path / f"two/state.rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(r0["loss"][CENTRES], r1["loss"][CENTRES])  # identical, not just close
    assert torch.equal(r0["loss"]["terms.arcface.weight"], r1["loss"]["terms.arcface.weight"])
    assert all(torch.equal(r0["model"][k], r1["model"][k]) for k in r0["model"])
    assert torch.allclose(r0["loss"][CENTRES], one["loss"][CENTRES], atol=1e-6)
    assert all(torch.allclose(r0["model"][k], one["model"][k], atol=1e-5) for k in one["model"])
    assert (tmp_path / "two/student.pt").is_file() and not (tmp_path / "two/state.rank1.pt").stat().st_size == 0
