"""Learning-rate schedules as pure functions of the optimizer step (so resuming needs only the step count).

Every schedule starts with an optional linear warmup from 0 to the peak lr over `warmup` steps, then:
  step      lr * gamma ** (number of milestones passed)      (milestones in steps)
  poly      min_lr + (lr - min_lr) * (1 - p) ** power          p = progress after warmup in [0, 1]
  cosine    min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2
  constant  lr
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field

KINDS = ("step", "poly", "cosine", "constant")


@dataclass(frozen=True)
class Schedule:
    """lr(step) for step = 0 .. total - 1 (the lr used by the step-th optimizer update)."""

    kind: str
    lr: float
    total: int
    warmup: int = 0
    milestones: tuple[int, ...] = field(default_factory=tuple)
    gamma: float = 0.1
    power: float = 2.0
    min_lr: float = 0.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"schedule must be one of {KINDS}, got {self.kind!r}")
        if self.total < 1:
            raise ValueError(f"a schedule needs at least one step, got total={self.total}")
        object.__setattr__(self, "milestones", tuple(sorted(int(m) for m in self.milestones)))

    def __call__(self, step: int) -> float:
        if self.warmup > 0 and step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.kind == "step":
            return self.lr * self.gamma ** bisect.bisect_right(self.milestones, step)
        if self.kind == "constant":
            return self.lr
        span = max(1, self.total - self.warmup)
        p = min(1.0, max(0.0, (step - self.warmup) / span))
        if self.kind == "poly":
            return self.min_lr + (self.lr - self.min_lr) * (1 - p) ** self.power
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * p))

    def state_dict(self) -> dict:
        """What a checkpoint keeps (plain values): resuming under another schedule is refused by the caller."""
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d


def build_schedule(cfg, total_steps: int, steps_per_epoch: int) -> Schedule:
    """The schedule a DistillConfig describes (warmup and milestones given in epochs, converted to steps)."""
    return Schedule(kind=cfg.schedule, lr=cfg.lr, total=total_steps,
                    warmup=min(total_steps, round(cfg.warmup_epochs * steps_per_epoch)),
                    milestones=tuple(round(m * steps_per_epoch) for m in cfg.milestones),
                    gamma=cfg.gamma, power=cfg.power, min_lr=min(cfg.min_lr, cfg.lr))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
