"""All-gather of per-sample rows across ranks (variable batch sizes), for state that must stay identical."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def all_gather_rows(*tensors: torch.Tensor) -> tuple[list[torch.Tensor], int, int]:
    """Concatenate each tensor's rows from every rank in rank order.

    Returns (gathered tensors, start, end) where rows [start, end) of each result are this rank's own.
    Without an initialised process group of more than one rank the inputs come back unchanged.
    """
    n = tensors[0].shape[0]
    if not is_distributed():
        return list(tensors), 0, n
    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([n], dtype=torch.int64, device=tensors[0].device)
    sizes_t = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes_t, size)
    sizes = [int(s.item()) for s in sizes_t]
    longest = max(sizes)
    out = []
    for t in tensors:
        padded = t.new_zeros((longest, *t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        out.append(torch.cat([p[:k] for p, k in zip(parts, sizes)]))
    start = sum(sizes[:rank])
    return out, start, start + n
