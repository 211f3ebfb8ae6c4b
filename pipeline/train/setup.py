"""Build the distillation Trainer for one rank from a job: training data, teacher targets (cache or online),
student, losses and evaluator. The distill stage's job names `build_trainer` as its setup; torchrun workers
and `facepipe distill --bench-step` call it too."""

from __future__ import annotations

import json
from pathlib import Path

from facepipe.pipeline.config import PipelineConfig

# distill keys that do not change the training trajectory: a checkpoint stays resumable across them
NEUTRAL_KEYS = ("devices", "num_workers", "data", "compile", "eval_every", "benchmarks", "best_metric", "save_every",
                "log_every", "tensorboard")


def eval_specs(cfg: PipelineConfig) -> list[str]:
    return list(cfg.data.benchmarks if cfg.distill.benchmarks is None else cfg.distill.benchmarks)


# --- on every rank ---------------------------------------------------------------------------------
def _teacher_fingerprint(cfg: PipelineConfig, inputs: dict[str, str]) -> str:
    card = inputs.get("teacher.card")
    if card and Path(card).is_file():
        fp = json.loads(Path(card).read_text()).get("fingerprint")
        if fp:
            return fp
    from facepipe.pipeline.teachers import resolve_teacher

    return resolve_teacher(cfg.teacher, cfg.base_dir).fingerprint()


def open_teacher_cache(inputs: dict[str, str], role: str = "cache"):
    """The teacher stage's cache: inputs teacher.<role> (embeddings .npy) and teacher.<role>_meta (its sidecar,
    which names the key); None when the stage made no cache. A vanished, stale or mismatched one is a ModelError."""
    from facepipe.pipeline.eval.cache import TeacherCache
    from facepipe.pipeline.errors import ModelError

    emb_path, meta_path = inputs.get(f"teacher.{role}"), inputs.get(f"teacher.{role}_meta")
    if not emb_path or not meta_path:
        return None
    meta_path = Path(meta_path)
    try:
        key = json.loads(meta_path.read_text())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelError(f"teacher cache sidecar {meta_path} is unreadable: re-run the teacher stage") from None
    cache = TeacherCache.open(meta_path.parent, key)
    if cache is None or cache.path.resolve() != Path(emb_path).resolve():
        raise ModelError(f"teacher cache {emb_path} (sidecar {meta_path}) is incomplete, stale or mismatched: "
                         "re-run the teacher stage (facepipe run --force teacher)")
    return cache


def add_generated_faces(source, folder: str, inputs: dict[str, str], arrays: tuple):
    """The training set with the teacher stage's generated faces appended without labels (WithUnlabelled),
    their labels (-1), and the cached teacher arrays (embeddings, mirrors, views, mirrored views) extended with
    the generated faces' cache. An array the real cache has and the generated one lacks is a ModelError."""
    import numpy as np

    from facepipe.pipeline.data.imagefolder import open_face_source
    from facepipe.pipeline.data.unlabelled import WithUnlabelled
    from facepipe.pipeline.errors import ModelError

    generated = open_face_source(Path(folder), on_error="fail")
    mixed = WithUnlabelled(source, generated)
    cache = open_teacher_cache(inputs, "extra_cache")
    if cache is None:
        if arrays[0] is not None:
            raise ModelError(f"the teacher stage wrote generated faces ({folder}) but no cache of them: re-run the "
                             "teacher stage (facepipe run --force teacher)")
        return mixed, mixed.labels, arrays
    if cache.n != len(generated):
        raise ModelError(f"teacher cache {cache.path} holds {cache.n} embeddings but {folder} has {len(generated)} "
                         "faces: re-run the teacher stage")
    theirs = (cache.embeddings, cache.flipped, cache.views, cache.views_flipped)
    out = []
    for name, ours, more, axis in zip(("embeddings", "mirrors", "views", "mirrored views"), arrays, theirs,
                                      (0, 0, 1, 1)):
        if ours is None:
            out.append(None)
        elif more is None:
            raise ModelError(f"teacher cache {cache.path} of the generated faces has no {name} but the training "
                             "set's cache has: re-run the teacher stage (facepipe run --force teacher)")
        else:
            out.append(np.concatenate([np.asarray(ours), np.asarray(more)], axis=axis))
    return mixed, mixed.labels, tuple(out)


def build_trainer(job: dict, env, device):
    """The job's Trainer on this rank: data, teacher targets (cache or online), student, losses, evaluator."""
    import numpy as np
    import torch

    from facepipe.models.losses import build_weighted_loss
    from facepipe.models.registry import build_model
    from facepipe.pipeline.data.imagefolder import open_face_source
    from facepipe.pipeline.errors import ConfigError, ModelError
    from facepipe.pipeline.progress import console
    from facepipe.pipeline.embedder import STUDENT_PREPROCESS
    from facepipe.pipeline.train.data import read_labels
    from facepipe.pipeline.train.evaluate import StudentEvaluator
    from facepipe.pipeline.train.targets import (CachedTargets, OnlineTargets, choose_teacher_mode,
                                                 teacher_class_centers)
    from facepipe.pipeline.train.trainer import Trainer, seed_everything

    cfg = PipelineConfig(**job["config"], base_dir=job["base_dir"])
    d, inputs = cfg.distill, job["inputs"]
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    say = (lambda m: console.print(m)) if env.is_main else (lambda m: None)

    generated = inputs.get("teacher.generated_train")
    train = Path(generated) if generated else cfg.train_path()
    source = open_face_source(train, on_error=cfg.data.on_error)
    labels = read_labels(source, where=f"training set {train}")
    cache = open_teacher_cache(inputs)
    if cache is not None and cache.n != len(source):
        raise ModelError(f"teacher cache {cache.path} holds {cache.n} embeddings but {train} has "
                         f"{len(source)} faces: re-run the teacher stage")
    skipped = cache.skipped_summary(source) if cache is not None else {"count": 0, "first": []}
    teacher_emb = teacher_flip = views = views_flip = None
    if cache is not None:
        teacher_emb, teacher_flip = cache.embeddings, cache.flipped
        views, views_flip = cache.views, cache.views_flipped
    if skipped["count"]:  # the faces the teacher stage left out (data.on_error=skip) are not trained on either
        from facepipe.pipeline.data.imagefolder import SubsetSource

        say(f"distill: leaving out {skipped['count']} face(s) the teacher stage could not read "
            f"(data.on_error=skip): {', '.join(skipped['first'])}" + (" ..." if skipped["count"] > 3 else ""))
        keep = cache.valid.nonzero()[0]
        source, labels = SubsetSource(source, keep), labels[keep]
        teacher_emb = np.asarray(teacher_emb)[keep]
        teacher_flip = np.asarray(teacher_flip)[keep] if teacher_flip is not None else None
        views = np.asarray(views)[:, keep] if views is not None else None
        views_flip = np.asarray(views_flip)[:, keep] if views_flip is not None else None
    extra = inputs.get("teacher.extra_faces")
    centers_of = (teacher_emb, labels)  # class centres come from the labelled faces only
    if extra:
        source, labels, arrays = add_generated_faces(source, extra, inputs,
                                                     (teacher_emb, teacher_flip, views, views_flip))
        teacher_emb, teacher_flip, views, views_flip = arrays
        say(f"distill: + {len(source) - source.split} generated faces without labels (distill.generated_faces) "
            "for the label-free loss terms")
    choice = choose_teacher_mode(d.teacher_mode, d.augment, cache is not None,
                                 cache is not None and cache.flipped is not None,
                                 cache.view_count if cache is not None else 0)
    if choice.mode == "cache":
        targets = CachedTargets(teacher_emb, teacher_flip, where=f"teacher cache {cache.path}", views=views,
                                views_flipped=views_flip)
    else:
        from facepipe.pipeline.teachers import check_teacher_dim, resolve_teacher

        embedder = resolve_teacher(cfg.teacher, cfg.base_dir).load(device=str(device), threads=cfg.run.threads)
        check_teacher_dim(embedder, cfg.teacher)
        targets = OnlineTargets(embedder, batch_size=cfg.data.batch_size)
    if targets.dim != cfg.teacher.embedding_size:
        raise ModelError(f"the teacher gives {targets.dim}-d embeddings but teacher.embedding_size is "
                         f"{cfg.teacher.embedding_size}")
    say(f"distill: teacher embeddings from the {choice.mode} ({choice.reason})")

    seed_everything(cfg.run.seed)
    student = build_model(d.student.arch, embedding_size=d.student.embedding_size)
    init_info = None
    if d.student.init is not None:
        from .init import init_student

        init_info = init_student(student, cfg.student_init_path(), d.student.arch, d.student.embedding_size)
        say(f"distill: student starts from {init_info['path']} ({init_info['format']}, {init_info['tensors']} tensors)")
    loss = build_weighted_loss(d.losses, num_classes=source.num_classes, embedding_size=d.student.embedding_size,
                               teacher_embedding_size=targets.dim)
    if extra:
        if all(t.needs_labels for t in loss.terms.values()):
            raise ConfigError(f"distill.generated_faces={d.generated_faces}: every loss term "
                              f"({', '.join(loss.terms)}) needs labels, so the generated faces would train "
                              "nothing; add a label-free term (e.g. feature_kd) or set distill.generated_faces=0")
        loss.partial_labels = True
    if loss.needs_centers:
        if cache is None:
            need = [n for n, t in loss.terms.items() if t.needs_centers]
            raise ConfigError(f"loss {need[0]!r} needs teacher class centres, computed from the teacher cache: "
                              "set teacher.cache=true")
        loss.set_centers(teacher_class_centers(*centers_of, source.num_classes))

    specs = eval_specs(cfg)
    evaluator = None
    best_metric = d.best_metric if specs else None
    if generated:
        from facepipe.pipeline.data.synthetic.datafree import NOTE, AgreementEvaluator

        say(f"distill: {NOTE}")
        specs, best_metric = [], "agreement_cosine"
        evaluator = AgreementEvaluator(np.load(inputs["teacher.generated_eval"]),
                                       np.load(inputs["teacher.generated_eval_teacher"]),
                                       batch_size=cfg.data.batch_size, device=str(device))
    if specs:
        evaluator = StudentEvaluator(specs, cfg.data_root(required=False), flip=cfg.teacher.flip,
                                     batch_size=cfg.data.batch_size, on_error=cfg.data.on_error, device=str(device))
        if d.best_metric and not any(d.best_metric.startswith(f"{n}_") for n in evaluator.names):
            raise ConfigError(f"distill.best_metric={d.best_metric!r} names no evaluated benchmark "
                              f"({', '.join(evaluator.names)}): use e.g. {evaluator.names[0]}_accuracy")
    distill_cfg = {k: v for k, v in cfg.section("distill").items() if k not in NEUTRAL_KEYS}
    identity = {"distill": distill_cfg, "seed": cfg.run.seed, "device": device.type,
                "data": {"listing": source.content_hash(), "n": len(source), "num_classes": int(source.num_classes)},
                "teacher": {"fingerprint": _teacher_fingerprint(cfg, inputs), "mode": choice.mode,
                            "cache": cache.key if choice.mode == "cache" else None}}
    meta = {"arch": d.student.arch, "embedding_size": d.student.embedding_size,
            "preprocess": STUDENT_PREPROCESS.to_dict(), "teacher_embedding_size": targets.dim,
            "losses": [t.model_dump(mode="json") for t in d.losses]}
    decoded = None
    if d.data == "decoded":
        from facepipe.pipeline.eval.evaluate import embeddings_cache_dir

        from .decoded import decode_training_set

        decoded = decode_training_set(source, embeddings_cache_dir(), show_progress=env.is_main)
    trainer = Trainer(d, student, loss, source, out_dir=Path(job["out_dir"]), identity=identity, seed=cfg.run.seed,
                      targets=targets, labels=labels, env=env, device=device,
                      evaluator=evaluator if env.is_main else None, best_metric=best_metric,
                      student_meta=meta, log=say, decoded=decoded)
    trainer.student_meta["fingerprint"] = trainer.fingerprint
    trainer.info = {"teacher_mode": choice.mode, "teacher_mode_reason": choice.reason,
                    "skipped_images": skipped["count"], "skipped_first": skipped["first"],
                    "student_init": init_info}
    return trainer
