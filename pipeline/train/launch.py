"""Start distillation workers with torchrun (torch.distributed.run) and collect what rank 0 reports.

One node, N processes (what `facepipe distill --devices N` does):
    python -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node=N -m facepipe.pipeline.train.worker JOB
Several nodes: start `facepipe distill` on every node with the same --nnodes, --rdzv-endpoint (host:port of
node 0, reachable from all nodes) and its own --node-rank; torchrun's static rendezvous then gives node 0
global rank 0, which writes the checkpoints, logs and outputs. Every node needs data.train (and, in cache
mode, the teacher stage's cache) at the same paths; resuming needs only node 0's checkpoint (rank 0 reads
it and broadcasts it). Equivalent manual launch, on node k of M:
    torchrun --nnodes=M --node_rank=k --nproc_per_node=N --master_addr=HOST --master_port=PORT \\
        -m facepipe.pipeline.train.worker JOB
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from facepipe.pipeline import errors as E
from facepipe.pipeline.errors import ConfigError, FacepipeError, StageError
from facepipe.pipeline.io import atomic_write_json

WORKER_MODULE = "facepipe.pipeline.train.worker"


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = str(endpoint).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"distill.launch.rdzv_endpoint={endpoint!r}: expected HOST:PORT of node 0 "
                          "(e.g. 10.0.0.1:29500)")
    return host, int(port)


def torchrun_command(job_path: Path, nproc: int, launch) -> list[str]:
    """The torchrun command line for this node (standalone on one node, static rendezvous across nodes)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if launch.nnodes == 1:
        cmd += ["--standalone", "--nnodes=1"]
    else:
        if not launch.rdzv_endpoint:
            raise ConfigError(f"distill.launch.nnodes={launch.nnodes} needs --rdzv-endpoint HOST:PORT of node 0")
        if launch.node_rank >= launch.nnodes:
            raise ConfigError(f"--node-rank {launch.node_rank} must be below --nnodes {launch.nnodes}")
        host, port = parse_endpoint(launch.rdzv_endpoint)
        cmd += [f"--nnodes={launch.nnodes}", f"--node_rank={launch.node_rank}", f"--master_addr={host}",
                f"--master_port={port}", f"--rdzv_id={launch.rdzv_id}"]
    return cmd + ["-m", WORKER_MODULE, str(job_path)]


def error_path(job: dict, rank: int) -> Path:
    return Path(job["result"]).with_name(f"error.rank{rank}.json")


def _error_types() -> dict[str, type[FacepipeError]]:
    from .checkpoint import CheckpointError
    from .trainer import TrainingDiverged

    return {c.__name__: c for c in (E.ConfigError, E.DataError, E.ModelError, E.BackendUnavailable, E.StageError,
                                    CheckpointError, TrainingDiverged)}


def raise_reported_error(job: dict, world: int) -> None:
    """Re-raise the typed error a worker reported (lowest rank first), if any."""
    for rank in range(world):
        p = error_path(job, rank)
        if p.is_file():
            info = json.loads(p.read_text())
            raise _error_types().get(info.get("type"), StageError)(info["message"])


def launch(job: dict, nproc: int, launch_cfg, env: dict | None = None) -> dict:
    """Write the job file, run torchrun for this node, and return rank 0's result (raise its error)."""
    result = Path(job["result"])
    result.parent.mkdir(parents=True, exist_ok=True)
    world = nproc * launch_cfg.nnodes
    for p in [result, *(error_path(job, r) for r in range(world))]:
        p.unlink(missing_ok=True)
    job_path = atomic_write_json(result.with_name("job.json"), job)
    cmd = torchrun_command(job_path, nproc, launch_cfg)
    proc = subprocess.run(cmd, env={**os.environ, **(env or {})})
    raise_reported_error(job, world)
    if proc.returncode != 0:
        raise StageError(f"distill workers failed (torchrun exit code {proc.returncode}); see their output above. "
                         f"Command: {' '.join(cmd)}")
    if launch_cfg.node_rank != 0:
        return {}
    if not result.is_file():
        raise StageError(f"distill workers exited without a result ({result})")
    return json.loads(result.read_text())
