"""The distillation loop: one optimizer step per global batch, identical on 1 or N processes.

`Trainer(cfg, student, loss, source, ...)` trains a student against a WeightedLoss of named terms, with the
teacher's embeddings from `targets` (cache or online). It owns: the optimizer (SGD / AdamW), the lr schedule,
gradient clipping, mixed precision on CUDA, DDP over the student (loss-head parameters are averaged by an
explicit all-reduce; loss buffers such as AdaDistill centres stay identical through the losses' own
all-gather), checkpoints (every `save_every` steps and at each epoch end) and resume, logs, the periodic
evaluation on rank 0 and best.pt. Everything written is written by rank 0.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from facepipe.models.losses import LossInputs, WeightedLoss
from facepipe.pipeline.errors import ConfigError, FacepipeError, ModelError

from . import dist as D
from .checkpoint import (STUDENT_KIND, CheckpointError, check_matches, fingerprint_of, load_checkpoint,
                         rng_state, save_checkpoint, set_rng_state)
from .data import BatchReader, as_is, read_labels, student_input
from .logs import EVAL_CSV, TRAIN_CSV, TrainLog
from .sampler import ShardPlan
from .schedule import build_schedule, set_lr

CHECKPOINT = "checkpoints/last.pt"
BEST = "best.pt"


@dataclass(frozen=True)
class CompileChoice:
    on: bool
    reason: str


# torch.compile of MobileFaceNet's train step took ~50 s on 2 CPU cores and saved ~0.4 s per batch-64 step
# (1.2 s -> 0.77 s): it pays off after ~125 steps; auto asks for more to be safe on slower machines.
COMPILE_MIN_STEPS = 300


def compile_choice(mode: str, device: torch.device, steps_left: int, distributed: bool) -> CompileChoice:
    """Whether to torch.compile the student for distill.compile (auto | on | off)."""
    if mode == "off":
        return CompileChoice(False, "distill.compile=off")
    if mode == "on":
        return CompileChoice(True, "distill.compile=on")
    if mode != "auto":
        raise ConfigError(f"distill.compile must be auto, on or off, got {mode!r}")
    if device.type != "cpu":
        return CompileChoice(False, f"auto: measured on CPU only, not on {device.type} (set distill.compile=on)")
    if distributed:
        return CompileChoice(False, "auto: not with several processes (not measured; set distill.compile=on)")
    if steps_left < COMPILE_MIN_STEPS:
        return CompileChoice(False, f"auto: {steps_left} steps left, fewer than {COMPILE_MIN_STEPS} that repay "
                                    "the compilation")
    if not cxx_compiler():
        return CompileChoice(False, "auto: no C++ compiler on PATH (torch inductor needs one)")
    return CompileChoice(True, f"auto: {steps_left} steps, C++ compiler {cxx_compiler()}")


def cxx_compiler() -> str | None:
    import os
    import shutil

    return shutil.which(os.environ.get("CXX", "") or "c++") or shutil.which("g++")


class TrainingDiverged(FacepipeError):
    """The loss or the gradients stopped being finite."""


@dataclass
class TrainResult:
    step: int  # optimizer steps done in total
    epoch: float  # epochs done (fractional)
    losses: dict[str, float]  # last step's loss and terms (mean over ranks)
    best: dict[str, Any]  # {"metric", "value", "step"}
    metrics: dict[str, float]  # last evaluation
    checkpoint: Path
    resumed_from: int | None = None  # step of the checkpoint this run continued, if any
    history: list[dict[str, float]] = field(default_factory=list)  # per-step rows (rank 0)


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python's RNGs (model and loss initialisation)."""
    import random

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _amp_context(device: torch.device, amp: str):
    """autocast on CUDA (bf16 / fp16); the CPU trains in fp32."""
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext, False
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    if dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"distill.amp=bf16 is not supported by {torch.cuda.get_device_name(device)}: use fp16")
    return (lambda: torch.autocast("cuda", dtype=dtype)), amp == "fp16"


def build_optimizer(cfg, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"distill.optimizer must be sgd or adamw, got {cfg.optimizer!r}")


def check_dims(student: nn.Module, loss: WeightedLoss, targets) -> None:
    """Student / loss / teacher embedding sizes agree (ModelError naming both sizes otherwise)."""
    ds = getattr(student, "embedding_size", None)
    for name, term in loss.terms.items():
        if ds is not None and term.embedding_size != ds:
            raise ModelError(f"loss {name!r} was built for {term.embedding_size}-d student embeddings but the student "
                             f"gives {ds}-d (distill.student.embedding_size)")
        if term.needs_teacher:
            if targets is None:
                raise ConfigError(f"loss {name!r} needs teacher embeddings but no teacher is available")
            if term.teacher_embedding_size != targets.dim:
                raise ModelError(f"loss {name!r} expects {term.teacher_embedding_size}-d teacher embeddings but the "
                                 f"teacher ({targets.mode}) gives {targets.dim}-d (teacher.embedding_size)")


def one_line(e: Exception) -> Exception:
    """A FacepipeError re-raised by DataLoader ("Caught DataError in DataLoader worker process 0. Original
    Traceback ...") as the worker's own one-line error, same type; any other error unchanged."""
    text = str(e)
    if "Original Traceback" not in text:
        return e
    last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
    _, sep, message = last.partition(f"{type(e).__name__}: ")
    return type(e)(message if sep else last)


class Trainer:
    """See the module docstring. `identity` (JSON-able) names what a checkpoint must match to be resumed."""

    def __init__(self, cfg, student: nn.Module, loss: WeightedLoss, source, *, out_dir: Path, identity: dict,
                 seed: int = 0, targets=None, labels: np.ndarray | None = None, env: D.DistEnv | None = None,
                 device: torch.device | str = "cpu", evaluator: Callable[[nn.Module], dict] | None = None,
                 best_metric: str | None = None, student_meta: dict | None = None,
                 callbacks: Sequence[Callable[["Trainer", int], None]] = (), log: Callable[[str], None] = print,
                 show_progress: bool | None = None, decoded: np.ndarray | None = None):
        self.cfg, self.student, self.loss, self.source = cfg, student, loss, source
        self.out_dir, self.seed, self.targets = Path(out_dir), seed, targets
        self.env = env or D.DistEnv()
        self.device = torch.device(device)
        self.evaluator, self.best_metric = evaluator, best_metric
        self.student_meta = dict(student_meta or {})
        self.callbacks, self.show_progress = list(callbacks), show_progress
        self.log = log if self.env.is_main else (lambda _m: None)
        self.identity = identity
        self.fingerprint = fingerprint_of(identity)

        check_dims(student, loss, targets)
        self.labels = read_labels(source) if labels is None else labels
        n_classes = int(source.num_classes)
        for name, term in loss.terms.items():
            if term.num_classes != n_classes:
                raise ConfigError(f"loss {name!r} was built for {term.num_classes} classes, the training set has "
                                  f"{n_classes}")
        if loss.needs_centers and not all(bool(getattr(t, "has_centers", True)) for t in loss.terms.values()
                                          if t.needs_centers):
            raise ConfigError("a loss needs teacher class centres: call loss.set_centers() before training")
        if targets is not None and getattr(targets, "mode", "") == "cache" and len(targets) != len(source):
            raise ModelError(f"the teacher cache holds {len(targets)} embeddings but the training set has "
                             f"{len(source)} faces: re-run the teacher stage")
        from facepipe.pipeline.data.views import ViewSpec

        aug = cfg.augment
        spec = ViewSpec.of(aug)
        self.plan = ShardPlan(len(source), cfg.batch_size, self.env.world, self.env.rank, seed, flip=aug.flip,
                              views=aug.views if spec.active else 0)
        self.steps_per_epoch = self.plan.steps_per_epoch
        self.total_steps = cfg.steps or cfg.epochs * self.steps_per_epoch
        self.schedule = build_schedule(cfg, self.total_steps, self.steps_per_epoch)
        if decoded is not None and len(decoded) != len(source):
            raise ModelError(f"the decoded training set holds {len(decoded)} faces, the source {len(source)}")
        self.reader = BatchReader(source, self.labels, decoded=decoded, spec=spec,
                                  online=spec.active and not aug.views, seed=seed)

        # channels-last: ~25% faster depthwise convolutions on CPU (and what tensor cores want on CUDA)
        self.student.to(self.device, memory_format=torch.channels_last)
        self.loss.to(self.device)
        self.loss_params = [p for p in self.loss.parameters() if p.requires_grad]
        self.params = [p for p in self.student.parameters() if p.requires_grad] + self.loss_params
        self.optimizer = build_optimizer(cfg, self.params)
        self.autocast, fp16 = _amp_context(self.device, cfg.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16) if fp16 else None

        self.step = 0  # optimizer steps done
        self.epoch, self.in_epoch = 0, 0  # sampler position: next batch is (epoch, in_epoch)
        self.best: dict[str, Any] = {"metric": best_metric, "value": None, "step": None}
        self.metrics: dict[str, float] = {}
        self.metrics_step: int | None = None  # step of the last evaluation
        self.summaries: list[dict] = []  # per-benchmark summaries of that evaluation (metrics.json)
        self.last_values: dict[str, float] = {}  # the last step's logged values (final_losses)
        self.last_checkpoint: Path | None = None
        self.saved_step = 0
        self.resumed_from: int | None = None
        self.ddp: nn.Module = self.student  # what the training step calls: DDP and / or torch.compile of it
        self.compiled = False
        self.marks: list[tuple[str, float]] | None = None  # set to a list to time the parts of train_step
        self.info: dict[str, Any] = {}  # extra facts for the run summary (set by the builder)

    # --- paths -------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT

    # --- resume ------------------------------------------------------------------------------------
    def _clear_outputs(self) -> None:
        """Rank 0, starting fresh: drop the previous run's checkpoint, logs and best.pt."""
        for p in (self.checkpoint_path, self.out_dir / TRAIN_CSV, self.out_dir / EVAL_CSV, self.out_dir / BEST):
            p.unlink(missing_ok=True)
        shutil.rmtree(self.out_dir / "tensorboard", ignore_errors=True)

    def _read_existing(self, mode: str) -> dict | str | None:
        """Rank 0: the checkpoint to resume, None to start fresh, or an error message."""
        path = self.checkpoint_path
        if mode == "restart" or not path.is_file():
            if mode == "resume":
                return f"--resume: no checkpoint at {path} (nothing to resume; run without --resume)"
            return None
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as e:
            return str(e)
        try:
            check_matches(ckpt, self.identity, self.env.world, path)
        except CheckpointError as e:
            if mode == "auto" and ckpt.get("complete"):
                return None  # a finished run under another config: nothing unfinished is lost
            return str(e)
        return ckpt

    def restore(self, mode: str = "auto") -> None:
        """Apply distill.resume (auto | resume | restart) to the checkpoint in out_dir (all ranks agree)."""
        found = self._read_existing(mode) if self.env.is_main else None
        found = D.broadcast_object(found)
        if isinstance(found, str):
            raise CheckpointError(found)
        if found is None:
            if self.env.is_main:
                self._clear_outputs()
            return
        ckpt = found
        self.student.load_state_dict(ckpt["model"])
        self.loss.load_state_dict(ckpt["loss"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if ckpt["schedule"] != self.schedule.state_dict():
            raise CheckpointError(f"checkpoint {self.checkpoint_path}: its lr schedule {ckpt['schedule']} differs "
                                  f"from this run's {self.schedule.state_dict()}; pass --restart")
        self.step, self.epoch, self.in_epoch = ckpt["step"], ckpt["sampler"]["epoch"], ckpt["sampler"]["step"]
        self.best = dict(ckpt["best"])
        if self.best.get("metric") != self.best_metric:  # distill.best_metric changed: track the new one
            self.best = {"metric": self.best_metric, "value": None, "step": None}
        self.metrics = dict(ckpt.get("metrics") or {})
        self.metrics_step = ckpt.get("metrics_step")
        self.summaries = json.loads(ckpt.get("summaries") or "[]")
        self.last_values = dict(ckpt.get("last_values") or {})
        set_rng_state(ckpt["rng"][self.env.rank])
        self.resumed_from = self.step
        self.last_checkpoint = self.checkpoint_path
        self.log(f"resumed from {self.checkpoint_path} at step {self.step} (epoch {self.epoch}, "
                 f"batch {self.in_epoch}/{self.steps_per_epoch})")

    # --- checkpoints -------------------------------------------------------------------------------
    def save(self, complete: bool = False) -> Path:
        """Write checkpoints/last.pt (collective: every rank contributes its RNG state)."""
        rngs = D.all_gather_objects(rng_state())
        if self.env.is_main:
            save_checkpoint(self.checkpoint_path, {
                "fingerprint": self.fingerprint, "identity": self.identity, "world_size": self.env.world,
                "step": self.step, "total_steps": self.total_steps, "complete": complete,
                "sampler": {"epoch": self.epoch, "step": self.in_epoch, "seed": self.seed,
                            "steps_per_epoch": self.steps_per_epoch, "global_batch": self.plan.global_batch},
                "model": self.student.state_dict(), "loss": self.loss.state_dict(),
                "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": rngs, "best": self.best, "metrics": self.metrics, "metrics_step": self.metrics_step,
                # JSON text: summaries hold nested dicts and numpy-free floats, and weights_only loads str
                "summaries": json.dumps(self.summaries, sort_keys=True), "last_values": self.last_values})
        self.last_checkpoint = self.checkpoint_path
        return self.checkpoint_path

    def save_weights(self, path: Path, **extra) -> Path:
        """The student's weights and metadata (student.pt / best.pt format), rank 0."""
        if self.env.is_main:
            state = {k: v.detach().cpu().contiguous() for k, v in self.student.state_dict().items()}
            save_checkpoint(path, {"state_dict": state, **self.student_meta, "step": self.step, **extra}, STUDENT_KIND)
        return path

    # --- evaluation --------------------------------------------------------------------------------
    def evaluate(self, tlog: TrainLog) -> None:
        """Rank 0 scores the student; a new best (higher is better) rewrites best.pt."""
        if self.evaluator is None or not self.env.is_main:
            return
        try:
            self.metrics = self.evaluator(self.student)
        finally:
            self.student.train()  # whatever the evaluator did with the mode
        self.metrics_step = self.step
        self.summaries = json.loads(json.dumps(getattr(self.evaluator, "last_summaries", []), default=float))
        tlog.evaluation(self.step, self.metrics)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in self.metrics.items() if k.endswith(("accuracy", "val")))
        self.log(f"step {self.step}: {shown}")
        name = self.best_metric
        if not name:
            return
        if name not in self.metrics:
            raise ConfigError(f"distill.best_metric={name!r} is not among the evaluated metrics "
                              f"({', '.join(self.metrics)})")
        value = self.metrics[name]
        if self.best["value"] is None or value > self.best["value"]:
            self.best = {"metric": name, "value": value, "step": self.step}
            self.save_weights(self.out_dir / BEST, best=self.best)

    # --- one step ----------------------------------------------------------------------------------
    def _diverged(self, what: str, values: dict[str, float]) -> TrainingDiverged:
        if self.last_checkpoint is not None:
            where = f"the last good checkpoint is {self.last_checkpoint} (step {self.saved_step})"
        else:
            where = "no checkpoint was written yet"
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        return TrainingDiverged(f"{what} at step {self.step + 1} (epoch {self.epoch}, batch {self.in_epoch + 1}; "
                                f"{shown}): training stopped and nothing was written after it; {where}. Lower "
                                "distill.lr or set distill.clip_grad_norm, then start again with --restart")

    def _mark(self, name: str) -> None:
        if self.marks is not None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.marks.append((name, time.perf_counter()))

    def train_step(self, batch: dict) -> dict[str, float]:
        """Forward, loss, collective finiteness check, backward, clip, update. Returns the logged values."""
        self._mark("start")
        lr = self.schedule(self.step)
        set_lr(self.optimizer, lr)
        teacher = self.targets(batch).to(self.device) if self.targets is not None else None
        x = student_input(batch["faces"], self.device).contiguous(memory_format=torch.channels_last)
        labels = batch["labels"].to(self.device)
        self._mark("teacher")
        with self.autocast():
            emb = self.ddp(x)
        epoch_float = self.epoch + self.in_epoch / self.steps_per_epoch
        total, terms = self.loss(LossInputs(student_emb=emb.float(), teacher_emb=teacher, labels=labels,
                                            epoch_float=epoch_float))
        stats = D.all_reduce_mean(torch.stack([total.detach().float(), *[v.float() for v in terms.values()]]))
        values = {"loss": float(stats[0]), **{k: float(v) for k, v in zip(terms, stats[1:])}}
        if not torch.isfinite(stats).all():
            raise self._diverged("the loss is not finite", values)
        self._mark("forward")
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(total) if self.scaler is not None else total).backward()
        D.average_gradients(self.loss_params)
        self._mark("backward")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip = self.cfg.clip_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip else float("inf"))
        if not torch.isfinite(norm) and self.scaler is None:
            raise self._diverged("the gradient norm is not finite", values)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the update on inf/NaN gradients and lowers the scale
            self.scaler.update()
        else:
            self.optimizer.step()
        self._mark("optimizer")
        return {"epoch": round(epoch_float + 1 / self.steps_per_epoch, 6), "lr": lr, **values,
                "grad_norm": float(norm)}

    # --- the loop ----------------------------------------------------------------------------------
    def wrap_model(self) -> None:
        """DDP over the student when distributed, then torch.compile per distill.compile (compile_choice)."""
        if self.env.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            D.broadcast_state(self.loss)  # same head weights and centres everywhere (DDP syncs the student)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DDP(self.student, device_ids=ids)  # BatchNorm buffers follow rank 0
        choice = compile_choice(self.cfg.compile, self.device, self.total_steps - self.step, self.env.distributed)
        self.info["compile"] = choice.reason
        if choice.on:
            self.ddp = torch.compile(self.ddp)
            self.compiled = True
            self.log(f"distill: torch.compile on ({choice.reason}); the first step compiles")

    def loader(self, count: int | None = None):
        """One loader for the rest of the run (or `count` batches): its workers fork once, before training
        memory piles up; each item is a whole batch (BatchReader)."""
        count = self.total_steps - self.step if count is None else count
        return torch.utils.data.DataLoader(
            self.reader, sampler=self.plan.stream(self.epoch, self.in_epoch, count), batch_size=None,
            collate_fn=as_is, num_workers=self.cfg.num_workers, pin_memory=self.device.type == "cuda",
            # an own generator: creating the iterator must not draw from the global torch RNG
            generator=torch.Generator().manual_seed(self.seed))

    def fit(self, resume: str = "auto") -> TrainResult:
        """Train to `total_steps` (resuming per `resume`), evaluate at the end, write the final checkpoint."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(self.seed * 7919 + self.env.rank + 1)  # dropout etc.; restore() may replace it
        self.restore(resume)
        self.saved_step = self.step
        self.wrap_model()
        tlog = TrainLog(self.out_dir, list(self.loss.terms), enabled=self.env.is_main,
                        tensorboard=self.cfg.tensorboard, resume_step=self.resumed_from, warn=self.log)
        history: list[dict[str, float]] = []
        values: dict[str, float] = {}
        self.student.train()
        self.loss.train()
        try:
            # a run resumed at its last step trains nothing: its final losses are the checkpoint's
            try:
                values = self._run(tlog, history) or self.last_values
            except FacepipeError as e:  # from a DataLoader worker: its message carries the worker's traceback
                raise one_line(e) from None
            self.last_values = values
            if self.evaluator is not None and self.metrics_step != self.step:
                self.evaluate(tlog)
            self.save(complete=True)
        finally:
            tlog.close()
        if self.best["value"] is None:
            self.save_weights(self.out_dir / BEST, best=self.best)
        return TrainResult(self.step, self.step / self.steps_per_epoch, values, dict(self.best), dict(self.metrics),
                           self.checkpoint_path, self.resumed_from, history)

    def _run(self, tlog: TrainLog, history: list) -> dict[str, float]:
        from facepipe.pipeline.progress import progress

        cfg, gb = self.cfg, self.plan.global_batch
        values: dict[str, float] = {}
        quiet = not self.env.is_main or self.show_progress is False
        bar = progress("img", disable=True if quiet else (None if self.show_progress is None else False))
        t_start = t_last = time.perf_counter()
        last_step = self.step
        with bar:
            task = bar.add_task("distill", total=self.total_steps * gb, completed=self.step * gb)
            for batch in self.loader():
                values = self.train_step(batch)
                self.step += 1
                self.in_epoch += 1
                if self.in_epoch == self.steps_per_epoch:
                    self.epoch, self.in_epoch = self.epoch + 1, 0
                bar.update(task, advance=gb, description=f"distill e{self.epoch} loss {values['loss']:.3f}")
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    now = time.perf_counter()
                    row = {**values, "img_per_s": round(gb * (self.step - last_step) / max(now - t_last, 1e-9), 2),
                           "elapsed_s": round(now - t_start, 3)}
                    tlog.step(self.step, row)
                    history.append({"step": self.step, **row})
                    t_last, last_step = now, self.step
                self._periodic(tlog)
                for cb in self.callbacks:
                    cb(self, self.step)
        return values

    def _periodic(self, tlog: TrainLog) -> None:
        """Checkpoint every save_every steps and at epoch ends; evaluate every eval_every steps (the last
        step's checkpoint and evaluation are fit()'s)."""
        cfg = self.cfg
        if self.step >= self.total_steps:
            return
        if (cfg.save_every and self.step % cfg.save_every == 0) or self.in_epoch == 0:
            self.save()
            self.saved_step = self.step
        if cfg.eval_every and self.step % cfg.eval_every == 0:
            self.evaluate(tlog)
