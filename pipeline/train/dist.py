"""Process-group plumbing for torchrun workers: ranks from the environment, backend choice, collectives.

torchrun (torch.distributed.run) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in each
worker; nothing here runs at import time. Without those variables everything degrades to one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterable, Mapping

import torch
import torch.distributed as dist

from facepipe.pipeline.errors import BackendUnavailable, ConfigError


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job: global rank, world size, rank on this node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "DistEnv":
        """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them (a single process when absent)."""
        environ = os.environ if environ is None else environ
        values = {}
        for key, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
            raw = environ.get(key)
            try:
                values[key] = default if raw in (None, "") else int(raw)
            except ValueError:
                raise ConfigError(f"environment variable {key}={raw!r} is not an integer") from None
        rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
        if world < 1 or not 0 <= rank < world or local < 0:
            raise ConfigError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
        return cls(rank, world, local)


def choose_backend(device: torch.device, requested: str = "auto") -> str:
    """nccl on CUDA, gloo on CPU (auto); a request that cannot work is a typed error."""
    if requested == "auto":
        requested = "nccl" if device.type == "cuda" else "gloo"
    if requested == "nccl":
        if device.type != "cuda":
            raise ConfigError("distill.launch.backend=nccl needs CUDA devices (run.device=cuda); use gloo on CPU")
        if not dist.is_nccl_available():
            raise BackendUnavailable("NCCL is not available in this torch build; use distill.launch.backend=gloo")
    elif requested == "gloo":
        if not dist.is_gloo_available():
            raise BackendUnavailable("the gloo backend is not available in this torch build")
    else:
        raise ConfigError(f"unknown process-group backend {requested!r} (auto, nccl, gloo)")
    return requested


def worker_device(run_device: str, env: DistEnv) -> torch.device:
    """cpu, or this worker's GPU (cuda:LOCAL_RANK) when run.device asks for CUDA."""
    spec = str(run_device).lower()
    if spec == "cpu":
        return torch.device("cpu")
    from facepipe.pipeline.device import resolve_device

    resolved = torch.device(resolve_device(spec))
    if resolved.type != "cuda":
        return resolved
    if env.distributed or env.local_rank:
        if env.local_rank >= torch.cuda.device_count():
            raise BackendUnavailable(f"LOCAL_RANK {env.local_rank} but only {torch.cuda.device_count()} CUDA "
                                     "device(s) on this node: lower --devices")
        return torch.device("cuda", env.local_rank)
    return resolved


def init_process_group(env: DistEnv, device: torch.device, backend: str = "auto", timeout_min: float = 60.0) -> None:
    """Join the torchrun job (env:// rendezvous); a no-op for a single process."""
    if not env.distributed or (dist.is_available() and dist.is_initialized()):
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=choose_backend(device, backend), init_method="env://", rank=env.rank,
                            world_size=env.world, timeout=timedelta(minutes=timeout_min))


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (in place; returns t). Identity for one process."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """All-reduce-mean the gradients of parameters outside DDP (loss heads), as one flat bucket."""
    params = [p for p in params if p.requires_grad]
    if not params or not active():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_mean(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


@torch.no_grad()
def broadcast_state(module: torch.nn.Module, src: int = 0) -> None:
    """Copy every parameter and buffer of `module` from rank `src` to all ranks."""
    if not active():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src)


def all_gather_objects(obj: Any) -> list[Any]:
    """One picklable object per rank, rank order (our own process group only: trusted)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()
