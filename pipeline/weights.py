"""Loading state dicts into modules: plain-tensor checkpoints unwrapped, wrapper prefixes stripped, and every
missing / unexpected / misshapen key named in one ModelError. Used by the teachers, the DCGAN and anything
else that loads weights into a facepipe-built network (torch.load itself: io.safe_torch_load)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ModelError

_PREFIXES = ("module.", "_orig_mod.")


def strip_prefixes(state: dict, prefixes: tuple[str, ...] = _PREFIXES) -> dict:
    """Drop DataParallel / torch.compile prefixes ('module.', '_orig_mod.') from state-dict keys."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def _few(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_weights(module, state: dict, where: str, hint: str = "") -> None:
    """load_state_dict with every missing / unexpected / misshapen key named in one ModelError.

    Missing BatchNorm `num_batches_tracked` counters are tolerated (they do not affect inference).
    """
    import torch

    own = module.state_dict()
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(f"{where}: entries are not tensors: {_few(bad)}")
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} in file vs {tuple(own[k].shape)} in model"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys: {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_few(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch: {_few(shapes, 3)}")
    if problems:
        raise ModelError(f"{where}: weights do not fit {hint or type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state, strict=False)



def unwrap_checkpoint(obj: Any, path: Path) -> tuple[dict, dict]:
    """(state dict, metadata) from a bare state dict or {'state_dict'|'model'|'model_state_dict': ..., ...}."""
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: expected a state dict, found {type(obj).__name__}")
    for key in ("state_dict", "model_state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, dict):
            return inner, {k: v for k, v in obj.items() if k != key}
    return obj, {}


