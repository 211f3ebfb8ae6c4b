"""PTQ and QAT of a facepipe student against its own fp32 weights (QuantFace-style, no labels).

PTQ: `prepare_quantized` (BN folded, fake quantizers), activation ranges calibrated on calib_images faces,
then frozen. QAT: starting from the same calibration, activation ranges keep observing (EMA) and the model is
fine-tuned for quantize.steps steps with loss = MSE(normalize(f_q(x)), normalize(f_fp32(x))) on random
batches with random horizontal flips; activation ranges freeze after quantize.freeze_after steps.

Batches are drawn from a generator seeded by (run.seed, step), so a resumed run sees exactly the batches
the uninterrupted run would have seen. The checkpoint (model + optimizer + step) is written atomically
every CHECKPOINT_EVERY steps and refused when it was made under another configuration.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..embedder import Preprocess
from .fpmodel import Student, load_student  # noqa: F401 - load_student re-exported for callers of this module
from ..errors import ModelError
from ..train.checkpoint import CheckpointError, fingerprint_of, load_checkpoint, save_checkpoint
from ..train.data import student_input

CHECKPOINT_KIND = "facepipe.quantize.checkpoint"
CHECKPOINT_EVERY = 50


def face_batches(faces: np.ndarray, batch_size: int, pre: Preprocess) -> Iterator[torch.Tensor]:
    """Preprocessed float NCHW batches of uint8 faces, in order."""
    for start in range(0, len(faces), batch_size):
        yield student_input(torch.from_numpy(faces[start:start + batch_size]), torch.device("cpu"), pre)


def calibrated(student: Student, faces: np.ndarray, wbits: int, abits: int, *, calib_images: int,
               batch_size: int, weight_symmetric: bool = True, act_symmetric: bool = False,
               layer_bits: dict | None = None, act_range: str = "minmax"):
    """A fake-quantized copy of the student with activation ranges calibrated on calib_images faces, not frozen
    (freeze it for PTQ; QAT keeps observing from there). layer_bits: per-layer overrides (layer_bits.py)."""
    from facepipe.models.quant import prepare_quantized

    qmodel = prepare_quantized(copy.deepcopy(student.module), wbits, abits, weight_symmetric=weight_symmetric,
                               act_symmetric=act_symmetric, layer_bits=layer_bits, arch=student.arch,
                               embedding_size=student.embedding_size, arch_kwargs=student.arch_kwargs)
    qmodel.calibrate(face_batches(faces[:calib_images], batch_size, student.preprocess), act_range=act_range)
    for p in qmodel.parameters():  # copied from the frozen fp32 student: PReLU slopes would stay fixed
        p.requires_grad_(True)
    return qmodel.eval()


def run_ptq(student: Student, faces: np.ndarray, wbits: int, abits: int, **kw):
    """The PTQ model: `calibrated`, then every activation range frozen."""
    qmodel = calibrated(student, faces, wbits, abits, **kw)
    qmodel.freeze_activations()
    return qmodel


def distill_loss(q_emb: torch.Tensor, fp_emb: torch.Tensor) -> torch.Tensor:
    """MSE between the L2-normalised embeddings of the quantized and the fp32 model."""
    return F.mse_loss(F.normalize(q_emb, dim=1), F.normalize(fp_emb, dim=1))


def step_batch(faces: np.ndarray, batch_size: int, seed: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, flip mask) of a QAT step: a function of (seed, step) only."""
    rng = np.random.default_rng([seed, step])
    idx = rng.choice(len(faces), size=batch_size, replace=len(faces) < batch_size)
    return idx, rng.random(batch_size) < 0.5


@dataclass
class QatReport:
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    resumed_from: int = 0

    def summary(self) -> dict:
        k = max(1, min(10, len(self.losses) // 4 or 1))
        head = float(np.mean(self.losses[:k])) if self.losses else None
        tail = float(np.mean(self.losses[-k:])) if self.losses else None
        return {"steps": self.steps, "seconds": round(self.seconds, 2), "resumed_from": self.resumed_from,
                "loss_first": head, "loss_last": tail}


class QatCheckpoint:
    """checkpoints/last.pt of a QAT run, tied to the `identity` (config, student, faces) it was made under."""

    def __init__(self, path: Path, identity: dict):
        self.path, self.identity = Path(path), identity
        self.fingerprint = fingerprint_of(identity)

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        ckpt = load_checkpoint(self.path, CHECKPOINT_KIND)
        if ckpt.get("fingerprint") != self.fingerprint:
            from ..manifest import config_changes

            changes = config_changes(ckpt.get("identity") or {}, self.identity) or ["fingerprint differs"]
            raise CheckpointError(f"QAT checkpoint {self.path} was made under another configuration "
                                  f"({'; '.join(changes[:3])}): restore it to resume, or delete the file "
                                  "(facepipe quantize --restart) to start over")
        return ckpt

    def save(self, step: int, model: nn.Module, opt: torch.optim.Optimizer, losses: list[float]) -> None:
        save_checkpoint(self.path, {"identity": self.identity, "fingerprint": self.fingerprint, "step": step,
                                    "model": model.state_dict(), "optimizer": opt.state_dict(),
                                    "losses": list(losses)}, kind=CHECKPOINT_KIND)

    def remove(self) -> None:
        """Drop the checkpoint of a finished run (and its folder when nothing else is in it)."""
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:  # not empty, or already gone
            pass


def run_qat(qmodel: nn.Module, student: Student, faces: np.ndarray, *, steps: int, batch_size: int, lr: float,
            weight_decay: float, freeze_after: int, seed: int, checkpoint: QatCheckpoint | None = None,
            show_progress: bool | None = None, on_step: Callable[[int, float], None] | None = None,
            observers: bool = True) -> QatReport:
    """Fine-tune `qmodel` (a `calibrated` model whose ranges are not frozen yet; modified in place) towards the
    fp32 student; returns the loss curve.

    observers=False: a model whose quantizers learn their ranges (NNCF) has no observe / freeze switch.
    """
    from ..progress import progress

    fp32 = student.module.eval()
    params = [p for p in qmodel.parameters() if p.requires_grad]
    if not params:
        raise ModelError("the quantized model has no trainable parameters; QAT cannot run (use quantize.mode=ptq)")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    start = 1
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        qmodel.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        losses = [float(v) for v in saved["losses"]]
        start = int(saved["step"]) + 1
    observing = observers and start <= freeze_after
    if observing:
        qmodel.set_observing(True)
    elif observers:
        qmodel.freeze_activations()
    qmodel.train()
    for m in qmodel.modules():  # NNCF keeps BatchNorm unfolded: its statistics must not follow QAT batches
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    t0 = time.perf_counter()
    bar = progress("img", disable=None if show_progress is None else not show_progress)
    with bar:
        task = bar.add_task("QAT", total=steps * batch_size, completed=(start - 1) * batch_size)
        for step in range(start, steps + 1):
            if observing and step > freeze_after:
                qmodel.freeze_activations()
                observing = False
            idx, flip = step_batch(faces, batch_size, seed, step)
            x = student_input(torch.from_numpy(faces[idx]), torch.device("cpu"), student.preprocess)
            mirror = torch.from_numpy(flip)
            x[mirror] = x[mirror].flip(3)
            with torch.no_grad():
                target = fp32(x)
            loss = distill_loss(qmodel(x), target)
            if not torch.isfinite(loss):
                raise ModelError(f"QAT step {step}: loss is {loss.item()} (not finite); lower quantize.lr "
                                 f"(now {lr}) or check the student and the calibration faces")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.advance(task, batch_size)
            if on_step is not None:
                on_step(step, losses[-1])
            if checkpoint is not None and step % CHECKPOINT_EVERY == 0 and step < steps:
                checkpoint.save(step, qmodel, opt, losses)
    if observing:
        qmodel.freeze_activations()
    qmodel.eval()
    return QatReport(steps, time.perf_counter() - t0, losses, resumed_from=start - 1)
