"""The FLOP floor of a training step on this machine: an sgemm probe and the student's FLOPs per image.

floor img/s = probe GFLOP/s / (GFLOP per image for forward + backward), with forward + backward counted as
3x the forward's 2 * MACs (the backward computes the input and the weight gradients, each about one forward).
A step at the floor would run every FLOP at the speed of a large matrix multiply, which depthwise
convolutions, BatchNorm and PReLU never reach: the fraction of the floor says how far from it a step is.
"""

from __future__ import annotations

import time


def sgemm_gflops(threads: int | None = None, n: int = 1024, repeats: int = 8) -> float:
    """Measured fp32 matrix-multiply GFLOP/s with torch's current (or `threads`) intra-op threads: the
    median of `repeats` timed n x n products after a warm-up."""
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(3):
            a @ b
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    times.sort()
    return 2 * n ** 3 / times[len(times) // 2] / 1e9


def train_gflop_per_image(model, input_size: int = 112) -> float:
    """GFLOP of one image's forward + backward: 6 x the forward MACs (models.complexity)."""
    from facepipe.models.complexity import profile

    return 6 * profile(model, input_size).macs / 1e9


def floor_img_per_s(gflops: float, gflop_per_image: float) -> float:
    return gflops / gflop_per_image
