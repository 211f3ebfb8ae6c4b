"""Teacher stage: resolve and freeze the teacher, score it on the check benchmarks, cache its embeddings
of the training set for distillation.

Outputs (runs/<run>/teacher/): teacher.json (what the teacher is: files, hashes, preprocessing, dim),
metrics.json (per benchmark), roc.png, and the embedding cache (cache/<key>.npy + .json).
"""

from __future__ import annotations

from pathlib import Path

from facepipe.pipeline.config import PipelineConfig
from facepipe.pipeline.errors import ConfigError
from facepipe.pipeline.runner import StageContext, StageResult, StageSpec, register_stage
from facepipe.pipeline.progress import table_console


EXTRA_DIR = "generated/extra"  # distill.generated_faces: the DCGAN faces added to data.train, without labels
EXTRA_SEED = 20_261_207


def external_inputs(cfg: PipelineConfig) -> dict[str, Path]:
    """Teacher files, the check benchmarks' files and (when caching) the training set."""
    from facepipe.pipeline.eval.datasets import resolve_benchmark
    from facepipe.pipeline.eval.evaluate import benchmark_inputs
    from facepipe.pipeline.teachers import resolve_teacher

    source = resolve_teacher(cfg.teacher, cfg.base_dir)
    inputs = {f"teacher.{p.name}": p for p in source.files}
    if cfg.data_free():
        return inputs
    root = cfg.data_root(required=bool(cfg.teacher.check) or cfg.teacher.cache)
    for spec in cfg.teacher.check:
        inputs.update({f"bench.{k}": v for k, v in benchmark_inputs(resolve_benchmark(spec, root)).items()})
    if cfg.teacher.cache:
        inputs["data.train"] = cfg.train_path()
    return inputs


def run(ctx: StageContext) -> StageResult:
    """Load the teacher, check its embedding size, score it, and cache its training-set embeddings."""

    from facepipe.pipeline.eval.evaluate import embeddings_cache_dir, evaluate_model, results_table, roc_curves
    from facepipe.pipeline.io import atomic_write_json
    from facepipe.pipeline.teachers import check_teacher_dim, resolve_teacher

    cfg = ctx.config
    source = resolve_teacher(cfg.teacher, cfg.base_dir)
    if source.warning():
        from facepipe.pipeline.progress import console

        console.print(f"[yellow]{source.warning()}[/]")
    embedder = source.load()
    check_teacher_dim(embedder, cfg.teacher)
    outputs: dict[str, Path] = {}
    card = {**source.describe(), "embedder": embedder.describe()}
    outputs["card"] = atomic_write_json(ctx.output_path("teacher.json"), card)

    metrics: dict = {"embedding_size": embedder.dim}
    if cfg.data_free():
        if cfg.distill.generated_faces:
            raise ConfigError("distill.generated_faces adds DCGAN faces to data.train, but no face data is "
                              "configured (data-free mode trains on data.generated generated faces already): set "
                              "FACEPIPE_DATA / data.root, or distill.generated_faces=0")
        outputs.update(_generated_faces(ctx, source, embedder))
        metrics.update(data_free=True, generated_faces=cfg.data.generated, generated_eval=cfg.data.generated_eval)
        return StageResult(outputs=outputs, metrics=metrics)
    if cfg.teacher.check:
        results = evaluate_model(source, embedder, cfg.teacher.check, cfg.data_root(), flip=cfg.teacher.flip,
                                 batch_size=cfg.data.batch_size, on_error=cfg.data.on_error,
                                 cache_dir=embeddings_cache_dir())
        table_console(stderr=True).print(results_table(results, title=f"teacher {embedder.name}"))
        summaries = {r.summary["name"]: r.summary for r in results}
        outputs["metrics"] = atomic_write_json(ctx.output_path("metrics.json"), summaries)
        from facepipe.pipeline.plots import plot_roc

        outputs["roc"] = plot_roc(roc_curves(results, embedder.name), ctx.output_path("roc.png"),
                                  title=f"teacher {embedder.name}")
        for name, s in summaries.items():
            metrics[f"{name}_accuracy"] = s["accuracy"]

    if cfg.distill.generated_faces and not cfg.teacher.cache:
        raise ConfigError("distill.generated_faces needs teacher.cache=true: the generated faces are trained on "
                          "through the teacher's cached embeddings of them")
    if cfg.teacher.cache:
        from facepipe.pipeline.data.imagefolder import open_face_source

        faces = open_face_source(cfg.train_path(), on_error=cfg.data.on_error)
        cache, reused = _cache(ctx, source, embedder, faces, "cache")
        outputs["cache"] = cache.path
        outputs["cache_meta"] = cache.path.with_suffix(".json")
        if cfg.distill.generated_faces:
            outputs.update(_extra_faces(ctx, source, embedder))
            metrics["generated_faces"] = cfg.distill.generated_faces
        skipped = cache.skipped_summary(faces)
        metrics.update(train_images=cache.n, cache_reused=reused, skipped_images=skipped["count"],
                       cached_views=cache.view_count)
        if skipped["count"]:
            metrics["skipped_first"] = ", ".join(skipped["first"])
            table_console(stderr=True).print(
                f"teacher: {skipped['count']} training face(s) could not be read and are left out "
                f"(data.on_error=skip): {', '.join(skipped['first'])}" + (" ..." if skipped["count"] > 3 else ""),
                markup=False, highlight=False)
    return StageResult(outputs=outputs, metrics=metrics)


def _cache(ctx: StageContext, source, embedder, faces, folder: str):
    """The teacher's embeddings of `faces` (with the mirrors and cached views distill.augment asks for): built
    once in the shared, content-keyed cache (runs with the same teacher and faces reuse it), then copied into
    this stage's `folder` so the run's outputs stand on their own. Returns (cache, reused)."""
    from facepipe.pipeline.data.views import cache_flip, cached_views
    from facepipe.pipeline.eval.cache import open_or_build
    from facepipe.pipeline.eval.evaluate import embeddings_cache_dir

    cfg = ctx.config
    shared, reused = open_or_build(source, faces, embeddings_cache_dir(), flip=cache_flip(cfg),
                                   batch_size=cfg.data.batch_size, embedder=embedder,
                                   views=cached_views(cfg.distill.augment))
    return shared.copy_to(ctx.output_path(folder)), reused


def _extra_faces(ctx: StageContext, source, embedder) -> dict[str, Path]:
    """distill.generated_faces: DCGAN faces for the label-free loss terms, written as an image folder, and
    the teacher's cached embeddings of them. Drawn with a fixed seed (not run.seed), so runs that differ only
    in their seed train on the same extra faces and share one cache."""
    from facepipe.pipeline.data.imagefolder import open_face_source
    from facepipe.pipeline.data.synthetic import datafree

    folder = ctx.output_path(EXTRA_DIR)
    datafree.write_generated_set(folder, ctx.config.distill.generated_faces, seed=EXTRA_SEED)
    cache, _ = _cache(ctx, source, embedder, open_face_source(folder, on_error="fail"), "extra_cache")
    return {"extra_faces": folder, "extra_cache": cache.path, "extra_cache_meta": cache.path.with_suffix(".json")}


def _generated_faces(ctx: StageContext, source, embedder) -> dict[str, Path]:
    """Data-free mode: DCGAN training faces (+ the teacher's cached embeddings of them) and held-out faces with
    the teacher's embeddings, for distillation scored by agreement (pipeline/data/synthetic/datafree.py)."""
    import numpy as np

    from facepipe.pipeline.data.synthetic import datafree
    from facepipe.pipeline.data.imagefolder import open_face_source
    from facepipe.pipeline.io import atomic_path
    from facepipe.pipeline.progress import console
    from facepipe.pipeline.data.synthetic.dcgan import dcgan_faces

    cfg = ctx.config
    console.print(f"[yellow]{datafree.NOTE}[/]")
    train_dir = ctx.output_path(datafree.TRAIN_DIR)
    datafree.write_generated_set(train_dir, cfg.data.generated, seed=cfg.run.seed)
    held_out, _ = dcgan_faces(cfg.data.generated_eval, seed=cfg.run.seed + 1_000_003)
    teacher_emb = embedder.embed(held_out, batch_size=cfg.data.batch_size, flip=cfg.teacher.flip)
    outputs: dict[str, Path] = {"generated_train": train_dir}
    for role, rel, arr in (("generated_eval", datafree.EVAL_FACES, held_out),
                           ("generated_eval_teacher", datafree.EVAL_TEACHER, teacher_emb)):
        with atomic_path(ctx.output_path(rel), suffix=".npy") as tmp:
            np.save(tmp, arr)
        outputs[role] = ctx.output_path(rel)
    if cfg.teacher.cache:
        cache, _ = _cache(ctx, source, embedder, open_face_source(train_dir, on_error="fail"), "cache")
        outputs["cache"], outputs["cache_meta"] = cache.path, cache.path.with_suffix(".json")
    return outputs


def derived(cfg: PipelineConfig) -> dict:
    """The runtime that computes the teacher's embeddings (versions, CPU): its scores and cache depend on it."""
    from facepipe.pipeline.eval.cache import TEACHER_RUNTIMES
    from facepipe.pipeline.manifest import runtime_identity

    return {"runtime": runtime_identity("cpu", TEACHER_RUNTIMES)}


SPEC = register_stage(StageSpec(
    name="teacher", run=run, sections=("teacher", "distill.augment", "distill.generated_faces", "data.train",
                                       "data.on_error", "data.root", "data.generated", "data.generated_eval",
                                       "run.seed"),
    external_inputs=external_inputs, derived=derived))
