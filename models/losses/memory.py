"""A FIFO ring buffer of past feature rows, kept in buffers (rows, write pointer, fill count)."""

from __future__ import annotations

import torch
from torch import nn


class FeatureQueue(nn.Module):
    """Holds the last `size` rows pushed; oldest rows are overwritten first."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.size = int(size)
        self.register_buffer("items", torch.zeros(self.size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(self.count)

    def valid(self) -> torch.Tensor:
        """A copy of the filled rows (slot order, not age order: the losses using them are order-free).

        A copy, because pushing after the loss must not change tensors that backward still needs.
        """
        return self.items[: len(self)].clone()

    @torch.no_grad()
    def push(self, rows: torch.Tensor) -> None:
        rows = rows.detach().to(self.items.dtype)
        n = rows.shape[0]
        if n == 0:
            return
        ptr = int(self.ptr)
        if n > self.size:  # only the newest `size` rows survive; skip straight to where they land
            ptr = (ptr + n - self.size) % self.size
            rows, n = rows[-self.size :], self.size
        slots = (ptr + torch.arange(n, device=self.items.device)) % self.size
        self.items[slots] = rows
        self.ptr.fill_((ptr + n) % self.size)
        self.count.fill_(min(int(self.count) + n, self.size))
