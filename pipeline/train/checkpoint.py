"""Training checkpoints: written atomically, read with torch.load(weights_only=True), matched by fingerprint.

A checkpoint is a dict of tensors and plain values only (no pickled classes): model, optimizer, schedule,
loss state (centres, EMA statistics, queues, trainable heads), the sampler position, the RNG states of
every rank, the best metric so far, and the `identity` it was trained under (config that shapes the
trajectory, data listing, teacher) whose sha256 is its `fingerprint`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facepipe.pipeline.errors import FacepipeError, first_line
from facepipe.pipeline.io import atomic_torch_save, sha256_json

FORMAT = 1
KIND = "facepipe.distill.checkpoint"  # checkpoints/last.pt: everything needed to resume
STUDENT_KIND = "facepipe.student"  # student.pt / best.pt: weights + what a runtime needs to use them


class CheckpointError(FacepipeError):
    """A checkpoint that cannot be used: unreadable, foreign, or from a different configuration."""


def fingerprint_of(identity: dict) -> str:
    return sha256_json(identity)


# --- RNG states as tensors / plain lists -----------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """This process's torch, CUDA, numpy and Python RNG states in a weights_only-loadable form."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)},
             "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64),
                        "gauss": py_gauss}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- files ------------------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, payload: dict[str, Any], kind: str = KIND) -> Path:
    """torch.save to memory, then a temporary name beside `path`, fsync, rename: a kill never leaves half a
    file, and identical content gives identical bytes."""
    return atomic_torch_save(path, {"format": FORMAT, "kind": kind, **payload})


def load_checkpoint(path: str | Path, kind: str = KIND) -> dict[str, Any]:
    """A `kind` file written by save_checkpoint; anything else (or a hostile pickle) is a CheckpointError."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} not found") from None
    except Exception as e:  # UnpicklingError, RuntimeError (truncated zip), EOFError, ...
        first = first_line(e)
        raise CheckpointError(f"checkpoint {path} is unreadable ({first}); use --restart to start over") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != kind:
        what = "distill checkpoint" if kind == KIND else f"{kind} file"
        raise CheckpointError(f"{path} is not a facepipe {what}")
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {ckpt.get('format')!r}, this facepipe reads {FORMAT}; "
                              "use --restart")
    return ckpt


def check_matches(ckpt: dict, identity: dict, world: int, path: Path) -> None:
    """Refuse a checkpoint trained under another identity (naming what changed) or another world size."""
    from facepipe.pipeline.manifest import config_changes

    if ckpt.get("fingerprint") != fingerprint_of(identity):
        changes = config_changes(ckpt.get("identity") or {}, identity) or ["fingerprint differs"]
        more = f" (+{len(changes) - 3} more)" if len(changes) > 3 else ""
        raise CheckpointError(f"checkpoint {path} was trained under a different configuration: "
                              f"{'; '.join(c.removeprefix('config ') for c in changes[:3])}{more}. Restore that "
                              "configuration to resume, or pass --restart to discard the checkpoint")
    if int(ckpt.get("world_size", 1)) != world:
        raise CheckpointError(f"checkpoint {path} was written by {ckpt.get('world_size')} process(es), this run has "
                              f"{world}: resume with the same number of devices (batch-level losses and "
                              "BatchNorm see per-process batches), or pass --restart")
